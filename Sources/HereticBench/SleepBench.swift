import Histogram
import HereticCore

/// Per-core counters of the sleep benchmark, reached by the sleepers through a raw pointer.
struct SleepStats {
    let period: Int
    var measuring = false
    var completions: UInt64 = 0
    /// Wake-ups before the requested time: a broken sleep, so the benchmark fails if any.
    var early: UInt64 = 0
    /// Lateness (actual wake-up minus requested wake-up) in microseconds.
    var lateness = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000,
                                     numberOfSignificantValueDigits: .three)
}

/// The brief's concurrent sleeper: `loop { sleep(T); counter += 1 }`, 16 bytes of state.
struct Sleeper: StacklessTask {
    let stats: UnsafeMutablePointer<SleepStats>
    /// When the current sleep should end, in nanoseconds of the monotonic clock (0 at start).
    var wakeAt: UInt64 = 0

    mutating func resume(_ ctx: inout TaskContext<Sleeper>) -> Suspension {
        let period = stats.pointee.period
        let now = MonotonicClock.nanoseconds()
        if wakeAt != 0 && stats.pointee.measuring {
            stats.pointee.completions &+= 1
            if now < wakeAt {
                stats.pointee.early &+= 1
            } else {
                _ = stats.pointee.lateness.record((now - wakeAt) / 1000)
            }
        }
        wakeAt = now + UInt64(period) * 1_000_000
        return .sleep(milliseconds: period)
    }
}

/// The per-core driver: creates the sleepers in steps across the first period so their timers
/// spread out, then opens the measurement window and closes it at the deadline.
struct SleepDriver: StacklessTask {
    enum Phase { case creating, measuring, finished }
    let control: SleepControl
    var phase = Phase.creating
    var step = 0

    var startTick: UInt64 = 0

    mutating func resume(_ ctx: inout TaskContext<SleepDriver>) -> Suspension {
        let c = control
        switch phase {
        case .creating:
            if step == 0 {
                c.pool = ctx.core.makePool(of: Sleeper.self)
                startTick = ctx.nowMilliseconds
            }
            if step < c.steps {
                let count = c.tasks / c.steps + (step < c.tasks % c.steps ? 1 : 0)
                let pool = c.pool!
                for _ in 0..<count { pool.spawn(Sleeper(stats: c.stats)) }
                step += 1
                // Steps on absolute ticks, so the first period holds them all evenly.
                return ctx.sleep(untilMillisecond: startTick + UInt64(step * c.periodMilliseconds / c.steps))
            }
            // Every sleeper exists and the first ones are completing: measure from here.
            c.created.open()
            c.stats.pointee.measuring = true
            c.windowStart = MonotonicClock.nanoseconds()
            phase = .measuring
            return .sleep(milliseconds: Int(c.windowSeconds * 1000))
        case .measuring:
            c.stats.pointee.measuring = false
            c.windowEnd = MonotonicClock.nanoseconds()
            // No sleeper may be lost: each is alive and either waiting on its own timer or
            // ready to run (this driver, running now, has no timer pending).
            let pool = c.pool!
            c.accountedFor = pool.liveCount == c.tasks
                && ctx.core.pendingTimers + pool.readyCount == c.tasks
            ctx.core.removePool(c.pool!)
            c.pool = nil
            phase = .finished
            c.done.open()
            return .exit
        case .finished:
            return .exit
        }
    }
}

final class SleepControl: @unchecked Sendable {
    let tasks: Int
    let periodMilliseconds: Int
    let steps: Int
    let windowSeconds: Double
    let stats: UnsafeMutablePointer<SleepStats>
    var pool: TaskPool<Sleeper>?
    var windowStart: UInt64 = 0
    var windowEnd: UInt64 = 0
    var accountedFor = false
    let created = Latch()
    let done = Latch()

    init(tasks: Int, periodMilliseconds: Int, steps: Int, windowSeconds: Double) {
        self.tasks = tasks
        self.periodMilliseconds = periodMilliseconds
        self.steps = steps
        self.windowSeconds = windowSeconds
        stats = .allocate(capacity: 1)
        stats.initialize(to: SleepStats(period: periodMilliseconds))
    }

    deinit {
        stats.deinitialize(count: 1)
        stats.deallocate()
    }
}

public struct SleepBenchmark {
    public var tasks: Int
    public var periodMilliseconds: Int
    public var seconds: Double
    public var cores: Int
    /// Idle cores poll for timers due within this many microseconds instead of blocking.
    public var idleSpinMicroseconds = 0

