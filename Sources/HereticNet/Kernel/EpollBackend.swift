import HereticTransport
import CHereticKernel
import CHereticSys
import Glibc
import HereticCore

/// A `KernelNetwork`'s IO through epoll, edge-triggered, with non-blocking reads into one
/// scratch buffer and writes straight from the handler's bytes: the fallback where io_uring
/// is missing or disabled.
final class EpollBackend: KernelIO {
    let epollFD: Int32
    /// The engine this backend carries (set once, right after the engine is made; it owns
    /// the backend, so it outlives it).
    unowned(unsafe) var owner: KernelNetwork?
    @inline(__always) var engine: KernelNetwork { owner.unsafelyUnwrapped }

    /// Scratch buffer reads land in before the handler sees them.
    let scratch: UnsafeMutableRawPointer
    static let scratchSize = 65_536
    let events: UnsafeMutablePointer<heretic_completion>
    /// Connections with unread data left (paused reads resumed, or a read batch cut short).
    var readAgain: [UInt32] = []
    var waits: UInt64 = 0
    var wakeArmed = false
    var wakeFD: Int32 = -1

    /// Makes the epoll instance; on failure, why.
    static func open() -> Result<EpollBackend, NetError> {
        let ep = heretic_epoll_create()
        guard ep >= 0 else { return .failure(.device("epoll_create: \(String(cString: heretic_strerror(-ep)))")) }
        return .success(EpollBackend(epollFD: ep))
    }

    private init(epollFD: Int32) {
        self.epollFD = epollFD
        scratch = .allocate(byteCount: Self.scratchSize, alignment: 64)
        events = .allocate(capacity: KernelNetwork.completionBatch)
    }

    deinit {
        heretic_close(epollFD)
        scratch.deallocate()
        events.deallocate()
    }

    var enters: UInt64 { waits }
    var hasPendingWork: Bool { !readAgain.isEmpty }

    // MARK: Registration

    func startAccepting(_ index: UInt32) {
        _ = heretic_epoll_ctl(epollFD, 1, engine.listeners[Int(index)].fd, HERETIC_EPOLLIN, KernelOp.accept.userData(slot: index, generation: 0))
    }

    func pauseAccepting(_ index: UInt32) {
        _ = heretic_epoll_ctl(epollFD, 3, engine.listeners[Int(index)].fd, 0, 0)
    }

    /// Nothing to do: closing the socket takes it out of the epoll set.
    func stopListening(fd: Int32) {}

    /// Watches a connection's socket: readable, writable, hang-up, edge-triggered.
    func watch(_ fd: Int32, slot: UInt32, generation: UInt32) {
        _ = heretic_epoll_ctl(epollFD, 1, fd, HERETIC_EPOLLIN | HERETIC_EPOLLOUT | HERETIC_EPOLLRDHUP | HERETIC_EPOLLET,
                              KernelOp.io.userData(slot: slot, generation: generation))
    }

    func connect(_ slot: UInt32) -> TCPCloseReason? {
        let p = engine.slots.pointer(Int(slot))
        let rc = heretic_tcp_connect(p.pointee.fd, p.pointee.remoteAddress, p.pointee.remotePort)
        guard rc == 0 || rc == -EINPROGRESS else { return KernelNetwork.reason(forConnectError: -rc) }
        watch(p.pointee.fd, slot: slot, generation: p.pointee.generation)
        return nil
    }

    func established(_ slot: UInt32) {
        readSocket(slot)  // data may have come with the handshake (edge already passed)
        if !engine.slots[Int(slot)].out.isEmpty { writePending(slot) }
    }

    func resumeReceiving(_ slot: UInt32) { readAgain.append(slot) }

    func addUDP(_ index: UInt32) {
        _ = heretic_epoll_ctl(epollFD, 1, engine.udpBindings[Int(index)].fd, HERETIC_EPOLLIN | HERETIC_EPOLLET,
                              KernelOp.udp.userData(slot: index, generation: 0))
    }

    func removeUDP(fd: Int32) {
        _ = heretic_epoll_ctl(epollFD, 3, fd, 0, 0)
    }

    // MARK: The loop

    func poll() -> Int {
        let engine = self.engine
        var work = 0
        if !readAgain.isEmpty {
            let again = readAgain
            readAgain.removeAll()
            for slot in again where Int(slot) < engine.slots.count && engine.slots[Int(slot)].has(.open) {
                readSocket(slot)
            }
            work += again.count
            engine.runFinishing()
        }
        let n = heretic_epoll_wait(epollFD, events, Int32(KernelNetwork.completionBatch), 0)
        waits &+= 1
        if n > 0 { dispatch(Int(n)); work += Int(n) }
        return work
    }

    func sleep(wakeFD: Int32, timeoutNanoseconds timeout: Int64) {
        if !wakeArmed || self.wakeFD != wakeFD {
            self.wakeFD = wakeFD
            wakeArmed = true
            _ = heretic_epoll_ctl(epollFD, 1, wakeFD, HERETIC_EPOLLIN, KernelOp.wake.userData(slot: 0, generation: 0))
        }
        let ms: Int32 = timeout < 0 ? -1 : Int32(clamping: (timeout + 999_999) / 1_000_000)
        let n = heretic_epoll_wait(epollFD, events, Int32(KernelNetwork.completionBatch), ms)
        waits &+= 1
        if n > 0 { dispatch(Int(n)) }
    }

