import HereticTransport
import HereticCore
import CHereticSys

/// The layer's clock and its tick: deferred work, delayed ACKs, memory waiters, trims, the
/// applications' timers and the connections' own.
extension TCPLayer {
    /// Brings the clock up to the polling core's (when a call comes between polls, after the
    /// core slept or handled messages first): deadlines set now are measured from now.
    @usableFromInline func refreshClock() {
        guard let core = interface.core, core.isCurrent, let epoch else { return }
        let fresh = core.nowMilliseconds
        guard fresh > now else { return }
        now = fresh
        clock = UInt32(truncatingIfNeeded: fresh &- epoch)
    }

    /// Advances the timers to `now` (milliseconds) and runs what expired.
    func tick(now: UInt64) {
        self.now = max(self.now, now)
        if epoch == nil { epoch = now }
        clock = UInt32(truncatingIfNeeded: self.now &- epoch!)
        if !nextTick.isEmpty {
            let work = nextTick
            nextTick.removeAll()
            callbackDepth += 1
            for w in work { w() }
            callbackDepth -= 1
            runDeferred()
        }
        if delayedHead < delayedAcks.count { flushDelayedAcks() }
        if !capWaiters.isEmpty { wakeCapWaiters() }
        if !trimWanted.isEmpty {
            var released = false
            for a in trimWanted { released = a.trim() || released }
            trimWanted.removeAll()
            // Chunks of slots went back to the heap: hand free heap pages to the kernel too
            // (at most once a second; glibc keeps freed memory otherwise).
            if released && now &- lastHeapTrim >= 1000 {
                lastHeapTrim = now
                heretic_heap_trim()
            }
        }
        if userTimers.count > 0 {
            userTimers.advance(to: now, into: &expired)
            if !expired.isEmpty {
                callbackDepth += 1
                for ref in expired {
                    userTimerHandles[ref] = nil
                    if holds(ref) { arena(ref).userTimerFired(ref) }
                }
                callbackDepth -= 1
                expired.removeAll(keepingCapacity: true)
                runDeferred()
            }
        }
        guard timers.count > 0 else { return }
        timers.advance(to: now, into: &expired)
        guard !expired.isEmpty else { return }  // most turns: nothing due
        for ref in expired where holds(ref) { arena(ref).timerFired(ref) }
        expired.removeAll(keepingCapacity: true)
        runDeferred()
    }
}
