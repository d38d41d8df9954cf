#!/usr/bin/env bash
# The main job on a fresh Debian machine with Rust: install what is needed, build, create a demo
# project filesystem with a generated key, mount it, and show that it works.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
if ! command -v fusermount3 >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null
fi
cargo build --release --workspace --bins
bin=target/release
demo=${DIGIMEDFS_DEMO_DIR:-/var/tmp/digimedfs-demo}
mkdir -p "$demo/mnt"
[ -f "$demo/demo.key" ] || "$bin/digimedfs" keygen "$demo/demo.key"
[ -f "$demo/backing/superblock" ] ||
    "$bin/mkfs-digimed" -L demo --tenant demo --key-file "$demo/demo.key" "$demo/backing"
if ! mountpoint -q "$demo/mnt"; then
    "$bin/digimedfs" mount --key-file "$demo/demo.key" "$demo/backing" "$demo/mnt"
fi
echo "patient 0042: cohort A, sample 17" > "$demo/mnt/hello.txt"
mkdir -p "$demo/mnt/results"
echo "== the mount (plaintext, for the project) =="
ls -la "$demo/mnt"
cat "$demo/mnt/hello.txt"
echo "== the backing directory (what storage sees) =="
find "$demo/backing" -maxdepth 2 | sort
if grep -rqa "patient 0042" "$demo/backing"; then
    echo "ERROR: plaintext found on storage" >&2
    exit 1
fi
echo "no plaintext on storage."
echo
echo "The demo filesystem is mounted on $demo/mnt."
echo "Unmount with: fusermount3 -u $demo/mnt   (or: umount $demo/mnt)"
