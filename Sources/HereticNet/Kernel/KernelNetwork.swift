import HereticTransport
import CHereticKernel
import CHereticSys
import Glibc
import HereticCore

/// Which kernel interface carries a `KernelNetwork`'s IO.
public enum KernelBackend: String, Sendable, CaseIterable {
    /// io_uring: multishot accept and receive into a provided-buffer ring, sends batched
    /// and submitted once per loop turn.
    case uring = "io_uring"
    /// epoll, edge-triggered, with non-blocking reads and writes: the fallback where
    /// io_uring is missing or disabled.
    case epoll
}

/// TCP over Linux's own sockets, driven by one core's loop: the engine for deployments that
/// hand Heretic no NIC. It serves the same APIs as the user-space stack (handler structs with
/// `TCPConnection`, `TCPSocket` for async code and blocking-style calls in stackless tasks)
/// with the same error vocabulary.
///
/// One engine per core, made on that core (it adds itself to the core's loop and, when it is
/// the core's only poller, lets the core sleep in the kernel until IO or a message arrives).
/// Listeners use SO_REUSEPORT, so every core can listen on the same port and the kernel
/// spreads connections across them.
///
/// Per connection the engine keeps an 80-byte slot and the handler inline; send buffers exist
/// only while data waits to go out, and received data is read into shared ring buffers (no
/// buffer per idle connection).
public final class KernelNetwork: CorePoller, ConnectionEngine {
    public let backend: KernelBackend
    /// Why this backend was chosen (for logs and benchmark output).
    public let backendReason: String
    @usableFromInline unowned(unsafe) let core: Core

    /// The backend carrying the IO: exactly one is set. The engine branches on them where the
    /// two differ (once per branch point, as on a stored enum): no existential call per
    /// operation.
    let uring: URingBackend?
    let epoll: EpollBackend?
    /// The setup flags the ring got (single issuer, deferred task work where available).
    public var ringFlags: UInt32 { uring?.flags ?? 0 }
    /// Receive buffers of the provided ring, and their size.
    public let receiveBuffers: Int
    public let receiveBufferSize: Int
    /// Receives share buffers, each starting where the last ended (Linux 6.12's incremental
    /// consumption), instead of taking a whole buffer each.
    public var receiveBuffersShared: Bool { uring.map { heretic_ring_buffers_incremental($0.ring) != 0 } ?? false }
    /// Buffers the ring holds now.
    public var receiveBuffersInRing: Int { uring.map { Int(heretic_ring_buffers_target($0.ring)) } ?? 0 }
    /// Completions (or epoll events) handled per batch.
    static let completionBatch = 1024

    /// Connections: a slot each, in a table that never moves.
    @usableFromInline let slots = ChunkedStore<KernelSlot>()
    @usableFromInline var freeSlots: [UInt32] = []
    @usableFromInline var generations: UInt32 = 0
    /// io_uring: whether a send to a connection with nothing queued may go out at once (one
    /// non-blocking system call, no copy) instead of as an SQE submitted at the end of the
    /// turn; what the socket cannot take is queued and goes through the ring. It does while
    /// the turn is quiet: sends made while handling a batch of at least
    /// `batchedSendsFrom` completions are batched, one `io_uring_enter` for all of them.
    /// Measured on this 2-core VM (`serve echo` against `loadgen`): at once was 8-19 % faster
    /// in streaming (a few completions per turn), batched cut the CPU per message in
    /// ping-pong (hundreds per turn). False (`HERETIC_BATCHED_SENDS`, through
    /// `KernelConfiguration(environment:)`) batches every send.
    public var directSends: Bool
    /// Completions in one batch from which its handlers' sends are batched.
    public var batchedSendsFrom: Int
    /// True while handling a batch of completions large enough to batch sends.
    @usableFromInline var busyTurn = false
    @usableFromInline var arenas: [AnyKernelArena] = []
    /// Arenas for actively opened connections, one per handler type.
    @usableFromInline var connectArenas: [ObjectIdentifier: AnyKernelArena] = [:]
    var listeners: [KernelListenerState] = []
    /// Connections whose close or abort waits until no callback runs.
    @usableFromInline var finishing: [(slot: UInt32, generation: UInt32, reason: TCPCloseReason)] = []
    var timers: TimerWheel
    // UDP
    @usableFromInline var udpBindings: [KernelUDPBinding] = []
    /// Some socket has datagrams left from the last turn.
    var udpAgain = false
    /// Where batches of datagrams are read (allocated with the first binding).
    var datagramBuffers: UnsafeMutableRawPointer?
    var datagramInfo: UnsafeMutablePointer<heretic_datagram>?
    /// Sockets made by `udpSocket(port:)` for ports nothing is bound to.
    var senderSockets: [UInt16: Int32] = [:]
    public internal(set) var datagramsReceived = 0
    public internal(set) var datagramsSent = 0
    /// Datagrams the kernel would not take (its socket buffer full), and datagrams larger
    /// than a receive buffer (dropped).
    public internal(set) var datagramSendDrops = 0
    public internal(set) var datagramsTruncated = 0
    /// The applications' per-connection timers that are armed (on `timers`).
    var userTimerHandles: [UInt64: TimerHandle] = [:]
    var expired: [UInt64] = []
    /// Send buffers of the usual size kept for reuse.
    @usableFromInline var spareBuffers: [UnsafeMutableRawPointer] = []
    @usableFromInline static let sendBufferSize = 16_384
    @usableFromInline static let spareLimit = 256
    /// Nesting depth of handler callbacks: closes requested inside one wait until it returns.
    @usableFromInline var callbackDepth = 0

