import CHereticKernel
import CHereticSys
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// `heretic bench peers`: PhotonLibOS's echo benchmark (512-byte messages; streaming over 4
/// connections, ping-pong over 1000) against Heretic's kernel-socket engine on io_uring and
/// on epoll, a SwiftNIO server, a Go server (GOMAXPROCS=1) and a plain C epoll server. Each
/// server runs alone on CPU 0; the same load generator (`heretic loadgen`, its own process)
/// drives it from CPU 1. Every server meets every mode `rounds` times, the order reversed
/// each round, so drift in the machine does not favour whoever runs first.
public struct PeersBenchmark {
    public struct Server: Sendable {
        public let name: String
        /// The command; "{port}" is replaced by the port.
        public let command: [String]
        public let heretic: Bool
    }

    public var seconds: Double
    public var rounds: Int
    public var modes: [EchoLoadMode]
    public var servers: [Server]

    /// The servers, from this executable and the peers' binaries in `peersDirectory`.
    public static func standardServers(heretic: String, peersDirectory: String) -> [Server] {
        [
            Server(name: "heretic-io_uring", command: [heretic, "serve", "echo", "--port", "{port}", "--backend", "io_uring", "--log-level", "warning"], heretic: true),
            Server(name: "heretic-epoll", command: [heretic, "serve", "echo", "--port", "{port}", "--backend", "epoll", "--log-level", "warning"], heretic: true),
            Server(name: "swiftnio", command: [peersDirectory + "/echo-nio", "--port", "{port}"], heretic: false),
            Server(name: "go", command: [peersDirectory + "/echo-go", "--port", "{port}"], heretic: false),
            Server(name: "c-epoll", command: [peersDirectory + "/echo-c", "--port", "{port}"], heretic: false),
        ]
    }

    /// Another build of Heretic (an earlier commit, say) on its kernel engine, named
    /// `baseline-<backend>`: a before-and-after comparison in one run.
    public static func baselineServers(heretic: String) -> [Server] {
        KernelBackend.allCases.map { backend in
            Server(name: "baseline-\(backend.rawValue)",
                   command: [heretic, "serve", "echo", "--port", "{port}", "--backend", backend.rawValue], heretic: true)
        }
    }

    /// Heretic's kernel engine on both cores (SO_REUSEPORT listeners, one ring or epoll set
    /// per core): for the scaling comparison, asked for by name.
    public static func multicoreServers(heretic: String) -> [Server] {
        KernelBackend.allCases.map { backend in
            Server(name: "heretic-\(backend.rawValue)-2cores",
                   command: [heretic, "serve", "echo", "--port", "{port}", "--backend", backend.rawValue, "--cores", "2",
                             "--log-level", "warning"], heretic: true)
        }
    }

    public init(seconds: Double, rounds: Int, modes: [EchoLoadMode], servers: [Server]) {
        self.seconds = seconds
        self.rounds = rounds
        self.modes = modes
        self.servers = servers
    }

    /// One run's figures, as the load generator printed them.
    struct Run {
        var msgsPerSec: Double
        var p50: Double, p99: Double, p999: Double
        var verified: Bool
        /// CPU the server and the load generator used while the load measured, as a share of
        /// one core (from the kernel's per-process CPU clocks).
        var serverCPU: Double, loadCPU: Double
        /// The share of the server's CPU spent in user space (the rest is the kernel's work:
        /// system calls, copies, TCP).
        var serverUserShare: Double
        /// The server's CPU time per message echoed, in microseconds: what a server costs,
        /// whether or not the load generator's core is what limits the rate.
        var serverMicrosecondsPerMessage: Double { msgsPerSec > 0 ? serverCPU / msgsPerSec * 1e6 : 0 }
    }

