import Atomics
import CHereticSys
import Histogram
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// PhotonLibOS's echo benchmark protocol, as the load: fixed-size messages echoed back.
public enum EchoLoadMode: String, Sendable, CaseIterable {
    /// A few connections, each keeping a window of messages in flight: its sends and its
    /// receives run apart (sends in batches as the window opens).
    case streaming
    /// Many connections, each sending one message and waiting for its echo before the next.
    case pingpong = "ping-pong"
}

/// Counters of the load's connections, reached through a pointer from their handlers.
struct LoadStats {
    var connected = 0
    var closed = 0
    var messages: UInt64 = 0
    var mismatches: UInt64 = 0
    /// Sends the connection's send buffer did not take whole (the window of messages is
    /// meant to fit it: a message cut short would break the stream).
    var shortSends: UInt64 = 0
    var measuring = false
    var latency = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000,
                                    numberOfSignificantValueDigits: .three)
}

/// One connection of the load. A message is a 16-byte header (sequence number, send time in
/// nanoseconds) and the connection's own random pattern; every byte that comes back is
/// checked against what was sent, and each completed message records its latency.
struct EchoLoadClient: TCPHandler {
    let stats: UnsafeMutablePointer<LoadStats>
    let stop: UnsafeAtomic<Bool>
    /// The connection's pattern (`size` bytes), then the headers of messages in flight.
    let block: UnsafeMutableRawPointer
    let size: Int
    /// Messages kept in flight, and how many are sent at once when the window opens.
    let window: Int
    let batch: Int
    var sent: UInt64 = 0
    var received: UInt64 = 0
    /// Bytes of the message being received so far.
    var offset = 0
    var ok = true

    func header(_ seq: UInt64) -> UnsafeMutableRawPointer { block + size + Int(seq % UInt64(window)) * 16 }

    mutating func sendMore(_ connection: some TCPConnection) {
        let room = window - Int(sent - received)
        guard room > 0, !stop.load(ordering: .relaxed) else { return }
        let n = min(room, max(1, batch))
        withUnsafeTemporaryAllocation(byteCount: n * size, alignment: 16) { out in
            let now = MonotonicClock.nanoseconds()
            for i in 0..<n {
                let m = out.baseAddress! + i * size
                m.copyMemory(from: block, byteCount: size)
                m.storeBytes(of: sent, as: UInt64.self)
                m.storeBytes(of: now, toByteOffset: 8, as: UInt64.self)
                header(sent).copyMemory(from: m, byteCount: 16)
                sent += 1
            }
            if connection.send(UnsafeRawBufferPointer(out)) < out.count { stats.pointee.shortSends &+= 1 }
        }
    }

    mutating func connected(_ connection: some TCPConnection) {
        stats.pointee.connected += 1
        connection.setNoDelay(true)
        sendMore(connection)
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        var i = 0
        let now = stats.pointee.measuring ? MonotonicClock.nanoseconds() : 0
        while i < data.count {
            if offset == 0 && data.count - i >= size {
                // A whole message in the chunk: the header as two words, the rest at once.
                let h = header(received), m = data.baseAddress! + i
                ok = m.loadUnaligned(as: UInt64.self) == h.load(as: UInt64.self)
                    && m.loadUnaligned(fromByteOffset: 8, as: UInt64.self) == h.load(fromByteOffset: 8, as: UInt64.self)
                    && memcmp(m + 16, block + 16, size - 16) == 0
                complete(now)
                i += size
                continue
            }
            let n = min(data.count - i, size - offset)
            // Header bytes against the header sent; the rest against the pattern.
            var j = 0
            while j < n {
                let at = offset + j
                if at < 16 {
                    let h = header(received)
                    if data[i + j] != h.load(fromByteOffset: at, as: UInt8.self) { ok = false }
                    j += 1
                } else {
                    if memcmp(data.baseAddress! + i + j, block + at, n - j) != 0 { ok = false }
                    j = n
                }
            }
            offset += n
            i += n
            if offset == size { complete(now) }
        }
        // Refill once half the window has come back (ping-pong: each message).
        if window - Int(sent - received) >= max(1, batch) { sendMore(connection) }
    }

    /// The message `received` is all here: count it, and its latency while measuring.
    mutating func complete(_ now: UInt64) {
        if ok { stats.pointee.messages &+= 1 } else { stats.pointee.mismatches &+= 1 }
        if now != 0 {
            let t = header(received).load(fromByteOffset: 8, as: UInt64.self)
            _ = stats.pointee.latency.record((now &- t) / 1000)
        }
        received += 1
        offset = 0
        ok = true
    }

    mutating func closed(_ reason: TCPCloseReason) { stats.pointee.closed += 1 }
}

