import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// `bench hostile --path tap`: the same proof with Linux on the other side of a TAP device.
/// The healthy clients are Linux's TCP (a Python asyncio loop in the namespace, every echo
/// checked), and the attacker is Linux-side tooling: Python writing raw frames on an
/// AF_PACKET socket (SYN flood from made-up neighbours, the fuzzers' kinds of mutant, blind
/// RSTs and SYNs on the healthy 4-tuples, ARP floods and replies that try to move Linux's
/// address to another MAC) plus ordinary sockets that ask for 100 MB and never read. The
/// MSS-9000 and out-of-order attackers need handshakes Linux's own TCP would reset: they run
/// on the switch path only.
public struct HostileTapBenchmark {
    public var seconds: Double
    public var connections: Int
    public var framesPerSecond: Int
    public var reassemblyLimit = 16 << 20
    public var sendMemoryCap = 32 << 20
    public var poolCapacity = 16_384

    public init(seconds: Double, connections: Int, framesPerSecond: Int) {
        self.seconds = seconds
        self.connections = connections
        self.framesPerSecond = framesPerSecond
    }

    public var memoryBound: Int { poolCapacity * PacketPool.bufferSize + reassemblyLimit + sendMemoryCap + (64 << 20) }

    static let healthy = """
        import asyncio, json, sys, time
        HOST, N, PHASE, TAG = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
        async def main():
            conns = [await asyncio.open_connection(HOST, 7) for _ in range(N)]
            open(TAG + "-ports", "w").write(" ".join(str(w.get_extra_info("sockname")[1]) for r, w in conns))
            t0 = time.time()
            open(TAG + "-ready", "w").write(repr(t0))
            counts, bad, rounds = [0, 0, 0], 0, 0
            while time.time() < t0 + 3 * PHASE:
                for i, (r, w) in enumerate(conns):
                    w.write(b"%d:%d;" % (i, rounds))
                for i, (r, w) in enumerate(conns):
                    want = b"%d:%d;" % (i, rounds)
                    got = await asyncio.wait_for(r.readexactly(len(want)), 30)
                    if got != want: bad += 1
                    else: counts[min(2, int((time.time() - t0) / PHASE))] += 1
                rounds += 1
            return {"counts": counts, "bad": bad, "rounds": rounds, "elapsed": time.time() - t0}
        try:
            print("RESULT " + json.dumps(asyncio.run(main())))
        except Exception as e:
            print("RESULT " + json.dumps({"error": repr(e)}))
        """

