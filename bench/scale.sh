#!/usr/bin/env bash
# Scale benchmark (issue 24): how each cost grows with the number of files. For every N and
# every filesystem: a new filesystem, N files of 1–3 KiB written by an open-write-close loop
# (FILES_PER_DIR per directory), then unmount and a cold mount, `find | wc -l`, an lstat of
# every file and a read of every file (each after a remount with dropped caches), for
# digimedfs two backup points (the second after one small file changed), `fsck -n` and one
# read of its backing directory (what fsck's time is judged against), and finally `rm -rf` of
# the tree. Every phase is timed, and the daemon's peak RSS is taken for
# each phase separately (VmHWM, reset through /proc/PID/clear_refs before the phase).
#
# Prints a markdown table per N and a summary of per-file costs and memory against N, with
# ratios to gocryptfs; it never judges speed. It fails (FAIL cells, a "Failures" section,
# exit status 1) only when a step fails or hangs, or a file count, size or content is wrong.
# Must run as root (drop_caches, FUSE mounts, clear_refs). docs/performance.md, "Scale
# benchmark", says how to read the tables.
#
# Environment knobs (defaults in brackets):
#   NS          numbers of files, any positive integers  ["20000 200000 1000000"]
#   FS          filesystems to run  ["digimedfs digimedfs-devfuse gocryptfs"]
#               raw: the backing filesystem itself, no FUSE layer (its work dir is
#               BACKING_ROOT/back-raw; no daemon, so no VmHWM rows)
#               digimedfs: its default mount, i.e. FUSE over io_uring where the kernel allows
#               it (see URING); digimedfs-devfuse: -o nouring (always /dev/fuse)
#   URING       1: switch the fuse module's enable_uring on for the run and back afterwards
#               (as bench/run.sh does); 0: leave the kernel's setting
#               [1 where the kernel has the switch, else 0]
#   FILES_PER_DIR  files per directory  [1000]
#   GOCRYPTFS_1M_PHASES  the phases gocryptfs runs when N >= 1000000, out of
#               "create find stat read rm"; "all" runs every phase  ["create find rm"]
#   SCRATCH     scratch dir: mountpoints, logs, binaries (refused on tmpfs)
#               [/var/tmp/digimedfs-scale]
#   BACKING_ROOT  where every backing dir (and raw's work dir) goes, e.g. a CephFS mount:
#               BACKING_ROOT=$DIGIMEDFS_CEPH_A/scale (tests/cephfs/cluster)  [SCRATCH]
#   BIN         dir holding digimedfs, mkfs-digimed and fsck-digimed, copied into SCRATCH at
#               the start so a rebuild cannot change them mid-run  [<repo>/target/release]
#               (this script does not build them: cargo build --release --bins first)
#   STEP_TIMEOUT  seconds before one step counts as hung; the daemon is then killed [3600]
#   RESULTS     results file  [bench/results/scale-<date>.md; every value in the .tsv beside it]
#   KEEP_SCRATCH=1  leave the backing dirs behind (each N replaces the previous N's; logs and
#               binaries stay in SCRATCH in any case)
# shellcheck source-path=SCRIPTDIR
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
# shellcheck source=proc.sh
. "$HERE/proc.sh"

NS="${NS:-20000 200000 1000000}"
FS="${FS:-digimedfs digimedfs-devfuse gocryptfs}"
FILES_PER_DIR="${FILES_PER_DIR:-1000}"
GOCRYPTFS_1M_PHASES="${GOCRYPTFS_1M_PHASES:-create find rm}"
SCRATCH="${SCRATCH:-/var/tmp/digimedfs-scale}"
SRC_BIN="${BIN:-$REPO/target/release}"
STEP_TIMEOUT="${STEP_TIMEOUT:-3600}"
STAMP="$(date +%Y%m%d-%H%M%S)"
RESULTS="${RESULTS:-$HERE/results/scale-$STAMP.md}"

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }
has() { [[ " $2 " == *" $1 "* ]]; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.3f", b-a}'; }

[[ $(id -u) -eq 0 ]] || die "run as root (needs drop_caches, FUSE mounts and /proc/PID/clear_refs)"
for fs in $FS; do
    case $fs in raw | digimedfs | digimedfs-devfuse | gocryptfs) ;; *) die "unknown filesystem '$fs' in FS" ;; esac
done
for n in $NS; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "NS: '$n' is not a positive integer"; done
[[ $FILES_PER_DIR =~ ^[1-9][0-9]*$ ]] || die "FILES_PER_DIR: '$FILES_PER_DIR' is not a positive integer"
[[ $STEP_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "STEP_TIMEOUT: '$STEP_TIMEOUT' is not a positive integer"
for p in $GOCRYPTFS_1M_PHASES; do
    case $p in all | create | find | stat | read | rm) ;; *) die "GOCRYPTFS_1M_PHASES: unknown phase '$p'" ;; esac
