import ArgumentParser
import HereticBench
import HereticCore
import HereticNet

@main
struct Heretic: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "heretic",
        abstract: "A hosted operating system for massive concurrency.",
        subcommands: [Bench.self, Serve.self, LoadGen.self, TapEcho.self]
    )
}

/// Options every benchmark shares.
struct OutputOptions: ParsableArguments {
    @Flag(help: "Print one JSON object per result line instead of a table.")
    var json = false
}

/// Prints results and turns a failed self-check into a non-zero exit.
func report(_ results: [BenchResult], _ output: OutputOptions) throws {
    for (i, r) in results.enumerated() {
        if output.json {
            print(r.json)
        } else {
            if i > 0 { print("") }
            print(r.table)
        }
    }
    if let bad = results.first(where: { !$0.verified }) {
        throw ValidationError("benchmark '\(bad["bench"]?.human ?? "?")' failed its own verification")
    }
}

func positive(_ value: Int, _ name: String) throws {
    if value < 1 { throw ValidationError("\(name) must be at least 1") }
}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Reproduce the brief's workloads on this machine.",
        discussion: "With no benchmark named, runs a short version of each and prints them beside the original's figures.",
        subcommands: [Suite.self, Events.self, Sleep.self, AsyncEvents.self, UDPEcho.self, TCPEcho.self, TCPShort.self, TCPHold.self, TCPStream.self, Peers.self, Hostile.self],
        defaultSubcommand: Suite.self
    )

    struct Suite: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "all", abstract: "Short versions of every benchmark, one table beside the brief.")
        @OptionGroup var output: OutputOptions

        func run() throws {
            let cpus = Runtime.availableCPUs
            var results: [BenchResult] = []
            results.append(try EventsBenchmark(tasks: 10_000_000, cores: 1, seconds: 3).run())
            if cpus > 1 {
                results.append(try EventsBenchmark(tasks: 10_000_000, cores: cpus, seconds: 3).run())
            }
            results.append(try SleepBenchmark(tasks: 1_000_000, periodMilliseconds: 1000, seconds: 4).run())
            results.append(try AsyncEventsBenchmark(tasks: 10_000, seconds: 3).run())
            results.append(try UDPEchoBenchmark(layout: .loopback, seconds: 2).run())
            if cpus > 1 { results.append(try UDPEchoBenchmark(layout: .balanced, seconds: 2).run()) }
            results.append(try TCPEchoBenchmark(layout: .loopback, connections: 1, seconds: 2).run())
            results.append(try TCPEchoBenchmark(layout: .loopback, connections: 256, seconds: 2).run())
            results.append(try TCPShortBenchmark(layout: .loopback, connections: 64, seconds: 2).run())
            results.append(try TCPHoldBenchmark(connections: 100_000, seconds: 1).run())
            if output.json {
                try report(results, output)
                return
            }
            printSummary(results)
            if let bad = results.first(where: { !$0.verified }) {
                throw ValidationError("benchmark '\(bad["bench"]?.human ?? "?")' failed its own verification")
            }
        }
    }

    struct Events: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pass the flower: a ring of stackless tasks, each waking the next through its event.")
        @Option(help: "Tasks per ring.") var tasks = 10_000_000
        @Option(help: "Cores, one ring each.") var cores = 1
        @Option(help: "How long the flower circulates.") var seconds = 5.0
        @Flag(help: "Print switches per second every two seconds while running.") var progress = false
        @OptionGroup var output: OutputOptions

        func validate() throws {
            if tasks < 2 { throw ValidationError("--tasks must be at least 2 (a ring)") }
            try positive(cores, "--cores")
            if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
        }

        func run() throws {
            var b = EventsBenchmark(tasks: tasks, cores: cores, seconds: seconds)
            b.progress = progress && !output.json
            try report([try b.run()], output)
        }
    }

    struct Sleep: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Concurrent sleep: every task loops sleep(period); counter += 1.")
        @Option(help: "Sleeping tasks in all.") var tasks = 10_000_000
        @Option(name: .customLong("period-ms"), help: "Sleep length in milliseconds.") var periodMs = 2000
        @Option(help: "Total run time: one period creating the tasks, the rest measured (default: one period plus three).")
        var seconds: Double?
        @Option(help: "Cores to spread the tasks over (default: all).") var cores = Runtime.availableCPUs
        @Option(name: .customLong("spin-us"),
                help: "Idle cores poll for timers due within this many microseconds instead of blocking (0: always block).")
        var spinMicroseconds = 0
        @OptionGroup var output: OutputOptions

        func validate() throws {
            try positive(tasks, "--tasks")
            if periodMs < 10 { throw ValidationError("--period-ms must be at least 10") }
            try positive(cores, "--cores")
            if spinMicroseconds < 0 { throw ValidationError("--spin-us must not be negative") }
            if let s = seconds, !(s > Double(periodMs) / 1000 + 0.5) {
                throw ValidationError("--seconds must exceed the period by at least 0.5 s")
            }
        }

        func run() throws {
            var b = SleepBenchmark(tasks: tasks, periodMilliseconds: periodMs, seconds: seconds, cores: cores)
            b.idleSpinMicroseconds = spinMicroseconds
            try report([try b.run()], output)
        }
    }

    struct AsyncEvents: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "async-events",
            abstract: "The flower ring as Swift async tasks: a Heretic core executor versus Swift's global executor.")
        @Option(help: "Async tasks in the ring.") var tasks = 10_000
        @Option(help: "Seconds per executor.") var seconds = 3.0
        @OptionGroup var output: OutputOptions

        func validate() throws {
            if tasks < 2 { throw ValidationError("--tasks must be at least 2 (a ring)") }
            if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
        }

        func run() throws {
            try report([try AsyncEventsBenchmark(tasks: tasks, seconds: seconds).run()], output)
        }
    }
}

