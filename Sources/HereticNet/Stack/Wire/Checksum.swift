#if canImport(HereticTransport)
import HereticTransport  // (the fuzzer compiles Wire/ alone, with Address.swift beside it)
#endif
/// The Internet checksum (RFC 1071): the ones'-complement sum of 16-bit big-endian words.
///
/// Sums are accumulated 64 bits at a time and folded once at the end, so summing a packet costs
/// about one add per eight bytes. Partial sums compose: the pseudo-header sum plus the segment's
/// sum, folded, is the TCP or UDP checksum.
public enum InternetChecksum {
    /// Adds `count` bytes at `p` to a running (unfolded) sum of big-endian 16-bit words.
    ///
    /// The bytes are summed as native-endian 32-bit halves of 64-bit loads into a 64-bit
    /// accumulator (no carry can be lost below 2^32 words), folded, and byte-swapped once:
    /// the ones'-complement sum does not depend on byte order but for that final swap
    /// (RFC 1071, section 2). Sums compose when split at even offsets.
    @inlinable
    public static func add(_ p: UnsafeRawPointer, count: Int, to initial: UInt64 = 0) -> UInt64 {
        var native: UInt64 = 0
        var i = 0
        while i + 16 <= count {
            let a = p.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            let b = p.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self)
            native &+= (a & 0xFFFF_FFFF) &+ (a >> 32) &+ (b & 0xFFFF_FFFF) &+ (b >> 32)
            i += 16
        }
        while i + 4 <= count {
            native &+= UInt64(p.loadUnaligned(fromByteOffset: i, as: UInt32.self))
            i += 4
        }
        if i + 2 <= count {
            native &+= UInt64(p.loadUnaligned(fromByteOffset: i, as: UInt16.self))
            i += 2
        }
        #if _endian(little)
        // A last odd byte is the high half of a big-endian word: the low half of a native one.
        if i < count { native &+= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) }
        return initial &+ UInt64(fold(native).byteSwapped)
        #else
        if i < count { native &+= UInt64(p.load(fromByteOffset: i, as: UInt8.self)) << 8 }
        return initial &+ UInt64(fold(native))
        #endif
    }

    /// Folds a 64-bit sum to 16 bits (ones' complement addition of its words).
    @inlinable
    public static func fold(_ sum: UInt64) -> UInt16 {
        var s = (sum & 0xFFFF_FFFF) &+ (sum >> 32)
        s = (s & 0xFFFF) &+ (s >> 16)
        s = (s & 0xFFFF) &+ (s >> 16)
        s = (s & 0xFFFF) &+ (s >> 16)
        return UInt16(truncatingIfNeeded: s)
    }

    /// The checksum field value for `count` bytes (with the field itself zeroed or included).
    @inlinable
    public static func compute(_ p: UnsafeRawPointer, count: Int, initial: UInt64 = 0) -> UInt16 {
        ~fold(add(p, count: count, to: initial))
    }

    /// The TCP/UDP pseudo-header sum for IPv4 (RFC 793, RFC 768).
    @inlinable
    public static func pseudoHeader(source: IPv4Address, destination: IPv4Address,
                                    protocol proto: UInt8, length: Int) -> UInt64 {
        UInt64(source.raw >> 16) &+ UInt64(source.raw & 0xFFFF)
            &+ UInt64(destination.raw >> 16) &+ UInt64(destination.raw & 0xFFFF)
            &+ UInt64(proto) &+ UInt64(length)
    }
}