done
has_digimedfs() { has digimedfs "$FS" || has digimedfs-devfuse "$FS"; }

# ---------------------------------------------------------------- setup
for c in gcc fusermount3 python3; do command -v "$c" >/dev/null || die "$c missing"; done
if has gocryptfs "$FS" && ! command -v gocryptfs >/dev/null; then
    log "installing gocryptfs"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gocryptfs >/dev/null; }; then
        die "apt-get install gocryptfs failed"
    fi
fi
if has_digimedfs && [[ ! -x /usr/bin/time ]]; then
    log "installing time (for fsck's peak RSS)"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }; then
        die "apt-get install time failed"
    fi
fi

mkdir -p "$SCRATCH" || die "cannot create $SCRATCH"
SCRATCH="$(cd "$SCRATCH" && pwd)"
fstype="$(findmnt -n -o FSTYPE -T "$SCRATCH")"
[[ "$fstype" == tmpfs || "$fstype" == ramfs ]] && die "$SCRATCH is on $fstype; use a disk-backed dir"
exec 9>"$SCRATCH/.run.lock"
flock -n 9 || die "another bench/scale.sh is running in $SCRATCH"
BACKING_ROOT="${BACKING_ROOT:-$SCRATCH}"
mkdir -p "$BACKING_ROOT" || die "cannot create $BACKING_ROOT"
BACKING_ROOT="$(cd "$BACKING_ROOT" && pwd)"
back_fstype="$(findmnt -n -o FSTYPE -T "$BACKING_ROOT")"
[[ "$back_fstype" == tmpfs || "$back_fstype" == ramfs ]] && die "$BACKING_ROOT is on $back_fstype; use a disk-backed dir"
LOGS="$SCRATCH/logs"
rm -rf "$LOGS"
mkdir -p "$SCRATCH/bin" "$LOGS" || die "cannot create $SCRATCH/bin or $LOGS"

if has_digimedfs; then
    for b in digimedfs mkfs-digimed fsck-digimed; do
        cp "$SRC_BIN/$b" "$SCRATCH/bin/" || die "$SRC_BIN/$b missing (cargo build --release --bins, or set BIN)"
    done
    BIN_INFO="$SRC_BIN/digimedfs built $(date -r "$SRC_BIN/digimedfs" '+%F %T')"
    if [[ $SRC_BIN == "$REPO/target/release" ]]; then
        BIN_INFO+="; HEAD then $(cd "$REPO" && git rev-parse --short HEAD 2>/dev/null)"
    fi
fi

# The file loop is C: a process or interpreter per file would cost more than the filesystem.
TOOL="$SCRATCH/bin/scalefiles"
cat >"$SCRATCH/scalefiles.c" <<'EOF'
/* scalefiles create|stat|read ROOT N PER_DIR: file i is ROOT/d<i/PER_DIR>/f<i>, of
 * 1024 + (i*7919 % 2048) bytes of pseudo-random content that depends on i only.
 * create: mkdir each directory, then open(O_CREAT|O_EXCL)-write-close every file.
 * stat: lstat every file by name; it must be a regular file of its size.
 * read: open-read-close every file; length and content must be what create wrote.
 * Stops with a message at the first error. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static size_t size_of(uint64_t i) { return 1024 + (size_t)((i * 7919) % 2048); }

static void fill(uint64_t i, unsigned char *buf, size_t n) {
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ULL; /* xorshift64*, never 0 */
    for (size_t k = 0; k < n; k += 8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        uint64_t v = x * 0x2545F4914F6CDD1DULL;
        memcpy(buf + k, &v, n - k < 8 ? n - k : 8);
    }
}

