// Stand-alone check of the AF_XDP layer (Sources/CHereticXDP/xdp.c) on a veth pair, without
// Swift. Needs root. Build and run:
//
//   gcc -O2 -Wall -Wextra -I Sources/CHereticXDP/include -o /tmp/xdp-selftest
//       scripts/xdp/xdp-selftest.c Sources/CHereticXDP/xdp.c
//   /tmp/xdp-selftest [any|native|generic] [any|zerocopy|copy]
//
// It makes namespace `hxdp` holding veth end hxdp1 (10.78.0.1/24) whose peer hxdp0 stays in
// the root namespace with no address, attaches the redirect program and an AF_XDP socket to
// hxdp0, and pings 10.78.0.2 from the namespace. The frames must arrive on the socket's
// receive ring; this program answers the ARP request and the ICMP echo requests through the
// transmit ring, so the ping succeeding and `ip neigh` in the namespace showing our MAC prove
// both directions. The namespace (and the pair with it) is removed at the end.

#define _GNU_SOURCE
#include "heretic_xdp.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK 2048u
#define CHUNKS 4096u

static const uint8_t our_mac[6] = {0x02, 0x48, 0x58, 0x44, 0x50, 0x02};
static const uint8_t our_ip[4] = {10, 78, 0, 2};

static int sh(const char *command) {
    int rc = system(command);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void cleanup(void) { sh("ip netns del hxdp 2>/dev/null"); }

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint16_t checksum(const uint8_t *p, size_t n) {
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < n; i += 2) sum += (uint32_t)p[i] << 8 | p[i + 1];
    if (n & 1) sum += (uint32_t)p[n - 1] << 8;
    while (sum >> 16) sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

// Free chunks of the UMEM (a stack of offsets), as Heretic's pool would hand them out.
static uint64_t free_chunks[CHUNKS];
static uint32_t free_count;

int main(int argc, char **argv) {
    int mode = HERETIC_XDP_MODE_ANY;
    if (argc > 1 && strcmp(argv[1], "native") == 0) mode = HERETIC_XDP_MODE_NATIVE;
    if (argc > 1 && strcmp(argv[1], "generic") == 0) mode = HERETIC_XDP_MODE_GENERIC;
    int bind_mode = HERETIC_XSK_ANY;  // a second argument "zerocopy" or "copy" forces one
    if (argc > 2 && strcmp(argv[2], "zerocopy") == 0) bind_mode = HERETIC_XSK_ZEROCOPY;
    if (argc > 2 && strcmp(argv[2], "copy") == 0) bind_mode = HERETIC_XSK_COPY;
    if (getuid() != 0) { fprintf(stderr, "needs root\n"); return 2; }

    cleanup();
    const char *setup[] = {
        "ip netns add hxdp",
        "ip link add hxdp0 type veth peer name hxdp1 netns hxdp",
        "ip link set hxdp0 address 02:48:58:44:50:02",
        "sysctl -qw net.ipv6.conf.hxdp0.disable_ipv6=1",
        "ip -n hxdp link set lo up",
        "ip -n hxdp addr add 10.78.0.1/24 dev hxdp1",
        // The namespace's TCP would leave checksums partial; AF_XDP shows frames as they are.
        "ip netns exec hxdp ethtool -K hxdp1 tx off >/dev/null",
        "ip link set hxdp0 up",
        "ip -n hxdp link set hxdp1 up",
    };
    for (size_t i = 0; i < sizeof setup / sizeof setup[0]; i++) {
        if (sh(setup[i]) != 0) { fprintf(stderr, "FAIL: %s\n", setup[i]); cleanup(); return 1; }
    }
    int ifindex = heretic_if_index("hxdp0");

    void *umem = mmap(NULL, (size_t)CHUNK * CHUNKS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (umem == MAP_FAILED) { perror("mmap"); cleanup(); return 1; }
    for (uint32_t i = 0; i < CHUNKS; i++) free_chunks[free_count++] = (uint64_t)(CHUNKS - 1 - i) * CHUNK;

    heretic_xdp_program prog;
    int rc = heretic_xdp_attach(ifindex, 4, mode, &prog);
    if (rc < 0) { fprintf(stderr, "FAIL: %s: %s\n", prog.failed_step, strerror(-rc)); cleanup(); return 1; }
    printf("attached: %s XDP\n", prog.mode == HERETIC_XDP_MODE_NATIVE ? "native (driver)" : "generic (skb)");
    fflush(stdout);
    sh("ip link show hxdp0 | grep prog/xdp");

    heretic_xsk_config config = {
        .umem = umem, .umem_bytes = (uint64_t)CHUNK * CHUNKS, .chunk_size = CHUNK, .headroom = 0,
        .fill_size = 2048, .completion_size = 2048, .rx_size = 1024, .tx_size = 1024,
        .ifindex = ifindex, .queue = 0, .bind_mode = bind_mode,
    };
    int error;
    const char *step;
    heretic_xsk *xsk = heretic_xsk_open(&config, &error, &step);
    if (!xsk) { fprintf(stderr, "FAIL: %s: %s\n", step, strerror(-error)); heretic_xdp_detach(&prog); cleanup(); return 1; }
    printf("socket bound: %s, frames at offset %u of their chunk\n",
           heretic_xsk_zerocopy(xsk) ? "zero-copy" : "copy mode", heretic_xsk_rx_offset(xsk));
    if ((rc = heretic_xdp_map_set(&prog, 0, heretic_xsk_fd(xsk))) < 0) {
        fprintf(stderr, "FAIL: XSKMAP update: %s\n", strerror(-rc));
        heretic_xsk_close(xsk); heretic_xdp_detach(&prog); cleanup(); return 1;
    }

    // Give the kernel 1024 chunks to receive into.
    uint32_t filled = heretic_xsk_fill(xsk, &free_chunks[free_count - 1024], 1024);
    free_count -= filled;

    // Ping in the background; its output goes to a file we read at the end.
    sh("(ip netns exec hxdp ping -c 4 -i 0.2 -W 2 10.78.0.2 > /tmp/hxdp-ping.log 2>&1; echo $? > /tmp/hxdp-ping.rc) &");

    int arp_seen = 0, icmp_seen = 0, arp_sent = 0, icmp_sent = 0, completed = 0, bad_offset = 0, frames = 0;
    uint64_t deadline = now_ms() + 4000;
    heretic_xsk_desc rx[64];
    while (now_ms() < deadline) {
        uint32_t n = heretic_xsk_rx_peek(xsk, rx, 64);
        heretic_xsk_desc tx[64];
        uint32_t ntx = 0;
        for (uint32_t i = 0; i < n; i++) {
            frames++;
            uint8_t *f = (uint8_t *)umem + rx[i].addr;
            uint32_t len = rx[i].len;
            if (rx[i].addr % CHUNK != heretic_xsk_rx_offset(xsk)) bad_offset++;
            uint16_t type = (uint16_t)(f[12] << 8 | f[13]);
            printf("  rx %4u bytes at chunk %4llu + %llu: ethertype 0x%04x\n", len,
                   (unsigned long long)(rx[i].addr / CHUNK), (unsigned long long)(rx[i].addr % CHUNK), type);
            int answered = 0;
            if (type == 0x0806 && len >= 42 && f[21] == 1 && memcmp(f + 38, our_ip, 4) == 0) {
                arp_seen++;
                // Turn the request into the reply in its own chunk and send that chunk.
                memcpy(f, f + 6, 6);
                memcpy(f + 6, our_mac, 6);
                f[21] = 2;
                uint8_t sender_mac[6], sender_ip[4];
                memcpy(sender_mac, f + 22, 6);
                memcpy(sender_ip, f + 28, 4);
                memcpy(f + 22, our_mac, 6);
                memcpy(f + 28, our_ip, 4);
                memcpy(f + 32, sender_mac, 6);
                memcpy(f + 38, sender_ip, 4);
                tx[ntx++] = (heretic_xsk_desc){ .addr = rx[i].addr, .len = 42 };
                arp_sent++;
                answered = 1;
            } else if (type == 0x0800 && len >= 42 && f[23] == 1 && memcmp(f + 30, our_ip, 4) == 0 && f[34] == 8) {
                icmp_seen++;
                uint32_t ihl = (f[14] & 15u) * 4, total = (uint32_t)(f[16] << 8 | f[17]);
                uint8_t mac[6], ip[4];
                memcpy(mac, f, 6); memcpy(f, f + 6, 6); memcpy(f + 6, mac, 6);
                memcpy(ip, f + 26, 4); memcpy(f + 26, f + 30, 4); memcpy(f + 30, ip, 4);
                uint8_t *icmp = f + 14 + ihl;
                icmp[0] = 0;
                icmp[2] = icmp[3] = 0;
                uint16_t c = checksum(icmp, total - ihl);
                icmp[2] = (uint8_t)(c >> 8); icmp[3] = (uint8_t)c;
                f[24] = f[25] = 0;
                c = checksum(f + 14, ihl);
                f[24] = (uint8_t)(c >> 8); f[25] = (uint8_t)c;
                tx[ntx++] = (heretic_xsk_desc){ .addr = rx[i].addr, .len = 14 + total };
                icmp_sent++;
                answered = 1;
            }
            if (!answered) free_chunks[free_count++] = rx[i].addr - rx[i].addr % CHUNK;
        }
        heretic_xsk_rx_release(xsk, n);
        if (ntx > 0) {
            uint32_t posted = heretic_xsk_tx(xsk, tx, ntx);
            if (posted != ntx) printf("  tx ring full: %u of %u posted\n", posted, ntx);
            if ((rc = heretic_xsk_kick(xsk)) < 0) printf("  kick: %s\n", strerror(-rc));
        }
        uint64_t done[64];
        uint32_t c = heretic_xsk_complete(xsk, done, 64);
        for (uint32_t i = 0; i < c; i++) free_chunks[free_count++] = done[i] - done[i] % CHUNK;
        completed += (int)c;
        // Refill what the kernel used.
        uint32_t want = heretic_xsk_fill_room(xsk);
        if (want > free_count) want = free_count;
        if (want > 64) want = 64;
        free_count -= heretic_xsk_fill(xsk, &free_chunks[free_count - want], want);
        if (n == 0) usleep(1000);
        FILE *done_file = fopen("/tmp/hxdp-ping.rc", "r");
        if (done_file) { fclose(done_file); if (completed >= arp_sent + icmp_sent) break; }
    }
    // The ping finished (or the deadline passed): what did the namespace see?
    usleep(100000);
    int ping_rc = -1;
    FILE *f = fopen("/tmp/hxdp-ping.rc", "r");
    if (f) { if (fscanf(f, "%d", &ping_rc) != 1) ping_rc = -1; fclose(f); }
    printf("--- ping from the namespace (exit %d):\n", ping_rc);
    fflush(stdout);
    sh("cat /tmp/hxdp-ping.log | tail -3; echo '--- ip neigh in the namespace:'; ip -n hxdp neigh show 10.78.0.2");
    int neigh = sh("ip -n hxdp neigh show 10.78.0.2 | grep -q 02:48:58:44:50:02");
    heretic_xsk_statistics st;
    if (heretic_xsk_read_statistics(xsk, &st) == 0) {
        printf("kernel counters: rx_dropped %llu rx_invalid %llu tx_invalid %llu rx_ring_full %llu fill_empty %llu\n",
               (unsigned long long)st.rx_dropped, (unsigned long long)st.rx_invalid_descs,
               (unsigned long long)st.tx_invalid_descs, (unsigned long long)st.rx_ring_full,
               (unsigned long long)st.rx_fill_ring_empty_descs);
    }
    printf("frames %d, ARP requests %d (replied %d), ICMP echo requests %d (replied %d), completions %d, off-offset %d\n",
           frames, arp_seen, arp_sent, icmp_seen, icmp_sent, completed, bad_offset);
    heretic_xsk_close(xsk);
    heretic_xdp_detach(&prog);
    int attached_after = sh("ip link show hxdp0 | grep -q prog/xdp");
    cleanup();
    unlink("/tmp/hxdp-ping.rc");
    unlink("/tmp/hxdp-ping.log");
    munmap(umem, (size_t)CHUNK * CHUNKS);
    int ok = arp_seen > 0 && icmp_seen >= 4 && ping_rc == 0 && neigh == 0 && completed == arp_sent + icmp_sent
             && bad_offset == 0 && attached_after != 0;
    printf("%s\n", ok ? "PASS" : "FAIL");
    return ok ? 0 : 1;
}
