import Testing
@testable import HereticNet

/// The segments among a list of actions.
func segments(_ actions: [TCPAction]) -> [TCPSegmentInfo] {
    actions.compactMap {
        switch $0 {
        case .send(let s), .sendData(let s), .resendData(let s): return s
        default: return nil
        }
    }
}

/// What the owner does with `.acknowledge`: one fresh ACK from the TCB after the round,
/// unless another segment of the round already carried it.
func resolved(_ actions: [TCPAction], _ tcb: TCB, now: UInt32 = 1) -> [TCPAction] {
    let carried = !segments(actions).isEmpty
    let acks: [TCPAction] = [.acknowledge, .acknowledgeDelayed, .challengeAck]
    var out = actions.filter { !acks.contains($0) }
    if actions.contains(where: { acks.contains($0) }) && !carried {
        out.append(.send(tcb.ackSegment(now: now)))
    }
    return out
}

/// The actions without retransmission-timer bookkeeping.
func events(_ actions: [TCPAction]) -> [TCPAction] {
    actions.filter {
        switch $0 {
        case .armRetransmit, .cancelRetransmit: return false
        default: return true
        }
    }
}

/// Feeds every segment `from` produced into `to`; returns what `to` did.
@discardableResult
func deliver(_ actions: [TCPAction], to tcb: inout TCB, now: UInt32 = 1) -> [TCPAction] {
    var out: [TCPAction] = []
    for s in segments(actions) {
        var round: [TCPAction] = []
        tcb.segmentArrived(s, now: now, out: &round)
        out += resolved(round, tcb, now: now)
    }
    return out
}

/// A connected pair, client ISS 1000, server ISS 5000 (or near wrap-around).
func connectedPair(clientISS: UInt32 = 1000, serverISS: UInt32 = 5000) -> (TCB, TCB) {
    var client = TCB(), out: [TCPAction] = []
    client.connect(iss: SequenceNumber(clientISS), now: 1, out: &out)
    var serverOut: [TCPAction] = []
    var server = TCB.accept(segments(out)[0], iss: SequenceNumber(serverISS), now: 1, out: &serverOut)
    let clientOut = deliver(serverOut, to: &client)
    let last = deliver(clientOut, to: &server)
    precondition(client.state == .established && server.state == .established && events(last) == [.connected])
    return (client, server)
}

@Suite("TCP state machine (RFC 9293, RFC 5961, RFC 7323)")
struct TCBTests {
    @Test("three-way handshake negotiates MSS, window scale and timestamps")
    func handshake() {
        var client = TCB(), out: [TCPAction] = []
        client.connect(iss: SequenceNumber(1000), now: 7, out: &out)
        let syn = segments(out)[0]
        #expect(syn.flags == .syn && syn.sequence == SequenceNumber(1000) && client.state == .synSent)
        #expect(syn.options.maximumSegmentSize == 1460 && syn.options.windowScale == 7 && syn.options.timestamp != nil)
        var serverOut: [TCPAction] = []
        var server = TCB.accept(syn, iss: SequenceNumber(5000), now: 9, out: &serverOut)
        let synAck = segments(serverOut)[0]
        #expect(synAck.flags == [.syn, .ack] && synAck.acknowledgment == SequenceNumber(1001))
        #expect(synAck.options.timestamp == TCPTimestamp(value: 9, echo: 7))
        let clientOut = deliver(serverOut, to: &client)
        #expect(events(clientOut).first == .connected && client.state == .established)
        #expect(events(deliver(clientOut, to: &server)) == [.connected])
        #expect(client.sndScale == 7 && client.rcvScale == 7 && client.timestamps && server.timestamps)
        #expect(client.sendMSS == 1460 && client.rcvNxt == SequenceNumber(5001) && server.rcvNxt == SequenceNumber(1001))
        // With timestamps on every segment, a full one carries 1448 bytes: 1500 on the wire.
        #expect(client.maximumSegmentPayload == 1448 && server.maximumSegmentPayload == 1448)
    }

