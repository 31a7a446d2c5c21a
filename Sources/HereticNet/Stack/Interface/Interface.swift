import HereticTransport
import HereticCore
/// How an interface is addressed and bounded.
public struct InterfaceConfiguration: Sendable {
    public var mac: MACAddress
    public var address: IPv4Address
    public var prefixLength: Int
    /// Where packets for other networks go; nil: only the local network is reachable.
    public var gateway: IPv4Address?
    public var arpLifetimeMilliseconds: UInt64 = 60_000
    /// Neighbours the ARP cache holds at most (see `ARPCache` for what happens when full).
    public var arpCacheLimit = 4096
    /// Addresses being resolved at once, and packets each may hold meanwhile.
    public var arpPendingAddresses = 256
    public var arpPendingPerAddress = 16
    public var arpMaxRequests = 3
    /// ICMP errors (port unreachable) sent at most this many a second, in bursts of at
    /// most `icmpErrorBurst` (Linux's icmp_msgs_per_sec and icmp_msgs_burst); beyond that
    /// they are counted in `icmpRateLimited` and not sent.
    public var icmpErrorsPerSecond = 1000
    public var icmpErrorBurst = 50
    /// Frames taken from the device per poll.
    public var receiveBatch = 64
    /// Frames that may wait for room in the device's transmit queue; beyond them, new frames
    /// are dropped and counted (`transmitDrops`), and TCP retransmits.
    public var transmitBacklog = 16_384

    public init(mac: MACAddress, address: IPv4Address, prefixLength: Int = 24, gateway: IPv4Address? = nil) {
        self.mac = mac
        self.address = address
        self.prefixLength = prefixLength
        self.gateway = gateway
    }
}

/// One network interface of the stack: a device, an address, ARP, IPv4, ICMP and UDP.
///
/// Sans-IO: it does nothing until `poll(now:)`, which takes a batch of frames from the device,
/// handles each, and sends what they caused in one batch. Time is a parameter, so the same
/// code runs on a core's loop or in a deterministic simulation. Single-threaded: one core
/// owns it.
public final class Interface {
    public let device: NetworkDevice
    public let pool: PacketPool
    public let configuration: InterfaceConfiguration
    @exclusivity(unchecked) public internal(set) var counters = InterfaceCounters()
    /// The core whose loop polls the interface (set by `InterfacePoller`): calls made between
    /// polls (a message, a task) read its clock, so that a deadline they set is measured from
    /// the time of the call, never from the last poll.
    /// (Unretained: the core outlives the interfaces it polls.)
    public internal(set) unowned(unsafe) var core: Core?
    @exclusivity(unchecked) var arp: ARPCache
    /// Bound UDP handlers by port: a flat table, allocated on the first bind (512 KiB).
    @usableFromInline @exclusivity(unchecked) var udp: [AnyUDPBinding?] = []
    @exclusivity(unchecked) var rx: [Packet] = []
    @exclusivity(unchecked) var tx: [Packet] = []
    /// The time of the current poll, in milliseconds.
    @exclusivity(unchecked) public private(set) var now: UInt64 = 0
    @exclusivity(unchecked) var nextPoolTrim: UInt64 = 0
    let verifyChecksums: Bool
    /// False when the device fills in transmit checksums (or its link needs none).
    @usableFromInline let fillChecksums: Bool
    let subnetMask: UInt32
    /// The ICMP error token bucket: tokens now, and when it was last filled.
    @exclusivity(unchecked) var icmpTokens: Double
    @exclusivity(unchecked) var icmpRefilled: UInt64 = 0
    /// Created on first use: an interface that never speaks TCP carries none of it.
    @usableFromInline var tcpLayer: TCPLayer?
    /// The interface's TCP (created on first use).
    public var tcp: TCPLayer {
        if let t = tcpLayer { return t }
        let t = TCPLayer(interface: self, sendMemory: sendMemory)
        tcpLayer = t
        return t
    }

