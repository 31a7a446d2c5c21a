#ifndef CHERETIC_PROCESS_H
#define CHERETIC_PROCESS_H

// Child processes and termination signals, for benchmarks that run servers and load
// generators side by side. Calls return values >= 0, or -errno.

#include <stddef.h>

/// Starts `argv` (searched in PATH) with its standard output on a pipe whose read end is
/// stored in `stdout_fd`, pinned to `cpu` (-1: not pinned). Returns the child's pid.
int heretic_spawn(char *const argv[], int cpu, int *stdout_fd);
/// Reads one line (without its newline) from `fd` into `buf`, waiting at most `timeout_ms`.
/// Returns its length, or -1 on timeout, end of file or error.
int heretic_read_line(int fd, char *buf, size_t capacity, int timeout_ms);
/// Sends `sig` to `pid`.
int heretic_signal(int pid, int sig);
/// Waits up to `timeout_ms` for `pid` to end; returns its exit status (128 + signal if
/// killed), or -1 if it is still running.
int heretic_wait_child(int pid, int timeout_ms);
/// CPU time (user plus system, every thread) process `pid` has used, in seconds; -1 if it
/// cannot be read.
double heretic_process_cpu_seconds(int pid);
/// The part of it spent in user space (from /proc/<pid>/stat, in clock ticks); -1 if unreadable.
double heretic_process_user_seconds(int pid);
/// Blocks SIGINT and SIGTERM in the calling thread (threads started after inherit it), so
/// `heretic_wait_termination` can take them.
void heretic_block_termination(void);
/// Waits for SIGINT or SIGTERM up to `timeout_ms` (-1: forever); returns the signal or 0.
int heretic_wait_termination(int timeout_ms);
#define HERETIC_SIGTERM 15
#define HERETIC_SIGKILL 9

#endif
