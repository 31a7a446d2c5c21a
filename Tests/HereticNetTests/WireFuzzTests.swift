import Testing
@testable import HereticNet

/// Dissects a frame and checks that whatever was accepted fits in the bytes received.
func parseAll(_ p: UnsafeMutableRawPointer, _ n: Int, verifyChecksums: Bool) -> String {
    let d = Dissection.dissect(p, length: n, verifyChecksums: verifyChecksums)
    precondition(d.payloadLength >= 0 && d.payloadLength <= n, "payload beyond the frame: \(d)")
    _ = d.description
    switch d {
    case .arp: return "arp"
    case .tcp: return "tcp"
    case .udp: return "udp"
    case .icmp: return "icmp"
    case .otherIPv4: return "other-ip"
    case .otherEtherType: return "other"
    case .refused: return "refused"
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
        let lines = Self.frames.prefix(4).map { f in withBytes(f) { Dissection.dissect($0, length: $1).description } }
        #expect(lines == ["ARP who-has 10.77.0.2 tell 10.77.0.1", "ARP 10.77.0.2 is-at 02:00:00:00:00:0b",
                          "IP 10.77.0.1 > 10.77.0.2: ICMP type 8 code 0, length 20",
                          "IP 10.77.0.1.52116 > 10.77.0.2.7000: Flags [S], seq 4112928216, ack 0, win 64240, length 0"])
    }

    @Test("mutated frames are refused or parsed within bounds, never trusted past their bytes",
          arguments: [false, true])
    func mutations(verifyChecksums: Bool) {
        var rng = SplitMix64(seed: verifyChecksums ? 11 : 12)
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
