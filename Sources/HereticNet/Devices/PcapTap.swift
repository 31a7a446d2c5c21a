import HereticTransport
#if canImport(Glibc)
import Glibc
#endif

/// Wraps any device and records every frame it receives and transmits to a pcap file
/// (Ethernet link type), so any link of the stack can be opened in Wireshark or tcpdump.
/// Timestamps come from `clock` (microseconds), which a simulation can drive.
public final class PcapTap: NetworkDevice {
    public let inner: NetworkDevice
    private let fd: Int32
    private let clock: () -> UInt64
    public private(set) var framesWritten = 0

    /// Creates (or truncates) `path` and writes the pcap header.
    public init(_ inner: NetworkDevice, path: String, clock: @escaping () -> UInt64) throws(WireError) {
        self.inner = inner
        self.clock = clock
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        if fd < 0 { throw .unsupported("cannot create pcap file \(path) (errno \(errno))") }
        var header = [UInt8](repeating: 0, count: 24)
        header.withUnsafeMutableBytes { h in
            let p = h.baseAddress!
            p.storeBytes(of: UInt32(0xA1B2_C3D4).littleEndian, toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: UInt16(2).littleEndian, toByteOffset: 4, as: UInt16.self)
            p.storeBytes(of: UInt16(4).littleEndian, toByteOffset: 6, as: UInt16.self)
            p.storeBytes(of: UInt32(65_535).littleEndian, toByteOffset: 16, as: UInt32.self)
            p.storeBytes(of: UInt32(1).littleEndian, toByteOffset: 20, as: UInt32.self)  // Ethernet
        }
        write(header)
    }

    deinit { close(fd) }

    public var mtu: Int { inner.mtu }
    public var offloads: DeviceOffloads { inner.offloads }

    public func receive(into frames: inout [Packet], limit: Int, pool: PacketPool) -> Int {
        let start = frames.count
        let n = inner.receive(into: &frames, limit: limit, pool: pool)
        for f in frames[start...] { record(pool.bytes(f), Int(f.length)) }
        return n
    }

    public func transmit(_ frames: inout [Packet], pool: PacketPool) {
        for f in frames { record(pool.bytes(f), Int(f.length)) }
        inner.transmit(&frames, pool: pool)
    }

    private func record(_ bytes: UnsafeRawPointer, _ length: Int) {
        let us = clock()
        var record = [UInt8](repeating: 0, count: 16 + length)
        record.withUnsafeMutableBytes { r in
            let p = r.baseAddress!
            p.storeBytes(of: UInt32(truncatingIfNeeded: us / 1_000_000).littleEndian, toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: UInt32(truncatingIfNeeded: us % 1_000_000).littleEndian, toByteOffset: 4, as: UInt32.self)
            p.storeBytes(of: UInt32(length).littleEndian, toByteOffset: 8, as: UInt32.self)
            p.storeBytes(of: UInt32(length).littleEndian, toByteOffset: 12, as: UInt32.self)
            (p + 16).copyMemory(from: bytes, byteCount: length)
        }
        write(record)
        framesWritten += 1
    }

    private func write(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { b in
            var done = 0
            while done < b.count {
                let n = Glibc.write(fd, b.baseAddress! + done, b.count - done)
                if n <= 0 { if errno == EINTR { continue }; return }
                done += n
            }
        }
    }
}