    @Test("a peer without options gets none back, and no scaling applies")
    func noOptions() {
        var out: [TCPAction] = []
        let bare = TCPSegmentInfo(sequence: SequenceNumber(1), flags: .syn, window: 8192)
        let server = TCB.accept(bare, iss: SequenceNumber(100), now: 1, out: &out)
        let synAck = segments(out)[0]
        #expect(synAck.options.windowScale == nil && synAck.options.timestamp == nil)
        #expect(server.sndScale == 0 && server.rcvScale == 0 && server.sendMSS == 536)
    }

    @Test("simultaneous open: both SYN-RECEIVED, then both ESTABLISHED")
    func simultaneousOpen() {
        var a = TCB(), b = TCB(), outA: [TCPAction] = [], outB: [TCPAction] = []
        a.connect(iss: SequenceNumber(100), now: 1, out: &outA)
        b.connect(iss: SequenceNumber(900), now: 1, out: &outB)
        let fromA = deliver(outB, to: &a), fromB = deliver(outA, to: &b)
        #expect(a.state == .synReceived && b.state == .synReceived)
        #expect(segments(fromA).first?.flags == [.syn, .ack])
        deliver(fromA, to: &b)
        deliver(fromB, to: &a)
        #expect(a.state == .established && b.state == .established)
    }

    @Test("data is delivered in order and acknowledged; duplicates are not delivered twice")
    func data() {
        var (client, server) = connectedPair()
        var out: [TCPAction] = []
        client.send(length: 100, now: 2, out: &out)
        #expect(client.bytesInFlight == 100)
        let got = deliver(out, to: &server)
        #expect(got.first == .deliver(offset: 0, length: 100))
        #expect(segments(got).first?.acknowledgment == SequenceNumber(1101))
        deliver(got, to: &client)
        #expect(client.bytesInFlight == 0)
        // The same segment again (a duplicate): acknowledged, not delivered.
        let again = deliver(out, to: &server)
        #expect(!again.contains(.deliver(offset: 0, length: 100)) && segments(again).count == 1)
        // A segment overlapping old and new data delivers only the new part.
        var overlap = segments(out)[0]
        overlap.sequence = SequenceNumber(1051)
        overlap.payloadLength = 100
        var o: [TCPAction] = []
        server.segmentArrived(overlap, now: 3, out: &o)
        o = resolved(o, server)
        #expect(o.first == .deliver(offset: 50, length: 50) && server.rcvNxt == SequenceNumber(1151))
    }

    @Test("sequence numbers wrap around 2^32 without confusion")
    func wrapAround() {
        var (client, server) = connectedPair(clientISS: UInt32.max - 50, serverISS: UInt32.max - 10)
        var out: [TCPAction] = []
        client.send(length: 200, now: 2, out: &out)
        let got = deliver(out, to: &server)
        #expect(got.first == .deliver(offset: 0, length: 200))
        deliver(got, to: &client)
        #expect(client.bytesInFlight == 0 && client.sndUna == SequenceNumber(UInt32.max - 50) + 201)
        #expect(SequenceNumber(5) > SequenceNumber(UInt32.max - 5) && SequenceNumber(5) - SequenceNumber(UInt32.max - 5) == 11)
    }

    @Test("active close: FIN-WAIT-1, FIN-WAIT-2, TIME-WAIT; passive side CLOSE-WAIT, LAST-ACK, CLOSED")
    func activeClose() {
        var (client, server) = connectedPair()
        var out: [TCPAction] = []
        // (Each side's clock only goes forward, as its timestamps must for PAWS.)
        client.close(now: 2, out: &out)
        #expect(client.state == .finWait1 && segments(out).first?.flags == [.fin, .ack])
        let serverOut = deliver(out, to: &server, now: 2)
        #expect(server.state == .closeWait && serverOut.contains(.peerClosed))
        deliver(serverOut, to: &client, now: 2)
        #expect(client.state == .finWait2)
        var closing: [TCPAction] = []
        server.close(now: 3, out: &closing)
        #expect(server.state == .lastAck)
        let clientOut = deliver(closing, to: &client, now: 3)
        #expect(client.state == .timeWait && clientOut.contains(.startTimeWait(milliseconds: 60_000)))
        #expect(events(deliver(clientOut, to: &server, now: 3)) == [.closed(.normal)] && server.state == .closed)
        // A FIN retransmitted into TIME-WAIT is acknowledged and restarts the wait.
        let again = deliver(closing, to: &client, now: 4)
        #expect(segments(again).count == 1 && again.contains(.startTimeWait(milliseconds: 60_000)))
        var end: [TCPAction] = []
        client.timeWaitExpired(out: &end)
        #expect(end == [.closed(.normal)] && client.state == .closed)
    }

