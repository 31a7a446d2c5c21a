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
    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
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

    mutating func connected(_ connection: some TCPConnection) {
        sendMessage(connection, flow: flow, sequence: sequence, size: size)
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        if !echoMatches(data, at: got, flow: flow, sequence: sequence, size: size) { ok = false }
        got += data.count
    }

    /// The server closes first (the brief's server loop ends with close), so it holds
    /// TIME-WAIT and the client's port is free again at once.
    mutating func peerClosed(_ connection: some TCPConnection) { connection.close() }

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
        let stats = UnsafeMutablePointer<ShortStats>.allocate(capacity: 1)
        stats.initialize(to: ShortStats())
        let stop = UnsafeAtomic<Bool>.create(false)
        defer { stats.deallocate(); stop.destroy() }
        // The cores stop before what their handlers point to is freed (defers run last first).
        let pair = try SwitchedPair(layout: layout)
        defer { pair.shutdown() }
        let shared = Unchecked((stats, stop))
        let (conns, size) = (connections, self.size)
        try pair.start { try $0.listenTCP(port: 7) { ShortServer(size: size) } }
        let server = TCPEndpoint(SwitchedPair.serverAddress, 7)
        try pair.onClient { _ in
            for f in 0..<conns {
                pair.client.connectTCP(to: server,
                                       ShortClient(stats: shared.value.0, stop: shared.value.1, interface: pair.client,
                                                   server: server, flow: UInt32(f), size: size, sequence: 0))
            }
        }
        usleep(200_000)  // let every loop get going
        let rssBefore = ProcessStats.residentBytes()
        let (startCycles, start) = try pair.onClient { _ in (shared.value.0.pointee.cycles, MonotonicClock.nanoseconds()) }
        while Double(MonotonicClock.nanoseconds() - start) / 1e9 < seconds { usleep(10_000) }
        let (endCycles, end) = try pair.onClient { _ -> (UInt64, UInt64) in
            shared.value.1.store(true, ordering: .relaxed)
            return (shared.value.0.pointee.cycles, MonotonicClock.nanoseconds())
        }
        let rss = ProcessStats.residentBytes()
        // Every client finishes the cycle it is in, and opens no other: then the server holds
        // nothing but TIME-WAIT, one entry for each cycle since the start (the server closes
        // first), unless the table was full (counted).
        try pair.waitOnClient("the clients did not finish their last cycles", seconds: 10) { _ in
            pair.client.tcpConnectionCount == 0
        }
        let (cycles, failures) = try pair.onClient { _ in (shared.value.0.pointee.cycles, shared.value.0.pointee.failures) }
        let (timeWait, looked, entered, overflows, serverConns, limit) = try pair.onServer { _ in
            let t = pair.server.tcp
            return (t.timeWaitCount, t.timeWaitSlots, t.timeWaitEntered, t.timeWaitOverflows, pair.server.tcpConnectionCount,
                    t.timeWaitLimit)
        }
        let bookkeeping = timeWait == looked && serverConns == timeWait && UInt64(entered + overflows) == cycles
        let ok = failures == 0 && endCycles > startCycles && bookkeeping
        var r = BenchResult(bench: "tcp-short", verified: ok)
        r.add("layout", layout.rawValue)
        r.add("conns", conns)
        r.add("seconds", seconds)
        r.add("cycles_per_sec", (Double(endCycles - startCycles) / (Double(end - start) / 1e9)).rounded())
        r.add("failures", failures)
        r.add("time_wait_entries", timeWait)
        r.add("time_wait_limit", limit)
        r.add("time_wait_overflows", overflows)
        r.add("time_wait_entered", entered)
        r.add("time_wait_consistent", bookkeeping)
        r.add("server_connections", serverConns)
        r.add("rss_bytes", rss)
        r.add("rss_growth_bytes", rss &- rssBefore)
        return r
    }
}