static int fail(const char *what, const char *path) {
    fprintf(stderr, "%s %s: %s\n", what, path, errno ? strerror(errno) : "wrong result");
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: scalefiles create|stat|read ROOT N PER_DIR\n");
        return 2;
    }
    const char *mode = argv[1], *root = argv[2];
    uint64_t n = strtoull(argv[3], NULL, 10), per = strtoull(argv[4], NULL, 10);
    if (n == 0 || per == 0) return 2;
    static unsigned char want[4096], got[4097];
    char path[4096];
    for (uint64_t i = 0; i < n; i++) {
        size_t len = size_of(i);
        errno = 0;
        if (mode[0] == 'c') {
            if (i % per == 0) {
                snprintf(path, sizeof path, "%s/d%05llu", root, (unsigned long long)(i / per));
                if (mkdir(path, 0755) != 0) return fail("mkdir", path);
            }
            snprintf(path, sizeof path, "%s/d%05llu/f%07llu", root, (unsigned long long)(i / per),
                     (unsigned long long)i);
            fill(i, want, len);
            int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
            if (fd < 0) return fail("create", path);
            size_t off = 0;
            while (off < len) {
                ssize_t w = write(fd, want + off, len - off);
                if (w < 0 && errno == EINTR) continue;
                if (w <= 0) return fail("write", path);
                off += (size_t)w;
            }
            if (close(fd) != 0) return fail("close", path);
        } else {
            snprintf(path, sizeof path, "%s/d%05llu/f%07llu", root, (unsigned long long)(i / per),
                     (unsigned long long)i);
            if (mode[0] == 's') {
                struct stat st;
                if (lstat(path, &st) != 0) return fail("lstat", path);
                if (!S_ISREG(st.st_mode) || (size_t)st.st_size != len) return fail("size of", path);
            } else {
                int fd = open(path, O_RDONLY);
                if (fd < 0) return fail("open", path);
                size_t off = 0;
                for (;;) {
                    ssize_t r = read(fd, got + off, sizeof got - off);
                    if (r < 0 && errno == EINTR) continue;
                    if (r < 0) return fail("read", path);
                    if (r == 0 || (off += (size_t)r) == sizeof got) break;
                }
                if (close(fd) != 0) return fail("close", path);
                fill(i, want, len);
                errno = 0;
                if (off != len || memcmp(got, want, len) != 0) return fail("content of", path);
            }
        }
    }
    return 0;
}
EOF
gcc -O2 -Wall -Werror -o "$TOOL" "$SCRATCH/scalefiles.c" || die "cannot compile $SCRATCH/scalefiles.c"

# Shared with the probes: drop_caches, unmount_and_wait, and the key $Q/k (digimedfs keygen).
PROBE_DIR="$SCRATCH" BIN="$SCRATCH/bin" NO_TREE_TAR=1
if has_digimedfs; then
    # shellcheck source=probes/common.sh
    . "$HERE/probes/common.sh"
else
    Q=$SCRATCH
    drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
fi
K="$Q/k"
PW="$SCRATCH/pw"
(umask 077 && echo "scale-bench" >"$PW")

DATA="$SCRATCH/data.tsv" # N \t fs \t metric \t value
FAILS="$SCRATCH/failures.md"
: >"$DATA"
: >"$FAILS"
WD=
STEP_PID=

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local fs M pid i
    [[ -n $STEP_PID ]] && kill "$STEP_PID" 2>/dev/null
    [[ -n $WD ]] && kill "$WD" 2>/dev/null
    for fs in $FS; do
        M="$Q/mnt-$fs"
        if mountpoint -q "$M" 2>/dev/null; then
            pid=$(daemon_pid "$M")
            fusermount3 -u "$M" 2>/dev/null || fusermount3 -uz "$M" 2>/dev/null || umount -l "$M" 2>/dev/null
            # Its backing dir goes next: let the daemon finish writing back first (at most 60 s).
            for ((i = 0; i < 600; i++)); do
                if [[ -z $pid ]] || ! running "$pid"; then break; fi
                sleep 0.1
            done
        fi
    done
    [[ -n "${URING_WAS:-}" ]] && echo "$URING_WAS" >"$URING_SWITCH" 2>/dev/null
    if [[ -z "${KEEP_SCRATCH:-}" ]]; then
        for fs in $FS; do rm -rf "${BACKING_ROOT:?}/back-$fs" "$Q/mnt-$fs" 2>/dev/null; done
    fi
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

URING_SWITCH=/sys/module/fuse/parameters/enable_uring
if [[ -z "${URING:-}" ]]; then
    if [[ -w $URING_SWITCH ]]; then URING=1; else URING=0; fi
fi
if [[ $URING == 1 ]] && has digimedfs "$FS"; then
    [[ -w $URING_SWITCH ]] || die "URING=1 needs FUSE over io_uring ($URING_SWITCH: Linux 6.14+)"
    URING_WAS=$(cat "$URING_SWITCH")
    echo 1 >"$URING_SWITCH"
fi

# ------------------------------------------------------------ helpers
N=0 # the N being run
record() { printf '%s\t%s\t%s\t%s\n' "$N" "$1" "$2" "$3" >>"$DATA"; } # fs metric value

# fail FS STEP COMMAND LOGFILE: the step's row ("STEP_s") says FAIL.
fail() {
    record "$1" "$2_s" FAIL
    {
        echo "### N=$N / $1 / $2"
        echo "command: \`$3\`"
        echo '```'
        tail -n 30 "$4" 2>/dev/null
        echo '```'
    } >>"$FAILS"
    log "FAIL: N=$N $1 $2 (see $4)"
}

