import HereticTransport
/// A flat open-addressing map from 64-bit keys to 64-bit values, for the per-segment lookup
/// of a connection by its 4-tuple: linear probing, backward-shift deletion (no tombstones,
/// so churn does not slow lookups), growth at 50 % load.
///
/// The hash is keyed: the key xor a random seed goes through two rounds of "fold the high half
/// into the low, multiply by a random odd number"; the top bits pick the bucket. A peer that
/// does not know the seed and the multipliers cannot choose 4-tuples that pile into one probe
/// run.
/// (One multiply-shift is not enough: it only carries bits upward, so keys that differ only in
/// their top bits, or only in their bottom bits, can fill runs hundreds of slots long for an
/// unlucky multiplier. The fold lets every bit reach the top.)
///
/// Every key is allowed: 0, the marker of an empty bucket, is kept beside the buckets.
struct ConnectionTable {
    private var keys: [UInt64]
    private var values: [UInt64]
    private var mask: Int
    /// 64 minus log2 of the bucket count: the top bits of the product pick the bucket.
    private var shift: UInt64
    private let seed = UInt64.random(in: 0...UInt64.max)
    private let multiplier = UInt64.random(in: 0...UInt64.max) | 1
    private let multiplier2 = UInt64.random(in: 0...UInt64.max) | 1
    /// The value of key 0, which cannot live in a bucket.
    private var zeroValue: UInt64?
    private(set) var count = 0

    init(capacity: Int = 1024) {
        var c = 16
        while c < capacity * 2 { c <<= 1 }
        keys = Array(repeating: 0, count: c)
        values = Array(repeating: 0, count: c)
        mask = c - 1
        shift = UInt64(64 - c.trailingZeroBitCount)
    }

    @inline(__always) private func home(_ key: UInt64) -> Int {
        var x = key ^ seed
        x = (x ^ (x >> 33)) &* multiplier
        x = (x ^ (x >> 33)) &* multiplier2
        return Int(truncatingIfNeeded: x >> shift)
    }

    subscript(key: UInt64) -> UInt64? {
        get {
            if key == 0 { return zeroValue }
            var i = home(key)
            while true {
                let k = keys[i]
                if k == key { return values[i] }
                if k == 0 { return nil }
                i = (i + 1) & mask
            }
        }
        set {
            if key == 0 {
                if (zeroValue == nil) != (newValue == nil) { count += newValue == nil ? -1 : 1 }
                zeroValue = newValue
            } else if let v = newValue {
                insert(key, v)
            } else {
                remove(key)
            }
        }
    }

    private mutating func insert(_ key: UInt64, _ value: UInt64) {
        if (count + 1) * 2 > mask + 1 { grow() }
        var i = home(key)
        while true {
            if keys[i] == key { values[i] = value; return }
            if keys[i] == 0 {
                keys[i] = key
                values[i] = value
                count += 1
                return
            }
            i = (i + 1) & mask
        }
    }

    private mutating func remove(_ key: UInt64) {
        var i = home(key)
        while keys[i] != key {
            if keys[i] == 0 { return }
            i = (i + 1) & mask
        }
        // Backward shift: pull later members of the probe run into the hole.
        var hole = i
        var j = (i + 1) & mask
        while keys[j] != 0 {
            let h = home(keys[j])
            // Move j into the hole unless its home lies cyclically in (hole, j].
            let between = hole <= j ? (h > hole && h <= j) : (h > hole || h <= j)
            if !between {
                keys[hole] = keys[j]
                values[hole] = values[j]
                hole = j
            }
            j = (j + 1) & mask
        }
        keys[hole] = 0
        count -= 1
        // Shrink once an eighth full (then a quarter full: no flapping at one boundary), so
        // a crowd of connections that has gone gives its table back.
        if mask + 1 > minimumCapacity && count * 8 < mask + 1 { rehash(capacity: (mask + 1) / 2) }
    }

    private mutating func grow() { rehash(capacity: (mask + 1) * 2) }

    /// Slots of the smallest table: shrinking stops here.
    private var minimumCapacity: Int { 2048 }

    private mutating func rehash(capacity c: Int) {
        let oldKeys = keys, oldValues = values
        keys = []  // the old arrays go as soon as the copies above do
        values = []
        keys = Array(repeating: 0, count: c)
        values = Array(repeating: 0, count: c)
        mask = c - 1
        shift = UInt64(64 - c.trailingZeroBitCount)
        count = zeroValue == nil ? 0 : 1
        for i in oldKeys.indices where oldKeys[i] != 0 { insert(oldKeys[i], oldValues[i]) }
    }

    /// Slots looked at to find `key` (1: at its home), or to learn it is absent.
    func probeLength(_ key: UInt64) -> Int {
        if key == 0 { return 1 }
        var i = home(key), n = 1
        while keys[i] != key && keys[i] != 0 {
            i = (i + 1) & mask
            n += 1
        }
        return n
    }

    /// Slots allocated (for tests and memory accounting).
    var capacity: Int { mask + 1 }
}
