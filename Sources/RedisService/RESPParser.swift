/// Limits on what a client may send, as Redis has them.
public struct RESPLimits: Sendable {
    /// The longest bulk string (Redis's `proto-max-bulk-len`, 512 MB).
    public var maxBulkLength = 512 << 20
    /// The most arguments in one command (Redis allows up to INT_MAX for an authenticated
    /// client; memory bounds it long before).
    public var maxArguments = 1 << 20
    /// The longest inline command, and the longest count line (`PROTO_INLINE_MAX_SIZE`).
    public var maxInlineLength = 64 << 10
    /// The most bytes held for one unfinished command (`client-query-buffer-limit`, 1 GB).
    public var maxQueryBuffer = 1 << 30

    public init() {}
}

/// Why a client's bytes are not RESP. Redis answers each with `-ERR Protocol error: ...`
/// and closes the connection.
public enum RESPParseError: Error, Equatable, Sendable {
    case tooBigInlineRequest
    case unbalancedQuotes
    case tooBigMultibulkCount
    case invalidMultibulkLength
    case expectedDollar(UInt8)
    case tooBigBulkCount
    case invalidBulkLength
    case queryBufferLimit

    /// The error line Redis sends, without the leading `-` and the CRLF.
    public var message: String {
        switch self {
        case .tooBigInlineRequest: "ERR Protocol error: too big inline request"
        case .unbalancedQuotes: "ERR Protocol error: unbalanced quotes in request"
        case .tooBigMultibulkCount: "ERR Protocol error: too big mbulk count string"
        case .invalidMultibulkLength: "ERR Protocol error: invalid multibulk length"
        case .expectedDollar(let c): "ERR Protocol error: expected '$', got '\(Character(Unicode.Scalar(c)))'"
        case .tooBigBulkCount: "ERR Protocol error: too big bulk count string"
        case .invalidBulkLength: "ERR Protocol error: invalid bulk length"
        case .queryBufferLimit: "ERR Protocol error: query buffer limit reached"
        }
    }
}

/// One command's arguments, borrowed from the parser: valid only inside the callback that
/// receives it (they point into the receive buffer, or the parser's own copy of an
/// unfinished command).
public struct RESPCommand {
    public let arguments: UnsafeBufferPointer<UnsafeRawBufferPointer>

    @inlinable public var count: Int { arguments.count }
    @inlinable public subscript(i: Int) -> UnsafeRawBufferPointer { arguments[i] }

    /// Whether argument `i` equals `word` ignoring ASCII case (`word` in upper case).
    @inlinable public func argument(_ i: Int, is word: StaticString) -> Bool {
        let a = arguments[i]
        guard a.count == word.utf8CodeUnitCount else { return false }
        let w = word.utf8Start
        for j in 0..<a.count {
            var c = a[j]
            if c >= 0x61 && c <= 0x7A { c -= 0x20 }
            if c != w[j] { return false }
        }
        return true
    }
}

/// An incremental RESP request parser: multibulk (`*N\r\n$len\r\n...`) and inline commands,
/// pipelined, split across receives anywhere. Complete commands are handed over straight from
/// the receive buffer (no copy); only an unfinished command's bytes are kept until the rest
/// arrives, and its parse resumes where it stopped (no rescanning: a command sent a byte at a
/// time costs linear work). Every length is checked against `RESPLimits` before it is trusted.
public struct RESPParser {
    public let limits: RESPLimits
    /// The unfinished command's bytes, from its first byte.
    private var pending: [UInt8] = []
    /// Parse state of the command in progress, in offsets from its first byte.
    private var inCommand = false
    private var inline = false
    private var expected = -1
    private var bulkLength = -1
    private var position = 0
    private var offsets: [(start: Int, count: Int)] = []
    /// How far a search for the end of a line has looked, so that it resumes there.
    private var scanned = 0
    /// Inline arguments after unquoting, and the views handed out.
    private var inlineBytes: [UInt8] = []
    private var views: [UnsafeRawBufferPointer] = []

    public init(limits: RESPLimits = RESPLimits()) {
        self.limits = limits
    }

    /// Bytes held for an unfinished command.
    public var bufferedBytes: Int { pending.count }

