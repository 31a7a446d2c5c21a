import Atomics

/// An unbounded single-producer single-consumer queue: the mailbox from one core to another.
///
/// Messages go into fixed segments that are written once, front to back: the producer
/// publishes each slot with a release store of the segment's count and, when a segment is
/// full, links a fresh one; the consumer reads in order, follows the link once a segment is
/// drained, and hands the empty segment back through a one-slot spare so steady traffic
/// allocates nothing. The producer never reads the consumer's position, a full queue never
/// exists, and one sender's messages always arrive in the order sent.
public final class SPSCQueue<Element>: @unchecked Sendable {
    final class Segment {
        let slots: UnsafeMutablePointer<Element>
        /// Slots written so far (producer stores with release, consumer loads with acquire).
        let published = ManagedAtomic<Int>(0)
        /// The following segment, once the producer moved on (an unmanaged, retained pointer).
        let next = ManagedAtomic<UnsafeMutableRawPointer?>(nil)

        init(capacity: Int) { slots = .allocate(capacity: capacity) }
        deinit { slots.deallocate() }
    }

    private let capacity: Int
    // Producer side.
    private var tail: Segment
    private var tailCount = 0
    // Consumer side.
    private var head: Segment
    private var headIndex = 0
    /// One drained segment waiting to be reused by the producer.
    private let spare = ManagedAtomic<UnsafeMutableRawPointer?>(nil)

    /// `segmentCapacity` messages per segment.
    public init(segmentCapacity: Int = 256) {
        capacity = max(2, segmentCapacity)
        let first = Segment(capacity: capacity)
        head = first
        tail = first
    }

    deinit {
        while pop() != nil {}
        if let s = spare.exchange(nil, ordering: .acquiring) {
            Unmanaged<Segment>.fromOpaque(s).release()
        }
        // `head` (== `tail` once drained) is released with the queue.
    }

    /// Producer side: never fails.
    public func push(_ element: consuming Element) {
        if tailCount == capacity {
            let fresh: Segment
            if let s = spare.exchange(nil, ordering: .acquiring) {
                fresh = Unmanaged<Segment>.fromOpaque(s).takeRetainedValue()
            } else {
                fresh = Segment(capacity: capacity)
            }
            tail.next.store(Unmanaged.passRetained(fresh).toOpaque(), ordering: .releasing)
            tail = fresh
            tailCount = 0
        }
        (tail.slots + tailCount).initialize(to: element)
        tailCount += 1
        tail.published.store(tailCount, ordering: .releasing)
    }

    /// Consumer side.
    public func pop() -> Element? {
        if headIndex == capacity {
            guard let n = head.next.load(ordering: .acquiring) else { return nil }
            let drained = head
            head = Unmanaged<Segment>.fromOpaque(n).takeRetainedValue()
            headIndex = 0
            recycle(drained)
        }
        guard headIndex < head.published.load(ordering: .acquiring) else { return nil }
        let element = (head.slots + headIndex).move()
        headIndex += 1
        return element
    }

    private func recycle(_ segment: Segment) {
        segment.published.store(0, ordering: .relaxed)
        segment.next.store(nil, ordering: .relaxed)
        // The release on the exchange publishes the resets to the producer that takes it.
        let raw = Unmanaged.passRetained(segment).toOpaque()
        if let other = spare.exchange(raw, ordering: .acquiringAndReleasing) {
            Unmanaged<Segment>.fromOpaque(other).release()
        }
    }

    /// Whether nothing is waiting. Exact on the consumer's thread.
    public var isEmpty: Bool {
        if headIndex == capacity { return head.next.load(ordering: .acquiring) == nil }
        return headIndex >= head.published.load(ordering: .acquiring)
    }
}
