import Atomics
import CHereticSys
import Synchronization

/// Work posted to a core: a closure to run on its thread, or an async job to resume.
@usableFromInline enum CoreMessage: Sendable {
    case work(@Sendable (Core) -> Void)
    case job(UnownedJob)
}

/// An armed async timer: the wheel's handle plus its callback entry.
@usableFromInline struct AsyncTimer: Sendable {
    @usableFromInline let handle: TimerHandle
    @usableFromInline let entry: Int
    @usableFromInline let id: UInt64
}

/// Something the loop polls once per turn (packet paths plug in here).
public protocol CorePoller: AnyObject {
    /// Does pending work; returns how much (0 lets the core go idle).
    func poll(_ core: Core) -> Int
    /// Whether the poller can block in the kernel for the core (io_uring, epoll). A core
    /// whose only poller can sleeps in it when idle; otherwise it keeps polling.
    var canSleep: Bool { get }
    /// Blocks until the poller has work, `wakeFD` (the core's wake-up eventfd) is signalled,
    /// or `timeoutNanoseconds` pass (-1: no limit). Returns false if it did not block.
    func sleep(_ core: Core, wakeFD: Int32, timeoutNanoseconds: Int64) -> Bool
}

extension CorePoller {
    public var canSleep: Bool { false }
    public func sleep(_ core: Core, wakeFD: Int32, timeoutNanoseconds: Int64) -> Bool { false }
}

/// One reactor: a loop on its own pinned OS thread owning a timer wheel, task pools, an async
/// job queue and mailboxes from every other core. Everything it owns is touched only by its
/// thread; other threads reach it only by posting messages (`execute`, `set`, `enqueue`).
///
/// A core is also a Swift `TaskExecutor`: `Task(executorPreference: core) { ... }` runs async
/// code on this loop, where it can await Heretic events and sleeps on the same timer wheel.
public final class Core: TaskExecutor, SerialExecutor, @unchecked Sendable {
    /// The core's position in its runtime (0-based).
    public let index: Int
    @usableFromInline let state: UnsafeMutablePointer<CoreState>
    @usableFromInline unowned(unsafe) let runtime: Runtime
    let cpu: Int?
    private let wakeFD: Int32
    private let sleeping = ManagedAtomic<Bool>(false)
    let stopping = ManagedAtomic<Bool>(false)
    /// Mailboxes from each other core, indexed by the sender's index.
    @exclusivity(unchecked) var inbound: [SPSCQueue<CoreMessage>] = []
    /// Messages from threads that are not cores of this runtime.
    private let injected = Mutex<[CoreMessage]>([])
    private let injectedCount = ManagedAtomic<Int>(0)
    @exclusivity(unchecked) private var localWork: [@Sendable (Core) -> Void] = []
    @exclusivity(unchecked) private var pollers: [CorePoller] = []
    private let epochNanoseconds: UInt64
    /// Tasks resumed per pool per turn before the loop looks at timers and mailboxes again.
    @exclusivity(unchecked) public var taskBudget = 4096
    /// How long an idle core busy-polls (for a timer due that soon, or a message) before it
    /// blocks in the kernel. Blocking costs a wake-up of tens of microseconds on bare metal
    /// and milliseconds on a busy virtual machine; polling costs the CPU. 0 always blocks.
    let idleSpinNanoseconds: UInt64
    var threadHandle: UInt64 = 0
    /// Created at the end of init, before the core is shared, and never written again.
    private var coreActor: CoreActor!

    init(index: Int, runtime: Runtime, cpu: Int?, epochNanoseconds: UInt64,
         idleSpinMicroseconds: Int) throws(HereticError) {
        self.index = index
        self.idleSpinNanoseconds = UInt64(max(0, idleSpinMicroseconds)) * 1000
        self.runtime = runtime
        self.cpu = cpu
        self.epochNanoseconds = epochNanoseconds
        let fd = heretic_eventfd_create()
        if fd < 0 { throw HereticError.system(call: "eventfd", errno: -fd) }
        wakeFD = fd
        state = .allocate(capacity: 1)
        state.initialize(to: CoreState())
        coreActor = CoreActor(core: self)
    }

