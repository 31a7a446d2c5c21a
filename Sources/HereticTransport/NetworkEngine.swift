import HereticCore

/// One core's network: Heretic's own stack on a packet path (`Interface`) or Linux's sockets
/// (`KernelNetwork`). A service written against this protocol, generic over the engine, runs
/// on either; the compiler specialises it for each, so the protocol costs nothing per packet.
///
/// Every call is made on the engine's core (the core whose loop polls it).
public protocol NetworkEngine: AnyObject {
    associatedtype UDPSender: UDPSocket

    // MARK: Handler structs (massive scale)

    /// Accepts TCP connections on `port` (0: a free port, where the engine can choose), each
    /// with a handler made by `makeHandler`; at most `backlog` wait to complete their
    /// handshake. Returns the port bound.
    @discardableResult
    func listenTCP<H: TCPHandler>(port: UInt16, backlog: Int, keepalive: TCPKeepalive?,
                                  _ makeHandler: @escaping () -> H) throws(NetError) -> UInt16
    /// Stops accepting on `port` (connections already accepted go on).
    func stopListening(port: UInt16)
    /// Opens a TCP connection to `remote`; `handler` hears of it (`connected`, or `closed`
    /// with `.refused` or `.timedOut`). With a timeout, an attempt still unanswered then
    /// closes as `.timedOut`. Returns the connection's handle (its local port may be 0 until
    /// it is connected).
    @discardableResult
    func connectTCP<H: TCPHandler>(to remote: Endpoint, timeoutMilliseconds: Int?, _ handler: H) -> TCPConnectionHandle
    /// Connections alive (accepted or connecting, not yet closed for the application).
    var connectionCount: Int { get }

    /// Binds a UDP handler to `port` (0: a free port); returns the port bound.
    @discardableResult
    func bindUDP<H: UDPHandler>(port: UInt16, _ handler: H) throws(NetError) -> UInt16
    func unbindUDP(port: UInt16)
    /// A socket for sending from `port` outside a datagram callback.
    func udpSocket(port: UInt16) -> UDPSender

    // MARK: Sockets (blocking-style calls in stackless tasks, and async/await)

    /// Listens on `port` for connections read and written through `TCPSocket`s: iterate the
    /// listener (`for await socket in listener`) or call `accept()` / `waitAcceptable`.
    func listen(port: UInt16, backlog: Int, receiveCapacity: Int) throws(NetError) -> TCPListener
    /// Starts a connection read and written through a `TCPSocket` (see `connect`).
    func openSocket(to remote: Endpoint, timeoutMilliseconds: Int?, receiveCapacity: Int) -> TCPSocket
}

extension NetworkEngine {
    /// Accepts connections on `port` with handlers from `makeHandler` (backlog 4,096, no keepalive).
    @inlinable @discardableResult
    public func listenTCP<H: TCPHandler>(port: UInt16, _ makeHandler: @escaping () -> H) throws(NetError) -> UInt16 {
        try listenTCP(port: port, backlog: 4096, keepalive: nil, makeHandler)
    }

    /// Opens a connection to `remote` with `handler` (no timeout but TCP's own).
    @inlinable @discardableResult
    public func connectTCP<H: TCPHandler>(to remote: Endpoint, _ handler: H) -> TCPConnectionHandle {
        connectTCP(to: remote, timeoutMilliseconds: nil, handler)
    }

    /// Listens for `TCPSocket` connections (backlog 4,096, 64 KiB receive buffers).
    public func listen(port: UInt16) throws(NetError) -> TCPListener {
        try listen(port: port, backlog: 4096, receiveCapacity: 65_536)
    }

    /// Starts a connection for blocking-style use: `event` is set with `.ok` once it is
    /// established, or with the failure. Wait on it in the task (with a timeout if wanted).
    public func connect(to remote: Endpoint, timeoutMilliseconds: Int? = nil, receiveCapacity: Int = 65_536,
                        notify event: EventRef<TCPStatus>) -> TCPSocket {
        let socket = openSocket(to: remote, timeoutMilliseconds: timeoutMilliseconds, receiveCapacity: receiveCapacity)
        socket.notifyConnected(event)
        return socket
    }

    /// Connects and waits for the handshake; throws `.refused`, `.timedOut` or `.cancelled`
    /// (a cancelled wait aborts the attempt).
    public func connect(to remote: Endpoint, timeoutMilliseconds: Int? = nil, receiveCapacity: Int = 65_536,
                        isolation: isolated (any Actor)? = #isolation) async throws(TCPError) -> TCPSocket {
        let socket = openSocket(to: remote, timeoutMilliseconds: timeoutMilliseconds, receiveCapacity: receiveCapacity)
        return try await socket.established(isolation: isolation)
    }
}
