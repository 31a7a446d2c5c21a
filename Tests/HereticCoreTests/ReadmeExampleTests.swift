import Testing
import HereticCore

/// The README's examples, kept compiling and running.
struct Pinger: StacklessTask {
    var inbox = Event<Int>()
    var peer: EventRef<Int>?
    var seen: Log?
    mutating func resume(_ ctx: inout TaskContext<Pinger>) -> Suspension {
        if let n = inbox.take() {
            if n >= 10 { seen?.entries.append("reached \(n)"); seen?.done.open(); return .exit }
            if let peer { ctx.set(peer, n + 1) }
        }
        return ctx.wait(\.inbox, timeoutMilliseconds: 1000)
    }
}

@Suite("README examples")
struct ReadmeExampleTests {
    @Test("the stackless example: two tasks pass a counter")
    func stackless() throws {
        let log = Log()
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer { runtime.shutdown() }
        try runtime.execute(on: 0) { core in
            let pool = core.makePool(of: Pinger.self)
            let a = pool.spawn(Pinger(seen: log))
            let b = pool.spawn(Pinger(peer: a.event(\.inbox), seen: log))
            // Close the loop: a answers b.
            pool.withTask(a) { $0.peer = b.event(\.inbox) }
            core.set(b.event(\.inbox), 1)
        }
        log.done.wait()
        #expect(log.entries == ["reached 10"])
    }

    @Test("the async example: sleep, then a timed wait that is signalled")
    func async() async throws {
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer { runtime.shutdown() }
        let core = runtime.core(0)
        let ready = AsyncEvent<String>(on: core)
        let task = Task(executorPreference: core) { () -> String in
            try await Core.sleep(milliseconds: 10)
            switch try await ready.wait(timeoutMilliseconds: 60_000) {
            case .signalled(let s): return "got " + s
            case .timedOut: return "timed out"
            }
        }
        ready.set("hello")
        #expect(try await task.value == "got hello")
    }
}