    static let attacker = """

        PHASE, RATE, PORTS = float(sys.argv[5]), int(sys.argv[6]), [int(p) for p in open(sys.argv[7]).read().split()]
        NET = DST_IP.rsplit(".", 1)[0] + "."
        def udp(sport, dport, payload):
            h = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
            return h + payload
        def arp(op, sender_mac, sender_ip, target_ip, dst=b"\\xff" * 6):
            body = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sender_mac, socket.inet_aton(sender_ip),
                               b"\\0" * 6, socket.inet_aton(target_ip))
            return dst + SRC_MAC + struct.pack("!H", 0x0806) + body
        def fix(f):
            f = bytearray(f)
            if len(f) < 34 or f[12:14] != b"\\x08\\x00": return bytes(f)
            ihl = (f[14] & 15) * 4
            if ihl < 20 or 14 + ihl > len(f): return bytes(f)
            f[24:26] = b"\\0\\0"; f[24:26] = struct.pack("!H", csum(bytes(f[14:14 + ihl])))
            proto, l4 = f[23], 14 + ihl
            at = 16 if proto == 6 else 6 if proto == 17 else -1
            if at < 0 or len(f) - l4 < at + 2: return bytes(f)
            f[l4 + at:l4 + at + 2] = b"\\0\\0"
            pseudo = bytes(f[26:34]) + struct.pack("!BBH", 0, proto, len(f) - l4)
            f[l4 + at:l4 + at + 2] = struct.pack("!H", csum(pseudo + bytes(f[l4:])))
            return bytes(f)
        def mutate(f):
            f = bytearray(f)
            k = random.randrange(5)
            if k == 0:
                for _ in range(random.randint(1, 4)): f[random.randrange(len(f))] ^= 1 << random.randrange(8)
            elif k == 1: del f[random.randint(1, len(f)):]
            elif k == 2: f[random.randrange(min(len(f), 80))] = random.randrange(256)
            elif k == 3 and len(f) >= 54: f[random.choice([47, 38, 39, 42, 43])] = random.randrange(256)
            else: f += bytes(random.randrange(256) for _ in range(random.randint(1, 64)))
            return bytes(f)
        templates = [
            eth(ipv4(tcp(4000, 7, 1, 0, 0x02, options=b"\\x02\\x04\\x05\\xb4\\x01\\x03\\x03\\x07"))),
            eth(ipv4(tcp(4001, 7, 9, 9, 0x18, payload=b"a" * 100))),
            eth(ipv4(tcp(4002, 80, 9, 9, 0x11))),
            eth(ipv4(udp(5000, 7, b"b" * 64), proto=17)),
            arp(1, SRC_MAC, SRC_IP, DST_IP),
        ]
        # Readers that ask for 100 MB and never read: their windows close.
        greedy = []
        for _ in range(32):
            try:
                s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(2); s.connect((DST_IP, 80)); s.sendall(b"GET /bytes/100000000 HTTP/1.1\\r\\n\\r\\n")
                greedy.append(s)
            except OSError: pass
        sent = {"syn_flood": 0, "malformed": 0, "blind_rst_syn": 0, "arp_flood": 0}
        n, start = 0, time.time()
        while time.time() < start + PHASE:
            for _ in range(50):
                k = n % 10
                n += 1
                if k in (0, 2, 5):
                    src = NET + str(random.randint(10, 250))
                    send(eth(ipv4(tcp(random.randint(1024, 65535), random.choice([7, 80]), random.getrandbits(32), 0, 0x02, src=src), src=src)))
                    sent["syn_flood"] += 1
                elif k in (1, 4, 7):
                    f = mutate(random.choice(templates))
                    send(fix(f) if random.random() < 0.5 else f)
                    sent["malformed"] += 1
                elif k in (3, 8, 9):
                    flags = random.choice([0x04, 0x02, 0x14])
                    send(eth(ipv4(tcp(random.choice(PORTS), 7, random.getrandbits(32), random.getrandbits(32), flags))))
                    sent["blind_rst_syn"] += 1
                else:
                    mac = bytes([2]) + random.randbytes(5)
                    if random.random() < 0.5:
                        send(arp(1, mac, NET + str(random.randint(10, 250)), DST_IP))
                    else:
                        send(arp(2, mac, SRC_IP, DST_IP, dst=DST_MAC))   # poisoning: the Linux address at another MAC
                    sent["arp_flood"] += 1
            ahead = start + n / RATE - time.time()
            if ahead > 0: time.sleep(ahead)
        sent["greedy_readers"] = len(greedy)
        print("SENT " + " ".join("%s=%d" % kv for kv in sent.items()))
        """

