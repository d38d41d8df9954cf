#!/usr/bin/env bash
# Side-by-side benchmark: digimedfs vs gocryptfs, CryFS, securefs, a plain FUSE
# passthrough (bindfs) and the raw backing filesystem, all backed by the same disk.
#
# Prints markdown tables of medians and of ratios to gocryptfs; it never judges.
# Must run as root (drop_caches, FUSE mounts).
#
# Environment knobs (defaults in brackets):
#   FS          filesystems to run        ["raw bindfs digimedfs gocryptfs cryfs securefs"]
#               digimedfs: mounted with its defaults, which serve requests over FUSE's io_uring
#               transport where the kernel allows it (see URING);
#               digimedfs-devfuse: digimedfs mounted with -o nouring (always /dev/fuse)
#   URING       1: switch the fuse module's enable_uring on for the run (as docs/operations.md
#               tells administrators to) and back afterwards; 0: leave the kernel's setting
#               [1 where the kernel has the switch, else 0]
#   WORKLOADS   workloads to run          ["seq rand tree mem"]
#               (mem = record peak VmHWM of each daemon; it piggybacks on the others)
#   REPS        repetitions of the rand and tree workloads  [3]
#   SEQ_REPS    repetitions of the seq workload  [3] (its cold read swings by 2x with the
#               host's cache of the virtual disk: SEQ_REPS=5 for a steadier median, at
#               about 2 more minutes)
#   SCRATCH     scratch dir (not tmpfs)   [/var/tmp/digimedfs-bench]
#   BACKING_ROOT  where every peer's backing dir (and raw's work dir) goes  [$SCRATCH/back]
#               e.g. a CephFS mount: BACKING_ROOT=$DIGIMEDFS_CEPH_A/bench (tests/cephfs/cluster);
#               mountpoints, logs, binaries and the tarball stay in SCRATCH
#   SEQ_MB      sequential file size, MiB [1024]
#   RAND_MB     fio file size, MiB        [256]
#   RAND_SECS   fio runtime per run, s    [5]
#   TREE_SRC    dirs packed into the tree tarball (see default below)
#   RESULTS     results file              [bench/results/results-<date>.md]
#   STEP_TIMEOUT  seconds before a single step counts as hung  [300]
#   NO_BUILD=1  do not run cargo build (use existing target/release binaries)
#   NO_INSTALL=1 do not apt-get install missing peers
#   KEEP_SCRATCH=1 leave the scratch directory behind
set -uo pipefail
SCRIPT_START=$(date +%s.%N)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
# shellcheck source=bench/proc.sh
. "$HERE/proc.sh"

FS="${FS:-raw bindfs digimedfs gocryptfs cryfs securefs}"
WORKLOADS="${WORKLOADS:-seq rand tree mem}"
REPS="${REPS:-3}"
SEQ_REPS="${SEQ_REPS:-3}"
SCRATCH="${SCRATCH:-/var/tmp/digimedfs-bench}"
SEQ_MB="${SEQ_MB:-1024}"
RAND_MB="${RAND_MB:-256}"
RAND_SECS="${RAND_SECS:-5}"
TREE_SRC="${TREE_SRC:-/usr/include /usr/share/doc /usr/lib/python3 /usr/share/vim /usr/share/perl /usr/share/zoneinfo /usr/share/mime /usr/share/i18n}"
STEP_TIMEOUT="${STEP_TIMEOUT:-300}"
STAMP="$(date +%Y%m%d-%H%M%S)"
RESULTS="${RESULTS:-$HERE/results/results-$STAMP.md}"
PW=pw

export CRYFS_FRONTEND=noninteractive CRYFS_NO_UPDATE_CHECK=true

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
has() { [[ " $2 " == *" $1 "* ]]; }

[[ $(id -u) -eq 0 ]] || die "run as root (needs drop_caches and FUSE mounts)"

# ---------------------------------------------------------------- setup
need_pkgs=()
for p in gocryptfs cryfs securefs bindfs fio; do
    command -v "$p" >/dev/null || need_pkgs+=("$p")
