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
        let (f, s, n) = (flow, sequence, size)
        withUnsafeTemporaryAllocation(byteCount: n, alignment: 8) { buffer in
            formatMessage(flow: f, sequence: s, into: buffer.baseAddress!, length: n)
            _ = connection.send(UnsafeRawBufferPointer(buffer))
        }
    }

    mutating func connected(_ connection: inout TCPConnection) {
        stats.pointee.connected += 1
        sendNext(&connection)
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection) {
        // The echo may arrive in pieces: check each against the expected bytes at its offset.
        let (f, s, n, offset) = (flow, sequence, size, got)
        let matches = withUnsafeTemporaryAllocation(byteCount: n, alignment: 8) { expected -> Bool in
            formatMessage(flow: f, sequence: s, into: expected.baseAddress!, length: n)
            return offset + data.count <= n && memcmp(data.baseAddress!, expected.baseAddress! + offset, data.count) == 0
        }
        if !matches { ok = false }
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
        let stats = UnsafeMutablePointer<TCPEchoStats>.allocate(capacity: 1)
        stats.initialize(to: TCPEchoStats())
        let stop = UnsafeAtomic<Bool>.create(false)
        defer { stats.deinitialize(count: 1); stats.deallocate(); stop.destroy() }
        let box = Unchecked((server, client, stats, stop))

        try runtime.run(on: 0) { core in
            try? box.value.0.listenTCP(port: 7) { TCPEchoServer() }
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
            // Resolve ARP before the SYNs, which would otherwise queue behind it.
            let probe = [UInt8](repeating: 0, count: 8)
            probe.withUnsafeBytes { _ = box.value.1.sendUDP($0, from: 9, to: UDPEndpoint(serverAddress, 9)) }
        }
        let deadline = MonotonicClock.nanoseconds() + 10_000_000_000
        while try runtime.run(on: clientCore, { _ in box.value.1.neighbor(serverAddress) == nil }) {
            if MonotonicClock.nanoseconds() > deadline { throw BenchError("ARP did not resolve") }
            usleep(1000)
        }
        let (conns, size) = (connections, self.size)
        try runtime.run(on: clientCore) { _ in
            for f in 0..<conns {
                box.value.1.connectTCP(to: TCPEndpoint(serverAddress, 7),
                                       TCPEchoClient(stats: box.value.2, stop: box.value.3, flow: UInt32(f), size: size))
            }
        }
        while try runtime.run(on: clientCore, { _ in box.value.2.pointee.connected }) < conns {
            if MonotonicClock.nanoseconds() > deadline { throw BenchError("connections did not establish") }
            usleep(1000)
        }
        let (startEchoes, start) = try runtime.run(on: clientCore) { _ -> (UInt64, UInt64) in
            box.value.2.pointee.measuring = true
            return (box.value.2.pointee.echoes, MonotonicClock.nanoseconds())
        }
        while Double(MonotonicClock.nanoseconds() - start) / 1e9 < seconds { usleep(10_000) }
        let (endEchoes, end) = try runtime.run(on: clientCore) { _ -> (UInt64, UInt64) in
            box.value.2.pointee.measuring = false
            box.value.3.store(true, ordering: .relaxed)
            return (box.value.2.pointee.echoes, MonotonicClock.nanoseconds())
        }
        usleep(50_000)
        let s = try runtime.run(on: clientCore) { _ in box.value.2.pointee }
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
