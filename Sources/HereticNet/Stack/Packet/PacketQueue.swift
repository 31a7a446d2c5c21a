import HereticTransport
/// A bounded FIFO of packets (a NIC-style queue): fixed capacity, no growth, and a refusal
/// when full that the caller turns into a counted drop.
struct PacketQueue {
    private let buffer: UnsafeMutablePointer<Packet>
    private let mask: Int
    private var head = 0
    private var tail = 0

    init(capacity: Int) {
        var c = 2
        while c < capacity { c <<= 1 }
        buffer = .allocate(capacity: c)
        mask = c - 1
    }

    func release() { buffer.deallocate() }

    var count: Int { tail - head }
    var isEmpty: Bool { head == tail }

    /// False when full.
    @inline(__always) mutating func push(_ p: Packet) -> Bool {
        if tail - head > mask { return false }
        buffer[tail & mask] = p
        tail &+= 1
        return true
    }

    @inline(__always) mutating func pop() -> Packet? {
        if head == tail { return nil }
        let p = buffer[head & mask]
        head &+= 1
        return p
    }
}
