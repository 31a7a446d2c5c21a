import HereticTransport
import HereticCore
import CHereticSys

/// The TCP of one interface: connections, listeners, timers and the segments between them.
///
/// Everything a peer can make it hold is bounded, and each bound is counted when it bites:
/// connections per listener half-open (`backlog`, then SYN cookies), TIME-WAIT entries
/// (`timeWaitLimit`), out-of-order data (`reassembly`'s budgets), send queues (each
/// connection's `sendBufferSize`, and the process-wide `SendMemory` cap), challenge ACKs
/// (`challengeAckLimit` a second).
public final class TCPLayer: ConnectionEngine {
    /// The interface owns the layer; held unretained so that calls into it cost no
    /// reference counting.
    @usableFromInline let unmanagedInterface: Unmanaged<Interface>
    @usableFromInline var interface: Interface { unmanagedInterface.takeUnretainedValue() }
    @usableFromInline @exclusivity(unchecked) var arenas: [AnyTCPArena] = []
    @usableFromInline @exclusivity(unchecked) var listeners: [UInt16: AnyTCPArena] = [:]
    /// Arenas for actively opened connections, one per handler type.
    @usableFromInline @exclusivity(unchecked) var connectArenas: [ObjectIdentifier: AnyTCPArena] = [:]
    /// (remote address, remote port, local port) to connection.
    @exclusivity(unchecked) var table = ConnectionTable()
    @usableFromInline @exclusivity(unchecked) var timers = TimerWheel()
    /// The applications' per-connection timers, and the handles of those armed.
    @exclusivity(unchecked) var userTimers = TimerWheel()
    @usableFromInline @exclusivity(unchecked) var userTimerHandles: [UInt64: TimerHandle] = [:]
    @exclusivity(unchecked) var expired: [UInt64] = []
    /// Milliseconds, from the interface's poll: `now` in full (timers are armed on it, so
    /// nothing wraps), and `clock`, the 32 bits the control blocks keep (compared modulo
    /// 2^32), counted from the layer's first tick. So the timestamps a connection sends start
    /// near 0 and only grow, even for one opened before the first tick (whose clock reads 0),
    /// whatever the host's clock reads: a peer's PAWS never sees them go back.
    @usableFromInline @exclusivity(unchecked) var now: UInt64 = 0
    @usableFromInline @exclusivity(unchecked) var clock: UInt32 = 0
    @exclusivity(unchecked) var epoch: UInt64?
    /// RFC 6528's secret: a random key per layer (also keys RFC 6056's port choice).
    let secret: UInt64 = UInt64.random(in: 0...UInt64.max)
    /// The MSS this layer announces and the most any connection sends: what the device's MTU
    /// carries after the IPv4 and TCP headers, and what a packet buffer holds.
    public let maximumSegmentSize: UInt16
    public private(set) var resetsSent = 0
    /// Segments whose TCP options did not parse (dropped).
    public private(set) var malformedOptions = 0
    /// Connections in TIME-WAIT now, the most there may be, and those closed at once because
    /// the table was full.
    public internal(set) var timeWaitCount = 0
    public var timeWaitLimit = 16_384
    public internal(set) var timeWaitOverflows = 0
    /// Connections that have entered TIME-WAIT since the layer began.
    public internal(set) var timeWaitEntered = 0
    /// SYNs dropped because their listener's backlog of half-open connections was full (and
    /// SYN cookies were off).
    public private(set) var synBacklogDrops = 0
    /// SYN cookies (RFC 4987): with a listener's backlog full, answer SYNs statelessly with
    /// the connection's parameters encoded in our ISN; the returning ACK creates it.
    public var synCookies = true
    public internal(set) var synCookiesSent = 0
    public internal(set) var synCookiesValidated = 0
    /// ACKs that looked like cookie answers and were not (answered with RST).
    public internal(set) var synCookiesRejected = 0
    /// Delayed ACK (RFC 9293 3.8.6.3): how long an ACK for in-order data may wait for a
    /// reply to carry it.
    public var delayedAckMilliseconds: UInt32 = 40
    /// Connections owing a delayed ACK, oldest first, with when it is due.
    @usableFromInline @exclusivity(unchecked) var delayedAcks: [(ref: UInt64, due: UInt32)] = []
    @usableFromInline @exclusivity(unchecked) var delayedHead = 0
    public internal(set) var delayedAcksSent = 0
    /// Segments sent again (timeouts, fast retransmits and partial ACKs).
    public var retransmissions: Int { retransmitCount }
    /// RFC 5961 challenge ACKs sent (answers to in-window RSTs and SYNs not at RCV.NXT, and
    /// to ACKs outside what was sent): signs of blind injection attempts.
    public var challengeAcks: Int { challengeAckCount }
    @usableFromInline @exclusivity(unchecked) var challengeAckCount = 0
    /// At most about this many challenge ACKs (and PAWS answers) go out a second; the rest
    /// are counted in `challengeAcksSuppressed`. As in Linux, each second's allowance is drawn
    /// at random between half and one and a half times the limit, so the count cannot serve
    /// as a side channel (CVE-2016-5696).
    public var challengeAckLimit = 1000
    public private(set) var challengeAcksSuppressed = 0
    @exclusivity(unchecked) var challengeSecond: UInt64 = .max
    @exclusivity(unchecked) var challengeAllowance = 0
    /// ACKs not sent for out-of-window segments (or PAWS rejects), by each connection's
    /// 512 ms limit.
    public var outOfWindowAcksSuppressed: Int { ackSuppressedCount }
    @usableFromInline @exclusivity(unchecked) var ackSuppressedCount = 0
    /// Segments dropped by PAWS (RFC 7323): timestamps older than the connection's last.
    public var pawsDrops: Int { pawsDropCount }
    @usableFromInline @exclusivity(unchecked) var pawsDropCount = 0
    /// Persist (zero-window) and keepalive probes sent.
    public var windowProbes: Int { probeCount }
    @usableFromInline @exclusivity(unchecked) var retransmitCount = 0
    @usableFromInline @exclusivity(unchecked) var probeCount = 0
    /// TIME-WAIT connections given up to let a new outgoing connection use their port.
    public internal(set) var timeWaitRecycled = 0
    /// Connections refused because an arena had no slot left (2^28 per handler type).
    @usableFromInline @exclusivity(unchecked) var arenaFullDrops = 0
    /// ICMP "fragmentation needed" that lowered a connection's MSS, and ICMP errors ignored
    /// (no such connection, a sequence number it never sent, an implausible MTU).
    public internal(set) var pathMTUUpdates = 0
    public internal(set) var icmpErrorsIgnored = 0
    /// Handler callbacks running now; connections opened inside one send their SYN once it
    /// has returned.
    @usableFromInline @exclusivity(unchecked) var callbackDepth = 0
    @usableFromInline @exclusivity(unchecked) var deferredConnects: [(ref: UInt64, timeout: Int?)] = []

