/// Builds RESP replies into one output buffer, in RESP2 or RESP3 (`HELLO 3`): the types RESP3
/// adds (null, map, set, double, boolean, push) fall back to their RESP2 forms as Redis does.
public struct RESPWriter {
    public var bytes: [UInt8] = []
    /// 2 or 3.
    public var version = 2

    public init(version: Int = 2) { self.version = version }

    public mutating func simple(_ s: String) { line(UInt8(ascii: "+"), s) }
    public mutating func error(_ s: String) { line(UInt8(ascii: "-"), s) }
    public mutating func integer(_ v: Int) { line(UInt8(ascii: ":"), String(v)) }

    public mutating func bulk(_ data: UnsafeRawBufferPointer) {
        line(UInt8(ascii: "$"), String(data.count))
        bytes.append(contentsOf: data)
        crlf()
    }

    public mutating func bulk(_ s: String) {
        var s = s
        s.withUTF8 { bulk(UnsafeRawBufferPointer($0)) }
    }

    /// A missing value: `_` in RESP3, `$-1` in RESP2.
    public mutating func null() {
        if version >= 3 { bytes.append(contentsOf: [UInt8(ascii: "_"), 0x0D, 0x0A]) } else { line(UInt8(ascii: "$"), "-1") }
    }

    /// A missing array (RESP2 `*-1`, RESP3 `_`).
    public mutating func nullArray() {
        if version >= 3 { null() } else { line(UInt8(ascii: "*"), "-1") }
    }

    public mutating func array(_ count: Int) { line(UInt8(ascii: "*"), String(count)) }
    /// A map of `count` pairs (RESP2: an array of 2 x count).
    public mutating func map(_ count: Int) {
        if version >= 3 { line(UInt8(ascii: "%"), String(count)) } else { array(2 * count) }
    }
    /// A set (RESP2: an array).
    public mutating func set(_ count: Int) {
        if version >= 3 { line(UInt8(ascii: "~"), String(count)) } else { array(count) }
    }
    /// A push message (RESP2: an array, as pub/sub messages have always been).
    public mutating func push(_ count: Int) {
        if version >= 3 { line(UInt8(ascii: ">"), String(count)) } else { array(count) }
    }
    /// A double (RESP2: its text as a bulk string).
    public mutating func double(_ v: Double) {
        let text = v.isInfinite ? (v > 0 ? "inf" : "-inf") : v.isNaN ? "nan" : Self.format(v)
        if version >= 3 { line(UInt8(ascii: ","), text) } else { bulk(text) }
    }
    /// A boolean (RESP2: the integer 1 or 0).
    public mutating func boolean(_ v: Bool) {
        if version >= 3 { line(UInt8(ascii: "#"), v ? "t" : "f") } else { integer(v ? 1 : 0) }
    }

    /// A double as Redis prints one: integral values without a fraction, others in the
    /// shortest form that reads back to the same value.
    static func format(_ v: Double) -> String {
        if v == v.rounded(), abs(v) < 1e17 { return String(Int64(v)) }
        return "\(v)"
    }

    private mutating func line(_ type: UInt8, _ text: String) {
        bytes.append(type)
        bytes.append(contentsOf: text.utf8)
        crlf()
    }

    private mutating func crlf() { bytes.append(contentsOf: [0x0D, 0x0A]) }
}
