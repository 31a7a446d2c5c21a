import Testing
@testable import RedisService

/// Runs `parser` over `chunks`, collecting the commands (as strings) and the error, if any.
func parse(_ chunks: [[UInt8]], limits: RESPLimits = RESPLimits()) -> (commands: [[String]], error: RESPParseError?, held: Int) {
    var parser = RESPParser(limits: limits)
    var commands: [[String]] = []
    for chunk in chunks {
        let error = chunk.withUnsafeBytes { bytes in
            parser.feed(bytes) { command in
                commands.append((0..<command.count).map { String(decoding: command[$0], as: UTF8.self) })
            }
        }
        if let error { return (commands, error, parser.bufferedBytes) }
    }
    return (commands, nil, parser.bufferedBytes)
}

func bytes(_ s: String) -> [UInt8] { Array(s.utf8) }

/// A command as clients send it: an array of bulk strings.
func multibulk(_ args: [[UInt8]]) -> [UInt8] {
    var out = bytes("*\(args.count)\r\n")
    for a in args { out += bytes("$\(a.count)\r\n") + a + bytes("\r\n") }
    return out
}

/// A small deterministic generator (SplitMix64), so that every run sees the same cases.
struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

@Suite("RESP request parser")
struct RESPParserTests {
    @Test("multibulk commands, pipelined, come out whole and in order")
    func pipelined() {
        let input = multibulk([bytes("SET"), bytes("k"), bytes("v a l")]) + multibulk([bytes("GET"), bytes("k")])
            + multibulk([bytes("ECHO"), []])
        let r = parse([input])
        #expect(r.error == nil && r.held == 0)
        #expect(r.commands == [["SET", "k", "v a l"], ["GET", "k"], ["ECHO", ""]])
    }

    @Test("a command split at every byte boundary parses the same, keeping only the unfinished part")
    func everySplit() {
        let input = multibulk([bytes("HSET"), bytes("h"), bytes("f"), Array(repeating: 0x41, count: 300)])
            + bytes("PING\r\n") + multibulk([bytes("GET"), bytes("x\r\ny")])
        let whole = parse([input]).commands
        #expect(whole.count == 3)
        for cut in 1..<input.count {
            let r = parse([Array(input[..<cut]), Array(input[cut...])])
            #expect(r.error == nil && r.commands == whole, "cut at \(cut)")
        }
        // One byte at a time.
        let r = parse(input.map { [$0] })
        #expect(r.commands == whole && r.held == 0)
    }

    @Test("random commands in random pieces parse back byte-exact")
    func randomRoundTrip() {
        var rng = SplitMix(state: 7)
        for _ in 0..<200 {
            var expected: [[String]] = []
            var input: [UInt8] = []
            for _ in 0..<(1 + rng.below(8)) {
                let args = (0..<(1 + rng.below(5))).map { _ in
                    (0..<rng.below(rng.below(4) == 0 ? 5000 : 20)).map { _ in UInt8(0x21 + rng.below(90)) }
                }
                expected.append(args.map { String(decoding: $0, as: UTF8.self) })
                input += multibulk(args)
            }
            var chunks: [[UInt8]] = []
            var at = 0
            while at < input.count {
                let n = min(input.count - at, 1 + rng.below(rng.below(2) == 0 ? 8 : 3000))
                chunks.append(Array(input[at..<at + n]))
                at += n
            }
            let r = parse(chunks)
            #expect(r.error == nil && r.commands == expected && r.held == 0)
        }
    }

    @Test("inline commands: spaces, quotes and escapes as redis-cli sends them")
    func inline() {
        let r = parse([bytes("set  key \"a b\\n\\x41\" 'it\\'s'\r\nPING\n\r\n   \r\nget key\r\n")])
        #expect(r.error == nil)
        #expect(r.commands == [["set", "key", "a b\nA", "it's"], ["PING"], ["get", "key"]])
        #expect(parse([bytes("echo \"\"\r\n")]).commands == [["echo", ""]])
    }

    @Test("empty and negative counts are skipped, as Redis does")
    func emptyCommands() {
        let r = parse([bytes("*0\r\n*-1\r\nPING\r\n")])
        #expect(r.error == nil && r.commands == [["PING"]])
    }