    // MARK: Send queues

    /// The most a connection's send queue holds, unless set per connection
    /// (`TCPConnection.setSendBufferSize`): a send beyond it takes what fits.
    public var sendBufferSize = 256 << 10
    /// Sends that took less than asked (the connection's buffer or the process-wide cap).
    public var sendBufferFull: Int { sendBufferFullCount }
    @usableFromInline @exclusivity(unchecked) var sendBufferFullCount = 0
    /// The process-wide cap this layer's queues are charged to, and its account there.
    @usableFromInline @exclusivity(unchecked) var sendCredit: SendCredit
    /// Sends refused by the process-wide cap.
    public var sendCapRefusals: Int { sendCredit.refusals }
    /// Bytes this layer's send queues and spare buffers hold.
    public var sendBufferBytes: Int { sendCredit.held }
    /// Connections refused by the cap, told `writable` once memory is back under it.
    @usableFromInline @exclusivity(unchecked) var capWaiters: [UInt64] = []
    @exclusivity(unchecked) var nextCapCheck: UInt64 = 0
    /// Drained send-queue buffers kept for reuse (charged to the cap while kept): idle
    /// connections own none, busy ones stop going to malloc for every message.
    @usableFromInline @exclusivity(unchecked) var spareBuffers: [[UInt8]] = []
    @usableFromInline static let spareBufferLimit = 256
    @usableFromInline static let spareBufferMaxCapacity = 65_536

    // MARK: Out-of-order data

