import Testing
@testable import HereticNet

/// Sends `size` bytes as soon as it has a request (any data), then goes on listening.
struct BigResponder: TCPHandler {
    let size: Int
    var answered = false
    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        guard !answered else { return }
        answered = true
        let body = [UInt8](repeating: 0x5A, count: size)
        body.withUnsafeBytes { _ = connection.send($0) }
    }
}

/// Closes its side as soon as the handshake completes (the stack sends FIN first).
struct FirstCloser: TCPHandler {
    let log: TCPLog
    mutating func connected(_ connection: some TCPConnection) { connection.close() }
    mutating func peerClosed(_ connection: some TCPConnection) { log.events.append("peer closed") }
    mutating func closed(_ reason: TCPCloseReason) { log.closedReason = reason }
}

/// Queues `chunk` bytes `times` times as soon as it connects, recording what each send took.
struct Flooder: TCPHandler {
    let chunk: Int, times: Int
    let log: TCPLog
    mutating func connected(_ connection: some TCPConnection) {
        let bytes = [UInt8](repeating: 1, count: chunk)
        for _ in 0..<times {
            bytes.withUnsafeBytes { b in log.events.append("\(connection.send(b))") }
        }
        log.events.append("queued \(connection.bytesQueued)")
    }
    mutating func closed(_ reason: TCPCloseReason) { log.closedReason = reason }
}

@Suite("Hardening: what a hostile or broken peer cannot do to the stack")
struct HardeningTests {
    // MARK: Remote crashes

    @Test("a SYN announcing MSS 9000, then a request for a large response: segments fit the MTU, no trap")
    func peerMSSIsCapped() throws {
        let peer = RawPeer()
        try peer.stack.listenTCP(port: 80) { BigResponder(size: 200_000) }
        let (ours, theirs) = try peer.handshake(port: 80, options: TCPOptions(maximumSegmentSize: 9000))
        peer.inject(peer.tcp(to: 80, sequence: ours, acknowledgment: theirs, flags: [.ack, .psh],
                             payload: Array("GET / HTTP/1.1\r\n\r\n".utf8)))
        peer.step(5)
        let data = peer.takeSegments().filter { $0.payloadLength > 0 }
        #expect(!data.isEmpty, "the response started")
        #expect(data.allSatisfy { $0.payloadLength <= 1460 }, "no segment beyond what a 1500-byte MTU carries")
        #expect(peer.pool.inUse == 0)
    }

    @Test("a segment from 0.0.0.0 port 0 is dropped and counted, not trapped on")
    func zeroSourceDropped() throws {
        let peer = RawPeer()
        try peer.stack.listenTCP(port: 80) { TCPEcho() }
        peer.inject(peer.tcp(from: .any, sourcePort: 0, to: 0, sequence: 1, flags: .syn))   // the 4-tuple key 0
        peer.inject(peer.tcp(from: .any, sourcePort: 0, to: 80, sequence: 1, flags: .syn))
        peer.step(2)
        #expect(peer.take().isEmpty, "nothing answered")
        #expect(peer.stack.tcpConnectionCount == 0)
    }

    // MARK: Stale references

    @Test("aborting a connect before it completes touches no other connection")
    func abortPendingConnect() throws {
        let peer = RawPeer()
        let listener = try peer.stack.listen(port: 7)  // the first arena
        _ = try peer.handshake(port: 7)
        let accepted = try #require(listener.accept(), "accepted into arena 0, slot 0")
        #expect(accepted.isOpen)
        // A connection to a host that never answers, aborted while it waits.
        let socket = TCPSocket(engine: peer.stack.tcp, remote: TCPEndpoint(peer.address, 5555), receiveCapacity: 65_536)
        // (What `Interface.connect(to:notify:)` does, without the task that would wait.)
        (socket.localPort, socket.ref) = peer.stack.tcp.connect(to: TCPEndpoint(peer.address, 5555),
                                                                receiveWindow: socket.receiveCapacity,
                                                                handler: SocketHandler(socket: socket, listener: nil))
        socket.abort()
        peer.step(2)
        #expect(accepted.isOpen, "the accepted connection is untouched")
        #expect(!peer.takeSegments().contains { $0.flags.contains(.rst) && $0.sourcePort == 7 })
    }

    // MARK: Timers and state that must end

    @Test("repeated FINs in TIME-WAIT keep one TIME-WAIT entry, and it ends after 2 MSL")
    func timeWaitRepeatedFINs() throws {
        let peer = RawPeer(), log = TCPLog()
        try peer.stack.listenTCP(port: 9) { FirstCloser(log: log) }
        var (ours, theirs) = try peer.handshake(port: 9)
        let fin = try #require(peer.takeSegments().first { $0.flags.contains(.fin) }, "the stack closed first")
        theirs = fin.sequence &+ 1
        // Our ACK of its FIN, then our FIN (TIME-WAIT), then the same FIN four more times.
        peer.inject(peer.tcp(sourcePort: 40_000, to: 9, sequence: ours, acknowledgment: theirs, flags: .ack))
        for _ in 0..<5 {
            peer.inject(peer.tcp(sourcePort: 40_000, to: 9, sequence: ours, acknowledgment: theirs, flags: [.fin, .ack]))
            peer.step(10)
        }
        ours &+= 1
        #expect(peer.stack.tcp.timeWaitCount == 1)
        peer.step(61_000)
        #expect(peer.stack.tcp.timeWaitCount == 0 && peer.stack.tcpConnectionCount == 0)
    }