    // Counters
    public internal(set) var accepted = 0
    public private(set) var connected = 0
    public private(set) var closedNormally = 0
    public private(set) var failures = 0
    /// Accepts that failed. Those for want of descriptors or memory (EMFILE, ENFILE,
    /// ENOBUFS, ENOMEM) are also counted apart: the listener then pauses, 10 ms at first,
    /// doubling to 1 s while it goes on failing, and live connections are served meanwhile
    /// (instead of the loop spinning on a listener the kernel keeps reporting ready).
    public internal(set) var acceptErrors = 0
    public private(set) var acceptResourceErrors = 0
    /// io_uring submissions that found no room (the kernel not taking more) and were retried
    /// on a later turn.
    public var submissionRetries: Int { uring?.submissionRetries ?? 0 }
    /// The most a connection's send queue holds (unless set per connection); a send beyond
    /// it takes what fits and `writable` follows. The queue holds only what the kernel's
    /// socket buffer did not take.
    public var sendBufferSize: Int
    /// Sends that took less than asked (the connection's buffer or the process-wide cap).
    public private(set) var sendBufferFull = 0
    @usableFromInline var sendCredit: SendCredit
    /// Sends refused by the process-wide cap on send memory (`SendMemory`).
    public var sendCapRefusals: Int { sendCredit.refusals }
    /// Bytes this engine's send queues and spare buffers hold.
    public var sendBufferBytes: Int { sendCredit.held }
    /// Connections refused by the cap, told `writable` once there is room again.
    var capWaiters: [UInt64] = []
    var nextCapCheck: UInt64 = 0
    /// io_uring receive rearms after the buffer ring ran dry.
    public internal(set) var receiveBufferStarvation = 0
    public internal(set) var bytesSent = 0
    public internal(set) var bytesReceived = 0
    /// System calls into io_uring (submissions and waits) or epoll_wait.
    public var enters: UInt64 { uring?.enters ?? epoll?.enters ?? 0 }

    /// Sets the engine up as `configuration` says. With no backend given it chooses io_uring
    /// unless it is disabled (`/proc/sys/kernel/io_uring_disabled`) or cannot be set up here:
    /// then epoll. (`KernelConfiguration(environment:)` honours `HERETIC_KERNEL_BACKEND=epoll`.)
    /// io_uring receives land in `receiveBuffers` buffers of `receiveBufferSize` bytes, of
    /// which the ring holds `receiveBuffersInRing` at first (see `KernelConfiguration`).
    public init(core: Core, configuration: KernelConfiguration = KernelConfiguration()) throws(NetError) {
        precondition(core.isCurrent, "Heretic: make a KernelNetwork on its own core")
        self.core = core
        sendCredit = SendCredit(configuration.sendMemory)
        directSends = configuration.directSends
        batchedSendsFrom = configuration.batchedSendsFrom
        sendBufferSize = configuration.sendBufferSize
        receiveBuffers = configuration.receiveBuffers
        receiveBufferSize = configuration.receiveBufferSize
        timers = TimerWheel(startTick: core.nowMilliseconds)

        var choice = configuration.backend
        var reason = configuration.backend.map { configuration.backendSource ?? "\($0.rawValue) requested" } ?? ""
        if choice == nil && heretic_io_uring_disabled() > 0 {
            choice = .epoll
            reason = "io_uring disabled (/proc/sys/kernel/io_uring_disabled = \(heretic_io_uring_disabled()))"
        }
        var uring: URingBackend?
        if choice != .epoll {
            switch URingBackend.open(configuration) {
            case .success(let u):
                uring = u
                if reason.isEmpty { reason = "io_uring available" }
            case .failure(let error):
                if case .device(let why) = error { reason = why }
                if choice == .uring {
                    timers.release()
                    throw error
                }
            }
        }
        if let uring {
            backend = .uring
            self.uring = uring
            epoll = nil
        } else {
            switch EpollBackend.open() {
            case .success(let e):
                epoll = e
            case .failure(let error):
                timers.release()
                throw error
            }
            backend = .epoll
            self.uring = nil
        }
        backendReason = reason
        self.uring?.owner = self
        epoll?.owner = self
        core.addPoller(self)
    }

