import CHereticSys

/// Facts about this process that benchmarks measure rather than estimate.
public enum ProcessStats {
    /// Resident set size in bytes, from /proc/self/statm.
    public static func residentBytes() -> UInt64 { heretic_rss_bytes() }
}

/// The monotonic clock the cores use.
public enum MonotonicClock {
    @inlinable public static func nanoseconds() -> UInt64 { heretic_monotonic_ns() }
}

/// A one-shot gate a thread outside the runtime blocks on until a core opens it.
public final class Latch: @unchecked Sendable {
    private let raw = heretic_latch_create()!
    public init() {}
    deinit { heretic_latch_destroy(raw) }
    /// Opens the latch, releasing every waiter (now and later).
    public func open() { heretic_latch_open(raw) }
    /// Blocks the calling thread until the latch is open. Never call on a core's thread.
    public func wait() {
        precondition(Core.current == nil, "Heretic: Latch.wait would block a core's loop")
        heretic_latch_wait(raw)
    }
    public var isOpen: Bool { heretic_latch_is_open(raw) != 0 }
}

extension ProcessStats {
    /// CPU time (user plus system) this process has used, in seconds.
    public static func cpuSeconds() -> Double { heretic_cpu_seconds() }
    /// CPU time the hypervisor has stolen from this machine since boot, in seconds (0 on bare
    /// metal or when /proc/stat is unreadable).
    public static func stealSeconds() -> Double { heretic_steal_seconds() }
}
