#ifndef CHERETIC_KERNEL_H
#define CHERETIC_KERNEL_H

// Kernel sockets for the kernel-socket engine: io_uring through its raw system calls (no
// liburing: one less package to install, and the few operations used fit in one file), an
// epoll fallback, and the socket calls both need. Every call returns a value >= 0 or -errno.

#include <stdint.h>
#include <stddef.h>

/// One completion, as the engine sees it: io_uring's CQE, or an epoll event (res = the event
/// mask, flags = 0).
typedef struct heretic_completion {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
} heretic_completion;

// CQE flags the engine reads (io_uring's values).
#define HERETIC_CQE_F_BUFFER 1u
#define HERETIC_CQE_F_MORE 2u
#define HERETIC_CQE_BUFFER_SHIFT 16

typedef struct heretic_ring heretic_ring;

/// Opens a ring of `entries` submissions and `cq_entries` completions, with the setup flags
/// that suit one issuing thread (single issuer, deferred task work) where the kernel has them.
/// On success stores the ring and returns the setup flags used; -errno otherwise (ENOSYS: no
/// io_uring; EPERM: disabled by /proc/sys/kernel/io_uring_disabled).
int heretic_ring_open(heretic_ring **out, unsigned entries, unsigned cq_entries, unsigned first_mode);
void heretic_ring_close(heretic_ring *r);
/// Registers a provided-buffer ring `group` of `count` buffers (a power of two) of `size`
/// bytes, consumed incrementally where the kernel allows it. Only `target` buffers are in the
/// ring at a time, the most recently used first, so the memory receives land in stays warm;
/// the target doubles each time the ring runs dry. Returns 0 or -errno (EINVAL: kernel too old).
int heretic_ring_setup_buffers(heretic_ring *r, uint16_t group, unsigned count, unsigned size, unsigned target);
/// 1 when receives share buffers (incremental consumption), 0 when each takes a whole one.
int heretic_ring_buffers_incremental(heretic_ring *r);
unsigned heretic_ring_buffers_target(heretic_ring *r);
/// Where the data of the next completion that names buffer `id` starts.
void *heretic_ring_buffer_data(heretic_ring *r, uint16_t id);
/// Accounts a completion that named buffer `id` (every one, handled or not): the buffer goes
/// back to the held-back stack once the kernel is done with it.
void heretic_ring_buffer_done(heretic_ring *r, uint16_t id, int32_t res, uint32_t cqe_flags);
/// A receive found the ring empty: keep more buffers in it.
void heretic_ring_buffers_starved(heretic_ring *r);
/// Tops the ring up to its target from the held-back stack; visible to the kernel at once.
void heretic_ring_buffers_publish(heretic_ring *r);

// Submissions: each queues one SQE (submitting what is queued first if the queue is full)
// and returns 0, or -EBUSY if no SQE could be had.
int heretic_ring_accept_multishot(heretic_ring *r, int fd, uint64_t user_data);
/// Receives into a buffer of `group`: once, or (multishot) for as long as data comes.
int heretic_ring_recv(heretic_ring *r, int fd, uint16_t group, int multishot, uint64_t user_data);
int heretic_ring_send(heretic_ring *r, int fd, const void *buf, unsigned len, uint64_t user_data);
/// Connects `fd` to IPv4 `addr`:`port` (host order); the address is kept until submitted.
int heretic_ring_connect(heretic_ring *r, int fd, uint32_t addr, uint16_t port, uint64_t user_data);
/// Cancels every request on `fd`.
int heretic_ring_cancel_fd(heretic_ring *r, int fd, uint64_t user_data);
/// Multishot poll for readability of `fd` (the core's wake-up eventfd).
int heretic_ring_poll_multishot(heretic_ring *r, int fd, uint64_t user_data);
/// SQEs queued and not yet submitted.
/// For tests: makes every `every`-th submission fail for want of room (0: none), as when
/// the kernel takes no more.
void heretic_ring_fail_submissions(heretic_ring *r, unsigned every);
unsigned heretic_ring_pending(const heretic_ring *r);
/// Whether the kernel has completions to post or flush (deferred task work, CQ overflow):
/// an enter with GETEVENTS is due even with nothing to submit.
int heretic_ring_needs_enter(const heretic_ring *r);
/// Submits what is queued and runs completion work; with `wait_ns` >= 0 also waits for at
/// least one completion or until `wait_ns` passes (-1: no wait). Returns SQEs submitted or -errno.
int heretic_ring_enter(heretic_ring *r, int64_t wait_ns, int wait);
/// Copies up to `max` completions into `out` and consumes them; returns how many.
unsigned heretic_ring_reap(heretic_ring *r, heretic_completion *out, unsigned max);
/// Counters: enter system calls made, SQEs submitted.
uint64_t heretic_ring_enters(const heretic_ring *r);
uint64_t heretic_ring_submitted(const heretic_ring *r);

