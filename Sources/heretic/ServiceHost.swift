import ArgumentParser
import CHereticSys
import HereticBench
import HereticCore
import HereticNet
import Logging
import Metrics
import Prometheus
#if canImport(Glibc)
import Glibc
#endif

/// Where and how a service runs: the options every `heretic serve NAME` shares.
struct HostOptions: ParsableArguments {
    enum Engine: String, ExpressibleByArgument, CaseIterable { case kernel, stack }
    enum StackPath: String, ExpressibleByArgument, CaseIterable { case `switch`, tap, xdp }

    @Option(help: "kernel (Linux's TCP through io_uring, or epoll) or stack (Heretic's own TCP/IP on --path).")
    var engine = Engine.kernel
    @Option(help: "With --engine kernel: io_uring or epoll (default: io_uring where the kernel allows it).")
    var backend: KernelBackend?
    @Option(help: "With --engine stack: switch (the in-process virtual switch; --clients in-process clients drive it), tap (a TAP device into namespace --netns; root) or xdp (an AF_XDP socket on a veth pair into --netns; root).")
    var path = StackPath.switch
    @Option(help: "Cores to serve on, one engine each (kernel: SO_REUSEPORT listeners, the kernel spreads connections; switch: one stack per core, each with its own address).")
    var cores = 1
    @Option(help: "TCP port (0: a free port, the same on every core).")
    var port: UInt16 = 7000
    @Option(name: .customLong("metrics-port"), help: "Serve Prometheus text metrics at http://127.0.0.1:PORT/metrics (0: a free port, printed).")
    var metricsPort: UInt16?
    @Option(name: .customLong("drain-seconds"), help: "On SIGINT or SIGTERM, how long open connections get to finish before they are aborted.")
    var drainSeconds = 10.0
    @Option(help: "Stop (gracefully) after this many seconds (default: only on a signal).")
    var seconds: Double?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel = "info"
    @Option(help: "With --path tap or xdp: the network namespace to create (and remove on exit).")
    var netns = "heretic"
    @Option(help: "With --path tap or xdp: the TAP device's name (xdp: the stack's end of the veth pair).")
    var tap = "hrt0"
    @Option(help: "With --path switch: in-process clients, each sending --message-bytes and checking the echo, over and over.")
    var clients = 64
    @Option(name: .customLong("message-bytes"), help: "With --path switch: bytes per client message.")
    var messageBytes = 512
    @Flag(help: "Print the final counters as one JSON object.")
    var json = false

    func validate() throws {
        if cores < 1 || cores > 64 { throw ValidationError("--cores must be between 1 and 64") }
        if !(drainSeconds >= 0) { throw ValidationError("--drain-seconds must not be negative") }
        if let s = seconds, !(s > 0) { throw ValidationError("--seconds must be positive") }
        if Logger.Level(rawValue: logLevel) == nil { throw ValidationError("--log-level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", "))") }
        if backend != nil && engine != .kernel { throw ValidationError("--backend goes with --engine kernel") }
        if engine == .stack && path != .switch && cores != 1 {
            throw ValidationError("--path \(path.rawValue) serves on one core (one device queue): use --cores 1")
        }
        if clients < 0 || clients > 100_000 { throw ValidationError("--clients must be between 0 and 100000") }
        if messageBytes < 1 || messageBytes > 1 << 20 { throw ValidationError("--message-bytes must be between 1 and 1048576") }
        if netns.isEmpty || netns.count > 32 { throw ValidationError("--netns must be 1 to 32 characters") }
        if tap.isEmpty || tap.count > 15 { throw ValidationError("--tap must be 1 to 15 characters") }
    }
}

/// What runs on one core: its engine (the kernel's or a stack's) and its service instance.
/// Touched only on that core.
final class CoreSlot<S: NetworkService> {
    var kernel: KernelNetwork?
    var interface: Interface?
    var service: S?
    /// The kernel engine serving the metrics endpoint (core 0 only), when it is not `kernel`.
    var metricsEngine: KernelNetwork?
    var load: SwitchLoad?
}

/// Runs a service on every core of one engine, the way every `heretic serve` does: start,
/// "ready", metrics published every second, then on SIGINT/SIGTERM (or `--seconds`) a
/// graceful drain within `--drain-seconds`, then the rest aborted, and a final report.
///
/// Signals are taken synchronously (blocked in every thread, waited for with sigtimedwait on
/// the main thread) rather than through swift-service-lifecycle: the service runs on the
/// cores' pinned threads, not in Swift's cooperative pool, and the main thread has nothing
/// else to do than wait for a signal, publish metrics and drain.
struct ServiceHost<S: NetworkService & SendableMetatype> {
    let options: HostOptions
    let name: String

