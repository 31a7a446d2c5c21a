// echo-c: the floor of a kernel-socket TCP echo server, the peer that shows what Linux itself
// allows on one core. One thread, non-blocking sockets, epoll in edge-triggered mode.
//
//   echo-c [--port N]     listens on 127.0.0.1:N (default 7000; 0 picks a free port)
//
// Prints `ready <port>` once listening; SIGTERM or SIGINT ends it cleanly (exit 0).
//
// The hot path allocates nothing: one 64 KB read buffer serves the whole loop, and bytes go
// straight back with one send. Only when a send is short does the connection get a pending
// buffer (kept until it closes); while it holds bytes the connection stops reading, so the
// kernel's receive window, not this process, absorbs a client that does not read. A pending
// buffer therefore never holds more than one read's worth.
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum { READ_SIZE = 64 * 1024, BACKLOG = 4096, MAX_EVENTS = 256 };

/// What the loop keeps per connection, indexed by its descriptor. Most connections never
/// own a pending buffer; `pending` is allocated on the first short send.
struct conn {
    char *pending;     // READ_SIZE bytes once allocated
    uint32_t offset;   // first unsent byte in pending
    uint32_t length;   // end of the unsent bytes in pending
    uint8_t open;
};

static struct conn *conns;
static size_t conn_capacity;
static int epfd;
static char buffer[READ_SIZE];

static void die(const char *what) {
    perror(what);
    exit(1);
}

/// The slot of descriptor fd, growing the table (doubling) when a descriptor outgrows it.
static struct conn *slot(int fd) {
    if ((size_t)fd >= conn_capacity) {
        size_t capacity = conn_capacity ? conn_capacity : 1024;
        while (capacity <= (size_t)fd) capacity *= 2;
        struct conn *grown = realloc(conns, capacity * sizeof(*grown));
        if (!grown) die("realloc");
        memset(grown + conn_capacity, 0, (capacity - conn_capacity) * sizeof(*grown));
        conns = grown;
        conn_capacity = capacity;
    }
    return &conns[fd];
}

static void close_conn(int fd) {
    struct conn *c = &conns[fd];
    free(c->pending);
    *c = (struct conn){0};
    close(fd); // closing also removes it from the epoll set
}

/// Sends what is pending. Returns 1 when all of it is gone, 0 when the socket is full (wait
/// for EPOLLOUT), -1 when the connection failed and was closed.
static int flush_pending(int fd, struct conn *c) {
    while (c->offset < c->length) {
        ssize_t n = send(fd, c->pending + c->offset, c->length - c->offset, MSG_NOSIGNAL);
        if (n > 0) { c->offset += (uint32_t)n; continue; }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 0;
        close_conn(fd);
        return -1;
    }
    c->offset = c->length = 0;
    return 1;
}

/// Echoes n bytes of the shared buffer. Returns 1 when all were sent, 0 when the rest went
/// to the pending buffer, -1 when the connection failed and was closed.
static int echo(int fd, struct conn *c, size_t n) {
    size_t sent = 0;
    while (sent < n) {
        ssize_t w = send(fd, buffer + sent, n - sent, MSG_NOSIGNAL);
        if (w > 0) { sent += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) break;
        close_conn(fd);
        return -1;
    }
    if (sent == n) return 1;
    if (!c->pending && !(c->pending = malloc(READ_SIZE))) die("malloc");
    memcpy(c->pending, buffer + sent, n - sent);
    c->offset = 0;
    c->length = (uint32_t)(n - sent);
    return 0;
}

/// One readiness event on a connection: finish any pending output first (bytes go back in
/// order), then read and echo until the socket is drained or full.
static void serve(int fd, uint32_t events) {
    struct conn *c = &conns[fd];
    if (events & EPOLLERR) { close_conn(fd); return; }
    if (c->length > c->offset) {
        if (flush_pending(fd, c) <= 0) return;
        // Drained: reading was paused while bytes waited, so it resumes whatever the event.
    } else if (!(events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) {
        return; // writable, with nothing to send
    }
    for (;;) {
        ssize_t n = recv(fd, buffer, READ_SIZE, 0);
        if (n > 0) {
            if (echo(fd, c, (size_t)n) <= 0) return;
            // A short read drained the socket: anything arriving later raises a new edge, so
            // the read that would only say EAGAIN is skipped. After a hang-up, read on to EOF.
            if (n < READ_SIZE && !(events & (EPOLLRDHUP | EPOLLHUP))) return;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        close_conn(fd); // EOF (the peer closed) or an error
        return;
    }
}

/// Takes every connection waiting on the listener (edge-triggered: until EAGAIN).
static void accept_all(int listener) {
    for (;;) {
        int fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN) perror("accept4"); // EMFILE and the like: try at the next edge
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        slot(fd)->open = 1;
        // Registered once for both directions: no epoll_ctl when a send comes up short.
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.fd = fd};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) { perror("epoll_ctl"); close_conn(fd); }
    }
}

static int parse_port(int argc, char **argv) {
    int port = 7000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *end;
            long value = strtol(argv[++i], &end, 10);
            if (*end || value < 0 || value > 65535) { fprintf(stderr, "echo-c: bad port\n"); exit(2); }
            port = (int)value;
        } else {
            fprintf(stderr, "usage: %s [--port N]\n", argv[0]);
            exit(2);
        }
    }
    return port;
}

int main(int argc, char **argv) {
    int port = parse_port(argc, argv);

    // 1000+ connections need more descriptors than a 1024 soft limit leaves.
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit(RLIMIT_NOFILE, &limit);
    }

    // The signals arrive as readable bytes on a descriptor in the same epoll set.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    if (sigprocmask(SIG_BLOCK, &stop_signals, NULL) != 0) die("sigprocmask");
    int sigfd = signalfd(-1, &stop_signals, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sigfd < 0) die("signalfd");

    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener < 0) die("socket");
    int one = 1;
    if (setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) die("SO_REUSEADDR");
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(listener, (struct sockaddr *)&address, sizeof(address)) != 0) die("bind");
    if (listen(listener, BACKLOG) != 0) die("listen");
    socklen_t length = sizeof(address);
    if (getsockname(listener, (struct sockaddr *)&address, &length) != 0) die("getsockname");

    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.fd = listener};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, listener, &ev) != 0) die("epoll_ctl listener");
    ev = (struct epoll_event){.events = EPOLLIN, .data.fd = sigfd};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, sigfd, &ev) != 0) die("epoll_ctl signalfd");

    printf("ready %d\n", ntohs(address.sin_port));
    fflush(stdout);

    struct epoll_event events[MAX_EVENTS];
    for (int running = 1; running;) {
        int count = epoll_wait(epfd, events, MAX_EVENTS, -1);
        if (count < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < count; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) accept_all(listener);
            else if (fd == sigfd) running = 0;
            else if ((size_t)fd < conn_capacity && conns[fd].open) serve(fd, events[i].events);
        }
    }

    // Clean exit: every connection, the listener, the loop.
    for (size_t fd = 0; fd < conn_capacity; fd++)
        if (conns[fd].open) close_conn((int)fd);
    free(conns);
    close(listener);
    close(sigfd);
    close(epfd);
    return 0;
}
