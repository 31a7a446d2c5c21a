import HereticTransport
import HereticCore
import CHereticSys

/// Local ports for outgoing connections (RFC 6056), the 4-tuple index, and the count of
/// connections in TIME-WAIT.
extension TCPLayer {
    @usableFromInline func enterTimeWait() -> Bool {
        guard timeWaitCount < timeWaitLimit else { timeWaitOverflows += 1; return false }
        timeWaitCount += 1
        timeWaitEntered += 1
        return true
    }

    @usableFromInline func leaveTimeWait() { timeWaitCount -= 1 }

    @usableFromInline static let ephemeralRange = 49_152...UInt16.max

    /// A local port for a connection to `remote`, by RFC 6056's double-hash algorithm: each
    /// destination starts at its own keyed offset, so ports are neither predictable nor shared
    /// in sequence across destinations. If every port is taken, one whose connection waits in
    /// TIME-WAIT is recycled; nil when all are live connections.
    @usableFromInline func ephemeralPort(for remote: TCPEndpoint) -> UInt16? {
        var h = Hasher()
        h.combine(secret)
        h.combine(remote.address.raw)
        h.combine(remote.port)
        let hash = UInt64(bitPattern: Int64(h.finalize()))
        let count = Self.ephemeralRange.count
        let offset = Int(hash % UInt64(count)), bucket = Int(hash >> 56)
        var recyclable: UInt16?
        for _ in 0..<count {
            let port = UInt16(Int(Self.ephemeralRange.lowerBound) + (offset + Int(portBuckets[bucket])) % count)
            portBuckets[bucket] &+= 1
            if listeners[port] == nil {
                guard let ref = table[Self.key(remote, port)] else { return port }
                if recyclable == nil && arena(ref).isTimeWait(ConnectionRef.slot(ref)) { recyclable = port }
            }
        }
        guard let reuse = recyclable, let ref = table[Self.key(remote, reuse)] else { return nil }
        timeWaitRecycled += 1
        _ = arena(ref).yieldTimeWait(ConnectionRef.slot(ref), nil)
        return reuse
    }

    @usableFromInline static func key(_ remote: TCPEndpoint, _ localPort: UInt16) -> UInt64 {
        UInt64(remote.address.raw) << 32 | UInt64(remote.port) << 16 | UInt64(localPort)
    }

    @usableFromInline func register(_ ref: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        table[Self.key(remote, localPort)] = ref
    }

    @usableFromInline func unregister(_ ref: UInt64, remote: TCPEndpoint, localPort: UInt16) {
        let k = Self.key(remote, localPort)
        if table[k] == ref { table[k] = nil }
        reassembly.remove(ref)
    }
}
