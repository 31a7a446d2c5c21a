import Testing
import HereticCore
import HereticNet

/// The transport API's contract, checked the same way on every engine and packet path: one
/// scenario, written once against `NetworkEngine`, runs on Heretic's stack over the virtual
/// switch, on Heretic's stack over TAP against Linux's TCP (both ways, where root), and on
/// the kernel engine through io_uring and through epoll.
@Suite("Transport contract on every engine and path", .serialized)
struct ContractTests {
    @Test("byte-exact echo of streams from 1 byte to 1 MB, many at once, closed normally on both sides",
          arguments: Path.available)
    func byteExact(_ path: Path) throws { try path.run(ByteExact()) }

    @Test("gathering sends arrive as one stream", arguments: Path.available)
    func gathering(_ path: Path) throws { try path.run(ByteExact(gathering: true)) }

    @Test("half-close: the client's FIN ends its request, the answer still arrives, both close normally",
          arguments: Path.available)
    func halfClose(_ path: Path) throws { try path.run(HalfClose()) }

    @Test("RST from either side: the other hears reset", arguments: Path.available)
    func reset(_ path: Path) throws { try path.run(Reset()) }

    @Test("a connect to a port nobody listens on is refused; one nobody answers times out", arguments: Path.available)
    func refusedAndTimedOut(_ path: Path) throws { try path.run(RefusedAndTimedOut()) }

    @Test("backpressure: a peer that reads nothing holds the sender back at its send buffer; every byte arrives once it reads",
          arguments: Path.available)
    func backpressure(_ path: Path) throws { try path.run(Backpressure()) }

    @Test("many connections at once each get their own bytes back", arguments: Path.available)
    func many(_ path: Path) throws { try path.run(Many()) }

    @Test("closing and aborting under load: the flooding peer hears FIN or RST and every connection ends",
          arguments: Path.available)
    func closeUnderLoad(_ path: Path) throws { try path.run(CloseUnderLoad()) }

    @Test("a connection's timer fires once, never early, the last one set", arguments: Path.available)
    func timer(_ path: Path) throws { try path.run(TimerScenario()) }

    @Test("UDP datagrams of every size echo byte-exact", arguments: Path.available)
    func udp(_ path: Path) throws { try path.run(Datagrams()) }

    @Test("async/await sockets: connect, write, read exactly, close, end of stream", arguments: Path.available)
    func asyncSockets(_ path: Path) throws { try path.run(AsyncSockets()) }

    @Test("blocking-style calls in stackless tasks: ok, then failure and timeout", arguments: Path.available)
    func blockingStyle(_ path: Path) throws { try path.run(BlockingStyle()) }
}

struct ByteExact: Scenario {
    var gathering = false

    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let server = Log(), client = Log()
        let sizes = [1, 2, 100, 1459, 1460, 1461, 65_535, 65_537, 300_000, 1_000_003] + (0..<6).map { 1 + ($0 * 104_729) % 200_000 }
        let address = bed.serverAddress, gathering = self.gathering
        try bed.run { s, c in
            let port = try s.listenTCP(port: 0) { Echo(log: server) }
            for size in sizes {
                c.connectTCP(to: Endpoint(address, port), PatternClient(total: size, log: client, gathering: gathering))
            }
        }
        try bed.expect("every stream echoed and closed") { _, _ in
            client.closed.count == sizes.count && server.closed.count == sizes.count
        }
        try bed.check(client, server) { client, server in
            #expect(client.verified == sizes.count)
            #expect(client.mismatches == 0)
            #expect(client.received == sizes.reduce(0, +))
            #expect(server.received == sizes.reduce(0, +))
            #expect(client.normalCloses == sizes.count, "client closes: \(client.closed)")
            #expect(server.normalCloses == sizes.count, "server closes: \(server.closed)")
        }
    }
}

struct HalfClose: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let server = Log(), client = Log()
        let address = bed.serverAddress
        let request = 100_000
        try bed.run { s, c in
            let port = try s.listenTCP(port: 0) { Collector(log: server) }
            c.connectTCP(to: Endpoint(address, port), Requester(log: client, size: request))
        }
        try bed.expect("both sides closed") { _, _ in client.closed.count == 1 && server.closed.count == 1 }
        try bed.check(client, server) { client, server in
            #expect(String(decoding: client.bytes, as: UTF8.self) == "got \(request)", "the answer came after the client's FIN")
            #expect(client.notes.isEmpty, "\(client.notes)")
            #expect(server.mismatches == 0)
            #expect(server.peerClosed == 1 && client.peerClosed == 1)
            #expect(client.closed == [.normal] && server.closed == [.normal])
        }
    }
}

