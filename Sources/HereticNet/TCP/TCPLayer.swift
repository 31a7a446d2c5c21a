import HereticCore
import CHereticSys

/// The TCP of one interface: connections, listeners, timers and the segments between them.
public final class TCPLayer {
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
    @exclusivity(unchecked) var expired: [UInt64] = []
    @usableFromInline @exclusivity(unchecked) var nextEphemeral: UInt16 = 49_152
    /// Milliseconds, from the interface's poll.
    @usableFromInline @exclusivity(unchecked) var clock: UInt32 = 0
    /// RFC 6528's secret: a random key per layer.
    let secret: UInt64 = UInt64.random(in: 0...UInt64.max)
    public private(set) var resetsSent = 0
    /// Connections in TIME-WAIT now, the most there may be, and those closed at once because
    /// the table was full.
    public private(set) var timeWaitCount = 0
    public var timeWaitLimit = 16_384
    public private(set) var timeWaitOverflows = 0
    /// SYNs dropped because their listener's backlog of half-open connections was full (and
    /// SYN cookies were off).
    public private(set) var synBacklogDrops = 0
    /// SYN cookies (RFC 4987): with a listener's backlog full, answer SYNs statelessly with
    /// the connection's parameters encoded in our ISN; the returning ACK creates it.
    public var synCookies = true
    public internal(set) var synCookiesSent = 0
    public private(set) var synCookiesValidated = 0
    /// ACKs that looked like cookie answers and were not (answered with RST).
    public private(set) var synCookiesRejected = 0
    /// Delayed ACK (RFC 9293 3.8.6.3): how long an ACK for in-order data may wait for a
    /// reply to carry it.
    public var delayedAckMilliseconds: UInt32 = 40
    /// Connections owing a delayed ACK, oldest first, with when it is due.
    @usableFromInline @exclusivity(unchecked) var delayedAcks: [(ref: UInt64, due: UInt32)] = []
    @usableFromInline @exclusivity(unchecked) var delayedHead = 0
    public private(set) var delayedAcksSent = 0
    /// Segments sent again (timeouts, fast retransmits and partial ACKs).
    public var retransmissions: Int { retransmitCount }
    /// RFC 5961 challenge ACKs sent (answers to in-window RSTs and SYNs not at RCV.NXT, and
    /// to ACKs outside what was sent): signs of blind injection attempts.
    public var challengeAcks: Int { challengeAckCount }
    @usableFromInline @exclusivity(unchecked) var challengeAckCount = 0
    /// Persist (zero-window) and keepalive probes sent.
    public var windowProbes: Int { probeCount }
    @usableFromInline @exclusivity(unchecked) var retransmitCount = 0
    @usableFromInline @exclusivity(unchecked) var probeCount = 0
    /// TIME-WAIT connections given up to let a new outgoing connection use their port.
    public private(set) var timeWaitRecycled = 0
    /// Handler callbacks running now; connections opened inside one wait until it returns.
    @usableFromInline @exclusivity(unchecked) var callbackDepth = 0
    @usableFromInline @exclusivity(unchecked) var deferred: [() -> Void] = []
    @usableFromInline @exclusivity(unchecked) var deferredSpare: [() -> Void] = []
    /// Drained send-queue buffers kept for reuse: idle connections own none, busy ones stop
    /// going to malloc for every message.
    @usableFromInline @exclusivity(unchecked) var spareBuffers: [[UInt8]] = []
    @usableFromInline static let spareBufferLimit = 1024
    @usableFromInline static let spareBufferMaxCapacity = 65_536

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
    @exclusivity(unchecked) var lastHeapTrim: UInt32 = 0
    /// Segments built, for ACK coalescing (any segment carries the current ACK).
    @usableFromInline @exclusivity(unchecked) var segmentsSent = 0

    init(interface: Interface) { unmanagedInterface = Unmanaged.passUnretained(interface) }

    deinit { timers.release() }

    /// Lets go of every arena (they hold the layer): called when the interface goes.
    func tearDown() {
        arenas.removeAll()
        listeners.removeAll()
        connectArenas.removeAll()
        trimWanted.removeAll()
        deferred.removeAll()
        nextTick.removeAll()
    }

