import CHereticSys
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// Runs a command (looked up in PATH) and returns its exit status and its output (standard
/// output and error together, at most 256 KiB).
public func runCommand(_ arguments: [String]) -> (status: Int32, output: String) {
    var cStrings = arguments.map { strdup($0) }
    cStrings.append(nil)
    defer { for p in cStrings { free(p) } }
    let capacity = 256 << 10
    let output = UnsafeMutablePointer<CChar>.allocate(capacity: capacity)
    defer { output.deallocate() }
    let status = cStrings.withUnsafeMutableBufferPointer { argv in
        heretic_run(argv.baseAddress!, output, capacity)
    }
    return (status, String(cString: output))
}

/// Whether a test suite that needs the machine's privileges or tools runs here.
public enum TestEnvironment {
    /// `HERETIC_REQUIRE_ALL_SUITES=1` (set by CI): suites run even where they would skip, so a
    /// machine that should have been able to run them fails instead of skipping quietly.
    public static var requireAll: Bool { getenv("HERETIC_REQUIRE_ALL_SUITES").map { String(cString: $0) == "1" } ?? false }

    /// True when `canRun` says the suite can run here, or every suite is required to.
    public static func mayRun(_ canRun: (Bool, String)) -> Bool { canRun.0 || requireAll }

    /// The first of `tools` missing from PATH, if any.
    public static func missingTool(_ tools: [String]) -> String? {
        tools.first { runCommand(["sh", "-c", "command -v \($0)"]).status != 0 }
    }
}

/// A test topology for the TAP packet path, made and removed by this process: a network
/// namespace holding the kernel side of a TAP device, with an address on it, so that Linux
/// tools run in the namespace (`ip netns exec NAME ...`) reach the stack as a neighbour and
/// nothing outside the namespace is ever touched. `remove()` (or deinit) deletes the
/// namespace; the TAP device goes with the stack's descriptor.
///
/// Addresses: 10.77.`subnet`.1/24 for Linux in the namespace, .2 for the stack.
public final class TapTestbed: @unchecked Sendable {
    public let namespace: String
    public let device: TapDevice
    public let linuxAddress: IPv4Address
    public let stackAddress: IPv4Address
    public let stackMAC: MACAddress
    private var removed = false

    public static var canRun: (Bool, String) {
        if getuid() != 0 { return (false, "needs root (network namespaces and a TAP device)") }
        if access("/dev/net/tun", R_OK | W_OK) != 0 { return (false, "no /dev/net/tun") }
        if runCommand(["ip", "-V"]).status != 0 { return (false, "no `ip` command (iproute2)") }
        if let tool = TestEnvironment.missingTool(["python3", "ping", "curl"]) {
            return (false, "no `\(tool)` (scripts/test installs it)")
        }
        return (true, "")
    }

    public init(namespace: String, tap: String, subnet: UInt8 = 0) throws {
        self.namespace = namespace
        linuxAddress = IPv4Address(10, 77, subnet, 1)
        stackAddress = IPv4Address(10, 77, subnet, 2)
        stackMAC = MACAddress(0x02, 0x48, 0x52, 0x54, subnet, 0x02)
        // A namespace of that name left by a crashed run is ours to replace.
        _ = runCommand(["ip", "netns", "del", namespace])
        let made = runCommand(["ip", "netns", "add", namespace])
        guard made.status == 0 else { throw BenchError("ip netns add \(namespace): \(made.output)") }
        do {
            device = try TapDevice(name: tap)
        } catch {
            _ = runCommand(["ip", "netns", "del", namespace])
            throw BenchError("\(error)")
        }
        let steps: [[String]] = [
            ["ip", "link", "set", device.name, "netns", namespace],
            ["ip", "-n", namespace, "link", "set", "lo", "up"],
            ["ip", "-n", namespace, "addr", "add", "\(linuxAddress)/24", "dev", device.name],
            ["ip", "-n", namespace, "link", "set", device.name, "up"],
        ]
        for step in steps {
            let r = runCommand(step)
            guard r.status == 0 else {
                remove()
                throw BenchError("\(step.joined(separator: " ")): \(r.output)")
            }
        }
    }

    deinit { remove() }

    /// Runs a command inside the namespace.
    public func run(_ arguments: [String]) -> (status: Int32, output: String) {
        runCommand(["ip", "netns", "exec", namespace] + arguments)
    }

    /// Adds `tc netem` impairments (for example ["loss", "5%"]) to Linux's side of the link.
    public func impair(_ netem: [String]) throws {
        let r = runCommand(["ip", "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", device.name, "root", "netem"] + netem)
        guard r.status == 0 else { throw BenchError("tc netem \(netem.joined(separator: " ")): \(r.output)") }
    }