# PID of the FUSE daemon serving mountpoint M (an argument equal to M, not this shell).
daemon_pid() { # M
    local p
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" || $p == "$BASHPID" ]] && continue
        if { tr '\0' '\n' <"/proc/$p/cmdline"; } 2>/dev/null | grep -qxF -- "$1"; then
            case "$(cat "/proc/$p/comm" 2>/dev/null)" in
            digimedfs* | gocryptfs*) echo "$p"; return 0 ;;
            esac
        fi
    done
    return 1
}

# Where FS's files are worked on: its mountpoint, or for raw the backing dir itself.
work_dir() { # fs
    if [[ $1 == raw ]]; then echo "$BACKING_ROOT/back-raw"; else echo "$Q/mnt-$1"; fi
}

# fs_mount FS: mounts and waits until the mountpoint answers; sets MOUNT_S and DPID.
fs_mount() {
    local fs=$1 B="$BACKING_ROOT/back-$1" M="$Q/mnt-$1" t0 i lf="$LOGS/$N.$1.mount.log"
    if [[ $fs == raw ]]; then MOUNT_S=n/a DPID=; return 0; fi
    t0=$(now)
    case $fs in
    digimedfs) timeout -k 5 "$STEP_TIMEOUT" "$BIN/digimedfs" mount --key-file "$K" "$B" "$M" ;;
    digimedfs-devfuse) timeout -k 5 "$STEP_TIMEOUT" "$BIN/digimedfs" mount -o nouring --key-file "$K" "$B" "$M" ;;
    gocryptfs) timeout -k 5 "$STEP_TIMEOUT" gocryptfs -q -passfile "$PW" "$B" "$M" ;;
    esac >>"$lf" 2>&1 || { fail "$fs" mount "mount $fs" "$lf"; return 1; }
    for ((i = 0; i < STEP_TIMEOUT * 100; i++)); do
        mountpoint -q "$M" && stat "$M/." >/dev/null 2>&1 && break
        sleep 0.01
    done
    MOUNT_S=$(since "$t0")
    DPID=$(daemon_pid "$M") || { echo "no daemon serves $M" >>"$lf"; fail "$fs" mount "mount $fs" "$lf"; return 1; }
}

# fs_umount FS: unmounts and waits until the daemon has exited (digimedfs writes back after
# the unmount returned); sets UMOUNT_S.
fs_umount() {
    local fs=$1 M="$Q/mnt-$1" pid t0 i lf="$LOGS/$N.$1.umount.log"
    if [[ $fs == raw ]]; then UMOUNT_S=n/a; return 0; fi
    pid=$(daemon_pid "$M") || pid=
    t0=$(now)
    # EBUSY right after a step is usually a closing fd; retry before giving up.
    for ((i = 0; i < 20; i++)); do
        fusermount3 -u "$M" >>"$lf" 2>&1 && break
        sleep 1
    done
    ((i < 20)) || { fuser -vm "$M" >>"$lf" 2>&1; fail "$fs" umount "fusermount3 -u $M" "$lf"; return 1; }
    if [[ -n $pid ]]; then
        for ((i = 0; i < STEP_TIMEOUT * 50; i++)); do
            running "$pid" || break
            sleep 0.02
        done
        if running "$pid"; then
            echo "daemon $pid alive ${STEP_TIMEOUT}s after the unmount" >>"$lf"
            fail "$fs" umount "fusermount3 -u $M" "$lf"
            return 1
        fi
    fi
    UMOUNT_S=$(since "$t0")
}

# After a failed or hung step: kill the daemon (only that releases a caller blocked in a
# hung FUSE request) and lazily unmount, so the run goes on with the next filesystem.
fs_abort() {
    local M="$Q/mnt-$1" pid
    [[ $1 == raw ]] && return 0
    pid=$(daemon_pid "$M") && { log "aborting $1: kill -9 daemon $pid"; kill -KILL "$pid"; sleep 1; }
    fusermount3 -u "$M" 2>/dev/null || fusermount3 -uz "$M" 2>/dev/null || umount -l "$M" 2>/dev/null
    return 0
}

remount_cold() { # fs
    fs_umount "$1" && drop_caches && fs_mount "$1"
}

