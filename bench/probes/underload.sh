#!/usr/bin/env bash
# Transports under CPU load: a getxattr round-trip loop and tar -xf of /usr/include onto a
# fresh filesystem, over /dev/fuse and over io_uring (`-o uring`), quiet and with busy-loop CPU
# hogs at normal priority running throughout (docs/performance.md, tuning table:
# MAX_DELAY_PER_REQUEST).
# Switches the fuse module's enable_uring on for the run and puts it back. AUTOGROUP=0 also
# switches the kernel's autogroups off for the run (kernel.sched_autogroup_enabled), so that
# the hogs share the daemon's scheduling group instead of competing with it as a group.
# Usage: [AUTOGROUP=0] underload.sh [rounds [hogs]]
. "$(dirname "$0")/common.sh"
rounds=${1:-2} hogs=${2:-2}
prog=$Q/getxattr-loop
[[ -x $prog ]] || { echo "build $prog first: run roundtrip.sh once" >&2; exit 1; }
inc=$Q/include.tar
[[ -f $inc ]] || tar -cf "$inc" /usr/include 2>/dev/null
switch=/sys/module/fuse/parameters/enable_uring
[[ -w $switch ]] || { echo "no $switch: this kernel has no FUSE over io_uring" >&2; exit 1; }
was=$(cat "$switch")
autogroup=/proc/sys/kernel/sched_autogroup_enabled
autogroup_was=$(cat "$autogroup" 2>/dev/null)
hog_pids=()
cleanup() {
    ((${#hog_pids[@]})) && kill "${hog_pids[@]}" 2>/dev/null
    echo "$was" >"$switch"
    [[ -n $autogroup_was ]] && echo "$autogroup_was" >"$autogroup"
}
trap cleanup EXIT
echo 1 >"$switch"
[[ ${AUTOGROUP:-} == 0 ]] && echo 0 >"$autogroup"
one() { # load label mount-args...
    local load=$1 label=$2 rt s e; shift 2
    fresh_mount underload "$@"
    touch "$M/f"
    rt=$("$prog" "$M/f" 20000)
    s=$(date +%s.%N); tar -xf "$inc" -C "$M"; e=$(date +%s.%N)
    printf '%-8s %-10s round trip %6s us  tar -xf %6.2f s\n' "$load" "$label" "$rt" "$(echo "$e - $s" | bc)"
    fusermount3 -u "$M"
}
for load in quiet "${hogs}hogs"; do
    if [[ $load != quiet ]]; then
        for ((i = 0; i < hogs; i++)); do (while :; do :; done) & hog_pids+=($!); done
        sleep 1
    fi
    for ((r = 1; r <= rounds; r++)); do
        one "$load" dev-fuse -o nouring
        one "$load" io_uring -o uring
    done
done