    @usableFromInline @exclusivity(unchecked) var reassembly = ReassemblyStore()
    /// Bytes of out-of-order data held now, by every connection (capacities and bookkeeping).
    public var reassemblyBytes: Int { reassembly.held }
    /// The most out-of-order bytes the layer holds for all its connections together; each
    /// connection also holds at most `reassemblyLimitPerConnection` and its receive window.
    public var reassemblyLimit: Int {
        get { reassembly.limit }
        set { reassembly.limit = newValue }
    }
    public var reassemblyLimitPerConnection: Int {
        get { reassembly.perConnectionLimit }
        set { reassembly.perConnectionLimit = newValue }
    }
    /// Pieces kept past a hole and later delivered; pieces dropped for a budget; bytes that
    /// arrived again while held.
    public var reassembledSegments: Int { reassembly.deliveredCount }
    public var reassemblyDrops: Int { reassembly.drops }
    public var reassemblyDuplicateBytes: Int { reassembly.duplicateBytes }

    /// Action arrays reused across calls (each nested call takes its own), so handling a
    /// segment allocates none.
    @usableFromInline @exclusivity(unchecked) var actionArrays: [[TCPAction]] = []

    /// The one most calls use, moved out and back (cheaper than the pool's pop and push).
    @usableFromInline @exclusivity(unchecked) var actionSpare: [TCPAction] = []
    @usableFromInline @exclusivity(unchecked) var actionSpareTaken = false

    @usableFromInline func takeActions() -> [TCPAction] {
        var a: [TCPAction] = []
        if !actionSpareTaken {
            actionSpareTaken = true
            swap(&a, &actionSpare)
            if a.capacity == 0 { a.reserveCapacity(8) }
            return a
        }
        if let pooled = actionArrays.popLast() { return pooled }
        a.reserveCapacity(8)
        return a
    }

    @usableFromInline func giveBack(_ actions: inout [TCPAction]) {
        // A few plain values: popping them is cheaper than the generic removeAll.
        while !actions.isEmpty { actions.removeLast() }
        if actionSpareTaken {
            // Any array will do as the spare (nested calls give theirs back first).
            swap(&actions, &actionSpare)
            actionSpareTaken = false
        } else if actionArrays.count < 64 {
            actionArrays.append(actions)
        }
    }

    /// Arenas whose last slots were freed, trimmed on the next tick.
    @usableFromInline @exclusivity(unchecked) var trimWanted: [AnyTCPArena] = []

    /// Work for the next tick (refusals), run once per tick.
    @usableFromInline @exclusivity(unchecked) var nextTick: [() -> Void] = []
    @exclusivity(unchecked) var lastHeapTrim: UInt64 = 0
    /// Segments built, for ACK coalescing (any segment carries the current ACK).
    @usableFromInline @exclusivity(unchecked) var segmentsSent = 0
    /// RFC 6056 (algorithm 4): per-bucket counters that move each destination's next port.
    @exclusivity(unchecked) var portBuckets = [UInt16](repeating: 0, count: 256)

    init(interface: Interface, sendMemory: SendMemory = .shared) {
        unmanagedInterface = Unmanaged.passUnretained(interface)
        sendCredit = SendCredit(sendMemory)
        let carried = interface.device.mtu - IPv4Packet.minimumHeaderLength - TCPSegment.minimumHeaderLength
        maximumSegmentSize = UInt16(clamping: max(TCB.minimumMSS, min(carried, Self.bufferPayloadLimit)))
    }

    /// The most TCP payload a packet buffer holds: after its headroom (and the 256 bytes an
    /// AF_XDP device keeps before a received frame), Ethernet, IPv4 and the largest TCP header.
    static let bufferPayloadLimit = PacketPool.bufferSize - 256 - 14 - 20 - 60

    deinit {
        timers.release()
        userTimers.release()
        for b in spareBuffers { sendCredit.refund(b.capacity) }
        spareBuffers.removeAll()
        sendCredit.close()
    }

    /// Lets go of every arena (they hold the layer): called when the interface goes.
    func tearDown() {
        for a in arenas {
            for i in a.queues.indices where a.queues[i].bytes.capacity > 0 { release(&a.queues[i].bytes) }
        }
        arenas.removeAll()
        listeners.removeAll()
        connectArenas.removeAll()
        trimWanted.removeAll()
        deferredConnects.removeAll()
        nextTick.removeAll()
    }

