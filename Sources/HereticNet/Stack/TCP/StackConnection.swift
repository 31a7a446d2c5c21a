import HereticTransport
/// A connection of Heretic's own TCP, as its handler's callbacks see it: typed to the
/// handler's arena, so a send from a callback goes straight to the specialised send path (no
/// dynamic dispatch, no reference counting). Handlers take it as `some TCPConnection`.
public struct StackConnection<H: TCPHandler>: TCPConnection {
    /// The arena outlives every callback that sees this value.
    @usableFromInline unowned(unsafe) let arena: TCPArena<H>
    @usableFromInline let ref: UInt64
    public let remote: TCPEndpoint
    public let localPort: UInt16

    @inlinable init(arena: TCPArena<H>, ref: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        self.arena = arena
        self.ref = ref
        self.remote = remote
        self.localPort = localPort
    }

    @inlinable var layer: TCPLayer { arena.layer }

    @inlinable public var handle: TCPConnectionHandle {
        TCPConnectionHandle(engine: arena.layer, id: ref, remote: remote, localPort: localPort)
    }

    @inlinable @discardableResult public func send(_ bytes: UnsafeRawBufferPointer) -> Int { arena.send(ref, bytes) }

    @inlinable @discardableResult public func send(gathering parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> Int {
        arena.send(ref, gathering: parts)
    }

    @inlinable public func close() { layer.close(ref) }
    @inlinable public func abort() { layer.abort(ref) }
    @inlinable public var bytesQueued: Int { layer.queued(ref) }
    @inlinable public var canSend: Bool { layer.canSend(ref) }
    @inlinable public var isHeldBack: Bool { layer.isHeldBack(ref) }
    @inlinable public func setNoDelay(_ noDelay: Bool) { layer.setNoDelay(ref, noDelay) }
    @inlinable public func setKeepalive(_ keepalive: TCPKeepalive?) { layer.setKeepalive(ref, keepalive) }
    @inlinable public func setSendBufferSize(_ bytes: Int) { layer.setSendBufferSize(ref, bytes) }
    @inlinable public func setIdleTimeout(seconds: Int) { layer.setIdleTimeout(ref, seconds) }
    @inlinable public func setReceiveWindow(_ bytes: Int) { layer.setReceiveWindow(ref, bytes) }
    @inlinable public func setTimer(milliseconds: Int?) { layer.setTimer(ref, milliseconds) }
}
