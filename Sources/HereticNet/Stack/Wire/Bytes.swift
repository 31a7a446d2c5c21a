#if canImport(HereticTransport)
import HereticTransport  // (the fuzzer compiles Wire/ alone, with Address.swift beside it)
#endif
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

