#!/bin/bash
# Runs xfstests against digimedfs.
#
# Usage: xfstests/run.sh XFSTESTS_DIR [TEST_LIST...]
#
#   XFSTESTS_DIR  your own checkout of xfstests (xfstests-dev), already built with make
#                 (nothing of xfstests is part of this repository)
#   TEST_LIST     tests or check options, passed to xfstests' ./check as they are
#                 (e.g. generic/001 generic/013, -g generic/rw, or -g all for the whole generic
#                 group: for FSTYP=fuse "all" is every test in tests/generic); default:
#                 -g generic/quick
#
# Run as root. Needs fuse3 (mount.fuse3) and digimedfs installed with scripts/install.sh
# (mount -t fuse.digimedfs only finds the installed binary). See docs/xfstests.md.
#
# What it does:
#   1. makes $DIGIMEDFS_XFS_WORK/{backing,mnt}/{test,scratch} and a key file;
#   2. unmounts leftovers and runs mkfs.digimed on both backing directories (xfstests cannot
#      make a fuse filesystem itself; see local.config);
#   3. runs ./check with HOST_OPTIONS=xfstests/local.config, -E xfstests/exclude and a
#      watchdog that kills any single test running longer than DIGIMEDFS_XFS_TIMEOUT seconds;
#   4. unmounts, runs fsck.digimed -n on both backing directories and writes a summary
#      (pass/fail/timed-out/notrun counts, failures, the .out.bad diffs) to
#      $DIGIMEDFS_XFS_RESULTS.
#
# Environment:
#   DIGIMEDFS_XFS_WORK     work directory (default /var/tmp/digimedfs-xfstests)
#   DIGIMEDFS_KEY_FILE     key file (default $DIGIMEDFS_XFS_WORK/xfstests.key; made if absent)
#   DIGIMEDFS_XFS_TIMEOUT  per-test timeout in seconds (default 300)
#   DIGIMEDFS_XFS_EXCLUDE  exclude list (default xfstests/exclude; "none" runs everything)
#   DIGIMEDFS_XFS_RESULTS  where the summary goes (default xfstests/results)
#   DIGIMEDFS_XFS_NO_MKFS  set to 1 to keep the existing filesystems (no mkfs)
set -u

HARNESS=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HARNESS/.." && pwd)

die() { echo "run.sh: $*" >&2; exit 2; }