    func run(make: @escaping @Sendable (Int, Logger) -> S,
             counters: @escaping @Sendable (S) -> [(String, Int)],
             verify: @escaping ([[(String, Int)]]) -> Bool) throws {
        let o = options
        let level = Logger.Level(rawValue: o.logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "heretic.serve.\(name)")

        heretic_block_termination()  // before any core's thread starts: they inherit the mask
        var removeTestbed: () -> Void = {}
        defer { removeTestbed() }
        let device = try makeDevice(&removeTestbed)
        let cores = o.cores
        let runtime = try Runtime(cores: cores, pinThreads: cores > 1 || o.engine == .stack)
        let slots = Unchecked((0..<cores).map { _ in CoreSlot<S>() })
        defer {
            // The services and engines go on their own cores, before the cores stop.
            for i in 0..<cores {
                try? runtime.run(on: i) { _ in
                    let s = slots.value[i]
                    s.load = nil; s.service = nil; s.metricsEngine = nil; s.kernel = nil; s.interface = nil
                }
            }
            runtime.shutdown()
        }

        // Start: an engine and a service on every core, all on the same port.
        var port = o.port
        for i in 0..<cores {
            let want = port
            let result = try runtime.run(on: i) { core -> Result<UInt16, NetError> in
                Result { () throws(NetError) in
                    let slot = slots.value[i]
                    let service = make(i, logger)
                    slot.service = service
                    switch device.value.choice {
                    case .kernel(let backend):
                        let net = try KernelNetwork(core: core, configuration: KernelConfiguration.fromEnvironment().requesting(backend))
                        slot.kernel = net
                        return try service.start(on: net, port: want)
                    case .stack(let make):
                        let iface = make(i)
                        slot.interface = iface
                        let bound = try service.start(on: iface, port: want)
                        let poller = InterfacePoller()
                        poller.add(iface)
                        core.addPoller(poller)
                        return bound
                    }
                }
            }
            port = try result.mapError { ValidationError("core \(i): cannot serve on port \(want): \($0)") }.get()
        }

        // The metrics endpoint, on core 0's kernel engine (made for it on the stack).
        var metricsPort: UInt16?
        if let want = o.metricsPort {
            let shared = Unchecked(registry)
            let result = try runtime.run(on: 0) { core -> Result<UInt16, NetError> in
                Result { () throws(NetError) in
                    let slot = slots.value[0]
                    let net: KernelNetwork
                    if let k = slot.kernel { net = k } else {
                        net = try KernelNetwork(core: core, configuration: .fromEnvironment())
                        slot.metricsEngine = net
                    }
                    return try net.listenTCP(port: want, address: IPv4Address(127, 0, 0, 1)) {
                        MetricsEndpoint(registry: shared.value)
                    }
                }
            }
            metricsPort = try result.mapError { ValidationError("cannot serve metrics on port \(want): \($0)") }.get()
        }

        let engineName: String
        switch device.value.choice {
        case .kernel:
            engineName = try runtime.run(on: 0) { _ in "kernel \(slots.value[0].kernel!.backend.rawValue)" }
        case .stack:
            engineName = "stack \(o.path.rawValue)"
        }
        print("ready \(port) \(engineName) on \(cores) core\(cores == 1 ? "" : "s")"
              + (metricsPort.map { "; metrics at http://127.0.0.1:\($0)/metrics" } ?? ""))
        if let hint = device.value.hint { print(hint.replacing("{port}", with: "\(port)")) }
        fflush(nil)
        logger.info("serving", metadata: ["service": "\(name)", "port": "\(port)", "engine": "\(engineName)", "cores": "\(cores)"])

        // In-process clients on the switch: they start once every core serves.
        if case .stack = device.value.choice, o.path == .switch, o.clients > 0 {
            let (clients, size, port) = (o.clients, o.messageBytes, port)
            try runtime.run(on: cores - 1) { core in
                let slot = slots.value[cores - 1]
                slot.load = SwitchLoad(interface: device.value.loadInterface!(), core: core, servers: cores, port: port,
                                       clients: clients, messageBytes: size)
            }
        }

        // Serve: publish the counters every second until a signal or --seconds.
        let publish = {
            for i in 0..<cores { try? runtime.run(on: i) { _ in slots.value[i].service?.publishMetrics() } }
        }
        let deadline = o.seconds.map { MonotonicClock.nanoseconds() + UInt64($0 * 1e9) }
        var signal: Int32 = 0
        while signal == 0 {
            var wait: Int32 = 1000
            if let deadline {
                let now = MonotonicClock.nanoseconds()
                if now >= deadline { break }
                wait = Int32(min(1000, (deadline - now) / 1_000_000 + 1))
            }
            signal = heretic_wait_termination(wait)
            publish()
        }
        logger.info("stopping", metadata: ["why": "\(signal == 0 ? "--seconds" : signal == SIGINT ? "SIGINT" : "SIGTERM")"])

        // Drain: no new connections; open ones finish within the deadline; a second signal
        // cuts it short.
        if case .stack = device.value.choice, o.path == .switch, o.clients > 0 {
            // The in-process clients stop sending and wait for their last echoes, as clients
            // of a service being stopped would.
            try runtime.run(on: cores - 1) { _ in slots.value[cores - 1].load?.stopSending() }
            let quiet = MonotonicClock.nanoseconds() + 5_000_000_000
            while try !runtime.run(on: cores - 1, { _ in slots.value[cores - 1].load?.idle ?? true }),
                  MonotonicClock.nanoseconds() < quiet {
                usleep(1000)
            }
        }
        for i in 0..<cores { try runtime.run(on: i) { _ in slots.value[i].service?.drain() } }
        let drainEnd = MonotonicClock.nanoseconds() + UInt64(o.drainSeconds * 1e9)
        var open = Int.max
        while true {
            open = 0
            for i in 0..<cores { open += try runtime.run(on: i) { _ in slots.value[i].service?.openConnections ?? 0 } }
            if open == 0 || MonotonicClock.nanoseconds() >= drainEnd { break }
            if heretic_wait_termination(5) != 0 {
                logger.warning("second signal: aborting what is still open")
                break
            }
        }
        if open > 0 {
            for i in 0..<cores { try runtime.run(on: i) { _ in slots.value[i].service?.abortAll() } }
            // The aborts' closes run on each core's next turn.
            for i in 0..<cores { try runtime.run(on: i) { _ in } }
        }
        publish()
        logger.info("stopped", metadata: ["aborted": "\(open)"])

        // Report.
        let perCore = try (0..<cores).map { i in
            try runtime.run(on: i) { _ -> Unchecked<[(String, Int)]> in Unchecked(slots.value[i].service.map(counters) ?? []) }.value
        }
        var rows = sumRows(perCore)
        rows.append(("aborted_at_deadline", open))
        if case .stack = device.value.choice, o.path == .switch, o.clients > 0 {
            let load = try runtime.run(on: cores - 1) { _ in slots.value[cores - 1].load!.summary }
            rows += load.rows
            if !load.healthy { throw ValidationError("serve \(name): the in-process clients saw wrong bytes or lost connections: \(load.rows)") }
        }
        let verified = verify(perCore)
        if o.json {
            var r = BenchResult(bench: "serve-\(name)", verified: verified)
            r.add("engine", engineName)
            r.add("port", Int(port))
            r.add("cores", cores)
            r.add("verified", verified)
            for (k, v) in rows { r.add(k, v) }
            print(r.json)
        } else {
            print("stopped; \(verified ? "every byte accounted for" : "COUNTS DO NOT BALANCE"):")
            for (k, v) in rows { print("  \(k) \(v)") }
        }
        if !verified { throw ExitCode(1) }
    }

