import Testing
import HereticCore
@testable import HereticNet

/// Two hosts on a memory link, polled by a real core, for the async and blocking-style APIs.
/// Everything about the hosts is touched only on that core.
final class CoreHosts: @unchecked Sendable {
    let runtime: Runtime
    let net: TwoHosts

    init(faults: FaultInjector.Faults? = nil) throws {
        runtime = try Runtime(cores: 1, pinThreads: false)
        net = TwoHosts(faults: faults, seed: 9)
        try runtime.run(on: 0) { core in
            let poller = InterfacePoller()
            poller.add(self.net.a)
            poller.add(self.net.b)
            core.addPoller(poller)
        }
    }

    var core: Core { runtime.core(0) }

    func shutdown() { runtime.shutdown() }
}

/// Deterministic bytes of a given length and seed.
func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    return (0..<count).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
}

/// Reads whatever arrives and writes it back until the peer closes, then closes.
func echo(_ socket: TCPSocket) async {
    do {
        while true {
            let data = try await socket.read()
            if data.isEmpty { break }
            try await socket.write(data)
        }
        try await socket.close()
    } catch {}
}

@Suite("TCP sockets: async API and blocking-style calls in stackless tasks")
struct TCPSocketTests {
    @Test("async: accept as a sequence, connect, write and read random sizes byte-exact, close")
    func asyncEcho() async throws {
        let hosts = try CoreHosts()
        defer { hosts.shutdown() }
        let net = hosts.net
        let ok = await hosts.core.spawnAsync { () -> Bool in
            guard let listener = try? net.b.listen(port: 7) else { return false }
            Task(executorPreference: Core.current!) {
                for await socket in listener {
                    Task(executorPreference: Core.current!) { await echo(socket) }
                }
            }
            var allMatch = true
            for c in 0..<20 {
                do {
                    let socket = try await net.a.connect(to: TCPEndpoint(hostB, 7))
                    // Random sizes up to 200 KB: beyond the window, so flow control and
                    // writer back-pressure both take part.
                    let data = randomBytes(c == 0 ? 200_000 : (c * 7919) % 20_000 + 1, seed: UInt64(c))
                    try await socket.write(data)
                    let back = try await socket.read(exactly: data.count)
                    allMatch = allMatch && back == data
                    try await socket.close()
                    #expect(try await socket.read().isEmpty, "end of stream after both FINs")
                } catch {
                    Issue.record("connection \(c): \(error)")
                    allMatch = false
                }
            }
            return allMatch
        }.value
        #expect(ok)
    }

    @Test("a 4 MB async write to a reader that waits: the writer suspends holding at most its send buffer; all arrives")
    func asyncWriteBackpressure() async throws {
        let hosts = try CoreHosts()
        defer { hosts.shutdown() }
        let net = hosts.net
        let (ok, queued, partial) = await hosts.core.spawnAsync { () -> (Bool, Int, TCPSendStatus?) in
            guard let listener = try? net.b.listen(port: 7, receiveCapacity: 16_384),
                  let socket = try? await net.a.connect(to: TCPEndpoint(hostB, 7)) else { return (false, -1, nil) }
            let data = randomBytes(4_000_000, seed: 8)
            let writer = Task(executorPreference: Core.current!) { () -> Bool in
                do { try await socket.write(data); try await socket.close(); return true } catch { return false }
            }
            guard let reader = await listener.next() else { return (false, -1, nil) }
            try? await Core.sleep(milliseconds: 200)  // the reader takes nothing meanwhile
            let queued = socket.bytesQueued
            // Blocking style on a second connection: a send the buffer cannot take is partial.
            guard let other = try? await net.a.connect(to: TCPEndpoint(hostB, 7)), let otherPeer = await listener.next() else {
                return (false, queued, nil)
            }
            let big = [UInt8](repeating: 1, count: 1 << 20)
            let first = other.send(big)
            let partial = other.send(big)
            otherPeer.abort()
            var got: [UInt8] = []
            while true {
                guard let chunk = try? await reader.read(), !chunk.isEmpty else { break }
                got += chunk
            }
            try? await reader.close()
            let wrote = await writer.value
            return (got == data && wrote, queued, first == .partial(256 << 10) ? partial : nil)
        }.value
        #expect(ok, "every byte arrived, in order")
        #expect(queued > 0 && queued <= 256 << 10, "the writer held \(queued) bytes while the reader waited")
        #expect(partial == .partial(0), "a full buffer takes nothing more")
    }

