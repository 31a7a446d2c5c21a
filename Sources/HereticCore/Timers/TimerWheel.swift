/// A handle to an armed timer. Stale handles (the timer fired or was cancelled, and its node
/// was reused) are detected by the generation and ignored.
public struct TimerHandle: Hashable, Sendable {
    @usableFromInline let index: UInt32
    @usableFromInline let generation: UInt32

    @inlinable init(index: UInt32, generation: UInt32) {
        self.index = index
        self.generation = generation
    }

    /// No timer: cancelling it does nothing (for a stored handle that is not optional, and so
    /// costs no tag byte).
    public static let none = TimerHandle(index: .max, generation: 0)

    /// Whether this is `none` (no timer to cancel).
    @inlinable public var isNone: Bool { index == .max }
}

/// A hierarchical timing wheel with one-tick resolution (the core uses one millisecond).
///
/// Level 0 has 4096 slots of one tick (4 s of milliseconds, so common timeouts and periods
/// never cascade); levels 1 to 5 have 64 slots each, every level 64 times coarser than the one
/// below, so the wheel spans 2^42 ticks (139 years of milliseconds).
/// Timers further out are parked in the top level and re-placed when it cascades.
/// Arming and cancelling are O(1): nodes live in struct-of-arrays storage addressed by index,
/// each slot is a circular doubly-linked list through a sentinel node, and nothing is
/// allocated per timer once the arrays have grown to the peak number of pending timers.
///
/// The wheel is a plain struct over manually managed buffers so the owning core can keep it
/// behind a pointer with no reference counting or exclusivity checks on the hot path; call
/// `release()` exactly once when done.
public struct TimerWheel {
    static let level0Bits = 12
    static let levelBits = 6
    static let levels = 6
    static let level0Slots = 1 << level0Bits
    static let levelSlots = 1 << levelBits
    static let sentinelCount = level0Slots + (levels - 1) * levelSlots
    /// Largest distance between now and a deadline the wheel represents exactly.
    static let maxDelta: UInt64 = (1 << UInt64(level0Bits + (levels - 1) * levelBits)) - 1
    static let none = UInt32.max

    var next: UnsafeMutablePointer<UInt32>
    var prev: UnsafeMutablePointer<UInt32>
    var deadline: UnsafeMutablePointer<UInt64>
    var payload: UnsafeMutablePointer<UInt64>
    var generation: UnsafeMutablePointer<UInt32>
    var capacity: Int
    var freeHead: UInt32
    /// The next tick to be processed: every timer with a deadline below it has fired.
    public private(set) var currentTick: UInt64
    /// Timers armed and not yet fired or cancelled.
    public private(set) var count: Int
    /// A lower bound on the next tick at which a timer fires or a non-empty slot cascades.
    /// Arming lowers it; firing recomputes it; cancelling leaves it a valid (early) bound.
    public internal(set) var nextHint: UInt64 = .max

    public init(startTick: UInt64 = 0, initialCapacity: Int = 1024) {
        let cap = Swift.max(initialCapacity, 16) + Self.sentinelCount
        next = .allocate(capacity: cap)
        prev = .allocate(capacity: cap)
        deadline = .allocate(capacity: cap)
        payload = .allocate(capacity: cap)
        generation = .allocate(capacity: cap)
        generation.initialize(repeating: 0, count: cap)
        capacity = cap
        currentTick = startTick
        count = 0
        freeHead = Self.none
        for s in 0..<Self.sentinelCount {
            next[s] = UInt32(s)
            prev[s] = UInt32(s)
        }
        linkFree(from: Self.sentinelCount, to: cap)
    }

    /// Frees the wheel's storage. The wheel must not be used afterwards.
    public mutating func release() {
        next.deallocate(); prev.deallocate(); deadline.deallocate()
        payload.deallocate(); generation.deallocate()
        capacity = 0
    }

    private mutating func linkFree(from start: Int, to end: Int) {
        var i = end - 1
        while i >= start {
            next[i] = freeHead
            freeHead = UInt32(i)
            i -= 1
        }
    }

