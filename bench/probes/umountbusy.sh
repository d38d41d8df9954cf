#!/usr/bin/env bash
# Does a concurrent `df` (which stats every mountpoint) make the unmount of a digimedfs mount
# fail with "target is busy"? Mounts, writes a file and unmounts N times, first alone, then
# beside a loop of `df -T -P`; counts failed unmounts (a failed one is retried after 0.2 s).
# UMOUNT: the unmount command [umount]; xfstests/umount-fuse retries such failures
# (docs/xfstests.md, "Known flakes"). Usage: umountbusy.sh [N]
. "$(dirname "$0")/common.sh"
n=${1:-60} UMOUNT=${UMOUNT:-umount}
fresh_mount busy
wait_exit() { while pgrep -f "digimedfs mount -f.*$B" >/dev/null; do sleep 0.05; done; }
fusermount3 -u "$M"; wait_exit
for mode in alone beside-df; do
    hog=
    if [[ $mode == beside-df ]]; then
        (while :; do df -T -P >/dev/null 2>&1; done) &
        hog=$!
    fi
    failed=0
    for ((i = 0; i < n; i++)); do
        "$BIN/digimedfs" mount --key-file "$Q/k" "$B" "$M" || { echo "mount failed" >&2; break; }
        echo x >"$M/f"
        if ! $UMOUNT "$M" 2>/dev/null; then
            failed=$((failed + 1))
            sleep 0.2
            umount "$M" || umount -l "$M"
        fi
        wait_exit
    done
    [[ -n $hog ]] && kill "$hog"
    echo "$mode: $UMOUNT failed $failed of $n"
done