    /// Calls `body` with every established connection (on the interface's core), for
    /// operations that start traffic on many connections at once.
    public func forEachConnection(_ body: (TCPConnection) -> Void) {
        for a in arenas {
            for slot in a.established() {
                let ref = UInt64(a.index) << 32 | UInt64(slot)
                let (remote, localPort) = a.endpoints(slot)
                body(TCPConnection(layer: self, ref: ref, remote: remote, localPort: localPort))
            }
        }
        runDeferred()
    }

    /// Connections alive (any state but CLOSED).
    public var connectionCount: Int { arenas.reduce(0) { $0 + $1.live() } }

    @usableFromInline func enterTimeWait() -> Bool {
        guard timeWaitCount < timeWaitLimit else { timeWaitOverflows += 1; return false }
        timeWaitCount += 1
        return true
    }

    @usableFromInline func leaveTimeWait() { timeWaitCount -= 1 }

    /// Runs connects deferred by callbacks, once no callback is running.
    @usableFromInline func runDeferred() {
        guard callbackDepth == 0, !deferred.isEmpty else { return }
        while !deferred.isEmpty {
            // Two arrays trade places, so a connect per callback allocates no array.
            var work = deferredSpare
            deferredSpare = []
            swap(&work, &deferred)
            for w in work { w() }
            work.removeAll(keepingCapacity: true)
            deferredSpare = work
        }
    }

    static let ephemeralRange = 49_152...UInt16.max
    /// A send queue that drains below this many bytes makes its handler `writable`.
    public static let writableThreshold = 65_536

    /// A local port for a connection to `remote`: the next free one in the ephemeral range
    /// (RFC 6056's sequential choice); if every one is taken, one whose connection waits in
    /// TIME-WAIT is recycled; nil when all are live connections.
    @usableFromInline func ephemeralPort(for remote: TCPEndpoint) -> UInt16? {
        func next(_ p: UInt16) -> UInt16 { p == Self.ephemeralRange.upperBound ? Self.ephemeralRange.lowerBound : p + 1 }
        var port = nextEphemeral
        var recyclable: UInt16?
        for _ in 0..<Self.ephemeralRange.count {
            if listeners[port] == nil {
                guard let ref = table[Self.key(remote, port)] else {
                    nextEphemeral = next(port)
                    return port
                }
                if recyclable == nil && arena(ref).isTimeWait(UInt32(truncatingIfNeeded: ref)) { recyclable = port }
            }
            port = next(port)
        }
        guard let reuse = recyclable, let ref = table[Self.key(remote, reuse)] else { return nil }
        timeWaitRecycled += 1
        _ = arena(ref).yieldTimeWait(UInt32(truncatingIfNeeded: ref), nil)
        nextEphemeral = next(reuse)
        return reuse
    }

    @usableFromInline static func key(_ remote: TCPEndpoint, _ localPort: UInt16) -> UInt64 {
        UInt64(remote.address.raw) << 32 | UInt64(remote.port) << 16 | UInt64(localPort)
    }

    @usableFromInline func register(_ ref: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        table[Self.key(remote, localPort)] = ref
    }

    @usableFromInline func unregister(_ ref: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        let k = Self.key(remote, localPort)
        if table[k] == ref { table[k] = nil }
        let a = arena(ref), slot = Int(UInt32(truncatingIfNeeded: ref))
        if a.queues[slot].hasStash, let stash = reassembly.removeValue(forKey: ref) {
            reassemblyBytes -= stash.bytes
        }
        a.queues[slot].reset()
    }

    // MARK: Reassembly

    /// Out-of-order data of one connection, in sequence order (overlaps are trimmed when
    /// delivered). Exists only while a connection has a hole: lazy, like the send queues.
    @usableFromInline struct Reassembly {
        @usableFromInline var segments: [(sequence: SequenceNumber, bytes: [UInt8])] = []
        @usableFromInline var bytes = 0
        @usableFromInline init() {}
    }

