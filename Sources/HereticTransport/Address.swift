/// An IPv4 address in host order.
public struct IPv4Address: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let raw: UInt32

    @inlinable public init(raw: UInt32) { self.raw = raw }

    public init(_ a: UInt8, _ b: UInt8, _ c: UInt8, _ d: UInt8) {
        raw = UInt32(a) << 24 | UInt32(b) << 16 | UInt32(c) << 8 | UInt32(d)
    }

    /// Parses dotted-quad text ("10.0.0.1"); nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var v: UInt32 = 0
        for p in parts {
            guard !p.isEmpty, p.count <= 3, let n = UInt8(p) else { return nil }
            v = v << 8 | UInt32(n)
        }
        raw = v
    }

    public static let any = IPv4Address(raw: 0)
    public static let broadcast = IPv4Address(raw: 0xFFFF_FFFF)

    public var isMulticast: Bool { raw >> 28 == 0xE }
    public var isBroadcast: Bool { raw == 0xFFFF_FFFF }
    public var isUnspecified: Bool { raw == 0 }

    public static func < (a: IPv4Address, b: IPv4Address) -> Bool { a.raw < b.raw }

    public var description: String {
        "\(raw >> 24).\(raw >> 16 & 0xFF).\(raw >> 8 & 0xFF).\(raw & 0xFF)"
    }
}

/// An IPv4 address and a port: one end of a UDP exchange or a TCP connection.
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: IPv4Address
    public var port: UInt16
    public init(_ address: IPv4Address, _ port: UInt16) { self.address = address; self.port = port }
    public var description: String { "\(address):\(port)" }
}

public typealias UDPEndpoint = Endpoint

public typealias TCPEndpoint = Endpoint

/// Errors of the network API, named for what went wrong.
public enum NetError: Error, Equatable, Sendable {
    case addressInUse(UInt16)
    case refused
    case reset
    case timedOut
    case closed
    /// A packet path could not be opened or configured (the text says why).
    case device(String)
}
