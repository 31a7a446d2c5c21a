// AF_XDP with raw system calls (see heretic_xdp.h). What was found on Linux 6.18 with a veth
// pair (the test-bed: one end in a namespace, the stack on the other):
//
// - Attaching goes through BPF_LINK_CREATE (attach_type BPF_XDP): the link owns the
//   attachment, so closing its descriptor, or the process dying, detaches the program; no
//   netlink is needed, and nothing is left on the interface by a crashed run.
// - veth has native XDP (ndo_bpf): attaching in driver mode works, and the program then runs
//   in veth's NAPI poll on the frames its peer sent. While a native program is attached, veth
//   turns GSO off on the peer, so the peer sends frames no larger than the MTU and they take
//   the NAPI path (a TSO frame would skip it and the program). Neither the peer nor this end
//   needs GRO or a program of its own for this direction.
// - veth has no zero-copy AF_XDP: the socket binds in copy mode (XDP_COPY). Received frames
//   are copied into the UMEM chunk from the fill ring; transmitted ones are copied into a
//   socket buffer inside sendto(), at most 32 per call, and handed to veth's xmit, which
//   delivers them to the peer like any other frame (the peer needs no XDP program for that:
//   copy-mode transmit does not use ndo_xdp_xmit).
// - Checksums: the peer's TCP leaves checksums partial on veth (checksum offload), and an
//   XDP program sees the bytes as they are, with no metadata saying so. The test-bed turns
//   transmit checksumming off on the peer (`ethtool -K PEER tx off`) so frames arrive
//   complete.

#define _GNU_SOURCE
#include "heretic_xdp.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#ifdef __linux__

#include <linux/bpf.h>
#include <linux/if_link.h>
#include <linux/if_xdp.h>
#include <net/if.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AF_XDP
#define AF_XDP 44
#endif
#ifndef SOL_XDP
#define SOL_XDP 283
#endif

