import ArgumentParser
import HereticBench
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// Set by SIGINT/SIGTERM: the running command tears its namespace down and exits.
nonisolated(unsafe) var stopRequested: sig_atomic_t = 0

struct TapEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tap-echo",
        abstract: "Run the stack on a TAP device in a network namespace this command creates: TCP and UDP echo on port 7, HTTP on port 80, and ping.",
        discussion: """
            Needs root. Creates namespace NETNS with the kernel side of TAP at 10.77.0.1/24; the stack \
            answers at 10.77.0.2. Reach it from the namespace, for example:
              ip netns exec heretic ping -c 3 10.77.0.2
              ip netns exec heretic nc 10.77.0.2 7
              ip netns exec heretic curl -o /tmp/x http://10.77.0.2/bytes/1000000
            Stops after --seconds or on Ctrl-C, removing the namespace.
            """,
        aliases: ["tap-http"])
    @Option(help: "Network namespace to create (and remove on exit).") var netns = "heretic"
    @Option(help: "TAP device name.") var tap = "hrt0"
    @Option(help: "Seconds to run before stopping.") var seconds = 600.0

    func validate() throws {
        if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
        if netns.isEmpty || netns.count > 32 { throw ValidationError("--netns must be 1 to 32 characters") }
        if tap.isEmpty || tap.count > 15 { throw ValidationError("--tap must be 1 to 15 characters") }
    }

    func run() throws {
        let (ok, why) = TapTestbed.canRun
        guard ok else { throw ValidationError("tap-echo \(why)") }
        let bed = try TapTestbed(namespace: netns, tap: tap)
        defer { bed.remove() }
        let stack = try TapStack(device: bed.device, mac: bed.stackMAC, address: bed.stackAddress)
        defer { stack.shutdown() }
        signal(SIGINT) { _ in stopRequested = 1 }
        signal(SIGTERM) { _ in stopRequested = 1 }
        print("""
            Heretic answers at \(bed.stackAddress) (TCP and UDP echo on port 7, ping) on TAP \(bed.device.name);
            Linux has \(bed.linuxAddress)/24 in namespace \(netns); virtio-net headers \(bed.device.vnetHeaders ? "on (checksum offload both ways)" : "off (the kernel offered none)"). Try:
              ip netns exec \(netns) ping -c 3 \(bed.stackAddress)
              ip netns exec \(netns) nc \(bed.stackAddress) 7
              ip netns exec \(netns) curl http://\(bed.stackAddress)/
              ip netns exec \(netns) curl -o /tmp/heretic.bin http://\(bed.stackAddress)/bytes/1000000
            Stopping after \(Int(seconds)) s or on Ctrl-C.
            """)
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while stopRequested == 0 && MonotonicClock.nanoseconds() < deadline { usleep(50_000) }
        let counters = try stack.onCore { iface in
            let t = iface.tcp
            let tcp: [(String, Int)] = [
                ("connections", iface.tcpConnectionCount), ("timeWait", t.timeWaitCount),
                ("retransmissions", t.retransmissions), ("challengeAcks", t.challengeAcks),
                ("synCookiesSent", t.synCookiesSent), ("synCookiesValidated", t.synCookiesValidated),
                ("synCookiesRejected", t.synCookiesRejected), ("synBacklogDrops", t.synBacklogDrops),
                ("resetsSent", t.resetsSent), ("reassembledSegments", t.reassembledSegments),
                ("reassemblyDrops", t.reassemblyDrops), ("timeWaitOverflows", t.timeWaitOverflows),
            ]
            return (iface.counters.nonZero + tcp.filter { $0.1 != 0 }).map { "\($0.0) \($0.1)" }.joined(separator: "\n  ")
        }
        print("stopped; counters:\n  \(counters)")
    }
}
