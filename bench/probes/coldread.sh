#!/usr/bin/env bash
# Cold sequential read and what the backing disk saw during it: for each variant, a fresh
# filesystem, a file of MB MiB written with dd (conv=fsync), caches dropped, the file read
# with dd bs=1M; prints MB/s and, from /proc/diskstats of DISK, the number of disk reads,
# their average size and the average number in flight (docs/performance.md, tuning table:
# READ_AHEAD_WINDOW). Variants alternate within each round.
# Usage: coldread.sh [rounds]; knobs: MB [1024], DISK [vda], VARIANTS [digimedfs
# digimedfs-uring gocryptfs], OLD_BIN (binaries for the variants digimedfs-old and
# digimedfs-uring-old).
. "$(dirname "$0")/common.sh"
rounds=${1:-3} MB=${MB:-1024} DISK=${DISK:-vda}
VARIANTS=${VARIANTS:-digimedfs digimedfs-uring gocryptfs}
uring_param=/sys/module/fuse/parameters/enable_uring
uring_was=$(cat $uring_param 2>/dev/null || echo N)
trap 'fusermount3 -u "$Q/mnt-cold" 2>/dev/null; echo "$uring_was" > $uring_param 2>/dev/null' EXIT
disk_stats() { awk -v d="$DISK" '$3==d {print $4, $6, $14}' /proc/diskstats; }
for ((r = 1; r <= rounds; r++)); do
    for v in $VARIANTS; do
        B=$Q/back-cold M=$Q/mnt-cold
        unmount_and_wait "$M" "$B"
        rm -rf "$B"; mkdir -p "$B" "$M"
        X=$BIN; [[ $v == *-old ]] && X=${OLD_BIN:?OLD_BIN not set}
        case $v in
        digimedfs-uring*)
            echo 1 > $uring_param
            "$X/mkfs-digimed" --tenant probe --key-file "$Q/k" "$B" >/dev/null
            "$X/digimedfs" mount --key-file "$Q/k" -o uring "$B" "$M" || exit 1 ;;
        digimedfs*)
            "$X/mkfs-digimed" --tenant probe --key-file "$Q/k" "$B" >/dev/null
            "$X/digimedfs" mount --key-file "$Q/k" -o nouring "$B" "$M" || exit 1 ;;
        gocryptfs)
            echo pw > "$Q/pw"
            gocryptfs -q -init -passfile "$Q/pw" "$B" >/dev/null 2>&1
            gocryptfs -q -passfile "$Q/pw" "$B" "$M" 2>/dev/null || exit 1 ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
        esac
        dd if=/dev/zero of="$M/seq.bin" bs=1M count="$MB" conv=fsync 2>/dev/null
        drop_caches
        read -r n1 s1 w1 < <(disk_stats)
        t0=$(date +%s.%N); dd if="$M/seq.bin" of=/dev/null bs=1M 2>/dev/null; t1=$(date +%s.%N)
        read -r n2 s2 w2 < <(disk_stats)
        awk -v r="$r" -v v="$v" -v t="$(echo "$t1 - $t0" | bc)" -v mb="$MB" -v n=$((n2 - n1)) \
            -v sec=$((s2 - s1)) -v w=$((w2 - w1)) 'BEGIN {
            printf "%d %-20s %6.0f MB/s  disk reads %6d  avg %5.0f KiB  in flight %5.2f\n",
                r, v, mb * 1.048576 / t, n, n ? sec / 2 / n : 0, w / (t * 1000) }'
        fusermount3 -u "$M"
        echo "$uring_was" > $uring_param 2>/dev/null
    done
done
