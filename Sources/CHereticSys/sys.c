#define _GNU_SOURCE
#include "CHereticSys.h"

#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <spawn.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int heretic_pin_current_thread(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

int heretic_available_cpus(void) {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

struct start_box { void (*body)(void *); void *context; };

static void *thread_main(void *raw) {
    struct start_box box = *(struct start_box *)raw;
    free(raw);
    box.body(box.context);
    return NULL;
}

int heretic_thread_start(uint64_t *handle, void (*body)(void *), void *context) {
    struct start_box *box = malloc(sizeof(*box));
    if (!box) return ENOMEM;
    box->body = body;
    box->context = context;
    pthread_t thread;
    int rc = pthread_create(&thread, NULL, thread_main, box);
    if (rc != 0) { free(box); return rc; }
    *handle = (uint64_t)thread;
    return 0;
}

int heretic_thread_join(uint64_t handle) { return pthread_join((pthread_t)handle, NULL); }

static _Thread_local int current_core __attribute__((tls_model("initial-exec"))) = -1;
static _Thread_local void *current_core_object __attribute__((tls_model("initial-exec"))) = NULL;
int heretic_current_core(void) { return current_core; }
void heretic_set_current_core(int index) { current_core = index; }
void *heretic_current_core_object(void) { return current_core_object; }
void heretic_set_current_core_object(void *core) { current_core_object = core; }

uint64_t heretic_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int heretic_eventfd_create(void) {
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

void heretic_eventfd_signal(int fd) {
    uint64_t one = 1;
    ssize_t rc;
    do { rc = write(fd, &one, sizeof(one)); } while (rc < 0 && errno == EINTR);
}

int heretic_eventfd_wait_ns(int fd, int64_t timeout_ns) {
    struct pollfd p = { .fd = fd, .events = POLLIN, .revents = 0 };
    struct timespec ts, *tp = NULL;
    if (timeout_ns >= 0) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000);
        ts.tv_nsec = (long)(timeout_ns % 1000000000);
        tp = &ts;
    }
    int rc;
    do { rc = ppoll(&p, 1, tp, NULL); } while (rc < 0 && errno == EINTR);
    if (rc <= 0) return 0;
    uint64_t value;
    while (read(fd, &value, sizeof(value)) > 0) {}
    return 1;
}

void heretic_close(int fd) { close(fd); }

/* Reads a small /proc file into `buffer` as a C string; returns 0 when unreadable. */
static int read_proc_file(const char *path, char *buffer, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buffer, size - 1);
    close(fd);
    if (n <= 0) return 0;
    buffer[n] = 0;
    return 1;
}

uint64_t heretic_rss_bytes(void) {
    char buffer[128];
    if (!read_proc_file("/proc/self/statm", buffer, sizeof(buffer))) return 0;
    char *cursor = buffer;
    strtoull(cursor, &cursor, 10);               /* total program size */
    unsigned long long resident = strtoull(cursor, NULL, 10);
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

#define HUGE_ALIGN ((size_t)2 << 20)

double heretic_cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double heretic_steal_seconds(void) {
    char buffer[512];
    if (!read_proc_file("/proc/stat", buffer, sizeof(buffer))) return 0;
    /* "cpu  user nice system idle iowait irq softirq steal ..." */
    char *cursor = buffer + 3;
    unsigned long long field = 0;
    for (int i = 0; i < 8; i++) field = strtoull(cursor, &cursor, 10);
    long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? (double)field / (double)hz : 0;
}

void *heretic_arena_map(size_t bytes, int huge) {
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (!huge) {
        void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, flags, -1, 0);
        return p == MAP_FAILED ? NULL : p;
    }
    /* Over-map, then trim to a 2 MiB boundary so the kernel can back it with huge pages. */
    size_t span = bytes + HUGE_ALIGN;
    char *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    char *aligned = (char *)(((uintptr_t)raw + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1));
    if (aligned > raw) munmap(raw, (size_t)(aligned - raw));
    char *end = aligned + bytes;
    char *rawEnd = raw + span;
    if (rawEnd > end) munmap(end, (size_t)(rawEnd - end));
#ifdef MADV_HUGEPAGE
    madvise(aligned, bytes, MADV_HUGEPAGE);
#endif
    return aligned;
}