static long sys_bpf(int cmd, union bpf_attr *attr) {
    return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static int fail(heretic_xdp_program *p, const char *step, int error) {
    p->failed_step = step;
    return -error;
}

// The program, in the notation of the kernel's filter.h:
//   r2 = *(u32 *)(r1 + offsetof(struct xdp_md, rx_queue_index))
//   r1 = map[xsks]                     (ld_imm64, BPF_PSEUDO_MAP_FD)
//   r3 = XDP_PASS                      (what to do when slot r2 holds no socket)
//   call bpf_redirect_map              (helper 51)
//   exit                               (r0: XDP_REDIRECT, or XDP_PASS)
static int load_program(int map_fd, int *prog_fd, char *log, size_t log_size) {
    struct bpf_insn insns[] = {
        { .code = BPF_LDX | BPF_MEM | BPF_W, .dst_reg = BPF_REG_2, .src_reg = BPF_REG_1,
          .off = offsetof(struct xdp_md, rx_queue_index) },
        { .code = BPF_LD | BPF_DW | BPF_IMM, .dst_reg = BPF_REG_1, .src_reg = BPF_PSEUDO_MAP_FD, .imm = map_fd },
        { 0 },  // the upper 32 bits of the 64-bit immediate
        { .code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_3, .imm = XDP_PASS },
        { .code = BPF_JMP | BPF_CALL, .imm = BPF_FUNC_redirect_map },
        { .code = BPF_JMP | BPF_EXIT },
    };
    static const char license[] = "GPL";
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = BPF_PROG_TYPE_XDP;
    attr.insn_cnt = sizeof insns / sizeof insns[0];
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.license = (uint64_t)(uintptr_t)license;
    attr.expected_attach_type = BPF_XDP;
    strncpy(attr.prog_name, "heretic_xsk", sizeof attr.prog_name - 1);
    if (log && log_size > 0) {
        log[0] = 0;
        attr.log_level = 1;
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = (uint32_t)log_size;
    }
    long fd = sys_bpf(BPF_PROG_LOAD, &attr);
    if (fd < 0) return -errno;
    *prog_fd = (int)fd;
    return 0;
}

static int link_program(int prog_fd, int ifindex, uint32_t flags) {
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.link_create.prog_fd = (uint32_t)prog_fd;
    attr.link_create.target_ifindex = (uint32_t)ifindex;
    attr.link_create.attach_type = BPF_XDP;
    attr.link_create.flags = flags;
    long fd = sys_bpf(BPF_LINK_CREATE, &attr);
    return fd < 0 ? -errno : (int)fd;
}

int heretic_xdp_attach(int ifindex, uint32_t queues, int mode, heretic_xdp_program *p) {
    memset(p, 0, sizeof *p);
    p->ifindex = ifindex;
    p->map_fd = p->prog_fd = p->link_fd = -1;
    if (queues == 0) queues = 1;

    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_type = BPF_MAP_TYPE_XSKMAP;
    attr.key_size = 4;
    attr.value_size = 4;
    attr.max_entries = queues;
    strncpy(attr.map_name, "heretic_xsks", sizeof attr.map_name - 1);
    long map = sys_bpf(BPF_MAP_CREATE, &attr);
    if (map < 0) return fail(p, "create the XSKMAP (bpf BPF_MAP_CREATE)", errno);
    p->map_fd = (int)map;

    int rc = load_program(p->map_fd, &p->prog_fd, NULL, 0);
    if (rc < 0) {
        close(p->map_fd);
        p->map_fd = -1;
        return fail(p, "load the XDP program (bpf BPF_PROG_LOAD)", -rc);
    }

    int link = -EINVAL;
    if (mode == HERETIC_XDP_MODE_ANY || mode == HERETIC_XDP_MODE_NATIVE) {
        link = link_program(p->prog_fd, ifindex, XDP_FLAGS_DRV_MODE);
        if (link >= 0) p->mode = HERETIC_XDP_MODE_NATIVE;
    }
    if (link < 0 && (mode == HERETIC_XDP_MODE_ANY || mode == HERETIC_XDP_MODE_GENERIC)) {
        link = link_program(p->prog_fd, ifindex, XDP_FLAGS_SKB_MODE);
        if (link >= 0) p->mode = HERETIC_XDP_MODE_GENERIC;
    }
    if (link < 0) {
        close(p->prog_fd);
        close(p->map_fd);
        p->prog_fd = p->map_fd = -1;
        return fail(p, "attach the XDP program to the interface (bpf BPF_LINK_CREATE)", -link);
    }
    p->link_fd = link;
    return 0;
}

int heretic_xdp_map_set(const heretic_xdp_program *p, uint32_t queue, int xsk_fd) {
    uint32_t key = queue, value = (uint32_t)xsk_fd;
    union bpf_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.map_fd = (uint32_t)p->map_fd;
    attr.key = (uint64_t)(uintptr_t)&key;
    attr.value = (uint64_t)(uintptr_t)&value;
    attr.flags = BPF_ANY;
    return sys_bpf(BPF_MAP_UPDATE_ELEM, &attr) < 0 ? -errno : 0;
}

void heretic_xdp_detach(heretic_xdp_program *p) {
    if (p->link_fd >= 0) close(p->link_fd);  // detaches: the link is the attachment
    if (p->prog_fd >= 0) close(p->prog_fd);
    if (p->map_fd >= 0) close(p->map_fd);
    p->link_fd = p->prog_fd = p->map_fd = -1;
}

// MARK: The socket and its rings

// One ring as user space sees it. The kernel and we each own one index: for the fill and
// transmit rings we produce and the kernel consumes; for the receive and completion rings the
// reverse. Our own index is written with release ordering after the entries (so the kernel
// sees the entries before the index), the other side's is read with acquire ordering before
// the entries (so we see its entries after its index). `cached_*` spare reading the shared
// cache line on every call.
struct ring {
    uint32_t *producer;
    uint32_t *consumer;
    uint32_t *flags;
    void *entries;
    uint32_t size;
    uint32_t mask;
    uint32_t cached_producer;
    uint32_t cached_consumer;
    void *map;
    size_t map_bytes;
};

struct heretic_xsk {
    int fd;
    int zerocopy;
    uint32_t rx_offset;
    struct ring fill, completion, rx, tx;
};

static int map_ring(int fd, struct ring *r, const struct xdp_ring_offset *off, uint32_t size,
                    size_t entry_bytes, off_t pgoff) {
    size_t bytes = (size_t)off->desc + size * entry_bytes;
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, pgoff);
    if (m == MAP_FAILED) return -errno;
    r->map = m;
    r->map_bytes = bytes;
    r->producer = (uint32_t *)((char *)m + off->producer);
    r->consumer = (uint32_t *)((char *)m + off->consumer);
    r->flags = (uint32_t *)((char *)m + off->flags);
    r->entries = (char *)m + off->desc;
    r->size = size;
    r->mask = size - 1;
    r->cached_producer = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
    r->cached_consumer = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
    return 0;
}