[ $# -ge 1 ] || die "usage: xfstests/run.sh XFSTESTS_DIR [TEST_LIST...]"
XFSTESTS_DIR=$(cd "$1" 2>/dev/null && pwd) || die "no such directory: $1"
shift
[ -x "$XFSTESTS_DIR/check" ] || die "$XFSTESTS_DIR is not an xfstests checkout (no ./check)"
[ -x "$XFSTESTS_DIR/ltp/fsstress" ] || die "$XFSTESTS_DIR is not built: run make there first"
[ "$(id -u)" = 0 ] || die "xfstests must run as root"
command -v mount.fuse3 >/dev/null 2>&1 || [ -x /sbin/mount.fuse3 ] || [ -x /usr/sbin/mount.fuse3 ] \
    || die "mount.fuse3 not found: apt-get install fuse3"
for u in fsgqa fsgqa2 123456-fsgqa; do
    id "$u" >/dev/null 2>&1 || echo "run.sh: warning: user $u missing; tests that need it will not run (see xfstests' README)" >&2
done

export DIGIMEDFS_XFS_WORK=${DIGIMEDFS_XFS_WORK:-/var/tmp/digimedfs-xfstests}
export DIGIMEDFS_KEY_FILE=${DIGIMEDFS_KEY_FILE:-$DIGIMEDFS_XFS_WORK/xfstests.key}
TIMEOUT=${DIGIMEDFS_XFS_TIMEOUT:-300}
EXCLUDE=${DIGIMEDFS_XFS_EXCLUDE:-$HARNESS/exclude}
RESULTS=${DIGIMEDFS_XFS_RESULTS:-$HARNESS/results}
WORK=$DIGIMEDFS_XFS_WORK
case $WORK in /*) ;; *) die "DIGIMEDFS_XFS_WORK must be an absolute path (it names the devices)" ;; esac

# The binaries. mount(8) runs mount.fuse3 with PATH reset to
# /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin, and mount.fuse3 runs "digimedfs"
# from that PATH: so the installed binaries are used (scripts/install.sh), not target/release.
STD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
DIGIMEDFS=$(PATH=$STD_PATH command -v digimedfs) || die "digimedfs is not installed: run scripts/install.sh"
MKFS=$(PATH=$STD_PATH command -v mkfs.digimed) || die "mkfs.digimed is not installed: run scripts/install.sh"
FSCK=$(PATH=$STD_PATH command -v fsck.digimed) || die "fsck.digimed is not installed: run scripts/install.sh"
if [ -x "$REPO/target/release/digimedfs" ] && ! cmp -s "$REPO/target/release/digimedfs" "$DIGIMEDFS"; then
    echo "run.sh: warning: $DIGIMEDFS differs from target/release/digimedfs; run scripts/install.sh to test the current build" >&2
fi
echo "run.sh: using $DIGIMEDFS, $MKFS, $FSCK"

TEST_DEV=$WORK/backing/test
SCRATCH_DEV=$WORK/backing/scratch
TEST_DIR=$WORK/mnt/test
SCRATCH_MNT=$WORK/mnt/scratch
mkdir -p "$TEST_DEV" "$SCRATCH_DEV" "$TEST_DIR" "$SCRATCH_MNT" "$WORK/results" "$RESULTS"
[ -f "$DIGIMEDFS_KEY_FILE" ] || "$DIGIMEDFS" keygen "$DIGIMEDFS_KEY_FILE" >/dev/null \
    || die "digimedfs keygen failed"

# Aborts the FUSE connection behind a mountpoint (unblocks processes stuck on a hung daemon),
# then unmounts it.
abort_mount() {
    local mnt=$1 dev
    mountpoint -q "$mnt" || return 0
    dev=$(findmnt -n -o MAJ:MIN --mountpoint "$mnt" 2>/dev/null | tr -d ' ')
    if [ -n "$dev" ] && [ -w "/sys/fs/fuse/connections/${dev#*:}/abort" ]; then
        echo 1 > "/sys/fs/fuse/connections/${dev#*:}/abort"
    fi
    umount -l "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null
}
unmount_all() {
    local mnt
    for mnt in "$SCRATCH_MNT" "$TEST_DIR"; do
        while mountpoint -q "$mnt"; do
            umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null || { abort_mount "$mnt"; sleep 1; }
        done
    done
    # The daemon exits (and releases its lock on the backing directory) after the unmount,
    # once its last flush and object removals are done (seconds, see umount-fuse);
    # mkfs.digimed and fsck.digimed must not run before that.
    local i dev
    for dev in "$TEST_DEV" "$SCRATCH_DEV"; do
        for i in $(seq 600); do
            ps -eo args= | grep -F -- " $dev " | grep -q "^[^ ]*digimedfs " || break
            sleep 0.2
        done
    done
}

unmount_all
if [ "${DIGIMEDFS_XFS_NO_MKFS:-0}" != 1 ]; then
    for dev in "$TEST_DEV" "$SCRATCH_DEV"; do
        "$MKFS" -f -q --tenant xfstests --key-file "$DIGIMEDFS_KEY_FILE" "$dev" \
            || die "mkfs.digimed $dev failed"
    done
fi

if [ $# -eq 0 ]; then
    set -- -g generic/quick
fi
EXCLUDE_ARGS=()
if [ "$EXCLUDE" != none ]; then
    [ -f "$EXCLUDE" ] || die "no exclude list $EXCLUDE"
    EXCLUDE_ARGS=(-E "$EXCLUDE")
fi

LOG=$WORK/check.out
TIMEDOUT=$WORK/timed-out
: > "$TIMEDOUT"

# Descendants of a process, deepest first.
descendants() {
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        descendants "$child"
        echo "$child"
    done
}

# Watchdog: check runs each test as a child "/bin/bash .../tests/DIR/NNN"; if one runs longer than
# $TIMEOUT, kill it and its descendants (by pid), aborting our FUSE mounts if they do not die.
watchdog() {
    local check_pid=$1 pid etime args test
    while kill -0 "$check_pid" 2>/dev/null; do
        sleep 5
        for pid in $(descendants "$check_pid"); do
            read -r etime args < <(ps -o etimes=,args= -p "$pid" 2>/dev/null) || continue
            case $args in
                *bash*/tests/[a-z]*/[0-9]*) ;;
                *) continue ;;
            esac
            [ "${etime:-0}" -gt "$TIMEOUT" ] || continue
            test=$(echo "$args" | grep -oE 'tests/[a-z0-9]+/[0-9]+' | head -1)
            echo "${test#tests/} killed after ${TIMEOUT}s" >> "$TIMEDOUT"
            echo "run.sh: watchdog: ${test#tests/} ran over ${TIMEOUT}s, killing it" >&2
            kill -TERM $(descendants "$pid") "$pid" 2>/dev/null
            sleep 10
            if kill -0 "$pid" 2>/dev/null; then
                kill -KILL $(descendants "$pid") "$pid" 2>/dev/null
                sleep 5
                kill -0 "$pid" 2>/dev/null && { abort_mount "$SCRATCH_MNT"; abort_mount "$TEST_DIR"; }
            fi
        done
    done
}

