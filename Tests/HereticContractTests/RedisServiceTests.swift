import Testing
import HereticCore
import HereticNet
import RedisService

/// The cache, written once against the transport API, answers the same bytes on every engine
/// and path: pipelined commands, RESP3 after HELLO 3, and a protocol error that closes.
@Suite("The Redis-compatible cache on every engine and path", .serialized)
struct RedisServiceContractTests {
    @Test("pipelined commands get Redis's replies byte for byte; a protocol error is answered, then the connection closes",
          arguments: Path.available)
    func pipelined(_ path: Path) throws { try path.run(RedisScenario()) }
}

final class RedisBox: @unchecked Sendable { var service: RedisService? }

struct RedisScenario: Scenario {
    static func command(_ args: String...) -> [UInt8] {
        var out = Array("*\(args.count)\r\n".utf8)
        for a in args { out += Array("$\(a.utf8.count)\r\n\(a)\r\n".utf8) }
        return out
    }

    func run<S: NetworkEngine & SendableMetatype, C: NetworkEngine & SendableMetatype>(_ bed: ContractBed<S, C>) throws {
        let box = RedisBox()
        defer { try? bed.run { _, _ in box.service = nil } }
        let client = Log()
        let address = bed.serverAddress
        var request: [UInt8] = []
        request += Self.command("PING")
        request += Self.command("SET", "k", "hello")
        request += Self.command("GET", "k")
        request += Self.command("INCR", "n")
        request += Self.command("INCRBY", "n", "41")
        request += Self.command("GET", "missing")
        request += Self.command("SET", "t", "1", "EX", "100")
        request += Self.command("TTL", "t")
        request += Self.command("INCR", "k")
        request += Self.command("DEL", "k", "t", "nope")
        request += Self.command("EXISTS", "k", "n")
        request += Self.command("INFO", "keyspace")
        request += Self.command("CONFIG", "GET", "database*")
        request += Self.command("HSET", "h", "a", "1", "b", "2")
        request += Self.command("HSET", "h", "a", "3")
        request += Self.command("HGETALL", "h")
        request += Self.command("GET", "h")
        request += Self.command("HDEL", "h", "a", "b")
        request += Self.command("EXISTS", "h")
        request += Array("echo \"two words\"\r\n".utf8)
        request += Self.command("HELLO", "3")
        request += Self.command("GET", "missing")
        request += Array("*1\r\n$x\r\n".utf8)
        request += Self.command("PING")  // never read: the connection closed at the error
        let greeting = request
        try bed.run { s, c in
            var configuration = RedisConfiguration()
            configuration.port = 0
            let service = RedisService(configuration: configuration, core: 0)
            box.service = service
            let port = try service.start(on: s, port: 0)
            c.connectTCP(to: Endpoint(address, port), Recorder(log: client, greeting: greeting))
        }
        try bed.expect("the server answered and closed") { _, _ in client.closed.count == 1 }
        try bed.check(client) { client in
            let text = String(decoding: client.bytes, as: UTF8.self)
            let info = "# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n\r\n"
            let hello = "%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.4\r\n$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:1\r\n"
                + "$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
            let expected = "+PONG\r\n+OK\r\n$5\r\nhello\r\n:1\r\n:42\r\n$-1\r\n+OK\r\n:100\r\n"
                + "-ERR value is not an integer or out of range\r\n:2\r\n:1\r\n"
                + "$\(info.utf8.count)\r\n\(info)\r\n*2\r\n$9\r\ndatabases\r\n$2\r\n16\r\n"
                + ":2\r\n:0\r\n*4\r\n$1\r\na\r\n$1\r\n3\r\n$1\r\nb\r\n$1\r\n2\r\n"
                + "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n:2\r\n:0\r\n"
                + "$9\r\ntwo words\r\n" + hello
                + "_\r\n-ERR Protocol error: invalid bulk length\r\n"
            #expect(text == expected)
            #expect(client.closed == [.normal])
        }
        let counters = try bed.run { _, _ in box.service!.counters }
        #expect(counters.commands == 22 && counters.protocolErrors == 1 && counters.open == 0)
    }
}
