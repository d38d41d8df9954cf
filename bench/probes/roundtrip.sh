#!/usr/bin/env bash
# Cost of one FUSE round trip: microseconds per getxattr(2) of an absent user.* name, which
# sends one GETXATTR request and makes the daemon do next to nothing (docs/performance.md,
# "What bounds each row"). Measures digimedfs, and gocryptfs when it is installed, in
# alternating rounds. Usage: roundtrip.sh [rounds [calls]]
. "$(dirname "$0")/common.sh"
rounds=${1:-3} calls=${2:-100000}
prog=$Q/getxattr-loop
if [[ ! -x $prog ]]; then
    cat >"$prog.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <sys/xattr.h>
#include <time.h>
int main(int argc, char **argv) {
    if (argc != 3) return 2;
    long n = atol(argv[2]);
    char buf[16];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) getxattr(argv[1], "user.none", buf, sizeof buf);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.2f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3 / n);
    return 0;
}
C
    cc -O2 -o "$prog" "$prog.c" || exit 1
fi
G=$Q/mnt-rt-gocryptfs GB=$Q/back-rt-gocryptfs
for ((r = 1; r <= rounds; r++)); do
    fresh_mount rt
    touch "$M/f"
    echo "round $r digimedfs $("$prog" "$M/f" "$calls") us per request"
    fusermount3 -u "$M"
    if command -v gocryptfs >/dev/null; then
        fusermount3 -u "$G" 2>/dev/null
        rm -rf "$GB"; mkdir -p "$GB" "$G"
        gocryptfs -init -q -extpass "echo probe" "$GB" >/dev/null 2>&1 &&
            gocryptfs -q -extpass "echo probe" "$GB" "$G" 2>/dev/null || exit 1
        touch "$G/f"
        echo "round $r gocryptfs $("$prog" "$G/f" "$calls") us per request"
        fusermount3 -u "$G"
    fi
done
echo "raw ext4 (no FUSE): $(touch "$Q/rt-raw"; "$prog" "$Q/rt-raw" "$calls") us per call"
