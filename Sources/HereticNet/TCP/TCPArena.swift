import HereticCore
import CHereticSys

/// Type-erased access to one handler type's connections. The entry points are closures
/// made where the handler type is known (an `@inlinable` initializer runs in the caller's
/// module), so the layer reaches specialised code without generic dispatch.
@usableFromInline class AnyTCPArena {
    /// The arena's number in its layer (the high half of its connections' references).
    @usableFromInline var index: UInt16 = 0
    /// For listeners: connections accepted and still half-open (SYN-RECEIVED), and the most
    /// there may be; SYNs beyond it are dropped and counted.
    @usableFromInline var halfOpen = 0
    @usableFromInline var backlog = Int.max
    /// The receive window offered on accepted connections' SYN-ACKs.
    @usableFromInline var receiveWindow: UInt32 = 65_535
    @usableFromInline @exclusivity(unchecked) var arrived: (UInt32, TCPSegmentInfo, UnsafeRawPointer?) -> Void = { _, _, _ in }
    @usableFromInline @exclusivity(unchecked) var timerFired: (UInt32) -> Void = { _ in }
    @usableFromInline @exclusivity(unchecked) var run: (UInt32, (inout TCB) -> Void) -> Void = { _, _ in }
    @usableFromInline @exclusivity(unchecked) var applyActions: (UInt32, [TCPAction]) -> Void = { _, _ in }
    @usableFromInline @exclusivity(unchecked) var sendBytes: (UInt32, UnsafeRawBufferPointer) -> Bool = { _, _ in false }
    @usableFromInline @exclusivity(unchecked) var pumpSlot: (UInt32) -> Void = { _ in }
    @usableFromInline @exclusivity(unchecked) var endpoints: (UInt32) -> (TCPEndpoint, UInt16) = { _ in (TCPEndpoint(.any, 0), 0) }
    @usableFromInline @exclusivity(unchecked) var state: (UInt32) -> TCPState = { _ in .closed }
    @usableFromInline @exclusivity(unchecked) var accept: (TCPSegmentInfo, TCPEndpoint, UInt16) -> UInt32? = { _, _, _ in nil }
    @usableFromInline @exclusivity(unchecked) var acceptCookie: (TCPSegmentInfo, TCPEndpoint, UInt16, UInt16) -> UInt32? = { _, _, _, _ in nil }
    @usableFromInline @exclusivity(unchecked) var live: () -> Int = { 0 }
    /// Trims the freed tail; true when memory went back.
    @usableFromInline @exclusivity(unchecked) var trim: () -> Bool = { false }
    @usableFromInline var trimWanted = false
    /// For a SYN that may reuse a TIME-WAIT 4-tuple: whether the slot is in TIME-WAIT with an
    /// older receive sequence than `sequence`, and if so, forgets it.
    @usableFromInline @exclusivity(unchecked) var yieldTimeWait: (UInt32, SequenceNumber?) -> Bool = { _, _ in false }
    @usableFromInline @exclusivity(unchecked) var isTimeWait: (UInt32) -> Bool = { _ in false }
    @usableFromInline @exclusivity(unchecked) var established: () -> [UInt32] = { [] }
    /// Send queues by slot: empty (no allocation) while a connection has nothing unacked.
    @usableFromInline let queues = ChunkedStore<SendQueue>()
    @usableFromInline init() {}
}

@usableFromInline final class TCPArena<H: TCPHandler>: AnyTCPArena {
    @usableFromInline struct Slot {
        @usableFromInline var tcb: TCB
        @usableFromInline var handler: H
        @usableFromInline var remote: TCPEndpoint
        @usableFromInline var localPort: UInt16
        @usableFromInline var timer: TimerHandle?
        @usableFromInline var inUse: Bool
        @usableFromInline var inTimeWait = false
        /// Accepted from a listener and not yet established (counts against its backlog).
        @usableFromInline var halfOpen = false

        @inlinable init(tcb: TCB, handler: H, remote: TCPEndpoint, localPort: UInt16, timer: TimerHandle?, inUse: Bool) {
            self.tcb = tcb
            self.handler = handler
            self.remote = remote
            self.localPort = localPort
            self.timer = timer
            self.inUse = inUse
        }
    }