    deinit {
        heretic_close(wakeFD)
        state.pointee.timers.release()
        state.pointee.jobs.release()
        state.deinitialize(count: 1)
        state.deallocate()
    }

    /// Whether the calling thread is this core's thread.
    @inlinable public var isCurrent: Bool {
        heretic_current_core_object() == Unmanaged.passUnretained(self).toOpaque()
    }

    /// The core whose thread is calling, if any.
    public static var current: Core? {
        guard let p = heretic_current_core_object() else { return nil }
        return Unmanaged<Core>.fromOpaque(p).takeUnretainedValue()
    }

    /// Milliseconds since the runtime started, as of this loop turn.
    public var nowMilliseconds: UInt64 { state.pointee.nowTick }

    /// Stackless task resumes on this core since it started (readable from any thread as a
    /// monitoring figure; exact only on the core itself).
    public var switchCount: UInt64 { state.pointee.switches }

    /// Async jobs this core has run since it started (monitoring figure, like `switchCount`).
    public var jobCount: UInt64 { state.pointee.jobsRun }

    /// Timers pending on this core's wheel.
    public var pendingTimers: Int { state.pointee.timers.count }

    @inlinable func checkThread(_ what: StaticString) {
        precondition(isCurrent, "Heretic: \(what) must be called on core \(index)'s own thread")
    }

    // MARK: Pools

    /// Creates the arena for one task type on this core. Call on the core's thread; keep the
    /// pool and spawn through it. `@inlinable` so the run loop is specialised for `T` here.
    @inlinable
    public func makePool<T: StacklessTask>(of type: T.Type = T.self) -> TaskPool<T> {
        checkThread("makePool")
        let index = state.pointee.pools.count
        precondition(index < Int(UInt16.max), "Heretic: too many task pools on one core")
        let pool = TaskPool<T>(core: self, index: UInt16(index))
        registerPool(pool.state,
                     run: { [unowned(unsafe) pool] budget in pool.runReady(budget: budget) },
                     destroy: { pool.destroyAll() })
        return pool
    }

    @usableFromInline func registerPool(_ state: UnsafeMutablePointer<PoolState>,
                                        run: @escaping (Int) -> Int, destroy: @escaping () -> Void) {
        self.state.pointee.pools.append(state)
        self.state.pointee.runners.append(run)
        self.state.pointee.destroyers.append(destroy)
    }

    /// Destroys a pool: every task still in it is deinitialized without running again, and
    /// handles into it go stale. Call on the core's thread, outside the pool's own tasks.
    public func removePool<T>(_ pool: TaskPool<T>) {
        checkThread("removePool")
        precondition(pool.core === self, "Heretic: removePool called on core \(index) for a pool of core \(pool.core.index)")
        let i = Int(pool.index)
        guard i < state.pointee.pools.count, state.pointee.pools[i] == pool.state else { return }
        state.pointee.runnable.removeAll { $0 == pool.index }
        state.pointee.pools[i] = nil
        state.pointee.runners[i] = nil
        let destroy = state.pointee.destroyers[i]
        state.pointee.destroyers[i] = nil
        destroy?()
    }

    /// The tick at which a timer of `ms` milliseconds armed now may fire: one tick past
    /// `now + ms`, with `now` read from the clock rather than the turn's cached tick (a turn
    /// can run for milliseconds), because a sleep or timeout must never end early.
    @usableFromInline func deadlineTick(afterMilliseconds ms: UInt64) -> UInt64 {
        currentTick() &+ ms &+ 1
    }

    @usableFromInline func armTaskTimer(pool: UInt16, slot: UInt32, afterMilliseconds ms: UInt64) -> UInt32 {
        armTaskTimer(pool: pool, slot: slot, atTick: deadlineTick(afterMilliseconds: ms))
    }

    @usableFromInline func armTaskTimer(pool: UInt16, slot: UInt32, atTick tick: UInt64) -> UInt32 {
        // A tick already processed fires on the next one.
        state.pointee.timers.arm(at: tick, payload: TimerPayload.task(pool: pool, slot: slot)).index
    }

    // MARK: Events

