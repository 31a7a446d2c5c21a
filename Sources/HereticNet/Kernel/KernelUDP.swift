import HereticTransport
import CHereticKernel
import CHereticSys
#if canImport(Glibc)
import Glibc
#endif

/// A UDP socket on Linux's sockets, as handlers (and `udpSocket(port:)`) get it: sends go
/// straight to the kernel (`sendto`, non-blocking).
public struct KernelUDPSocket: UDPSocket {
    @usableFromInline unowned(unsafe) let kernel: KernelNetwork
    @usableFromInline let fd: Int32
    public let localPort: UInt16

    @inlinable init(kernel: KernelNetwork, fd: Int32, localPort: UInt16) {
        self.kernel = kernel
        self.fd = fd
        self.localPort = localPort
    }

    @inlinable @discardableResult
    public func send(_ data: UnsafeRawBufferPointer, to peer: UDPEndpoint) -> Bool {
        kernel.sendDatagram(fd, data, to: peer)
    }
}

/// One bound UDP port: its socket and its handler, reached through a closure made where the
/// handler type is known (so the handler runs specialised).
@usableFromInline final class KernelUDPBinding {
    /// -1 once unbound (the entry stays, so late completions naming it find nothing).
    @usableFromInline var fd: Int32
    @usableFromInline var port: UInt16
    /// io_uring: a multishot poll is armed for the socket.
    var pollArmed = false
    /// Datagrams may be waiting beyond what the last turn read.
    var again = false
    @usableFromInline @exclusivity(unchecked) var deliver: (UnsafeRawBufferPointer, UDPEndpoint, KernelUDPSocket) -> Void = { _, _, _ in }

    @usableFromInline init(fd: Int32, port: UInt16) {
        self.fd = fd
        self.port = port
    }

    @inlinable static func make<H: UDPHandler>(fd: Int32, port: UInt16, _ handler: H) -> KernelUDPBinding {
        let b = KernelUDPBinding(fd: fd, port: port)
        // The closure owns the handler: its state lives as long as the binding.
        let box = UDPHandlerBox(handler)
        b.deliver = { data, from, socket in box.handler.received(data, from: from, socket) }
        return b
    }
}

@usableFromInline final class UDPHandlerBox<H: UDPHandler> {
    @usableFromInline @exclusivity(unchecked) var handler: H
    @inlinable init(_ handler: H) { self.handler = handler }
}

extension KernelNetwork {
    /// Datagrams read per batch, each into its own 64 KiB buffer (the largest a datagram can be).
    static let datagramBatch = 32
    static let datagramBufferSize = 65_536
    /// Batches read from one socket per turn before the others (and TCP) get theirs.
    static let datagramBatchesPerTurn = 8

    /// Binds a UDP handler to `port` on every local address (0: the kernel picks a free
    /// port); returns the port bound. SO_REUSEPORT: each core can bind the same port, and the
    /// kernel spreads the senders across them.
    @inlinable @discardableResult
    public func bindUDP<H: UDPHandler>(port: UInt16, _ handler: H) throws(NetError) -> UInt16 {
        try bindUDP(port: port, address: .any, handler)
    }

    /// Binds a UDP handler to `address`:`port`.
    @inlinable @discardableResult
    public func bindUDP<H: UDPHandler>(port: UInt16, address: IPv4Address, _ handler: H) throws(NetError) -> UInt16 {
        let fd = try openUDP(port: port, address: address)
        let bound = UInt16(truncatingIfNeeded: heretic_udp_local_port(fd))
        addUDP(KernelUDPBinding.make(fd: fd, port: bound, handler))
        return bound
    }

    @usableFromInline func openUDP(port: UInt16, address: IPv4Address) throws(NetError) -> Int32 {
        if port != 0 && udpBindings.contains(where: { $0.port == port && $0.fd >= 0 }) { throw .addressInUse(port) }
        let fd = heretic_udp_bind(address.raw, port, 1)
        guard fd >= 0 else {
            if -fd == EADDRINUSE { throw .addressInUse(port) }
            throw .device("UDP bind on \(address):\(port): \(String(cString: heretic_strerror(-fd)))")
        }
        return fd
    }