    /// Calls `body` with every established connection (on the interface's core), for
    /// operations that start traffic on many connections at once.
    public func forEachConnection(_ body: (TCPConnectionHandle) -> Void) {
        for a in arenas {
            for ref in a.established() {
                let (remote, localPort) = a.endpoints(ConnectionRef.slot(ref))
                body(TCPConnectionHandle(engine: self, id: ref, remote: remote, localPort: localPort))
            }
        }
        runDeferred()
    }

    /// Connections alive (any state but CLOSED).
    public var connectionCount: Int { arenas.reduce(0) { $0 + $1.live() } }

    /// Connections in TIME-WAIT, counted by looking at every slot (`timeWaitCount` is kept as
    /// they come and go; the two agree unless the bookkeeping is wrong).
    public var timeWaitSlots: Int { arenas.reduce(0) { $0 + $1.timeWaitSlots() } }

    /// Whether a challenge ACK may go out now (RFC 5961 section 7's rate limit).
    @usableFromInline func mayChallenge() -> Bool {
        let second = now / 1000
        if second != challengeSecond {
            challengeSecond = second
            let limit = max(1, challengeAckLimit)
            challengeAllowance = limit / 2 + Int.random(in: 0..<limit)
        }
        guard challengeAllowance > 0 else {
            challengeAcksSuppressed += 1
            return false
        }
        challengeAllowance -= 1
        return true
    }

    /// Sends the SYNs of connections opened inside callbacks, once no callback is running.
    @usableFromInline func runDeferred() {
        guard callbackDepth == 0, !deferredConnects.isEmpty else { return }
        var i = 0
        while i < deferredConnects.count {
            let (ref, timeout) = deferredConnects[i]
            i += 1
            if holds(ref) { arena(ref).startConnect(ref, timeout) }
        }
        deferredConnects.removeAll(keepingCapacity: deferredConnects.capacity <= 4096)
    }

    /// Tells `handler` its connection was refused, on the next tick (an application that
    /// retries at once cannot spin the loop).
    @usableFromInline func refuseLater<H: TCPHandler>(_ handler: H) {
        nextTick.append {
            var h = handler
            h.closed(.refused)
        }
    }

    /// A send queue that drains below this many bytes (or half its limit, if smaller) makes
    /// a held-back handler `writable`.
    public static let writableThreshold = 65_536

    // MARK: Send buffers

    /// Grows a send queue's buffer to hold `needed` bytes, charging the growth to the
    /// process-wide cap; false (unchanged) when the cap refuses it.
    @usableFromInline func grow(_ bytes: inout [UInt8], to needed: Int) -> Bool {
        let old = bytes.capacity
        let target = max(needed, 2 * old, 2048)
        guard sendCredit.charge(target - old) else { return false }
        bytes.reserveCapacity(target)
        let got = bytes.capacity
        if got > target { sendCredit.forceCharge(got - target) }
        if got < target { sendCredit.refund(target - got) }
        return true
    }

    /// Takes a drained queue's buffer: kept as a spare (a bounded few) or freed, its memory
    /// given back to the cap.
    @inlinable func release(_ bytes: inout [UInt8]) {
        let capacity = bytes.capacity
        guard capacity > 0 else { return }
        var drained: [UInt8] = []
        swap(&drained, &bytes)
        if spareBuffers.count < Self.spareBufferLimit && capacity <= Self.spareBufferMaxCapacity {
            drained.removeAll(keepingCapacity: true)
            spareBuffers.append(consume drained)
        } else {
            sendCredit.refund(capacity)
        }
    }

    /// Tells connections the cap refused that there is room again (checked every 10 ms while
    /// any wait, so refusals cannot make the loop spin).
    func wakeCapWaiters() {
        guard now >= nextCapCheck else { return }
        nextCapCheck = now &+ 10
        guard sendCredit.canGrow else { return }
        let waiting = capWaiters
        capWaiters.removeAll()
        callbackDepth += 1
        for ref in waiting where holds(ref) { arena(ref).notifyWritable(ref) }
        callbackDepth -= 1
        runDeferred()
    }

