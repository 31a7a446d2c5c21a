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
    /// Round trips in microseconds (one clock read per message: the issue asks for latency).
    var rtt = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000,
                                numberOfSignificantValueDigits: .three)
}

/// The server side: every byte straight back.
struct TCPEchoServer: TCPHandler {
    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection) {
        connection.send(data)
    }
}

/// One long connection of the brief's echo test: send 150 formatted bytes, wait for all of
/// them to come back, check them, record the round trip, send the next.
struct TCPEchoClient: TCPHandler {
    let stats: UnsafeMutablePointer<TCPEchoStats>
    let stop: UnsafeAtomic<Bool>
    let flow: UInt32
    let size: Int
    var sequence: UInt32 = 0
    var got = 0
    var ok = true
    var sentAt: UInt64 = 0

    mutating func sendNext(_ connection: inout TCPConnection) {
        got = 0
        ok = true
        sentAt = MonotonicClock.nanoseconds()
        sendMessage(&connection, flow: flow, sequence: sequence, size: size)
    }

    mutating func connected(_ connection: inout TCPConnection) {
        stats.pointee.connected += 1
        sendNext(&connection)
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection) {
        // The echo may arrive in pieces: check each against the expected bytes at its offset.
        if !echoMatches(data, at: got, flow: flow, sequence: sequence, size: size) { ok = false }
        got += data.count
        guard got >= size else { return }
        if ok && got == size { stats.pointee.echoes &+= 1 } else { stats.pointee.mismatches &+= 1 }
        if stats.pointee.measuring {
            _ = stats.pointee.rtt.record((MonotonicClock.nanoseconds() - sentAt) / 1000)
        }
        if stop.load(ordering: .relaxed) { return }
        sequence &+= 1
        sendNext(&connection)
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
        guard connections >= 1, connections <= 16_000 else {
            throw BenchError("--conns must be between 1 and 16000 for now (one client address, ephemeral ports)")
        }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let pair = try SwitchedPair(layout: layout)
        defer { pair.shutdown() }
        let stats = UnsafeMutablePointer<TCPEchoStats>.allocate(capacity: 1)
        stats.initialize(to: TCPEchoStats())
        let stop = UnsafeAtomic<Bool>.create(false)
        defer { stats.deinitialize(count: 1); stats.deallocate(); stop.destroy() }
        let shared = Unchecked((stats, stop))
        try pair.start { try $0.listenTCP(port: 7) { TCPEchoServer() } }
        let (conns, size) = (connections, self.size)
        let server = TCPEndpoint(SwitchedPair.serverAddress, 7)
        try pair.onClient { _ in
            for f in 0..<conns {
                pair.client.connectTCP(to: server, TCPEchoClient(stats: shared.value.0, stop: shared.value.1,
                                                                 flow: UInt32(f), size: size))
            }
        }
        try pair.waitOnClient("connections did not establish") { _ in shared.value.0.pointee.connected >= conns }
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
