#!/usr/bin/env bash
# The whole test suite: formatting, lints, API docs, unit/integration tests and the end-to-end
# tests on real FUSE mounts (installing fuse3, rsync and restic if missing), including the ones
# on a live CephFS shared by two clients (a throwaway cluster from tests/cephfs/cluster, started
# here and stopped on exit). Needs fuse3
# (fusermount3) and /dev/fuse; run as root for the mount tests and the cluster.
#
# Mounts use FUSE over io_uring by default where the kernel allows it (Linux 6.14+ with the
# fuse module's enable_uring on), so the first pass switches enable_uring off, and the
# end-to-end tests then run a second time with it on (and mount option `uring`); the switch is
# put back as it was on exit.
#
# DIGIMEDFS_SKIP_CEPH=1 skips the cluster and the CephFS tests (they say so when skipped).
# Last, scripts/test-deb.sh builds the Debian package and checks it (DIGIMEDFS_SKIP_DEB=1 skips),
# and scripts/test-systemd.sh installs it on a throwaway machine booted with systemd
# (systemd-nspawn) and runs the key service and an fstab mount there as docs/operations.md
# says (DIGIMEDFS_SKIP_SYSTEMD=1 skips).
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
cargo clippy --workspace --all-targets --all-features -- -D warnings
# The API docs must build without broken links (module maps are read as references).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo build --workspace --bins
uring_switch=/sys/module/fuse/parameters/enable_uring
uring_was=""
stop_cluster=""
cleanup() {
    if [[ -n $uring_was ]]; then echo "$uring_was" >"$uring_switch"; fi
    if [[ -n $stop_cluster ]]; then tests/cephfs/cluster stop; fi
}
trap cleanup EXIT
if [[ "${DIGIMEDFS_SKIP_CEPH:-}" != 1 ]]; then
    if ! tests/cephfs/cluster status >/dev/null 2>&1; then
        stop_cluster=1
        tests/cephfs/cluster start
    fi
    eval "$(tests/cephfs/cluster env)"
fi
# First pass over /dev/fuse.
if [[ -w $uring_switch ]]; then
    uring_was=$(cat "$uring_switch")
    echo 0 >"$uring_switch"
fi
cargo test --workspace --features digimedfs-tests/e2e

# The end-to-end tests again over FUSE's io_uring transport, when the kernel has it.
if [[ -n $uring_was ]]; then
    echo 1 >"$uring_switch"
    DIGIMEDFS_TEST_MOUNT_OPTIONS=uring cargo test -p digimedfs-tests --features e2e --test e2e -- --skip cephfs
else
    echo "FUSE over io_uring not available here ($uring_switch): io_uring pass skipped"
fi

# The Debian package: built (release) and checked in a throwaway root, never installed here.
# DIGIMEDFS_SKIP_DEB=1 skips it (it needs cargo-deb, man-db and systemd-analyze; .ci/run has them).
if [[ "${DIGIMEDFS_SKIP_DEB:-}" != 1 ]]; then
    scripts/test-deb.sh
else
    echo "DIGIMEDFS_SKIP_DEB=1: Debian package not built or checked"
fi

# The package installed and run under systemd, in a container; nothing is installed here.
# DIGIMEDFS_SKIP_SYSTEMD=1 skips it (it needs systemd-nspawn, openssl and curl; .ci/run has them).
if [[ "${DIGIMEDFS_SKIP_SYSTEMD:-}" != 1 ]]; then
    scripts/test-systemd.sh
else
    echo "DIGIMEDFS_SKIP_SYSTEMD=1: the package not tested under systemd"
fi
