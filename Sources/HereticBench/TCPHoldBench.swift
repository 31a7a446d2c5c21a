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
    /// The close phase: normal closes are counted, not failures.
    var closing = false
    var closed = 0
    /// Failures by cause: reset, refused, timed out, idle.
    var resets = 0, refusals = 0, timeouts = 0, idles = 0
    /// Every client connection, and the next one to push to: each echo that comes back sends
    /// the next message on the next connection in turn, so every connection carries traffic
    /// while the messages in flight stay bounded (a push service's pacing).
    var roster: UnsafeMutablePointer<[TCPConnectionHandle]>?
    var cursor = 0
    var sequence: UInt32 = 0
}

/// A held client connection: silent until `push` starts, then an echo loop of 150 bytes.
/// Small on purpose: its fields are the per-connection application state.
struct HoldClient: TCPHandler {
    let stats: UnsafeMutablePointer<HoldStats>
    var sequence: UInt32 = 0
    var got: UInt16 = 0

    mutating func connected(_ connection: some TCPConnection) { stats.pointee.established += 1 }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        got &+= UInt16(data.count)
        guard got >= 150 else { return }
        got = 0
        stats.pointee.echoes &+= 1
        guard stats.pointee.pushing, let roster = stats.pointee.roster else { return }
        let i = stats.pointee.cursor
        stats.pointee.cursor = i + 1 == roster.pointee.count ? 0 : i + 1
        stats.pointee.sequence &+= 1
        HoldClient.send(roster.pointee[i], stats.pointee.sequence)
    }

    static func send(_ connection: some TCPConnection, _ sequence: UInt32) {
        sendMessage(connection, flow: UInt32(truncatingIfNeeded: connection.localPort), sequence: sequence, size: 150)
    }

    mutating func closed(_ reason: TCPCloseReason) {
        if stats.pointee.closing && reason == .normal { stats.pointee.closed += 1; return }
        stats.pointee.failures += 1
        switch reason {
        case .normal: break
        case .reset: stats.pointee.resets += 1
        case .refused: stats.pointee.refusals += 1
        case .timedOut: stats.pointee.timeouts += 1
        case .idle: stats.pointee.idles += 1
        }
    }
}

public struct TCPHoldBenchmark {
    public var connections: Int
    public var seconds: Double
    public var layout: StackLayout
    /// After the echo phase, close every connection and report how much memory came back.
    public var closeAll: Bool
    /// Messages circulating during the echo phase (each echo sends the next message on the
    /// next connection in turn).
    public var inFlight: Int

    public init(connections: Int, seconds: Double = 5, layout: StackLayout = .loopback, closeAll: Bool = false,
                inFlight: Int = 16_384) {
        self.connections = connections
        self.inFlight = inFlight
        self.seconds = seconds
        self.layout = layout
        self.closeAll = closeAll
    }