    @Test("async errors name the cause: refused, timed out, reset, closed, cancelled")
    func asyncErrors() async throws {
        let hosts = try CoreHosts()
        defer { hosts.shutdown() }
        let net = hosts.net
        let outcomes = await hosts.core.spawnAsync { () -> [String] in
            var seen: [String] = []
            func record(_ body: () async throws -> Void) async {
                do { try await body(); seen.append("ok") } catch { seen.append((error as? TCPError).map { "\($0)" } ?? "\(error)") }
            }
            // Nothing listens on port 9.
            await record { _ = try await net.a.connect(to: TCPEndpoint(hostB, 9)) }
            // Nobody answers at 10.77.0.99 (no ARP reply): the connect deadline ends it.
            await record { _ = try await net.a.connect(to: TCPEndpoint(IPv4Address(10, 77, 0, 99), 7), timeoutMilliseconds: 30) }
            // The server aborts: the client's read fails with reset.
            let listener = try! net.b.listen(port: 8)
            Task(executorPreference: Core.current!) {
                for await s in listener { s.abort() }
            }
            await record {
                let s = try await net.a.connect(to: TCPEndpoint(hostB, 8))
                _ = try await s.read()
            }
            // Writing after closing.
            let echoes = try! net.b.listen(port: 7)
            Task(executorPreference: Core.current!) {
                for await s in echoes { Task(executorPreference: Core.current!) { await echo(s) } }
            }
            await record {
                let s = try await net.a.connect(to: TCPEndpoint(hostB, 7))
                try await s.close()
                try await s.write([1, 2, 3])
            }
            // A read cancelled while it waits.
            let s = try? await net.a.connect(to: TCPEndpoint(hostB, 7))
            let reader = Task(executorPreference: Core.current!) { () -> String in
                do { _ = try await s!.read(); return "ok" } catch { return "\(error)" }
            }
            try? await Core.sleep(milliseconds: 5)
            reader.cancel()
            seen.append(await reader.value)
            return seen
        }.value
        #expect(outcomes == ["refused", "timedOut", "reset", "closed", "cancelled"])
    }

