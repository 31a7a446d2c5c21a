#ifndef HERETIC_XDP_H
#define HERETIC_XDP_H

// AF_XDP with raw system calls: no libbpf, no libxdp. Two parts:
//
// 1. A tiny XDP program, loaded with bpf(2) and attached to one interface, that redirects
//    every frame arriving on receive queue q to the AF_XDP socket in slot q of its XSKMAP
//    (frames of queues without a socket go on to the kernel's stack: XDP_PASS).
// 2. An AF_XDP socket whose UMEM is memory the caller owns (Heretic's packet pool arena),
//    with its four rings mapped, and small batch functions over them.
//
// Linux only; elsewhere every function fails with -EOPNOTSUPP (or returns 0/NULL).

#include <stdint.h>
#include <stddef.h>

/// The kernel leaves this much room (XDP_PACKET_HEADROOM) before a received frame, after the
/// UMEM's own headroom: a frame received into chunk c starts at c + headroom + 256.
#define HERETIC_XDP_PACKET_HEADROOM 256

enum {
    /// Attach: try the driver's (native) XDP first, then generic (skb) XDP.
    HERETIC_XDP_MODE_ANY = 0,
    /// The driver runs the program on its receive path (XDP_FLAGS_DRV_MODE).
    HERETIC_XDP_MODE_NATIVE = 1,
    /// The kernel runs it on socket buffers, after the driver (XDP_FLAGS_SKB_MODE).
    HERETIC_XDP_MODE_GENERIC = 2,
};

/// The redirect program attached to one interface.
typedef struct heretic_xdp_program {
    int ifindex;
    int map_fd;   // the XSKMAP: key = receive queue, value = AF_XDP socket
    int prog_fd;
    int link_fd;  // the bpf_link holding the attachment: closing it detaches
    int mode;     // HERETIC_XDP_MODE_NATIVE or HERETIC_XDP_MODE_GENERIC once attached
    /// The step that failed (a static string), when attach returns an error.
    const char *failed_step;
} heretic_xdp_program;

/// Creates the XSKMAP (`queues` slots), loads the program and attaches it to `ifindex`:
/// native then generic for HERETIC_XDP_MODE_ANY, or only the mode asked for. Returns 0, or
/// -errno with `failed_step` naming what failed (nothing is left open then).
int heretic_xdp_attach(int ifindex, uint32_t queues, int mode, heretic_xdp_program *program);
/// Points slot `queue` of the program's map at an AF_XDP socket. Returns 0 or -errno.
int heretic_xdp_map_set(const heretic_xdp_program *program, uint32_t queue, int xsk_fd);
/// Detaches the program and closes its descriptors (safe to call twice).
void heretic_xdp_detach(heretic_xdp_program *program);

/// A descriptor of the receive and transmit rings (the layout of struct xdp_desc): `addr` is
/// the frame's offset from the start of the UMEM.
typedef struct heretic_xsk_desc {
    uint64_t addr;
    uint32_t len;
    uint32_t options;
} heretic_xsk_desc;

enum {
    /// Bind: try zero-copy first, then copy mode.
    HERETIC_XSK_ANY = 0,
    HERETIC_XSK_ZEROCOPY = 1,
    HERETIC_XSK_COPY = 2,
};

typedef struct heretic_xsk_config {
    /// The UMEM: page-aligned memory of the caller's, `umem_bytes` long, cut into chunks of
    /// `chunk_size` (a power of two, 2048 or 4096). The kernel pins it while the socket lives.
    void *umem;
    uint64_t umem_bytes;
    uint32_t chunk_size;
    /// Room the kernel leaves at the start of every chunk before its own 256 bytes.
    uint32_t headroom;
    /// Ring sizes, powers of two.
    uint32_t fill_size, completion_size, rx_size, tx_size;
    int ifindex;
    uint32_t queue;
    /// HERETIC_XSK_ANY, HERETIC_XSK_ZEROCOPY or HERETIC_XSK_COPY.
    int bind_mode;
} heretic_xsk_config;

/// Counters the kernel keeps for a socket (struct xdp_statistics).
typedef struct heretic_xsk_statistics {
    uint64_t rx_dropped;
    uint64_t rx_invalid_descs;
    uint64_t tx_invalid_descs;
    uint64_t rx_ring_full;
    uint64_t rx_fill_ring_empty_descs;
    uint64_t tx_ring_empty_descs;
} heretic_xsk_statistics;

typedef struct heretic_xsk heretic_xsk;

/// Opens an AF_XDP socket, registers the UMEM, sizes and maps the rings, and binds to
/// (ifindex, queue) with need-wakeup. NULL on failure, with -errno in `*error` and the step
/// that failed in `*failed_step`.
heretic_xsk *heretic_xsk_open(const heretic_xsk_config *config, int *error, const char **failed_step);
void heretic_xsk_close(heretic_xsk *xsk);
int heretic_xsk_fd(const heretic_xsk *xsk);
/// 1 when bound zero-copy (the NIC's DMA reaches the UMEM), 0 in copy mode.
int heretic_xsk_zerocopy(const heretic_xsk *xsk);
/// Where a received frame starts within its chunk: headroom + HERETIC_XDP_PACKET_HEADROOM.
uint32_t heretic_xsk_rx_offset(const heretic_xsk *xsk);

/// Gives the kernel up to `count` chunks (their UMEM offsets) to receive into; returns how
/// many fitted in the fill ring. Wakes the kernel if it asked to be.
uint32_t heretic_xsk_fill(heretic_xsk *xsk, const uint64_t *addrs, uint32_t count);
/// Room in the fill ring.
uint32_t heretic_xsk_fill_room(heretic_xsk *xsk);
/// Copies up to `max` received descriptors out of the receive ring (without consuming them);
/// returns how many.
uint32_t heretic_xsk_rx_peek(heretic_xsk *xsk, heretic_xsk_desc *descs, uint32_t max);
/// Consumes `count` descriptors peeked before, handing their ring slots back to the kernel.
void heretic_xsk_rx_release(heretic_xsk *xsk, uint32_t count);
/// When the kernel asked to be woken to receive (the fill-ring flag), wakes it. Returns 1
/// when it did.
int heretic_xsk_rx_wake(heretic_xsk *xsk);
/// Posts up to `count` frames to the transmit ring; returns how many fitted. They are
/// not sent before `heretic_xsk_kick`.
uint32_t heretic_xsk_tx(heretic_xsk *xsk, const heretic_xsk_desc *descs, uint32_t count);
/// Descriptors posted to the transmit ring that the kernel has not taken yet.
uint32_t heretic_xsk_tx_pending(heretic_xsk *xsk);
/// Makes the kernel send what the transmit ring holds, when it asked to be woken (copy mode
/// always does: it transmits inside this call, 32 frames per system call). Returns 0, or
/// -errno for a failure other than "busy, try later".
int heretic_xsk_kick(heretic_xsk *xsk);
/// Takes up to `max` UMEM offsets of sent frames from the completion ring; returns how many.
/// Their chunks are the caller's again.
uint32_t heretic_xsk_complete(heretic_xsk *xsk, uint64_t *addrs, uint32_t max);
/// The kernel's counters for the socket. Returns 0 or -errno.
int heretic_xsk_read_statistics(const heretic_xsk *xsk, heretic_xsk_statistics *statistics);

/// The index of the interface `name`, or 0 when there is none.
int heretic_if_index(const char *name);

#endif