    /// Strong, so calls into the layer on the hot path need no retain: the layer breaks the
    /// cycle in `tearDown()` when its interface goes.
    @usableFromInline let layer: TCPLayer
    @usableFromInline let makeHandler: (() -> H)?
    /// Connections by slot, at addresses that never change.
    @usableFromInline let slots = ChunkedStore<Slot>()
    @usableFromInline @exclusivity(unchecked) var free: [UInt32] = []
    @usableFromInline @exclusivity(unchecked) var count = 0

    @inlinable init(layer: TCPLayer, index: UInt16, makeHandler: (() -> H)?) {
        self.layer = layer
        self.makeHandler = makeHandler
        super.init()
        self.index = index
        // Unretained: the arena owns these closures. Through a guaranteed reference, calls
        // on the hot path cost no reference counting.
        let me = Unmanaged.passUnretained(self)
        arrived = { slot, seg, payload in me._withUnsafeGuaranteedRef { $0.segmentArrived(slot, seg, payload) } }
        timerFired = { slot in me._withUnsafeGuaranteedRef { $0.fire(slot) } }
        run = { slot, body in me._withUnsafeGuaranteedRef { body(&$0.slots[Int(slot)].tcb) } }
        applyActions = { slot, actions in me._withUnsafeGuaranteedRef { $0.apply(slot, actions, payload: nil) } }
        sendBytes = { slot, bytes in me._withUnsafeGuaranteedRef { $0.send(slot, bytes) } }
        pumpSlot = { slot in me._withUnsafeGuaranteedRef { $0.pump(slot) } }
        endpoints = { slot in
            me._withUnsafeGuaranteedRef { ($0.slots[Int(slot)].remote, $0.slots[Int(slot)].localPort) }
        }
        state = { slot in
            me._withUnsafeGuaranteedRef { $0.slots[Int(slot)].inUse ? $0.slots[Int(slot)].tcb.state : .closed }
        }
        accept = { [unowned(unsafe) self] in self.acceptSYN($0, from: $1, localPort: $2) }
        acceptCookie = { [unowned(unsafe) self] in self.acceptCookie($0, from: $1, localPort: $2, mss: $3) }
        live = { [unowned(unsafe) self] in self.count }
        trim = { [unowned(unsafe) self] in self.trimTail() }
        yieldTimeWait = { [unowned(unsafe) self] slot, sequence in
            guard self.inTimeWait(slot) else { return false }
            if let sequence, sequence <= self.slots[Int(slot)].tcb.rcvNxt { return false }
            self.finish(slot, .normal)
            return true
        }
        isTimeWait = { [unowned(unsafe) self] in self.inTimeWait($0) }
        established = { [unowned(unsafe) self] in
            self.slots.indices.filter { self.slots[$0].inUse && self.slots[$0].tcb.state == .established }.map(UInt32.init)
        }
    }

    @inlinable func allocate(_ slot: Slot) -> UInt32 {
        count += 1
        // Entries beyond a trimmed tail, or duplicates, are stale: skip them.
        while let i = free.popLast() {
            guard Int(i) < slots.count, !slots[Int(i)].inUse else { continue }
            slots[Int(i)] = slot
            queues[Int(i)].reset()
            return i
        }
        slots.append(slot)
        queues.append(SendQueue())
        return UInt32(slots.count - 1)
    }

    @inlinable func ref(_ slot: UInt32) -> UInt64 { UInt64(index) << 32 | UInt64(slot) }

    @inlinable func acceptSYN(_ syn: TCPSegmentInfo, from remote: TCPEndpoint, localPort: UInt16) -> UInt32? {
        guard let make = makeHandler else { return nil }
        var out = layer.takeActions()
        defer { layer.giveBack(&out) }
        let iss = layer.initialSequenceNumber(remote: remote, localPort: localPort)
        let tcb = TCB.accept(syn, iss: iss, now: layer.clock, receiveWindow: receiveWindow, out: &out)
        let slot = allocate(Slot(tcb: tcb, handler: make(), remote: remote, localPort: localPort, timer: nil, inUse: true))
        slots[Int(slot)].halfOpen = true
        halfOpen += 1
        layer.register(ref(slot), remote: remote, localPort: localPort)
        apply(slot, out, payload: nil)
        return slot
    }