    /// Connections with data past a hole (few at a time: holes are rare and short-lived).
    @usableFromInline @exclusivity(unchecked) var reassembly: [UInt64: Reassembly] = [:]
    @usableFromInline @exclusivity(unchecked) var reassemblyBytes = 0
    /// The most out-of-order bytes the layer holds for all its connections together (each is
    /// also bounded by its receive window); beyond it, segments are dropped and counted, and
    /// the peer sends them again.
    public var reassemblyLimit = 64 << 20
    /// Segments kept past a hole and later delivered; segments dropped for the limit.
    public var reassembledSegments: Int { reassembledCount }
    @usableFromInline @exclusivity(unchecked) var reassembledCount = 0
    public private(set) var reassemblyDrops = 0

    /// Keeps a copy of out-of-order `data` at `sequence`; false when over the limit.
    @usableFromInline func stash(_ ref: UInt64, _ sequence: SequenceNumber, _ data: UnsafeRawBufferPointer) -> Bool {
        guard reassemblyBytes + data.count <= reassemblyLimit else {
            reassemblyDrops += 1
            return false
        }
        var r = reassembly.removeValue(forKey: ref) ?? Reassembly()
        // In sequence order; a segment already held at the same place (a duplicate) is kept.
        var i = r.segments.count
        while i > 0 && r.segments[i - 1].sequence > sequence { i -= 1 }
        if i > 0 && r.segments[i - 1].sequence == sequence && r.segments[i - 1].bytes.count >= data.count {
            reassembly[ref] = r
            return true
        }
        r.segments.insert((sequence, Array(data)), at: i)
        r.bytes += data.count
        reassemblyBytes += data.count
        reassembly[ref] = r
        return true
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
        return SequenceNumber(f &+ clock &* 250)
    }

    @usableFromInline func arena(_ ref: UInt64) -> AnyTCPArena { arenas[Int(ref >> 32)] }

    /// Whether `ref` still names a connection (calls through a `TCPConnection` kept past its
    /// connection's end are ignored instead of touching freed or trimmed slots).
    @usableFromInline func isLive(_ ref: UInt64) -> Bool {
        holds(ref) && arena(ref).state(UInt32(truncatingIfNeeded: ref)) != .closed
    }

    /// Whether `ref`'s slot exists (it may be free: its state then reads closed).
    @usableFromInline func holds(_ ref: UInt64) -> Bool {
        let a = Int(ref >> 32)
        return a < arenas.count && Int(UInt32(truncatingIfNeeded: ref)) < arenas[a].queues.count
    }

    // MARK: API

    /// Accepts connections on `port`; each gets a handler from `makeHandler`.
    @inlinable func listen<H: TCPHandler>(port: UInt16, backlog: Int, receiveWindow: Int = 65_535,
                                          makeHandler: @escaping () -> H) throws(NetError) {
        guard listeners[port] == nil else { throw .addressInUse(port) }
        let a = TCPArena<H>(layer: self, index: UInt16(arenas.count), makeHandler: makeHandler)
        a.backlog = max(1, backlog)
        a.receiveWindow = UInt32(clamping: max(0, receiveWindow))
        arenas.append(a)
        listeners[port] = a
    }

    /// Opens a connection to `remote` with `handler`; returns the local port used. With a
    /// timeout, an attempt still unanswered then closes as `.timedOut`.
    @inlinable func connect<H: TCPHandler>(to remote: TCPEndpoint, timeoutMilliseconds: Int? = nil, receiveWindow: Int = 65_535,
                                           handler: H) -> UInt16 {
        let window = UInt32(clamping: max(0, receiveWindow))
        guard let port = ephemeralPort(for: remote) else {
            // Every local port to this peer is a live connection: refused, told on the next
            // tick (an application that retries at once cannot spin the loop).
            nextTick.append {
                var h = handler
                h.closed(.refused)
            }
            return 0
        }
        if callbackDepth > 0 {
            // Inside a handler callback: open it once the callback has returned.
            deferred.append { [unowned(unsafe) self] in
                self.open(to: remote, localPort: port, timeoutMilliseconds: timeoutMilliseconds, receiveWindow: window, handler: handler)
            }
            return port
        }
        open(to: remote, localPort: port, timeoutMilliseconds: timeoutMilliseconds, receiveWindow: window, handler: handler)
        return port
    }