    @Test("simultaneous close: both FIN-WAIT-1, both CLOSING, both TIME-WAIT")
    func simultaneousClose() {
        var (a, b) = connectedPair()
        var outA: [TCPAction] = [], outB: [TCPAction] = []
        a.close(now: 2, out: &outA)
        b.close(now: 2, out: &outB)
        let fromA = deliver(outB, to: &a, now: 2), fromB = deliver(outA, to: &b, now: 2)
        #expect(a.state == .closing && b.state == .closing)
        deliver(fromA, to: &b, now: 3)
        deliver(fromB, to: &a, now: 3)
        #expect(a.state == .timeWait && b.state == .timeWait)
    }

    @Test("FIN with our FIN acknowledged in one segment goes straight to TIME-WAIT")
    func finAckTogether() {
        var (client, server) = connectedPair()
        var out: [TCPAction] = []
        client.close(now: 2, out: &out)
        var serverOut = deliver(out, to: &server)    // server: CLOSE-WAIT, ACK
        server.close(now: 3, out: &serverOut)         // server: LAST-ACK, FIN
        // Deliver only the FIN (which also acknowledges the client's FIN).
        let fin = segments(serverOut).last!
        var o: [TCPAction] = []
        client.segmentArrived(fin, now: 4, out: &o)
        o = resolved(o, client)
        #expect(client.state == .timeWait)
    }

    @Test("RST exactly at RCV.NXT resets; in the window earns a challenge ACK; outside is ignored (RFC 5961)")
    func rstHandling() {
        var (_, server) = connectedPair()
        let base = server.rcvNxt
        var o: [TCPAction] = []
        server.segmentArrived(TCPSegmentInfo(sequence: base + 10, flags: .rst), now: 2, out: &o)
        #expect(o == [.challengeAck], "counted as a challenge")
        o = resolved(o, server)
        #expect(server.state == .established && segments(o).first?.flags == .ack, "challenge ACK")
        o = []
        server.segmentArrived(TCPSegmentInfo(sequence: base + 1_000_000, flags: .rst), now: 2, out: &o)
        o = resolved(o, server)
        #expect(server.state == .established && o.isEmpty, "out of window: dropped silently")
        o = []
        server.segmentArrived(TCPSegmentInfo(sequence: base, flags: .rst), now: 2, out: &o)
        o = resolved(o, server)
        #expect(server.state == .closed && events(o) == [.closed(.reset)])
    }

    @Test("a SYN on an established connection earns a challenge ACK, never a reset (RFC 5961)")
    func synInjection() {
        var (_, server) = connectedPair()
        var o: [TCPAction] = []
        server.segmentArrived(TCPSegmentInfo(sequence: server.rcvNxt + 5, flags: .syn), now: 2, out: &o)
        #expect(o == [.challengeAck])
        o = resolved(o, server)
        #expect(server.state == .established && segments(o).map(\.flags) == [.ack])
    }

    @Test("an ACK for data never sent is answered and ignored (RFC 5961 section 5)")
    func ackInjection() {
        var (_, server) = connectedPair()
        var sent: [TCPAction] = []
        server.send(length: 100, now: 2, out: &sent)  // 100 bytes in flight: SND.UNA < SND.NXT
        let una = server.sndUna
        var o: [TCPAction] = []
        let bogus = TCPSegmentInfo(sequence: server.rcvNxt, acknowledgment: server.sndNxt + 5000, flags: .ack)
        server.segmentArrived(bogus, now: 3, out: &o)
        #expect(o == [.challengeAck])
        o = resolved(o, server)
        #expect(segments(o).map(\.flags) == [.ack], "answered with an ACK")
        #expect(server.sndUna == una && server.bytesInFlight == 100, "and not taken as acknowledging anything")
    }

