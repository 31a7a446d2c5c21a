import Testing
import HereticCore
@testable import HereticNet

func frame(to dst: MACAddress, from src: MACAddress, tag: UInt8, pool: PacketPool) -> Packet {
    let p = pool.allocate(length: 60)!
    EthernetFrame.emit(into: pool.bytes(p), destination: dst, source: src, etherType: 0x88B5)
    pool.bytes(p).storeBytes(of: tag, toByteOffset: 14, as: UInt8.self)
    return p
}

func drain(_ port: SwitchPort, _ pool: PacketPool) -> [(MACAddress, UInt8)] {
    var got: [Packet] = []
    _ = port.receive(into: &got, limit: .max, pool: pool)
    defer { for p in got { pool.release(p) } }
    return got.map { (MACAddress.load(pool.bytes($0), 6), pool.bytes($0).load(fromByteOffset: 14, as: UInt8.self)) }
}

@Suite("Virtual switch")
struct SwitchTests {
    let m1 = MACAddress(2, 0, 0, 0, 0, 1), m2 = MACAddress(2, 0, 0, 0, 0, 2), m3 = MACAddress(2, 0, 0, 0, 0, 3)

    @Test("unknown destinations flood; learned ones go to one port only")
    func learning() {
        let net = VirtualSwitch(), pool = PacketPool(capacity: 64)
        let p1 = net.makePort(core: 0, pool: pool), p2 = net.makePort(core: 0, pool: pool)
        let p3 = net.makePort(core: 0, pool: pool)
        var out = [frame(to: m2, from: m1, tag: 1, pool: pool)]   // m2 unknown: flood
        p1.transmit(&out, pool: pool)
        #expect(drain(p2, pool).map(\.1) == [1] && drain(p3, pool).map(\.1) == [1])
        #expect(drain(p1, pool).isEmpty, "never back out of the port it came in")
        out = [frame(to: m1, from: m2, tag: 2, pool: pool)]       // m1 learned behind p1
        p2.transmit(&out, pool: pool)
        #expect(drain(p1, pool).map(\.1) == [2] && drain(p3, pool).isEmpty)
        out = [frame(to: m2, from: m3, tag: 3, pool: pool)]       // m2 learned behind p2
        p3.transmit(&out, pool: pool)
        #expect(drain(p2, pool).map(\.1) == [3] && drain(p1, pool).isEmpty)
        out = [frame(to: .broadcast, from: m1, tag: 4, pool: pool)]
        p1.transmit(&out, pool: pool)
        #expect(drain(p2, pool).map(\.1) == [4] && drain(p3, pool).map(\.1) == [4])
        #expect(pool.inUse == 0, "same-core forwarding moved or released every buffer")
    }

    @Test("a full queue pushes back: the frames it cannot take stay with the sender, in order")
    func bounded() {
        let net = VirtualSwitch(ringCapacity: 8), pool = PacketPool(capacity: 64)
        let p1 = net.makePort(core: 0, pool: pool), p2 = net.makePort(core: 0, pool: pool)
        var out = [frame(to: m1, from: m2, tag: 0, pool: pool)]
        p2.transmit(&out, pool: pool)                              // learn m2 behind p2
        _ = drain(p1, pool)
        out = (0..<20).map { frame(to: m2, from: m1, tag: UInt8($0), pool: pool) }
        p1.transmit(&out, pool: pool)
        #expect(out.count == 12, "the queue holds 8; 12 wait with the sender")
        #expect(drain(p2, pool).map(\.1) == Array(0..<8))
        p1.transmit(&out, pool: pool)
        #expect(out.count == 4)
        #expect(drain(p2, pool).map(\.1) == Array(8..<16))
        p1.transmit(&out, pool: pool)
        #expect(out.isEmpty && drain(p2, pool).map(\.1) == Array(16..<20))
        #expect(p1.framesDropped == 0 && pool.inUse == 0, "nothing lost, nothing leaked")
    }

    @Test("frames cross cores through the rings, in order, on real core threads")
    func crossCore() throws {
        let net = VirtualSwitch()
        let pools = [PacketPool(capacity: 4096), PacketPool(capacity: 4096)]
        let p0 = net.makePort(core: 0, pool: pools[0]), p1 = net.makePort(core: 1, pool: pools[1])
        let runtime = try Runtime(cores: 2, pinThreads: false)
        defer { runtime.shutdown() }
        let box = Unchecked((p0, p1, pools))
        let (m1, m2) = (self.m1, self.m2)
        // Core 1 announces m2 (flooded to core 0), then core 0 sends 3000 frames to m2.
        try runtime.run(on: 1) { _ in
            var out = [frame(to: .broadcast, from: m2, tag: 0, pool: box.value.2[1])]
            box.value.1.transmit(&out, pool: box.value.2[1])
        }
        try runtime.run(on: 0) { _ in
            _ = drain(box.value.0, box.value.2[0])
            for batch in 0..<30 {
                var out = (0..<100).map { i in frame(to: m2, from: m1, tag: UInt8((batch * 100 + i) % 251), pool: box.value.2[0]) }
                box.value.0.transmit(&out, pool: box.value.2[0])
            }
        }
        let tags = try runtime.run(on: 1) { _ in drain(box.value.1, box.value.2[1]).map(\.1) }
        #expect(tags == (0..<3000).map { UInt8($0 % 251) })
        #expect(box.value.0.framesDropped == 0)
    }

    @Test("ports of one core must share its pool")
    func sharedPool() async {
        await #expect(processExitsWith: .failure) {
            let net = VirtualSwitch()
            _ = net.makePort(core: 0, pool: PacketPool(capacity: 4))
            _ = net.makePort(core: 0, pool: PacketPool(capacity: 4))
        }
    }
}

struct Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
