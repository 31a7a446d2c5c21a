import Testing
@testable import HereticNet

/// Wraps a device and keeps a copy of every frame sent through it.
final class RecordingDevice: NetworkDevice {
    let inner: NetworkDevice
    var sent: [[UInt8]] = []
    init(_ inner: NetworkDevice) { self.inner = inner }
    var mtu: Int { inner.mtu }
    var offloads: DeviceOffloads { inner.offloads }
    func receive(into frames: inout [Packet], limit: Int, pool: PacketPool) -> Int {
        inner.receive(into: &frames, limit: limit, pool: pool)
    }
    func transmit(_ frames: inout [Packet], pool: PacketPool) {
        for f in frames { sent.append(pool.contents(f)) }
        inner.transmit(&frames, pool: pool)
    }
}

@Suite("Checksum offloads")
struct OffloadTests {
    /// UDP frames `recorder` sent: (IPv4 header checksum, UDP checksum, whether both verify).
    func udpChecksums(_ recorder: RecordingDevice) -> [(UInt16, UInt16, Bool)] {
        recorder.sent.compactMap { bytes -> (UInt16, UInt16, Bool)? in
            var copy = bytes
            return copy.withUnsafeMutableBytes { b -> (UInt16, UInt16, Bool)? in
                let p = b.baseAddress!
                guard b.count > 42, UnsafeRawPointer(p).be16(12) == 0x0800, p.load(fromByteOffset: 23, as: UInt8.self) == IPProtocol.udp
                else { return nil }
                let ip = try? IPv4Packet(p + 14, length: b.count - 14, verifyChecksum: true)
                let udpValid = ip.flatMap { try? UDPDatagram($0.payload, length: $0.payloadLength, source: $0.source,
                                                              destination: $0.destination, verifyChecksum: true) } != nil
                return (UnsafeRawPointer(p).be16(24), UnsafeRawPointer(p).be16(40), ip != nil && udpValid)
            }
        }
    }

    func exchange(_ a: Interface, _ b: Interface, steps: Int, poll: () -> Void) {
        try! b.bindUDP(port: 7, EchoHandler())
        let inbox = Inbox()
        try! a.bindUDP(port: 9, CollectHandler(inbox: inbox))
        for i in 0..<3 {
            _ = [UInt8](repeating: UInt8(i), count: 100).withUnsafeBytes {
                a.sendUDP($0, from: 9, to: UDPEndpoint(hostB, 7))
            }
            for _ in 0..<steps { poll() }
        }
        #expect(inbox.datagrams.count == 3, "every datagram was echoed")
    }

    @Test("on the virtual switch, frames go without checksums and are still delivered")
    func switchSkipsChecksums() {
        let net = VirtualSwitch(), pool = PacketPool(capacity: 256)
        let recorder = RecordingDevice(net.makePort(core: 0, pool: pool))
        let a = Interface(device: recorder, pool: pool, configuration: .init(mac: macA, address: hostA))
        let b = Interface(device: net.makePort(core: 0, pool: pool), pool: pool, configuration: .init(mac: macB, address: hostB))
        var now: UInt64 = 0
        exchange(a, b, steps: 4) { a.poll(now: now); b.poll(now: now); now += 1 }
        let sums = udpChecksums(recorder)
        #expect(sums.count == 3)
        #expect(sums.allSatisfy { $0.0 == 0 && $0.1 == 0 }, "the switch needs no checksums: none computed")
    }

    @Test("on a device without offloads, every checksum is computed and verifies")
    func linkComputesChecksums() {
        let link = MemoryLink(), poolA = PacketPool(capacity: 256), poolB = PacketPool(capacity: 256)
        let recorder = RecordingDevice(link.a)
        let a = Interface(device: recorder, pool: poolA, configuration: .init(mac: macA, address: hostA))
        let b = Interface(device: link.b, pool: poolB, configuration: .init(mac: macB, address: hostB))
        var now: UInt64 = 0
        exchange(a, b, steps: 4) { a.poll(now: now); b.poll(now: now); now += 1 }
        let sums = udpChecksums(recorder)
        #expect(sums.count == 3)
        #expect(sums.allSatisfy { $0.0 != 0 && $0.1 != 0 && $0.2 }, "IPv4 and UDP checksums present and valid")
    }
}

/// Counts live instances, to see elements deinitialised.
final class Tracked {
    static nonisolated(unsafe) var live = 0
    let value: Int
    init(_ value: Int) { self.value = value; Tracked.live += 1 }
    deinit { Tracked.live -= 1 }
}

@Suite("Chunked store", .serialized)
struct ChunkedStoreTests {
    struct Element { var tracked: Tracked; var n: Int }

    @Test("elements keep their addresses as the store grows; truncation frees elements and chunks")
    func stableAndShrinking() {
        let before = Tracked.live
        do {
            let store = ChunkedStore<Element>()
            store.append(Element(tracked: Tracked(0), n: 0))
            let first = withUnsafeMutablePointer(to: &store[0]) { UnsafeMutableRawPointer($0) }
            for i in 1..<5000 { store.append(Element(tracked: Tracked(i), n: i)) }
            #expect(withUnsafeMutablePointer(to: &store[0]) { UnsafeMutableRawPointer($0) } == first,
                    "growing never moved element 0")
            #expect(store.count == 5000 && store.capacity == 5 * 1024)
            #expect((0..<5000).allSatisfy { store[$0].n == $0 && store[$0].tracked.value == $0 })
            store[4321].n = -1
            #expect(store[4321].n == -1)
            #expect(Tracked.live - before == 5000)

            store.truncate(to: 1500)
            #expect(store.count == 1500 && Tracked.live - before == 1500, "truncated elements were released")
            #expect(store.capacity == 3 * 1024, "chunks past the end were given back, one spare kept")
            store.append(Element(tracked: Tracked(9), n: 9))
            #expect(store[1500].n == 9 && store.count == 1501)
            store.truncate(to: 0)
            #expect(store.isEmpty && store.capacity <= 1024 && Tracked.live == before)
            for i in 0..<10 { store.append(Element(tracked: Tracked(i), n: i)) }
        }
        #expect(Tracked.live == before, "deinit released the elements left")
    }
}

