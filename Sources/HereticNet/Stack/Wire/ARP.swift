#if canImport(HereticTransport)
import HereticTransport  // (the fuzzer compiles Wire/ alone, with Address.swift beside it)
#endif
/// An ARP packet for IPv4 over Ethernet (RFC 826): the only kind this stack speaks.
public struct ARPPacket: Equatable, Sendable {
    public static let length = 28
    public enum Operation: UInt16, Sendable { case request = 1, reply = 2 }

    public var operation: Operation
    public var senderMAC: MACAddress
    public var senderIP: IPv4Address
    public var targetMAC: MACAddress
    public var targetIP: IPv4Address

    public init(operation: Operation, senderMAC: MACAddress, senderIP: IPv4Address,
                targetMAC: MACAddress, targetIP: IPv4Address) {
        self.operation = operation
        self.senderMAC = senderMAC
        self.senderIP = senderIP
        self.targetMAC = targetMAC
        self.targetIP = targetIP
    }

    /// Parses the ARP payload of an Ethernet frame.
    public init(parsing p: UnsafeRawPointer, length: Int) throws(WireError) {
        guard length >= Self.length else { throw .truncated }
        guard p.be16(0) == 1, p.be16(2) == EtherType.ipv4 else {
            throw .unsupported("ARP for hardware \(p.be16(0)) protocol \(p.be16(2))")
        }
        guard p.byte(4) == 6, p.byte(5) == 4 else { throw .malformed("ARP address lengths") }
        guard let op = Operation(rawValue: p.be16(6)) else {
            throw .malformed("ARP operation \(p.be16(6))")
        }
        operation = op
        senderMAC = MACAddress.load(p, 8)
        senderIP = IPv4Address(raw: p.be32(14))
        targetMAC = MACAddress.load(p, 18)
        targetIP = IPv4Address(raw: p.be32(24))
    }

    /// Writes the 28 bytes at `p`.
    public func emit(into p: UnsafeMutableRawPointer) {
        p.setBE16(0, 1)
        p.setBE16(2, EtherType.ipv4)
        p.setByte(4, 6)
        p.setByte(5, 4)
        p.setBE16(6, operation.rawValue)
        senderMAC.store(p, 8)
        p.setBE32(14, senderIP.raw)
        targetMAC.store(p, 18)
        p.setBE32(24, targetIP.raw)
    }
}