# step FS METRIC CMD...: runs CMD with STEP_TIMEOUT, output in LF; sets STEP_S.
step() {
    local fs=$1 metric=$2 rc=0 t0 dpid i
    shift 2
    LF="$LOGS/$N.$fs.$metric.log"
    # A caller blocked in a hung FUSE request ignores even SIGKILL; only the daemon's death
    # releases it, so a watchdog kills the daemon 15 s after the step's timeout.
    if dpid=$(daemon_pid "$Q/mnt-$fs"); then
        (
            for ((i = 0; i < STEP_TIMEOUT + 15; i++)); do sleep 1; done
            kill -KILL "$dpid" 2>/dev/null && echo "watchdog killed daemon $dpid" >>"$LF"
        ) </dev/null >/dev/null 2>&1 &
        WD=$!
    fi
    t0=$(now)
    # In the background so that a signal reaches this script's trap at once (bash runs traps
    # only between foreground commands); cleanup then stops the step.
    timeout -k 5 "$STEP_TIMEOUT" "$@" >"$LF" 2>&1 &
    STEP_PID=$!
    wait "$STEP_PID" || rc=$?
    STEP_PID=
    STEP_S=$(since "$t0")
    [[ -n $WD ]] && { kill "$WD" 2>/dev/null; wait "$WD" 2>/dev/null; WD=; }
    if ((rc != 0)); then
        echo "exit status $rc (124/137 = killed after STEP_TIMEOUT=${STEP_TIMEOUT}s)" >>"$LF"
        fail "$fs" "$metric" "$*" "$LF"
        return 1
    fi
}

# Peak RSS per phase: writing 5 to clear_refs resets VmHWM to the current RSS.
hwm_begin() { # fs
    HWM_PID=
    HWM_PID=$(daemon_pid "$Q/mnt-$1") && echo 5 >"/proc/$HWM_PID/clear_refs"
}
hwm_end() { # fs phase
    local kb
    [[ -n $HWM_PID ]] || return 0
    kb=$(awk '/^VmHWM:/{print $2}' "/proc/$HWM_PID/status" 2>/dev/null)
    [[ -n $kb ]] && record "$1" "hwm_$2_kb" "$kb"
}

