// Kernel sockets: io_uring through its system calls, epoll, and the socket calls the
// kernel-socket engine needs. See heretic_kernel.h.
#define _GNU_SOURCE
#include "heretic_kernel.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

// MARK: io_uring

// Newer than some distributions' headers (Linux 6.12).
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif
#define HERETIC_PBUF_RING_INC 2  // IOU_PBUF_RING_INC

struct heretic_ring {
    int fd;
    unsigned setup_flags;
    // Submission queue (shared with the kernel).
    unsigned *sq_head, *sq_tail, *sq_flags, *sq_array;
    unsigned sq_mask, sq_entries;
    struct io_uring_sqe *sqes;
    /// SQEs filled locally; published to the kernel at enter.
    unsigned sqe_tail;
    // Completion queue.
    unsigned *cq_head, *cq_tail;
    unsigned cq_mask;
    struct io_uring_cqe *cqes;
    void *ring_map;
    size_t ring_map_size;
    size_t sqes_size;
    /// Connect addresses, one per SQE slot (a slot is reused only after its SQE was consumed).
    struct sockaddr_in *addresses;
    /// For tests: every `fail_every`-th submission finds no room, as when the kernel does not
    /// take more (0: never).
    unsigned fail_every, fail_count;
    // The provided-buffer ring (one group).
    struct io_uring_buf_ring *br;
    size_t br_size;
    char *buffers;
    size_t buffers_size;
    unsigned buf_count, buf_size, buf_mask;
    uint16_t buf_group;
    uint16_t br_tail;
    /// Consumed incrementally (IOU_PBUF_RING_INC): many receives share a buffer, each
    /// starting where the last one ended (`buf_offset`), until it is used up.
    int buf_incremental;
    uint32_t *buf_offset;
    /// Buffers held back, most recently used on top; only `buf_target` are in the ring at once,
    /// so the few that are reused stay in the cache (the ring hands them out in order).
    uint16_t *buf_free;
    unsigned buf_free_count, buf_in_ring, buf_target;
    uint64_t buf_starved;
    uint64_t enters, submitted;
};

static int sys_setup(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned submit, unsigned min_complete, unsigned flags, void *arg, size_t argsz) {
    return (int)syscall(__NR_io_uring_enter, fd, submit, min_complete, flags, arg, argsz);
}

static int sys_register(int fd, unsigned op, void *arg, unsigned n) {
    return (int)syscall(__NR_io_uring_register, fd, op, arg, n);
}

