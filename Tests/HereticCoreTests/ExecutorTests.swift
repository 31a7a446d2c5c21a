import Testing
@testable import HereticCore

/// A stackless task that sets an async event: the two worlds share events.
struct AsyncNotifier: StacklessTask {
    let event: AsyncEvent<Int>
    mutating func resume(_ ctx: inout TaskContext<AsyncNotifier>) -> Suspension {
        event.set(99)
        return .exit
    }
}

@Suite("Core executor and async events")
struct ExecutorTests {
    @Test("async work runs on its core's thread")
    func runsOnCore() async throws {
        let runtime = try Runtime(cores: 2, pinThreads: false)
        defer { runtime.shutdown() }
        for i in 0..<2 {
            let core = runtime.core(i)
            let index = await Task(executorPreference: core) { Core.current?.index }.value
            #expect(index == i)
            let afterAwait = await core.spawnAsync { () -> Int? in
                try? await Core.sleep(milliseconds: 1)
                return Core.current?.index
            }.value
            #expect(afterAwait == i)
        }
    }

    @Test("an async event set from another thread wakes its waiter")
    func setFromOutside() async throws {
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer { runtime.shutdown() }
        let core = runtime.core(0)
        let event = AsyncEvent<String>(on: core)
        let waiter = core.spawnAsync { try? await event.wait() }
        #expect(event.set("hello") == .posted)
        #expect(await waiter.value == "hello")
    }

    @Test("a stackless task sets an event async code awaits")
    func stacklessToAsync() async throws {
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer { runtime.shutdown() }
        let core = runtime.core(0)
        let event = AsyncEvent<Int>(on: core)
        let waiter = core.spawnAsync { try? await event.wait(timeoutMilliseconds: 60_000) }
        try runtime.execute(on: 0) { core in
            core.makePool(of: AsyncNotifier.self).spawn(AsyncNotifier(event: event))
        }
        #expect(await waiter.value == .signalled(99))
    }

    @Test("a value set before the wait is returned without suspending; a second set waits its turn")
    func setBeforeWait() async throws {
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer { runtime.shutdown() }
        let core = runtime.core(0)
        let results = await core.spawnAsync { () -> [String] in
            let e = AsyncEvent<Int>(on: core)
            let first = e.set(1), second = e.set(2)
            let got = try? await e.wait()
            return ["\(first)", "\(second)", "\(got ?? -1)"]
        }.value
        #expect(results == ["delivered", "alreadySet", "1"])
    }

    @Test("an async sleep and an async timeout never end early")
    func neverEarly() async throws {
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer { runtime.shutdown() }
        let core = runtime.core(0)
        let event = AsyncEvent<Int>(on: core)
        let (slept, waited) = await core.spawnAsync { () -> (UInt64, UInt64) in
            let t0 = MonotonicClock.nanoseconds()
            try? await Core.sleep(milliseconds: 3)
            let t1 = MonotonicClock.nanoseconds()
            _ = try? await event.wait(timeoutMilliseconds: 3)
            return (t1 - t0, MonotonicClock.nanoseconds() - t1)
        }.value
        #expect(slept >= 3_000_000)
        #expect(waited >= 3_000_000)
    }

    @Test("an async wait times out on the core's timer wheel")
    func asyncTimeout() async throws {
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer { runtime.shutdown() }
        let core = runtime.core(0)
        let event = AsyncEvent<Int>(on: core)
        let r = await core.spawnAsync { try? await event.wait(timeoutMilliseconds: 3) }.value
        #expect(r == .timedOut)
        let pending = try runtime.run(on: 0) { $0.pendingTimers }
        #expect(pending == 0)
    }

    @Test("cancelling a task ends its pending event wait and its sleep")
    func cancellation() async throws {
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer { runtime.shutdown() }
        let core = runtime.core(0)
        let event = AsyncEvent<Int>(on: core)
        let waiter = core.spawnAsync { () -> String in
            do {
                _ = try await event.wait(timeoutMilliseconds: 60_000)
                return "returned"
            } catch {
                return "cancelled"
            }
        }
        let sleeper = core.spawnAsync { () -> String in
            do {
                try await Core.sleep(milliseconds: 60_000)
                return "slept"
            } catch {
                return "cancelled"
            }
        }
        // Cancel only once both are suspended: a round trip through the core orders it.
        _ = try runtime.run(on: 0) { _ in 0 }
        waiter.cancel()
        sleeper.cancel()
        #expect(await waiter.value == "cancelled")
        #expect(await sleeper.value == "cancelled")
        let pending = try runtime.run(on: 0) { $0.pendingTimers }
        #expect(pending == 0, "cancelled waits leave no timers behind")
        // The event is usable again after a cancelled wait.
        let again = core.spawnAsync { try? await event.wait() }
        event.set(3)
        #expect(await again.value == 3)
    }

    @Test("a task already cancelled does not block in wait")
    func alreadyCancelled() async throws {
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer { runtime.shutdown() }
        let core = runtime.core(0)
        let event = AsyncEvent<Int>(on: core)
        let t = Task(executorPreference: core) { () -> Bool in
            withUnsafeCurrentTask { $0?.cancel() }
            do { _ = try await event.wait(); return false } catch { return true }
        }
        #expect(await t.value)
    }
}

@Suite("Misuse gets a clear error")
struct MisuseTests {
    @Test("a runtime used after shutdown throws shutDown; a bad core index throws noSuchCore")
    func afterShutdown() throws {
        let runtime = try Runtime(cores: 1, pinThreads: false)
        #expect(throws: HereticError.noSuchCore(3, coreCount: 1)) {
            try runtime.execute(on: 3) { _ in }
        }
        runtime.shutdown()
        runtime.shutdown()  // idempotent
        #expect(throws: HereticError.shutDown) { try runtime.execute(on: 0) { _ in } }
        #expect(throws: HereticError.invalidArgument("a runtime needs between 1 and 4096 cores, not 0")) {
            _ = try Runtime(cores: 0)
        }
    }

    @Test("waiting on an async event from the wrong core traps with a message")
    func wrongCore() async {
        await #expect(processExitsWith: .failure) {
            let runtime = try! Runtime(cores: 2, pinThreads: false)
            let event = AsyncEvent<Int>(on: runtime.core(0))
            _ = await runtime.core(1).spawnAsync { try? await event.wait() }.value
        }
    }

    @Test("using a task pool off its core traps")
    func poolOffCore() async {
        await #expect(processExitsWith: .failure) {
            let runtime = try! Runtime(cores: 1, pinThreads: false)
            _ = runtime.core(0).makePool(of: Quick.self)
        }
    }

    @Test("spawning into a removed pool traps")
    func removedPoolTraps() async {
        await #expect(processExitsWith: .failure) {
            let runtime = try! Runtime(cores: 1, pinThreads: false)
            _ = try! runtime.run(on: 0) { core -> Int in
                let pool = core.makePool(of: Quick.self)
                core.removePool(pool)
                pool.spawn(Quick())
                return 0
            }
        }
    }

    @Test("removing another core's pool traps")
    func foreignPoolTraps() async {
        await #expect(processExitsWith: .failure) {
            let runtime = try! Runtime(cores: 2, pinThreads: false)
            let pool = try! runtime.run(on: 0) { core in UncheckedBox(core.makePool(of: Quick.self)) }
            _ = try! runtime.run(on: 1) { core -> Int in core.removePool(pool.value); return 0 }
        }
    }

    @Test("setting an inline event twice through the owner traps")
    func doubleSetTraps() async {
        await #expect(processExitsWith: .failure) {
            var e = Event<Int>()
            e.set(1)
            e.set(2)
        }
    }
}
