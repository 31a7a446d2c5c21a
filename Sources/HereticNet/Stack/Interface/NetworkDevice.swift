import HereticTransport
/// What a device does for the stack in hardware (or, for virtual devices, need not be done).
public struct DeviceOffloads: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Received frames have valid IPv4/TCP/UDP/ICMP checksums already (a virtual link that
    /// never corrupts): the stack skips verifying them.
    public static let receiveChecksumsVerified = DeviceOffloads(rawValue: 1)
    /// The device fills in transmit checksums itself (IPv4 header, TCP, UDP): the stack leaves
    /// them zero. For the in-process switch nobody needs them, as every receiver is an
    /// in-process interface that trusts the link; a port bridging to a real network must
    /// compute them before frames leave the process.
    public static let transmitChecksums = DeviceOffloads(rawValue: 2)
}

/// The one small interface every packet path implements: the in-process virtual switch, a
/// TAP device, AF_XDP or AF_PACKET rings, and wrappers such as the fault injector and the pcap
/// writer. Frames are whole Ethernet frames in buffers of the caller's `PacketPool`; batches
/// amortise the per-call cost.
public protocol NetworkDevice: AnyObject {
    /// Largest IP packet the link carries (Ethernet payload), usually 1500.
    var mtu: Int { get }
    var offloads: DeviceOffloads { get }
    /// Appends up to `limit` received frames to `frames`, allocated from `pool`; returns how
    /// many. Frames the pool has no room for stay in the device or are dropped and counted.
    func receive(into frames: inout [Packet], limit: Int, pool: PacketPool) -> Int
    /// Sends what it can of `frames` (buffers of `pool`), in order, releasing their buffers,
    /// and leaves the ones it cannot take now (a full transmit queue) in `frames`, first
    /// untaken first, for the caller to offer again: backpressure instead of a silent drop.
    /// Callers bound how many they keep waiting.
    func transmit(_ frames: inout [Packet], pool: PacketPool)
}
