import Atomics
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// `tcp-echo --path kernel`: the brief's echo loop (150 bytes, wait for the echo, next) over
/// Linux's TCP on loopback, through the kernel-socket engine at both ends: the server on core
/// 0, the clients on core 1. The handlers are the very ones the user-space stack's rows use.
public struct KernelEchoBenchmark {
    public var connections: Int
    public var seconds: Double
    public var backend: KernelBackend?
    /// The engines' set-up (`backend`, when given, overrides its backend).
    public var configuration: KernelConfiguration
    public var size = 150

    public init(connections: Int, seconds: Double, backend: KernelBackend?,
                configuration: KernelConfiguration = KernelConfiguration()) {
        self.connections = connections
        self.seconds = seconds
        self.backend = backend
        self.configuration = configuration
    }

    public func run() throws -> BenchResult {
        guard connections >= 1, connections <= 50_000 else { throw BenchError("--conns must be between 1 and 50000 with --path kernel") }
        guard seconds > 0 else { throw BenchError("--seconds must be positive") }
        let stats = UnsafeMutablePointer<TCPEchoStats>.allocate(capacity: 1)
        stats.initialize(to: TCPEchoStats())
        let stop = UnsafeAtomic<Bool>.create(false)
        let engines = Unchecked(UnsafeMutablePointer<KernelNetwork?>.allocate(capacity: 2))
        engines.value.initialize(repeating: nil, count: 2)
        defer { stats.deinitialize(count: 1); stats.deallocate(); stop.destroy(); engines.value.deallocate() }
        // Declared after the memory the handlers use, so it stops first.
        let runtime = try Runtime(cores: 2)
        defer {
            for i in 0..<2 { try? runtime.run(on: i) { _ in engines.value[i] = nil } }
            runtime.shutdown()
        }
        let configuration = self.configuration.requesting(backend)
        for i in 0..<2 {
            let failure = try runtime.run(on: i) { core -> String? in
                do throws(NetError) {
                    engines.value[i] = try KernelNetwork(core: core, configuration: configuration)
                    return nil
                } catch { return "\(error)" }
            }
            if let failure { throw BenchError("kernel engine: \(failure)") }
        }
        let port = try runtime.run(on: 0) { _ -> Result<UInt16, NetError> in
            Result { () throws(NetError) in
                try engines.value[0]!.listenTCP(port: 0, address: IPv4Address(127, 0, 0, 1)) { TCPEchoServer() }
            }
        }.get()

        let shared = Unchecked((stats, stop))
        let (conns, size) = (connections, self.size)
        var opened = 0
        while opened < conns {
            let batch = min(1000, conns - opened)
            try runtime.run(on: 1) { _ in
                for _ in 0..<batch {
                    engines.value[1]!.connectTCP(to: TCPEndpoint(IPv4Address(127, 0, 0, 1), port), timeoutMilliseconds: 10_000,
                                                 TCPEchoClient(stats: shared.value.0, stop: shared.value.1, size: size))
                }
            }
            opened += batch
            let target = opened
            try waitOn(runtime, core: 1, "connections did not establish", seconds: 60) { _ in
                shared.value.0.pointee.connected + shared.value.0.pointee.closedEarly >= target
            }
        }
        let (startEchoes, start) = try runtime.run(on: 1) { _ -> (UInt64, UInt64) in
            shared.value.0.pointee.measuring = true
            return (shared.value.0.pointee.echoes, MonotonicClock.nanoseconds())
        }
        while Double(MonotonicClock.nanoseconds() - start) / 1e9 < seconds { usleep(10_000) }
        let (endEchoes, end) = try runtime.run(on: 1) { _ -> (UInt64, UInt64) in
            shared.value.0.pointee.measuring = false
            shared.value.1.store(true, ordering: .relaxed)
            return (shared.value.0.pointee.echoes, MonotonicClock.nanoseconds())
        }
        usleep(50_000)
        let s = try runtime.run(on: 1) { _ in shared.value.0.pointee }
        let (chosen, reason, enters) = try runtime.run(on: 0) { _ in
            (engines.value[0]!.backend, engines.value[0]!.backendReason, engines.value[0]!.enters)
        }
        let rtt = s.rtt
        let ok = s.mismatches == 0 && s.closedEarly == 0 && endEchoes > startEchoes
        var r = BenchResult(bench: "tcp-echo", verified: ok)
        r.add("path", "kernel")
        r.add("backend", chosen.rawValue)
        r.add("backend_reason", reason)
        r.add("conns", conns)
        r.add("payload_bytes", size)
        r.add("seconds", seconds)
        r.add("echoes_per_sec", (Double(endEchoes - startEchoes) / (Double(end - start) / 1e9)).rounded())
        r.add("rtt_p50_us", rtt.valueAtPercentile(50))
        r.add("rtt_p99_us", rtt.valueAtPercentile(99))
        r.add("rtt_p999_us", rtt.valueAtPercentile(99.9))
        r.add("echoes_verified", s.echoes)
        r.add("mismatches", s.mismatches)
        r.add("server_kernel_entries", enters)
        r.add("rss_bytes", ProcessStats.residentBytes())
        return r
    }
}

/// Polls `condition` on `core` until it holds, or fails with `message` after `seconds`.
func waitOn(_ runtime: Runtime, core: Int, _ message: String, seconds: Double,
            _ condition: @escaping @Sendable (Core) -> Bool) throws {
    let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
    while try !runtime.run(on: core, condition) {
        if MonotonicClock.nanoseconds() > deadline { throw BenchError(message) }
        usleep(1000)
    }
}
