/// A stackless task: a value whose stored properties are its whole state.
///
/// The scheduler calls `resume` whenever the task becomes runnable: first after spawn, then
/// each time the event it waits on is set, its wait times out, its sleep ends or it yielded.
/// `resume` does its work and returns how to suspend next; a task keeps its own "program
/// counter" in a stored property (typically an enum) so that each resume continues after its
/// last wait. Nothing is allocated per task: tasks of one type live in a `TaskPool` arena.
///
/// ```swift
/// struct Pinger: StacklessTask {
///     var inbox = Event<Int>()
///     var peer: EventRef<Int>
///     mutating func resume(_ ctx: inout TaskContext<Self>) -> Suspension {
///         if let n = inbox.take() { ctx.set(peer, n + 1) }
///         return ctx.wait(\.inbox, timeoutMilliseconds: 1000)
///     }
/// }
/// ```
public protocol StacklessTask {
    mutating func resume(_ ctx: inout TaskContext<Self>) -> Suspension
}

/// How a task suspends when `resume` returns. Build waits with `ctx.wait(...)`.
public struct Suspension: Sendable {
    @usableFromInline enum Kind: UInt8, Sendable { case wait, sleep, sleepUntil, yield, exit }

    @usableFromInline let kind: Kind
    /// For waits: the offset of the awaited event's state byte inside the task.
    @usableFromInline let flagOffset: UInt32
    /// Timeout or sleep length in milliseconds (for `sleepUntil`, the absolute tick);
    /// `UInt64.max` for none.
    @usableFromInline let milliseconds: UInt64

    @inlinable init(kind: Kind, flagOffset: UInt32 = 0, milliseconds: UInt64 = .max) {
        self.kind = kind
        self.flagOffset = flagOffset
        self.milliseconds = milliseconds
    }

    /// Run again on a later turn of the loop, after the other pools, timers and mailboxes
    /// have had their turn.
    public static let yield = Suspension(kind: .yield)
    /// Finish: the task's storage is released and its slot reused.
    public static let exit = Suspension(kind: .exit)

    /// Sleep for at least `milliseconds` (the core's clock has one-millisecond ticks, so the
    /// wake-up comes up to one tick later; 0 waits for the next tick).
    @inlinable public static func sleep(milliseconds: Int) -> Suspension {
        precondition(milliseconds >= 0, "Heretic: negative sleep")
        return Suspension(kind: .sleep, milliseconds: UInt64(milliseconds))
    }
}
