import Testing
@testable import HereticNet

let hostA = IPv4Address(10, 77, 0, 1), hostB = IPv4Address(10, 77, 0, 2)
let macA = MACAddress(2, 0, 0, 0, 0, 0x0a), macB = MACAddress(2, 0, 0, 0, 0, 0x0b)

/// Runs `body` over a mutable copy of `bytes`.
func withBytes<R>(_ bytes: [UInt8], _ body: (UnsafeMutableRawPointer, Int) throws -> R) rethrows -> R {
    var copy = bytes
    return try copy.withUnsafeMutableBytes { try body($0.baseAddress!, $0.count) }
}

/// The error a parse throws, or nil when it accepts.
func refusal(_ body: () throws -> Void) -> WireError? {
    do { try body(); return nil } catch let e as WireError { return e } catch {
        Issue.record("a parser threw something other than WireError: \(error)")
        return nil
    }
}

/// Emits into a zeroed buffer of `count` bytes and returns them.
func emitted(_ count: Int, _ body: (UnsafeMutableRawPointer) -> Void) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { body($0.baseAddress!) }
    return out
}

@Suite("Wire formats against captured Linux frames")
struct WireTests {
    @Test("Ethernet and ARP request and reply parse and re-emit byte for byte")
    func arp() throws {
        for (frame, op) in [(Captured.arpRequest, ARPPacket.Operation.request), (Captured.arpReply, .reply)] {
            let arp = try withBytes(frame) { p, n -> ARPPacket in
                let eth = try EthernetFrame(p, length: n)
                #expect(eth.etherType == EtherType.arp)
                return try ARPPacket(parsing: eth.payload, length: eth.payloadLength)
            }
            #expect(arp.operation == op)
            #expect(arp.senderMAC == (op == .request ? macA : macB))
            #expect(arp.senderIP == (op == .request ? hostA : hostB))
            #expect(arp.targetIP == (op == .request ? hostB : hostA))
            let rebuilt = emitted(42) { p in
                EthernetFrame.emit(into: p, destination: op == .request ? .broadcast : macA,
                                   source: op == .request ? macA : macB, etherType: EtherType.arp)
                arp.emit(into: p + 14)
            }
            #expect(rebuilt == frame)
        }
        #expect(MACAddress.broadcast.isBroadcast && MACAddress.broadcast.isMulticast)
        #expect(macA.description == "02:00:00:00:00:0a")
    }

    @Test("IPv4 and ICMP echo: fields, checksums, and a reply built from the request")
    func icmpEcho() throws {
        try withBytes(Captured.icmpEchoRequest) { p, n in
            let ip = try IPv4Packet(p + 14, length: n - 14)
            #expect(ip.source == hostA && ip.destination == hostB)
            #expect(ip.proto == IPProtocol.icmp && ip.ttl == 64 && ip.dontFragment && !ip.isFragment)
            #expect(ip.headerLength == 20 && ip.totalLength == 48)
            let icmp = try ICMPv4Message(ip.payload, length: ip.payloadLength)
            #expect(icmp.type == ICMPv4Message.echoRequest && icmp.code == 0)
            #expect(icmp.echoSequence == 1 && icmp.dataLength == 20)

            // Answer it the way Linux did: same id, sequence and data, type 0, new IP header.
            var reply = Captured.icmpEchoReply
            let expected = reply
            reply.withUnsafeMutableBytes { r in
                let q = r.baseAddress!
                let rest = UInt32(icmp.echoIdentifier) << 16 | UInt32(icmp.echoSequence)
                ICMPv4Message.emit(into: q + 34, type: ICMPv4Message.echoReply, code: 0, rest: rest,
                                   dataLength: icmp.dataLength)
                IPv4Packet.emit(into: q + 14, source: hostB, destination: hostA, protocol: IPProtocol.icmp,
                                payloadLength: 28, identification: 0x714c, ttl: 64, dontFragment: false)
            }
            #expect(reply == expected)
        }
    }

