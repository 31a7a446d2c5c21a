import CHereticSys

/// Per-slot bookkeeping, stored right after the task's own bytes.
@usableFromInline struct SlotHeader {
    @usableFromInline var generation: UInt32
    /// The armed timer's node while waiting with a timeout or sleeping; the next free slot
    /// while the slot is free.
    @usableFromInline var timer: UInt32
    /// Offset of the awaited event's state byte while waiting.
    @usableFromInline var waitFlag: UInt16
    @usableFromInline var status: SlotStatus
    @usableFromInline var flags: UInt8

    @inlinable init(generation: UInt32, timer: UInt32, waitFlag: UInt16, status: SlotStatus, flags: UInt8) {
        self.generation = generation
        self.timer = timer
        self.waitFlag = waitFlag
        self.status = status
        self.flags = flags
    }

    @usableFromInline static let noTimer = UInt32.max
    @usableFromInline static let exitWatched: UInt8 = 1
}

@usableFromInline enum SlotStatus: UInt8 {
    case free, ready, running, waiting, sleeping
}

/// A FIFO of slot indices, growing by doubling.
@usableFromInline struct ReadyQueue {
    @usableFromInline var buffer: UnsafeMutablePointer<UInt32>
    @usableFromInline var mask: Int
    @usableFromInline var head = 0
    @usableFromInline var tail = 0

    init() {
        buffer = .allocate(capacity: 64)
        mask = 63
    }

    @inlinable var count: Int { tail - head }

    @inlinable mutating func push(_ slot: UInt32) {
        if tail - head > mask { grow() }
        buffer[tail & mask] = slot
        tail &+= 1
    }

    @inlinable mutating func pop() -> UInt32? {
        if head == tail { return nil }
        let s = buffer[head & mask]
        head &+= 1
        return s
    }

    @usableFromInline mutating func grow() {
        let old = mask + 1
        let bigger = UnsafeMutablePointer<UInt32>.allocate(capacity: old * 2)
        for i in 0..<old { bigger[i] = buffer[(head + i) & mask] }
        buffer.deallocate()
        buffer = bigger
        tail = old
        head = 0
        mask = old * 2 - 1
    }

    func release() { buffer.deallocate() }
}

/// The type-independent half of a task pool: the slot arena, free list and ready queue.
///
/// Slots live in chunks of 65,536 that never move, so a slot's address is one shift, one
/// table load and one multiply away; chunks are mapped lazily (RSS grows only with use) and
/// all but the first ask for transparent huge pages. Because nothing here depends on the task
/// type, timers and cross-type event deliveries reach any pool without generic or virtual calls.
@usableFromInline struct PoolState {
    @usableFromInline static let chunkShift = 16
    @usableFromInline static let slotsPerChunk = 1 << chunkShift
    static let maxChunks = 1 << 16

    @usableFromInline let chunks: UnsafeMutablePointer<UnsafeMutableRawPointer?>
    @usableFromInline let stride: Int
    @usableFromInline let headerOffset: Int
    @usableFromInline var chunkCount = 0
    @usableFromInline var highWater: UInt32 = 0
    @usableFromInline var freeHead: UInt32 = SlotHeader.noTimer
    @usableFromInline var live = 0
    @usableFromInline var ready = ReadyQueue()
    @usableFromInline var scheduled = false
    /// Set when the pool was removed from its core: its arena is gone, its slots dead.
    @usableFromInline var removed = false
    @usableFromInline let index: UInt16
    @usableFromInline unowned(unsafe) let core: Core
    /// The owning core's hot state, reached without touching the core object.
    @usableFromInline let coreState: UnsafeMutablePointer<CoreState>
    /// Callbacks for tasks someone waits to see exit (rare: kept out of the slots).
    @usableFromInline var exitWatchers: [UInt32: [() -> Void]] = [:]

    init(index: UInt16, core: Core, stride: Int, headerOffset: Int) {
        self.index = index
        self.core = core
        self.coreState = core.state
        self.stride = stride
        self.headerOffset = headerOffset
        chunks = .allocate(capacity: Self.maxChunks)
        chunks.initialize(repeating: nil, count: Self.maxChunks)
    }

    @inlinable var chunkBytes: Int { stride << Self.chunkShift }