# The digimedfs daemon's log (docs/operations.md, "Mount"): the mountpoint with / turned into -.
daemon_log() { # fs
    local name="$Q/mnt-$1"
    name=${name#/}
    echo "/var/log/digimedfs/${name//\//-}.log"
}

write_bytes() { awk '/^write_bytes:/{print $2}' "/proc/$DPID/io"; }

# backup_point FS I: takes backup point I through the daemon and records its cost.
backup_point() {
    local fs=$1 i=$2 B="$BACKING_ROOT/back-$1" w0 w1 v
    w0=$(write_bytes)
    step "$fs" "backup$i" "$BIN/digimedfs" backup begin "$B" || return 1
    w1=$(write_bytes)
    record "$fs" "backup${i}_s" "$STEP_S"
    # The reply is the daemon's PointInfo: "... N metadata records, ... writers held X ms, took Y ms".
    v=$(sed -n 's/.*writers held \([0-9]*\) ms.*/\1/p' "$LF")
    record "$fs" "backup${i}_held_ms" "${v:-n/a}"
    v=$(sed -n 's/.*took \([0-9]*\) ms.*/\1/p' "$LF")
    record "$fs" "backup${i}_took_ms" "${v:-n/a}"
    v=$(sed -n 's/.*: \([0-9]*\) metadata records.*/\1/p' "$LF")
    record "$fs" "backup${i}_records" "${v:-n/a}"
    record "$fs" "backup${i}_point_bytes" "$(find "$B/backup/point" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')"
    record "$fs" "backup${i}_written_bytes" "$((w1 - w0))"
}

# run_one FS: every phase on a new filesystem of N files. Returns 1 after a failure (the
# daemon is then killed and the remaining phases are not run).
run_one() {
    local fs=$1 B="$BACKING_ROOT/back-$1" M phases p count lf left
    M=$(work_dir "$fs")
    if [[ $fs == raw ]]; then
        phases="create find stat read rm"
    elif [[ $fs == gocryptfs ]]; then
        phases="create find stat read rm"
        if ((N >= 1000000)) && ! has all "$GOCRYPTFS_1M_PHASES"; then
            phases="$GOCRYPTFS_1M_PHASES"
            for p in stat read; do has "$p" "$phases" || record "$fs" "${p}_s" skip; done
        fi
    else
        phases="create find stat read backup fsck rm"
    fi

    log "N=$N $fs: new filesystem"
    lf="$LOGS/$N.$fs.init.log"
    # A daemon left by an interrupted run must be gone before its backing dir is replaced.
    if [[ $fs == digimedfs* ]]; then unmount_and_wait "$M" "$B"; else fusermount3 -u "$M" 2>/dev/null; fi
    rm -rf "$B"
    mkdir -p "$B" "$M" || die "cannot create $B or $M"
    case $fs in
    digimedfs*) "$BIN/mkfs-digimed" --tenant bench --key-file "$K" "$B" ;;
    gocryptfs) gocryptfs -q -init -passfile "$PW" "$B" ;;
    raw) true ;;
    esac >"$lf" 2>&1 || { fail "$fs" init "init $fs" "$lf"; return 1; }
    fs_mount "$fs" || return 1
    record "$fs" mount_empty_s "$MOUNT_S"
    if [[ $fs == digimedfs* ]]; then
        # The transport really used, from the daemon's "mounted on M (T threads[, io_uring on C CPUs])".
        if grep -F "mounted on $M " "$(daemon_log "$fs")" 2>/dev/null | tail -1 | grep -q io_uring; then
            record "$fs" transport io_uring
        else
            record "$fs" transport /dev/fuse
        fi
    elif [[ $fs == raw ]]; then
        record "$fs" transport none
    else
        record "$fs" transport /dev/fuse
    fi

    log "N=$N $fs: create"
    hwm_begin "$fs"
    step "$fs" create "$TOOL" create "$M" "$N" "$FILES_PER_DIR" || return 1
    record "$fs" create_s "$STEP_S"
    hwm_end "$fs" create
    step "$fs" sync sync -f "$M" || return 1
    record "$fs" sync_s "$STEP_S"
    fs_umount "$fs" || return 1
    record "$fs" umount_s "$UMOUNT_S"
    record "$fs" backing_bytes "$(du -sb "$B" | cut -f1)"
    drop_caches
    fs_mount "$fs" || return 1
    record "$fs" mount_s "$MOUNT_S"

    if has find "$phases"; then
        log "N=$N $fs: find"
        hwm_begin "$fs"
        # shellcheck disable=SC2016  # $1 is the inner shell's
        step "$fs" find sh -c 'find "$1" -type f | wc -l' find "$M" || return 1
        count=$(tail -n 1 "$LF")
        if [[ $count != "$N" ]]; then
            echo "find counted $count files, created $N" >>"$LF"
            fail "$fs" find "find $M -type f | wc -l" "$LF"
            return 1
        fi
        record "$fs" find_s "$STEP_S"
        hwm_end "$fs" find
    fi
    for p in stat read; do
        has "$p" "$phases" || continue
        log "N=$N $fs: $p"
        remount_cold "$fs" || return 1
        hwm_begin "$fs"
        step "$fs" "$p" "$TOOL" "$p" "$M" "$N" "$FILES_PER_DIR" || return 1
        record "$fs" "${p}_s" "$STEP_S"
        hwm_end "$fs" "$p"
    done

    if has backup "$phases"; then
        log "N=$N $fs: backup points"
        hwm_begin "$fs"
        backup_point "$fs" 1 || return 1
        step "$fs" change_one dd if=/dev/urandom of="$M/d00000/f0000000" bs=1500 count=1 conv=fsync status=none || return 1
        backup_point "$fs" 2 || return 1
        step "$fs" backup_end "$BIN/digimedfs" backup end "$B" || return 1
        record "$fs" backup_end_s "$STEP_S"
        hwm_end "$fs" backup
    fi
    if has fsck "$phases"; then
        log "N=$N $fs: fsck -n"
        fs_umount "$fs" || return 1
        drop_caches
        step "$fs" fsck /usr/bin/time -v "$BIN/fsck-digimed" -n --key-file "$K" "$B" || return 1
        record "$fs" fsck_s "$STEP_S"
        record "$fs" fsck_rss_kb "$(awk -F': *' '/Maximum resident set size/{print $2}' "$LF")"
        # What fsck's time is judged against: reading every file of the backing dir once.
        drop_caches
        # shellcheck disable=SC2016  # $1 is the inner shell's
        step "$fs" readback sh -c 'find "$1" -type f -print0 | xargs -0r cat >/dev/null' readback "$B" || return 1
        record "$fs" readback_s "$STEP_S"
    fi

    if has rm "$phases"; then
        log "N=$N $fs: rm -rf"
        if mountpoint -q "$M"; then
            remount_cold "$fs" || return 1
        else
            drop_caches
            fs_mount "$fs" || return 1
        fi
        hwm_begin "$fs"
        step "$fs" rm find "$M" -mindepth 1 -maxdepth 1 -exec rm -rf {} + || return 1
        left=$(find "$M" -mindepth 1 -maxdepth 1 | head -5 | tr '\n' ' ')
        if [[ -n $left ]]; then
            echo "entries left after rm -rf: $left" >>"$LF"
            fail "$fs" rm "rm -rf $M/*" "$LF"
            return 1
        fi
        record "$fs" rm_s "$STEP_S"
        hwm_end "$fs" rm
    fi
    fs_umount "$fs" || return 1
    record "$fs" umount_end_s "$UMOUNT_S"
}

