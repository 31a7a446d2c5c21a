import HereticTransport
/// Neighbours on the link: IPv4 to MAC, with expiry, and the packets waiting for an answer.
///
/// Bounded in every direction, each bound counted when it bites:
/// - at most `limit` entries. Once full, expired entries are swept (at most once a second);
///   an unsolicited neighbour (one that asked for us) is not added while it stays full, and
///   an answer to our own request displaces an unsolicited entry;
/// - at most `pendingAddresses` addresses being resolved at once, each holding at most
///   `pendingPerAddress` packets; requests are retried at most `maxRequests` times a second
///   apart, and then the waiting packets are dropped.
///
/// Against poisoning: a neighbour's MAC is changed only by an answer to a request of ours,
/// never by an unsolicited reply, request or gratuitous ARP (those only refresh an entry
/// that says the same). A neighbour that really moves is learned again when its entry
/// expires. (Linux, by comparison, lets unsolicited ARP override an entry older than its
/// `locktime`.)
struct ARPCache {
    struct Entry {
        var mac: MACAddress
        var expires: UInt64
        /// Learned from an answer to our request (else from the neighbour asking for us).
        var solicited: Bool
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
    var nextSweep: UInt64 = 0

    let lifetime: UInt64
    let limit: Int
    let pendingAddresses: Int
    let pendingPerAddress: Int
    let maxRequests: Int
    let retryInterval: UInt64 = 1000

    init(lifetimeMilliseconds: UInt64, limit: Int, pendingAddresses: Int, pendingPerAddress: Int, maxRequests: Int) {
        lifetime = lifetimeMilliseconds
        self.limit = max(1, limit)
        self.pendingAddresses = max(1, pendingAddresses)
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

    /// What an ARP packet from `ip` at `mac` did to the cache.
    enum Learned { case added, refreshed, conflict, full, ignored }

    /// Learns from an ARP packet (RFC 826's merge, with the rules above). `answersUs`: it
    /// answers a request of ours (we are resolving `ip`); `asksUs`: it is a request for our
    /// address. Returns what happened and the packets that were waiting for `ip`.
    mutating func learn(_ ip: IPv4Address, _ mac: MACAddress, answersUs: Bool, asksUs: Bool,
                        now: UInt64) -> (Learned, [Packet]) {
        if let e = entries[ip], now < e.expires {
            guard e.mac == mac || answersUs else { return (.conflict, []) }
            store(ip, Entry(mac: mac, expires: now + lifetime, solicited: e.solicited || answersUs))
            return (.refreshed, answersUs ? (waiting.removeValue(forKey: ip)?.packets ?? []) : [])
        }
        guard answersUs || asksUs else { return (.ignored, []) }
        if entries.count >= limit && !makeRoom(now: now, forSolicited: answersUs) {
            // Full of live entries: an unsolicited neighbour is not added. (Its request is
            // still answered, to the MAC it came from.)
            return (.full, [])
        }
        store(ip, Entry(mac: mac, expires: now + lifetime, solicited: answersUs))
        return (.added, answersUs ? (waiting.removeValue(forKey: ip)?.packets ?? []) : [])
    }

    mutating func store(_ ip: IPv4Address, _ e: Entry) {
        entries[ip] = e
        if ip == lastIP { lastMAC = e.mac; lastExpires = e.expires }
    }

    /// Frees a place in a full cache: sweeps expired entries (at most once a second), then,
    /// for an answer to our own request, lets an unsolicited entry go. False if none could go.
    mutating func makeRoom(now: UInt64, forSolicited: Bool) -> Bool {
        if now >= nextSweep {
            nextSweep = now + 1000
            entries = entries.filter { now < $0.value.expires }
            if entries.count < limit { return true }
        }
        guard forSolicited, let victim = entries.first(where: { !$0.value.solicited })?.key else { return false }
        entries[victim] = nil
        if victim == lastIP { lastExpires = 0 }
        return true
    }
}
