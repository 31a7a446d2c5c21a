import HereticTransport
import HereticCore

extension Interface: NetworkEngine {
    public typealias UDPSender = StackUDPSocket

    public func listen(port: UInt16, backlog: Int = 4096, receiveCapacity: Int = 65_536) throws(NetError) -> TCPListener {
        let listener = TCPListener(port: port)
        let layer = tcp
        listener.port = try tcp.listen(port: port, backlog: backlog, receiveWindow: max(1460, receiveCapacity)) {
            SocketHandler(socket: TCPSocket(engine: layer, remote: TCPEndpoint(.any, 0), receiveCapacity: receiveCapacity),
                          listener: listener)
        }
        return listener
    }

    public func openSocket(to remote: Endpoint, timeoutMilliseconds: Int? = nil, receiveCapacity: Int = 65_536) -> TCPSocket {
        let socket = TCPSocket(engine: tcp, remote: remote, receiveCapacity: receiveCapacity)
        (socket.localPort, socket.ref) = tcp.connect(to: remote, timeoutMilliseconds: timeoutMilliseconds,
                                                     receiveWindow: socket.receiveCapacity,
                                                     handler: SocketHandler(socket: socket, listener: nil))
        return socket
    }
}