    deinit {
        for i in slots.indices where slots[i].fd >= 0 { heretic_close(slots[i].fd) }
        for l in listeners where l.fd >= 0 { heretic_close(l.fd) }
        for i in slots.indices { slots[i].out.release(spare: &spareBuffers, credit: &sendCredit) }
        for b in spareBuffers { b.deallocate() }
        sendCredit.refund(spareBuffers.count * Self.sendBufferSize)
        sendCredit.close()
        for b in udpBindings where b.fd >= 0 { heretic_close(b.fd) }
        for fd in senderSockets.values { heretic_close(fd) }
        datagramBuffers?.deallocate()
        datagramInfo?.deallocate()
        timers.release()
    }

    /// Connections alive (accepted or connecting, not yet closed for the application).
    public var connectionCount: Int { slots.count - freeSlots.count }

    // MARK: API

    /// Accepts connections on `port` (SO_REUSEPORT: other cores may listen on it too), each
    /// with a handler made by `makeHandler`. `address` limits it to one local address.
    /// Returns the port bound (the kernel's choice for port 0).
    @inlinable @discardableResult
    public func listenTCP<H: TCPHandler>(port: UInt16, address: IPv4Address, backlog: Int = 4096,
                                         keepalive: TCPKeepalive? = nil,
                                         _ makeHandler: @escaping () -> H) throws(NetError) -> UInt16 {
        let arena = KernelArena<H>(makeHandler: makeHandler)
        return try addListener(port: port, address: address, backlog: backlog, keepalive: keepalive, arena: arena)
    }

    /// Opens a connection to `remote`; `handler` hears of it (`connected`, or `closed` with
    /// `.refused` or `.timedOut`). Returns its handle, whose local port is 0: the kernel picks
    /// it, told in `connected` (`TCPConnection.localPort`).
    @inlinable @discardableResult
    public func connectTCP<H: TCPHandler>(to remote: TCPEndpoint, timeoutMilliseconds: Int? = nil, _ handler: H) -> TCPConnectionHandle {
        let key = ObjectIdentifier(H.self)
        let arena: KernelArena<H>
        if let a = connectArenas[key] {
            arena = unsafeDowncast(a, to: KernelArena<H>.self)
        } else {
            arena = KernelArena<H>(makeHandler: nil)
            register(arena)
            connectArenas[key] = arena
        }
        let ref = open(to: remote, timeoutMilliseconds: timeoutMilliseconds, arena: arena, handler: arena.store(handler))
        return TCPConnectionHandle(engine: self, id: ref, remote: remote, localPort: 0)
    }

    /// Accepts connections on `port` on every local address (SO_REUSEPORT).
    @inlinable @discardableResult
    public func listenTCP<H: TCPHandler>(port: UInt16, backlog: Int = 4096, keepalive: TCPKeepalive? = nil,
                                         _ makeHandler: @escaping () -> H) throws(NetError) -> UInt16 {
        try listenTCP(port: port, address: .any, backlog: backlog, keepalive: keepalive, makeHandler)
    }

    /// Stops listening on `port`, the port bound (connections already accepted go on).
    public func stopListening(port: UInt16) {
        for i in listeners.indices where listeners[i].port == port && listeners[i].fd >= 0 {
            let fd = listeners[i].fd
            listeners[i].fd = -1
            uring?.stopListening(fd: fd)
            epoll?.stopListening(fd: fd)
            heretic_close(fd)
        }
    }

    @usableFromInline func register(_ arena: AnyKernelArena) {
        precondition(arenas.count < 255, "Heretic: more than 255 handler types on one KernelNetwork")
        arena.index = UInt8(arenas.count)
        arenas.append(arena)
    }

    @usableFromInline func addListener(port: UInt16, address: IPv4Address, backlog: Int, keepalive: TCPKeepalive? = nil,
                     arena: AnyKernelArena) throws(NetError) -> UInt16 {
        let fd = heretic_tcp_listen(address.raw, port, Int32(clamping: backlog), 1, backend == .epoll ? 1 : 0)
        guard fd >= 0 else {
            if -fd == EADDRINUSE { throw .addressInUse(port) }
            throw .device("listen on \(address):\(port): \(String(cString: heretic_strerror(-fd)))")
        }
        if let k = keepalive {
            // Set on the listening socket: Linux's accepted sockets inherit it.
            _ = heretic_tcp_set_keepalive(fd, Int32(k.idle), Int32(k.interval), Int32(k.count))
        }
        var a: UInt32 = 0, p: UInt16 = 0
        _ = heretic_tcp_local(fd, &a, &p)
        register(arena)
        let index = UInt32(listeners.count)
        listeners.append(KernelListenerState(fd: fd, port: p, arena: arena))
        if let uring { uring.startAccepting(index) } else { epoll?.startAccepting(index) }
        return p
    }

    /// Accepting failed for want of descriptors or memory: stop accepting on the listener
    /// for a while (doubling while it goes on), so the loop serves live connections instead
    /// of spinning on a listener that stays ready.
    func pauseAccepting(_ index: UInt32) {
        acceptResourceErrors += 1
        let i = Int(index)
        guard listeners[i].fd >= 0, !listeners[i].paused else { return }
        listeners[i].paused = true
        listeners[i].backoff = min(1000, max(10, listeners[i].backoff * 2))
        if let uring { uring.pauseAccepting(index) } else { epoll?.pauseAccepting(index) }
        _ = timers.arm(at: core.nowMilliseconds &+ listeners[i].backoff, payload: KernelOp.acceptResume.userData(slot: index, generation: 0))
    }

