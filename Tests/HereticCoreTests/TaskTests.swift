import Testing
@testable import HereticCore

/// What a test's tasks report, written on the core thread and read after `done` opens.
final class Log: @unchecked Sendable {
    var entries: [String] = []
    let done = Latch()
}

/// Waits once on its inbox (with an optional timeout) and logs what it got.
struct Waiter: StacklessTask {
    var inbox = Event<Int>()
    let log: Log
    let timeout: Int?
    var waited = false

    mutating func resume(_ ctx: inout TaskContext<Waiter>) -> Suspension {
        if !waited {
            waited = true
            if let t = timeout { return ctx.wait(\.inbox, timeoutMilliseconds: t) }
            return ctx.wait(\.inbox)
        }
        log.entries.append(inbox.take().map { "value \($0)" } ?? "timeout")
        log.done.open()
        return .exit
    }
}

/// Sets one event (on any core) and logs the result of the set.
struct Setter: StacklessTask {
    let target: EventRef<Int>
    let value: Int
    let log: Log

    mutating func resume(_ ctx: inout TaskContext<Setter>) -> Suspension {
        log.entries.append("set \(ctx.set(target, value))")
        return .exit
    }
}

/// Sleeps `rounds` times, then exits.
struct Sleeper: StacklessTask {
    var rounds: Int
    let log: Log

    mutating func resume(_ ctx: inout TaskContext<Sleeper>) -> Suspension {
        if rounds == 0 { log.entries.append("woke"); return .exit }
        rounds -= 1
        return .sleep(milliseconds: 2)
    }
}

/// Sleeps once and records how long the sleep really took, in nanoseconds.
struct TimedSleeper: StacklessTask {
    let milliseconds: Int
    let log: Log
    var started: UInt64 = 0

    mutating func resume(_ ctx: inout TaskContext<TimedSleeper>) -> Suspension {
        if started == 0 {
            started = MonotonicClock.nanoseconds()
            return .sleep(milliseconds: milliseconds)
        }
        log.entries.append(String(MonotonicClock.nanoseconds() - started))
        log.done.open()
        return .exit
    }
}

/// Wakes on three absolute ticks in a row, logging whether each came on or after its tick.
struct Metronome: StacklessTask {
    let log: Log
    var next: UInt64 = 0
    var beats = 0

    mutating func resume(_ ctx: inout TaskContext<Metronome>) -> Suspension {
        let now = ctx.nowMilliseconds
        if next != 0 { log.entries.append(now >= next ? "on time" : "early") }
        if beats == 3 { log.done.open(); return .exit }
        beats += 1
        next = (next == 0 ? now : next) + 4
        return ctx.sleep(untilMillisecond: next)
    }
}

struct Quick: StacklessTask {
    mutating func resume(_ ctx: inout TaskContext<Quick>) -> Suspension { .exit }
}

/// Spawns `batch` quick tasks per turn, `rounds` times, into a shared pool.
struct Spawner: StacklessTask {
    let pool: TaskPool<Quick>
    var rounds: Int
    let batch: Int
    let log: Log

    mutating func resume(_ ctx: inout TaskContext<Spawner>) -> Suspension {
        if rounds == 0 { log.done.open(); return .exit }
        rounds -= 1
        for _ in 0..<batch { pool.spawn(Quick()) }
        return .yield
    }
}

func withRuntime<R>(cores: Int = 1, _ body: (Runtime) throws -> R) throws -> R {
    let runtime = try Runtime(cores: cores, pinThreads: false)
    defer { runtime.shutdown() }
    return try body(runtime)
}

@Suite("Stackless tasks and events")
struct TaskTests {
    @Test("an event set before the wait is seen at once")
    func setBeforeWait() throws {
        let log = Log()
        let result = try withRuntime { rt in
            try rt.run(on: 0) { core -> SetResult in
                let pool = core.makePool(of: Waiter.self)
                let h = pool.spawn(Waiter(log: log, timeout: nil))
                return core.set(h.event(\.inbox), 7)  // the task has not run yet
            }.also { _ in log.done.wait() }
        }
        #expect(result == .delivered)
        #expect(log.entries == ["value 7"])
    }

