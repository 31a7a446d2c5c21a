import HereticTransport
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
    /// In-order data arrived: acknowledge it, but the ACK may wait (RFC 9293 3.8.6.3, delayed
    /// ACK) for a reply to carry it, for at most the owner's delay, and no longer than the
    /// next data segment (every second segment is acknowledged at once).
    case acknowledgeDelayed
    /// RFC 5961's challenge ACK: a RST or SYN inside the window but not exactly at RCV.NXT, or
    /// an ACK outside what was sent. Acknowledge at once (counted apart: it means someone
    /// may be guessing sequence numbers).
    case challengeAck
    /// RFC 7323's PAWS: the segment's timestamp is older than the last one accepted (a
    /// segment from an earlier wrap of the sequence space, or a forged one). Dropped (and
    /// answered as an out-of-window segment is).
    case pawsRejected
    /// An out-of-window segment (or a PAWS reject) that would have been answered with an
    /// ACK, within 512 ms of the last such answer on this connection: not answered.
    case ackSuppressed
    /// Send `length` bytes of the application's data starting at `sequence`, with these flags.
    case sendData(TCPSegmentInfo)
    /// The same, for data sent before (a retransmission: timeout, fast retransmit, partial ACK).
    case resendData(TCPSegmentInfo)
    /// `length` in-order bytes at `offset` of the segment's payload are the application's.
    case deliver(offset: Int, length: Int)
    /// Out-of-order data: the `length` bytes at `offset` of the payload belong at `sequence`,
    /// past a hole. The owner keeps a copy and hands it over (`reassembled`) once the hole
    /// fills; the control block itself keeps no data.
    case stash(offset: Int, length: Int, sequence: SequenceNumber)
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

/// A TCP connection's control block: sequence variables and state, as compact plain data
/// (no buffers, no references), driven by `segmentArrived` and the owner's calls.
///
/// It follows RFC 9293's "segment arrives" processing (section 3.10.7) with RFC 5961's
/// defences: a RST or SYN inside the window but not exactly at RCV.NXT earns a challenge ACK
/// instead of tearing the connection down, and acknowledgements outside what was ever sent
/// are refused. Options negotiated on the handshake: MSS, window scale, timestamps.
public struct TCB: Sendable, Equatable {
    // Send sequence space.
    public private(set) var iss = SequenceNumber(0)
    public private(set) var sndUna = SequenceNumber(0)
    /// The next sequence number to send (rewound to SND.UNA by a retransmission timeout).
    public private(set) var sndNxt = SequenceNumber(0)
    /// The highest sequence number ever sent, plus one: ACKs up to it are legitimate even
    /// after a timeout rewound SND.NXT, and pure ACKs carry it as their sequence number.
    public private(set) var sndMax = SequenceNumber(0)
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
    var tsRecent: UInt32 = 0
    // Congestion control (RFC 5681) with NewReno fast recovery (RFC 6582), in bytes.
    public private(set) var cwnd: UInt32 = 14_600
    public private(set) var ssthresh: UInt32 = 0x7fff_ffff
    /// SND.NXT when fast recovery began: an ACK at or past it ends recovery.
    var recover = SequenceNumber(0)
    /// Milliseconds (the owner's clock) of the last segment heard, and of the last data
    /// delivered or sent: keepalive and the idle timeout count from them. While connecting,
    /// `lastActive` holds the connect deadline instead (0: none).
    var lastHeard: UInt32 = 0
    var lastActive: UInt32 = 0
    // Negotiated options.
    public private(set) var sendMSS: UInt16 = 536
    /// The most data one segment carries. The peer's MSS counts no TCP options (RFC 6691),
    /// and with timestamps every segment after the handshake carries 12 bytes of them: a
    /// full segment of MSS bytes would overrun the peer's MTU by as much (a veth drops it).
    public var maximumSegmentPayload: Int { Int(sendMSS) - (timestamps ? 12 : 0) }
    // Retransmission (RFC 6298), in milliseconds; SRTT 0 until the first measurement.
    var srtt16: UInt16 = 0
    var rttvar16: UInt16 = 0
    var rto16: UInt16 = 1000
    /// Keepalive (RFC 1122 4.2.3.6): seconds of silence before the first probe (0: off);
    /// then a probe every `keepaliveInterval` seconds (0: the idle time, at most 75 s), and
    /// `keepaliveCount` unanswered (0: `keepaliveProbes`) end the connection.
    public var keepaliveSeconds: UInt16 = 0
    public var keepaliveInterval: UInt8 = 0
    public var keepaliveCount: UInt8 = 0
    /// Seconds without data either way before the connection is aborted (0: never).
    public var idleTimeoutSeconds: UInt16 = 0
    /// When an out-of-window segment was last answered, in 16 ms ticks (see
    /// `outOfWindowAck`).
    var oowAckTick: UInt16 = 0
    public private(set) var state: TCPState = .closed
    public private(set) var sndScale: UInt8 = 0
    public private(set) var rcvScale: UInt8 = 0
    /// Consecutive retransmissions of the oldest unacknowledged data.
    public private(set) var retries: UInt8 = 0
    public private(set) var dupAcks: UInt8 = 0
    /// Unanswered persist or keepalive probes.
    public private(set) var probes: UInt8 = 0
    @usableFromInline var bits: UInt8 = 0