    /// A SYN cookie came back in `ack`: the connection exists from now on, established.
    @inlinable func acceptCookie(_ ack: TCPSegmentInfo, from remote: TCPEndpoint, localPort: UInt16, mss: UInt16) -> UInt32? {
        guard let make = makeHandler else { return nil }
        let tcb = TCB.fromCookie(ack, mss: mss, now: layer.clock)
        let slot = allocate(Slot(tcb: tcb, handler: make(), remote: remote, localPort: localPort, timer: nil, inUse: true))
        layer.register(ref(slot), remote: remote, localPort: localPort)
        apply(slot, [.connected], payload: nil)
        return slot
    }

    /// Starts an active open with `handler`.
    @inlinable func connect(to remote: TCPEndpoint, localPort: UInt16, timeoutMilliseconds: Int?, receiveWindow: UInt32,
                            handler: H) -> UInt32 {
        var tcb = TCB()
        tcb.rcvWnd = receiveWindow
        var out = layer.takeActions()
        defer { layer.giveBack(&out) }
        tcb.connect(iss: layer.initialSequenceNumber(remote: remote, localPort: localPort), now: layer.clock,
                    timeoutMilliseconds: timeoutMilliseconds, out: &out)
        let slot = allocate(Slot(tcb: tcb, handler: handler, remote: remote, localPort: localPort, timer: nil, inUse: true))
        layer.register(ref(slot), remote: remote, localPort: localPort)
        apply(slot, out, payload: nil)
        return slot
    }

    @inlinable func segmentArrived(_ slot: UInt32, _ seg: TCPSegmentInfo, _ payload: UnsafeRawPointer?) {
        var out = layer.takeActions()
        defer { layer.giveBack(&out) }
        let before = slots[Int(slot)].tcb.sndUna
        slots[Int(slot)].tcb.segmentArrived(seg, now: layer.clock, out: &out)
        let advanced = slots[Int(slot)].tcb.sndUna - before
        let wasAbove = queues[Int(slot)].pending >= TCPLayer.writableThreshold
        if advanced > 0 { acknowledged(slot, advanced) }
        apply(slot, out, payload: payload)
        guard slots[Int(slot)].inUse else { return }
        if queues[Int(slot)].hasStash { drainStash(slot) }
        guard slots[Int(slot)].inUse else { return }
        pump(slot)
        if advanced > 0 && wasAbove && queues[Int(slot)].pending < TCPLayer.writableThreshold
            && slots[Int(slot)].tcb.canSendData {
            var c = connection(slot)
            layer.callbackDepth += 1
            slots[Int(slot)].handler.writable(&c)
            layer.callbackDepth -= 1
        }
    }

    @inlinable func fire(_ slot: UInt32) {
        guard slots[Int(slot)].inUse else { return }
        slots[Int(slot)].timer = nil
        var out = layer.takeActions()
        defer { layer.giveBack(&out) }
        let unsent = queues[Int(slot)].pending - slots[Int(slot)].tcb.bytesInFlight
        slots[Int(slot)].tcb.timerFired(now: layer.clock, unsent: max(0, unsent), out: &out)
        apply(slot, out, payload: nil)
        if slots[Int(slot)].inUse { pump(slot) }
    }

    /// Hands the application the stashed data that now continues the stream (a hole was
    /// filled), acknowledging at once; keeps what still lies past a hole.
    @inlinable func drainStash(_ slot: UInt32) {
        let s = Int(slot), r = ref(slot)
        guard var stash = layer.reassembly.removeValue(forKey: r) else {
            queues[s].hasStash = false
            return
        }
        layer.reassemblyBytes -= stash.bytes
        var delivered = false, i = 0, consumed = 0
        while i < stash.segments.count, slots[s].inUse {
            let rcvNxt = slots[s].tcb.rcvNxt
            let (sequence, bytes) = stash.segments[i]
            if sequence > rcvNxt { break }  // still behind a hole
            i += 1
            consumed += bytes.count
            let skip = rcvNxt - sequence
            guard bytes.count > skip else { continue }  // all of it came in order meanwhile
            slots[s].tcb.reassembled(bytes.count - skip, now: layer.clock)
            layer.reassembledCount += 1
            delivered = true
            bytes.withUnsafeBytes { b in
                var c = connection(slot)
                layer.callbackDepth += 1
                slots[s].handler.received(UnsafeRawBufferPointer(rebasing: b[skip...]), &c)
                layer.callbackDepth -= 1
            }
        }
        guard slots[s].inUse else { return }
        stash.segments.removeFirst(i)
        if stash.segments.isEmpty {
            queues[s].hasStash = false
        } else {
            stash.bytes -= consumed
            layer.reassemblyBytes += stash.bytes
            layer.reassembly[r] = stash
        }
        if delivered { emit(slot, slots[s].tcb.ackSegment(now: layer.clock), payload: nil) }
    }

