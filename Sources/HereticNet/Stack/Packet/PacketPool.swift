import HereticTransport
import CHereticSys

/// A packet: a buffer of the pool it came from, and the bytes of it in use.
/// Plain data (8 bytes): moving a packet between queues copies no bytes.
public struct Packet: Hashable, Sendable {
    /// Buffer index in its pool.
    public let buffer: UInt32
    /// Where the frame starts within the buffer (room before it is headroom for headers).
    public var offset: UInt16
    public var length: UInt16

    @inlinable public init(buffer: UInt32, offset: UInt16, length: UInt16) {
        self.buffer = buffer
        self.offset = offset
        self.length = length
    }
}

/// Fixed-size packet buffers in one lazily mapped arena, owned by one core.
///
/// No allocation per packet and no reference counting: a packet is an index, its bytes are at
/// `base + index * bufferSize`. Buffers come from and return to a free stack. The pool has a
/// hard capacity; when it is exhausted `allocate` returns nil and the caller drops (and counts)
/// instead of growing without bound.
public final class PacketPool {
    /// Bytes per buffer: a 1500-byte MTU frame plus Ethernet header, with headroom to spare.
    public static let bufferSize = 2048
    /// Room left before a frame built from scratch, for headers prepended later.
    public static let headroom: UInt16 = 128

    @usableFromInline let base: UnsafeMutableRawPointer
    @usableFromInline let free: UnsafeMutablePointer<UInt32>
    @exclusivity(unchecked) @usableFromInline var freeCount: Int
    /// One past the highest buffer handed out since the last `trim`: pages below it may be
    /// resident.
    @exclusivity(unchecked) @usableFromInline var touched = 0
    public let capacity: Int
    private let mappedBytes: Int
    /// Set by a device whose kernel side holds the arena (an AF_XDP UMEM): the kernel has
    /// pinned its pages, and `trim` giving them back would leave the kernel writing to pages
    /// this process no longer sees.
    var pinnedByDevice = false

    /// A pool of `capacity` buffers (memory is touched only as buffers are first used).
    public init(capacity: Int = 65_536) {
        precondition(capacity > 0 && capacity < Int(UInt32.max), "Heretic: packet pool capacity \(capacity)")
        self.capacity = capacity
        mappedBytes = capacity * Self.bufferSize
        guard let p = heretic_arena_map(mappedBytes, 0) else {
            fatalError("Heretic: cannot map a packet arena of \(mappedBytes) bytes")
        }
        base = p
        free = .allocate(capacity: capacity)
        // Lowest indices on top, so a lightly used pool touches few pages.
        for i in 0..<capacity { free[i] = UInt32(capacity - 1 - i) }
        freeCount = capacity
    }

    deinit {
        heretic_arena_unmap(base, mappedBytes)
        free.deallocate()
    }

    /// Buffers currently handed out.
    public var inUse: Int { capacity - freeCount }

    /// A buffer with `length` bytes at the default headroom; nil when the pool is exhausted.
    @inlinable
    public func allocate(length: Int = 0, headroom: UInt16 = PacketPool.headroom) -> Packet? {
        guard freeCount > 0 else { return nil }
        precondition(Int(headroom) + length <= Self.bufferSize, "Heretic: packet of \(length) bytes does not fit")
        freeCount -= 1
        let b = free[freeCount]
        if Int(b) >= touched { touched = Int(b) + 1 }
        return Packet(buffer: b, offset: headroom, length: UInt16(length))
    }

    /// Returns a packet's buffer to the pool.
    @inlinable
    public func release(_ packet: Packet) {
        precondition(freeCount < capacity, "Heretic: packet buffer released twice")
        free[freeCount] = packet.buffer
        freeCount += 1
    }

    /// The packet's first byte.
    @inlinable
    public func bytes(_ packet: Packet) -> UnsafeMutableRawPointer {
        base + Int(packet.buffer) &* Self.bufferSize + Int(packet.offset)
    }

    /// A copy of `length` bytes at `source` in a new packet; nil when the pool is exhausted
    /// or the bytes cannot fit.
    /// Gives back to the kernel the pages of free buffers above the highest one in use, and
    /// reorders the free list so that allocation starts from the lowest buffers again: after
    /// a burst (a million messages in flight), the pool's resident memory shrinks to what is
    /// in use. O(free buffers); call it when the pool is mostly idle. Returns bytes released
    /// (none for a pool an XDP device has made its UMEM: the kernel holds those pages).
    @discardableResult
    public func trim() -> Int {
        guard touched > 0, !pinnedByDevice else { return 0 }
        // Highest indices first, so the lowest end up on top of the stack.
        var stack = UnsafeMutableBufferPointer(start: free, count: freeCount)
        stack.sort(by: >)
        var highestInUse = capacity - 1, k = 0
        while k < freeCount && Int(free[k]) == highestInUse {
            k += 1
            highestInUse -= 1
        }
        let from = highestInUse + 1
        guard from < touched else { return 0 }
        let released = heretic_arena_release(base + from * Self.bufferSize, (touched - from) * Self.bufferSize)
        touched = from
        return released
    }

    public func copy(from source: UnsafeRawPointer, length: Int) -> Packet? {
        guard length <= Self.bufferSize - Int(Self.headroom), let p = allocate(length: length) else { return nil }
        bytes(p).copyMemory(from: source, byteCount: length)
        return p
    }

    /// The packet's bytes as an array (tests and tools).
    public func contents(_ packet: Packet) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: bytes(packet), count: Int(packet.length)))
    }
}
