import HereticCore

extension KernelNetwork {
    /// Listens on `port` for connections read and written through `TCPSocket`s, as
    /// `Interface.listen` does on the user-space stack: iterate the listener or `accept()`.
    public func listen(port: UInt16, address: IPv4Address = .any, backlog: Int = 4096,
                       receiveCapacity: Int = 65_536) throws(NetError) -> TCPListener {
        let arena = KernelArena<SocketHandler>(makeHandler: nil)
        let listener = TCPListener(port: try addListener(port: port, address: address, backlog: backlog, arena: arena))
        // The factory needs the listener, which needs the bound port: set once both exist.
        arena.factory = { [unowned(unsafe) self] in
            SocketHandler(socket: TCPSocket(kernel: self, remote: TCPEndpoint(.any, 0), receiveCapacity: receiveCapacity),
                          listener: listener)
        }
        return listener
    }

    /// Starts a connection for blocking-style use: `event` is set with `.ok` once it is
    /// established, or with the failure.
    public func connect(to remote: TCPEndpoint, timeoutMilliseconds: Int? = nil, receiveCapacity: Int = 65_536,
                        notify event: EventRef<TCPStatus>) -> TCPSocket {
        let socket = TCPSocket(kernel: self, remote: remote, receiveCapacity: receiveCapacity)
        socket.connectEvent = event
        socket.ref = openSocket(socket, to: remote, timeoutMilliseconds: timeoutMilliseconds)
        return socket
    }

    /// Connects and waits for the handshake; throws `.refused`, `.timedOut` or `.cancelled`.
    public func connect(to remote: TCPEndpoint, timeoutMilliseconds: Int? = nil, receiveCapacity: Int = 65_536,
                        isolation: isolated (any Actor)? = #isolation) async throws(TCPError) -> TCPSocket {
        let socket = TCPSocket(kernel: self, remote: remote, receiveCapacity: receiveCapacity)
        socket.ref = openSocket(socket, to: remote, timeoutMilliseconds: timeoutMilliseconds)
        runFinishing()  // a failure to even start is told now
        return try await socket.established(isolation: isolation)
    }

    func openSocket(_ socket: TCPSocket, to remote: TCPEndpoint, timeoutMilliseconds: Int?) -> UInt64 {
        let key = ObjectIdentifier(SocketHandler.self)
        let arena: KernelArena<SocketHandler>
        if let a = connectArenas[key] as? KernelArena<SocketHandler> {
            arena = a
        } else {
            arena = KernelArena<SocketHandler>(makeHandler: nil)
            register(arena)
            connectArenas[key] = arena
        }
        return open(to: remote, timeoutMilliseconds: timeoutMilliseconds, arena: arena,
                    handler: arena.store(SocketHandler(socket: socket, listener: nil)))
    }
}
