import Atomics
import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// Proof under attack: healthy connections echo byte-exact while an attacker on the same
/// virtual switch throws everything at the server.
///
/// The server (10.0.0.1, on core 0) serves TCP echo on port 7 and the HTTP responder on 80;
/// `connections` healthy clients (10.0.0.2, on the other core) run the brief's echo loop (150
/// formatted bytes, every echo checked). The attacker (10.0.0.3, a port of its own on the
/// clients' core) sends at most `framesPerSecond`: a SYN flood from made-up neighbours,
/// mutated frames (the fuzzers' mutations, half with checksums fixed), blind RSTs and SYNs on
/// the healthy 4-tuples, ARP floods and poisoning replies, out-of-order floods past a hole,
/// and connections that announce MSS 9000, ask for 100 MB and never read. Every port checks
/// checksums, as on a real link.
///
/// Three phases of `seconds / 3`: before, during and after the attack. The run fails unless
/// no healthy byte was lost or corrupted, no healthy connection was lost, echoes went on
/// during the attack, the resident memory stayed within what the stack's own caps allow
/// (packet pools, out-of-order data, send memory) plus 64 MiB, and the server accounts for
/// every frame it received.
public struct HostileBenchmark {
    public var seconds: Double
    public var connections: Int
    public var framesPerSecond: Int
    public var seed: UInt64 = 1
    /// The caps the bound on memory is made of.
    public var poolCapacity = 16_384
    public var reassemblyLimit = 16 << 20
    public var sendMemoryCap = 32 << 20
    public let size = 150

    public init(seconds: Double = 6, connections: Int = 1000, framesPerSecond: Int = 100_000) {
        self.seconds = seconds
        self.connections = connections
        self.framesPerSecond = framesPerSecond
    }

    static let serverAddress = IPv4Address(10, 0, 0, 1), clientAddress = IPv4Address(10, 0, 0, 2)
    static let attackerAddress = IPv4Address(10, 0, 0, 3)
    static let serverMAC = MACAddress(2, 0, 0, 0, 0, 1), clientMAC = MACAddress(2, 0, 0, 0, 0, 2)

    /// The resident memory the attack may add: every packet buffer touched, the out-of-order
    /// and send-memory caps, and 64 MiB for tables, half-open and TIME-WAIT slots.
    public var memoryBound: Int {
        2 * poolCapacity * PacketPool.bufferSize + reassemblyLimit + sendMemoryCap + (64 << 20)
    }

