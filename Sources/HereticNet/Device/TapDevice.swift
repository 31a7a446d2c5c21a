import CHereticSys

/// A Linux TAP device: the stack sends and receives whole Ethernet frames through the kernel,
/// which sees a network interface (`name`) with the stack as a neighbour on its link. Frames
/// are read and written one system call each, non-blocking, in batches per poll; a full
/// kernel queue leaves frames with the sender (backpressure). The device goes away when this
/// object does (the descriptor closes).
public final class TapDevice: NetworkDevice {
    /// The kernel's name for the interface (to configure it with `ip`).
    public let name: String
    public let mtu: Int
    /// No offloads: the kernel checks what arrives from a TAP, so checksums are computed.
    public let offloads: DeviceOffloads = []
    private var fd: Int32
    public private(set) var framesRead = 0
    public private(set) var framesWritten = 0
    /// Read or write errors other than "nothing waiting" or "queue full" (frames dropped).
    public private(set) var errors = 0

    /// Opens (creating) the TAP device `name` ("" lets the kernel choose). Needs
    /// CAP_NET_ADMIN (root). Throws `NetError.device` with the reason.
    public init(name: String = "", mtu: Int = 1500) throws(NetError) {
        var buffer = [CChar](repeating: 0, count: 16)
        for (i, c) in name.utf8.prefix(15).enumerated() { buffer[i] = CChar(bitPattern: c) }
        let fd = buffer.withUnsafeMutableBufferPointer { heretic_tap_open($0.baseAddress!) }
        guard fd >= 0 else { throw .device("cannot open TAP device \"\(name)\": \(TapDevice.describe(errno: -fd))") }
        self.fd = fd
        self.mtu = mtu
        self.name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit { heretic_fd_close(fd) }

    public func receive(into frames: inout [Packet], limit: Int, pool: PacketPool) -> Int {
        var n = 0
        while n < limit, var p = pool.allocate(length: 0) {
            let room = PacketPool.bufferSize - Int(p.offset)
            let got = heretic_fd_read(fd, pool.bytes(p), room)
            guard got > 0 else {
                pool.release(p)
                if got < 0 { errors += 1 }
                break
            }
            p.length = UInt16(got)
            frames.append(p)
            n += 1
        }
        framesRead += n
        return n
    }

    public func transmit(_ frames: inout [Packet], pool: PacketPool) {
        var sent = 0
        for f in frames {
            let rc = heretic_fd_write(fd, pool.bytes(f), Int(f.length))
            if rc == 0 { break }  // the kernel's queue is full: the rest waits
            if rc < 0 { errors += 1 } else { framesWritten += 1 }
            pool.release(f)
            sent += 1
        }
        if sent == frames.count {
            frames.removeAll(keepingCapacity: true)
        } else {
            frames.removeFirst(sent)
        }
    }

    static func describe(errno e: Int32) -> String {
        switch e {
        case 1: return "operation not permitted (needs root or CAP_NET_ADMIN)"
        case 2: return "no /dev/net/tun (the tun module is not loaded)"
        case 13: return "permission denied (needs root or CAP_NET_ADMIN)"
        case 16: return "device busy (the name is taken)"
        default: return "errno \(e)"
        }
    }
}