int heretic_ring_open(heretic_ring **out, unsigned entries, unsigned cq_entries, unsigned first_mode) {
    // The flags that fit one issuing thread that polls its own completions, dropped one by
    // one on kernels that refuse them.
    const unsigned wanted[] = {
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG,
        IORING_SETUP_COOP_TASKRUN,
        0,
    };
    struct io_uring_params p;
    int fd = -EINVAL;
    unsigned used = 0;
    // first_mode 1..3 starts from a later entry (to compare modes by measurement).
    size_t first = first_mode;
    if (first >= sizeof wanted / sizeof wanted[0]) first = 0;
    for (size_t i = first; i < sizeof wanted / sizeof wanted[0]; i++) {
        memset(&p, 0, sizeof p);
        p.flags = wanted[i] | IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_CLAMP;
        p.cq_entries = cq_entries;
        fd = sys_setup(entries, &p);
        if (fd >= 0) { used = p.flags; break; }
        fd = -errno;
        if (fd != -EINVAL) return fd;  // ENOSYS, EPERM, ENOMEM: no flag changes that
    }
    if (fd < 0) return fd;
    if (!(p.features & IORING_FEAT_SINGLE_MMAP) || !(p.features & IORING_FEAT_NODROP)) {
        close(fd);
        return -EOPNOTSUPP;  // kernels older than 5.5: the epoll engine serves them
    }
    heretic_ring *r = calloc(1, sizeof *r);
    if (!r) { close(fd); return -ENOMEM; }
    r->fd = fd;
    r->setup_flags = used;
    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    r->ring_map_size = sq_size > cq_size ? sq_size : cq_size;
    r->ring_map = mmap(NULL, r->ring_map_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (r->ring_map == MAP_FAILED) { int e = -errno; close(fd); free(r); return e; }
    r->sqes_size = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED) {
        int e = -errno;
        munmap(r->ring_map, r->ring_map_size);
        close(fd);
        free(r);
        return e;
    }
    char *base = r->ring_map;
    r->sq_head = (unsigned *)(base + p.sq_off.head);
    r->sq_tail = (unsigned *)(base + p.sq_off.tail);
    r->sq_flags = (unsigned *)(base + p.sq_off.flags);
    r->sq_array = (unsigned *)(base + p.sq_off.array);
    r->sq_mask = *(unsigned *)(base + p.sq_off.ring_mask);
    r->sq_entries = p.sq_entries;
    r->cq_head = (unsigned *)(base + p.cq_off.head);
    r->cq_tail = (unsigned *)(base + p.cq_off.tail);
    r->cq_mask = *(unsigned *)(base + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(base + p.cq_off.cqes);
    // The indirection array maps slot i to SQE i once and for all.
    for (unsigned i = 0; i < p.sq_entries; i++) r->sq_array[i] = i;
    r->sqe_tail = *r->sq_tail;
    r->addresses = calloc(p.sq_entries, sizeof(struct sockaddr_in));
    if (!r->addresses) { heretic_ring_close(r); return -ENOMEM; }
    *out = r;
    return (int)used;
}

void heretic_ring_close(heretic_ring *r) {
    if (!r) return;
    if (r->br) munmap(r->br, r->br_size);
    if (r->buffers) munmap(r->buffers, r->buffers_size);
    free(r->buf_offset);
    free(r->buf_free);
    munmap(r->sqes, r->sqes_size);
    munmap(r->ring_map, r->ring_map_size);
    close(r->fd);  // the kernel cancels what is still in flight
    free(r->addresses);
    free(r);
}

int heretic_ring_setup_buffers(heretic_ring *r, uint16_t group, unsigned count, unsigned size, unsigned target) {
    if (count == 0 || (count & (count - 1)) != 0 || count > 32768 || r->br || target == 0) return -EINVAL;
    r->br_size = count * sizeof(struct io_uring_buf);
    r->br = mmap(NULL, r->br_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r->br == MAP_FAILED) { r->br = NULL; return -ENOMEM; }
    r->buffers_size = (size_t)count * size;
    // Touched only as the kernel fills buffers: the pages of buffers never handed out stay
    // unallocated.
    r->buffers = mmap(NULL, r->buffers_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    r->buf_offset = calloc(count, sizeof(uint32_t));
    r->buf_free = calloc(count, sizeof(uint16_t));
    int e = -ENOMEM;
    if (r->buffers != MAP_FAILED && r->buf_offset && r->buf_free) {
        struct io_uring_buf_reg reg;
        memset(&reg, 0, sizeof reg);
        reg.ring_addr = (uint64_t)(uintptr_t)r->br;
        reg.ring_entries = count;
        reg.bgid = group;
        // Incremental consumption where the kernel has it (6.12), whole buffers otherwise.
        reg.pad = HERETIC_PBUF_RING_INC;  // `flags` in newer headers
        r->buf_incremental = 1;
        e = 0;
        if (sys_register(r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
            reg.pad = 0;
            r->buf_incremental = 0;
            if (sys_register(r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) e = -errno;
        }
    }
    if (e != 0) {
        munmap(r->br, r->br_size);
        if (r->buffers != MAP_FAILED) munmap(r->buffers, r->buffers_size);
        free(r->buf_offset);
        free(r->buf_free);
        r->br = NULL;
        r->buffers = NULL;
        r->buf_offset = NULL;
        r->buf_free = NULL;
        return e;
    }
    r->buf_count = count;
    r->buf_size = size;
    r->buf_mask = count - 1;
    r->buf_group = group;
    r->br_tail = 0;
    r->buf_in_ring = 0;
    r->buf_target = target < count ? target : count;
    // Every buffer starts held back, buffer 0 on top.
    r->buf_free_count = count;
    for (unsigned i = 0; i < count; i++) r->buf_free[i] = (uint16_t)(count - 1 - i);
    heretic_ring_buffers_publish(r);
    return 0;
}

int heretic_ring_buffers_incremental(heretic_ring *r) { return r->buf_incremental; }
unsigned heretic_ring_buffers_target(heretic_ring *r) { return r->buf_target; }

void *heretic_ring_buffer_data(heretic_ring *r, uint16_t id) {
    return r->buffers + (size_t)id * r->buf_size + r->buf_offset[id];
}

void heretic_ring_buffer_done(heretic_ring *r, uint16_t id, int32_t res, uint32_t cqe_flags) {
    if (id >= r->buf_count) return;
    if (r->buf_incremental) {
        // The kernel moves past `res` bytes and keeps the buffer at the ring's head until it
        // is used up; a completion without data consumed nothing.
        if (res <= 0) return;
        r->buf_offset[id] += (uint32_t)res;
        if (cqe_flags & IORING_CQE_F_BUF_MORE) return;
    }
    r->buf_offset[id] = 0;
    if (r->buf_in_ring > 0) r->buf_in_ring--;
    if (r->buf_free_count < r->buf_count) r->buf_free[r->buf_free_count++] = id;
}

void heretic_ring_buffers_starved(heretic_ring *r) {
    r->buf_starved++;
    if (r->buf_target < r->buf_count) r->buf_target *= 2;
    if (r->buf_target > r->buf_count) r->buf_target = r->buf_count;
}

void heretic_ring_buffers_publish(heretic_ring *r) {
    if (!r->br) return;
    unsigned added = 0;
    while (r->buf_in_ring < r->buf_target && r->buf_free_count > 0) {
        uint16_t id = r->buf_free[--r->buf_free_count];
        struct io_uring_buf *b = &r->br->bufs[r->br_tail & r->buf_mask];
        b->addr = (uint64_t)(uintptr_t)(r->buffers + (size_t)id * r->buf_size);
        b->len = r->buf_size;
        b->bid = id;
        r->br_tail++;
        r->buf_in_ring++;
        added++;
    }
    if (added) __atomic_store_n(&r->br->tail, r->br_tail, __ATOMIC_RELEASE);
}

static struct io_uring_sqe *ring_sqe(heretic_ring *r, unsigned *slot) {
    if (r->fail_every && ++r->fail_count % r->fail_every == 0) return NULL;
    unsigned head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
    if (r->sqe_tail - head >= r->sq_entries) {
        // Full: submit what is queued (without waiting) and look again.
        heretic_ring_enter(r, -1, 0);
        head = __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
        if (r->sqe_tail - head >= r->sq_entries) return NULL;
    }
    unsigned i = r->sqe_tail & r->sq_mask;
    struct io_uring_sqe *sqe = &r->sqes[i];
    memset(sqe, 0, sizeof *sqe);
    r->sqe_tail++;
    if (slot) *slot = i;
    return sqe;
}

int heretic_ring_accept_multishot(heretic_ring *r, int fd, uint64_t user_data) {
    struct io_uring_sqe *s = ring_sqe(r, NULL);
    if (!s) return -EBUSY;
    s->opcode = IORING_OP_ACCEPT;
    s->fd = fd;
    s->ioprio = IORING_ACCEPT_MULTISHOT;
    s->accept_flags = SOCK_CLOEXEC;
    s->user_data = user_data;
    return 0;
}

int heretic_ring_recv(heretic_ring *r, int fd, uint16_t group, int multishot, uint64_t user_data) {
    struct io_uring_sqe *s = ring_sqe(r, NULL);
    if (!s) return -EBUSY;
    s->opcode = IORING_OP_RECV;
    s->fd = fd;
    s->ioprio = multishot ? IORING_RECV_MULTISHOT : 0;
    s->flags = IOSQE_BUFFER_SELECT;
    s->buf_group = group;
    s->user_data = user_data;
    return 0;
}

int heretic_ring_send(heretic_ring *r, int fd, const void *buf, unsigned len, uint64_t user_data) {
    struct io_uring_sqe *s = ring_sqe(r, NULL);
    if (!s) return -EBUSY;
    s->opcode = IORING_OP_SEND;
    s->fd = fd;
    s->addr = (uint64_t)(uintptr_t)buf;
    s->len = len;
    s->msg_flags = MSG_NOSIGNAL;
    s->user_data = user_data;
    return 0;
}

int heretic_ring_connect(heretic_ring *r, int fd, uint32_t addr, uint16_t port, uint64_t user_data) {
    unsigned slot;
    struct io_uring_sqe *s = ring_sqe(r, &slot);
    if (!s) return -EBUSY;
    struct sockaddr_in *sa = &r->addresses[slot];
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(addr);
    sa->sin_port = htons(port);
    s->opcode = IORING_OP_CONNECT;
    s->fd = fd;
    s->addr = (uint64_t)(uintptr_t)sa;
    s->off = sizeof *sa;
    s->user_data = user_data;
    return 0;
}

int heretic_ring_cancel_fd(heretic_ring *r, int fd, uint64_t user_data) {
    struct io_uring_sqe *s = ring_sqe(r, NULL);
    if (!s) return -EBUSY;
    s->opcode = IORING_OP_ASYNC_CANCEL;
    s->fd = fd;
    s->cancel_flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
    s->user_data = user_data;
    return 0;
}

int heretic_ring_poll_multishot(heretic_ring *r, int fd, uint64_t user_data) {
    struct io_uring_sqe *s = ring_sqe(r, NULL);
    if (!s) return -EBUSY;
    s->opcode = IORING_OP_POLL_ADD;
    s->fd = fd;
    s->poll32_events = POLLIN;
    s->len = IORING_POLL_ADD_MULTI;
    s->user_data = user_data;
    return 0;
}

void heretic_ring_fail_submissions(heretic_ring *r, unsigned every) {
    r->fail_every = every;
    r->fail_count = 0;
}

unsigned heretic_ring_pending(const heretic_ring *r) {
    return r->sqe_tail - *r->sq_tail;
}

int heretic_ring_needs_enter(const heretic_ring *r) {
    unsigned f = __atomic_load_n(r->sq_flags, __ATOMIC_RELAXED);
    return (f & (IORING_SQ_TASKRUN | IORING_SQ_CQ_OVERFLOW)) != 0;
}

int heretic_ring_enter(heretic_ring *r, int64_t wait_ns, int wait) {
    unsigned submit = r->sqe_tail - *r->sq_tail;
    if (submit) __atomic_store_n(r->sq_tail, r->sqe_tail, __ATOMIC_RELEASE);
    unsigned flags = IORING_ENTER_GETEVENTS;
    unsigned min_complete = 0;
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts;
    void *argp = NULL;
    size_t argsz = 0;
    if (wait) {
        min_complete = 1;
        if (wait_ns >= 0) {
            ts.tv_sec = wait_ns / 1000000000;
            ts.tv_nsec = wait_ns % 1000000000;
            memset(&arg, 0, sizeof arg);
            arg.ts = (uint64_t)(uintptr_t)&ts;
            argp = &arg;
            argsz = sizeof arg;
            flags |= IORING_ENTER_EXT_ARG;
        }
    }
    r->enters++;
    int n = sys_enter(r->fd, submit, min_complete, flags, argp, argsz);
    if (n < 0) {
        int e = errno;
        // A timeout or a signal ends a wait; what was queued was still submitted.
        if (e == ETIME || e == EINTR) return (int)submit;
        return -e;
    }
    r->submitted += (uint64_t)n;
    return n;
}

unsigned heretic_ring_reap(heretic_ring *r, heretic_completion *out, unsigned max) {
    unsigned head = *r->cq_head;
    unsigned tail = __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE);
    unsigned n = 0;
    while (head != tail && n < max) {
        const struct io_uring_cqe *c = &r->cqes[head & r->cq_mask];
        out[n].user_data = c->user_data;
        out[n].res = c->res;
        out[n].flags = c->flags;
        n++;
        head++;
    }
    if (n) __atomic_store_n(r->cq_head, head, __ATOMIC_RELEASE);
    return n;
}

uint64_t heretic_ring_enters(const heretic_ring *r) { return r->enters; }
uint64_t heretic_ring_submitted(const heretic_ring *r) { return r->submitted; }

// MARK: epoll

int heretic_epoll_create(void) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    return ep < 0 ? -errno : ep;
}

int heretic_epoll_ctl(int ep, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    ev.events = events;
    ev.data.u64 = data;
    int o = op == 1 ? EPOLL_CTL_ADD : op == 2 ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
    return epoll_ctl(ep, o, fd, &ev) < 0 ? -errno : 0;
}

int heretic_epoll_wait(int ep, heretic_completion *out, int max, int timeout_ms) {
    struct epoll_event events[256];
    if (max > 256) max = 256;
    int n = epoll_wait(ep, events, max, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        out[i].user_data = events[i].data.u64;
        out[i].res = (int32_t)events[i].events;
        out[i].flags = 0;
    }
    return n;
}

// MARK: sockets

static struct sockaddr_in ipv4(uint32_t addr, uint16_t port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(addr);
    sa.sin_port = htons(port);
    return sa;
}

int heretic_tcp_socket(int nonblocking) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblocking ? SOCK_NONBLOCK : 0), 0);
    return fd < 0 ? -errno : fd;
}

