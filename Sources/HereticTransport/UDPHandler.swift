/// A UDP socket's behaviour: a value type whose stored properties are the socket's state.
/// The engine calls it for every datagram to its port, on the engine's core, with its own
/// concrete socket type (write the parameter as `some UDPSocket`).
public protocol UDPHandler {
    mutating func received(_ data: UnsafeRawBufferPointer, from peer: UDPEndpoint, _ socket: some UDPSocket)
}

/// What a UDP handler can do while it runs (and what an engine's `udpSocket(port:)` gives
/// for sending outside callbacks): send datagrams from its port.
public protocol UDPSocket {
    var localPort: UInt16 { get }
    /// Sends `data` to `peer`. Returns false when the datagram was dropped (too large, no
    /// buffer, the kernel's socket buffer full), counted by the engine; a datagram waiting
    /// for ARP counts as sent.
    @discardableResult func send(_ data: UnsafeRawBufferPointer, to peer: UDPEndpoint) -> Bool
}
