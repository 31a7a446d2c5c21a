import HereticTransport
import Logging
import Metrics

/// How the echo service runs.
public struct EchoConfiguration: Sendable {
    /// The TCP port (0: the engine picks one).
    public var port: UInt16 = 7000
    /// Handshakes that may wait for `accept` on each core.
    public var backlog = 4096
    /// Nagle off: each echo goes at once, as the peers' echo servers have it.
    public var noDelay = true
    /// The most connections one core keeps open; past it a new connection is closed as soon
    /// as it arrives, and counted (`heretic_echo_refused_total{why="full"}`).
    public var maxConnectionsPerCore = 4_000_000
    /// A connection with nothing sent or received for this long is aborted (nil: never).
    public var idleTimeoutSeconds: Int? = nil

    public init() {}
}

/// What one core's echo connections did, in plain integers touched on that core only.
public struct EchoCounters: Sendable, Equatable {
    public var accepted = 0
    public var open = 0
    /// Connections closed on arrival: the core was full, or the service was draining.
    public var refusedFull = 0
    public var refusedDraining = 0
    public var closedNormal = 0
    public var closedReset = 0
    public var closedTimedOut = 0
    public var closedIdle = 0
    public var bytesReceived = 0
    public var bytesSent = 0
    /// Bytes received and waiting to go back (the peer is not reading fast enough).
    public var bytesHeld = 0
    /// Bytes that were waiting when their connection ended: their peer left without them.
    public var bytesDiscarded = 0

    public init() {}

    /// Every byte received is accounted for: echoed, waiting, or left behind by its peer.
    public var balanced: Bool { bytesReceived == bytesSent + bytesHeld + bytesDiscarded }

    public static func + (a: Self, b: Self) -> Self {
        var s = a
        s.accepted += b.accepted
        s.open += b.open
        s.refusedFull += b.refusedFull
        s.refusedDraining += b.refusedDraining
        s.closedNormal += b.closedNormal
        s.closedReset += b.closedReset
        s.closedTimedOut += b.closedTimedOut
        s.closedIdle += b.closedIdle
        s.bytesReceived += b.bytesReceived
        s.bytesSent += b.bytesSent
        s.bytesHeld += b.bytesHeld
        s.bytesDiscarded += b.bytesDiscarded
        return s
    }
}

/// A TCP echo server, written once against the transport API: every byte a client sends
/// comes back to it. One instance serves one core, on that core's engine (`start`); the
/// compiler specialises its handler for each engine, so the API costs nothing per packet.
///
/// Backpressure: what the send buffer does not take is held and the connection stops reading
/// (its receive window closes) until `writable`, so a client that sends without reading stalls
/// only itself. Graceful stop (`drain`): no new connections; each open one sends back all it
/// holds, then closes (FIN); the host aborts whatever is still open at its deadline.
public final class EchoService: NetworkService {
    public let configuration: EchoConfiguration
    /// The core this instance serves (for logs and metric labels).
    public let core: Int
    public let logger: Logger
    /// What the handlers count; `open` comes from the connections table.
    var tally = EchoCounters()
    /// This core's counters; read them on the core.
    public var counters: EchoCounters {
        var c = tally
        c.open = connections.count
        return c
    }
    public private(set) var draining = false
    public private(set) var port: UInt16 = 0
    /// Open connections by id, so that `drain` and `abortAll` reach them.
    var connections: [UInt64: TCPConnectionHandle] = [:]
    private var stopListening: (() -> Void)?
    private var published = EchoCounters()
    private let metrics: EchoMetrics

    public init(configuration: EchoConfiguration, core: Int, logger: Logger = Logger(label: "heretic.echo")) {
        self.configuration = configuration
        self.core = core
        var logger = logger
        logger[metadataKey: "core"] = "\(core)"
        self.logger = logger
        metrics = EchoMetrics(core: core)
    }

    public var openConnections: Int { connections.count }

    public func start<E: NetworkEngine>(on engine: E, port: UInt16) throws(NetError) -> UInt16 {
        // The handlers reach the service without a reference count: the host keeps the
        // service alive for as long as its engine runs.
        let service = Unmanaged.passUnretained(self)
        let bound = try engine.listenTCP(port: port, backlog: configuration.backlog, keepalive: nil) {
            EchoHandler(service: service.takeUnretainedValue())
        }
        self.port = bound
        stopListening = { engine.stopListening(port: bound) }
        logger.info("echo listening", metadata: ["port": "\(bound)"])
        return bound
    }

    public func drain() {
        guard !draining else { return }
        draining = true
        stopListening?()
        stopListening = nil
        logger.info("echo draining", metadata: ["open": "\(connections.count)"])
        // Each handler hears its timer on this core's next turn and closes once it holds
        // nothing more (its `timerFired`), so no byte already received is lost.
        for handle in connections.values { handle.setTimer(milliseconds: 0) }
    }

    public func abortAll() {
        if !connections.isEmpty { logger.warning("echo aborting connections still open", metadata: ["open": "\(connections.count)"]) }
        for handle in Array(connections.values) { handle.abort() }
    }

    public func publishMetrics() {
        metrics.publish(counters, since: published)
        published = counters
    }

    // MARK: Called by the handlers