    /// `sendMemory`: the process-wide cap this interface's TCP send queues are charged to.
    public init(device: NetworkDevice, pool: PacketPool, configuration: InterfaceConfiguration,
                sendMemory: SendMemory = .shared) {
        self.device = device
        self.pool = pool
        self.configuration = configuration
        self.sendMemory = sendMemory
        address = configuration.address
        mac = configuration.mac
        hasGateway = configuration.gateway != nil
        arp = ARPCache(lifetimeMilliseconds: configuration.arpLifetimeMilliseconds, limit: configuration.arpCacheLimit,
                       pendingAddresses: configuration.arpPendingAddresses,
                       pendingPerAddress: configuration.arpPendingPerAddress,
                       maxRequests: configuration.arpMaxRequests)
        icmpTokens = Double(configuration.icmpErrorBurst)
        verifyChecksums = !device.offloads.contains(.receiveChecksumsVerified)
        fillChecksums = !device.offloads.contains(.transmitChecksums)
        subnetMask = configuration.prefixLength == 0 ? 0 : ~UInt32(0) << UInt32(32 - configuration.prefixLength)
        rx.reserveCapacity(configuration.receiveBatch)
        tx.reserveCapacity(configuration.receiveBatch * 2)
    }

    deinit { tcpLayer?.tearDown() }

    /// The configuration's, kept apart for the receive path.
    public let address: IPv4Address
    public let mac: MACAddress
    let hasGateway: Bool
    let sendMemory: SendMemory

    // MARK: Sockets

    /// Binds a UDP handler to `port` (0: a free ephemeral port) and returns the port bound.
    /// Throws when the port is taken.
    @inlinable @discardableResult
    public func bindUDP<H: UDPHandler>(port: UInt16, _ handler: H) throws(NetError) -> UInt16 {
        if udp.isEmpty { udp = Array(repeating: nil, count: 65_536) }
        var p = port
        if p == 0 {
            guard let free = TCPLayer.ephemeralRange.first(where: { udp[Int($0)] == nil }) else {
                throw .device("no free UDP port")
            }
            p = free
        }
        guard udp[Int(p)] == nil else { throw .addressInUse(p) }
        udp[Int(p)] = UDPBinding(handler)
        return p
    }

    public func unbindUDP(port: UInt16) { if !udp.isEmpty { udp[Int(port)] = nil } }

    /// A socket for sending from `port` outside a datagram callback (for example to start a
    /// conversation). Use it on the interface's core.
    public func udpSocket(port: UInt16) -> StackUDPSocket { StackUDPSocket(interface: self, localPort: port) }

    /// Accepts TCP connections on `port` (0: a free ephemeral port), each with a handler made
    /// by `makeHandler`; returns the port. At most `backlog` connections may be half-open
    /// (handshake not finished) at once; further SYNs get SYN cookies (or are dropped and
    /// counted) until some complete or time out.
    @inlinable @discardableResult
    public func listenTCP<H: TCPHandler>(port: UInt16, backlog: Int = 4096, keepalive: TCPKeepalive? = nil,
                                         _ makeHandler: @escaping () -> H) throws(NetError) -> UInt16 {
        try tcp.listen(port: port, backlog: backlog, keepalive: keepalive, makeHandler: makeHandler)
    }

    /// Stops accepting on `port`; connections already accepted go on.
    public func stopListening(port: UInt16) { tcpLayer?.stopListening(port: port) }

    /// Opens a TCP connection; `handler` hears of it. Returns its handle (`localPort`: the
    /// port chosen; 0 when none was free, and the handler hears `closed(.refused)`).
    @inlinable @discardableResult
    public func connectTCP<H: TCPHandler>(to remote: TCPEndpoint, timeoutMilliseconds: Int? = nil, _ handler: H) -> TCPConnectionHandle {
        let (port, ref) = tcp.connect(to: remote, timeoutMilliseconds: timeoutMilliseconds, handler: handler)
        return TCPConnectionHandle(engine: tcp, id: ref, remote: remote, localPort: port)
    }

    /// Live TCP connections (any state but closed).
    public var connectionCount: Int { tcpLayer?.connectionCount ?? 0 }
    public var tcpConnectionCount: Int { connectionCount }