    @Test("a TCP SYN's options parse, and header and options re-emit byte for byte")
    func tcpSyn() throws {
        try withBytes(Captured.tcpSyn) { p, n in
            let ip = try IPv4Packet(p + 14, length: n - 14)
            let tcp = try TCPSegment(ip.payload, length: ip.payloadLength, source: ip.source, destination: ip.destination)
            #expect(tcp.sourcePort == 52116 && tcp.destinationPort == 7000)
            #expect(tcp.flags == .syn && tcp.sequenceNumber == 4_112_928_216)
            #expect(tcp.window == 64240 && tcp.payloadLength == 0 && tcp.sequenceLength == 1)
            let options = try tcp.options()
            #expect(options.maximumSegmentSize == 1460 && options.windowScale == 10 && options.sackPermitted)
            #expect(options.timestamp == TCPTimestamp(value: 1_544_116_000, echo: 0))
            let rebuilt = emitted(tcp.length) { q in
                TCPSegment.emit(into: q, sourcePort: 52116, destinationPort: 7000, sequenceNumber: tcp.sequenceNumber,
                                acknowledgmentNumber: 0, flags: .syn, window: 64240, options: options,
                                payloadLength: 0, source: hostA, destination: hostB)
            }
            #expect(rebuilt == Array(UnsafeRawBufferPointer(start: tcp.base, count: tcp.length)))
        }
    }

    @Test("every captured TCP segment re-emits byte for byte, payload included",
          arguments: [Captured.tcpSynAck, Captured.tcpAck, Captured.tcpData, Captured.tcpDataAck,
                      Captured.tcpFin, Captured.tcpFinAck, Captured.tcpLastAck])
    func tcpRoundTrip(frame: [UInt8]) throws {
        try withBytes(frame) { p, n in
            let ip = try IPv4Packet(p + 14, length: n - 14)
            let tcp = try TCPSegment(ip.payload, length: ip.payloadLength, source: ip.source, destination: ip.destination)
            let options = try tcp.options()
            #expect(options.timestamp != nil)
            let original = Array(UnsafeRawBufferPointer(start: tcp.base, count: tcp.length))
            var rebuilt = original
            rebuilt.withUnsafeMutableBytes { r in
                (r.baseAddress! + 16).storeBytes(of: 0xDEAD, as: UInt16.self)  // must be recomputed
                TCPSegment.emit(into: r.baseAddress!, sourcePort: tcp.sourcePort, destinationPort: tcp.destinationPort,
                                sequenceNumber: tcp.sequenceNumber, acknowledgmentNumber: tcp.acknowledgmentNumber,
                                flags: tcp.flags, window: tcp.window, options: options,
                                payloadLength: tcp.payloadLength, source: ip.source, destination: ip.destination)
            }
            #expect(rebuilt == original)
        }
    }

    @Test("the data segment carries the bytes nc sent")
    func tcpPayload() throws {
        try withBytes(Captured.tcpData) { p, n in
            let ip = try IPv4Packet(p + 14, length: n - 14)
            let tcp = try TCPSegment(ip.payload, length: ip.payloadLength, source: ip.source, destination: ip.destination)
            #expect(tcp.flags == [.psh, .ack])
            let text = String(decoding: UnsafeRawBufferPointer(start: tcp.payload, count: tcp.payloadLength), as: UTF8.self)
            #expect(text == "hello heretic\n")
        }
    }