    /// Parses `data`, calling `body` for each complete command in order. Returns the error
    /// that stopped it, if the bytes are not RESP (the commands before it were delivered;
    /// the connection should be answered with `error.message` and closed).
    public mutating func feed(_ data: UnsafeRawBufferPointer, _ body: (RESPCommand) -> Void) -> RESPParseError? {
        guard data.count > 0 else { return nil }
        if pending.isEmpty {
            var start = 0
            while start < data.count {
                let frame = UnsafeRawBufferPointer(rebasing: data[start...])
                switch step(frame) {
                case .complete(let used):
                    deliver(frame, body)
                    start += used
                case .needMore:
                    if frame.count > limits.maxQueryBuffer { return .queryBufferLimit }
                    pending.append(contentsOf: frame)
                    return nil
                case .error(let e):
                    return e
                }
            }
            return nil
        }
        if pending.count + data.count > limits.maxQueryBuffer { return .queryBufferLimit }
        pending.append(contentsOf: data)
        var consumed = 0
        var failure: RESPParseError?
        // Parsed out of the struct, so that parsing (which mutates the state) does not
        // overlap an access to `pending`; put back below without a copy when nothing went.
        var held: [UInt8] = []
        swap(&held, &pending)
        held.withUnsafeBytes { all in
            while consumed < all.count {
                let frame = UnsafeRawBufferPointer(rebasing: all[consumed...])
                switch step(frame) {
                case .complete(let used):
                    deliver(frame, body)
                    consumed += used
                case .needMore:
                    return
                case .error(let e):
                    failure = e
                    return
                }
            }
        }
        pending = consumed == 0 ? held : consumed == held.count ? [] : Array(held[consumed...])
        return failure
    }

    enum Step { case complete(Int), needMore, error(RESPParseError) }

    private mutating func step(_ f: UnsafeRawBufferPointer) -> Step {
        if !inCommand {
            inCommand = true
            inline = f[0] != UInt8(ascii: "*")
            expected = -1
            bulkLength = -1
            position = inline ? 0 : 1
            scanned = 0
            offsets.removeAll(keepingCapacity: true)
        }
        if inline { return stepInline(f) }
        if expected < 0 {
            guard let end = findLine(f, from: position) else {
                return f.count - position > limits.maxInlineLength ? .error(.tooBigMultibulkCount) : .needMore
            }
            guard let n = Self.integer(f, position, end), n <= limits.maxArguments else {
                return .error(.invalidMultibulkLength)
            }
            position = end + 2
            if n <= 0 { return .complete(position) }  // an empty command: nothing to run
            expected = n
        }
        while offsets.count < expected {
            if bulkLength < 0 {
                guard position < f.count else { return .needMore }
                guard f[position] == UInt8(ascii: "$") else { return .error(.expectedDollar(f[position])) }
                guard let end = findLine(f, from: position + 1) else {
                    return f.count - position > limits.maxInlineLength ? .error(.tooBigBulkCount) : .needMore
                }
                guard let n = Self.integer(f, position + 1, end), n >= 0, n <= limits.maxBulkLength else {
                    return .error(.invalidBulkLength)
                }
                bulkLength = n
                position = end + 2
            }
            // The data and its CRLF (whose bytes Redis does not check either).
            guard f.count - position >= bulkLength + 2 else { return .needMore }
            offsets.append((position, bulkLength))
            position += bulkLength + 2
            bulkLength = -1
        }
        return .complete(position)
    }

    private mutating func stepInline(_ f: UnsafeRawBufferPointer) -> Step {
        var newline = -1
        var i = position
        while i < f.count {
            if f[i] == 0x0A { newline = i; break }
            i += 1
        }
        guard newline >= 0 else {
            position = f.count  // scanned: resume past it
            return f.count > limits.maxInlineLength ? .error(.tooBigInlineRequest) : .needMore
        }
        var end = newline
        if end > 0 && f[end - 1] == 0x0D { end -= 1 }
        guard Self.splitInline(UnsafeRawBufferPointer(rebasing: f[..<end]), into: &inlineBytes, &offsets) else {
            return .error(.unbalancedQuotes)
        }
        return .complete(newline + 1)
    }

    private mutating func deliver(_ frame: UnsafeRawBufferPointer, _ body: (RESPCommand) -> Void) {
        inCommand = false
        guard !offsets.isEmpty else { return }
        views.removeAll(keepingCapacity: true)
        if inline {
            inlineBytes.withUnsafeBytes { bytes in
                for o in offsets { views.append(UnsafeRawBufferPointer(rebasing: bytes[o.start..<o.start + o.count])) }
                views.withUnsafeBufferPointer { body(RESPCommand(arguments: $0)) }
            }
        } else {
            for o in offsets { views.append(UnsafeRawBufferPointer(rebasing: frame[o.start..<o.start + o.count])) }
            views.withUnsafeBufferPointer { body(RESPCommand(arguments: $0)) }
        }
    }

