//! digimedfs: an encrypted, integrity-protected research filesystem.
//!
//! # Layout
//! - [`crypto`]: keys, HKDF labels, AES-256-XTS block cipher, block MACs, record sealing, key slots.
//! - [`format`]: on-disk byte layouts (superblock, metadata records) and a checked codec.
//! - [`keysource`]: where the wrapping key of a filesystem comes from (key file, key service).
//! - [`meta`]: the metadata store (sled) holding only sealed records.
//! - [`objects`]: the data object store (ciphertext files in the backing directory).
//! - [`backup`]: backup points (consistent copies of a live filesystem), keyless verify, restore.
//! - [`core`]: the FUSE-independent filesystem (lookup, create, read, write, rename, ...).
//! - [`fuse`]: the thin `fuser` adapter over [`core`].

pub mod backing;
pub mod backup;
pub mod check;
pub mod confined;
pub mod core;
pub mod crypto;
pub mod error;
pub mod format;
pub mod fuse;
pub mod hardening;
pub mod keysource;
pub mod meta;
pub mod mkfs;
pub mod objects;

pub use error::{Error, Result};

/// In-memory filesystems for tests (crash images, tampering).
pub mod testing;