    public init(tasks: Int, periodMilliseconds: Int, seconds: Double? = nil, cores: Int = Runtime.availableCPUs) {
        self.tasks = tasks
        self.periodMilliseconds = periodMilliseconds
        self.seconds = seconds ?? Self.defaultSeconds(periodMilliseconds: periodMilliseconds)
        self.cores = cores
    }

    /// One period to create the tasks, then three periods (at least two seconds) measured.
    public static func defaultSeconds(periodMilliseconds: Int) -> Double {
        let p = Double(periodMilliseconds) / 1000
        return p + max(2, 3 * p)
    }

    public func run() throws -> BenchResult {
        guard tasks >= 1 else { throw BenchError("--tasks must be at least 1") }
        guard periodMilliseconds >= 10 else { throw BenchError("--period-ms must be at least 10") }
        guard cores >= 1 else { throw BenchError("--cores must be at least 1") }
        let period = Double(periodMilliseconds) / 1000
        var window = seconds - period
        guard window >= 0.5 else {
            throw BenchError("--seconds must exceed the period by at least 0.5 s (one period creates the tasks)")
        }
        // Measure whole periods when there is time for one: then every task completes the
        // same number of times in the window however its phase fell.
        if window >= period { window = (window / period).rounded(.down) * period }
        let runtime = try Runtime(cores: cores, idleSpinMicroseconds: idleSpinMicroseconds)
        defer { runtime.shutdown() }
        let cpuBefore = ProcessStats.cpuSeconds()
        let stealBefore = ProcessStats.stealSeconds()
        // One creation step per millisecond of the period: every tick of the wheel then has
        // its share of wake-ups, instead of bursts with idle gaps between them.
        let steps = periodMilliseconds
        let controls = (0..<cores).map { c in
            SleepControl(tasks: tasks / cores + (c < tasks % cores ? 1 : 0),
                         periodMilliseconds: periodMilliseconds, steps: steps, windowSeconds: window)
        }
        let rssBefore = ProcessStats.residentBytes()
        for c in 0..<cores {
            let control = controls[c]
            try runtime.execute(on: c) { core in
                core.makePool(of: SleepDriver.self).spawn(SleepDriver(control: control))
            }
        }
        for c in controls { c.created.wait() }
        let rssAfter = ProcessStats.residentBytes()
        for c in controls { c.done.wait() }
        let cpuUsed = ProcessStats.cpuSeconds() - cpuBefore
        // Time the hypervisor took from this machine's CPUs meanwhile: it shows up as lateness.
        let stealPercent = 100 * (ProcessStats.stealSeconds() - stealBefore) / seconds / Double(Runtime.availableCPUs)

        var completions = 0.0
        var early: UInt64 = 0
        var lateness = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000,
                                         numberOfSignificantValueDigits: .three)
        for c in controls {
            let secs = Double(c.windowEnd - c.windowStart) / 1e9
            completions += Double(c.stats.pointee.completions) / secs
            early += c.stats.pointee.early
            lateness.add(c.stats.pointee.lateness)
        }
        let ideal = Double(tasks) * 1000 / Double(periodMilliseconds)
        // Verified when no sleep ended early, every sleeper is accounted for (alive, with a
        // timer pending or ready to run) and completions never exceed what whole periods allow.
        // The rate itself depends on the machine (steal time) and is reported, not judged.
        let ratio = completions / ideal
        let ok = early == 0 && controls.allSatisfy(\.accountedFor) && completions > 0 && ratio <= 1.01
        var r = BenchResult(bench: "sleep", verified: ok)
        r.add("tasks", tasks)
        r.add("cores", cores)
        r.add("period_ms", periodMilliseconds)
        r.add("seconds", seconds)
        r.add("window_seconds", window)
        r.add("completions_per_sec", completions.rounded())
        r.add("ideal_per_sec", ideal.rounded())
        r.add("ratio_to_ideal", ratio)
        r.add("early_wakeups", early)
        r.add("lateness_p50_ms", Double(lateness.valueAtPercentile(50)) / 1000)
        r.add("lateness_p99_ms", Double(lateness.valueAtPercentile(99)) / 1000)
        r.add("lateness_p999_ms", Double(lateness.valueAtPercentile(99.9)) / 1000)
        r.add("lateness_max_ms", Double(lateness.max) / 1000)
        r.add("bytes_per_task", Double(rssAfter &- rssBefore) / Double(tasks))
        r.add("rss_bytes", rssAfter)
        r.add("idle_spin_us", idleSpinMicroseconds)
        r.add("cpu_percent", 100 * cpuUsed / seconds / Double(cores))
        r.add("steal_percent", stealPercent)
        return r
    }
}