    func sumRows(_ perCore: [[(String, Int)]]) -> [(String, Int)] {
        guard let first = perCore.first else { return [] }
        return first.indices.map { j in (first[j].0, perCore.reduce(0) { $0 + $1[j].1 }) }
    }

    /// The engine each core gets: the kernel's sockets, or a stack on the chosen path.
    enum DeviceChoice {
        case kernel(KernelBackend?)
        /// Makes core i's interface (on that core).
        case stack((Int) -> Interface)
    }

    struct Device {
        let choice: DeviceChoice
        let hint: String?
        /// The in-process clients' interface on the switch (made on the last core).
        let loadInterface: (() -> Interface)?
    }

    func makeDevice(_ remove: inout () -> Void) throws -> Unchecked<Device> {
        let o = options
        switch (o.engine, o.path) {
        case (.kernel, _):
            return Unchecked(Device(choice: .kernel(o.backend), hint: nil, loadInterface: nil))
        case (.stack, .switch):
            let net = VirtualSwitch(ringCapacity: 4096)
            let cores = o.cores
            let pools = (0..<cores).map { _ in PacketPool(capacity: 65_536) }
            let ports = (0..<cores).map { net.makePort(core: $0, pool: pools[$0]) }
            let make: (Int) -> Interface = { i in
                Interface(device: ports[i], pool: pools[i],
                          configuration: .init(mac: MACAddress(2, 0, 0, 0, 0, UInt8(1 + i)), address: SwitchLoad.serverAddress(i)))
            }
            let loadPool = pools[cores - 1]  // ports of one core share its pool
            let loadPort = net.makePort(core: cores - 1, pool: loadPool)
            let load: () -> Interface = {
                _ = net  // the switch lives as long as its ports are used
                return Interface(device: loadPort, pool: loadPool,
                                 configuration: .init(mac: MACAddress(2, 0, 0, 0, 0, 0xFE), address: SwitchLoad.clientAddress))
            }
            let hint = "the switch is in-process: \(o.clients) in-process clients at \(SwitchLoad.clientAddress) echo \(o.messageBytes)-byte messages through it"
            return Unchecked(Device(choice: .stack(make), hint: hint, loadInterface: load))
        case (.stack, .tap):
            let (ok, why) = TapTestbed.canRun
            guard ok else { throw ValidationError("--path tap \(why)") }
            let bed = try TapTestbed(namespace: o.netns, tap: o.tap)
            remove = { bed.remove() }
            let pool = PacketPool(capacity: 16_384)
            let make: (Int) -> Interface = { _ in
                Interface(device: bed.device, pool: pool, configuration: .init(mac: bed.stackMAC, address: bed.stackAddress))
            }
            let hint = "Heretic's stack answers at \(bed.stackAddress) on TAP \(bed.device.name); Linux has \(bed.linuxAddress)/24 in namespace \(o.netns). Try: ip netns exec \(o.netns) nc \(bed.stackAddress) {port}"
            return Unchecked(Device(choice: .stack(make), hint: hint, loadInterface: nil))
        case (.stack, .xdp):
            let (ok, why) = XDPTestbed.canRun
            guard ok else { throw ValidationError("--path xdp \(why)") }
            let bed = try XDPTestbed(namespace: o.netns, interface: o.tap, attach: nil)
            remove = { bed.remove() }
            let make: (Int) -> Interface = { _ in
                Interface(device: bed.device, pool: bed.pool, configuration: .init(mac: bed.stackMAC, address: bed.stackAddress))
            }
            let hint = "Heretic's stack answers at \(bed.stackAddress) on an AF_XDP socket of veth \(bed.interfaceName) (\(bed.modeDescription)); Linux has \(bed.linuxAddress)/24 in namespace \(o.netns). Try: ip netns exec \(o.netns) nc \(bed.stackAddress) {port}"
            return Unchecked(Device(choice: .stack(make), hint: hint, loadInterface: nil))
        }
    }
}