done
if ((${#need_pkgs[@]})); then
    [[ -n "${NO_INSTALL:-}" ]] && die "missing: ${need_pkgs[*]}"
    log "installing ${need_pkgs[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null ||
        die "apt-get install failed"
fi
command -v fusermount3 >/dev/null || die "fusermount3 missing"
command -v python3 >/dev/null || die "python3 missing (used for the report)"

# Any digimedfs variant in FS.
has_digimedfs() { has digimedfs "$FS" || has digimedfs-devfuse "$FS"; }

if [[ -z "${NO_BUILD:-}" ]] && has_digimedfs; then
    log "building digimedfs (release)"
    (cd "$REPO" && cargo build --release --workspace --bins -q) || die "cargo build failed"
fi

mkdir -p "$SCRATCH" || die "cannot create $SCRATCH"
SCRATCH="$(cd "$SCRATCH" && pwd)"
# One run per scratch directory: a second would share (and overwrite) the first's binaries,
# keys, backing directories and mounts.
exec 9>"$SCRATCH/.run.lock"
flock -n 9 || die "another bench/run.sh is running in $SCRATCH"
BACK="${BACKING_ROOT:-$SCRATCH/back}"
mkdir -p "$BACK" || die "cannot create $BACK"
BACK="$(cd "$BACK" && pwd)"
back_fstype="$(findmnt -n -o FSTYPE -T "$BACK")"
[[ "$back_fstype" == tmpfs || "$back_fstype" == ramfs ]] && die "$BACK is on $back_fstype; use a disk-backed or network dir"
fstype="$(findmnt -n -o FSTYPE -T "$SCRATCH")"
[[ "$fstype" == tmpfs || "$fstype" == ramfs ]] && die "$SCRATCH is on $fstype; use a disk-backed dir"

# Snapshot the binaries: others may rebuild target/ while we run.
BIN="$SCRATCH/bin"
mkdir -p "$BIN" "$SCRATCH/logs" "$SCRATCH/mnt"
if has_digimedfs; then
    cp "$REPO/target/release/digimedfs" "$REPO/target/release/mkfs-digimed" "$BIN/" || die "digimedfs binaries missing"
    # Record what was snapshotted: HEAD may move while the benchmark runs.
    BIN_REV="$(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)$(cd "$REPO" && [[ -n "$(git status --porcelain -- fs mkfs 2>/dev/null)" ]] && echo ' (+uncommitted changes in fs/ or mkfs/)')"
    BIN_TIME="$(date -r "$REPO/target/release/digimedfs" '+%F %T')"
fi
DATA="$SCRATCH/data.tsv"      # fs \t metric \t rep \t value
FAILS="$SCRATCH/failures.txt"
: >"$DATA"
: >"$FAILS"

MOUNTED=()
cleanup() {
    local m
    for m in "${MOUNTED[@]}"; do
        if mountpoint -q "$m" 2>/dev/null; then
            fusermount3 -u "$m" 2>/dev/null || fusermount3 -uz "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
        fi
    done
    [[ -n "${URING_WAS:-}" ]] && echo "$URING_WAS" >"$URING_SWITCH" 2>/dev/null
    if [[ -z "${KEEP_SCRATCH:-}" && -n "$SCRATCH" ]]; then
        rm -rf "$SCRATCH/mnt" "$SCRATCH/tree.tar" 2>/dev/null
        if [[ "$BACK" == "$SCRATCH/back" ]]; then rm -rf "$BACK" 2>/dev/null; else rmdir "$BACK" 2>/dev/null; fi
    fi
}
trap cleanup EXIT
URING_SWITCH=/sys/module/fuse/parameters/enable_uring
if [[ -z "${URING:-}" ]]; then
    if [[ -w $URING_SWITCH ]]; then URING=1; else URING=0; fi
fi
if [[ $URING == 1 ]] && has_digimedfs; then
    [[ -w $URING_SWITCH ]] || die "URING=1 needs FUSE over io_uring ($URING_SWITCH: Linux 6.14+)"
    URING_WAS=$(cat "$URING_SWITCH")
    echo 1 >"$URING_SWITCH"
fi
trap 'log "interrupted"; exit 130' INT TERM

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$DATA"; }

# fail FS METRIC REP CMD LOGFILE
fail() {
    record "$1" "$2" "$3" FAIL
    {
        echo "### $1 / $2 / rep $3"
        echo "command: $4"
        echo '```'
        tail -n 30 "$5" 2>/dev/null
        echo '```'
    } >>"$FAILS"
    log "FAIL: $1 $2 rep $3 (see $5)"
}

# ------------------------------------------------------------ per-fs ops
# Each fs has: backing dir B, mountpoint M, and the dir the workloads use (W).
fs_init() { # fs
    local fs=$1 B="$BACK/$1"
    rm -rf "$B"
    mkdir -p "$B" "$SCRATCH/mnt/$fs"
    case $fs in
    raw | bindfs) ;;
    digimedfs | digimedfs-devfuse)
        rm -f "$SCRATCH/$fs.key"
        "$BIN/digimedfs" keygen "$SCRATCH/$fs.key" &&
            "$BIN/mkfs-digimed" --tenant bench --key-file "$SCRATCH/$fs.key" "$B" ;;
    gocryptfs) gocryptfs -q -init -extpass "echo $PW" "$B" ;;
    cryfs) ;; # created by the first mount
    securefs) securefs create --pass "$PW" "$B" ;;
    *) die "unknown fs $fs" ;;
    esac
}

