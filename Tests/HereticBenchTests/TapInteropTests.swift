import Synchronization
import Testing
@testable import HereticBench
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

let testbedsMade = Atomic<Int>(0)

/// Polls `condition` until it holds, at most `tries` times `every` microseconds apart.
func eventually(_ tries: Int = 100, every microseconds: UInt32 = 20_000, _ condition: () throws -> Bool) rethrows -> Bool {
    for _ in 0..<tries {
        if try condition() { return true }
        usleep(microseconds)
    }
    return try condition()
}

/// Polls `count` until it reaches zero (at most `tries` times); returns the last value.
func settledCount(_ tries: Int = 100, _ count: () throws -> Int) rethrows -> Int {
    var last = try count()
    for _ in 0..<tries where last != 0 {
        usleep(20_000)
        last = try count()
    }
    return last
}

/// A fresh namespace and stack (names carry the process id, so runs of the suites in
/// different processes do not collide; suites using it run one test at a time).
func withTapStack(faults: FaultInjector.Faults? = nil, _ body: (TapTestbed, TapStack) throws -> Void) throws {
    let id = getpid() % 10_000, n = testbedsMade.add(1, ordering: .relaxed).newValue
    let bed = try TapTestbed(namespace: "hrt-test-\(id)-\(n)", tap: "hrt\(id)t\(n)")
    defer { bed.remove() }
    let stack = try TapStack(device: bed.device, mac: bed.stackMAC, address: bed.stackAddress, faults: faults)
    defer { stack.shutdown() }
    try body(bed, stack)
}

/// Linux's own TCP/IP against Heretic's, through a TAP device in a namespace the test makes
/// and removes. Needs root; without it the suite is skipped, saying why.
@Suite("Interop with Linux through TAP", .serialized,
       .enabled(if: TestEnvironment.mayRun(TapTestbed.canRun), Comment(rawValue: "skipped: \(TapTestbed.canRun.1)")))
struct TapInteropTests {
    func withStack(faults: FaultInjector.Faults? = nil, _ body: (TapTestbed, TapStack) throws -> Void) throws {
        try withTapStack(faults: faults, body)
    }

