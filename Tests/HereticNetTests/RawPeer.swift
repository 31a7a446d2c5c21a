import Testing
@testable import HereticNet

/// A scripted peer of the stack under test: it writes frames byte by byte and reads what the
/// stack answers, with no TCP of its own, so a test can send exactly what a hostile or broken
/// peer would (any source, any option, any sequence number). One interface (`stack`) sits on
/// the other end of a memory link; only it is polled, on a clock the test moves.
final class RawPeer: @unchecked Sendable {
    let link: MemoryLink
    let pool: PacketPool
    let stack: Interface
    let mac = MACAddress(0x02, 0, 0, 0, 0, 0x0A)
    let address = IPv4Address(10, 77, 0, 1)
    var stackAddress: IPv4Address { stack.address }
    var now: UInt64
    /// Everything the stack sent that a test has not taken yet, dissected, with its bytes.
    var inbox: [(Dissection, [UInt8])] = []

    init(now: UInt64 = 1, mtu: Int = 1500, poolCapacity: Int = 4096, sendMemory: SendMemory = .shared,
         configure: (inout InterfaceConfiguration) -> Void = { _ in }) {
        link = MemoryLink(mtu: mtu)
        pool = PacketPool(capacity: poolCapacity)
        var c = InterfaceConfiguration(mac: macB, address: hostB)
        configure(&c)
        stack = Interface(device: link.b, pool: pool, configuration: c, sendMemory: sendMemory)
        self.now = now
        // Introduce ourselves (a request for the stack's address teaches it our MAC).
        inject(arp(.request, senderIP: address, targetIP: hostB))
        step()
        inbox.removeAll()
    }

    // MARK: Frames

    /// Hands a frame to the stack (it sees it on its next poll).
    func inject(_ frame: [UInt8]) {
        link.b.inbound.append(frame)
    }

    func arp(_ op: ARPPacket.Operation, senderIP: IPv4Address, senderMAC: MACAddress? = nil, targetIP: IPv4Address,
             targetMAC: MACAddress = .zero, to destination: MACAddress = .broadcast) -> [UInt8] {
        var f = [UInt8](repeating: 0, count: 42)
        f.withUnsafeMutableBytes { b in
            let p = b.baseAddress!
            EthernetFrame.emit(into: p, destination: destination, source: senderMAC ?? mac, etherType: EtherType.arp)
            ARPPacket(operation: op, senderMAC: senderMAC ?? mac, senderIP: senderIP, targetMAC: targetMAC,
                      targetIP: targetIP).emit(into: p + 14)
        }
        return f
    }

    /// A TCP segment from `source` (default: this peer) to the stack.
    func tcp(from source: IPv4Address? = nil, sourcePort: UInt16 = 40_000, to port: UInt16, sequence: UInt32,
             acknowledgment: UInt32 = 0, flags: TCPFlags, window: UInt16 = 65_535, options: TCPOptions = .none,
             payload: [UInt8] = [], destination: IPv4Address? = nil) -> [UInt8] {
        let tcpLength = TCPSegment.minimumHeaderLength + options.encodedLength + payload.count
        var f = [UInt8](repeating: 0, count: 34 + tcpLength)
        let src = source ?? address, dst = destination ?? stackAddress
        f.withUnsafeMutableBytes { b in
            let p = b.baseAddress!
            EthernetFrame.emit(into: p, destination: stack.mac, source: mac, etherType: EtherType.ipv4)
            let header = TCPSegment.minimumHeaderLength + options.encodedLength
            if !payload.isEmpty { payload.withUnsafeBytes { (p + 34 + header).copyMemory(from: $0.baseAddress!, byteCount: payload.count) } }
            _ = TCPSegment.emit(into: p + 34, sourcePort: sourcePort, destinationPort: port, sequenceNumber: sequence,
                                acknowledgmentNumber: acknowledgment, flags: flags, window: window, options: options,
                                payloadLength: payload.count, source: src, destination: dst)
            IPv4Packet.emit(into: p + 14, source: src, destination: dst, protocol: IPProtocol.tcp, payloadLength: tcpLength)
        }
        return f
    }

