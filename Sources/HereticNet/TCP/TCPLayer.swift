import HereticCore
import CHereticSys

public typealias TCPEndpoint = Endpoint

/// A connection's behaviour: a value type whose stored properties are the connection's
/// application state, kept inline beside its control block (no object per connection).
/// Every callback runs on the interface's core.
public protocol TCPHandler {
    /// The handshake completed.
    mutating func connected(_ connection: inout TCPConnection)
    /// In-order bytes arrived. They point into the received packet: copy what must outlive
    /// the call.
    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection)
    /// Acknowledgements drained the send queue below `TCPLayer.writableThreshold`: room to
    /// queue more (for streaming without holding everything at once).
    mutating func writable(_ connection: inout TCPConnection)
    /// The peer will send no more (FIN).
    mutating func peerClosed(_ connection: inout TCPConnection)
    /// The connection is over for the application: reset, timed out, or closed both ways
    /// (said when TIME-WAIT begins; the stack alone keeps the 4-tuple for its duration).
    mutating func closed(_ reason: TCPCloseReason)
}

extension TCPHandler {
    public mutating func connected(_ connection: inout TCPConnection) {}
    public mutating func received(_ data: UnsafeRawBufferPointer, _ connection: inout TCPConnection) {}
    public mutating func writable(_ connection: inout TCPConnection) {}
    public mutating func peerClosed(_ connection: inout TCPConnection) { connection.close() }
    public mutating func closed(_ reason: TCPCloseReason) {}
}

/// What a handler can do to its connection while it runs. The same value serves both
/// engines: the user-space stack (`TCPLayer`) and Linux's sockets (`KernelNetwork`).
public struct TCPConnection {
    /// The engine outlives every callback that sees this value; held unretained, so a call
    /// through it costs no reference counting.
    @usableFromInline let engine: UnsafeMutableRawPointer
    @usableFromInline let ref: UInt64
    public let remote: TCPEndpoint
    public let localPort: UInt16
    /// Whether `engine` is a `KernelNetwork` (else a `TCPLayer`).
    @usableFromInline let onKernel: Bool

    @inlinable init(layer: TCPLayer, ref: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        self.engine = Unmanaged.passUnretained(layer).toOpaque()
        self.ref = ref
        self.remote = remote
        self.localPort = localPort
        self.onKernel = false
    }

    @inlinable init(kernel: KernelNetwork, ref: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        self.engine = Unmanaged.passUnretained(kernel).toOpaque()
        self.ref = ref
        self.remote = remote
        self.localPort = localPort
        self.onKernel = true
    }

    @usableFromInline var unmanagedLayer: Unmanaged<TCPLayer> { Unmanaged.fromOpaque(engine) }
    @usableFromInline var unmanagedKernel: Unmanaged<KernelNetwork> { Unmanaged.fromOpaque(engine) }
    @usableFromInline var layer: TCPLayer { unmanagedLayer.takeUnretainedValue() }
    @usableFromInline var kernel: KernelNetwork { unmanagedKernel.takeUnretainedValue() }

    /// Queues bytes for sending (copied: the caller's buffer is free on return) and sends
    /// what the peer's window allows now. False when the connection cannot send any more.
    @discardableResult
    @inlinable public func send(_ bytes: UnsafeRawBufferPointer) -> Bool {
        if onKernel { return unmanagedKernel._withUnsafeGuaranteedRef { $0.send(ref, bytes) } }
        return unmanagedLayer._withUnsafeGuaranteedRef { $0.send(ref, bytes) }
    }

    /// Sends FIN once everything queued has gone out.
    public func close() { if onKernel { kernel.close(ref) } else { layer.close(ref) } }

    /// Sends RST and drops the connection at once.
    public func abort() { if onKernel { kernel.abort(ref) } else { layer.abort(ref) } }

    /// Bytes queued and not yet acknowledged (on kernel sockets: not yet handed to the kernel).
    public var bytesQueued: Int { onKernel ? kernel.queued(ref) : layer.queued(ref) }

