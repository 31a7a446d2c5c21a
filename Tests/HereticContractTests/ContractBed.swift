import CHereticKernel
import CHereticSys
import HereticBench
import HereticCore
import HereticNet
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Every engine and packet path the transport API runs on, each as a pair of engines that
/// reach each other: a server engine and a client engine.
enum Path: String, CaseIterable, CustomStringConvertible, Sendable {
    /// Heretic's stack on both sides, joined by the in-process virtual switch.
    case switched
    /// Heretic's stack serving over a TAP device; Linux's TCP (the kernel engine, in the
    /// namespace holding the TAP's far side) as the client.
    case tapStackServer
    /// Linux's TCP serving (the kernel engine in the namespace); Heretic's stack over TAP as
    /// the client.
    case tapStackClient
    /// The kernel engine on both sides over loopback, through io_uring.
    case uring
    /// The same through epoll.
    case epoll

    var description: String { rawValue }

    /// The paths this machine can run: TAP needs root and /dev/net/tun, io_uring a kernel
    /// that allows it. With `HERETIC_REQUIRE_ALL_SUITES=1` (CI) every path is run, so one
    /// that cannot be set up fails instead of vanishing.
    static var available: [Path] {
        // HERETIC_CONTRACT_PATHS=switched,epoll runs only those (for working on one engine).
        let only = getenv("HERETIC_CONTRACT_PATHS").map { String(cString: $0).split(separator: ",").map(String.init) }
        return allCases.filter { path in
            if let only, !only.contains(path.rawValue) { return false }
            if TestEnvironment.requireAll { return true }
            switch path {
            case .tapStackServer, .tapStackClient: return TapTestbed.canRun.0
            case .uring: return heretic_io_uring_disabled() <= 0
            case .switched, .epoll: return true
            }
        }
    }

    /// Makes the path's pair of engines, runs `scenario` on it, and takes it down.
    func run(_ scenario: some Scenario) throws {
        switch self {
        case .switched:
            let bed = try ContractBed<Interface, Interface>.switched()
            defer { bed.shutdown() }
            try scenario.run(bed)
        case .tapStackServer:
            let bed = try ContractBed<Interface, KernelNetwork>.tapStackServer()
            defer { bed.shutdown() }
            try scenario.run(bed)
        case .tapStackClient:
            let bed = try ContractBed<KernelNetwork, Interface>.tapStackClient()
            defer { bed.shutdown() }
            try scenario.run(bed)
        case .uring, .epoll:
            let bed = try ContractBed<KernelNetwork, KernelNetwork>.loopback(self == .uring ? .uring : .epoll)
            defer { bed.shutdown() }
            try scenario.run(bed)
        }
    }
}

/// One behaviour of the contract, written once against any pair of engines.
protocol Scenario {
    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws
}

struct ContractError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

let bedsMade = Atomic<Int>(0)

/// A server engine and a client engine on core 0 of a runtime of their own. Everything
/// about them is touched on that core, through `run` and `eventually`.
final class ContractBed<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>: @unchecked Sendable {
    let runtime: Runtime
    var server: S!
    var client: C!
    /// The server's address as the client reaches it.
    var serverAddress = IPv4Address(127, 0, 0, 1)
    /// An endpoint no connection attempt to which is ever answered.
    var unanswered = Endpoint(IPv4Address(127, 0, 0, 1), 1)
    var teardown: [() -> Void] = []

    init() throws {
        runtime = try Runtime(cores: 1, pinThreads: false)
    }

    /// Runs `body` on the engines' core.
    func run<R>(_ body: @escaping (S, C) throws -> R) throws -> R {
        let body = Unchecked(body)
        let result = try runtime.run(on: 0) { _ in Unchecked(Result { try body.value(self.server, self.client) }) }
        return try result.value.get()
    }