    func resumeAccepting(_ index: UInt32) {
        let i = Int(index)
        guard listeners[i].paused else { return }
        listeners[i].paused = false
        guard listeners[i].fd >= 0 else { return }
        if let uring { uring.startAccepting(index) } else { epoll?.startAccepting(index) }
    }

    /// Whether an accept failed for want of descriptors or memory (rather than because of
    /// the one connection).
    static func isResourceError(_ e: Int32) -> Bool { e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM }

    /// For tests: every `every`-th io_uring submission finds no room (0: none).
    func failSubmissions(every: Int) {
        uring?.failSubmissions(every: every)
    }

    // MARK: Slots

    @usableFromInline func allocateSlot(fd: Int32, arena: AnyKernelArena, handler: UInt32) -> UInt32 {
        var s = KernelSlot()
        s.fd = fd
        s.arena = arena.index
        s.handler = handler
        // A generation new to the engine (not just to the slot: the table may have been
        // handed back and started again), so a late completion never matches a new slot.
        generations &+= 1
        s.generation = generations & 0xFF_FFFF
        if let i = freeSlots.popLast() {
            slots[Int(i)] = s
            return i
        }
        slots.append(s)
        return UInt32(slots.count - 1)
    }

    @usableFromInline func connection(_ slot: UInt32) -> KernelConnection {
        let s = slots[Int(slot)]
        return KernelConnection(kernel: self, ref: UInt64(s.generation) << 32 | UInt64(slot),
                             remote: TCPEndpoint(IPv4Address(raw: s.remoteAddress), s.remotePort), localPort: s.localPort)
    }

    /// The slot of a live connection's reference, or nil when it has closed meanwhile.
    @inlinable func live(_ ref: UInt64) -> UInt32? {
        let slot = UInt32(truncatingIfNeeded: ref)
        guard Int(slot) < slots.count, slots[Int(slot)].generation == UInt32(truncatingIfNeeded: ref >> 32),
              slots[Int(slot)].has(.open) else { return nil }
        return slot
    }

    /// Starts a connection; returns its reference.
    @usableFromInline func open(to remote: TCPEndpoint, timeoutMilliseconds: Int?, arena: AnyKernelArena, handler: UInt32) -> UInt64 {
        let fd = heretic_tcp_socket(backend == .epoll ? 1 : 0)
        guard fd >= 0 else {
            // Out of descriptors: refused, said once the caller's callback (if any) returns.
            let slot = allocateSlot(fd: -1, arena: arena, handler: handler)
            slots[Int(slot)].set(.open)
            finishing.append((slot, slots[Int(slot)].generation, .refused))
            return UInt64(slots[Int(slot)].generation) << 32 | UInt64(slot)
        }
        let slot = allocateSlot(fd: fd, arena: arena, handler: handler)
        slots[Int(slot)].remoteAddress = remote.address.raw
        slots[Int(slot)].remotePort = remote.port
        slots[Int(slot)].set([.open, .connecting])
        let gen = slots[Int(slot)].generation
        if let ms = timeoutMilliseconds {
            _ = timers.arm(at: core.nowMilliseconds &+ UInt64(max(1, ms)) &+ 1, payload: KernelOp.connectTimeout.userData(slot: slot, generation: gen))
        }
        let failed = if let uring { uring.connect(slot) } else { epoll?.connect(slot) }
        if let failed { finishing.append((slot, gen, failed)) }
        return UInt64(gen) << 32 | UInt64(slot)
    }

    // MARK: Sending

    /// Sends what the kernel takes at once and queues the rest, as much as the connection's
    /// send buffer (and the process-wide cap) allow. Returns the bytes taken; fewer than
    /// given means `writable` follows once the queue has room.
    public func send(_ ref: UInt64, _ bytes: UnsafeRawBufferPointer) -> Int {
        guard let slot = live(ref) else { return 0 }
        let p = slots.pointer(Int(slot))
        if p.pointee.has(.closeRequested) { return 0 }
        let n = bytes.count
        guard n > 0 else { return 0 }
        var offset = 0
        if mayWriteAtOnce(p) {
            // Nothing queued: write at once (epoll always; io_uring while the turn is quiet),
            // and queue only what the kernel's socket buffer cannot take.
            let w = heretic_sock_send(p.pointee.fd, bytes.baseAddress, n)
            if w == n {
                bytesSent &+= n
                return n
            }
            if w > 0 {
                offset = w
                bytesSent &+= w
            } else if w != -Int(EAGAIN) {
                // The connection failed. The send took the socket's error (a later read
                // would see only the end of the stream), so it ends the connection with it;
                // the bytes count as taken, as if queued when the connection broke.
                finishSoon(slot, Self.reason(forError: Int32(-w)))
                return n
            }
        }
        let taken = offset + enqueue(slot, ref, UnsafeRawBufferPointer(rebasing: bytes[offset...]))
        if taken < n {
            p.pointee.set(.wantWritable)
            sendBufferFull += 1
        }
        queuedMore(slot)
        return taken
    }

