import HereticTransport
import HereticCore
import CHereticSys

/// A reference to one connection of a `TCPLayer`: its arena, its slot, and the slot's
/// generation when the reference was made. A slot is reused once its connection ends, with a
/// new generation, so a reference kept past its connection (a handle in application state, a
/// delayed ACK in a queue) never reaches the slot's next occupant. Generation 0 is never
/// given: the reference 0 names nothing.
@usableFromInline enum ConnectionRef {
    @usableFromInline static let slotBits: UInt64 = 28
    @usableFromInline static let generationBits: UInt64 = 24
    /// Slots per arena, and arenas per layer, that references can name.
    @usableFromInline static let maxSlots = 1 << 28
    @usableFromInline static let maxArenas = 1 << 12

    @inlinable static func make(arena: UInt16, generation: UInt32, slot: UInt32) -> UInt64 {
        UInt64(arena) << (slotBits + generationBits) | UInt64(generation) << slotBits | UInt64(slot)
    }
    @inlinable static func arena(_ ref: UInt64) -> Int { Int(truncatingIfNeeded: ref >> (slotBits + generationBits)) }
    @inlinable static func slot(_ ref: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: ref & (1 << slotBits - 1)) }
    @inlinable static func generation(_ ref: UInt64) -> UInt32 {
        UInt32(truncatingIfNeeded: ref >> slotBits & (1 << generationBits - 1))
    }
}

/// Type-erased access to one handler type's connections. The entry points are closures
/// made where the handler type is known (an `@inlinable` initializer runs in the caller's
/// module), so the layer reaches specialised code without generic dispatch.
@usableFromInline class AnyTCPArena {
    /// The arena's number in its layer (the top bits of its connections' references).
    @usableFromInline var index: UInt16 = 0
    /// For listeners: connections accepted and still half-open (SYN-RECEIVED), and the most
    /// there may be; SYNs beyond it get SYN cookies, or are dropped and counted.
    @usableFromInline var halfOpen = 0
    @usableFromInline var backlog = Int.max
    /// The receive window offered on accepted connections' SYN-ACKs.
    @usableFromInline var receiveWindow: UInt32 = 65_535
    /// For listeners: when a SYN cookie was last sent (the layer's clock). Only an ACK that
    /// arrives while a cookie could still be outstanding is checked as one (Linux does the
    /// same): otherwise a blind ACK flood would cost a keyed hash per segment.
    @usableFromInline var lastCookieSent: UInt64?
    /// For listeners: keepalive for every accepted connection (nil: off), as Linux's
    /// SO_KEEPALIVE set on a listening socket is inherited by what it accepts.
    @usableFromInline var keepalive: TCPKeepalive?
    @usableFromInline @exclusivity(unchecked) var arrived: (UInt32, TCPSegmentInfo, UnsafeRawPointer?) -> Void = { _, _, _ in }
    @usableFromInline @exclusivity(unchecked) var timerFired: (UInt64) -> Void = { _ in }
    /// The application's timer of a connection went off.
    @usableFromInline @exclusivity(unchecked) var userTimerFired: (UInt64) -> Void = { _ in }
    @usableFromInline @exclusivity(unchecked) var run: (UInt32, (inout TCB) -> Void) -> Void = { _, _ in }
    @usableFromInline @exclusivity(unchecked) var applyActions: (UInt32, [TCPAction]) -> Void = { _, _ in }
    @usableFromInline @exclusivity(unchecked) var sendBytes: (UInt64, UnsafeRawBufferPointer) -> Int = { _, _ in 0 }
    @usableFromInline @exclusivity(unchecked) var sendGathering: (UInt64, UnsafeBufferPointer<UnsafeRawBufferPointer>) -> Int = { _, _ in 0 }
    @usableFromInline @exclusivity(unchecked) var pumpSlot: (UInt32) -> Void = { _ in }
    @usableFromInline @exclusivity(unchecked) var endpoints: (UInt32) -> (TCPEndpoint, UInt16) = { _ in (TCPEndpoint(.any, 0), 0) }
    /// Whether the reference names a connection of this arena that is still open.
    @usableFromInline @exclusivity(unchecked) var isLive: (UInt64) -> Bool = { _ in false }
    @usableFromInline @exclusivity(unchecked) var state: (UInt32) -> TCPState = { _ in .closed }
    @usableFromInline @exclusivity(unchecked) var accept: (TCPSegmentInfo, TCPEndpoint, UInt16) -> UInt32? = { _, _, _ in nil }
    @usableFromInline @exclusivity(unchecked) var acceptCookie: (TCPSegmentInfo, TCPEndpoint, UInt16, UInt16) -> UInt32? = { _, _, _, _ in nil }
    /// Starts a connect that waited for a callback to return (its reference, its timeout).
    @usableFromInline @exclusivity(unchecked) var startConnect: (UInt64, Int?) -> Void = { _, _ in }
    /// Tells a live connection's handler it may send again.
    @usableFromInline @exclusivity(unchecked) var notifyWritable: (UInt64) -> Void = { _ in }
    @usableFromInline @exclusivity(unchecked) var live: () -> Int = { 0 }
    /// Trims the freed tail; true when memory went back.
    @usableFromInline @exclusivity(unchecked) var trim: () -> Bool = { false }
    @usableFromInline var trimWanted = false
    /// For a SYN that may reuse a TIME-WAIT 4-tuple: whether the slot is in TIME-WAIT with an
    /// older receive sequence than `sequence`, and if so, forgets it.
    @usableFromInline @exclusivity(unchecked) var yieldTimeWait: (UInt32, SequenceNumber?) -> Bool = { _, _ in false }
    @usableFromInline @exclusivity(unchecked) var isTimeWait: (UInt32) -> Bool = { _ in false }
    /// References of the established connections, and how many slots sit in TIME-WAIT (a
    /// count taken by looking, to check the layer's own).
    @usableFromInline @exclusivity(unchecked) var established: () -> [UInt64] = { [] }
    @usableFromInline @exclusivity(unchecked) var timeWaitSlots: () -> Int = { 0 }
    /// Send queues by slot: empty (no allocation) while a connection has nothing unacked.
    @usableFromInline let queues = ChunkedStore<SendQueue>()
    @usableFromInline init() {}
}

