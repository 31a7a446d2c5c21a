import HereticCore

/// Why a TCP operation failed: the async API throws it, blocking-style calls return it.
public enum TCPError: Error, Equatable, Sendable {
    /// The peer answered the connection attempt with RST (nothing listens there), or every
    /// local port to it is in use.
    case refused
    /// The peer reset the connection, or it was aborted here.
    case reset
    /// Retransmissions, keepalive probes, the connect deadline or the idle timeout ran out,
    /// or a blocking-style call's own timeout passed.
    case timedOut
    /// The connection is closed for this operation (closed here, or the peer finished and
    /// there is nothing more to read).
    case closed
    /// The waiting task was cancelled (async API).
    case cancelled

    init(_ reason: TCPCloseReason) {
        switch reason {
        case .normal: self = .closed
        case .reset: self = .reset
        case .refused: self = .refused
        case .timedOut, .idle: self = .timedOut
        }
    }
}

/// What a blocking-style call inside a stackless task returns, as in the original system:
/// done, timed out, or failed with a cause.
public enum TCPStatus: Equatable, Sendable {
    case ok
    case timeout
    case failure(TCPError)

    /// The status after a task's wait on an event ended: the event's value, or a timeout
    /// when it stayed empty.
    @inlinable public init(waited value: TCPStatus?) { self = value ?? .timeout }
}

/// What a blocking-style send did.
public enum TCPSendStatus: Equatable, Sendable {
    /// Everything was queued.
    case sent
    /// Only the first `count` bytes were queued (maybe none): the connection's send buffer
    /// (or the process-wide cap on send memory) is full. Wait with `waitWritable`, then send
    /// the rest.
    case partial(Int)
    case failure(TCPError)
}

/// A TCP connection with a receive buffer, for code that reads when it chooses instead of
/// being called with data: the async API (`read`, `write`, `close`) and blocking-style calls
/// inside stackless tasks (which wait on one of their inline events).
///
/// Use it on the core that polls its interface. The buffer exists only while unread data
/// does ("lazy IO") and is bounded by `receiveCapacity`: the advertised window is what is
/// left of it, so a reader that falls behind closes the window and the sender waits
/// (zero-window probes), instead of the stack buffering without bound.
public final class TCPSocket: @unchecked Sendable {
    enum Phase { case connecting, open, closed }

    /// The engine carrying the connection (held unretained: it outlives its sockets).
    @usableFromInline unowned(unsafe) let engine: any ConnectionEngine
    /// The core whose loop polls the interface (for async timeouts and cancellation).
    let core: Core?
    package var ref: UInt64 = 0
    public private(set) var remote: TCPEndpoint
    public package(set) var localPort: UInt16 = 0
    var phase = Phase.connecting
    /// Why the connection ended (nil while open or after a normal close).
    public private(set) var error: TCPError?
    /// The peer sent FIN: once the buffer is read, reads return end of stream.
    public private(set) var peerFinished = false
    /// Received bytes not yet read; `head` of them already consumed.
    var inbox: [UInt8] = []
    var head = 0
    /// The most received data held for the reader (the receive window's size).
    public let receiveCapacity: Int

    // Who waits, and for what. Async code waits with a continuation, tasks with an event.
    enum Outcome { case ready, failed(TCPError) }
    var readWaiter: UnsafeContinuation<Outcome, Never>?
    var writeWaiter: UnsafeContinuation<Outcome, Never>?
    var connectWaiter: UnsafeContinuation<Outcome, Never>?
    var closeWaiter: UnsafeContinuation<Outcome, Never>?
    var readEvent: EventRef<TCPStatus>?
    var writeEvent: EventRef<TCPStatus>?
    var connectEvent: EventRef<TCPStatus>?
    var closeEvent: EventRef<TCPStatus>?
    var waitIDs: [UInt64] = [0, 0, 0, 0]

    package init(engine: any ConnectionEngine, remote: TCPEndpoint, receiveCapacity: Int) {
        self.engine = engine
        self.core = Core.current
        self.remote = remote
        self.receiveCapacity = max(1460, receiveCapacity)
    }

    /// The connection as the engine's calls take it.
    var handle: TCPConnectionHandle { TCPConnectionHandle(engine: engine, id: ref, remote: remote, localPort: localPort) }

    /// Sets `event` once the connection started by `openSocket` is established (`.ok`) or
    /// has failed; at once if that is already decided.
    func notifyConnected(_ event: EventRef<TCPStatus>) {
        switch phase {
        case .connecting: connectEvent = event
        case .open: _ = core?.set(event, .ok)
        case .closed: _ = core?.set(event, status)
        }
    }