    public func run() throws -> BenchResult {
        guard seconds >= 3 else { throw BenchError("--seconds must be at least 3 on the TAP path (three phases)") }
        guard (1...4000).contains(connections) else { throw BenchError("--conns must be between 1 and 4000 on the TAP path") }
        let (can, why) = TapTestbed.canRun
        guard can else { throw BenchError("the TAP path \(why)") }
        let id = getpid() % 100_000
        let bed = try TapTestbed(namespace: "heretic-hostile-\(id)", tap: "hrh\(id)")
        defer { bed.remove() }
        let memory = SendMemory(capacity: sendMemoryCap)
        let stack = try TapStack(device: bed.device, pool: PacketPool(capacity: poolCapacity), mac: bed.stackMAC,
                                 address: bed.stackAddress, sendMemory: memory)
        defer { stack.shutdown() }
        let limit = reassemblyLimit
        _ = try stack.onCore { $0.tcp.reassemblyLimit = limit }
        precondition(!Self.healthy.contains("'") && !Self.attacker.contains("'") && !TapTestbed.rawFrames.contains("'"),
                     "Heretic: the scripts go through sh in single quotes")
        let tag = "/tmp/heretic-hostile-\(id)"
        let phase = seconds / 3
        _ = runCommand(["rm", "-f", "\(tag)-ready", "\(tag)-ports", "\(tag)-healthy.log", "\(tag)-attack.log"])
        defer { _ = runCommand(["rm", "-f", "\(tag)-ready", "\(tag)-ports", "\(tag)-healthy.log", "\(tag)-attack.log"]) }
        _ = runCommand(["sh", "-c", "ip netns exec \(bed.namespace) python3 -c '\(Self.healthy)' \(bed.stackAddress) \(connections) \(phase) \(tag) > \(tag)-healthy.log 2>&1 &"])
        // Until every healthy connection is up, and its phases' clock has started.
        var t0 = 0.0
        for _ in 0..<600 {
            let text = runCommand(["cat", "\(tag)-ready"])
            if text.status == 0, let t = Double(text.output) { t0 = t; break }
            usleep(50_000)
        }
        guard t0 > 0 else { throw BenchError("the healthy clients did not connect: \(runCommand(["cat", "\(tag)-healthy.log"]).output)") }
        func wallClock() -> Double {
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }
        while wallClock() < t0 + phase { usleep(10_000) }
        let rssBefore = ProcessStats.residentBytes()
        var peak = rssBefore
        let attack = TapTestbed.rawFrames + "\n" + Self.attacker
        _ = runCommand(["sh", "-c", "ip netns exec \(bed.namespace) python3 -c '\(attack)' \(bed.device.name) \(bed.linuxAddress) \(bed.stackAddress) \(bed.stackMAC) \(phase) \(framesPerSecond) \(tag)-ports > \(tag)-attack.log 2>&1 &"])
        while wallClock() < t0 + 2 * phase {
            usleep(20_000)
            peak = max(peak, ProcessStats.residentBytes())
        }
        var healthyLog = "", attackLog = ""
        for _ in 0..<Int(phase * 20 + 600) where !healthyLog.contains("RESULT") || !attackLog.contains("SENT") {
            usleep(50_000)
            healthyLog = runCommand(["cat", "\(tag)-healthy.log"]).output
            attackLog = runCommand(["cat", "\(tag)-attack.log"]).output
        }
        let rssAfter = ProcessStats.residentBytes()
        let server = try stack.onCore { ServerReport($0, memory: memory, reassemblyLimit: limit) }

        // {"counts": [a, b, c], "bad": n, "rounds": n, "elapsed": s} or {"error": ...}
        let result = healthyLog.split(separator: "\n").first { $0.hasPrefix("RESULT ") }.map { String($0.dropFirst(7)) } ?? "{}"
        func number(_ key: String) -> Int? {
            guard let r = result.range(of: "\"\(key)\": ") else { return nil }
            return Int(result[r.upperBound...].prefix { $0.isNumber })
        }
        let counts: [Int] = {
            guard let r = result.range(of: "\"counts\": ["), let end = result[r.upperBound...].firstIndex(of: "]") else { return [] }
            return result[r.upperBound..<end].split(separator: ",").compactMap { Int($0.filter { $0 != " " }) }
        }()
        let bad = number("bad") ?? -1
        let lost = result.contains("\"error\"") || counts.count != 3
        let rates = counts.count == 3 ? counts.map { Double($0) / phase } : [0, 0, 0]
        let growth = Int(peak) - Int(rssBefore)
        let ok = !lost && bad == 0 && rates[1] > 0 && attackLog.contains("SENT") && growth <= memoryBound && server.consistent
        var r = BenchResult(bench: "hostile", verified: ok)
        r.add("path", "tap")
        r.add("conns", connections)
        r.add("seconds", seconds)
        r.add("attack_frames_per_sec", framesPerSecond)
        r.add("echoes_per_sec_before", rates[0].rounded())
        r.add("echoes_per_sec_during", rates[1].rounded())
        r.add("echoes_per_sec_after", rates[2].rounded())
        r.add("during_over_before", rates[0] > 0 ? rates[1] / rates[0] : 0)
        r.add("healthy_echoes_verified", counts.reduce(0, +))
        r.add("healthy_bytes_corrupted", max(0, bad))
        r.add("healthy_connections_lost", lost ? connections : 0)
        if lost { r.add("healthy_error", result) }
        r.add("rss_before_bytes", rssBefore)
        r.add("rss_peak_bytes", peak)
        r.add("rss_after_bytes", rssAfter)
        r.add("rss_growth_bound_bytes", memoryBound)
        for pair in (attackLog.split(separator: "\n").first { $0.hasPrefix("SENT ") } ?? "").dropFirst(5).split(separator: " ") {
            let kv = pair.split(separator: "=")
            if kv.count == 2, let v = Int(kv[1]) { r.add("attack_" + kv[0], v) }
        }
        if !attackLog.contains("SENT") { r.add("attack_error", String(attackLog.suffix(400))) }
        server.add(to: &r)
        return r
    }
}
