//! The digimedfs core: everything the filesystem is, without FUSE, a store engine or TLS.
//!
//! Layers, lowest first; a module uses only what sits below it:
//! - [`error`]: the one error type, with its errno mapping.
//! - [`crypto`]: keys, HKDF labels, AES-256-XTS block cipher, block MACs, record sealing, key
//!   slots.
//! - [`format`](mod@format): on-disk byte layouts (superblock, metadata records) and a checked codec.
//! - [`keysource`]: the [`keysource::KeySource`] trait (where a filesystem's wrapping key comes
//!   from) and the key file; the key service client is `digimedfs-keyclient`.
//! - [`confined`], [`backing`]: the backing directory, reached without following links, its
//!   superblock copies and mount lock.
//! - [`integrity`]: which stored versions of a block are acceptable (reads, mount, fsck).
//! - [`meta`]: the [`meta::MetaStore`] and [`meta::MetaEngine`] traits (the engine, sled, is
//!   `digimedfs-sled`), sealed records, the running digest and the group commit.
//! - [`objects`]: the data object store (ciphertext files in the backing directory).
//! - [`backup`]: backup point formats, keyless verify, restore.
//! - [`filesystem`]: the filesystem itself (lookup, create, read, write, rename, ...), which
//!   front ends such as the FUSE adapter in `digimedfs` drive.
//! - [`check`], [`mkfs`]: fsck's checker and filesystem creation; [`keyslots`]: adding,
//!   removing and replacing key slots offline (`digimedfs key`).
//! - [`hardening`]: process hardening the binaries apply at start.
//! - [`mounts`]: this host's mount table.
//! - [`admin`]: `digimedfs info` (what a backing directory says, without a key) and `tune`
//!   (relabelling the superblock offline).
//! - [`logging`] (feature `logging`): where the binaries log (journal, stderr).
//! - [`sd_notify`]: readiness and status messages to systemd (`$NOTIFY_SOCKET`).

pub mod admin;
pub mod backing;
pub mod backup;
pub mod check;
pub mod confined;
pub mod crypto;
pub mod error;
pub mod filesystem;
pub mod format;
pub mod hardening;
pub mod integrity;
pub mod keyslots;
pub mod keysource;
#[cfg(feature = "logging")]
pub mod logging;
pub mod meta;
pub mod mkfs;
pub mod mounts;
pub mod objects;
pub mod sd_notify;

pub use error::{Error, Result};

/// In-memory filesystems for tests (crash images, tampering).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