static void unmap_ring(struct ring *r) {
    if (r->map) munmap(r->map, r->map_bytes);
    r->map = NULL;
}

static int is_power_of_two(uint32_t n) { return n != 0 && (n & (n - 1)) == 0; }

heretic_xsk *heretic_xsk_open(const heretic_xsk_config *c, int *error, const char **step) {
    *error = 0;
    *step = NULL;
#define FAIL(what, e) do { *step = (what); *error = -(e); goto failed; } while (0)
    heretic_xsk *x = calloc(1, sizeof *x);
    if (!x) { *error = -ENOMEM; *step = "allocate"; return NULL; }
    x->fd = -1;
    if (!is_power_of_two(c->chunk_size) || !is_power_of_two(c->fill_size) || !is_power_of_two(c->completion_size)
        || !is_power_of_two(c->rx_size) || !is_power_of_two(c->tx_size))
        FAIL("check the configuration (chunk and ring sizes must be powers of two)", EINVAL);

    x->fd = socket(AF_XDP, SOCK_RAW | SOCK_CLOEXEC, 0);
    if (x->fd < 0) FAIL("open the AF_XDP socket", errno);

    struct xdp_umem_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.addr = (uint64_t)(uintptr_t)c->umem;
    reg.len = c->umem_bytes;
    reg.chunk_size = c->chunk_size;
    reg.headroom = c->headroom;
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_REG, &reg, sizeof reg) != 0) FAIL("register the UMEM (XDP_UMEM_REG)", errno);
    x->rx_offset = c->headroom + HERETIC_XDP_PACKET_HEADROOM;

    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_FILL_RING, &c->fill_size, sizeof c->fill_size) != 0)
        FAIL("size the fill ring", errno);
    if (setsockopt(x->fd, SOL_XDP, XDP_UMEM_COMPLETION_RING, &c->completion_size, sizeof c->completion_size) != 0)
        FAIL("size the completion ring", errno);
    if (setsockopt(x->fd, SOL_XDP, XDP_RX_RING, &c->rx_size, sizeof c->rx_size) != 0) FAIL("size the receive ring", errno);
    if (setsockopt(x->fd, SOL_XDP, XDP_TX_RING, &c->tx_size, sizeof c->tx_size) != 0) FAIL("size the transmit ring", errno);

    struct xdp_mmap_offsets off;
    socklen_t len = sizeof off;
    if (getsockopt(x->fd, SOL_XDP, XDP_MMAP_OFFSETS, &off, &len) != 0) FAIL("read the ring offsets (XDP_MMAP_OFFSETS)", errno);
    int rc;
    if ((rc = map_ring(x->fd, &x->fill, &off.fr, c->fill_size, sizeof(uint64_t), XDP_UMEM_PGOFF_FILL_RING)) < 0)
        FAIL("map the fill ring", -rc);
    if ((rc = map_ring(x->fd, &x->completion, &off.cr, c->completion_size, sizeof(uint64_t), XDP_UMEM_PGOFF_COMPLETION_RING)) < 0)
        FAIL("map the completion ring", -rc);
    if ((rc = map_ring(x->fd, &x->rx, &off.rx, c->rx_size, sizeof(struct xdp_desc), XDP_PGOFF_RX_RING)) < 0)
        FAIL("map the receive ring", -rc);
    if ((rc = map_ring(x->fd, &x->tx, &off.tx, c->tx_size, sizeof(struct xdp_desc), XDP_PGOFF_TX_RING)) < 0)
        FAIL("map the transmit ring", -rc);

    struct sockaddr_xdp sa;
    memset(&sa, 0, sizeof sa);
    sa.sxdp_family = AF_XDP;
    sa.sxdp_ifindex = (uint32_t)c->ifindex;
    sa.sxdp_queue_id = c->queue;
    int bound = -1;
    if (c->bind_mode == HERETIC_XSK_ANY || c->bind_mode == HERETIC_XSK_ZEROCOPY) {
        sa.sxdp_flags = XDP_ZEROCOPY | XDP_USE_NEED_WAKEUP;
        bound = bind(x->fd, (struct sockaddr *)&sa, sizeof sa);
        if (bound == 0) x->zerocopy = 1;
    }
    if (bound != 0 && (c->bind_mode == HERETIC_XSK_ANY || c->bind_mode == HERETIC_XSK_COPY)) {
        sa.sxdp_flags = XDP_COPY | XDP_USE_NEED_WAKEUP;
        bound = bind(x->fd, (struct sockaddr *)&sa, sizeof sa);
    }
    if (bound != 0) FAIL("bind to the interface's queue", errno);
    return x;
