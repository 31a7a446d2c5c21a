import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// The byte at `offset` of every test stream: its period is a prime above a million, so a
/// dropped, repeated or reordered byte shows.
@inline(__always) func pattern(_ offset: Int) -> UInt8 { patternTable[offset % patternPeriod] }

let patternPeriod = 1_048_573
/// The pattern's period and 64 KiB more, so that any run of up to 64 KiB is contiguous.
let patternTable: [UInt8] = (0..<(patternPeriod + 65_536)).map { i in
    let o = i % patternPeriod
    return UInt8(truncatingIfNeeded: o &* 131 &+ o >> 9 &+ o >> 17)
}

func patternBytes(_ range: Range<Int>) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(range.count)
    var at = range.lowerBound
    while at < range.upperBound {
        let n = min(65_536, range.upperBound - at)
        withPattern(at, n) { out.append(contentsOf: $0) }
        at += n
    }
    return out
}

/// The pattern's bytes `offset..<offset + count` (count at most 64 KiB), without copying.
@inline(__always) func withPattern<R>(_ offset: Int, _ count: Int, _ body: (UnsafeRawBufferPointer) -> R) -> R {
    patternTable.withUnsafeBytes { body(UnsafeRawBufferPointer(rebasing: $0[offset % patternPeriod..<offset % patternPeriod + count])) }
}

/// Whether `data` is the pattern from `offset` on.
func matchesPattern(_ data: UnsafeRawBufferPointer, at offset: Int) -> Bool {
    var done = 0
    while done < data.count {
        let n = min(65_536, data.count - done)
        let same = withPattern(offset + done, n) { memcmp($0.baseAddress!, data.baseAddress! + done, n) == 0 }
        if !same { return false }
        done += n
    }
    return true
}

/// What handlers saw, written on the engines' core and read there through `ContractBed.run`.
final class Log: @unchecked Sendable {
    var connected = 0
    var closed: [TCPCloseReason] = []
    var received = 0
    var mismatches = 0
    var verified = 0
    var peerClosed = 0
    var shortSends = 0
    var writables = 0
    var timerFires = 0
    var largestQueue = 0
    var bytes: [UInt8] = []
    var handles: [TCPConnectionHandle] = []
    var notes: [String] = []
    var sent = 0

    var normalCloses: Int { closed.filter { $0 == .normal }.count }

    func copy() -> Log {
        let l = Log()
        (l.connected, l.closed, l.received, l.mismatches, l.verified) = (connected, closed, received, mismatches, verified)
        (l.peerClosed, l.shortSends, l.writables, l.timerFires, l.largestQueue) = (peerClosed, shortSends, writables, timerFires, largestQueue)
        (l.bytes, l.handles, l.notes, l.sent) = (bytes, handles, notes, sent)
        return l
    }
}

/// Echoes what arrives. What the send buffer does not take waits and goes on `writable`
/// (reading pauses meanwhile: the window closes, as a service under backpressure should).
struct Echo: TCPHandler {
    let log: Log
    var pending: [UInt8] = []
    var peerDone = false

    mutating func connected(_ c: some TCPConnection) {
        log.connected += 1
        log.handles.append(c.handle)
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ c: some TCPConnection) {
        log.received += data.count
        if pending.isEmpty {
            let n = c.send(data)
            if n < data.count { pending.append(contentsOf: data[n...]) }
        } else {
            pending.append(contentsOf: data)
        }
        if !pending.isEmpty {
            log.shortSends += 1
            c.setReceiveWindow(0)
        }
    }

    mutating func writable(_ c: some TCPConnection) {
        log.writables += 1
        let n = pending.withUnsafeBytes { c.send($0) }
        pending.removeFirst(n)
        if pending.isEmpty {
            c.setReceiveWindow(1 << 20)
            if peerDone { c.close() }
        }
    }

    mutating func peerClosed(_ c: some TCPConnection) {
        log.peerClosed += 1
        peerDone = true
        if pending.isEmpty { c.close() }
    }

    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Sends `total` pattern bytes in uneven pieces (gathered from several buffers when asked),
/// waiting for `writable` whenever the send buffer is full; checks the echo byte by byte and
/// closes once all of it came back.
struct PatternClient: TCPHandler {
    let total: Int
    let log: Log
    var gathering = false
    var sent = 0
    var checked = 0
    var piece = 0

