import ArgumentParser
import EchoService
import RedisService
import HereticNet

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a service on Heretic's own TCP/IP stack or on the kernel's sockets, on every core.",
        discussion: """
            Each service prints "ready <port> <engine>" once every core serves, logs to standard error \
            (swift-log), counts per core (swift-metrics; --metrics-port serves them as Prometheus text), \
            and stops gracefully on SIGINT or SIGTERM: no new connections, open ones finish within \
            --drain-seconds, the rest are aborted. A second signal aborts at once.
            """,
        subcommands: [Echo.self, Redis.self])

    struct Echo: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A TCP echo server: every byte a client sends comes back to it.")
        @OptionGroup var host: HostOptions
        @Option(name: .customLong("max-connections"), help: "Most open connections per core; more are closed on arrival and counted.")
        var maxConnections = 4_000_000
        @Option(name: .customLong("idle-timeout"), help: "Abort a connection idle for this many seconds (default: never).")
        var idleTimeout: Int?

        func validate() throws {
            if maxConnections < 1 { throw ValidationError("--max-connections must be positive") }
            if let t = idleTimeout, t < 1 { throw ValidationError("--idle-timeout must be at least 1 second") }
        }

        func run() throws {
            var configuration = EchoConfiguration()
            configuration.port = host.port
            configuration.maxConnectionsPerCore = maxConnections
            configuration.idleTimeoutSeconds = idleTimeout
            let echo = configuration
            try ServiceHost<EchoService>(options: host, name: "echo").run(
                make: { core, logger in EchoService(configuration: echo, core: core, logger: logger) },
                counters: { service in
                    let c = service.counters
                    return [("accepted", c.accepted), ("refused_full", c.refusedFull), ("refused_draining", c.refusedDraining),
                            ("closed_normal", c.closedNormal), ("closed_reset", c.closedReset),
                            ("closed_timed_out", c.closedTimedOut), ("closed_idle", c.closedIdle),
                            ("bytes_received", c.bytesReceived), ("bytes_echoed", c.bytesSent),
                            ("bytes_held", c.bytesHeld), ("bytes_discarded", c.bytesDiscarded)]
                },
                // Every byte received was echoed, is held, or was left behind by a peer that
                // went: the service's own accounting, core by core.
                verify: { perCore in
                    perCore.allSatisfy { row in
                        let v = Dictionary(uniqueKeysWithValues: row)
                        return v["bytes_received"]! == v["bytes_echoed"]! + v["bytes_held"]! + v["bytes_discarded"]!
                    }
                })
        }
    }

    struct Redis: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A Redis-compatible cache (RESP2 and RESP3; the commands built so far). Each core keeps its own databases.")
        @OptionGroup var host: HostOptions
        @Option(help: "Clients must AUTH with this password first.") var requirepass: String?

        func run() throws {
            var configuration = RedisConfiguration()
            configuration.port = host.port
            configuration.password = requirepass
            let redis = configuration
            try ServiceHost<RedisService>(options: host, name: "redis").run(
                make: { core, logger in RedisService(configuration: redis, core: core, logger: logger) },
                counters: { service in
                    let c = service.counters
                    return [("connections", c.connections), ("commands", c.commands), ("protocol_errors", c.protocolErrors),
                            ("output_limit_disconnects", c.outputLimitDisconnects), ("open_at_end", c.open)]
                },
                // Every connection the service counted as open was closed again.
                verify: { perCore in perCore.allSatisfy { row in row.first { $0.0 == "open_at_end" }?.1 == 0 } })
        }
    }
}
