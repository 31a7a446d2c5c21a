import HereticCore
import HereticNet

/// Clients for a service on the in-process switch (`serve --engine stack --path switch`): a
/// stack of their own on the last core, each connection sending a message, checking every
/// byte of its echo, and sending the next, until told to stop.
final class SwitchLoad {
    static func serverAddress(_ core: Int) -> IPv4Address { IPv4Address(10, 0, 0, UInt8(1 + core)) }
    static let clientAddress = IPv4Address(10, 0, 0, 200)

    let interface: Interface
    let stats: UnsafeMutablePointer<LoadStats>
    let clients: Int

    init(interface: Interface, core: Core, servers: Int, port: UInt16, clients: Int, messageBytes: Int) {
        self.interface = interface
        self.clients = clients
        stats = .allocate(capacity: 1)
        stats.initialize(to: LoadStats(messageBytes: messageBytes))
        let poller = InterfacePoller()
        poller.add(interface)
        core.addPoller(poller)
        for i in 0..<clients {
            interface.connectTCP(to: TCPEndpoint(Self.serverAddress(i % servers), port), timeoutMilliseconds: 10_000,
                                 LoadClient(stats: stats))
        }
    }

    deinit {
        stats.pointee.scratch.deallocate()
        stats.deinitialize(count: 1)
        stats.deallocate()
    }

    func stopSending() { stats.pointee.stopping = true }

    /// Every connected client has had its last message echoed.
    var idle: Bool { stats.pointee.inFlight == 0 }

    var summary: (rows: [(String, Int)], healthy: Bool) {
        let s = stats.pointee
        return ([("clients", clients), ("clients_connected", s.connected), ("client_echoes_checked", s.echoes),
                 ("client_mismatches", s.mismatches), ("client_echoes_lost", s.lost), ("clients_closed_early", s.closedEarly)],
                s.mismatches == 0 && s.lost == 0 && s.closedEarly == 0 && s.connected == clients)
    }
}

struct LoadStats {
    let messageBytes: Int
    /// One message's bytes, rewritten before each send (the pattern depends on the offset).
    let scratch: UnsafeMutableRawBufferPointer
    var connected = 0, echoes = 0, mismatches = 0, lost = 0, closedEarly = 0, inFlight = 0
    var stopping = false

    init(messageBytes: Int) {
        self.messageBytes = messageBytes
        scratch = .allocate(byteCount: messageBytes, alignment: 8)
    }

    /// The byte at `offset` of a connection's stream.
    @inline(__always) static func pattern(_ offset: Int) -> UInt8 { UInt8(truncatingIfNeeded: offset &* 7 &+ offset >> 9) }
}

/// One client connection: message out, echo checked byte by byte, next message.
struct LoadClient: TCPHandler {
    let stats: UnsafeMutablePointer<LoadStats>
    /// Stream offsets: sent, still to send of this message, checked.
    var sent = 0, toSend = 0, checked = 0
    var waiting = false

    init(stats: UnsafeMutablePointer<LoadStats>) { self.stats = stats }

    mutating func connected(_ c: some TCPConnection) {
        stats.pointee.connected += 1
        next(c)
    }

    mutating func next(_ c: some TCPConnection) {
        guard !stats.pointee.stopping else { return }
        toSend = stats.pointee.messageBytes
        waiting = true
        stats.pointee.inFlight += 1
        push(c)
    }

    mutating func push(_ c: some TCPConnection) {
        guard toSend > 0 else { return }
        let scratch = stats.pointee.scratch
        for j in 0..<toSend { scratch[j] = LoadStats.pattern(sent + j) }
        let n = c.send(UnsafeRawBufferPointer(rebasing: scratch[..<toSend]))
        sent += n
        toSend -= n
    }

    mutating func writable(_ c: some TCPConnection) { push(c) }

    mutating func received(_ data: UnsafeRawBufferPointer, _ c: some TCPConnection) {
        for j in 0..<data.count where data[j] != LoadStats.pattern(checked + j) {
            stats.pointee.mismatches += 1
            break
        }
        checked += data.count
        if checked > sent { stats.pointee.mismatches += 1 }
        if checked == sent && toSend == 0 && waiting {
            waiting = false
            stats.pointee.inFlight -= 1
            stats.pointee.echoes += 1
            next(c)
        }
    }

    mutating func closed(_ reason: TCPCloseReason) {
        if waiting { stats.pointee.inFlight -= 1 }
        if checked != sent { stats.pointee.lost += 1 }
        if reason != .normal || !stats.pointee.stopping { stats.pointee.closedEarly += 1 }
    }
}