int heretic_tcp_listen(uint32_t addr, uint16_t port, int backlog, int reuse_port, int nonblocking) {
    int fd = heretic_tcp_socket(nonblocking);
    if (fd < 0) return fd;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    struct sockaddr_in sa = ipv4(addr, port);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, backlog) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

int heretic_tcp_connect(int fd, uint32_t addr, uint16_t port) {
    struct sockaddr_in sa = ipv4(addr, port);
    return connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ? -errno : 0;
}

int heretic_tcp_accept(int listen_fd) {
    int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static int endpoint(int fd, int peer, uint32_t *addr, uint16_t *port) {
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    int rc = peer ? getpeername(fd, (struct sockaddr *)&sa, &len) : getsockname(fd, (struct sockaddr *)&sa, &len);
    if (rc < 0) return -errno;
    *addr = ntohl(sa.sin_addr.s_addr);
    *port = ntohs(sa.sin_port);
    return 0;
}

int heretic_tcp_peer(int fd, uint32_t *addr, uint16_t *port) { return endpoint(fd, 1, addr, port); }
int heretic_tcp_local(int fd, uint32_t *addr, uint16_t *port) { return endpoint(fd, 0, addr, port); }

int heretic_tcp_set_nodelay(int fd, int on) {
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) < 0 ? -errno : 0;
}

