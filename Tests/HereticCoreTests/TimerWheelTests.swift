import Testing
@testable import HereticCore

/// A small deterministic generator so every run checks the same cases.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Drives a wheel tick by tick, recording (tick, payload) for every firing.
func drain(_ wheel: inout TimerWheel, through last: UInt64) -> [(UInt64, UInt64)] {
    var fired: [(UInt64, UInt64)] = []
    var batch: [UInt64] = []
    var t = wheel.currentTick
    while t <= last {
        // Jump between events as the core does; each batch fires at the tick it was reached.
        let target = min(last, wheel.nextEventTick() ?? last)
        t = max(t, target)
        wheel.advance(to: t, into: &batch)
        for p in batch { fired.append((t, p)) }
        batch.removeAll()
        t += 1
    }
    return fired
}

@Suite("Timer wheel")
struct TimerWheelTests {
    @Test("timers fire exactly at their deadline, in deadline order")
    func ordering() {
        var wheel = TimerWheel()
        defer { wheel.release() }
        var rng = SplitMix64(state: 1)
        var expected: [UInt64: [UInt64]] = [:]
        for i in 0..<20_000 {
            let deadline = UInt64.random(in: 1...300_000, using: &rng)
            wheel.arm(at: deadline, payload: UInt64(i))
            expected[deadline, default: []].append(UInt64(i))
        }
        let fired = drain(&wheel, through: 300_000)
        #expect(fired.count == 20_000)
        #expect(wheel.count == 0)
        var lastTick: UInt64 = 0
        var byTick: [UInt64: [UInt64]] = [:]
        for (tick, payload) in fired {
            #expect(tick >= lastTick)
            lastTick = tick
            byTick[tick, default: []].append(payload)
        }
        // Same ticks, and arming order kept within each tick.
        #expect(byTick == expected)
    }

    @Test("a cancelled timer never fires and its handle goes stale")
    func cancel() {
        var wheel = TimerWheel()
        defer { wheel.release() }
        var handles: [TimerHandle] = []
        for i in 0..<1000 { handles.append(wheel.arm(at: UInt64(10 + i * 37), payload: UInt64(i))) }
        for i in stride(from: 0, to: 1000, by: 2) {
            let cancelled = wheel.cancel(handles[i])
            #expect(cancelled)
        }
        #expect(wheel.count == 500)
        let again = wheel.cancel(handles[0])
        #expect(!again, "cancelling twice reports false")
        #expect(!wheel.isPending(handles[0]))
        #expect(wheel.isPending(handles[1]))
        let fired = drain(&wheel, through: 40_000).map(\.1)
        #expect(fired == Array(stride(from: 1, to: 1000, by: 2)).map(UInt64.init))
        let afterFire = wheel.cancel(handles[1])
        #expect(!afterFire, "a fired timer cannot be cancelled")
        // A reused node does not answer to the old handle.
        let reused = wheel.arm(at: wheel.currentTick + 5, payload: 7)
        let stale = wheel.cancel(handles[1])
        let fresh = wheel.cancel(reused)
        #expect(!stale)
        #expect(fresh)
    }

    @Test("timers cascade through every level and still fire on their tick",
          arguments: [5, 4095, 4096, 4097, 100_000, 262_143, 262_144, 262_145, 16_777_217,
                      1_073_741_830, 68_719_476_740])
    func cascade(delta: UInt64) {
        var wheel = TimerWheel(startTick: 123)
        defer { wheel.release() }
        wheel.arm(at: 123 + delta, payload: 42)
        wheel.arm(at: 123 + delta + 1, payload: 43)
        let fired = drain(&wheel, through: 123 + delta + 10)
        #expect(fired.count == 2)
        #expect(fired.first?.0 == 123 + delta && fired.first?.1 == 42)
        #expect(fired.last?.0 == 123 + delta + 1 && fired.last?.1 == 43)
    }

    @Test("timers beyond the wheel's span are parked and fire on time")
    func farFuture() {
        var wheel = TimerWheel()
        defer { wheel.release() }
        let far = TimerWheel.maxDelta * 3 + 12_345
        wheel.arm(at: far, payload: 1)
        wheel.arm(at: 50, payload: 2)
        let fired = drain(&wheel, through: far + 5)
        #expect(fired.map(\.1) == [2, 1])
        #expect(fired.last?.0 == far)
    }

    @Test("a deadline already past fires on the next tick")
    func pastDeadline() {
        var wheel = TimerWheel(startTick: 1000)
        defer { wheel.release() }
        var out: [UInt64] = []
        wheel.advance(to: 2000, into: &out)
        wheel.arm(at: 10, payload: 9)
        #expect(wheel.nextEventTick() == 2001)
        wheel.advance(to: 2000, into: &out)
        #expect(out.isEmpty)
        wheel.advance(to: 2001, into: &out)
        #expect(out == [9])
    }

    @Test("a large number of timers: every one fires once")
    func many() {
        var wheel = TimerWheel(initialCapacity: 16)
        defer { wheel.release() }
        var rng = SplitMix64(state: 99)
        var sum: UInt64 = 0
        for i in 0..<500_000 {
            wheel.arm(at: UInt64.random(in: 0...20_000, using: &rng), payload: UInt64(i))
            sum &+= UInt64(i)
        }
        var out: [UInt64] = []
        wheel.advance(to: 20_000, into: &out)
        #expect(out.count == 500_000)
        #expect(out.reduce(0, &+) == sum)
        #expect(wheel.count == 0)
        #expect(wheel.nextEventTick() == nil)
    }
}