    @Test("connection refused: RST answering our SYN closes with refused; a bad ACK draws RST")
    func refused() {
        var client = TCB(), out: [TCPAction] = []
        client.connect(iss: SequenceNumber(1000), now: 1, out: &out)
        var o: [TCPAction] = []
        client.segmentArrived(TCPSegmentInfo(sequence: SequenceNumber(0), acknowledgment: SequenceNumber(1001),
                                             flags: [.rst, .ack]), now: 2, out: &o)
        o = resolved(o, client)
        #expect(events(o) == [.closed(.refused)] && client.state == .closed)
        var c2 = TCB(), out2: [TCPAction] = []
        c2.connect(iss: SequenceNumber(1000), now: 1, out: &out2)
        var o2: [TCPAction] = []
        c2.segmentArrived(TCPSegmentInfo(sequence: SequenceNumber(7), acknowledgment: SequenceNumber(99),
                                         flags: [.syn, .ack]), now: 2, out: &o2)
        o2 = resolved(o2, c2)
        #expect(segments(o2).map(\.flags) == [.rst] && segments(o2).first?.sequence == SequenceNumber(99))
        #expect(c2.state == .synSent, "a bad SYN-ACK does not disturb the connecting side")
    }

    @Test("segments outside the receive window are acknowledged, not accepted")
    func outOfWindow() {
        var (_, server) = connectedPair()
        var o: [TCPAction] = []
        let far = TCPSegmentInfo(sequence: server.rcvNxt + 200_000, acknowledgment: server.sndNxt,
                                 flags: [.psh, .ack], payloadLength: 10)
        server.segmentArrived(far, now: 2, out: &o)
        o = resolved(o, server)
        #expect(segments(o).map(\.flags) == [.ack] && !o.contains(.deliver(offset: 0, length: 10)))
    }

    @Test("RTO: exponential backoff, retransmission from SND.UNA, and a timeout at the limit")
    func retransmission() {
        var (client, server) = connectedPair()
        var out: [TCPAction] = []
        let rto = Int(client.rto)  // set by the handshake's RTT sample
        client.send(length: 3000, now: 10, out: &out)
        #expect(out.contains(.armRetransmit(milliseconds: rto)))
        var o: [TCPAction] = []
        client.retransmitTimeout(now: 1010, out: &o)
        // Go back to SND.UNA: one MSS of the oldest data again, timer doubled.
        #expect(segments(o).first?.sequence == SequenceNumber(1001) && segments(o).first?.payloadLength == 1448)
        #expect(o.contains(.armRetransmit(milliseconds: 2 * rto)) && client.retries == 1)
        // An acknowledgement resets the count.
        var ackOut: [TCPAction] = []
        server.segmentArrived(segments(o)[0], now: 1020, out: &ackOut)
        ackOut = resolved(ackOut, server)
        deliver(ackOut, to: &client, now: 1030)
        #expect(client.retries == 0 && client.sndUna == SequenceNumber(2449) && client.bytesInFlight == 0)
        // The owner sends the rest again (it still holds it); unanswered, it times out.
        var rest: [TCPAction] = []
        client.send(length: 1552, now: 1040, out: &rest)
        var last: [TCPAction] = []
        for i in 0..<20 where client.state != .closed {
            client.retransmitTimeout(now: UInt32(2000 + i * 60_000), out: &last)
        }
        #expect(last.contains(.closed(.timedOut)) && client.state == .closed)
        #expect(client.retries == TCB.maxRetries)
        #expect(segments(last).allSatisfy { $0.sequence == SequenceNumber(2449) }, "always from SND.UNA")
    }