    @Test("a reader that falls behind closes the window; the sender probes and resumes byte-exact")
    func zeroWindow() throws {
        // Deterministic: the simulated link and clock, sockets read by hand between steps.
        let net = TwoHosts()
        let listener = try net.b.listen(port: 5001, receiveCapacity: 4096)
        let log = TCPLog()
        let total = 100_000
        net.a.connectTCP(to: TCPEndpoint(hostB, 5001), BulkPeer(total: total, log: log))
        net.run(50)
        let server = try #require(listener.accept())
        // Filled to its capacity and no further (the window is announced in 128-byte units).
        let held = server.available
        #expect(held > 4096 - 128 && held <= 4096)
        let clientTCB = try #require(net.a.tcp.arenas.lazy.compactMap { a -> TCB? in
            var t: TCB?
            for slot in 0..<a.queues.count where a.state(UInt32(slot)) == .established { a.run(UInt32(slot)) { t = $0 } }
            return t
        }.first)
        #expect(clientTCB.sndWnd == 0 && clientTCB.persisting, "the sender sees a zero window and persists")
        net.run(3000)
        #expect(net.a.tcp.windowProbes >= 2, "probes went out while the window stayed closed")
        #expect(server.available == held, "nothing more was taken in")
        // Now read, a little at a time: the window reopens and the rest flows.
        var got: [UInt8] = []
        var steps = 0
        while got.count < total && steps < 100_000 {
            got += server.receive(maxBytes: 1000)
            net.run(1)
            steps += 1
        }
        #expect(got.count == total && got == (0..<total).map(pattern))
    }

    @Test("blocking-style calls in stackless tasks: connect, send, recv and close return ok, timeout or failure")
    func blockingStyle() throws {
        let hosts = try CoreHosts()
        defer { hosts.shutdown() }
        let net = hosts.net, results = TaskResults()
        try hosts.runtime.run(on: 0) { core in
            _ = try? net.b.listenTCP(port: 7) { TCPEcho() }
            let pool = core.makePool(of: EchoClientTask.self)
            pool.spawn(EchoClientTask(connect: { net.a.connect(to: TCPEndpoint(hostB, 7), timeoutMilliseconds: 5000, notify: $0) }, results: results, index: 0))
            pool.spawn(EchoClientTask(connect: { net.a.connect(to: TCPEndpoint(hostB, 9), timeoutMilliseconds: 5000, notify: $0) }, results: results, index: 1))
            // A server that never answers: recv times out.
            _ = try? net.b.listenTCP(port: 8) { Silent() }
            pool.spawn(EchoClientTask(connect: { net.a.connect(to: TCPEndpoint(hostB, 8), timeoutMilliseconds: 5000, notify: $0) }, results: results, index: 2))
        }
        let deadline = MonotonicClock.nanoseconds() + 30_000_000_000
        while try hosts.runtime.run(on: 0, { _ in results.done.count }) < 3 && MonotonicClock.nanoseconds() < deadline {}
        let log = try hosts.runtime.run(on: 0) { _ in results.done }
        #expect(log[0] == ["connect ok", "send sent", "recv ok 12", "close ok"])
        #expect(log[1] == ["connect failure(HereticTransport.TCPError.refused)"])
        #expect(log[2] == ["connect ok", "send sent", "recv timeout"])
    }
}

struct Silent: TCPHandler {}

final class TaskResults: @unchecked Sendable {
    var done: [Int: [String]] = [:]
}

/// The original's style: each step calls the stack, waits on `io`, checks the status.
/// `connect` starts the connection on either engine, to be told on the event given.
struct EchoClientTask: StacklessTask {
    let connect: (EventRef<TCPStatus>) -> TCPSocket
    let results: TaskResults
    let index: Int
    var io = Event<TCPStatus>()
    var socket: TCPSocket?
    var step = 0
    var log: [String] = []

    mutating func resume(_ ctx: inout TaskContext<EchoClientTask>) -> Suspension {
        while true {
            switch step {
            case 0:
                socket = connect(ctx.event(\.io))
                step = 1
                return ctx.wait(\.io)
            case 1:
                let status = TCPStatus(waited: io.take())
                log.append("connect \(status)")
                guard status == .ok, let s = socket else { return finish() }
                log.append("send \(s.send(Array("hello, task!".utf8)))")
                step = 2
                if !s.waitReadable(ctx.event(\.io)) { return ctx.wait(\.io, timeoutMilliseconds: 200) }
            case 2:
                let status = socket!.available > 0 ? .ok : TCPStatus(waited: io.take())
                guard status == .ok else { log.append("recv \(status)"); socket?.abort(); return finish() }
                let got = socket!.receive(maxBytes: 100)
                log.append("recv ok \(got.count)")
                step = 3
                if !socket!.close(notify: ctx.event(\.io)) { return ctx.wait(\.io, timeoutMilliseconds: 5000) }
            default:
                log.append("close \(TCPStatus(waited: io.take() ?? socket!.status))")
                return finish()
            }
        }
    }

    mutating func finish() -> Suspension {
        results.done[index] = log
        socket = nil
        return .exit
    }
}
