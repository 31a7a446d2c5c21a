public typealias TCPEndpoint = Endpoint

/// A connection's behaviour: a value type whose stored properties are the connection's
/// application state, kept inline beside its control block (no object per connection).
/// Every callback runs on the interface's core.
public protocol TCPHandler {
    /// The handshake completed.
    mutating func connected(_ connection: inout TCPConnection)
    /// In-order bytes arrived. They point into the received packet: copy what must outlive
    /// the call.
    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection)
    /// Acknowledgements drained the send queue below `TCPLayer.writableThreshold`: room to
    /// queue more (for streaming without holding everything at once).
    mutating func writable(_ connection: inout TCPConnection)
    /// The peer will send no more (FIN).
    mutating func peerClosed(_ connection: inout TCPConnection)
    /// The connection is over for the application: reset, timed out, or closed both ways
    /// (said when TIME-WAIT begins; the stack alone keeps the 4-tuple for its duration).
    mutating func closed(_ reason: TCPCloseReason)
}

extension TCPHandler {
    public mutating func connected(_ connection: inout TCPConnection) {}
    public mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection) {}
    public mutating func writable(_ connection: inout TCPConnection) {}
    public mutating func peerClosed(_ connection: inout TCPConnection) { connection.close() }
    public mutating func closed(_ reason: TCPCloseReason) {}
}

/// What a handler can do to its connection while it runs. The same value serves both
/// engines: the user-space stack (`TCPLayer`) and Linux's sockets (`KernelNetwork`).
public struct TCPConnection {
    /// The engine outlives every callback that sees this value; held unretained, so a call
    /// through it costs no reference counting.
    @usableFromInline let engine: UnsafeMutableRawPointer
    @usableFromInline let ref: UInt64
    public let remote: TCPEndpoint
    public let localPort: UInt16
    /// Whether `engine` is a `KernelNetwork` (else a `TCPLayer`).
    @usableFromInline let onKernel: Bool

    @inlinable init(layer: TCPLayer, ref: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        self.engine = Unmanaged.passUnretained(layer).toOpaque()
        self.ref = ref
        self.remote = remote
        self.localPort = localPort
        self.onKernel = false
    }

    @inlinable init(kernel: KernelNetwork, ref: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        self.engine = Unmanaged.passUnretained(kernel).toOpaque()
        self.ref = ref
        self.remote = remote
        self.localPort = localPort
        self.onKernel = true
    }

    @usableFromInline var unmanagedLayer: Unmanaged<TCPLayer> { Unmanaged.fromOpaque(engine) }
    @usableFromInline var unmanagedKernel: Unmanaged<KernelNetwork> { Unmanaged.fromOpaque(engine) }
    @usableFromInline var layer: TCPLayer { unmanagedLayer.takeUnretainedValue() }
    @usableFromInline var kernel: KernelNetwork { unmanagedKernel.takeUnretainedValue() }

    /// Queues bytes for sending (copied: the caller's buffer is free on return) and sends
    /// what the peer's window allows now. False when the connection cannot send any more.
    @discardableResult
    @inlinable public func send(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if onKernel { return unmanagedKernel._withUnsafeGuaranteedRef { $0.send(ref, bytes) } }
        return unmanagedLayer._withUnsafeGuaranteedRef { $0.send(ref, bytes) }
    }

    /// Sends FIN once everything queued has gone out.
    public func close() { if onKernel { kernel.close(ref) } else { layer.close(ref) } }

    /// Sends RST and drops the connection at once.
    public func abort() { if onKernel { kernel.abort(ref) } else { layer.abort(ref) } }

    /// Bytes queued and not yet acknowledged (on kernel sockets: not yet handed to the kernel).
    public var bytesQueued: Int { onKernel ? kernel.queued(ref) : layer.queued(ref) }

    /// Turns Nagle's algorithm off (true) or on (false, the default): with it off, small
    /// segments go out at once even while earlier data is unacknowledged.
    public func setNoDelay(_ noDelay: Bool) {
        if onKernel { kernel.setNoDelay(ref, noDelay) } else { layer.setNoDelay(ref, noDelay) }
    }

    /// Keepalive (RFC 1122 4.2.3.6): after `seconds` of silence from the peer, probe it every
    /// `seconds` (at most 75); nine unanswered probes close the connection as timed out.
    /// 0 turns it off (the default).
    public func setKeepalive(seconds: Int) {
        if onKernel { kernel.setKeepalive(ref, seconds); return }
        layer.setIdleSettings(ref) { $0.keepaliveSeconds = UInt16(clamping: max(0, seconds)) }
    }

    /// Aborts the connection (RST, closed as `.idle`) after `seconds` without data either
    /// way. 0 turns it off (the default).
    public func setIdleTimeout(seconds: Int) {
        if onKernel { kernel.setIdleTimeout(ref, seconds); return }
        layer.setIdleSettings(ref) { $0.idleTimeoutSeconds = UInt16(clamping: max(0, seconds)) }
    }

    /// Sets the receive window to `bytes` (what the application can still take in). A
    /// window that opens by at least one MSS, or from closed, is announced at once. On kernel
    /// sockets, 0 stops reading (the kernel's window closes as its buffer fills).
    public func setReceiveWindow(_ bytes: Int) {
        if onKernel { kernel.setReceiveWindow(ref, bytes) } else { layer.setReceiveWindow(ref, bytes) }
    }

}
