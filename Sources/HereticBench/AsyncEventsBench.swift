import Atomics
#if canImport(Glibc)
import Glibc
#endif
import HereticCore
import Synchronization

/// What the async ring needs of an event, so one ring body runs on both executors.
protocol RingEvent: Sendable {
    func wait(isolation: isolated (any Actor)?) async throws(CancellationError) -> Flower
    func set(_ flower: Flower)
}

extension AsyncEvent: RingEvent where Value == Flower {
    func set(_ flower: Flower) { _ = self.set(flower) as SetResult }
}

/// The portable counterpart for Swift's global executor: a lock and a continuation, the way
/// an async event is written without a runtime of one's own.
final class LockedEvent: RingEvent {
    private struct State {
        var value: Flower?
        var waiter: CheckedContinuation<Flower?, Never>?
        var cancelled = false
    }
    private let state = Mutex(State())

    func set(_ flower: Flower) {
        let w = state.withLock { s -> CheckedContinuation<Flower?, Never>? in
            if let w = s.waiter { s.waiter = nil; return w }
            s.value = flower
            return nil
        }
        w?.resume(returning: flower)
    }

    func wait(isolation: isolated (any Actor)?) async throws(CancellationError) -> Flower {
        let got: Flower? = await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Flower?, Never>) in
                let ready = state.withLock { s -> Flower?? in
                    if let v = s.value { s.value = nil; return .some(v) }
                    if s.cancelled { return .some(nil) }
                    s.waiter = c
                    return nil
                }
                if let r = ready { c.resume(returning: r) }
            }
        } onCancel: {
            let w = state.withLock { s -> CheckedContinuation<Flower?, Never>? in
                s.cancelled = true
                let w = s.waiter
                s.waiter = nil
                return w
            }
            w?.resume(returning: nil)
        }
        guard let f = got else { throw CancellationError() }
        return f
    }
}

/// Shared state of one async ring run.
final class AsyncRingControl: @unchecked Sendable {
    let stop = ManagedAtomic<Bool>(false)
    let finished = Latch()
    var flower: Flower?
    var flowerAt = 0
    var endNanos: UInt64 = 0
}

/// One member of the async ring: the same loop as `RingTask`, written as ordinary async code.
func asyncRingMember<E: RingEvent>(_ index: Int, _ events: [E], _ control: AsyncRingControl,
                                   isolation: isolated (any Actor)? = #isolation) async {
    let me = events[index]
    let next = events[index + 1 == events.count ? 0 : index + 1]
    let key = UInt64(index + 1)
    while true {
        guard let f = try? await me.wait(isolation: isolation) else { return }
        if control.stop.load(ordering: .relaxed) {
            control.endNanos = MonotonicClock.nanoseconds()
            control.flower = f
            control.flowerAt = index
            control.finished.open()
            return
        }
        next.set(Flower(checksum: f.checksum &+ key, count: f.count &+ 1))
    }
}

public struct AsyncEventsBenchmark {
    public var tasks: Int
    public var seconds: Double

    public init(tasks: Int, seconds: Double) {
        self.tasks = tasks
        self.seconds = seconds
    }

    struct Leg {
        var hops: UInt64
        var rate: Double
        var ok: Bool
        var bytesPerTask: Double
    }

    public func run() throws -> BenchResult {
        guard tasks >= 2 else { throw BenchError("--tasks must be at least 2 (a ring)") }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let runtime = try Runtime(cores: 1)
        defer { runtime.shutdown() }
        let core = runtime.core(0)
        // Heretic first, then the global executor, each on a fresh ring; alternating twice
        // would double the run time for little: the two differ by far more than run-to-run noise.
        let jobsBefore = try runtime.run(on: 0) { $0.jobCount }
        let actor = core.actor
        let heretic = try leg(events: (0..<tasks).map { _ in AsyncEvent<Flower>(on: core) },
                              isolation: actor) { body in
            Task(executorPreference: core) { await body() }
        }
        let hereticJobs = try runtime.run(on: 0) { $0.jobCount } - jobsBefore
        let global = try leg(events: (0..<tasks).map { _ in LockedEvent() }, isolation: nil) { body in
            Task.detached { await body() }
        }
        var r = BenchResult(bench: "async-events", verified: heretic.ok && global.ok)
        r.add("tasks", tasks)
        r.add("seconds", seconds)
        r.add("heretic_switches_per_sec", heretic.rate.rounded())
        r.add("global_switches_per_sec", global.rate.rounded())
        r.add("ratio", heretic.rate / global.rate)
        // Measured on the Heretic leg, which runs first on fresh memory (the global leg reuses
        // what the first one freed, so its growth says little).
        r.add("bytes_per_task", heretic.bytesPerTask)
        r.add("heretic_jobs_per_hop", Double(hereticJobs) / Double(heretic.hops))
        r.add("checksum_ok", heretic.ok && global.ok)
        return r
    }

    private func leg<E: RingEvent>(
        events: @autoclosure () -> [E],
        isolation: CoreActor?,
        spawn: (@escaping @Sendable () async -> Void) -> Task<Void, Never>
    ) throws -> Leg {
        let control = AsyncRingControl()
        let rssBefore = ProcessStats.residentBytes()
        let ring = events()
        var handles: [Task<Void, Never>] = []
        handles.reserveCapacity(tasks)
        for i in 0..<tasks {
            if let actor = isolation {
                handles.append(spawn { await asyncRingMember(i, ring, control, isolation: actor) })
            } else {
                handles.append(spawn { await asyncRingMember(i, ring, control, isolation: nil) })
            }
        }
        // Let every member reach its first wait before measuring memory and starting.
        let settle = MonotonicClock.nanoseconds()
        while MonotonicClock.nanoseconds() - settle < 200_000_000 { sched_yield() }
        let rssAfter = ProcessStats.residentBytes()
        let start = MonotonicClock.nanoseconds()
        ring[0].set(Flower(checksum: 0, count: 0))
        while Double(MonotonicClock.nanoseconds() - start) / 1e9 < seconds { usleep(10_000) }
        control.stop.store(true, ordering: .relaxed)
        control.finished.wait()
        for h in handles { h.cancel() }
        let f = control.flower!
        let ok = f.checksum == Flower.expectedChecksum(hops: f.count, tasks: UInt64(tasks))
            && control.flowerAt == Int(f.count % UInt64(tasks))
        let rate = Double(f.count) / (Double(control.endNanos - start) / 1e9)
        return Leg(hops: f.count, rate: rate, ok: ok, bytesPerTask: Double(rssAfter &- rssBefore) / Double(tasks))
    }
}