// The client sends its request and closes its side at once: FIN after the data.
struct Requester: TCPHandler {
    let log: Log
    let size: Int
    mutating func connected(_ c: some TCPConnection) {
        let bytes = patternBytes(0..<size)
        let n = bytes.withUnsafeBytes { c.send($0) }
        if n != size { log.notes.append("request took \(n)") }
        c.close()
    }
    mutating func received(_ data: UnsafeRawBufferPointer, _ c: some TCPConnection) {
        log.bytes.append(contentsOf: data)
    }
    mutating func peerClosed(_ c: some TCPConnection) { log.peerClosed += 1 }
    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

struct Reset: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let address = bed.serverAddress
        // The server aborts when the client's first bytes arrive.
        let serverAborts = Log(), clientHears = Log()
        // The client aborts when the server's echo arrives.
        let serverHears = Log(), clientAborts = Log()
        try bed.run { s, c in
            let aborting = try s.listenTCP(port: 0) { Aborter(log: serverAborts) }
            let echoing = try s.listenTCP(port: 0) { Echo(log: serverHears) }
            c.connectTCP(to: Endpoint(address, aborting), Recorder(log: clientHears, greeting: [1, 2, 3]))
            c.connectTCP(to: Endpoint(address, echoing), Recorder(log: clientAborts, greeting: [4, 5, 6], abortOnData: true))
        }
        try bed.expect("all four ends closed") { _, _ in
            serverAborts.closed.count == 1 && clientHears.closed.count == 1
                && serverHears.closed.count == 1 && clientAborts.closed.count == 1
        }
        try bed.check(clientHears, serverHears, serverAborts, clientAborts) { clientHears, serverHears, serverAborts, clientAborts in
            #expect(clientHears.closed == [.reset], "the server's RST reaches the client")
            #expect(serverHears.closed == [.reset], "the client's RST reaches the server")
            #expect(serverAborts.closed == [.reset] && clientAborts.closed == [.reset], "an abort closes as reset here too")
        }
    }
}

struct RefusedAndTimedOut: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let refused = Log(), unanswered = Log()
        let address = bed.serverAddress, blackhole = bed.unanswered
        let started = MonotonicClock.nanoseconds()
        try bed.run { s, c in
            let port = try s.listenTCP(port: 0) { Echo(log: Log()) }
            s.stopListening(port: port)
            c.connectTCP(to: Endpoint(address, port), timeoutMilliseconds: 10_000, Recorder(log: refused))
            c.connectTCP(to: blackhole, timeoutMilliseconds: 300, Recorder(log: unanswered))
        }
        try bed.expect("both attempts ended") { _, _ in refused.closed.count == 1 && unanswered.closed.count == 1 }
        let elapsed = Int((MonotonicClock.nanoseconds() - started) / 1_000_000)
        try bed.check(refused, unanswered) { refused, unanswered in
            #expect(refused.closed == [.refused])
            #expect(unanswered.closed == [.timedOut])
            #expect(refused.connected == 0 && unanswered.connected == 0)
        }
        // Engines count whole milliseconds from the one the deadline was set in: the wait is
        // never shorter than 300 ms less that clock's resolution (one millisecond).
        #expect(elapsed >= 299, "the deadline is never early: \(elapsed) ms")
    }
}

struct Backpressure: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let server = Log(), client = Log()
        let address = bed.serverAddress
        try bed.run { s, c in
            let port = try s.listenTCP(port: 0) { Sink(log: server) }
            c.connectTCP(to: Endpoint(address, port), BurstClient(log: client, after: 1 << 20))
        }
        // Whatever the kernel's buffers take on the way, the engine's own queue fills in the end.
        try bed.expect("the sender is held back by a peer that reads nothing") { _, _ in
            client.shortSends > 0 && server.handles.count == 1
        }
        try bed.check(client) { client in
            #expect(client.largestQueue <= 256 << 10, "queued at most the send buffer: \(client.largestQueue)")
        }
        try bed.run { _, _ in server.handles[0].setReceiveWindow(4 << 20) }
        try bed.expect("every byte arrived once the peer read, and both closed") { _, _ in
            client.closed.count == 1 && server.closed.count == 1
        }
        try bed.check(client, server) { client, server in
            #expect(server.received == client.sent, "sent \(client.sent), received \(server.received)")
            #expect(server.mismatches == 0)
            #expect(client.writables > 0, "writable followed the short sends")
            #expect(client.closed == [.normal] && server.closed == [.normal])
        }
    }
}