    // MARK: The send path (typed, so a message goes out without erased calls)

    /// Queues `bytes` (copied) and sends what the window allows. False when the connection
    /// cannot send any more.
    @inlinable func send(_ slot: UInt32, _ bytes: UnsafeRawBufferPointer) -> Bool {
        let s = Int(slot)
        guard slots[s].inUse else { return false }
        let state = slots[s].tcb.state
        guard state == .established || state == .closeWait || state == .synSent || state == .synReceived,
              !queues[s].closeRequested else { return false }
        if queues[s].bytes.capacity == 0, let spare = layer.spareBuffers.popLast() {
            queues[s].bytes = spare
        }
        queues[s].bytes.append(contentsOf: bytes)
        pump(slot)
        return true
    }

    /// Sends queued data as the window allows; FIN once the queue has gone out.
    @inlinable func pump(_ slot: UInt32) {
        let s = Int(slot)
        guard !queues[s].isIdle, slots[s].tcb.canSendData else { return }
        let pending = queues[s].pending, noDelay = queues[s].noDelay, clock = layer.clock
        // Everything queued is in flight and no FIN is due: nothing to do (the common case
        // after an ACK that left data outstanding).
        if pending == slots[s].tcb.bytesInFlight && !slots[s].tcb.pendingFIN
            && !(queues[s].closeRequested && !slots[s].tcb.finPending) { return }
        var out = layer.takeActions()
        defer { layer.giveBack(&out) }
        let mss = slots[s].tcb.maximumSegmentPayload
        while true {
            let inFlight = slots[s].tcb.bytesInFlight
            let unsent = pending - inFlight
            let room = min(slots[s].tcb.sendWindowAvailable, mss)
            guard unsent > 0, room > 0 else { break }
            let length = min(unsent, room)
            // Nagle (RFC 1122 4.2.3.4): with data unacknowledged, a segment shorter than a
            // full MSS waits for the ACK so that small writes coalesce.
            if length < mss && inFlight > 0 && !noDelay { break }
            slots[s].tcb.send(length: length, now: clock, out: &out)
        }
        if pending > slots[s].tcb.bytesInFlight && slots[s].tcb.sndWnd == 0 { slots[s].tcb.windowClosed(out: &out) }
        if pending == slots[s].tcb.bytesInFlight {  // nothing left to (re)send
            if slots[s].tcb.pendingFIN {
                slots[s].tcb.resendFIN(now: clock, out: &out)
            } else if queues[s].closeRequested && !slots[s].tcb.finPending {
                slots[s].tcb.close(now: clock, out: &out)
                queues[s].closeRequested = false
            }
        }
        if !out.isEmpty { apply(slot, out, payload: nil) }
    }

    /// `count` more bytes (or SYN/FIN) were acknowledged: drop them from the queue.
    @inlinable func acknowledged(_ slot: UInt32, _ count: Int) {
        let s = Int(slot)
        guard !queues[s].bytes.isEmpty else { return }
        let acked = min(queues[s].bytes.count, queues[s].acked + count)
        if acked == queues[s].bytes.count {
            // Lazy IO: the connection gives its buffer up; the layer keeps a bounded few.
            var drained: [UInt8] = []
            swap(&drained, &queues[s].bytes)
            queues[s].acked = 0
            layer.keepSpare(drained)
        } else if acked > 65_536 {
            queues[s].bytes.removeFirst(acked)
            queues[s].acked = 0
        } else {
            queues[s].acked = acked
        }
    }

