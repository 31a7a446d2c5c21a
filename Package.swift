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
        .library(name: "HereticNet", targets: ["HereticNet"]),
        .executable(name: "heretic", targets: ["heretic"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-atomics", from: "1.2.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        // Thin C layer over what Swift cannot reach directly: CPU affinity, eventfd, futex-free latches.
        .target(name: "CHereticSys"),
        // Layer 1: per-core reactors, stackless tasks, events, timing wheel, mailboxes, executors.
        .target(
            name: "HereticCore",
            dependencies: [
                "CHereticSys",
                .product(name: "Atomics", package: "swift-atomics"),
            ],
            swiftSettings: swiftSettings
        ),
        // Layer 2: the user-space network stack. Wire/ holds one file per header: typed views
        // that parse and emit, checking lengths before trusting them, with no state.
        .target(
            name: "HereticNet",
            dependencies: ["HereticCore", "CHereticSys"],
            swiftSettings: swiftSettings
        ),
        // The brief's workloads, reproduced as self-checking benchmarks.
        .target(
            name: "HereticBench",
            dependencies: [
                "HereticCore",
                "HereticNet",
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
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .testTarget(name: "HereticCoreTests", dependencies: ["HereticCore"]),
        .testTarget(name: "HereticBenchTests", dependencies: ["HereticBench", "HereticCore"]),
        // The transport API's contract, run on every engine and packet path.
        .testTarget(
            name: "HereticContractTests",
            dependencies: ["HereticNet", "HereticCore", "HereticBench", "CHereticSys"]
        ),
        .testTarget(
            name: "HereticNetTests",
            dependencies: ["HereticNet"],
            exclude: ["captured-veth.pcap"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