    /// The MAC address ARP has for `address`, if resolved and not expired.
    public func neighbor(_ address: IPv4Address) -> MACAddress? { arp.lookup(address, now: now) }

    /// Sends a datagram from `port` (bound or not) to `peer`.
    @discardableResult
    public func sendUDP(_ data: UnsafeRawBufferPointer, from port: UInt16, to peer: UDPEndpoint) -> Bool {
        let total = UDPDatagram.headerLength + data.count
        guard IPv4Packet.minimumHeaderLength + total <= device.mtu else { return false }
        guard var p = pool.allocate(length: total) else { counters.noBuffers += 1; return false }
        let base = pool.bytes(p)
        if data.count > 0 { (base + UDPDatagram.headerLength).copyMemory(from: data.baseAddress!, byteCount: data.count) }
        UDPDatagram.emit(into: base, sourcePort: port, destinationPort: peer.port, dataLength: data.count,
                         source: address, destination: peer.address, checksum: fillChecksums)
        p.length = UInt16(total)
        sendIPv4(p, to: peer.address, protocol: IPProtocol.udp)
        return true
    }

    // MARK: Polling

    /// Receives and handles up to one batch of frames, retries ARP, and sends everything that
    /// resulted. Returns the number of frames handled plus sent (0: nothing to do).
    @discardableResult
    public func poll(now: UInt64) -> Int {
        self.now = now
        tcpLayer?.tick(now: now)
        if !rx.isEmpty { rx.removeAll(keepingCapacity: true) }
        let n = device.receive(into: &rx, limit: configuration.receiveBatch, pool: pool)
        if n == 0 && tx.isEmpty && arp.waiting.isEmpty {  // the common idle turn
            // Once a second at most, an idle pool that was busy gives its pages back.
            if now >= nextPoolTrim {
                nextPoolTrim = now + 1000
                if pool.inUse * 16 < pool.capacity && pool.touched - pool.inUse > 4096 { pool.trim() }
            }
            return 0
        }
        counters.framesReceived += n
        for frame in rx { handleFrame(frame) }
        retryARP()
        let sent = tx.count
        flush()
        return n + sent
    }

    /// Offers the frames of this turn to the device; what its full queue cannot take now
    /// waits in `tx` for the next turn.
    func flush() {
        guard !tx.isEmpty else { return }
        let offered = tx.count
        device.transmit(&tx, pool: pool)
        counters.framesSent += offered - tx.count
    }

    // MARK: Receive path

    func handleFrame(_ frame: Packet) {
        let base = pool.bytes(frame)
        let eth: EthernetFrame
        do { eth = try EthernetFrame(base, length: Int(frame.length)) } catch {
            counters.ethernetErrors += 1
            return pool.release(frame)
        }
        let dst = eth.destination
        guard dst == mac || dst.isBroadcast else { counters.notForUs += 1; return pool.release(frame) }
        switch eth.etherType {
        case EtherType.ipv4: handleIPv4(frame, eth)
        case EtherType.arp: handleARP(frame, eth)
        default:
            counters.unknownEtherType += 1
            pool.release(frame)
        }
    }

    func handleARP(_ frame: Packet, _ eth: EthernetFrame) {
        defer { pool.release(frame) }
        let a: ARPPacket
        do { a = try ARPPacket(parsing: eth.payload, length: eth.payloadLength) } catch {
            counters.arpErrors += 1
            return
        }
        counters.arpReceived += 1
        let forUs = a.targetIP == address, sender = a.senderIP
        if sender == address {
            counters.arpConflicts += 1  // someone else claims our address: never learned
        } else if !sender.isUnspecified, !a.senderMAC.isMulticast, !isMartian(sender), onLink(sender) {
            // RFC 826's merge, bounded and guarded against poisoning (see `ARPCache`).
            let (result, released) = arp.learn(sender, a.senderMAC, answersUs: arp.waiting[sender] != nil,
                                               asksUs: forUs && a.operation == .request, now: now)
            switch result {
            case .conflict: counters.arpConflicts += 1
            case .full: counters.arpCacheFull += 1
            case .added, .refreshed, .ignored: break
            }
            for p in released { transmitResolved(p, a.senderMAC) }
        }
        if forUs && a.operation == .request && !a.senderMAC.isMulticast {
            guard let reply = pool.allocate(length: 42) else { counters.noBuffers += 1; return }
            let b = pool.bytes(reply)
            EthernetFrame.emit(into: b, destination: a.senderMAC, source: mac, etherType: EtherType.arp)
            ARPPacket(operation: .reply, senderMAC: mac, senderIP: address,
                      targetMAC: a.senderMAC, targetIP: a.senderIP).emit(into: b + 14)
            tx.append(reply)
            counters.arpRepliesSent += 1
        }
    }