    @Test("UDP parses, verifies and re-emits; the ICMP port-unreachable quotes it")
    func udp() throws {
        try withBytes(Captured.udpDatagram) { p, n in
            let ip = try IPv4Packet(p + 14, length: n - 14)
            let udp = try UDPDatagram(ip.payload, length: ip.payloadLength, source: ip.source, destination: ip.destination)
            #expect(udp.destinationPort == 7001 && udp.dataLength == 9)
            let original = Array(UnsafeRawBufferPointer(start: udp.base, count: udp.length))
            var rebuilt = original
            rebuilt.withUnsafeMutableBytes { r in
                UDPDatagram.emit(into: r.baseAddress!, sourcePort: udp.sourcePort, destinationPort: 7001,
                                 dataLength: 9, source: hostA, destination: hostB)
            }
            #expect(rebuilt == original)
        }
        try withBytes(Captured.icmpPortUnreachable) { p, n in
            let ip = try IPv4Packet(p + 14, length: n - 14)
            let icmp = try ICMPv4Message(ip.payload, length: ip.payloadLength)
            #expect(icmp.type == ICMPv4Message.destinationUnreachable && icmp.code == ICMPv4Message.portUnreachable)
            let quoted = try IPv4Packet(icmp.data, length: icmp.dataLength, verifyChecksum: true)
            #expect(quoted.proto == IPProtocol.udp && quoted.destination == hostB)
            #expect(UnsafeRawPointer(quoted.payload).be16(2) == 7999)
        }
    }

    @Test("Internet checksum: known vectors, odd lengths, and composition")
    func checksum() {
        // The classic IPv4 header example with checksum 0xb861.
        var header = hex("4500 0073 0000 4000 4011 0000 c0a8 0001 c0a8 00c7")
        let sum = header.withUnsafeBytes { InternetChecksum.compute($0.baseAddress!, count: 20) }
        #expect(sum == 0xB861)
        header[10] = 0xB8; header[11] = 0x61
        #expect(header.withUnsafeBytes { InternetChecksum.fold(InternetChecksum.add($0.baseAddress!, count: 20)) } == 0xFFFF)
        // A sum in pieces equals the sum at once, for every split point and odd lengths.
        var rng = SplitMix64(seed: 5)
        let bytes = (0..<257).map { _ in UInt8.random(in: 0...255, using: &rng) }
        bytes.withUnsafeBytes { b in
            let p = b.baseAddress!
            for count in [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 255, 256, 257] {
                var reference: UInt32 = 0
                var i = 0
                while i + 1 < count { reference += UInt32(p.be16(i)); i += 2 }
                if i < count { reference += UInt32(p.byte(i)) << 8 }
                while reference > 0xFFFF { reference = (reference & 0xFFFF) + (reference >> 16) }
                #expect(InternetChecksum.fold(InternetChecksum.add(p, count: count)) == UInt16(reference))
            }
            for split in stride(from: 0, through: 256, by: 2) {
                let whole = InternetChecksum.fold(InternetChecksum.add(p, count: 257))
                let parts = InternetChecksum.fold(InternetChecksum.add(p + split, count: 257 - split,
                                                                       to: InternetChecksum.add(p, count: split)))
                #expect(whole == parts)
            }
        }
    }

    @Test("addresses print and parse")
    func addresses() {
        #expect(IPv4Address("10.77.0.1") == hostA)
        #expect(IPv4Address("10.77.0") == nil && IPv4Address("10.77.0.256") == nil && IPv4Address("a.b.c.d") == nil)
        #expect(IPv4Address("1.2.3.4")?.description == "1.2.3.4")
        #expect(IPv4Address(224, 0, 0, 1).isMulticast && IPv4Address.broadcast.isBroadcast)
    }
}

@Suite("Wire formats refuse bad input")
struct WireRefusalTests {
    func ipv4(_ frame: [UInt8], mutate: (inout [UInt8]) -> Void, length: Int? = nil) -> WireError? {
        var f = frame
        mutate(&f)
        return withBytes(f) { p, n in
            refusal { _ = try IPv4Packet(p + 14, length: (length ?? n) - 14) }
        }
    }

