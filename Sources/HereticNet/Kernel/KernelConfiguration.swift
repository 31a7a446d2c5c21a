#if canImport(Glibc)
import Glibc
#endif

/// Everything a `KernelNetwork` is set up with, in one value: the backend, the io_uring
/// ring's and receive buffers' sizes, how sends are batched, and send memory. The engine
/// reads no environment variables; `init(environment:)` (or `fromEnvironment()`) turns the
/// ones deployments and CI use into a configuration, at the edge of the program.
public struct KernelConfiguration: Sendable {
    /// The backend to use; nil chooses io_uring unless it is disabled
    /// (`/proc/sys/kernel/io_uring_disabled`) or cannot be set up here: then epoll. A backend
    /// asked for that cannot be set up is an error.
    public var backend: KernelBackend? {
        didSet { backendSource = nil }
    }
    /// Where `backend` came from when not from code (the environment variable), reported in
    /// the engine's `backendReason`; nil once `backend` is set in code.
    public private(set) var backendSource: String?
    /// Entries of the io_uring submission ring (the completion ring gets 16 times as many).
    public var ringEntries = 4096
    /// io_uring receives land in `receiveBuffers` buffers of `receiveBufferSize` bytes, of
    /// which the ring holds `receiveBuffersInRing` at first, the most recently used (it
    /// doubles them each time receives find it dry). Few buffers in the ring keep the memory
    /// receives are copied into in the cache: measured on this VM (`serve echo` against
    /// `loadgen`, streaming), 0.14-0.16 us of server CPU per message against 0.17-0.21 when
    /// every receive took the next of 2,048 buffers in turn.
    public var receiveBuffers = 2048
    public var receiveBufferSize = 65_536
    public var receiveBuffersInRing = 16
    /// io_uring: whether a send to a connection with nothing queued may go out at once (see
    /// `KernelNetwork.directSends`). False (`HERETIC_BATCHED_SENDS` set) batches every send.
    public var directSends = true
    /// Completions in one batch from which its handlers' sends are batched
    /// (`HERETIC_BATCH_SENDS_FROM`).
    public var batchedSendsFrom = 16
    /// The most a connection's send queue holds unless set per connection.
    public var sendBufferSize = 256 << 10
    /// The process-wide cap the engine's send queues are charged to.
    public var sendMemory: SendMemory = .shared
    /// The io_uring set-up to try first, each later one plainer, taken when the kernel
    /// refuses the one before: 0 single issuer with deferred task work (the default), 1
    /// single issuer with cooperative task work, 2 cooperative task work only, 3 none. For
    /// comparing the modes by measurement (`HERETIC_URING_SETUP`).
    public var uringSetupMode = 0

    /// The defaults: automatic backend, 4,096 ring entries, 2,048 receive buffers of 64 KiB
    /// (16 in the ring at first), direct sends batched from 16 completions a turn, 256 KiB
    /// send queues, the shared send-memory cap.
    public init(backend: KernelBackend? = nil) {
        self.backend = backend
    }

    /// The defaults, with what these variables of `environment` say:
    /// `HERETIC_KERNEL_BACKEND` (`io_uring` or `epoll`) forces the backend;
    /// `HERETIC_BATCHED_SENDS` (any value) batches every send;
    /// `HERETIC_BATCH_SENDS_FROM` (a number) sets `batchedSendsFrom`;
    /// `HERETIC_URING_SETUP` (0 to 3) sets `uringSetupMode`.
    public init(environment: [String: String]) {
        if let name = environment["HERETIC_KERNEL_BACKEND"], let forced = KernelBackend(rawValue: name) {
            backend = forced
            backendSource = "HERETIC_KERNEL_BACKEND=\(name)"
        }
        if environment["HERETIC_BATCHED_SENDS"] != nil { directSends = false }
        if let from = environment["HERETIC_BATCH_SENDS_FROM"].flatMap({ Int($0) }) { batchedSendsFrom = from }
        if let mode = environment["HERETIC_URING_SETUP"].flatMap({ Int($0) }), (0...3).contains(mode) { uringSetupMode = mode }
    }

    /// The variables `init(environment:)` reads, taken from this process's environment.
    public static func fromEnvironment() -> KernelConfiguration {
        var environment: [String: String] = [:]
        for name in ["HERETIC_KERNEL_BACKEND", "HERETIC_BATCHED_SENDS", "HERETIC_BATCH_SENDS_FROM", "HERETIC_URING_SETUP"] {
            if let value = getenv(name) { environment[name] = String(cString: value) }
        }
        return KernelConfiguration(environment: environment)
    }

    /// This configuration with `backend` forced when one is given (nil keeps its choice):
    /// a command-line option over the environment.
    public func requesting(_ backend: KernelBackend?) -> KernelConfiguration {
        guard let backend else { return self }
        var c = self
        c.backend = backend
        return c
    }
}
