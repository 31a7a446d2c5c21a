import HereticTransport
import Atomics
#if canImport(Glibc)
import Glibc
#endif

/// The process-wide cap on memory held by send queues, for every engine on every core.
///
/// Each connection's queue is bounded by its send buffer size; this bounds them all together,
/// so that many connections whose peers stop reading cannot take the process's memory between
/// them. The policy when the cap is reached: a send takes only what fits in the buffer its
/// queue already has (often nothing; counted per engine as `sendCapRefusals`), and the
/// connection hears `writable` once there is room for a grant again (its engine checks every
/// 10 ms while any connection waits). Nothing already queued is dropped, and no connection
/// is closed for it.
///
/// Engines charge the cap in grants of `grant` bytes held as local credit, so the shared
/// counter is touched about once per 256 KiB queued, not once per send.
public final class SendMemory: @unchecked Sendable {
    /// The one every engine uses unless given another.
    public static let shared = SendMemory()

    /// Bytes all send queues together may hold: by default an eighth of physical memory
    /// (at least 64 MiB).
    public let capacity: Int
    /// Bytes granted to engines now (what their queues hold, plus their unspent credit).
    let granted = ManagedAtomic<Int>(0)
    /// Bytes an engine takes from the cap at a time, and the unspent credit it keeps.
    @usableFromInline static let grant = 256 << 10

    public init(capacity: Int? = nil) {
        self.capacity = max(Self.grant, capacity ?? Self.defaultCapacity)
    }

    /// An eighth of physical memory, at least 64 MiB.
    static var defaultCapacity: Int {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, size > 0 else { return 1 << 30 }
        return max(64 << 20, pages * size / 8)
    }

    /// Bytes granted now (an upper bound on what the queues hold).
    public var inUse: Int { granted.load(ordering: .relaxed) }

    /// Takes `bytes` from the cap; false (nothing taken) when it would go over.
    @usableFromInline func take(_ bytes: Int) -> Bool {
        var current = granted.load(ordering: .relaxed)
        while true {
            guard current + bytes <= capacity else { return false }
            let (exchanged, original) = granted.weakCompareExchange(expected: current, desired: current + bytes,
                                                                   ordering: .relaxed)
            if exchanged { return true }
            current = original
        }
    }

    @usableFromInline func give(_ bytes: Int) { granted.wrappingDecrement(by: bytes, ordering: .relaxed) }

    /// Takes `bytes` even past the cap (an allocator's rounding beyond what was charged).
    @usableFromInline func takeAnyway(_ bytes: Int) { granted.wrappingIncrement(by: bytes, ordering: .relaxed) }

}

/// One engine's account against a `SendMemory`: credit taken in grants, spent and refunded
/// locally. Touched only on the engine's core.
@usableFromInline struct SendCredit {
    @usableFromInline let memory: SendMemory
    /// Bytes granted to this engine and not held by any of its queues.
    @usableFromInline var credit = 0
    /// Bytes its queues hold.
    @usableFromInline var held = 0
    /// Sends that took less than asked because the process-wide cap was reached.
    @usableFromInline var refusals = 0

    @usableFromInline init(_ memory: SendMemory) { self.memory = memory }

    /// Charges `bytes` to this engine; false when the cap cannot grant them.
    @inlinable mutating func charge(_ bytes: Int) -> Bool {
        if bytes <= credit {
            credit -= bytes
            held += bytes
            return true
        }
        return refill(bytes)
    }

    @usableFromInline mutating func refill(_ bytes: Int) -> Bool {
        let want = max(SendMemory.grant, bytes - credit)
        guard memory.take(want) else {
            refusals += 1
            return false
        }
        credit += want - bytes
        held += bytes
        return true
    }

    /// Charges `bytes` even past the cap: for what an allocation rounded up beyond the charge.
    @discardableResult
    @usableFromInline mutating func forceCharge(_ bytes: Int) -> Bool {
        if bytes > credit {
            memory.takeAnyway(bytes - credit)
            credit = bytes
        }
        credit -= bytes
        held += bytes
        return true
    }

    /// Gives back `bytes` a queue no longer holds; credit beyond two grants returns to the cap.
    @inlinable mutating func refund(_ bytes: Int) {
        held -= bytes
        credit += bytes
        if credit > 2 * SendMemory.grant {
            let excess = credit - SendMemory.grant
            credit -= excess
            memory.give(excess)
        }
    }

    /// Whether a charge of up to a grant would succeed now: refused connections may try again.
    var canGrow: Bool { credit >= SendMemory.grant || memory.capacity - memory.inUse >= SendMemory.grant }

    /// Returns everything (the engine is going away).
    mutating func close() {
        memory.give(credit + held)
        credit = 0
        held = 0
    }
}
