import Testing
@testable import RedisService

@Suite("Keyspace and glob patterns")
struct KeyspaceTests {
    @Test("glob patterns match as Redis's stringmatch does")
    func glob() {
        func m(_ p: String, _ s: String, noCase: Bool = false) -> Bool { globMatch(Array(p.utf8), Array(s.utf8), noCase: noCase) }
        #expect(m("*", "") && m("*", "abc") && m("a*c", "abbbc") && !m("a*c", "abcd"))
        #expect(m("h?llo", "hello") && !m("h?llo", "hllo"))
        #expect(m("h[ae]llo", "hallo") && !m("h[ae]llo", "hillo") && m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"))
        #expect(m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo") && m("h[b-a]llo", "hallo"))
        #expect(m("a\\*b", "a*b") && !m("a\\*b", "axb"))
        #expect(m("HELLO", "hello", noCase: true) && !m("HELLO", "hello"))
        // No pattern takes exponential time: many stars against a long miss.
        #expect(!m(String(repeating: "a*", count: 30) + "b", String(repeating: "a", count: 3000)))
    }

    @Test("keys past their deadline are gone when touched, and active expiry removes them")
    func expiry() {
        var ks = Keyspace()
        ks.set(RedisKey("a"), .string([1]))
        ks.set(RedisKey("b"), .string([2]))
        ks.setDeadline(RedisKey("a"), 1000)
        ks.setDeadline(RedisKey("b"), 5000)
        #expect(ks.get(RedisKey("a"), now: 999) != nil)
        #expect(ks.get(RedisKey("a"), now: 1000) == nil && ks.count == 1 && ks.expired == 1)
        #expect(ks.keys(now: 6000).isEmpty)
        #expect(ks.expireSome(now: 6000) == 1 && ks.count == 0 && ks.volatileCount == 0)
        ks.set(RedisKey("c"), .string([3]))
        ks.setDeadline(RedisKey("c"), 10)
        ks.set(RedisKey("c"), .string([4]))  // a plain SET clears the deadline
        #expect(ks.deadline(RedisKey("c")) == nil)
    }
}
