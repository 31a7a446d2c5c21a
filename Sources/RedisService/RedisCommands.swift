/// The commands: each checks its arguments as Redis does and writes its reply.
enum RedisCommands {
    static let version = "7.2.4"

    static func execute(_ c: RESPCommand, service: RedisService, session: inout RedisSession, out: inout RESPWriter) {
        let name = upper(c[0])
        if !session.authenticated && name != "AUTH" && name != "HELLO" && name != "QUIT" {
            out.error("NOAUTH Authentication required.")
            return
        }
        let now = Keyspace.nowMilliseconds()
        func arity(_ n: Int, atLeast: Bool = false) -> Bool {
            if atLeast ? c.count >= n : c.count == n { return true }
            out.error("ERR wrong number of arguments for '\(name.lowercased())' command")
            return false
        }
        func key(_ i: Int) -> RedisKey { RedisKey(c[i]) }
        var db: Keyspace {
            get { service.databases[session.database] }
            _modify { yield &service.databases[session.database] }
        }

        switch name {
        case "PING":
            guard c.count <= 2 else { return wrongArgs(name, &out) }
            if c.count == 2 { out.bulk(c[1]) } else { out.simple("PONG") }
        case "ECHO":
            guard arity(2) else { return }
            out.bulk(c[1])
        case "QUIT":
            out.simple("OK")
            session.quit = true
        case "AUTH":
            guard c.count == 2 || c.count == 3 else { return wrongArgs(name, &out) }
            guard let password = service.configuration.password else {
                out.error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
                return
            }
            let given = String(decoding: c[c.count - 1], as: UTF8.self)
            let user = c.count == 3 ? String(decoding: c[1], as: UTF8.self) : "default"
            if user == "default" && given == password {
                session.authenticated = true
                out.simple("OK")
            } else {
                out.error("WRONGPASS invalid username-password pair or user is disabled.")
            }
        case "HELLO":
            var version = session.protocolVersion
            var i = 1
            if c.count > 1 {
                guard let v = integer(c[1]) else {
                    out.error("ERR Protocol version is not an integer or out of range")
                    return
                }
                guard v == 2 || v == 3 else {
                    out.error("NOPROTO unsupported protocol version")
                    return
                }
                version = v
                i = 2
            }
            while i < c.count {
                let option = upper(c[i])
                if option == "AUTH" && i + 2 < c.count {
                    let given = String(decoding: c[i + 2], as: UTF8.self)
                    guard service.configuration.password == nil || given == service.configuration.password else {
                        out.error("WRONGPASS invalid username-password pair or user is disabled.")
                        return
                    }
                    session.authenticated = true
                    i += 3
                } else if option == "SETNAME" && i + 1 < c.count {
                    session.name = Array(c[i + 1])
                    i += 2
                } else {
                    out.error("ERR Syntax error in HELLO option '\(String(decoding: c[i], as: UTF8.self))'")
                    return
                }
            }
            guard session.authenticated else {
                out.error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
                return
            }
            session.protocolVersion = version
            out.version = version
            out.map(7)
            out.bulk("server"); out.bulk("redis")
            out.bulk("version"); out.bulk(Self.version)
            out.bulk("proto"); out.integer(version)
            out.bulk("id"); out.integer(Int(session.id))
            out.bulk("mode"); out.bulk("standalone")
            out.bulk("role"); out.bulk("master")
            out.bulk("modules"); out.array(0)
        case "SELECT":
            guard arity(2) else { return }
            guard let n = integer(c[1]) else { return notInteger(&out) }
            guard n >= 0 && n < service.databases.count else {
                out.error("ERR DB index is out of range")
                return
            }
            session.database = n
            out.simple("OK")
        case "CLIENT":
            guard arity(2, atLeast: true) else { return }
            switch upper(c[1]) {
            case "SETNAME":
                guard c.count == 3 else { return wrongArgs("client|setname", &out) }
                if c[2].contains(where: { $0 <= 0x20 || $0 > 0x7E }) {
                    out.error("ERR Client names cannot contain spaces, newlines or special characters.")
                    return
                }
                session.name = Array(c[2])
                out.simple("OK")
            case "GETNAME":
                if session.name.isEmpty { out.null() } else { session.name.withUnsafeBytes { out.bulk($0) } }
            case "ID":
                out.integer(Int(session.id))
            case "SETINFO", "NO-EVICT", "NO-TOUCH":
                out.simple("OK")
            default:
                out.error("ERR unknown subcommand '\(String(decoding: c[1], as: UTF8.self))'. Try CLIENT HELP.")
            }
        case "DBSIZE":
            guard arity(1) else { return }
            out.integer(db.count)
        case "FLUSHDB":
            db.removeAll()
            out.simple("OK")
        case "FLUSHALL":
            for i in service.databases.indices { service.databases[i].removeAll() }
            out.simple("OK")
        case "TIME":
            let us = now * 1000
            out.array(2)
            out.bulk(String(us / 1_000_000))
            out.bulk(String(us % 1_000_000))
        case "GET":
            guard arity(2) else { return }
            switch db.get(key(1), now: now) {
            case .string(let v): v.withUnsafeBytes { out.bulk($0) }
            case nil: out.null()
            case .hash: wrongType(&out)
            }
        case "SET":
            guard arity(3, atLeast: true) else { return }
            set(c, key: key(1), db: &db, now: now, out: &out)
        case "SETNX":
            guard arity(3) else { return }
            if db.get(key(1), now: now) != nil {
                out.integer(0)
            } else {
                db.set(key(1), .string(Array(c[2])))
                out.integer(1)
            }
        case "MGET":
            guard arity(2, atLeast: true) else { return }
            out.array(c.count - 1)
            for i in 1..<c.count {
                if case .string(let v)? = db.get(key(i), now: now) { v.withUnsafeBytes { out.bulk($0) } } else { out.null() }
            }
        case "MSET":
            guard c.count >= 3 && c.count % 2 == 1 else { return wrongArgs(name, &out) }
            for i in stride(from: 1, to: c.count, by: 2) { db.set(key(i), .string(Array(c[i + 1]))) }
            out.simple("OK")
        case "DEL", "UNLINK":
            guard arity(2, atLeast: true) else { return }
            var n = 0
            for i in 1..<c.count where db.get(key(i), now: now) != nil {
                db.remove(key(i))
                n += 1
            }
            out.integer(n)
        case "EXISTS":
            guard arity(2, atLeast: true) else { return }
            out.integer((1..<c.count).filter { db.get(key($0), now: now) != nil }.count)
        case "TYPE":
            guard arity(2) else { return }
            out.simple(db.get(key(1), now: now)?.typeName ?? "none")
        case "INCR", "DECR", "INCRBY", "DECRBY":
            let by = name == "INCR" || name == "DECR"
            guard arity(by ? 2 : 3) else { return }
            var delta = name.hasPrefix("DECR") ? -1 : 1
            if !by {
                guard let d = integer(c[2]) else { return notInteger(&out) }
                guard name == "INCRBY" || d != Int.min else {
                    out.error("ERR decrement would overflow")
                    return
                }
                delta = name == "INCRBY" ? d : -d
            }
            incr(key(1), by: delta, db: &db, now: now, out: &out)
        case "APPEND":
            guard arity(3) else { return }
            switch db.get(key(1), now: now) {
            case .string(var v):
                v.append(contentsOf: c[2])
                guard v.count <= service.configuration.limits.maxBulkLength else {
                    out.error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")
                    return
                }
                db.set(key(1), .string(v), keepTTL: true)
                out.integer(v.count)
            case nil:
                db.set(key(1), .string(Array(c[2])))
                out.integer(c[2].count)
            case .hash:
                wrongType(&out)
            }
        case "STRLEN":
            guard arity(2) else { return }
            switch db.get(key(1), now: now) {
            case .string(let v): out.integer(v.count)
            case nil: out.integer(0)
            case .hash: wrongType(&out)
            }
        case "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT":
            guard arity(3, atLeast: true) else { return }
            guard let t = integer(c[2]) else { return notInteger(&out) }
            let milliseconds = name.hasPrefix("P")
            let absolute = name.hasSuffix("AT")
            let (scaled, overflow) = t.multipliedReportingOverflow(by: milliseconds ? 1 : 1000)
            let (at, overflow2) = absolute ? (scaled, false) : Int(now).addingReportingOverflow(scaled)
            guard !overflow && !overflow2 else {
                out.error("ERR invalid expire time in '\(name.lowercased())' command")
                return
            }
            var nx = false, xx = false, gt = false, lt = false
            for i in 3..<c.count {
                switch upper(c[i]) {
                case "NX": nx = true
                case "XX": xx = true
                case "GT": gt = true
                case "LT": lt = true
                default:
                    out.error("ERR Unsupported option \(String(decoding: c[i], as: UTF8.self))")
                    return
                }
            }
            if nx && (xx || gt || lt) {
                out.error("ERR NX and XX, GT or LT options at the same time are not compatible")
                return
            }
            if gt && lt {
                out.error("ERR GT and LT options at the same time are not compatible")
                return
            }
            guard db.get(key(1), now: now) != nil else { return out.integer(0) }
            let current = db.deadline(key(1))
            if nx && current != nil { return out.integer(0) }
            if xx && current == nil { return out.integer(0) }
            // A key with no deadline counts as one infinitely far away.
            if gt && (current == nil || Int64(at) <= current!) { return out.integer(0) }
            if lt, let current, Int64(at) >= current { return out.integer(0) }
            if Int64(at) <= now {
                db.remove(key(1))
            } else {
                db.setDeadline(key(1), Int64(at))
            }
            out.integer(1)
        case "TTL", "PTTL", "EXPIRETIME", "PEXPIRETIME":
            guard arity(2) else { return }
            guard db.get(key(1), now: now) != nil else { return out.integer(-2) }
            guard let deadline = db.deadline(key(1)) else { return out.integer(-1) }
            switch name {
            case "TTL": out.integer(Int((deadline - now + 500) / 1000))
            case "PTTL": out.integer(Int(deadline - now))
            case "EXPIRETIME": out.integer(Int(deadline / 1000))
            default: out.integer(Int(deadline))
            }
        case "PERSIST":
            guard arity(2) else { return }
            if db.get(key(1), now: now) != nil && db.deadline(key(1)) != nil {
                db.setDeadline(key(1), nil)
                out.integer(1)
            } else {
                out.integer(0)
            }
        case "KEYS":
            guard arity(2) else { return }
            let pattern = Array(c[1])
            let matched = db.keys(now: now).filter { globMatch(pattern, $0.bytes) }
            out.array(matched.count)
            for k in matched { k.bytes.withUnsafeBytes { out.bulk($0) } }
        case "HSET", "HMSET", "HSETNX", "HGET", "HMGET", "HDEL", "HGETALL", "HKEYS", "HVALS", "HLEN", "HEXISTS",
             "HSTRLEN", "HINCRBY":
            hashCommand(name, c, key: key(1), db: &db, now: now, out: &out)
        case "INFO":
            info(c, service: service, out: &out)
        case "CONFIG":
            guard arity(2, atLeast: true) else { return }
            switch upper(c[1]) {
            case "GET":
                guard c.count >= 3 else { return wrongArgs("config|get", &out) }
                let settings = service.settings
                var matched: [(String, String)] = []
                for i in 2..<c.count {
                    let pattern = Array(c[i]).map { $0 >= 0x41 && $0 <= 0x5A ? $0 + 0x20 : $0 }
                    for (k, v) in settings where globMatch(pattern, Array(k.utf8)) && !matched.contains(where: { $0.0 == k }) {
                        matched.append((k, v))
                    }
                }
                out.map(matched.count)
                for (k, v) in matched { out.bulk(k); out.bulk(v) }
            case "RESETSTAT":
                service.tally.commands = 0
                service.tally.connections = 0
                out.simple("OK")
            default:
                out.error("ERR unknown subcommand '\(String(decoding: c[1], as: UTF8.self))'. Try CONFIG HELP.")
            }
        case "COMMAND":
            if c.count >= 2 && upper(c[1]) == "COUNT" { out.integer(implemented.count) } else if c.count >= 2 && upper(c[1]) == "DOCS" { out.map(0) } else { out.array(0) }
        default:
            let args = (1..<c.count).prefix(8).map { "'\(String(decoding: c[$0].prefix(64), as: UTF8.self))' " }.joined()
            out.error("ERR unknown command '\(String(decoding: c[0].prefix(128), as: UTF8.self))', with args beginning with: \(args)")
        }
    }