    @Test("RTT samples from timestamps drive RTO within its bounds (RFC 6298)")
    func rttEstimation() {
        var t = TCB()
        t.measured(rtt: 100)
        #expect(t.srtt == 100 && t.rto == 300)  // SRTT + 4 * (RTT / 2)
        for _ in 0..<50 { t.measured(rtt: 100) }
        #expect(t.srtt == 100 && t.rto >= TCB.minRTO && t.rto < 300)
        t.measured(rtt: 4_000_000_000)  // an echo from the future: ignored
        #expect(t.srtt == 100)
        for _ in 0..<50 { t.measured(rtt: 100_000) }
        #expect(t.rto == TCB.maxRTO)
    }

    @Test("an unanswered SYN is retried with backoff and gives up sooner than data")
    func synTimeout() {
        var client = TCB(), out: [TCPAction] = []
        client.connect(iss: SequenceNumber(1), now: 0, out: &out)
        var o: [TCPAction] = []
        for i in 0..<10 where client.state != .closed {
            client.retransmitTimeout(now: UInt32(i * 1000), out: &o)
        }
        #expect(segments(o).filter { $0.flags == .syn }.count == Int(TCB.maxSynRetries))
        #expect(o.last == .closed(.timedOut))
    }

    @Test("data past a hole is stashed (bounded by the window) and acknowledged at once; reassembly advances RCV.NXT")
    func outOfOrder() {
        var (_, server) = connectedPair()
        server.rcvWnd = 3000
        let start = server.rcvNxt
        var o: [TCPAction] = []
        let later = TCPSegmentInfo(sequence: start + 1000, acknowledgment: server.sndNxt, flags: .ack,
                                   window: 65_535, payloadLength: 1000)
        server.segmentArrived(later, now: 2, out: &o)
        #expect(o == [.stash(offset: 0, length: 1000, sequence: start + 1000), .acknowledge], "kept, and a duplicate ACK")
        #expect(server.rcvNxt == start)
        o = []
        let beyond = TCPSegmentInfo(sequence: start + 2500, acknowledgment: server.sndNxt, flags: .ack,
                                    window: 65_535, payloadLength: 1000)
        server.segmentArrived(beyond, now: 2, out: &o)
        #expect(o.first == .stash(offset: 0, length: 500, sequence: start + 2500), "cut at the window's edge")
        o = []
        let first = TCPSegmentInfo(sequence: start, acknowledgment: server.sndNxt, flags: .ack,
                                   window: 65_535, payloadLength: 1000)
        server.segmentArrived(first, now: 3, out: &o)
        #expect(o.contains(.deliver(offset: 0, length: 1000)) && server.rcvNxt == start + 1000)
        server.reassembled(1000, now: 3)
        #expect(server.rcvNxt == start + 2000 && server.ackSegment(now: 3).acknowledgment == start + 2000)
    }

    @Test("abort sends RST and closes; the control block stays within 128 bytes")
    func abortAndSize() {
        var (client, _) = connectedPair()
        var o: [TCPAction] = []
        client.abort(out: &o)
        #expect(segments(o).first?.flags == [.rst, .ack] && o.last == .closed(.reset))
        #expect(MemoryLayout<TCB>.size <= 91, "compact state (the 4-tuple and timer slot fit in the 128-byte budget): \(MemoryLayout<TCB>.size) bytes")
    }
}

/// A pure ACK from the peer of `to`, at the sequence `to` expects, with this acknowledgment
/// and (unscaled) window.
func pureAck(_ to: TCB, ack: SequenceNumber, window: UInt16 = 65_535) -> TCPSegmentInfo {
    TCPSegmentInfo(sequence: to.rcvNxt, acknowledgment: ack, flags: .ack, window: window)
}

