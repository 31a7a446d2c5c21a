import CHereticSys

/// The arena holding every stackless task of one type on one core.
///
/// Each slot is the task's bytes followed by a 12-byte header, with no heap object, no
/// reference count and no padding beyond alignment: a task of 28 bytes costs a 40-byte slot.
/// Exited slots are reused (their generation changes, so old handles and event references go
/// stale safely). A pool belongs to its core: use it only on that core's thread.
public final class TaskPool<Task: StacklessTask> {
    @usableFromInline let state: UnsafeMutablePointer<PoolState>
    @usableFromInline unowned(unsafe) let core: Core

    @inlinable static var headerOffset: Int {
        (MemoryLayout<Task>.size + 3) & ~3
    }

    @inlinable static var slotStride: Int {
        let align = Swift.max(MemoryLayout<Task>.alignment, MemoryLayout<SlotHeader>.alignment)
        let end = headerOffset + MemoryLayout<SlotHeader>.size
        return (end + align - 1) & ~(align - 1)
    }

    /// Bytes each task of this type occupies in the arena.
    public static var bytesPerTask: Int { slotStride }

    @usableFromInline init(core: Core, index: UInt16) {
        precondition(MemoryLayout<Task>.size < Int(UInt16.max) - 16,
                     "Heretic: stackless task \(Task.self) is too large (over 64 KiB of state)")
        self.core = core
        state = .allocate(capacity: 1)
        state.initialize(to: PoolState(index: index, core: core, stride: Self.slotStride,
                                       headerOffset: Self.headerOffset))
    }

    /// The pool's index on its core (part of every `TaskID` it hands out).
    public var index: UInt16 { state.pointee.index }
    /// Tasks alive in the pool (0 once it was removed).
    public var liveCount: Int { state.pointee.removed ? 0 : state.pointee.live }
    /// Tasks ready to run on the next turn.
    public var readyCount: Int { state.pointee.ready.count }

    @inlinable func checkThread() {
        precondition(core.isCurrent,
                     "Heretic: TaskPool<\(Task.self)> used from a thread that is not its core \(core.index)")
        precondition(!state.pointee.removed, "Heretic: TaskPool<\(Task.self)> used after it was removed")
    }

    @inlinable func id(_ slot: UInt32, _ generation: UInt32) -> TaskID {
        TaskID(core: UInt16(truncatingIfNeeded: core.index), pool: state.pointee.index,
               slot: slot, generation: generation)
    }

    /// Spawns a task that first runs on the next turn of the loop.
    @inlinable @inline(__always) @discardableResult
    public func spawn(_ task: consuming Task) -> TaskHandle<Task> {
        checkThread()
        let slot = state.pointee.allocateSlot()
        let base = state.pointee.address(slot)
        base.initializeMemory(as: Task.self, to: task)
        let h = state.pointee.header(base)
        h.pointee.status = .waiting
        h.pointee.waitFlag = 0
        state.pointee.makeReady(slot, h)
        return TaskHandle(id: id(slot, h.pointee.generation))
    }

    /// Spawns a task parked on one of its events: it first runs when that event is set.
    /// Costs no scheduling at all until then, which is how rings of 100 M tasks start cheaply.
    @inlinable @inline(__always) @discardableResult
    public func spawn<V>(_ task: consuming Task, waitingOn path: KeyPath<Task, Event<V>>) -> TaskHandle<Task> {
        checkThread()
        let slot = state.pointee.allocateSlot()
        let base = state.pointee.address(slot)
        base.initializeMemory(as: Task.self, to: task)
        let h = state.pointee.header(base)
        let flag = MemoryLayout<Task>.offset(of: path)! + Event<V>.stateOffset
        if base.load(fromByteOffset: flag, as: UInt8.self) != 0 {
            h.pointee.status = .waiting
            state.pointee.makeReady(slot, h)
        } else {
            h.pointee.status = .waiting
            h.pointee.waitFlag = UInt16(flag)
        }
        return TaskHandle(id: id(slot, h.pointee.generation))
    }

