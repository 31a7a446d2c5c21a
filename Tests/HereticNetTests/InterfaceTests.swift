import Testing
@testable import HereticNet

/// Echoes every datagram back to its sender.
struct EchoHandler: UDPHandler {
    mutating func received(_ data: UnsafeRawBufferPointer, from peer: UDPEndpoint, _ socket: some UDPSocket) {
        socket.send(data, to: peer)
    }
}

/// Remembers what arrived.
final class Inbox: @unchecked Sendable { var datagrams: [(UDPEndpoint, [UInt8])] = [] }
struct CollectHandler: UDPHandler {
    let inbox: Inbox
    mutating func received(_ data: UnsafeRawBufferPointer, from peer: UDPEndpoint, _ socket: some UDPSocket) {
        inbox.datagrams.append((peer, Array(data)))
    }
}

/// Two interfaces joined by a memory link (optionally lossy), stepped on one fake clock.
final class TwoHosts: @unchecked Sendable {
    let link = MemoryLink()
    let poolA = PacketPool(capacity: 1024), poolB = PacketPool(capacity: 1024)
    let a: Interface, b: Interface
    var injectors: [FaultInjector] = []
    var now: UInt64 = 0

    init(faults: FaultInjector.Faults? = nil, seed: UInt64 = 1) {
        var devA: NetworkDevice = link.a, devB: NetworkDevice = link.b
        if let faults {
            let ia = FaultInjector(link.a, faults: faults, seed: seed)
            let ib = FaultInjector(link.b, faults: faults, seed: seed &+ 1)
            injectors = [ia, ib]
            devA = ia
            devB = ib
        }
        a = Interface(device: devA, pool: poolA, configuration: .init(mac: macA, address: hostA))
        b = Interface(device: devB, pool: poolB, configuration: .init(mac: macB, address: hostB))
    }

    /// Polls both sides `steps` times, one millisecond apart.
    func run(_ steps: Int = 20) {
        for _ in 0..<steps {
            for i in injectors { i.now = now }
            a.poll(now: now)
            b.poll(now: now)
            now += 1
        }
    }
}

func send(_ iface: Interface, _ text: String, from port: UInt16, to peer: UDPEndpoint) {
    let bytes = Array(text.utf8)
    bytes.withUnsafeBytes { _ = iface.sendUDP($0, from: port, to: peer) }
}

@Suite("Interface: ARP, IPv4, ICMP, UDP")
struct InterfaceTests {
    @Test("a UDP datagram resolves ARP, reaches the echo server and comes back byte for byte")
    func udpEcho() throws {
        let net = TwoHosts(), inbox = Inbox()
        try net.b.bindUDP(port: 7, EchoHandler())
        try net.a.bindUDP(port: 5000, CollectHandler(inbox: inbox))
        send(net.a, "hello heretic", from: 5000, to: UDPEndpoint(hostB, 7))
        net.run()
        #expect(inbox.datagrams.count == 1)
        #expect(inbox.datagrams.first?.0 == UDPEndpoint(hostB, 7))
        #expect(inbox.datagrams.first?.1 == Array("hello heretic".utf8))
        #expect(net.a.counters.arpRequestsSent == 1 && net.b.counters.arpRepliesSent == 1)
        #expect(net.b.counters.udpDelivered == 1 && net.a.counters.udpDelivered == 1)
        // The second exchange needs no ARP: both sides learned each other.
        send(net.a, "again", from: 5000, to: UDPEndpoint(hostB, 7))
        net.run()
        #expect(inbox.datagrams.count == 2 && net.a.counters.arpRequestsSent == 1)
        #expect(net.poolA.inUse == 0 && net.poolB.inUse == 0, "no buffer leaked")
    }

