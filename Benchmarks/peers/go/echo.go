// echo-go: the TCP echo server a Go programmer would write, the peer for goroutines over the
// runtime's netpoller. One goroutine per connection copies what it reads back with a 64 KB
// buffer; a short write parks the goroutine until the socket is writable again, and while it
// waits it does not read, so a client that does not read is held back by TCP itself.
//
//	echo-go [--port N]     listens on 127.0.0.1:N (default 7000; 0 picks a free port)
//
// Prints `ready <port>` once listening; SIGTERM or SIGINT ends it cleanly (exit 0). Runs on
// one processor: GOMAXPROCS from the environment when set, 1 otherwise.
//
// The standard library already does what the other peers do by hand: the listener has
// SO_REUSEADDR, accepted connections have TCP_NODELAY, the descriptor limit is raised to its
// hard limit, and the listen backlog is the kernel's somaxconn (4096 on current kernels,
// which also caps the other peers' 4096).
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"
)

const bufferSize = 64 * 1024

// serve echoes one connection until the peer closes it or an error ends it.
func serve(conn net.Conn) {
	defer conn.Close()
	buffer := make([]byte, bufferSize)
	for {
		n, err := conn.Read(buffer)
		if n > 0 {
			// Write returns only when all n bytes are in the kernel (or on an error).
			if _, werr := conn.Write(buffer[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // io.EOF when the peer closed, or a reset
		}
	}
}

func main() {
	port := flag.Int("port", 7000, "TCP port on 127.0.0.1 (0 picks a free one)")
	flag.Parse()
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}

	listener, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo-go:", err)
		os.Exit(1)
	}

	// Stop on SIGTERM or SIGINT: closing the listener ends the accept loop below.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		listener.Close()
	}()

	// os.Stdout is unbuffered: the line is out when Printf returns.
	fmt.Printf("ready %d\n", listener.Addr().(*net.TCPAddr).Port)

	for {
		conn, err := listener.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				os.Exit(0) // open connections close with the process
			}
			// Temporary failures (EMFILE and the like): pause briefly, then keep accepting.
			fmt.Fprintln(os.Stderr, "echo-go: accept:", err)
			time.Sleep(5 * time.Millisecond)
			continue
		}
		go serve(conn)
	}
}
