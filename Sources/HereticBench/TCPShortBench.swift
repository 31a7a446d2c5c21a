import Atomics
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// Counters of the short-connection clients.
struct ShortStats {
    var cycles: UInt64 = 0
    var failures: UInt64 = 0
}

/// The server of the short test: receive the 150 bytes, send them back, close.
struct ShortServer: TCPHandler {
    let size: Int
    var got = 0
    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection) {
        connection.send(data)
        got += data.count
        if got >= size { connection.close() }
    }
}

/// One client loop of the brief's short-connection test: connect, send 150 formatted bytes,
/// receive the echo (checked), close; when closed, connect again.
struct ShortClient: TCPHandler {
    let stats: UnsafeMutablePointer<ShortStats>
    let stop: UnsafeAtomic<Bool>
    unowned(unsafe) let interface: Interface
    let server: TCPEndpoint
    let flow: UInt32
    let size: Int
    let sequence: UInt32
    var got = 0
    var ok = true

    mutating func connected(_ connection: inout TCPConnection) {
        let (f, s, n) = (flow, sequence, size)
        withUnsafeTemporaryAllocation(byteCount: n, alignment: 8) { buffer in
            formatMessage(flow: f, sequence: s, into: buffer.baseAddress!, length: n)
            _ = connection.send(UnsafeRawBufferPointer(buffer))
        }
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection) {
        let (f, s, n, offset) = (flow, sequence, size, got)
        let matches = withUnsafeTemporaryAllocation(byteCount: n, alignment: 8) { expected -> Bool in
            formatMessage(flow: f, sequence: s, into: expected.baseAddress!, length: n)
            return offset + data.count <= n && memcmp(data.baseAddress!, expected.baseAddress! + offset, data.count) == 0
        }
        if !matches { ok = false }
        got += data.count
    }

    /// The server closes first (the brief's server loop ends with close), so it holds
    /// TIME-WAIT and the client's port is free again at once.
    mutating func peerClosed(_ connection: inout TCPConnection) { connection.close() }

    mutating func closed(_ reason: TCPCloseReason) {
        if reason == .normal && ok && got == size { stats.pointee.cycles &+= 1 } else { stats.pointee.failures &+= 1 }
        guard !stop.load(ordering: .relaxed) else { return }
        interface.connectTCP(to: server, ShortClient(stats: stats, stop: stop, interface: interface, server: server,
                                                    flow: flow, size: size, sequence: sequence &+ 1))
    }
}

public struct TCPShortBenchmark {
    public var layout: StackLayout
    public var connections: Int
    public var seconds: Double
    public var size = 150

    public init(layout: StackLayout, connections: Int = 64, seconds: Double = 5) {
        self.layout = layout
        self.connections = connections
        self.seconds = seconds
    }

    public func run() throws -> BenchResult {
        guard connections >= 1, connections <= 4096 else { throw BenchError("--conns must be between 1 and 4096") }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let cores = layout == .loopback ? 1 : 2
        let runtime = try Runtime(cores: cores)
        defer { runtime.shutdown() }
        let clientCore = cores - 1
        let serverAddress = IPv4Address(10, 0, 0, 1), clientAddress = IPv4Address(10, 0, 0, 2)
        let net = VirtualSwitch()
        defer { runtime.shutdown(); net.detach() }  // stop the cores, then free the switch
        let pools = (0..<cores).map { _ in PacketPool(capacity: 65_536) }
        let server = Interface(device: net.makePort(core: 0, pool: pools[0]), pool: pools[0],
                               configuration: .init(mac: MACAddress(2, 0, 0, 0, 0, 1), address: serverAddress))
        let client = Interface(device: net.makePort(core: clientCore, pool: pools[clientCore]), pool: pools[clientCore],
                               configuration: .init(mac: MACAddress(2, 0, 0, 0, 0, 2), address: clientAddress))
        let stats = UnsafeMutablePointer<ShortStats>.allocate(capacity: 1)
        stats.initialize(to: ShortStats())
        let stop = UnsafeAtomic<Bool>.create(false)
        defer { stats.deallocate(); stop.destroy() }
        let box = Unchecked((server, client, stats, stop))
        let size = self.size

        try runtime.run(on: 0) { core in
            try? box.value.0.listenTCP(port: 7) { ShortServer(size: size) }
            let poller = InterfacePoller()
            poller.add(box.value.0)
            if clientCore == 0 { poller.add(box.value.1) }
            core.addPoller(poller)
        }
        try runtime.run(on: clientCore) { core in
            if clientCore != 0 {
                let poller = InterfacePoller()
                poller.add(box.value.1)
                core.addPoller(poller)
            }
            let probe = [UInt8](repeating: 0, count: 8)
            probe.withUnsafeBytes { _ = box.value.1.sendUDP($0, from: 9, to: UDPEndpoint(serverAddress, 9)) }
        }
        let deadline = MonotonicClock.nanoseconds() + 10_000_000_000
        while try runtime.run(on: clientCore, { _ in box.value.1.neighbor(serverAddress) == nil }) {
            if MonotonicClock.nanoseconds() > deadline { throw BenchError("ARP did not resolve") }
            usleep(1000)
        }
        let conns = connections
        let serverEndpoint = TCPEndpoint(serverAddress, 7)
        try runtime.run(on: clientCore) { _ in
            for f in 0..<conns {
                box.value.1.connectTCP(to: serverEndpoint,
                                       ShortClient(stats: box.value.2, stop: box.value.3, interface: box.value.1,
                                                   server: serverEndpoint, flow: UInt32(f), size: size, sequence: 0))
            }
        }
        usleep(200_000)  // let every loop get going
        let rssBefore = ProcessStats.residentBytes()
        let (startCycles, start) = try runtime.run(on: clientCore) { _ in (box.value.2.pointee.cycles, MonotonicClock.nanoseconds()) }
        while Double(MonotonicClock.nanoseconds() - start) / 1e9 < seconds { usleep(10_000) }
        let (endCycles, end) = try runtime.run(on: clientCore) { _ -> (UInt64, UInt64) in
            box.value.3.store(true, ordering: .relaxed)
            return (box.value.2.pointee.cycles, MonotonicClock.nanoseconds())
        }
        let rss = ProcessStats.residentBytes()
        usleep(100_000)
        let failures = try runtime.run(on: clientCore) { _ in box.value.2.pointee.failures }
        let (timeWait, overflows, serverConns) = try runtime.run(on: 0) { _ in
            (box.value.0.tcp.timeWaitCount, box.value.0.tcp.timeWaitOverflows, box.value.0.tcpConnectionCount)
        }
        let limit = try runtime.run(on: 0) { _ in box.value.0.tcp.timeWaitLimit }
        let ok = failures == 0 && endCycles > startCycles && timeWait <= limit
        var r = BenchResult(bench: "tcp-short", verified: ok)
        r.add("layout", layout.rawValue)
        r.add("conns", conns)
        r.add("seconds", seconds)
        r.add("cycles_per_sec", (Double(endCycles - startCycles) / (Double(end - start) / 1e9)).rounded())
        r.add("failures", failures)
        r.add("time_wait_entries", timeWait)
        r.add("time_wait_limit", limit)
        r.add("time_wait_overflows", overflows)
        r.add("server_connections", serverConns)
        r.add("rss_bytes", rss)
        r.add("rss_growth_bytes", rss &- rssBefore)
        return r
    }
}
