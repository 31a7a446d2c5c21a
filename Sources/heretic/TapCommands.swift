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
            With --path xdp, the namespace holds one end of a veth pair at 10.78.0.1/24 and the stack \
            answers at 10.78.0.2 through an AF_XDP socket on the other end.
            Stops after --seconds or on Ctrl-C, removing the namespace.
            """,
        aliases: ["tap-http"])
    @Option(help: "Network namespace to create (and remove on exit).") var netns = "heretic"
    @Option(help: "TAP device name (with --path xdp: the stack's end of the veth pair).") var tap = "hrt0"
    @Option(help: "tap (a TAP device) or xdp (an AF_XDP socket on a veth pair; Linux at 10.78.0.1/24, the stack at 10.78.0.2).")
    var path = Path.tap
    @Option(name: .customLong("xdp-mode"), help: "With --path xdp: native or generic XDP (default: native where the interface has it).")
    var xdpMode: XDPAttachMode?
    @Option(help: "Seconds to run before stopping.") var seconds = 600.0

    enum Path: String, ExpressibleByArgument { case tap, xdp }

    func validate() throws {
        if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
        if netns.isEmpty || netns.count > 32 { throw ValidationError("--netns must be 1 to 32 characters") }
        if tap.isEmpty || tap.count > 15 { throw ValidationError("--tap must be 1 to 15 characters") }
        if xdpMode != nil && path != .xdp { throw ValidationError("--xdp-mode goes with --path xdp") }
    }

    func run() throws {
        let (ok, why) = path == .tap ? TapTestbed.canRun : XDPTestbed.canRun
        guard ok else { throw ValidationError("tap-echo \(why)") }
        let stack: TapStack, linux: IPv4Address, describe: String, remove: () -> Void
        var deviceCounters: (Interface) -> [(String, Int)] = { _ in [] }
        if path == .tap {
            let bed = try TapTestbed(namespace: netns, tap: tap)
            remove = { bed.remove() }
            stack = try TapStack(device: bed.device, mac: bed.stackMAC, address: bed.stackAddress)
            linux = bed.linuxAddress
            describe = "on TAP \(bed.device.name); virtio-net headers \(bed.device.vnetHeaders ? "on (checksum offload both ways)" : "off (the kernel offered none)")"
        } else {
            let bed = try XDPTestbed(namespace: netns, interface: tap, attach: xdpMode)
            remove = { bed.remove() }
            stack = try TapStack(device: bed.device, pool: bed.pool, mac: bed.stackMAC, address: bed.stackAddress)
            linux = bed.linuxAddress
            describe = "on an AF_XDP socket of veth \(bed.interfaceName) (\(bed.modeDescription)); Linux's end is \(bed.peerName)"
            let device = bed.device
            deviceCounters = { _ in
                let s = device.statistics
                return [("xdpFramesRead", device.framesRead), ("xdpFramesWritten", device.framesWritten),
                        ("xdpCompletions", device.completions), ("xdpInFlight", device.inFlight),
                        ("xdpKickErrors", device.errors), ("xdpFillShortfalls", device.fillShortfalls),
                        ("xskRxDropped", s.receiveDropped), ("xskRxInvalid", s.receiveInvalid),
                        ("xskTxInvalid", s.transmitInvalid), ("xskRxRingFull", s.receiveRingFull),
                        ("xskFillRingEmpty", s.fillRingEmpty)]
            }
        }
        defer {
            stack.shutdown()
            remove()
        }
        signal(SIGINT) { _ in stopRequested = 1 }
        signal(SIGTERM) { _ in stopRequested = 1 }
        let address = try stack.onCore { $0.address }
        print("""
            Heretic answers at \(address) (TCP and UDP echo on port 7, ping) \(describe);
            Linux has \(linux)/24 in namespace \(netns). Try:
              ip netns exec \(netns) ping -c 3 \(address)
              ip netns exec \(netns) nc \(address) 7
              ip netns exec \(netns) curl http://\(address)/
              ip netns exec \(netns) curl -o /tmp/heretic.bin http://\(address)/bytes/1000000
            Stopping after \(Int(seconds)) s or on Ctrl-C.
            """)
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while stopRequested == 0 && MonotonicClock.nanoseconds() < deadline { usleep(50_000) }
        let shared = Unchecked(deviceCounters)
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
            return (iface.counters.nonZero + tcp.filter { $0.1 != 0 } + shared.value(iface)).map { "\($0.0) \($0.1)" }.joined(separator: "\n  ")
        }
        print("stopped; counters:\n  \(counters)")
    }
}

/// Hands a value the compiler cannot prove Sendable to the stack's core (used there only).
struct Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