    @inline(__always) func opened(_ handle: TCPConnectionHandle) -> Bool {
        if draining {
            tally.refusedDraining += 1
            return false
        }
        if connections.count >= configuration.maxConnectionsPerCore {
            tally.refusedFull += 1
            return false
        }
        tally.accepted += 1
        connections[handle.id] = handle
        return true
    }

    @inline(__always) func ended(_ id: UInt64, _ reason: TCPCloseReason) {
        guard connections.removeValue(forKey: id) != nil else { return }
        switch reason {
        case .normal: tally.closedNormal += 1
        case .reset, .refused: tally.closedReset += 1
        case .timedOut: tally.closedTimedOut += 1
        case .idle: tally.closedIdle += 1
        }
    }
}

/// One echo connection. Its stored fields are all it keeps: the service, its id, and the
/// bytes waiting for the peer to read (empty, and unallocated, in the usual case).
struct EchoHandler: TCPHandler {
    unowned(unsafe) let service: EchoService
    var id: UInt64 = 0
    var held: [UInt8] = []
    var admitted = false
    var closing = false

    init(service: EchoService) { self.service = service }

    mutating func connected(_ connection: some TCPConnection) {
        let handle = connection.handle
        guard service.opened(handle) else {
            connection.close()
            return
        }
        admitted = true
        id = handle.id
        if service.configuration.noDelay { connection.setNoDelay(true) }
        if let idle = service.configuration.idleTimeoutSeconds { connection.setIdleTimeout(seconds: idle) }
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        guard admitted else { return }  // turned away: closing, its bytes are not served
        service.tally.bytesReceived += data.count
        guard held.isEmpty else {
            // Reading was paused, but a receive already under way still delivered: hold it.
            held.append(contentsOf: data)
            service.tally.bytesHeld += data.count
            return
        }
        let n = connection.send(data)
        service.tally.bytesSent += n
        if n < data.count {
            held.append(contentsOf: UnsafeRawBufferPointer(rebasing: data[n...]))
            service.tally.bytesHeld += data.count - n
            connection.setReceiveWindow(0)
        }
    }

    mutating func writable(_ connection: some TCPConnection) {
        guard !held.isEmpty else { return }
        let n = held.withUnsafeBytes { connection.send($0) }
        held.removeFirst(n)
        service.tally.bytesSent += n
        service.tally.bytesHeld -= n
        if held.isEmpty {
            if closing { connection.close() } else { connection.setReceiveWindow(65_535) }
        }
    }

    mutating func peerClosed(_ connection: some TCPConnection) {
        // The client is done sending: close once everything it sent has gone back.
        closing = true
        if held.isEmpty { connection.close() }
    }

    mutating func timerFired(_ connection: some TCPConnection) {
        // The service is draining.
        closing = true
        if held.isEmpty { connection.close() }
    }

    mutating func closed(_ reason: TCPCloseReason) {
        service.tally.bytesHeld -= held.count
        service.tally.bytesDiscarded += held.count
        held = []
        if admitted { service.ended(id, reason) }
    }
}

/// One core's counters as swift-metrics sees them, labelled with the core.
final class EchoMetrics {
    let accepted, refusedFull, refusedDraining, received, sent, discarded: Counter
    let closedNormal, closedReset, closedTimedOut, closedIdle: Counter
    let open, held: Gauge

    init(core: Int) {
        let c = ("core", "\(core)")
        accepted = Counter(label: "heretic_echo_accepted_total", dimensions: [c])
        refusedFull = Counter(label: "heretic_echo_refused_total", dimensions: [c, ("why", "full")])
        refusedDraining = Counter(label: "heretic_echo_refused_total", dimensions: [c, ("why", "draining")])
        received = Counter(label: "heretic_echo_received_bytes_total", dimensions: [c])
        sent = Counter(label: "heretic_echo_sent_bytes_total", dimensions: [c])
        discarded = Counter(label: "heretic_echo_discarded_bytes_total", dimensions: [c])
        closedNormal = Counter(label: "heretic_echo_closed_total", dimensions: [c, ("reason", "normal")])
        closedReset = Counter(label: "heretic_echo_closed_total", dimensions: [c, ("reason", "reset")])
        closedTimedOut = Counter(label: "heretic_echo_closed_total", dimensions: [c, ("reason", "timed_out")])
        closedIdle = Counter(label: "heretic_echo_closed_total", dimensions: [c, ("reason", "idle")])
        open = Gauge(label: "heretic_echo_open_connections", dimensions: [c])
        held = Gauge(label: "heretic_echo_held_bytes", dimensions: [c])
    }

    func publish(_ now: EchoCounters, since then: EchoCounters) {
        func add(_ counter: Counter, _ a: Int, _ b: Int) { if a > b { counter.increment(by: a - b) } }
        add(accepted, now.accepted, then.accepted)
        add(refusedFull, now.refusedFull, then.refusedFull)
        add(refusedDraining, now.refusedDraining, then.refusedDraining)
        add(received, now.bytesReceived, then.bytesReceived)
        add(sent, now.bytesSent, then.bytesSent)
        add(discarded, now.bytesDiscarded, then.bytesDiscarded)
        add(closedNormal, now.closedNormal, then.closedNormal)
        add(closedReset, now.closedReset, then.closedReset)
        add(closedTimedOut, now.closedTimedOut, then.closedTimedOut)
        add(closedIdle, now.closedIdle, then.closedIdle)
        open.record(now.open)
        held.record(now.bytesHeld)
    }
}
