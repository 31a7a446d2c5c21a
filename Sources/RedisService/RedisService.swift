#if canImport(Glibc)
import Glibc
#endif
import HereticTransport
import Logging
import Metrics

/// How the cache runs.
public struct RedisConfiguration: Sendable {
    public var port: UInt16 = 6379
    public var backlog = 4096
    /// `--requirepass`: clients must AUTH with it before other commands.
    public var password: String?
    public var databases = 16
    public var limits = RESPLimits()
    /// Bytes of replies a client may leave unread before it is cut off
    /// (Redis's `client-output-buffer-limit normal`, here a hard limit).
    public var outputBufferLimit = 256 << 20

    public init() {}
}

/// What one core's clients did.
public struct RedisCounters: Sendable, Equatable {
    public var connections = 0
    public var open = 0
    public var commands = 0
    public var protocolErrors = 0
    public var outputLimitDisconnects = 0
    public init() {}
}

/// A Redis-compatible cache on one core, written against the transport API: RESP2 and RESP3,
/// pipelining, and the commands of `RedisCommands`. Each core owns its own databases.
public final class RedisService: NetworkService {
    public let configuration: RedisConfiguration
    public let core: Int
    public let logger: Logger
    /// What the handlers count; `open` comes from the clients table.
    var tally = RedisCounters()
    public var counters: RedisCounters {
        var c = tally
        c.open = clients.count
        return c
    }
    var databases: [Keyspace]
    var clients: [UInt64: TCPConnectionHandle] = [:]
    var nextClientID: Int64 = 1
    var draining = false
    private var stopListening: (() -> Void)?
    public private(set) var port: UInt16 = 0
    let startedAt = Keyspace.nowMilliseconds()
    let processID = Int(getpid())

    /// The settings CONFIG GET reports: those this server has.
    var settings: [(String, String)] {
        [("port", String(port)), ("databases", String(databases.count)),
         ("requirepass", configuration.password ?? ""), ("proto-max-bulk-len", String(configuration.limits.maxBulkLength)),
         ("client-query-buffer-limit", String(configuration.limits.maxQueryBuffer)),
         ("maxmemory", "0"), ("maxmemory-policy", "noeviction"), ("appendonly", "no"), ("save", "")]
    }

    /// Resident memory of the process (/proc/self/statm).
    static func residentBytes() -> Int {
        let fd = open("/proc/self/statm", O_RDONLY)
        guard fd >= 0 else { return 0 }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 128)
        let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, 127) }
        guard n > 0 else { return 0 }
        let fields = buffer[..<n].split(separator: 0x20)
        guard fields.count > 1, let pages = Int(String(decoding: fields[1], as: UTF8.self)) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    public init(configuration: RedisConfiguration, core: Int, logger: Logger = Logger(label: "heretic.redis")) {
        self.configuration = configuration
        self.core = core
        var logger = logger
        logger[metadataKey: "core"] = "\(core)"
        self.logger = logger
        databases = Array(repeating: Keyspace(), count: max(1, configuration.databases))
    }

    public var openConnections: Int { clients.count }

    public func start<E: NetworkEngine>(on engine: E, port: UInt16) throws(NetError) -> UInt16 {
        let service = Unmanaged.passUnretained(self)
        let bound = try engine.listenTCP(port: port, backlog: configuration.backlog, keepalive: nil) {
            RedisConnection(service: service.takeUnretainedValue())
        }
        stopListening = { engine.stopListening(port: bound) }
        self.port = bound
        logger.info("redis listening", metadata: ["port": "\(bound)"])
        return bound
    }

    public func drain() {
        guard !draining else { return }
        draining = true
        stopListening?()
        stopListening = nil
        // Each client finishes the commands it has sent, gets their replies, then FIN.
        for handle in clients.values { handle.setTimer(milliseconds: 0) }
    }

    public func abortAll() {
        for handle in Array(clients.values) { handle.abort() }
    }

    public func publishMetrics() {}

    /// Active expiry, a sample per database; call now and then on the core.
    public func expireSome() {
        let now = Keyspace.nowMilliseconds()
        for i in databases.indices { _ = databases[i].expireSome(now: now) }
    }
}

/// One client's connection: its parser, its replies, its session (database, protocol,
/// authentication, name).
struct RedisConnection: TCPHandler {
    unowned(unsafe) let service: RedisService
    var parser: RESPParser
    var out = RESPWriter()
    /// Replies the send buffer did not take yet.
    var unsent: [UInt8] = []
    var session = RedisSession()
    var handleID: UInt64 = 0
    var closing = false

    init(service: RedisService) {
        self.service = service
        parser = RESPParser(limits: service.configuration.limits)
    }

    mutating func connected(_ connection: some TCPConnection) {
        if service.draining {
            connection.close()
            closing = true
            return
        }
        handleID = connection.handle.id
        session.id = service.nextClientID
        service.nextClientID += 1
        session.authenticated = service.configuration.password == nil
        service.clients[handleID] = connection.handle
        service.tally.connections += 1
        connection.setNoDelay(true)
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        guard !closing else { return }
        let service = self.service
        var session = self.session
        // Taken out of self (not copied), so that appending replies never copies the buffer.
        var out = RESPWriter()
        swap(&out, &self.out)
        out.version = session.protocolVersion
        let error = parser.feed(data) { command in
            guard !session.quit else { return }
            service.tally.commands += 1
            RedisCommands.execute(command, service: service, session: &session, out: &out)
            out.version = session.protocolVersion
        }
        self.session = session
        self.out = out
        if let error, !session.quit {
            service.tally.protocolErrors += 1
            self.out.error(error.message)
            session.quit = true
            self.session.quit = true
        }
        flush(connection)
        if self.session.quit { close(connection) }
    }

    mutating func flush(_ connection: some TCPConnection) {
        guard !out.bytes.isEmpty else { return }
        if unsent.isEmpty {
            let n = out.bytes.withUnsafeBytes { connection.send($0) }
            if n < out.bytes.count { unsent.append(contentsOf: out.bytes[n...]) }
        } else {
            unsent.append(contentsOf: out.bytes)
        }
        out.bytes.removeAll(keepingCapacity: true)
        if !unsent.isEmpty {
            if unsent.count > service.configuration.outputBufferLimit {
                // A client that does not read its replies is cut off, as Redis does.
                service.tally.outputLimitDisconnects += 1
                unsent = []
                connection.abort()
                return
            }
            connection.setReceiveWindow(0)  // no more commands until it reads
        }
    }

    mutating func writable(_ connection: some TCPConnection) {
        guard !unsent.isEmpty else { return }
        let n = unsent.withUnsafeBytes { connection.send($0) }
        unsent.removeFirst(n)
        if unsent.isEmpty {
            if session.quit || closing { connection.close() } else { connection.setReceiveWindow(1 << 20) }
        }
    }

    mutating func close(_ connection: some TCPConnection) {
        closing = true
        if unsent.isEmpty { connection.close() }
    }

    mutating func timerFired(_ connection: some TCPConnection) { close(connection) }

    mutating func peerClosed(_ connection: some TCPConnection) { close(connection) }

    mutating func closed(_ reason: TCPCloseReason) {
        service.clients.removeValue(forKey: handleID)
    }
}

/// A client's session state.
public struct RedisSession {
    public var id: Int64 = 0
    public var database = 0
    public var protocolVersion = 2
    public var authenticated = true
    public var name: [UInt8] = []
    /// QUIT was sent (or the protocol broke): reply, then close.
    public var quit = false
    public init() {}
}