    /// Whether `a` may not be the source of a packet from the wire (RFC 1812 5.3.7, as
    /// Linux's martian check): this network (0/8), loopback (127/8), multicast, the
    /// reserved class E and the broadcast address, our own address, and our subnet's
    /// broadcast address; and, with no gateway, any address off our subnet (there is no way
    /// back to it: Linux's reverse-path filter drops those too).
    @inline(__always) func isMartian(_ a: IPv4Address) -> Bool {
        let r = a.raw
        if r & subnetMask == address.raw & subnetMask {
            // On our subnet (the usual case): only our own address and the subnet's broadcast
            // (where the subnet has one: /31 and /32 do not) are martian.
            return r == address.raw || (subnetMask < 0xFFFF_FFFE && r | subnetMask == 0xFFFF_FFFF)
        }
        let top = r >> 24
        return !hasGateway || top == 0 || top == 127 || r >> 28 >= 0xE
    }

    /// Whether `a` is on this interface's subnet.
    @inline(__always) func onLink(_ a: IPv4Address) -> Bool { a.raw & subnetMask == address.raw & subnetMask }

    func handleIPv4(_ frame: Packet, _ eth: EthernetFrame) {
        let ip: IPv4Packet
        do { ip = try IPv4Packet(eth.payload, length: eth.payloadLength, verifyChecksum: verifyChecksums) } catch {
            count(error, layer: \.ipv4Errors)
            return pool.release(frame)
        }
        let dst = ip.destination
        guard dst == address || dst.isBroadcast else { counters.ipNotForUs += 1; return pool.release(frame) }
        guard !isMartian(ip.source) else { counters.martianSources += 1; return pool.release(frame) }
        if ip.isFragment { counters.fragmentsDropped += 1; return pool.release(frame) }
        switch ip.proto {
        case IPProtocol.udp: handleUDP(frame, ip)
        case IPProtocol.icmp: handleICMP(frame, ip)
        case IPProtocol.tcp: handleTCP(frame, ip)
        default:
            counters.unknownProtocol += 1
            pool.release(frame)
        }
    }

