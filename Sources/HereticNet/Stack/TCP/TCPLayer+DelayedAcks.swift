import HereticTransport
import HereticCore
import CHereticSys

/// Delayed ACKs: owed by connections, sent when due unless a segment carries them first.
extension TCPLayer {
    /// Marks the connection as owing an ACK, sent when due unless a segment carries it first.
    @usableFromInline func delayAck(_ ref: UInt64) {
        arena(ref).queues[Int(ConnectionRef.slot(ref))].ackOwed = true
        delayedAcks.append((ref, clock &+ delayedAckMilliseconds))
    }

    /// Sends the delayed ACKs that are due (their connections sent nothing to carry them).
    func flushDelayedAcks() {
        while delayedHead < delayedAcks.count {
            let (ref, due) = delayedAcks[delayedHead]
            guard Int32(bitPattern: clock &- due) >= 0 else { break }
            delayedHead += 1
            // Carried already, or the connection is gone (its slot maybe trimmed or reused).
            guard isLive(ref) else { continue }
            let a = arena(ref), slot = ConnectionRef.slot(ref)
            guard a.queues[Int(slot)].ackOwed else { continue }
            var ack: TCPSegmentInfo?
            a.run(slot) { ack = $0.ackSegment(now: clock) }
            if let ack {
                delayedAcksSent += 1
                emit(ack, ref: ref, payload: nil)
            }
        }
        if delayedHead == delayedAcks.count {
            delayedAcks.removeAll(keepingCapacity: delayedAcks.capacity <= 65_536)
            delayedHead = 0
        } else if delayedHead > 4096 && delayedHead * 2 > delayedAcks.count {
            delayedAcks.removeFirst(delayedHead)
            delayedHead = 0
        }
    }
}