    /// RFC 6528: ISN = M + F(4-tuple, secret), M a 4-microsecond clock.
    @usableFromInline func initialSequenceNumber(remote: TCPEndpoint, localPort: UInt16) -> SequenceNumber {
        var h = Hasher()
        h.combine(secret)
        h.combine(interface.address.raw)
        h.combine(localPort)
        h.combine(remote.address.raw)
        h.combine(remote.port)
        let f = UInt32(truncatingIfNeeded: h.finalize())
        return SequenceNumber(f &+ UInt32(truncatingIfNeeded: now &* 250))
    }

    @usableFromInline func arena(_ ref: UInt64) -> AnyTCPArena { arenas[ConnectionRef.arena(ref)] }

    /// Whether `ref` still names an open connection: references kept past their
    /// connection's end are ignored instead of touching freed, trimmed or reused slots.
    @usableFromInline func isLive(_ ref: UInt64) -> Bool { holds(ref) && arena(ref).isLive(ref) }

    /// Whether `ref`'s arena exists (its slot may be gone or reused: see `isLive`).
    @usableFromInline func holds(_ ref: UInt64) -> Bool { ConnectionRef.arena(ref) < arenas.count }

    // MARK: API

    /// Accepts connections on `port`; each gets a handler from `makeHandler`.
    @inlinable @discardableResult
    func listen<H: TCPHandler>(port requested: UInt16, backlog: Int, receiveWindow: Int = 65_535,
                               keepalive: TCPKeepalive? = nil,
                               makeHandler: @escaping () -> H) throws(NetError) -> UInt16 {
        var port = requested
        if port == 0 {
            guard let free = Self.ephemeralRange.first(where: { listeners[$0] == nil }) else {
                throw .device("no free TCP port to listen on")
            }
            port = free
        }
        guard listeners[port] == nil else { throw .addressInUse(port) }
        guard arenas.count < ConnectionRef.maxArenas else { throw .device("more than \(ConnectionRef.maxArenas) TCP handler arenas") }
        let a = TCPArena<H>(layer: self, index: UInt16(arenas.count), makeHandler: makeHandler)
        a.backlog = max(1, backlog)
        a.receiveWindow = UInt32(clamping: max(0, receiveWindow))
        a.keepalive = keepalive
        arenas.append(a)
        listeners[port] = a
        return port
    }

    /// Stops accepting on `port`: SYNs to it are answered with RST from now on; connections
    /// already accepted (their arena) go on.
    public func stopListening(port: UInt16) { listeners[port] = nil }

    /// Opens a connection to `remote` with `handler`; returns the local port used and the
    /// connection's reference (0 and 0 when no port or slot was free: the handler then hears
    /// `closed(.refused)` on the next tick). With a timeout, an attempt still unanswered then
    /// closes as `.timedOut`.
    @inlinable func connect<H: TCPHandler>(to remote: TCPEndpoint, timeoutMilliseconds: Int? = nil, receiveWindow: Int = 65_535,
                                           handler: H) -> (port: UInt16, ref: UInt64) {
        let window = UInt32(clamping: max(0, receiveWindow))
        refreshClock()
        guard let port = ephemeralPort(for: remote) else {
            // Every local port to this peer is a live connection.
            refuseLater(handler)
            return (0, 0)
        }
        let a: TCPArena<H>
        if let existing = connectArenas[ObjectIdentifier(H.self)] {
            a = unsafeDowncast(existing, to: TCPArena<H>.self)
        } else {
            guard arenas.count < ConnectionRef.maxArenas else {
                refuseLater(handler)
                return (0, 0)
            }
            a = TCPArena<H>(layer: self, index: UInt16(arenas.count), makeHandler: nil)
            arenas.append(a)
            connectArenas[ObjectIdentifier(H.self)] = a
        }
        let ref = a.connect(to: remote, localPort: port, timeoutMilliseconds: timeoutMilliseconds, receiveWindow: window,
                            handler: handler)
        return ref == 0 ? (0, 0) : (port, ref)
    }

    public func isOpen(_ ref: UInt64) -> Bool { isLive(ref) }