    @Test("ping from Linux gets ICMP echo replies")
    func ping() throws {
        try withStack { bed, stack in
            let r = bed.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "\(bed.stackAddress)"])
            #expect(r.status == 0, "ping failed: \(r.output)")
            #expect(r.output.contains("3 received"))
            let replies = try stack.onCore { $0.counters.icmpEchoReplies }
            #expect(replies == 3)
        }
    }

    @Test("Python sockets: 1000 concurrent TCP connections echo random data of random sizes; UDP echoes")
    func pythonEcho() throws {
        try withStack { bed, stack in
            let script = """
                import asyncio, random, socket, sys
                HOST = "\(bed.stackAddress)"
                rng = random.Random(7)
                sizes = [rng.randint(1, 16384) for _ in range(1000)]
                async def one(i, size):
                    data = bytes(rng.getrandbits(8) for _ in range(size)) if size < 64 else random.Random(i).randbytes(size)
                    r, w = await asyncio.open_connection(HOST, 7)
                    w.write(data)
                    await w.drain()
                    got = await r.readexactly(size)
                    w.close()
                    await w.wait_closed()
                    return got == data
                async def main():
                    results = await asyncio.gather(*(one(i, s) for i, s in enumerate(sizes)))
                    bad = results.count(False)
                    print("tcp", len(results), "bad", bad)
                    return bad
                bad = asyncio.run(asyncio.wait_for(main(), 60))
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                u.settimeout(2)
                ok = 0
                for k in range(100):
                    msg = random.Random(k).randbytes(1 + k * 10)
                    u.sendto(msg, (HOST, 7))
                    if u.recvfrom(4096)[0] == msg: ok += 1
                print("udp", ok)
                sys.exit(0 if bad == 0 and ok == 100 else 1)
                """
            let r = bed.run(["python3", "-c", script])
            #expect(r.status == 0, "python client: \(r.output)")
            #expect(r.output.contains("tcp 1000 bad 0") && r.output.contains("udp 100"), "\(r.output)")
            // With virtio-net headers, checksums are offloaded both ways: what Linux left
            // partial was completed here (and nothing failed verification, or echoes would).
            let (vnet, completed, bad) = try stack.onCore { iface in
                (bed.device.vnetHeaders, bed.device.checksumsCompleted, iface.counters.badChecksums)
            }
            if vnet { #expect(completed > 0 && bad == 0, "partial checksums completed: \(completed), bad: \(bad)") }
            // The clients closed first; Heretic's ends went through LAST-ACK and are gone.
            let left = try settledCount { try stack.onCore { $0.tcpConnectionCount } }
            #expect(left == 0, "no connection left in Heretic's table")
        }
    }

    @Test("curl fetches generated files of 1 KB, 1 MB and 100 MB byte-exact from Heretic's HTTP responder")
    func curlFiles() throws {
        try withStack { bed, _ in
            let script = """
                import subprocess, sys, tempfile, os
                block = bytes(((i * 7 + (i >> 8) * 13) & 0xFF) for i in range(65521))
                ok = True
                for n in (1000, 1000000, 100000000):
                    path = tempfile.mktemp()
                    r = subprocess.run(["curl", "-s", "-f", "--max-time", "60", "-o", path,
                                        "http://\(bed.stackAddress)/bytes/%d" % n])
                    got = open(path, "rb").read() if r.returncode == 0 else b""
                    if os.path.exists(path): os.unlink(path)
                    expected = (block * (n // len(block) + 1))[:n]
                    print(n, "curl", r.returncode, "bytes", len(got), "match", got == expected)
                    ok = ok and r.returncode == 0 and got == expected
                sys.exit(0 if ok else 1)
                """
            let r = bed.run(["python3", "-c", script])
            #expect(r.status == 0, "curl transfers: \(r.output)")
            #expect(r.output.contains("100000000 curl 0 bytes 100000000 match True"), "\(r.output)")
        }
    }

    /// A Heretic client uploads `size` bytes to a Python server in the namespace, half-closes,
    /// and takes `size` generated bytes back; returns what it saw.
    func clientTransfer(_ bed: TapTestbed, _ stack: TapStack, size: Int, port: UInt16 = 9000) throws -> TransferLog.Snapshot {
        let server = """
            import socket, struct
            block = bytes(((i * 7 + (i >> 8) * 13) & 0xFF) for i in range(65521))
            N = \(size)
            srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("\(bed.linuxAddress)", \(port))); srv.listen(4); srv.settimeout(60)
            c, _ = srv.accept(); c.settimeout(60)
            total = 0; s = 0
            while True:
                d = c.recv(1 << 16)
                if not d: break
                total += len(d); s += sum(d)
            c.sendall(struct.pack(">QQ", total, s & 0xFFFFFFFFFFFFFFFF) + (block * (N // len(block) + 1))[:N])
            c.close()
            """
        // In the background, bounded by its own timeouts; listening before we connect.
        let started = runCommand(["sh", "-c", "ip netns exec \(bed.namespace) python3 -c '\(server)' > /tmp/\(bed.namespace)-server.log 2>&1 &"])
        #expect(started.status == 0)
        let listening = eventually(100, every: 50_000) { bed.run(["sh", "-c", "ss -ltn | grep -q ':\(port)'"]).status == 0 }
        try #require(listening, "the Python server did not start")
        let log = TransferLog()
        let shared = Unchecked(log)
        let target = TCPEndpoint(bed.linuxAddress, port)
        _ = try stack.onCore { iface in iface.connectTCP(to: target, UploadClient(log: shared.value, upload: size)) }
        // Until it ends (the callers check how).
        _ = try eventually(1200, every: 50_000) { try stack.onCore { _ in shared.value.closedReason != nil } }
        _ = runCommand(["rm", "-f", "/tmp/\(bed.namespace)-server.log"])
        return try stack.onCore { _ in shared.value.snapshot }
    }

    @Test("a Heretic client uploads to and downloads from a Python server (8 MB each way, half-close), byte-exact")
    func clientAgainstLinuxServer() throws {
        try withStack { bed, stack in
            let size = 8_000_000
            let result = try clientTransfer(bed, stack, size: size)
            #expect(result.closedReason == .normal, "the transfer ended normally (\(result))")
            #expect(result.serverCount == UInt64(size) && result.serverSum == result.sentSum, "the server got every byte")
            #expect(result.received == size && result.mismatches == 0, "we got every byte back")
        }
    }

    @Test("close paths: Linux first, Heretic first, both at once, RST from either side; nothing leaks")
    func closePaths() throws {
        try withStack { bed, stack in
            let script = """
                import socket, struct, sys
                HOST = "\(bed.stackAddress)"
                def http(path, shut=False):
                    s = socket.create_connection((HOST, 80), timeout=5)
                    s.sendall(b"GET %s HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n" % path.encode())
                    if shut: s.shutdown(socket.SHUT_WR)
                    data = b""
                    try:
                        while True:
                            c = s.recv(65536)
                            if not c: break
                            data += c
                    except ConnectionResetError:
                        data += b"<reset>"
                    s.close()
                    return data
                ok = []
                # Linux closes first.
                s = socket.create_connection((HOST, 7), timeout=5); s.sendall(b"x" * 1000)
                got = b""
                while len(got) < 1000: got += s.recv(4096)
                s.close(); ok.append(got == b"x" * 1000)
                # Heretic closes first (after its response).
                ok.append(http("/bytes/1000").endswith(b"\\r\\n\\r\\n" + bytes(((i * 7 + (i >> 8) * 13) & 0xFF) for i in range(1000))))
                # Both at once: the request and our FIN together, its FIN after the response.
                ok.append(http("/bytes/0", shut=True).startswith(b"HTTP/1.1 200"))
                # RST from Heretic.
                ok.append(http("/reset") == b"<reset>")
                # RST from Linux: linger 0, then close with data unread.
                s = socket.create_connection((HOST, 7), timeout=5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.sendall(b"y" * 100)
                s.close()
                print("paths", ok)
                sys.exit(0 if all(ok) else 1)
                """
            let r = bed.run(["python3", "-c", script])
            #expect(r.status == 0, "close paths: \(r.output)")
            // Only TIME-WAIT (from the closes Heretic made first) may remain, briefly.
            let open = try settledCount { try stack.onCore { $0.tcpConnectionCount - $0.tcp.timeWaitCount } }
            let (kept, looked) = try stack.onCore { ($0.tcp.timeWaitCount, $0.tcp.timeWaitSlots) }
            #expect(kept == looked, "the TIME-WAIT count (\(kept)) agrees with the slots in TIME-WAIT (\(looked))")
            #expect(open == 0, "no connection left open in Heretic's table")
        }
    }

    static let impairments: [(String, FaultInjector.Faults)] = [
        ("1% loss", .init(drop: 0.01)),
        ("5% loss", .init(drop: 0.05)),
        ("10 ms delay, 3 ms jitter", .init(delayMilliseconds: 7...13)),
        ("5% reordering", .init(reorder: 0.05, delayMilliseconds: 1...1)),
        ("2% duplication", .init(duplicate: 0.02)),
    ]

    @Test("under loss, delay, reordering and duplication (both directions), transfers stay byte-exact",
          arguments: 0..<5)
    func impaired(profile: Int) throws {
        let (name, faults) = Self.impairments[profile]
        try withStack(faults: faults) { bed, stack in
            // Linux's client: curl 2 MB, and 50 echo connections of random sizes.
            let script = """
                import asyncio, random, subprocess, sys, tempfile, os
                HOST = "\(bed.stackAddress)"
                block = bytes(((i * 7 + (i >> 8) * 13) & 0xFF) for i in range(65521))
                n = 2000000
                path = tempfile.mktemp()
                r = subprocess.run(["curl", "-s", "-f", "--max-time", "60", "-o", path, "http://%s/bytes/%d" % (HOST, n)])
                got = open(path, "rb").read() if r.returncode == 0 else b""
                if os.path.exists(path): os.unlink(path)
                curl_ok = got == (block * (n // len(block) + 1))[:n]
                async def one(i):
                    data = random.Random(i).randbytes(random.Random(-i).randint(1, 20000))
                    r, w = await asyncio.open_connection(HOST, 7)
                    w.write(data); await w.drain()
                    back = await r.readexactly(len(data))
                    w.close(); await w.wait_closed()
                    return back == data
                async def main():
                    return (await asyncio.gather(*(one(i) for i in range(50)))).count(False)
                bad = asyncio.run(asyncio.wait_for(main(), 90))
                print("curl", curl_ok, "echo bad", bad)
                sys.exit(0 if curl_ok and bad == 0 else 1)
                """
            let r = bed.run(["python3", "-c", script])
            #expect(r.status == 0, "\(name): \(r.output)")
            // And Heretic as the client: 1 MB up and 1 MB down through the same link.
            let transfer = try clientTransfer(bed, stack, size: 1_000_000, port: 9001)
            #expect(transfer.closedReason == .normal && transfer.serverCount == 1_000_000
                    && transfer.serverSum == transfer.sentSum && transfer.received == 1_000_000
                    && transfer.mismatches == 0, "\(name): Heretic's client transfer (\(transfer))")
            // Read on the stack's core, where the counters live.
            let (retransmits, reassembled, dropped, impaired) = try stack.onCore { iface in
                let i = stack.injector
                return (iface.tcp.retransmissions, iface.tcp.reassembledSegments, i?.dropped ?? 0,
                        (i?.dropped ?? 0) + (i?.duplicated ?? 0) + (i?.reordered ?? 0))
            }
            if faults.drop > 0 {
                #expect(retransmits > 0, "\(name): Heretic resent what was lost (\(dropped) frames dropped)")
            }
            if faults.reorder > 0 || faults.drop > 0 {
                #expect(reassembled > 0, "\(name): data past holes was kept")
            }
            #expect(impaired > 0 || faults.delayMilliseconds.lowerBound > 0, "\(name): the link was really impaired")
        }
    }
}


