import HereticTransport
/// A TCP sequence number: 32-bit arithmetic modulo 2^32, compared within half the space
/// (RFC 9293 section 3.4), so comparisons stay right across wrap-around.
public struct SequenceNumber: Hashable, Sendable, CustomStringConvertible {
    public var raw: UInt32

    @inlinable public init(_ raw: UInt32) { self.raw = raw }

    @inlinable public static func + (a: SequenceNumber, n: Int) -> SequenceNumber {
        SequenceNumber(a.raw &+ UInt32(truncatingIfNeeded: n))
    }

    @inlinable public static func - (a: SequenceNumber, n: Int) -> SequenceNumber {
        SequenceNumber(a.raw &- UInt32(truncatingIfNeeded: n))
    }

    /// Signed distance from `b` to `a` (positive when `a` is after `b`).
    @inlinable public static func - (a: SequenceNumber, b: SequenceNumber) -> Int {
        Int(Int32(bitPattern: a.raw &- b.raw))
    }

    @inlinable public static func < (a: SequenceNumber, b: SequenceNumber) -> Bool { a - b < 0 }
    @inlinable public static func <= (a: SequenceNumber, b: SequenceNumber) -> Bool { a - b <= 0 }
    @inlinable public static func > (a: SequenceNumber, b: SequenceNumber) -> Bool { a - b > 0 }
    @inlinable public static func >= (a: SequenceNumber, b: SequenceNumber) -> Bool { a - b >= 0 }

    public var description: String { String(raw) }
}
