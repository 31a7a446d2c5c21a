// Child processes and termination signals (see heretic_process.h).
#define _GNU_SOURCE
#include "heretic_process.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

int heretic_spawn(char *const argv[], int cpu, int *stdout_fd) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) return -errno;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    // The child inherits the parent's affinity: pin this thread for the spawn, then restore.
    cpu_set_t old, want;
    int pinned = 0;
    if (cpu >= 0 && pthread_getaffinity_np(pthread_self(), sizeof old, &old) == 0) {
        CPU_ZERO(&want);
        CPU_SET(cpu, &want);
        pinned = pthread_setaffinity_np(pthread_self(), sizeof want, &want) == 0;
    }
    // Signals blocked here (heretic_block_termination) must not stay blocked in the child.
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
    if (pinned) pthread_setaffinity_np(pthread_self(), sizeof old, &old);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(p[1]);
    if (rc != 0) {
        close(p[0]);
        return -rc;
    }
    *stdout_fd = p[0];
    return pid;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int heretic_read_line(int fd, char *buf, size_t capacity, int timeout_ms) {
    size_t n = 0;
    long long deadline = now_ms() + timeout_ms;
    while (n + 1 < capacity) {
        long long left = deadline - now_ms();
        if (left <= 0) return -1;
        struct pollfd pfd = {fd, POLLIN, 0};
        int r = poll(&pfd, 1, (int)left);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        char c;
        ssize_t got = read(fd, &c, 1);
        if (got <= 0) return -1;
        if (c == '\n') break;
        buf[n++] = c;
    }
    buf[n] = 0;
    return (int)n;
}

int heretic_signal(int pid, int sig) { return kill(pid, sig) < 0 ? -errno : 0; }

int heretic_wait_child(int pid, int timeout_ms) {
    long long deadline = now_ms() + timeout_ms;
    for (;;) {
        int status;
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r < 0) return -1;
        if (now_ms() >= deadline) return -1;
        usleep(2000);
    }
}

void heretic_block_termination(void) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
}

int heretic_wait_termination(int timeout_ms) {
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGINT);
    sigaddset(&s, SIGTERM);
    for (;;) {
        int sig;
        if (timeout_ms < 0) {
            sig = sigwaitinfo(&s, NULL);
        } else {
            struct timespec ts = {timeout_ms / 1000, (timeout_ms % 1000) * 1000000L};
            sig = sigtimedwait(&s, NULL, &ts);
        }
        if (sig > 0) return sig;
        if (errno == EAGAIN) return 0;
        if (errno != EINTR) return 0;
    }
}

double heretic_process_cpu_seconds(int pid) {
    clockid_t clock;
    struct timespec ts;
    if (clock_getcpuclockid((pid_t)pid, &clock) != 0 || clock_gettime(clock, &ts) != 0) return -1;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double heretic_process_user_seconds(int pid) {
    char path[64], buffer[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buffer, sizeof buffer - 1);
    close(fd);
    if (n <= 0) return -1;
    buffer[n] = 0;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    char *cursor = strrchr(buffer, ')');
    if (!cursor) return -1;
    cursor++;
    // Fields 3..13 (state .. cmajflt), then utime (14).
    for (int field = 3; field <= 13; field++) {
        while (*cursor == ' ') cursor++;
        while (*cursor && *cursor != ' ') cursor++;
    }
    unsigned long long ticks = strtoull(cursor, NULL, 10);
    long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? (double)ticks / (double)hz : -1;
}
