#!/usr/bin/env bash
# Small-file times with the daemon and the workload placed on vCPUs in different ways
# (docs/performance.md, "What bounds each row"). Usage: placement.sh free|daemon0|both0
. "$(dirname "$0")/common.sh"
mode=${1:-free}
fresh_mount place
case $mode in daemon0 | both0) taskset -a -p -c 0 "$P" >/dev/null ;; esac
pre=(); [[ $mode == both0 ]] && pre=(taskset -c 0)
drop_caches
timed "tar -xf" "${pre[@]}" tar -xf "$TREE_TAR" -C "$M"
timed "ls -lR" "${pre[@]}" sh -c "ls -lR '$M' >/dev/null"
timed "rm -rf" "${pre[@]}" rm -rf "$M/usr"
fusermount3 -u "$M"
