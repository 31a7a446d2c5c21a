// swift-tools-version: 6.1
import PackageDescription

// Heretic: a hosted operating system for massive concurrency.
// Modules follow the architecture: the core runtime (HereticCore) now; the network stack,
// packet paths and services join as their own modules beside it.
/// Nonisolated async code stays on its caller's executor (a Heretic core) instead of hopping
/// to the generic executor after every await: fewer executor switches on the loop.
/// Release builds drop the dynamic exclusivity checks (swift_beginAccess on every class
/// property touched in the hot path: 8 % of the TCP echo profile); debug builds and the tests
/// keep them, so an overlapping access still traps there.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("NonisolatedNonsendingByDefault"),
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "Heretic",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "HereticCore", targets: ["HereticCore"]),
        .library(name: "HereticTransport", targets: ["HereticTransport"]),
        .library(name: "HereticNet", targets: ["HereticNet"]),
        .library(name: "EchoService", targets: ["EchoService"]),
        .executable(name: "heretic", targets: ["heretic"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        // Thin C layers over what Swift cannot reach directly. The core's: CPU affinity,
        // threads, eventfd, clocks, RSS, child processes.
        .target(name: "CHereticSys"),
        // The kernel engine's: io_uring through its system calls, epoll, socket calls.
        .target(name: "CHereticKernel"),
        // AF_XDP: the redirect program and the socket's rings.
        .target(name: "CHereticXDP"),
        // Layer 1: per-core reactors, stackless tasks, events, timing wheel, mailboxes, executors.
        .target(
            name: "HereticCore",
            dependencies: [
                "CHereticSys",
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            swiftSettings: swiftSettings
        ),
        // The one transport API every engine serves and every service is written against:
        // NetworkEngine, TCPHandler/TCPConnection, UDP, TCPSocket (async and blocking-style).
        .target(
            name: "HereticTransport",
            dependencies: ["HereticCore"],
            swiftSettings: swiftSettings
        ),
        // Layer 2 and the packet paths: Stack/ (Heretic's own Ethernet/ARP/IPv4/ICMP/UDP/TCP;
        // Wire/ holds one file per header), Kernel/ (the kernel engine: Linux's sockets through
        // io_uring or epoll), Devices/ (virtual switch, TAP, AF_XDP, test devices).
        .target(
            name: "HereticNet",
            dependencies: ["HereticCore", "HereticTransport", "CHereticSys", "CHereticKernel", "CHereticXDP"],
            swiftSettings: swiftSettings
        ),
        // Services: each its own target, written against the transport API alone (plus
        // logging and metrics), so it runs on either engine.
        .target(
            name: "EchoService",
            dependencies: [
                "HereticTransport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // A Redis-compatible cache: RESP, the keyspace and its commands, on the transport API.
        .target(
            name: "RedisService",
            dependencies: [
                "HereticTransport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: swiftSettings
        ),
        // The brief's workloads, reproduced as self-checking benchmarks.
        .target(
            name: "HereticBench",
            dependencies: [
                "HereticCore",
                "HereticNet",
                "CHereticSys",
                "CHereticKernel",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "heretic",
            dependencies: [
                "HereticBench",
                "HereticCore",
                "HereticNet",
                "CHereticSys",
                "CHereticKernel",
                "EchoService",
                "RedisService",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .testTarget(name: "HereticCoreTests", dependencies: ["HereticCore"]),
        .testTarget(name: "RedisServiceTests", dependencies: ["RedisService"]),
        .testTarget(name: "HereticBenchTests", dependencies: ["HereticBench", "HereticCore"]),
        // The transport API's contract, run on every engine and packet path.
        .testTarget(
            name: "HereticContractTests",
            dependencies: ["HereticNet", "HereticCore", "HereticBench", "CHereticSys", "CHereticKernel", "EchoService", "RedisService"]
        ),
        .testTarget(
            name: "HereticNetTests",
            dependencies: ["HereticNet", "HereticTransport", "CHereticKernel"],
            exclude: ["captured-veth.pcap"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