    mutating func connected(_ c: some TCPConnection) {
        log.connected += 1
        push(c)
    }

    mutating func push(_ c: some TCPConnection) {
        while sent < total {
            piece += 1
            let n = min(total - sent, 1 + (piece &* 7919) % 40_000)
            let taken: Int
            if gathering && n >= 3 {
                // Three parts, one of them empty: they must arrive as one stream.
                let cut = n / 3
                taken = withPattern(sent, n) { b in
                    let parts = [UnsafeRawBufferPointer(rebasing: b[..<cut]), UnsafeRawBufferPointer(start: nil, count: 0),
                                 UnsafeRawBufferPointer(rebasing: b[cut...])]
                    return parts.withUnsafeBufferPointer { c.send(gathering: $0) }
                }
            } else {
                taken = withPattern(sent, n) { c.send($0) }
            }
            sent += taken
            log.sent += taken
            log.largestQueue = max(log.largestQueue, c.bytesQueued)
            if taken < n {
                log.shortSends += 1
                return  // `writable` follows
            }
        }
    }

    mutating func writable(_ c: some TCPConnection) {
        log.writables += 1
        push(c)
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ c: some TCPConnection) {
        if checked + data.count > total || !matchesPattern(data, at: checked) { log.mismatches += 1 }
        checked += data.count
        log.received += data.count
        if checked == total {
            log.verified += 1
            c.close()
        }
    }

    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Sends the pattern until the send buffer refuses more (the peer reads nothing), then, once
/// `writable` says there is room, `after` bytes more, and closes.
struct BurstClient: TCPHandler {
    let log: Log
    let after: Int
    var sent = 0
    var total = Int.max

    mutating func connected(_ c: some TCPConnection) { push(c) }

    mutating func push(_ c: some TCPConnection) {
        // Bounded per call; a timer continues (the sender is not held back yet).
        for _ in 0..<64 {
            guard sent < total else {
                c.close()
                return
            }
            let n = min(16_384, total - sent)
            let taken = withPattern(sent, n) { c.send($0) }
            sent += taken
            log.sent = sent
            log.largestQueue = max(log.largestQueue, c.bytesQueued)
            if taken < n {
                if total == .max {
                    log.shortSends += 1
                    total = sent + after
                }
                return  // `writable` follows
            }
        }
        c.setTimer(milliseconds: 1)
    }

    mutating func writable(_ c: some TCPConnection) {
        log.writables += 1
        push(c)
    }

    mutating func timerFired(_ c: some TCPConnection) { push(c) }
    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Records how a connection attempt ends; sends `greeting` once connected.
struct Recorder: TCPHandler {
    let log: Log
    var greeting: [UInt8] = []
    var abortOnData = false

    mutating func connected(_ c: some TCPConnection) {
        log.connected += 1
        log.handles.append(c.handle)
        if !greeting.isEmpty { c.send(greeting) }
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ c: some TCPConnection) {
        log.bytes.append(contentsOf: data)
        log.received += data.count
        if abortOnData { c.abort() }
    }

    mutating func peerClosed(_ c: some TCPConnection) {
        log.peerClosed += 1
        c.close()
    }

    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Aborts its connection as soon as anything arrives.
struct Aborter: TCPHandler {
    let log: Log
    mutating func received(_ data: UnsafeRawBufferPointer, _ c: some TCPConnection) {
        log.received += data.count
        c.abort()
    }
    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Reads the whole request until the peer's FIN, then answers with its length and closes:
/// half-close in both directions.
struct Collector: TCPHandler {
    let log: Log
    var count = 0
    var bad = 0

    mutating func received(_ data: UnsafeRawBufferPointer, _ c: some TCPConnection) {
        if !matchesPattern(data, at: count) { bad += 1 }
        count += data.count
    }