    /// Runs up to `budget` ready tasks; returns how many ran. The core calls this through a
    /// closure created where `Task` is known, so the loop is specialised for the task type.
    @inlinable
    public func runReady(budget: Int) -> Int {
        let st = state
        var ran = 0
        batch: while ran < budget, let slot = st.pointee.ready.pop() {
            let base = st.pointee.address(slot)
            let h = st.pointee.header(base)
            h.pointee.status = .running
            var ctx = TaskContext<Task>(pool: st, slot: slot)
            let s = base.assumingMemoryBound(to: Task.self).pointee.resume(&ctx)
            ran &+= 1
            switch s.kind {
            case .wait:
                if base.load(fromByteOffset: Int(s.flagOffset), as: UInt8.self) != 0 {
                    h.pointee.status = .ready
                    st.pointee.ready.push(slot)
                } else {
                    h.pointee.status = .waiting
                    h.pointee.waitFlag = UInt16(truncatingIfNeeded: s.flagOffset)
                    if s.milliseconds != .max { armTimer(slot, h, s.milliseconds) }
                }
            case .sleep:
                h.pointee.status = .sleeping
                armTimer(slot, h, s.milliseconds)
            case .sleepUntil:
                h.pointee.status = .sleeping
                h.pointee.timer = core.armTaskTimer(pool: st.pointee.index, slot: slot, atTick: s.milliseconds)
            case .yield:
                // Yielding ends this pool's batch, so other pools, timers and mailboxes run
                // before the task does again.
                h.pointee.status = .ready
                st.pointee.ready.push(slot)
                break batch
            case .exit:
                base.assumingMemoryBound(to: Task.self).deinitialize(count: 1)
                let watched = h.pointee.flags & SlotHeader.exitWatched != 0
                st.pointee.freeSlot(slot, h)
                if watched { core.taskExited(pool: st, slot: slot) }
            }
        }
        if st.pointee.ready.count == 0 { st.pointee.scheduled = false }
        return ran
    }

    @inlinable func armTimer(_ slot: UInt32, _ h: UnsafeMutablePointer<SlotHeader>, _ ms: UInt64) {
        h.pointee.timer = core.armTaskTimer(pool: state.pointee.index, slot: slot, afterMilliseconds: ms)
    }

    /// Sets an event of a task in this pool by slot, without a generation check: for tasks
    /// that wire themselves into fixed topologies (rings, trees) and outlive their peers' use.
    @inlinable @inline(__always) @discardableResult
    public func set<V>(slot: UInt32, _ path: KeyPath<Task, Event<V>>, _ value: V) -> SetResult {
        if state.pointee.removed { return .gone }
        return state.pointee.deliver(slot: slot, generation: nil,
                              offset: MemoryLayout<Task>.offset(of: path)!, value: value)
    }

    /// Reads a live task's state (for inspection and tests); nil when the handle is stale.
    @inlinable public func withTask<R>(_ handle: TaskHandle<Task>, _ body: (inout Task) -> R) -> R? {
        checkThread()
        let slot = handle.id.slot
        guard slot < state.pointee.highWater else { return nil }
        let base = state.pointee.address(slot)
        let h = state.pointee.header(base)
        guard h.pointee.status != .free, h.pointee.generation == handle.id.generation else { return nil }
        return body(&base.assumingMemoryBound(to: Task.self).pointee)
    }

    /// Handles of the tasks waiting in the ready queue, in run order (for inspection).
    public func readyTasks() -> [TaskHandle<Task>] {
        checkThread()
        var out: [TaskHandle<Task>] = []
        let q = state.pointee.ready
        var i = q.head
        while i != q.tail {
            let slot = q.buffer[i & q.mask]
            let g = state.pointee.header(state.pointee.address(slot)).pointee.generation
            out.append(TaskHandle(id: id(slot, g)))
            i &+= 1
        }
        return out
    }

    /// Whether the task behind a handle is still alive.
    public func isAlive(_ handle: TaskHandle<Task>) -> Bool {
        if state.pointee.removed { return false }
        let slot = handle.id.slot
        guard slot < state.pointee.highWater else { return false }
        let h = state.pointee.header(state.pointee.address(slot))
        return h.pointee.status != .free && h.pointee.generation == handle.id.generation
    }

