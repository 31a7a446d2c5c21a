import Atomics
import HereticCore
import HereticNet

/// The kinds of hostile traffic `bench hostile` sends.
public enum AttackKind: Int, CaseIterable, Sendable {
    /// SYNs from made-up on-link addresses (their SYN-ACKs wait for ARP answers that never
    /// come): the backlog fills and SYN cookies take over.
    case synFlood
    /// Live-looking frames mutated as the fuzzers do, half with their checksums fixed.
    case malformed
    /// RSTs and SYNs with guessed sequence numbers on the healthy connections' 4-tuples.
    case blindInjection
    /// ARP requests from made-up neighbours, and replies claiming the client's address.
    case arpFlood
    /// Data far past a hole, overlapping, on connections the attacker opened.
    case outOfOrder
    /// Connections that announce MSS 9000, ask for a 100 MB response, and then never read
    /// (half with a closed window, half never acknowledging).
    case greedy

    var name: String {
        switch self {
        case .synFlood: "syn_flood"
        case .malformed: "malformed"
        case .blindInjection: "blind_rst_syn"
        case .arpFlood: "arp_flood"
        case .outOfOrder: "out_of_order"
        case .greedy: "greedy_readers"
        }
    }
}

/// An attacker on a port of the virtual switch: it writes frames byte by byte, with no stack
/// of its own, and keeps just enough state for the attacks that need a handshake. It runs as
/// a poller on one core, sending at most `framesPerSecond` while `active`.
final class Attacker: CorePoller, @unchecked Sendable {
    let port: SwitchPort
    let pool: PacketPool
    let mac = MACAddress(0x02, 0, 0, 0, 0, 0x66)
    let address: IPv4Address
    let server: IPv4Address
    let serverMAC: MACAddress
    let client: IPv4Address
    /// Local ports of the healthy connections, for blind injection on their 4-tuples.
    var healthyPorts: [UInt16] = []
    let framesPerSecond: Int
    let active = ManagedAtomic<Bool>(false)
    var sent = [Int](repeating: 0, count: AttackKind.allCases.count)
    /// Frames the switch had no room for.
    var blocked = 0
    var rng: SplitMix64
    var mutator: FrameMutator
    var templates: [[UInt8]] = []
    var tx: [Packet] = []
    var rx: [Packet] = []
    var lastTick: UInt64 = 0
    var schedule = 0

    /// A connection the attacker opened itself.
    struct Connection {
        var kind: AttackKind
        var ours: UInt32
        var theirs: UInt32 = 0
        var established = false
        var opened: UInt64
        /// Greedy ones: whether it advertises a closed window (else it never acknowledges).
        var closedWindow: Bool
    }
    var connections: [UInt16: Connection] = [:]
    /// The established out-of-order connections (by port), refreshed each turn.
    var flooders: [UInt16] = []
    var nextPort: UInt16 = 20_000
    /// Stateful connections kept open at once, of each kind.
    let stateful = 32

    init(port: SwitchPort, pool: PacketPool, address: IPv4Address, server: IPv4Address, serverMAC: MACAddress,
         client: IPv4Address, framesPerSecond: Int, seed: UInt64) {
        self.port = port
        self.pool = pool
        self.address = address
        self.server = server
        self.serverMAC = serverMAC
        self.client = client
        self.framesPerSecond = framesPerSecond
        rng = SplitMix64(seed: seed)
        mutator = FrameMutator(seed: seed &+ 1)
        // Templates for the mutants: the kinds of frame a server sees.
        templates = [
            tcpFrame(from: address, sourcePort: 4000, to: 7, sequence: 1, acknowledgment: 0, flags: .syn,
                     options: TCPOptions(maximumSegmentSize: 1460, windowScale: 7, sackPermitted: true,
                                         timestamp: TCPTimestamp(value: 1, echo: 0))),
            tcpFrame(from: address, sourcePort: 4001, to: 7, sequence: 9, acknowledgment: 9, flags: [.ack, .psh],
                     payload: [UInt8](repeating: 0x61, count: 100)),
            tcpFrame(from: address, sourcePort: 4002, to: 80, sequence: 9, acknowledgment: 9, flags: [.fin, .ack]),
            udpFrame(to: 7, payload: [UInt8](repeating: 0x62, count: 64)),
            arpFrame(request: true, senderIP: address, senderMAC: mac, target: server, to: .broadcast),
            icmpEcho(),
        ]
    }

