import Testing
@testable import HereticNet

@Suite("Connection table")
struct ConnectionTableTests {
    @Test("matches a dictionary through a million seeded inserts, updates and removals")
    func againstDictionary() {
        var table = ConnectionTable(capacity: 8)
        var reference: [UInt64: UInt64] = [:]
        var rng = SplitMix64(seed: 77)
        // Few distinct keys relative to operations, so removals hit long probe runs; key 0
        // (the empty bucket's marker) among them.
        let keySpace = [0] + (0..<5000).map { _ in rng.next() | 1 }
        for step in 0..<1_000_000 {
            let key = keySpace[Int(rng.next() % UInt64(keySpace.count))]
            switch rng.next() % 3 {
            case 0, 1:
                table[key] = UInt64(step)
                reference[key] = UInt64(step)
            default:
                table[key] = nil
                reference[key] = nil
            }
            if step % 100_000 == 0 {
                #expect(table.count == reference.count)
            }
        }
        #expect(table.count == reference.count)
        for key in keySpace { #expect(table[key] == reference[key]) }
    }

    @Test("colliding keys stay reachable after removals in the middle of their run")
    func collisions() {
        var table = ConnectionTable(capacity: 8)
        let keys: [UInt64] = (1...40).map { $0 << 40 }  // many share high bits
        for (i, k) in keys.enumerated() { table[k] = UInt64(i) }
        for k in keys where (k >> 40) % 3 == 0 { table[k] = nil }
        for (i, k) in keys.enumerated() {
            #expect(table[k] == ((k >> 40) % 3 == 0 ? nil : UInt64(i)))
        }
    }

    @Test("grows for a crowd, shrinks back when it leaves, and stays correct throughout")
    func shrinks() {
        var table = ConnectionTable(capacity: 8)
        var rng = SplitMix64(seed: 5)
        let keys = (0..<200_000).map { _ in rng.next() | 1 }
        for (i, k) in keys.enumerated() { table[k] = UInt64(i) }
        let grown = table.capacity
        #expect(grown >= 400_000)
        for (i, k) in keys.enumerated() where i % 100 != 0 { table[k] = nil }
        #expect(table.count == 2000)
        #expect(table.capacity <= 16_384, "the table shrank with the crowd (was \(grown) slots)")
        for (i, k) in keys.enumerated() { #expect(table[k] == (i % 100 == 0 ? UInt64(i) : nil)) }
        for (i, k) in keys.enumerated() where i % 100 == 0 { table[k] = nil }
        #expect(table.count == 0 && table.capacity == 2048)
    }
}