failed:
    heretic_xsk_close(x);
    return NULL;
#undef FAIL
}

void heretic_xsk_close(heretic_xsk *x) {
    if (!x) return;
    unmap_ring(&x->fill);
    unmap_ring(&x->completion);
    unmap_ring(&x->rx);
    unmap_ring(&x->tx);
    if (x->fd >= 0) close(x->fd);
    free(x);
}

int heretic_xsk_fd(const heretic_xsk *x) { return x->fd; }
int heretic_xsk_zerocopy(const heretic_xsk *x) { return x->zerocopy; }
uint32_t heretic_xsk_rx_offset(const heretic_xsk *x) { return x->rx_offset; }

// Producer side: free slots, refreshing the consumer's index only when the cached one says
// there are fewer than wanted.
static uint32_t producer_room(struct ring *r, uint32_t wanted) {
    uint32_t room = r->size - (r->cached_producer - r->cached_consumer);
    if (room >= wanted) return room;
    r->cached_consumer = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
    return r->size - (r->cached_producer - r->cached_consumer);
}

// Consumer side: entries available, refreshing the producer's index when the cached one
// says there are fewer than wanted.
static uint32_t consumer_available(struct ring *r, uint32_t wanted) {
    uint32_t available = r->cached_producer - r->cached_consumer;
    if (available >= wanted) return available;
    r->cached_producer = __atomic_load_n(r->producer, __ATOMIC_ACQUIRE);
    return r->cached_producer - r->cached_consumer;
}

// Whether the kernel asked to be woken. The full fence orders our index store before this
// load: otherwise the kernel could set the flag after looking at the old index and we miss it.
static int needs_wakeup(const struct ring *r) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return (__atomic_load_n(r->flags, __ATOMIC_RELAXED) & XDP_RING_NEED_WAKEUP) != 0;
}

uint32_t heretic_xsk_fill_room(heretic_xsk *x) { return producer_room(&x->fill, x->fill.size); }

