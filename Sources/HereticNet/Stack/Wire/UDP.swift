#if canImport(HereticTransport)
import HereticTransport  // (the fuzzer compiles Wire/ alone, with Address.swift beside it)
#endif
/// A UDP datagram (RFC 768).
public struct UDPDatagram {
    public static let headerLength = 8

    public let base: UnsafeMutableRawPointer
    /// Length from the header (header plus data).
    public let length: Int

    /// Checks the length field against the bytes present and, when the sender set one, the
    /// checksum with the IPv4 pseudo-header.
    @inlinable
    public init(_ base: UnsafeMutableRawPointer, length available: Int, source: IPv4Address,
                destination: IPv4Address, verifyChecksum: Bool = true) throws(WireError) {
        guard available >= Self.headerLength else { throw .truncated }
        let p = UnsafeRawPointer(base)
        let len = Int(p.be16(4))
        guard len >= Self.headerLength else { throw .malformed("UDP length \(len)") }
        guard len <= available else { throw .truncated }
        if verifyChecksum && p.be16(6) != 0 {
            let pseudo = InternetChecksum.pseudoHeader(source: source, destination: destination,
                                                       protocol: IPProtocol.udp, length: len)
            guard InternetChecksum.fold(InternetChecksum.add(p, count: len, to: pseudo)) == 0xFFFF else {
                throw .badChecksum
            }
        }
        self.base = base
        self.length = len
    }

    @inlinable public var sourcePort: UInt16 { UnsafeRawPointer(base).be16(0) }
    @inlinable public var destinationPort: UInt16 { UnsafeRawPointer(base).be16(2) }
    @inlinable public var data: UnsafeMutableRawPointer { base + Self.headerLength }
    @inlinable public var dataLength: Int { length - Self.headerLength }

    /// Writes the header for the `dataLength` bytes already at offset 8, with its checksum.
    @inlinable
    public static func emit(into base: UnsafeMutableRawPointer, sourcePort: UInt16, destinationPort: UInt16,
                            dataLength: Int, source: IPv4Address, destination: IPv4Address,
                            checksum: Bool = true) {
        let len = Self.headerLength + dataLength
        base.setBE16(0, sourcePort)
        base.setBE16(2, destinationPort)
        base.setBE16(4, UInt16(truncatingIfNeeded: len))
        base.setBE16(6, 0)
        guard checksum else { return }  // the device fills it in (transmit offload)
        let pseudo = InternetChecksum.pseudoHeader(source: source, destination: destination,
                                                   protocol: IPProtocol.udp, length: len)
        var sum = InternetChecksum.compute(UnsafeRawPointer(base), count: len, initial: pseudo)
        if sum == 0 { sum = 0xFFFF }  // 0 means "no checksum" in UDP
        base.setBE16(6, sum)
    }
}