    public var srtt: UInt32 { UInt32(srtt16) }
    var rttvar: UInt32 { UInt32(rttvar16) }
    public var rto: UInt32 { UInt32(rto16) }
    @inlinable @inline(__always) func bit(_ b: UInt8) -> Bool { bits & b != 0 }
    @inline(__always) mutating func set(_ b: UInt8, _ on: Bool) { bits = on ? bits | b : bits & ~b }
    public internal(set) var timestamps: Bool { get { bit(1) } set { set(1, newValue) } }
    /// Our FIN has been sent and occupies SND.NXT - 1.
    @usableFromInline var finSent: Bool {
        @inlinable get { bit(2) }
        set { set(2, newValue) }
    }
    /// The FIN must follow the data being resent after a timeout.
    public internal(set) var pendingFIN: Bool {
        @inlinable get { bit(4) }
        set { set(4, newValue) }
    }
    public internal(set) var inRecovery: Bool { get { bit(8) } set { set(8, newValue) } }
    /// Persist mode: the peer's window is zero with data waiting; probes keep asking.
    public internal(set) var persisting: Bool { get { bit(16) } set { set(16, newValue) } }
    var connectDeadline: UInt32 {
        get { state == .synSent ? lastActive : 0 }
        set { lastActive = newValue }
    }

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
    public static let keepaliveProbes: UInt8 = 9
    /// Persist probes while the peer's window stays closed, answered or not, before the
    /// connection is given up as timed out: with the probe interval backing off to 60 s,
    /// about nine minutes of a closed window. (Linux probes a peer that answers for as long as
    /// the application keeps the socket; a peer that never reads would pin the send queue.)
    public static let maxPersistProbes: UInt8 = 15
    /// FIN-WAIT-2 (our FIN acknowledged, the peer's never comes): silence for this long
    /// ends the connection with RST, as Linux's tcp_fin_timeout does.
    public static let finWait2Timeout: UInt32 = 60_000
    /// RFC 7323 5.5: a TS.Recent not refreshed for 24 days is too old to judge by.
    static let pawsIdleLimit: UInt32 = 24 * 86_400_000
    /// The smallest MSS a peer may make us use (Linux's tcp_min_snd_mss is 48): tiny
    /// segments would multiply the work per byte (CVE-2019-11479).
    public static let minimumMSS = 64
    /// Duplicate ACKs that start fast retransmit (RFC 5681).
    public static let dupAckThreshold: UInt8 = 3

    public init() {}

    // MARK: Opening