extension StackLayout: ExpressibleByArgument {}
extension XDPAttachMode: ExpressibleByArgument {}

extension Bench {
    struct UDPEcho: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "udp-echo",
            abstract: "UDP request/response through the virtual switch, every echoed byte checked.")
        @Option(help: "loopback (client and server stacks on one core) or balanced (one core each).")
        var layout = StackLayout.loopback
        @Option(help: "Concurrent request/response flows.") var flows = 256
        @Option(help: "How long to run.") var seconds = 5.0
        @OptionGroup var output: OutputOptions

        func validate() throws {
            if flows < 1 || flows > 20_000 { throw ValidationError("--flows must be between 1 and 20000") }
            if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
        }

        func run() throws {
            try report([try UDPEchoBenchmark(layout: layout, flows: flows, seconds: seconds).run()], output)
        }
    }
}

extension Bench {
    struct TCPEcho: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tcp-echo",
            abstract: "Long TCP connections through the virtual switch, each looping: send 150 bytes, wait for the echo.",
            discussion: "With no --conns, runs the brief's row: 1, 8, 32, 64, 128, 256 and 1,000,000 connections (--max-conns lowers the last).")
        @Option(help: "loopback (client and server stacks on one core) or balanced (one core each).")
        var layout = StackLayout.loopback
        @Option(name: .customLong("conns"), help: "Concurrent connections.") var connections: Int?
        @Option(help: "Seconds per row.") var seconds = 3.0
        @Option(name: .customLong("max-conns"), help: "The largest row of the default run.") var maxConnections = 1_000_000
        @Option(help: "switch (the in-process virtual switch, both stacks Heretic's), kernel (Linux's TCP on loopback through the kernel-socket engine, server and clients on a core each), tap (Linux's TCP as the client through a TAP device in a namespace; needs root) or xdp (the same client through a veth pair, the stack on an AF_XDP socket; needs root).")
        var path = PacketPath.switch
        @Option(help: "With --path kernel: io_uring or epoll (default: io_uring where the kernel allows it).")
        var backend: KernelBackend?
        @Option(name: .customLong("xdp-mode"), help: "With --path xdp: native or generic XDP (default: native where the interface has it).")
        var xdpMode: XDPAttachMode?
        @OptionGroup var output: OutputOptions

        enum PacketPath: String, ExpressibleByArgument { case `switch`, kernel, tap, xdp }

        func validate() throws {
            if let c = connections, c < 1 || c > 4_000_000 { throw ValidationError("--conns must be between 1 and 4000000") }
            if path != .switch, let c = connections, c > (path == .kernel ? 50_000 : 10_000) {
                throw ValidationError("--conns must be at most \(path == .kernel ? 50_000 : 10_000) with --path \(path.rawValue)")
            }
            if xdpMode != nil && path != .xdp { throw ValidationError("--xdp-mode goes with --path xdp") }
            if backend != nil && path != .kernel { throw ValidationError("--backend goes with --path kernel") }
            if maxConnections < 1 || maxConnections > 4_000_000 { throw ValidationError("--max-conns must be between 1 and 4000000") }
            if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
        }

        func run() throws {
            if path == .tap {
                let rows = connections.map { [$0] } ?? [1, 8, 32, 64, 128, 256]
                return try report(try rows.map { try TapEchoBenchmark(connections: $0, seconds: seconds).run() }, output)
            }
            if path == .kernel {
                let rows = connections.map { [$0] } ?? [1, 8, 32, 64, 128, 256, 1000]
                return try report(try rows.map { try KernelEchoBenchmark(connections: $0, seconds: seconds, backend: backend,
                                                                                 configuration: .fromEnvironment()).run() }, output)
            }
            if path == .xdp {
                let rows = connections.map { [$0] } ?? [1, 8, 32, 64, 128, 256]
                return try report(try rows.map { try XDPEchoBenchmark(connections: $0, seconds: seconds, attach: xdpMode).run() }, output)
            }
            let rows = connections.map { [$0] } ?? ([1, 8, 32, 64, 128, 256].filter { $0 < maxConnections } + [maxConnections])
            try report(try rows.map { try TCPEchoBenchmark(layout: layout, connections: $0, seconds: seconds).run() }, output)
        }
    }
}

