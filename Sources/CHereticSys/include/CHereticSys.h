#ifndef CHERETIC_SYS_H
#define CHERETIC_SYS_H

#include <stdint.h>
#include <stddef.h>

/// Pins the calling thread to one CPU. Returns 0 or an errno value.
int heretic_pin_current_thread(int cpu);
/// Number of CPUs this process may run on (its affinity mask).
int heretic_available_cpus(void);

/// Starts a joinable OS thread running `body(context)`. Returns 0 or an errno value.
int heretic_thread_start(uint64_t *handle, void (*body)(void *), void *context);
int heretic_thread_join(uint64_t handle);

/// The index of the Heretic core the calling thread runs, or -1 on a foreign thread.
int heretic_current_core(void);
void heretic_set_current_core(int index);
/// Opaque per-thread pointer to the running core object (NULL on foreign threads).
void *heretic_current_core_object(void);
void heretic_set_current_core_object(void *core);

/// Monotonic clock in nanoseconds.
uint64_t heretic_monotonic_ns(void);

/// An eventfd used to wake an idle core. Returns the fd or -errno.
int heretic_eventfd_create(void);
void heretic_eventfd_signal(int fd);
/// Waits until the fd is readable or `timeout_ns` passes (-1: forever) and drains it, so a
/// core can sleep to the exact start of its next timer tick. Returns 1 when signalled, 0 on timeout.
int heretic_eventfd_wait_ns(int fd, int64_t timeout_ns);
void heretic_close(int fd);

/// Resident set size of this process in bytes, read from /proc/self/statm (0 if unreadable).
uint64_t heretic_rss_bytes(void);

/// CPU time used by this process (user + system), in seconds.
double heretic_cpu_seconds(void);
/// Steal time of all CPUs since boot from /proc/stat, in seconds (0 if unavailable).
double heretic_steal_seconds(void);

/// Anonymous memory for arenas: reserved lazily (pages cost nothing until touched),
/// with transparent huge pages requested when `huge` is non-zero. NULL on failure.
void *heretic_arena_map(size_t bytes, int huge);
void heretic_arena_unmap(void *address, size_t bytes);
/// Gives the pages wholly inside [address, address + bytes) back to the kernel (they read as
/// zeros when touched again). Returns the bytes released.
size_t heretic_arena_release(void *address, size_t bytes);
/// Returns free heap memory to the kernel (glibc's malloc_trim); 0 where unavailable.
int heretic_heap_trim(void);

/// Asks the CPU to start loading the four cache lines at `p` (a frame's headers and a short
/// payload) ahead of use; `write` prepares them for writing.
static inline void heretic_prefetch_frame(const void *p, int write) {
    const char *c = (const char *)p;
    if (write) {
        __builtin_prefetch(c, 1, 3); __builtin_prefetch(c + 64, 1, 3);
        __builtin_prefetch(c + 128, 1, 3); __builtin_prefetch(c + 192, 1, 3);
    } else {
        __builtin_prefetch(c, 0, 3); __builtin_prefetch(c + 64, 0, 3);
        __builtin_prefetch(c + 128, 0, 3); __builtin_prefetch(c + 192, 0, 3);
    }
}

/// A one-shot latch a foreign thread can block on until a core opens it.
typedef struct heretic_latch heretic_latch;
heretic_latch *heretic_latch_create(void);
void heretic_latch_destroy(heretic_latch *latch);
void heretic_latch_open(heretic_latch *latch);
void heretic_latch_wait(heretic_latch *latch);
int heretic_latch_is_open(heretic_latch *latch);

/// Opens a TAP device (Ethernet frames, no packet-information header), non-blocking. `name`
/// (at least 16 bytes) holds the wanted name, or "" for the kernel's choice, and receives
/// the name given. Returns the descriptor, or -errno.
int heretic_tap_open(char *name);
/// The same with a 10-byte virtio-net header before every frame and checksum offload
/// negotiated (TUN_F_CSUM): the kernel may hand us packets whose checksum it left partial, and
/// takes ours partial. Returns -errno when the kernel refuses either.
int heretic_tap_open_vnet(char *name);
/// Reads one frame into `buffer`; returns its length, 0 when none is waiting, or -errno.
long heretic_fd_read(int fd, void *buffer, size_t capacity);
/// Writes one frame; returns 1 when sent, 0 when the device queue is full, or -errno.
int heretic_fd_write(int fd, const void *buffer, size_t length);
void heretic_fd_close(int fd);

/// Runs `argv` (argv[0] looked up in PATH) and waits for it; its standard output and error
/// go to `output` (up to `capacity` bytes, NUL-terminated). Returns the exit status, or -1
/// if it could not start (128 + signal if killed).
int heretic_run(char *const argv[], char *output, size_t capacity);

/// The text of an errno value.
const char *heretic_strerror(int err);

/// Child processes and termination signals (see heretic_process.h).
#include "heretic_process.h"

#endif