    @Test("malformed requests get Redis's protocol errors; the commands before them still run")
    func errors() {
        #expect(parse([bytes("*abc\r\n")]).error == .invalidMultibulkLength)
        #expect(parse([bytes("*01\r\n")]).error == .invalidMultibulkLength)
        #expect(parse([bytes("*2\r\n:1\r\n")]).error == .expectedDollar(UInt8(ascii: ":")))
        #expect(parse([bytes("*1\r\n$-5\r\n")]).error == .invalidBulkLength)
        #expect(parse([bytes("*1\r\n$x\r\n")]).error == .invalidBulkLength)
        #expect(parse([bytes("*1\r\n$99999999999999999999\r\n")]).error == .invalidBulkLength)
        #expect(parse([bytes("set \"a\r\n")]).error == .unbalancedQuotes)
        #expect(parse([bytes("set \"a\"b\r\n")]).error == .unbalancedQuotes)
        let r = parse([bytes("PING\r\n*1\r\n!")])
        #expect(r.commands == [["PING"]] && r.error == .expectedDollar(UInt8(ascii: "!")))
        #expect(RESPParseError.invalidBulkLength.message == "ERR Protocol error: invalid bulk length")
    }

    @Test("declared lengths beyond the limits are refused before anything is held for them")
    func limits() {
        var small = RESPLimits()
        small.maxBulkLength = 1000
        small.maxArguments = 10
        small.maxInlineLength = 100
        small.maxQueryBuffer = 5000
        #expect(parse([bytes("*1\r\n$1001\r\n")], limits: small).error == .invalidBulkLength)
        #expect(parse([bytes("*11\r\n")], limits: small).error == .invalidMultibulkLength)
        #expect(parse([Array(repeating: 0x61, count: 101)], limits: small).error == .tooBigInlineRequest)
        #expect(parse([bytes("*") + Array(repeating: 0x31, count: 101)], limits: small).error == .tooBigMultibulkCount)
        #expect(parse([bytes("*1\r\n$") + Array(repeating: 0x31, count: 101)], limits: small).error == .tooBigBulkCount)
        // Many commands, each within the limits, but one unfinished past the query buffer.
        let big = multibulk((0..<10).map { _ in Array(repeating: 0x62, count: 999) })
        let r = parse(stride(from: 0, to: big.count, by: 700).map { Array(big[$0..<min($0 + 700, big.count)]) }, limits: small)
        #expect(r.error == .queryBufferLimit && r.held <= 5000)
        // The default: Redis's 512 MB bulk.
        #expect(parse([bytes("*1\r\n$536870913\r\n")]).error == .invalidBulkLength)
        #expect(parse([bytes("*1\r\n$536870912\r\n")]).error == nil)
    }

    @Test("random bytes never trap, and what is held stays within the query buffer")
    func fuzz() {
        var rng = SplitMix(state: 42)
        var limits = RESPLimits()
        limits.maxQueryBuffer = 1 << 16
        let alphabet = bytes("*$\r\n-0123456789 \"'\\xabcPINGSET")
        for _ in 0..<3000 {
            var parser = RESPParser(limits: limits)
            for _ in 0..<(1 + rng.below(6)) {
                let chunk = (0..<rng.below(200)).map { _ in rng.below(4) == 0 ? UInt8(truncatingIfNeeded: rng.next()) : alphabet[rng.below(alphabet.count)] }
                let error = chunk.withUnsafeBytes { b in parser.feed(b) { c in _ = c.count } }
                #expect(parser.bufferedBytes <= limits.maxQueryBuffer)
                if error != nil { break }
            }
        }
    }

    @Test("command names compare without regard to case")
    func names() {
        var seen = false
        _ = bytes("sEt k v\r\n").withUnsafeBytes { b in
            var p = RESPParser()
            return p.feed(b) { c in seen = c.argument(0, is: "SET") && !c.argument(1, is: "SET") }
        }
        #expect(seen)
    }
}

@Suite("RESP replies")
struct RESPWriterTests {
    @Test("RESP2 and RESP3 forms")
    func forms() {
        var w2 = RESPWriter(version: 2), w3 = RESPWriter(version: 3)
        for i in 0..<2 {
            var w = i == 0 ? w2 : w3
            w.simple("OK"); w.error("ERR x"); w.integer(-3); w.bulk("hi"); w.null(); w.nullArray()
            w.map(1); w.set(2); w.push(3); w.double(1.5); w.double(2); w.boolean(true)
            if i == 0 { w2 = w } else { w3 = w }
        }
        #expect(String(decoding: w2.bytes, as: UTF8.self)
                == "+OK\r\n-ERR x\r\n:-3\r\n$2\r\nhi\r\n$-1\r\n*-1\r\n*2\r\n*2\r\n*3\r\n$3\r\n1.5\r\n$1\r\n2\r\n:1\r\n")
        #expect(String(decoding: w3.bytes, as: UTF8.self)
                == "+OK\r\n-ERR x\r\n:-3\r\n$2\r\nhi\r\n_\r\n_\r\n%1\r\n~2\r\n>3\r\n,1.5\r\n,2\r\n#t\r\n")
    }
}
