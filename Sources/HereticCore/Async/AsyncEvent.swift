/// An event for async code running on a core: one waiter at a time, a typed value, an
/// optional timeout on the core's timer wheel, and cancellation that ends the wait.
///
/// It belongs to one core: wait only from async code running on that core (for example a
/// `Task(executorPreference: core)`). Set it from anywhere: from its core the waiter is
/// resumed at once, from elsewhere the set travels through the core's mailbox.
public final class AsyncEvent<Value: Sendable>: @unchecked Sendable {
    public let core: Core
    @usableFromInline @exclusivity(unchecked) var value: Value?
    @usableFromInline @exclusivity(unchecked) var isSet = false
    @usableFromInline @exclusivity(unchecked) var waiter: UnsafeContinuation<Outcome, Never>?
    @usableFromInline @exclusivity(unchecked) var waitID: UInt64 = 0
    @usableFromInline @exclusivity(unchecked) var timer: AsyncTimer?

    @usableFromInline enum Outcome { case signalled(Value), timedOut, cancelled }

    public init(on core: Core) { self.core = core }

    /// Sets the event: resumes the waiter with the value, or stores it for the next wait.
    /// Returns `.alreadySet` when an earlier value was not taken yet, `.posted` off-core.
    @inlinable @discardableResult
    public func set(_ newValue: Value) -> SetResult {
        if core.isCurrent { return setHere(newValue) }
        core.execute { _ in _ = self.setHere(newValue) }
        return .posted
    }

    @inlinable func setHere(_ newValue: Value) -> SetResult {
        if let w = waiter {
            waiter = nil
            if let t = timer { _ = core.cancelAsyncTimer(t); timer = nil }
            w.resume(returning: .signalled(newValue))
            return .delivered
        }
        if isSet { return .alreadySet }
        value = newValue
        isSet = true
        return .delivered
    }

    /// Waits for the value. Throws `CancellationError` if the task is cancelled meanwhile.
    @inlinable public func wait(isolation: isolated (any Actor)? = #isolation) async throws(CancellationError) -> Value {
        switch await suspend(timeout: nil, isolation: isolation) {
        case .signalled(let v): return v
        case .timedOut: fatalError("unreachable: no timeout was armed")
        case .cancelled: throw CancellationError()
        }
    }

    /// Waits for the value or until `timeoutMilliseconds` pass.
    @inlinable public func wait(timeoutMilliseconds: Int, isolation: isolated (any Actor)? = #isolation) async throws(CancellationError) -> WaitResult<Value> {
        precondition(timeoutMilliseconds >= 0, "Heretic: negative timeout")
        switch await suspend(timeout: UInt64(timeoutMilliseconds), isolation: isolation) {
        case .signalled(let v): return .signalled(v)
        case .timedOut: return .timedOut
        case .cancelled: throw CancellationError()
        }
    }

    @inlinable func suspend(timeout: UInt64?, isolation: isolated (any Actor)?) async -> Outcome {
        precondition(core.isCurrent,
                     "Heretic: AsyncEvent.wait called off its core \(core.index) (wrong core)")
        precondition(waiter == nil, "Heretic: AsyncEvent already has a waiter (one at a time)")
        if isSet {
            isSet = false
            let v = value!
            value = nil
            return .signalled(v)
        }
        // An already-cancelled task gets its handler called at once; it posts `cancelWait`,
        // which runs after the waiter is registered below, so no separate check is needed.
        waitID &+= 1
        let id = waitID
        return await withTaskCancellationHandler(operation: {
            await withUnsafeContinuation(isolation: isolation) { (c: UnsafeContinuation<Outcome, Never>) in
                self.waiter = c
                if let ms = timeout {
                    self.timer = self.core.armAsyncTimer(afterMilliseconds: ms) { [self] in
                        guard waitID == id, let w = waiter else { return }
                        waiter = nil
                        timer = nil
                        w.resume(returning: .timedOut)
                    }
                }
            }
        }, onCancel: {
            self.core.execute { _ in self.cancelWait(id) }
        }, isolation: isolation)
    }

    @usableFromInline func cancelWait(_ id: UInt64) {
        guard waitID == id, let w = waiter else { return }
        waiter = nil
        if let t = timer { _ = core.cancelAsyncTimer(t); timer = nil }
        w.resume(returning: .cancelled)
    }
}

/// The state of one async sleep, shared by its timer and its cancellation handler.
private final class SleepState: @unchecked Sendable {
    var continuation: UnsafeContinuation<Bool, Never>?
    var timer: AsyncTimer?
}

extension Core {
    /// Suspends the calling async task for `milliseconds` on this core's timer wheel.
    /// Call from async code running on this core. Throws `CancellationError` when cancelled.
    public func sleep(milliseconds: Int) async throws(CancellationError) {
        precondition(milliseconds >= 0, "Heretic: negative sleep")
        precondition(isCurrent, "Heretic: Core.sleep called off core \(index) (wrong core)")
        if Task.isCancelled { throw CancellationError() }
        let s = SleepState()
        let completed = await withTaskCancellationHandler {
            await withUnsafeContinuation { (c: UnsafeContinuation<Bool, Never>) in
                s.continuation = c
                s.timer = self.armAsyncTimer(afterMilliseconds: UInt64(milliseconds)) {
                    guard let c = s.continuation else { return }
                    s.continuation = nil
                    s.timer = nil
                    c.resume(returning: true)
                }
            }
        } onCancel: {
            self.execute { core in
                guard let c = s.continuation else { return }
                s.continuation = nil
                if let t = s.timer { _ = core.cancelAsyncTimer(t); s.timer = nil }
                c.resume(returning: false)
            }
        }
        if !completed { throw CancellationError() }
    }

    /// Sleeps on the core running the caller.
    public static func sleep(milliseconds: Int) async throws(CancellationError) {
        guard let core = Core.current else {
            preconditionFailure("Heretic: Core.sleep called from async code not running on a Heretic core")
        }
        try await core.sleep(milliseconds: milliseconds)
    }
}