/// GET /metrics: the registry's Prometheus text. Anything else: 404. One request per
/// connection; a request head over 8 KiB, or one that does not end within 10 s, is dropped.
struct MetricsEndpoint: TCPHandler {
    let registry: PrometheusCollectorRegistry
    var head: [UInt8] = []
    var answered = false

    mutating func connected(_ connection: some TCPConnection) { connection.setIdleTimeout(seconds: 10) }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        guard !answered else { return }
        head.append(contentsOf: data.prefix(8192 - head.count))
        guard let end = head.indices.dropLast(3).first(where: { head[$0] == 13 && head[$0 + 1] == 10 && head[$0 + 2] == 13 && head[$0 + 3] == 10 }) else {
            if head.count >= 8192 { connection.abort() }
            return
        }
        answered = true
        let requestLine = head[..<(head.firstIndex(of: 13) ?? end)]
        let isMetrics = requestLine.starts(with: Array("GET /metrics ".utf8)) || requestLine.elementsEqual(Array("GET /metrics".utf8))
        let body = isMetrics ? registry.emitToBuffer() : Array("not found; try /metrics\n".utf8)
        let status = isMetrics ? "200 OK" : "404 Not Found"
        let type = isMetrics ? "text/plain; version=0.0.4" : "text/plain"
        var response = Array("HTTP/1.1 \(status)\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8)
        response += body
        // Small enough for the default send buffer; what is not taken goes on `writable`.
        let n = response.withUnsafeBytes { connection.send($0) }
        head = Array(response[n...])
        if head.isEmpty { connection.close() }
    }

    mutating func writable(_ connection: some TCPConnection) {
        guard answered, !head.isEmpty else { return }
        let n = head.withUnsafeBytes { connection.send($0) }
        head.removeFirst(n)
        if head.isEmpty { connection.close() }
    }
}
