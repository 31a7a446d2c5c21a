import HereticTransport
import CHereticKernel
import CHereticSys
import Glibc
import HereticCore

/// A `KernelNetwork`'s IO through io_uring: multishot accept and receive into a
/// provided-buffer ring, sends batched and submitted once per loop turn, connects and cancels
/// as submissions, and what found the ring full retried on a later turn.
final class URingBackend: KernelIO {
    let ring: OpaquePointer
    /// The setup flags the ring got (single issuer, deferred task work where available).
    let flags: UInt32
    static let bufferGroup: UInt16 = 7
    /// The engine this backend carries (set once, right after the engine is made; it owns
    /// the backend, so it outlives it).
    unowned(unsafe) var owner: KernelNetwork?
    @inline(__always) var engine: KernelNetwork { owner.unsafelyUnwrapped }

    let completions: UnsafeMutablePointer<heretic_completion>
    /// Connections with data queued and no send in flight, submitted at the end of the turn
    /// (so several sends of one turn go out as one).
    var flushList: [UInt32] = []
    /// Submissions that found no room (the kernel not taking more), retried on a later turn.
    var submissionRetries = 0
    var resubmissions: [Resubmission] = []
    var wakeArmed = false
    var wakeFD: Int32 = -1

    /// Sets up a ring and its receive buffers; on failure, why (for `backendReason` or the
    /// error).
    static func open(_ c: KernelConfiguration) -> Result<URingBackend, NetError> {
        var r: OpaquePointer?
        let flags = heretic_ring_open(&r, UInt32(c.ringEntries), UInt32(c.ringEntries * 16), UInt32(c.uringSetupMode))
        guard flags >= 0, let r else {
            return .failure(.device("io_uring cannot be set up (\(String(cString: heretic_strerror(-flags))))"))
        }
        let b = heretic_ring_setup_buffers(r, bufferGroup, UInt32(c.receiveBuffers), UInt32(c.receiveBufferSize),
                                           UInt32(max(1, c.receiveBuffersInRing)))
        guard b == 0 else {
            heretic_ring_close(r)
            return .failure(.device("io_uring has no provided buffer rings here (\(String(cString: heretic_strerror(-b))))"))
        }
        return .success(URingBackend(ring: r, flags: UInt32(flags)))
    }

    private init(ring: OpaquePointer, flags: UInt32) {
        self.ring = ring
        self.flags = flags
        completions = .allocate(capacity: KernelNetwork.completionBatch)
    }

    deinit {
        heretic_ring_close(ring)
        completions.deallocate()
    }

    var enters: UInt64 { heretic_ring_enters(ring) }
    var hasPendingWork: Bool { !flushList.isEmpty || !resubmissions.isEmpty }

    // MARK: Submissions that found the ring full

    /// Notes a submission's result: one the ring had no room for is retried next turn.
    @inline(__always) func submit(_ rc: Int32, _ retry: Resubmission) {
        guard rc < 0 else { return }
        submissionRetries += 1
        resubmissions.append(retry)
    }

    /// For tests: every `every`-th submission finds no room (0: none).
    func failSubmissions(every: Int) {
        heretic_ring_fail_submissions(ring, UInt32(every))
    }

    /// Submits again what found the ring full (after a reap has made room).
    func resubmit() {
        guard !resubmissions.isEmpty else { return }
        let engine = self.engine
        let work = resubmissions
        resubmissions.removeAll()
        for r in work {
            let live = Int(r.slot) < engine.slots.count && engine.slots[Int(r.slot)].generation == r.generation
            switch r.op {
            case .accept:
                if Int(r.slot) < engine.listeners.count { armAccept(r.slot) }
            case .recv:
                if live { armReceive(r.slot) }
            case .send:
                if live { submitSend(r.slot) }
            case .connect:
                guard live else { continue }
                let p = engine.slots.pointer(Int(r.slot))
                guard !p.pointee.has(.tearingDown) else { engine.release(r.slot); continue }
                let rc = heretic_ring_connect(ring, p.pointee.fd, p.pointee.remoteAddress, p.pointee.remotePort,
                                              KernelOp.connect.userData(slot: r.slot, generation: r.generation))
                if rc >= 0 { p.pointee.set(.connectInFlight) } else { submit(rc, r) }
            case .cancel:
                if r.slot == .max {
                    submit(heretic_ring_cancel_fd(ring, r.fd, KernelOp.cancel.userData(slot: .max, generation: 0)), r)
                } else if live {
                    let p = engine.slots.pointer(Int(r.slot))
                    let rc = heretic_ring_cancel_fd(ring, p.pointee.fd, KernelOp.cancel.userData(slot: r.slot, generation: r.generation))
                    if rc >= 0 { p.pointee.set(.cancelInFlight) } else { submit(rc, r) }
                }
            default:
                break
            }
        }
    }