    /// Sends the parts as one write (one `sendmsg` when nothing is queued), queueing what the
    /// socket does not take, as `send` does.
    public func send(_ ref: UInt64, gathering parts: UnsafeBufferPointer<UnsafeRawBufferPointer>) -> Int {
        if parts.count == 1 { return send(ref, parts[0]) }
        guard let slot = live(ref) else { return 0 }
        let p = slots.pointer(Int(slot))
        if p.pointee.has(.closeRequested) { return 0 }
        var total = 0
        for part in parts { total += part.count }
        guard total > 0 else { return 0 }
        var skip = 0
        if mayWriteAtOnce(p) {
            let count = min(parts.count, 64)
            let w = withUnsafeTemporaryAllocation(of: UnsafeRawPointer?.self, capacity: count) { bases in
                withUnsafeTemporaryAllocation(of: Int.self, capacity: count) { lengths in
                    for i in 0..<count {
                        bases[i] = parts[i].baseAddress
                        lengths[i] = parts[i].count
                    }
                    return heretic_sock_sendv(p.pointee.fd, bases.baseAddress, lengths.baseAddress, Int32(count))
                }
            }
            if w == total {
                bytesSent &+= total
                return total
            }
            if w > 0 {
                skip = w
                bytesSent &+= w
            } else if w != -Int(EAGAIN) {
                finishSoon(slot, Self.reason(forError: Int32(-w)))
                return total
            }
        }
        var taken = skip
        for part in parts {
            if skip >= part.count {
                skip -= part.count
                continue
            }
            let rest = UnsafeRawBufferPointer(rebasing: part[skip...])
            skip = 0
            let n = enqueue(slot, ref, rest)
            taken += n
            if n < rest.count { break }
        }
        if taken < total {
            p.pointee.set(.wantWritable)
            sendBufferFull += 1
        }
        queuedMore(slot)
        return taken
    }

    /// Whether a send may go to the socket at once: nothing is queued before it, the
    /// connection is established, and (io_uring) the turn is quiet.
    @inline(__always) func mayWriteAtOnce(_ p: UnsafeMutablePointer<KernelSlot>) -> Bool {
        (uring == nil || (directSends && !busyTurn)) && p.pointee.out.isEmpty && !p.pointee.has(.connecting)
    }

    /// Queues what the connection's buffer, then the memory cap, take of `bytes`; returns how
    /// many (and counts them as sent).
    func enqueue(_ slot: UInt32, _ ref: UInt64, _ bytes: UnsafeRawBufferPointer) -> Int {
        let p = slots.pointer(Int(slot))
        let limit = p.pointee.sendLimitKiB == 0 ? sendBufferSize : Int(p.pointee.sendLimitKiB) << 10
        var take = min(bytes.count, max(0, limit - p.pointee.out.queued))
        if take > 0 {
            let growth = p.pointee.out.growth(appending: take, spareAvailable: !spareBuffers.isEmpty)
            if growth > 0 && !sendCredit.charge(growth) {
                take = min(take, p.pointee.out.roomWithoutGrowth)
                if !p.pointee.has(.capWaiting) {
                    p.pointee.set(.capWaiting)
                    capWaiters.append(ref)
                }
            }
        }
        if take > 0 { p.pointee.out.append(UnsafeRawBufferPointer(rebasing: bytes[..<take]), spare: &spareBuffers) }
        bytesSent &+= take
        return take
    }

    /// After queueing: ask for `writable` past the mark, and (io_uring) send at the end of
    /// the turn.
    func queuedMore(_ slot: UInt32) {
        let p = slots.pointer(Int(slot))
        if p.pointee.out.queued >= Self.writableMark(sendLimit(slot)) { p.pointee.set(.wantWritable) }
        if let uring, !p.pointee.out.isEmpty && !p.pointee.has(.flushQueued) && !p.pointee.has(.sendInFlight)
            && !p.pointee.has(.connecting) {
            p.pointee.set(.flushQueued)
            uring.flushList.append(slot)
        }
    }

    /// The queue drained below this tells a held-back handler `writable`: half its limit,
    /// at most `TCPLayer.writableThreshold`.
    @inlinable static func writableMark(_ limit: Int) -> Int { min(TCPLayer.writableThreshold, limit / 2) }

    @usableFromInline func sendLimit(_ slot: UInt32) -> Int {
        let kib = slots[Int(slot)].sendLimitKiB
        return kib == 0 ? sendBufferSize : Int(kib) << 10
    }

