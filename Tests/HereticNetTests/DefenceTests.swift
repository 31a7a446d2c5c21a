import Testing
@testable import HereticNet

/// Receives and never reads more than it is sent... a peer that reads: counts what arrives.
struct Counter: TCPHandler {
    let log: TCPLog
    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        log.received += data
    }
    mutating func closed(_ reason: TCPCloseReason) { log.closedReason = reason }
}

/// Pushes `total` bytes as fast as its send buffer takes them, recording the largest queue
/// it ever saw and how often a send came up short.
final class PushLog: @unchecked Sendable {
    var sent = 0, shortSends = 0, writables = 0, largestQueue = 0
    var closed: TCPCloseReason?
}

struct Pusher: TCPHandler {
    let total: Int
    let log: PushLog
    mutating func push(_ connection: some TCPConnection) {
        let chunk = [UInt8](repeating: 0x42, count: 32_768)
        while log.sent < total {
            let n = chunk.withUnsafeBytes { connection.send(UnsafeRawBufferPointer(rebasing: $0[..<min(chunk.count, total - log.sent)])) }
            log.sent += n
            log.largestQueue = max(log.largestQueue, connection.bytesQueued)
            if n < min(chunk.count, total - log.sent + n) {
                log.shortSends += 1
                return
            }
        }
    }
    mutating func connected(_ connection: some TCPConnection) { push(connection) }
    mutating func writable(_ connection: some TCPConnection) {
        log.writables += 1
        push(connection)
    }
    mutating func closed(_ reason: TCPCloseReason) { log.closed = reason }
}

@Suite("Defences: what Linux does against hostile peers, done here")
struct DefenceTests {
    @Test("packets from martian sources and to or from port 0 are dropped and counted; nothing answers them")
    func martians() throws {
        let peer = RawPeer()
        try peer.stack.listenTCP(port: 80) { TCPEcho() }
        let sources = [IPv4Address(127, 0, 0, 1), IPv4Address(224, 0, 0, 1), .broadcast, IPv4Address(10, 77, 0, 255),
                       hostB, IPv4Address(0, 1, 2, 3), IPv4Address(240, 0, 0, 1)]
        for s in sources { peer.inject(peer.tcp(from: s, to: 80, sequence: 1, flags: .syn)) }
        peer.inject(peer.tcp(sourcePort: 0, to: 80, sequence: 1, flags: .syn))
        peer.inject(peer.tcp(to: 0, sequence: 1, flags: .syn))
        peer.step(3)
        #expect(peer.stack.counters.martianSources == sources.count)
        #expect(peer.stack.counters.portZero == 2)
        #expect(peer.take().isEmpty, "no answer, not even ARP")
        #expect(peer.stack.tcpConnectionCount == 0 && peer.pool.inUse == 0)
    }

    @Test("blind in-window RSTs earn challenge ACKs at a bounded rate; the connection lives")
    func challengeAckRateLimit() throws {
        let peer = RawPeer()
        try peer.stack.listenTCP(port: 7) { Collector(log: TCPLog()) }
        let (ours, theirs) = try peer.handshake(port: 7)
        for i in 0..<5000 {  // all within one second, none exactly at RCV.NXT
            peer.inject(peer.tcp(to: 7, sequence: ours &+ 1 &+ UInt32(i % 1000), acknowledgment: theirs, flags: .rst))
            if i % 64 == 63 { peer.step() }  // (an interface takes 64 frames a poll)
        }
        peer.step(2)
        let tcp = peer.stack.tcp
        #expect(tcp.challengeAcks >= 500 && tcp.challengeAcks <= 1500, "\(tcp.challengeAcks) challenge ACKs in one second")
        #expect(tcp.challengeAcks + tcp.challengeAcksSuppressed == 5000)
        #expect(peer.takeSegments().filter { $0.flags == .ack }.count == tcp.challengeAcks)
        #expect(peer.stack.tcpConnectionCount == 1, "no blind RST tore it down")
        // A new second brings a new allowance.
        peer.step(1000)
        peer.inject(peer.tcp(to: 7, sequence: ours &+ 5, acknowledgment: theirs, flags: .rst))
        peer.step()
        #expect(peer.takeSegments().count == 1)
    }