/// What an upload/download client saw (touched only on the stack's core).
final class TransferLog: @unchecked Sendable {
    var sentBytes = 0
    var sentSum: UInt64 = 0
    var finQueued = false
    var header: [UInt8] = []
    var received = 0
    var mismatches = 0
    var closedReason: TCPCloseReason?

    struct Snapshot: Sendable, CustomStringConvertible {
        var sentSum: UInt64, serverCount: UInt64, serverSum: UInt64, received: Int, mismatches: Int
        var closedReason: TCPCloseReason?
        var description: String {
            "sent sum \(sentSum), server saw \(serverCount) bytes sum \(serverSum), received \(received), mismatches \(mismatches), closed \(String(describing: closedReason))"
        }
    }

    var snapshot: Snapshot {
        func be64(_ at: Int) -> UInt64 { header.count >= at + 8 ? header[at..<(at + 8)].reduce(0) { $0 << 8 | UInt64($1) } : 0 }
        return Snapshot(sentSum: sentSum, serverCount: be64(0), serverSum: be64(8), received: received,
                        mismatches: mismatches, closedReason: closedReason)
    }
}

/// Streams `upload` pattern bytes, half-closes, then checks a 16-byte header and the
/// generated body the server sends back.
struct UploadClient: TCPHandler {
    let log: TransferLog
    let upload: Int

