import HereticCore

/// The value passed around the ring: the running checksum and the number of hops so far.
public struct Flower: Sendable, Equatable {
    public var checksum: UInt64
    public var count: UInt64
    public init(checksum: UInt64, count: UInt64) { self.checksum = checksum; self.count = count }

    /// The brief's proof that no hop was skipped: task i adds key i + 1, so after `hops` hops
    /// around a ring of `tasks` starting at task 0 the checksum has a closed form.
    public static func expectedChecksum(hops: UInt64, tasks: UInt64) -> UInt64 {
        func triangle(_ n: UInt64) -> UInt64 {  // n(n+1)/2 modulo 2^64
            n % 2 == 0 ? (n / 2) &* (n &+ 1) : n &* ((n &+ 1) / 2)
        }
        let laps = hops / tasks, rest = hops % tasks
        return laps &* triangle(tasks) &+ triangle(rest)
    }
}

/// One member of the "pass the flower" ring: waits on its own event, adds its key to the
/// checksum and sets the next task's event. 28 bytes of state, a 40-byte slot.
struct RingTask: StacklessTask {
    var inbox = Event<Flower>()
    let key: UInt32
    let next: UInt32

    @inline(__always)
    mutating func resume(_ ctx: inout TaskContext<RingTask>) -> Suspension {
        if let f = inbox.take() {
            ctx.set(sibling: next, \.inbox,
                    Flower(checksum: f.checksum &+ UInt64(key), count: f.count &+ 1))
        }
        return ctx.wait(\.inbox)
    }
}

/// Per-core bookkeeping of one ring, owned by that core.
final class RingControl: @unchecked Sendable {
    let tasks: Int
    let seconds: Double
    let progress: Bool
    var pool: TaskPool<RingTask>?
    var first: TaskHandle<RingTask>?
    var startNanos: UInt64 = 0
    var endNanos: UInt64 = 0
    var startSwitches: UInt64 = 0
    var flower: Flower?
    var flowerAt: UInt32 = 0
    let done = Latch()

    init(tasks: Int, seconds: Double, progress: Bool) {
        self.tasks = tasks
        self.seconds = seconds
        self.progress = progress
    }
}

/// The brief's manager: starts the flower, prints progress every few seconds if asked, and at
/// the deadline stops the ring and finds the flower.
struct RingManager: StacklessTask {
    let control: RingControl
    var started = false
    var lastReport: (nanos: UInt64, switches: UInt64) = (0, 0)

    mutating func resume(_ ctx: inout TaskContext<RingManager>) -> Suspension {
        let c = control
        let now = MonotonicClock.nanoseconds()
        if !started {
            started = true
            c.startNanos = now
            c.startSwitches = ctx.core.switchCount
            lastReport = (now, c.startSwitches)
            c.pool!.set(slot: c.first!.id.slot, \.inbox, Flower(checksum: 0, count: 0))
            return .sleep(milliseconds: Int(min(c.seconds, 2) * 1000))
        }
        let deadline = c.startNanos + UInt64(c.seconds * 1e9)
        if c.progress && now - lastReport.nanos >= 2_000_000_000 {
            let sw = ctx.core.switchCount
            let rate = Double(sw - lastReport.switches) / (Double(now - lastReport.nanos) / 1e9)
            print("  core \(ctx.core.index): \(humanRate(rate)) switches/s")
            lastReport = (now, sw)
        }
        if now < deadline {
            let left = Double(deadline - now) / 1e6
            return .sleep(milliseconds: max(1, Int(min(left, 2000))))
        }
        // Stop: the one ready ring task holds the flower. Remove the ring with it.
        c.endNanos = now
        let pool = c.pool!
        for h in pool.readyTasks() {
            if let f = pool.withTask(h, { $0.inbox.peek }) ?? nil {
                c.flower = f
                c.flowerAt = h.id.slot
            }
        }
        ctx.core.removePool(pool)
        c.pool = nil
        c.done.open()
        return .exit
    }
}

public struct EventsBenchmark {
    public var tasks: Int
    public var cores: Int
    public var seconds: Double
    public var progress = false

    public init(tasks: Int, cores: Int, seconds: Double) {
        self.tasks = tasks
        self.cores = cores
        self.seconds = seconds
    }

    public func run() throws -> BenchResult {
        guard tasks >= 2 else { throw BenchError("--tasks must be at least 2 (a ring)") }
        guard tasks <= Int(UInt32.max) - 1 else { throw BenchError("--tasks must be below 2^32 per ring") }
        guard cores >= 1 else { throw BenchError("--cores must be at least 1") }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let runtime = try Runtime(cores: cores)
        defer { runtime.shutdown() }

        let rssBefore = ProcessStats.residentBytes()
        let controls = (0..<cores).map { _ in RingControl(tasks: tasks, seconds: seconds, progress: progress) }
        // Build the rings on all cores at once; each core reports back when its ring exists.
        let built = (0..<cores).map { _ in Latch() }
        for c in 0..<cores {
            let control = controls[c], latch = built[c], n = tasks
            try runtime.execute(on: c) { core in
                let pool = core.makePool(of: RingTask.self)
                var first: TaskHandle<RingTask>?
                for i in 0..<n {
                    let next = UInt32(i + 1 == n ? 0 : i + 1)
                    let h = pool.spawn(RingTask(key: UInt32(truncatingIfNeeded: i + 1), next: next),
                                       waitingOn: \.inbox)
                    if i == 0 { first = h }
                }
                control.pool = pool
                control.first = first
                latch.open()
            }
        }
        for l in built { l.wait() }
        let rssAfter = ProcessStats.residentBytes()

        for c in 0..<cores {
            let control = controls[c]
            try runtime.execute(on: c) { core in
                core.makePool(of: RingManager.self).spawn(RingManager(control: control))
            }
        }
        for c in controls { c.done.wait() }

        var total = 0.0
        var ok = true
        for c in controls {
            guard let f = c.flower else { ok = false; continue }
            let expected = Flower.expectedChecksum(hops: f.count, tasks: UInt64(tasks))
            let position = UInt32(f.count % UInt64(tasks))
            if f.checksum != expected || c.flowerAt != position { ok = false }
            total += Double(f.count) / (Double(c.endNanos - c.startNanos) / 1e9)
        }
        var r = BenchResult(bench: "events", verified: ok)
        r.add("tasks", tasks * cores)
        r.add("cores", cores)
        r.add("seconds", seconds)
        r.add("switches_per_sec", total.rounded())
        r.add("per_core_switches_per_sec", (total / Double(cores)).rounded())
        r.add("bytes_per_task", Double(rssAfter &- rssBefore) / Double(tasks * cores))
        r.add("rss_bytes", rssAfter)
        r.add("checksum_ok", ok)
        return r
    }
}