    /// A submission of a slot's own found no room before it went in: it holds nothing of the
    /// kernel's, so forget it.
    func forgetResubmissions(_ slot: UInt32, generation: UInt32) {
        resubmissions.removeAll { $0.slot == slot && $0.generation == generation }
    }

    // MARK: Listeners

    func startAccepting(_ index: UInt32) { armAccept(index) }

    /// Nothing to do: the paused listener is simply not re-armed.
    func pauseAccepting(_ index: UInt32) {}

    func armAccept(_ index: UInt32) {
        let engine = self.engine
        guard engine.listeners[Int(index)].fd >= 0, !engine.listeners[Int(index)].paused else { return }
        submit(heretic_ring_accept_multishot(ring, engine.listeners[Int(index)].fd, KernelOp.accept.userData(slot: index, generation: 0)),
               Resubmission(op: .accept, slot: index, generation: 0, fd: -1))
    }

    func stopListening(fd: Int32) {
        // The multishot accept holds the socket open: cancel it (done when the submission
        // returns), then close.
        submit(heretic_ring_cancel_fd(ring, fd, KernelOp.cancel.userData(slot: UInt32.max, generation: 0)),
               Resubmission(op: .cancel, slot: .max, generation: 0, fd: fd))
        _ = heretic_ring_enter(ring, -1, 0)
    }

    // MARK: Connections

    func connect(_ slot: UInt32) -> TCPCloseReason? {
        let p = engine.slots.pointer(Int(slot))
        let gen = p.pointee.generation
        let rc = heretic_ring_connect(ring, p.pointee.fd, p.pointee.remoteAddress, p.pointee.remotePort,
                                      KernelOp.connect.userData(slot: slot, generation: gen))
        if rc >= 0 { p.pointee.set(.connectInFlight) }
        submit(rc, Resubmission(op: .connect, slot: slot, generation: gen, fd: p.pointee.fd))
        return nil
    }

    func established(_ slot: UInt32) {
        armReceive(slot)
        let p = engine.slots.pointer(Int(slot))
        if !p.pointee.out.isEmpty && !p.pointee.has(.flushQueued) {
            p.pointee.set(.flushQueued)
            flushList.append(slot)
        }
    }

    func resumeReceiving(_ slot: UInt32) { armReceive(slot) }

    /// Cancels what the kernel has on the slot's socket before it is released (its buffers
    /// and slot stay valid until the cancel completes).
    func cancel(_ slot: UInt32) {
        let p = engine.slots.pointer(Int(slot))
        let rc = heretic_ring_cancel_fd(ring, p.pointee.fd, KernelOp.cancel.userData(slot: slot, generation: p.pointee.generation))
        if rc >= 0 { p.pointee.set(.cancelInFlight) }
        submit(rc, Resubmission(op: .cancel, slot: slot, generation: p.pointee.generation, fd: -1))
    }

    // MARK: Sending

    /// Submits the pending bytes of `slot` as one send.
    func submitSend(_ slot: UInt32) {
        let p = engine.slots.pointer(Int(slot))
        p.pointee.clear(.flushQueued)
        guard !p.pointee.has(.sendInFlight), !p.pointee.has(.tearingDown), p.pointee.out.promote() else { return }
        let (base, length) = p.pointee.out.unsent
        let rc = heretic_ring_send(ring, p.pointee.fd, base, UInt32(length), KernelOp.send.userData(slot: slot, generation: p.pointee.generation))
        if rc >= 0 { p.pointee.set(.sendInFlight) }
        submit(rc, Resubmission(op: .send, slot: slot, generation: p.pointee.generation, fd: -1))
    }

