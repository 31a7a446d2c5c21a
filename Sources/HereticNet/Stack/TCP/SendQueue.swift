import HereticTransport
/// Per-connection data waiting for acknowledgement: created with the first byte sent and
/// released when the last is acknowledged ("lazy IO": an idle connection owns no buffer).
/// Bounded by the connection's send buffer size: a send beyond it takes only what fits.
@usableFromInline struct SendQueue {
    @usableFromInline var bytes: [UInt8] = []
    /// Bytes at the front already acknowledged (trimmed in batches of at most 64 KiB).
    @usableFromInline var ackedCount: UInt32 = 0
    /// The connection's own send buffer size in KiB (0: the layer's default).
    @usableFromInline var limitKiB: UInt16 = 0
    @usableFromInline var flags: UInt8 = 0
    @inlinable init() {}

    @inlinable var acked: Int {
        get { Int(ackedCount) }
        set { ackedCount = UInt32(newValue) }
    }
    @inlinable func flag(_ bit: UInt8) -> Bool { flags & bit != 0 }
    @inlinable mutating func set(_ bit: UInt8, _ on: Bool) { flags = on ? flags | bit : flags & ~bit }
    @inlinable var closeRequested: Bool { get { flag(1) } set { set(1, newValue) } }
    /// Nagle off: send small segments at once even with data unacknowledged.
    @inlinable var noDelay: Bool { get { flag(2) } set { set(2, newValue) } }
    /// Received data waits for a delayed ACK (in the layer's delayed-ACK queue).
    @inlinable var ackOwed: Bool { get { flag(4) } set { set(4, newValue) } }
    /// Out-of-order data waits in the layer's reassembly store.
    @inlinable var hasStash: Bool { get { flag(8) } set { set(8, newValue) } }
    /// The application was held back (a send took less than asked, or the queue grew past
    /// the writable mark): it hears `writable` once the queue drains below it.
    @inlinable var wantWritable: Bool { get { flag(16) } set { set(16, newValue) } }
    /// A send was refused by the process-wide cap: the connection waits in the layer's list
    /// to hear `writable` once memory is back under the cap.
    @inlinable var capWaiting: Bool { get { flag(32) } set { set(32, newValue) } }

    @inlinable var pending: Int { bytes.count - acked }
    /// Nothing queued, nothing owed: the queue holds no memory.
    @inlinable var isIdle: Bool { bytes.count == acked && !closeRequested }

    /// The most this queue may hold, given the layer's default.
    @inlinable func limit(default size: Int) -> Int { limitKiB == 0 ? size : Int(limitKiB) << 10 }

    /// The queue drained below this many bytes tells a held-back application `writable`:
    /// half its limit, at most `TCPLayer.writableThreshold`.
    @inlinable func writableMark(default size: Int) -> Int { min(TCPLayer.writableThreshold, limit(default: size) / 2) }

    /// Forgets everything but the buffer (whose memory the caller has accounted for).
    @usableFromInline mutating func reset() {
        bytes = []
        ackedCount = 0
        limitKiB = 0
        flags = 0
    }
}