int heretic_tcp_set_keepalive(int fd, int idle, int interval, int count) {
    int on = idle > 0;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) < 0) return -errno;
    if (!on) return 0;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof interval) < 0 ||
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count) < 0) return -errno;
    return 0;
}

int heretic_tcp_set_linger_zero(int fd) {
    struct linger l = {1, 0};
    return setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l) < 0 ? -errno : 0;
}

int heretic_tcp_shutdown_write(int fd) { return shutdown(fd, SHUT_WR) < 0 ? -errno : 0; }

int heretic_socket_error(int fd) {
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno;
    return err;
}

long heretic_sock_recv(int fd, void *buf, size_t len) {
    ssize_t n = recv(fd, buf, len, MSG_DONTWAIT);
    return n < 0 ? -errno : (long)n;
}

long heretic_sock_send(int fd, const void *buf, size_t len) {
    ssize_t n = send(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    return n < 0 ? -errno : (long)n;
}

long heretic_sock_sendv(int fd, const void *const *bases, const long *lens, int count) {
    struct iovec iov[64];
    if (count > 64) count = 64;
    for (int i = 0; i < count; i++) {
        iov[i].iov_base = (void *)bases[i];
        iov[i].iov_len = (size_t)lens[i];
    }
    struct msghdr msg = {0};
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)count;
    ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    return n < 0 ? -errno : (long)n;
}