    func flushSends() {
        guard !flushList.isEmpty else { return }
        let count = engine.slots.count
        var i = 0
        while i < flushList.count {
            if Int(flushList[i]) < count { submitSend(flushList[i]) }
            i += 1
        }
        flushList.removeAll(keepingCapacity: flushList.capacity <= 65_536)
    }

    // MARK: The loop

    func poll() -> Int {
        var work = reap()
        resubmit()
        flushSends()
        if heretic_ring_pending(ring) > 0 || heretic_ring_needs_enter(ring) != 0 {
            _ = heretic_ring_enter(ring, -1, 0)
            work += reap()
            flushSends()
        }
        return work
    }

    func sleep(wakeFD: Int32, timeoutNanoseconds: Int64) {
        if !wakeArmed || self.wakeFD != wakeFD {
            self.wakeFD = wakeFD
            wakeArmed = true
            if heretic_ring_poll_multishot(ring, wakeFD, KernelOp.wake.userData(slot: 0, generation: 0)) < 0 {
                wakeArmed = false  // no room: tried again next time
                submissionRetries += 1
                return
            }
        }
        _ = heretic_ring_enter(ring, timeoutNanoseconds, 1)
    }

    // MARK: Completions

    func reap() -> Int {
        let engine = self.engine
        var total = 0
        while true {
            let n = Int(heretic_ring_reap(ring, completions, UInt32(KernelNetwork.completionBatch)))
            if n == 0 { break }
            engine.busyTurn = n >= engine.batchedSendsFrom
            for i in 0..<n { dispatch(completions[i]) }
            engine.busyTurn = false
            heretic_ring_buffers_publish(ring)
            total += n
            engine.runFinishing()
            if n < KernelNetwork.completionBatch { break }
        }
        return total
    }

    func dispatch(_ c: heretic_completion) {
        let engine = self.engine
        let (op, slot, gen) = KernelOp.decode(c.user_data)
        let more = c.flags & HERETIC_CQE_F_MORE != 0
        switch op {
        case .accept:
            guard Int(slot) < engine.listeners.count else { return }
            if c.res >= 0 {
                engine.listeners[Int(slot)].backoff = 0
                if !more { armAccept(slot) }
                engine.accepted(fd: c.res, listener: slot)
            } else if c.res != -ECANCELED {
                engine.acceptErrors += 1
                if KernelNetwork.isResourceError(-c.res) {
                    // Out of descriptors or memory: pause (and end the multishot if it goes on).
                    if more, engine.listeners[Int(slot)].fd >= 0 {
                        let fd = engine.listeners[Int(slot)].fd
                        submit(heretic_ring_cancel_fd(ring, fd, KernelOp.cancel.userData(slot: .max, generation: 0)),
                               Resubmission(op: .cancel, slot: .max, generation: 0, fd: fd))
                    }
                    engine.pauseAccepting(slot)
                } else if !more {
                    armAccept(slot)
                }
            }
        case .recv:
            received(c, slot: slot, generation: gen, more: more)
        case .send:
            sent(c.res, slot: slot, generation: gen)
        case .connect:
            guard Int(slot) < engine.slots.count, engine.slots[Int(slot)].generation == gen else { return }
            engine.slots[Int(slot)].clear(.connectInFlight)
            engine.connectDone(slot, error: c.res < 0 ? -c.res : 0)
        case .cancel:
            guard Int(slot) < engine.slots.count, engine.slots[Int(slot)].generation == gen else { return }
            engine.slots[Int(slot)].clear(.cancelInFlight)
            engine.release(slot)
        case .wake:
            heretic_eventfd_drain(wakeFD)
            if !more { wakeArmed = false }
        case .udp:
            if !more { udpPollEnded(slot) }
            engine.receiveDatagrams(slot)
        case .io, .connectTimeout, .idleTimeout, .acceptResume, .userTimer:
            break
        }
    }

    func armReceive(_ slot: UInt32) {
        let p = engine.slots.pointer(Int(slot))
        guard !p.pointee.has(.recvArmed), !p.pointee.has(.peerFinished), !p.pointee.has(.readPaused),
              !p.pointee.has(.tearingDown), p.pointee.has(.open) else { return }
        // Multishot unless the application limits what it takes (a `TCPSocket`): then one
        // buffer at a time, so no more than the window plus one buffer is ever delivered.
        let rc = heretic_ring_recv(ring, p.pointee.fd, Self.bufferGroup, p.pointee.has(.windowed) ? 0 : 1,
                                   KernelOp.recv.userData(slot: slot, generation: p.pointee.generation))
        if rc >= 0 { p.pointee.set(.recvArmed) }
        submit(rc, Resubmission(op: .recv, slot: slot, generation: p.pointee.generation, fd: -1))
    }