    @Test("IPv4: truncation, version, header length, total length, checksum")
    func ipv4Refusals() {
        let f = Captured.icmpEchoRequest
        #expect(ipv4(f, mutate: { _ in }, length: 14 + 19) == .truncated)
        #expect(ipv4(f, mutate: { $0[14] = 0x65 }) == .malformed("IP version 6"))
        #expect(ipv4(f, mutate: { $0[14] = 0x44 }) == .malformed("IPv4 header length 16"))
        #expect(ipv4(f, mutate: { $0[14] = 0x4F }) == .truncated)         // 60-byte header claimed in 48
        #expect(ipv4(f, mutate: { $0[16] = 0x01 }) == .truncated)         // total 304 > 48 present
        #expect(ipv4(f, mutate: { $0[16] = 0; $0[17] = 10 }) == .malformed("IPv4 total length 10 below header length"))
        #expect(ipv4(f, mutate: { $0[22] ^= 1 }) == .badChecksum)         // TTL changed, checksum not
    }

    @Test("TCP: data offset, checksum, and every malformed option length")
    func tcpRefusals() throws {
        func segment(_ mutate: (inout [UInt8]) -> Void) -> Result<TCPOptions, WireError> {
            var f = Captured.tcpSyn
            mutate(&f)
            return withBytes(f) { p, n in
                var options = TCPOptions.none
                if let e = refusal({
                    let tcp = try TCPSegment(p + 34, length: n - 34, source: hostA, destination: hostB,
                                             verifyChecksum: false)
                    options = try tcp.options()
                }) { return .failure(e) }
                return .success(options)
            }
        }
        #expect(segment { $0[46] = 0x40 } == .failure(.malformed("TCP data offset 16")))
        #expect(segment { $0[46] = 0xF0 } == .failure(.truncated))
        // Options start at 54: MSS(2,4) at 54, SACK-permitted(4,2) at 58, TS(8,10) at 60, NOP, WS(3,3) at 71.
        #expect(segment { $0[55] = 5 } == .failure(.malformed("TCP MSS option length 5")))
        #expect(segment { $0[55] = 1 } == .failure(.malformed("TCP option 2 length 1")))
        #expect(segment { $0[59] = 3 } == .failure(.malformed("TCP SACK-permitted option length 3")))
        #expect(segment { $0[61] = 40 } == .failure(.malformed("TCP option 8 length 40")))
        #expect(segment { $0[72] = 2 } == .failure(.malformed("TCP window scale option length 2")))
        #expect(segment { $0[73] = 200 }.map(\.windowScale) == .success(14), "shift capped at 14")
        var bad = Captured.tcpSyn
        bad[bad.count - 1] ^= 0xFF
        let checked = withBytes(bad) { p, n in
            refusal { _ = try TCPSegment(p + 34, length: n - 34, source: hostA, destination: hostB) }
        }
        #expect(checked == .badChecksum)
    }

    @Test("UDP, ICMP and ARP refusals")
    func otherRefusals() {
        let udpLength = withBytes(Captured.udpDatagram) { p, n -> WireError? in
            (p + 38).setBE16(0, 500)
            return refusal { _ = try UDPDatagram(p + 34, length: n - 34, source: hostA, destination: hostB) }
        }
        #expect(udpLength == .truncated)
        let icmp = withBytes(Captured.icmpEchoRequest) { p, n -> WireError? in
            (p + 40).setByte(0, 0x55)
            return refusal { _ = try ICMPv4Message(p + 34, length: n - 34) }
        }
        #expect(icmp == .badChecksum)
        let arp = withBytes(Captured.arpRequest) { p, n -> WireError? in
            (p + 14).setBE16(2, EtherType.ipv6)
            return refusal { _ = try ARPPacket(parsing: p + 14, length: n - 14) }
        }
        #expect(arp == .unsupported("ARP for hardware 1 protocol 34525"))
        #expect(withBytes([1, 2, 3]) { p, n in refusal { _ = try EthernetFrame(p, length: n) } } == .truncated)
    }
}