    /// Bytes received and not yet read.
    public var available: Int { inbox.count - head }
    /// Whether the connection is established and not closed.
    public var isOpen: Bool { phase == .open }
    /// Bytes written and not yet acknowledged by the peer (on kernel sockets: not yet taken
    /// by the kernel).
    public var bytesQueued: Int { phase == .open ? handle.bytesQueued : 0 }

    // MARK: Events from the stack (through `SocketHandler`)

    func connected(_ connection: some TCPConnection) {
        ref = connection.handle.id
        localPort = connection.localPort
        remote = connection.remote
        phase = .open
        connection.setReceiveWindow(receiveCapacity)
        wake(&connectWaiter, &connectEvent, .ready)
    }

    func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        if head > 0 && head == inbox.count {
            inbox.removeAll(keepingCapacity: true)
            head = 0
        }
        inbox.append(contentsOf: data)
        connection.setReceiveWindow(receiveCapacity - available)
        wake(&readWaiter, &readEvent, .ready)
    }

    func writable() { wake(&writeWaiter, &writeEvent, .ready) }

    func peerClosed() {
        peerFinished = true
        wake(&readWaiter, &readEvent, .ready)
    }

    func closed(_ reason: TCPCloseReason) {
        phase = .closed
        if reason != .normal { error = TCPError(reason) }
        let failure = Outcome.failed(error ?? .closed)
        wake(&connectWaiter, &connectEvent, failure)
        wake(&readWaiter, &readEvent, error == nil ? .ready : failure)  // a normal close: end of stream
        wake(&writeWaiter, &writeEvent, failure)
        wake(&closeWaiter, &closeEvent, error == nil ? .ready : failure)
    }

    func wake(_ waiter: inout UnsafeContinuation<Outcome, Never>?, _ event: inout EventRef<TCPStatus>?, _ outcome: Outcome) {
        if let w = waiter {
            waiter = nil
            w.resume(returning: outcome)
        }
        if let e = event {
            event = nil
            let status: TCPStatus
            switch outcome {
            case .ready: status = .ok
            case .failed(let err): status = .failure(err)
            }
            _ = core?.set(e, status)
        }
    }

    // MARK: Reading and writing (both APIs)

    /// Copies up to `buffer.count` received bytes into `buffer`; returns how many (0: none
    /// buffered now). Reading reopens the window.
    public func receive(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        let n = min(buffer.count, available)
        guard n > 0 else { return 0 }
        inbox.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + head, byteCount: n) }
        head += n
        if head == inbox.count {
            inbox = []  // lazy IO: an idle connection holds no buffer
            head = 0
        }
        if phase == .open { handle.setReceiveWindow(receiveCapacity - available) }
        return n
    }

    /// Takes up to `maxBytes` received bytes.
    public func receive(maxBytes: Int = .max) -> [UInt8] {
        let n = min(maxBytes, available)
        guard n > 0 else { return [] }
        return [UInt8](unsafeUninitializedCapacity: n) { b, count in
            count = receive(into: UnsafeMutableRawBufferPointer(b))
        }
    }

    /// Queues bytes to send (copied), as many as the send buffer takes: `.sent` when all of
    /// them, `.partial(n)` when only the first `n` (wait with `waitWritable` and send the
    /// rest). Fails once the connection is closed or closing.
    public func send(_ bytes: UnsafeRawBufferPointer) -> TCPSendStatus {
        guard phase == .open else { return .failure(error ?? .closed) }
        guard bytes.count > 0 else { return .sent }
        let n = handle.send(bytes)
        if n == bytes.count { return .sent }
        if n == 0 && !handle.canSend { return .failure(.closed) }
        return .partial(n)
    }

    /// Queues bytes to send (copied), as many as the send buffer takes.
    public func send(_ bytes: [UInt8]) -> TCPSendStatus { bytes.withUnsafeBytes { send($0) } }

    /// Sends FIN after everything queued (graceful close). Reading may go on until the peer
    /// finishes too.
    public func shutdownOutput() {
        if phase == .open { handle.close() }
    }

    /// Sends RST and ends the connection at once.
    public func abort() {
        if phase != .closed { handle.abort() }
    }

    /// Keepalive and the idle timeout, as for handler connections.
    public func setKeepalive(seconds: Int) {
        if phase == .open { handle.setKeepalive(seconds: seconds) }
    }

    public func setIdleTimeout(seconds: Int) {
        if phase == .open { handle.setIdleTimeout(seconds: seconds) }
    }

    public func setNoDelay(_ noDelay: Bool) {
        if phase == .open { handle.setNoDelay(noDelay) }
    }

    // MARK: Blocking-style calls for stackless tasks

    /// Arranges for `event` to be set once there is something to read (data, end of
    /// stream or an error). Returns true instead, without arming, if there already is: then
    /// read at once; otherwise wait on the event (with a timeout if wanted).
    public func waitReadable(_ event: EventRef<TCPStatus>) -> Bool {
        if available > 0 || peerFinished || phase == .closed { return true }
        readEvent = event
        return false
    }

    /// Arranges for `event` to be set once the send queue has room after a send took less
    /// than it was given (or the connection failed). Returns true instead, without arming,
    /// if there is room now.
    public func waitWritable(_ event: EventRef<TCPStatus>) -> Bool {
        if phase != .open || !handle.isHeldBack { return true }
        writeEvent = event
        return false
    }

    /// Closes gracefully and sets `event` once the connection is closed both ways (or failed).
    /// Returns true at once if it is already closed.
    public func close(notify event: EventRef<TCPStatus>) -> Bool {
        if phase == .closed { return true }
        closeEvent = event
        if phase == .open { handle.close() } else { handle.abort() }
        return false
    }

    /// The state of a finished connection, as a blocking-style status.
    public var status: TCPStatus {
        if let error { return .failure(error) }
        return phase == .closed ? .failure(.closed) : .ok
    }

    // MARK: Async API

    /// Reads up to `maxBytes`, waiting until some arrive; an empty result is the end of the
    /// stream (the peer closed and everything was read).
    public func read(maxBytes: Int = 65_536, isolation: isolated (any Actor)? = #isolation) async throws(TCPError) -> [UInt8] {
        while available == 0 {
            if peerFinished || (phase == .closed && error == nil) { return [] }
            if let error { throw error }
            if case .failed(let e) = await suspend(.read, isolation: isolation) { throw e }
        }
        return receive(maxBytes: maxBytes)
    }

    /// Reads exactly `count` bytes, or throws `.closed` if the stream ends first.
    public func read(exactly count: Int, isolation: isolated (any Actor)? = #isolation) async throws(TCPError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            let part = try await read(maxBytes: count - out.count, isolation: isolation)
            if part.isEmpty { throw .closed }
            out += part
        }
        return out
    }

    /// Queues `bytes`, waiting whenever the send buffer is full until it has room again (so
    /// a fast writer, or a peer that stops reading, cannot make the queue grow without bound).
    public func write(_ bytes: [UInt8], isolation: isolated (any Actor)? = #isolation) async throws(TCPError) {
        var offset = 0
        while true {
            let status = bytes.withUnsafeBytes { send(UnsafeRawBufferPointer(rebasing: $0[offset...])) }
            switch status {
            case .sent: return
            case .failure(let e): throw e
            case .partial(let n):
                offset += n
                if case .failed(let e) = await suspend(.write, isolation: isolation) { throw e }
            }
        }
    }

    /// Closes gracefully (FIN after everything written) and waits until the connection is
    /// closed both ways; throws if it ended otherwise (reset, timed out).
    public func close(isolation: isolated (any Actor)? = #isolation) async throws(TCPError) {
        if phase == .closed {
            if let error { throw error }
            return
        }
        if phase == .open { handle.close() } else { handle.abort() }
        if case .failed(let e) = await suspend(.close, isolation: isolation), e != .closed { throw e }
    }

    /// Waits for the handshake a connect started: returns the socket, or throws why it failed
    /// (a cancelled wait aborts the attempt).
    func established(isolation: isolated (any Actor)?) async throws(TCPError) -> TCPSocket {
        if phase == .connecting, case .failed(let e) = await suspend(.connect, isolation: isolation) {
            if e == .cancelled { abort() }
            throw e
        }
        if let error { throw error }
        return self
    }

    enum Which: UInt8, Sendable { case read, write, connect, close }

    func waiter(_ which: Which) -> UnsafeContinuation<Outcome, Never>? {
        switch which {
        case .read: return readWaiter
        case .write: return writeWaiter
        case .connect: return connectWaiter
        case .close: return closeWaiter
        }
    }

    func setWaiter(_ which: Which, _ c: UnsafeContinuation<Outcome, Never>?) {
        switch which {
        case .read: readWaiter = c
        case .write: writeWaiter = c
        case .connect: connectWaiter = c
        case .close: closeWaiter = c
        }
    }

    func suspend(_ which: Which, isolation: isolated (any Actor)?) async -> Outcome {
        precondition(waiter(which) == nil, "Heretic: two tasks wait on the same TCPSocket operation")
        if Task.isCancelled { return .failed(.cancelled) }
        let k = Int(which.rawValue)
        waitIDs[k] &+= 1
        let id = waitIDs[k]
        return await withTaskCancellationHandler(operation: {
            await withUnsafeContinuation(isolation: isolation) { (c: UnsafeContinuation<Outcome, Never>) in
                self.setWaiter(which, c)
            }
        }, onCancel: {
            self.core?.execute { _ in
                guard self.waitIDs[k] == id, let c = self.waiter(which) else { return }
                self.setWaiter(which, nil)
                c.resume(returning: .failed(.cancelled))
            }
        }, isolation: isolation)
    }
}