    // MARK: The loop

    func poll(_ core: Core) -> Int {
        let now = core.nowMilliseconds
        var work = receive(now: now)
        guard active.load(ordering: .relaxed) else {
            lastTick = now
            return work
        }
        let elapsed = lastTick == 0 ? 1 : min(now &- lastTick, 10)
        lastTick = now
        let budget = Int(elapsed) * framesPerSecond / 1000
        openConnections(now: now)
        for _ in 0..<budget {
            guard let frame = nextFrame() else { break }
            tx.append(frame)
        }
        work += tx.count
        flush()
        return work
    }

    func flush() {
        guard !tx.isEmpty else { return }
        port.transmit(&tx, pool: pool)
        // What the switch could not take now is not worth keeping (an attacker retries).
        blocked += tx.count
        for p in tx { pool.release(p) }
        tx.removeAll(keepingCapacity: true)
    }

    /// The next hostile frame, in a fixed mix: 30 % SYN flood, 30 % mutants, 20 % blind
    /// injection, 10 % ARP, 10 % out-of-order data.
    func nextFrame() -> Packet? {
        schedule &+= 1
        let kinds: [AttackKind] = [.synFlood, .malformed, .synFlood, .blindInjection, .malformed,
                                   .synFlood, .arpFlood, .malformed, .blindInjection, .outOfOrder]
        var kind = kinds[schedule % kinds.count]
        if kind == .blindInjection && healthyPorts.isEmpty { kind = .synFlood }
        let bytes: [UInt8]
        switch kind {
        case .synFlood:
            let spoofed = IPv4Address(raw: server.raw & 0xFFFF_FF00 | UInt32(Int.random(in: 10...250, using: &rng)))
            bytes = tcpFrame(from: spoofed, sourcePort: UInt16.random(in: 1024...65_535, using: &rng),
                             to: Bool.random(using: &rng) ? 7 : 80, sequence: UInt32.random(in: 0...UInt32.max, using: &rng),
                             acknowledgment: 0, flags: .syn, options: TCPOptions(maximumSegmentSize: 1460))
        case .malformed:
            var f = templates[Int.random(in: 0..<templates.count, using: &rng)]
            mutator.mutate(&f)
            if Bool.random(using: &mutator.rng) { FrameMutator.fixChecksums(&f) }
            bytes = f
        case .blindInjection:
            let p = healthyPorts[Int.random(in: 0..<healthyPorts.count, using: &rng)]
            let flags: TCPFlags = [.rst, .syn, [.rst, .ack]][Int.random(in: 0..<3, using: &rng)]
            bytes = tcpFrame(from: client, sourcePort: p, to: 7, sequence: UInt32.random(in: 0...UInt32.max, using: &rng),
                             acknowledgment: UInt32.random(in: 0...UInt32.max, using: &rng), flags: flags)
        case .arpFlood:
            if Bool.random(using: &rng) {
                let sender = IPv4Address(raw: server.raw & 0xFFFF_FF00 | UInt32(Int.random(in: 10...250, using: &rng)))
                let senderMAC = MACAddress(raw: 0x0200_0000_0000 | (rng.next() & 0xFF_FFFF_FFFF))
                bytes = arpFrame(request: true, senderIP: sender, senderMAC: senderMAC, target: server, to: .broadcast)
            } else {
                // "The client is at my MAC": poisoning, unsolicited.
                bytes = arpFrame(request: false, senderIP: client, senderMAC: mac, target: server, to: serverMAC)
            }
        case .outOfOrder, .greedy:
            guard let flood = outOfOrderSegment() else { return nextFrame() }
            bytes = flood
            kind = .outOfOrder
        }
        sent[kind.rawValue] += 1
        return packet(bytes)
    }

