/// A connection's behaviour: a value type whose stored properties are the connection's
/// application state, kept inline beside the engine's own state for the connection (no
/// object per connection). Every callback runs on the engine's core.
///
/// The same handler runs on every engine: the callbacks take the connection as
/// `some TCPConnection`, so each engine calls them with its own concrete connection type and
/// the compiler specialises the handler for it (no existential, no dynamic dispatch per
/// event). Write the parameter as `some TCPConnection` (not `TCPConnection` or
/// `any TCPConnection`, which declare a different method that the engine never calls).
public protocol TCPHandler {
    /// The handshake completed.
    mutating func connected(_ connection: some TCPConnection)
    /// In-order bytes arrived. They point into the engine's receive buffer (the packet, or
    /// the kernel engine's provided buffer): copy what must outlive the call.
    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection)
    /// There is room to send again: a send took less than it was given (the connection's
    /// send buffer, or the process-wide cap, was full), or the queue had grown past half its
    /// buffer, and it has drained below that (at most `TCPLayer.writableThreshold`). For
    /// streaming without holding everything at once.
    mutating func writable(_ connection: some TCPConnection)
    /// The peer will send no more (FIN). By default the connection closes its side too.
    mutating func peerClosed(_ connection: some TCPConnection)
    /// The connection's timer (`TCPConnection.setTimer`) went off.
    mutating func timerFired(_ connection: some TCPConnection)
    /// The connection is over for the application: reset, timed out, or closed both ways
    /// (said when TIME-WAIT begins; the stack alone keeps the 4-tuple for its duration).
    mutating func closed(_ reason: TCPCloseReason)
}

extension TCPHandler {
    @inlinable public mutating func connected(_ connection: some TCPConnection) {}
    @inlinable public mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {}
    @inlinable public mutating func writable(_ connection: some TCPConnection) {}
    @inlinable public mutating func peerClosed(_ connection: some TCPConnection) { connection.close() }
    @inlinable public mutating func timerFired(_ connection: some TCPConnection) {}
    @inlinable public mutating func closed(_ reason: TCPCloseReason) {}
}

/// What a handler can do to its connection while it runs, on any engine. Each engine passes
/// its own conforming value (Heretic's stack a `StackConnection`, the kernel engine a
/// `KernelConnection`); `handle` names the connection outside callbacks.
public protocol TCPConnection {
    /// Names this connection from outside its callbacks (another connection's handler, a
    /// task, a message from another core arriving on this one). It never reaches another
    /// connection: once this one has closed, calls through it do nothing.
    var handle: TCPConnectionHandle { get }
    var remote: TCPEndpoint { get }
    var localPort: UInt16 { get }

    /// Queues bytes for sending (copied: the caller's buffer is free on return) and sends
    /// what the engine can now. Returns how many bytes were taken: all of them unless the
    /// connection's send buffer (or the process-wide cap on send memory) is full, in which
    /// case only what fits is taken and `writable` follows once there is room; 0 also when
    /// the connection cannot send any more (it is closing or closed).
    @discardableResult func send(_ bytes: UnsafeRawBufferPointer) -> Int
    /// Sends several buffers as one write (a header and a body, say): they leave together,
    /// in as few segments as they fit. Returns the bytes taken, counted across the buffers
    /// in order, as `send` does.
    @discardableResult func send(gathering parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> Int
    /// Sends FIN once everything queued has gone out (half-close: data still arrives).
    func close()
    /// Sends RST and drops the connection at once.
    func abort()
    /// Bytes queued and not yet acknowledged (on kernel sockets: not yet handed to the kernel).
    var bytesQueued: Int { get }
    /// Whether the connection still takes data to send (open, and not closing).
    var canSend: Bool { get }
    /// Whether `writable` is due: a send took less than it was given, or the queue grew past
    /// half its buffer; it follows once the queue has drained below that mark.
    var isHeldBack: Bool { get }
    /// Turns Nagle's algorithm off (true) or on (false, the default): with it off, small
    /// segments go out at once even while earlier data is unacknowledged.
    func setNoDelay(_ noDelay: Bool)
    /// Keepalive with every setting (nil: off).
    func setKeepalive(_ keepalive: TCPKeepalive?)
    /// The most this connection's send queue holds (default: its engine's `sendBufferSize`,
    /// 256 KiB); rounded up to whole KiB, at most 64 MiB. 0 restores the default.
    func setSendBufferSize(_ bytes: Int)
    /// Aborts the connection (RST, closed as `.idle`) after `seconds` without data either
    /// way. 0 turns it off (the default).
    func setIdleTimeout(seconds: Int)
    /// Sets the receive window to `bytes` (what the application can still take in). A
    /// window that opens by at least one MSS, or from closed, is announced at once. On kernel
    /// sockets, 0 stops reading (the kernel's window closes as its buffer fills).
    func setReceiveWindow(_ bytes: Int)
    /// Calls the handler's `timerFired` once, `milliseconds` from now (on the engine's timing
    /// wheel: never early, late by at most a tick); replaces the timer set before. nil stops it.
    func setTimer(milliseconds: Int?)
}

extension TCPConnection {
    /// Keepalive (RFC 1122 4.2.3.6): after `seconds` of silence from the peer, probe it every
    /// `seconds` (at most 75); nine unanswered probes close the connection as timed out.
    /// 0 turns it off (the default).
    @inlinable public func setKeepalive(seconds: Int) {
        setKeepalive(seconds > 0 ? TCPKeepalive(idle: seconds, interval: min(seconds, 75)) : nil)
    }