    /// The queue drained: FIN if a close waits for it, `writable` if the application was
    /// held back.
    func drained(_ slot: UInt32) {
        let p = slots.pointer(Int(slot))
        if p.pointee.has(.closeRequested) {
            sendFIN(slot)
            return
        }
        if p.pointee.has(.wantWritable) && !p.pointee.has(.capWaiting) && p.pointee.out.queued < Self.writableMark(sendLimit(slot)) {
            p.pointee.clear(.wantWritable)
            callback(slot) { a, h, c in a.writable(h, c) }
        }
    }

    func sendFIN(_ slot: UInt32) {
        let p = slots.pointer(Int(slot))
        guard !p.pointee.has(.finSent) else { return }
        p.pointee.set(.finSent)
        _ = heretic_tcp_shutdown_write(p.pointee.fd)
        if p.pointee.has(.peerFinished) { finishSoon(slot, .normal) }
    }

    // MARK: Closing

    public func close(_ ref: UInt64) {
        guard let slot = live(ref) else { return }
        let p = slots.pointer(Int(slot))
        if p.pointee.has(.connecting) {
            finishSoon(slot, .normal)
            return
        }
        guard !p.pointee.has(.closeRequested) else { return }
        p.pointee.set(.closeRequested)
        if p.pointee.out.isEmpty && !p.pointee.has(.sendInFlight) { sendFIN(slot) }
    }

    public func abort(_ ref: UInt64) {
        guard let slot = live(ref) else { return }
        slots[Int(slot)].set(.abortive)
        finishSoon(slot, .reset)
    }

    /// Ends the connection for the application once no callback runs.
    @usableFromInline func finishSoon(_ slot: UInt32, _ reason: TCPCloseReason) {
        if callbackDepth == 0 {
            finish(slot, reason)
        } else {
            finishing.append((slot, slots[Int(slot)].generation, reason))
        }
    }

    func runFinishing() {
        while callbackDepth == 0, !finishing.isEmpty {
            let work = finishing
            finishing.removeAll()
            for (slot, gen, reason) in work where Int(slot) < slots.count && slots[Int(slot)].generation == gen {
                finish(slot, reason)
            }
        }
    }

    /// Tells the handler (once) and tears the socket down: at once with epoll; with io_uring
    /// after every request on it has completed (their buffers and slot stay valid until then).
    func finish(_ slot: UInt32, _ reason: TCPCloseReason) {
        let p = slots.pointer(Int(slot))
        if p.pointee.has(.open) {
            p.pointee.clear(.open)
            if reason == .normal { closedNormally += 1 } else { failures += 1 }
            if !userTimerHandles.isEmpty,
               let t = userTimerHandles.removeValue(forKey: UInt64(p.pointee.generation) << 32 | UInt64(slot)) {
                timers.cancel(t)
            }
            let arena = arenas[Int(p.pointee.arena)]
            callbackDepth += 1
            arena.closed(p.pointee.handler, reason)
            callbackDepth -= 1
        }
        guard !p.pointee.has(.tearingDown) else { return }
        p.pointee.set(.tearingDown)
        if p.pointee.has(.abortive) && p.pointee.fd >= 0 { _ = heretic_tcp_set_linger_zero(p.pointee.fd) }
        if let uring {
            if p.pointee.fd >= 0, p.pointee.has(.recvArmed) || p.pointee.has(.sendInFlight) || p.pointee.has(.connectInFlight) {
                uring.cancel(slot)
                return
            }
            // A connect whose submission still waits for room holds nothing of the kernel's.
            uring.forgetResubmissions(slot, generation: p.pointee.generation)
        }
        release(slot)
    }

    /// Frees a torn-down slot once nothing of the kernel's refers to it.
    func release(_ slot: UInt32) {
        let p = slots.pointer(Int(slot))
        guard p.pointee.has(.tearingDown), !p.pointee.has(.recvArmed), !p.pointee.has(.sendInFlight),
              !p.pointee.has(.connectInFlight), !p.pointee.has(.cancelInFlight), !p.pointee.has(.released) else { return }
        p.pointee.set(.released)
        if p.pointee.fd >= 0 { heretic_close(p.pointee.fd) }
        p.pointee.fd = -1
        p.pointee.out.release(spare: &spareBuffers, credit: &sendCredit)
        freeSlots.append(slot)
    }

    /// Hands the slot table's chunks back once every connection is gone. Run at the end of a
    /// poll, never inside one: the code that freed the last slot may still hold its address.
    func trimSlots() {
        if !freeSlots.isEmpty && freeSlots.count == slots.count {
            slots.truncate(to: 0)
            freeSlots.removeAll()
        }
    }

    // MARK: Settings

    public func queued(_ ref: UInt64) -> Int {
        guard let slot = live(ref) else { return 0 }
        return slots[Int(slot)].out.queued
    }

    public func canSend(_ ref: UInt64) -> Bool {
        guard let slot = live(ref) else { return false }
        return !slots[Int(slot)].has(.closeRequested) && !slots[Int(slot)].has(.finSent)
    }

    public func isHeldBack(_ ref: UInt64) -> Bool {
        guard let slot = live(ref) else { return false }
        return slots[Int(slot)].has(.wantWritable)
    }