    @Test("PAWS: a segment whose timestamp is older than the last is dropped and answered; a RST is not")
    func paws() throws {
        let peer = RawPeer(), log = TCPLog()
        try peer.stack.listenTCP(port: 7) { Counter(log: log) }
        let options = TCPOptions(maximumSegmentSize: 1460, timestamp: TCPTimestamp(value: 100, echo: 0))
        var (ours, theirs) = try peer.handshake(port: 7, options: options)
        theirs = theirs &+ 0  // (the stack sends nothing back here)
        func data(_ text: String, ts: UInt32) -> [UInt8] {
            peer.tcp(to: 7, sequence: ours, acknowledgment: theirs, flags: [.ack, .psh],
                     options: TCPOptions(timestamp: TCPTimestamp(value: ts, echo: 0)), payload: Array(text.utf8))
        }
        peer.inject(data("new", ts: 1000))
        peer.step()
        ours &+= 3
        #expect(log.received == Array("new".utf8))
        _ = peer.take()
        peer.inject(data("old", ts: 500))  // fresh sequence, stale timestamp: an old duplicate
        peer.step()
        #expect(log.received == Array("new".utf8), "not delivered")
        #expect(peer.stack.tcp.pawsDrops == 1)
        #expect(peer.takeSegments().first?.acknowledgment == ours, "answered with an ACK of what we have")
        peer.inject(peer.tcp(to: 7, sequence: ours, acknowledgment: theirs, flags: .rst,
                             options: TCPOptions(timestamp: TCPTimestamp(value: 1, echo: 0))))
        peer.step()
        #expect(log.closedReason == .reset, "RSTs are exempt from PAWS (RFC 7323 5.3)")
    }

    @Test("ephemeral ports follow RFC 6056: unpredictable per destination, different per layer")
    func ephemeralPorts() throws {
        let net = TwoHosts(), other = TwoHosts()
        var first: [UInt16] = [], otherFirst: [UInt16] = []
        for port in 1...200 {
            first.append(net.a.connectTCP(to: TCPEndpoint(hostB, UInt16(port)), Collector(log: TCPLog())).localPort)
            otherFirst.append(other.a.connectTCP(to: TCPEndpoint(hostB, UInt16(port)), Collector(log: TCPLog())).localPort)
        }
        #expect(first.allSatisfy { TCPLayer.ephemeralRange.contains($0) })
        let steps = zip(first, first.dropFirst()).filter { $1 == $0 &+ 1 }.count
        #expect(steps < 10, "not handed out in sequence across destinations (\(steps) in a row)")
        #expect(zip(first, otherFirst).filter { $0 == $1 }.count < 10, "each layer's key gives other ports")
        // One destination gets distinct ports, one after another from its own start.
        let same = (0..<50).map { _ in net.a.connectTCP(to: TCPEndpoint(hostB, 9999), Collector(log: TCPLog())) }
        #expect(Set(same).count == 50)
    }

    @Test("ICMP errors are rate-limited: a flood of datagrams to a closed port draws a bounded burst")
    func icmpRateLimit() throws {
        let peer = RawPeer()
        for i in 0..<300 {
            var f = [UInt8](repeating: 0, count: 42 + 4)
            f.withUnsafeMutableBytes { b in
                let p = b.baseAddress!
                EthernetFrame.emit(into: p, destination: macB, source: peer.mac, etherType: EtherType.ipv4)
                UDPDatagram.emit(into: p + 34, sourcePort: UInt16(1000 + i), destinationPort: 9999, dataLength: 4,
                                 source: peer.address, destination: hostB)
                IPv4Packet.emit(into: p + 14, source: peer.address, destination: hostB, protocol: IPProtocol.udp, payloadLength: 12)
            }
            peer.inject(f)
        }
        peer.step(5)  // (64 frames a poll: the bucket gains one token a millisecond meanwhile)
        let c = peer.stack.counters
        #expect((50...55).contains(c.icmpUnreachableSent), "a burst of 50: \(c.icmpUnreachableSent)")
        #expect(c.icmpUnreachableSent + c.icmpRateLimited == 300)
        peer.step(1000)
        peer.inject(peer.tcp(to: 1, sequence: 1, flags: .syn))  // (a TCP RST is not an ICMP error)
        var g = [UInt8](repeating: 0, count: 46)
        g.withUnsafeMutableBytes { b in
            let p = b.baseAddress!
            EthernetFrame.emit(into: p, destination: macB, source: peer.mac, etherType: EtherType.ipv4)
            UDPDatagram.emit(into: p + 34, sourcePort: 5, destinationPort: 9999, dataLength: 4, source: peer.address, destination: hostB)
            IPv4Packet.emit(into: p + 14, source: peer.address, destination: hostB, protocol: IPProtocol.udp, payloadLength: 12)
        }
        peer.inject(g)
        peer.step()
        #expect(peer.stack.counters.icmpUnreachableSent == c.icmpUnreachableSent + 1, "the bucket refilled")
    }

