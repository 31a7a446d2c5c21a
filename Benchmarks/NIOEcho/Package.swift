// swift-tools-version: 6.1
import PackageDescription

// echo-nio: the SwiftNIO echo server, the peer for what a Swift user writes today. A package
// of its own so that Heretic's build never resolves swift-nio.
let package = Package(
    name: "NIOEcho",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
    ],
    targets: [
        .executableTarget(
            name: "NIOEcho",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