echo "run.sh: ./check ${EXCLUDE_ARGS[*]} $* (per-test timeout ${TIMEOUT}s)"
start=$(date +%s)
(
    cd "$XFSTESTS_DIR" || exit 2
    export HOST_OPTIONS=$HARNESS/local.config
    exec ./check -R xunit "${EXCLUDE_ARGS[@]}" "$@"
) > >(tee "$LOG") 2>&1 &
check_pid=$!
watchdog "$check_pid" &
watchdog_pid=$!
wait "$check_pid"
check_status=$?
kill "$watchdog_pid" 2>/dev/null
wait "$watchdog_pid" 2>/dev/null
end=$(date +%s)

unmount_all
FSCK_REPORT=""
for dev in "$TEST_DEV" "$SCRATCH_DEV"; do
    if out=$("$FSCK" -n --key-file "$DIGIMEDFS_KEY_FILE" "$dev" 2>&1); then
        FSCK_REPORT+="fsck.digimed -n $dev: clean"$'\n'
    else
        FSCK_REPORT+="fsck.digimed -n $dev: exit $? (NOT CLEAN)"$'\n'"$(echo "$out" | tail -20)"$'\n'
    fi
done

# Summary from check's own final lines: "Ran: ...", "Not run: ...", "Failures: ...".
ran=$(sed -n 's/^Ran: //p' "$LOG" | tail -1)
notrun=$(sed -n 's/^Not run: //p' "$LOG" | tail -1)
failures=$(sed -n 's/^Failures: //p' "$LOG" | tail -1)
expunged=$(grep -c '\[expunged\]' "$LOG")
timedout=$(cut -d' ' -f1 "$TIMEDOUT" | sort -u | tr '\n' ' ')
n_ran=$(echo $ran | wc -w)
n_notrun=$(echo $notrun | wc -w)
n_timedout=$(echo $timedout | wc -w)
# A test the watchdog killed is "timed out", whatever check made of it (it may even pass if
# the killed part printed nothing): the counts below do not overlap.
n_fail=0
for t in $failures; do
    case " $timedout " in *" $t "*) ;; *) n_fail=$((n_fail + 1)) ;; esac
done
n_pass=$((n_ran - n_notrun - n_fail - n_timedout))   # check counts not-run tests as "Ran"

SUMMARY=$RESULTS/summary.txt
{
    echo "digimedfs xfstests run"
    echo "date:        $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "kernel:      $(uname -r)"
    echo "xfstests:    $(git -C "$XFSTESTS_DIR" log -1 --format='%h %s' 2>/dev/null || echo unknown)"
    echo "digimedfs:   $DIGIMEDFS (installed $(date -u -r "$DIGIMEDFS" '+%Y-%m-%d %H:%M UTC'), sha256 $(sha256sum "$DIGIMEDFS" | cut -c1-16)); repo HEAD $(git -C "$REPO" log -1 --format='%h' 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
    if [ $# -gt 12 ]; then
        echo "tests:       $# named: ${*:1:6} ... ${!#}"
    else
        echo "tests:       $*"
    fi
    echo "exclude:     ${EXCLUDE_ARGS[*]:-none}"
    echo "duration:    $((end - start))s (per-test timeout ${TIMEOUT}s)"
    echo
    echo "passed:      $n_pass"
    echo "failed:      $n_fail"
    echo "timed out:   $n_timedout (killed by the watchdog; counted neither passed nor failed)"
    echo "not run:     $n_notrun"
    echo "expunged:    $expunged (listed in the exclude file)"
    echo
    echo "failures:    ${failures:-none}"
    echo "killed:      ${timedout:-none}"
    echo
    echo "$FSCK_REPORT"
} > "$SUMMARY"

# The lines check printed per test, and the diff of each failure.
grep -E '^[a-z0-9]+/[0-9]+ ' "$LOG" > "$RESULTS/check.log" 2>/dev/null
: > "$RESULTS/failures.diff"
for t in $failures; do
    {
        echo "=== $t"
        bad=$WORK/results/$t.out.bad
        if [ -f "$bad" ]; then
            diff -u "$XFSTESTS_DIR/tests/$t.out" "$bad" | head -60
        else
            echo "(no .out.bad)"
        fi
        echo
    } >> "$RESULTS/failures.diff"
done
cat "$SUMMARY"
echo "run.sh: summary in $RESULTS; xfstests' full results (.out.bad, .full) in $WORK/results"
[ -n "$failures" ] && exit 1
exit $check_status