@Suite("TCP congestion control, persist, keepalive and timeouts")
struct TCBRecoveryTests {
    @Test("slow start grows the window by one MSS per ACK from RFC 6928's initial window")
    func slowStart() {
        var (client, _) = connectedPair()
        #expect(client.cwnd == 14_600, "min(10 MSS, max(2 MSS, 14600)) for MSS 1460")
        var out: [TCPAction] = []
        for _ in 0..<4 { client.send(length: 1460, now: 2, out: &out) }
        #expect(client.sendWindowAvailable == 14_600 - 4 * 1460)
        var o: [TCPAction] = []
        client.segmentArrived(pureAck(client, ack: client.sndUna + 2920, window: 512), now: 3, out: &o)
        #expect(client.cwnd == 14_600 + 1460, "one MSS per ACK in slow start (RFC 3465, L = 1)")
        // Window scaling: 512 << 7 = 65,536 bytes of peer window, still bounded by cwnd.
        #expect(client.sndWnd == 65_536 && client.sendWindowAvailable == Int(client.cwnd) - 2920)
    }

    @Test("three duplicate ACKs: fast retransmit, NewReno recovery over a partial ACK, exit at the full ACK")
    func fastRecovery() {
        var (client, _) = connectedPair()
        var out: [TCPAction] = []
        // The peer's first scaled window (its SYN-ACK's was unscaled): from now on it repeats.
        client.segmentArrived(pureAck(client, ack: client.sndUna, window: UInt16(65_535 >> 7)), now: 2, out: &out)
        for _ in 0..<8 { client.send(length: 1460, now: 2, out: &out) }
        let una = client.sndUna
        // Segments 1 and 3 are lost; the receiver repeats its ACK for segment 1.
        var o: [TCPAction] = []
        for i in 0..<3 {
            client.segmentArrived(pureAck(client, ack: una, window: UInt16(65_535 >> 7)), now: UInt32(3 + i), out: &o)
        }
        #expect(client.inRecovery && client.dupAcks == 3)
        let resent = o.compactMap { if case .resendData(let s) = $0 { return s } else { return nil } }
        #expect(resent.map(\.sequence) == [una] && resent.first?.payloadLength == 1448, "the first hole again")
        #expect(client.ssthresh == 8 * 1460 / 2 && client.cwnd == client.ssthresh + 3 * 1460)
        // A fourth duplicate inflates the window by one MSS.
        o = []
        client.segmentArrived(pureAck(client, ack: una, window: UInt16(65_535 >> 7)), now: 7, out: &o)
        #expect(client.cwnd == client.ssthresh + 4 * 1460)
        // Partial ACK (up to the second hole): resend it at once, stay in recovery.
        o = []
        client.segmentArrived(pureAck(client, ack: una + 2 * 1460, window: UInt16(65_535 >> 7)), now: 8, out: &o)
        let again = o.compactMap { if case .resendData(let s) = $0 { return s } else { return nil } }
        #expect(client.inRecovery && again.map(\.sequence) == [una + 2 * 1460])
        // Full ACK: recovery ends with cwnd deflated to ssthresh.
        o = []
        client.segmentArrived(pureAck(client, ack: client.sndNxt, window: UInt16(65_535 >> 7)), now: 9, out: &o)
        #expect(!client.inRecovery && client.cwnd == min(client.ssthresh, 2 * 1460) && client.bytesInFlight == 0)
        #expect(o.contains(.cancelRetransmit))
    }

    @Test("a timeout collapses the window to one MSS; ACKs for data sent before it still count")
    func timeoutAndSndMax() {
        var (client, server) = connectedPair()
        var out: [TCPAction] = []
        for _ in 0..<4 { client.send(length: 1000, now: 2, out: &out) }
        let sent = segments(out)
        var o: [TCPAction] = []
        client.retransmitTimeout(now: 1000, out: &o)
        #expect(client.cwnd == 1460 && client.ssthresh == 2920 && client.sndNxt == client.sndUna + 1448)
        #expect(client.sndMax == client.sndUna + 4000)
        // The originals were only delayed: the server got them all and acknowledges 4000.
        var serverOut: [TCPAction] = []
        for seg in sent { server.segmentArrived(seg, now: 1001, out: &serverOut) }
        #expect(server.rcvNxt == client.sndMax)
        o = []
        client.segmentArrived(server.ackSegment(now: 1002), now: 1002, out: &o)
        #expect(client.sndUna == client.sndMax && client.bytesInFlight == 0, "not refused as data never sent")
        #expect(client.ackSegment(now: 1).sequence == client.sndMax)
    }

