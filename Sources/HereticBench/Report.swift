/// One benchmark result: ordered fields printed as a table row or as one JSON object.
public struct BenchResult: Sendable {
    public enum Value: Sendable {
        case int(Int64), uint(UInt64), double(Double), bool(Bool), string(String)

        var json: String {
            switch self {
            case .int(let v): return String(v)
            case .uint(let v): return String(v)
            case .double(let v): return v.isFinite ? formatFixed(v, digits: 3) : "null"
            case .bool(let v): return v ? "true" : "false"
            case .string(let s): return "\"" + jsonEscape(s) + "\""
            }
        }

        public var human: String {
            switch self {
            case .int(let v): return groupDigits(String(v))
            case .uint(let v): return groupDigits(String(v))
            case .double(let v): return formatFixed(v, digits: v.magnitude >= 100 ? 0 : 2)
            case .bool(let v): return v ? "yes" : "NO"
            case .string(let s): return s
            }
        }

        public var asDouble: Double? {
            switch self {
            case .int(let v): return Double(v)
            case .uint(let v): return Double(v)
            case .double(let v): return v
            default: return nil
            }
        }
    }

    public private(set) var fields: [(String, Value)] = []
    /// False when the benchmark's own verification failed.
    public var verified: Bool

    public init(bench: String, verified: Bool) {
        self.verified = verified
        fields.append(("bench", .string(bench)))
    }

    public mutating func add(_ key: String, _ value: Value) { fields.append((key, value)) }
    public mutating func add(_ key: String, _ v: Int) { add(key, .int(Int64(v))) }
    public mutating func add(_ key: String, _ v: UInt64) { add(key, .uint(v)) }
    public mutating func add(_ key: String, _ v: Double) { add(key, .double(v)) }
    public mutating func add(_ key: String, _ v: Bool) { add(key, .bool(v)) }
    public mutating func add(_ key: String, _ v: String) { add(key, .string(v)) }

    public subscript(key: String) -> Value? { fields.first { $0.0 == key }?.1 }

    /// One JSON object on one line.
    public var json: String {
        "{" + fields.map { "\"\($0.0)\":\($0.1.json)" }.joined(separator: ",") + "}"
    }

    /// Aligned "key  value" lines for people.
    public var table: String {
        let width = fields.map(\.0.count).max() ?? 0
        return fields.map { k, v in
            k + String(repeating: " ", count: width - k.count) + "  " + v.human
        }.joined(separator: "\n")
    }
}

func jsonEscape(_ s: String) -> String {
    var out = ""
    for ch in s.unicodeScalars {
        switch ch {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\t": out += "\\t"
        default:
            if ch.value < 0x20 {
                let hex = String(ch.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(ch)
            }
        }
    }
    return out
}

/// Fixed-point formatting without Foundation.
public func formatFixed(_ value: Double, digits: Int) -> String {
    if !value.isFinite { return String(value) }
    var scale = 1.0
    for _ in 0..<digits { scale *= 10 }
    let negative = value < 0
    let scaled = (value.magnitude * scale).rounded()
    guard scaled < 9.0e18 else { return String(value) }
    let n = UInt64(scaled)
    let whole = n / UInt64(scale)
    var text = String(whole)
    if digits > 0 {
        let frac = String(n % UInt64(scale))
        text += "." + String(repeating: "0", count: digits - frac.count) + frac
    }
    return negative && scaled != 0 ? "-" + text : text
}

/// 12345678 -> "12,345,678".
public func groupDigits(_ s: String) -> String {
    let negative = s.hasPrefix("-")
    let digits = Array(negative ? s.dropFirst() : Substring(s))
    var out: [Character] = []
    for (i, c) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
        out.append(c)
    }
    return (negative ? "-" : "") + String(out)
}

/// "80.1 M", "512 K" for rates in tables.
public func humanRate(_ v: Double) -> String {
    if v >= 1e9 { return formatFixed(v / 1e9, digits: 2) + " G" }
    if v >= 1e6 { return formatFixed(v / 1e6, digits: 1) + " M" }
    if v >= 1e3 { return formatFixed(v / 1e3, digits: 0) + " K" }
    return formatFixed(v, digits: 0)
}

/// Errors a benchmark reports instead of a result.
public struct BenchError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