    // MARK: Connections of its own

    /// Keeps `stateful` greedy and `stateful` out-of-order connections open (a SYN for each
    /// missing one); forgets those that never completed in 3 s.
    func openConnections(now: UInt64) {
        connections = connections.filter { $0.value.established || now &- $0.value.opened < 3000 }
        flooders = connections.filter { $0.value.kind == .outOfOrder && $0.value.established }.map(\.key)
        for kind in [AttackKind.greedy, .outOfOrder] {
            var open = connections.values.filter { $0.kind == kind }.count
            while open < stateful {
                nextPort = nextPort >= 60_000 ? 20_000 : nextPort + 1
                let ours = UInt32.random(in: 0...UInt32.max, using: &rng)
                let closedWindow = Bool.random(using: &rng)
                connections[nextPort] = Connection(kind: kind, ours: ours, opened: now, closedWindow: closedWindow)
                let options = TCPOptions(maximumSegmentSize: kind == .greedy ? 9000 : 1460)
                if let p = packet(tcpFrame(from: address, sourcePort: nextPort, to: kind == .greedy ? 80 : 7, sequence: ours,
                                           acknowledgment: 0, flags: .syn, options: options)) {
                    tx.append(p)
                    sent[kind.rawValue] += 1
                }
                open += 1
            }
        }
    }

    /// A segment of 1 to 1400 bytes far past the hole at an established out-of-order
    /// connection's next byte, overlapping others at random.
    func outOfOrderSegment() -> [UInt8]? {
        guard let port = flooders.randomElement(using: &rng), let c = connections[port] else { return nil }
        let offset = UInt32.random(in: 1...60_000, using: &rng)
        let length = Int.random(in: 1...1400, using: &rng)
        return tcpFrame(from: address, sourcePort: port, to: 7, sequence: c.ours &+ offset, acknowledgment: c.theirs,
                        flags: .ack, payload: [UInt8](repeating: 0x6F, count: length))
    }

    /// Takes what the switch brought: answers ARP for our address, completes handshakes.
    func receive(now: UInt64) -> Int {
        let n = port.receive(into: &rx, limit: 256, pool: pool)
        for p in rx {
            handle(pool.bytes(p), length: Int(p.length))
            pool.release(p)
        }
        rx.removeAll(keepingCapacity: true)
        flush()
        return n
    }

    func handle(_ frame: UnsafeMutableRawPointer, length: Int) {
        switch Dissection.dissect(frame, length: length, verifyChecksums: false) {
        case .arp(let a) where a.operation == .request && a.targetIP == address:
            tx.append(contentsOf: packet(arpFrame(request: false, senderIP: address, senderMAC: mac, target: a.senderIP,
                                                  targetMAC: a.senderMAC, to: a.senderMAC)).map { [$0] } ?? [])
        case .tcp(_, let dst, let sport, let dport, let flags, let seq, let ack, _, _, let n) where dst == address:
            guard var c = connections[dport] else { return }
            if flags.contains(.rst) {
                connections[dport] = nil
                return
            }
            if flags == [.syn, .ack] && !c.established && ack == c.ours &+ 1 {
                c.ours &+= 1
                c.theirs = seq &+ 1
                c.established = true
                connections[dport] = c
                if c.kind == .greedy {
                    // Ask for a large response, then read none of it.
                    let request = Array("GET /bytes/100000000 HTTP/1.1\r\n\r\n".utf8)
                    if let p = packet(tcpFrame(from: address, sourcePort: dport, to: sport, sequence: c.ours,
                                               acknowledgment: c.theirs, flags: [.ack, .psh],
                                               window: c.closedWindow ? 0 : 65_535, payload: request)) { tx.append(p) }
                    connections[dport]?.ours &+= UInt32(request.count)
                } else {
                    if let p = packet(tcpFrame(from: address, sourcePort: dport, to: sport, sequence: c.ours,
                                               acknowledgment: c.theirs, flags: .ack)) { tx.append(p) }
                }
            } else if c.kind == .greedy && c.closedWindow && n == 0 && c.established {
                // A persist probe: the window stays shut.
                if let p = packet(tcpFrame(from: address, sourcePort: dport, to: sport, sequence: c.ours,
                                           acknowledgment: c.theirs, flags: .ack, window: 0)) { tx.append(p) }
            }
        default:
            break
        }
    }

