//! Cryptographic primitives of digimedfs.
//!
//! Everything that touches key material or ciphertext lives here, behind a small, fixed API:
//!
//! - [`keys`]: the master key, the wrapping key and the derived working keys ([`FsKeys`]).
//! - [`incarnation`]: the block keys of each incarnation (read-write open) of a filesystem,
//!   so that no (key, tweak) pair or tag mask input repeats across restores and copies.
//! - [`kdf`]: HKDF-SHA256 and every derivation label and associated-data or domain prefix, of
//!   the filesystem and of the key service (part of the on-disk format, pinned by a test).
//! - [`xts`]: AES-256-XTS (IEEE 1619) over one whole filesystem block ([`DataCipher`]).
//! - [`mac`]: block tags (POLYVAL with an AES mask) and keyed BLAKE3 MACs for names, the
//!   superblock and the metadata digest.
//! - [`seal`]: AES-256-GCM-SIV sealing of metadata records ([`MetaSealer`]).
//! - [`slots`]: envelope encryption of the master key under a wrapping key (key slots).
//!
//! Guarantees: key types are neither `Debug`, `Clone` nor `Copy`, are zeroized on drop and expose
//! their bytes only through an explicit `expose()`; no function here panics on its inputs
//! (malformed input becomes an `Err` or `None`; the workspace lints forbid `unwrap`, `expect`,
//! indexing and `panic!` outside tests). The exact byte layouts are documented in
//! `docs/crypto-primitives.md`.

pub mod incarnation;
pub mod kdf;
pub mod keys;
pub mod mac;
pub mod seal;
pub mod slots;
pub mod xts;

pub use keys::{FsKeys, MasterKey, WrappingKey, MASTER_KEY_LEN, WRAPPING_KEY_LEN};
pub use mac::{BlockMac, NameMac, RecordMac, TAG_LEN};
pub use seal::{MetaSealer, SEAL_OVERHEAD};
pub use xts::DataCipher;
