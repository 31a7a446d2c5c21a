import Testing
@testable import HereticCore

@Suite("Mailboxes")
struct MailboxTests {
    @Test("an SPSC ring hands over every element in order between two threads")
    func spscAcrossThreads() throws {
        let ring = SPSCRing<UInt64>(capacity: 64)  // small, so the producer meets a full ring
        let total: UInt64 = 1_000_000
        let done = Latch()
        final class Result: @unchecked Sendable { var ok = true; var sum: UInt64 = 0; var fullSeen = 0 }
        let result = Result()
        let runtime = try Runtime(cores: 2, pinThreads: false)
        defer { runtime.shutdown() }
        try runtime.execute(on: 1) { _ in
            var expected: UInt64 = 0
            while expected < total {
                if let v = ring.pop() {
                    if v != expected { result.ok = false }
                    result.sum &+= v
                    expected += 1
                }
            }
            done.open()
        }
        try runtime.execute(on: 0) { _ in
            var i: UInt64 = 0
            while i < total {
                if ring.push(i) == nil { i += 1 } else { result.fullSeen += 1 }
            }
        }
        done.wait()
        #expect(result.ok)
        #expect(result.sum == total * (total - 1) / 2)
        #expect(ring.pop() == nil)
    }

    @Test("a full ring returns the element to the producer")
    func fullRing() {
        let ring = SPSCRing<Int>(capacity: 4)
        for i in 0..<4 { #expect(ring.push(i) == nil) }
        #expect(ring.push(99) == 99)
        #expect(ring.pop() == 0)
        #expect(ring.push(4) == nil)
        #expect((1...4).map { _ in ring.pop() } == [1, 2, 3, 4])
        #expect(ring.isEmpty)
    }

    @Test("thousands of cross-core messages all arrive, beyond the ring's capacity")
    func manyMessages() throws {
        final class Count: @unchecked Sendable { var n = 0 }
        let count = Count()
        let done = Latch()
        let runtime = try Runtime(cores: 2, pinThreads: false)
        defer { runtime.shutdown() }
        let messages = 50_000  // more than the 4096-slot mailbox: overflow takes the slow path
        try runtime.execute(on: 0) { core0 in
            let core1 = core0.runtime.core(1)
            for _ in 0..<messages {
                core1.execute { _ in
                    count.n += 1
                    if count.n == messages { done.open() }
                }
            }
        }
        done.wait()
        #expect(count.n == messages)
    }
}
