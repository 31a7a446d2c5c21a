/// Why a packet was refused. Parsers check every length and field they rely on before
/// trusting it; a refused packet is dropped and counted, never trusted.
public enum WireError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Shorter than its header, or than a length field says.
    case truncated
    /// A field holds a value the protocol forbids (the reason names it).
    case malformed(String)
    /// The checksum does not verify.
    case badChecksum
    /// Well-formed, but a variant this stack does not handle (e.g. ARP for IPv6).
    case unsupported(String)

    public var description: String {
        switch self {
        case .truncated: return "truncated packet"
        case .malformed(let why): return "malformed packet: \(why)"
        case .badChecksum: return "bad checksum"
        case .unsupported(let what): return "unsupported: \(what)"
        }
    }
}

/// Big-endian loads and stores at byte offsets; callers have checked the bounds.
extension UnsafeRawPointer {
    @inlinable @inline(__always) func be16(_ offset: Int) -> UInt16 {
        UInt16(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt16.self))
    }
    @inlinable @inline(__always) func be32(_ offset: Int) -> UInt32 {
        UInt32(bigEndian: loadUnaligned(fromByteOffset: offset, as: UInt32.self))
    }
    @inlinable @inline(__always) func byte(_ offset: Int) -> UInt8 {
        load(fromByteOffset: offset, as: UInt8.self)
    }
}

extension UnsafeMutableRawPointer {
    @inlinable @inline(__always) func setBE16(_ offset: Int, _ v: UInt16) {
        storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt16.self)
    }
    @inlinable @inline(__always) func setBE32(_ offset: Int, _ v: UInt32) {
        storeBytes(of: v.bigEndian, toByteOffset: offset, as: UInt32.self)
    }
    @inlinable @inline(__always) func setByte(_ offset: Int, _ v: UInt8) {
        storeBytes(of: v, toByteOffset: offset, as: UInt8.self)
    }
}

/// A 48-bit Ethernet address, kept in the low bits of a UInt64 (first byte most significant).
public struct MACAddress: Hashable, Sendable, CustomStringConvertible {
    public let raw: UInt64

    @inlinable public init(raw: UInt64) { self.raw = raw & 0xFFFF_FFFF_FFFF }

    public init(_ b0: UInt8, _ b1: UInt8, _ b2: UInt8, _ b3: UInt8, _ b4: UInt8, _ b5: UInt8) {
        raw = UInt64(b0) << 40 | UInt64(b1) << 32 | UInt64(b2) << 24 | UInt64(b3) << 16
            | UInt64(b4) << 8 | UInt64(b5)
    }

    public static let broadcast = MACAddress(raw: 0xFFFF_FFFF_FFFF)
    public static let zero = MACAddress(raw: 0)

    public var isBroadcast: Bool { raw == 0xFFFF_FFFF_FFFF }
    /// Group bit: broadcast and multicast addresses.
    public var isMulticast: Bool { raw & (1 << 40) != 0 }

    @inlinable static func load(_ p: UnsafeRawPointer, _ offset: Int) -> MACAddress {
        MACAddress(raw: UInt64(p.be16(offset)) << 32 | UInt64(p.be32(offset + 2)))
    }

    @inlinable func store(_ p: UnsafeMutableRawPointer, _ offset: Int) {
        p.setBE16(offset, UInt16(truncatingIfNeeded: raw >> 32))
        p.setBE32(offset + 2, UInt32(truncatingIfNeeded: raw))
    }

    public var description: String {
        (0..<6).map { i -> String in
            let b = UInt8(truncatingIfNeeded: raw >> UInt64(40 - 8 * i))
            return (b < 16 ? "0" : "") + String(b, radix: 16)
        }.joined(separator: ":")
    }
}

/// An IPv4 address in host order.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let raw: UInt32

    @inlinable public init(raw: UInt32) { self.raw = raw }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        raw = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-quad text ("10.0.0.1"); nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard !p.isEmpty, p.count <= 3, let n = UInt8(p) else { return nil }
            v = v << 8 | UInt32(n)
        }
        raw = v
    }

    public static let any = IPv4Address(raw: 0)
    public static let broadcast = IPv4Address(raw: 0xFFFF_FFFF)

    public var isMulticast: Bool { raw >> 28 == 0xE }
    public var isBroadcast: Bool { raw == 0xFFFF_FFFF }
    public var isUnspecified: Bool { raw == 0 }

    public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.raw < b.raw }

    public var description: String {
        "\(raw >> 24).\(raw >> 16 & 0xFF).\(raw >> 8 & 0xFF).\(raw & 0xFF)"
    }
}