    /// Passive open: the listener saw a SYN; answer with SYN-ACK from `iss`.
    public static func accept(_ syn: TCPSegmentInfo, iss: SequenceNumber, now: UInt32, receiveWindow: UInt32 = 65_535,
                              out: inout [TCPAction]) -> TCB {
        var t = TCB()
        t.rcvWnd = receiveWindow
        t.state = .synReceived
        t.iss = iss
        t.sndUna = iss
        t.sndNxt = iss + 1
        t.sndMax = t.sndNxt
        t.irs = syn.sequence
        t.rcvNxt = syn.sequence + 1
        t.negotiate(syn.options)
        t.sndWnd = UInt32(syn.window)  // never scaled on a SYN
        t.maxSndWnd = t.sndWnd
        t.lastHeard = now
        t.lastActive = now
        t.recover = iss
        t.oowAckTick = UInt16(truncatingIfNeeded: now >> 4) &- 32
        out.append(.send(t.synSegment(ack: true, now: now)))
        out.append(.armRetransmit(milliseconds: Int(t.rto)))
        return t
    }

    /// Active open: send SYN from `iss`; give up after `timeoutMilliseconds` if given (else
    /// after the SYN retries).
    public mutating func connect(iss: SequenceNumber, now: UInt32, timeoutMilliseconds: Int? = nil, out: inout [TCPAction]) {
        precondition(state == .closed, "Heretic: connect on a TCB in state \(state)")
        state = .synSent
        self.iss = iss
        sndUna = iss
        sndNxt = iss + 1
        sndMax = sndNxt
        lastHeard = now
        recover = iss
        oowAckTick = UInt16(truncatingIfNeeded: now >> 4) &- 32
        connectDeadline = 0
        if let t = timeoutMilliseconds { connectDeadline = max(1, now &+ UInt32(clamping: max(1, t))) }
        out.append(.send(synSegment(ack: false, now: now)))
        out.append(.armRetransmit(milliseconds: synTimer(now: now)))
    }

    /// The SYN's retransmission timer, cut short by the connect deadline.
    func synTimer(now: UInt32) -> Int {
        guard connectDeadline != 0 else { return Int(rto) }
        return max(0, min(Int(rto), Int(Int32(bitPattern: connectDeadline &- now))))
    }

    /// A connection whose handshake completed statelessly (a SYN cookie came back in the ACK
    /// that `ack` is): ESTABLISHED at once, with the MSS the cookie carried and no other
    /// options (they were not kept).
    public static func fromCookie(_ ack: TCPSegmentInfo, mss: UInt16, now: UInt32) -> TCB {
        var t = TCB()
        t.state = .established
        t.irs = ack.sequence - 1
        t.rcvNxt = ack.sequence
        t.iss = ack.acknowledgment - 1
        t.sndUna = ack.acknowledgment
        t.sndNxt = ack.acknowledgment
        t.sndMax = ack.acknowledgment
        t.sendMSS = mss
        t.cwnd = initialWindow(mss: mss)
        t.sndWnd = UInt32(ack.window)
        t.maxSndWnd = t.sndWnd
        t.sndWl1 = ack.sequence
        t.sndWl2 = ack.acknowledgment
        t.lastHeard = now
        t.lastActive = now
        t.recover = t.sndUna
        t.oowAckTick = UInt16(truncatingIfNeeded: now >> 4) &- 32
        return t
    }

    /// RFC 6928's initial window: min(10 MSS, max(2 MSS, 14600)).
    static func initialWindow(mss: UInt16) -> UInt32 {
        let m = UInt32(mss)
        return min(10 * m, max(2 * m, 14_600))
    }

    /// Our SYN or SYN-ACK. Its MSS option names `ourMSS`; the layer that sends it puts in
    /// what its interface carries.
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
        if let m = options.maximumSegmentSize { sendMSS = max(UInt16(Self.minimumMSS), m) }
        cwnd = Self.initialWindow(mss: sendMSS)
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
    public mutating func abort(out: inout [TCPAction], reason: TCPCloseReason = .reset) {
        if state.isSynchronized && state != .timeWait {
            out.append(.send(TCPSegmentInfo(sequence: sndMax, acknowledgment: rcvNxt, flags: [.rst, .ack], window: 0)))
        }
        state = .closed
        out.append(.closed(reason))
    }