    /// Checks `condition` on the core until it holds, for at most `seconds` (the engines run
    /// in between); false if it never did.
    func eventually(seconds: Double = 30, _ condition: @escaping (S, C) -> Bool) throws -> Bool {
        let deadline = MonotonicClock.nanoseconds() + UInt64(seconds * 1e9)
        while MonotonicClock.nanoseconds() < deadline {
            if try run(condition) { return true }
            usleep(1000)
        }
        return try run(condition)
    }

    /// Waits for `condition`, failing the scenario with `what` if it never holds.
    func expect(_ what: String, seconds: Double = 30, _ condition: @escaping (S, C) -> Bool) throws {
        guard try eventually(seconds: seconds, condition) else { throw ContractError("timed out waiting: \(what)") }
    }

    /// Copies the logs on the core (where they are written), then runs `body` with the
    /// copies here, where the test's expectations are recorded.
    func check(_ a: Log, _ body: (Log) throws -> Void) throws {
        let copies = try runtime.run(on: 0) { _ in Unchecked(a.copy()) }
        try body(copies.value)
    }

    func check(_ a: Log, _ b: Log, _ body: (Log, Log) throws -> Void) throws {
        let copies = try runtime.run(on: 0) { _ in Unchecked((a.copy(), b.copy())) }
        try body(copies.value.0, copies.value.1)
    }

    func check(_ a: Log, _ b: Log, _ c: Log, _ d: Log, _ body: (Log, Log, Log, Log) throws -> Void) throws {
        let copies = try runtime.run(on: 0) { _ in Unchecked((a.copy(), b.copy(), c.copy(), d.copy())) }
        try body(copies.value.0, copies.value.1, copies.value.2, copies.value.3)
    }

    func shutdown() {
        try? runtime.run(on: 0) { _ in
            self.server = nil
            self.client = nil
        }
        runtime.shutdown()
        for t in teardown.reversed() { t() }
    }
}

struct Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

extension ContractBed where S == Interface, C == Interface {
    /// Two stacks on the virtual switch: 10.0.0.1 serves, 10.0.0.2 connects; 10.0.0.99 is
    /// nobody (ARP goes unanswered).
    static func switched() throws -> ContractBed {
        let bed = try ContractBed()
        let net = VirtualSwitch()
        let pool = PacketPool(capacity: 16_384)
        let server = Interface(device: net.makePort(core: 0, pool: pool), pool: pool,
                               configuration: .init(mac: MACAddress(2, 0, 0, 0, 0, 1), address: IPv4Address(10, 0, 0, 1)))
        let client = Interface(device: net.makePort(core: 0, pool: pool), pool: pool,
                               configuration: .init(mac: MACAddress(2, 0, 0, 0, 0, 2), address: IPv4Address(10, 0, 0, 2)))
        bed.serverAddress = server.address
        bed.unanswered = Endpoint(IPv4Address(10, 0, 0, 99), 7)
        let shared = Unchecked((server, client))
        try bed.runtime.run(on: 0) { core in
            bed.server = shared.value.0
            bed.client = shared.value.1
            let poller = InterfacePoller()
            poller.add(shared.value.0)
            poller.add(shared.value.1)
            core.addPoller(poller)
        }
        bed.teardown.append { net.detach() }
        return bed
    }
}

/// A namespace and TAP device for one bed (names carry the process id and a count, so
/// concurrent runs never collide).
func makeTestbed() throws -> TapTestbed {
    let id = getpid() % 10_000, n = bedsMade.add(1, ordering: .relaxed).newValue
    return try TapTestbed(namespace: "hrt-c\(id)-\(n)", tap: "hrc\(id)t\(n)", subnet: UInt8(n % 200))
}

/// The stack on the TAP device, polled on `core`.
func tapInterface(_ testbed: TapTestbed, core: Core) -> Interface {
    let pool = PacketPool(capacity: 16_384)
    let interface = Interface(device: testbed.device, pool: pool,
                              configuration: InterfaceConfiguration(mac: testbed.stackMAC, address: testbed.stackAddress))
    let poller = InterfacePoller()
    poller.add(interface)
    core.addPoller(poller)
    return interface
}

