import Testing
@testable import HereticBench
import HereticCore

@Suite("Benchmarks check themselves")
struct BenchTests {
    @Test("the closed-form checksum matches walking the ring", arguments: [2, 3, 7, 1000])
    func closedForm(tasks: Int) {
        var checksum: UInt64 = 0
        for hop in 0..<5000 {
            #expect(Flower.expectedChecksum(hops: UInt64(hop), tasks: UInt64(tasks)) == checksum)
            checksum &+= UInt64(hop % tasks + 1)
        }
    }

    @Test("the closed form survives wrap-around of 64-bit arithmetic")
    func closedFormWraps() {
        let n: UInt64 = 4_000_000_000
        let hops = n * 3 + 17
        let laps = Flower.expectedChecksum(hops: n, tasks: n)
        let expected = laps &* 3 &+ Flower.expectedChecksum(hops: 17, tasks: n)
        #expect(Flower.expectedChecksum(hops: hops, tasks: n) == expected)
    }

    @Test("events: a small ring on each core verifies its checksum")
    func events() throws {
        let r = try EventsBenchmark(tasks: 10_000, cores: 2, seconds: 0.2).run()
        #expect(r.verified)
        #expect(r["checksum_ok"]?.human == "yes")
        #expect((r["switches_per_sec"]?.asDouble ?? 0) > 0)
        for key in ["bench", "tasks", "cores", "switches_per_sec", "per_core_switches_per_sec", "bytes_per_task"] {
            #expect(r[key] != nil, "field \(key)")
        }
    }

    @Test("sleep: completions are counted and lateness recorded")
    func sleep() throws {
        let r = try SleepBenchmark(tasks: 2000, periodMilliseconds: 20, seconds: 0.6, cores: 2).run()
        #expect(r.verified)
        #expect((r["completions_per_sec"]?.asDouble ?? 0) > 0)
        for key in ["bench", "tasks", "period_ms", "completions_per_sec", "ideal_per_sec",
                    "lateness_p50_ms", "lateness_p99_ms", "lateness_max_ms", "bytes_per_task"] {
            #expect(r[key] != nil, "field \(key)")
        }
    }

    @Test("async-events: both executors pass the flower and verify it")
    func asyncEvents() throws {
        let r = try AsyncEventsBenchmark(tasks: 100, seconds: 0.2).run()
        #expect(r.verified)
        for key in ["bench", "tasks", "heretic_switches_per_sec", "global_switches_per_sec", "ratio", "bytes_per_task"] {
            #expect(r[key] != nil, "field \(key)")
        }
    }

    @Test("udp-echo and tcp-echo: every echo verified in both layouts", arguments: StackLayout.allCases)
    func echoes(layout: StackLayout) throws {
        let u = try UDPEchoBenchmark(layout: layout, flows: 16, seconds: 0.2).run()
        #expect(u.verified && (u["echoes_verified"]?.asDouble ?? 0) > 0)
        let t = try TCPEchoBenchmark(layout: layout, connections: 8, seconds: 0.2).run()
        #expect(t.verified && (t["echoes_verified"]?.asDouble ?? 0) > 0)
        for key in ["bench", "layout", "conns", "echoes_per_sec", "rtt_p50_us", "rtt_p99_us", "rtt_p999_us"] {
            #expect(t[key] != nil, "field \(key)")
        }
    }

    @Test("tcp-short: connect, echo, close cycles all succeed and TIME-WAIT is kept exactly")
    func short() throws {
        let r = try TCPShortBenchmark(layout: .loopback, connections: 8, seconds: 0.3).run()
        #expect(r.verified)
        #expect((r["failures"]?.asDouble ?? 1) == 0)
        // The server's TIME-WAIT count agrees with the slots in TIME-WAIT, with its open
        // connections, and with the cycles completed (one entry each, or an overflow).
        if case .bool(let consistent)? = r["time_wait_consistent"] { #expect(consistent) } else { Issue.record("no time_wait_consistent") }
        for key in ["bench", "layout", "conns", "cycles_per_sec", "time_wait_entries"] {
            #expect(r[key] != nil, "field \(key)")
        }
    }

    @Test("tcp-hold: thousands of connections established, held, and all echoing")
    func hold() throws {
        let r = try TCPHoldBenchmark(connections: 3000, seconds: 0.3).run()
        #expect(r.verified)
        for key in ["bench", "conns", "establish_per_sec", "rss_bytes", "bytes_per_conn", "echoes_per_sec"] {
            #expect(r[key] != nil, "field \(key)")
        }
    }

    @Test("tcp-stream: bulk data flows both ways, every byte checked", arguments: StackLayout.allCases)
    func stream(layout: StackLayout) throws {
        let r = try TCPStreamBenchmark(seconds: 0.3, layout: layout).run()
        #expect(r.verified)
        #expect((r["gbit_per_sec"]?.asDouble ?? 0) > 0)
    }

    @Test("bad arguments are refused with a message")
    func badArguments() {
        #expect(throws: BenchError.self) { try EventsBenchmark(tasks: 1, cores: 1, seconds: 1).run() }
        #expect(throws: BenchError.self) { try SleepBenchmark(tasks: 10, periodMilliseconds: 1000, seconds: 1).run() }
        #expect(throws: BenchError.self) { try AsyncEventsBenchmark(tasks: 5, seconds: 0).run() }
    }

    @Test("results print as one JSON object per line")
    func json() {
        var r = BenchResult(bench: "x", verified: true)
        r.add("n", 3)
        r.add("rate", 1.5)
        r.add("ok", true)
        r.add("name", "a\"b")
        #expect(r.json == #"{"bench":"x","n":3,"rate":1.500,"ok":true,"name":"a\"b"}"#)
        #expect(formatFixed(-0.004, digits: 2) == "0.00")
        #expect(formatFixed(12.345, digits: 1) == "12.3")
        #expect(groupDigits("1234567") == "1,234,567")
    }
}