    mutating func peerClosed(_ c: some TCPConnection) {
        log.peerClosed += 1
        log.mismatches += bad
        c.send(Array("got \(count)".utf8))
        c.close()
    }

    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Reads nothing at first (window 0); keeps its handle so the test can open the window; then
/// checks every byte, and closes when the peer does.
struct Sink: TCPHandler {
    let log: Log
    var count = 0

    mutating func connected(_ c: some TCPConnection) {
        log.connected += 1
        log.handles.append(c.handle)
        c.setReceiveWindow(0)
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ c: some TCPConnection) {
        if !matchesPattern(data, at: count) { log.mismatches += 1 }
        count += data.count
        log.received += data.count
    }

    mutating func peerClosed(_ c: some TCPConnection) {
        log.peerClosed += 1
        c.close()
    }

    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Sends an endless pattern (as fast as the send buffer allows); what the peer does decides
/// how the connection ends.
struct Flood: TCPHandler {
    let log: Log
    var sent = 0

    mutating func connected(_ c: some TCPConnection) {
        log.connected += 1
        push(c)
    }

    mutating func push(_ c: some TCPConnection) {
        // Bounded per call, so a fast path cannot keep one callback forever.
        for _ in 0..<64 {
            let n = withPattern(sent, 16_384) { c.send($0) }
            sent += n
            log.sent += n
            if n < 16_384 { return }
        }
        c.setTimer(milliseconds: 1)  // more on the next tick
    }

    mutating func writable(_ c: some TCPConnection) { push(c) }
    mutating func timerFired(_ c: some TCPConnection) { if c.canSend && !c.isHeldBack { push(c) } }
    mutating func peerClosed(_ c: some TCPConnection) {
        log.peerClosed += 1
        c.close()
    }
    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Reads a flood, checking it, and after `limit` bytes either closes its side (FIN, still
/// reading) or aborts.
struct Cutter: TCPHandler {
    let log: Log
    let limit: Int
    let abort: Bool
    var count = 0
    var cut = false

    mutating func received(_ data: UnsafeRawBufferPointer, _ c: some TCPConnection) {
        if !matchesPattern(data, at: count) { log.mismatches += 1 }
        count += data.count
        log.received += data.count
        if count >= limit && !cut {
            cut = true
            if abort { c.abort() } else { c.close() }
        }
    }

    mutating func peerClosed(_ c: some TCPConnection) { log.peerClosed += 1 }
    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Arms its timer on connect, replaces it with a later one, and when it fires sends "tick"
/// and how long it waited, then closes.
struct Ticker: TCPHandler {
    let log: Log
    var armedAt: UInt64 = 0

    mutating func connected(_ c: some TCPConnection) {
        armedAt = MonotonicClock.nanoseconds()
        c.setTimer(milliseconds: 5)
        c.setTimer(milliseconds: nil)
        c.setTimer(milliseconds: 2)
        c.setTimer(milliseconds: 60)  // the one that counts
    }

    mutating func timerFired(_ c: some TCPConnection) {
        log.timerFires += 1
        let waited = Int((MonotonicClock.nanoseconds() - armedAt) / 1_000_000)
        log.notes.append("waited \(waited)")
        c.send(Array("tick".utf8))
        c.close()
    }

    mutating func closed(_ reason: TCPCloseReason) { log.closed.append(reason) }
}

/// Echoes datagrams.
struct DatagramEcho: UDPHandler {
    let log: Log
    mutating func received(_ data: UnsafeRawBufferPointer, from peer: UDPEndpoint, _ socket: some UDPSocket) {
        log.received += 1
        socket.send(data, to: peer)
    }
}

/// Collects datagrams: each must be the pattern of its own length.
struct DatagramCollector: UDPHandler {
    let log: Log
    mutating func received(_ data: UnsafeRawBufferPointer, from peer: UDPEndpoint, _ socket: some UDPSocket) {
        log.received += 1
        var ok = true
        for (i, b) in data.enumerated() where b != pattern(i + data.count) { ok = false }
        if ok { log.verified += 1 } else { log.mismatches += 1 }
        log.notes.append("\(data.count)")
    }
}
