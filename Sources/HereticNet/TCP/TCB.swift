/// The states of a TCP connection (RFC 9293 section 3.3.2).
public enum TCPState: UInt8, Sendable {
    case closed, listen, synSent, synReceived, established
    case finWait1, finWait2, closeWait, closing, lastAck, timeWait

    /// States after the handshake, where RFC 5961's checks apply.
    public var isSynchronized: Bool { rawValue >= TCPState.established.rawValue || self == .synReceived }
}

/// What a segment says, parsed: the state machine never sees bytes.
public struct TCPSegmentInfo: Sendable, Equatable {
    public var sequence: SequenceNumber
    public var acknowledgment: SequenceNumber
    public var flags: TCPFlags
    public var window: UInt16
    public var options: TCPOptions
    public var payloadLength: Int

    public init(sequence: SequenceNumber, acknowledgment: SequenceNumber = SequenceNumber(0), flags: TCPFlags,
                window: UInt16 = 65_535, options: TCPOptions = .none, payloadLength: Int = 0) {
        self.sequence = sequence
        self.acknowledgment = acknowledgment
        self.flags = flags
        self.window = window
        self.options = options
        self.payloadLength = payloadLength
    }

    /// Sequence space used: payload plus one each for SYN and FIN.
    public var length: Int {
        payloadLength + (flags.contains(.syn) ? 1 : 0) + (flags.contains(.fin) ? 1 : 0)
    }
}

/// What the state machine asks its owner to do.
public enum TCPAction: Equatable, Sendable {
    /// Send a segment without payload (control segments: SYN, FIN, RST).
    case send(TCPSegmentInfo)
    /// Acknowledge what was received. The owner builds the ACK once everything else of this
    /// round went out (`ackSegment`), and skips it if another segment already carried it.
    case acknowledge
    /// Send `length` bytes of the application's data starting at `sequence`, with these flags.
    case sendData(TCPSegmentInfo)
    /// `length` in-order bytes at `offset` of the segment's payload are the application's.
    case deliver(offset: Int, length: Int)
    case connected
    /// The peer sent FIN: no more data will come.
    case peerClosed
    /// The connection is gone: `reason` says why.
    case closed(TCPCloseReason)
    /// Hold the connection in TIME-WAIT for this long, then forget it.
    case startTimeWait(milliseconds: Int)
    /// (Re)arm the retransmission timer to fire after this long.
    case armRetransmit(milliseconds: Int)
    /// Nothing is in flight any more: stop the retransmission timer.
    case cancelRetransmit
}

public enum TCPCloseReason: Sendable, Equatable {
    case normal
    case reset
    case refused
    /// Retransmissions went unanswered (RFC 9293's user timeout).
    case timedOut
}

/// A TCP connection's control block: sequence variables and state, as compact plain data
/// (no buffers, no references), driven by `segmentArrived` and the owner's calls.
///
/// It follows RFC 9293's "segment arrives" processing (section 3.10.7) with RFC 5961's
/// defences: a RST or SYN inside the window but not exactly at RCV.NXT earns a challenge ACK
/// instead of tearing the connection down, and acknowledgements outside what was ever sent
/// are refused. Options negotiated on the handshake: MSS, window scale, timestamps.
public struct TCB: Sendable, Equatable {
    public private(set) var state: TCPState = .closed
    // Send sequence space.
    public private(set) var iss = SequenceNumber(0)
    public private(set) var sndUna = SequenceNumber(0)
    public private(set) var sndNxt = SequenceNumber(0)
    public private(set) var sndWnd: UInt32 = 0
    var sndWl1 = SequenceNumber(0)
    var sndWl2 = SequenceNumber(0)
    /// The largest window the peer ever offered (RFC 5961's MAX.SND.WND).
    var maxSndWnd: UInt32 = 0
    // Receive sequence space.
    public private(set) var irs = SequenceNumber(0)
    public private(set) var rcvNxt = SequenceNumber(0)
    /// Our receive window in bytes (before scaling).
    public var rcvWnd: UInt32 = 65_535
    // Negotiated options.
    public private(set) var sendMSS: UInt16 = 536
    public private(set) var sndScale: UInt8 = 0
    public private(set) var rcvScale: UInt8 = 0
    public private(set) var timestamps = false
    var tsRecent: UInt32 = 0
    /// Our FIN has been sent and occupies SND.NXT - 1.
    var finSent = false
    /// The FIN must follow the data being resent after a timeout.
    public internal(set) var pendingFIN = false
    // Retransmission (RFC 6298), in milliseconds; srtt 0 until the first measurement.
    public private(set) var srtt: UInt32 = 0
    var rttvar: UInt32 = 0
    public private(set) var rto: UInt32 = 1000
    /// Consecutive retransmissions of the oldest unacknowledged data.
    public private(set) var retries: UInt8 = 0

