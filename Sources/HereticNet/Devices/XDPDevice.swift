import HereticTransport
import CHereticSys
import CHereticXDP

/// How the kernel runs the redirect program of an `XDPDevice`.
public enum XDPAttachMode: String, Sendable {
    /// In the driver's receive path (XDP_FLAGS_DRV_MODE), before any socket buffer exists.
    case native
    /// On socket buffers after the driver (XDP_FLAGS_SKB_MODE): any interface, slower.
    case generic
}

/// An AF_XDP socket on one receive queue of a Linux interface (`name`): frames move between
/// the kernel and the stack through four shared rings, and their bytes live in the stack's
/// own `PacketPool`, whose arena is the socket's UMEM (buffer i is chunk i, 2048 bytes). No
/// system call per frame and no copy on the stack's side: a received frame is a `Packet` of
/// the buffer the kernel wrote it into, and a frame to send is posted in its own buffer.
///
/// The interface gets a tiny XDP program, loaded and attached here with bpf(2) (no libbpf),
/// that redirects every frame of queue `queue` to this socket; the kernel's own stack on
/// that interface sees none of them. Native (driver) XDP is tried first, then generic;
/// zero-copy binding first, then copy mode (`mode`, `zeroCopy` say which were taken). Both
/// go when this object does.
///
/// The pool's buffers travel: the device keeps about `fillTarget` of them in the kernel's
/// fill ring, and frames posted for transmit stay the kernel's until their completion comes
/// back, when they return to the pool. A full transmit ring leaves frames with the sender
/// (backpressure). The pool must outlive the device and serve no other XDP device; its pages
/// are pinned by the kernel, so the pool no longer gives them back (`trim` does nothing).
///
/// The device computes no checksums and verifies none (`offloads` is empty): a peer that
/// leaves checksums partial (Linux on veth, unless `ethtool -K PEER tx off`) sends frames
/// the stack rejects.
public final class XDPDevice: NetworkDevice {
    /// The kernel's name for the interface.
    public let name: String
    public let ifindex: Int32
    /// The receive queue the socket is bound to.
    public let queue: Int
    public let mtu: Int
    public let offloads: DeviceOffloads = []
    /// The pool whose arena is the UMEM: `receive` and `transmit` take only its packets.
    public let pool: PacketPool
    /// Where the redirect program runs.
    public let mode: XDPAttachMode
    /// True when the NIC reads and writes the UMEM itself; false in copy mode (the kernel
    /// copies each frame between its own buffers and the UMEM).
    public let zeroCopy: Bool
    /// Buffers the device keeps in the kernel's fill ring.
    public let fillTarget: Int
    /// Received frames start this far into their buffer.
    public let receiveOffset: Int
    static let fillRingSize: UInt32 = 4096
    static let completionRingSize: UInt32 = 4096
    static let receiveRingSize: UInt32 = 2048
    static let transmitRingSize: UInt32 = 2048
    /// Descriptors handled per call into C.
    static let batch = 256
    private var program: heretic_xdp_program
    private let xsk: OpaquePointer
    private let descriptors: UnsafeMutablePointer<heretic_xsk_desc>
    private let addresses: UnsafeMutablePointer<UInt64>
    /// Buffers now in the fill ring or being written by the kernel.
    private var inFillRing = 0
    /// Frames posted for transmit whose completion has not come back.
    public private(set) var inFlight = 0
    /// True while the transmit ring holds frames the kernel has not taken (a kick to retry).
    private var transmitWaiting = false
    public private(set) var framesRead = 0
    public private(set) var framesWritten = 0
    /// Transmit completions reaped (their buffers released to the pool).
    public private(set) var completions = 0
    /// Wake-ups the kernel refused with an error other than "busy" (frames stay queued).
    public private(set) var errors = 0
    /// Times the pool had no buffer to put in the fill ring (the kernel drops frames when
    /// that ring runs dry: see `statistics`).
    public private(set) var fillShortfalls = 0