@usableFromInline final class TCPArena<H: TCPHandler>: AnyTCPArena {
    @usableFromInline struct Slot {
        @usableFromInline var tcb: TCB
        /// In use, in TIME-WAIT, half-open. Declared right after the control block, whose
        /// last byte of padding it fills.
        @usableFromInline var bits: UInt8 = 1
        @usableFromInline var handler: H
        @usableFromInline var remote: TCPEndpoint
        @usableFromInline var localPort: UInt16
        @usableFromInline var timer = TimerHandle.none
        @usableFromInline var generation: UInt32 = 0

        @inlinable init(tcb: TCB, handler: H, remote: TCPEndpoint, localPort: UInt16) {
            self.tcb = tcb
            self.handler = handler
            self.remote = remote
            self.localPort = localPort
        }

        @inlinable func bit(_ b: UInt8) -> Bool { bits & b != 0 }
        @inlinable mutating func set(_ b: UInt8, _ on: Bool) { bits = on ? bits | b : bits & ~b }
        @inlinable var inUse: Bool { get { bit(1) } set { set(1, newValue) } }
        @inlinable var inTimeWait: Bool { get { bit(2) } set { set(2, newValue) } }
        /// Accepted from a listener and not yet established (counts against its backlog).
        @inlinable var halfOpen: Bool { get { bit(4) } set { set(4, newValue) } }
    }

    /// Strong, so calls into the layer on the hot path need no retain: the layer breaks the
    /// cycle in `tearDown()` when its interface goes.
    @usableFromInline let layer: TCPLayer
    @usableFromInline let makeHandler: (() -> H)?
    /// Connections by slot, at addresses that never change.
    @usableFromInline let slots = ChunkedStore<Slot>()
    @usableFromInline @exclusivity(unchecked) var free: [UInt32] = []
    @usableFromInline @exclusivity(unchecked) var count = 0
    /// The generation the next allocated slot gets (never 0).
    @usableFromInline @exclusivity(unchecked) var nextGeneration: UInt32 = 1