    /// Our advertised MSS and window scale on SYNs.
    public static let ourMSS: UInt16 = 1460
    public static let ourWindowScale: UInt8 = 7
    /// Maximum segment lifetime: TIME-WAIT lasts two of them.
    public static let msl = 30_000
    /// RFC 6298 bounds: at least 200 ms (Linux's floor, below RFC 6298's 1 s), at most 60 s.
    public static let minRTO: UInt32 = 200
    public static let maxRTO: UInt32 = 60_000
    /// Retransmissions before giving up: fewer while connecting.
    public static let maxRetries: UInt8 = 8
    public static let maxSynRetries: UInt8 = 5

    public init() {}

    // MARK: Opening

    /// Passive open: the listener saw a SYN; answer with SYN-ACK from `iss`.
    public static func accept(_ syn: TCPSegmentInfo, iss: SequenceNumber, now: UInt32, out: inout [TCPAction]) -> TCB {
        var t = TCB()
        t.state = .synReceived
        t.iss = iss
        t.sndUna = iss
        t.sndNxt = iss + 1
        t.irs = syn.sequence
        t.rcvNxt = syn.sequence + 1
        t.negotiate(syn.options)
        t.sndWnd = UInt32(syn.window)  // never scaled on a SYN
        t.maxSndWnd = t.sndWnd
        out.append(.send(t.synSegment(ack: true, now: now)))
        out.append(.armRetransmit(milliseconds: Int(t.rto)))
        return t
    }

    /// Active open: send SYN from `iss`.
    public mutating func connect(iss: SequenceNumber, now: UInt32, out: inout [TCPAction]) {
        precondition(state == .closed, "Heretic: connect on a TCB in state \(state)")
        state = .synSent
        self.iss = iss
        sndUna = iss
        sndNxt = iss + 1
        out.append(.send(synSegment(ack: false, now: now)))
        out.append(.armRetransmit(milliseconds: Int(rto)))
    }

    func synSegment(ack: Bool, now: UInt32) -> TCPSegmentInfo {
        var options = TCPOptions(maximumSegmentSize: Self.ourMSS)
        // A SYN offers window scaling and timestamps; a SYN-ACK only answers what the peer
        // offered (its offer of scaling is what set our receive scale).
        if !ack || rcvScale != 0 { options.windowScale = Self.ourWindowScale }
        if !ack || timestamps { options.timestamp = TCPTimestamp(value: now, echo: ack ? tsRecent : 0) }
        return TCPSegmentInfo(sequence: iss, acknowledgment: ack ? rcvNxt : SequenceNumber(0),
                              flags: ack ? [.syn, .ack] : .syn, window: UInt16(min(rcvWnd, 65_535)),
                              options: options)
    }

    mutating func negotiate(_ options: TCPOptions) {
        if let m = options.maximumSegmentSize { sendMSS = max(64, m) }
        if let ws = options.windowScale {
            sndScale = ws
            rcvScale = Self.ourWindowScale
        }
        if let ts = options.timestamp {
            timestamps = true
            tsRecent = ts.value
        }
    }

    // MARK: Closing and sending

    /// The application has no more to send: send FIN where the state allows.
    public mutating func close(now: UInt32, out: inout [TCPAction]) {
        switch state {
        case .closed, .listen, .synSent:
            state = .closed
            out.append(.closed(.normal))
        case .synReceived, .established:
            state = .finWait1
            sendFIN(now: now, out: &out)
        case .closeWait:
            state = .lastAck
            sendFIN(now: now, out: &out)
        default:
            break  // already closing
        }
    }

    /// Abort: send RST (where the peer knows us) and forget the connection.
    public mutating func abort(out: inout [TCPAction]) {
        if state.isSynchronized && state != .timeWait {
            out.append(.send(TCPSegmentInfo(sequence: sndNxt, acknowledgment: rcvNxt, flags: [.rst, .ack], window: 0)))
        }
        state = .closed
        out.append(.closed(.reset))
    }