    public func run() throws -> BenchResult {
        guard seconds >= 0.3 else { throw BenchError("--seconds must be at least 0.3 (three phases)") }
        guard (1...16_000).contains(connections) else { throw BenchError("--conns must be between 1 and 16000") }
        guard (0...10_000_000).contains(framesPerSecond) else { throw BenchError("--rate must be between 0 and 10000000") }
        let cores = min(2, Runtime.availableCPUs)
        let runtime = try Runtime(cores: cores)
        let clientCore = cores - 1
        let net = VirtualSwitch(ringCapacity: 4096)
        let pools = (0..<cores).map { _ in PacketPool(capacity: poolCapacity) }
        let serverPort = net.makePort(core: 0, pool: pools[0], checksums: true)
        let clientPort = net.makePort(core: clientCore, pool: pools[clientCore], checksums: true)
        let attackerPort = net.makePort(core: clientCore, pool: pools[clientCore], checksums: true)
        let memory = SendMemory(capacity: sendMemoryCap)
        let server = Interface(device: serverPort, pool: pools[0],
                               configuration: InterfaceConfiguration(mac: Self.serverMAC, address: Self.serverAddress),
                               sendMemory: memory)
        let client = Interface(device: clientPort, pool: pools[clientCore],
                               configuration: InterfaceConfiguration(mac: Self.clientMAC, address: Self.clientAddress))
        let attacker = Attacker(port: attackerPort, pool: pools[clientCore], address: Self.attackerAddress,
                                server: Self.serverAddress, serverMAC: Self.serverMAC, client: Self.clientAddress,
                                framesPerSecond: framesPerSecond, seed: seed)
        let stats = UnsafeMutablePointer<TCPEchoStats>.allocate(capacity: 1)
        stats.initialize(to: TCPEchoStats())
        let stop = UnsafeAtomic<Bool>.create(false)
        defer { stats.deinitialize(count: 1); stats.deallocate(); stop.destroy() }
        // The cores stop before what their handlers point to is freed (defers run last first).
        defer {
            runtime.shutdown()
            net.detach()
        }
        let shared = Unchecked((server, client, attacker, stats, stop))
        let reassemblyLimit = self.reassemblyLimit

        try runtime.run(on: 0) { core in
            let s = shared.value.0
            s.tcp.reassemblyLimit = reassemblyLimit
            _ = try? s.listenTCP(port: 7) { TCPEchoServer() }
            _ = try? s.listenTCP(port: 80) { HTTPResponder() }
            let poller = InterfacePoller()
            poller.add(s)
            if clientCore == 0 { poller.add(shared.value.1) }
            core.addPoller(poller)
            if clientCore == 0 { core.addPoller(shared.value.2) }
        }
        func onClient<R: Sendable>(_ body: @escaping @Sendable (Core) -> R) throws -> R { try runtime.run(on: clientCore, body) }
        func waitOnClient(_ failure: String, seconds: Double = 30, _ condition: @escaping @Sendable (Core) -> Bool) throws {
            let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
            while try !onClient(condition) {
                if MonotonicClock.nanoseconds() > deadline { throw BenchError(failure) }
                usleep(1000)
            }
        }
        try onClient { core in
            if clientCore != 0 {
                let poller = InterfacePoller()
                poller.add(shared.value.1)
                core.addPoller(poller)
                core.addPoller(shared.value.2)
            }
            let probe = [UInt8](repeating: 0, count: 8)
            probe.withUnsafeBytes { _ = shared.value.1.sendUDP($0, from: 9, to: UDPEndpoint(Self.serverAddress, 9)) }
        }
        try waitOnClient("ARP did not resolve") { _ in shared.value.1.neighbor(Self.serverAddress) != nil }

        // The healthy connections, each in its echo loop.
        let (conns, size) = (connections, self.size)
        try onClient { _ in
            for _ in 0..<conns {
                shared.value.1.connectTCP(to: TCPEndpoint(Self.serverAddress, 7),
                                          TCPEchoClient(stats: shared.value.3, stop: shared.value.4, size: size))
            }
        }
        try waitOnClient("healthy connections did not establish", seconds: 60) { _ in
            shared.value.3.pointee.connected + shared.value.3.pointee.closedEarly >= conns
        }
        // The attacker knows the healthy 4-tuples (not their sequence numbers).
        try onClient { _ in
            var ports: [UInt16] = []
            shared.value.1.tcp.forEachConnection { ports.append($0.localPort) }
            shared.value.2.healthyPorts = ports
            shared.value.3.pointee.measuring = true
        }

        let phase = seconds / 3
        func echoes() throws -> (UInt64, UInt64) {
            try onClient { _ in (shared.value.3.pointee.echoes, MonotonicClock.nanoseconds()) }
        }
        /// Echoes a second over one phase, sampling the resident memory meanwhile.
        func measure(_ peak: inout UInt64) throws -> Double {
            let (e0, t0) = try echoes()
            while Double(MonotonicClock.nanoseconds() - t0) / 1e9 < phase {
                usleep(20_000)
                peak = max(peak, ProcessStats.residentBytes())
            }
            let (e1, t1) = try echoes()
            return Double(e1 - e0) / (Double(t1 - t0) / 1e9)
        }
        var peak = ProcessStats.residentBytes()
        let before = try measure(&peak)
        let rssBefore = ProcessStats.residentBytes()
        peak = rssBefore
        attacker.active.store(true, ordering: .relaxed)
        let during = try measure(&peak)
        attacker.active.store(false, ordering: .relaxed)
        usleep(300_000)
        var unused: UInt64 = 0
        let after = try measure(&unused)
        let rssAfter = ProcessStats.residentBytes()

        // Stop the healthy loops, then read everything on its own core.
        try onClient { _ in shared.value.4.store(true, ordering: .relaxed) }
        usleep(100_000)
        let (healthy, sent, blocked) = try onClient { _ in (shared.value.3.pointee, shared.value.2.sent, shared.value.2.blocked) }
        let report = try runtime.run(on: 0) { _ in
            ServerReport(shared.value.0, memory: memory, reassemblyLimit: reassemblyLimit)
        }

        let growth = Int(peak) - Int(rssBefore)
        let ok = healthy.mismatches == 0 && healthy.closedEarly == 0 && during > 0 && growth <= memoryBound && report.consistent
        var r = BenchResult(bench: "hostile", verified: ok)
        r.add("path", "switch")
        r.add("conns", conns)
        r.add("seconds", seconds)
        r.add("attack_frames_per_sec", framesPerSecond)
        r.add("echoes_per_sec_before", before.rounded())
        r.add("echoes_per_sec_during", during.rounded())
        r.add("echoes_per_sec_after", after.rounded())
        r.add("during_over_before", before > 0 ? during / before : 0)
        r.add("healthy_echoes_verified", healthy.echoes)
        r.add("healthy_bytes_corrupted", Int(healthy.mismatches) * size)
        r.add("healthy_connections_lost", healthy.closedEarly)
        r.add("rss_before_bytes", rssBefore)
        r.add("rss_peak_bytes", peak)
        r.add("rss_after_bytes", rssAfter)
        r.add("rss_growth_bound_bytes", memoryBound)
        for kind in AttackKind.allCases { r.add("attack_" + kind.name, sent[kind.rawValue]) }
        r.add("attack_blocked_by_switch", blocked)
        report.add(to: &r)
        return r
    }
}

