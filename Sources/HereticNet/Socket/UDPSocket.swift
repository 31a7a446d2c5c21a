/// An IPv4 address and a port: one end of a UDP exchange or a TCP connection.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv4Address
    public var port: UInt16
    public init(_ address: IPv4Address, _ port: UInt16) { self.address = address; self.port = port }
    public var description: String { "\(address):\(port)" }
}

public typealias UDPEndpoint = Endpoint

/// A UDP socket's behaviour: a value type whose stored properties are the socket's state.
/// The interface calls it for every datagram to its port, on the interface's core.
public protocol UDPHandler {
    mutating func received(_ data: UnsafeRawBufferPointer, from peer: UDPEndpoint, _ socket: inout UDPSocket)
}

/// What a handler can do while it runs: send datagrams from its port.
public struct UDPSocket {
    @usableFromInline unowned(unsafe) let interface: Interface
    public let localPort: UInt16

    @inlinable init(interface: Interface, localPort: UInt16) {
        self.interface = interface
        self.localPort = localPort
    }

    /// Sends `data` to `peer`. Returns false when the datagram was dropped (too large, no
    /// buffer); a datagram waiting for ARP counts as sent.
    @inlinable @discardableResult
    public func send(_ data: UnsafeRawBufferPointer, to peer: UDPEndpoint) -> Bool {
        interface.sendUDP(data, from: localPort, to: peer)
    }
}

/// Type-erased storage of one bound handler (one object per bound port, not per datagram).
class AnyUDPBinding {
    func deliver(_ data: UnsafeRawBufferPointer, from: UDPEndpoint, _ socket: inout UDPSocket) {}
}

final class UDPBinding<H: UDPHandler>: AnyUDPBinding {
    @exclusivity(unchecked) var handler: H
    init(_ handler: H) { self.handler = handler }
    override func deliver(_ data: UnsafeRawBufferPointer, from: UDPEndpoint, _ socket: inout UDPSocket) {
        handler.received(data, from: from, &socket)
    }
}