@Suite("Interface lifetime")
struct InterfaceLifetimeTests {
    @Test("an interface that goes takes its TCP layer, arenas and connections with it")
    func layerFreed() throws {
        weak var layerA: TCPLayer?, layerB: TCPLayer?
        let log = TCPLog()
        do {
            let net = TwoHosts()
            try net.b.listenTCP(port: 7) { TCPEcho() }
            // The clients close first and hold TIME-WAIT: their slots stay in use.
            net.a.connectTCP(to: TCPEndpoint(hostB, 7), TCPClient(message: Array(repeating: 7, count: 10), log: log))
            net.a.connectTCP(to: TCPEndpoint(hostB, 7), TCPClient(message: Array(repeating: 7, count: 10), log: log))
            net.run(20)
            #expect(net.a.tcp.connectionCount == 2 && log.received.count == 20)
            layerA = net.a.tcp
            layerB = net.b.tcp
        }
        #expect(layerA == nil && layerB == nil, "arenas hold their layer strongly; the interface's deinit breaks that")
    }
}

@Suite("Transmit backpressure")
struct BackpressureTests {
    @Test("a full device queue holds frames in the interface's backlog; beyond it they are dropped and counted")
    func backlog() throws {
        // A switch queue of 8 frames towards b, and nobody polling b: a's frames back up.
        let net = VirtualSwitch(ringCapacity: 8), pool = PacketPool(capacity: 256)
        var config = InterfaceConfiguration(mac: macA, address: hostA)
        config.transmitBacklog = 16
        let a = Interface(device: net.makePort(core: 0, pool: pool), pool: pool, configuration: config)
        let b = Interface(device: net.makePort(core: 0, pool: pool), pool: pool, configuration: .init(mac: macB, address: hostB))
        let inbox = Inbox()
        try b.bindUDP(port: 7, CollectHandler(inbox: inbox))
        // Resolve ARP first.
        _ = [UInt8](repeating: 1, count: 8).withUnsafeBytes { a.sendUDP($0, from: 9, to: UDPEndpoint(hostB, 7)) }
        for t in 0..<4 { _ = a.poll(now: UInt64(t)); _ = b.poll(now: UInt64(t)) }
        #expect(inbox.datagrams.count == 1)
        let sentBefore = a.counters.framesSent
        for i in 0..<40 {
            _ = [UInt8](repeating: UInt8(i), count: 8).withUnsafeBytes { a.sendUDP($0, from: 9, to: UDPEndpoint(hostB, 7)) }
        }
        _ = a.poll(now: 10)
        #expect(a.counters.transmitDrops == 24, "a backlog of 16 kept 16 of 40")
        #expect(a.counters.framesSent - sentBefore == 8, "the switch queue took 8")
        for t in 11..<20 { _ = b.poll(now: UInt64(t)); _ = a.poll(now: UInt64(t)) }
        #expect(inbox.datagrams.count == 17, "the 16 kept arrived, in order, after the first")
        #expect(inbox.datagrams.dropFirst().map { $0.1[0] } == (0..<16).map(UInt8.init))
    }
}

@Suite("Packet pool trim")
struct PacketPoolTrimTests {
    @Test("after a burst, free buffers above the highest in use go back; the ones in use keep their bytes")
    func trim() {
        let pool = PacketPool(capacity: 4096)
        var held: [Packet] = []
        for i in 0..<3000 {
            let p = pool.allocate(length: 4)!
            pool.bytes(p).storeBytes(of: UInt32(i), as: UInt32.self)
            held.append(p)
        }
        // Keep every 100th of the first 1000, free the rest (as after a burst).
        let kept = held.enumerated().filter { $0.offset < 1000 && $0.offset % 100 == 0 }
        for (i, p) in held.enumerated() where !(i < 1000 && i % 100 == 0) { pool.release(p) }
        #expect(pool.inUse == 10)
        let released = pool.trim()
        #expect(released >= 2000 * PacketPool.bufferSize - 8192, "the pages of about 2,000 buffers went back")
        #expect(pool.trim() == 0, "nothing more to give back")
        for (i, p) in kept { #expect(pool.bytes(p).load(as: UInt32.self) == UInt32(i)) }
        // Allocation starts from the lowest free buffers again.
        let next = pool.allocate(length: 4)!
        #expect(next.buffer == 1)
        pool.release(next)
        for (_, p) in kept { pool.release(p) }
        #expect(pool.inUse == 0)
    }
}

@Suite("Connection state size")
struct ConnectionStateSizeTests {
    struct NoState: TCPHandler {}

    @Test("an idle connection's stack state (slot and send queue) fits in 128 bytes")
    func fits() {
        let slot = MemoryLayout<TCPArena<NoState>.Slot>.stride
        let queue = MemoryLayout<SendQueue>.stride
        #expect(slot + queue <= 128, "slot \(slot) + send queue \(queue) bytes")
    }
}
