//! Where the wrapping key of a filesystem comes from.
//!
//! The master key of a filesystem is stored only wrapped (see [`crate::crypto::slots`]); a
//! [`KeySource`] supplies the key that unwraps it. This module implements the local key file;
//! the key service adds a second implementation of the same trait.

use crate::crypto::WrappingKey;
use crate::Result;

/// A source of the wrapping key for one filesystem.
pub trait KeySource: Send + Sync {
    /// Short description for messages and the superblock's slot record, e.g. `key file /etc/x.key`.
    fn describe(&self) -> String;
    /// The kind code stored in the key slot (1 = key file, 2 = key service).
    fn kind(&self) -> u8;
    /// The wrapping key for the filesystem `fs_uuid`.
    fn wrapping_key(&self, fs_uuid: &[u8; 16]) -> Result<WrappingKey>;
}
