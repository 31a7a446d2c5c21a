import Atomics
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// Counters of the hold test, reached through a pointer.
struct HoldStats {
    var established = 0
    var echoes: UInt64 = 0
    var failures = 0
    var pushing = false
}

/// A held client connection: silent until `push` starts, then an echo loop of 150 bytes.
/// Small on purpose: its fields are the per-connection application state.
struct HoldClient: TCPHandler {
    let stats: UnsafeMutablePointer<HoldStats>
    var sequence: UInt32 = 0
    var got: UInt16 = 0

    mutating func connected(_ connection: inout TCPConnection) { stats.pointee.established += 1 }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection) {
        got &+= UInt16(data.count)
        guard got >= 150 else { return }
        got = 0
        stats.pointee.echoes &+= 1
        guard stats.pointee.pushing else { return }
        sequence &+= 1
        HoldClient.send(&connection, sequence)
    }

    static func send(_ connection: inout TCPConnection, _ sequence: UInt32) {
        withUnsafeTemporaryAllocation(byteCount: 150, alignment: 8) { buffer in
            formatMessage(flow: UInt32(truncatingIfNeeded: connection.localPort), sequence: sequence,
                          into: buffer.baseAddress!, length: 150)
            _ = connection.send(UnsafeRawBufferPointer(buffer))
        }
    }

    mutating func closed(_ reason: TCPCloseReason) { stats.pointee.failures += 1 }
}

public struct TCPHoldBenchmark {
    public var connections: Int
    public var seconds: Double
    public var layout: StackLayout

    public init(connections: Int, seconds: Double = 5, layout: StackLayout = .loopback) {
        self.connections = connections
        self.seconds = seconds
        self.layout = layout
    }

    public func run() throws -> BenchResult {
        guard connections >= 1, connections <= 4_000_000 else { throw BenchError("--conns must be between 1 and 4000000") }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let cores = layout == .loopback ? 1 : 2
        let runtime = try Runtime(cores: cores)
        defer { runtime.shutdown() }
        let clientCore = cores - 1
        let serverAddress = IPv4Address(10, 0, 0, 1), clientAddress = IPv4Address(10, 0, 0, 2)
        let net = VirtualSwitch(ringCapacity: 16_384)
        defer { runtime.shutdown(); net.detach() }  // stop the cores, then free the switch
        let pools = (0..<cores).map { _ in PacketPool(capacity: 65_536) }
        let server = Interface(device: net.makePort(core: 0, pool: pools[0]), pool: pools[0],
                               configuration: .init(mac: MACAddress(2, 0, 0, 0, 0, 1), address: serverAddress))
        let client = Interface(device: net.makePort(core: clientCore, pool: pools[clientCore]), pool: pools[clientCore],
                               configuration: .init(mac: MACAddress(2, 0, 0, 0, 0, 2), address: clientAddress))
        let stats = UnsafeMutablePointer<HoldStats>.allocate(capacity: 1)
        stats.initialize(to: HoldStats())
        defer { stats.deallocate() }
        let box = Unchecked((server, client, stats))
        // One address pair offers 16,384 ephemeral ports: one server port per 16,000 connections.
        let perPort = 16_000
        let serverPorts = (connections + perPort - 1) / perPort
        try runtime.run(on: 0) { core in
            for p in 0..<serverPorts { try? box.value.0.listenTCP(port: UInt16(1000 + p)) { TCPEchoServer() } }
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
        let deadline = MonotonicClock.nanoseconds() + 300_000_000_000
        while try runtime.run(on: clientCore, { _ in box.value.1.neighbor(serverAddress) == nil }) {
            if MonotonicClock.nanoseconds() > deadline { throw BenchError("ARP did not resolve") }
            usleep(1000)
        }
        let rssBefore = ProcessStats.residentBytes()
        let conns = connections
        let start = MonotonicClock.nanoseconds()
        // Open in batches so SYNs never outrun the switch's queues.
        var opened = 0
        while opened < conns {
            let batch = min(2000, conns - opened)
            let first = opened
            try runtime.run(on: clientCore) { _ in
                for i in first..<(first + batch) {
                    box.value.1.connectTCP(to: TCPEndpoint(serverAddress, UInt16(1000 + i / perPort)),
                                           HoldClient(stats: box.value.2))
                }
            }
            opened += batch
            while try runtime.run(on: clientCore, { _ in box.value.2.pointee.established + box.value.2.pointee.failures }) < opened - 2000 {
                if MonotonicClock.nanoseconds() > deadline { throw BenchError("connections did not establish") }
                usleep(200)
            }
        }
        while try runtime.run(on: clientCore, { _ in box.value.2.pointee.established + box.value.2.pointee.failures }) < conns {
            if MonotonicClock.nanoseconds() > deadline { throw BenchError("connections did not establish") }
            usleep(1000)
        }
        let established = MonotonicClock.nanoseconds()
        usleep(300_000)  // let the last ACKs settle
        let rssHeld = ProcessStats.residentBytes()
        let (serverConns, clientConns) = (try runtime.run(on: 0) { _ in box.value.0.tcpConnectionCount },
                                          try runtime.run(on: clientCore) { _ in box.value.1.tcpConnectionCount })

        // Push and pull: every held connection echoes in a loop for the rest of the time.
        let (startEchoes, pushStart) = try runtime.run(on: clientCore) { _ -> (UInt64, UInt64) in
            box.value.2.pointee.pushing = true
            return (box.value.2.pointee.echoes, MonotonicClock.nanoseconds())
        }
        try runtime.run(on: clientCore) { _ in
            box.value.1.tcp.forEachConnection { c in var c = c; HoldClient.send(&c, 0) }
        }
        while Double(MonotonicClock.nanoseconds() - pushStart) / 1e9 < seconds { usleep(10_000) }
        let (endEchoes, pushEnd, failures) = try runtime.run(on: clientCore) { _ -> (UInt64, UInt64, Int) in
            box.value.2.pointee.pushing = false
            return (box.value.2.pointee.echoes, MonotonicClock.nanoseconds(), box.value.2.pointee.failures)
        }
        let ok = failures == 0 && serverConns == conns && clientConns == conns && endEchoes > startEchoes
        var r = BenchResult(bench: "tcp-hold", verified: ok)
        r.add("layout", layout.rawValue)
        r.add("conns", conns)
        r.add("establish_per_sec", (Double(conns) / (Double(established - start) / 1e9)).rounded())
        r.add("rss_bytes", rssHeld)
        r.add("bytes_per_conn", Double(rssHeld &- rssBefore) / Double(conns))
        r.add("echoes_per_sec", (Double(endEchoes - startEchoes) / (Double(pushEnd - pushStart) / 1e9)).rounded())
        r.add("failures", failures)
        return r
    }
}