fs_mount() { # fs
    local fs=$1 B="$BACK/$1" M="$SCRATCH/mnt/$1"
    case $fs in
    raw) return 0 ;;
    # big_writes: Debian's bindfs is built on libfuse 2, whose default is one WRITE per 4 KiB
    # page (65-72 MB/s here); libfuse 3 has large writes on by default. Without it the
    # passthrough would be a ceiling for round trips, not for sequential throughput.
    bindfs) bindfs -o big_writes "$B" "$M" ;;
    digimedfs) "$BIN/digimedfs" mount --key-file "$SCRATCH/$fs.key" "$B" "$M" ;;
    digimedfs-devfuse) "$BIN/digimedfs" mount -o nouring --key-file "$SCRATCH/$fs.key" "$B" "$M" ;;
    gocryptfs) gocryptfs -q -extpass "echo $PW" "$B" "$M" ;;
    # --allow-replaced-filesystem: CryFS remembers each basedir's fs id (~/.local/share/cryfs)
    # and refuses a new fs created at a path it has seen before, as on every re-run here.
    cryfs) echo "$PW" | cryfs --cipher aes-256-gcm --blocksize 32768 --allow-replaced-filesystem "$B" "$M" ;;
    securefs) securefs mount -b --pass "$PW" "$B" "$M" ;;
    esac || return 1
    local i
    for ((i = 0; i < 300; i++)); do
        mountpoint -q "$M" && { has "$M" "${MOUNTED[*]}" || MOUNTED+=("$M"); return 0; }
        sleep 0.1
    done
    return 1
}

# PID of the FUSE daemon serving mountpoint M (argv contains M, not ourselves).
daemon_pid() { # fs
    local M="$SCRATCH/mnt/$1" p
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" || $p == "$BASHPID" ]] && continue
        if { tr '\0' '\n' <"/proc/$p/cmdline"; } 2>/dev/null | grep -qxF -- "$M"; then
            case "$(cat "/proc/$p/comm" 2>/dev/null)" in
            digimedfs* | gocryptfs* | cryfs* | securefs* | bindfs*) echo "$p"; return 0 ;;
            esac
        fi
    done
    return 1
}

# Remember the daemon's VmHWM (kB) so the peak over all instances is reported.
note_mem() { # fs
    has mem "$WORKLOADS" || return 0
    [[ $1 == raw ]] && return 0
    local pid kb
    pid=$(daemon_pid "$1") || { log "no daemon pid for $1"; return 0; }
    kb=$(awk '/^VmHWM:/{print $2}' "/proc/$pid/status" 2>/dev/null) || return 0
    [[ -n "$kb" ]] && record "$1" mem_kb_instance "$pid" "$kb"
}

fs_umount() { # fs
    local fs=$1 M="$SCRATCH/mnt/$1" pid i
    [[ $fs == raw ]] && return 0
    note_mem "$fs"
    pid=$(daemon_pid "$fs") || pid=
    # EBUSY right after a workload is usually transient (a closing fd); retry before giving up.
    for ((i = 0; i < 20; i++)); do
        fusermount3 -u "$M" 2>/dev/null && break
        sleep 1
    done
    ((i < 20)) || { fusermount3 -u "$M"; fuser -vm "$M" 2>&1 | head -5; return 1; }
    for ((i = 0; i < 1200; i++)); do
        if ! mountpoint -q "$M" && { [[ -z "$pid" ]] || ! running "$pid"; }; then
            return 0
        fi
        sleep 0.1
    done
    log "WARN: $fs daemon $pid still alive 120 s after unmount"
    return 0
}