    mutating func sendFIN(now: UInt32, out: inout [TCPAction]) {
        if sndNxt == sndUna { out.append(.armRetransmit(milliseconds: Int(rto))) }
        out.append(.send(segment(sequence: sndNxt, flags: [.fin, .ack], now: now)))
        sndNxt = sndNxt + 1
        finSent = true
    }

    /// Sends `length` bytes of application data now (the caller keeps them until acknowledged).
    public mutating func send(length: Int, now: UInt32, out: inout [TCPAction]) {
        precondition(canSendData, "Heretic: send in state \(state)")
        if sndNxt == sndUna { out.append(.armRetransmit(milliseconds: Int(rto))) }
        var s = segment(sequence: sndNxt, flags: [.psh, .ack], now: now)
        s.payloadLength = length
        out.append(.sendData(s))
        sndNxt = sndNxt + length
    }

    /// Whether data may go out: while open, or (after a timeout sent us back) for the data
    /// that precedes a FIN not yet sent again.
    public var canSendData: Bool {
        state == .established || state == .closeWait
            || (pendingFIN && (state == .finWait1 || state == .closing || state == .lastAck))
    }

    /// After a timeout, once all data before it went out again, the FIN follows it.
    public mutating func resendFIN(now: UInt32, out: inout [TCPAction]) {
        guard pendingFIN else { return }
        pendingFIN = false
        sendFIN(now: now, out: &out)
    }

    /// Bytes sent and not yet acknowledged (data only: SYN and FIN excluded).
    public var bytesInFlight: Int { (sndNxt - sndUna) - (finSent && sndNxt != sndUna ? 1 : 0) }

    /// Bytes the peer's window lets us send now, beyond what is in flight.
    public var sendWindowAvailable: Int { max(0, Int(sndWnd) - (sndNxt - sndUna)) }

    /// Whether our FIN is still owed or unacknowledged.
    public var finPending: Bool { finSent && sndUna != sndNxt }

    // MARK: Retransmission (RFC 6298)

    /// Folds one round-trip sample into SRTT, RTTVAR and RTO.
    mutating func measured(rtt sample: UInt32) {
        // An echo from the future, or from before a clock jump, says nothing: ignore it.
        guard sample <= 2 * Self.maxRTO else { return }
        let r = max(sample, 1)
        if srtt == 0 {
            srtt = r
            rttvar = r / 2
        } else {
            let delta = srtt > r ? srtt - r : r - srtt
            rttvar = (3 * rttvar + delta) / 4
            srtt = (7 * srtt + r) / 8
        }
        rto = min(Self.maxRTO, max(Self.minRTO, srtt + max(1, 4 * rttvar)))
    }

    /// The retransmission timer fired: go back to SND.UNA, back off, or give up. The owner
    /// resends what `.sendData` asks for from its buffer.
    public mutating func retransmitTimeout(now: UInt32, out: inout [TCPAction]) {
        guard sndUna != sndNxt, state != .closed, state != .timeWait else { return }
        let limit = state == .synSent || state == .synReceived ? Self.maxSynRetries : Self.maxRetries
        if retries >= limit {
            state = .closed
            out.append(.closed(.timedOut))
            return
        }
        retries += 1
        rto = min(Self.maxRTO, rto * 2)
        switch state {
        case .synSent:
            out.append(.send(synSegment(ack: false, now: now)))
        case .synReceived:
            out.append(.send(synSegment(ack: true, now: now)))
        default:
            // Go back N: everything after SND.UNA is sent again as the window allows.
            let dataInFlight = bytesInFlight
            if dataInFlight > 0 {
                var d = segment(sequence: sndUna, flags: [.psh, .ack], now: now)
                d.payloadLength = min(dataInFlight, Int(sendMSS))
                out.append(.sendData(d))
                sndNxt = sndUna + d.payloadLength
                if finSent { finSent = false; pendingFIN = true }
            } else if finSent {
                out.append(.send(segment(sequence: sndUna, flags: [.fin, .ack], now: now)))
            }
        }
        out.append(.armRetransmit(milliseconds: Int(rto)))
    }

    func segment(sequence: SequenceNumber, flags: TCPFlags, now: UInt32) -> TCPSegmentInfo {
        var options = TCPOptions.none
        if timestamps { options.timestamp = TCPTimestamp(value: now, echo: tsRecent) }
        return TCPSegmentInfo(sequence: sequence, acknowledgment: rcvNxt, flags: flags,
                              window: UInt16(min(rcvWnd >> UInt32(rcvScale), 65_535)), options: options)
    }