    @usableFromInline func addUDP(_ binding: KernelUDPBinding) {
        if datagramBuffers == nil {
            datagramBuffers = .allocate(byteCount: Self.datagramBatch * Self.datagramBufferSize, alignment: 64)
            datagramInfo = .allocate(capacity: Self.datagramBatch)
        }
        let index = UInt32(udpBindings.count)
        udpBindings.append(binding)
        if let uring { uring.addUDP(index) } else { epoll?.addUDP(index) }
        // Datagrams may have arrived between bind and registration.
        binding.again = true
        udpAgain = true
    }

    /// Stops receiving on `port` and closes its socket.
    public func unbindUDP(port: UInt16) {
        for b in udpBindings where b.port == port && b.fd >= 0 {
            if let uring { uring.removeUDP(fd: b.fd) } else { epoll?.removeUDP(fd: b.fd) }
            heretic_close(b.fd)
            b.fd = -1
            b.port = 0
            b.deliver = { _, _, _ in }
        }
    }

    /// A socket for sending from a bound `port` outside a datagram callback. An unbound port
    /// gets a socket of its own, bound on first use (the kernel needs one to send from).
    public func udpSocket(port: UInt16) -> KernelUDPSocket {
        if let b = udpBindings.first(where: { $0.port == port && $0.fd >= 0 }) {
            return KernelUDPSocket(kernel: self, fd: b.fd, localPort: b.port)
        }
        if let fd = senderSockets[port] { return KernelUDPSocket(kernel: self, fd: fd, localPort: port) }
        let fd = heretic_udp_bind(0, port, 1)
        guard fd >= 0 else { return KernelUDPSocket(kernel: self, fd: -1, localPort: port) }
        senderSockets[port] = fd
        return KernelUDPSocket(kernel: self, fd: fd, localPort: UInt16(truncatingIfNeeded: heretic_udp_local_port(fd)))
    }

    /// Sends one datagram; false (counted) when the kernel would not take it now.
    @usableFromInline func sendDatagram(_ fd: Int32, _ data: UnsafeRawBufferPointer, to peer: UDPEndpoint) -> Bool {
        let n = heretic_udp_send(fd, data.baseAddress, data.count, peer.address.raw, peer.port)
        if n < 0 {
            datagramSendDrops += 1
            return false
        }
        datagramsSent &+= 1
        return true
    }

    /// Reads what the socket holds, a bounded number of batches per turn (the rest next turn).
    func receiveDatagrams(_ index: UInt32) {
        guard Int(index) < udpBindings.count, let buffers = datagramBuffers, let info = datagramInfo else { return }
        let b = udpBindings[Int(index)]
        guard b.fd >= 0 else { return }
        b.again = false
        let socket = KernelUDPSocket(kernel: self, fd: b.fd, localPort: b.port)
        for _ in 0..<Self.datagramBatchesPerTurn {
            let n = Int(heretic_udp_receive(b.fd, buffers, UInt32(Self.datagramBufferSize), UInt32(Self.datagramBatch), info))
            guard n > 0 else { return }  // -EAGAIN: drained (other errors: ICMP reports, ignored)
            for i in 0..<n {
                let d = info[i]
                if d.truncated != 0 {
                    datagramsTruncated += 1
                    continue
                }
                datagramsReceived &+= 1
                callbackDepth += 1
                b.deliver(UnsafeRawBufferPointer(start: buffers + i * Self.datagramBufferSize, count: Int(d.length)),
                          UDPEndpoint(IPv4Address(raw: d.address), d.port), socket)
                callbackDepth -= 1
                if b.fd < 0 { return }  // unbound from its own callback
            }
            if n < Self.datagramBatch { return }
        }
        b.again = true
        udpAgain = true
    }

    /// Sockets left with datagrams last turn.
    func receiveDatagramsAgain() -> Int {
        udpAgain = false
        var work = 0
        for i in udpBindings.indices where udpBindings[i].again {
            receiveDatagrams(UInt32(i))
            if let uring, udpBindings[i].fd >= 0 && !udpBindings[i].pollArmed { uring.armUDPPoll(UInt32(i)) }
            work += 1
        }
        return work
    }
}