# After a failed/hung step: kill the daemon (which aborts the FUSE connection and
# releases blocked callers) and lazily unmount, so the run can go on with the next fs.
fs_abort() { # fs
    local fs=$1 M="$SCRATCH/mnt/$1" pid
    [[ $fs == raw ]] && return 0
    note_mem "$fs"
    pid=$(daemon_pid "$fs") && { log "aborting $fs: kill -9 daemon $pid"; kill -KILL "$pid"; sleep 1; }
    fusermount3 -u "$M" 2>/dev/null || fusermount3 -uz "$M" 2>/dev/null || umount -l "$M" 2>/dev/null
    return 0
}

workdir() { [[ $1 == raw ]] && echo "$BACK/raw" || echo "$SCRATCH/mnt/$1"; }

# timed FS METRIC REP CMD...  -> prints seconds on success
timed() {
    local fs=$1 metric=$2 rep=$3
    shift 3
    local lf="$SCRATCH/logs/$fs.$metric.$rep.log" t0 t1
    local rc=0 dpid wd=
    # Watchdog: a caller blocked in a hung FUSE request ignores even SIGKILL; only the
    # death of the daemon releases it. So kill the daemon 15 s after the step's timeout.
    if [[ $fs != raw ]] && dpid=$(daemon_pid "$fs"); then
        (
            for ((i = 0; i < STEP_TIMEOUT + 15; i++)); do sleep 1; done
            kill -KILL "$dpid" 2>/dev/null && echo "watchdog killed daemon $dpid" >>"$lf"
        ) </dev/null >/dev/null 2>&1 &
        wd=$!
    fi
    t0=$(now)
    timeout -k 5 "$STEP_TIMEOUT" "$@" >"$lf" 2>&1 || rc=$?
    [[ -n "$wd" ]] && { kill "$wd" 2>/dev/null; wait "$wd" 2>/dev/null; }
    if ((rc != 0)); then
        echo "exit status $rc (124/137 = killed after STEP_TIMEOUT=${STEP_TIMEOUT}s)" >>"$lf"
        fail "$fs" "$metric" "$rep" "$*" "$lf"
        return 1
    fi
    t1=$(now)
    awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}'
}

# ------------------------------------------------------------ workloads
wl_seq() { # fs rep
    local fs=$1 r=$2 W s
    W=$(workdir "$fs")
    rm -f "$W/seq.bin"
    drop_caches
    if s=$(timed "$fs" seq_write_MBps "$r" dd if=/dev/zero of="$W/seq.bin" bs=1M count="$SEQ_MB" conv=fsync); then
        record "$fs" seq_write_MBps "$r" "$(awk -v s="$s" -v n="$SEQ_MB" 'BEGIN{printf "%.1f", n*1048576/1e6/s}')"
        drop_caches
        if s=$(timed "$fs" seq_read_MBps "$r" dd if="$W/seq.bin" of=/dev/null bs=1M); then
            record "$fs" seq_read_MBps "$r" "$(awk -v s="$s" -v n="$SEQ_MB" 'BEGIN{printf "%.1f", n*1048576/1e6/s}')"
        else
            return 1
        fi
    else
        record "$fs" seq_read_MBps "$r" FAIL
        return 1
    fi
    timeout "$STEP_TIMEOUT" rm -f "$W/seq.bin"
}

