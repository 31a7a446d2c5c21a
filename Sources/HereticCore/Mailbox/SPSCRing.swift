import Atomics

/// A bounded single-producer single-consumer ring: the mailbox from one core to another.
///
/// Exactly one thread pushes and exactly one thread pops. The producer publishes with a
/// release store of `tail`, the consumer frees slots with a release store of `head`; each side
/// caches the other's index so the common case touches no shared cache line but its own.
/// A full ring makes `push` return the element back, so the caller can fall back to a slower
/// unbounded path instead of blocking.
public final class SPSCRing<Element>: @unchecked Sendable {
    private let storage: UnsafeMutablePointer<Element>
    private let mask: Int
    private let head = ManagedAtomic<Int>(0)  // next slot to pop (consumer-owned)
    private let tail = ManagedAtomic<Int>(0)  // next slot to push (producer-owned)
    private var cachedHead = 0                // producer's view of head
    private var cachedTail = 0                // consumer's view of tail

    /// `capacity` is rounded up to a power of two.
    public init(capacity: Int) {
        var c = 2
        while c < capacity { c <<= 1 }
        storage = .allocate(capacity: c)
        mask = c - 1
    }

    deinit {
        while pop() != nil {}
        storage.deallocate()
    }

    public var capacity: Int { mask + 1 }

    /// Producer side. Returns the element back when the ring is full.
    public func push(_ element: consuming Element) -> Element? {
        let t = tail.load(ordering: .relaxed)
        if t - cachedHead > mask {
            cachedHead = head.load(ordering: .acquiring)
            if t - cachedHead > mask { return element }
        }
        (storage + (t & mask)).initialize(to: element)
        tail.store(t + 1, ordering: .releasing)
        return nil
    }

    /// Consumer side.
    public func pop() -> Element? {
        let h = head.load(ordering: .relaxed)
        if h == cachedTail {
            cachedTail = tail.load(ordering: .acquiring)
            if h == cachedTail { return nil }
        }
        let element = (storage + (h & mask)).move()
        head.store(h + 1, ordering: .releasing)
        return element
    }

    /// Whether anything is waiting; safe from the consumer (exact) or anyone (a hint).
    public var isEmpty: Bool {
        head.load(ordering: .relaxed) == tail.load(ordering: .acquiring)
    }
}
