#if canImport(HereticTransport)
import HereticTransport  // (the fuzzer compiles Wire/ alone, with Address.swift beside it)
#endif
/// IP protocol numbers this stack dispatches on.
public enum IPProtocol {
    public static let icmp: UInt8 = 1
    public static let tcp: UInt8 = 6
    public static let udp: UInt8 = 17
}

/// A validated view of an IPv4 packet (RFC 791). Options are skipped, not interpreted.
public struct IPv4Packet {
    public static let minimumHeaderLength = 20

    public let base: UnsafeMutableRawPointer
    /// Header length in bytes (20 to 60).
    public let headerLength: Int
    /// Total length from the header: header plus payload, never more than the bytes received.
    public let totalLength: Int

    /// Checks version, header length, total length against the bytes present, and the header
    /// checksum (unless `verifyChecksum` is false because the NIC already did).
    @inlinable
    public init(_ base: UnsafeMutableRawPointer, length: Int, verifyChecksum: Bool = true) throws(WireError) {
        guard length >= Self.minimumHeaderLength else { throw .truncated }
        let p = UnsafeRawPointer(base)
        let vihl = p.byte(0)
        guard vihl >> 4 == 4 else { throw .malformed("IP version \(vihl >> 4)") }
        let ihl = Int(vihl & 0x0F) * 4
        guard ihl >= Self.minimumHeaderLength else { throw .malformed("IPv4 header length \(ihl)") }
        guard ihl <= length else { throw .truncated }
        let total = Int(p.be16(2))
        guard total >= ihl else { throw .malformed("IPv4 total length \(total) below header length") }
        guard total <= length else { throw .truncated }
        if verifyChecksum && InternetChecksum.fold(InternetChecksum.add(p, count: ihl)) != 0xFFFF {
            throw .badChecksum
        }
        self.base = base
        headerLength = ihl
        totalLength = total
    }

    /// The header an ICMP error quotes, with the first bytes of what followed it: its total
    /// length names the original datagram, not what is quoted, and its checksum is not
    /// checked (routers change the TTL). `totalLength` is the `length` quoted.
    @inlinable
    public init(quoting base: UnsafeMutableRawPointer, length: Int) throws(WireError) {
        guard length >= Self.minimumHeaderLength else { throw .truncated }
        let vihl = UnsafeRawPointer(base).byte(0)
        guard vihl >> 4 == 4 else { throw .malformed("IP version \(vihl >> 4)") }
        let ihl = Int(vihl & 0x0F) * 4
        guard ihl >= Self.minimumHeaderLength else { throw .malformed("IPv4 header length \(ihl)") }
        guard ihl <= length else { throw .truncated }
        self.base = base
        headerLength = ihl
        totalLength = length
    }

    @inlinable var p: UnsafeRawPointer { UnsafeRawPointer(base) }
    @inlinable public var dscpECN: UInt8 { p.byte(1) }
    @inlinable public var identification: UInt16 { p.be16(4) }
    @inlinable public var dontFragment: Bool { p.be16(6) & 0x4000 != 0 }
    @inlinable public var moreFragments: Bool { p.be16(6) & 0x2000 != 0 }
    /// Fragment offset in bytes.
    @inlinable public var fragmentOffset: Int { Int(p.be16(6) & 0x1FFF) * 8 }
    @inlinable public var isFragment: Bool { moreFragments || fragmentOffset != 0 }
    @inlinable public var ttl: UInt8 { p.byte(8) }
    @inlinable public var proto: UInt8 { p.byte(9) }
    @inlinable public var checksum: UInt16 { p.be16(10) }
    @inlinable public var source: IPv4Address { IPv4Address(raw: p.be32(12)) }
    @inlinable public var destination: IPv4Address { IPv4Address(raw: p.be32(16)) }
    @inlinable public var payload: UnsafeMutableRawPointer { base + headerLength }
    @inlinable public var payloadLength: Int { totalLength - headerLength }

    /// Writes a 20-byte header (no options) with its checksum; the payload follows.
    @inlinable
    public static func emit(into base: UnsafeMutableRawPointer, source: IPv4Address,
                            destination: IPv4Address, protocol proto: UInt8, payloadLength: Int,
                            identification: UInt16 = 0, ttl: UInt8 = 64, dontFragment: Bool = true,
                            checksum: Bool = true) {
        base.setByte(0, 0x45)
        base.setByte(1, 0)
        base.setBE16(2, UInt16(truncatingIfNeeded: 20 + payloadLength))
        base.setBE16(4, identification)
        base.setBE16(6, dontFragment ? 0x4000 : 0)
        base.setByte(8, ttl)
        base.setByte(9, proto)
        base.setBE16(10, 0)
        base.setBE32(12, source.raw)
        base.setBE32(16, destination.raw)
        if checksum { base.setBE16(10, InternetChecksum.compute(UnsafeRawPointer(base), count: 20)) }
    }
}