    /// Sets an inline event of any task. On this core's thread, for a task on this core, the
    /// value is stored and the task woken at once; otherwise the set travels through the
    /// target core's mailbox and the result is `.posted`.
    @inlinable @inline(__always) @discardableResult
    public func set<V: Sendable>(_ ref: EventRef<V>, _ value: V) -> SetResult {
        if Int(ref.task.core) == index && isCurrent {
            let pools = state.pointee.pools
            let p = Int(ref.task.pool)
            guard p < pools.count, let pool = pools[p] else { return .gone }
            return pool.pointee.deliver(slot: ref.task.slot, generation: ref.task.generation,
                                        offset: Int(ref.offset), value: value)
        }
        let target = Int(ref.task.core)
        guard target < runtime.cores.count else { return .gone }  // a reference from elsewhere
        runtime.core(target).post(.work { core in _ = core.set(ref, value) })
        return .posted
    }

    /// Runs `body` once the task exits, or is destroyed with its pool or the runtime (at
    /// once, returning false, if it is already gone). Call on the task's core.
    @discardableResult
    public func whenExited(_ id: TaskID, _ body: @escaping () -> Void) -> Bool {
        checkThread("whenExited")
        let p = Int(id.pool)
        guard Int(id.core) == index, p < state.pointee.pools.count, let pool = state.pointee.pools[p],
              id.slot < pool.pointee.highWater else { return false }
        let h = pool.pointee.header(pool.pointee.address(id.slot))
        guard h.pointee.status != .free, h.pointee.generation == id.generation else { return false }
        h.pointee.flags |= SlotHeader.exitWatched
        pool.pointee.exitWatchers[id.slot, default: []].append(body)
        return true
    }

    @usableFromInline func taskExited(pool: UnsafeMutablePointer<PoolState>, slot: UInt32) {
        guard let watchers = pool.pointee.exitWatchers.removeValue(forKey: slot) else { return }
        for w in watchers { w() }
    }

    /// Waits, from any async context, until the task exits (on whichever core it lives).
    public func join(_ id: TaskID) async {
        guard Int(id.core) < runtime.cores.count else { return }  // not this runtime's task
        let home = runtime.core(Int(id.core))
        await withUnsafeContinuation { (c: UnsafeContinuation<Void, Never>) in
            home.post(.work { core in
                if !core.whenExited(id, { c.resume() }) { c.resume() }
            })
        }
    }

    // MARK: Messages

    /// Runs `work` on this core's thread on a later turn of its loop.
    @inlinable public func execute(_ work: @escaping @Sendable (Core) -> Void) {
        post(.work(work))
    }

    @usableFromInline func post(_ message: CoreMessage) {
        if isCurrent {
            switch message {
            case .work(let w): localWork.append(w)
            case .job(let j): state.pointee.jobs.push(j)
            }
            return
        }
        let sender = Int(heretic_current_core())
        if sender >= 0, sender < inbound.count, sender != index, runtime.core(sender).isCurrent {
            inbound[sender].push(message)
        } else {
            injected.withLock { $0.append(message) }
            injectedCount.wrappingIncrement(ordering: .releasing)
        }
        // The publication above must be visible before `sleeping` is read, and the idle core
        // stores `sleeping` before it looks for messages: a full fence on both sides, so at
        // least one of them sees the other and no wake-up is lost.
        Atomics.atomicMemoryFence(ordering: AtomicUpdateOrdering.sequentiallyConsistent)
        if sleeping.load(ordering: .relaxed) { heretic_eventfd_signal(wakeFD) }
    }

    private func handle(_ message: CoreMessage) {
        switch message {
        case .work(let w): w(self)
        case .job(let j): state.pointee.jobs.push(j)
        }
    }

    /// Messages taken from one mailbox per turn, so a busy sender cannot starve the loop.
    static let mailboxBudget = 4096

    private func drainMessages() -> Int {
        var n = 0
        for queue in inbound {
            var taken = 0
            while taken < Self.mailboxBudget, let m = queue.pop() { handle(m); taken += 1 }
            n += taken
        }
        if injectedCount.load(ordering: .acquiring) > 0 {
            let batch = injected.withLock { q -> [CoreMessage] in
                let b = q
                q.removeAll(keepingCapacity: true)
                return b
            }
            injectedCount.wrappingDecrement(by: batch.count, ordering: .relaxed)
            for m in batch { handle(m); n += 1 }
        }
        if !localWork.isEmpty {
            let batch = localWork
            localWork.removeAll(keepingCapacity: true)
            for w in batch { w(self); n += 1 }
        }
        return n
    }