    mutating func sendFIN(now: UInt32, out: inout [TCPAction]) {
        if sndNxt == sndUna { out.append(.armRetransmit(milliseconds: Int(rto))) }
        persisting = false
        out.append(.send(segment(sequence: sndNxt, flags: [.fin, .ack], now: now)))
        sndNxt = sndNxt + 1
        if sndNxt > sndMax { sndMax = sndNxt }
        finSent = true
    }

    /// Sends `length` bytes of application data now (the caller keeps them until acknowledged).
    public mutating func send(length: Int, now: UInt32, out: inout [TCPAction]) {
        precondition(canSendData, "Heretic: send in state \(state)")
        if sndNxt == sndUna { out.append(.armRetransmit(milliseconds: Int(rto))) }
        persisting = false
        var s = segment(sequence: sndNxt, flags: [.psh, .ack], now: now)
        s.payloadLength = length
        out.append(.sendData(s))
        sndNxt = sndNxt + length
        if sndNxt > sndMax { sndMax = sndNxt }
        lastActive = now
    }

    /// The owner has data to send and the peer's window is zero with nothing in flight:
    /// start probing it (RFC 9293 3.8.6.1). Idempotent while persisting.
    public mutating func windowClosed(out: inout [TCPAction]) {
        guard !persisting, sndWnd == 0, sndUna == sndNxt, canSendData else { return }
        persisting = true
        probes = 0
        retries = 0  // while persisting: probes sent since the window closed
        out.append(.armRetransmit(milliseconds: Int(rto)))
    }