    @Test("a peer that keeps its window closed and answers every probe is given up on")
    func persistGivesUp() throws {
        let peer = RawPeer(), log = TCPLog()
        try peer.stack.listenTCP(port: 9) { Flooder(chunk: 10_000, times: 1, log: log) }
        // The peer offers a zero window from the start and never opens it.
        peer.inject(peer.tcp(to: 9, sequence: 1000, flags: .syn, window: 0, options: TCPOptions(maximumSegmentSize: 1460)))
        peer.step()
        let synAck = try #require(peer.takeSegments().first)
        peer.inject(peer.tcp(to: 9, sequence: 1001, acknowledgment: synAck.sequence &+ 1, flags: .ack, window: 0))
        // Answer every probe at once, for an hour at most.
        var minutes = 0, answered = 0
        while log.closedReason == nil && minutes < 60 {
            for _ in 0..<600 {
                peer.stack.poll(now: peer.now)
                peer.collect()
                for s in peer.takeSegments() where s.flags == .ack && s.payloadLength == 0 {
                    peer.inject(peer.tcp(to: 9, sequence: 1001, acknowledgment: synAck.sequence &+ 1, flags: .ack, window: 0))
                    answered += 1
                }
                peer.now += 100
            }
            minutes += 1
        }
        #expect(log.closedReason == .timedOut, "gave up after \(minutes) minutes of a closed window")
        #expect((5...15).contains(minutes), "about nine minutes of answered probes: \(minutes)")
        #expect(answered == Int(TCB.maxPersistProbes), "probing started although the window was closed from the handshake on, and every probe was answered: \(answered)")
        #expect(peer.stack.tcpConnectionCount == 0)
    }

    @Test("FIN-WAIT-2 ends when the peer never sends its FIN")
    func finWait2Timeout() throws {
        let peer = RawPeer(), log = TCPLog()
        try peer.stack.listenTCP(port: 9) { FirstCloser(log: log) }
        let (ours, _) = try peer.handshake(port: 9)
        let fin = try #require(peer.takeSegments().first { $0.flags.contains(.fin) })
        peer.inject(peer.tcp(to: 9, sequence: ours, acknowledgment: fin.sequence &+ 1, flags: .ack))
        peer.step(2)
        #expect(peer.stack.tcpConnectionCount == 1, "FIN-WAIT-2: waiting for the peer's FIN")
        for _ in 0..<1200 {  // two minutes, in 100 ms steps
            peer.stack.poll(now: peer.now)
            peer.now += 100
        }
        #expect(peer.stack.tcpConnectionCount == 0, "given up after the FIN-WAIT-2 timeout")
    }

    @Test("connections work across the 32-bit millisecond wrap (49.7 days of uptime)")
    func clockWrap() throws {
        let net = TwoHosts(), log = TCPLog()
        _ = (net.a.tcp, net.b.tcp)
        net.run(1)  // the layers' clocks start here, at 0
        net.now = (1 << 32) - 6  // idle for 49.7 days
        net.run(1)
        try net.b.listenTCP(port: 7) { TCPEcho() }
        let message = [UInt8](repeating: 7, count: 300_000)
        net.a.connectTCP(to: TCPEndpoint(hostB, 7), TCPClient(message: message, log: log))
        net.run(2000)
        #expect(log.received.count == message.count && log.closedReason == .normal)
        #expect(net.a.tcp.retransmissions == 0 && net.b.tcp.retransmissions == 0, "no timer fired early")
        #expect(net.a.tcp.timeWaitCount == 1, "TIME-WAIT lasts its 60 s, not a tick")
        net.run(61_000)
        #expect(net.a.tcp.timeWaitCount == 0 && net.a.tcpConnectionCount == 0)
    }

    // MARK: Bounded memory

    @Test("overlapping out-of-order segments are held once, within a per-connection budget")
    func reassemblyBounded() throws {
        let peer = RawPeer()
        try peer.stack.listenTCP(port: 9) { Collector(log: TCPLog()) }
        let (ours, theirs) = try peer.handshake(port: 9)
        // A hole at `ours`, then 3000 segments of 1000 bytes each starting one byte later.
        let block = [UInt8](repeating: 3, count: 1000)
        for i in 0..<3000 {
            peer.inject(peer.tcp(to: 9, sequence: ours &+ 1 &+ UInt32(i), acknowledgment: theirs, flags: .ack, payload: block))
            if i % 50 == 0 { peer.step() }
        }
        peer.step()
        #expect(peer.stack.tcp.reassemblyBytes <= 128 << 10, "held \(peer.stack.tcp.reassemblyBytes) bytes")
    }

