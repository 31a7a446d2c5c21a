#if canImport(HereticTransport)
import HereticTransport  // (the fuzzer compiles Wire/ alone, with Address.swift beside it)
#endif
/// What a frame turned out to be, layer by layer: the receive path's parsing without the
/// stack's state, for tracing, debugging tools and fuzzing. Every layer is validated exactly as
/// the stack validates it; nothing points into the frame afterwards.
public enum Dissection: Equatable, Sendable, CustomStringConvertible {
    case arp(ARPPacket)
    case icmp(source: IPv4Address, destination: IPv4Address, type: UInt8, code: UInt8, dataLength: Int)
    case udp(source: IPv4Address, destination: IPv4Address, sourcePort: UInt16, destinationPort: UInt16,
             dataLength: Int)
    case tcp(source: IPv4Address, destination: IPv4Address, sourcePort: UInt16, destinationPort: UInt16,
             flags: TCPFlags, sequence: UInt32, acknowledgment: UInt32, window: UInt16,
             options: TCPOptions, payloadLength: Int)
    /// IPv4 carrying a protocol the stack does not speak, or a fragment (reassembled elsewhere).
    case otherIPv4(source: IPv4Address, destination: IPv4Address, proto: UInt8, payloadLength: Int)
    /// An EtherType the stack ignores (IPv6, VLAN, ...).
    case otherEtherType(UInt16)
    /// Refused, with the reason and the layer that refused it.
    case refused(layer: String, WireError)

    /// Dissects `length` bytes at `frame`.
    public static func dissect(_ frame: UnsafeMutableRawPointer, length: Int,
                               verifyChecksums: Bool = true) -> Dissection {
        var layer = "ethernet"
        do throws(WireError) {
            let eth = try EthernetFrame(frame, length: length)
            switch eth.etherType {
            case EtherType.arp:
                layer = "arp"
                return .arp(try ARPPacket(parsing: eth.payload, length: eth.payloadLength))
            case EtherType.ipv4:
                layer = "ipv4"
                let ip = try IPv4Packet(eth.payload, length: eth.payloadLength, verifyChecksum: verifyChecksums)
                let (s, d) = (ip.source, ip.destination)
                if ip.isFragment {
                    return .otherIPv4(source: s, destination: d, proto: ip.proto, payloadLength: ip.payloadLength)
                }
                switch ip.proto {
                case IPProtocol.tcp:
                    layer = "tcp"
                    let t = try TCPSegment(ip.payload, length: ip.payloadLength, source: s, destination: d,
                                           verifyChecksum: verifyChecksums)
                    return .tcp(source: s, destination: d, sourcePort: t.sourcePort, destinationPort: t.destinationPort,
                                flags: t.flags, sequence: t.sequenceNumber, acknowledgment: t.acknowledgmentNumber,
                                window: t.window, options: try t.options(), payloadLength: t.payloadLength)
                case IPProtocol.udp:
                    layer = "udp"
                    let u = try UDPDatagram(ip.payload, length: ip.payloadLength, source: s, destination: d,
                                            verifyChecksum: verifyChecksums)
                    return .udp(source: s, destination: d, sourcePort: u.sourcePort,
                                destinationPort: u.destinationPort, dataLength: u.dataLength)
                case IPProtocol.icmp:
                    layer = "icmp"
                    let m = try ICMPv4Message(ip.payload, length: ip.payloadLength)
                    return .icmp(source: s, destination: d, type: m.type, code: m.code, dataLength: m.dataLength)
                default:
                    return .otherIPv4(source: s, destination: d, proto: ip.proto, payloadLength: ip.payloadLength)
                }
            default:
                return .otherEtherType(eth.etherType)
            }
        } catch {
            return .refused(layer: layer, error)
        }
    }

    /// Bytes of payload the dissection says the frame carries (0 for ARP and refusals).
    public var payloadLength: Int {
        switch self {
        case .icmp(_, _, _, _, let n), .udp(_, _, _, _, let n), .otherIPv4(_, _, _, let n): return n
        case .tcp(_, _, _, _, _, _, _, _, _, let n): return n
        case .arp, .otherEtherType, .refused: return 0
        }
    }

    /// A tcpdump-like one-liner.
    public var description: String {
        switch self {
        case .arp(let a):
            return a.operation == .request ? "ARP who-has \(a.targetIP) tell \(a.senderIP)"
                                           : "ARP \(a.senderIP) is-at \(a.senderMAC)"
        case .icmp(let s, let d, let type, let code, let n):
            return "IP \(s) > \(d): ICMP type \(type) code \(code), length \(n)"
        case .udp(let s, let d, let sp, let dp, let n):
            return "IP \(s).\(sp) > \(d).\(dp): UDP, length \(n)"
        case .tcp(let s, let d, let sp, let dp, let flags, let seq, let ack, let win, _, let n):
            return "IP \(s).\(sp) > \(d).\(dp): Flags [\(flags)], seq \(seq), ack \(ack), win \(win), length \(n)"
        case .otherIPv4(let s, let d, let proto, let n):
            return "IP \(s) > \(d): protocol \(proto), length \(n)"
        case .otherEtherType(let t):
            return "ethertype 0x" + String(t, radix: 16)
        case .refused(let layer, let why):
            return "refused at \(layer): \(why)"
        }
    }
}
