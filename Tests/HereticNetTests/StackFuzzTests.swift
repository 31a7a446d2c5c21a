import Testing
@testable import HereticNet
#if canImport(Glibc)
import Glibc
#endif

@Suite("Stack fuzzing (seeded): mutated copies of live frames into the receive path")
struct StackFuzzTests {
    /// Frames fed per seed; HERETIC_FUZZ_FRAMES runs longer by hand.
    static let frames = Int(String(cString: getenv("HERETIC_FUZZ_FRAMES") ?? strdup("10000")!)) ?? 10_000

    @Test("no crash, no leaked buffer, every drop counted; the stack still answers afterwards", arguments: [UInt64(1), 2])
    func liveFrames(seed: UInt64) throws {
        var mutator = FrameMutator(seed: seed)
        let net = TwoHosts()
        let log = TCPLog()
        try net.b.listenTCP(port: 7) { TCPEcho() }
        try net.b.bindUDP(port: 7, EchoHandler())
        // A stream of traffic to copy frames from: a client echoing a large message.
        let message = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        net.a.connectTCP(to: TCPEndpoint(hostB, 7), TCPClient(message: message, log: log))
        var corpus: [[UInt8]] = []
        var fed = 0
        while fed < Self.frames {
            net.a.poll(now: net.now)
            // Copy what is on its way to b into the corpus (bounded), then add mutants.
            for f in net.link.b.inbound.prefix(8) where corpus.count < 512 { corpus.append(f) }
            if !corpus.isEmpty {
                for _ in 0..<16 {
                    var f = corpus[Int.random(in: 0..<corpus.count, using: &mutator.rng)]
                    mutator.mutate(&f)
                    if Bool.random(using: &mutator.rng) { FrameMutator.fixChecksums(&f) }
                    net.link.b.inbound.insert(f, at: Int.random(in: 0...net.link.b.inbound.count, using: &mutator.rng))
                    fed += 1
                }
            }
            net.b.poll(now: net.now)
            net.now += 1
        }
        net.run(5000)  // let everything settle: timers, retransmissions, ARP giving up on made-up hosts
        // The stack still answers a fresh client after all that.
        let after = TCPLog()
        net.a.connectTCP(to: TCPEndpoint(hostB, 7), TCPClient(message: Array("still answering".utf8), log: after))
        net.run(200)
        #expect(after.received == Array("still answering".utf8))
        let c = net.b.counters
        let dropped = c.ethernetErrors + c.ipv4Errors + c.tcpErrors + c.udpErrors + c.icmpErrors + c.arpErrors
            + c.badChecksums + c.notForUs + c.ipNotForUs + c.unknownEtherType + c.unknownProtocol + c.fragmentsDropped
        #expect(dropped > Self.frames / 4, "mutants were refused and counted (\(dropped))")
        // Every buffer is free but those waiting for an ARP answer (a SYN-ACK retransmitted to a
        // made-up neighbour that a mutant named).
        let waiting = net.b.arp.waiting.values.reduce(0) { $0 + $1.packets.count }
        #expect(net.poolA.inUse == 0 && net.poolB.inUse == waiting, "no packet buffer leaked (\(net.poolA.inUse), \(net.poolB.inUse) in use)")
    }
}
