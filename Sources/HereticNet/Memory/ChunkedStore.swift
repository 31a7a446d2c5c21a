import HereticTransport
/// A growable array whose elements never move: they live in fixed chunks of 1,024, reached
/// through a table of chunk pointers. For per-connection state it has three uses over
/// `Array` in a class:
/// - reading or writing an element is two loads, with no retain and release of a buffer
///   around each access;
/// - an element stays at its address while the store grows, so a handler borrowed for a
///   callback is never moved by connections opened meanwhile;
/// - there is no doubling slack, and chunks past the end go back to the allocator as soon as
///   the store shrinks below them.
///
/// Indices are checked against `count` (a freed tail is never reachable).
/// (The chunk size, 1 << 10, is written as literals: a static property of a generic class
/// would be looked up through its metadata on every access.)

@usableFromInline final class ChunkedStore<Element> {

    /// Chunk pointers; the first `chunkCount` are allocated.
    @usableFromInline var table: UnsafeMutablePointer<UnsafeMutablePointer<Element>>
    @usableFromInline var tableCapacity: Int
    @usableFromInline var chunkCount = 0
    /// Elements initialised: indices 0..<count.
    @usableFromInline private(set) var count = 0

    @inlinable init() {
        tableCapacity = 16
        table = .allocate(capacity: tableCapacity)
    }

    deinit {
        truncate(to: 0)
        for c in 0..<chunkCount { table[c].deallocate() }
        table.deallocate()
    }

    @inlinable var isEmpty: Bool { count == 0 }
    @inlinable var indices: Range<Int> { 0..<count }
    /// Elements the allocated chunks hold.
    @inlinable var capacity: Int { chunkCount << 10 }

    @inlinable subscript(i: Int) -> Element {
        @inline(__always)
        unsafeAddress {
            precondition(i >= 0 && i < count, "Heretic: ChunkedStore index out of range")
            return UnsafePointer(table[i >> 10] + (i & 1023))
        }
        @inline(__always)
        unsafeMutableAddress {
            precondition(i >= 0 && i < count, "Heretic: ChunkedStore index out of range")
            return table[i >> 10] + (i & 1023)
        }
    }

    /// The element's address (stable while the store holds it), for code that works on
    /// several of its fields in turn.
    @inline(__always) @inlinable func pointer(_ i: Int) -> UnsafeMutablePointer<Element> {
        precondition(i >= 0 && i < count, "Heretic: ChunkedStore index out of range")
        return table[i >> 10] + (i & 1023)
    }

    /// The element's address, or nil when `i` is past the end (one check, for indices that
    /// come from elsewhere).
    @inline(__always) @inlinable func pointerIfPresent(_ i: Int) -> UnsafeMutablePointer<Element>? {
        guard i >= 0 && i < count else { return nil }
        return table[i >> 10] + (i & 1023)
    }

    @inline(__always) @inlinable func append(_ element: Element) {
        if count == capacity { addChunk() }
        (table[count >> 10] + (count & 1023)).initialize(to: element)
        count += 1
    }

    @usableFromInline func addChunk() {
        if chunkCount == tableCapacity {
            let bigger = UnsafeMutablePointer<UnsafeMutablePointer<Element>>.allocate(capacity: tableCapacity * 2)
            bigger.moveInitialize(from: table, count: chunkCount)
            table.deallocate()
            table = bigger
            tableCapacity *= 2
        }
        table[chunkCount] = .allocate(capacity: 1024)
        chunkCount += 1
    }

    /// Drops the elements from `n` on, and gives back the chunks no element uses any more
    /// (keeping one spare, so a count that hovers at a chunk boundary does not churn).
    /// Returns whether chunks went back.
    @discardableResult
    @usableFromInline func truncate(to n: Int) -> Bool {
        let chunksBefore = chunkCount
        precondition(n >= 0 && n <= count, "Heretic: ChunkedStore truncated past its end")
        var i = n
        while i < count {
            // Deinitialise chunk by chunk (the elements of one chunk are contiguous).
            let inChunk = min(count - i, 1024 - (i & 1023))
            (table[i >> 10] + (i & 1023)).deinitialize(count: inChunk)
            i += inChunk
        }
        count = n
        let needed = (n + 1023) >> 10
        while chunkCount > needed + 1 {
            chunkCount -= 1
            table[chunkCount].deallocate()
        }
        if n == 0 && chunkCount > 0 {
            chunkCount -= 1
            table[chunkCount].deallocate()
        }
        return chunkCount < chunksBefore
    }
}
