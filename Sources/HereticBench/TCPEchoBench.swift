import Atomics
import Histogram
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// Counters of the TCP echo clients, reached through a pointer from their handlers.
struct TCPEchoStats {
    var connected = 0
    var echoes: UInt64 = 0
    var mismatches: UInt64 = 0
    var closedEarly = 0
    var measuring = false
    /// Connections start their loop when connected (small rows), or all together once every
    /// connection is up (the million row: its handshakes are not crowded out by echoes).
    var startOnConnect = true
    /// Round trips in microseconds (one clock read per message: the issue asks for latency).
    var rtt = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000,
                                numberOfSignificantValueDigits: .three)
}


/// One long connection of the brief's echo test: send 150 formatted bytes, wait for all of
/// them to come back, check them, record the round trip, send the next.
struct TCPEchoClient: TCPHandler {
    let stats: UnsafeMutablePointer<TCPEchoStats>
    let stop: UnsafeAtomic<Bool>
    var flow: UInt32 = 0
    let size: Int
    var sequence: UInt32 = 0
    var got = 0
    var ok = true
    var sentAt: UInt64 = 0

    mutating func sendNext(_ connection: some TCPConnection) {
        got = 0
        ok = true
        sentAt = MonotonicClock.nanoseconds()
        sendMessage(connection, flow: flow, sequence: sequence, size: size)
    }

    /// A connection's flow number, from its ports: the client and whoever starts it agree.
    static func flow(of connection: some TCPConnection) -> UInt32 {
        UInt32(connection.localPort) | UInt32(connection.remote.port) << 16
    }

    mutating func connected(_ connection: some TCPConnection) {
        stats.pointee.connected += 1
        flow = Self.flow(of: connection)
        if stats.pointee.startOnConnect { sendNext(connection) }
    }

    /// The first message of a connection that did not start on connect (sequence 0, sent
    /// from outside the handler, so no RTT sample for it).
    static func start(_ connection: some TCPConnection, size: Int) {
        sendMessage(connection, flow: flow(of: connection), sequence: 0, size: size)
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        // The echo may arrive in pieces: check each against the expected bytes at its offset.
        if !echoMatches(data, at: got, flow: flow, sequence: sequence, size: size) { ok = false }
        got += data.count
        guard got >= size else { return }
        if ok && got == size { stats.pointee.echoes &+= 1 } else { stats.pointee.mismatches &+= 1 }
        if stats.pointee.measuring && sentAt != 0 {
            _ = stats.pointee.rtt.record((MonotonicClock.nanoseconds() - sentAt) / 1000)
        }
        if stop.load(ordering: .relaxed) { return }
        sequence &+= 1
        sendNext(connection)
    }

    mutating func closed(_ reason: TCPCloseReason) { stats.pointee.closedEarly += 1 }
}

public struct TCPEchoBenchmark {
    public var layout: StackLayout
    public var connections: Int
    public var seconds: Double
    public var size = 150

    public init(layout: StackLayout, connections: Int, seconds: Double = 5) {
        self.layout = layout
        self.connections = connections
        self.seconds = seconds
    }

