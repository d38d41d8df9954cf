#!/bin/bash
# profile the digimedfs daemon: seq write+read 1 GiB, tar -xf; flat perf profiles
set -u
S=/var/tmp/dmprof; B=$S/back; M=$S/mnt; BIN=/var/tmp/digimedfs-bench/bin
[[ -x $BIN/digimedfs ]] || BIN=/work/main/target/release
rm -rf $S; mkdir -p $B $M
$BIN/digimedfs keygen $S/k && $BIN/mkfs-digimed --tenant bench --key-file $S/k $B >/dev/null
$BIN/digimedfs mount --key-file $S/k $B $M; sleep 1
PID=$(pgrep -n -x digimedfs); echo "daemon $PID"
prof() { # name cmd...
  local n=$1; shift
  sync; echo 3 > /proc/sys/vm/drop_caches
  perf record -F 999 -g -p $PID -o /tmp/benchmon/perf-$n.data -- sleep 600 >/dev/null 2>&1 &
  local pp=$!; sleep 0.5
  local t0=$(date +%s.%N); "$@"; local t1=$(date +%s.%N)
  kill -INT $pp; wait $pp
  echo "$n: $(echo "$t1 - $t0" | bc) s; $(grep -E "VmRSS|VmHWM" /proc/$PID/status | tr -s " \t\n" " ")"
  perf report -i /tmp/benchmon/perf-$n.data --no-children --sort sym --stdio 2>/dev/null | grep -v '^#' | grep '%' | head -40 > /tmp/benchmon/top-$n.txt
  perf report -i /tmp/benchmon/perf-$n.data --no-children --sort dso --stdio 2>/dev/null | grep '%' | head -10 > /tmp/benchmon/dso-$n.txt
}
for w in "$@"; do
 case $w in
  write) prof write dd if=/dev/zero of=$M/seq.bin bs=1M count=1024 conv=fsync ;;
  read) prof read dd if=$M/seq.bin of=/dev/null bs=1M ;;
  randread) dd if=/dev/urandom of=$M/r.bin bs=1M count=256 conv=fsync 2>/dev/null; prof randread fio --name=rr --filename=$M/r.bin --size=256M --rw=randread --bs=4k --ioengine=psync --time_based --runtime=10 --output-format=terse ;;
  tar) mkdir -p $M/tree; [[ -f /var/tmp/dmprof.tar ]] || tar -cf /var/tmp/dmprof.tar --hard-dereference --ignore-failed-read /usr/include /usr/share/doc /usr/lib/python3 /usr/share/vim /usr/share/perl /usr/share/zoneinfo /usr/share/mime /usr/share/i18n 2>/dev/null; prof tar tar -xf /var/tmp/dmprof.tar -C $M/tree ;;
  rm) prof rm rm -rf $M/tree ;;
 esac
done
grep VmHWM /proc/$PID/status
fusermount3 -u $M; sleep 2; rm -rf $S