    public func run(heretic: String, progress: (String) -> Void) throws -> [BenchResult] {
        guard seconds > 0, rounds >= 1 else { throw BenchError("--seconds must be positive and --rounds at least 1") }
        for s in servers where !s.heretic {
            guard access(s.command[0], X_OK) == 0 else {
                throw BenchError("\(s.name): \(s.command[0]) is missing; build the peers with Benchmarks/peers/build.sh")
            }
        }
        // Go's runtime reads this in the child: one OS thread runs Go code, as the issue asks.
        setenv("GOMAXPROCS", "1", 1)
        var runs: [String: [Run]] = [:]
        var port: UInt16 = 21_000 + UInt16(getpid() % 2000)
        for round in 0..<rounds {
            let order = round % 2 == 0 ? servers : servers.reversed()
            for mode in modes {
                for server in order {
                    port &+= 1
                    progress("round \(round + 1)/\(rounds): \(server.name), \(mode.rawValue)")
                    let r = try measure(server, mode: mode, port: port, heretic: heretic)
                    runs[key(server.name, mode), default: []].append(r)
                }
            }
        }
        var results: [BenchResult] = []
        for mode in modes {
            let mean = { (name: String) -> Double in
                let rs = runs[key(name, mode)] ?? []
                return rs.isEmpty ? 0 : rs.map(\.msgsPerSec).reduce(0, +) / Double(rs.count)
            }
            let cost = { (name: String) -> Double in average((runs[key(name, mode)] ?? []).map(\.serverMicrosecondsPerMessage)) }
            let peers = servers.filter { !$0.heretic }
            let best = peers.max { mean($0.name) < mean($1.name) }
            let nio = servers.first { $0.name == "swiftnio" }
            for server in servers {
                let rs = runs[key(server.name, mode)] ?? []
                var r = BenchResult(bench: "peers", verified: !rs.isEmpty && rs.allSatisfy(\.verified))
                r.add("server", server.name)
                r.add("mode", mode.rawValue)
                r.add("conns", mode == .streaming ? 4 : 1000)
                r.add("message_bytes", 512)
                r.add("msgs_per_sec", mean(server.name).rounded())
                // The worse of the runs (latency percentiles do not average).
                r.add("p50_us", rs.map(\.p50).max() ?? 0)
                r.add("p99_us", rs.map(\.p99).max() ?? 0)
                r.add("p999_us", rs.map(\.p999).max() ?? 0)
                r.add("server_cpu_percent", (average(rs.map(\.serverCPU)) * 100).rounded())
                r.add("server_cpu_us_per_msg", average(rs.map(\.serverMicrosecondsPerMessage)))
                r.add("server_user_cpu_percent", (average(rs.map(\.serverUserShare)) * 100).rounded())
                r.add("load_cpu_percent", (average(rs.map(\.loadCPU)) * 100).rounded())
                r.add("runs", rs.map { formatFixed($0.msgsPerSec, digits: 0) }.joined(separator: " "))
                if server.heretic, let best {
                    r.add("best_peer", best.name)
                    r.add("ratio_to_best_peer", mean(server.name) / max(1, mean(best.name)))
                    if let nio {
                        r.add("ratio_to_swiftnio", mean(server.name) / max(1, mean(nio.name)))
                        // SwiftNIO's CPU per message over Heretic's: how much less each echo costs.
                        r.add("cpu_ratio_to_swiftnio", cost(nio.name) / max(1e-9, cost(server.name)))
                    }
                }
                results.append(r)
            }
        }
        return results
    }

    func key(_ name: String, _ mode: EchoLoadMode) -> String { name + "/" + mode.rawValue }
    func average(_ xs: [Double]) -> Double { xs.isEmpty ? 0 : xs.reduce(0, +) / Double(xs.count) }

