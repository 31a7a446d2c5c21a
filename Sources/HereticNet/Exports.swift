// The transport API comes with the engines: `import HereticNet` is enough for an application
// that picks its engine; a service that must run on any engine imports HereticTransport alone.
@_exported import HereticTransport