    @Test("ICMP fragmentation needed lowers the MSS only when it names data in flight and a plausible MTU")
    func pathMTU() throws {
        let peer = RawPeer()
        try peer.stack.listenTCP(port: 80) { BigResponder(size: 100_000) }
        let (ours, theirs) = try peer.handshake(port: 80)
        peer.inject(peer.tcp(to: 80, sequence: ours, acknowledgment: theirs, flags: [.ack, .psh], payload: Array("GET".utf8)))
        peer.step()
        let sent = peer.inbox.compactMap { (d, bytes) -> [UInt8]? in
            if case .tcp(_, _, _, _, _, _, _, _, _, let n) = d, n > 0 { return bytes }
            return nil
        }
        let first = try #require(sent.first, "the response started")
        #expect(first.count == 14 + 20 + 20 + 1460)
        _ = peer.take()
        // The quoted header and 8 bytes of TCP of that first segment.
        let quoted = Array(first[14..<(14 + 28)])
        func icmp(mtu: UInt16, quoting q: [UInt8]) -> [UInt8] {
            peer.icmp(type: ICMPv4Message.destinationUnreachable, code: ICMPv4Message.fragmentationNeeded, rest: UInt32(mtu), quoting: q)
        }
        var wrongSequence = quoted
        wrongSequence[24] ^= 0x80  // a sequence number far from anything in flight
        peer.inject(icmp(mtu: 1280, quoting: wrongSequence))
        peer.inject(icmp(mtu: 200, quoting: quoted))  // below 576: refused
        peer.step()
        #expect(peer.stack.tcp.pathMTUUpdates == 0 && peer.stack.tcp.icmpErrorsIgnored == 2)
        peer.inject(icmp(mtu: 1280, quoting: quoted))
        peer.step()
        #expect(peer.stack.tcp.pathMTUUpdates == 1)
        let resent = peer.takeSegments().filter { $0.payloadLength > 0 }
        #expect(!resent.isEmpty && resent.allSatisfy { $0.payloadLength <= 1240 }, "\(resent.map(\.payloadLength))")
        #expect(resent.first?.sequence == theirs, "the oldest unacknowledged data went again at once")
    }

    @Test("an ACK to a listener is checked as a SYN cookie only while cookies may be out")
    func cookiesOnlyWhenSent() throws {
        let peer = RawPeer()
        try peer.stack.listenTCP(port: 7, backlog: 1) { TCPEcho() }
        peer.inject(peer.tcp(sourcePort: 41_000, to: 7, sequence: 9, acknowledgment: 0xdead_beef, flags: .ack))
        peer.step()
        #expect(peer.stack.tcp.synCookiesRejected == 0, "no cookie was ever sent: not consulted")
        #expect(peer.takeSegments().first?.flags == .rst)
        // Fill the backlog (one half-open connection), so the next SYN gets a cookie.
        peer.inject(peer.tcp(sourcePort: 41_001, to: 7, sequence: 100, flags: .syn))
        peer.inject(peer.tcp(sourcePort: 41_002, to: 7, sequence: 200, flags: .syn))
        peer.step()
        #expect(peer.stack.tcp.synCookiesSent == 1)
        peer.inject(peer.tcp(sourcePort: 41_003, to: 7, sequence: 9, acknowledgment: 0xdead_beef, flags: .ack))
        peer.step()
        #expect(peer.stack.tcp.synCookiesRejected == 1, "now it is checked, and refused")
        // Two cookie periods later, unchecked again.
        peer.step(1)
        for _ in 0..<140 { peer.stack.poll(now: peer.now); peer.now += 1000 }
        peer.collect()
        _ = peer.take()
        peer.inject(peer.tcp(sourcePort: 41_004, to: 7, sequence: 9, acknowledgment: 0xdead_beef, flags: .ack))
        peer.step()
        #expect(peer.stack.tcp.synCookiesRejected == 1)
    }

