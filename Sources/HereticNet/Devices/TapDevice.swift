import HereticTransport
import CHereticSys

/// A Linux TAP device: the stack sends and receives whole Ethernet frames through the kernel,
/// which sees a network interface (`name`) with the stack as a neighbour on its link. Frames
/// are read and written one system call each, non-blocking, in batches per poll; a full
/// kernel queue leaves frames with the sender (backpressure). The device goes away when this
/// object does (the descriptor closes).
///
/// With virtio-net headers (the default where the kernel offers them), checksums are offloaded
/// both ways: the stack leaves TCP and UDP checksums to the kernel (this device writes the
/// IPv4 header checksum and the pseudo-header sum and marks the frame partial), and frames
/// whose checksum the kernel left partial are completed here before the stack sees them.
public final class TapDevice: NetworkDevice {
    /// The kernel's name for the interface (to configure it with `ip`).
    public let name: String
    public let mtu: Int
    /// Transmit checksums with virtio-net headers; none without.
    public let offloads: DeviceOffloads
    /// Whether frames carry a virtio-net header (checksum offload negotiated).
    public let vnetHeaders: Bool
    static let vnetHeaderLength = 10
    private var fd: Int32
    public private(set) var framesRead = 0
    public private(set) var framesWritten = 0
    /// Read or write errors other than "nothing waiting" or "queue full" (frames dropped).
    public private(set) var errors = 0
    /// Received frames whose checksum the kernel had left partial, completed here.
    public private(set) var checksumsCompleted = 0

    /// Opens (creating) the TAP device `name` ("" lets the kernel choose). Needs
    /// CAP_NET_ADMIN (root). Throws `NetError.device` with the reason.
    public init(name: String = "", mtu: Int = 1500, vnetHeaders: Bool = true) throws(NetError) {
        var buffer = [CChar](repeating: 0, count: 16)
        for (i, c) in name.utf8.prefix(15).enumerated() { buffer[i] = CChar(bitPattern: c) }
        var vnet = vnetHeaders
        var fd = vnet ? buffer.withUnsafeMutableBufferPointer { heretic_tap_open_vnet($0.baseAddress!) } : -1
        if fd < 0 {
            vnet = false  // the kernel offers no offloads here: plain frames, checksums computed
            fd = buffer.withUnsafeMutableBufferPointer { heretic_tap_open($0.baseAddress!) }
        }
        guard fd >= 0 else { throw .device("cannot open TAP device \"\(name)\": \(TapDevice.describe(errno: -fd))") }
        self.fd = fd
        self.mtu = mtu
        self.vnetHeaders = vnet
        offloads = vnet ? [.transmitChecksums] : []
        self.name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    deinit { heretic_fd_close(fd) }

    public func receive(into frames: inout [Packet], limit: Int, pool: PacketPool) -> Int {
        var n = 0
        let header = vnetHeaders ? Self.vnetHeaderLength : 0
        while n < limit, var p = pool.allocate(length: 0) {
            let frame = pool.bytes(p)
            let room = PacketPool.bufferSize - Int(p.offset) + header
            let got = heretic_fd_read(fd, frame - header, room)
            guard got > header else {
                pool.release(p)
                if got < 0 { errors += 1 }
                if got <= 0 { break } else { continue }
            }
            let length = got - header
            if header > 0 && frame.load(fromByteOffset: -header, as: UInt8.self) & 1 != 0 {
                Self.completeChecksum(frame, length: length, header: frame - header)
                checksumsCompleted += 1
            }
            p.length = UInt16(length)
            frames.append(p)
            n += 1
        }
        framesRead += n
        return n
    }

    public func transmit(_ frames: inout [Packet], pool: PacketPool) {
        var sent = 0
        let header = vnetHeaders ? Self.vnetHeaderLength : 0
        for f in frames {
            let frame = pool.bytes(f)
            if header > 0 {
                precondition(f.offset >= UInt16(header), "Heretic: a frame without headroom for the virtio-net header")
                Self.prepareOffload(frame, length: Int(f.length), header: frame - header)
            }
            let rc = heretic_fd_write(fd, frame - header, Int(f.length) + header)
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

    /// The kernel left this frame's TCP or UDP checksum partial (VIRTIO_NET_HDR_F_NEEDS_CSUM):
    /// the field holds the pseudo-header sum; sum from `csum_start` to the end and store it.
    static func completeChecksum(_ frame: UnsafeMutableRawPointer, length: Int, header: UnsafeMutableRawPointer) {
        let start = Int(UInt16(littleEndian: header.loadUnaligned(fromByteOffset: 6, as: UInt16.self)))
        let at = start + Int(UInt16(littleEndian: header.loadUnaligned(fromByteOffset: 8, as: UInt16.self)))
        guard start < length, at + 2 <= length else { return }  // nonsense offsets: left to fail verification
        var sum = InternetChecksum.compute(UnsafeRawPointer(frame + start), count: length - start)
        if sum == 0 && frame.load(fromByteOffset: 23, as: UInt8.self) == IPProtocol.udp { sum = 0xFFFF }
        frame.setBE16(at, sum)
    }

    /// Fills the virtio-net header for an outgoing frame. The stack left the checksums out
    /// (`transmitChecksums`): write the IPv4 header checksum, and for TCP and UDP the
    /// pseudo-header sum, marked partial for the kernel to finish (or trust, if it stays local).
    static func prepareOffload(_ frame: UnsafeMutableRawPointer, length: Int, header: UnsafeMutableRawPointer) {
        header.initializeMemory(as: UInt8.self, repeating: 0, count: vnetHeaderLength)
        let p = UnsafeRawPointer(frame)
        guard length >= 34, p.be16(12) == EtherType.ipv4 else { return }
        let ihl = Int(p.byte(14) & 0x0F) * 4
        let total = Int(p.be16(16))
        guard ihl >= 20, 14 + total <= length, total >= ihl else { return }
        if p.be16(24) == 0 {
            frame.setBE16(24, InternetChecksum.compute(p + 14, count: ihl))
        }
        let proto = p.byte(23)
        let sumOffset = proto == IPProtocol.tcp ? 16 : proto == IPProtocol.udp ? 6 : -1
        let fragment = p.be16(20) & 0x3FFF != 0
        guard sumOffset >= 0, !fragment, total - ihl >= sumOffset + 2 else { return }
        let start = 14 + ihl
        guard p.be16(start + sumOffset) == 0 else { return }  // already computed by the stack
        let source = IPv4Address(raw: p.be32(26)), destination = IPv4Address(raw: p.be32(30))
        let pseudo = InternetChecksum.pseudoHeader(source: source, destination: destination, protocol: proto,
                                                   length: total - ihl)
        frame.setBE16(start + sumOffset, InternetChecksum.fold(pseudo))
        header.storeBytes(of: 1, as: UInt8.self)  // VIRTIO_NET_HDR_F_NEEDS_CSUM
        header.storeBytes(of: UInt16(start).littleEndian, toByteOffset: 6, as: UInt16.self)
        header.storeBytes(of: UInt16(sumOffset).littleEndian, toByteOffset: 8, as: UInt16.self)
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
