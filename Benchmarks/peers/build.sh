#!/usr/bin/env bash
# Builds the peer echo servers of the side-by-side benchmark into Benchmarks/peers/bin/:
#   echo-c    C, epoll edge-triggered, one thread          (c/echo_epoll.c, gcc -O2)
#   echo-go   Go, a goroutine per connection, GOMAXPROCS 1  (go/, go build)
#   echo-nio  SwiftNIO, one event-loop thread               (../NIOEcho, swift build -c release)
# Idempotent: run it again and each is rebuilt from its sources (Go and SwiftPM reuse their
# caches). Installs golang-go with apt-get when `go` is missing. Exits non-zero, saying which
# step failed, when any of them does.
set -euo pipefail
cd "$(dirname "$0")"
here="$(pwd)"
bin="$here/bin"
mkdir -p "$bin"

fail() { echo "peers/build.sh: $*" >&2; exit 1; }

echo "== echo-c"
cc="${CC:-gcc}"
command -v "$cc" >/dev/null 2>&1 || fail "no C compiler ($cc) found"
"$cc" -O2 -Wall -Wextra -std=gnu11 -o "$bin/echo-c" c/echo_epoll.c \
    || fail "echo-c: $cc failed on c/echo_epoll.c"
echo "built $bin/echo-c"

echo "== echo-go"
if ! command -v go >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        echo "go not found: installing golang-go with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null 2>&1 || true
        apt-get install -y -qq golang-go >/dev/null || fail "echo-go: apt-get install golang-go failed"
    else
        fail "echo-go: go is not installed and there is no apt-get to install it"
    fi
fi
# HOME may be unset or read-only here: keep Go's caches under /tmp. No module downloads.
export GOCACHE="${GOCACHE:-/tmp/peers-go-cache}" GOPATH="${GOPATH:-/tmp/peers-go-path}"
export GOFLAGS="${GOFLAGS:-}" GOPROXY=off
(cd go && go build -trimpath -o "$bin/echo-go" .) || fail "echo-go: go build failed"
echo "built $bin/echo-go ($(go version | cut -d' ' -f3))"

echo "== echo-nio"
export PATH="/opt/swift/usr/bin:$PATH"
command -v swift >/dev/null 2>&1 || fail "echo-nio: no Swift toolchain (expected /opt/swift/usr/bin/swift)"
# One Swift build at a time fits this machine: every swift command takes the same lock.
(cd ../NIOEcho && flock /tmp/swift-build.lock swift build -c release) \
    || fail "echo-nio: swift build -c release failed in Benchmarks/NIOEcho"
# SwiftPM keeps .build/release pointing at the host triple's release folder.
nio="$(cd ../NIOEcho && pwd)/.build/release/NIOEcho"
[ -x "$nio" ] || fail "echo-nio: no binary at $nio"
cp -f "$nio" "$bin/echo-nio"
echo "built $bin/echo-nio (from $nio)"