    private var hasPendingMessages: Bool {
        if !localWork.isEmpty || injectedCount.load(ordering: .acquiring) > 0 { return true }
        for queue in inbound where !queue.isEmpty { return true }
        return false
    }

    /// Adds a poller the loop calls once per turn. Call on the core's thread.
    public func addPoller(_ poller: CorePoller) {
        checkThread("addPoller")
        pollers.append(poller)
    }

    // MARK: Async executor

    public func enqueue(_ job: consuming ExecutorJob) {
        let unowned = UnownedJob(job)
        if isCurrent { state.pointee.jobs.push(unowned) } else { post(.job(unowned)) }
    }

    /// Lets the runtime confirm that code isolated to this core's actor runs on its thread.
    public func checkIsolated() {
        precondition(isCurrent, "Heretic: code isolated to core \(index) is running on another thread")
    }

    /// An actor whose executor is this core: async code isolated to it (an `isolated`
    /// parameter, or methods of actors that return `core.actor.unownedExecutor`) runs on this
    /// loop with no executor hops between awaits of Heretic events.
    public var actor: CoreActor { coreActor }

    /// Starts async work on this core.
    @discardableResult
    public func spawnAsync<R: Sendable>(_ body: @escaping @Sendable () async -> R) -> Task<R, Never> {
        Task(executorPreference: self) { await body() }
    }

    /// Arms an async timer; `fire` runs on this core when it expires unless cancelled first.
    @usableFromInline func armAsyncTimer(afterMilliseconds ms: UInt64, _ fire: @escaping () -> Void) -> AsyncTimer {
        let (entry, id) = state.pointee.asyncTimers.add(fire)
        let deadline = deadlineTick(afterMilliseconds: ms)
        let handle = state.pointee.timers.arm(at: deadline, payload: TimerPayload.asyncBit | UInt64(entry))
        return AsyncTimer(handle: handle, entry: entry, id: id)
    }

    /// Cancels an async timer; returns its callback if it had not fired yet.
    @usableFromInline @discardableResult
    func cancelAsyncTimer(_ t: AsyncTimer) -> (() -> Void)? {
        guard let f = state.pointee.asyncTimers.take(t.entry, id: t.id) else { return nil }
        state.pointee.timers.cancel(t.handle)
        return f
    }

    // MARK: The loop

    @usableFromInline func currentTick() -> UInt64 { (heretic_monotonic_ns() &- epochNanoseconds) / 1_000_000 }

    func runLoop() {
        heretic_set_current_core(Int32(index))
        heretic_set_current_core_object(Unmanaged.passUnretained(self).toOpaque())
        if let cpu { _ = heretic_pin_current_thread(Int32(cpu)) }
        let st = state
        var expired: [UInt64] = []
        var runnable: [UInt16] = []
        while true {
            let now = currentTick()
            st.pointee.nowTick = now
            var work = drainMessages()

            if st.pointee.timers.count > 0 {
                st.pointee.timers.advance(to: now, into: &expired)
                for payload in expired { fireTimer(payload) }
                work += expired.count
                expired.removeAll(keepingCapacity: true)
            }

            if !st.pointee.runnable.isEmpty {
                swap(&runnable, &st.pointee.runnable)
                for p in runnable {
                    guard let run = st.pointee.runners[Int(p)] else { continue }
                    let ran = run(taskBudget)
                    st.pointee.switches &+= UInt64(ran)
                    work += ran
                    if let pool = st.pointee.pools[Int(p)], pool.pointee.scheduled {
                        st.pointee.runnable.append(p)
                    }
                }
                runnable.removeAll(keepingCapacity: true)
            }

            var jobs = 0
            while jobs < taskBudget, let job = st.pointee.jobs.pop() {
                job.runSynchronously(isolatedTo: asUnownedSerialExecutor(),
                                     taskExecutor: asUnownedTaskExecutor())
                jobs += 1
            }
            st.pointee.jobsRun &+= UInt64(jobs)
            work += jobs

            for poller in pollers { work += poller.poll(self) }

            if stopping.load(ordering: .relaxed) { break }
            if work == 0 { idle(now: now) }
        }
        teardown()
        heretic_set_current_core_object(nil)
        heretic_set_current_core(-1)
    }