/// The handler behind every `TCPSocket`: forwards the stack's calls to it.
package struct SocketHandler: TCPHandler {
    var socket: TCPSocket?
    /// For accepted connections: where to announce them once established.
    var listener: TCPListener?

    package init(socket: TCPSocket?, listener: TCPListener?) {
        self.socket = socket
        self.listener = listener
    }

    package mutating func connected(_ connection: some TCPConnection) {
        guard let socket else { return }
        socket.connected(connection)
        listener?.arrived(socket)
        listener = nil
    }
    package mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        socket?.received(data, connection)
    }
    package mutating func writable(_ connection: some TCPConnection) { socket?.writable() }
    package mutating func peerClosed(_ connection: some TCPConnection) { socket?.peerClosed() }
    package mutating func closed(_ reason: TCPCloseReason) {
        socket?.closed(reason)
        socket = nil  // the stack lets go; the application may still hold it
        listener = nil
    }
}

/// Accepted connections as they complete their handshakes: an async sequence, or polled by
/// stackless tasks with `accept()` / `waitAcceptable(_:)`.
public final class TCPListener: AsyncSequence, @unchecked Sendable {
    public typealias Element = TCPSocket
    /// The port listened on (the one chosen, when 0 was asked for).
    public package(set) var port: UInt16
    let core: Core?
    var ready: [TCPSocket] = []
    var readyHead = 0
    var waiter: UnsafeContinuation<TCPSocket?, Never>?
    var event: EventRef<TCPStatus>?
    var waitID: UInt64 = 0
    /// Established connections nobody accepted yet, and the most kept (beyond it, new ones are
    /// reset: the application is not keeping up).
    public var pendingLimit = 4096
    public private(set) var overflows = 0

