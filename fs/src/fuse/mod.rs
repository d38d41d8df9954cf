//! The FUSE front end: a thin [`fuser`] adapter over [`digimedfs_core::filesystem::Filesystem`] and the code
//! that mounts it, serves it and unmounts it.
//!
//! - [`adapter`]: [`DigimedFuse`], the `fuser::Filesystem` implementation (one kernel request,
//!   one core call, one reply).
//! - [`mount`]: mount options and [`mount_foreground`], which serves a mount until it is
//!   unmounted or the process is asked to stop, then closes the filesystem.
//! - [`uring`]: FUSE over io_uring, the faster transport beside fuser's `/dev/fuse` loop
//!   (mount option `uring`), calling the same request handlers as the adapter.
//! - [`stats`]: the mount's counters, written to a metrics file while it is mounted.
//! - [`idlewait`]: when a ring thread waits for requests as `SCHED_IDLE` (so that callers keep
//!   their CPU) and when contention makes it wait as a normal thread instead.

pub mod adapter;
pub mod idlewait;
pub mod mount;
pub mod stats;
pub mod uring;

pub use adapter::{convert, DigimedFuse, UringMode, TTL};
pub use mount::{mount_foreground, mount_options, MountOpts};
