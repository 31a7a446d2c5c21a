import HereticTransport
/// Out-of-order data of the connections of one layer: what arrived past a hole, kept until
/// the hole fills. It exists only while a connection has a hole (lazy, like the send queues).
///
/// Bounded three ways, each counted when it bites:
/// - per connection, by bytes really held (`perConnectionLimit`, and never beyond the
///   receive window the connection offered) and by ranges (`maxRanges`);
/// - per layer, by bytes really held by all connections together (`limit`).
/// "Really held" counts each range's buffer capacity plus a fixed overhead for its
/// bookkeeping, so a flood of one-byte segments costs what it costs.
///
/// Data already held is never stored twice: a new segment is trimmed to the gaps between the
/// ranges held, and a piece that continues a range is appended to it. Ranges stay sorted and
/// disjoint, found by binary search, so one insertion costs O(log ranges) to place plus the
/// overlapped ranges it touches, with at most `maxRanges` ranges per connection.
///
/// When a piece does not fit, data farther from the hole than the piece is let go first (it
/// matters least: the peer sends it again after the hole), then the piece itself.
@usableFromInline struct ReassemblyStore {
    @usableFromInline struct Range {
        @usableFromInline var sequence: SequenceNumber
        @usableFromInline var bytes: [UInt8]
        @inlinable var end: SequenceNumber { sequence + bytes.count }
    }

    /// One connection's ranges, sorted by sequence, disjoint and not adjacent.
    @usableFromInline struct Queue {
        @usableFromInline var ranges: [Range] = []
        @usableFromInline var held = 0
        @usableFromInline init() {}
    }

    /// Bookkeeping per range beyond its bytes (array header and the range's entry, rounded
    /// up for the allocator), and per connection with a queue (its table entry).
    static let rangeOverhead = 64
    static let queueOverhead = 64

    @usableFromInline var queues: [UInt64: Queue] = [:]
    /// Bytes held by every queue together.
    @usableFromInline var held = 0
    /// The most all connections together may hold.
    @usableFromInline var limit = 64 << 20
    /// The most one connection may hold (also never more than its receive window).
    @usableFromInline var perConnectionLimit = 256 << 10
    /// The most ranges (holes plus one) one connection may hold.
    @usableFromInline var maxRanges = 64

    /// Pieces kept, and later handed over in order.
    @usableFromInline var keptCount = 0
    @usableFromInline var deliveredCount = 0
    /// Bytes that arrived again while held (trimmed, not stored twice).
    @usableFromInline var duplicateBytes = 0
    /// Pieces refused or let go because a budget was full (the peer sends them again).
    @usableFromInline var drops = 0

    @usableFromInline init() {}

    var isEmpty: Bool { queues.isEmpty }

    /// Bytes held for one connection (0 when it has no hole).
    func held(_ ref: UInt64) -> Int { queues[ref]?.held ?? 0 }

    /// Keeps what is new of `data`, which belongs at `sequence` past the hole at `rcvNxt`,
    /// within `window` bytes past `rcvNxt`. Returns whether the connection holds anything now.
    @usableFromInline mutating func insert(_ ref: UInt64, at sequence: SequenceNumber, _ data: UnsafeRawBufferPointer,
                                           rcvNxt: SequenceNumber, window: Int) -> Bool {
        var q: Queue
        if let existing = queues.removeValue(forKey: ref) {
            q = existing
            held -= q.held
        } else {
            q = Queue()
            q.held = Self.queueOverhead
        }
        let budget = min(perConnectionLimit, max(window, 0) + Self.queueOverhead + Self.rangeOverhead * 2)
        let windowEnd = rcvNxt + window
        // The part of the segment past RCV.NXT and inside the window.
        var start = sequence > rcvNxt ? sequence : rcvNxt
        let segmentEnd = sequence + data.count
        let end = segmentEnd < windowEnd ? segmentEnd : windowEnd
        var i = q.firstRange(endingAfter: start)
        while start < end {
            if i < q.ranges.count && q.ranges[i].sequence <= start {
                // Inside a range held already: skip what it covers.
                let rangeEnd = q.ranges[i].end
                let covered = end < rangeEnd ? end : rangeEnd
                duplicateBytes += covered - start
                start = covered
                i += 1
                continue
            }
            let next = i < q.ranges.count ? q.ranges[i].sequence : end
            let gapEnd = end < next ? end : next
            let piece = UnsafeRawBufferPointer(rebasing: data[(start - sequence)..<(gapEnd - sequence)])
            i = place(piece, at: start, before: i, in: &q, budget: budget)
            start = gapEnd
        }
        if q.ranges.isEmpty { return false }
        held += q.held
        queues[ref] = q
        return true
    }

