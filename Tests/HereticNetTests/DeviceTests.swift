import Testing
@testable import HereticNet

/// Sends `count` numbered frames from `link.a` through `device` and returns the numbers `b`
/// receives, polling with the clock advancing one millisecond per step.
func run(_ injector: FaultInjector, _ link: MemoryLink, count: Int, pool: PacketPool) -> [UInt32] {
    var out: [Packet] = []
    for i in 0..<count {
        var frame = [UInt8](repeating: 0, count: 60)
        frame.withUnsafeMutableBytes { $0.baseAddress!.setBE32(20, UInt32(i)) }
        out.append(frame.withUnsafeBytes { pool.copy(from: $0.baseAddress!, length: 60)! })
        injector.transmit(&out, pool: pool)
        injector.now += 1
    }
    var received: [UInt32] = []
    var frames: [Packet] = []
    for _ in 0..<100 {  // let held frames drain
        _ = injector.receive(into: &frames, limit: 64, pool: pool)
        injector.now += 1
    }
    // Take them in batches, releasing each as a stack would.
    while link.b.receive(into: &frames, limit: 256, pool: pool) > 0 {
        for f in frames {
            received.append(UnsafeRawPointer(pool.bytes(f)).be32(20))
            pool.release(f)
        }
        frames.removeAll(keepingCapacity: true)
    }
    return received
}

@Suite("Packet buffers and devices")
struct DeviceTests {
    @Test("a pool hands out distinct buffers, takes them back, and refuses when exhausted")
    func pool() {
        let pool = PacketPool(capacity: 4)
        let packets = (0..<4).compactMap { _ in pool.allocate(length: 100) }
        #expect(Set(packets.map(\.buffer)).count == 4)
        #expect(pool.allocate() == nil, "exhausted: the caller drops and counts")
        #expect(pool.inUse == 4)
        pool.bytes(packets[0]).storeBytes(of: 0xAB, as: UInt8.self)
        #expect(pool.contents(packets[0]).first == 0xAB)
        for p in packets { pool.release(p) }
        #expect(pool.inUse == 0)
        #expect(pool.copy(from: [UInt8](repeating: 1, count: 3000), length: 3000) == nil, "too big for a buffer")
    }

    @Test("a memory link delivers in order, both ways")
    func link() {
        let link = MemoryLink(), pool = PacketPool(capacity: 64)
        var out = (0..<10).map { i in [UInt8](repeating: UInt8(i), count: 60).withUnsafeBytes { pool.copy(from: $0.baseAddress!, length: 60)! } }
        link.a.transmit(&out, pool: pool)
        #expect(out.isEmpty && pool.inUse == 0)
        var got: [Packet] = []
        #expect(link.b.receive(into: &got, limit: 4, pool: pool) == 4)
        #expect(link.b.receive(into: &got, limit: 100, pool: pool) == 6)
        #expect(got.map { pool.contents($0)[0] } == Array(0..<10))
        #expect(link.a.pending == 0)
    }

    @Test("the same seed reproduces a lossy run exactly; another seed differs")
    func deterministic() {
        func once(seed: UInt64) -> [UInt32] {
            let link = MemoryLink(), pool = PacketPool(capacity: 4096)
            let faults = FaultInjector.Faults(drop: 0.05, duplicate: 0.05, reorder: 0.1, delayMilliseconds: 1...3)
            return run(FaultInjector(link.a, faults: faults, seed: seed), link, count: 2000, pool: pool)
        }
        let first = once(seed: 42)
        #expect(once(seed: 42) == first)
        #expect(once(seed: 43) != first)
    }

    @Test("faults happen at their rates: loss, duplication, reordering")
    func rates() {
        let link = MemoryLink(), pool = PacketPool(capacity: 8192)
        let faults = FaultInjector.Faults(drop: 0.05, duplicate: 0.03, reorder: 0.1, delayMilliseconds: 0...2)
        let injector = FaultInjector(link.a, faults: faults, seed: 7)
        let got = run(injector, link, count: 10_000, pool: pool)
        #expect((400...600).contains(injector.dropped), "about 5 % of 10,000 dropped")
        #expect((200...400).contains(injector.duplicated))
        #expect(got.count == 10_000 - injector.dropped + injector.duplicated)
        let outOfOrder = zip(got, got.dropFirst()).filter { $0 > $1 }.count
        #expect(outOfOrder > 100, "reordering happened")
        #expect(Set(got).count == 10_000 - injector.dropped, "each surviving frame arrived (duplicates aside)")
        #expect(pool.inUse == 0, "no buffer leaked")
    }

    @Test("a corrupting link flips bits the checksums catch")
    func corruption() {
        let link = MemoryLink(), pool = PacketPool(capacity: 256)
        let injector = FaultInjector(link.a, faults: .init(corrupt: 1.0), seed: 3)
        var out = [Captured.tcpData.withUnsafeBytes { pool.copy(from: $0.baseAddress!, length: $0.count)! }]
        injector.transmit(&out, pool: pool)
        var got: [Packet] = []
        _ = link.b.receive(into: &got, limit: 1, pool: pool)
        let bytes = pool.contents(got[0])
        #expect(bytes != Captured.tcpData && injector.corrupted == 1)
        let verdict = withBytes(bytes) { Dissection.dissect($0, length: $1) }
        if case .refused = verdict {} else if case .otherEtherType = verdict {} else if case .otherIPv4 = verdict {} else {
            // A flip in the MAC addresses changes nothing the checksums cover.
            #expect(Array(bytes[12...]) == Array(Captured.tcpData[12...]), "an accepted frame differs only in its MACs")
        }
    }

    @Test("a pcap tap records both directions in a file Wireshark reads")
    func pcap() throws {
        let path = "/tmp/heretic-pcap-test-\(UInt32.random(in: 0...UInt32.max)).pcap"
        let link = MemoryLink(), pool = PacketPool(capacity: 16)
        var clock: UInt64 = 1_700_000_000_000_000
        do {
            let tap = try PcapTap(link.a, path: path, clock: { clock })
            var out = [Captured.arpRequest.withUnsafeBytes { pool.copy(from: $0.baseAddress!, length: $0.count)! }]
            tap.transmit(&out, pool: pool)
            clock += 250
            var back = [Captured.arpReply.withUnsafeBytes { pool.copy(from: $0.baseAddress!, length: $0.count)! }]
            link.b.transmit(&back, pool: pool)
            var got: [Packet] = []
            #expect(tap.receive(into: &got, limit: 8, pool: pool) == 1)
            #expect(tap.framesWritten == 2)
            for p in got { pool.release(p) }
        }
        let file = try readFile(path)
        #expect(file.count == 24 + 2 * (16 + 42))
        #expect(Array(file[0..<4]) == [0xD4, 0xC3, 0xB2, 0xA1], "pcap magic, little-endian")
        #expect(file[20] == 1, "link type Ethernet")
        #expect(Array(file[40..<82]) == Captured.arpRequest)
        #expect(Array(file[98..<140]) == Captured.arpReply)
        #expect(file[28] == 0 && file[86] == 0xFA, "second record 250 us after the first")
    }
}

#if canImport(Glibc)
import Glibc
#endif

func readFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw WireError.unsupported("cannot open \(path)") }
    defer { close(fd); unlink(path) }
    var out: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress!, 4096) }
        if n <= 0 { break }
        out += chunk[0..<n]
    }
    return out
}
