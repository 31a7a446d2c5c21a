#!/usr/bin/env python3
"""Checks a peer echo server end to end: starts it, echoes, stops it.

    verify.py BIN [--port N] [--cpu C] [--stream-mb M]

  ready       the server prints `ready <port>` and accepts on 127.0.0.1
  ping-pong   1000 connections at once, 512 random bytes on each, 5 rounds, byte-exact echoes
  streaming   4 connections, each pushing M MB (default 50) in 512-byte messages from a writer
              thread while a reader thread checks every byte back
  slow reader one connection sends 16 MB while its reader waits a second: the server must
              buffer or hold back (short writes, EAGAIN) and still return every byte in order
  sigterm     SIGTERM with 1000 connections open ends the server with status 0 within 5 s

Prints one line per check and closes with 'N passed, N failed'; exits 1 when any failed.
"""
import argparse
import os
import random
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

MESSAGE = 512


def start(binary, port, cpu):
    argv = [binary, "--port", str(port)]
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + argv
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if len(line) != 2 or line[0] != "ready":
        proc.kill()
        raise RuntimeError(f"expected 'ready <port>', got {line!r}")
    return proc, int(line[1])


def recv_exact(sock, n):
    chunks, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise RuntimeError(f"connection closed after {got} of {n} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def open_many(port, count):
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    return socks


def ping_pong(port, conns=1000, rounds=5):
    socks = open_many(port, conns)
    try:
        for _ in range(rounds):
            sent = [os.urandom(MESSAGE) for _ in socks]
            for s, data in zip(socks, sent):
                s.sendall(data)
            for s, data in zip(socks, sent):
                back = recv_exact(s, MESSAGE)
                if back != data:
                    raise RuntimeError("an echo differs from what was sent")
    finally:
        for s in socks:
            s.close()
    return f"{conns} connections x {rounds} rounds x {MESSAGE} B exact"


def pattern(size, seed):
    """Pseudo-random bytes, cheap to regenerate: a 1 MB random block repeated."""
    block = random.Random(seed).randbytes(1 << 20)
    return (block * (size // len(block) + 1))[:size]


def stream_one(port, total, seed, message, reader_delay, errors, index):
    data = pattern(total, seed)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def writer():
        view = memoryview(data)
        try:
            for offset in range(0, total, message):
                s.sendall(view[offset:offset + message])
        except OSError as e:
            errors[index] = f"send: {e}"

    w = threading.Thread(target=writer)
    w.start()
    time.sleep(reader_delay)
    got = 0
    try:
        while got < total:
            chunk = s.recv(1 << 20)
            if not chunk:
                errors[index] = f"closed after {got} of {total} bytes"
                break
            if chunk != data[got:got + len(chunk)]:
                errors[index] = f"byte mismatch near offset {got}"
                break
            got += len(chunk)
    except OSError as e:
        errors[index] = f"recv: {e}"
    w.join()
    s.close()


def streaming(port, conns, megabytes, message=MESSAGE, reader_delay=0.0):
    total = megabytes << 20
    errors = [None] * conns
    threads = [threading.Thread(target=stream_one,
                                args=(port, total, 1000 + i, message, reader_delay, errors, i))
               for i in range(conns)]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    bad = [e for e in errors if e]
    if bad:
        raise RuntimeError("; ".join(bad))
    return f"{conns} x {megabytes} MB exact in {elapsed:.1f} s"


def sigterm(proc, port):
    socks = open_many(port, 1000)
    try:
        # One echo first, so every connection is accepted and live when the signal lands.
        for s in socks:
            s.sendall(b"x")
        for s in socks:
            recv_exact(s, 1)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise RuntimeError("still running 5 s after SIGTERM")
        if code != 0:
            raise RuntimeError(f"exited with status {code}")
        return f"exit 0 in {1000 * (time.monotonic() - began):.0f} ms with 1000 connections open"
    finally:
        for s in socks:
            s.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("binary")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=0, help="taskset core for the server (-1: none)")
    parser.add_argument("--stream-mb", type=int, default=50)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    proc, port = start(args.binary, args.port, None if args.cpu < 0 else args.cpu)
    print(f"ready: port {port}")
    passed = failed = 0
    checks = [
        ("ping-pong", lambda: ping_pong(port)),
        ("streaming", lambda: streaming(port, 4, args.stream_mb)),
        ("slow reader", lambda: streaming(port, 1, 16, message=64 << 10, reader_delay=1.0)),
        ("sigterm", lambda: sigterm(proc, port)),
    ]
    for name, check in checks:
        # A check returns what it saw, or raises: then it failed, and the others still run.
        try:
            result, ok = check(), True
        except Exception as e:
            result, ok = f"{type(e).__name__}: {e}", False
        print(f"{name}: {'ok' if ok else 'FAILED'}: {result}", flush=True)
        passed += ok
        failed += not ok
    if proc.poll() is None:
        proc.kill()
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