    mutating func ack(now: UInt32, out: inout [TCPAction]) {
        if out.last != .acknowledge { out.append(.acknowledge) }
    }

    /// A pure ACK carrying the current sequence and acknowledgment numbers.
    public func ackSegment(now: UInt32) -> TCPSegmentInfo {
        segment(sequence: sndNxt, flags: .ack, now: now)
    }

    // MARK: Segment arrives (RFC 9293 section 3.10.7)

    public mutating func segmentArrived(_ seg: TCPSegmentInfo, now: UInt32, out: inout [TCPAction]) {
        switch state {
        case .closed, .listen:
            // A TCB in these states is never the target of a segment: the listener or the
            // connection table answers (RST or new connection) before a TCB exists.
            return
        case .synSent:
            synSentArrived(seg, now: now, out: &out)
        default:
            synchronizedArrived(seg, now: now, out: &out)
        }
    }

    mutating func synSentArrived(_ seg: TCPSegmentInfo, now: UInt32, out: inout [TCPAction]) {
        var ackAcceptable = false
        if seg.flags.contains(.ack) {
            if seg.acknowledgment <= iss || seg.acknowledgment > sndNxt {
                if !seg.flags.contains(.rst) {
                    out.append(.send(TCPSegmentInfo(sequence: seg.acknowledgment, flags: .rst, window: 0)))
                }
                return
            }
            ackAcceptable = true
        }
        if seg.flags.contains(.rst) {
            if ackAcceptable {
                state = .closed
                out.append(.closed(.refused))
            }
            return
        }
        guard seg.flags.contains(.syn) else { return }
        irs = seg.sequence
        rcvNxt = seg.sequence + 1
        negotiate(seg.options)  // scaling applies only if the peer's SYN offered it too (RFC 7323)
        if ackAcceptable {
            sndUna = seg.acknowledgment
            retries = 0
            if let ts = seg.options.timestamp, timestamps, ts.echo != 0 { measured(rtt: now &- ts.echo) }
            out.append(.cancelRetransmit)
            sndWnd = UInt32(seg.window)  // a SYN's window is never scaled
            maxSndWnd = sndWnd
            sndWl1 = seg.sequence
            sndWl2 = seg.acknowledgment
            state = .established
            out.append(.connected)
            ack(now: now, out: &out)
        } else {
            // Simultaneous open: both sides sent SYN.
            state = .synReceived
            out.append(.send(synSegment(ack: true, now: now)))
        }
    }

    /// Whether a segment falls in the receive window (RFC 9293's four cases).
    func acceptable(_ seg: TCPSegmentInfo) -> Bool {
        let window = Int(rcvWnd)
        let len = seg.length
        if len == 0 {
            if window == 0 { return seg.sequence == rcvNxt }
            return seg.sequence >= rcvNxt && seg.sequence < rcvNxt + window
        }
        if window == 0 { return false }
        let last = seg.sequence + (len - 1)
        return (seg.sequence >= rcvNxt && seg.sequence < rcvNxt + window)
            || (last >= rcvNxt && last < rcvNxt + window)
    }