    private mutating func grow() {
        let newCap = capacity * 2
        func regrow<T>(_ p: inout UnsafeMutablePointer<T>, _ old: Int) {
            let q = UnsafeMutablePointer<T>.allocate(capacity: newCap)
            q.moveInitialize(from: p, count: old)
            p.deallocate()
            p = q
        }
        regrow(&next, capacity); regrow(&prev, capacity); regrow(&deadline, capacity)
        regrow(&payload, capacity); regrow(&generation, capacity)
        (generation + capacity).initialize(repeating: 0, count: newCap - capacity)
        let old = capacity
        capacity = newCap
        linkFree(from: old, to: newCap)
    }

    /// Arms a timer that fires when tick `at` is processed (deadlines already past fire on the
    /// next tick). `payload` is handed back to the fire callback.
    @discardableResult
    public mutating func arm(at tick: UInt64, payload value: UInt64) -> TimerHandle {
        if freeHead == Self.none { grow() }
        let node = freeHead
        freeHead = next[Int(node)]
        deadline[Int(node)] = tick
        payload[Int(node)] = value
        place(node)
        count += 1
        return TimerHandle(index: node, generation: generation[Int(node)])
    }

    /// Cancels a pending timer. Returns false when it already fired or was cancelled.
    @discardableResult
    public mutating func cancel(_ handle: TimerHandle) -> Bool {
        let i = Int(handle.index)
        guard i >= Self.sentinelCount, i < capacity, generation[i] == handle.generation,
              next[i] != Self.none else { return false }
        unlink(handle.index)
        free(handle.index)
        return true
    }

    /// Cancels by node index alone, for owners that track their single timer exactly (a task
    /// slot clears its timer field whenever the timer fires or is cancelled).
    @usableFromInline mutating func cancelUnchecked(_ index: UInt32) {
        unlink(index)
        free(index)
    }

    /// Whether the handle names a timer that is still pending.
    public func isPending(_ handle: TimerHandle) -> Bool {
        let i = Int(handle.index)
        return i >= Self.sentinelCount && i < capacity && generation[i] == handle.generation
            && next[i] != Self.none
    }

    @inline(__always)
    private mutating func free(_ node: UInt32) {
        generation[Int(node)] &+= 1
        prev[Int(node)] = Self.none
        next[Int(node)] = freeHead
        freeHead = node
        count -= 1
    }

    @inline(__always)
    private mutating func unlink(_ node: UInt32) {
        let n = next[Int(node)], p = prev[Int(node)]
        next[Int(p)] = n
        prev[Int(n)] = p
        next[Int(node)] = Self.none
    }

    /// Puts a node in the slot its deadline maps to, relative to `currentTick`.
    @inline(__always)
    private mutating func place(_ node: UInt32) {
        var when = deadline[Int(node)]
        if when < currentTick { when = currentTick }
        var delta = when - currentTick
        if delta > Self.maxDelta {
            delta = Self.maxDelta
            when = currentTick + delta
        }
        let sentinel: Int
        // The tick at which this slot is next looked at: the deadline itself in level 0, the
        // slot's cascade (the deadline with the level's lower bits cleared) above it.
        let reached: UInt64
        if delta < UInt64(Self.level0Slots) {
            sentinel = Int(when & UInt64(Self.level0Slots - 1))
            reached = when
        } else {
            // Level l (1...5) holds deltas below 2^(12 + 6l); its slot is picked by the
            // deadline's bits just above those of the level below.
            var level = 1
            while level < Self.levels - 1,
                  delta >= (1 << UInt64(Self.level0Bits + level * Self.levelBits)) {
                level += 1
            }
            let shift = UInt64(Self.level0Bits + (level - 1) * Self.levelBits)
            let slot = Int((when >> shift) & UInt64(Self.levelSlots - 1))
            sentinel = Self.level0Slots + (level - 1) * Self.levelSlots + slot
            reached = (when >> shift) << shift
        }
        if reached < nextHint { nextHint = reached }
        // Append before the sentinel (at the tail) so same-slot timers keep arming order.
        let tail = prev[sentinel]
        next[Int(node)] = UInt32(sentinel)
        prev[Int(node)] = tail
        next[Int(tail)] = node
        prev[sentinel] = node
    }

