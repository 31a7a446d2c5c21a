import ArgumentParser
import Glibc
import CHereticKernel
import CHereticSys
import HereticBench
import HereticNet

/// Pins the calling thread (and so every thread it starts) to `cpu`.
func pinProcess(_ cpu: Int?) throws {
    guard let cpu else { return }
    let rc = heretic_pin_current_thread(Int32(cpu))
    if rc != 0 { throw ValidationError("cannot pin to CPU \(cpu): \(String(cString: heretic_strerror(rc)))") }
}

struct LoadGen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loadgen",
        abstract: "PhotonLibOS's echo load against a server on 127.0.0.1: 512-byte messages, streaming (4 connections) or ping-pong (1000); every echoed byte checked.")
    @Option(help: "The server's port.") var port: UInt16
    @Option(help: "streaming or ping-pong.") var mode: EchoLoadMode
    @Option(name: .customLong("conns"), help: "Connections (default: 4 streaming, 1000 ping-pong).") var connections: Int?
    @Option(help: "Seconds to measure (after half a second of warm-up).") var seconds = 3.0
    @Option(help: "CPU to run on.") var cpu: Int?
    @Flag(help: "Print a line \"measuring\" as measuring starts (for `bench peers`, which times the server's CPU over the same span).")
    var announce = false
    @OptionGroup var output: OutputOptions

    func validate() throws {
        if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
        if let c = connections, c < 1 || c > 50_000 { throw ValidationError("--conns must be between 1 and 50000") }
        if port == 0 { throw ValidationError("--port must name the server's port") }
    }

    func run() throws {
        try pinProcess(cpu)
        var load = EchoLoadGenerator(port: port, mode: mode, connections: connections, seconds: seconds,
                                         configuration: .fromEnvironment())
        if announce {
            load.onMeasuring = {
                print("measuring")
                fflush(nil)
            }
        }
        try report([try load.run()], output)
    }
}

extension EchoLoadMode: ExpressibleByArgument {}

extension Bench {
    struct Peers: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "PhotonLibOS's echo benchmark against the peers, side by side: Heretic (io_uring, epoll), SwiftNIO, Go and C epoll.",
            discussion: """
                Each server runs alone on CPU 0 and Heretic's load generator (its own process) on CPU 1: \
                512-byte messages, streaming over 4 connections and ping-pong over 1000. Every server and \
                mode runs --rounds times, the order reversed each round. The peers are built by \
                Benchmarks/peers/build.sh (run here first if they are missing).
                """)
        @Option(help: "Seconds each run measures.") var seconds = 3.0
        @Option(help: "Runs of every server and mode.") var rounds = 2
        @Option(help: "Where echo-c, echo-go and echo-nio are.") var peers = "Benchmarks/peers/bin"
        @Option(help: "streaming, ping-pong or both.") var mode: ModeChoice = .both
        @Option(help: "Servers to run, comma-separated (default: heretic-io_uring, heretic-epoll, swiftnio, go, c-epoll; also heretic-io_uring-2cores and heretic-epoll-2cores, Heretic's kernel engine on both cores).")
        var servers: String?
        @Option(help: "Another heretic executable (an earlier build, say): its kernel engine runs beside this one's as baseline-io_uring and baseline-epoll.")
        var baseline: String?
        @OptionGroup var output: OutputOptions

        enum ModeChoice: String, ExpressibleByArgument { case streaming, pingpong = "ping-pong", both }

        func validate() throws {
            if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
            if rounds < 1 || rounds > 20 { throw ValidationError("--rounds must be between 1 and 20") }
        }

        func run() throws {
            let heretic = currentExecutablePath()
            let standard = PeersBenchmark.standardServers(heretic: heretic, peersDirectory: peers)
            let baselines = baseline.map { PeersBenchmark.baselineServers(heretic: $0) } ?? []
            let known = standard + PeersBenchmark.multicoreServers(heretic: heretic) + baselines
            var servers = standard + baselines
            if let list = self.servers {
                let names = list.split(separator: ",").map(String.init)
                if let unknown = names.first(where: { n in !known.contains { $0.name == n } }) {
                    throw ValidationError("--servers: no server \(unknown) (known: \(known.map(\.name).joined(separator: ", ")))")
                }
                servers = names.map { n in known.first { $0.name == n }! }
            }
            let missing = servers.filter { !$0.heretic && access($0.command[0], X_OK) != 0 }
            if !missing.isEmpty, access("Benchmarks/peers/build.sh", X_OK) == 0 {
                note("peers missing (\(missing.map(\.name).joined(separator: ", "))): running Benchmarks/peers/build.sh")
                var out = [CChar](repeating: 0, count: 65_536)
                var argv: [UnsafeMutablePointer<CChar>?] = [strdup("Benchmarks/peers/build.sh"), nil]
                defer { free(argv[0]) }
                let status = argv.withUnsafeMutableBufferPointer { heretic_run($0.baseAddress!, &out, out.count) }
                if status != 0 {
                    throw ValidationError("Benchmarks/peers/build.sh failed (exit \(status)):\n" + String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
                }
            }
            let modes: [EchoLoadMode] = mode == .both ? [.streaming, .pingpong] : mode == .streaming ? [.streaming] : [.pingpong]
            let bench = PeersBenchmark(seconds: seconds, rounds: rounds, modes: modes, servers: servers)
            let results = try bench.run(heretic: heretic) { note($0) }
            if output.json {
                try report(results, output)
            } else {
                printPeersTable(results)
                try report([], output)
                if let bad = results.first(where: { !$0.verified }) {
                    throw ValidationError("peers: \(bad["server"]?.human ?? "?") failed its verification")
                }
            }
        }
    }
}

/// Progress on standard error (standard output carries the results).
func note(_ text: String) {
    let line = "peers: " + text + "\n"
    _ = line.withCString { write(2, $0, strlen($0)) }
}

func printPeersTable(_ results: [BenchResult]) {
    func pad(_ s: String, _ n: Int) -> String { s + String(repeating: " ", count: max(0, n - s.count)) }
    func ratio(_ r: BenchResult, _ key: String) -> String { r[key]?.asDouble.map { formatFixed($0, digits: 2) + "x" } ?? "" }
    print(pad("mode", 11) + pad("server", 24) + pad("msgs/s", 10) + pad("p50 us", 9) + pad("p99 us", 9) + pad("p99.9 us", 10)
          + pad("server CPU", 12) + pad("of it user", 12) + pad("CPU us/msg", 12) + pad("load CPU", 10)
          + "vs best peer  vs SwiftNIO  CPU/msg vs SwiftNIO")
    for r in results {
        let percent = { (key: String) in r[key]?.asDouble.map { formatFixed($0, digits: 0) + " %" } ?? "" }
        print(pad(r["mode"]?.human ?? "", 11) + pad(r["server"]?.human ?? "", 24)
              + pad(humanRate(r["msgs_per_sec"]?.asDouble ?? 0), 10)
              + pad(r["p50_us"]?.human ?? "", 9) + pad(r["p99_us"]?.human ?? "", 9) + pad(r["p999_us"]?.human ?? "", 10)
              + pad(percent("server_cpu_percent"), 12) + pad(percent("server_user_cpu_percent"), 12)
              + pad(r["server_cpu_us_per_msg"]?.asDouble.map { formatFixed($0, digits: 2) } ?? "", 12)
              + pad(percent("load_cpu_percent"), 10)
              + pad(ratio(r, "ratio_to_best_peer"), 14) + pad(ratio(r, "ratio_to_swiftnio"), 13) + ratio(r, "cpu_ratio_to_swiftnio"))
    }
}
