# Shared setup of the probes: scratch dir, binaries, key, tarball of the benchmark tree.
# Knobs: PROBE_DIR [/var/tmp/digimedfs-probe], BIN [<repo>/target/release], TREE_TAR
# [$PROBE_DIR/tree.tar, built like bench/run.sh's on first use], NO_TREE_TAR=1 (a script that
# needs no tarball, such as bench/scale.sh, skips building it).
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=bench/proc.sh
. "$REPO/bench/proc.sh"
Q="${PROBE_DIR:-/var/tmp/digimedfs-probe}"
BIN="${BIN:-$REPO/target/release}"
TREE_TAR="${TREE_TAR:-$Q/tree.tar}"
mkdir -p "$Q"
[[ -f $Q/k ]] || "$BIN/digimedfs" keygen "$Q/k" >/dev/null
if [[ -z ${NO_TREE_TAR:-} && ! -f $TREE_TAR ]]; then
    tar -cf "$TREE_TAR" --hard-dereference --ignore-failed-read /usr/include /usr/share/doc \
        /usr/lib/python3 /usr/share/vim /usr/share/perl /usr/share/zoneinfo /usr/share/mime \
        /usr/share/i18n 2>/dev/null
fi

# fresh_mount NAME [mount args...]: new filesystem in $Q/back-NAME mounted on $Q/mnt-NAME;
# sets B, M and P (daemon pid).
fresh_mount() {
    local name=$1; shift
    B=$Q/back-$name M=$Q/mnt-$name
    unmount_and_wait "$M" "$B"
    rm -rf "$B"; mkdir -p "$B" "$M"
    "$BIN/mkfs-digimed" --tenant probe --key-file "$Q/k" "$B" >/dev/null
    "$BIN/digimedfs" mount --key-file "$Q/k" "$@" "$B" "$M" || exit 1
    P=$(pgrep -f "digimedfs mount -f.*$B" | head -1)
}

# unmount_and_wait MOUNTPOINT BACKING: unmounts and waits until the daemon serving BACKING
# has exited (it writes back after the unmount returned; a probe that goes on at once measures
# the next step against that work, or removes the backing directory under it).
unmount_and_wait() {
    local pids i
    pids=$(pgrep -f "digimedfs mount -f.*$2( |$)")
    fusermount3 -u "$1" 2>/dev/null
    for ((i = 0; i < 600; i++)); do
        [[ -z $pids ]] && return 0
        # shellcheck disable=SC2086  # one argument per pid
        running $pids || return 0
        sleep 0.1
    done
    echo "daemon(s) $pids for $2 still alive 60 s after the unmount" >&2
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
timed() { # label cmd...: prints label and wall seconds
    local label=$1 s e; shift
    s=$(date +%s.%N); "$@"; e=$(date +%s.%N)
    printf '%-10s %7.2f s\n' "$label" "$(echo "$e - $s" | bc)"
}
