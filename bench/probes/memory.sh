#!/usr/bin/env bash
# Daemon VmHWM/VmRSS after each step of a benchmark-like sequence (docs/performance.md, "Memory").
. "$(dirname "$0")/common.sh"
fresh_mount mem
hwm() { echo "$1: $(grep -E 'VmHWM|VmRSS' "/proc/$P/status" | tr -s ' \t' ' ' | tr '\n' ' ')"; }
dd if=/dev/zero of="$M/seq" bs=1M count=1024 conv=fsync 2>/dev/null; hwm "seq write"
drop_caches; dd if="$M/seq" of=/dev/null bs=1M 2>/dev/null; hwm "seq read"; rm "$M/seq"
dd if=/dev/urandom of="$M/rand.bin" bs=1M count=256 conv=fsync 2>/dev/null
drop_caches; fio --name=r --filename="$M/rand.bin" --size=256M --rw=randread --bs=4k --ioengine=psync --time_based --runtime=10 >/dev/null; hwm randread
drop_caches; fio --name=w --filename="$M/rand.bin" --size=256M --rw=randwrite --bs=4k --ioengine=psync --time_based --runtime=10 >/dev/null; hwm randwrite
mkdir "$M/tree"; tar -xf "$TREE_TAR" -C "$M/tree"; hwm extract
unmount_and_wait "$M" "$B"
"$BIN/digimedfs" mount --key-file "$Q/k" "$B" "$M"; P=$(pgrep -f "digimedfs mount -f.*$B" | head -1)
(cd "$M/tree" && find . -type f -exec cat {} + >/dev/null); hwm "read all (new daemon)"
rm -rf "$M/tree"; hwm "rm -rf"
fusermount3 -u "$M"