    /// Frames built by hand in Python (struct and raw AF_PACKET sockets, no other dependency) and
    /// sent from inside the namespace onto the TAP link: what an attacker on the link can do.
    public static let rawFrames = """
        import random, socket, struct, sys, time
        IFACE, SRC_IP, DST_IP = sys.argv[1], sys.argv[2], sys.argv[3]
        SRC_MAC = bytes.fromhex(open("/sys/class/net/%s/address" % IFACE).read().strip().replace(":", ""))
        DST_MAC = bytes.fromhex(sys.argv[4].replace(":", ""))
        raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        raw.bind((IFACE, 0))
        def csum(b):
            if len(b) % 2: b += b"\\0"
            s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
            while s >> 16: s = (s & 0xFFFF) + (s >> 16)
            return (~s) & 0xFFFF
        def ipv4(payload, proto=6, src=SRC_IP, ihl=5, total=None, flags=0x4000, bad=False):
            tl = total if total is not None else 20 + len(payload)
            h = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, tl, 7, flags, 64, proto, 0,
                            socket.inet_aton(src), socket.inet_aton(DST_IP))
            c = csum(h) ^ (0x1234 if bad else 0)
            return h[:10] + struct.pack("!H", c) + h[12:] + payload
        def tcp(sport, dport, seq, ack, flags, payload=b"", options=b"", src=SRC_IP, offset=None, bad=False):
            off = offset if offset is not None else (20 + len(options)) // 4
            h = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, off << 4, flags,
                            65535, 0, 0) + options
            pseudo = socket.inet_aton(src) + socket.inet_aton(DST_IP) + struct.pack("!BBH", 0, 6, len(h) + len(payload))
            c = csum(pseudo + h + payload) ^ (0x4321 if bad else 0)
            return h[:16] + struct.pack("!H", c) + h[18:] + payload
        def eth(payload, etype=0x0800):
            return DST_MAC + SRC_MAC + struct.pack("!H", etype) + payload
        def send(frame):
            try: raw.send(frame)
            except OSError: pass
        """

    public func remove() {
        guard !removed else { return }
        removed = true
        _ = runCommand(["ip", "netns", "del", namespace])
    }
}

/// The stack on a TAP device (or any device with Linux on the far side: the XDP test-bed's
/// veth), polled by core 0 of its own runtime: a TCP echo server on port 7, a UDP echo on
/// port 7, a minimal HTTP responder on port 80; ICMP echo answered by the interface.
public final class TapStack: @unchecked Sendable {
    public let runtime: Runtime
    public let interface: Interface

    /// The impairments on the link, when asked for (in both directions, at the stack's side:
    /// this kernel has no `tc netem`).
    public let injector: FaultInjector?

    /// `pool` holds the interface's packets (an XDP device's must be the pool it was made
    /// with: its UMEM).
    public init(device: NetworkDevice, pool: PacketPool = PacketPool(capacity: 16_384), mac: MACAddress,
                address: IPv4Address, faults: FaultInjector.Faults? = nil, seed: UInt64 = 1,
                httpIdleSeconds: Int = 30, httpHeaderSeconds: Int = 10, sendMemory: SendMemory = .shared) throws {
        runtime = try Runtime(cores: 1)
        var nic: NetworkDevice = device
        if let faults {
            let injector = FaultInjector(device, faults: faults, seed: seed)
            injector.receiveFaults = faults
            injector.clock = { MonotonicClock.nanoseconds() / 1_000_000 }
            nic = injector
            self.injector = injector
        } else {
            injector = nil
        }
        interface = Interface(device: nic, pool: pool, configuration: InterfaceConfiguration(mac: mac, address: address),
                              sendMemory: sendMemory)
        let interface = self.interface
        let shared = Unchecked(interface)
        try runtime.run(on: 0) { core in
            _ = try? shared.value.listenTCP(port: 7) { TCPEchoServer() }
            _ = try? shared.value.listenTCP(port: 80) { HTTPResponder(idleSeconds: httpIdleSeconds, headerSeconds: httpHeaderSeconds) }
            _ = try? shared.value.bindUDP(port: 7, UDPEchoServer())
            let poller = InterfacePoller()
            poller.add(shared.value)
            core.addPoller(poller)
        }
    }

    /// Runs `body` on the stack's core.
    public func onCore<R: Sendable>(_ body: @escaping @Sendable (Interface) -> R) throws -> R {
        let shared = Unchecked(interface)
        return try runtime.run(on: 0) { _ in body(shared.value) }
    }

    public func shutdown() { runtime.shutdown() }
}