    static let implemented: [String] = [
        "PING", "ECHO", "QUIT", "AUTH", "HELLO", "SELECT", "CLIENT", "DBSIZE", "FLUSHDB", "FLUSHALL", "TIME",
        "GET", "SET", "SETNX", "MGET", "MSET", "DEL", "UNLINK", "EXISTS", "TYPE", "INCR", "DECR", "INCRBY",
        "DECRBY", "APPEND", "STRLEN", "EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT", "TTL", "PTTL",
        "EXPIRETIME", "PEXPIRETIME", "PERSIST", "KEYS", "COMMAND", "INFO", "CONFIG",
        "HSET", "HMSET", "HSETNX", "HGET", "HMGET", "HDEL", "HGETALL", "HKEYS", "HVALS", "HLEN", "HEXISTS",
        "HSTRLEN", "HINCRBY",
    ]

    /// SET key value [NX | XX] [GET] [EX s | PX ms | EXAT s | PXAT ms | KEEPTTL]
    static func set(_ c: RESPCommand, key: RedisKey, db: inout Keyspace, now: Int64, out: inout RESPWriter) {
        var nx = false, xx = false, get = false, keepTTL = false
        var deadline: Int64?
        var i = 3
        while i < c.count {
            let option = upper(c[i])
            switch option {
            case "NX" where !xx: nx = true
            case "XX" where !nx: xx = true
            case "GET": get = true
            case "KEEPTTL" where deadline == nil: keepTTL = true
            case "EX", "PX", "EXAT", "PXAT":
                guard deadline == nil && !keepTTL && i + 1 < c.count else { return out.error("ERR syntax error") }
                guard let t = integer(c[i + 1]) else { return notInteger(&out) }
                guard t > 0 else { return out.error("ERR invalid expire time in 'set' command") }
                let scale = option == "EX" || option == "EXAT" ? 1000 : 1
                let (ms, o1) = t.multipliedReportingOverflow(by: scale)
                let (at, o2) = option.hasSuffix("AT") ? (ms, false) : Int(now).addingReportingOverflow(ms)
                guard !o1 && !o2 else { return out.error("ERR invalid expire time in 'set' command") }
                deadline = Int64(at)
                i += 1
            default:
                return out.error("ERR syntax error")
            }
            i += 1
        }
        let old = db.get(key, now: now)
        if get {
            switch old {
            case .string(let v): v.withUnsafeBytes { out.bulk($0) }
            case nil: out.null()
            case .hash: return wrongType(&out)  // and nothing is set
            }
        }
        if (nx && old != nil) || (xx && old == nil) {
            if !get { out.null() }
            return
        }
        db.set(key, .string(Array(c[2])), keepTTL: keepTTL)
        if let deadline { db.setDeadline(key, deadline) }
        if !get { out.simple("OK") }
    }

