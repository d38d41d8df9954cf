#!/usr/bin/env bash
# Builds the Debian package of digimedfs with cargo-deb (`cargo install cargo-deb`):
#   1. the four binaries and the man page generator, in release mode;
#   2. man pages (gzipped) and completions into TARGET/release/assets (digimedfs-mangen);
#   3. `cargo deb --no-build` with fs/Cargo.toml's [package.metadata.deb].
# Writes TARGET/debian/digimedfs_VERSION-1_ARCH.deb (TARGET: $CARGO_TARGET_DIR, else target)
# and prints its path. Extra arguments go to cargo deb (e.g. --output DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
    echo "build-deb.sh: cargo-deb not found: cargo install --locked cargo-deb" >&2
    exit 1
fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release --locked -p digimedfs -p mkfs-digimed -p fsck-digimed \
    -p digimedfs-keyservice -p digimedfs-mangen
rm -rf "$target/release/assets"
"$target/release/digimedfs-mangen" "$target/release/assets"
# Debian policy: man pages gzipped (-n: no name or time stamp, so the package is reproducible).
gzip -9n "$target/release/assets/man/man"[18]/*
# What fsck(8) runs for a backing directory whose fstab line has type fuse.digimedfs.
ln -s fsck.digimed "$target/release/assets/fsck.fuse.digimedfs"
# Stripped binaries, as Debian ships them (the release profile keeps line tables for
# backtraces in builds from source).
cargo deb -p digimedfs --no-build --locked --strip "$@"
