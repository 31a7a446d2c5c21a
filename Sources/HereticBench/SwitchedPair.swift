import HereticCore
import HereticNet
#if canImport(Glibc)
import Glibc
#endif

/// What every network benchmark stands on: a server stack and a client stack joined by the
/// virtual switch, on one core (loopback) or one core each (balanced), polled by their cores,
/// with ARP already resolved. Each stack is touched only on its own core.
final class SwitchedPair: @unchecked Sendable {
    static let serverAddress = IPv4Address(10, 0, 0, 1)
    static let clientAddress = IPv4Address(10, 0, 0, 2)

    let runtime: Runtime
    let net: VirtualSwitch
    let server: Interface
    let client: Interface
    let serverPort: SwitchPort
    let clientPort: SwitchPort
    let clientCore: Int

    init(layout: StackLayout, ringCapacity: Int = 4096, poolCapacity: Int = 65_536) throws {
        let cores = layout == .loopback ? 1 : 2
        runtime = try Runtime(cores: cores)
        clientCore = cores - 1
        net = VirtualSwitch(ringCapacity: ringCapacity)
        let pools = (0..<cores).map { _ in PacketPool(capacity: poolCapacity) }
        serverPort = net.makePort(core: 0, pool: pools[0])
        clientPort = net.makePort(core: clientCore, pool: pools[clientCore])
        server = Interface(device: serverPort, pool: pools[0],
                           configuration: .init(mac: MACAddress(2, 0, 0, 0, 0, 1), address: Self.serverAddress))
        client = Interface(device: clientPort, pool: pools[clientCore],
                           configuration: .init(mac: MACAddress(2, 0, 0, 0, 0, 2), address: Self.clientAddress))
    }

    /// Runs `setup` on the server's core, starts polling both stacks, and resolves ARP.
    func start(server setup: @escaping @Sendable (Interface) throws -> Void) throws {
        let clientCore = self.clientCore
        try runtime.run(on: 0) { core in
            try? setup(self.server)
            let poller = InterfacePoller()
            poller.add(self.server)
            if clientCore == 0 { poller.add(self.client) }
            core.addPoller(poller)
        }
        try onClient { core in
            if clientCore != 0 {
                let poller = InterfacePoller()
                poller.add(self.client)
                core.addPoller(poller)
            }
            // One datagram makes ARP resolve before traffic that would queue behind it.
            let probe = [UInt8](repeating: 0, count: 8)
            probe.withUnsafeBytes { _ = self.client.sendUDP($0, from: 9, to: UDPEndpoint(Self.serverAddress, 9)) }
        }
        try waitOnClient("ARP did not resolve") { _ in self.client.neighbor(Self.serverAddress) != nil }
    }

    @discardableResult
    func onServer<R: Sendable>(_ body: @escaping @Sendable (Core) -> R) throws -> R {
        try runtime.run(on: 0, body)
    }

    @discardableResult
    func onClient<R: Sendable>(_ body: @escaping @Sendable (Core) -> R) throws -> R {
        try runtime.run(on: clientCore, body)
    }

    /// Polls `condition` on the client's core until it holds, for at most `seconds`.
    func waitOnClient(_ failure: String, seconds: Double = 30, _ condition: @escaping @Sendable (Core) -> Bool) throws {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while try !onClient(condition) {
            if MonotonicClock.nanoseconds() > deadline { throw BenchError(failure) }
            usleep(500)
        }
    }

    /// Stops the cores, then lets the switch and its ports go.
    func shutdown() {
        runtime.shutdown()
        net.detach()
    }
}

/// Whether `data`, arriving at `offset` of an echo, matches the message formatted for
/// (flow, sequence) of `size` bytes.
@inline(__always)
func echoMatches(_ data: UnsafeRawBufferPointer, at offset: Int, flow: UInt32, sequence: UInt32, size: Int) -> Bool {
    withUnsafeTemporaryAllocation(byteCount: size, alignment: 8) { expected -> Bool in
        formatMessage(flow: flow, sequence: sequence, into: expected.baseAddress!, length: size)
        return offset + data.count <= size && memcmp(data.baseAddress!, expected.baseAddress! + offset, data.count) == 0
    }
}

/// Sends the message for (flow, sequence) of `size` bytes on `connection`.
@inline(__always)
func sendMessage(_ connection: some TCPConnection, flow: UInt32, sequence: UInt32, size: Int) {
    withUnsafeTemporaryAllocation(byteCount: size, alignment: 8) { buffer in
        formatMessage(flow: flow, sequence: sequence, into: buffer.baseAddress!, length: size)
        _ = connection.send(UnsafeRawBufferPointer(buffer))
    }
}