/// A kernel engine whose sockets live in the test-bed's namespace: its core's thread enters
/// the namespace first.
func namespacedKernel(_ testbed: TapTestbed, core: Core) throws -> KernelNetwork {
    let rc = heretic_enter_netns(testbed.namespace)
    guard rc == 0 else { throw ContractError("setns \(testbed.namespace): \(String(cString: heretic_strerror(-rc)))") }
    do { return try KernelNetwork(core: core, configuration: .fromEnvironment()) } catch { throw ContractError("\(error)") }
}

extension ContractBed where S == Interface, C == KernelNetwork {
    static func tapStackServer() throws -> ContractBed {
        let bed = try ContractBed()
        let testbed = try makeTestbed()
        bed.teardown.append { testbed.remove() }
        bed.serverAddress = testbed.stackAddress
        bed.unanswered = Endpoint(IPv4Address(raw: testbed.linuxAddress.raw & 0xFFFF_FF00 | 99), 7)
        let failure = try bed.runtime.run(on: 0) { core -> String? in
            bed.server = tapInterface(testbed, core: core)
            do { bed.client = try namespacedKernel(testbed, core: core) } catch { return "\(error)" }
            return nil
        }
        if let failure {
            bed.shutdown()
            throw ContractError(failure)
        }
        return bed
    }
}

extension ContractBed where S == KernelNetwork, C == Interface {
    static func tapStackClient() throws -> ContractBed {
        let bed = try ContractBed()
        let testbed = try makeTestbed()
        bed.teardown.append { testbed.remove() }
        bed.serverAddress = testbed.linuxAddress
        bed.unanswered = Endpoint(IPv4Address(raw: testbed.linuxAddress.raw & 0xFFFF_FF00 | 99), 7)
        let failure = try bed.runtime.run(on: 0) { core -> String? in
            bed.client = tapInterface(testbed, core: core)
            do { bed.server = try namespacedKernel(testbed, core: core) } catch { return "\(error)" }
            return nil
        }
        if let failure {
            bed.shutdown()
            throw ContractError(failure)
        }
        return bed
    }
}

extension ContractBed where S == KernelNetwork, C == KernelNetwork {
    /// Two kernel engines of one backend on loopback. Connections to a listener whose queue
    /// is full (one connection that nobody accepts, backlog 0) are never answered: Linux drops
    /// their SYNs.
    static func loopback(_ backend: KernelBackend) throws -> ContractBed {
        let bed = try ContractBed()
        let loopback = IPv4Address(127, 0, 0, 1)
        let full = heretic_tcp_listen(loopback.raw, 0, 0, 0, 1)
        guard full >= 0 else { throw ContractError("listen: \(String(cString: heretic_strerror(-full)))") }
        var a: UInt32 = 0, port: UInt16 = 0
        _ = heretic_tcp_local(full, &a, &port)
        let fillers = (0..<2).map { _ in heretic_tcp_socket(1) }
        for f in fillers { _ = heretic_tcp_connect(f, loopback.raw, port) }
        bed.teardown.append {
            for f in fillers { heretic_close(f) }
            heretic_close(full)
        }
        bed.serverAddress = loopback
        bed.unanswered = Endpoint(loopback, port)
        let failure = try bed.runtime.run(on: 0) { core -> String? in
            do {
                let configuration = KernelConfiguration.fromEnvironment().requesting(backend)
                bed.server = try KernelNetwork(core: core, configuration: configuration)
                bed.client = try KernelNetwork(core: core, configuration: configuration)
            } catch {
                return "\(error)"
            }
            return nil
        }
        if let failure {
            bed.shutdown()
            throw ContractError(failure)
        }
        return bed
    }
}
