import Testing
@testable import HereticCore

@Suite("Mailboxes")
struct MailboxTests {
    @Test("an SPSC queue hands over every element in order between two threads")
    func spscAcrossThreads() throws {
        let queue = SPSCQueue<UInt64>(segmentCapacity: 64)  // small: many segment hand-overs
        let total: UInt64 = 1_000_000
        let done = Latch()
        final class Result: @unchecked Sendable { var ok = true; var sum: UInt64 = 0 }
        let result = Result()
        let runtime = try Runtime(cores: 2, pinThreads: false)
        defer { runtime.shutdown() }
        try runtime.execute(on: 1) { _ in
            var expected: UInt64 = 0
            while expected < total {
                if let v = queue.pop() {
                    if v != expected { result.ok = false }
                    result.sum &+= v
                    expected += 1
                }
            }
            done.open()
        }
        try runtime.execute(on: 0) { _ in
            for i in 0..<total { queue.push(i) }
        }
        done.wait()
        #expect(result.ok)
        #expect(result.sum == total * (total - 1) / 2)
        #expect(queue.pop() == nil)
        #expect(queue.isEmpty)
    }

    @Test("segments fill, link, drain and are reused; order survives every boundary")
    func segments() {
        let queue = SPSCQueue<Int>(segmentCapacity: 4)
        var next = 0, expected = 0
        // Bursts of every size around the segment capacity, drained partly and fully.
        for burst in [1, 3, 4, 5, 8, 9, 17, 2, 40] {
            for _ in 0..<burst { queue.push(next); next += 1 }
            for _ in 0..<(burst / 2) { #expect(queue.pop() == expected); expected += 1 }
        }
        while let v = queue.pop() { #expect(v == expected); expected += 1 }
        #expect(expected == next)
        #expect(queue.isEmpty)
    }

    @Test("elements that own memory are released, drained or not")
    func ownership() {
        final class Token { let n: Int; init(_ n: Int) { self.n = n } }
        weak var probe: Token?
        do {
            let queue = SPSCQueue<Token>(segmentCapacity: 4)
            for i in 0..<10 {
                let t = Token(i)
                if i == 9 { probe = t }
                queue.push(t)
            }
            #expect(queue.pop()?.n == 0)
            #expect(probe != nil)
        }
        #expect(probe == nil, "the queue released what it still held")
    }

    @Test("thousands of cross-core messages from one core all arrive, in the order sent")
    func manyMessages() throws {
        final class Count: @unchecked Sendable { var n = 0; var inOrder = true }
        let count = Count()
        let done = Latch()
        let runtime = try Runtime(cores: 2, pinThreads: false)
        defer { runtime.shutdown() }
        let messages = 50_000  // many segments, and more than one turn's mailbox budget
        try runtime.execute(on: 0) { core0 in
            let core1 = core0.runtime.core(1)
            for i in 0..<messages {
                core1.execute { _ in
                    if count.n != i { count.inOrder = false }
                    count.n += 1
                    if count.n == messages { done.open() }
                }
            }
        }
        done.wait()
        #expect(count.n == messages)
        #expect(count.inOrder)
    }
}
