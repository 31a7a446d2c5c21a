// libFuzzer entry for every wire parser: built by scripts/fuzz together with
// Sources/HereticNet/Stack/Wire/*.swift (with Sources/HereticTransport/Address.swift), outside the package (libFuzzer needs -sanitize=fuzzer).
@_cdecl("LLVMFuzzerTestOneInput")
public func wireFuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: max(size, 1), alignment: 8)
    defer { buffer.deallocate() }
    buffer.copyMemory(from: data, byteCount: size)
    for verify in [true, false] {
        let d = Dissection.dissect(buffer, length: size, verifyChecksums: verify)
        precondition(d.payloadLength >= 0 && d.payloadLength <= size, "payload beyond the frame: \(d)")
        _ = d.description
    }
    return 0
}