    @Test("Linux's ping is answered in place with a valid echo reply")
    func ping() {
        let net = TwoHosts()
        var frames = [Captured.icmpEchoRequest.withUnsafeBytes { net.poolA.copy(from: $0.baseAddress!, length: $0.count)! }]
        net.link.a.transmit(&frames, pool: net.poolA)  // inject the captured request towards b
        net.run(2)
        var got: [Packet] = []
        _ = net.link.a.receive(into: &got, limit: 8, pool: net.poolA)
        #expect(got.count == 1)
        let reply = net.poolA.contents(got[0])
        let d = withBytes(reply) { Dissection.dissect($0, length: $1) }
        #expect(d == .icmp(source: hostB, destination: hostA, type: ICMPv4Message.echoReply, code: 0, dataLength: 20))
        // Same identifier, sequence and data as Linux's own reply to that request.
        #expect(Array(reply[38...]) == Array(Captured.icmpEchoReply[38...]))
        #expect(net.b.counters.icmpEchoReplies == 1)
    }

    @Test("a datagram to a closed port draws ICMP port unreachable")
    func portUnreachable() {
        let net = TwoHosts()
        send(net.a, "anyone?", from: 5000, to: UDPEndpoint(hostB, 9999))
        net.run()
        #expect(net.b.counters.udpNoListener == 1 && net.b.counters.icmpUnreachableSent == 1)
        #expect(net.link.a.framesReceived >= 2, "ARP reply and the ICMP error reached a")
    }

    @Test("ARP gives up after three requests and drops what waited, counted")
    func arpGivesUp() {
        let net = TwoHosts()
        let nobody = IPv4Address(10, 77, 0, 99)
        for _ in 0..<3 { send(net.a, "x", from: 1, to: UDPEndpoint(nobody, 9)) }
        net.run(5000)
        #expect(net.a.counters.arpRequestsSent == 3)
        #expect(net.a.counters.arpPendingDropped == 3)
        #expect(net.poolA.inUse == 0)
    }

    @Test("at most 16 packets wait for one address; the rest are dropped and counted")
    func arpPendingBound() {
        let net = TwoHosts()
        for _ in 0..<20 { send(net.a, "x", from: 1, to: UDPEndpoint(hostB, 9)) }
        #expect(net.a.counters.arpPendingDropped == 4)
        net.run()
        #expect(net.b.counters.udpNoListener == 16)
    }

    @Test("frames for others, bad checksums, fragments and junk are dropped and counted")
    func drops() {
        let net = TwoHosts()
        func inject(_ frame: [UInt8]) {
            var f = [frame.withUnsafeBytes { net.poolA.copy(from: $0.baseAddress!, length: $0.count)! }]
            net.link.a.transmit(&f, pool: net.poolA)
        }
        /// Changes an IPv4 header field and recomputes the header checksum.
        func rewriteIP(_ frame: [UInt8], _ edit: (inout [UInt8]) -> Void) -> [UInt8] {
            var f = frame
            edit(&f)
            f[24] = 0; f[25] = 0
            let sum = f.withUnsafeBytes { InternetChecksum.compute($0.baseAddress! + 14, count: 20) }
            f[24] = UInt8(sum >> 8); f[25] = UInt8(sum & 0xFF)
            return f
        }
        var otherMAC = Captured.udpDatagram; otherMAC[5] = 0x0c
        let otherIP = rewriteIP(Captured.udpDatagram) { $0[33] = 0x03 }  // to 10.77.0.3
        var badSum = Captured.udpDatagram; badSum[badSum.count - 1] ^= 0xFF
        let fragment = rewriteIP(Captured.udpDatagram) { $0[20] = 0x20 }  // more fragments
        let gre = rewriteIP(Captured.udpDatagram) { $0[23] = 47 }             // a protocol not spoken
        for f in [otherMAC, otherIP, badSum, fragment, [1, 2, 3], gre] { inject(f) }
        net.run(2)
        let c = net.b.counters
        #expect(c.notForUs == 1 && c.ipNotForUs == 1 && c.badChecksums == 1 && c.fragmentsDropped == 1)
        #expect(c.ethernetErrors == 1 && c.unknownProtocol == 1)
        #expect(c.framesSent == 0, "nothing answered")
        #expect(net.poolB.inUse == 0)
    }

