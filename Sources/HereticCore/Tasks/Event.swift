/// A typed event stored inline in a stackless task's properties.
///
/// The task that owns it waits on it with `ctx.wait(\.myEvent)`; anyone holding an
/// `EventRef` to it (another task, async code, another core) sets it with a value, which wakes
/// the owner on its own core. The owner takes the value with `take()`; after a wait with a
/// timeout, an event that is still empty means the wait timed out.
///
/// An event holds one value at a time: setting it again before the owner took the value is a
/// programming error (`set` traps, `trySet` returns `.alreadySet`).
public struct Event<Value> {
    @usableFromInline var value: Value?
    /// 0 while empty, 1 while holding a value. Kept as its own byte, at an offset the pool
    /// knows, so the scheduler can test any event without knowing its value type.
    @usableFromInline var state: UInt8

    @inlinable public init() {
        value = nil
        state = 0
    }

    /// Whether a value is waiting to be taken.
    @inlinable public var isSet: Bool { state != 0 }

    /// Takes the value, leaving the event empty; nil when it was not set (a timed-out wait).
    @inlinable @inline(__always) public mutating func take() -> Value? {
        if state == 0 { return nil }
        state = 0
        let v = value
        value = nil
        return v
    }

    /// The value without taking it.
    @inlinable public var peek: Value? { state == 0 ? nil : value }

    /// Sets the owner's own event (for the owning task; others set through an `EventRef`).
    @inlinable public mutating func set(_ newValue: Value) {
        precondition(state == 0, "Heretic: Event set twice before its waiter took the value")
        value = newValue
        state = 1
    }

    /// Byte offset of the state flag within the event, for the scheduler.
    @inlinable static var stateOffset: Int { MemoryLayout<Event<Value>>.offset(of: \Event<Value>.state)! }
}

/// What setting an event did.
public enum SetResult: Sendable, Equatable {
    /// The value was stored (and the owner woken if it was waiting on this event).
    case delivered
    /// The event still held an earlier value; nothing was changed.
    case alreadySet
    /// The task owning the event has exited (the reference is stale).
    case gone
    /// The event lives on another core: the set was posted to that core's mailbox and is
    /// applied there on its next turn.
    case posted
}

/// The outcome of a wait with a timeout, as async code sees it.
public enum WaitResult<Value> {
    case signalled(Value)
    case timedOut

    /// The value when signalled.
    @inlinable public var value: Value? {
        if case .signalled(let v) = self { return v }
        return nil
    }
}

extension WaitResult: Sendable where Value: Sendable {}
extension WaitResult: Equatable where Value: Equatable {}

/// An address of an inline `Event` inside a live task: core, pool, slot, generation and the
/// event's offset in the task. It stays valid while that task lives; setting through a stale
/// reference reports `.gone`. It is plain data, so it crosses cores freely.
public struct EventRef<Value>: Hashable, Sendable {
    public let task: TaskID
    @usableFromInline let offset: UInt32

    @inlinable init(task: TaskID, offset: Int) {
        self.task = task
        self.offset = UInt32(offset)
    }
}

/// The identity of one task: which core, which pool on it, which slot, which incarnation.
public struct TaskID: Hashable, Sendable, CustomStringConvertible {
    public let core: UInt16
    public let pool: UInt16
    public let slot: UInt32
    public let generation: UInt32

    @inlinable init(core: UInt16, pool: UInt16, slot: UInt32, generation: UInt32) {
        self.core = core
        self.pool = pool
        self.slot = slot
        self.generation = generation
    }

    public var description: String { "task(\(core).\(pool).\(slot)#\(generation))" }
}

/// A typed reference to a spawned stackless task.
public struct TaskHandle<Task: StacklessTask>: Hashable, Sendable {
    public let id: TaskID

    @inlinable init(id: TaskID) { self.id = id }

    /// A reference to one of the task's inline events, to hand to whoever will set it.
    @inlinable @inline(__always) public func event<V>(_ path: KeyPath<Task, Event<V>>) -> EventRef<V> {
        EventRef(task: id, offset: MemoryLayout<Task>.offset(of: path)!)
    }
}