    public func run() throws -> BenchResult {
        guard connections >= 1, connections <= 4_000_000 else { throw BenchError("--conns must be between 1 and 4000000") }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        guard inFlight >= 1 else { throw BenchError("--in-flight must be at least 1") }
        let stats = UnsafeMutablePointer<HoldStats>.allocate(capacity: 1)
        stats.initialize(to: HoldStats())
        defer { stats.deallocate() }
        // The cores stop before what their handlers point to is freed (defers run last first).
        let pair = try SwitchedPair(layout: layout, ringCapacity: 16_384)
        defer { pair.shutdown() }
        let shared = Unchecked(stats)
        // One address pair offers 16,384 ephemeral ports: one server port per 16,000 connections.
        let perPort = 16_000
        let serverPorts = (connections + perPort - 1) / perPort
        try pair.start { iface in
            for p in 0..<serverPorts { try iface.listenTCP(port: UInt16(1000 + p)) { TCPEchoServer() } }
        }
        let rssBefore = ProcessStats.residentBytes()
        let conns = connections
        let start = MonotonicClock.nanoseconds()
        // Open in batches so SYNs never outrun the switch's queues.
        var opened = 0
        while opened < conns {
            let batch = min(2000, conns - opened)
            let first = opened
            try pair.onClient { _ in
                for i in first..<(first + batch) {
                    pair.client.connectTCP(to: TCPEndpoint(SwitchedPair.serverAddress, UInt16(1000 + i / perPort)),
                                           HoldClient(stats: shared.value))
                }
            }
            opened += batch
            let target = opened - 2000
            try pair.waitOnClient("connections did not establish", seconds: 300) { _ in
                shared.value.pointee.established + shared.value.pointee.failures >= target
            }
        }
        try pair.waitOnClient("connections did not establish", seconds: 300) { _ in
            shared.value.pointee.established + shared.value.pointee.failures >= conns
        }
        let established = MonotonicClock.nanoseconds()
        usleep(300_000)  // let the last ACKs settle
        let rssHeld = ProcessStats.residentBytes()
        let serverConns = try pair.onServer { _ in pair.server.tcpConnectionCount }
        let clientConns = try pair.onClient { _ in pair.client.tcpConnectionCount }

        // Push and pull: every held connection echoes in a loop for the rest of the time.
        let (startEchoes, pushStart) = try pair.onClient { _ -> (UInt64, UInt64) in
            shared.value.pointee.pushing = true
            return (shared.value.pointee.echoes, MonotonicClock.nanoseconds())
        }
        // `inFlight` messages circulate over all the connections in turn; they start in
        // batches, as establishment did, so they do not overflow the queues at once.
        let list = try pair.onClient { _ -> Unchecked<UnsafeMutablePointer<[TCPConnectionHandle]>> in
            let p = UnsafeMutablePointer<[TCPConnectionHandle]>.allocate(capacity: 1)
            p.initialize(to: [])
            pair.client.tcp.forEachConnection { p.pointee.append($0) }
            shared.value.pointee.roster = p
            return Unchecked(p)
        }
        defer { list.value.deinitialize(count: 1); list.value.deallocate() }
        let total = try pair.onClient { _ in list.value.pointee.count }
        let window = min(total, inFlight)
        var started = 0
        while started < window {
            let from = started, to = min(window, started + 4000)
            try pair.onClient { _ in
                for i in from..<to { HoldClient.send(list.value.pointee[i], 0) }
                shared.value.pointee.cursor = to == total ? 0 : to
            }
            started = to
        }
        while Double(MonotonicClock.nanoseconds() - pushStart) / 1e9 < seconds { usleep(10_000) }
        let (endEchoes, pushEnd, failures) = try pair.onClient { _ -> (UInt64, UInt64, Int) in
            shared.value.pointee.pushing = false
            return (shared.value.pointee.echoes, MonotonicClock.nanoseconds(), shared.value.pointee.failures)
        }
        let ok = failures == 0 && serverConns == conns && clientConns == conns && endEchoes > startEchoes
        var r = BenchResult(bench: "tcp-hold", verified: ok)
        r.add("layout", layout.rawValue)
        r.add("conns", conns)
        r.add("establish_per_sec", (Double(conns) / (Double(established - start) / 1e9)).rounded())
        r.add("rss_bytes", rssHeld)
        r.add("bytes_per_conn", Double(rssHeld &- rssBefore) / Double(conns))
        r.add("echoes_per_sec", (Double(endEchoes - startEchoes) / (Double(pushEnd - pushStart) / 1e9)).rounded())
        r.add("in_flight", window)
        // Each echo moves the cursor one connection on: rounds >= 1 means every connection
        // carried traffic.
        r.add("push_rounds", (Double(endEchoes - startEchoes) / Double(max(1, total)) * 100).rounded() / 100)
        r.add("failures", failures)
        guard closeAll else { return r }
        // Let the echoes still in flight come home before closing.
        var lastEchoes = endEchoes
        for _ in 0..<100 {
            usleep(100_000)
            let now = try pair.onClient { _ in shared.value.pointee.echoes }
            if now == lastEchoes { break }
            lastEchoes = now
        }
        // Close them all (client first, in batches the switch's queues absorb) and see the
        // memory come back: the server forgets each connection, the client keeps at most its
        // TIME-WAIT limit; the arenas give freed slots back.
        try pair.onClient { _ in shared.value.pointee.closing = true }
        var closedSoFar = 0
        while closedSoFar < total {
            let from = closedSoFar, to = min(total, closedSoFar + 2000)
            try pair.onClient { _ in for i in from..<to { list.value.pointee[i].close() } }
            closedSoFar = to
            let target = max(0, to - 2000)
            try pair.waitOnClient("connections did not close", seconds: 300) { _ in
                shared.value.pointee.closed + shared.value.pointee.failures - failures >= target
            }
        }
        try pair.waitOnClient("connections did not close (\(total) to close)", seconds: 300) { _ in
            shared.value.pointee.closed + shared.value.pointee.failures - failures >= total
        }
        let closeFailures = try pair.onClient { _ in shared.value.pointee.failures } - failures
        let (resets, timeouts) = try pair.onClient { _ in (shared.value.pointee.resets, shared.value.pointee.timeouts) }
        try pair.onClient { _ in list.value.pointee = [] }
        let serverDeadline = MonotonicClock.nanoseconds() + 60_000_000_000
        while try pair.onServer({ _ in pair.server.tcpConnectionCount }) > 0 && MonotonicClock.nanoseconds() < serverDeadline {
            usleep(10_000)
        }
        // The trims run on idle turns: arenas on the next tick, heap and packet pool at most
        // once a second each.
        usleep(1_300_000)
        let serverLeft = try pair.onServer { _ in pair.server.tcpConnectionCount }
        let (clientLeft, timeWaitLimit) = try pair.onClient { _ in (pair.client.tcpConnectionCount, pair.client.tcp.timeWaitLimit) }
        let rssAfter = ProcessStats.residentBytes()
        let grown = Double(rssHeld &- rssBefore)
        let returned = grown > 0 ? max(0, Double(rssHeld) - Double(rssAfter)) / grown * 100 : 100

        // Every close completes normally, only the client's bounded TIME-WAIT remains, and
        // the memory of the connections that went came back, give or take 30 points (the
        // runtime's own growth, allocator slack).
        let expectedBack = 100 * (1 - Double(clientLeft) / Double(max(1, conns))) - 30
        r.verified = r.verified && closeFailures == 0 && serverLeft == 0 && clientLeft <= timeWaitLimit
            && returned >= expectedBack
        r.add("rss_after_close_bytes", rssAfter)
        r.add("memory_returned_percent", returned.rounded())
        r.add("left_after_close", serverLeft + clientLeft)
        r.add("time_wait_limit", timeWaitLimit)
        r.add("close_failures", closeFailures)
        r.add("close_resets", resets)
        r.add("close_timeouts", timeouts)
        let (clientRetransmits, clientDrops) = try pair.onClient { _ in
            (pair.client.tcp.retransmissions, pair.client.counters.transmitDrops)
        }
        let (serverRetransmits, serverDrops) = try pair.onServer { _ in
            (pair.server.tcp.retransmissions, pair.server.counters.transmitDrops)
        }
        r.add("retransmissions", clientRetransmits + serverRetransmits)
        r.add("transmit_drops", clientDrops + serverDrops)
        return r
    }
}