    /// Sends a segment of this connection (it carries the current ACK).
    @inlinable func emit(_ slot: UInt32, _ seg: TCPSegmentInfo, payload: UnsafeRawPointer?) {
        queues[Int(slot)].ackOwed = false
        layer.build(seg, remote: slots[Int(slot)].remote, localPort: slots[Int(slot)].localPort, payload: payload)
    }

    /// Sends a data segment whose bytes come from the connection's queue.
    @inlinable func emitData(_ slot: UInt32, _ seg: TCPSegmentInfo) {
        let s = Int(slot)
        let offset = seg.sequence - slots[s].tcb.sndUna
        guard offset >= 0, offset + seg.payloadLength <= queues[s].pending else { return }
        let start = queues[s].acked + offset
        queues[s].bytes.withUnsafeBytes { b in
            emit(slot, seg, payload: b.baseAddress! + start)
        }
    }

    /// Carries out what the state machine asked for, calling the handler for events.
    @inlinable func apply(_ slot: UInt32, _ actions: [TCPAction], payload: UnsafeRawPointer?) {
        let r = ref(slot)
        let sentBefore = layer.segmentsSent
        var ackWanted = false, ackDelayed = false
        defer {
            // One fresh ACK after everything else, unless a segment already carried it. A
            // delayed one waits (for a reply to carry it) unless one is already owed.
            if ackWanted || ackDelayed, slots[Int(slot)].inUse, layer.segmentsSent == sentBefore {
                if ackWanted || queues[Int(slot)].ackOwed {
                    emit(slot, slots[Int(slot)].tcb.ackSegment(now: layer.clock), payload: nil)
                } else {
                    layer.delayAck(r)
                }
            }
        }
        for action in actions {
            guard slots[Int(slot)].inUse else { return }
            switch action {
            case .acknowledge:
                ackWanted = true
            case .acknowledgeDelayed:
                ackDelayed = true
            case .challengeAck:
                ackWanted = true
                layer.challengeAckCount += 1
            case .send(let seg):
                if seg.flags == .ack && seg.payloadLength == 0 && seg.sequence == slots[Int(slot)].tcb.sndUna - 1 {
                    layer.probeCount += 1  // a persist or keepalive probe
                }
                emit(slot, seg, payload: nil)
            case .sendData(let seg):
                emitData(slot, seg)
            case .resendData(let seg):
                layer.retransmitCount += 1
                emitData(slot, seg)
            case .stash(let offset, let length, let sequence):
                guard let p = payload else { continue }
                if layer.stash(r, sequence, UnsafeRawBufferPointer(start: p + offset, count: length)) {
                    queues[Int(slot)].hasStash = true
                }
            case .deliver(let offset, let length):
                guard let p = payload else { continue }
                var c = connection(slot)
                layer.callbackDepth += 1
                slots[Int(slot)].handler.received(UnsafeRawBufferPointer(start: p + offset, count: length), &c)
                layer.callbackDepth -= 1
            case .connected:
                if slots[Int(slot)].halfOpen {
                    slots[Int(slot)].halfOpen = false
                    halfOpen -= 1
                }
                var c = connection(slot)
                layer.callbackDepth += 1
                slots[Int(slot)].handler.connected(&c)
                layer.callbackDepth -= 1
            case .peerClosed:
                var c = connection(slot)
                layer.callbackDepth += 1
                slots[Int(slot)].handler.peerClosed(&c)
                layer.callbackDepth -= 1
            case .closed(let reason):
                finish(slot, reason)
            case .startTimeWait(let ms):
                if !layer.enterTimeWait() {
                    // The TIME-WAIT table is full: forget this connection now (counted), but
                    // first acknowledge the peer's FIN, or it would retransmit it into a RST.
                    emit(slot, slots[Int(slot)].tcb.ackSegment(now: layer.clock), payload: nil)
                    finish(slot, .normal)
                    return
                }
                setTimer(slot, afterMilliseconds: ms)
                if !slots[Int(slot)].inTimeWait {
                    // For the application the connection is over: both FINs went by. Only the
                    // stack keeps the 4-tuple, for stray segments.
                    slots[Int(slot)].inTimeWait = true
                    var handler = slots[Int(slot)].handler
                    layer.callbackDepth += 1
                    handler.closed(.normal)
                    layer.callbackDepth -= 1
                    slots[Int(slot)].handler = handler
                }
            case .armRetransmit(let ms):
                setTimer(slot, afterMilliseconds: ms)
            case .cancelRetransmit:
                // A handler called earlier in this round may have set an idle timeout or
                // keepalive (in `connected`, say) after the control block chose to cancel:
                // the timer follows the settings as they are now.
                if slots[Int(slot)].tcb.keepaliveSeconds != 0 || slots[Int(slot)].tcb.idleTimeoutSeconds != 0,
                   let due = slots[Int(slot)].tcb.idleDeadline() {
                    setTimer(slot, afterMilliseconds: max(0, Int(Int32(bitPattern: due &- layer.clock))))
                } else {
                    setTimer(slot, afterMilliseconds: nil)
                }
            }
        }
    }

