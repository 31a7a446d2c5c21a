import Atomics
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// How client and server stacks sit on cores: both on one core, or one core each.
public enum StackLayout: String, Sendable, CaseIterable {
    /// Client and server interfaces on one core, joined through the switch in place.
    case loopback
    /// Server on core 0, clients on core 1, frames crossing cores through the switch's rings.
    case balanced
}

/// Counters of one benchmark side, reached by its handlers through a pointer.
struct EchoStats {
    var echoes: UInt64 = 0
    var mismatches: UInt64 = 0
}

/// Filler for messages: the alphabet repeated, so any 26-aligned window reads the same.
/// Written once when first used, read-only afterwards.
nonisolated(unsafe) let messageFill: UnsafeMutableRawPointer = {
    let p = UnsafeMutableRawPointer.allocate(byteCount: 2048 + 26, alignment: 8)
    for i in 0..<(2048 + 26) { p.storeBytes(of: UInt8(97 + i % 26), toByteOffset: i, as: UInt8.self) }
    return p
}()

/// The brief's message: `length` bytes formatted anew for every request, as the original
/// formatted its payload with printf (the "serialisation load"): "flow=F seq=S " and filler
/// that depends on both numbers. Deterministic in (flow, sequence), so the echo can be checked.
@inline(__always)
func formatMessage(flow: UInt32, sequence: UInt32, into p: UnsafeMutableRawPointer, length: Int) {
    var i = 0
    @inline(__always) func text(_ s: StaticString) {
        let n = min(s.utf8CodeUnitCount, length - i)
        (p + i).copyMemory(from: s.utf8Start, byteCount: n)
        i += n
    }
    @inline(__always) func number(_ v: UInt32) {
        var digits = 1, t = v
        while t >= 10 { t /= 10; digits += 1 }
        guard i + digits <= length else { return }
        var n = v, at = i + digits
        repeat { at -= 1; p.storeBytes(of: UInt8(48 + n % 10), toByteOffset: at, as: UInt8.self); n /= 10 } while n > 0
        i += digits
    }
    text("flow=")
    number(flow)
    text(" seq=")
    number(sequence)
    text(" ")
    if i < length { (p + i).copyMemory(from: messageFill + Int((flow &* 31 &+ sequence) % 26), byteCount: length - i) }
}

/// One client flow: sends a request, waits for its echo, checks it, sends the next.
struct EchoClientFlow: UDPHandler {
    let stats: UnsafeMutablePointer<EchoStats>
    let stop: UnsafeAtomic<Bool>
    let server: UDPEndpoint
    let flow: UInt32
    let size: Int
    var sequence: UInt32 = 0

    func send(_ socket: some UDPSocket) {
        withUnsafeTemporaryAllocation(byteCount: size, alignment: 8) { buffer in
            formatMessage(flow: flow, sequence: sequence, into: buffer.baseAddress!, length: size)
            socket.send(UnsafeRawBufferPointer(buffer), to: server)
        }
    }

    mutating func received(_ data: UnsafeRawBufferPointer, from peer: UDPEndpoint, _ socket: some UDPSocket) {
        let ok = withUnsafeTemporaryAllocation(byteCount: size, alignment: 8) { expected -> Bool in
            formatMessage(flow: flow, sequence: sequence, into: expected.baseAddress!, length: size)
            return data.count == size && memcmp(data.baseAddress!, expected.baseAddress!, size) == 0
        }
        if ok { stats.pointee.echoes &+= 1 } else { stats.pointee.mismatches &+= 1 }
        if stop.load(ordering: .relaxed) { return }
        sequence &+= 1
        send(socket)
    }
}

/// Echoes every datagram back to its sender.
public struct UDPEchoServer: UDPHandler {
    public init() {}
    public mutating func received(_ data: UnsafeRawBufferPointer, from peer: UDPEndpoint, _ socket: some UDPSocket) {
        socket.send(data, to: peer)
    }
}

public struct UDPEchoBenchmark {
    public var layout: StackLayout
    public var flows: Int
    public var seconds: Double
    public var size = 150

    public init(layout: StackLayout, flows: Int = 256, seconds: Double = 5) {
        self.layout = layout
        self.flows = flows
        self.seconds = seconds
    }

    public func run() throws -> BenchResult {
        guard flows >= 1, flows <= 20_000 else { throw BenchError("--flows must be between 1 and 20000") }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let stats = UnsafeMutablePointer<EchoStats>.allocate(capacity: 1)
        stats.initialize(to: EchoStats())
        let stop = UnsafeAtomic<Bool>.create(false)
        defer { stats.deallocate(); stop.destroy() }
        // The cores stop before what their handlers point to is freed (defers run last first).
        let pair = try SwitchedPair(layout: layout, poolCapacity: 32_768)
        defer { pair.shutdown() }
        let shared = Unchecked((stats, stop))
        try pair.start { try $0.bindUDP(port: 7, UDPEchoServer()) }
        let serverEndpoint = UDPEndpoint(SwitchedPair.serverAddress, 7)
        let size = self.size, flows = self.flows
        @Sendable func flow(_ f: Int) -> EchoClientFlow {
            EchoClientFlow(stats: shared.value.0, stop: shared.value.1, server: serverEndpoint, flow: UInt32(f), size: size)
        }
        try pair.onClient { _ in
            for f in 0..<flows { _ = try? pair.client.bindUDP(port: UInt16(10_000 + f), flow(f)) }
        }
        let rssBefore = ProcessStats.residentBytes()
        let start = MonotonicClock.nanoseconds()
        try pair.onClient { _ in
            for f in 0..<flows {
                let socket = pair.client.udpSocket(port: UInt16(10_000 + f))
                flow(f).send(socket)
            }
        }
        while Double(MonotonicClock.nanoseconds() - start) / 1e9 < seconds { usleep(10_000) }
        let (echoes, end) = try pair.onClient { _ -> (UInt64, UInt64) in
            shared.value.1.store(true, ordering: .relaxed)
            return (shared.value.0.pointee.echoes, MonotonicClock.nanoseconds())
        }
        let rss = ProcessStats.residentBytes()
        // Let the last requests drain, then check nothing was lost or garbled.
        usleep(50_000)
        let (final, mismatches, counters) = try pair.onClient { _ in
            (shared.value.0.pointee.echoes, shared.value.0.pointee.mismatches, pair.client.counters)
        }
        let drops = pair.serverPort.framesDropped + pair.clientPort.framesDropped
        let ok = mismatches == 0 && drops == 0 && final >= echoes && final <= echoes + UInt64(flows)
            && counters.badChecksums == 0
        var r = BenchResult(bench: "udp-echo", verified: ok)
        r.add("layout", layout.rawValue)
        r.add("flows", flows)
        r.add("payload_bytes", size)
        r.add("seconds", seconds)
        r.add("echoes_per_sec", (Double(echoes) / (Double(end - start) / 1e9)).rounded())
        r.add("echoes_verified", final)
        r.add("mismatches", mismatches)
        r.add("switch_drops", drops)
        r.add("rss_bytes", rss)
        r.add("rss_growth_bytes", rss &- rssBefore)
        return r
    }
}

/// Moves non-Sendable values into `@Sendable` closures that run on the one core owning them.
struct Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