    static func incr(_ key: RedisKey, by delta: Int, db: inout Keyspace, now: Int64, out: inout RESPWriter) {
        var value = 0
        switch db.get(key, now: now) {
        case .string(let v):
            guard let n = v.withUnsafeBytes({ integer($0) }) else { return notInteger(&out) }
            value = n
        case nil:
            break
        case .hash:
            return wrongType(&out)
        }
        let (sum, overflow) = value.addingReportingOverflow(delta)
        guard !overflow else { return out.error("ERR increment or decrement would overflow") }
        db.set(key, .string(Array(String(sum).utf8)), keepTTL: true)
        out.integer(sum)
    }

    /// INFO [section ...]: the sections and fields clients read.
    static func info(_ c: RESPCommand, service: RedisService, out: inout RESPWriter) {
        let wanted = Set((1..<c.count).map { upper(c[$0]).lowercased() })
        let all = wanted.isEmpty || wanted.contains("all") || wanted.contains("everything") || wanted.contains("default")
        var text = ""
        func section(_ name: String, _ fields: [(String, String)]) {
            guard all || wanted.contains(name.lowercased()) else { return }
            text += "# \(name)\r\n"
            for (k, v) in fields { text += "\(k):\(v)\r\n" }
            text += "\r\n"
        }
        let uptime = (Keyspace.nowMilliseconds() - service.startedAt) / 1000
        section("Server", [("redis_version", version), ("redis_mode", "standalone"), ("os", "Linux"),
                           ("arch_bits", "64"), ("process_id", String(service.processID)),
                           ("tcp_port", String(service.port)), ("uptime_in_seconds", String(uptime)),
                           ("uptime_in_days", String(uptime / 86_400)), ("executable", "heretic")])
        section("Clients", [("connected_clients", String(service.clients.count)), ("blocked_clients", "0")])
        let rss = RedisService.residentBytes()
        section("Memory", [("used_memory", String(rss)), ("used_memory_rss", String(rss)),
                           ("maxmemory", "0"), ("maxmemory_policy", "noeviction")])
        section("Persistence", [("loading", "0"), ("rdb_changes_since_last_save", "0"), ("aof_enabled", "0")])
        section("Stats", [("total_connections_received", String(service.counters.connections)),
                          ("total_commands_processed", String(service.counters.commands)),
                          ("expired_keys", String(service.databases.reduce(0) { $0 + $1.expired }))])
        section("Replication", [("role", "master"), ("connected_slaves", "0")])
        var keyspace: [(String, String)] = []
        for (i, db) in service.databases.enumerated() where db.count > 0 {
            keyspace.append(("db\(i)", "keys=\(db.count),expires=\(db.volatileCount),avg_ttl=0"))
        }
        section("Keyspace", keyspace)
        out.bulk(text)
    }