    @Test("an event set after the wait wakes the waiter, from a foreign thread too")
    func setAfterWait() throws {
        let log = Log()
        try withRuntime { rt in
            let ref = try rt.run(on: 0) { core in
                core.makePool(of: Waiter.self).spawn(Waiter(log: log, timeout: nil)).event(\.inbox)
            }
            // The waiter ran in the turn that spawned it and is now suspended.
            let posted = rt.core(0).set(ref, 11)
            #expect(posted == .posted)
            log.done.wait()
        }
        #expect(log.entries == ["value 11"])
    }

    @Test("a wait with a timeout times out when nobody sets the event")
    func timeout() throws {
        let log = Log()
        try withRuntime { rt in
            try rt.execute(on: 0) { core in
                core.makePool(of: Waiter.self).spawn(Waiter(log: log, timeout: 3))
            }
            log.done.wait()
        }
        #expect(log.entries == ["timeout"])
    }

    @Test("a set before the timeout wins and cancels the timer")
    func setBeatsTimeout() throws {
        let log = Log()
        let pending = try withRuntime { rt in
            let ref = try rt.run(on: 0) { core in
                core.makePool(of: Waiter.self).spawn(Waiter(log: log, timeout: 60_000)).event(\.inbox)
            }
            try rt.execute(on: 0) { core in core.set(ref, 5) }
            log.done.wait()
            return try rt.run(on: 0) { core in core.pendingTimers }
        }
        #expect(log.entries == ["value 5"])
        #expect(pending == 0)
    }

    @Test("a task on one core wakes a task on another through the mailbox")
    func crossCore() throws {
        let waiterLog = Log(), setterLog = Log()
        try withRuntime(cores: 2) { rt in
            let ref = try rt.run(on: 1) { core in
                core.makePool(of: Waiter.self).spawn(Waiter(log: waiterLog, timeout: nil)).event(\.inbox)
            }
            #expect(ref.task.core == 1)
            try rt.execute(on: 0) { core in
                core.makePool(of: Setter.self).spawn(Setter(target: ref, value: 42, log: setterLog))
            }
            waiterLog.done.wait()
        }
        #expect(waiterLog.entries == ["value 42"])
        #expect(setterLog.entries == ["set posted"])
    }

    @Test("setting twice before the value is taken reports alreadySet; a gone task reports gone")
    func doubleAndStaleSet() throws {
        let log = Log()
        let results = try withRuntime { rt in
            let ref = try rt.run(on: 0) { core in
                core.makePool(of: Waiter.self).spawn(Waiter(log: log, timeout: 60_000)).event(\.inbox)
            }
            let firstTwo = try rt.run(on: 0) { core in [core.set(ref, 1), core.set(ref, 2)] }
            log.done.wait()
            let afterExit = try rt.run(on: 0) { core in core.set(ref, 3) }
            return firstTwo + [afterExit]
        }
        #expect(results == [.delivered, .alreadySet, .gone])
        #expect(log.entries == ["value 1"])
    }

    @Test("sleeping tasks wake, and exit watchers run when they exit")
    func sleepAndJoin() throws {
        let log = Log()
        let exited = Latch()
        try withRuntime { rt in
            try rt.execute(on: 0) { core in
                let h = core.makePool(of: Sleeper.self).spawn(Sleeper(rounds: 3, log: log))
                let watched = core.whenExited(h.id) { exited.open() }
                precondition(watched)
            }
            exited.wait()
        }
        #expect(log.entries == ["woke"])
    }

    @Test("a sleep never ends before its time, however the tick boundaries fall",
          arguments: [0, 1, 2, 7])
    func sleepIsNeverShort(milliseconds: Int) throws {
        for _ in 0..<5 {
            let log = Log()
            try withRuntime { rt in
                try rt.execute(on: 0) { core in
                    core.makePool(of: TimedSleeper.self).spawn(TimedSleeper(milliseconds: milliseconds, log: log))
                }
                log.done.wait()
            }
            let elapsed = UInt64(log.entries[0])!
            #expect(elapsed >= UInt64(milliseconds) * 1_000_000)
        }
    }