    mutating func synchronizedArrived(_ arriving: TCPSegmentInfo, now: UInt32, out: inout [TCPAction]) {
        var seg = arriving
        // Only the new part of a segment counts: a SYN we already received (the peer's
        // SYN-ACK in a simultaneous open repeats its SYN) is trimmed off, leaving its ACK.
        if seg.flags.contains(.syn) && seg.sequence == irs {
            seg.flags.remove(.syn)
            seg.sequence = seg.sequence + 1
        }
        // First: sequence number.
        guard acceptable(seg) else {
            if !seg.flags.contains(.rst) { ack(now: now, out: &out) }
            // In TIME-WAIT the only thing that arrives is the peer's FIN again: acknowledged
            // above, and the 2 MSL wait starts over.
            if state == .timeWait && seg.flags.contains(.fin) {
                out.append(.startTimeWait(milliseconds: 2 * Self.msl))
            }
            return
        }
        // Second: RST (RFC 5961 section 3): exact match resets, anything else in the window
        // earns a challenge ACK. TIME-WAIT ignores RST (RFC 1337: no assassination).
        if seg.flags.contains(.rst) {
            if state == .timeWait { return }
            if seg.sequence == rcvNxt {
                let wasSynReceivedFromListen = state == .synReceived
                state = .closed
                out.append(.closed(wasSynReceivedFromListen ? .refused : .reset))
            } else {
                ack(now: now, out: &out)
            }
            return
        }
        // Fourth: SYN in a synchronized state (RFC 5961 section 4): challenge ACK.
        if seg.flags.contains(.syn) {
            ack(now: now, out: &out)
            return
        }
        // Fifth: ACK.
        guard seg.flags.contains(.ack) else { return }
        if let ts = seg.options.timestamp, timestamps, seg.sequence <= rcvNxt { tsRecent = ts.value }
        if state == .synReceived {
            guard sndUna < seg.acknowledgment && seg.acknowledgment <= sndNxt else {
                out.append(.send(TCPSegmentInfo(sequence: seg.acknowledgment, flags: .rst, window: 0)))
                return
            }
            state = .established
            sndWnd = UInt32(seg.window) << UInt32(sndScale)
            maxSndWnd = max(maxSndWnd, sndWnd)
            sndWl1 = seg.sequence
            sndWl2 = seg.acknowledgment
            out.append(.connected)
        }

        // RFC 5961 section 5: an ACK for data never sent, or older than the largest window
        // ever offered, is answered with an ACK and ignored.
        if seg.acknowledgment > sndNxt || seg.acknowledgment < sndUna - Int(maxSndWnd) {
            ack(now: now, out: &out)
            return
        }
        if seg.acknowledgment > sndUna {
            sndUna = seg.acknowledgment
            retries = 0
            if let ts = seg.options.timestamp, timestamps, ts.echo != 0 { measured(rtt: now &- ts.echo) }
            out.append(sndUna == sndNxt ? .cancelRetransmit : .armRetransmit(milliseconds: Int(rto)))
        }
        if sndWl1 < seg.sequence || (sndWl1 == seg.sequence && sndWl2 <= seg.acknowledgment) {
            sndWnd = UInt32(seg.window) << UInt32(sndScale)
            maxSndWnd = max(maxSndWnd, sndWnd)
            sndWl1 = seg.sequence
            sndWl2 = seg.acknowledgment
        }
        let ourFINAcked = finSent && sndUna == sndNxt
        switch state {
        case .finWait1 where ourFINAcked: state = .finWait2
        case .closing where ourFINAcked:
            state = .timeWait
            out.append(.startTimeWait(milliseconds: 2 * Self.msl))
        case .lastAck where ourFINAcked:
            state = .closed
            out.append(.closed(.normal))
            return
        case .timeWait:
            // A retransmitted FIN: acknowledge it and restart the 2 MSL wait.
            if seg.flags.contains(.fin) {
                ack(now: now, out: &out)
                out.append(.startTimeWait(milliseconds: 2 * Self.msl))
            }
            return
        default: break
        }
        // Seventh: segment text, in order only (out-of-order data is left for retransmission).
        var advanced = false
        if seg.payloadLength > 0, state == .established || state == .finWait1 || state == .finWait2 {
            if seg.sequence <= rcvNxt {
                let skip = rcvNxt - seg.sequence
                let fresh = seg.payloadLength - skip
                if fresh > 0 {
                    let take = min(fresh, Int(rcvWnd))
                    out.append(.deliver(offset: skip, length: take))
                    rcvNxt = rcvNxt + take
                    advanced = true
                }
            }
            if !advanced || seg.sequence > rcvNxt { ack(now: now, out: &out); return }
        }
        // Eighth: FIN, when it is the next thing in sequence.
        if seg.flags.contains(.fin), seg.sequence + seg.payloadLength == rcvNxt {
            rcvNxt = rcvNxt + 1
            out.append(.peerClosed)
            switch state {
            case .synReceived, .established: state = .closeWait
            case .finWait1:
                if ourFINAcked {
                    state = .timeWait
                    out.append(.startTimeWait(milliseconds: 2 * Self.msl))
                } else {
                    state = .closing
                }
            case .finWait2:
                state = .timeWait
                out.append(.startTimeWait(milliseconds: 2 * Self.msl))
            default: break
            }
            ack(now: now, out: &out)
            return
        }
        if advanced { ack(now: now, out: &out) }
    }

    /// TIME-WAIT ended: the connection is forgotten.
    public mutating func timeWaitExpired(out: inout [TCPAction]) {
        guard state == .timeWait else { return }
        state = .closed
        out.append(.closed(.normal))
    }
}
