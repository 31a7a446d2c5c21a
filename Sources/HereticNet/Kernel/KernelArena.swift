import HereticTransport
/// A connection on Linux's sockets, as its handler's callbacks see it. Handlers take it as
/// `some TCPConnection`; every call goes straight to the engine (a final class).
public struct KernelConnection: TCPConnection {
    /// The engine outlives every callback that sees this value; held unretained, so a call
    /// through it costs no reference counting.
    @usableFromInline unowned(unsafe) let kernel: KernelNetwork
    @usableFromInline let ref: UInt64
    public let remote: TCPEndpoint
    public let localPort: UInt16

    @inlinable init(kernel: KernelNetwork, ref: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        self.kernel = kernel
        self.ref = ref
        self.remote = remote
        self.localPort = localPort
    }

    @inlinable public var handle: TCPConnectionHandle {
        TCPConnectionHandle(engine: kernel, id: ref, remote: remote, localPort: localPort)
    }
    @inlinable @discardableResult public func send(_ bytes: UnsafeRawBufferPointer) -> Int { kernel.send(ref, bytes) }
    @inlinable @discardableResult public func send(gathering parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> Int {
        kernel.send(ref, gathering: parts)
    }
    @inlinable public func close() { kernel.close(ref) }
    @inlinable public func abort() { kernel.abort(ref) }
    @inlinable public var bytesQueued: Int { kernel.queued(ref) }
    @inlinable public var canSend: Bool { kernel.canSend(ref) }
    @inlinable public var isHeldBack: Bool { kernel.isHeldBack(ref) }
    @inlinable public func setNoDelay(_ noDelay: Bool) { kernel.setNoDelay(ref, noDelay) }
    @inlinable public func setKeepalive(_ keepalive: TCPKeepalive?) { kernel.setKeepalive(ref, keepalive) }
    @inlinable public func setSendBufferSize(_ bytes: Int) { kernel.setSendBufferSize(ref, bytes) }
    @inlinable public func setIdleTimeout(seconds: Int) { kernel.setIdleTimeout(ref, seconds) }
    @inlinable public func setReceiveWindow(_ bytes: Int) { kernel.setReceiveWindow(ref, bytes) }
    @inlinable public func setTimer(milliseconds: Int?) { kernel.setTimer(ref, milliseconds) }
}

/// The handlers of one handler type on a `KernelNetwork`, stored inline (no object per
/// connection): the engine keeps each connection's state in its own slot table and calls the
/// handler through this arena by index.
///
/// As in the user-space stack's `TCPArena`, the entry points are closures made by an
/// `@inlinable` initializer, so in the module that names the handler type: they run code
/// specialised for it. (A generic class's overridden methods would run the unspecialised
/// generic implementation, reaching the handler through its witness table on every event.)
@usableFromInline class AnyKernelArena {
    @usableFromInline var index: UInt8 = 0
    @usableFromInline init() {}
    /// Stores a new handler (made by the listener's factory) and returns its index.
    @usableFromInline @exclusivity(unchecked) var makeAccepted: () -> UInt32 = { fatalError("no handler factory") }
    @usableFromInline @exclusivity(unchecked) var connected: (UInt32, KernelConnection) -> Void = { _, _ in }
    @usableFromInline @exclusivity(unchecked) var received: (UInt32, UnsafeRawBufferPointer, KernelConnection) -> Void = { _, _, _ in }
    @usableFromInline @exclusivity(unchecked) var writable: (UInt32, KernelConnection) -> Void = { _, _ in }
    @usableFromInline @exclusivity(unchecked) var peerClosed: (UInt32, KernelConnection) -> Void = { _, _ in }
    @usableFromInline @exclusivity(unchecked) var timerFired: (UInt32, KernelConnection) -> Void = { _, _ in }
    /// Tells the handler its connection is over and frees its place.
    @usableFromInline @exclusivity(unchecked) var closed: (UInt32, TCPCloseReason) -> Void = { _, _ in }
    @usableFromInline @exclusivity(unchecked) var live: () -> Int = { 0 }
}

@usableFromInline final class KernelArena<H: TCPHandler>: AnyKernelArena {
    @usableFromInline let handlers = ChunkedStore<H?>()
    @usableFromInline var free: [UInt32] = []
    @usableFromInline var factory: (() -> H)?
    @usableFromInline var liveCount = 0

    @inlinable init(makeHandler: (() -> H)?) {
        self.factory = makeHandler
        super.init()
        let me = Unmanaged.passUnretained(self)
        makeAccepted = { me._withUnsafeGuaranteedRef { $0.store($0.factory!()) } }
        connected = { h, c in me._withUnsafeGuaranteedRef { $0.handlers[Int(h)]?.connected(c) } }
        received = { h, data, c in me._withUnsafeGuaranteedRef { $0.handlers[Int(h)]?.received(data, c) } }
        writable = { h, c in me._withUnsafeGuaranteedRef { $0.handlers[Int(h)]?.writable(c) } }
        peerClosed = { h, c in me._withUnsafeGuaranteedRef { $0.handlers[Int(h)]?.peerClosed(c) } }
        timerFired = { h, c in me._withUnsafeGuaranteedRef { $0.handlers[Int(h)]?.timerFired(c) } }
        closed = { h, reason in me._withUnsafeGuaranteedRef { $0.close(h, reason) } }
        live = { me._withUnsafeGuaranteedRef { $0.liveCount } }
    }

    @inlinable func store(_ handler: H) -> UInt32 {
        liveCount += 1
        if let i = free.popLast() {
            handlers[Int(i)] = handler
            return i
        }
        handlers.append(handler)
        return UInt32(handlers.count - 1)
    }

    @inlinable func close(_ h: UInt32, _ reason: TCPCloseReason) {
        guard var handler = handlers[Int(h)] else { return }
        handlers[Int(h)] = nil
        liveCount -= 1
        handler.closed(reason)
        if liveCount == 0 {
            // Every handler is gone: give the chunks back instead of keeping their places.
            handlers.truncate(to: 0)
            free.removeAll()
        } else {
            free.append(h)
        }
    }
}