struct Many: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let server = Log(), client = Log()
        let count = 400
        let address = bed.serverAddress
        try bed.run { s, c in
            let port = try s.listenTCP(port: 0, backlog: 1024, keepalive: nil) { Echo(log: server) }
            for i in 0..<count { c.connectTCP(to: Endpoint(address, port), PatternClient(total: 100 + i, log: client)) }
        }
        try bed.expect("every connection echoed and closed") { _, _ in
            client.closed.count == count && server.closed.count == count
        }
        try bed.check(client, server) { client, server in
            #expect(client.verified == count)
            #expect(client.mismatches == 0)
            #expect(client.normalCloses == count && server.normalCloses == count)
        }
    }
}

struct CloseUnderLoad: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let closing = Log(), aborting = Log(), flooders = Log(), aborted = Log()
        let address = bed.serverAddress
        try bed.run { s, c in
            let graceful = try s.listenTCP(port: 0) { Cutter(log: closing, limit: 1 << 20, abort: false) }
            let abrupt = try s.listenTCP(port: 0) { Cutter(log: aborting, limit: 1 << 20, abort: true) }
            for _ in 0..<4 {
                c.connectTCP(to: Endpoint(address, graceful), Flood(log: flooders))
                c.connectTCP(to: Endpoint(address, abrupt), Flood(log: aborted))
            }
        }
        try bed.expect("every connection ended on both sides") { _, _ in
            closing.closed.count == 4 && aborting.closed.count == 4 && flooders.closed.count == 4 && aborted.closed.count == 4
        }
        try bed.check(closing, aborting, flooders, aborted) { closing, aborting, flooders, aborted in
            #expect(closing.mismatches == 0 && aborting.mismatches == 0, "what arrived was the stream, in order")
            #expect(flooders.peerClosed == 4, "each flooder heard the server's FIN and closed")
            #expect(closing.closed == Array(repeating: .normal, count: 4))
            #expect(flooders.closed == Array(repeating: .normal, count: 4))
            #expect(aborted.closed == Array(repeating: .reset, count: 4), "\(aborted.closed)")
        }
    }
}

struct TimerScenario: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let server = Log(), client = Log()
        let address = bed.serverAddress
        try bed.run { s, c in
            let port = try s.listenTCP(port: 0) { Ticker(log: server) }
            c.connectTCP(to: Endpoint(address, port), Recorder(log: client))
        }
        try bed.expect("tick received and closed") { _, _ in client.closed.count == 1 && server.closed.count == 1 }
        // Long enough for any timer that was replaced but still armed to go off.
        try bed.run { _, _ in }
        _ = try bed.eventually(seconds: 0.2) { _, _ in false }
        try bed.check(client, server) { client, server in
            #expect(server.timerFires == 1, "only the last timer set fires: \(server.notes)")
            let waited = server.notes.first.flatMap { Int($0.dropFirst("waited ".count)) } ?? 0
            // (50, not 60: the engines' clock is read once per loop turn.)
            #expect(waited >= 50, "the 2 and 5 ms timers were replaced, and the last is never early: \(server.notes)")
            #expect(String(decoding: client.bytes, as: UTF8.self) == "tick")
            #expect(client.closed == [.normal] && server.closed == [.normal])
        }
    }
}

struct Datagrams: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let server = Log(), client = Log()
        let address = bed.serverAddress
        let sizes = [0, 1, 2, 100, 512, 1000, 1400, 1472] + (0..<32).map { 1 + ($0 * 389) % 1472 }
        func send(_ socket: some UDPSocket, _ size: Int, to port: UInt16) {
            let bytes = (0..<size).map { pattern($0 + size) }
            let ok = bytes.withUnsafeBytes { socket.send($0, to: Endpoint(address, port)) }
            if !ok { client.notes.append("send \(size) refused") }
        }
        let (port, mine) = try bed.run { s, c in
            (try s.bindUDP(port: 0, DatagramEcho(log: server)), try c.bindUDP(port: 0, DatagramCollector(log: client)))
        }
        // One first, so that ARP has resolved before the rest (an unresolved neighbour holds
        // only a few datagrams).
        try bed.run { _, c in send(c.udpSocket(port: mine), sizes[0], to: port) }
        try bed.expect("the first datagram came back") { _, _ in client.received == 1 }
        try bed.run { _, c in
            for size in sizes.dropFirst() { send(c.udpSocket(port: mine), size, to: port) }
        }
        try bed.expect("every datagram came back") { _, _ in client.received == sizes.count }
        try bed.check(client, server) { client, server in
            #expect(client.verified == sizes.count, "\(client.mismatches) bad")
            #expect(server.received == sizes.count)
            #expect(client.notes.sorted() == sizes.map { "\($0)" }.sorted())
        }
    }
}

/// Echoes a socket's stream until its end, then closes.
func echo(_ socket: TCPSocket) async {
    while let chunk = try? await socket.read(), !chunk.isEmpty {
        do { try await socket.write(chunk) } catch { break }
    }
    try? await socket.close()
}

