import HereticTransport
/// SYN cookies (RFC 4987): with a listener's backlog full, the SYN is answered statelessly,
/// the connection's parameters encoded in our initial sequence number; the ACK that returns
/// it creates the connection.
extension TCPLayer {

    /// MSS values a cookie can carry (3 bits; the largest not above the peer's is chosen).
    static let cookieMSS: [UInt16] = [536, 1200, 1440, 1460]

    /// The cookie counter: advances every period (65.5 s); a cookie is good for two.
    static let cookiePeriod: UInt64 = 1 << 16
    var cookieCounter: UInt32 { UInt32(truncatingIfNeeded: now >> 16) }

    func cookieHash(_ remote: TCPEndpoint, _ localPort: UInt16, peerISN: SequenceNumber, counter: UInt32) -> UInt32 {
        var h = Hasher()
        h.combine(secret)
        h.combine(remote.address.raw)
        h.combine(remote.port)
        h.combine(localPort)
        h.combine(peerISN.raw)
        h.combine(counter)
        return UInt32(truncatingIfNeeded: h.finalize()) & 0x00ff_ffff
    }

    /// Our ISN for a cookie: 5 bits of counter, 3 of MSS index, 24 of keyed hash over the
    /// 4-tuple, the peer's ISN and the counter.
    func cookie(_ remote: TCPEndpoint, _ localPort: UInt16, peerISN: SequenceNumber, mssIndex: Int) -> UInt32 {
        let t = cookieCounter
        return (t & 31) << 27 | UInt32(mssIndex) << 24 | cookieHash(remote, localPort, peerISN: peerISN, counter: t)
    }

    func sendCookie(for syn: TCPSegmentInfo, from remote: TCPEndpoint, localPort: UInt16) {
        let peerMSS = syn.options.maximumSegmentSize ?? 536
        let index = Self.cookieMSS.lastIndex { $0 <= peerMSS } ?? 0
        let isn = cookie(remote, localPort, peerISN: syn.sequence, mssIndex: index)
        // The SYN-ACK carries only MSS: scaling and timestamps would need state we do not keep.
        let reply = TCPSegmentInfo(sequence: SequenceNumber(isn), acknowledgment: syn.sequence + 1, flags: [.syn, .ack],
                                   window: 65_535, options: TCPOptions(maximumSegmentSize: TCB.ourMSS))
        synCookiesSent += 1
        build(reply, remote: remote, localPort: localPort, payload: nil)
    }

    /// The MSS a returning cookie carries, or nil if `ack` does not answer one of ours.
    func validCookie(_ ack: TCPSegmentInfo, from remote: TCPEndpoint, localPort: UInt16) -> UInt16? {
        let c = (ack.acknowledgment - 1).raw
        let peerISN = ack.sequence - 1
        let index = Int(c >> 24 & 7)
        guard index < Self.cookieMSS.count else { return nil }
        let now = cookieCounter
        for age in UInt32(0)...1 {
            let t = now &- age
            if t & 31 == c >> 27, cookieHash(remote, localPort, peerISN: peerISN, counter: t) == c & 0x00ff_ffff {
                return Self.cookieMSS[index]
            }
        }
        return nil
    }
}