size_t heretic_arena_release(void *address, size_t bytes) {
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t start = ((uintptr_t)address + page - 1) & ~(page - 1);
    uintptr_t end = ((uintptr_t)address + bytes) & ~(page - 1);
    if (end <= start) return 0;
    if (madvise((void *)start, end - start, MADV_DONTNEED) != 0) return 0;
    return end - start;
}

int heretic_heap_trim(void) {
#ifdef __GLIBC__
    return malloc_trim(0);
#else
    return 0;
#endif
}

void heretic_arena_unmap(void *address, size_t bytes) { if (address) munmap(address, bytes); }

struct heretic_latch { pthread_mutex_t mutex; pthread_cond_t cond; int open; };

heretic_latch *heretic_latch_create(void) {
    heretic_latch *l = calloc(1, sizeof(*l));
    if (!l) abort();
    pthread_mutex_init(&l->mutex, NULL);
    pthread_cond_init(&l->cond, NULL);
    return l;
}

void heretic_latch_destroy(heretic_latch *l) {
    pthread_cond_destroy(&l->cond);
    pthread_mutex_destroy(&l->mutex);
    free(l);
}

void heretic_latch_open(heretic_latch *l) {
    pthread_mutex_lock(&l->mutex);
    l->open = 1;
    pthread_cond_broadcast(&l->cond);
    pthread_mutex_unlock(&l->mutex);
}

void heretic_latch_wait(heretic_latch *l) {
    pthread_mutex_lock(&l->mutex);
    while (!l->open) pthread_cond_wait(&l->cond, &l->mutex);
    pthread_mutex_unlock(&l->mutex);
}

int heretic_latch_is_open(heretic_latch *l) {
    pthread_mutex_lock(&l->mutex);
    int open = l->open;
    pthread_mutex_unlock(&l->mutex);
    return open;
}

static int tap_open(char *name, int vnet) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -errno;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet ? IFF_VNET_HDR : 0);
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (vnet) {
        int size = 10;
        if (ioctl(fd, TUNSETVNETHDRSZ, &size) < 0 || ioctl(fd, TUNSETOFFLOAD, (unsigned long)TUN_F_CSUM) < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
    }
    strncpy(name, ifr.ifr_name, IFNAMSIZ);
    name[IFNAMSIZ - 1] = 0;
    return fd;
}

int heretic_tap_open(char *name) { return tap_open(name, 0); }
int heretic_tap_open_vnet(char *name) { return tap_open(name, 1); }

long heretic_fd_read(int fd, void *buffer, size_t capacity) {
    for (;;) {
        ssize_t n = read(fd, buffer, capacity);
        if (n >= 0) return (long)n;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        return -errno;
    }
}

int heretic_fd_write(int fd, const void *buffer, size_t length) {
    for (;;) {
        ssize_t n = write(fd, buffer, length);
        if (n >= 0) return 1;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS) return 0;
        return -errno;
    }
}

void heretic_fd_close(int fd) { if (fd >= 0) close(fd); }

extern char **environ;

int heretic_run(char *const argv[], char *output, size_t capacity) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) return -1;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
    posix_spawn_file_actions_adddup2(&actions, pipefd[1], 2);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &actions, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&actions);
    close(pipefd[1]);
    size_t used = 0;
    if (rc == 0) {
        char scratch[4096];
        for (;;) {
            ssize_t n = read(pipefd[0], scratch, sizeof scratch);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            size_t keep = (size_t)n;
            if (capacity > 0 && used + keep > capacity - 1) keep = capacity - 1 - used;
            if (keep > 0) { memcpy(output + used, scratch, keep); used += keep; }
        }
    }
    close(pipefd[0]);
    if (capacity > 0) output[used] = 0;
    if (rc != 0) return -1;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) { if (errno != EINTR) return -1; }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

const char *heretic_strerror(int err) { return strerror(err); }
