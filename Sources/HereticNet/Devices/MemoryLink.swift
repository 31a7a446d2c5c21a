import HereticTransport
#if canImport(Glibc)
import Glibc
#endif
/// Two devices joined by in-memory queues: what one transmits, the other receives, in order.
/// The deterministic wire for tests and simulations (wrap it in a `FaultInjector` for loss).
/// With HERETIC_TRACE set in the environment, every frame crossing it is printed dissected.
public final class MemoryLink {
    public final class End: NetworkDevice {
        public let mtu: Int
        public let offloads: DeviceOffloads = []
        /// Frames in flight towards this end, as bytes (a link owns no pool).
        var inbound: [[UInt8]] = []
        weak var peer: End?
        /// Frames received and sent, for tests.
        public private(set) var framesSent = 0
        public private(set) var framesReceived = 0

        var name = ""
        init(mtu: Int) { self.mtu = mtu }

        public func receive(into frames: inout [Packet], limit: Int, pool: PacketPool) -> Int {
            var n = 0
            while n < limit, !inbound.isEmpty {
                let bytes = inbound[0]
                guard let p = bytes.withUnsafeBytes({ pool.copy(from: $0.baseAddress!, length: $0.count) }) else { break }
                inbound.removeFirst()
                frames.append(p)
                n += 1
            }
            framesReceived += n
            return n
        }

        public func transmit(_ frames: inout [Packet], pool: PacketPool) {
            let trace = getenv("HERETIC_TRACE") != nil
            for f in frames {
                if trace { print(name, Dissection.dissect(pool.bytes(f), length: Int(f.length))) }
                peer?.inbound.append(pool.contents(f))
                pool.release(f)
                framesSent += 1
            }
            frames.removeAll(keepingCapacity: true)
        }

        /// Frames waiting to be received here.
        public var pending: Int { inbound.count }
    }

    public let a: End
    public let b: End

    public init(mtu: Int = 1500) {
        a = End(mtu: mtu)
        b = End(mtu: mtu)
        a.peer = b
        b.peer = a
        a.name = "a>"
        b.name = "b>"
    }
}
