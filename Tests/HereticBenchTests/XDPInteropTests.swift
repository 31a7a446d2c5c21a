import Testing
@testable import HereticBench
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// Linux's own TCP/IP against Heretic's through an AF_XDP socket on a veth pair, in a
/// namespace the test makes and removes. Needs root; without it the suite is skipped, saying
/// why.
@Suite("Interop with Linux through AF_XDP on veth", .serialized,
       .enabled(if: TestEnvironment.mayRun(XDPTestbed.canRun), Comment(rawValue: "skipped: \(XDPTestbed.canRun.1)")))
struct XDPInteropTests {
    @Test("ping, TCP echo on 200 connections, UDP echo and a 2 MB HTTP download over the XDP device; every buffer comes back",
          arguments: [XDPAttachMode.native, .generic])
    func pingAndEcho(mode: XDPAttachMode) throws {
        let id = getpid() % 10_000, n = testbedsMade.add(1, ordering: .relaxed).newValue
        let bed = try XDPTestbed(namespace: "hrt-xtest-\(id)-\(n)", interface: "hrx\(id)t\(n)", attach: mode)
        defer { bed.remove() }
        #expect(bed.device.mode == mode, "attached as asked")
        let stack = try TapStack(device: bed.device, pool: bed.pool, mac: bed.stackMAC, address: bed.stackAddress)
        defer { stack.shutdown() }

        let ping = bed.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "\(bed.stackAddress)"])
        #expect(ping.status == 0 && ping.output.contains("3 received"), "ping over \(bed.modeDescription): \(ping.output)")
        #expect(try stack.onCore { $0.counters.icmpEchoReplies } == 3)

        let script = """
            import asyncio, random, socket, sys, urllib.request
            HOST = "\(bed.stackAddress)"
            async def one(i):
                data = random.Random(i).randbytes(random.Random(-i).randint(1, 16384))
                r, w = await asyncio.open_connection(HOST, 7)
                w.write(data); await w.drain()
                back = await r.readexactly(len(data))
                w.close(); await w.wait_closed()
                return back == data
            async def main():
                return (await asyncio.gather(*(one(i) for i in range(200)))).count(False)
            bad = asyncio.run(asyncio.wait_for(main(), 60))
            print("tcp 200 bad", bad)
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
            ok = 0
            for k in range(100):
                msg = random.Random(k).randbytes(1 + k * 10)
                u.sendto(msg, (HOST, 7))
                if u.recvfrom(4096)[0] == msg: ok += 1
            print("udp", ok)
            block = bytes(((i * 7 + (i >> 8) * 13) & 0xFF) for i in range(65521))
            n = 2000000
            body = urllib.request.urlopen("http://%s/bytes/%d" % (HOST, n), timeout=30).read()
            http = body == (block * (n // len(block) + 1))[:n]
            print("http", http)
            sys.exit(0 if bad == 0 and ok == 100 and http else 1)
            """
        let r = bed.run(["python3", "-c", script])
        #expect(r.status == 0, "python client over \(bed.modeDescription): \(r.output)")
        #expect(r.output.contains("tcp 200 bad 0") && r.output.contains("udp 100") && r.output.contains("http True"), "\(r.output)")

        // The connections wind down; then every buffer is back in the pool but those the
        // device keeps in the fill ring (and frames still in flight to Linux).
        let open = try settledCount { try stack.onCore { $0.tcpConnectionCount - $0.tcp.timeWaitCount } }
        let (kept, looked) = try stack.onCore { ($0.tcp.timeWaitCount, $0.tcp.timeWaitSlots) }
        #expect(kept == looked, "the TIME-WAIT count (\(kept)) agrees with the slots in TIME-WAIT (\(looked))")
        #expect(open == 0, "no connection left open in Heretic's table")
        let device = Unchecked(bed.device)
        let leaked = try settledCount {
            try stack.onCore { iface in iface.pool.inUse - device.value.fillTarget - device.value.inFlight }
        }
        #expect(leaked == 0, "buffers neither in the pool nor with the kernel")
        let (statistics, read, written, completions, errors, bad) = try stack.onCore { iface in
            let d = device.value
            return (d.statistics, d.framesRead, d.framesWritten, d.completions, d.errors, iface.counters.badChecksums)
        }
        #expect(read > 1000 && written > 1000 && completions + 64 >= written, "frames both ways, completions reaped")
        #expect(statistics.receiveInvalid == 0 && statistics.transmitInvalid == 0, "no descriptor refused: \(statistics)")
        #expect(errors == 0 && bad == 0, "kick errors \(errors), bad checksums \(bad)")
    }
}