    public func run() throws -> BenchResult {
        guard connections >= 1, connections <= 4_000_000 else {
            throw BenchError("--conns must be between 1 and 4000000")
        }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        // One address pair offers 16,384 ephemeral ports: one server port per 16,000
        // connections. Large rows open in batches and start their loops once all are up.
        let perPort = 16_000
        let large = connections > perPort
        let stats = UnsafeMutablePointer<TCPEchoStats>.allocate(capacity: 1)
        stats.initialize(to: TCPEchoStats())
        let stop = UnsafeAtomic<Bool>.create(false)
        defer { stats.deinitialize(count: 1); stats.deallocate(); stop.destroy() }
        // The cores stop before what their handlers point to is freed (defers run last first).
        let pair = try SwitchedPair(layout: layout, ringCapacity: large ? 16_384 : 4096)
        defer { pair.shutdown() }
        let shared = Unchecked((stats, stop))
        let (conns, size) = (connections, self.size)
        let serverPorts = (conns + perPort - 1) / perPort
        try pair.start { iface in
            for p in 0..<serverPorts { try iface.listenTCP(port: UInt16(7 + p)) { TCPEchoServer() } }
        }
        try pair.onClient { _ in shared.value.0.pointee.startOnConnect = !large }
        var opened = 0
        while opened < conns {
            let batch = min(2000, conns - opened), first = opened
            try pair.onClient { _ in
                for i in first..<(first + batch) {
                    pair.client.connectTCP(to: TCPEndpoint(SwitchedPair.serverAddress, UInt16(7 + i / perPort)),
                                           TCPEchoClient(stats: shared.value.0, stop: shared.value.1, size: size))
                }
            }
            opened += batch
            let target = opened - (large ? 2000 : 0)
            try pair.waitOnClient("connections did not establish", seconds: 300) { _ in
                shared.value.0.pointee.connected + shared.value.0.pointee.closedEarly >= target
            }
        }
        try pair.waitOnClient("connections did not establish", seconds: 300) { _ in
            shared.value.0.pointee.connected + shared.value.0.pointee.closedEarly >= conns
        }
        if large {
            // Every connection sends its first message, in batches the queues absorb.
            let list = try pair.onClient { _ -> Unchecked<UnsafeMutablePointer<[TCPConnectionHandle]>> in
                let p = UnsafeMutablePointer<[TCPConnectionHandle]>.allocate(capacity: 1)
                p.initialize(to: [])
                pair.client.tcp.forEachConnection { p.pointee.append($0) }
                return Unchecked(p)
            }
            defer { list.value.deinitialize(count: 1); list.value.deallocate() }
            let total = try pair.onClient { _ in list.value.pointee.count }
            var started = 0
            while started < total {
                let from = started, to = min(total, started + 4000)
                try pair.onClient { _ in for i in from..<to { TCPEchoClient.start(list.value.pointee[i], size: size) } }
                started = to
                try pair.waitOnClient("first echoes did not come back", seconds: 300) { _ in
                    Int(shared.value.0.pointee.echoes) + 16_000 >= to
                }
            }
        }
        let (startEchoes, start) = try pair.onClient { _ -> (UInt64, UInt64) in
            shared.value.0.pointee.measuring = true
            return (shared.value.0.pointee.echoes, MonotonicClock.nanoseconds())
        }
        while Double(MonotonicClock.nanoseconds() - start) / 1e9 < seconds { usleep(10_000) }
        let (endEchoes, end) = try pair.onClient { _ -> (UInt64, UInt64) in
            shared.value.0.pointee.measuring = false
            shared.value.1.store(true, ordering: .relaxed)
            return (shared.value.0.pointee.echoes, MonotonicClock.nanoseconds())
        }
        usleep(50_000)
        let s = try pair.onClient { _ in shared.value.0.pointee }
        let rtt = s.rtt
        let ok = s.mismatches == 0 && s.closedEarly == 0 && endEchoes > startEchoes
        var r = BenchResult(bench: "tcp-echo", verified: ok)
        r.add("layout", layout.rawValue)
        r.add("conns", conns)
        r.add("payload_bytes", size)
        r.add("seconds", seconds)
        r.add("echoes_per_sec", (Double(endEchoes - startEchoes) / (Double(end - start) / 1e9)).rounded())
        r.add("rtt_p50_us", rtt.valueAtPercentile(50))
        r.add("rtt_p99_us", rtt.valueAtPercentile(99))
        r.add("rtt_p999_us", rtt.valueAtPercentile(99.9))
        r.add("echoes_verified", s.echoes)
        r.add("mismatches", s.mismatches)
        r.add("rss_bytes", ProcessStats.residentBytes())
        return r
    }
}