    // MARK: Frames

    func packet(_ bytes: [UInt8]) -> Packet? {
        bytes.withUnsafeBytes { pool.copy(from: $0.baseAddress!, length: $0.count) }
    }

    func tcpFrame(from source: IPv4Address, sourcePort: UInt16, to port: UInt16, sequence: UInt32, acknowledgment: UInt32,
                  flags: TCPFlags, window: UInt16 = 65_535, options: TCPOptions = .none, payload: [UInt8] = []) -> [UInt8] {
        let header = TCPSegment.minimumHeaderLength + options.encodedLength
        var f = [UInt8](repeating: 0, count: 34 + header + payload.count)
        f.withUnsafeMutableBytes { b in
            let p = b.baseAddress!
            EthernetFrame.emit(into: p, destination: serverMAC, source: mac, etherType: EtherType.ipv4)
            if !payload.isEmpty { payload.withUnsafeBytes { (p + 34 + header).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            _ = TCPSegment.emit(into: p + 34, sourcePort: sourcePort, destinationPort: port, sequenceNumber: sequence,
                                acknowledgmentNumber: acknowledgment, flags: flags, window: window, options: options,
                                payloadLength: payload.count, source: source, destination: server)
            IPv4Packet.emit(into: p + 14, source: source, destination: server, protocol: IPProtocol.tcp,
                            payloadLength: header + payload.count)
        }
        return f
    }

    func udpFrame(to port: UInt16, payload: [UInt8]) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 42 + payload.count)
        f.withUnsafeMutableBytes { b in
            let p = b.baseAddress!
            EthernetFrame.emit(into: p, destination: serverMAC, source: mac, etherType: EtherType.ipv4)
            payload.withUnsafeBytes { (p + 42).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            UDPDatagram.emit(into: p + 34, sourcePort: 5000, destinationPort: port, dataLength: payload.count,
                             source: address, destination: server)
            IPv4Packet.emit(into: p + 14, source: address, destination: server, protocol: IPProtocol.udp,
                            payloadLength: 8 + payload.count)
        }
        return f
    }

    func arpFrame(request: Bool, senderIP: IPv4Address, senderMAC: MACAddress, target: IPv4Address,
                  targetMAC: MACAddress = .zero, to destination: MACAddress) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 42)
        f.withUnsafeMutableBytes { b in
            let p = b.baseAddress!
            EthernetFrame.emit(into: p, destination: destination, source: mac, etherType: EtherType.arp)
            ARPPacket(operation: request ? .request : .reply, senderMAC: senderMAC, senderIP: senderIP,
                      targetMAC: targetMAC, targetIP: target).emit(into: p + 14)
        }
        return f
    }

    func icmpEcho() -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 34 + 8 + 32)
        f.withUnsafeMutableBytes { b in
            let p = b.baseAddress!
            EthernetFrame.emit(into: p, destination: serverMAC, source: mac, etherType: EtherType.ipv4)
            ICMPv4Message.emit(into: p + 34, type: ICMPv4Message.echoRequest, code: 0, rest: 0x0001_0001, dataLength: 32)
            IPv4Packet.emit(into: p + 14, source: address, destination: server, protocol: IPProtocol.icmp, payloadLength: 40)
        }
        return f
    }
}
