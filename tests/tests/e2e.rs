//! End-to-end tests of digimedfs: the real binaries, a real FUSE mount, real syscalls.
//!
//! Built only with the `e2e` feature (`scripts/test.sh` runs them; by hand: `cargo build
//! --workspace --bins && cargo test -p digimedfs-tests --features e2e --test e2e`), because
//! they run the built binaries and need root, /dev/fuse and fusermount3. Each test makes its own key, backing directory and mountpoint, so they may
//! run in parallel.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "e2e/admin.rs"]
mod admin;
#[path = "e2e/backup.rs"]
mod backup;
#[path = "e2e/cephfs.rs"]
mod cephfs;
#[path = "e2e/cli.rs"]
mod cli;
#[path = "e2e/hostile_storage.rs"]
mod hostile_storage;
#[path = "e2e/integrity.rs"]
mod integrity;
#[path = "e2e/keyservice.rs"]
mod keyservice;
#[path = "e2e/large_offsets.rs"]
mod large_offsets;
#[path = "e2e/metrics.rs"]
mod metrics;
#[path = "e2e/persistence.rs"]
mod persistence;
#[path = "e2e/posix.rs"]
mod posix;
#[path = "e2e/scale.rs"]
mod scale;
#[path = "e2e/systemd.rs"]
mod systemd;
#[path = "e2e/uring.rs"]
mod uring;
#[path = "e2e/workload.rs"]
mod workload;
