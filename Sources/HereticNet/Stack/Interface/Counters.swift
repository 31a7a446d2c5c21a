import HereticTransport
/// What an interface did with every frame: each drop has a reason and a count.
public struct InterfaceCounters: Equatable, Sendable {
    public var framesReceived = 0
    public var framesSent = 0
    /// Refused by a parser (truncated, malformed, bad checksum), per layer.
    public var ethernetErrors = 0
    public var arpErrors = 0
    public var ipv4Errors = 0
    public var icmpErrors = 0
    public var udpErrors = 0
    public var tcpErrors = 0
    public var badChecksums = 0
    /// Ethernet frames for another MAC address, or an EtherType not spoken here.
    public var notForUs = 0
    public var unknownEtherType = 0
    /// IPv4 for another address, or a protocol not spoken here.
    public var ipNotForUs = 0
    public var unknownProtocol = 0
    /// IPv4 fragments: this stack does not reassemble, it drops and counts them.
    public var fragmentsDropped = 0
    public var arpRequestsSent = 0
    public var arpRepliesSent = 0
    /// Packets waiting for an ARP answer that were dropped: queue full or no answer.
    public var arpPendingDropped = 0
    /// ARP that would have changed a known neighbour's MAC without our asking (poisoning?),
    /// or claimed our own address: ignored.
    public var arpConflicts = 0
    /// Unsolicited neighbours not learned because the cache was full of live entries.
    public var arpCacheFull = 0
    /// Packets from a source address no peer may have (0/8, 127/8, multicast, class E,
    /// broadcast, ours, our subnet's broadcast), and segments to or from port 0.
    public var martianSources = 0
    public var portZero = 0
    /// ICMP destination-unreachable messages received (handed to TCP), and ICMP errors not
    /// sent because of the rate limit.
    public var icmpErrorsReceived = 0
    public var icmpRateLimited = 0
    public var icmpEchoReplies = 0
    /// Frames handled and not counted elsewhere: ARP packets, ICMP messages nothing waits
    /// for (replies, echo requests to broadcast), and TCP segments handed to TCP (which counts
    /// those whose options do not parse in `TCPLayer.malformedOptions`).
    public var arpReceived = 0
    public var icmpOther = 0
    public var tcpSegments = 0
    public var udpDelivered = 0
    public var udpNoListener = 0
    public var icmpUnreachableSent = 0
    /// No packet buffer was free.
    public var noBuffers = 0
    /// Frames dropped because the device's transmit queue stayed full for a whole backlog.
    public var transmitDrops = 0

    public init() {}

    /// Frames with a known fate: each frame received ends in exactly one of these counters,
    /// so this equals `framesReceived` (the stack lost track of none).
    public var framesAccounted: Int {
        ethernetErrors + notForUs + unknownEtherType + arpErrors + arpReceived
            + ipv4Errors + badChecksums + ipNotForUs + martianSources + fragmentsDropped + unknownProtocol
            + icmpErrors + icmpErrorsReceived + icmpEchoReplies + icmpOther
            + udpErrors + portZero + udpNoListener + udpDelivered + tcpErrors + tcpSegments
    }

    /// Non-zero counters as "name value" pairs, for `heretic stats` and benchmark output.
    public var nonZero: [(String, Int)] {
        Mirror(reflecting: self).children.compactMap { c in
            guard let name = c.label, let v = c.value as? Int, v != 0 else { return nil }
            return (name, v)
        }
    }
}
