#if canImport(HereticTransport)
import HereticTransport  // (the fuzzer compiles Wire/ alone, with Address.swift beside it)
#endif
/// EtherType values this stack dispatches on.
public enum EtherType {
    public static let ipv4: UInt16 = 0x0800
    public static let arp: UInt16 = 0x0806
    public static let ipv6: UInt16 = 0x86DD
    public static let vlan: UInt16 = 0x8100
}

/// An Ethernet II frame: destination, source, EtherType, payload (no FCS: NICs strip it).
public struct EthernetFrame {
    public static let headerLength = 14
    /// Smallest frame on the wire without FCS; shorter payloads are padded.
    public static let minimumLength = 60

    public let base: UnsafeMutableRawPointer
    public let length: Int

    /// A view over `length` bytes; throws when they cannot hold the header.
    @inlinable
    public init(_ base: UnsafeMutableRawPointer, length: Int) throws(WireError) {
        guard length >= Self.headerLength else { throw .truncated }
        self.base = base
        self.length = length
    }

    @inlinable public var destination: MACAddress { MACAddress.load(base, 0) }
    @inlinable public var source: MACAddress { MACAddress.load(base, 6) }
    @inlinable public var etherType: UInt16 { UnsafeRawPointer(base).be16(12) }
    @inlinable public var payload: UnsafeMutableRawPointer { base + Self.headerLength }
    @inlinable public var payloadLength: Int { length - Self.headerLength }

    /// Writes a header at `base`; the payload follows at offset 14.
    @inlinable
    public static func emit(into base: UnsafeMutableRawPointer, destination: MACAddress,
                            source: MACAddress, etherType: UInt16) {
        destination.store(base, 0)
        source.store(base, 6)
        base.setBE16(12, etherType)
    }
}
