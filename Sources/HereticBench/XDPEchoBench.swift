import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// `tcp-echo --path xdp`: as `--path tap`, Linux's own TCP is the client (the same Python
/// selector loop, every echo compared byte for byte), in a namespace on the far side of a
/// veth pair; Heretic's stack is the echo server on the other end, through an AF_XDP socket
/// (`XDPDevice`) whose UMEM is the stack's packet pool.
public struct XDPEchoBenchmark {
    public var connections: Int
    public var seconds: Double
    /// Forces native or generic XDP (nil: native where the interface has it).
    public var attach: XDPAttachMode?

    public init(connections: Int, seconds: Double, attach: XDPAttachMode? = nil) {
        self.connections = connections
        self.seconds = seconds
        self.attach = attach
    }

    public func run() throws -> BenchResult {
        guard connections >= 1, connections <= 10_000 else { throw BenchError("--conns must be between 1 and 10000 with --path xdp") }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let (ok, why) = XDPTestbed.canRun
        guard ok else { throw BenchError("--path xdp \(why)") }
        let id = getpid() % 100_000
        let bed = try XDPTestbed(namespace: "hrt-xbench-\(id)", interface: "hrtx\(id)", attach: attach)
        defer { bed.remove() }
        let stack = try TapStack(device: bed.device, pool: bed.pool, mac: bed.stackMAC, address: bed.stackAddress)
        defer { stack.shutdown() }
        var result = try TapEchoBenchmark.measure(layout: "xdp", connections: connections, seconds: seconds,
                                                  stack: stack) { bed.run($0) }
        // The device's side: how it ran and what the kernel dropped.
        let device = bed.device, shared = Unchecked(device)
        let (statistics, shortfalls, errors) = try stack.onCore { _ in
            (shared.value.statistics, shared.value.fillShortfalls, shared.value.errors)
        }
        result.add("xdp_mode", device.mode.rawValue)
        result.add("xdp_bind", device.zeroCopy ? "zero-copy" : "copy")
        result.add("xsk_rx_dropped", statistics.receiveDropped)
        result.add("xsk_rx_ring_full", statistics.receiveRingFull)
        result.add("xsk_fill_ring_empty", statistics.fillRingEmpty)
        result.add("xsk_tx_invalid", statistics.transmitInvalid)
        result.add("fill_shortfalls", shortfalls)
        result.add("kick_errors", errors)
        return result
    }
}
