/// Neighbours on the link: IPv4 to MAC, with expiry, and the packets waiting for an answer.
///
/// Bounded in every direction: entries expire, each unresolved address holds at most
/// `pendingPerAddress` packets, requests are retried at most `maxRequests` times a second
/// apart, and then the waiting packets are dropped and counted.
struct ARPCache {
    struct Entry {
        var mac: MACAddress
        var expires: UInt64
    }
    struct Waiting {
        var packets: [Packet]
        var requestsSent: Int
        var nextRequest: UInt64
    }

    var entries: [IPv4Address: Entry] = [:]
    var waiting: [IPv4Address: Waiting] = [:]
    /// The last address looked up: most traffic goes to one neighbour.
    var lastIP = IPv4Address.any
    var lastMAC = MACAddress.zero
    var lastExpires: UInt64 = 0

    let lifetime: UInt64
    let pendingPerAddress: Int
    let maxRequests: Int
    let retryInterval: UInt64 = 1000

    init(lifetimeMilliseconds: UInt64, pendingPerAddress: Int, maxRequests: Int) {
        lifetime = lifetimeMilliseconds
        self.pendingPerAddress = pendingPerAddress
        self.maxRequests = maxRequests
    }

    @inline(__always)
    mutating func lookup(_ ip: IPv4Address, now: UInt64) -> MACAddress? {
        if ip == lastIP && now < lastExpires { return lastMAC }
        guard let e = entries[ip] else { return nil }
        if now >= e.expires {
            entries[ip] = nil
            return nil
        }
        lastIP = ip
        lastMAC = e.mac
        lastExpires = e.expires
        return e.mac
    }

    /// Learns or refreshes a neighbour; returns packets that were waiting for it.
    mutating func learn(_ ip: IPv4Address, _ mac: MACAddress, now: UInt64) -> [Packet] {
        entries[ip] = Entry(mac: mac, expires: now + lifetime)
        if ip == lastIP { lastMAC = mac; lastExpires = now + lifetime }
        return waiting.removeValue(forKey: ip)?.packets ?? []
    }
}