    /// Deinitializes every live task and frees the arena. Called by the core when the pool
    /// is removed or the core shuts down.
    @usableFromInline func destroyAll() {
        let st = state
        // Plain-data tasks need no deinitialization, and timers left behind by a removed pool
        // find no pool when they fire (pool indices are never reused), so the walk is only
        // for tasks that own references.
        let walk = !_isPOD(Task.self)
        for slot in 0..<(walk ? st.pointee.highWater : 0) {
            let base = st.pointee.address(slot)
            let h = st.pointee.header(base)
            if h.pointee.status == .free { continue }
            if h.pointee.timer != SlotHeader.noTimer {
                core.state.pointee.timers.cancelUnchecked(h.pointee.timer)
            }
            base.assumingMemoryBound(to: Task.self).deinitialize(count: 1)
        }
        // Tasks destroyed here have exited as far as anyone joining them is concerned.
        let watchers = st.pointee.exitWatchers
        st.pointee.exitWatchers = [:]
        st.pointee.release()
        for (_, list) in watchers { for w in list { w() } }
    }

    deinit {
        // The bookkeeping outlives the arena so a stale TaskPool reference fails a check
        // instead of touching freed memory.
        if !state.pointee.removed { state.pointee.release() }
        state.deinitialize(count: 1)
        state.deallocate()
    }
}

/// What a task sees while it runs: its own identity, its core, the clock, and the calls that
/// set other tasks' events or build its next suspension. It holds raw pointers only, so using
/// it costs no reference counting.
public struct TaskContext<Task: StacklessTask> {
    @usableFromInline let pool: UnsafeMutablePointer<PoolState>
    /// The task's slot in its pool.
    public let slot: UInt32

    @inlinable init(pool: UnsafeMutablePointer<PoolState>, slot: UInt32) {
        self.pool = pool
        self.slot = slot
    }

    /// The core running the task.
    @inlinable public var core: Core { pool.pointee.core }

    /// Milliseconds on the core's clock, read once per loop turn.
    @inlinable public var nowMilliseconds: UInt64 { pool.pointee.coreState.pointee.nowTick }

    /// This task's handle.
    @inlinable public var handle: TaskHandle<Task> {
        let p = pool.pointee
        let g = p.header(p.address(slot)).pointee.generation
        return TaskHandle(id: TaskID(core: UInt16(truncatingIfNeeded: p.core.index), pool: p.index,
                                     slot: slot, generation: g))
    }

    /// A reference to one of this task's own events, to give to whoever will set it.
    @inlinable public func event<V>(_ path: KeyPath<Task, Event<V>>) -> EventRef<V> {
        handle.event(path)
    }

    /// Wait until the event is set (returns at once on the next turn if it already is).
    @inlinable @inline(__always) public func wait<V>(_ path: KeyPath<Task, Event<V>>) -> Suspension {
        Suspension(kind: .wait,
                   flagOffset: UInt32(MemoryLayout<Task>.offset(of: path)! + Event<V>.stateOffset))
    }

    /// Wait until the event is set or `timeoutMilliseconds` pass; on resume the event is
    /// empty exactly when the wait timed out.
    @inlinable @inline(__always)
    public func wait<V>(_ path: KeyPath<Task, Event<V>>, timeoutMilliseconds: Int) -> Suspension {
        precondition(timeoutMilliseconds >= 0, "Heretic: negative timeout")
        return Suspension(kind: .wait,
                          flagOffset: UInt32(MemoryLayout<Task>.offset(of: path)! + Event<V>.stateOffset),
                          milliseconds: UInt64(timeoutMilliseconds))
    }

    /// Sleep until the core's clock reads `millisecond` (see `nowMilliseconds`); a time
    /// already past wakes on the next tick. For periodic work without drift: add the period
    /// to the previous deadline instead of sleeping a period from now.
    @inlinable public func sleep(untilMillisecond millisecond: UInt64) -> Suspension {
        Suspension(kind: .sleepUntil, milliseconds: millisecond)
    }

    /// Sets an event of a sibling in the same pool by slot (no generation check).
    @inlinable @inline(__always) @discardableResult
    public func set<V>(sibling slot: UInt32, _ path: KeyPath<Task, Event<V>>, _ value: V) -> SetResult {
        precondition(slot != self.slot, "Heretic: a task sets its own event with `event.set`, not through ctx")
        return pool.pointee.deliver(slot: slot, generation: nil,
                             offset: MemoryLayout<Task>.offset(of: path)!, value: value)
    }

    /// Sets any task's event: on this core directly, on another core through the mailbox
    /// (then the result is `.posted`; the far core applies it on its turn).
    @inlinable @discardableResult
    public func set<V: Sendable>(_ ref: EventRef<V>, _ value: V) -> SetResult {
        pool.pointee.core.set(ref, value)
    }
}
