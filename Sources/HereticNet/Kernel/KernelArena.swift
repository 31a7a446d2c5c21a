/// The handlers of one handler type on a `KernelNetwork`, stored inline (no object per
/// connection): the engine keeps each connection's state in its own slot table and calls the
/// handler through this arena by index. One virtual call per event erases the type.
@usableFromInline class AnyKernelArena {
    @usableFromInline var index: UInt8 = 0
    @usableFromInline init() {}
    /// Stores a new handler (made by the listener's factory) and returns its index.
    @usableFromInline func makeAccepted() -> UInt32 { fatalError("abstract") }
    @usableFromInline func connected(_ h: UInt32, _ c: inout TCPConnection) {}
    @usableFromInline func received(_ h: UInt32, _ data: UnsafeRawBufferPointer, _ c: inout TCPConnection) {}
    @usableFromInline func writable(_ h: UInt32, _ c: inout TCPConnection) {}
    @usableFromInline func peerClosed(_ h: UInt32, _ c: inout TCPConnection) {}
    /// Tells the handler its connection is over and frees its place.
    @usableFromInline func closed(_ h: UInt32, _ reason: TCPCloseReason) {}
    @usableFromInline var live: Int { 0 }
}

@usableFromInline final class KernelArena<H: TCPHandler>: AnyKernelArena {
    @usableFromInline let handlers = ChunkedStore<H?>()
    @usableFromInline var free: [UInt32] = []
    @usableFromInline var factory: (() -> H)?
    @usableFromInline var liveCount = 0

    @usableFromInline init(makeHandler: (() -> H)?) {
        self.factory = makeHandler
        super.init()
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

    @usableFromInline override func makeAccepted() -> UInt32 { store(factory!()) }

    @usableFromInline override func connected(_ h: UInt32, _ c: inout TCPConnection) {
        handlers[Int(h)]?.connected(&c)
    }

    @usableFromInline override func received(_ h: UInt32, _ data: UnsafeRawBufferPointer, _ c: inout TCPConnection) {
        handlers[Int(h)]?.received(data, &c)
    }

    @usableFromInline override func writable(_ h: UInt32, _ c: inout TCPConnection) {
        handlers[Int(h)]?.writable(&c)
    }

    @usableFromInline override func peerClosed(_ h: UInt32, _ c: inout TCPConnection) {
        handlers[Int(h)]?.peerClosed(&c)
    }

    @usableFromInline override func closed(_ h: UInt32, _ reason: TCPCloseReason) {
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

    @usableFromInline override var live: Int { liveCount }
}