    /// (Re)arms the connection's one timer to fire after `ms` milliseconds (rounded up a
    /// tick, so never early), or stops it (nil).
    @inlinable func setTimer(_ slot: UInt32, afterMilliseconds ms: Int?) {
        if let t = slots[Int(slot)].timer { layer.timers.cancel(t) }
        slots[Int(slot)].timer = ms.map { layer.timers.arm(at: UInt64(layer.clock) + UInt64($0) + 1, payload: ref(slot)) }
    }

    @inlinable func connection(_ slot: UInt32) -> TCPConnection {
        TCPConnection(layer: layer, ref: ref(slot), remote: slots[Int(slot)].remote, localPort: slots[Int(slot)].localPort)
    }

    @inlinable func finish(_ slot: UInt32, _ reason: TCPCloseReason) {
        let s = slots[Int(slot)]
        if let t = s.timer { layer.timers.cancel(t) }
        if s.inTimeWait { layer.leaveTimeWait() }
        if s.halfOpen { halfOpen -= 1 }
        slots[Int(slot)].inUse = false
        slots[Int(slot)].inTimeWait = false
        slots[Int(slot)].timer = nil
        layer.unregister(ref(slot), remote: s.remote, localPort: s.localPort)
        free.append(slot)
        count -= 1
        if Int(slot) == slots.count - 1 && !trimWanted {
            trimWanted = true  // done between segments, never under a borrowed slot
            layer.trimWanted.append(self)
        }
        // The handler runs on its own copy: the slot is free, and whatever it does (even
        // opening connections) cannot touch storage it is borrowing. A connection that went
        // through TIME-WAIT told its handler when it entered it.
        guard !s.inTimeWait else { return }
        var handler = s.handler
        layer.callbackDepth += 1
        handler.closed(reason)
        layer.callbackDepth -= 1
        // Keep what the handler did (it may have let go of references); the slot cannot have
        // been reused meanwhile, as connections opened in callbacks wait until they return.
        if !slots[Int(slot)].inUse { slots[Int(slot)].handler = handler }
    }

    /// Gives back the free slots at the end of the arena, and the chunks that held them: after
    /// a crowd of connections has gone, the process shrinks again.
    @inlinable func trimTail() -> Bool {
        trimWanted = false
        var n = slots.count
        while n > 0 && !slots[n - 1].inUse { n -= 1 }
        guard n < slots.count else { return false }
        let released = slots.truncate(to: n)
        queues.truncate(to: n)
        // Free-list entries past the end are skipped when popped; drop them in bulk once
        // they are most of the list, so its memory goes too.
        if free.count > 4096 && n * 2 < free.count {
            free = free.filter { Int($0) < n }
        }
        return released
    }

    /// Whether the connection in `slot` sits in TIME-WAIT (and may give way to a new SYN).
    @inlinable func inTimeWait(_ slot: UInt32) -> Bool { slots[Int(slot)].inUse && slots[Int(slot)].inTimeWait }
}

extension AnyTCPArena {
    /// Applies actions through the typed arena (which knows the handler type).
    @usableFromInline func applyErased(_ slot: UInt32, _ actions: [TCPAction]) {
        guard !actions.isEmpty else { return }
        applyActions(slot, actions)
    }
}
