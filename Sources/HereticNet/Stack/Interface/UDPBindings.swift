import HereticTransport
/// The user-space stack's UDP socket: sends through its interface.
public struct StackUDPSocket: UDPSocket {
    @usableFromInline unowned(unsafe) let interface: Interface
    public let localPort: UInt16

    @inlinable init(interface: Interface, localPort: UInt16) {
        self.interface = interface
        self.localPort = localPort
    }

    @inlinable @discardableResult
    public func send(_ data: UnsafeRawBufferPointer, to peer: UDPEndpoint) -> Bool {
        interface.sendUDP(data, from: localPort, to: peer)
    }
}

/// Type-erased storage of one bound handler (one object per bound port, not per datagram).
@usableFromInline class AnyUDPBinding {
    @usableFromInline init() {}
    @usableFromInline func deliver(_ data: UnsafeRawBufferPointer, from: UDPEndpoint, _ socket: StackUDPSocket) {}
}

@usableFromInline final class UDPBinding<H: UDPHandler>: AnyUDPBinding {
    @usableFromInline @exclusivity(unchecked) var handler: H
    @inlinable init(_ handler: H) { self.handler = handler }
    @inlinable override func deliver(_ data: UnsafeRawBufferPointer, from: UDPEndpoint, _ socket: StackUDPSocket) {
        handler.received(data, from: from, socket)
    }
}
