#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/integration tests and the end-to-end tests on
# real FUSE mounts (installing fuse3, rsync and restic if missing), including the ones on a
# live CephFS shared by two clients (a throwaway
# cluster from tests/cephfs/cluster, started here and stopped on exit). Needs fuse3
# (fusermount3) and /dev/fuse; run as root for the mount tests and the cluster.
#
# Where the kernel has FUSE over io_uring (Linux 6.14+), the end-to-end tests then run a second
# time over it (mount option `uring`), with the fuse module's enable_uring switched on for that
# pass only.
#
# DIGIMEDFS_SKIP_CEPH=1 skips the cluster and the CephFS tests (they say so when skipped).
# A cluster that already runs (tests/cephfs/cluster start by hand) is used and left running.
set -euo pipefail
cd "$(dirname "$0")/.."
# Tools the end-to-end tests drive: fusermount3, and the backup tools a backup job uses.
missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v restic >/dev/null 2>&1 || missing+=(restic)
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
if [[ "${DIGIMEDFS_SKIP_CEPH:-}" != 1 ]]; then
    if ! tests/cephfs/cluster status >/dev/null 2>&1; then
        trap 'tests/cephfs/cluster stop' EXIT
        tests/cephfs/cluster start
    fi
    eval "$(tests/cephfs/cluster env)"
fi
cargo test --workspace

# The end-to-end tests again over FUSE's io_uring transport (mount option `uring`), when the
# kernel has it: its switch is switched on for this pass and put back afterwards.
uring_switch=/sys/module/fuse/parameters/enable_uring
if [[ -w $uring_switch ]]; then
    uring_was=$(cat "$uring_switch")
    echo 1 >"$uring_switch"
    status=0
    DIGIMEDFS_TEST_MOUNT_OPTIONS=uring cargo test -p digimedfs-tests --test e2e -- --skip cephfs ||
        status=$?
    echo "$uring_was" >"$uring_switch"
    exit "$status"
else
    echo "FUSE over io_uring not available here ($uring_switch): io_uring pass skipped"
fi