/// Heretic's load generator for the echo benchmark: connections on the kernel-socket engine
/// (one core), driving a server on loopback; reports messages echoed per second and their
/// latency. It runs in its own process (`heretic loadgen`), so every server meets the same
/// client.
public struct EchoLoadGenerator {
    public var port: UInt16
    public var mode: EchoLoadMode
    public var connections: Int
    public var seconds: Double
    public var warmup = 0.5
    public var size = 512
    /// Messages in flight per streaming connection.
    public var window = 128
    /// Called as measuring starts (after the warm-up), from the calling thread.
    public var onMeasuring: (() -> Void)?
    /// The load generator's engine's set-up.
    public var configuration: KernelConfiguration

    public init(port: UInt16, mode: EchoLoadMode, connections: Int? = nil, seconds: Double,
                configuration: KernelConfiguration = KernelConfiguration()) {
        self.port = port
        self.mode = mode
        self.connections = connections ?? (mode == .streaming ? 4 : 1000)
        self.seconds = seconds
        self.configuration = configuration
    }

    public func run() throws -> BenchResult {
        guard connections >= 1, connections <= 50_000 else { throw BenchError("--conns must be between 1 and 50000") }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let window = mode == .streaming ? self.window : 1
        let batch = mode == .streaming ? self.window / 2 : 1
        let (size, conns, port) = (self.size, connections, self.port)
        let blockSize = size + window * 16
        let blocks = UnsafeMutableRawPointer.allocate(byteCount: conns * blockSize, alignment: 64)
        var rng = SplitMix64(seed: 0x5eed)
        for i in 0..<(conns * blockSize / 8) { blocks.storeBytes(of: rng.next(), toByteOffset: i * 8, as: UInt64.self) }
        let stats = UnsafeMutablePointer<LoadStats>.allocate(capacity: 1)
        stats.initialize(to: LoadStats())
        let stop = UnsafeAtomic<Bool>.create(false)
        let engine = Unchecked(UnsafeMutablePointer<KernelNetwork?>.allocate(capacity: 1))
        engine.value.initialize(to: nil)
        defer { stats.deinitialize(count: 1); stats.deallocate(); stop.destroy(); blocks.deallocate(); engine.value.deallocate() }
        // Declared after the memory the handlers use, so it stops first.
        let runtime = try Runtime(cores: 1, pinThreads: false)
        defer {
            try? runtime.run(on: 0) { _ in engine.value.pointee = nil }
            runtime.shutdown()
        }
        let configuration = self.configuration
        let failure = try runtime.run(on: 0) { core -> String? in
            do throws(NetError) {
                engine.value.pointee = try KernelNetwork(core: core, configuration: configuration)
                return nil
            } catch { return "\(error)" }
        }
        if let failure { throw BenchError("kernel engine: \(failure)") }
        let shared = Unchecked((stats, stop, blocks))
        try runtime.run(on: 0) { _ in
            for c in 0..<conns {
                engine.value.pointee!.connectTCP(
                    to: TCPEndpoint(IPv4Address(127, 0, 0, 1), port), timeoutMilliseconds: 10_000,
                    EchoLoadClient(stats: shared.value.0, stop: shared.value.1, block: shared.value.2 + c * blockSize,
                                   size: size, window: window, batch: batch))
            }
        }
        try waitOn(runtime, core: 0, "the load's connections did not establish (is a server listening on port \(port)?)", seconds: 30) { _ in
            shared.value.0.pointee.connected + shared.value.0.pointee.closed >= conns
        }
        let early = try runtime.run(on: 0) { _ in shared.value.0.pointee.closed }
        if early > 0 { throw BenchError("\(early) of \(conns) connections to port \(port) were refused or closed") }
        usleep(UInt32(warmup * 1e6))
        let (m0, t0) = try runtime.run(on: 0) { _ -> (UInt64, UInt64) in
            shared.value.0.pointee.measuring = true
            return (shared.value.0.pointee.messages, MonotonicClock.nanoseconds())
        }
        onMeasuring?()
        while Double(MonotonicClock.nanoseconds() - t0) / 1e9 < seconds { usleep(10_000) }
        let (m1, t1) = try runtime.run(on: 0) { _ -> (UInt64, UInt64) in
            shared.value.0.pointee.measuring = false
            shared.value.1.store(true, ordering: .relaxed)
            return (shared.value.0.pointee.messages, MonotonicClock.nanoseconds())
        }
        let s = try runtime.run(on: 0) { _ in shared.value.0.pointee }
        let ok = s.mismatches == 0 && s.closed == 0 && s.shortSends == 0 && m1 > m0
        var r = BenchResult(bench: "loadgen", verified: ok)
        r.add("mode", mode.rawValue)
        r.add("conns", conns)
        r.add("message_bytes", size)
        r.add("seconds", seconds)
        r.add("msgs_per_sec", (Double(m1 - m0) / (Double(t1 - t0) / 1e9)).rounded())
        r.add("p50_us", s.latency.valueAtPercentile(50))
        r.add("p99_us", s.latency.valueAtPercentile(99))
        r.add("p999_us", s.latency.valueAtPercentile(99.9))
        r.add("messages_verified", s.messages)
        r.add("mismatches", s.mismatches)
        r.add("short_sends", s.shortSends)
        r.add("closed_early", s.closed)
        return r
    }
}