    @Test("over a lossy, reordering link, retries still resolve and datagrams get through")
    func lossy() throws {
        let faults = FaultInjector.Faults(drop: 0.2, duplicate: 0.05, reorder: 0.2, delayMilliseconds: 0...3)
        let net = TwoHosts(faults: faults, seed: 99), inbox = Inbox()
        try net.b.bindUDP(port: 7, EchoHandler())
        try net.a.bindUDP(port: 5000, CollectHandler(inbox: inbox))
        // Resolve ARP first: a lost request is retried only once a second (RFC 1122), and
        // what queues meanwhile beyond 16 packets is dropped and counted, as tested above.
        while inbox.datagrams.isEmpty {
            send(net.a, "datagram 0", from: 5000, to: UDPEndpoint(hostB, 7))
            net.run(1500)
        }
        inbox.datagrams.removeAll()
        for i in 0..<200 {
            send(net.a, "datagram \(i)", from: 5000, to: UDPEndpoint(hostB, 7))
            net.run(10)
        }
        net.run(100)
        // 20 % loss each way: about 64 % of round trips survive, duplicates add a few; none is
        // corrupted or invented.
        #expect((100...210).contains(inbox.datagrams.count))
        let texts = Set(inbox.datagrams.map { String(decoding: $0.1, as: UTF8.self) })
        #expect(texts.isSubset(of: Set((0..<200).map { "datagram \($0)" })))
        #expect(net.poolA.inUse == 0 && net.poolB.inUse == 0)
    }

    @Test("binding a port twice is refused")
    func bindTwice() throws {
        let net = TwoHosts()
        try net.b.bindUDP(port: 7, EchoHandler())
        #expect(throws: NetError.addressInUse(7)) { try net.b.bindUDP(port: 7, EchoHandler()) }
    }

    @Test("random frames into the receive path: no crash, every frame accounted for, the stack serves on")
    func receiveFuzz() throws {
        let net = TwoHosts()
        var rng = SplitMix64(seed: 2024)
        let seeds = WireFuzzTests.frames
        for round in 0..<20_000 {
            var f = seeds[Int(rng.next() % UInt64(seeds.count))]
            // Aim them at b so they get past the MAC check.
            for i in 0..<6 { f[i] = UInt8(truncatingIfNeeded: macB.raw >> UInt64(40 - 8 * i)) }
            for _ in 0..<Int(rng.next() % 4) { f[Int(rng.next() % UInt64(f.count))] ^= UInt8(truncatingIfNeeded: rng.next()) }
            if rng.next() % 4 == 0 { f.removeLast(Int(rng.next() % UInt64(f.count))) }
            var out = [f.withUnsafeBytes { net.poolA.copy(from: $0.baseAddress!, length: $0.count)! }]
            net.link.a.transmit(&out, pool: net.poolA)
            if round % 64 == 0 { net.run(1) }
        }
        net.run(10)
        let c = net.b.counters
        #expect(c.framesReceived >= 20_000, "plus a's answers to b's own ARP requests")
        #expect(c.framesAccounted == c.framesReceived, "each frame ended in exactly one counter: \(c.nonZero)")
        #expect(c.ethernetErrors + c.ipv4Errors + c.badChecksums + c.tcpErrors + c.udpErrors > 1000, "the mutations were refused, by reason")
        #expect(c.tcpSegments + c.udpDelivered + c.udpNoListener + c.arpReceived > 1000, "and the intact ones handled")
        #expect(net.poolB.inUse == 0, "every received buffer was released or sent")
        // And it still works.
        try net.b.listenTCP(port: 7) { TCPEcho() }
        let log = TCPLog(), message = Array("after the fuzz".utf8)
        net.a.connectTCP(to: TCPEndpoint(hostB, 7), TCPClient(message: message, log: log))
        net.run(200)
        #expect(log.received == message)
    }
}