    @inlinable init(layer: TCPLayer, index: UInt16, makeHandler: (() -> H)?) {
        self.layer = layer
        self.makeHandler = makeHandler
        super.init()
        self.index = index
        // Unretained: the arena owns these closures. Through a guaranteed reference, calls
        // on the hot path cost no reference counting.
        let me = Unmanaged.passUnretained(self)
        arrived = { slot, seg, payload in me._withUnsafeGuaranteedRef { $0.segmentArrived(slot, seg, payload) } }
        timerFired = { ref in me._withUnsafeGuaranteedRef { $0.fire(ref) } }
        userTimerFired = { ref in me._withUnsafeGuaranteedRef { $0.userTimer(ref) } }
        run = { slot, body in me._withUnsafeGuaranteedRef { body(&$0.slots[Int(slot)].tcb) } }
        applyActions = { slot, actions in me._withUnsafeGuaranteedRef { $0.apply(slot, actions, payload: nil) } }
        sendBytes = { ref, bytes in me._withUnsafeGuaranteedRef { $0.send(ref, bytes) } }
        sendGathering = { ref, parts in me._withUnsafeGuaranteedRef { $0.send(ref, gathering: parts) } }
        pumpSlot = { slot in me._withUnsafeGuaranteedRef { $0.pump(slot) } }
        endpoints = { slot in
            me._withUnsafeGuaranteedRef { ($0.slots[Int(slot)].remote, $0.slots[Int(slot)].localPort) }
        }
        isLive = { ref in me._withUnsafeGuaranteedRef { $0.liveSlot(ref) != nil } }
        state = { slot in
            me._withUnsafeGuaranteedRef { $0.slots[Int(slot)].inUse ? $0.slots[Int(slot)].tcb.state : .closed }
        }
        accept = { [unowned(unsafe) self] in self.acceptSYN($0, from: $1, localPort: $2) }
        acceptCookie = { [unowned(unsafe) self] in self.acceptCookie($0, from: $1, localPort: $2, mss: $3) }
        startConnect = { [unowned(unsafe) self] ref, timeout in
            guard let slot = self.liveSlot(ref) else { return }
            self.start(slot, timeoutMilliseconds: timeout)
        }
        notifyWritable = { [unowned(unsafe) self] ref in
            guard let slot = self.liveSlot(ref) else { return }
            self.queues[Int(slot)].capWaiting = false
            self.tellWritable(slot)
        }
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
            self.slots.indices.filter { self.slots[$0].inUse && self.slots[$0].tcb.state == .established }
                .map { self.ref(UInt32($0)) }
        }
        timeWaitSlots = { [unowned(unsafe) self] in
            self.slots.indices.reduce(0) { $0 + (self.inTimeWait(UInt32($1)) ? 1 : 0) }
        }
    }

    /// A free slot holding `slot`, with a generation new to it; nil when the arena is full.
    @inlinable func allocate(_ slot: Slot) -> UInt32? {
        var s = slot
        s.generation = nextGeneration
        nextGeneration = nextGeneration & (1 << ConnectionRef.generationBits - 1) == (1 << ConnectionRef.generationBits - 1)
            ? 1 : nextGeneration + 1
        // Entries beyond a trimmed tail, or duplicates, are stale: skip them.
        while let i = free.popLast() {
            guard Int(i) < slots.count, !slots[Int(i)].inUse else { continue }
            count += 1
            slots[Int(i)] = s
            return i
        }
        guard slots.count < ConnectionRef.maxSlots else { return nil }
        count += 1
        slots.append(s)
        queues.append(SendQueue())
        return UInt32(slots.count - 1)
    }

    @inlinable @inline(__always) func ref(_ slot: UInt32) -> UInt64 {
        ConnectionRef.make(arena: index, generation: slots[Int(slot)].generation, slot: slot)
    }

    /// The slot `ref` names if its connection is still there (same generation, in use).
    @inlinable func liveSlot(_ ref: UInt64) -> UInt32? {
        let slot = ConnectionRef.slot(ref)
        guard let p = slots.pointerIfPresent(Int(slot)), p.pointee.inUse,
              p.pointee.generation == ConnectionRef.generation(ref) else { return nil }
        return slot
    }

    @inlinable func acceptSYN(_ syn: TCPSegmentInfo, from remote: TCPEndpoint, localPort: UInt16) -> UInt32? {
        guard let make = makeHandler else { return nil }
        var out = layer.takeActions()
        defer { layer.giveBack(&out) }
        let iss = layer.initialSequenceNumber(remote: remote, localPort: localPort)
        var tcb = TCB.accept(syn, iss: iss, now: layer.clock, receiveWindow: receiveWindow, out: &out)
        if let k = keepalive { tcb.setKeepalive(k) }
        guard let slot = allocate(Slot(tcb: tcb, handler: make(), remote: remote, localPort: localPort)) else {
            layer.arenaFullDrops += 1
            return nil
        }
        slots[Int(slot)].halfOpen = true
        halfOpen += 1
        layer.register(ref(slot), remote: remote, localPort: localPort)
        apply(slot, out, payload: nil)
        return slot
    }

    /// A SYN cookie came back in `ack`: the connection exists from now on, established.
    @inlinable func acceptCookie(_ ack: TCPSegmentInfo, from remote: TCPEndpoint, localPort: UInt16, mss: UInt16) -> UInt32? {
        guard let make = makeHandler else { return nil }
        var tcb = TCB.fromCookie(ack, mss: mss, now: layer.clock)
        if let k = keepalive { tcb.setKeepalive(k) }
        guard let slot = allocate(Slot(tcb: tcb, handler: make(), remote: remote, localPort: localPort)) else {
            layer.arenaFullDrops += 1
            return nil
        }
        layer.register(ref(slot), remote: remote, localPort: localPort)
        apply(slot, [.connected], payload: nil)
        return slot
    }

    /// Starts an active open with `handler`; returns its reference (0 when the arena is
    /// full: the handler hears `closed(.refused)` on the next tick). Inside a handler
    /// callback the connection exists at once (its reference works) but its SYN waits until
    /// the callback has returned.
    @inlinable func connect(to remote: TCPEndpoint, localPort: UInt16, timeoutMilliseconds: Int?, receiveWindow: UInt32,
                            handler: H) -> UInt64 {
        var tcb = TCB()
        tcb.rcvWnd = receiveWindow
        guard let slot = allocate(Slot(tcb: tcb, handler: handler, remote: remote, localPort: localPort)) else {
            layer.arenaFullDrops += 1
            layer.refuseLater(handler)
            return 0
        }
        let r = ref(slot)
        layer.register(r, remote: remote, localPort: localPort)
        if layer.callbackDepth > 0 {
            layer.deferredConnects.append((r, timeoutMilliseconds))
        } else {
            start(slot, timeoutMilliseconds: timeoutMilliseconds)
        }
        return r
    }

    /// Sends the SYN of a connection made by `connect`.
    @inlinable func start(_ slot: UInt32, timeoutMilliseconds: Int?) {
        guard slots[Int(slot)].tcb.state == .closed else { return }
        var out = layer.takeActions()
        defer { layer.giveBack(&out) }
        let (remote, localPort) = (slots[Int(slot)].remote, slots[Int(slot)].localPort)
        slots[Int(slot)].tcb.connect(iss: layer.initialSequenceNumber(remote: remote, localPort: localPort),
                                     now: layer.clock, timeoutMilliseconds: timeoutMilliseconds, out: &out)
        apply(slot, out, payload: nil)
    }

    @inlinable func segmentArrived(_ slot: UInt32, _ seg: TCPSegmentInfo, _ payload: UnsafeRawPointer?) {
        var out = layer.takeActions()
        defer { layer.giveBack(&out) }
        let before = slots[Int(slot)].tcb.sndUna
        slots[Int(slot)].tcb.segmentArrived(seg, now: layer.clock, out: &out)
        let advanced = slots[Int(slot)].tcb.sndUna - before
        if advanced > 0 { acknowledged(slot, advanced) }
        apply(slot, out, payload: payload)
        guard slots[Int(slot)].inUse else { return }
        if queues[Int(slot)].hasStash { drainStash(slot) }
        guard slots[Int(slot)].inUse else { return }
        pump(slot)
        if advanced > 0 && queues[Int(slot)].wantWritable && !queues[Int(slot)].capWaiting
            && queues[Int(slot)].pending < queues[Int(slot)].writableMark(default: layer.sendBufferSize) {
            tellWritable(slot)
        }
    }

    /// The handler may queue more: its queue drained, or memory came back under the cap.
    @inlinable func tellWritable(_ slot: UInt32) {
        queues[Int(slot)].wantWritable = false
        guard slots[Int(slot)].tcb.canSendData else { return }
        layer.callbackDepth += 1
        slots[Int(slot)].handler.writable(connection(slot))
        layer.callbackDepth -= 1
    }

    @inlinable func fire(_ ref: UInt64) {
        guard let slot = liveSlot(ref) else { return }
        slots[Int(slot)].timer = .none
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
        guard var stash = layer.reassembly.take(r) else {
            queues[s].hasStash = false
            return
        }
        var delivered = false
        while let first = stash.ranges.first, slots[s].inUse {
            let rcvNxt = slots[s].tcb.rcvNxt
            if first.sequence > rcvNxt { break }  // still behind a hole
            _ = stash.removeFirst()
            let skip = rcvNxt - first.sequence
            guard first.bytes.count > skip else { continue }  // all of it came in order meanwhile
            slots[s].tcb.reassembled(first.bytes.count - skip, now: layer.clock)
            layer.reassembly.deliveredCount += 1
            delivered = true
            first.bytes.withUnsafeBytes { b in
                layer.callbackDepth += 1
                slots[s].handler.received(UnsafeRawBufferPointer(rebasing: b[skip...]), connection(slot))
                layer.callbackDepth -= 1
            }
        }
        guard slots[s].inUse else { return }
        queues[s].hasStash = !stash.ranges.isEmpty
        layer.reassembly.putBack(r, stash)
        if delivered { emit(slot, slots[s].tcb.ackSegment(now: layer.clock), payload: nil) }
    }

    // MARK: The send path (typed, so a message goes out without erased calls)

    /// Queues as much of `bytes` as the connection's send buffer (and the process-wide cap)
    /// take, copied, and sends what the window allows. Returns the bytes taken: fewer than
    /// given means the handler hears `writable` when there is room again; 0 also when the
    /// connection cannot send any more.
    @inlinable func send(_ ref: UInt64, _ bytes: UnsafeRawBufferPointer) -> Int {
        guard let slot = liveSlot(ref) else { return 0 }
        let n = enqueue(slot, ref, bytes)
        if n > 0 { pump(slot) }
        return n
    }

    /// Queues the parts in order, as much as fits (as `send`), and sends once: they leave
    /// together, in as few segments as they fit.
    @inlinable func send(_ ref: UInt64, gathering parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> Int {
        guard let slot = liveSlot(ref) else { return 0 }
        var total = 0
        for part in parts where part.count > 0 {
            let n = enqueue(slot, ref, part)
            total += n
            if n < part.count { break }
        }
        if total > 0 { pump(slot) }
        return total
    }

    /// Copies what the queue takes of `bytes` into it; returns how much.
    @inlinable func enqueue(_ slot: UInt32, _ ref: UInt64, _ bytes: UnsafeRawBufferPointer) -> Int {
        let q = queues.pointer(Int(slot))
        let state = slots[Int(slot)].tcb.state
        guard state == .established || state == .closeWait || state == .synSent || state == .synReceived,
              !q.pointee.closeRequested else { return 0 }
        let limit = q.pointee.limit(default: layer.sendBufferSize)
        var n = bytes.count
        if q.pointee.pending + n > limit {
            n = limit - q.pointee.pending
            if n <= 0 {
                q.pointee.wantWritable = true
                layer.sendBufferFullCount += 1
                return 0
            }
        }
        // A drained queue holds no buffer: take a spare one (kept charged to the cap).
        if q.pointee.bytes.capacity == 0 && !layer.spareBuffers.isEmpty {
            q.pointee.bytes = layer.spareBuffers.removeLast()
        }
        let needed = q.pointee.bytes.count + n
        if needed > q.pointee.bytes.capacity {
            // The buffer must grow: charge the growth to the process-wide cap, or take only
            // what fits in the buffer as it is.
            if !layer.grow(&q.pointee.bytes, to: needed) {
                n = q.pointee.bytes.capacity - q.pointee.bytes.count
                if !q.pointee.capWaiting {
                    q.pointee.capWaiting = true
                    layer.capWaiters.append(ref)
                }
            }
        }
        if n < bytes.count {
            q.pointee.wantWritable = true
            layer.sendBufferFullCount += 1
        }
        guard n > 0 else { return 0 }
        q.pointee.bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[..<n]))
        if q.pointee.pending >= min(TCPLayer.writableThreshold, limit >> 1) { q.pointee.wantWritable = true }
        return n
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
            queues[s].acked = 0
            layer.release(&queues[s].bytes)
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
        // The slot and its queue stay at these addresses while the handler runs (the stores
        // never move their elements, and are trimmed only between segments).
        let p = slots.pointer(Int(slot)), q = queues.pointer(Int(slot))
        let sentBefore = layer.segmentsSent
        var ackWanted = false, ackDelayed = false
        defer {
            // One fresh ACK after everything else, unless a segment already carried it. A
            // delayed one waits (for a reply to carry it) unless one is already owed.
            if ackWanted || ackDelayed, p.pointee.inUse, layer.segmentsSent == sentBefore {
                if ackWanted || q.pointee.ackOwed {
                    emit(slot, p.pointee.tcb.ackSegment(now: layer.clock), payload: nil)
                } else {
                    layer.delayAck(ref(slot))
                }
            }
        }
        for action in actions {
            guard p.pointee.inUse else { return }
            switch action {
            case .acknowledge:
                ackWanted = true
            case .acknowledgeDelayed:
                ackDelayed = true
            case .pawsRejected:
                layer.pawsDropCount += 1
            case .ackSuppressed:
                layer.ackSuppressedCount += 1
            case .challengeAck:
                // RFC 5961 section 7: rate-limited, so that the answers cannot be used to
                // probe for sequence numbers (or to make us flood).
                if layer.mayChallenge() {
                    ackWanted = true
                    layer.challengeAckCount += 1
                }
            case .send(let seg):
                if seg.flags == .ack && seg.payloadLength == 0 && seg.sequence == p.pointee.tcb.sndUna - 1 {
                    layer.probeCount += 1  // a persist or keepalive probe
                }
                emit(slot, seg, payload: nil)
            case .sendData(let seg):
                emitData(slot, seg)
            case .resendData(let seg):
                layer.retransmitCount += 1
                emitData(slot, seg)
            case .stash(let offset, let length, let sequence):
                guard let data = payload else { continue }
                q.pointee.hasStash = layer.reassembly.insert(
                    ref(slot), at: sequence, UnsafeRawBufferPointer(start: data + offset, count: length),
                    rcvNxt: p.pointee.tcb.rcvNxt, window: Int(p.pointee.tcb.rcvWnd))
            case .deliver(let offset, let length):
                guard let data = payload else { continue }
                layer.callbackDepth += 1
                p.pointee.handler.received(UnsafeRawBufferPointer(start: data + offset, count: length), connection(slot))
                layer.callbackDepth -= 1
            case .connected:
                if p.pointee.halfOpen {
                    p.pointee.halfOpen = false
                    halfOpen -= 1
                }
                layer.callbackDepth += 1
                p.pointee.handler.connected(connection(slot))
                layer.callbackDepth -= 1
            case .peerClosed:
                layer.callbackDepth += 1
                p.pointee.handler.peerClosed(connection(slot))
                layer.callbackDepth -= 1
            case .closed(let reason):
                finish(slot, reason)
            case .startTimeWait(let ms):
                guard !p.pointee.inTimeWait else {
                    setTimer(slot, afterMilliseconds: ms)  // the peer's FIN again: 2 MSL start over
                    continue
                }
                if !layer.enterTimeWait() {
                    // The TIME-WAIT table is full: forget this connection now (counted), but
                    // first acknowledge the peer's FIN, or it would retransmit it into a RST.
                    emit(slot, p.pointee.tcb.ackSegment(now: layer.clock), payload: nil)
                    finish(slot, .normal)
                    return
                }
                setTimer(slot, afterMilliseconds: ms)
                // For the application the connection is over: both FINs went by. Only the
                // stack keeps the 4-tuple, for stray segments.
                p.pointee.inTimeWait = true
                if !layer.userTimerHandles.isEmpty { layer.setTimer(ref(slot), nil) }
                var handler = p.pointee.handler
                layer.callbackDepth += 1
                handler.closed(.normal)
                layer.callbackDepth -= 1
                p.pointee.handler = handler
            case .armRetransmit(let ms):
                setTimer(slot, afterMilliseconds: ms)
            case .cancelRetransmit:
                // A handler called earlier in this round (in `connected`, say) may have sent
                // data, started persist probing against a closed window, or set an idle
                // timeout or keepalive after the control block chose to cancel: the timer
                // follows the connection as it is now.
                if p.pointee.tcb.sndUna != p.pointee.tcb.sndNxt || p.pointee.tcb.persisting {
                    continue  // armed for that since
                }
                if p.pointee.tcb.hasIdleTimers, let due = p.pointee.tcb.idleDeadline() {
                    setTimer(slot, afterMilliseconds: max(0, Int(Int32(bitPattern: due &- layer.clock))))
                } else {
                    setTimer(slot, afterMilliseconds: nil)
                }
            }
        }
    }

    /// (Re)arms the connection's one timer to fire after `ms` milliseconds (rounded up a
    /// tick, so never early), or stops it (nil). On the layer's 64-bit clock: no wrap.
    @inlinable func setTimer(_ slot: UInt32, afterMilliseconds ms: Int?) {
        if !slots[Int(slot)].timer.isNone { layer.timers.cancel(slots[Int(slot)].timer) }
        slots[Int(slot)].timer = ms.map { layer.timers.arm(at: layer.now &+ UInt64($0) &+ 1, payload: ref(slot)) } ?? .none
    }

    @inlinable @inline(__always) func connection(_ slot: UInt32) -> StackConnection<H> {
        StackConnection(arena: self, ref: ref(slot), remote: slots[Int(slot)].remote, localPort: slots[Int(slot)].localPort)
    }

    /// The connection's own timer (`TCPConnection.setTimer`) went off.
    @inlinable func userTimer(_ ref: UInt64) {
        guard let slot = liveSlot(ref), !slots[Int(slot)].inTimeWait else { return }
        layer.callbackDepth += 1
        slots[Int(slot)].handler.timerFired(connection(slot))
        layer.callbackDepth -= 1
    }

    @inlinable func finish(_ slot: UInt32, _ reason: TCPCloseReason) {
        let s = slots[Int(slot)]
        if !s.timer.isNone { layer.timers.cancel(s.timer) }
        if !layer.userTimerHandles.isEmpty { layer.setTimer(ref(slot), nil) }
        if s.inTimeWait { layer.leaveTimeWait() }
        if s.halfOpen { halfOpen -= 1 }
        slots[Int(slot)].inUse = false
        slots[Int(slot)].inTimeWait = false
        slots[Int(slot)].timer = .none
        layer.unregister(ref(slot), remote: s.remote, localPort: s.localPort)
        layer.release(&queues[Int(slot)].bytes)
        queues[Int(slot)].reset()
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
        // Keep what the handler did (it may have let go of references), unless a connection
        // opened in the callback has taken the slot meanwhile.
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
