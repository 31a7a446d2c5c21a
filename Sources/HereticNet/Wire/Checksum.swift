/// The Internet checksum (RFC 1071): the ones'-complement sum of 16-bit big-endian words.
///
/// Sums are accumulated 64 bits at a time and folded once at the end, so summing a packet costs
/// about one add per eight bytes. Partial sums compose: the pseudo-header sum plus the segment's
/// sum, folded, is the TCP or UDP checksum.
public enum InternetChecksum {
    /// Adds `count` bytes at `p` to a running (unfolded) sum.
    @inlinable
    public static func add(_ p: UnsafeRawPointer, count: Int, to initial: UInt64 = 0) -> UInt64 {
        var sum = initial
        var i = 0
        // Eight bytes at a time, read as big-endian words' sum in one 64-bit lane with carries.
        while i + 8 <= count {
            let w = UInt64(bigEndian: p.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            let (s, o) = sum.addingReportingOverflow(w)
            sum = s &+ (o ? 1 : 0)
            i += 8
        }
        while i + 2 <= count {
            let (s, o) = sum.addingReportingOverflow(UInt64(p.be16(i)))
            sum = s &+ (o ? 1 : 0)
            i += 2
        }
        if i < count {
            let (s, o) = sum.addingReportingOverflow(UInt64(p.byte(i)) << 8)
            sum = s &+ (o ? 1 : 0)
        }
        return sum
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