extension Bench {
    struct TCPShort: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tcp-short",
            abstract: "Short TCP connections: connect, send 150 bytes, receive the echo, close, in a loop.")
        @Option(help: "loopback or balanced.") var layout = StackLayout.loopback
        @Option(name: .customLong("conns"), help: "Concurrent client loops.") var connections = 64
        @Option(help: "How long to run.") var seconds = 5.0
        @OptionGroup var output: OutputOptions

        func validate() throws {
            if connections < 1 || connections > 4096 { throw ValidationError("--conns must be between 1 and 4096") }
            if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
        }

        func run() throws {
            try report([try TCPShortBenchmark(layout: layout, connections: connections, seconds: seconds).run()], output)
        }
    }
}

extension Bench {
    struct TCPHold: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tcp-hold",
            abstract: "Establish N connections (both ends in this process), measure memory per connection, then echo over all.")
        @Option(name: .customLong("conns"), help: "Connections to hold.") var connections = 100_000
        @Option(help: "Seconds of echo traffic after establishing.") var seconds = 5.0
        @Option(help: "loopback or balanced.") var layout = StackLayout.loopback
        @Flag(help: "Then close every connection and report the memory that came back.") var close = false
        @Option(name: .customLong("in-flight"),
                help: "Echo messages circulating over all the connections in turn (each echo sends the next message on the next connection).")
        var inFlight = 16_384
        @OptionGroup var output: OutputOptions

        func validate() throws {
            if connections < 1 || connections > 4_000_000 { throw ValidationError("--conns must be between 1 and 4000000") }
            if inFlight < 1 { throw ValidationError("--in-flight must be at least 1") }
            if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
        }

        func run() throws {
            try report([try TCPHoldBenchmark(connections: connections, seconds: seconds, layout: layout, closeAll: close,
                                                  inFlight: inFlight).run()], output)
        }
    }
}

extension Bench {
    struct TCPStream: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "tcp-stream",
            abstract: "One TCP connection, bulk transfer both ways, every byte checked.")
        @Option(help: "How long to measure.") var seconds = 5.0
        @Option(help: "loopback or balanced.") var layout = StackLayout.balanced
        @OptionGroup var output: OutputOptions

        func validate() throws {
            if !(seconds > 0) { throw ValidationError("--seconds must be positive") }
        }

        func run() throws {
            try report([try TCPStreamBenchmark(seconds: seconds, layout: layout).run()], output)
        }
    }
}

