import HereticTransport
import HereticCore

extension KernelNetwork: NetworkEngine {
    public typealias UDPSender = KernelUDPSocket

    /// Listens on `port` for connections read and written through `TCPSocket`s, as
    /// `Interface.listen` does on the user-space stack: iterate the listener or `accept()`.
    public func listen(port: UInt16, address: IPv4Address, backlog: Int = 4096,
                       receiveCapacity: Int = 65_536) throws(NetError) -> TCPListener {
        let arena = KernelArena<SocketHandler>(makeHandler: nil)
        let listener = TCPListener(port: try addListener(port: port, address: address, backlog: backlog, arena: arena))
        // The factory needs the listener, which needs the bound port: set once both exist.
        arena.factory = { [unowned(unsafe) self] in
            SocketHandler(socket: TCPSocket(engine: self, remote: TCPEndpoint(.any, 0), receiveCapacity: receiveCapacity),
                          listener: listener)
        }
        return listener
    }

    public func listen(port: UInt16, backlog: Int = 4096, receiveCapacity: Int = 65_536) throws(NetError) -> TCPListener {
        try listen(port: port, address: .any, backlog: backlog, receiveCapacity: receiveCapacity)
    }

    public func openSocket(to remote: Endpoint, timeoutMilliseconds: Int? = nil, receiveCapacity: Int = 65_536) -> TCPSocket {
        let socket = TCPSocket(engine: self, remote: remote, receiveCapacity: receiveCapacity)
        let key = ObjectIdentifier(SocketHandler.self)
        let arena: KernelArena<SocketHandler>
        if let a = connectArenas[key] {
            arena = unsafeDowncast(a, to: KernelArena<SocketHandler>.self)
        } else {
            arena = KernelArena<SocketHandler>(makeHandler: nil)
            register(arena)
            connectArenas[key] = arena
        }
        socket.ref = open(to: remote, timeoutMilliseconds: timeoutMilliseconds, arena: arena,
                          handler: arena.store(SocketHandler(socket: socket, listener: nil)))
        return socket
    }
}