uint32_t heretic_xsk_fill(heretic_xsk *x, const uint64_t *addrs, uint32_t count) {
    struct ring *r = &x->fill;
    uint32_t room = producer_room(r, count);
    uint32_t n = count < room ? count : room;
    if (n == 0) return 0;
    uint64_t *slots = r->entries;
    for (uint32_t i = 0; i < n; i++) slots[(r->cached_producer + i) & r->mask] = addrs[i];
    r->cached_producer += n;
    __atomic_store_n(r->producer, r->cached_producer, __ATOMIC_RELEASE);
    heretic_xsk_rx_wake(x);
    return n;
}

int heretic_xsk_rx_wake(heretic_xsk *x) {
    if (!needs_wakeup(&x->fill)) return 0;
    recvfrom(x->fd, NULL, 0, MSG_DONTWAIT, NULL, NULL);
    return 1;
}

uint32_t heretic_xsk_rx_peek(heretic_xsk *x, heretic_xsk_desc *descs, uint32_t max) {
    struct ring *r = &x->rx;
    uint32_t available = consumer_available(r, max);
    uint32_t n = max < available ? max : available;
    const struct xdp_desc *slots = r->entries;
    for (uint32_t i = 0; i < n; i++) {
        const struct xdp_desc *d = &slots[(r->cached_consumer + i) & r->mask];
        descs[i].addr = d->addr;
        descs[i].len = d->len;
        descs[i].options = d->options;
    }
    return n;
}

void heretic_xsk_rx_release(heretic_xsk *x, uint32_t count) {
    struct ring *r = &x->rx;
    if (count == 0) return;
    r->cached_consumer += count;
    __atomic_store_n(r->consumer, r->cached_consumer, __ATOMIC_RELEASE);
}

uint32_t heretic_xsk_tx(heretic_xsk *x, const heretic_xsk_desc *descs, uint32_t count) {
    struct ring *r = &x->tx;
    uint32_t room = producer_room(r, count);
    uint32_t n = count < room ? count : room;
    if (n == 0) return 0;
    struct xdp_desc *slots = r->entries;
    for (uint32_t i = 0; i < n; i++) {
        struct xdp_desc *d = &slots[(r->cached_producer + i) & r->mask];
        d->addr = descs[i].addr;
        d->len = descs[i].len;
        d->options = 0;
    }
    r->cached_producer += n;
    __atomic_store_n(r->producer, r->cached_producer, __ATOMIC_RELEASE);
    return n;
}

uint32_t heretic_xsk_tx_pending(heretic_xsk *x) {
    struct ring *r = &x->tx;
    r->cached_consumer = __atomic_load_n(r->consumer, __ATOMIC_ACQUIRE);
    return r->cached_producer - r->cached_consumer;
}

int heretic_xsk_kick(heretic_xsk *x) {
    // Copy mode sends at most 32 frames per sendto and says EAGAIN while more wait; EAGAIN
    // without progress means the completion ring is full (reap, then kick again), EBUSY or
    // ENOBUFS that the device or memory is short: the frames stay in the ring for next time.
    uint32_t bound = x->tx.size / 32 + 2;
    for (uint32_t i = 0; i < bound; i++) {
        if (heretic_xsk_tx_pending(x) == 0 || !needs_wakeup(&x->tx)) return 0;
        uint32_t before = x->tx.cached_consumer;
        if (sendto(x->fd, NULL, 0, MSG_DONTWAIT, NULL, 0) >= 0) continue;
        int e = errno;
        if (e == EINTR) continue;
        if (e == EAGAIN || e == EWOULDBLOCK) {
            if (heretic_xsk_tx_pending(x) != 0 && x->tx.cached_consumer == before) return 0;
            continue;
        }
        if (e == EBUSY || e == ENOBUFS) return 0;
        return -e;
    }
    return 0;
}

