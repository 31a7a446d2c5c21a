import HereticTransport
/// A deterministic pseudo-random generator (SplitMix64): one seed, one sequence, everywhere.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// True with probability `p`.
    public mutating func chance(_ p: Double) -> Bool {
        p > 0 && Double(next() >> 11) / Double(1 << 53) < p
    }
}

/// Wraps any device and makes its transmit side lossy, from one seed: drops, duplicates,
/// corrupts, delays and reorders frames. Time is the simulation's: set `now` (milliseconds)
/// before polling; delayed frames leave when their time comes, in a fixed order, so a seed
/// reproduces a run exactly.
public final class FaultInjector: NetworkDevice {
    public struct Faults: Sendable {
        public var drop = 0.0
        public var duplicate = 0.0
        public var corrupt = 0.0
        /// Chance that a frame is held back an extra `reorderMilliseconds`, letting later
        /// frames overtake it.
        public var reorder = 0.0
        public var reorderMilliseconds: UInt64 = 5
        /// Every frame's delay, drawn uniformly from this range.
        public var delayMilliseconds: ClosedRange<UInt64> = 0...0
        public init(drop: Double = 0, duplicate: Double = 0, corrupt: Double = 0, reorder: Double = 0,
                    delayMilliseconds: ClosedRange<UInt64> = 0...0) {
            self.drop = drop
            self.duplicate = duplicate
            self.corrupt = corrupt
            self.reorder = reorder
            self.delayMilliseconds = delayMilliseconds
        }
    }

    public let inner: NetworkDevice
    public var faults: Faults
    public var now: UInt64 = 0
    private var rng: SplitMix64
    private var held: [(due: UInt64, order: UInt64, bytes: [UInt8])] = []
    private var order: UInt64 = 0
    private var staging: [Packet] = []
    public private(set) var dropped = 0
    public private(set) var duplicated = 0
    public private(set) var corrupted = 0
    public private(set) var reordered = 0

    public init(_ inner: NetworkDevice, faults: Faults, seed: UInt64) {
        self.inner = inner
        self.faults = faults
        rng = SplitMix64(seed: seed)
    }

    public var mtu: Int { inner.mtu }
    /// A lossy link verifies nothing for the stack.
    public var offloads: DeviceOffloads { [] }

    /// Faults for frames arriving from the inner device too (nil: they pass untouched), for
    /// a link whose far end is not simulated (a TAP device towards Linux).
    public var receiveFaults: Faults?
    /// Reads the time itself when set (on a real core), instead of being told `now`.
    public var clock: (() -> UInt64)?
    private var receiveHeld: [(due: UInt64, order: UInt64, bytes: [UInt8])] = []
    private var arriving: [Packet] = []

    public func receive(into frames: inout [Packet], limit: Int, pool: PacketPool) -> Int {
        if let clock { now = clock() }
        release(pool: pool)
        guard let rf = receiveFaults else { return inner.receive(into: &frames, limit: limit, pool: pool) }
        _ = inner.receive(into: &arriving, limit: limit, pool: pool)
        for f in arriving {
            impair(f, rf, pool: pool, into: &receiveHeld)
            pool.release(f)
        }
        arriving.removeAll(keepingCapacity: true)
        guard !receiveHeld.isEmpty else { return 0 }
        receiveHeld.sort { ($0.due, $0.order) < ($1.due, $1.order) }
        var n = 0
        while n < receiveHeld.count, n < limit, receiveHeld[n].due <= now {
            guard let p = receiveHeld[n].bytes.withUnsafeBytes({ pool.copy(from: $0.baseAddress!, length: $0.count) }) else { break }
            frames.append(p)
            n += 1
        }
        receiveHeld.removeFirst(n)
        return n
    }

    public func transmit(_ frames: inout [Packet], pool: PacketPool) {
        if let clock { now = clock() }
        for f in frames {
            impair(f, faults, pool: pool, into: &held)
            pool.release(f)
        }
        frames.removeAll(keepingCapacity: true)
        release(pool: pool)
    }

    /// One frame through `f`: dropped, or copied (maybe corrupted) into `queue` once, or twice
    /// if duplicated, each copy due after its delay (longer if reordered).
    private func impair(_ frame: Packet, _ f: Faults, pool: PacketPool,
                        into queue: inout [(due: UInt64, order: UInt64, bytes: [UInt8])]) {
        if rng.chance(f.drop) { dropped += 1; return }
        var bytes = pool.contents(frame)
        if rng.chance(f.corrupt), !bytes.isEmpty {
            let at = Int(rng.next() % UInt64(bytes.count))
            bytes[at] ^= UInt8(1) << UInt8(rng.next() % 8)
            corrupted += 1
        }
        let copies = rng.chance(f.duplicate) ? 2 : 1
        if copies == 2 { duplicated += 1 }
        for _ in 0..<copies {
            let span = f.delayMilliseconds.upperBound - f.delayMilliseconds.lowerBound
            var due = now + f.delayMilliseconds.lowerBound + (span == 0 ? 0 : rng.next() % (span + 1))
            if rng.chance(f.reorder) { due += f.reorderMilliseconds; reordered += 1 }
            queue.append((due, order, bytes))
            order += 1
        }
    }

    /// Frames held back and not yet sent (or, with receive faults, not yet delivered).
    public var inFlight: Int { held.count + receiveHeld.count }

    private func release(pool: PacketPool) {
        guard !held.isEmpty else { return }
        held.sort { ($0.due, $0.order) < ($1.due, $1.order) }
        var n = 0
        while n < held.count, held[n].due <= now { n += 1 }
        guard n > 0 else { return }
        for h in held[0..<n] {
            if let p = h.bytes.withUnsafeBytes({ pool.copy(from: $0.baseAddress!, length: $0.count) }) {
                staging.append(p)
            } else {
                dropped += 1
            }
        }
        held.removeFirst(n)
        inner.transmit(&staging, pool: pool)
        // A link that is full drops what it could not take (it is a lossy link anyway).
        dropped += staging.count
        for p in staging { pool.release(p) }
        staging.removeAll(keepingCapacity: true)
    }
}
