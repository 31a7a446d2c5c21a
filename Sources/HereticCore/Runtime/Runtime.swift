import Atomics
import CHereticSys

/// Errors at Heretic's API edges. Each names what went wrong.
public enum HereticError: Error, Equatable, CustomStringConvertible {
    /// The runtime was shut down; it runs nothing more.
    case shutDown
    /// A core index outside `0..<coreCount`.
    case noSuchCore(Int, coreCount: Int)
    /// A configuration value that cannot work.
    case invalidArgument(String)
    /// A system call failed.
    case system(call: String, errno: Int32)

    public var description: String {
        switch self {
        case .shutDown: return "the Heretic runtime has been shut down"
        case .noSuchCore(let i, let n): return "no core \(i): the runtime has \(n) core(s)"
        case .invalidArgument(let what): return what
        case .system(let call, let errno): return "\(call) failed with errno \(errno)"
        }
    }
}

/// A set of cores, each a reactor on its own pinned OS thread.
///
/// ```swift
/// let runtime = try Runtime(cores: 2)
/// try runtime.execute(on: 0) { core in
///     let pool = core.makePool(of: MyTask.self)
///     pool.spawn(MyTask())
/// }
/// runtime.shutdown()
/// ```
public final class Runtime: @unchecked Sendable {
    /// The cores, set once while the runtime starts.
    public private(set) var cores: [Core] = []
    private let stopped = ManagedAtomic<Bool>(false)
    private let started = ManagedAtomic<Bool>(false)

    /// CPUs this process may run on.
    public static var availableCPUs: Int { Int(heretic_available_cpus()) }

    /// Creates and starts `cores` reactors (default: one per available CPU), pinning core i
    /// to CPU i modulo the CPU count when `pinThreads` is true. An idle core busy-polls for up
    /// to `idleSpinMicroseconds` when a timer is due that soon, instead of blocking (see
    /// `Core.idleSpinNanoseconds`); 0, the default, always blocks.
    public init(cores count: Int = Runtime.availableCPUs, pinThreads: Bool = true,
                idleSpinMicroseconds: Int = 0) throws(HereticError) {
        guard count >= 1, count <= 4096 else {
            throw .invalidArgument("a runtime needs between 1 and 4096 cores, not \(count)")
        }
        let epoch = heretic_monotonic_ns()
        let cpus = Runtime.availableCPUs
        var made: [Core] = []
        for i in 0..<count {
            made.append(try Core(index: i, runtime: self, cpu: pinThreads ? i % cpus : nil,
                                 epochNanoseconds: epoch, idleSpinMicroseconds: idleSpinMicroseconds))
        }
        for c in made {
            c.inbound = (0..<count).map { _ in SPSCQueue<CoreMessage>() }
        }
        cores = made
        try start()
    }

    private func start() throws(HereticError) {
        started.store(true, ordering: .releasing)
        for core in cores {
            let box = Unmanaged.passRetained(core).toOpaque()
            var handle: UInt64 = 0
            let rc = heretic_thread_start(&handle, { raw in
                let core = Unmanaged<Core>.fromOpaque(raw!).takeRetainedValue()
                core.runLoop()
            }, box)
            if rc != 0 {
                Unmanaged<Core>.fromOpaque(box).release()
                shutdown()
                throw .system(call: "pthread_create", errno: rc)
            }
            core.threadHandle = handle
        }
    }

    deinit { shutdown() }

    public var coreCount: Int { cores.count }
    public var isShutDown: Bool { stopped.load(ordering: .acquiring) }

    /// The core with this index (precondition: it exists).
    @inlinable public func core(_ index: Int) -> Core { cores[index] }

    private func checked(_ index: Int) throws(HereticError) -> Core {
        if stopped.load(ordering: .acquiring) { throw .shutDown }
        guard index >= 0, index < cores.count else { throw .noSuchCore(index, coreCount: cores.count) }
        return cores[index]
    }

    /// Runs `work` on core `index`'s thread, on a later turn of its loop.
    public func execute(on index: Int, _ work: @escaping @Sendable (Core) -> Void) throws(HereticError) {
        try checked(index).execute(work)
    }

    /// Runs `work` on core `index`'s thread and blocks the calling thread until it returns.
    /// For threads outside the runtime (a core calling it on itself would deadlock).
    public func run<R: Sendable>(on index: Int, _ work: @escaping @Sendable (Core) -> R) throws(HereticError) -> R {
        let core = try checked(index)
        precondition(!core.isCurrent, "Heretic: Runtime.run(on:) called from core \(index) itself would deadlock")
        let box = ResultBox<R>()
        core.execute { c in
            box.value = work(c)
            box.latch.open()
        }
        box.latch.wait()
        return box.value!
    }

    /// Stops every core after its current turn and joins the threads. Tasks still alive are
    /// destroyed without running again. Safe to call more than once.
    public func shutdown() {
        if stopped.exchange(true, ordering: .acquiringAndReleasing) { return }
        guard started.load(ordering: .acquiring) else { return }
        for core in cores {
            core.stopping.store(true, ordering: .releasing)
            core.wake()
        }
        for core in cores where core.threadHandle != 0 {
            precondition(!core.isCurrent, "Heretic: shutdown() called from a core's own thread")
            _ = heretic_thread_join(core.threadHandle)
            core.threadHandle = 0
        }
    }
}

/// Carries a value from a core back to a blocked foreign thread.
final class ResultBox<R>: @unchecked Sendable {
    var value: R?
    let latch = Latch()
}