    @Test("a listener's keepalive (idle, interval, count) applies to what it accepts")
    func listenerKeepalive() throws {
        let peer = RawPeer(), log = TCPLog()
        try peer.stack.listenTCP(port: 7, keepalive: TCPKeepalive(idle: 2, interval: 1, count: 3)) { Counter(log: log) }
        peer.answersARP = true
        _ = try peer.handshake(port: 7)
        var probesAt: [UInt64] = []
        let start = peer.now
        for _ in 0..<8000 where log.closedReason == nil {
            peer.step()
            if !peer.takeSegments().filter({ $0.flags == .ack && $0.payloadLength == 0 }).isEmpty {
                probesAt.append((peer.now - start) / 1000)
            }
        }
        #expect(probesAt == [2, 3, 4], "probes at 2 s idle, then every second")
        #expect(log.closedReason == .timedOut)
        #expect(peer.stack.tcpConnectionCount == 0)
    }

    @Test("at most so many addresses wait for ARP at once; the rest are dropped and counted")
    func arpPendingAddresses() throws {
        let peer = RawPeer { $0.prefixLength = 16 }
        peer.answersARP = false
        for i in 0..<1000 {
            [UInt8](repeating: 1, count: 8).withUnsafeBytes {
                _ = peer.stack.sendUDP($0, from: 5000, to: UDPEndpoint(IPv4Address(raw: IPv4Address(10, 77, 1, 0).raw + UInt32(i)), 9))
            }
        }
        #expect(peer.stack.arp.waiting.count == 256)
        #expect(peer.stack.counters.arpPendingDropped == 744)
        peer.step(5000)
        #expect(peer.stack.arp.waiting.isEmpty && peer.pool.inUse == 0, "given up and released")
    }

    @Test("the process-wide cap on send memory holds, refusals are counted, and freed memory wakes the refused")
    func sendMemoryCap() throws {
        let memory = SendMemory(capacity: 640 << 10)  // two and a half grants
        let peer = RawPeer(sendMemory: memory)
        let logs = (0..<3).map { _ in PushLog() }
        var port: UInt16 = 7000
        var connections: [(ours: UInt32, theirs: UInt32, port: UInt16)] = []
        for log in logs {
            try peer.stack.listenTCP(port: port) { Pusher(total: 10 << 20, log: log) }
            // A peer that never reads: its window stays shut.
            let (ours, theirs) = try peer.handshake(port: port, sourcePort: port, options: TCPOptions(maximumSegmentSize: 1460))
            peer.inject(peer.tcp(sourcePort: port, to: port, sequence: ours, acknowledgment: theirs, flags: .ack, window: 0))
            connections.append((ours, theirs, port))
            port += 1
        }
        peer.step(5)
        let tcp = peer.stack.tcp
        #expect(memory.inUse <= memory.capacity, "\(memory.inUse) granted of \(memory.capacity)")
        #expect(tcp.sendCapRefusals > 0)
        #expect(logs.map(\.largestQueue).reduce(0, +) <= 640 << 10)
        let starved = try #require(logs.first { $0.sent < 256 << 10 }, "a connection the cap held back")
        // One connection goes (its queue's memory with it): a refused one hears writable.
        let gone = try #require(logs.firstIndex { $0.sent >= 256 << 10 })
        let c = connections[gone]
        peer.inject(peer.tcp(sourcePort: c.port, to: c.port, sequence: c.ours, acknowledgment: c.theirs, flags: .rst))
        let writablesBefore = starved.writables
        peer.step(20)
        #expect(starved.writables > writablesBefore, "woken once memory came back under the cap")
    }
}
