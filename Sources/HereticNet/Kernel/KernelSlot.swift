// The kernel engine's value types: a connection's slot (its whole state, flags included)
// and send queue, a listener's state, a submission waiting for room, and the tag naming what
// a completion is about.

struct KernelListenerState {
    var fd: Int32
    let port: UInt16
    let arena: AnyKernelArena
    /// Accepting paused after running out of descriptors or memory, and for how long (ms).
    var paused = false
    var backoff: UInt64 = 0

    init(fd: Int32, port: UInt16, arena: AnyKernelArena) {
        self.fd = fd
        self.port = port
        self.arena = arena
    }
}

/// A submission the ring had no room for, retried on a later turn.
struct Resubmission {
    let op: KernelOp
    let slot: UInt32
    let generation: UInt32
    /// For a listener's cancel: its descriptor (already gone from the listener table).
    let fd: Int32
}

/// What a completion (or timer) is about, in the top byte of its 64-bit tag; the slot is the
/// low 32 bits and the slot's generation the 24 between (so a late completion of a reused
/// slot is recognised).
@usableFromInline enum KernelOp: UInt8 {
    case accept = 1, recv, send, connect, cancel, wake, io, connectTimeout, idleTimeout, acceptResume, userTimer, udp

    @inlinable func userData(slot: UInt32, generation: UInt32) -> UInt64 {
        UInt64(rawValue) << 56 | UInt64(generation & 0xFF_FFFF) << 32 | UInt64(slot)
    }

    @inlinable static func decode(_ v: UInt64) -> (KernelOp, UInt32, UInt32) {
        (KernelOp(rawValue: UInt8(v >> 56)) ?? .io, UInt32(truncatingIfNeeded: v), UInt32(truncatingIfNeeded: v >> 32) & 0xFF_FFFF)
    }
}

/// One connection's engine state: 80 bytes, buffers only while data waits to go out.
@usableFromInline struct KernelSlot {
    @usableFromInline struct Flags: OptionSet, Sendable {
        @usableFromInline let rawValue: UInt32
        @inlinable init(rawValue: UInt32) { self.rawValue = rawValue }
        @usableFromInline static let open = Flags(rawValue: 1 << 0)
        @usableFromInline static let connecting = Flags(rawValue: 1 << 1)
        @usableFromInline static let recvArmed = Flags(rawValue: 1 << 2)
        @usableFromInline static let sendInFlight = Flags(rawValue: 1 << 3)
        @usableFromInline static let connectInFlight = Flags(rawValue: 1 << 4)
        @usableFromInline static let cancelInFlight = Flags(rawValue: 1 << 5)
        @usableFromInline static let closeRequested = Flags(rawValue: 1 << 6)
        @usableFromInline static let finSent = Flags(rawValue: 1 << 7)
        @usableFromInline static let peerFinished = Flags(rawValue: 1 << 8)
        @usableFromInline static let tearingDown = Flags(rawValue: 1 << 9)
        @usableFromInline static let abortive = Flags(rawValue: 1 << 10)
        @usableFromInline static let readPaused = Flags(rawValue: 1 << 11)
        @usableFromInline static let flushQueued = Flags(rawValue: 1 << 12)
        @usableFromInline static let wantWritable = Flags(rawValue: 1 << 13)
        @usableFromInline static let idleTimerArmed = Flags(rawValue: 1 << 14)
        @usableFromInline static let released = Flags(rawValue: 1 << 15)
        /// The application sets the receive window (reads are limited to it).
        @usableFromInline static let windowed = Flags(rawValue: 1 << 16)
        /// epoll reported the peer's FIN or an error: read to the end, not to a short read.
        @usableFromInline static let hangup = Flags(rawValue: 1 << 17)
        /// A send was refused by the process-wide cap: waits in `capWaiters`.
        @usableFromInline static let capWaiting = Flags(rawValue: 1 << 18)
    }

    @usableFromInline var out = KernelSendQueue()
    @usableFromInline var fd: Int32 = -1
    @usableFromInline var generation: UInt32 = 0
    @usableFromInline var flags: UInt32 = 0
    @usableFromInline var handler: UInt32 = 0
    @usableFromInline var remoteAddress: UInt32 = 0
    @usableFromInline var lastActive: UInt32 = 0
    /// What the application can take (with `windowed`).
    @usableFromInline var window: UInt32 = 0
    @usableFromInline var remotePort: UInt16 = 0
    @usableFromInline var localPort: UInt16 = 0
    @usableFromInline var idleSeconds: UInt16 = 0
    /// The connection's own send buffer size in KiB (0: the engine's default).
    @usableFromInline var sendLimitKiB: UInt16 = 0
    @usableFromInline var arena: UInt8 = 0
    @inlinable init() {}

    @inlinable func has(_ f: Flags) -> Bool { flags & f.rawValue == f.rawValue }
    @inlinable mutating func set(_ f: Flags) { flags |= f.rawValue }
    @inlinable mutating func clear(_ f: Flags) { flags &= ~f.rawValue }
}