    func received(_ c: heretic_completion, slot: UInt32, generation: UInt32, more: Bool) {
        let engine = self.engine
        let buffer: UInt16? = c.flags & HERETIC_CQE_F_BUFFER != 0 ? UInt16(truncatingIfNeeded: c.flags >> HERETIC_CQE_BUFFER_SHIFT) : nil
        defer { if let buffer { heretic_ring_buffer_done(ring, buffer, c.res, c.flags) } }
        guard Int(slot) < engine.slots.count, engine.slots[Int(slot)].generation == generation else { return }
        let p = engine.slots.pointer(Int(slot))
        if !more { p.pointee.clear(.recvArmed) }
        if c.res > 0, let buffer {
            engine.bytesReceived &+= Int(c.res)
            if p.pointee.idleSeconds > 0 { p.pointee.lastActive = UInt32(truncatingIfNeeded: engine.core.nowMilliseconds) }
            if p.pointee.has(.open) && !p.pointee.has(.peerFinished) {
                let data = UnsafeRawBufferPointer(start: heretic_ring_buffer_data(ring, buffer), count: Int(c.res))
                engine.callback(slot) { a, h, conn in a.received(h, data, conn) }
            }
        } else if c.res == 0 {
            engine.peerFinished(slot)
        } else if c.res == -ENOBUFS {
            engine.receiveBufferStarvation += 1
            heretic_ring_buffers_starved(ring)
        } else if c.res != -ECANCELED {
            engine.finish(slot, KernelNetwork.reason(forError: -c.res))
        }
        if p.pointee.has(.tearingDown) {
            engine.release(slot)
        } else if !p.pointee.has(.recvArmed) {
            armReceive(slot)
        }
    }

    func sent(_ res: Int32, slot: UInt32, generation: UInt32) {
        let engine = self.engine
        guard Int(slot) < engine.slots.count, engine.slots[Int(slot)].generation == generation else { return }
        let p = engine.slots.pointer(Int(slot))
        p.pointee.clear(.sendInFlight)
        if p.pointee.has(.tearingDown) {
            engine.release(slot)
            return
        }
        guard res > 0 else {
            engine.finish(slot, res == 0 || res == -ECANCELED ? .reset : KernelNetwork.reason(forError: -res))
            return
        }
        if p.pointee.idleSeconds > 0 { p.pointee.lastActive = UInt32(truncatingIfNeeded: engine.core.nowMilliseconds) }
        if p.pointee.out.consume(Int(res), spare: &engine.spareBuffers, credit: &engine.sendCredit) {
            // Part went out (the socket's buffer filled): send the rest.
            submitSend(slot)
        } else if !p.pointee.out.isEmpty {
            submitSend(slot)
        } else {
            engine.drained(slot)
        }
    }

    // MARK: UDP

    func addUDP(_ index: UInt32) { armUDPPoll(index) }

    func removeUDP(fd: Int32) {
        _ = heretic_ring_cancel_fd(ring, fd, KernelOp.cancel.userData(slot: .max, generation: 0))
        _ = heretic_ring_enter(ring, -1, 0)
    }

    func armUDPPoll(_ index: UInt32) {
        let engine = self.engine
        guard Int(index) < engine.udpBindings.count, engine.udpBindings[Int(index)].fd >= 0 else { return }
        let b = engine.udpBindings[Int(index)]
        guard !b.pollArmed else { return }
        let rc = heretic_ring_poll_multishot(ring, b.fd, KernelOp.udp.userData(slot: index, generation: 0))
        if rc >= 0 {
            b.pollArmed = true
        } else {
            // No room in the ring now: read on the next turn, and arm then.
            submissionRetries += 1
            b.again = true
            engine.udpAgain = true
        }
    }

    /// The multishot poll ended (the kernel ends them now and then): arm another.
    func udpPollEnded(_ index: UInt32) {
        guard Int(index) < engine.udpBindings.count else { return }
        engine.udpBindings[Int(index)].pollArmed = false
        armUDPPoll(index)
    }
}