    /// Attaches to queue `queue` of interface `name`, using `pool`'s arena as the UMEM.
    /// `attach` and `zeroCopy` force a mode (nil: the best that works). Needs root
    /// (CAP_NET_ADMIN, CAP_BPF). Throws `NetError.device` with the step that failed and why.
    public init(name: String, pool: PacketPool, queue: Int = 0, mtu: Int = 1500,
                attach: XDPAttachMode? = nil, zeroCopy: Bool? = nil) throws(NetError) {
        precondition(!pool.pinnedByDevice, "Heretic: a packet pool can be the UMEM of one XDP device only")
        precondition(PacketPool.bufferSize == 2048, "Heretic: XDP chunks are the pool's 2048-byte buffers")
        let index = heretic_if_index(name)
        guard index > 0 else { throw .device("no interface \"\(name)\" for XDP") }
        guard queue >= 0 && queue < 64 else { throw .device("XDP queue \(queue) out of range (0..<64)") }
        // A received frame starts 256 bytes into its 2048-byte chunk.
        guard mtu >= 68 && mtu + 14 <= PacketPool.bufferSize - Int(HERETIC_XDP_PACKET_HEADROOM) else {
            throw .device("MTU \(mtu) does not fit an XDP chunk (at most \(PacketPool.bufferSize - Int(HERETIC_XDP_PACKET_HEADROOM) - 14))")
        }
        var program = heretic_xdp_program()
        let mode: Int32 = switch attach {
        case nil: Int32(HERETIC_XDP_MODE_ANY)
        case .native: Int32(HERETIC_XDP_MODE_NATIVE)
        case .generic: Int32(HERETIC_XDP_MODE_GENERIC)
        }
        let rc = heretic_xdp_attach(index, UInt32(queue + 1), mode, &program)
        guard rc == 0 else {
            throw .device("cannot attach XDP to \"\(name)\": \(String(cString: program.failed_step)): \(Self.describe(errno: -rc))")
        }
        var config = heretic_xsk_config()
        config.umem = pool.base
        config.umem_bytes = UInt64(pool.capacity * PacketPool.bufferSize)
        config.chunk_size = UInt32(PacketPool.bufferSize)
        config.headroom = 0  // frames land at 256 (the kernel's XDP headroom): room for any header we prepend
        config.fill_size = Self.fillRingSize
        config.completion_size = Self.completionRingSize
        config.rx_size = Self.receiveRingSize
        config.tx_size = Self.transmitRingSize
        config.ifindex = index
        config.queue = UInt32(queue)
        config.bind_mode = switch zeroCopy {
        case nil: Int32(HERETIC_XSK_ANY)
        case true?: Int32(HERETIC_XSK_ZEROCOPY)
        case false?: Int32(HERETIC_XSK_COPY)
        }
        var error: Int32 = 0
        var step: UnsafePointer<CChar>? = nil
        guard let xsk = heretic_xsk_open(&config, &error, &step) else {
            heretic_xdp_detach(&program)
            throw .device("cannot open an AF_XDP socket on \"\(name)\" queue \(queue): \(step.map { String(cString: $0) } ?? "?"): \(Self.describe(errno: -error))")
        }
        let set = heretic_xdp_map_set(&program, UInt32(queue), heretic_xsk_fd(xsk))
        guard set == 0 else {
            heretic_xsk_close(xsk)
            heretic_xdp_detach(&program)
            throw .device("cannot point the XSKMAP of \"\(name)\" at the socket: \(Self.describe(errno: -set))")
        }
        self.name = name
        ifindex = index
        self.queue = queue
        self.mtu = mtu
        self.pool = pool
        self.program = program
        self.xsk = xsk
        self.mode = program.mode == Int32(HERETIC_XDP_MODE_NATIVE) ? .native : .generic
        self.zeroCopy = heretic_xsk_zerocopy(xsk) != 0
        receiveOffset = Int(heretic_xsk_rx_offset(xsk))
        fillTarget = min(Int(Self.receiveRingSize), pool.capacity / 4)
        descriptors = .allocate(capacity: Self.batch)
        addresses = .allocate(capacity: Self.batch)
        pool.pinnedByDevice = true
        refill()
    }

    deinit {
        heretic_xdp_detach(&program)  // no more redirects; the map lets go of the socket
        heretic_xsk_close(xsk)
        descriptors.deallocate()
        addresses.deallocate()
    }

    public func receive(into frames: inout [Packet], limit: Int, pool: PacketPool) -> Int {
        precondition(pool === self.pool, "Heretic: an XDP device receives into its own UMEM pool only")
        reapCompletions()
        if transmitWaiting { kick() }
        var n = 0
        while n < limit {
            let want = UInt32(min(limit - n, Self.batch))
            let got = heretic_xsk_rx_peek(xsk, descriptors, want)
            if got == 0 { break }
            for i in 0..<Int(got) {
                let d = descriptors[i]
                let at = Int(d.addr)
                frames.append(Packet(buffer: UInt32(at / PacketPool.bufferSize),
                                     offset: UInt16(at % PacketPool.bufferSize), length: UInt16(d.len)))
            }
            heretic_xsk_rx_release(xsk, got)
            n += Int(got)
            if got < want { break }
        }
        inFillRing -= n
        framesRead += n
        refill()
        return n
    }

