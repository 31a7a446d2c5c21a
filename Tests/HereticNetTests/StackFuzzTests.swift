import Testing
@testable import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// Rewrites a mutated frame's IPv4 and TCP/UDP checksums so that it gets past them and
/// reaches the deeper layers (half of the fuzz frames).
func fixChecksums(_ f: inout [UInt8]) {
    f.withUnsafeMutableBytes { b in
        guard b.count >= 34, b[12] == 0x08, b[13] == 0x00 else { return }
        let ip = b.baseAddress! + 14
        let ihl = Int(b[14] & 0x0F) * 4
        guard ihl >= 20, 14 + ihl <= b.count else { return }
        ip.storeBytes(of: 0, toByteOffset: 10, as: UInt16.self)
        ip.storeBytes(of: InternetChecksum.compute(UnsafeRawPointer(ip), count: ihl).bigEndian, toByteOffset: 10, as: UInt16.self)
        let proto = b[23], l4 = ip + ihl, l4Length = b.count - 14 - ihl
        let sumOffset = proto == 6 ? 16 : proto == 17 ? 6 : -1
        guard sumOffset >= 0, l4Length >= sumOffset + 2 else { return }
        let src = IPv4Address(raw: UInt32(bigEndian: UnsafeRawPointer(ip).loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        let dst = IPv4Address(raw: UInt32(bigEndian: UnsafeRawPointer(ip).loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
        l4.storeBytes(of: 0, toByteOffset: sumOffset, as: UInt16.self)
        let pseudo = InternetChecksum.pseudoHeader(source: src, destination: dst, protocol: proto, length: l4Length)
        let sum = InternetChecksum.compute(UnsafeRawPointer(l4), count: l4Length, initial: pseudo)
        l4.storeBytes(of: sum.bigEndian, toByteOffset: sumOffset, as: UInt16.self)
    }
}

@Suite("Stack fuzzing (seeded): mutated copies of live frames into the receive path")
struct StackFuzzTests {
    /// Frames fed per seed; HERETIC_FUZZ_FRAMES runs longer by hand.
    static let frames = Int(String(cString: getenv("HERETIC_FUZZ_FRAMES") ?? strdup("10000")!)) ?? 10_000

    @Test("no crash, no leaked buffer, every drop counted; the stack still answers afterwards", arguments: [UInt64(1), 2])
    func liveFrames(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
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
                    var f = corpus[Int.random(in: 0..<corpus.count, using: &rng)]
                    switch Int.random(in: 0..<5, using: &rng) {
                    case 0:
                        for _ in 0..<Int.random(in: 1...4, using: &rng) {
                            f[Int.random(in: 0..<f.count, using: &rng)] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
                        }
                    case 1: f.removeLast(Int.random(in: 1...f.count, using: &rng))
                    case 2: f[Int.random(in: 0..<min(f.count, 80), using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                    case 3:  // TCP flags, sequence or acknowledgment replaced
                        if f.count >= 54 {
                            let at = [47, 38, 39, 42, 43][Int.random(in: 0..<5, using: &rng)]
                            f[at] = UInt8.random(in: 0...255, using: &rng)
                        }
                    default: f += (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                    }
                    if Bool.random(using: &rng) { fixChecksums(&f) }
                    net.link.b.inbound.insert(f, at: Int.random(in: 0...net.link.b.inbound.count, using: &rng))
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
        #expect(net.poolA.inUse == 0 && net.poolB.inUse == 0, "no packet buffer leaked (\(net.poolA.inUse), \(net.poolB.inUse) in use)")
    }
}