    public func setNoDelay(_ ref: UInt64, _ on: Bool) {
        guard let slot = live(ref), slots[Int(slot)].fd >= 0 else { return }
        _ = heretic_tcp_set_nodelay(slots[Int(slot)].fd, on ? 1 : 0)
    }

    public func setKeepalive(_ ref: UInt64, _ keepalive: TCPKeepalive?) {
        guard let slot = live(ref), slots[Int(slot)].fd >= 0 else { return }
        _ = heretic_tcp_set_keepalive(slots[Int(slot)].fd, Int32(keepalive?.idle ?? 0), Int32(keepalive?.interval ?? 0),
                                      Int32(keepalive?.count ?? 0))
    }

    public func setSendBufferSize(_ ref: UInt64, _ bytes: Int) {
        guard let slot = live(ref) else { return }
        slots[Int(slot)].sendLimitKiB = UInt16(bytes <= 0 ? 0 : max(1, min(Int(UInt16.max), (bytes + 1023) >> 10)))
    }

    public func setIdleTimeout(_ ref: UInt64, _ seconds: Int) {
        guard let slot = live(ref) else { return }
        let p = slots.pointer(Int(slot))
        p.pointee.idleSeconds = UInt16(clamping: max(0, seconds))
        p.pointee.lastActive = UInt32(truncatingIfNeeded: core.nowMilliseconds)
        if seconds > 0 && !p.pointee.has(.idleTimerArmed) {
            p.pointee.set(.idleTimerArmed)
            _ = timers.arm(at: core.nowMilliseconds &+ UInt64(seconds) * 1000 &+ 1,
                           payload: KernelOp.idleTimeout.userData(slot: slot, generation: p.pointee.generation))
        }
    }

    public func isOpen(_ ref: UInt64) -> Bool { live(ref) != nil }

    /// Arms (or with nil stops) the application's timer of a connection, on the engine's
    /// wheel; its handle is kept only while armed.
    public func setTimer(_ ref: UInt64, _ milliseconds: Int?) {
        if let old = userTimerHandles.removeValue(forKey: ref) { timers.cancel(old) }
        guard let ms = milliseconds, let slot = live(ref) else { return }
        userTimerHandles[ref] = timers.arm(at: core.nowMilliseconds &+ UInt64(max(0, ms)) &+ 1,
                                           payload: KernelOp.userTimer.userData(slot: slot, generation: slots[Int(slot)].generation))
    }

    /// The application can take `bytes` more: at 0 reading stops (the kernel's window
    /// closes as its buffer fills), and resumes when room returns.
    public func setReceiveWindow(_ ref: UInt64, _ bytes: Int) {
        guard let slot = live(ref) else { return }
        let p = slots.pointer(Int(slot))
        p.pointee.set(.windowed)
        p.pointee.window = UInt32(clamping: max(0, bytes))
        if bytes <= 0 {
            p.pointee.set(.readPaused)
        } else if p.pointee.has(.readPaused) {
            p.pointee.clear(.readPaused)
            if let uring { uring.resumeReceiving(slot) } else { epoll?.resumeReceiving(slot) }
        }
    }

    // MARK: The loop

    public func poll(_ core: Core) -> Int {
        defer { trimSlots() }
        var work = 0
        let now = core.nowMilliseconds
        // Deadlines are armed a tick past the time asked for (the clock reads whole
        // milliseconds, already partly gone), so processing up to `now` is never early.
        if timers.count > 0 && timers.nextHint <= now {
            timers.advance(to: now, into: &expired)
            for e in expired { timerFired(e) }
            work += expired.count
            expired.removeAll(keepingCapacity: true)
            runFinishing()
        }
        if !capWaiters.isEmpty && now >= nextCapCheck {
            nextCapCheck = now &+ 10  // (while connections wait: every 10 ms, no spinning)
            if sendCredit.canGrow { wakeCapWaiters() }
        }
        if udpAgain { work += receiveDatagramsAgain() }
        if let uring { work += uring.poll() } else if let epoll { work += epoll.poll() }
        return work
    }

    public var canSleep: Bool { true }

    /// Tells connections the cap refused that memory is back under it.
    func wakeCapWaiters() {
        let waiting = capWaiters
        capWaiters.removeAll()
        for ref in waiting {
            guard let slot = live(ref) else { continue }
            slots[Int(slot)].clear(.capWaiting)
            slots[Int(slot)].clear(.wantWritable)
            callback(slot) { a, h, c in a.writable(h, c) }
        }
        runFinishing()
    }

    /// Sleeps in io_uring or epoll until IO completes, `wakeFD` (the core's) is signalled, or
    /// the earlier of `timeoutNanoseconds` and this engine's next timer passes.
    public func sleep(_ core: Core, wakeFD: Int32, timeoutNanoseconds: Int64) -> Bool {
        defer { trimSlots() }
        if !finishing.isEmpty || udpAgain || uring?.hasPendingWork == true || epoll?.hasPendingWork == true { return true }
        var timeout = timeoutNanoseconds
        if timers.count > 0, let next = timers.nextEventTick() {
            let now = core.nowMilliseconds
            let own: Int64 = next > now ? Int64(next - now) * 1_000_000 : 0
            timeout = timeout < 0 ? own : min(timeout, own)
        }
        if timeout == 0 { return true }
        if let uring {
            uring.sleep(wakeFD: wakeFD, timeoutNanoseconds: timeout)
        } else {
            epoll?.sleep(wakeFD: wakeFD, timeoutNanoseconds: timeout)
        }
        return true
    }

