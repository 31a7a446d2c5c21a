import Testing
@testable import HereticNet

struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The receive path's parsing, as the interface will run it: every layer checked, every
/// accepted view confined to the bytes received. Returns which layer accepted or refused.
func parseAll(_ p: UnsafeMutableRawPointer, _ n: Int, verifyChecksums: Bool) -> String {
    let end = p + n
    func inside(_ q: UnsafeMutableRawPointer, _ len: Int) -> Bool { q >= p && len >= 0 && q + len <= end }
    do {
        let eth = try EthernetFrame(p, length: n)
        precondition(inside(eth.payload, eth.payloadLength))
        switch eth.etherType {
        case EtherType.arp:
            _ = try ARPPacket(parsing: eth.payload, length: eth.payloadLength)
            return "arp"
        case EtherType.ipv4:
            let ip = try IPv4Packet(eth.payload, length: eth.payloadLength, verifyChecksum: verifyChecksums)
            precondition(inside(ip.payload, ip.payloadLength))
            switch ip.proto {
            case IPProtocol.tcp:
                let t = try TCPSegment(ip.payload, length: ip.payloadLength, source: ip.source,
                                       destination: ip.destination, verifyChecksum: verifyChecksums)
                precondition(inside(t.payload, t.payloadLength))
                _ = try t.options()
                return "tcp"
            case IPProtocol.udp:
                let u = try UDPDatagram(ip.payload, length: ip.payloadLength, source: ip.source,
                                        destination: ip.destination, verifyChecksum: verifyChecksums)
                precondition(inside(u.data, u.dataLength))
                return "udp"
            case IPProtocol.icmp:
                let m = try ICMPv4Message(ip.payload, length: ip.payloadLength)
                precondition(inside(m.data, m.dataLength))
                return "icmp"
            default:
                return "other-ip"
            }
        default:
            return "other"
        }
    } catch {
        return "refused"
    }
}

@Suite("Wire fuzzing (seeded, deterministic)")
struct WireFuzzTests {
    static let frames: [[UInt8]] = [Captured.arpRequest, Captured.arpReply, Captured.icmpEchoRequest,
                                    Captured.tcpSyn, Captured.tcpSynAck, Captured.tcpData, Captured.tcpFin,
                                    Captured.udpDatagram, Captured.icmpPortUnreachable]

    @Test("every captured frame parses cleanly before mutation")
    func baseline() {
        let kinds = Self.frames.map { f in withBytes(f) { parseAll($0, $1, verifyChecksums: true) } }
        #expect(kinds == ["arp", "arp", "icmp", "tcp", "tcp", "tcp", "tcp", "udp", "icmp"])
    }

    @Test("mutated frames are refused or parsed within bounds, never trusted past their bytes",
          arguments: [false, true])
    func mutations(verifyChecksums: Bool) {
        var rng = SplitMix64(state: verifyChecksums ? 11 : 12)
        var outcomes: [String: Int] = [:]
        for _ in 0..<40_000 {
            var f = Self.frames[Int.random(in: 0..<Self.frames.count, using: &rng)]
            switch Int.random(in: 0..<4, using: &rng) {
            case 0:  // flip bits
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    f[Int.random(in: 0..<f.count, using: &rng)] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
                }
            case 1:  // truncate
                f.removeLast(Int.random(in: 1...f.count, using: &rng))
            case 2:  // overwrite a byte in the headers with anything
                f[Int.random(in: 0..<min(f.count, 80), using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            default:  // append junk
                f += (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            }
            let kind = withBytes(f) { parseAll($0, $1, verifyChecksums: verifyChecksums) }
            outcomes[kind, default: 0] += 1
        }
        // Both paths were exercised: some mutations refused, some still accepted.
        #expect((outcomes["refused"] ?? 0) > 1000)
        #expect((outcomes["tcp"] ?? 0) + (outcomes["udp"] ?? 0) + (outcomes["icmp"] ?? 0) > 1000)
    }
}