    // MARK: Events

    func dispatch(_ n: Int) {
        let engine = self.engine
        for i in 0..<n {
            let c = events[i]
            let (op, slot, gen) = KernelOp.decode(c.user_data)
            let events = UInt32(bitPattern: c.res)
            switch op {
            case .accept:
                acceptAll(slot)
            case .wake:
                heretic_eventfd_drain(wakeFD)
            case .udp:
                engine.receiveDatagrams(slot)
            case .io:
                guard Int(slot) < engine.slots.count, engine.slots[Int(slot)].generation == gen,
                      engine.slots[Int(slot)].has(.open) else { continue }
                if engine.slots[Int(slot)].has(.connecting) {
                    guard events & (HERETIC_EPOLLOUT | HERETIC_EPOLLERR | HERETIC_EPOLLHUP) != 0 else { continue }
                    engine.connectDone(slot, error: heretic_socket_error(engine.slots[Int(slot)].fd))
                    continue
                }
                if events & HERETIC_EPOLLOUT != 0 && !engine.slots[Int(slot)].out.isEmpty { writePending(slot) }
                if events & (HERETIC_EPOLLRDHUP | HERETIC_EPOLLHUP | HERETIC_EPOLLERR) != 0 { engine.slots[Int(slot)].set(.hangup) }
                if events & (HERETIC_EPOLLIN | HERETIC_EPOLLRDHUP | HERETIC_EPOLLHUP | HERETIC_EPOLLERR) != 0 {
                    readSocket(slot)
                }
                // After the peer's FIN nothing reads the socket any more; a reset that follows
                // shows only as an error here (io_uring learns of it at the next send).
                if events & HERETIC_EPOLLERR != 0 && engine.slots[Int(slot)].has(.peerFinished) {
                    let e = heretic_socket_error(engine.slots[Int(slot)].fd)
                    if e != 0 { engine.finishSoon(slot, KernelNetwork.reason(forError: e)) }
                }
            default:
                break
            }
            engine.runFinishing()
        }
    }

    func acceptAll(_ listener: UInt32) {
        let engine = self.engine
        let fd = engine.listeners[Int(listener)].fd
        guard fd >= 0 else { return }
        for _ in 0..<256 {
            let c = heretic_tcp_accept(fd)
            if c >= 0 {
                engine.listeners[Int(listener)].backoff = 0
                engine.accepted(fd: c, listener: listener)
                engine.runFinishing()
                continue
            }
            if c != -EAGAIN {
                engine.acceptErrors += 1
                if KernelNetwork.isResourceError(-c) {
                    engine.pauseAccepting(listener)
                    return
                }
                continue  // that connection's own failure (ECONNABORTED, ...): the next may do
            }
            return
        }
        // More wait: edge-triggered is off for listeners, so the next wait reports them.
    }

    /// Reads what the socket holds (edge-triggered: until it is empty, or a batch limit).
    func readSocket(_ slot: UInt32) {
        let engine = self.engine
        let p = engine.slots.pointer(Int(slot))
        var reads = 0
        while p.pointee.has(.open) && !p.pointee.has(.readPaused) && !p.pointee.has(.peerFinished) {
            if reads == 16 {
                readAgain.append(slot)  // fairness: the rest next turn
                return
            }
            reads += 1
            let want = p.pointee.has(.windowed) ? min(Self.scratchSize, Int(p.pointee.window)) : Self.scratchSize
            let n = heretic_sock_recv(p.pointee.fd, scratch, want)
            if n > 0 {
                engine.bytesReceived &+= n
                if p.pointee.idleSeconds > 0 { p.pointee.lastActive = UInt32(truncatingIfNeeded: engine.core.nowMilliseconds) }
                let data = UnsafeRawBufferPointer(start: scratch, count: n)
                engine.callback(slot) { a, h, c in a.received(h, data, c) }
                // A short read drained the socket and a later arrival is a new edge; but an
                // edge seen while reading was paused, or a hang-up, is not repeated.
                if n < want && !p.pointee.has(.windowed) && !p.pointee.has(.hangup) { return }
            } else if n == 0 {
                engine.peerFinished(slot)
                return
            } else {
                if n != -Int(EAGAIN) { engine.finishSoon(slot, KernelNetwork.reason(forError: Int32(-n))) }
                return
            }
        }
    }

    func writePending(_ slot: UInt32) {
        let engine = self.engine
        let p = engine.slots.pointer(Int(slot))
        while !p.pointee.out.isEmpty {
            _ = p.pointee.out.promote()
            let (base, length) = p.pointee.out.unsent
            let w = heretic_sock_send(p.pointee.fd, base, length)
            if w > 0 {
                _ = p.pointee.out.consume(w, spare: &engine.spareBuffers, credit: &engine.sendCredit)
                continue
            }
            if w != -Int(EAGAIN) { engine.finishSoon(slot, KernelNetwork.reason(forError: Int32(-w))) }
            return
        }
        engine.drained(slot)
    }
}