/// Bytes waiting to go out: `sending` is what the kernel has (or is being written), `pending`
/// what was queued since. Two buffers, because the one under a send in flight must not move.
@usableFromInline struct KernelSendQueue {
    @usableFromInline var sending: UnsafeMutableRawPointer?
    @usableFromInline var pending: UnsafeMutableRawPointer?
    @usableFromInline var sendingLength: UInt32 = 0
    @usableFromInline var sendingDone: UInt32 = 0
    @usableFromInline var pendingLength: UInt32 = 0
    @usableFromInline var pendingCapacity: UInt32 = 0
    @usableFromInline var sendingCapacity: UInt32 = 0
    @inlinable init() {}

    @inlinable var queued: Int { Int(sendingLength - sendingDone) + Int(pendingLength) }

    /// Bytes `append` of `n` more would allocate (what to charge to the memory cap first):
    /// a buffer of the usual size (none if a spare one is there), or the growth of `pending`.
    @inlinable func growth(appending n: Int, spareAvailable: Bool) -> Int {
        let need = Int(pendingLength) + n
        if pending == nil {
            return need <= KernelNetwork.sendBufferSize && spareAvailable ? 0 : max(KernelNetwork.sendBufferSize, need)
        }
        return need <= Int(pendingCapacity) ? 0 : max(need, Int(pendingCapacity) * 2) - Int(pendingCapacity)
    }

    /// Bytes `pending` takes without growing.
    @inlinable var roomWithoutGrowth: Int { pending == nil ? 0 : Int(pendingCapacity - pendingLength) }
    @inlinable var isEmpty: Bool { sendingLength == sendingDone && pendingLength == 0 }

    @inlinable mutating func append(_ bytes: UnsafeRawBufferPointer, spare: inout [UnsafeMutableRawPointer]) {
        let n = bytes.count
        guard n > 0 else { return }
        let need = Int(pendingLength) + n
        if pending == nil {
            if need <= KernelNetwork.sendBufferSize, let b = spare.popLast() {
                pending = b
                pendingCapacity = UInt32(KernelNetwork.sendBufferSize)
            } else {
                let cap = max(KernelNetwork.sendBufferSize, need)
                pending = .allocate(byteCount: cap, alignment: 16)
                pendingCapacity = UInt32(cap)
            }
        } else if need > Int(pendingCapacity) {
            let cap = max(need, Int(pendingCapacity) * 2)
            let bigger = UnsafeMutableRawPointer.allocate(byteCount: cap, alignment: 16)
            bigger.copyMemory(from: pending!, byteCount: Int(pendingLength))
            pending!.deallocate()
            pending = bigger
            pendingCapacity = UInt32(cap)
        }
        (pending! + Int(pendingLength)).copyMemory(from: bytes.baseAddress!, byteCount: n)
        pendingLength = UInt32(need)
    }

    /// Makes the pending bytes the ones to send when nothing is being sent; false when there
    /// is nothing to send.
    @inlinable mutating func promote() -> Bool {
        if sendingDone < sendingLength { return true }
        guard pendingLength > 0 else { return false }
        swap(&sending, &pending)
        swap(&sendingCapacity, &pendingCapacity)
        sendingLength = pendingLength
        sendingDone = 0
        pendingLength = 0
        return true
    }

    @inlinable var unsent: (UnsafeMutableRawPointer, Int) {
        (sending! + Int(sendingDone), Int(sendingLength - sendingDone))
    }

    /// `n` bytes of `sending` went out. Returns true if some of it remains.
    @inlinable mutating func consume(_ n: Int, spare: inout [UnsafeMutableRawPointer], credit: inout SendCredit) -> Bool {
        sendingDone += UInt32(n)
        if sendingDone < sendingLength { return true }
        sendingDone = 0
        sendingLength = 0
        if let b = sending {
            Self.discard(b, capacity: sendingCapacity, spare: &spare, credit: &credit)
            sending = nil
            sendingCapacity = 0
        }
        return false
    }

    /// Frees both buffers (those of the usual size to `spare`, up to its limit).
    mutating func release(spare: inout [UnsafeMutableRawPointer], credit: inout SendCredit) {
        if let b = sending { Self.discard(b, capacity: sendingCapacity, spare: &spare, credit: &credit) }
        if let b = pending { Self.discard(b, capacity: pendingCapacity, spare: &spare, credit: &credit) }
        self = KernelSendQueue()
    }

    /// A buffer no queue holds: kept as a spare (still charged to the cap) if it is of the
    /// usual size and there is room, else freed and its memory given back to the cap.
    @inlinable static func discard(_ b: UnsafeMutableRawPointer, capacity: UInt32, spare: inout [UnsafeMutableRawPointer],
                                   credit: inout SendCredit) {
        if capacity == UInt32(KernelNetwork.sendBufferSize) && spare.count < KernelNetwork.spareLimit {
            spare.append(b)
        } else {
            b.deallocate()
            credit.refund(Int(capacity))
        }
    }
}