    @Test("a zero window is probed with backoff, answered or not, reopens, and is given up on after nine minutes closed")
    func persist() {
        var (client, _) = connectedPair()
        var o: [TCPAction] = []
        client.segmentArrived(pureAck(client, ack: client.sndUna, window: 0), now: 2, out: &o)
        #expect(client.sndWnd == 0 && client.sendWindowAvailable == 0)
        o = []
        client.windowClosed(out: &o)
        #expect(client.persisting && o == [.armRetransmit(milliseconds: Int(client.rto))])
        o = []
        client.windowClosed(out: &o)
        #expect(o.isEmpty, "idempotent while persisting")
        var intervals: [Int] = []
        var now: UInt32 = 1000
        for _ in 0..<5 {
            o = []
            client.timerFired(now: now, unsent: 100, out: &o)
            let probe = segments(o).first
            #expect(probe?.sequence == client.sndUna - 1 && probe?.payloadLength == 0, "a probe the peer must answer")
            if case .armRetransmit(let ms)? = o.last { intervals.append(ms) }
            // The peer answers, still with a zero window: the count of unanswered probes resets.
            var a: [TCPAction] = []
            client.segmentArrived(pureAck(client, ack: client.sndUna, window: 0), now: now + 1, out: &a)
            now += 100_000
        }
        #expect(client.state == .established && client.probes == 0)
        let rto = Int(client.rto)
        #expect(intervals == [rto * 2, rto * 4, rto * 8, rto * 16, rto * 32],
                "answered probes back off too: a peer that answers at once cannot keep us probing fast")
        // The window opens: sending resumes and persist mode ends.
        o = []
        client.segmentArrived(pureAck(client, ack: client.sndUna, window: 100), now: now, out: &o)
        client.send(length: 100, now: now, out: &o)
        #expect(!client.persisting && client.bytesInFlight == 100)
        // A window that stays closed, every probe answered: given up after the persist limit.
        var (stubborn, _) = connectedPair()
        o = []
        stubborn.segmentArrived(pureAck(stubborn, ack: stubborn.sndUna, window: 0), now: 2, out: &o)
        stubborn.windowClosed(out: &o)
        var t: UInt32 = 2, probes = 0
        while stubborn.state != .closed && probes < 100 {
            t += 60_000  // (the owner calls when the timer is due; the interval is at most 60 s)
            o = []
            stubborn.timerFired(now: t, unsent: 5, out: &o)
            guard stubborn.state != .closed else { break }
            probes += 1
            var a: [TCPAction] = []
            stubborn.segmentArrived(pureAck(stubborn, ack: stubborn.sndUna, window: 0), now: t + 1, out: &a)
        }
        #expect(stubborn.state == .closed && o.last == .closed(.timedOut))
        #expect(probes == Int(TCB.maxPersistProbes), "\(probes) probes")
        #expect(segments(o).first?.flags.contains(.rst) == true, "the peer is told with RST")
        // Unanswered probes do back off, and end the connection at the retry limit.
        var (lonely, _) = connectedPair()
        o = []
        lonely.segmentArrived(pureAck(lonely, ack: lonely.sndUna, window: 0), now: 2, out: &o)
        lonely.windowClosed(out: &o)
        var backoff: [Int] = []
        for i in 0..<20 where lonely.state != .closed {
            o = []
            lonely.timerFired(now: UInt32(100_000 * (i + 1)), unsent: 5, out: &o)
            if case .armRetransmit(let ms)? = o.last { backoff.append(ms) }
        }
        #expect(lonely.state == .closed && o.last == .closed(.timedOut))
        #expect(backoff.count == Int(TCB.maxRetries) && backoff == backoff.sorted() && backoff.last! > backoff.first!)
    }

    @Test("keepalive probes an idle peer, an answer keeps it, silence ends it as timed out")
    func keepalive() {
        var (client, _) = connectedPair()
        var o: [TCPAction] = []
        client.keepaliveSeconds = 10
        client.idleSettingsChanged(now: 1, out: &o)
        #expect(o == [.armRetransmit(milliseconds: 10_000)])
        o = []
        client.timerFired(now: 10_001, unsent: 0, out: &o)
        #expect(segments(o).first?.sequence == client.sndUna - 1 && client.probes == 1)
        #expect(o.last == .armRetransmit(milliseconds: 10_000))
        // Answered: the count resets and the next probe is a full idle period away.
        client.segmentArrived(pureAck(client, ack: client.sndUna), now: 10_002, out: &o)
        #expect(client.probes == 0)
        // Silence: nine probes, then the end.
        var probes = 0
        var now: UInt32 = 20_002
        while client.state != .closed && now < 1_000_000 {
            o = []
            client.timerFired(now: now, unsent: 0, out: &o)
            probes += segments(o).filter { $0.flags == .ack }.count
            now += 10_000
        }
        #expect(probes == Int(TCB.keepaliveProbes))
        #expect(o.contains(.closed(.timedOut)) && segments(o).last?.flags == [.rst, .ack])
    }

    @Test("the idle timeout aborts a connection without data, and data postpones it")
    func idleTimeout() {
        var (client, server) = connectedPair()
        var o: [TCPAction] = []
        client.idleTimeoutSeconds = 5
        client.idleSettingsChanged(now: 1, out: &o)
        #expect(o == [.armRetransmit(milliseconds: 5000)])
        // Data at 3 s moves the deadline to 8 s; the timer firing at 5 s re-arms for it.
        var d: [TCPAction] = []
        client.send(length: 10, now: 3000, out: &d)
        deliver(deliver(d, to: &server, now: 3001), to: &client, now: 3002)
        o = []
        client.timerFired(now: 5001, unsent: 0, out: &o)
        #expect(client.state == .established && o == [.armRetransmit(milliseconds: 2999)])
        o = []
        client.timerFired(now: 8001, unsent: 0, out: &o)
        #expect(client.state == .closed && o.last == .closed(.idle) && segments(o).first?.flags == [.rst, .ack])
    }

    @Test("a connect timeout ends the attempt at its deadline, before the SYN retries run out")
    func connectTimeout() {
        var client = TCB(), out: [TCPAction] = []
        client.connect(iss: SequenceNumber(7), now: 100, timeoutMilliseconds: 2500, out: &out)
        #expect(out.last == .armRetransmit(milliseconds: 1000))
        var o: [TCPAction] = []
        client.timerFired(now: 1100, unsent: 0, out: &o)
        #expect(o.last == .armRetransmit(milliseconds: 1500), "the backed-off 2 s cut to the deadline")
        o = []
        client.timerFired(now: 2600, unsent: 0, out: &o)
        #expect(client.state == .closed && o == [.closed(.timedOut)])
    }

    @Test("in-order data may wait for a delayed ACK; out-of-order data and FIN are acknowledged at once")
    func delayedAck() {
        var (client, server) = connectedPair()
        var out: [TCPAction] = []
        client.send(length: 100, now: 2, out: &out)
        client.send(length: 100, now: 2, out: &out)
        let s = segments(out)
        var o: [TCPAction] = []
        server.segmentArrived(s[0], now: 3, out: &o)
        #expect(o.contains(.acknowledgeDelayed) && !o.contains(.acknowledge))
        var fresh = TCB()
        (_, fresh) = connectedPair()
        o = []
        fresh.segmentArrived(s[1], now: 3, out: &o)
        #expect(o.contains(.acknowledge) && !o.contains(.acknowledgeDelayed), "a gap: a duplicate ACK now")
        o = []
        client.close(now: 4, out: &o)
        var fin: [TCPAction] = []
        server.segmentArrived(s[1], now: 5, out: &fin)
        fin = []
        server.segmentArrived(segments(o)[0], now: 5, out: &fin)
        #expect(fin.contains(.acknowledge))
    }
}