    /// Starts `server` on CPU 0, runs the load against it from CPU 1, stops the server.
    func measure(_ server: Server, mode: EchoLoadMode, port: UInt16, heretic: String) throws -> Run {
        let command = server.command.map { $0 == "{port}" ? String(port) : $0 }
        let child = try ChildProcess(command, cpu: 0)
        defer { child.stop() }
        guard let line = child.readLine(timeoutMilliseconds: 60_000), line.hasPrefix("ready") else {
            throw BenchError("\(server.name) did not report ready (\(command.joined(separator: " ")))")
        }
        let load = try ChildProcess([heretic, "loadgen", "--port", String(port), "--mode", mode.rawValue,
                                     "--seconds", formatFixed(seconds, digits: 2), "--json", "--announce"], cpu: 1)
        var json = ""
        // The CPU clocks of both processes (and the server's user time) and the wall clock, as
        // measuring starts and ends.
        typealias Sample = (server: Double, serverUser: Double, load: Double, wall: UInt64)
        let sample = { () -> Sample in
            (heretic_process_cpu_seconds(child.pid), heretic_process_user_seconds(child.pid),
             heretic_process_cpu_seconds(load.pid), MonotonicClock.nanoseconds())
        }
        var start: Sample?, end: Sample?
        while let l = load.readLine(timeoutMilliseconds: Int32(clamping: Int(seconds * 1000) + 60_000)) {
            if l == "measuring" { start = sample() }
            if l.hasPrefix("{") {
                end = sample()
                json = l
            }
        }
        let status = load.wait(timeoutMilliseconds: 10_000)
        guard !json.isEmpty else { throw BenchError("the load generator printed no result against \(server.name) (exit \(status))") }
        var serverCPU = 0.0, loadCPU = 0.0, userShare = 0.0
        if let start, let end, end.wall > start.wall, start.server >= 0, start.load >= 0 {
            let wall = Double(end.wall - start.wall) / 1e9
            serverCPU = (end.server - start.server) / wall
            loadCPU = (end.load - start.load) / wall
            if start.serverUser >= 0, end.serverUser >= start.serverUser, end.server > start.server {
                userShare = min(1, (end.serverUser - start.serverUser) / (end.server - start.server))
            }
        }
        return Run(msgsPerSec: jsonNumber(json, "msgs_per_sec") ?? 0,
                   p50: jsonNumber(json, "p50_us") ?? 0, p99: jsonNumber(json, "p99_us") ?? 0,
                   p999: jsonNumber(json, "p999_us") ?? 0, verified: status == 0,
                   serverCPU: serverCPU, loadCPU: loadCPU, serverUserShare: userShare)
    }
}

/// The number after `"key":` in a one-line JSON object (enough for our own output).
func jsonNumber(_ json: String, _ key: String) -> Double? {
    guard let r = json.range(of: "\"\(key)\":") else { return nil }
    let rest = json[r.upperBound...].prefix { $0.isNumber || $0 == "." || $0 == "-" || $0 == "e" }
    return Double(rest)
}

extension String {
    func range(of needle: String) -> Range<String.Index>? {
        var i = startIndex
        while i < endIndex {
            if self[i...].hasPrefix(needle) { return i..<index(i, offsetBy: needle.count) }
            i = index(after: i)
        }
        return nil
    }
}

/// A child process with its standard output on a pipe.
final class ChildProcess {
    let pid: Int32
    let stdoutFD: Int32
    var exited: Int32?

    init(_ argv: [String], cpu: Int32) throws {
        var cArgs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) }
        cArgs.append(nil)
        defer { for a in cArgs { free(a) } }
        var fd: Int32 = -1
        let pid = cArgs.withUnsafeMutableBufferPointer { heretic_spawn($0.baseAddress!, cpu, &fd) }
        guard pid > 0 else { throw BenchError("cannot start \(argv[0]): \(String(cString: heretic_strerror(-pid)))") }
        self.pid = pid
        self.stdoutFD = fd
    }

    func readLine(timeoutMilliseconds: Int32) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBufferPointer { heretic_read_line(stdoutFD, $0.baseAddress!, 4096, timeoutMilliseconds) }
        guard n >= 0 else { return nil }
        return String(decoding: buffer[0..<Int(n)].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    func wait(timeoutMilliseconds: Int32) -> Int32 {
        if let exited { return exited }
        let s = heretic_wait_child(pid, timeoutMilliseconds)
        if s >= 0 { exited = s }
        return s
    }

    /// SIGTERM, then SIGKILL if it has not gone within five seconds.
    func stop() {
        if exited == nil {
            _ = heretic_signal(pid, HERETIC_SIGTERM)
            if wait(timeoutMilliseconds: 5000) < 0 {
                _ = heretic_signal(pid, HERETIC_SIGKILL)
                _ = wait(timeoutMilliseconds: 5000)
            }
        }
        heretic_close(stdoutFD)
    }
}

/// This executable's path (to start its own servers and load generator).
public func currentExecutablePath() -> String {
    var buffer = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buffer, 4095)
    return n > 0 ? String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : CommandLine.arguments[0]
}