// MARK: UDP

int heretic_udp_bind(uint32_t addr, uint16_t port, int reuse_port) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    if (reuse_port) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = ipv4(addr, port);
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

int heretic_udp_local_port(int fd) {
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) < 0) return -errno;
    return ntohs(a.sin_port);
}

int heretic_udp_receive(int fd, void *buffers, unsigned size, unsigned count, heretic_datagram *out) {
    enum { most = 64 };
    struct mmsghdr msgs[most];
    struct iovec iov[most];
    struct sockaddr_in from[most];
    if (count > most) count = most;
    for (unsigned i = 0; i < count; i++) {
        iov[i].iov_base = (char *)buffers + (size_t)i * size;
        iov[i].iov_len = size;
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &from[i];
        msgs[i].msg_hdr.msg_namelen = sizeof from[i];
    }
    int n = recvmmsg(fd, msgs, count, MSG_DONTWAIT, NULL);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) {
        out[i].length = msgs[i].msg_len;
        out[i].address = ntohl(from[i].sin_addr.s_addr);
        out[i].port = ntohs(from[i].sin_port);
        out[i].truncated = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? 1 : 0;
    }
    return n;
}

long heretic_udp_send(int fd, const void *buf, size_t len, uint32_t addr, uint16_t port) {
    struct sockaddr_in a = ipv4(addr, port);
    ssize_t n = sendto(fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&a, sizeof a);
    return n < 0 ? -errno : (long)n;
}

int heretic_enter_netns(const char *name) {
    char path[256];
    snprintf(path, sizeof path, "/var/run/netns/%s", name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = setns(fd, CLONE_NEWNET);
    int e = errno;
    close(fd);
    return rc < 0 ? -e : 0;
}

void heretic_eventfd_drain(int fd) {
    uint64_t v;
    while (read(fd, &v, sizeof v) == sizeof v) {}
}

int heretic_io_uring_disabled(void) {
    FILE *f = fopen("/proc/sys/kernel/io_uring_disabled", "r");
    if (!f) return -1;
    int v = -1;
    if (fscanf(f, "%d", &v) != 1) v = -1;
    fclose(f);
    return v;
}