    private func fireTimer(_ payload: UInt64) {
        if payload & TimerPayload.asyncBit != 0 {
            let entry = Int(payload & 0xFFFF_FFFF)
            state.pointee.asyncTimers.take(entry)?()
            return
        }
        let p = Int((payload >> 32) & 0xFFFF)
        guard p < state.pointee.pools.count, let pool = state.pointee.pools[p] else { return }
        pool.pointee.timerFired(UInt32(truncatingIfNeeded: payload))
    }

    private func idle(now: UInt64) {
        let sleeper = pollers.count == 1 && pollers[0].canSleep ? pollers[0] : nil
        if pollers.isEmpty && idleSpinNanoseconds > 0 && spinUntilWork(now: now) { return }
        sleeping.store(true, ordering: .relaxed)
        Atomics.atomicMemoryFence(ordering: AtomicUpdateOrdering.sequentiallyConsistent)  // pairs with the fence in post
        if hasPendingMessages || (!pollers.isEmpty && sleeper == nil) {
            sleeping.store(false, ordering: .relaxed)
            return
        }
        // Sleep to the exact start of the next tick with work, not a whole number of
        // milliseconds from now (which would overshoot by the part of this tick gone).
        var timeout: Int64 = -1
        if let next = state.pointee.timers.nextEventTick() {
            let wake = epochNanoseconds &+ next &* 1_000_000
            let t = heretic_monotonic_ns()
            timeout = wake > t ? Int64(clamping: wake - t) : 0
        }
        if timeout != 0 {
            if let sleeper {
                // The poller sleeps in its own kernel wait, which also watches the wake-up fd.
                _ = sleeper.sleep(self, wakeFD: wakeFD, timeoutNanoseconds: timeout)
            } else {
                _ = heretic_eventfd_wait_ns(wakeFD, timeout)
            }
        }
        sleeping.store(false, ordering: .relaxed)
    }

    /// Polls while the next timer is due within the spin window; true when work arrived (a
    /// message, or the timer's tick), false when nothing is due that soon and the core should
    /// block instead.
    private func spinUntilWork(now: UInt64) -> Bool {
        let st = state
        let start = heretic_monotonic_ns()
        let windowEnd = start + idleSpinNanoseconds
        let nextTick = st.pointee.timers.count > 0 ? st.pointee.timers.nextHint : UInt64.max
        let due = nextTick == .max ? UInt64.max : epochNanoseconds &+ nextTick &* 1_000_000
        if due > windowEnd && !hasPendingMessages {
            return false  // nothing due within the window: block
        }
        while true {
            if hasPendingMessages || stopping.load(ordering: .relaxed) { return true }
            let t = heretic_monotonic_ns()
            if t >= due { return true }
            if t >= windowEnd { return false }
        }
    }

    func wake() { heretic_eventfd_signal(wakeFD) }

    private func teardown() {
        // Work already posted still runs (a `Runtime.run` racing shutdown gets its answer);
        // remaining tasks are destroyed without running again; queued async jobs are dropped
        // with the runtime (async tasks still suspended on this core never resume).
        while drainMessages() > 0 {}
        for i in 0..<state.pointee.destroyers.count {
            state.pointee.pools[i] = nil
            state.pointee.runners[i] = nil
            if let d = state.pointee.destroyers[i] {
                state.pointee.destroyers[i] = nil
                d()
            }
        }
        state.pointee.runnable.removeAll()
        localWork.removeAll()
        pollers.removeAll()
    }
}

/// The actor of one core (see `Core.actor`).
public actor CoreActor {
    public nonisolated unowned let core: Core
    init(core: Core) { self.core = core }
    public nonisolated var unownedExecutor: UnownedSerialExecutor { core.asUnownedSerialExecutor() }
}