    func handleICMP(_ frame: Packet, _ ip: IPv4Packet) {
        let m: ICMPv4Message
        do { m = try ICMPv4Message(ip.payload, length: ip.payloadLength) } catch {
            count(error, layer: \.icmpErrors)
            return pool.release(frame)
        }
        if m.type == ICMPv4Message.destinationUnreachable, ip.destination == address {
            // About a segment of ours: its IPv4 header and at least 8 bytes follow. Parsed
            // without its checksum (routers may have changed the quoted header's TTL).
            defer { pool.release(frame) }
            counters.icmpErrorsReceived += 1
            guard m.dataLength >= IPv4Packet.minimumHeaderLength + 8,
                  let quoted = try? IPv4Packet(quoting: m.data, length: m.dataLength) else {
                tcpLayer?.icmpErrorsIgnored += 1  // (nothing usable quoted)
                return
            }
            tcpLayer?.destinationUnreachable(code: m.code, nextHopMTU: Int(m.nextHopMTU), quoted: quoted,
                                             quotedLength: m.dataLength)
            return
        }
        guard m.type == ICMPv4Message.echoRequest, m.code == 0, ip.destination == address else {
            counters.icmpOther += 1
            return pool.release(frame)  // replies and other messages: nothing waits for them
        }
        // Answer in place: same buffer, addresses swapped, type 0, fresh checksums.
        let source = ip.source
        let rest = UInt32(m.echoIdentifier) << 16 | UInt32(m.echoSequence)
        let dataLength = m.dataLength
        let icmpBase = ip.payload
        ICMPv4Message.emit(into: icmpBase, type: ICMPv4Message.echoReply, code: 0, rest: rest, dataLength: dataLength)
        var reply = frame
        let ipOffset = UInt16(ip.base - pool.bytes(frame))
        reply.offset += ipOffset
        // Options in the request are not echoed: the reply gets a plain 20-byte header.
        let ipLength = IPv4Packet.minimumHeaderLength + ICMPv4Message.headerLength + dataLength
        if ip.headerLength != IPv4Packet.minimumHeaderLength {
            let q = pool.bytes(reply)
            (q + IPv4Packet.minimumHeaderLength).copyMemory(from: icmpBase, byteCount: ipLength - 20)
        }
        reply.length = UInt16(ipLength)
        counters.icmpEchoReplies += 1
        let q = pool.bytes(reply)
        IPv4Packet.emit(into: q, source: address, destination: source, protocol: IPProtocol.icmp,
                        payloadLength: ipLength - 20)
        sendIPv4Framed(reply, to: source)
    }

    func handleUDP(_ frame: Packet, _ ip: IPv4Packet) {
        defer { pool.release(frame) }
        let u: UDPDatagram
        do {
            u = try UDPDatagram(ip.payload, length: ip.payloadLength, source: ip.source,
                                destination: ip.destination, verifyChecksum: verifyChecksums)
        } catch {
            count(error, layer: \.udpErrors)
            return
        }
        guard u.destinationPort != 0 else { counters.portZero += 1; return }
        guard !udp.isEmpty, let binding = udp[Int(u.destinationPort)] else {
            counters.udpNoListener += 1
            if ip.destination == address && u.sourcePort != 0 { sendPortUnreachable(ip) }
            return
        }
        counters.udpDelivered += 1
        let socket = StackUDPSocket(interface: self, localPort: u.destinationPort)
        binding.deliver(UnsafeRawBufferPointer(start: u.data, count: u.dataLength),
                        from: UDPEndpoint(ip.source, u.sourcePort), socket)
    }

    func handleTCP(_ frame: Packet, _ ip: IPv4Packet) {
        defer { pool.release(frame) }
        let t: TCPSegment
        do {
            t = try TCPSegment(ip.payload, length: ip.payloadLength, source: ip.source,
                               destination: ip.destination, verifyChecksum: verifyChecksums)
        } catch {
            count(error, layer: \.tcpErrors)
            return
        }
        guard ip.destination == address else { counters.ipNotForUs += 1; return }
        guard t.sourcePort != 0, t.destinationPort != 0 else { counters.portZero += 1; return }
        counters.tcpSegments += 1
        tcp.segmentArrived(t, source: ip.source)
    }

    /// RFC 1122: destination unreachable quoting the IP header and 8 bytes of the datagram.
    func sendPortUnreachable(_ ip: IPv4Packet) {
        guard mayReportError() else { counters.icmpRateLimited += 1; return }
        let quoted = min(ip.totalLength, ip.headerLength + 8)
        let total = ICMPv4Message.headerLength + quoted
        guard var p = pool.allocate(length: total) else { counters.noBuffers += 1; return }
        let b = pool.bytes(p)
        (b + ICMPv4Message.headerLength).copyMemory(from: ip.base, byteCount: quoted)
        ICMPv4Message.emit(into: b, type: ICMPv4Message.destinationUnreachable, code: ICMPv4Message.portUnreachable,
                           rest: 0, dataLength: quoted)
        p.length = UInt16(total)
        counters.icmpUnreachableSent += 1
        sendIPv4(p, to: ip.source, protocol: IPProtocol.icmp)
    }

