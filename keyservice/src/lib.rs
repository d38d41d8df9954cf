//! The digimedfs key service: per-tenant key-encryption keys that never leave the service.
//!
//! A filesystem's 64-byte master key is stored only wrapped in a key slot of its superblock.
//! With key slot kind 2 the wrap is done by this service ("transit" envelope encryption): the
//! client sends the master key over TLS, the service wraps it under the tenant's current KEK and
//! returns the ciphertext; to mount, the client sends the wrapped key back and receives the
//! master key. See docs/keyservice.md.
//!
//! Modules: [`keys`] (key hierarchy), [`state`] (state directory, sealed root), [`registry`]
//! (tenants and tokens), [`audit`] (HMAC-chained audit log), [`anchors`] (rollback anchors),
//! [`tls`], [`server`] (HTTPS API). The blocking client (`KeySource` kind 2) lives in the
//! filesystem library, so that `digimedfs` and `mkfs.digimed` can use it; it is re-exported
//! here as [`client`].

pub mod admin;
pub mod anchors;
pub mod audit;
pub mod cli;
pub mod error;
pub mod keys;
pub mod registry;
pub mod server;
pub mod state;
pub mod tls;

pub use digimedfs_core::sd_notify;
pub use digimedfs_keyclient as client;
pub use error::{Error, Result};
