#if canImport(HereticTransport)
import HereticTransport  // (the fuzzer compiles Wire/ alone, with Address.swift beside it)
#endif
/// TCP control bits.
public struct TCPFlags: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let fin = TCPFlags(rawValue: 0x01)
    public static let syn = TCPFlags(rawValue: 0x02)
    public static let rst = TCPFlags(rawValue: 0x04)
    public static let psh = TCPFlags(rawValue: 0x08)
    public static let ack = TCPFlags(rawValue: 0x10)
    public static let urg = TCPFlags(rawValue: 0x20)
    public static let ece = TCPFlags(rawValue: 0x40)
    public static let cwr = TCPFlags(rawValue: 0x80)

    public var description: String {
        let names: [(TCPFlags, String)] = [(.syn, "S"), (.fin, "F"), (.rst, "R"), (.psh, "P"),
                                           (.ack, "."), (.urg, "U"), (.ece, "E"), (.cwr, "W")]
        let s = names.filter { contains($0.0) }.map(\.1).joined()
        return s.isEmpty ? "none" : s
    }
}

/// RFC 7323 timestamps: the sender's clock and the echo of the peer's.
public struct TCPTimestamp: Equatable, Sendable {
    public var value: UInt32
    public var echo: UInt32
    public init(value: UInt32, echo: UInt32) { self.value = value; self.echo = echo }
}

/// The TCP options this stack reads and writes. Others are skipped (SACK blocks included:
/// the stack does not implement selective acknowledgement).
public struct TCPOptions: Equatable, Sendable {
    public var maximumSegmentSize: UInt16?
    /// Window scale shift, capped at 14 as RFC 7323 requires.
    public var windowScale: UInt8?
    public var sackPermitted = false
    public var timestamp: TCPTimestamp?

    public init(maximumSegmentSize: UInt16? = nil, windowScale: UInt8? = nil,
                sackPermitted: Bool = false, timestamp: TCPTimestamp? = nil) {
        self.maximumSegmentSize = maximumSegmentSize
        self.windowScale = windowScale
        self.sackPermitted = sackPermitted
        self.timestamp = timestamp
    }

    public static let none = TCPOptions()

    /// Bytes `emit` writes: the options in Linux's layout, padded to a multiple of four.
    @inlinable public var encodedLength: Int {
        var n = 0
        if maximumSegmentSize != nil { n += 4 }
        if sackPermitted { n += 2 }
        if timestamp != nil { n += sackPermitted ? 10 : 12 }
        if windowScale != nil { n += 4 }
        return (n + 3) & ~3
    }

    /// Parses an options area. Malformed lengths are refused; unknown kinds skipped.
    public init(parsing p: UnsafeRawPointer, length: Int) throws(WireError) {
        // The layout of nearly every segment on an established connection (Linux's and
        // ours): NOP, NOP, timestamps. Read in one step; anything else takes the loop.
        if length == 12 && p.be32(0) == 0x0101_080A {
            timestamp = TCPTimestamp(value: p.be32(4), echo: p.be32(8))
            return
        }
        var i = 0
        while i < length {
            let kind = p.byte(i)
            if kind == 0 { break }            // end of option list
            if kind == 1 { i += 1; continue } // no-operation
            guard i + 1 < length else { throw .malformed("TCP option \(kind) without a length") }
            let len = Int(p.byte(i + 1))
            guard len >= 2, i + len <= length else { throw .malformed("TCP option \(kind) length \(len)") }
            switch kind {
            case 2:
                guard len == 4 else { throw .malformed("TCP MSS option length \(len)") }
                maximumSegmentSize = p.be16(i + 2)
            case 3:
                guard len == 3 else { throw .malformed("TCP window scale option length \(len)") }
                windowScale = min(p.byte(i + 2), 14)
            case 4:
                guard len == 2 else { throw .malformed("TCP SACK-permitted option length \(len)") }
                sackPermitted = true
            case 8:
                guard len == 10 else { throw .malformed("TCP timestamp option length \(len)") }
                timestamp = TCPTimestamp(value: p.be32(i + 2), echo: p.be32(i + 6))
            default:
                break  // SACK blocks (5) and anything else: skipped
            }
            i += len
        }
    }

    /// Writes the options at `p` (padded with NOPs to `encodedLength`); returns that length.
    /// The layout matches Linux's (timestamps aligned by two NOPs) so peers parse it cheaply.
    @inlinable @discardableResult
    public func emit(into p: UnsafeMutableRawPointer) -> Int {
        if let ts = timestamp, maximumSegmentSize == nil, !sackPermitted, windowScale == nil {
            p.setBE32(0, 0x0101_080A)  // NOP, NOP, kind 8, length 10
            p.setBE32(4, ts.value)
            p.setBE32(8, ts.echo)
            return 12
        }
        var i = 0
        if let mss = maximumSegmentSize {
            p.setByte(i, 2); p.setByte(i + 1, 4); p.setBE16(i + 2, mss); i += 4
        }
        if sackPermitted {
            p.setByte(i, 4); p.setByte(i + 1, 2); i += 2
        }
        if let ts = timestamp {
            if !sackPermitted { p.setByte(i, 1); p.setByte(i + 1, 1); i += 2 }
            p.setByte(i, 8); p.setByte(i + 1, 10)
            p.setBE32(i + 2, ts.value); p.setBE32(i + 6, ts.echo); i += 10
        }
        if let ws = windowScale {
            p.setByte(i, 1); p.setByte(i + 1, 3); p.setByte(i + 2, 3); p.setByte(i + 3, ws); i += 4
        }
        let end = encodedLength
        while i < end { p.setByte(i, 1); i += 1 }
        return end
    }

}

