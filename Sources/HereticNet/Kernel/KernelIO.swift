/// What a `KernelNetwork` asks of the kernel interface carrying its IO: starting and stopping
/// accepts, connects, receives and UDP sockets, one turn of the loop, and sleeping. Two
/// classes serve it, `URingBackend` and `EpollBackend`; the engine keeps the connection slots,
/// the public API, the queues, the lifecycle and the callbacks.
///
/// The engine holds both as concrete optionals (exactly one set) and branches on them where
/// the two differ, as it always did, so no call on the hot path goes through an existential;
/// the protocol states the contract both keep.
protocol KernelIO: AnyObject {
    /// The listener `index` is new or resumes after a pause: accept on it.
    func startAccepting(_ index: UInt32)
    /// The listener `index` pauses (out of descriptors or memory).
    func pauseAccepting(_ index: UInt32)
    /// The listener's socket `fd` is about to close: stop everything the kernel has on it.
    func stopListening(fd: Int32)
    /// Starts the connect of `slot` (its socket, address and generation set); the slot's
    /// reason to fail at once, or nil.
    func connect(_ slot: UInt32) -> TCPCloseReason?
    /// The handshake of `slot` is done and its handler told: start receiving, send what waits.
    func established(_ slot: UInt32)
    /// The application has room again after a zero receive window: receive more.
    func resumeReceiving(_ slot: UInt32)
    /// A UDP binding was added at `index`.
    func addUDP(_ index: UInt32)
    /// The UDP socket `fd` is about to close.
    func removeUDP(fd: Int32)
    /// Work is left over from the last turn (the loop must not sleep).
    var hasPendingWork: Bool { get }
    /// One turn: reaps or waits (without blocking) and dispatches into the engine; the events
    /// handled.
    func poll() -> Int
    /// Blocks until IO completes, `wakeFD` is signalled or `timeoutNanoseconds` (< 0: no
    /// limit) passes.
    func sleep(wakeFD: Int32, timeoutNanoseconds: Int64)
    /// System calls into the kernel interface (submissions and waits).
    var enters: UInt64 { get }
}