uint32_t heretic_xsk_complete(heretic_xsk *x, uint64_t *addrs, uint32_t max) {
    struct ring *r = &x->completion;
    uint32_t available = consumer_available(r, max);
    uint32_t n = max < available ? max : available;
    if (n == 0) return 0;
    const uint64_t *slots = r->entries;
    for (uint32_t i = 0; i < n; i++) addrs[i] = slots[(r->cached_consumer + i) & r->mask];
    r->cached_consumer += n;
    __atomic_store_n(r->consumer, r->cached_consumer, __ATOMIC_RELEASE);
    return n;
}

int heretic_xsk_read_statistics(const heretic_xsk *x, heretic_xsk_statistics *s) {
    struct xdp_statistics st;
    memset(&st, 0, sizeof st);
    socklen_t len = sizeof st;
    if (getsockopt(x->fd, SOL_XDP, XDP_STATISTICS, &st, &len) != 0) return -errno;
    s->rx_dropped = st.rx_dropped;
    s->rx_invalid_descs = st.rx_invalid_descs;
    s->tx_invalid_descs = st.tx_invalid_descs;
    s->rx_ring_full = st.rx_ring_full;
    s->rx_fill_ring_empty_descs = st.rx_fill_ring_empty_descs;
    s->tx_ring_empty_descs = st.tx_ring_empty_descs;
    return 0;
}

int heretic_if_index(const char *name) { return (int)if_nametoindex(name); }

#else  // not Linux: no AF_XDP

int heretic_xdp_attach(int ifindex, uint32_t queues, int mode, heretic_xdp_program *p) {
    (void)ifindex; (void)queues; (void)mode;
    memset(p, 0, sizeof *p);
    p->map_fd = p->prog_fd = p->link_fd = -1;
    p->failed_step = "AF_XDP (Linux only)";
    return -EOPNOTSUPP;
}
int heretic_xdp_map_set(const heretic_xdp_program *p, uint32_t q, int fd) { (void)p; (void)q; (void)fd; return -EOPNOTSUPP; }
void heretic_xdp_detach(heretic_xdp_program *p) { (void)p; }
heretic_xsk *heretic_xsk_open(const heretic_xsk_config *c, int *error, const char **step) {
    (void)c; *error = -EOPNOTSUPP; *step = "AF_XDP (Linux only)"; return NULL;
}
void heretic_xsk_close(heretic_xsk *x) { (void)x; }
int heretic_xsk_fd(const heretic_xsk *x) { (void)x; return -1; }
int heretic_xsk_zerocopy(const heretic_xsk *x) { (void)x; return 0; }
uint32_t heretic_xsk_rx_offset(const heretic_xsk *x) { (void)x; return 0; }
uint32_t heretic_xsk_fill(heretic_xsk *x, const uint64_t *a, uint32_t n) { (void)x; (void)a; (void)n; return 0; }
uint32_t heretic_xsk_fill_room(heretic_xsk *x) { (void)x; return 0; }
uint32_t heretic_xsk_rx_peek(heretic_xsk *x, heretic_xsk_desc *d, uint32_t m) { (void)x; (void)d; (void)m; return 0; }
void heretic_xsk_rx_release(heretic_xsk *x, uint32_t n) { (void)x; (void)n; }
int heretic_xsk_rx_wake(heretic_xsk *x) { (void)x; return 0; }
uint32_t heretic_xsk_tx(heretic_xsk *x, const heretic_xsk_desc *d, uint32_t n) { (void)x; (void)d; (void)n; return 0; }
uint32_t heretic_xsk_tx_pending(heretic_xsk *x) { (void)x; return 0; }
int heretic_xsk_kick(heretic_xsk *x) { (void)x; return -EOPNOTSUPP; }
uint32_t heretic_xsk_complete(heretic_xsk *x, uint64_t *a, uint32_t m) { (void)x; (void)a; (void)m; return 0; }
int heretic_xsk_read_statistics(const heretic_xsk *x, heretic_xsk_statistics *s) { (void)x; (void)s; return -EOPNOTSUPP; }
int heretic_if_index(const char *name) { (void)name; return 0; }

#endif
