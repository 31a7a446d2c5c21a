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

/// One end of the bulk test: keeps 256 KiB queued, checks every byte it receives.
struct StreamPeer: TCPHandler {
    let stats: UnsafeMutablePointer<StreamStats>
    var sentOffset = 0
    var receivedOffset = 0

    mutating func fill(_ connection: inout TCPConnection) {
        while !stats.pointee.stop && connection.bytesQueued < 256 * 1024 {
            let chunk = 16 * 1024
            let window = sentOffset % (1 << 16)
            guard connection.send(UnsafeRawBufferPointer(start: streamPattern + window, count: chunk)) else { return }
            sentOffset += chunk
            stats.pointee.sent += chunk
        }
    }

    mutating func connected(_ connection: inout TCPConnection) { fill(&connection) }
    mutating func writable(_ connection: inout TCPConnection) { fill(&connection) }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection) {
        let window = receivedOffset % (1 << 16)
        if memcmp(data.baseAddress!, streamPattern + window, data.count) != 0 { stats.pointee.mismatches += 1 }
        receivedOffset += data.count
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
        let stats = (0..<2).map { _ -> UnsafeMutablePointer<StreamStats> in
            let p = UnsafeMutablePointer<StreamStats>.allocate(capacity: 1)
            p.initialize(to: StreamStats())
            return p
        }
        defer { for p in stats { p.deallocate() } }
        let box = Unchecked((server, client, stats))
        try runtime.run(on: 0) { core in
            let serverStats = box.value.2[0]
            try? box.value.0.listenTCP(port: 5001) { StreamPeer(stats: serverStats) }
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
            box.value.1.connectTCP(to: TCPEndpoint(serverAddress, 5001), StreamPeer(stats: box.value.2[1]))
        }
        // Warm up (ARP, handshake, slow path), then measure what arrives on each side.
        usleep(300_000)
        func received() throws -> (Int, Int) {
            (try runtime.run(on: 0) { _ in box.value.2[0].pointee.received },
             try runtime.run(on: clientCore) { _ in box.value.2[1].pointee.received })
        }
        let before = try received()
        let start = MonotonicClock.nanoseconds()
        while Double(MonotonicClock.nanoseconds() - start) / 1e9 < seconds { usleep(10_000) }
        let after = try received()
        let end = MonotonicClock.nanoseconds()
        try runtime.run(on: 0) { _ in box.value.2[0].pointee.stop = true }
        try runtime.run(on: clientCore) { _ in box.value.2[1].pointee.stop = true }
        let mismatches = try runtime.run(on: 0) { _ in box.value.2[0].pointee.mismatches }
            + runtime.run(on: clientCore) { _ in box.value.2[1].pointee.mismatches }
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
