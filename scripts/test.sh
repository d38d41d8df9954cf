#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/integration tests and the end-to-end tests on
# real FUSE mounts. Needs fuse3 (fusermount3) and /dev/fuse; run as root for the mount tests.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace --bins
cargo test --workspace
