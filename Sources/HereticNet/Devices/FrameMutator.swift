import HereticTransport
/// Mutations of live frames, as the stack's fuzzers make them: bits flipped, the frame cut
/// short, a header byte replaced, a TCP flag, sequence or acknowledgment byte replaced, junk
/// appended. `fixChecksums` then rewrites the IPv4 and TCP/UDP checksums, so that a mutant
/// gets past them and reaches the deeper layers. Seeded: one seed, one sequence of mutants.
public struct FrameMutator: Sendable {
    public var rng: SplitMix64

    public init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    /// Applies one mutation, chosen at random, to `f` (never emptying it).
    public mutating func mutate(_ f: inout [UInt8]) {
        guard !f.isEmpty else { return }
        switch Int.random(in: 0..<5, using: &rng) {
        case 0:
            for _ in 0..<Int.random(in: 1...4, using: &rng) {
                f[Int.random(in: 0..<f.count, using: &rng)] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
            }
        case 1:
            f.removeLast(Int.random(in: 1...f.count, using: &rng) - 1)
        case 2:
            f[Int.random(in: 0..<min(f.count, 80), using: &rng)] = UInt8.random(in: 0...255, using: &rng)
        case 3:  // TCP flags, sequence or acknowledgment replaced
            if f.count >= 54 {
                let at = [47, 38, 39, 42, 43][Int.random(in: 0..<5, using: &rng)]
                f[at] = UInt8.random(in: 0...255, using: &rng)
            }
        default:
            f += (0..<Int.random(in: 1...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        }
    }

    /// Rewrites an Ethernet frame's IPv4 header checksum and its TCP or UDP checksum (over the
    /// whole frame after the IPv4 header), where the frame still has room for them.
    public static func fixChecksums(_ f: inout [UInt8]) {
        f.withUnsafeMutableBytes { b in
            guard b.count >= 34, b[12] == 0x08, b[13] == 0x00 else { return }
            let ip = b.baseAddress! + 14
            let ihl = Int(b[14] & 0x0F) * 4
            guard ihl >= 20, 14 + ihl <= b.count else { return }
            ip.storeBytes(of: 0, toByteOffset: 10, as: UInt16.self)
            ip.storeBytes(of: InternetChecksum.compute(UnsafeRawPointer(ip), count: ihl).bigEndian, toByteOffset: 10, as: UInt16.self)
            let proto = b[23], l4 = ip + ihl, l4Length = b.count - 14 - ihl
            let sumOffset = proto == IPProtocol.tcp ? 16 : proto == IPProtocol.udp ? 6 : -1
            guard sumOffset >= 0, l4Length >= sumOffset + 2 else { return }
            let src = IPv4Address(raw: UInt32(bigEndian: UnsafeRawPointer(ip).loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
            let dst = IPv4Address(raw: UInt32(bigEndian: UnsafeRawPointer(ip).loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
            l4.storeBytes(of: 0, toByteOffset: sumOffset, as: UInt16.self)
            let pseudo = InternetChecksum.pseudoHeader(source: src, destination: dst, protocol: proto, length: l4Length)
            let sum = InternetChecksum.compute(UnsafeRawPointer(l4), count: l4Length, initial: pseudo)
            l4.storeBytes(of: sum.bigEndian, toByteOffset: sumOffset, as: UInt16.self)
        }
    }
}