# ------------------------------------------------------------ main
T_START=$(now)
log "scratch $SCRATCH ($fstype on $(df --output=source "$SCRATCH" | tail -1)); NS='$NS' FS='$FS' FILES_PER_DIR=$FILES_PER_DIR URING=$URING (enable_uring $(cat "$URING_SWITCH" 2>/dev/null || echo absent))"
declare -A N_SECS
for N in $NS; do
    t_n=$(now)
    for fs in $FS; do
        if ! run_one "$fs"; then
            fs_abort "$fs"
        fi
        [[ -z "${KEEP_SCRATCH:-}" ]] && rm -rf "${BACKING_ROOT:?}/back-$fs"
    done
    N_SECS[$N]=$(since "$t_n")
    log "N=$N done in ${N_SECS[$N]} s"
done
ELAPSED=$(awk -v a="$T_START" -v b="$(now)" 'BEGIN{printf "%.0f", b-a}')

# ------------------------------------------------------------ report
mkdir -p "$(dirname "$RESULTS")"
{
    echo "# digimedfs scale benchmark ($STAMP)"
    echo
    echo "- host: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')), $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r)"
    echo "- scratch (mountpoints, logs): $SCRATCH on $(df --output=source "$SCRATCH" | tail -1) ($fstype; mount opts: $(findmnt -n -o OPTIONS -T "$SCRATCH"))"
    echo "- backing dirs (and raw's work dir): $BACKING_ROOT on $(findmnt -n -o SOURCE -T "$BACKING_ROOT") ($back_fstype; mount opts: $(findmnt -n -o OPTIONS -T "$BACKING_ROOT"))"
    has_digimedfs && echo "- digimedfs: binaries copied at start from $BIN_INFO"
    has gocryptfs "$FS" && echo "- $(gocryptfs -version 2>/dev/null | cut -d';' -f1), mounted with defaults"
    has_digimedfs && echo "- backup bytes: \"point files\" = sum of the sizes of the files in backup/point (what a backup job copies); \"daemon write_bytes\" = growth of write_bytes in the daemon's /proc/PID/io during \`backup begin\` (bytes it dirtied for the backing disk; the point's hard links, directories and the ext4 journal are not counted). Writers held and the daemon's time come from the daemon's reply to \`backup begin\`; its log does not record them"
    echo "- NS='$NS', FS='$FS', FILES_PER_DIR=$FILES_PER_DIR, URING=$URING, GOCRYPTFS_1M_PHASES='$GOCRYPTFS_1M_PHASES' (phases gocryptfs runs at N >= 1000000)"
    echo "- wall time ${ELAPSED}s ($(for n in $NS; do printf 'N=%s: %.0f s; ' "$n" "${N_SECS[$n]:-0}"; done | sed 's/; $//')); load average at end: $(cut -d' ' -f1-3 /proc/loadavg) (other CPU load skews every number)"
    echo
    HERE="$HERE" python3 - "$DATA" "$FS" "$NS" <<'EOF'
"""Render bench/scale.sh's data (N, fs, metric, value) as markdown tables."""
import os
import sys

sys.path.insert(0, os.environ["HERE"])
from report import fmt, table  # noqa: E402  (bench/report.py: number format, table layout)

data, fs_list, ns = sys.argv[1], sys.argv[2].split(), [int(n) for n in sys.argv[3].split()]
vals = {}
with open(data) as f:
    for line in f:
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 4:
            n, fs, metric, value = parts
            # A step that failed after an earlier success of the same kind (a remount) wins.
            if value == "FAIL" or (int(n), fs, metric) not in vals:
                vals[(int(n), fs, metric)] = value

MIB = 1 / 1048576
# metric, label, scale (None: text)
ROWS = [
    ("transport", "transport", None),
    ("mount_empty_s", "mount, empty filesystem, s", 1),
    ("create_s", "create N files (open-write-close), s", 1),
    ("sync_s", "sync -f after create, s", 1),
    ("umount_s", "unmount after create (until the daemon exits), s", 1),
    ("backing_bytes", "backing dir after create (du -sb), MiB", MIB),
    ("mount_s", "mount with N files (caches dropped), s", 1),
    ("find_s", "find -type f \\| wc -l (cold), s", 1),
    ("stat_s", "lstat every file (remount, caches dropped), s", 1),
    ("read_s", "read every file (remount, caches dropped), s", 1),
    ("backup1_s", "backup begin: wall, s (daemon polls every 1 s)", 1),
    ("backup1_took_ms", "backup begin: daemon's time, ms", 1),
    ("backup1_held_ms", "backup begin: writers held, ms", 1),
    ("backup1_records", "backup begin: metadata records", 1),
    ("backup1_point_bytes", "backup begin: point files, MiB", MIB),
    ("backup1_written_bytes", "backup begin: daemon write_bytes, MiB", MIB),
    ("backup2_s", "2nd begin, one file changed: wall, s", 1),
    ("backup2_took_ms", "2nd begin: daemon's time, ms", 1),
    ("backup2_held_ms", "2nd begin: writers held, ms", 1),
    ("backup2_point_bytes", "2nd begin: point files, MiB", MIB),
    ("backup2_written_bytes", "2nd begin: daemon write_bytes, MiB", MIB),
    ("backup_end_s", "backup end, s", 1),
    ("fsck_s", "fsck -n (unmounted, caches dropped), s", 1),
    ("fsck_rss_kb", "fsck -n peak RSS, MiB", 1 / 1024),
    ("readback_s", "read every backing file once (caches dropped), s", 1),
    ("rm_s", "rm -rf (remount, caches dropped), s", 1),
    ("umount_end_s", "unmount after rm -rf, s", 1),
]
PHASES = ["create", "find", "stat", "read", "backup", "rm"]
ROWS += [(f"hwm_{p}_kb", f"daemon VmHWM during {p}, MiB", 1 / 1024) for p in PHASES]
PER_FILE = [("create_s", "create"), ("find_s", "find"), ("stat_s", "lstat"), ("read_s", "read"), ("rm_s", "rm -rf")]


def num(n, fs, metric):
    v = vals.get((n, fs, metric))
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def cell(n, fs, metric, scale, per_file=False):
    v = vals.get((n, fs, metric))
    if v is None:
        return "–"
    if v in ("skip", "n/a", "FAIL"):
        return {"skip": "skipped", "FAIL": "**FAIL**"}.get(v, v)
    if scale is None:
        return v
    return fmt(float(v) * scale * (1e6 / n if per_file else 1))


for n in ns:
    print(f"## N = {n:,} files")
    print()
    rows = []
    for key, label, scale in ROWS:
        if any((n, fs, key) in vals for fs in fs_list):
            rows.append([label] + [cell(n, fs, key, scale) for fs in fs_list])
    known = {key for key, _, _ in ROWS}
    for key in sorted({m for (n2, _, m), v in vals.items() if n2 == n and v == "FAIL" and m not in known}):
        rows.append([f"step {key[:-2]}"] + [cell(n, fs, key, 1) for fs in fs_list])
    print(table(["phase"] + fs_list, rows))
    print()

print("## Against N")
print()
print("Per-file costs are the phase's time divided by N, in µs; VmHWM is the daemon's peak RSS")
print("during that phase alone, in MiB. Ratios are digimedfs / a peer (gocryptfs, raw): lower")
print("is better for digimedfs (< 1 = cheaper than the peer).")
print()
rows = []
for key, label in PER_FILE:
    for fs in fs_list:
        if any((n, fs, key) in vals for n in ns):
            rows.append([f"{label}, µs/file", fs] + [cell(n, fs, key, 1, per_file=True) for n in ns])
for p in PHASES:
    for fs in fs_list:
        if any((n, fs, f"hwm_{p}_kb") in vals for n in ns):
            rows.append([f"VmHWM {p}, MiB", fs] + [cell(n, fs, f"hwm_{p}_kb", 1 / 1024) for n in ns])
for fs in fs_list:
    if any((n, fs, "readback_s") in vals for n in ns):
        r = ["fsck -n / one read of the backing dir", fs]
        for n in ns:
            a, b = num(n, fs, "fsck_s"), num(n, fs, "readback_s")
            r.append(f"{a / b:.2f}" if a is not None and b else "–")
        rows.append(r)
if rows:
    print(table(["metric", "fs"] + [f"N = {n:,}" for n in ns], rows))
    print()
ours = [fs for fs in fs_list if fs.startswith("digimedfs")]
for peer in [fs for fs in ("gocryptfs", "raw") if fs in fs_list]:
    if not ours:
        break
    rows = []
    metrics = [(k, f"{label}, µs/file") for k, label in PER_FILE]
    if peer != "raw":
        metrics += [(f"hwm_{p}_kb", f"VmHWM {p}") for p in PHASES if p != "backup"]
    for key, label in metrics:
        for fs in ours:
            r = [label, f"{fs} / {peer}"]
            for n in ns:
                a, b = num(n, fs, key), num(n, peer, key)
                r.append(f"{a / b:.2f}" if a is not None and b else "–")
            rows.append(r)
    print(f"### digimedfs / {peer} (lower is better)")
    print()
    print(table(["metric", "ratio"] + [f"N = {n:,}" for n in ns], rows))
    print()
EOF
    if [[ -s "$FAILS" ]]; then
        echo
        echo "## Failures"
        echo
        cat "$FAILS"
    fi
} | tee "$RESULTS"
cp "$DATA" "${RESULTS%.md}.tsv"
log "results written to $RESULTS (raw values: ${RESULTS%.md}.tsv; logs in $LOGS)"
[[ -s "$FAILS" ]] && exit 1
exit 0