    /// Moves every timer of one upper-level slot down to where it now belongs.
    private mutating func cascade(level: Int, slot: Int) -> Int {
        let sentinel = Self.level0Slots + (level - 1) * Self.levelSlots + slot
        var node = next[sentinel]
        next[sentinel] = UInt32(sentinel)
        prev[sentinel] = UInt32(sentinel)
        while node != UInt32(sentinel) {
            let following = next[Int(node)]
            place(node)
            node = following
        }
        return slot
    }

    /// The next tick at which a timer fires or a non-empty upper slot cascades; `nil` when no
    /// timer is pending. Exact for level 0; a cascade tick is a lower bound for the timers it
    /// brings down.
    public func nextEventTick() -> UInt64? {
        if count == 0 { return nil }
        let mask = UInt64(Self.level0Slots - 1)
        var best = UInt64.max
        // Level 0 holds every timer due within the next 4096 ticks, one slot per tick.
        var t = currentTick
        let end = currentTick + UInt64(Self.level0Slots)
        while t < end {
            let s = Int(t & mask)
            if next[s] != UInt32(s) { best = t; break }
            t += 1
        }
        // Level l cascades slot (t >> shift) & 63 at every tick t that is a multiple of 2^shift.
        for level in 1..<Self.levels {
            let shift = UInt64(Self.level0Bits + (level - 1) * Self.levelBits)
            let step = UInt64(1) << shift
            var at = (currentTick + step - 1) & ~(step - 1)
            if at >= best { break }  // higher levels cascade no earlier than this one
            let base = Self.level0Slots + (level - 1) * Self.levelSlots
            for _ in 0..<Self.levelSlots {
                if at >= best { break }
                let slot = base + Int((at >> shift) & UInt64(Self.levelSlots - 1))
                if next[slot] != UInt32(slot) { best = at; break }
                at += step
            }
        }
        return best
    }

    /// Processes every tick up to and including `tick`, appending the payload of each timer
    /// that expires to `expired`, in deadline order (arming order within one tick).
    /// The caller acts on them afterwards, when it is free to arm and cancel timers again.
    /// Stretches with nothing to fire or cascade are skipped in one step, so the cost follows
    /// the timers, not the time elapsed.
    public mutating func advance(to tick: UInt64, into expired: inout [UInt64]) {
        while currentTick <= tick {
            if count == 0 {
                currentTick = tick + 1
                nextHint = .max
                return
            }
            if nextHint > currentTick {
                if nextHint > tick { currentTick = tick + 1; return }
                currentTick = nextHint
            }
            advanceOneTick(into: &expired)
            nextHint = nextEventTick() ?? .max
        }
    }

    mutating func advanceOneTick(into expired: inout [UInt64]) {
        let mask = UInt64(Self.level0Slots - 1)
        let index = Int(currentTick & mask)
        if index == 0 {
            // Level 0 wrapped: bring the next slot of level 1 down, and of level 2 when level 1
            // wrapped too, and so on up the wheel.
            var level = 1
            while level < Self.levels {
                let shift = UInt64(Self.level0Bits + (level - 1) * Self.levelBits)
                let slot = Int((currentTick >> shift) & UInt64(Self.levelSlots - 1))
                if cascade(level: level, slot: slot) != 0 { break }
                level += 1
            }
        }
        currentTick += 1
        let sentinel = UInt32(index)
        var node = next[index]
        if node == sentinel { return }
        next[index] = sentinel
        prev[index] = sentinel
        while node != sentinel {
            let following = next[Int(node)]
            expired.append(payload[Int(node)])
            free(node)
            node = following
        }
    }
}