    /// Takes a token from the ICMP error bucket (refilled at `icmpErrorsPerSecond`, holding
    /// at most `icmpErrorBurst`); false when it is empty.
    func mayReportError() -> Bool {
        let c = configuration
        if now > icmpRefilled {
            icmpTokens = min(Double(c.icmpErrorBurst), icmpTokens + Double(now - icmpRefilled) * Double(c.icmpErrorsPerSecond) / 1000)
            icmpRefilled = now
        }
        guard icmpTokens >= 1 else { return false }
        icmpTokens -= 1
        return true
    }

    func count(_ error: WireError, layer: WritableKeyPath<InterfaceCounters, Int>) {
        if error == .badChecksum { counters.badChecksums += 1 } else { counters[keyPath: layer] += 1 }
    }

    // MARK: Transmit path

    /// Prepends an IPv4 header to a packet holding the IP payload, then frames and sends it.
    func sendIPv4(_ packet: Packet, to destination: IPv4Address, protocol proto: UInt8) {
        var p = packet
        precondition(p.offset >= 34, "Heretic: packet without headroom for IPv4 and Ethernet")
        p.offset -= 20
        let payloadLength = Int(p.length)
        p.length += 20
        IPv4Packet.emit(into: pool.bytes(p), source: address, destination: destination, protocol: proto,
                        payloadLength: payloadLength, checksum: fillChecksums)
        sendIPv4Framed(p, to: destination)
    }

    /// Resolves the next hop of a packet that starts with its IPv4 header and sends it, or
    /// parks it until ARP answers.
    func sendIPv4Framed(_ packet: Packet, to destination: IPv4Address) {
        let hop = nextHop(destination)
        if destination.isBroadcast {
            return transmitResolved(packet, .broadcast)
        }
        if let m = arp.lookup(hop, now: now) { return transmitResolved(packet, m) }
        if arp.waiting[hop] == nil && arp.waiting.count >= arp.pendingAddresses {
            // Too many addresses being resolved at once (a flood of spoofed neighbours?).
            counters.arpPendingDropped += 1
            return pool.release(packet)
        }
        var w = arp.waiting[hop] ?? ARPCache.Waiting(packets: [], requestsSent: 0, nextRequest: now)
        if w.packets.count >= arp.pendingPerAddress {
            counters.arpPendingDropped += 1
            pool.release(packet)
        } else {
            w.packets.append(packet)
        }
        arp.waiting[hop] = w
        retryARP()
    }

    func nextHop(_ destination: IPv4Address) -> IPv4Address {
        if destination.raw & subnetMask == address.raw & subnetMask { return destination }
        return configuration.gateway ?? destination
    }

    /// Prepends the Ethernet header to a packet that starts with its IPv4 header.
    func transmitResolved(_ packet: Packet, _ destinationMAC: MACAddress) {
        var p = packet
        p.offset -= 14
        p.length += 14
        EthernetFrame.emit(into: pool.bytes(p), destination: destinationMAC, source: mac, etherType: EtherType.ipv4)
        guard tx.count < configuration.transmitBacklog else {
            counters.transmitDrops += 1
            return pool.release(p)
        }
        tx.append(p)
    }

    /// Sends due ARP requests; gives up on addresses that never answered.
    func retryARP() {
        guard !arp.waiting.isEmpty else { return }
        for (ip, var w) in arp.waiting where w.nextRequest <= now {
            if w.requestsSent >= arp.maxRequests {
                counters.arpPendingDropped += w.packets.count
                for p in w.packets { pool.release(p) }
                arp.waiting[ip] = nil
                continue
            }
            guard let req = pool.allocate(length: 42) else { counters.noBuffers += 1; continue }
            let b = pool.bytes(req)
            EthernetFrame.emit(into: b, destination: .broadcast, source: mac, etherType: EtherType.arp)
            ARPPacket(operation: .request, senderMAC: mac, senderIP: address,
                      targetMAC: .zero, targetIP: ip).emit(into: b + 14)
            tx.append(req)
            counters.arpRequestsSent += 1
            w.requestsSent += 1
            w.nextRequest = now + arp.retryInterval
            arp.waiting[ip] = w
        }
    }
}

