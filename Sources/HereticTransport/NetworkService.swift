/// A service as a host runs it: one instance per core, each serving on that core's engine
/// (Heretic's stack or the kernel's sockets) and touched only on that core. The host starts
/// every instance, publishes their counters now and then, and at shutdown drains them:
/// `drain`, then waits for `openConnections` to reach 0 until a deadline, then `abortAll`.
public protocol NetworkService: AnyObject {
    /// Starts serving on `engine`, this core's; returns the TCP port bound (the engine's
    /// choice when the configured port is 0: other cores should then be given that port).
    func start<E: NetworkEngine>(on engine: E, port: UInt16) throws(NetError) -> UInt16
    /// Stops accepting and asks every open connection to finish what it is doing and close.
    func drain()
    /// Connections still open on this core.
    var openConnections: Int { get }
    /// Aborts (RST) every connection still open: the drain's deadline has passed.
    func abortAll()
    /// Copies this core's counters to the metrics system (swift-metrics), so that a scrape
    /// sees them; cheap, called about once a second and once more at the end.
    func publishMetrics()
}
