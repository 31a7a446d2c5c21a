import HereticTransport
import Atomics

/// An Ethernet switch inside the process, joining the interfaces of every core.
///
/// Each port belongs to one core and is that core's `NetworkDevice`. The switch learns which
/// port every source MAC address lives behind and forwards unicast frames to that port alone;
/// broadcasts and unknown destinations are flooded. A frame between two ports of the same
/// core moves as a packet index (the ports share the core's pool); a frame to another core is
/// copied through a lock-free ring, published once per transmitted batch. Nothing locks.
public final class VirtualSwitch: @unchecked Sendable {
    /// Frames a ring between two cores holds before it drops.
    public let ringCapacity: Int
    @exclusivity(unchecked) private(set) var ports: [SwitchPort] = []
    /// Learned addresses: MAC (48 bits) and port index + 1 (16 bits) in one atomic word, so a
    /// reader on any core sees a whole entry or none. Open addressing, never shrinks.
    private let table: UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>
    private let tableMask: Int

    public init(ringCapacity: Int = 4096, learningCapacity: Int = 4096) {
        self.ringCapacity = ringCapacity
        var c = 16
        while c < learningCapacity * 2 { c <<= 1 }
        tableMask = c - 1
        table = UnsafeMutablePointer<UnsafeAtomic<UInt64>.Storage>.allocate(capacity: c)
        for i in 0..<c { (table + i).initialize(to: UnsafeAtomic<UInt64>.Storage(0)) }
    }

    deinit { table.deallocate() }

    /// Drops the switch's references to its ports, so switch and ports can be freed. Call once
    /// no core forwards through it (after the runtime shut down).
    public func detach() {
        ports.removeAll()
        unmanagedPorts.removeAll()
    }

    /// Adds a port owned by `core`, whose interfaces allocate from `pool`. Create every port
    /// before traffic starts (the port list is fixed once cores run). With `checksums`, the
    /// interface on the port computes and verifies checksums, as on a real link: for a switch
    /// that also carries frames nobody in the process vouches for (an attacker's, in
    /// `bench hostile`).
    public func makePort(core: Int, pool: PacketPool, mtu: Int = 1500, checksums: Bool = false) -> SwitchPort {
        precondition(ports.allSatisfy { $0.core != core || $0.pool === pool },
                     "Heretic: ports of one core share that core's packet pool")
        let port = SwitchPort(switch: self, index: ports.count, core: core, pool: pool, mtu: mtu,
                              offloads: checksums ? [] : [.receiveChecksumsVerified, .transmitChecksums])
        for other in ports {
            if other.core != core {
                other.addInbound(from: port)
                port.addInbound(from: other)
            }
        }
        ports.append(port)
        unmanagedPorts.append(Unmanaged.passUnretained(port))
        return port
    }

    @inline(__always) private func slot(_ mac: MACAddress) -> Int {
        Int(truncatingIfNeeded: (mac.raw &* 0x9E37_79B9_7F4A_7C15) >> 40) & tableMask
    }

    /// Records that `mac` is behind `port` (from a frame's source address).
    func learn(_ mac: MACAddress, port: Int) {
        guard !mac.isMulticast else { return }
        let entry = mac.raw << 16 | UInt64(port + 1)
        var i = slot(mac)
        for _ in 0...tableMask {
            let word = UnsafeAtomic<UInt64>(at: table + i)
            let current = word.load(ordering: .relaxed)
            if current == entry { return }
            if current == 0 || current >> 16 == mac.raw {
                let (done, _) = word.compareExchange(expected: current, desired: entry, ordering: .relaxed)
                if done { return }
                continue  // lost a race for this slot; look again
            }
            i = (i + 1) & tableMask
        }
    }

    /// The port behind `mac`, if learned.
    func lookup(_ mac: MACAddress) -> Int? {
        var i = slot(mac)
        for _ in 0...tableMask {
            let e = UnsafeAtomic<UInt64>(at: table + i).load(ordering: .relaxed)
            if e == 0 { return nil }
            if e >> 16 == mac.raw { return Int(e & 0xFFFF) - 1 }
            i = (i + 1) & tableMask
        }
        return nil
    }

    /// Ports by index without reference counting: the switch owns them for its lifetime.
    @exclusivity(unchecked) var unmanagedPorts: [Unmanaged<SwitchPort>] = []

    @inline(__always) func port(_ i: Int) -> Unmanaged<SwitchPort> { unmanagedPorts[i] }
    var portCount: Int { ports.count }
}

