// echo-nio: SwiftNIO's echo server as its own example (NIOEchoServer) writes it, on one
// event-loop thread, with the pipeline reduced to the EchoHandler alone.
//
//   NIOEcho [--port N]     listens on 127.0.0.1:N (default 7000; 0 picks a free port)
//
// Prints `ready <port>` once bound; SIGTERM or SIGINT closes the listener and shuts the
// event loop down (exit 0). NIO reads into buffers from its adaptive allocator (up to 64 KB)
// and queues what a write cannot send yet until the socket is writable again. Without the
// example's BackPressureHandler it keeps reading while writes queue, so a client that never
// reads grows that queue; the benchmark's clients always read.
import Dispatch
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Every inbound buffer straight back; one flush per read burst, so the writes that burst
/// produced go out together.
final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// `--port N`, or 7000.
func parsePort() -> Int {
    var arguments = CommandLine.arguments.dropFirst()
    var port = 7000
    while let argument = arguments.popFirst() {
        guard argument == "--port", let value = arguments.popFirst().flatMap(Int.init),
              (0...65535).contains(value) else {
            printError("usage: NIOEcho [--port N]\n")
            exit(2)
        }
        port = value
    }
    return port
}

/// Writes a message to standard error (no Foundation in this package).
func printError(_ message: String) {
    var message = message
    message.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// SIGTERM and SIGINT are taken off their default action and delivered to dispatch sources
/// that close the listener; the main thread then wakes from closeFuture. A function, not
/// top-level code: a closure written there would belong to the main actor, and Swift 6 checks
/// that at run time, trapping on the dispatch thread.
func closeOnSignals(_ channel: any Channel) -> [any DispatchSourceSignal] {
    [SIGTERM, SIGINT].map { number in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler { channel.close(promise: nil) }
        source.resume()
        return source
    }
}

let port = parsePort()

// 1000+ connections need more descriptors than a 1024 soft limit leaves (Go's runtime and
// the C peer raise it the same way).
var limit = rlimit()
if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max {
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
}

let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
let bootstrap = ServerBootstrap(group: group)
    .serverChannelOption(.backlog, value: 4096)
    .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
    .childChannelInitializer { channel in
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(EchoHandler())
        }
    }
    .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
    .childChannelOption(.maxMessagesPerRead, value: 16)
    .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator())

let channel: any Channel
do {
    channel = try bootstrap.bind(host: "127.0.0.1", port: port).wait()
} catch {
    printError("NIOEcho: bind 127.0.0.1:\(port): \(error)\n")
    exit(1)
}

let stopSignals = closeOnSignals(channel)

print("ready \(channel.localAddress?.port ?? port)")
fflush(nil) // stdout is block-buffered into a pipe; the harness waits for this line

try? channel.closeFuture.wait()
stopSignals.forEach { $0.cancel() }
try group.syncShutdownGracefully()