    mutating func connected(_ connection: some TCPConnection) { fill(connection) }
    mutating func writable(_ connection: some TCPConnection) { fill(connection) }

    /// Sends until the send buffer is full (`writable` brings more), counting what it took.
    func fill(_ connection: some TCPConnection) {
        while log.sentBytes < upload {
            let n = min(16_384, upload - log.sentBytes)
            let base = log.sentBytes
            let chunk = [UInt8](unsafeUninitializedCapacity: n) { b, count in
                for i in 0..<n { b[i] = UInt8(truncatingIfNeeded: (base + i) &* 31 &+ 7) }
                count = n
            }
            let taken = chunk.withUnsafeBytes { connection.send($0) }
            log.sentSum &+= chunk[..<taken].reduce(UInt64(0)) { $0 &+ UInt64($1) }
            log.sentBytes += taken
            if taken < n { break }
        }
        if log.sentBytes == upload && !log.finQueued {
            log.finQueued = true
            connection.close()  // FIN after the data; the download keeps coming (half-close)
        }
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        var bytes = data[...]
        if log.header.count < 16 {
            let take = min(16 - log.header.count, bytes.count)
            log.header += bytes.prefix(take)
            bytes = bytes.dropFirst(take)
        }
        let block = GeneratedBody.block
        for b in bytes {
            if b != block[log.received % GeneratedBody.blockLength] { log.mismatches += 1 }
            log.received += 1
        }
    }

    mutating func peerClosed(_ connection: some TCPConnection) {}
    mutating func closed(_ reason: TCPCloseReason) { log.closedReason = reason }
}