    package init(port: UInt16) {
        self.port = port
        self.core = Core.current
    }

    func arrived(_ socket: TCPSocket) {
        if let w = waiter {
            waiter = nil
            w.resume(returning: socket)
            return
        }
        guard ready.count - readyHead < pendingLimit else {
            overflows += 1
            socket.abort()
            return
        }
        ready.append(socket)
        if let e = event {
            event = nil
            _ = core?.set(e, .ok)
        }
    }

    /// The next established connection, if one is waiting.
    public func accept() -> TCPSocket? {
        guard readyHead < ready.count else { return nil }
        let s = ready[readyHead]
        readyHead += 1
        if readyHead == ready.count {
            ready.removeAll(keepingCapacity: true)
            readyHead = 0
        }
        return s
    }

    /// For stackless tasks: true if `accept()` has a connection now; otherwise `event` is
    /// set when one arrives.
    public func waitAcceptable(_ event: EventRef<TCPStatus>) -> Bool {
        if readyHead < ready.count { return true }
        self.event = event
        return false
    }

    /// Waits for the next established connection (nil when the waiting task is cancelled).
    public func next(isolation: isolated (any Actor)? = #isolation) async -> TCPSocket? {
        if let s = accept() { return s }
        precondition(waiter == nil, "Heretic: two tasks accept on the same TCPListener")
        if Task.isCancelled { return nil }
        waitID &+= 1
        let id = waitID
        return await withTaskCancellationHandler(operation: {
            await withUnsafeContinuation(isolation: isolation) { (c: UnsafeContinuation<TCPSocket?, Never>) in
                self.waiter = c
            }
        }, onCancel: {
            self.core?.execute { _ in
                guard self.waitID == id, let c = self.waiter else { return }
                self.waiter = nil
                c.resume(returning: nil)
            }
        }, isolation: isolation)
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        let listener: TCPListener
        public mutating func next(isolation actor: isolated (any Actor)?) async -> TCPSocket? {
            await listener.next(isolation: actor)
        }
        public mutating func next() async -> TCPSocket? { await listener.next(isolation: nil) }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(listener: self) }
}