    public func send(_ ref: UInt64, _ bytes: UnsafeRawBufferPointer) -> Int {
        guard holds(ref) else { return 0 }
        return Unmanaged.passUnretained(arenas[ConnectionRef.arena(ref)])._withUnsafeGuaranteedRef {
            $0.sendBytes(ref, bytes)
        }
    }

    public func send(_ ref: UInt64, gathering parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> Int {
        guard holds(ref) else { return 0 }
        return Unmanaged.passUnretained(arenas[ConnectionRef.arena(ref)])._withUnsafeGuaranteedRef {
            $0.sendGathering(ref, parts)
        }
    }

    public func setKeepalive(_ ref: UInt64, _ keepalive: TCPKeepalive?) {
        setIdleSettings(ref) { $0.setKeepalive(keepalive) }
    }

    public func setIdleTimeout(_ ref: UInt64, _ seconds: Int) {
        setIdleSettings(ref) { $0.idleTimeoutSeconds = UInt16(clamping: max(0, seconds)) }
    }

    /// Arms (or with nil stops) the application's timer of a connection: one per connection,
    /// on a wheel of its own, its handle kept only while armed.
    public func setTimer(_ ref: UInt64, _ milliseconds: Int?) {
        if let old = userTimerHandles.removeValue(forKey: ref) { userTimers.cancel(old) }
        guard let ms = milliseconds, isLive(ref), !arena(ref).isTimeWait(ConnectionRef.slot(ref)) else { return }
        refreshClock()
        userTimerHandles[ref] = userTimers.arm(at: now &+ UInt64(max(0, ms)) &+ 1, payload: ref)
    }

    public func close(_ ref: UInt64) {
        guard isLive(ref) else { return }
        let a = arena(ref), slot = ConnectionRef.slot(ref)
        if a.queues[Int(slot)].pending > 0 {
            a.queues[Int(slot)].closeRequested = true
            pump(ref)
        } else {
            var out = takeActions()
            defer { giveBack(&out) }
            a.run(slot) { $0.close(now: clock, out: &out) }
            a.applyErased(slot, out)
        }
    }

    public func abort(_ ref: UInt64) {
        guard isLive(ref) else { return }
        var out = takeActions()
        defer { giveBack(&out) }
        let a = arena(ref), slot = ConnectionRef.slot(ref)
        a.run(slot) { $0.abort(out: &out) }
        a.applyErased(slot, out)
    }

    public func setNoDelay(_ ref: UInt64, _ noDelay: Bool) {
        guard isLive(ref) else { return }
        arena(ref).queues[Int(ConnectionRef.slot(ref))].noDelay = noDelay
        if noDelay { pump(ref) }
    }

    public func setSendBufferSize(_ ref: UInt64, _ bytes: Int) {
        guard isLive(ref) else { return }
        let kib = bytes <= 0 ? 0 : max(1, min(Int(UInt16.max), (bytes + 1023) >> 10))
        arena(ref).queues[Int(ConnectionRef.slot(ref))].limitKiB = UInt16(kib)
    }

    @usableFromInline func setIdleSettings(_ ref: UInt64, _ change: (inout TCB) -> Void) {
        guard isLive(ref) else { return }
        refreshClock()
        var out = takeActions()
        defer { giveBack(&out) }
        let a = arena(ref), slot = ConnectionRef.slot(ref)
        a.run(slot) { tcb in
            change(&tcb)
            tcb.idleSettingsChanged(now: clock, out: &out)
        }
        a.applyErased(slot, out)
    }

    public func setReceiveWindow(_ ref: UInt64, _ bytes: Int) {
        guard isLive(ref) else { return }
        let a = arena(ref), slot = ConnectionRef.slot(ref)
        let mss = UInt32(maximumSegmentSize)
        var update: TCPSegmentInfo?
        a.run(slot) { tcb in
            let old = tcb.rcvWnd
            tcb.rcvWnd = UInt32(clamping: max(0, bytes))
            // Receiver-side silly window avoidance (RFC 1122 4.2.3.3): announce only a window
            // that opened from (almost) closed or by a full segment.
            if tcb.rcvWnd > old, old < mss || tcb.rcvWnd - old >= mss,
               tcb.state == .established || tcb.state == .finWait1 || tcb.state == .finWait2 {
                update = tcb.ackSegment(now: clock)
            }
        }
        if let update { emit(update, ref: ref, payload: nil) }
    }

    public func canSend(_ ref: UInt64) -> Bool {
        guard isLive(ref) else { return false }
        let a = arena(ref), slot = ConnectionRef.slot(ref)
        let state = a.state(slot)
        return (state == .established || state == .closeWait || state == .synSent || state == .synReceived)
            && !a.queues[Int(slot)].closeRequested
    }

    public func isHeldBack(_ ref: UInt64) -> Bool {
        isLive(ref) && arena(ref).queues[Int(ConnectionRef.slot(ref))].wantWritable
    }

    public func queued(_ ref: UInt64) -> Int {
        guard isLive(ref) else { return 0 }
        return arena(ref).queues[Int(ConnectionRef.slot(ref))].pending
    }

    /// Sends queued data as the window allows; FIN once the queue has gone out.
    @usableFromInline func pump(_ ref: UInt64) {
        arena(ref).pumpSlot(ConnectionRef.slot(ref))
    }

    // MARK: Segments

    /// A TCP segment for this interface (checksum verified; source and ports not martian).
    func segmentArrived(_ tcp: TCPSegment, source: IPv4Address) {
        var options: TCPOptions
        do { options = try tcp.options() } catch {
            malformedOptions += 1
            return
        }
        let flags = tcp.flags
        if flags.contains(.syn) {
            // The peer's MSS, capped to what this interface carries (RFC 9293 3.7.1: 536
            // when it names none).
            options.maximumSegmentSize = min(options.maximumSegmentSize ?? 536, maximumSegmentSize)
        }
        let seg = TCPSegmentInfo(sequence: SequenceNumber(tcp.sequenceNumber),
                                 acknowledgment: SequenceNumber(tcp.acknowledgmentNumber), flags: flags,
                                 window: tcp.window, options: options, payloadLength: tcp.payloadLength)
        let remote = TCPEndpoint(source, tcp.sourcePort)
        defer { runDeferred() }
        if let ref = table[Self.key(remote, tcp.destinationPort)] {
            // RFC 1122 4.2.2.13: a new SYN beyond the old connection's sequence space may
            // reopen a 4-tuple that waits in TIME-WAIT.
            let isNewSYN = flags.contains(.syn) && !flags.contains(.ack) && !flags.contains(.rst)
            if !(isNewSYN && arena(ref).yieldTimeWait(ConnectionRef.slot(ref), seg.sequence)) {
                arena(ref).arrived(ConnectionRef.slot(ref), seg, UnsafeRawPointer(tcp.payload))
                return
            }
        }
        if let listener = listeners[tcp.destinationPort], !flags.contains(.rst) {
            if flags.contains(.syn) && !flags.contains(.ack) {
                guard listener.halfOpen < listener.backlog else {
                    // The backlog is full (a SYN flood, or a slow peer population): answer
                    // statelessly with a cookie, or drop and count. Legitimate peers retry.
                    if synCookies {
                        listener.lastCookieSent = now
                        sendCookie(for: seg, from: remote, localPort: tcp.destinationPort)
                    } else {
                        synBacklogDrops += 1
                    }
                    return
                }
                _ = listener.accept(seg, remote, tcp.destinationPort)
                return
            }
            if flags.contains(.ack) && !flags.contains(.syn) && synCookies, let sent = listener.lastCookieSent,
               now &- sent < 2 * Self.cookiePeriod {
                if let mss = validCookie(seg, from: remote, localPort: tcp.destinationPort),
                   let slot = listener.acceptCookie(seg, remote, tcp.destinationPort, min(mss, maximumSegmentSize)) {
                    synCookiesValidated += 1
                    if seg.length > 0 { listener.arrived(slot, seg, UnsafeRawPointer(tcp.payload)) }
                    return
                }
                synCookiesRejected += 1
            }
        }
        // RFC 9293 3.10.7.1: nothing here. Answer anything but a RST with a RST.
        guard !flags.contains(.rst) else { return }
        if flags.contains(.ack) {
            sendReset(to: remote, localPort: tcp.destinationPort, sequence: seg.acknowledgment, acknowledgment: nil)
        } else {
            sendReset(to: remote, localPort: tcp.destinationPort, sequence: SequenceNumber(0),
                      acknowledgment: seg.sequence + seg.length)
        }
    }

    /// ICMP destination unreachable about a segment we sent (`quoted`: its IPv4 header and
    /// at least 8 bytes of TCP). "Fragmentation needed" lowers the connection's MSS, but only
    /// if it names a connection and a sequence number it has in flight, and an MTU of at
    /// least 576 (RFC 5927: otherwise anyone could shrink our segments blindly). Other codes
    /// are soft errors for TCP (RFC 1122 4.2.3.9): counted, the connection goes on.
    func destinationUnreachable(code: UInt8, nextHopMTU: Int, quoted ip: IPv4Packet, quotedLength: Int) {
        guard ip.proto == IPProtocol.tcp, ip.source == interface.address, quotedLength >= ip.headerLength + 8 else {
            icmpErrorsIgnored += 1
            return
        }
        let t = UnsafeRawPointer(ip.payload)
        let localPort = t.be16(0), remote = TCPEndpoint(ip.destination, t.be16(2))
        let sequence = SequenceNumber(t.be32(4))
        guard code == ICMPv4Message.fragmentationNeeded, nextHopMTU >= 576,
              let ref = table[Self.key(remote, localPort)] else {
            icmpErrorsIgnored += 1
            return
        }
        let mss = UInt16(clamping: nextHopMTU - IPv4Packet.minimumHeaderLength - TCPSegment.minimumHeaderLength)
        var out = takeActions()
        defer { giveBack(&out) }
        let a = arena(ref), slot = ConnectionRef.slot(ref)
        var lowered = false
        a.run(slot) { lowered = $0.pathMTUDropped(sequence: sequence, mss: mss, now: clock, out: &out) }
        if lowered { pathMTUUpdates += 1 } else { icmpErrorsIgnored += 1 }
        a.applyErased(slot, out)
        runDeferred()
    }

    func sendReset(to remote: TCPEndpoint, localPort: UInt16, sequence: SequenceNumber, acknowledgment: SequenceNumber?) {
        let seg = TCPSegmentInfo(sequence: sequence, acknowledgment: acknowledgment ?? SequenceNumber(0),
                                 flags: acknowledgment == nil ? .rst : [.rst, .ack], window: 0)
        resetsSent += 1
        build(seg, remote: remote, localPort: localPort, payload: nil)
    }

    @usableFromInline func emit(_ seg: TCPSegmentInfo, ref: UInt64, payload: UnsafeRawPointer?) {
        let a = arena(ref)
        let slot = Int(ConnectionRef.slot(ref))
        a.queues[slot].ackOwed = false  // this segment carries the ACK
        let (remote, localPort) = a.endpoints(UInt32(slot))
        build(seg, remote: remote, localPort: localPort, payload: payload)
    }

    @usableFromInline func build(_ seg: TCPSegmentInfo, remote: TCPEndpoint, localPort: UInt16, payload: UnsafeRawPointer?) {
        var options = seg.options
        // A SYN announces the MSS this interface carries (the control block names a default).
        if seg.flags.contains(.syn), options.maximumSegmentSize != nil { options.maximumSegmentSize = maximumSegmentSize }
        unmanagedInterface._withUnsafeGuaranteedRef { interface in
            let header = TCPSegment.minimumHeaderLength + options.encodedLength
            let total = header + seg.payloadLength
            guard var p = interface.pool.allocate(length: total) else { interface.counters.noBuffers += 1; return }
            let base = interface.pool.bytes(p)
            if let payload, seg.payloadLength > 0 { (base + header).copyMemory(from: payload, byteCount: seg.payloadLength) }
            TCPSegment.emit(into: base, sourcePort: localPort, destinationPort: remote.port,
                            sequenceNumber: seg.sequence.raw, acknowledgmentNumber: seg.acknowledgment.raw,
                            flags: seg.flags, window: seg.window, options: options,
                            payloadLength: seg.payloadLength, source: interface.address, destination: remote.address,
                            checksum: interface.fillChecksums)
            p.length = UInt16(total)
            segmentsSent += 1
            interface.sendIPv4(p, to: remote.address, protocol: IPProtocol.tcp)
        }
    }
}