fio_run() { # fs metric rep rw file
    local fs=$1 metric=$2 r=$3 rw=$4 f=$5 lf="$SCRATCH/logs/$1.$2.$3.json" dir
    dir=$5
    if ! timeout "$STEP_TIMEOUT" fio --name="$rw" --filename="$f" --size="${RAND_MB}M" --rw="$rw" --bs=4k \
        --ioengine=psync --iodepth=1 --direct=0 --time_based --runtime="$RAND_SECS" \
        --output-format=json --output="$lf" >"$lf.err" 2>&1; then
        cat "$lf" >>"$lf.err" 2>/dev/null
        fail "$fs" "$metric" "$r" "fio --rw=$rw --bs=4k --ioengine=psync --iodepth=1 --direct=0 --size=${RAND_MB}M --filename=$f" "$lf.err"
        return 1
    fi
    local kind=${rw#rand}
    record "$fs" "$metric" "$r" "$(jq -r ".jobs[0].$kind.iops | floor" "$lf")"
}

wl_rand_prep() { # fs
    local fs=$1 W lf
    W=$(workdir "$fs")
    lf="$SCRATCH/logs/$fs.rand_prep.log"
    timeout "$STEP_TIMEOUT" dd if=/dev/urandom of="$W/rand.bin" bs=1M count="$RAND_MB" conv=fsync >"$lf" 2>&1 ||
        { fail "$fs" rand_read_iops prep "dd if=/dev/urandom of=$W/rand.bin bs=1M count=$RAND_MB conv=fsync" "$lf"; return 1; }
}

wl_rand() { # fs rep
    local fs=$1 r=$2 W
    W=$(workdir "$fs")
    drop_caches
    fio_run "$fs" rand_read_iops "$r" randread "$W/rand.bin" || return 1
    drop_caches
    fio_run "$fs" rand_write_iops "$r" randwrite "$W/rand.bin" || return 1
}

wl_tree() { # fs rep
    local fs=$1 r=$2 W s
    W=$(workdir "$fs")
    timeout "$STEP_TIMEOUT" rm -rf "$W/tree"
    mkdir -p "$W/tree" || { fail "$fs" tree_extract_s "$r" "mkdir $W/tree" /dev/null; return 1; }
    drop_caches
    s=$(timed "$fs" tree_extract_s "$r" tar -xf "$SCRATCH/tree.tar" -C "$W/tree") || return 1
    record "$fs" tree_extract_s "$r" "$s"
    drop_caches
    s=$(timed "$fs" tree_ls_s "$r" sh -c "ls -lR '$W/tree' > /dev/null") || return 1
    record "$fs" tree_ls_s "$r" "$s"
    # read every file after a remount (cold daemon + cold page cache)
    fs_umount "$fs" || { fail "$fs" tree_cat_s "$r" "fusermount3 -u" /dev/null; return 1; }
    fs_mount "$fs" || { fail "$fs" tree_cat_s "$r" "remount" /dev/null; return 1; }
    drop_caches
    s=$(timed "$fs" tree_cat_s "$r" sh -c "cd '$W/tree' && find . -type f -exec cat {} + > /dev/null") || return 1
    record "$fs" tree_cat_s "$r" "$s"
    drop_caches
    s=$(timed "$fs" tree_rm_s "$r" rm -rf "$W/tree") || return 1
    record "$fs" tree_rm_s "$r" "$s"
}

# ------------------------------------------------------------ main
T_START=$(now)
log "scratch $SCRATCH ($fstype on $(df --output=source "$SCRATCH" | tail -1)); backing dirs in $BACK ($back_fstype); FS='$FS' WORKLOADS='$WORKLOADS' REPS=$REPS SEQ_REPS=$SEQ_REPS URING=$URING (enable_uring $(cat "$URING_SWITCH" 2>/dev/null || echo absent))"

if has tree "$WORKLOADS"; then
    log "building tree tarball from: $TREE_SRC"
    # --hard-dereference: CryFS has no hard links; store plain copies so every fs gets the same tree.
    # shellcheck disable=SC2086
    tar -cf "$SCRATCH/tree.tar" --hard-dereference --ignore-failed-read $TREE_SRC 2>/dev/null
    TREE_FILES=$(tar -tvf "$SCRATCH/tree.tar" | grep -c '^-')
    TREE_DIRS=$(tar -tvf "$SCRATCH/tree.tar" | grep -c '^d')
    TREE_LINKS=$(tar -tvf "$SCRATCH/tree.tar" | grep -c '^l')
    TREE_BYTES=$(stat -c %s "$SCRATCH/tree.tar")
    log "tree: $TREE_FILES files, $TREE_DIRS dirs, $TREE_LINKS symlinks, tarball $((TREE_BYTES / 1048576)) MiB"
fi

# Repetitions are interleaved: round r runs each workload on every filesystem in turn (a
# mount per filesystem and workload), so that drifting conditions of the shared host (its
# cache of the virtual disk above all) fall on every filesystem alike instead of on whichever
# ran in a bad minute.
declare -A OK
for fs in $FS; do
    OK[$fs]=0
    log "=== init $fs"
    if fs_init "$fs" >"$SCRATCH/logs/$fs.init.log" 2>&1; then
        OK[$fs]=1
    else
        fail "$fs" init 0 "init $fs" "$SCRATCH/logs/$fs.init.log"
    fi
done

# run_step FS WL REP: mounts FS, runs one repetition of workload WL on it, unmounts. On the
# first failure of a FUSE fs the daemon is killed and the fs is skipped from then on: after
# an error or a hang its state is not trustworthy.
run_step() {
    local fs=$1 wl=$2 r=$3 ok=1
    if ! fs_mount "$fs" >"$SCRATCH/logs/$fs.mount.log" 2>&1; then
        fail "$fs" mount "$r" "mount $fs" "$SCRATCH/logs/$fs.mount.log"
        OK[$fs]=0
        return
    fi
    log "$fs $wl rep $r"
    case $wl in
    seq) wl_seq "$fs" "$r" || ok=0 ;;
    rand)
        if ((r == 1)); then wl_rand_prep "$fs" || ok=0; fi
        ((ok)) && { wl_rand "$fs" "$r" || ok=0; }
        ((ok && r == REPS)) && timeout "$STEP_TIMEOUT" rm -f "$(workdir "$fs")/rand.bin"
        ;;
    tree) wl_tree "$fs" "$r" || ok=0 ;;
    esac
    if ((!ok)); then
        fs_abort "$fs"
        OK[$fs]=0
    elif [[ $fs != raw ]] && mountpoint -q "$SCRATCH/mnt/$fs"; then
        fs_umount "$fs" || log "WARN: unmount of $fs failed"
    fi
}