    /// Puts `piece` (a gap's bytes at `sequence`, before range `index`) into the queue, making
    /// room by letting go of ranges beyond it if a budget requires. Returns the index of the
    /// first range after the piece.
    mutating func place(_ piece: UnsafeRawBufferPointer, at sequence: SequenceNumber, before index: Int,
                        in q: inout Queue, budget: Int) -> Int {
        let continues = index > 0 && q.ranges[index - 1].end == sequence
        // What it will cost: a new range's buffer and overhead, or the growth of the buffer it
        // continues (an array doubles when it runs out of room).
        let cost: Int
        if continues {
            // (Read in place: a copy of the array would make the append below copy it all.)
            let capacity = q.ranges[index - 1].bytes.capacity, needed = q.ranges[index - 1].bytes.count + piece.count
            cost = needed <= capacity ? 0 : max(needed, 2 * capacity) - capacity
        } else {
            cost = (piece.count + 15) & ~15 + Self.rangeOverhead
        }
        var count = q.ranges.count
        func fits(_ q: Queue) -> Bool {
            q.held + cost <= budget && held + q.held + cost <= limit && (continues || count < maxRanges)
        }
        while !fits(q) && count > index {
            // Let go of the range farthest from the hole.
            let last = q.ranges.removeLast()
            q.held -= last.bytes.capacity + Self.rangeOverhead
            count -= 1
            drops += 1
        }
        guard fits(q) else {
            drops += 1
            return index
        }
        keptCount += 1
        if continues {
            let before = q.ranges[index - 1].bytes.capacity
            q.ranges[index - 1].bytes.append(contentsOf: piece)
            q.held += q.ranges[index - 1].bytes.capacity - before
            // It may now reach the next range: join them.
            if index < q.ranges.count && q.ranges[index - 1].end == q.ranges[index].sequence {
                let next = q.ranges.remove(at: index)
                let joined = q.ranges[index - 1].bytes.capacity
                q.ranges[index - 1].bytes.append(contentsOf: next.bytes)
                q.held += q.ranges[index - 1].bytes.capacity - joined - next.bytes.capacity - Self.rangeOverhead
            }
            return index
        }
        let range = Range(sequence: sequence, bytes: Array(piece))
        q.held += range.bytes.capacity + Self.rangeOverhead
        q.ranges.insert(range, at: index)
        return index + 1
    }

    /// Takes the connection's queue out while its data is handed over (the handler may do
    /// anything meanwhile, even end the connection); `putBack` returns what is left.
    @usableFromInline mutating func take(_ ref: UInt64) -> Queue? {
        guard let q = queues.removeValue(forKey: ref) else { return nil }
        held -= q.held
        return q
    }

    @usableFromInline mutating func putBack(_ ref: UInt64, _ q: Queue) {
        guard !q.ranges.isEmpty else { return }
        held += q.held
        queues[ref] = q
    }

    /// Forgets a connection's data (it closed).
    mutating func remove(_ ref: UInt64) {
        if let q = queues.removeValue(forKey: ref) { held -= q.held }
    }
}

extension ReassemblyStore.Queue {
    /// The index of the first range that ends after `sequence` (binary search: disjoint
    /// ranges in order end in order).
    @usableFromInline func firstRange(endingAfter sequence: SequenceNumber) -> Int {
        var low = 0, high = ranges.count
        while low < high {
            let mid = (low + high) / 2
            if ranges[mid].end > sequence { high = mid } else { low = mid + 1 }
        }
        return low
    }

    /// Removes the first range, accounting for what it held.
    @usableFromInline mutating func removeFirst() -> ReassemblyStore.Range {
        let r = ranges.removeFirst()
        held -= r.bytes.capacity + ReassemblyStore.rangeOverhead
        return r
    }
}