    /// Whether data may go out: while open, or (after a timeout sent us back) for the data
    /// that precedes a FIN not yet sent again.
    @inlinable public var canSendData: Bool {
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
    @inlinable public var bytesInFlight: Int { (sndNxt - sndUna) - (finSent && sndNxt != sndUna ? 1 : 0) }

    /// Bytes the peer's window and the congestion window let us send now, beyond what is in
    /// flight.
    @inlinable public var sendWindowAvailable: Int { max(0, Int(min(sndWnd, cwnd)) - (sndNxt - sndUna)) }

    /// Whether our FIN is still owed or unacknowledged.
    @inlinable public var finPending: Bool { finSent && sndUna != sndNxt }

    // MARK: Retransmission (RFC 6298)

    /// Folds one round-trip sample into SRTT, RTTVAR and RTO.
    mutating func measured(rtt sample: UInt32) {
        // An echo from the future, or from before a clock jump, says nothing: ignore it.
        guard sample <= 2 * Self.maxRTO else { return }
        let r = min(max(sample, 1), 65_535)
        var srtt = self.srtt, rttvar = self.rttvar
        if srtt == 0 {
            srtt = r
            rttvar = r / 2
        } else {
            let delta = srtt > r ? srtt - r : r - srtt
            rttvar = (3 * rttvar + delta) / 4
            srtt = (7 * srtt + r) / 8
        }
        srtt16 = UInt16(srtt)
        rttvar16 = UInt16(min(rttvar, 65_535))
        rto16 = UInt16(min(Self.maxRTO, max(Self.minRTO, srtt + max(1, 4 * rttvar))))
    }

    /// The retransmission timer fired: go back to SND.UNA, back off, or give up. The owner
    /// resends what `.sendData` asks for from its buffer.
    public mutating func retransmitTimeout(now: UInt32, out: inout [TCPAction]) {
        guard sndUna != sndNxt, state != .closed, state != .timeWait else { return }
        let handshaking = state == .synSent || state == .synReceived
        // The peer shrank its window to zero under data in flight: what we resend are window
        // probes, bounded as persist probes are (answered or not), and failing the connection
        // sooner only while unanswered (an answer resets `probes`).
        let zeroWindow = sndWnd == 0 && !handshaking
        let limit = handshaking ? Self.maxSynRetries : zeroWindow ? Self.maxPersistProbes : Self.maxRetries
        if retries >= limit || (zeroWindow && probes >= Self.maxRetries) {
            if zeroWindow {
                abort(out: &out, reason: .timedOut)
            } else {
                state = .closed
                out.append(.closed(.timedOut))
            }
            return
        }
        if state == .synSent, connectDeadline != 0, Int32(bitPattern: now &- connectDeadline) >= 0 {
            state = .closed
            out.append(.closed(.timedOut))
            return
        }
        if zeroWindow { probes += 1 }
        retries += 1
        rto16 = UInt16(min(Self.maxRTO, rto * 2))
        if state != .synSent && state != .synReceived {
            // RFC 5681 5: the loss window, and RFC 6582's recover so that duplicate ACKs of
            // what went before do not start fast retransmit.
            ssthresh = max(UInt32(bytesInFlight) / 2, 2 * UInt32(sendMSS))
            cwnd = UInt32(sendMSS)
            inRecovery = false
            dupAcks = 0
            recover = sndNxt
        }
        switch state {
        case .synSent:
            out.append(.send(synSegment(ack: false, now: now)))
            out.append(.armRetransmit(milliseconds: synTimer(now: now)))
            return
        case .synReceived:
            out.append(.send(synSegment(ack: true, now: now)))
        default:
            if !goBackN(now: now, out: &out) && finSent {
                out.append(.send(segment(sequence: sndUna, flags: [.fin, .ack], now: now)))
            }
        }
        out.append(.armRetransmit(milliseconds: Int(rto)))
    }

    /// The connection's one timer fired: TIME-WAIT ends, data is retransmitted, the zero
    /// window is probed, or (idle) keepalive and the idle timeout are checked. `unsent` is
    /// how many queued bytes the owner has not sent yet.
    public mutating func timerFired(now: UInt32, unsent: Int, out: inout [TCPAction]) {
        switch state {
        case .timeWait: timeWaitExpired(out: &out)
        case .closed, .listen: return
        default:
            if sndUna != sndNxt {
                retransmitTimeout(now: now, out: &out)
            } else if persisting {
                guard unsent > 0, sndWnd == 0, canSendData else { persisting = false; idleTimer(now: now, out: &out); return }
                // Unanswered probes (an answer resets `probes`) mean the peer is gone; answered
                // ones that never open the window (`retries` counts every probe since it
                // closed) mean it will not read: either way, give up.
                if probes >= Self.maxRetries || retries >= Self.maxPersistProbes {
                    abort(out: &out, reason: .timedOut)
                    return
                }
                probes += 1
                retries += 1
                out.append(.send(probeSegment(now: now)))
                // Backing off by every probe sent, answered or not: a peer that answers at
                // once cannot hold us to probing at the first interval.
                out.append(.armRetransmit(milliseconds: Int(min(Self.maxRTO, rto << UInt32(min(retries, 9))))))
            } else {
                idleCheck(now: now, out: &out)
            }
        }
    }

    /// A segment that the peer must answer with an ACK carrying its window, and that changes
    /// nothing there: zero length, one below SND.UNA (out of the peer's window).
    func probeSegment(now: UInt32) -> TCPSegmentInfo {
        segment(sequence: sndUna - 1, flags: .ack, now: now)
    }

    /// Nothing is in flight: arm the idle timer (keepalive or idle timeout) if one is set,
    /// else stop the timer.
    mutating func idleTimer(now: UInt32, out: inout [TCPAction]) {
        guard let due = idleDeadline() else { out.append(.cancelRetransmit); return }
        out.append(.armRetransmit(milliseconds: max(0, Int(Int32(bitPattern: due &- now)))))
    }

    /// Whether an idle check can ever be due: keepalive, the idle timeout, or FIN-WAIT-2's.
    @inlinable var hasIdleTimers: Bool { keepaliveSeconds != 0 || idleTimeoutSeconds != 0 || state == .finWait2 }

    /// When the next idle check is due (nil: no keepalive and no idle timeout).
    @usableFromInline func idleDeadline() -> UInt32? {
        guard hasIdleTimers, state == .established || state == .closeWait || state == .finWait2 else { return nil }
        func earlier(_ a: UInt32?, _ b: UInt32?) -> UInt32? {
            guard let a else { return b }
            guard let b else { return a }
            return Int32(bitPattern: b &- a) < 0 ? b : a
        }
        return earlier(earlier(idleDue, keepaliveDue), finWait2Due)
    }

    /// When the idle timeout ends the connection (nil: no idle timeout).
    var idleDue: UInt32? {
        idleTimeoutSeconds > 0 ? lastActive &+ UInt32(idleTimeoutSeconds) * 1000 : nil
    }

    /// When the next keepalive probe is due (nil: keepalive off).
    var keepaliveDue: UInt32? {
        guard keepaliveSeconds > 0 else { return nil }
        let interval = UInt32(keepaliveInterval != 0 ? UInt16(keepaliveInterval) : min(keepaliveSeconds, 75)) * 1000
        return lastHeard &+ UInt32(keepaliveSeconds) * 1000 &+ UInt32(probes) * interval
    }

    /// Sets keepalive (nil: off).
    public mutating func setKeepalive(_ k: TCPKeepalive?) {
        guard let k, k.idle > 0 else {
            keepaliveSeconds = 0
            return
        }
        keepaliveSeconds = UInt16(clamping: k.idle)
        keepaliveInterval = UInt8(clamping: max(1, k.interval))
        keepaliveCount = UInt8(clamping: max(1, k.count))
    }

    /// When FIN-WAIT-2 gives up on the peer's FIN (nil: not in FIN-WAIT-2).
    var finWait2Due: UInt32? { state == .finWait2 ? lastHeard &+ Self.finWait2Timeout : nil }

    mutating func idleCheck(now: UInt32, out: inout [TCPAction]) {
        guard idleDeadline() != nil else { out.append(.cancelRetransmit); return }
        if let f = finWait2Due, Int32(bitPattern: now &- f) >= 0 {
            abort(out: &out, reason: .timedOut)
            return
        }
        if let d = idleDue, Int32(bitPattern: now &- d) >= 0 {
            abort(out: &out, reason: .idle)
            return
        }
        if let k = keepaliveDue, Int32(bitPattern: now &- k) >= 0 {
            if probes >= (keepaliveCount != 0 ? keepaliveCount : Self.keepaliveProbes) {
                abort(out: &out, reason: .timedOut)
                return
            }
            probes += 1
            out.append(.send(probeSegment(now: now)))
        }
        idleTimer(now: now, out: &out)
    }

    /// The application set keepalive or the idle timeout: (re)arm the timer if idle.
    public mutating func idleSettingsChanged(now: UInt32, out: inout [TCPAction]) {
        guard sndUna == sndNxt, !persisting, state != .timeWait, state != .closed else { return }
        idleTimer(now: now, out: &out)
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

    /// Answers an unacceptable segment with an ACK (RFC 9293 3.10.7.4), at most every 512 ms
    /// on one connection, as Linux's tcp_invalid_ratelimit does: a flood of blind guesses at a
    /// 4-tuple cannot turn the stack into an ACK reflector. (A peer's probe of our closed
    /// window or its keepalive comes at most every few hundred milliseconds.)
    mutating func outOfWindowAck(now: UInt32, out: inout [TCPAction]) {
        let tick = UInt16(truncatingIfNeeded: now >> 4)
        guard tick &- oowAckTick >= 32 else {
            out.append(.ackSuppressed)
            return
        }
        oowAckTick = tick
        ack(now: now, out: &out)
    }

    /// A pure ACK carrying the current sequence and acknowledgment numbers.
    public func ackSegment(now: UInt32) -> TCPSegmentInfo {
        segment(sequence: sndMax, flags: .ack, now: now)
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
            recover = sndUna
            sndWnd = UInt32(seg.window)  // a SYN's window is never scaled
            maxSndWnd = sndWnd
            sndWl1 = seg.sequence
            sndWl2 = seg.acknowledgment
            state = .established
            lastHeard = now
            lastActive = now  // (it held the connect deadline until now)
            idleTimer(now: now, out: &out)
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
        // RFC 7323 5.3, PAWS: a timestamp older than the last accepted one means an old
        // duplicate (or a forgery): drop it and acknowledge, unless it is a RST. A TS.Recent
        // untouched for 24 days is too old to judge by.
        if timestamps, let ts = seg.options.timestamp, !seg.flags.contains(.rst),
           Int32(bitPattern: ts.value &- tsRecent) < 0, now &- lastHeard < Self.pawsIdleLimit {
            out.append(.pawsRejected)
            outOfWindowAck(now: now, out: &out)
            return
        }
        // First: sequence number.
        guard acceptable(seg) else {
            if !seg.flags.contains(.rst) { outOfWindowAck(now: now, out: &out) }
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
                out.append(.challengeAck)
            }
            return
        }
        // Fourth: SYN in a synchronized state (RFC 5961 section 4): challenge ACK.
        if seg.flags.contains(.syn) {
            out.append(.challengeAck)
            return
        }
        // Fifth: ACK.
        guard seg.flags.contains(.ack) else { return }
        lastHeard = now
        probes = 0
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
            lastActive = now
            out.append(.connected)
        }

        // RFC 5961 section 5: an ACK for data never sent, or older than the largest window
        // ever offered, is answered with an ACK and ignored.
        if seg.acknowledgment > sndMax || seg.acknowledgment < sndUna - Int(maxSndWnd) {
            out.append(.challengeAck)
            return
        }
        if seg.acknowledgment > sndNxt {
            // After a timeout rewound SND.NXT, the peer acknowledges what it had before.
            sndNxt = seg.acknowledgment
            if pendingFIN && sndNxt == sndMax {
                pendingFIN = false
                finSent = true
            }
        }
        let window = UInt32(seg.window) << UInt32(sndScale)
        if seg.acknowledgment > sndUna {
            let acked = UInt32(seg.acknowledgment - sndUna)
            sndUna = seg.acknowledgment
            retries = 0
            if let ts = seg.options.timestamp, timestamps, ts.echo != 0 { measured(rtt: now &- ts.echo) }
            newDataAcknowledged(acked, now: now, out: &out)
            if sndUna == sndNxt { idleTimer(now: now, out: &out) } else { out.append(.armRetransmit(milliseconds: Int(rto))) }
        } else if seg.acknowledgment == sndUna, sndUna != sndNxt, seg.length == 0, window == sndWnd {
            duplicateAck(now: now, out: &out)
        }
        if sndWl1 < seg.sequence || (sndWl1 == seg.sequence && sndWl2 <= seg.acknowledgment) {
            sndWnd = window
            maxSndWnd = max(maxSndWnd, sndWnd)
            sndWl1 = seg.sequence
            sndWl2 = seg.acknowledgment
        }
        let ourFINAcked = finSent && sndUna == sndNxt
        switch state {
        case .finWait1 where ourFINAcked:
            state = .finWait2
            idleTimer(now: now, out: &out)  // the FIN-WAIT-2 timeout starts
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
        // Seventh: segment text. Data past a hole is stashed by the owner (without its FIN,
        // which the peer sends again) and acknowledged at once: the duplicate ACK that starts
        // the peer's fast retransmit of the hole.
        var advanced = false
        if seg.payloadLength > 0, state == .established || state == .finWait1 || state == .finWait2 {
            if seg.sequence > rcvNxt {
                let room = Int(rcvWnd) - (seg.sequence - rcvNxt)
                if room > 0 {
                    out.append(.stash(offset: 0, length: min(seg.payloadLength, room), sequence: seg.sequence))
                }
                ack(now: now, out: &out)
                return
            }
            if seg.sequence <= rcvNxt {
                let skip = rcvNxt - seg.sequence
                let fresh = seg.payloadLength - skip
                if fresh > 0 {
                    let take = min(fresh, Int(rcvWnd))
                    out.append(.deliver(offset: skip, length: take))
                    rcvNxt = rcvNxt + take
                    lastActive = now
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
        if advanced { out.append(.acknowledgeDelayed) }
    }

    /// The owner delivered `length` stashed bytes that continue the stream at RCV.NXT (a hole
    /// filled). It acknowledges at once (RFC 5681 4.2: an ACK for a segment that fills a gap
    /// is not delayed).
    public mutating func reassembled(_ length: Int, now: UInt32) {
        guard length > 0, state == .established || state == .finWait1 || state == .finWait2 else { return }
        rcvNxt = rcvNxt + length
        lastActive = now
    }

    // MARK: Congestion control (RFC 5681, RFC 6582)

    /// SND.UNA advanced by `acked` bytes: grow the window, or go on with fast recovery.
    mutating func newDataAcknowledged(_ acked: UInt32, now: UInt32, out: inout [TCPAction]) {
        let mss = UInt32(sendMSS)
        dupAcks = 0
        if inRecovery {
            if sndUna >= recover {
                // Full acknowledgement: deflate to ssthresh (RFC 6582 3.2 step 3, option 1,
                // bounded by what is still in flight plus one segment).
                cwnd = min(ssthresh, max(UInt32(bytesInFlight), mss) + mss)
                inRecovery = false
            } else {
                // Partial acknowledgement: the next hole is lost too; send it again now and
                // deflate by what was acknowledged (step 4).
                retransmitFirst(now: now, out: &out)
                cwnd = cwnd > acked ? cwnd - acked : 0
                if acked >= mss { cwnd += mss }
                cwnd = max(cwnd, mss)
            }
            return
        }
        if cwnd < ssthresh {
            cwnd += min(acked, mss)  // slow start (RFC 3465, L = 1 SMSS)
        } else {
            cwnd += max(1, mss * mss / max(cwnd, 1))  // congestion avoidance
        }
        cwnd = min(cwnd, 0x3fff_ffff)
    }

    mutating func duplicateAck(now: UInt32, out: inout [TCPAction]) {
        let mss = UInt32(sendMSS)
        if inRecovery {
            cwnd += mss  // each further duplicate: a segment left the network
            return
        }
        dupAcks &+= 1
        // RFC 6582 3.2 step 2: only when this loss is newer than the last recovery.
        guard dupAcks == Self.dupAckThreshold, sndUna >= recover else { return }
        ssthresh = max(UInt32(bytesInFlight) / 2, 2 * mss)
        recover = sndNxt
        inRecovery = true
        retransmitFirst(now: now, out: &out)
        cwnd = ssthresh + 3 * mss
    }

    /// Sends the oldest unacknowledged segment again (fast retransmit).
    mutating func retransmitFirst(now: UInt32, out: inout [TCPAction]) {
        let dataInFlight = bytesInFlight
        guard dataInFlight > 0 else { return }
        var d = segment(sequence: sndUna, flags: [.psh, .ack], now: now)
        d.payloadLength = min(dataInFlight, maximumSegmentPayload)
        out.append(.resendData(d))
    }

    /// ICMP said a segment starting at `sequence` was too big for the path. If that is data we
    /// have in flight (RFC 5927's check), the MSS drops to `mss` and the oldest unacknowledged
    /// data goes out again at the new size: a lost segment, not congestion (RFC 1191, as
    /// Linux's tcp_simple_retransmit). Returns whether the MSS changed.
    public mutating func pathMTUDropped(sequence: SequenceNumber, mss: UInt16, now: UInt32, out: inout [TCPAction]) -> Bool {
        guard state.isSynchronized, sequence >= sndUna, sequence < sndMax, mss < sendMSS else { return false }
        sendMSS = max(UInt16(Self.minimumMSS), mss)
        if goBackN(now: now, out: &out) { out.append(.armRetransmit(milliseconds: Int(rto))) }
        return true
    }

    /// Go back N: the oldest unacknowledged data goes out again now, and everything after it
    /// follows as the window allows (SND.NXT rewinds; a FIN sent waits to follow the data).
    /// False when no data is in flight.
    mutating func goBackN(now: UInt32, out: inout [TCPAction]) -> Bool {
        let inFlight = bytesInFlight
        guard inFlight > 0 else { return false }
        var d = segment(sequence: sndUna, flags: [.psh, .ack], now: now)
        d.payloadLength = min(inFlight, maximumSegmentPayload)
        out.append(.resendData(d))
        sndNxt = sndUna + d.payloadLength
        if finSent { finSent = false; pendingFIN = true }
        return true
    }

    /// TIME-WAIT ended: the connection is forgotten.
    public mutating func timeWaitExpired(out: inout [TCPAction]) {
        guard state == .timeWait else { return }
        state = .closed
        out.append(.closed(.normal))
    }
}