/// The suite's table: what this machine measured beside what the original claimed.
func printSummary(_ results: [BenchResult]) {
    func value(_ bench: String, _ key: String, cores: Int? = nil) -> Double? {
        results.first {
            $0["bench"]?.human == bench && (cores == nil || $0["cores"]?.asDouble == Double(cores!))
        }?[key]?.asDouble
    }
    var rows: [(String, String, String)] = [("measure", "Heretic (this machine)", "original (brief)")]
    if let v = value("events", "per_core_switches_per_sec", cores: 1) {
        rows.append(("thread switches / s / core (1 core, 10 M tasks)", humanRate(v), "80 M"))
    }
    let cpus = Runtime.availableCPUs
    if cpus > 1, let v = value("events", "switches_per_sec", cores: cpus) {
        rows.append(("thread switches / s, \(cpus) cores (10 M tasks each)", humanRate(v), "80 M per core"))
    }
    if let v = value("events", "bytes_per_task", cores: 1) {
        rows.append(("bytes per stackless task (RSS)", formatFixed(v, digits: 1), "about 40 (100 M in 4 GB)"))
    }
    if let v = value("sleep", "completions_per_sec"), let ideal = value("sleep", "ideal_per_sec") {
        rows.append(("sleep wake-ups / s (1 M tasks, 1 s period)",
                     humanRate(v) + " (" + formatFixed(100 * v / ideal, digits: 1) + " % of ideal)",
                     "50 M tasks at 10 s: 5 M/s"))
    }
    if let p99 = value("sleep", "lateness_p99_ms") {
        rows.append(("sleep lateness p99", formatFixed(p99, digits: 2) + " ms", "not published"))
    }
    if let h = value("async-events", "heretic_switches_per_sec"),
       let g = value("async-events", "global_switches_per_sec") {
        rows.append(("async ring hops / s (10 K tasks), Heretic core", humanRate(h), "n/a (C++)"))
        rows.append(("same ring on Swift's global executor", humanRate(g) + " (Heretic " +
                     formatFixed(h / g, digits: 1) + "x)", ""))
    }
    for layout in ["loopback", "balanced"] {
        if let r = results.first(where: { $0["bench"]?.human == "udp-echo" && $0["layout"]?.human == layout }),
           let v = r["echoes_per_sec"]?.asDouble {
            let brief = layout == "loopback" ? "14 M (own switch, single-port single-core)" : "13 M (own switch, dual-port dual-core)"
            rows.append(("UDP echoes / s, 150 B, \(layout) (virtual switch)", humanRate(v), brief))
        }
    }
    for (conns, brief) in [(1, "5.3 M (1 conn)"), (256, "5.03 M (256 conns)")] {
        if let r = results.first(where: { $0["bench"]?.human == "tcp-echo" && $0["conns"]?.asDouble == Double(conns) }),
           let v = r["echoes_per_sec"]?.asDouble, let p50 = r["rtt_p50_us"]?.asDouble {
            rows.append(("TCP echoes / s, \(conns) conn(s), loopback (RTT p50)",
                         humanRate(v) + " (" + formatFixed(p50, digits: 0) + " us)", brief + ", own switch"))
        }
    }
    if let v = value("tcp-short", "cycles_per_sec") {
        rows.append(("TCP short connections / s (connect, echo, close)", humanRate(v), "4.0 M (one core)"))
    }
    if let b = value("tcp-hold", "bytes_per_conn") {
        rows.append(("memory per TCP connection, both ends (100 K held)", formatFixed(b, digits: 0) + " bytes",
                     "about 350 (12 M in 4 GB)"))
    }
    rows.append(("Linux native thread switches / s (brief's baseline)", "", "about 130 K"))
    let w0 = rows.map(\.0.count).max()!, w1 = rows.map(\.1.count).max()!
    for (i, r) in rows.enumerated() {
        print(r.0.padding(w0) + "  " + r.1.padding(w1) + "  " + r.2)
        if i == 0 { print(String(repeating: "-", count: w0 + w1 + 4 + rows.map(\.2.count).max()!)) }
    }
    let ok = results.allSatisfy(\.verified)
    print("\nself-checks (checksums, counts): " + (ok ? "all passed" : "FAILED"))
}

extension String {
    func padding(_ width: Int) -> String { self + String(repeating: " ", count: max(0, width - count)) }
}

extension KernelBackend: ExpressibleByArgument {}

extension Bench {
    struct Hostile: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Healthy echo connections under attack on the same switch: before, during and after.",
            discussion: """
                An attacker on the virtual switch sends a SYN flood, mutated frames, blind RSTs and SYNs on \
                the healthy 4-tuples, ARP floods and poisoning, out-of-order floods, and connections that \
                announce MSS 9000, ask for 100 MB and never read. Fails (exit 1) if a healthy byte is lost \
                or corrupted, a healthy connection is lost, echoes stop, memory grows past what the stack's \
                caps allow, or a received frame is not accounted for.
                """)
        @Option(help: "Run time, in three equal phases: before, during and after the attack.") var seconds = 6.0
        @Option(name: .customLong("conns"), help: "Healthy echo connections.") var connections = 1000
        @Option(help: "Attack frames a second (at most).") var rate = 100_000
        @Option(help: "Seed of the attack's random choices (switch path).") var seed: UInt64 = 1
        @Option(help: "switch (the attacker on the virtual switch) or tap (Linux in a namespace, root only: Linux's TCP as the healthy clients, Python raw frames as the attacker).")
        var path: HostilePath = .switch
        @OptionGroup var output: OutputOptions

        enum HostilePath: String, ExpressibleByArgument { case `switch`, tap }

        func validate() throws {
            if !(seconds >= 0.3) { throw ValidationError("--seconds must be at least 0.3 (three phases)") }
            if !(1...16_000).contains(connections) { throw ValidationError("--conns must be between 1 and 16000") }
            if !(0...10_000_000).contains(rate) { throw ValidationError("--rate must be between 0 and 10000000") }
        }

        func run() throws {
            if path == .tap {
                try report([try HostileTapBenchmark(seconds: seconds, connections: connections, framesPerSecond: rate).run()], output)
                return
            }
            var b = HostileBenchmark(seconds: seconds, connections: connections, framesPerSecond: rate)
            b.seed = seed
            try report([try b.run()], output)
        }
    }
}