    /// Turns Nagle's algorithm off (true) or on (false, the default): with it off, small
    /// segments go out at once even while earlier data is unacknowledged.
    public func setNoDelay(_ noDelay: Bool) {
        if onKernel { kernel.setNoDelay(ref, noDelay) } else { layer.setNoDelay(ref, noDelay) }
    }

    /// Keepalive (RFC 1122 4.2.3.6): after `seconds` of silence from the peer, probe it every
    /// `seconds` (at most 75); nine unanswered probes close the connection as timed out.
    /// 0 turns it off (the default).
    public func setKeepalive(seconds: Int) {
        if onKernel { kernel.setKeepalive(ref, seconds); return }
        layer.setIdleSettings(ref) { $0.keepaliveSeconds = UInt16(clamping: max(0, seconds)) }
    }

    /// Aborts the connection (RST, closed as `.idle`) after `seconds` without data either
    /// way. 0 turns it off (the default).
    public func setIdleTimeout(seconds: Int) {
        if onKernel { kernel.setIdleTimeout(ref, seconds); return }
        layer.setIdleSettings(ref) { $0.idleTimeoutSeconds = UInt16(clamping: max(0, seconds)) }
    }

    /// Sets the receive window to `bytes` (what the application can still take in). A
    /// window that opens by at least one MSS, or from closed, is announced at once. On kernel
    /// sockets, 0 stops reading (the kernel's window closes as its buffer fills).
    public func setReceiveWindow(_ bytes: Int) {
        if onKernel { kernel.setReceiveWindow(ref, bytes) } else { layer.setReceiveWindow(ref, bytes) }
    }

}

/// Per-connection data waiting for acknowledgement: created with the first byte sent and
/// released when the last is acknowledged ("lazy IO": an idle connection owns no buffer).
@usableFromInline struct SendQueue {
    @usableFromInline var bytes: [UInt8] = []
    /// Bytes at the front already acknowledged (trimmed in batches of at most 64 KiB).
    @usableFromInline var ackedCount: UInt32 = 0
    @usableFromInline var flags: UInt8 = 0
    @inlinable init() {}

    @inlinable var acked: Int {
        get { Int(ackedCount) }
        set { ackedCount = UInt32(newValue) }
    }
    @inlinable func flag(_ bit: UInt8) -> Bool { flags & bit != 0 }
    @inlinable mutating func set(_ bit: UInt8, _ on: Bool) { flags = on ? flags | bit : flags & ~bit }
    @inlinable var closeRequested: Bool { get { flag(1) } set { set(1, newValue) } }
    /// Nagle off: send small segments at once even with data unacknowledged.
    @inlinable var noDelay: Bool { get { flag(2) } set { set(2, newValue) } }
    /// Received data waits for a delayed ACK (in the layer's delayed-ACK queue).
    @inlinable var ackOwed: Bool { get { flag(4) } set { set(4, newValue) } }
    /// Out-of-order data waits in the layer's reassembly store.
    @inlinable var hasStash: Bool { get { flag(8) } set { set(8, newValue) } }

    @inlinable var pending: Int { bytes.count - acked }
    /// Nothing queued, nothing owed: the queue holds no memory.
    @inlinable var isIdle: Bool { bytes.count == acked && !closeRequested }

    @usableFromInline mutating func reset() {
        bytes = []
        ackedCount = 0
        flags = 0
    }
}

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
    public private(set) var synCookiesSent = 0
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

    // MARK: SYN cookies

    /// MSS values a cookie can carry (3 bits; the largest not above the peer's is chosen).
    static let cookieMSS: [UInt16] = [536, 1200, 1440, 1460]

    /// The cookie counter: advances every 64 s; a cookie is good for two periods.
    var cookieCounter: UInt32 { clock >> 16 }

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

extension AnyTCPArena {
    /// Applies actions through the typed arena (which knows the handler type).
    @usableFromInline func applyErased(_ slot: UInt32, _ actions: [TCPAction]) {
        guard !actions.isEmpty else { return }
        applyActions(slot, actions)
    }
}