ROUNDS=$((SEQ_REPS > REPS ? SEQ_REPS : REPS))
for ((r = 1; r <= ROUNDS; r++)); do
    for wl in seq rand tree; do
        has "$wl" "$WORKLOADS" || continue
        if [[ $wl == seq ]]; then ((r <= SEQ_REPS)) || continue; else ((r <= REPS)) || continue; fi
        for fs in $FS; do
            ((OK[$fs])) && run_step "$fs" "$wl" "$r"
        done
    done
done
for fs in $FS; do rm -rf "${BACK:?}/$fs"; done

ELAPSED=$(awk -v a="$T_START" -v b="$(now)" 'BEGIN{printf "%.0f", b-a}')
TOTAL=$(awk -v a="$SCRIPT_START" -v b="$(now)" 'BEGIN{printf "%.0f", b-a}')

# ------------------------------------------------------------ report
mkdir -p "$(dirname "$RESULTS")"
{
    echo "# digimedfs benchmark results ($STAMP)"
    echo
    echo "- host: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- scratch: $SCRATCH on $(df --output=source "$SCRATCH" | tail -1) ($fstype; mount opts: $(findmnt -n -o OPTIONS -T "$SCRATCH"))"
    echo "- backing dirs (and raw's work dir): $BACK on $(findmnt -n -o SOURCE -T "$BACK") ($back_fstype; mount opts: $(findmnt -n -o OPTIONS -T "$BACK"))"
    echo "- digimedfs: binary snapshotted at start, built ${BIN_TIME:-?}; HEAD then ${BIN_REV:-?}, at the end $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)"
    echo "- peers: $(gocryptfs -version 2>/dev/null | cut -d';' -f1); $(cryfs --version 2>/dev/null | head -1); securefs $(dpkg-query -W -f='${Version}' securefs 2>/dev/null); $(bindfs --version 2>/dev/null | head -1); $(fio --version)"
    echo "- load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (other CPU load skews every number)"
    echo "- REPS=$REPS, SEQ_REPS=$SEQ_REPS, SEQ_MB=$SEQ_MB, RAND_MB=$RAND_MB, RAND_SECS=$RAND_SECS, FS='$FS', WORKLOADS='$WORKLOADS'; wall time ${ELAPSED}s of workloads, ${TOTAL}s with installs, build and tarball"
    if has tree "$WORKLOADS"; then
        echo "- tree: tar of \`$TREE_SRC\` (--hard-dereference): $TREE_FILES files, $TREE_DIRS dirs, $TREE_LINKS symlinks, $((TREE_BYTES / 1048576)) MiB"
    fi
    echo
    SEQ_MB=$SEQ_MB RAND_MB=$RAND_MB python3 "$HERE/report.py" "$DATA" "$FS"
    if [[ -s "$FAILS" ]]; then
        echo
        echo "## Failures"
        echo
        cat "$FAILS"
    fi
} | tee "$RESULTS"
cp "$DATA" "${RESULTS%.md}.tsv"
log "results written to $RESULTS (raw values: ${RESULTS%.md}.tsv)"