    func timerFired(_ payload: UInt64) {
        let (op, slot, gen) = KernelOp.decode(payload)
        if op == .acceptResume {
            if Int(slot) < listeners.count { resumeAccepting(slot) }
            return
        }
        guard Int(slot) < slots.count, slots[Int(slot)].generation == gen, slots[Int(slot)].has(.open) else { return }
        let p = slots.pointer(Int(slot))
        switch op {
        case .connectTimeout:
            if p.pointee.has(.connecting) { finish(slot, .timedOut) }
        case .userTimer:
            userTimerHandles[UInt64(gen) << 32 | UInt64(slot)] = nil
            callback(slot) { a, h, c in a.timerFired(h, c) }
        case .idleTimeout:
            p.pointee.clear(.idleTimerArmed)
            guard p.pointee.idleSeconds > 0 else { return }
            let now = UInt32(truncatingIfNeeded: core.nowMilliseconds)
            let deadline = p.pointee.lastActive &+ UInt32(p.pointee.idleSeconds) * 1000
            if Int32(bitPattern: deadline &- now) > 0 {
                p.pointee.set(.idleTimerArmed)
                _ = timers.arm(at: core.nowMilliseconds &+ UInt64(deadline &- now) &+ 1, payload: payload)
            } else {
                p.pointee.set(.abortive)
                finish(slot, .idle)
            }
        default:
            break
        }
    }

    /// Runs a handler callback of `slot` with its connection value.
    @inline(__always) func callback(_ slot: UInt32, _ body: (AnyKernelArena, UInt32, KernelConnection) -> Void) {
        let s = slots[Int(slot)]
        guard s.has(.open) else { return }
        callbackDepth += 1
        body(arenas[Int(s.arena)], s.handler, connection(slot))
        callbackDepth -= 1
    }

    // MARK: Connections the backends report

    func accepted(fd: Int32, listener: UInt32) {
        accepted += 1
        let arena = listeners[Int(listener)].arena
        var addr: UInt32 = 0, port: UInt16 = 0
        _ = heretic_tcp_peer(fd, &addr, &port)
        let slot = allocateSlot(fd: fd, arena: arena, handler: arena.makeAccepted())
        let p = slots.pointer(Int(slot))
        p.pointee.remoteAddress = addr
        p.pointee.remotePort = port
        p.pointee.localPort = listeners[Int(listener)].port
        p.pointee.set(.open)
        epoll?.watch(fd, slot: slot, generation: p.pointee.generation)
        established(slot)
    }

    /// The handshake is done: tell the handler, then start receiving.
    func established(_ slot: UInt32) {
        callback(slot) { a, h, c in a.connected(h, c) }
        guard slots[Int(slot)].has(.open) else { return }
        if let uring { uring.established(slot) } else { epoll?.established(slot) }
    }

    func peerFinished(_ slot: UInt32) {
        let p = slots.pointer(Int(slot))
        guard !p.pointee.has(.peerFinished), p.pointee.has(.open) else { return }
        p.pointee.set(.peerFinished)
        callback(slot) { a, h, c in a.peerClosed(h, c) }
        if p.pointee.has(.finSent) && p.pointee.has(.open) { finishSoon(slot, .normal) }
    }

    func connectDone(_ slot: UInt32, error: Int32) {
        let p = slots.pointer(Int(slot))
        if p.pointee.has(.tearingDown) {
            release(slot)
            return
        }
        guard p.pointee.has(.connecting) else { return }
        guard error == 0 else {
            finish(slot, Self.reason(forConnectError: error))
            return
        }
        p.pointee.clear(.connecting)
        connected += 1
        var addr: UInt32 = 0, port: UInt16 = 0
        _ = heretic_tcp_local(p.pointee.fd, &addr, &port)
        p.pointee.localPort = port
        established(slot)
    }

    // MARK: Errors

    /// The user-space stack's words for what the kernel reports on an open connection.
    static func reason(forError e: Int32) -> TCPCloseReason {
        switch e {
        case ETIMEDOUT: .timedOut
        case ECONNREFUSED: .refused
        default: .reset  // ECONNRESET, EPIPE, ECONNABORTED, ...
        }
    }

    /// ... and for a connection attempt that failed.
    static func reason(forConnectError e: Int32) -> TCPCloseReason {
        switch e {
        case ETIMEDOUT, ECANCELED: .timedOut
        case ECONNRESET: .reset
        default: .refused  // ECONNREFUSED, ENETUNREACH, EHOSTUNREACH, EADDRNOTAVAIL, ...
        }
    }
}
