/// The core's hot, single-threaded state, kept behind a pointer so the loop and the tasks
/// reach it with no reference counting and no exclusivity checks.
@usableFromInline struct CoreState {
    @usableFromInline var timers: TimerWheel
    /// Milliseconds since the runtime started, read once per loop turn.
    @usableFromInline var nowTick: UInt64 = 0
    /// Pools by index; nil where a pool was removed.
    @usableFromInline var pools: [UnsafeMutablePointer<PoolState>?] = []
    /// Specialised "run ready tasks" entry points, by pool index.
    var runners: [((Int) -> Int)?] = []
    var destroyers: [(() -> Void)?] = []
    /// Pools with ready tasks, in the order they became runnable.
    @usableFromInline var runnable: [UInt16] = []
    /// Async jobs enqueued from this core's own thread.
    var jobs = JobQueue()
    /// Async waits with timers: index is carried in the timer's payload.
    var asyncTimers = AsyncTimerTable()
    /// Task switches (stackless resumes) since start.
    var switches: UInt64 = 0
    /// Async jobs run since start.
    var jobsRun: UInt64 = 0

    init() { timers = TimerWheel() }

    @usableFromInline mutating func schedule(_ pool: UInt16) { runnable.append(pool) }
}

/// Timer payloads: a pool index and slot for tasks, or an entry of the async timer table.
@usableFromInline enum TimerPayload {
    @usableFromInline static let asyncBit: UInt64 = 1 << 63

    @inlinable static func task(pool: UInt16, slot: UInt32) -> UInt64 {
        UInt64(pool) << 32 | UInt64(slot)
    }
}

/// A FIFO of unowned async jobs, growing by doubling.
struct JobQueue {
    private var buffer = UnsafeMutablePointer<UnownedJob>.allocate(capacity: 256)
    private var mask = 255
    private var head = 0
    private var tail = 0

    var count: Int { tail - head }

    mutating func push(_ job: UnownedJob) {
        if tail - head > mask {
            let size = mask + 1
            let bigger = UnsafeMutablePointer<UnownedJob>.allocate(capacity: size * 2)
            for i in 0..<size { (bigger + i).initialize(to: buffer[(head + i) & mask]) }
            buffer.deallocate()
            buffer = bigger
            head = 0
            tail = size
            mask = size * 2 - 1
        }
        (buffer + (tail & mask)).initialize(to: job)
        tail &+= 1
    }

    mutating func pop() -> UnownedJob? {
        if head == tail { return nil }
        let job = buffer[head & mask]
        head &+= 1
        return job
    }

    func release() { buffer.deallocate() }
}

/// The callbacks of async sleeps and timed waits, indexed from timer payloads.
struct AsyncTimerTable {
    private var entries: [(id: UInt64, fire: (() -> Void)?)] = []
    private var free: [Int] = []
    private var nextID: UInt64 = 1

    /// Registers a callback; returns its index and a unique id for later removal.
    mutating func add(_ fire: @escaping () -> Void) -> (index: Int, id: UInt64) {
        let id = nextID
        nextID += 1
        if let i = free.popLast() {
            entries[i] = (id, fire)
            return (i, id)
        }
        entries.append((id, fire))
        return (entries.count - 1, id)
    }

    /// Removes and returns the callback if the entry still belongs to `id` (or any id if nil).
    mutating func take(_ index: Int, id: UInt64? = nil) -> (() -> Void)? {
        guard index < entries.count, let f = entries[index].fire else { return nil }
        if let id, entries[index].id != id { return nil }
        entries[index].fire = nil
        free.append(index)
        return f
    }
}