    @Test("sleeping until an absolute tick wakes on or after it, without drift")
    func sleepUntil() throws {
        let log = Log()
        try withRuntime { rt in
            try rt.execute(on: 0) { core in core.makePool(of: Metronome.self).spawn(Metronome(log: log)) }
            log.done.wait()
        }
        #expect(log.entries == ["on time", "on time", "on time"])
    }

    @Test("async code can join a stackless task")
    func asyncJoin() async throws {
        let log = Log()
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer { runtime.shutdown() }
        let id = try runtime.run(on: 0) { core in
            core.makePool(of: Sleeper.self).spawn(Sleeper(rounds: 2, log: log)).id
        }
        await runtime.core(0).join(id)
        #expect(log.entries == ["woke"])
        // Joining a task that is already gone returns at once.
        await runtime.core(0).join(id)
    }

    @Test("joining from any core waits for the task on its own core")
    func joinAcrossCores() async throws {
        let log = Log()
        let runtime = try Runtime(cores: 2, pinThreads: false)
        defer { runtime.shutdown() }
        let id = try runtime.run(on: 1) { core in
            core.makePool(of: Waiter.self).spawn(Waiter(log: log, timeout: 30)).id
        }
        await runtime.core(0).join(id)  // asked of core 0, the task lives on core 1
        #expect(log.entries == ["timeout"], "join returned only after the task exited")
    }

    @Test("slots are reused: two million spawn/exit cycles stay in a few thousand slots")
    func poolReuse() throws {
        let log = Log()
        let (live, highWater) = try withRuntime { rt in
            let pool = try rt.run(on: 0) { core in UncheckedBox(core.makePool(of: Quick.self)) }
            try rt.execute(on: 0) { core in
                core.makePool(of: Spawner.self)
                    .spawn(Spawner(pool: pool.value, rounds: 2000, batch: 1000, log: log))
            }
            log.done.wait()
            _ = try rt.run(on: 0) { _ in 0 }  // one more turn runs the last batch
            return try rt.run(on: 0) { _ in (pool.value.liveCount, pool.value.state.pointee.highWater) }
        }
        #expect(live == 0)
        #expect(highWater <= 2000, "slots in use at once stay near one batch")
    }

    @Test("removing a pool counts as exit for anyone joining its tasks")
    func removeReleasesJoiners() throws {
        let log = Log()
        let released = Latch()
        try withRuntime { rt in
            try rt.execute(on: 0) { core in
                let pool = core.makePool(of: Waiter.self)
                let h = pool.spawn(Waiter(log: log, timeout: nil))
                _ = core.whenExited(h.id) { released.open() }
                core.removePool(pool)
            }
            released.wait()
        }
        #expect(log.entries.isEmpty, "the task itself never ran again")
    }

    @Test("a removed pool answers as empty and its handles as gone")
    func removedPool() throws {
        let log = Log()
        let answers = try withRuntime { rt in
            try rt.run(on: 0) { core -> [String] in
                let pool = core.makePool(of: Waiter.self)
                let h = pool.spawn(Waiter(log: log, timeout: nil))
                core.removePool(pool)
                core.removePool(pool)  // twice is harmless
                return ["\(pool.liveCount)", "\(pool.isAlive(h))", "\(pool.set(slot: h.id.slot, \.inbox, 1))"]
            }
        }
        #expect(answers == ["0", "false", "gone"])
    }

    @Test("a stale handle no longer reaches the task; a new task gets a new generation")
    func generations() throws {
        let log = Log()
        try withRuntime { rt in
            try rt.run(on: 0) { core in
                let pool = core.makePool(of: Waiter.self)
                let a = pool.spawn(Waiter(log: log, timeout: nil))
                precondition(pool.isAlive(a))
                core.removePool(pool)
                let pool2 = core.makePool(of: Waiter.self)
                let b = pool2.spawn(Waiter(log: log, timeout: nil))
                precondition(b.id.pool != a.id.pool)
                precondition(core.set(a.event(\.inbox), 1) == .gone)
            }
        }
    }
}

/// Carries a core-owned object out to the test thread and back (used only on the core).
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}

extension SetResult {
    func also(_ f: (SetResult) -> Void) -> SetResult { f(self); return self }
}