struct AsyncSockets: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let address = bed.serverAddress
        let results = Log()
        let core = bed.runtime.core(0)
        try bed.run { s, c in
            let listener = try s.listen(port: 0)
            let port = listener.port
            let client = Unchecked(c)
            _ = core.spawnAsync {
                for await socket in listener { _ = Core.current!.spawnAsync { await echo(socket) } }
            }
            _ = core.spawnAsync {
                for i in 0..<5 {
                    do {
                        let socket = try await client.value.connect(to: Endpoint(address, port))
                        let data = patternBytes(i * 1000..<i * 1000 + 1 + i * 70_001)
                        try await socket.write(data)
                        let back = try await socket.read(exactly: data.count)
                        if back == data { results.verified += 1 } else { results.mismatches += 1 }
                        try await socket.close()
                        if try await socket.read().isEmpty { results.peerClosed += 1 }
                    } catch {
                        results.notes.append("connection \(i): \(error)")
                    }
                }
                do {
                    _ = try await client.value.connect(to: Endpoint(address, 1), timeoutMilliseconds: 5000)
                    results.notes.append("connected to a closed port")
                } catch {
                    results.closed.append((error as? TCPError) == .refused ? .refused : .normal)
                }
                results.connected = 1  // done
            }
        }
        try bed.expect("the async client finished") { _, _ in results.connected == 1 }
        try bed.check(results) { results in
            #expect(results.notes.isEmpty, "\(results.notes)")
            #expect(results.verified == 5 && results.mismatches == 0)
            #expect(results.peerClosed == 5, "end of stream after both FINs")
            #expect(results.closed == [.refused])
        }
    }
}

/// Connects, sends, waits for the echo with a timeout, then waits again (nothing more comes:
/// a timeout), then closes.
struct EchoTask: StacklessTask {
    let connect: (EventRef<TCPStatus>) -> TCPSocket
    let log: Log
    var io = Event<TCPStatus>()
    var socket: TCPSocket?
    var step = 0

    mutating func resume(_ ctx: inout TaskContext<EchoTask>) -> Suspension {
        while true {
            switch step {
            case 0:
                socket = connect(ctx.event(\.io))
                step = 1
                return ctx.wait(\.io, timeoutMilliseconds: 10_000)
            case 1:
                let status = TCPStatus(waited: io.take())
                log.notes.append("connect \(status)")
                guard status == .ok, let s = socket else { return finish() }
                log.notes.append("send \(s.send(Array("hello, task".utf8)))")
                step = 2
                if !s.waitReadable(ctx.event(\.io)) { return ctx.wait(\.io, timeoutMilliseconds: 10_000) }
            case 2:
                let s = socket!
                let waited = io.take()  // (taken either way: a later wait must not see it)
                let status = s.available > 0 ? .ok : TCPStatus(waited: waited)
                log.notes.append("recv \(status) \(String(decoding: s.receive(maxBytes: 100), as: UTF8.self))")
                step = 3
                if !s.waitReadable(ctx.event(\.io)) { return ctx.wait(\.io, timeoutMilliseconds: 100) }
            case 3:
                log.notes.append("recv again \(TCPStatus(waited: io.take()))")
                step = 4
                if !socket!.close(notify: ctx.event(\.io)) { return ctx.wait(\.io, timeoutMilliseconds: 10_000) }
            default:
                log.notes.append("close \(TCPStatus(waited: io.take() ?? socket!.status))")
                return finish()
            }
        }
    }

    mutating func finish() -> Suspension {
        log.connected += 1
        socket = nil
        return .exit
    }
}

struct BlockingStyle: Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let ok = Log(), refused = Log()
        let address = bed.serverAddress
        let core = bed.runtime.core(0)
        try bed.run { s, c in
            let port = try s.listenTCP(port: 0) { Echo(log: Log()) }
            let dead = try s.listenTCP(port: 0) { Echo(log: Log()) }
            s.stopListening(port: dead)
            let pool = core.makePool(of: EchoTask.self)
            pool.spawn(EchoTask(connect: { c.connect(to: Endpoint(address, port), notify: $0) }, log: ok))
            pool.spawn(EchoTask(connect: { c.connect(to: Endpoint(address, dead), notify: $0) }, log: refused))
        }
        try bed.expect("both tasks finished") { _, _ in ok.connected == 1 && refused.connected == 1 }
        try bed.check(ok, refused) { ok, refused in
            #expect(ok.notes == ["connect ok", "send sent", "recv ok hello, task", "recv again timeout", "close ok"])
            #expect(refused.notes == ["connect failure(HereticTransport.TCPError.refused)"])
        }
    }
}
