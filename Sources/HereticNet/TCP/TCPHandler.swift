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
    /// There is room to send again: a send took less than it was given (the connection's
    /// send buffer, or the process-wide cap, was full), or the queue had grown past half its
    /// buffer, and it has drained below that (at most `TCPLayer.writableThreshold`). For
    /// streaming without holding everything at once.
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
    /// what the peer's window allows now. Returns how many bytes were taken: all of them
    /// unless the connection's send buffer (or the process-wide cap on send memory) is full,
    /// in which case only what fits is taken and `writable` follows once there is room; 0
    /// also when the connection cannot send any more (it is closing or closed).
    @discardableResult
    @inlinable public func send(_ bytes: UnsafeRawBufferPointer) -> Int {
        if onKernel { return unmanagedKernel._withUnsafeGuaranteedRef { $0.send(ref, bytes) } }
        return unmanagedLayer._withUnsafeGuaranteedRef { $0.send(ref, bytes) }
    }

    /// Sends FIN once everything queued has gone out.
    public func close() { if onKernel { kernel.close(ref) } else { layer.close(ref) } }

    /// Sends RST and drops the connection at once.
    public func abort() { if onKernel { kernel.abort(ref) } else { layer.abort(ref) } }

    /// Bytes queued and not yet acknowledged (on kernel sockets: not yet handed to the kernel).
    public var bytesQueued: Int { onKernel ? kernel.queued(ref) : layer.queued(ref) }

    /// Whether the connection still takes data to send (open, and not closing).
    public var canSend: Bool { onKernel ? kernel.canSend(ref) : layer.canSend(ref) }

    /// Whether a send took less than it was given and `writable` has not followed yet.
    public var isHeldBack: Bool { onKernel ? kernel.isHeldBack(ref) : layer.isHeldBack(ref) }

    /// Turns Nagle's algorithm off (true) or on (false, the default): with it off, small
    /// segments go out at once even while earlier data is unacknowledged.
    public func setNoDelay(_ noDelay: Bool) {
        if onKernel { kernel.setNoDelay(ref, noDelay) } else { layer.setNoDelay(ref, noDelay) }
    }

    /// Keepalive (RFC 1122 4.2.3.6): after `seconds` of silence from the peer, probe it every
    /// `seconds` (at most 75); nine unanswered probes close the connection as timed out.
    /// 0 turns it off (the default).
    public func setKeepalive(seconds: Int) {
        setKeepalive(seconds > 0 ? TCPKeepalive(idle: seconds, interval: min(seconds, 75)) : nil)
    }

    /// Keepalive with every setting (nil: off).
    public func setKeepalive(_ keepalive: TCPKeepalive?) {
        if onKernel { kernel.setKeepalive(ref, keepalive); return }
        layer.setIdleSettings(ref) { $0.setKeepalive(keepalive) }
    }

    /// The most this connection's send queue holds (default: its engine's
    /// `sendBufferSize`, 256 KiB); rounded up to whole KiB, at most 64 MiB. 0 restores the default.
    public func setSendBufferSize(_ bytes: Int) {
        if onKernel { kernel.setSendBufferSize(ref, bytes) } else { layer.setSendBufferSize(ref, bytes) }
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

/// Keepalive (RFC 1122 4.2.3.6), as Linux's TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT:
/// after `idle` seconds without a segment from the peer, a probe every `interval` seconds;
/// `count` unanswered probes close the connection as timed out.
public struct TCPKeepalive: Sendable, Equatable {
    public var idle: Int
    public var interval: Int
    public var count: Int

    /// `idle` at most 65,535 s, `interval` at most 255 s, `count` at most 255.
    public init(idle: Int, interval: Int = 75, count: Int = 9) {
        self.idle = min(max(1, idle), Int(UInt16.max))
        self.interval = min(max(1, interval), Int(UInt8.max))
        self.count = min(max(1, count), Int(UInt8.max))
    }
}