    /// `lineEnd`, resuming where the last search that found nothing stopped.
    private mutating func findLine(_ f: UnsafeRawBufferPointer, from start: Int) -> Int? {
        if let end = Self.lineEnd(f, from: max(start, scanned)) {
            scanned = 0
            return end
        }
        scanned = max(start, f.count - 1)  // the last byte may be a CR whose LF is coming
        return nil
    }

    /// The index of the CR of the first CRLF at or after `from`.
    static func lineEnd(_ f: UnsafeRawBufferPointer, from: Int) -> Int? {
        var i = from
        while i + 1 < f.count {
            if f[i] == 0x0D && f[i + 1] == 0x0A { return i }
            i += 1
        }
        return nil
    }

    /// A decimal integer exactly filling `f[from..<to]`, as Redis's `string2ll` reads one:
    /// an optional minus, no plus, no spaces, no leading zeros; nil if it is not one or
    /// overflows.
    static func integer(_ f: UnsafeRawBufferPointer, _ from: Int, _ to: Int) -> Int? {
        var i = from
        guard i < to else { return nil }
        let negative = f[i] == UInt8(ascii: "-")
        if negative { i += 1 }
        guard i < to, to - i <= 19 else { return nil }
        if f[i] == UInt8(ascii: "0") { return to - i == 1 && !negative ? 0 : nil }
        var v = 0
        while i < to {
            let d = Int(f[i]) - 48
            guard d >= 0 && d <= 9 else { return nil }
            let (m, o1) = v.multipliedReportingOverflow(by: 10)
            let (s, o2) = m.addingReportingOverflow(d)
            if o1 || o2 { return nil }
            v = s
            i += 1
        }
        return negative ? -v : v
    }

    /// Splits an inline command as Redis's `sdssplitargs` does: spaces separate arguments;
    /// "double quotes" take \n \r \t \b \a \\ \" and \xHH; 'single quotes' take \'; a closing
    /// quote must be followed by a space or the end. False if the quotes do not balance.
    static func splitInline(_ line: UnsafeRawBufferPointer, into bytes: inout [UInt8],
                            _ offsets: inout [(start: Int, count: Int)]) -> Bool {
        bytes.removeAll(keepingCapacity: true)
        offsets.removeAll(keepingCapacity: true)
        func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D || c == 0x0B || c == 0x0C }
        func hex(_ c: UInt8) -> UInt8? {
            switch c {
            case 0x30...0x39: c - 0x30
            case 0x61...0x66: c - 0x61 + 10
            case 0x41...0x46: c - 0x41 + 10
            default: nil
            }
        }
        var i = 0
        let n = line.count
        while true {
            while i < n && isSpace(line[i]) { i += 1 }
            guard i < n else { return true }
            let start = bytes.count
            var inDouble = false, inSingle = false, done = false
            while !done {
                if inDouble {
                    guard i < n else { return false }
                    let c = line[i]
                    if c == UInt8(ascii: "\\") && i + 3 < n && line[i + 1] == UInt8(ascii: "x"),
                       let h = hex(line[i + 2]), let l = hex(line[i + 3]) {
                        bytes.append(h << 4 | l)
                        i += 3
                    } else if c == UInt8(ascii: "\\") && i + 1 < n {
                        i += 1
                        switch line[i] {
                        case UInt8(ascii: "n"): bytes.append(0x0A)
                        case UInt8(ascii: "r"): bytes.append(0x0D)
                        case UInt8(ascii: "t"): bytes.append(0x09)
                        case UInt8(ascii: "b"): bytes.append(0x08)
                        case UInt8(ascii: "a"): bytes.append(0x07)
                        default: bytes.append(line[i])
                        }
                    } else if c == UInt8(ascii: "\"") {
                        // The closing quote must be followed by a space or the end.
                        if i + 1 < n && !isSpace(line[i + 1]) { return false }
                        done = true
                    } else {
                        bytes.append(c)
                    }
                } else if inSingle {
                    guard i < n else { return false }
                    let c = line[i]
                    if c == UInt8(ascii: "\\") && i + 1 < n && line[i + 1] == UInt8(ascii: "'") {
                        i += 1
                        bytes.append(UInt8(ascii: "'"))
                    } else if c == UInt8(ascii: "'") {
                        if i + 1 < n && !isSpace(line[i + 1]) { return false }
                        done = true
                    } else {
                        bytes.append(c)
                    }
                } else {
                    if i >= n { break }
                    let c = line[i]
                    if isSpace(c) {
                        done = true
                    } else if c == UInt8(ascii: "\"") {
                        inDouble = true
                    } else if c == UInt8(ascii: "'") {
                        inSingle = true
                    } else {
                        bytes.append(c)
                    }
                }
                if i < n { i += 1 }
            }
            offsets.append((start, bytes.count - start))
        }
    }
}
