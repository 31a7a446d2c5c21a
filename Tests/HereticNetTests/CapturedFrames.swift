// Frames captured with tcpdump on a veth pair between two network namespaces the capture
// script created and removed (10.77.0.1 at 02:00:00:00:00:0a, 10.77.0.2 at 02:00:00:00:00:0b),
// with checksum offload off so every checksum is real. The same frames are in
// captured-veth.pcap beside this file, for Wireshark.
enum Captured {
    static let arpRequest: [UInt8] = hex("""
        ffffffffffff02000000000a0806000108000604000102000000000a0a4d0001
        0000000000000a4d0002
        """)
    static let arpReply: [UInt8] = hex("""
        02000000000a02000000000b0806000108000604000202000000000b0a4d0002
        02000000000a0a4d0001
        """)
    static let icmpEchoRequest: [UInt8] = hex("""
        02000000000b02000000000a080045000030891c400040019d140a4d00010a4d
        00020800f4863683000170f8026b000000002b6d0c000000000010111213
        """)
    static let icmpEchoReply: [UInt8] = hex("""
        02000000000a02000000000b080045000030714c00004001f4e40a4d00020a4d
        00010000fc863683000170f8026b000000002b6d0c000000000010111213
        """)
    static let tcpSyn: [UInt8] = hex("""
        02000000000b02000000000a08004500003cc0db4000400665440a4d00010a4d
        0002cb941b58f5264dd800000000a002faf05b5a0000020405b40402080a5c09
        5720000000000103030a
        """)
    static let tcpSynAck: [UInt8] = hex("""
        02000000000a02000000000b08004500003c00004000400626200a4d00020a4d
        00011b58cb94373a5a38f5264dd9a012fe8878490000020405b40402080aada0
        a0545c0957200103030a
        """)
    static let tcpAck: [UInt8] = hex("""
        02000000000b02000000000a080045000034c0dc40004006654b0a4d00010a4d
        0002cb941b58f5264dd9373a5a398010003fa56200000101080a5c095720ada0
        a054
        """)
    static let tcpData: [UInt8] = hex("""
        02000000000b02000000000a080045000042c0dd40004006653c0a4d00010a4d
        0002cb941b58f5264dd9373a5a398018003faf1900000101080a5c095722ada0
        a05468656c6c6f20686572657469630a
        """)
    static let tcpDataAck: [UInt8] = hex("""
        02000000000a02000000000b080045000034f6dc400040062f4b0a4d00020a4d
        00011b58cb94373a5a39f5264de780100040a54f00000101080aada0a0565c09
        5722
        """)
    static let tcpFin: [UInt8] = hex("""
        02000000000b02000000000a080045000034c0de4000400665490a4d00010a4d
        0002cb941b58f5264de7373a5a398011003fa54f00000101080a5c095722ada0
        a056
        """)
    static let tcpFinAck: [UInt8] = hex("""
        02000000000a02000000000b080045000034f6dd400040062f4a0a4d00020a4d
        00011b58cb94373a5a39f5264de880110040a54d00000101080aada0a0565c09
        5722
        """)
    static let tcpLastAck: [UInt8] = hex("""
        02000000000b02000000000a080045000034c0df4000400665480a4d00010a4d
        0002cb941b58f5264de8373a5a3a8010003fa54e00000101080a5c095722ada0
        a056
        """)
    static let udpDatagram: [UInt8] = hex("""
        02000000000b02000000000a080045000025add140004011785a0a4d00010a4d
        0002a5e91b5900115b977564702070696e670a
        """)
    static let udpToClosedPort: [UInt8] = hex("""
        02000000000b02000000000a08004500001ee91e400040113d140a4d00010a4d
        0002b8071f3f000a9bec780a
        """)
    static let icmpPortUnreachable: [UInt8] = hex("""
        02000000000a02000000000b080045c0003a72af00004001f2b70a4d00020a4d
        0001030311b5000000004500001ee91e400040113d140a4d00010a4d0002b807
        1f3f000a9bec780a
        """)
}

/// Bytes from a hex string (whitespace ignored).
func hex(_ s: String) -> [UInt8] {
    let digits = s.unicodeScalars.compactMap { c -> UInt8? in
        switch c {
        case "0"..."9": return UInt8(c.value - 48)
        case "a"..."f": return UInt8(c.value - 87)
        case "A"..."F": return UInt8(c.value - 55)
        default: return nil
        }
    }
    return stride(from: 0, to: digits.count - 1, by: 2).map { digits[$0] << 4 | digits[$0 + 1] }
}
