import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// The stream's bytes: a 64 KiB pattern repeated, so the receiver checks every byte with
/// memcmp against the same window.
nonisolated(unsafe) let streamPattern: UnsafeMutableRawPointer = {
    let n = 1 << 16
    let p = UnsafeMutableRawPointer.allocate(byteCount: 2 * n, alignment: 64)
    for i in 0..<(2 * n) { p.storeBytes(of: UInt8(truncatingIfNeeded: (i % n) &* 2654435761 >> 11), toByteOffset: i, as: UInt8.self) }
    return p
}()

struct StreamStats {
    var sent = 0
    var received = 0
    var mismatches = 0
    var stop = false
    var closed = 0
}

/// One end of the bulk test: keeps its send buffer full, checks every byte it receives.
struct StreamPeer: TCPHandler {
    let stats: UnsafeMutablePointer<StreamStats>
    var sentOffset = 0
    var receivedOffset = 0

    /// Sends until the connection's send buffer is full (`writable` asks for more).
    mutating func fill(_ connection: some TCPConnection) {
        let chunk = 16 * 1024
        while !stats.pointee.stop {
            let window = sentOffset % (1 << 16)
            let taken = connection.send(UnsafeRawBufferPointer(start: streamPattern + window, count: chunk))
            sentOffset += taken
            stats.pointee.sent += taken
            if taken < chunk { return }
        }
    }

    mutating func connected(_ connection: some TCPConnection) { fill(connection) }
    mutating func writable(_ connection: some TCPConnection) { fill(connection) }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        // In pieces that stay inside the pattern's two copies (data past a filled hole can
        // come as one delivery of up to a whole out-of-order range).
        var i = 0
        while i < data.count {
            let window = receivedOffset % (1 << 16)
            let n = min(data.count - i, (1 << 17) - window)
            if memcmp(data.baseAddress! + i, streamPattern + window, n) != 0 { stats.pointee.mismatches += 1 }
            receivedOffset += n
            i += n
        }
        stats.pointee.received += data.count
    }

    mutating func closed(_ reason: TCPCloseReason) { stats.pointee.closed += 1 }
}

public struct TCPStreamBenchmark {
    public var seconds: Double
    public var layout: StackLayout

    public init(seconds: Double = 5, layout: StackLayout = .balanced) {
        self.seconds = seconds
        self.layout = layout
    }

    public func run() throws -> BenchResult {
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let stats = (0..<2).map { _ -> UnsafeMutablePointer<StreamStats> in
            let p = UnsafeMutablePointer<StreamStats>.allocate(capacity: 1)
            p.initialize(to: StreamStats())
            return p
        }
        defer { for p in stats { p.deallocate() } }
        // The cores stop before what their handlers point to is freed (defers run last first).
        let pair = try SwitchedPair(layout: layout)
        defer { pair.shutdown() }
        let shared = Unchecked(stats)
        try pair.start { iface in
            let serverStats = shared.value[0]
            try iface.listenTCP(port: 5001) { StreamPeer(stats: serverStats) }
        }
        try pair.onClient { _ in
            pair.client.connectTCP(to: TCPEndpoint(SwitchedPair.serverAddress, 5001), StreamPeer(stats: shared.value[1]))
        }
        // Warm up (handshake, first windows), then measure what arrives on each side.
        usleep(300_000)
        func received() throws -> (Int, Int) {
            (try pair.onServer { _ in shared.value[0].pointee.received },
             try pair.onClient { _ in shared.value[1].pointee.received })
        }
        let before = try received()
        let start = MonotonicClock.nanoseconds()
        while Double(MonotonicClock.nanoseconds() - start) / 1e9 < seconds { usleep(10_000) }
        let after = try received()
        let end = MonotonicClock.nanoseconds()
        try pair.onServer { _ in shared.value[0].pointee.stop = true }
        try pair.onClient { _ in shared.value[1].pointee.stop = true }
        let mismatches = try pair.onServer { _ in shared.value[0].pointee.mismatches }
            + pair.onClient { _ in shared.value[1].pointee.mismatches }
        let secs = Double(end - start) / 1e9
        let toServer = Double(after.0 - before.0) * 8 / secs / 1e9
        let toClient = Double(after.1 - before.1) * 8 / secs / 1e9
        let ok = mismatches == 0 && after.0 > before.0 && after.1 > before.1
        var r = BenchResult(bench: "tcp-stream", verified: ok)
        r.add("layout", layout.rawValue)
        r.add("seconds", seconds)
        r.add("gbit_per_sec", toServer + toClient)
        r.add("client_to_server_gbit_per_sec", toServer)
        r.add("server_to_client_gbit_per_sec", toClient)
        r.add("mismatches", mismatches)
        return r
    }
}