/// What the attacked server did, read on its core: its drops by kind and TCP's counters,
/// and whether its own bookkeeping holds (every frame accounted for, the TIME-WAIT count
/// agreeing with the slots, send memory and out-of-order data within their caps).
struct ServerReport: Sendable {
    let counters: InterfaceCounters
    let tcp: [(String, Int)]
    let consistent: Bool
    let memoryInUse: Int, memoryCap: Int

    init(_ interface: Interface, memory: SendMemory, reassemblyLimit: Int) {
        counters = interface.counters
        let t = interface.tcp
        memoryInUse = memory.inUse
        memoryCap = memory.capacity
        consistent = counters.framesAccounted == counters.framesReceived && t.timeWaitCount == t.timeWaitSlots
            && memoryInUse <= memoryCap && t.reassemblyBytes <= reassemblyLimit
        tcp = [
            ("connections", t.connectionCount), ("syn_cookies_sent", t.synCookiesSent),
            ("syn_cookies_validated", t.synCookiesValidated), ("syn_cookies_rejected", t.synCookiesRejected),
            ("syn_backlog_drops", t.synBacklogDrops), ("resets_sent", t.resetsSent),
            ("challenge_acks", t.challengeAcks), ("challenge_acks_suppressed", t.challengeAcksSuppressed),
            ("paws_drops", t.pawsDrops), ("out_of_window_acks_suppressed", t.outOfWindowAcksSuppressed), ("retransmissions", t.retransmissions), ("window_probes", t.windowProbes),
            ("reassembly_bytes", t.reassemblyBytes), ("reassembly_drops", t.reassemblyDrops),
            ("reassembly_duplicate_bytes", t.reassemblyDuplicateBytes), ("send_buffer_full", t.sendBufferFull),
            ("send_cap_refusals", t.sendCapRefusals), ("send_buffer_bytes", t.sendBufferBytes),
            ("time_wait", t.timeWaitCount), ("time_wait_overflows", t.timeWaitOverflows),
            ("path_mtu_updates", t.pathMTUUpdates), ("icmp_errors_ignored", t.icmpErrorsIgnored),
            ("malformed_options", t.malformedOptions),
        ]
    }

    func add(to r: inout BenchResult) {
        r.add("frames_received", counters.framesReceived)
        r.add("frames_accounted", counters.framesAccounted)
        for (name, value) in counters.nonZero where !["framesReceived", "framesSent"].contains(name) {
            r.add("drop_" + name, value)
        }
        for (name, value) in tcp { r.add("tcp_" + name, value) }
        r.add("send_memory_in_use", memoryInUse)
        r.add("send_memory_cap", memoryCap)
        r.add("server_bookkeeping_consistent", consistent)
    }
}