    static func wrongArgs(_ name: String, _ out: inout RESPWriter) {
        out.error("ERR wrong number of arguments for '\(name.lowercased())' command")
    }

    /// Arguments each hash command needs (at least, or exactly for those in `hashExactArity`).
    static let hashArity: [String: Int] = ["HSET": 4, "HMSET": 4, "HSETNX": 4, "HGET": 3, "HMGET": 3, "HDEL": 3, "HGETALL": 2,
                                           "HKEYS": 2, "HVALS": 2, "HLEN": 2, "HEXISTS": 3, "HSTRLEN": 3, "HINCRBY": 4]
    static let hashExactArity: Set<String> = ["HSETNX", "HGET", "HGETALL", "HKEYS", "HVALS", "HLEN", "HEXISTS", "HSTRLEN", "HINCRBY"]

    static func hashCommand(_ name: String, _ c: RESPCommand, key: RedisKey, db: inout Keyspace, now: Int64,
                            out: inout RESPWriter) {
        let need = hashArity[name] ?? 2
        guard hashExactArity.contains(name) ? c.count == need : c.count >= need,
              name != "HSET" && name != "HMSET" || c.count % 2 == 0 else { return wrongArgs(name, &out) }
        var hash = RedisHash()
        var taken = db.take(key, now: now)
        switch taken {
        case .hash(let h):
            hash = h
            taken = nil  // the hash's storage now has one owner: changes happen in place
        case nil:
            break
        case .string:
            db.put(key, taken!)
            return wrongType(&out)
        }
        func field(_ i: Int) -> [UInt8] { Array(c[i]) }
        func reply(_ v: [UInt8]?) { if let v { v.withUnsafeBytes { out.bulk($0) } } else { out.null() } }
        var changed = false
        switch name {
        case "HSET", "HMSET":
            var added = 0
            for i in stride(from: 2, to: c.count, by: 2) where hash.set(field(i), field(i + 1)) { added += 1 }
            changed = true
            if name == "HSET" { out.integer(added) } else { out.simple("OK") }
        case "HSETNX":
            if hash[field(2)] == nil {
                hash.set(field(2), field(3))
                changed = true
                out.integer(1)
            } else {
                out.integer(0)
            }
        case "HGET": reply(hash[field(2)])
        case "HMGET":
            out.array(c.count - 2)
            for i in 2..<c.count { reply(hash[field(i)]) }
        case "HDEL":
            var removed = 0
            for i in 2..<c.count where hash.remove(field(i)) { removed += 1 }
            changed = removed > 0
            out.integer(removed)
        case "HGETALL":
            out.map(hash.count)
            for i in 0..<hash.count { reply(hash.fields[i]); reply(hash.values[i]) }
        case "HKEYS":
            out.array(hash.count)
            for f in hash.fields { reply(f) }
        case "HVALS":
            out.array(hash.count)
            for v in hash.values { reply(v) }
        case "HLEN": out.integer(hash.count)
        case "HEXISTS": out.integer(hash[field(2)] == nil ? 0 : 1)
        case "HSTRLEN": out.integer(hash[field(2)]?.count ?? 0)
        case "HINCRBY":
            guard let by = integer(c[3]) else { return notInteger(&out) }
            var value = 0
            if let old = hash[field(2)] {
                guard let n = old.withUnsafeBytes({ integer($0) }) else { return out.error("ERR hash value is not an integer") }
                value = n
            }
            let (sum, overflow) = value.addingReportingOverflow(by)
            guard !overflow else { return out.error("ERR increment or decrement would overflow") }
            hash.set(field(2), Array(String(sum).utf8))
            changed = true
            out.integer(sum)
        default:
            break
        }
        // An emptied hash is no key at all, as in Redis.
        if hash.count == 0 {
            if changed { db.remove(key) }
        } else {
            db.put(key, .hash(hash))
        }
    }

    static func wrongType(_ out: inout RESPWriter) {
        out.error("WRONGTYPE Operation against a key holding the wrong kind of value")
    }

    static func notInteger(_ out: inout RESPWriter) { out.error("ERR value is not an integer or out of range") }

    /// A bulk string as Redis's string2ll reads an integer.
    static func integer(_ b: UnsafeRawBufferPointer) -> Int? { RESPParser.integer(b, 0, b.count) }

    static func upper(_ b: UnsafeRawBufferPointer) -> String {
        String(decoding: b.prefix(32).map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }, as: UTF8.self)
    }
}
