#if canImport(Glibc)
import Glibc
#endif

/// A key: its bytes.
public struct RedisKey: Hashable, Sendable {
    public var bytes: [UInt8]
    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = Array(bytes) }
    public init(_ s: String) { bytes = Array(s.utf8) }
}

/// A value of one of Redis's types. (Lists, sets and sorted sets come with their commands.)
public enum RedisValue: Sendable {
    case string([UInt8])
    case hash(RedisHash)

    public var typeName: String {
        switch self {
        case .string: "string"
        case .hash: "hash"
        }
    }
}

/// A hash: fields and values in arrays (insertion order, as Redis's small hashes keep it),
/// with an index from field to position; a removal moves the last field into the gap.
public struct RedisHash: Sendable {
    public private(set) var fields: [[UInt8]] = []
    public private(set) var values: [[UInt8]] = []
    private var index: [[UInt8]: Int] = [:]

    public init() {}

    public var count: Int { fields.count }

    public subscript(field: [UInt8]) -> [UInt8]? { index[field].map { values[$0] } }

    /// Sets a field; true if it is new.
    @discardableResult
    public mutating func set(_ field: [UInt8], _ value: [UInt8]) -> Bool {
        if let i = index[field] {
            values[i] = value
            return false
        }
        index[field] = fields.count
        fields.append(field)
        values.append(value)
        return true
    }

    /// Removes a field; true if it was there.
    @discardableResult
    public mutating func remove(_ field: [UInt8]) -> Bool {
        guard let i = index.removeValue(forKey: field) else { return false }
        let last = fields.count - 1
        if i != last {
            fields[i] = fields[last]
            values[i] = values[last]
            index[fields[i]] = i
        }
        fields.removeLast()
        values.removeLast()
        return true
    }
}

/// One database: keys, values and expiry times (Unix milliseconds). Expired keys are removed
/// when touched (lazy expiry) and by `expireSome`, which samples keys with a deadline as
/// Redis's active expiry does.
public struct Keyspace {
    var values: [RedisKey: RedisValue] = [:]
    var expires: [RedisKey: Int64] = [:]
    /// Keys removed because their time was up.
    public private(set) var expired = 0

    public init() {}

    public var count: Int { values.count }
    public var volatileCount: Int { expires.count }

    /// The current Unix time in milliseconds.
    public static func nowMilliseconds() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// The value of `key`, nil if there is none or its time is up (then it is removed).
    public mutating func get(_ key: RedisKey, now: Int64) -> RedisValue? {
        if let deadline = expires[key], deadline <= now {
            remove(key)
            expired += 1
            return nil
        }
        return values[key]
    }

    /// Sets `key`; its deadline is cleared unless `keepTTL`.
    public mutating func set(_ key: RedisKey, _ value: RedisValue, keepTTL: Bool = false) {
        values[key] = value
        if !keepTTL { expires[key] = nil }
    }

    /// Takes a live value out to change it in place (nobody else then holds its storage, so
    /// changing it copies nothing); give it back with `put`. Its deadline stays.
    public mutating func take(_ key: RedisKey, now: Int64) -> RedisValue? {
        guard get(key, now: now) != nil else { return nil }
        return values.removeValue(forKey: key)
    }

    /// Puts back what `take` took (or a new value, keeping any deadline).
    public mutating func put(_ key: RedisKey, _ value: RedisValue) { values[key] = value }

    @discardableResult
    public mutating func remove(_ key: RedisKey) -> Bool {
        expires[key] = nil
        return values.removeValue(forKey: key) != nil
    }

    /// The deadline of a key that exists (nil: it has none).
    public func deadline(_ key: RedisKey) -> Int64? { expires[key] }

    /// Sets the deadline of an existing key (false if there is no such key).
    @discardableResult
    public mutating func setDeadline(_ key: RedisKey, _ at: Int64?) -> Bool {
        guard values[key] != nil else { return false }
        expires[key] = at
        return true
    }

    public mutating func removeAll() {
        values.removeAll()
        expires.removeAll()
    }

    /// Active expiry: looks at up to `samples` keys with a deadline and removes those whose
    /// time is up; returns how many went. (Redis repeats while a quarter of a sample expired.)
    public mutating func expireSome(now: Int64, samples: Int = 20) -> Int {
        var gone: [RedisKey] = []
        var looked = 0
        for (key, deadline) in expires {
            if looked == samples { break }
            looked += 1
            if deadline <= now { gone.append(key) }
        }
        for key in gone { remove(key) }
        expired += gone.count
        return gone.count
    }

    /// Every key (for KEYS and SCAN), live ones only.
    public func keys(now: Int64) -> [RedisKey] {
        values.keys.filter { k in expires[k].map { $0 > now } ?? true }
    }
}

/// Redis's glob matching (`KEYS`, `SCAN MATCH`, `PSUBSCRIBE`): `*`, `?`, `[abc]`, `[^a-z]`,
/// and `\` escapes. Iterative with backtracking to the last `*`, so no pattern takes more than
/// pattern x string steps.
public func globMatch(_ pattern: [UInt8], _ string: [UInt8], noCase: Bool = false) -> Bool {
    func fold(_ c: UInt8) -> UInt8 { noCase && c >= 0x41 && c <= 0x5A ? c + 0x20 : c }
    var p = 0, s = 0
    var starP = -1, starS = 0
    while s < string.count {
        if p < pattern.count {
            let c = pattern[p]
            if c == UInt8(ascii: "*") {
                while p < pattern.count && pattern[p] == UInt8(ascii: "*") { p += 1 }
                if p == pattern.count { return true }
                starP = p
                starS = s
                continue
            }
            if c == UInt8(ascii: "?") {
                p += 1
                s += 1
                continue
            }
            if c == UInt8(ascii: "[") {
                var q = p + 1
                var negate = false
                if q < pattern.count && pattern[q] == UInt8(ascii: "^") {
                    negate = true
                    q += 1
                }
                var matched = false
                while q < pattern.count && pattern[q] != UInt8(ascii: "]") {
                    if pattern[q] == UInt8(ascii: "\\") && q + 1 < pattern.count {
                        q += 1
                        if fold(pattern[q]) == fold(string[s]) { matched = true }
                        q += 1
                    } else if q + 2 < pattern.count && pattern[q + 1] == UInt8(ascii: "-") && pattern[q + 2] != UInt8(ascii: "]") {
                        var lo = fold(pattern[q]), hi = fold(pattern[q + 2])
                        if lo > hi { swap(&lo, &hi) }
                        let x = fold(string[s])
                        if x >= lo && x <= hi { matched = true }
                        q += 3
                    } else {
                        if fold(pattern[q]) == fold(string[s]) { matched = true }
                        q += 1
                    }
                }
                if matched != negate {
                    p = q < pattern.count ? q + 1 : q  // past the ']' (an unclosed '[' ends the pattern)
                    s += 1
                    continue
                }
            } else {
                var literal = c
                var width = 1
                if c == UInt8(ascii: "\\") && p + 1 < pattern.count {
                    literal = pattern[p + 1]
                    width = 2
                }
                if fold(literal) == fold(string[s]) {
                    p += width
                    s += 1
                    continue
                }
            }
        }
        // A mismatch: let the last '*' take one more byte, or fail.
        guard starP >= 0 else { return false }
        starS += 1
        s = starS
        p = starP
    }
    while p < pattern.count && pattern[p] == UInt8(ascii: "*") { p += 1 }
    return p == pattern.count
}