    @inlinable func open<H: TCPHandler>(to remote: TCPEndpoint, localPort port: UInt16, timeoutMilliseconds: Int?,
                                        receiveWindow: UInt32, handler: H) {
        let a: TCPArena<H>
        if let existing = connectArenas[ObjectIdentifier(H.self)] {
            a = unsafeDowncast(existing, to: TCPArena<H>.self)
        } else {
            a = TCPArena<H>(layer: self, index: UInt16(arenas.count), makeHandler: nil)
            arenas.append(a)
            connectArenas[ObjectIdentifier(H.self)] = a
        }
        _ = a.connect(to: remote, localPort: port, timeoutMilliseconds: timeoutMilliseconds, receiveWindow: receiveWindow,
                      handler: handler)
    }

    @usableFromInline func send(_ ref: UInt64, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard holds(ref) else { return false }  // (a freed slot is not in use: refused there)
        return Unmanaged.passUnretained(arenas[Int(ref >> 32)])._withUnsafeGuaranteedRef {
            $0.sendBytes(UInt32(truncatingIfNeeded: ref), bytes)
        }
    }

    @usableFromInline func close(_ ref: UInt64) {
        guard isLive(ref) else { return }
        let a = arena(ref), slot = UInt32(truncatingIfNeeded: ref)
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

    @usableFromInline func abort(_ ref: UInt64) {
        guard isLive(ref) else { return }
        var out = takeActions()
        defer { giveBack(&out) }
        let a = arena(ref), slot = UInt32(truncatingIfNeeded: ref)
        a.run(slot) { $0.abort(out: &out) }
        a.applyErased(slot, out)
    }

    @usableFromInline func setNoDelay(_ ref: UInt64, _ noDelay: Bool) {
        guard isLive(ref) else { return }
        arena(ref).queues[Int(UInt32(truncatingIfNeeded: ref))].noDelay = noDelay
        if noDelay { pump(ref) }
    }

    @usableFromInline func setIdleSettings(_ ref: UInt64, _ change: (inout TCB) -> Void) {
        guard isLive(ref) else { return }
        var out = takeActions()
        defer { giveBack(&out) }
        let a = arena(ref), slot = UInt32(truncatingIfNeeded: ref)
        a.run(slot) { tcb in
            change(&tcb)
            tcb.idleSettingsChanged(now: clock, out: &out)
        }
        a.applyErased(slot, out)
    }

    @usableFromInline func setReceiveWindow(_ ref: UInt64, _ bytes: Int) {
        guard isLive(ref) else { return }
        let a = arena(ref), slot = UInt32(truncatingIfNeeded: ref)
        var update: TCPSegmentInfo?
        a.run(slot) { tcb in
            let old = tcb.rcvWnd
            tcb.rcvWnd = UInt32(clamping: max(0, bytes))
            // Receiver-side silly window avoidance (RFC 1122 4.2.3.3): announce only a window
            // that opened from (almost) closed or by a full segment.
            if tcb.rcvWnd > old, old < UInt32(TCB.ourMSS) || tcb.rcvWnd - old >= UInt32(TCB.ourMSS),
               tcb.state == .established || tcb.state == .finWait1 || tcb.state == .finWait2 {
                update = tcb.ackSegment(now: clock)
            }
        }
        if let update { emit(update, ref: ref, payload: nil) }
    }

    /// Marks the connection as owing an ACK, sent when due unless a segment carries it first.
    @usableFromInline func delayAck(_ ref: UInt64) {
        arena(ref).queues[Int(UInt32(truncatingIfNeeded: ref))].ackOwed = true
        delayedAcks.append((ref, clock &+ delayedAckMilliseconds))
    }

    /// Sends the delayed ACKs that are due (their connections sent nothing to carry them).
    func flushDelayedAcks() {
        while delayedHead < delayedAcks.count {
            let (ref, due) = delayedAcks[delayedHead]
            guard Int32(bitPattern: clock &- due) >= 0 else { break }
            delayedHead += 1
            let a = arena(ref), slot = UInt32(truncatingIfNeeded: ref)
            // Carried already, or the connection is gone (its slot maybe trimmed away).
            guard Int(slot) < a.queues.count, a.queues[Int(slot)].ackOwed else { continue }
            var ack: TCPSegmentInfo?
            a.run(slot) { ack = $0.ackSegment(now: clock) }
            if let ack {
                delayedAcksSent += 1
                emit(ack, ref: ref, payload: nil)
            }
        }
        if delayedHead == delayedAcks.count {
            delayedAcks.removeAll(keepingCapacity: delayedAcks.capacity <= 65_536)
            delayedHead = 0
        } else if delayedHead > 4096 && delayedHead * 2 > delayedAcks.count {
            delayedAcks.removeFirst(delayedHead)
            delayedHead = 0
        }
    }

    @usableFromInline func queued(_ ref: UInt64) -> Int {
        guard isLive(ref) else { return 0 }
        return arena(ref).queues[Int(UInt32(truncatingIfNeeded: ref))].pending
    }

    /// Sends queued data as the window allows; FIN once the queue has gone out.
    @usableFromInline func pump(_ ref: UInt64) {
        arena(ref).pumpSlot(UInt32(truncatingIfNeeded: ref))
    }

    /// Keeps a drained send buffer for reuse (a bounded few; idle connections own none).
    @usableFromInline func keepSpare(_ drained: consuming [UInt8]) {
        guard spareBuffers.count < Self.spareBufferLimit && drained.capacity <= Self.spareBufferMaxCapacity else { return }
        drained.removeAll(keepingCapacity: true)
        spareBuffers.append(drained)  // moved in: no retain
    }

    // MARK: Segments

    /// A TCP segment for this interface (checksum already verified).
    func segmentArrived(_ tcp: TCPSegment, source: IPv4Address) {
        let options: TCPOptions
        do { options = try tcp.options() } catch {
            interface.counters.tcpErrors += 1
            return
        }
        let seg = TCPSegmentInfo(sequence: SequenceNumber(tcp.sequenceNumber),
                                 acknowledgment: SequenceNumber(tcp.acknowledgmentNumber), flags: tcp.flags,
                                 window: tcp.window, options: options, payloadLength: tcp.payloadLength)
        let remote = TCPEndpoint(source, tcp.sourcePort)
        defer { runDeferred() }
        if let ref = table[Self.key(remote, tcp.destinationPort)] {
            // RFC 1122 4.2.2.13: a new SYN beyond the old connection's sequence space may
            // reopen a 4-tuple that waits in TIME-WAIT.
            let isNewSYN = seg.flags.contains(.syn) && !seg.flags.contains(.ack) && !seg.flags.contains(.rst)
            if !(isNewSYN && arena(ref).yieldTimeWait(UInt32(truncatingIfNeeded: ref), seg.sequence)) {
                arena(ref).arrived(UInt32(truncatingIfNeeded: ref), seg, UnsafeRawPointer(tcp.payload))
                return
            }
        }
        if let listener = listeners[tcp.destinationPort], !seg.flags.contains(.rst) {
            if seg.flags.contains(.syn) && !seg.flags.contains(.ack) {
                guard listener.halfOpen < listener.backlog else {
                    // The backlog is full (a SYN flood, or a slow peer population): answer
                    // statelessly with a cookie, or drop and count. Legitimate peers retry.
                    if synCookies {
                        sendCookie(for: seg, from: remote, localPort: tcp.destinationPort)
                    } else {
                        synBacklogDrops += 1
                    }
                    return
                }
                _ = listener.accept(seg, remote, tcp.destinationPort)
                return
            }
            if seg.flags.contains(.ack) && !seg.flags.contains(.syn) && synCookies {
                if let mss = validCookie(seg, from: remote, localPort: tcp.destinationPort),
                   let slot = listener.acceptCookie(seg, remote, tcp.destinationPort, mss) {
                    synCookiesValidated += 1
                    if seg.length > 0 { listener.arrived(slot, seg, UnsafeRawPointer(tcp.payload)) }
                    return
                }
                synCookiesRejected += 1
            }
        }
        // RFC 9293 3.10.7.1: nothing here. Answer anything but a RST with a RST.
        guard !seg.flags.contains(.rst) else { return }
        if seg.flags.contains(.ack) {
            sendReset(to: remote, localPort: tcp.destinationPort, sequence: seg.acknowledgment, acknowledgment: nil)
        } else {
            sendReset(to: remote, localPort: tcp.destinationPort, sequence: SequenceNumber(0),
                      acknowledgment: seg.sequence + seg.length)
        }
    }

    func sendReset(to remote: TCPEndpoint, localPort: UInt16, sequence: SequenceNumber, acknowledgment: SequenceNumber?) {
        let seg = TCPSegmentInfo(sequence: sequence, acknowledgment: acknowledgment ?? SequenceNumber(0),
                                 flags: acknowledgment == nil ? .rst : [.rst, .ack], window: 0)
        resetsSent += 1
        build(seg, remote: remote, localPort: localPort, payload: nil)
    }

    @usableFromInline func emit(_ seg: TCPSegmentInfo, ref: UInt64, payload: UnsafeRawPointer?) {
        let a = arena(ref)
        let slot = Int(UInt32(truncatingIfNeeded: ref))
        a.queues[slot].ackOwed = false  // this segment carries the ACK
        let (remote, localPort) = a.endpoints(UInt32(slot))
        build(seg, remote: remote, localPort: localPort, payload: payload)
    }

    @usableFromInline func build(_ seg: TCPSegmentInfo, remote: TCPEndpoint, localPort: UInt16, payload: UnsafeRawPointer?) {
        unmanagedInterface._withUnsafeGuaranteedRef { interface in
            let header = TCPSegment.minimumHeaderLength + seg.options.encodedLength
            let total = header + seg.payloadLength
            guard var p = interface.pool.allocate(length: total) else { interface.counters.noBuffers += 1; return }
            let base = interface.pool.bytes(p)
            if let payload, seg.payloadLength > 0 { (base + header).copyMemory(from: payload, byteCount: seg.payloadLength) }
            TCPSegment.emit(into: base, sourcePort: localPort, destinationPort: remote.port,
                            sequenceNumber: seg.sequence.raw, acknowledgmentNumber: seg.acknowledgment.raw,
                            flags: seg.flags, window: seg.window, options: seg.options,
                            payloadLength: seg.payloadLength, source: interface.address, destination: remote.address,
                            checksum: interface.fillChecksums)
            p.length = UInt16(total)
            segmentsSent += 1
            interface.sendIPv4(p, to: remote.address, protocol: IPProtocol.tcp)
        }
    }

    /// Advances the timers to `now` (milliseconds) and runs what expired.
    func tick(now: UInt64) {
        clock = UInt32(truncatingIfNeeded: now)
        if !nextTick.isEmpty {
            let work = nextTick
            nextTick.removeAll()
            callbackDepth += 1
            for w in work { w() }
            callbackDepth -= 1
            runDeferred()
        }
        if delayedHead < delayedAcks.count { flushDelayedAcks() }
        if !trimWanted.isEmpty {
            var released = false
            for a in trimWanted { released = a.trim() || released }
            trimWanted.removeAll()
            // Chunks of slots went back to the heap: hand free heap pages to the kernel too
            // (at most once a second; glibc keeps freed memory otherwise).
            if released && clock &- lastHeapTrim >= 1000 {
                lastHeapTrim = clock
                heretic_heap_trim()
            }
        }
        guard timers.count > 0 else { return }
        timers.advance(to: now, into: &expired)
        guard !expired.isEmpty else { return }  // most turns: nothing due
        for ref in expired { arena(ref).timerFired(UInt32(truncatingIfNeeded: ref)) }
        expired.removeAll(keepingCapacity: true)
        runDeferred()
    }
}
