import HereticNet

/// What an echo server's connections did, byte by byte (for a server that checks itself).
public struct EchoCounts: Sendable {
    public var received = 0
    public var sent = 0
    /// Bytes received and waiting to be sent back (the send buffer was full), and bytes that
    /// were waiting when their connection ended (the peer left without reading them).
    public var held = 0
    public var discarded = 0
    public init() {}

    /// Every byte received is accounted for: echoed, waiting, or left behind by its peer.
    public var balanced: Bool { received == sent + held + discarded }
}

/// Echoes every byte back. When the send buffer is full it keeps what did not go and stops
/// reading (its receive window closes) until it hears `writable`: backpressure, so a peer
/// that sends without reading stalls only itself, and nothing is lost or held without bound.
struct TCPEchoServer: TCPHandler {
    /// Nagle off, as the peers' echo servers have it.
    var noDelay = false
    var counts: UnsafeMutablePointer<EchoCounts>?
    var held: [UInt8] = []
    /// The window reopened once what was held has gone.
    static let window = 65_535

    init(noDelay: Bool = false, counts: UnsafeMutablePointer<EchoCounts>? = nil) {
        self.noDelay = noDelay
        self.counts = counts
    }

    mutating func connected(_ connection: some TCPConnection) {
        if noDelay { connection.setNoDelay(true) }
    }

    mutating func received(_ data: UnsafeRawBufferPointer, _ connection: some TCPConnection) {
        counts?.pointee.received += data.count
        guard held.isEmpty else {
            // Already held back (a receive was in flight when the window closed): queue it.
            held.append(contentsOf: data)
            counts?.pointee.held += data.count
            return
        }
        let n = connection.send(data)
        counts?.pointee.sent += n
        if n < data.count && connection.canSend {
            held.append(contentsOf: UnsafeRawBufferPointer(rebasing: data[n...]))
            counts?.pointee.held += data.count - n
            connection.setReceiveWindow(0)
        }
    }

    mutating func writable(_ connection: some TCPConnection) {
        guard !held.isEmpty else { return }
        let n = held.withUnsafeBytes { connection.send($0) }
        held.removeFirst(n)
        counts?.pointee.sent += n
        counts?.pointee.held -= n
        if held.isEmpty { connection.setReceiveWindow(Self.window) }
    }

    mutating func closed(_ reason: TCPCloseReason) {
        // What was held can no longer go: the peer left without reading it.
        counts?.pointee.held -= held.count
        counts?.pointee.discarded += held.count
        held = []
    }
}