    /// Sends bytes (copied), as `send(_:)` on a raw buffer.
    @inlinable @discardableResult public func send(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBytes { send($0) }
    }
}

/// A connection named outside its callbacks: valid on the engine's core for as long as the
/// engine exists. Once the connection has closed (or been replaced in its slot by another),
/// every call through the handle does nothing and reports a closed connection.
///
/// Calls through a handle reach the engine by dynamic dispatch (one indirect call per
/// operation); handler callbacks get the engine's concrete connection type instead.
public struct TCPConnectionHandle: TCPConnection, Hashable, @unchecked Sendable {
    @usableFromInline unowned(unsafe) let engine: any ConnectionEngine
    /// The engine's reference: slot and generation.
    public let id: UInt64
    public let remote: TCPEndpoint
    public let localPort: UInt16

    @inlinable package init(engine: any ConnectionEngine, id: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        self.engine = engine
        self.id = id
        self.remote = remote
        self.localPort = localPort
    }

    @inlinable public var handle: TCPConnectionHandle { self }
    /// Whether the connection is still open (not closed for the application).
    public var isOpen: Bool { engine.isOpen(id) }
    @inlinable @discardableResult public func send(_ bytes: UnsafeRawBufferPointer) -> Int { engine.send(id, bytes) }
    @inlinable @discardableResult public func send(gathering parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> Int {
        engine.send(id, gathering: parts)
    }
    public func close() { engine.close(id) }
    public func abort() { engine.abort(id) }
    public var bytesQueued: Int { engine.queued(id) }
    public var canSend: Bool { engine.canSend(id) }
    public var isHeldBack: Bool { engine.isHeldBack(id) }
    public func setNoDelay(_ noDelay: Bool) { engine.setNoDelay(id, noDelay) }
    public func setKeepalive(_ keepalive: TCPKeepalive?) { engine.setKeepalive(id, keepalive) }
    public func setSendBufferSize(_ bytes: Int) { engine.setSendBufferSize(id, bytes) }
    public func setIdleTimeout(seconds: Int) { engine.setIdleTimeout(id, seconds) }
    public func setReceiveWindow(_ bytes: Int) { engine.setReceiveWindow(id, bytes) }
    public func setTimer(milliseconds: Int?) { engine.setTimer(id, milliseconds) }

    public static func == (a: Self, b: Self) -> Bool { a.id == b.id && a.engine === b.engine }
    public func hash(into h: inout Hasher) {
        h.combine(id)
        h.combine(ObjectIdentifier(engine))
    }
}

/// What both engines do to a connection named by its reference: the calls behind
/// `TCPConnectionHandle` and `TCPSocket` (one per operation, never per packet).
public protocol ConnectionEngine: AnyObject {
    func isOpen(_ ref: UInt64) -> Bool
    func send(_ ref: UInt64, _ bytes: UnsafeRawBufferPointer) -> Int
    func send(_ ref: UInt64, gathering parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> Int
    func close(_ ref: UInt64)
    func abort(_ ref: UInt64)
    func queued(_ ref: UInt64) -> Int
    func canSend(_ ref: UInt64) -> Bool
    func isHeldBack(_ ref: UInt64) -> Bool
    func setNoDelay(_ ref: UInt64, _ noDelay: Bool)
    func setKeepalive(_ ref: UInt64, _ keepalive: TCPKeepalive?)
    func setSendBufferSize(_ ref: UInt64, _ bytes: Int)
    func setIdleTimeout(_ ref: UInt64, _ seconds: Int)
    func setReceiveWindow(_ ref: UInt64, _ bytes: Int)
    func setTimer(_ ref: UInt64, _ milliseconds: Int?)
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

/// Why a connection ended, as its handler hears in `closed`.
public enum TCPCloseReason: Sendable, Equatable {
    case normal
    case reset
    case refused
    /// Retransmissions, keepalive probes or the connect deadline went unanswered (RFC 9293's
    /// user timeout).
    case timedOut
    /// Nothing was sent or received for the connection's idle timeout: it was aborted.
    case idle
}