// epoll
int heretic_epoll_create(void);
/// Adds (op 1), modifies (2) or removes (3) `fd` with `events` and `data`.
int heretic_epoll_ctl(int ep, int op, int fd, uint32_t events, uint64_t data);
/// Waits up to `timeout_ms` (-1 forever, 0 not at all); events become completions.
int heretic_epoll_wait(int ep, heretic_completion *out, int max, int timeout_ms);
#define HERETIC_EPOLLIN 0x001u
#define HERETIC_EPOLLOUT 0x004u
#define HERETIC_EPOLLERR 0x008u
#define HERETIC_EPOLLHUP 0x010u
#define HERETIC_EPOLLRDHUP 0x2000u
#define HERETIC_EPOLLET (1u << 31)

// Sockets (IPv4 addresses and ports in host order).
/// A listening TCP socket bound to `addr`:`port` (SO_REUSEADDR, and SO_REUSEPORT when asked).
int heretic_tcp_listen(uint32_t addr, uint16_t port, int backlog, int reuse_port, int nonblocking);
int heretic_tcp_socket(int nonblocking);
/// Non-blocking connect: 0, -EINPROGRESS, or -errno.
int heretic_tcp_connect(int fd, uint32_t addr, uint16_t port);
int heretic_tcp_accept(int listen_fd);
int heretic_tcp_peer(int fd, uint32_t *addr, uint16_t *port);
int heretic_tcp_local(int fd, uint32_t *addr, uint16_t *port);
int heretic_tcp_set_nodelay(int fd, int on);
/// Keepalive after `idle` seconds without traffic, a probe every `interval` seconds, `count`
/// unanswered ending the connection; idle 0 turns it off. (On a listening socket, the
/// connections it accepts inherit the settings.)
int heretic_tcp_set_keepalive(int fd, int idle, int interval, int count);
/// Makes the next close send RST (SO_LINGER 0).
int heretic_tcp_set_linger_zero(int fd);
int heretic_tcp_shutdown_write(int fd);
/// The pending error on `fd` (SO_ERROR): 0 or a positive errno.
int heretic_socket_error(int fd);
/// Non-blocking receive and send (MSG_NOSIGNAL): bytes, 0 at end of stream, or -errno.
long heretic_sock_recv(int fd, void *buf, size_t len);
long heretic_sock_send(int fd, const void *buf, size_t len);
/// Non-blocking gathering send of `count` buffers (at most 64): bytes, or -errno.
long heretic_sock_sendv(int fd, const void *const *bases, const long *lens, int count);

// UDP (IPv4 addresses and ports in host order).
/// One received datagram: its length (at most the buffer's size; `truncated` when it was larger)
/// and its sender.
typedef struct heretic_datagram {
    uint32_t length;
    uint32_t address;
    uint16_t port;
    uint16_t truncated;
} heretic_datagram;
/// A non-blocking UDP socket bound to `addr`:`port` (SO_REUSEPORT when asked): fd or -errno.
int heretic_udp_bind(uint32_t addr, uint16_t port, int reuse_port);
int heretic_udp_local_port(int fd);
/// Receives up to `count` (at most 64) datagrams without blocking, the i-th into
/// `buffers + i * size`: how many, or -errno (-EAGAIN: none waiting).
int heretic_udp_receive(int fd, void *buffers, unsigned size, unsigned count, heretic_datagram *out);
/// Sends one datagram without blocking: bytes, or -errno (-EAGAIN: the socket buffer is full).
long heretic_udp_send(int fd, const void *buf, size_t len, uint32_t addr, uint16_t port);
/// Moves the calling thread into the network namespace `name` (made by `ip netns add`):
/// sockets it opens from then on live there. 0 or -errno.
int heretic_enter_netns(const char *name);
/// Drains a non-blocking eventfd.
void heretic_eventfd_drain(int fd);
/// /proc/sys/kernel/io_uring_disabled (0, 1 or 2; -1 when the file is absent).
int heretic_io_uring_disabled(void);

#endif