    public func transmit(_ frames: inout [Packet], pool: PacketPool) {
        precondition(pool === self.pool, "Heretic: an XDP device transmits from its own UMEM pool only")
        reapCompletions()
        var posted = 0
        while posted < frames.count {
            let count = min(frames.count - posted, Self.batch)
            for i in 0..<count {
                let f = frames[posted + i]
                descriptors[i] = heretic_xsk_desc(addr: UInt64(Int(f.buffer) * PacketPool.bufferSize + Int(f.offset)),
                                                  len: UInt32(f.length), options: 0)
            }
            let took = Int(heretic_xsk_tx(xsk, descriptors, UInt32(count)))
            posted += took
            if took < count { break }  // the ring is full: the rest waits with the caller
        }
        if posted > 0 {
            inFlight += posted
            framesWritten += posted
            if posted == frames.count {
                frames.removeAll(keepingCapacity: true)
            } else {
                frames.removeFirst(posted)
            }
        }
        kick()
        reapCompletions()
    }

    /// Asks the kernel to send what the transmit ring holds.
    private func kick() {
        if heretic_xsk_kick(xsk) < 0 { errors += 1 }
        transmitWaiting = heretic_xsk_tx_pending(xsk) > 0
    }

    /// Sent frames' buffers back to the pool.
    private func reapCompletions() {
        guard inFlight > 0 else { return }
        while true {
            let n = Int(heretic_xsk_complete(xsk, addresses, UInt32(Self.batch)))
            for i in 0..<n {
                pool.release(Packet(buffer: UInt32(Int(addresses[i]) / PacketPool.bufferSize), offset: 0, length: 0))
            }
            inFlight -= n
            completions += n
            if n < Self.batch { break }
        }
    }

    /// Tops the fill ring up to `fillTarget` buffers from the pool.
    private func refill() {
        while inFillRing < fillTarget {
            let want = min(fillTarget - inFillRing, Self.batch)
            var count = 0
            while count < want, let p = pool.allocate(length: 0) {
                addresses[count] = UInt64(Int(p.buffer) * PacketPool.bufferSize)
                count += 1
            }
            if count < want { fillShortfalls += 1 }
            guard count > 0 else { return }
            let took = Int(heretic_xsk_fill(xsk, addresses, UInt32(count)))
            for i in took..<count {  // no room (cannot happen: the ring holds twice the target)
                pool.release(Packet(buffer: UInt32(Int(addresses[i]) / PacketPool.bufferSize), offset: 0, length: 0))
            }
            inFillRing += took
            if took < want { return }
        }
    }

    /// The kernel's counters for the socket (frames it dropped, and why).
    public var statistics: XDPStatistics {
        var s = heretic_xsk_statistics()
        _ = heretic_xsk_read_statistics(xsk, &s)
        return XDPStatistics(receiveDropped: Int(s.rx_dropped), receiveInvalid: Int(s.rx_invalid_descs),
                             transmitInvalid: Int(s.tx_invalid_descs), receiveRingFull: Int(s.rx_ring_full),
                             fillRingEmpty: Int(s.rx_fill_ring_empty_descs))
    }

    static func describe(errno e: Int32) -> String {
        switch e {
        case 1: return "operation not permitted (needs root: CAP_NET_ADMIN and CAP_BPF)"
        case 12: return "out of memory (or the locked-memory limit, for the UMEM)"
        case 13: return "permission denied (needs root)"
        case 16: return "device busy (another XDP program or socket holds it)"
        case 19: return "no such device"
        case 22: return "invalid argument"
        case 95: return "not supported by this interface or kernel"
        case 97: return "address family not supported (a kernel without AF_XDP)"
        default: return "errno \(e)"
        }
    }
}

/// What the kernel counted for an AF_XDP socket.
public struct XDPStatistics: Sendable, Equatable {
    /// Frames dropped for other reasons (too long for a chunk, for example).
    public var receiveDropped: Int
    public var receiveInvalid: Int
    public var transmitInvalid: Int
    /// Frames dropped because the receive ring was full (the stack did not keep up).
    public var receiveRingFull: Int
    /// Times the kernel found the fill ring empty (frames dropped for want of a buffer).
    public var fillRingEmpty: Int
}