/// One port of a `VirtualSwitch`: the `NetworkDevice` of an interface on one core.
public final class SwitchPort: NetworkDevice, @unchecked Sendable {
    /// Ports keep their switch alive (a core may forward through it while anything holds a
    /// port); `VirtualSwitch.detach()` breaks the cycle once no core runs.
    let owner: VirtualSwitch
    public let index: Int
    public let core: Int
    public let mtu: Int
    let pool: PacketPool
    /// The in-process link cannot corrupt frames, and every receiver is an in-process interface
    /// that trusts it: checksums are neither computed nor verified (a fault injector around a
    /// port reports no offloads, so both come back; so does a port made with `checksums`).
    public let offloads: DeviceOffloads
    /// Frames from ports of the same core, as packets of the shared pool (bounded like the
    /// cross-core rings: a full queue drops and counts).
    @exclusivity(unchecked) var local: PacketQueue
    /// Rings from ports of other cores, and to them, by port index.
    @exclusivity(unchecked) var inboundRings: [FrameRing] = []
    /// Rings to other cores' ports, indexed by port (nil for ports of this core).
    @exclusivity(unchecked) var outboundRings: [FrameRing?] = []
    @exclusivity(unchecked) private var touched: [FrameRing] = []
    @exclusivity(unchecked) public private(set) var framesDropped = 0
    @exclusivity(unchecked) public private(set) var framesForwarded = 0

    init(switch owner: VirtualSwitch, index: Int, core: Int, pool: PacketPool, mtu: Int, offloads: DeviceOffloads) {
        self.owner = owner
        self.offloads = offloads
        self.index = index
        self.core = core
        self.pool = pool
        self.mtu = mtu
        local = PacketQueue(capacity: owner.ringCapacity)
    }

    deinit {
        while let p = local.pop() { pool.release(p) }
        local.release()
    }

    func addInbound(from sender: SwitchPort) {
        let ring = FrameRing(capacity: owner.ringCapacity)
        inboundRings.append(ring)
        while sender.outboundRings.count <= index { sender.outboundRings.append(nil) }
        sender.outboundRings[index] = ring
    }

    public func receive(into frames: inout [Packet], limit: Int, pool: PacketPool) -> Int {
        precondition(pool === self.pool, "Heretic: a switch port receives into its core's pool")
        var n = 0
        while n < limit, let p = local.pop() {
            frames.append(p)
            n += 1
        }
        for ring in inboundRings where n < limit {
            n += ring.read(into: &frames, limit: limit - n, pool: pool)
        }
        return n
    }

    public func transmit(_ frames: inout [Packet], pool: PacketPool) {
        var taken = 0
        while taken < frames.count {
            let f = frames[taken]
            let bytes = pool.bytes(f)
            guard f.length >= 14 else { pool.release(f); framesDropped += 1; taken += 1; continue }
            let source = MACAddress.load(bytes, 6)
            if owner.lookup(source) != index { owner.learn(source, port: index) }
            let destination = MACAddress.load(bytes, 0)
            if !destination.isMulticast, let to = owner.lookup(destination) {
                if to != index {
                    // A full queue towards the port: the rest waits with the sender.
                    guard owner.port(to)._withUnsafeGuaranteedRef({ forward(f, to: $0, consume: true) }) else { break }
                } else {
                    pool.release(f)
                }
            } else {
                // Flood: every other port gets a copy (dropped where a queue is full); the
                // original goes to the last one.
                let targets = (0..<owner.portCount).filter { $0 != index }
                if targets.isEmpty { pool.release(f) }
                for (k, t) in targets.enumerated() {
                    let last = k == targets.count - 1
                    let sent = owner.port(t)._withUnsafeGuaranteedRef { forward(f, to: $0, consume: last) }
                    if !sent {
                        framesDropped += 1
                        if last { pool.release(f) }
                    }
                }
            }
            taken += 1
        }
        if taken == frames.count {
            frames.removeAll(keepingCapacity: true)
        } else {
            frames.removeFirst(taken)
        }
        if !touched.isEmpty {
            for ring in touched { ring.publish() }
            touched.removeAll(keepingCapacity: true)
        }
    }

    /// Hands `f` to `port`'s queue; false (and `f` untouched, still the caller's) when that
    /// queue is full. With `consume`, a forwarded frame's buffer is released or moved.
    private func forward(_ f: Packet, to port: SwitchPort, consume: Bool) -> Bool {
        if port.core == core {
            var p = f
            if !consume {
                guard let copy = pool.copy(from: pool.bytes(f), length: Int(f.length)) else { return false }
                p = copy
            }
            guard port.local.push(p) else {
                if !consume { pool.release(p) }
                return false
            }
            framesForwarded += 1
            return true
        }
        let ring = outboundRings[port.index].unsafelyUnwrapped
        guard ring.write(pool.bytes(f), length: Int(f.length)) else { return false }
        if !touched.contains(where: { $0 === ring }) { touched.append(ring) }
        framesForwarded += 1
        if consume { pool.release(f) }
        return true
    }
}
