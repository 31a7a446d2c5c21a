import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// `tcp-echo --path tap`: Linux's own TCP is the client, in a namespace on the far side of a
/// TAP device, and Heretic's stack the echo server. The client (Python, one process, one
/// selector loop) keeps `connections` connections each looping: send 150 formatted bytes,
/// wait for the echo, compare it byte for byte, time it.
public struct TapEchoBenchmark {
    public var connections: Int
    public var seconds: Double

    public init(connections: Int, seconds: Double) {
        self.connections = connections
        self.seconds = seconds
    }

    static let client = """
        import json, selectors, socket, sys, time
        host, conns, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
        fill = bytes((97 + i % 26) for i in range(300))
        def message(flow, seq):
            head = b"flow=%d seq=%d " % (flow, seq)
            return (head + fill)[:150]
        sel = selectors.DefaultSelector()
        state = {}
        for f in range(conns):
            s = socket.create_connection((host, 7))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
            state[s] = [f, 0, b"", 0]
            sel.register(s, selectors.EVENT_READ)
        rtts, bad, echoes = [], 0, 0
        start = time.perf_counter()
        deadline = start + seconds
        for s, st in state.items():
            st[3] = time.perf_counter_ns(); s.send(message(st[0], st[1]))
        while time.perf_counter() < deadline:
            for key, _ in sel.select(0.1):
                s = key.fileobj; st = state[s]
                st[2] += s.recv(4096)
                if len(st[2]) < 150: continue
                now = time.perf_counter_ns()
                if st[2] != message(st[0], st[1]): bad += 1
                echoes += 1; rtts.append((now - st[3]) // 1000)
                st[1] += 1; st[2] = b""; st[3] = now
                s.send(message(st[0], st[1]))
        elapsed = time.perf_counter() - start
        rtts.sort()
        pick = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))] if rtts else 0
        print(json.dumps({"echoes": echoes, "bad": bad, "seconds": elapsed,
                          "p50": pick(0.5), "p99": pick(0.99), "p999": pick(0.999)}))
        """

    public func run() throws -> BenchResult {
        guard connections >= 1, connections <= 10_000 else { throw BenchError("--conns must be between 1 and 10000 with --path tap") }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let (ok, why) = TapTestbed.canRun
        guard ok else { throw BenchError("--path tap \(why)") }
        let id = getpid() % 100_000
        let bed = try TapTestbed(namespace: "hrt-bench-\(id)", tap: "hrtb\(id)")
        defer { bed.remove() }
        let stack = try TapStack(device: bed.device, mac: bed.stackMAC, address: bed.stackAddress)
        defer { stack.shutdown() }
        return try Self.measure(layout: "tap", connections: connections, seconds: seconds, stack: stack) {
            bed.run($0)
        }
    }

    /// Runs the Linux client (through `run`, in the namespace) against `stack` and reports
    /// what it measured, with the stack's counters: the TAP and XDP paths share this.
    static func measure(layout: String, connections: Int, seconds: Double, stack: TapStack,
                        run: ([String]) -> (status: Int32, output: String)) throws -> BenchResult {
        let address = try stack.onCore { $0.address }
        let r = run(["python3", "-c", Self.client, "\(address)", "\(connections)", "\(seconds)"])
        guard r.status == 0, let line = r.output.split(separator: "\n").last(where: { $0.hasPrefix("{") }) else {
            throw BenchError("the Linux client failed: \(r.output)")
        }
        // {"echoes": 123, "bad": 0, ...}: flat, numbers only.
        var fields: [String: Double] = [:]
        for pair in line.dropFirst().dropLast().split(separator: ",") {
            let kv = pair.split(separator: ":")
            guard kv.count == 2 else { continue }
            let key = kv[0].filter { $0 != "\"" && $0 != " " }
            fields[String(key)] = Double(kv[1].filter { $0 != " " })
        }
        func field(_ name: String) -> Double { fields[name] ?? -1 }
        let echoes = field("echoes"), bad = field("bad"), elapsed = field("seconds")
        var result = BenchResult(bench: "tcp-echo", verified: bad == 0 && echoes > 0)
        result.add("layout", layout)
        result.add("conns", connections)
        result.add("payload_bytes", 150)
        result.add("seconds", seconds)
        result.add("echoes_per_sec", (echoes / max(elapsed, 1e-9)).rounded())
        result.add("rtt_p50_us", Int(field("p50")))
        result.add("rtt_p99_us", Int(field("p99")))
        result.add("rtt_p999_us", Int(field("p999")))
        result.add("echoes_verified", Int(echoes))
        result.add("mismatches", Int(bad))
        result.add("client", "Linux TCP, Python selector loop, one process")
        // The stack's side of the run: drops by reason and TCP's own counters.
        let counters = try stack.onCore { iface -> [(String, Int)] in
            let t = iface.tcp
            return iface.counters.nonZero + [("retransmissions", t.retransmissions), ("challenge_acks", t.challengeAcks),
                                              ("syn_cookies_sent", t.synCookiesSent), ("resets_sent", t.resetsSent)]
        }
        let wanted: Set<String> = ["framesReceived", "framesSent", "badChecksums", "tcpErrors", "ipv4Errors",
                                   "noBuffers", "transmitDrops", "retransmissions", "challenge_acks",
                                   "syn_cookies_sent", "resets_sent"]
        for (name, value) in counters where wanted.contains(name) { result.add(name, value) }
        return result
    }
}