    /// An ICMP message of `type`/`code` quoting `quoted` (an IPv4 header and what follows).
    func icmp(type: UInt8, code: UInt8, rest: UInt32, quoting quoted: [UInt8]) -> [UInt8] {
        let length = ICMPv4Message.headerLength + quoted.count
        var f = [UInt8](repeating: 0, count: 34 + length)
        f.withUnsafeMutableBytes { b in
            let p = b.baseAddress!
            EthernetFrame.emit(into: p, destination: stack.mac, source: mac, etherType: EtherType.ipv4)
            quoted.withUnsafeBytes { (p + 42).copyMemory(from: $0.baseAddress!, byteCount: quoted.count) }
            ICMPv4Message.emit(into: p + 34, type: type, code: code, rest: rest, dataLength: quoted.count)
            IPv4Packet.emit(into: p + 14, source: address, destination: stackAddress, protocol: IPProtocol.icmp,
                            payloadLength: length)
        }
        return f
    }

    // MARK: Time and answers

    /// Polls the stack `milliseconds` times, a millisecond apart, collecting what it sends.
    func step(_ milliseconds: Int = 1) {
        for _ in 0..<max(1, milliseconds) {
            stack.poll(now: now)
            collect()
            now += 1
        }
    }

    /// Takes what the stack sent; answers its ARP requests for our address at once, as a
    /// live neighbour would (those are not kept in the inbox).
    func collect() {
        var got: [Packet] = []
        _ = link.a.receive(into: &got, limit: .max, pool: pool)
        for p in got {
            let bytes = pool.contents(p)
            pool.release(p)
            let d = withBytes(bytes) { Dissection.dissect($0, length: $1) }
            if answersARP, case .arp(let a) = d, a.operation == .request, a.targetIP == address {
                inject(arp(.reply, senderIP: address, targetIP: a.senderIP, targetMAC: a.senderMAC, to: a.senderMAC))
                continue
            }
            inbox.append((d, bytes))
        }
    }

    /// Whether `collect` answers the stack's ARP requests (off: a neighbour that vanished).
    var answersARP = true

    /// Takes what the stack sent so far.
    func take() -> [Dissection] {
        defer { inbox.removeAll() }
        return inbox.map(\.0)
    }

    /// The TCP segments the stack sent so far (taken), as parsed fields.
    func takeSegments() -> [Seg] {
        take().compactMap { d in
            guard case .tcp(_, let dst, let sp, let dp, let flags, let seq, let ack, let win, let options, let n) = d else { return nil }
            return Seg(destination: dst, sourcePort: sp, destinationPort: dp, flags: flags, sequence: seq,
                       acknowledgment: ack, window: win, options: options, payloadLength: n)
        }
    }

    struct Seg: Equatable {
        var destination: IPv4Address
        var sourcePort: UInt16, destinationPort: UInt16
        var flags: TCPFlags
        var sequence: UInt32, acknowledgment: UInt32
        var window: UInt16
        var options: TCPOptions
        var payloadLength: Int
    }

    /// Opens a connection to `port` as a client would: SYN (with `options`), the stack's
    /// SYN-ACK, our ACK. Returns our next sequence number and the stack's.
    func handshake(port: UInt16, sourcePort: UInt16 = 40_000, isn: UInt32 = 1000,
                   options: TCPOptions = TCPOptions(maximumSegmentSize: 1460)) throws -> (ours: UInt32, theirs: UInt32) {
        inject(tcp(sourcePort: sourcePort, to: port, sequence: isn, flags: .syn, options: options))
        step()
        let synAck = try #require(takeSegments().first { $0.flags == [.syn, .ack] && $0.destinationPort == sourcePort },
                                  "the stack answered the SYN")
        #expect(synAck.acknowledgment == isn &+ 1)
        let theirs = synAck.sequence &+ 1
        var ackOptions = TCPOptions.none
        if options.timestamp != nil, let ts = synAck.options.timestamp {
            ackOptions.timestamp = TCPTimestamp(value: options.timestamp!.value &+ 1, echo: ts.value)
        }
        inject(tcp(sourcePort: sourcePort, to: port, sequence: isn &+ 1, acknowledgment: theirs, flags: .ack,
                   options: ackOptions))
        step()
        return (isn &+ 1, theirs)
    }
}