    @Test("one-byte out-of-order segments: adjacent ones join one range, scattered ones stop at the range limit")
    func reassemblyRanges() throws {
        let peer = RawPeer()
        try peer.stack.listenTCP(port: 9) { Collector(log: TCPLog()) }
        let (ours, theirs) = try peer.handshake(port: 9)
        for i in 0..<4000 {  // contiguous, one byte each, past a one-byte hole
            peer.inject(peer.tcp(to: 9, sequence: ours &+ 1 &+ UInt32(i), acknowledgment: theirs, flags: .ack, payload: [1]))
            if i % 50 == 0 { peer.step() }
        }
        peer.step(2)
        let store = peer.stack.tcp.reassembly
        #expect(store.queues.count == 1 && store.queues.first?.value.ranges.count == 1, "joined into one range")
        #expect(store.queues.first?.value.ranges.first?.bytes.count == 4000)
        let peer2 = RawPeer()
        try peer2.stack.listenTCP(port: 9) { Collector(log: TCPLog()) }
        let (o2, t2) = try peer2.handshake(port: 9)
        for i in 0..<1000 {  // every other byte: a range each
            peer2.inject(peer2.tcp(to: 9, sequence: o2 &+ 2 &+ 2 * UInt32(i), acknowledgment: t2, flags: .ack, payload: [1]))
            if i % 50 == 0 { peer2.step() }
        }
        peer2.step(2)
        let ranges = peer2.stack.tcp.reassembly.queues.first?.value.ranges.count ?? 0
        #expect(ranges == peer2.stack.tcp.reassembly.maxRanges, "\(ranges) ranges held")
        #expect(peer2.stack.tcp.reassemblyDrops >= 1000 - ranges)
    }

    @Test("a peer that never reads cannot make a connection queue without bound")
    func sendQueueBounded() throws {
        let peer = RawPeer(), log = TCPLog()
        try peer.stack.listenTCP(port: 9) { Flooder(chunk: 65_536, times: 100, log: log) }
        _ = try peer.handshake(port: 9)
        peer.step(5)
        let queued = log.events.last.flatMap { Int($0.dropFirst("queued ".count)) } ?? .max
        #expect(queued <= 1 << 20, "queued \(queued) bytes")
    }

    @Test("the ARP cache is bounded against a flood of requests from made-up senders")
    func arpCacheBounded() throws {
        let peer = RawPeer { $0.prefixLength = 8 }
        for i in 0..<50_000 {
            let sender = IPv4Address(raw: IPv4Address(10, 0, 0, 0).raw | UInt32(i + 10))
            peer.inject(peer.arp(.request, senderIP: sender, senderMAC: MACAddress(raw: 0x0200_0000_0000 | UInt64(i)),
                                 targetIP: hostB))
            if i % 64 == 0 { peer.step() }
        }
        peer.step()
        #expect(peer.stack.arp.entries.count <= 8192, "\(peer.stack.arp.entries.count) entries")
    }

    @Test("an unsolicited ARP reply does not redirect a known neighbour")
    func arpPoisoning() throws {
        let peer = RawPeer()
        #expect(peer.stack.neighbor(peer.address) == peer.mac)
        let evil = MACAddress(0x02, 0xEE, 0xEE, 0xEE, 0xEE, 0xEE)
        peer.inject(peer.arp(.reply, senderIP: peer.address, senderMAC: evil, targetIP: hostB, targetMAC: macB, to: macB))
        peer.step()
        #expect(peer.stack.neighbor(peer.address) == peer.mac)
    }

    @Test("4-tuples chosen to collide under an unkeyed hash stay cheap to look up")
    func keyedConnectionHash() {
        // Keys that differ only in their top bits, only in their bottom bits, or only in the
        // client port: a plain multiply-shift hash piles each family into a few long runs.
        // Each family goes into several tables, each with its own random keys.
        let families: [(String, [UInt64])] = [
            ("top bits", (1...5000).map { UInt64($0) << 47 | 0x1234_5678 }),
            ("bottom bits", (1...5000).map { UInt64($0) }),
            ("client ports", (1024..<6024).map { UInt64(0x0A00_0002) << 32 | UInt64($0) << 16 | 80 }),
        ]
        for (name, keys) in families {
            for _ in 0..<8 {
                var table = ConnectionTable()
                for (i, k) in keys.enumerated() { table[k] = UInt64(i) }
                let longest = keys.map { table.probeLength($0) }.max() ?? 0
                #expect(longest < 64, "\(name): the longest probe took \(longest) steps")
                #expect(keys.enumerated().allSatisfy { table[$1] == UInt64($0) })
            }
        }
    }
}
