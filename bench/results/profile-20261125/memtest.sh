#!/bin/bash
S=/var/tmp/dmmem; BIN=/var/tmp/digimedfs-bench/bin
for arena in default 2; do
rm -rf $S; mkdir -p $S/b $S/m
$BIN/digimedfs keygen $S/k >/dev/null && $BIN/mkfs-digimed --tenant bench --key-file $S/k $S/b >/dev/null
if [[ $arena == default ]]; then $BIN/digimedfs mount --key-file $S/k $S/b $S/m; else MALLOC_ARENA_MAX=2 $BIN/digimedfs mount --key-file $S/k $S/b $S/m; fi
sleep 1; PID=$(pgrep -n -x digimedfs)
echo "arena=$arena pid=$PID start: $(grep VmHWM /proc/$PID/status)"
dd if=/dev/zero of=$S/m/f bs=1M count=1024 conv=fsync 2>/dev/null
echo " after 1GiB write: $(grep -E 'VmHWM|VmRSS' /proc/$PID/status | tr -s ' \t\n' ' ')"
grep -E '^(Rss|Anonymous)' /proc/$PID/smaps_rollup | tr -s ' \n' ' '; echo
mkdir $S/m/t; tar -xf /var/tmp/dmprof.tar -C $S/m/t
echo " after tar -xf: $(grep -E 'VmHWM|VmRSS' /proc/$PID/status | tr -s ' \t\n' ' ')"
grep -E '^(Rss|Anonymous)' /proc/$PID/smaps_rollup | tr -s ' \n' ' '; echo
fusermount3 -u $S/m; sleep 3
done
rm -rf $S