/// A validated view of a TCP segment (RFC 9293 section 3.1).
public struct TCPSegment {
    public static let minimumHeaderLength = 20

    public let base: UnsafeMutableRawPointer
    /// Header length including options (20 to 60).
    public let headerLength: Int
    /// Header plus payload.
    public let length: Int

    /// Checks the data offset against the bytes present and the checksum with the IPv4
    /// pseudo-header (unless the NIC verified it).
    @inlinable
    public init(_ base: UnsafeMutableRawPointer, length: Int, source: IPv4Address,
                destination: IPv4Address, verifyChecksum: Bool = true) throws(WireError) {
        guard length >= Self.minimumHeaderLength else { throw .truncated }
        let p = UnsafeRawPointer(base)
        let offset = Int(p.byte(12) >> 4) * 4
        guard offset >= Self.minimumHeaderLength else { throw .malformed("TCP data offset \(offset)") }
        guard offset <= length else { throw .truncated }
        if verifyChecksum {
            let pseudo = InternetChecksum.pseudoHeader(source: source, destination: destination,
                                                       protocol: IPProtocol.tcp, length: length)
            guard InternetChecksum.fold(InternetChecksum.add(p, count: length, to: pseudo)) == 0xFFFF else {
                throw .badChecksum
            }
        }
        self.base = base
        self.headerLength = offset
        self.length = length
    }

    @inlinable var p: UnsafeRawPointer { UnsafeRawPointer(base) }
    @inlinable public var sourcePort: UInt16 { p.be16(0) }
    @inlinable public var destinationPort: UInt16 { p.be16(2) }
    @inlinable public var sequenceNumber: UInt32 { p.be32(4) }
    @inlinable public var acknowledgmentNumber: UInt32 { p.be32(8) }
    @inlinable public var flags: TCPFlags { TCPFlags(rawValue: p.byte(13)) }
    @inlinable public var window: UInt16 { p.be16(14) }
    @inlinable public var checksum: UInt16 { p.be16(16) }
    @inlinable public var urgentPointer: UInt16 { p.be16(18) }
    @inlinable public var payload: UnsafeMutableRawPointer { base + headerLength }
    @inlinable public var payloadLength: Int { length - headerLength }
    /// Sequence space the segment occupies: payload plus one each for SYN and FIN.
    @inlinable public var sequenceLength: Int {
        payloadLength + (flags.contains(.syn) ? 1 : 0) + (flags.contains(.fin) ? 1 : 0)
    }

    /// The options area, parsed.
    public func options() throws(WireError) -> TCPOptions {
        try TCPOptions(parsing: p + Self.minimumHeaderLength, length: headerLength - Self.minimumHeaderLength)
    }

    /// Writes a header with `options` for the `payloadLength` bytes that follow it, and the
    /// checksum. The payload must already be at `base + headerLength`, where headerLength is
    /// `20 + options.encodedLength` (returned).
    @inlinable @discardableResult
    public static func emit(into base: UnsafeMutableRawPointer, sourcePort: UInt16, destinationPort: UInt16,
                            sequenceNumber: UInt32, acknowledgmentNumber: UInt32, flags: TCPFlags,
                            window: UInt16, options: TCPOptions = .none, payloadLength: Int,
                            source: IPv4Address, destination: IPv4Address, checksum: Bool = true) -> Int {
        let header = Self.minimumHeaderLength + options.emit(into: base + Self.minimumHeaderLength)
        base.setBE16(0, sourcePort)
        base.setBE16(2, destinationPort)
        base.setBE32(4, sequenceNumber)
        base.setBE32(8, acknowledgmentNumber)
        base.setByte(12, UInt8(header / 4) << 4)
        base.setByte(13, flags.rawValue)
        base.setBE16(14, window)
        base.setBE16(16, 0)
        base.setBE16(18, 0)
        // Without `checksum` the field stays zero: the device fills it in (transmit offload).
        guard checksum else { return header }
        let total = header + payloadLength
        let pseudo = InternetChecksum.pseudoHeader(source: source, destination: destination,
                                                   protocol: IPProtocol.tcp, length: total)
        base.setBE16(16, InternetChecksum.compute(UnsafeRawPointer(base), count: total, initial: pseudo))
        return header
    }
}
