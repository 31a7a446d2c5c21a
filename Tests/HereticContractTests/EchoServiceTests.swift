import Testing
import EchoService
import HereticCore
import HereticNet

/// The shape every service follows, checked on every engine and path: the echo service,
/// written once against the transport API, serves byte-exact, keeps its own accounts, and
/// stops gracefully (no new connections; open ones finish; what will not finish is aborted).
@Suite("The echo service on every engine and path", .serialized)
struct EchoServiceTests {
    @Test("echoes byte-exact, counts every byte, drains gracefully, aborts what will not finish",
          arguments: Path.available)
    func echoService(_ path: Path) throws { try path.run(EchoServiceScenario()) }
}

/// Holds the service on the engines' core.
final class ServiceBox: @unchecked Sendable {
    var service: EchoService?
}

struct EchoServiceScenario: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let box = ServiceBox()
        defer { try? bed.run { _, _ in box.service = nil } }
        let address = bed.serverAddress
        let streams = Log(), polite = Log(), stubborn = Log(), late = Log()
        let sizes = [1, 512, 65_537, 300_000]
        let port = try bed.run { s, c -> UInt16 in
            var configuration = EchoConfiguration()
            configuration.port = 0
            let service = EchoService(configuration: configuration, core: 0)
            box.service = service
            let port = try service.start(on: s, port: 0)
            for size in sizes { c.connectTCP(to: Endpoint(address, port), PatternClient(total: size, log: streams)) }
            return port
        }
        try bed.expect("every stream echoed and closed") { _, _ in
            streams.closed.count == sizes.count && box.service!.openConnections == 0
        }
        let afterStreams = try bed.run { _, _ in box.service!.counters }
        try bed.check(streams) { streams in
            #expect(streams.verified == sizes.count && streams.mismatches == 0)
            #expect(streams.normalCloses == sizes.count)
        }
        #expect(afterStreams.accepted == sizes.count)
        #expect(afterStreams.closedNormal == sizes.count)
        #expect(afterStreams.bytesReceived == sizes.reduce(0, +))
        #expect(afterStreams.bytesSent == afterStreams.bytesReceived)
        #expect(afterStreams.balanced && afterStreams.open == 0)

        // Open connections: three that close when the service does, one that never will.
        try bed.run { _, c in
            for _ in 0..<3 { c.connectTCP(to: Endpoint(address, port), Recorder(log: polite, greeting: Array("hello".utf8))) }
            c.connectTCP(to: Endpoint(address, port), Stubborn(log: stubborn))
        }
        try bed.expect("four connections open, greetings echoed") { _, _ in
            box.service!.openConnections == 4 && polite.received == 15 && stubborn.connected == 1
        }
        try bed.run { _, _ in box.service!.drain() }
        try bed.expect("the polite clients heard FIN and closed") { _, _ in polite.closed.count == 3 && stubborn.peerClosed == 1 }
        // The listener is gone: a new connection is refused.
        _ = try bed.run { _, c in c.connectTCP(to: Endpoint(address, port), Recorder(log: late)) }
        try bed.expect("the late client is turned away") { _, _ in late.closed.count == 1 }
        #expect(try bed.run { _, _ in box.service!.openConnections } == 1, "the stubborn client keeps its connection open")
        try bed.run { _, _ in box.service!.abortAll() }
        try bed.expect("the stubborn connection is aborted") { _, _ in
            stubborn.closed.count == 1 && box.service!.openConnections == 0
        }
        let end = try bed.run { _, _ in box.service!.counters }
        try bed.check(polite, stubborn, late, streams) { polite, stubborn, late, _ in
            #expect(polite.closed == [.normal, .normal, .normal])
            #expect(String(decoding: polite.bytes, as: UTF8.self) == "hellohellohello")
            #expect(stubborn.closed == [.reset])
            #expect(late.closed == [.refused])
        }
        #expect(end.accepted == sizes.count + 4)
        #expect(end.closedNormal == sizes.count + 3)
        #expect(end.closedReset == 1)
        // The stubborn client's bytes after the service closed its side could not be echoed:
        // they are counted as left behind.
        #expect(end.balanced && end.open == 0 && end.bytesHeld == 0)
        #expect(end.bytesSent == end.bytesReceived - end.bytesDiscarded)
    }
}

/// Hears FIN and keeps its side open, sending a byte now and then (after a FIN, a reset
/// shows itself to a socket when it next sends: Linux reports no error to a reader at EOF).
struct Stubborn: TCPHandler {
    let log: Log
    mutating func connected(_ c: some TCPConnection) { log.connected += 1 }
    mutating func peerClosed(_ c: some TCPConnection) {
        log.peerClosed += 1
        c.setTimer(milliseconds: 20)
    }
    mutating func timerFired(_ c: some TCPConnection) {
        c.send(Array("?".utf8))
        c.setTimer(milliseconds: 20)
    }
    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// A reset that comes after the peer's FIN, to a side that neither reads nor sends any more:
/// still heard as a reset. Left out where the client is the kernel engine on io_uring (on
/// .uring, and on .tapStackServer, whose Linux client uses it): nothing is pending on such a
/// socket, and a poll would fire at once on the FIN already read, so the reset is heard at the
/// next send (the echo service's test has its stubborn client send for this).
@Suite("Transport contract: a reset after FIN", .serialized)
struct ResetAfterFINTests {
    @Test("a connection that heard FIN and sends nothing still hears the reset that follows",
          arguments: Path.available.filter { $0 != .uring && $0 != .tapStackServer })
    func resetAfterFIN(_ path: Path) throws { try path.run(ResetAfterFIN()) }
}

struct ResetAfterFIN: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let server = Log(), client = Log()
        let address = bed.serverAddress
        try bed.run { s, c in
            let port = try s.listenTCP(port: 0) { Closer(log: server) }
            c.connectTCP(to: Endpoint(address, port), Quiet(log: client))
        }
        try bed.expect("the client heard FIN") { _, _ in client.peerClosed == 1 }
        try bed.run { _, _ in server.handles[0].abort() }
        try bed.expect("the client heard the reset") { _, _ in client.closed.count == 1 }
        try bed.check(client) { client in #expect(client.closed == [.reset]) }
    }
}

/// Closes its side as soon as it is connected.
struct Closer: TCPHandler {
    let log: Log
    mutating func connected(_ c: some TCPConnection) {
        log.handles.append(c.handle)
        c.close()
    }
    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Hears FIN and does nothing more.
struct Quiet: TCPHandler {
    let log: Log
    mutating func peerClosed(_ c: some TCPConnection) { log.peerClosed += 1 }
    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}
