import CHereticSys
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// A test topology for the AF_XDP packet path, made and removed by this process: a veth pair
/// whose one end (`peer`) lives in a new network namespace with an address on it, and whose
/// other end (`interfaceName`, no address, in the root namespace) carries the stack through
/// an `XDPDevice` over `pool`. Linux tools run in the namespace (`ip netns exec NAME ...`)
/// reach the stack as a neighbour; nothing outside the namespace is touched but the veth end,
/// which goes with it. `remove()` (or deinit) deletes the namespace and so the pair.
///
/// The namespace's end has transmit checksumming off (`ethtool -K PEER tx off`): over veth,
/// Linux leaves TCP and UDP checksums partial, and AF_XDP hands frames over as they are with
/// no word of it. The stack's end has the stack's MAC address (its frames' source) and IPv6
/// off, so the kernel sends nothing of its own from there.
///
/// Addresses: 10.78.`subnet`.1/24 for Linux in the namespace, .2 for the stack.
public final class XDPTestbed: @unchecked Sendable {
    public let namespace: String
    /// The stack's end, in the root namespace.
    public let interfaceName: String
    /// Linux's end, in the namespace.
    public let peerName: String
    public let pool: PacketPool
    public let device: XDPDevice
    public let linuxAddress: IPv4Address
    public let stackAddress: IPv4Address
    public let stackMAC: MACAddress
    private var removed = false

    public static var canRun: (Bool, String) {
        if getuid() != 0 { return (false, "needs root (network namespaces, veth and XDP)") }
        if runCommand(["ip", "-V"]).status != 0 { return (false, "no `ip` command (iproute2)") }
        if let tool = TestEnvironment.missingTool(["python3", "ping", "curl"]) {
            return (false, "no `\(tool)` (scripts/test installs it)")
        }
        if runCommand(["ethtool", "--version"]).status != 0 { return (false, "no `ethtool` (to turn checksum offload off on the veth peer)") }
        let fd = socket(44 /* AF_XDP */, Int32(SOCK_RAW.rawValue), 0)
        if fd < 0 { return (false, "no AF_XDP sockets in this kernel (errno \(errno))") }
        close(fd)
        return (true, "")
    }

    /// Makes the namespace and the pair, then the device on the stack's end (`attach` and
    /// `zeroCopy` force a mode; nil takes the best that works).
    public init(namespace: String, interface: String, subnet: UInt8 = 0, poolCapacity: Int = 16_384,
                attach: XDPAttachMode? = nil, zeroCopy: Bool? = nil) throws {
        self.namespace = namespace
        interfaceName = interface
        peerName = String((interface + "p").suffix(15))
        linuxAddress = IPv4Address(10, 78, subnet, 1)
        stackAddress = IPv4Address(10, 78, subnet, 2)
        stackMAC = MACAddress(0x02, 0x48, 0x58, 0x44, subnet, 0x02)
        // A namespace or interface of that name left by a crashed run is ours to replace.
        _ = runCommand(["ip", "netns", "del", namespace])
        _ = runCommand(["ip", "link", "del", interface])
        let made = runCommand(["ip", "netns", "add", namespace])
        guard made.status == 0 else { throw BenchError("ip netns add \(namespace): \(made.output)") }
        let steps: [[String]] = [
            ["ip", "link", "add", interface, "type", "veth", "peer", "name", peerName, "netns", namespace],
            ["ip", "link", "set", interface, "address", "\(stackMAC)"],
            ["sysctl", "-qw", "net.ipv6.conf.\(interface).disable_ipv6=1"],
            ["ip", "-n", namespace, "link", "set", "lo", "up"],
            ["ip", "-n", namespace, "addr", "add", "\(linuxAddress)/24", "dev", peerName],
            ["ip", "netns", "exec", namespace, "ethtool", "-K", peerName, "tx", "off"],
            ["ip", "link", "set", interface, "up"],
            ["ip", "-n", namespace, "link", "set", peerName, "up"],
        ]
        for step in steps {
            let r = runCommand(step)
            guard r.status == 0 else {
                _ = runCommand(["ip", "netns", "del", namespace])
                _ = runCommand(["ip", "link", "del", interface])
                throw BenchError("\(step.joined(separator: " ")): \(r.output)")
            }
        }
        pool = PacketPool(capacity: poolCapacity)
        do {
            device = try XDPDevice(name: interface, pool: pool, attach: attach, zeroCopy: zeroCopy)
        } catch {
            _ = runCommand(["ip", "netns", "del", namespace])
            _ = runCommand(["ip", "link", "del", interface])
            throw BenchError("\(error)")
        }
    }

    deinit { remove() }

    /// Runs a command inside the namespace.
    public func run(_ arguments: [String]) -> (status: Int32, output: String) {
        runCommand(["ip", "netns", "exec", namespace] + arguments)
    }

    /// "native XDP, copy mode" and the like.
    public var modeDescription: String {
        "\(device.mode.rawValue) XDP, \(device.zeroCopy ? "zero-copy" : "copy mode")"
    }

    /// Deletes the namespace, and with it the pair (the device's socket then sees its
    /// interface gone; the program and socket close when the device goes).
    public func remove() {
        guard !removed else { return }
        removed = true
        _ = runCommand(["ip", "netns", "del", namespace])
        _ = runCommand(["ip", "link", "del", interfaceName])  // gone with the namespace, normally
    }
}