    @inlinable @inline(__always) func address(_ slot: UInt32) -> UnsafeMutableRawPointer {
        chunks[Int(slot >> UInt32(Self.chunkShift))].unsafelyUnwrapped
            + Int(slot & UInt32(Self.slotsPerChunk - 1)) &* stride
    }

    @inlinable @inline(__always) func header(_ base: UnsafeMutableRawPointer) -> UnsafeMutablePointer<SlotHeader> {
        (base + headerOffset).assumingMemoryBound(to: SlotHeader.self)
    }

    /// Takes a free slot (lowest reuse first via the free list, else a new one) and returns
    /// its index; its header is reset to `.ready` with the slot's current generation.
    @inlinable mutating func allocateSlot() -> UInt32 {
        let slot: UInt32
        if freeHead != SlotHeader.noTimer {
            slot = freeHead
            let h = header(address(slot))
            freeHead = h.pointee.timer
            h.pointee.timer = SlotHeader.noTimer
            h.pointee.status = .ready
            h.pointee.flags = 0
        } else {
            precondition(highWater < UInt32.max - 1, "Heretic: task pool is full (2^32 slots)")
            slot = highWater
            if Int(slot >> UInt32(Self.chunkShift)) == chunkCount { mapChunk() }
            highWater += 1
            header(address(slot)).initialize(to: SlotHeader(
                generation: 0, timer: SlotHeader.noTimer, waitFlag: 0, status: .ready, flags: 0))
        }
        live += 1
        return slot
    }

    @usableFromInline mutating func mapChunk() {
        precondition(chunkCount < Self.maxChunks, "Heretic: task pool is full")
        guard let p = heretic_arena_map(chunkBytes, chunkCount > 0 ? 1 : 0) else {
            fatalError("Heretic: out of memory mapping a task arena chunk of \(chunkBytes) bytes")
        }
        chunks[chunkCount] = p
        chunkCount += 1
    }

    /// Returns a slot whose task has been deinitialized to the free list.
    @inlinable mutating func freeSlot(_ slot: UInt32, _ h: UnsafeMutablePointer<SlotHeader>) {
        h.pointee.generation &+= 1
        h.pointee.status = .free
        h.pointee.timer = freeHead
        freeHead = slot
        live -= 1
    }

    /// Makes a suspended slot runnable and schedules the pool on its core.
    @inlinable @inline(__always) mutating func makeReady(_ slot: UInt32, _ h: UnsafeMutablePointer<SlotHeader>) {
        if h.pointee.timer != SlotHeader.noTimer {
            coreState.pointee.timers.cancelUnchecked(h.pointee.timer)
            h.pointee.timer = SlotHeader.noTimer
        }
        h.pointee.status = .ready
        ready.push(slot)
        if !scheduled {
            scheduled = true
            coreState.pointee.schedule(index)
        }
    }

    /// Stores a value in an inline event and wakes the task if it waits on that event.
    /// `generation` nil skips the staleness check (siblings that manage their own topology).
    @inlinable @inline(__always) mutating func deliver<V>(
        slot: UInt32, generation: UInt32?, offset: Int, value: V
    ) -> SetResult {
        guard slot < highWater else { return .gone }
        let base = address(slot)
        let h = header(base)
        if h.pointee.status == .free { return .gone }
        if let g = generation, g != h.pointee.generation { return .gone }
        let event = (base + offset).assumingMemoryBound(to: Event<V>.self)
        if event.pointee.state != 0 { return .alreadySet }
        event.pointee.value = value
        event.pointee.state = 1
        if h.pointee.status == .waiting,
           Int(h.pointee.waitFlag) == offset + Event<V>.stateOffset {
            makeReady(slot, h)
        }
        return .delivered
    }

    /// A timer armed for this slot fired: its wait timed out or its sleep ended.
    mutating func timerFired(_ slot: UInt32) {
        let h = header(address(slot))
        h.pointee.timer = SlotHeader.noTimer
        if h.pointee.status == .waiting || h.pointee.status == .sleeping {
            makeReady(slot, h)
        }
    }

    /// Frees the arena and queues (once); the struct itself stays valid with `removed` set.
    mutating func release() {
        guard !removed else { return }
        removed = true
        for c in 0..<chunkCount { heretic_arena_unmap(chunks[c], chunkBytes) }
        chunks.deallocate()
        ready.release()
        chunkCount = 0
        highWater = 0
        live = 0
    }
}
