#if canImport(HereticTransport)
import HereticTransport  // (the fuzzer compiles Wire/ alone, with Address.swift beside it)
#endif
/// An ICMPv4 message (RFC 792): type, code, checksum, four bytes of "rest", data.
public struct ICMPv4Message {
    public static let headerLength = 8
    public static let echoReply: UInt8 = 0
    public static let destinationUnreachable: UInt8 = 3
    public static let echoRequest: UInt8 = 8
    public static let timeExceeded: UInt8 = 11
    /// Destination-unreachable code for a UDP port nobody listens on.
    public static let portUnreachable: UInt8 = 3
    /// Destination-unreachable code for a datagram too big for a link with DF set; the
    /// next hop's MTU is in the low 16 bits of "rest" (RFC 1191).
    public static let fragmentationNeeded: UInt8 = 4

    public let base: UnsafeMutableRawPointer
    public let length: Int

    /// Checks the length and the checksum over the whole message.
    @inlinable
    public init(_ base: UnsafeMutableRawPointer, length: Int) throws(WireError) {
        guard length >= Self.headerLength else { throw .truncated }
        guard InternetChecksum.fold(InternetChecksum.add(UnsafeRawPointer(base), count: length)) == 0xFFFF else {
            throw .badChecksum
        }
        self.base = base
        self.length = length
    }

    @inlinable public var type: UInt8 { UnsafeRawPointer(base).byte(0) }
    @inlinable public var code: UInt8 { UnsafeRawPointer(base).byte(1) }
    /// Identifier and sequence number of echo messages.
    @inlinable public var echoIdentifier: UInt16 { UnsafeRawPointer(base).be16(4) }
    @inlinable public var echoSequence: UInt16 { UnsafeRawPointer(base).be16(6) }
    /// Destination unreachable, fragmentation needed: the MTU of the next hop.
    @inlinable public var nextHopMTU: UInt16 { UnsafeRawPointer(base).be16(6) }
    @inlinable public var data: UnsafeMutableRawPointer { base + Self.headerLength }
    @inlinable public var dataLength: Int { length - Self.headerLength }

    /// Writes type, code and rest, then computes the checksum over header and the
    /// `dataLength` bytes already at offset 8.
    @inlinable
    public static func emit(into base: UnsafeMutableRawPointer, type: UInt8, code: UInt8,
                            rest: UInt32, dataLength: Int) {
        base.setByte(0, type)
        base.setByte(1, code)
        base.setBE16(2, 0)
        base.setBE32(4, rest)
        base.setBE16(2, InternetChecksum.compute(UnsafeRawPointer(base), count: Self.headerLength + dataLength))
    }
}
