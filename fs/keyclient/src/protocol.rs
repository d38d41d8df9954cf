//! The key service's wire protocol: the path and the JSON body of every request and reply,
//! shared by the server (`digimedfs-keyservice`) and the client ([`crate::KeyService`]), so
//! the two cannot disagree. The server refuses fields it does not know (`deny_unknown_fields`)
//! rather than ignore them. Keys travel base64-encoded, under a transit wrap, and every body
//! that carries key material is zeroized when dropped. docs/keyservice.md describes the API.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Wraps a new filesystem's master key under the tenant's newest key version.
pub const PATH_WRAP: &str = "/v1/wrap";
/// Unwraps a key slot's key.
pub const PATH_UNWRAP: &str = "/v1/unwrap";
/// Moves a wrapped key to the tenant's newest key version.
pub const PATH_REWRAP: &str = "/v1/rewrap";
/// Records a filesystem's epoch and metadata digest (the rollback anchor).
pub const PATH_ANCHOR: &str = "/v1/anchor";
/// Checks an epoch and digest against the anchor.
pub const PATH_CHECK_ANCHOR: &str = "/v1/check_anchor";

/// Body of [`PATH_WRAP`].
#[derive(Debug, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
pub struct WrapRequest {
    /// The filesystem's UUID, 32 hex digits.
    pub fs_uuid: String,
    /// The master key, base64.
    pub key: String,
}

/// Body of [`PATH_UNWRAP`] and [`PATH_REWRAP`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnwrapRequest {
    /// The filesystem's UUID, 32 hex digits.
    pub fs_uuid: String,
    /// The key version the key is wrapped under.
    pub key_version: u32,
    /// The wrapped key, base64.
    pub wrapped: String,
}

impl UnwrapRequest {
    /// The body for the key `wrapped` under `key_version` of filesystem `fs_uuid`.
    pub fn new(fs_uuid: &[u8; 16], key_version: u32, wrapped: &[u8]) -> UnwrapRequest {
        use base64::Engine;
        UnwrapRequest {
            fs_uuid: hex::encode(fs_uuid),
            key_version,
            wrapped: base64::engine::general_purpose::STANDARD.encode(wrapped),
        }
    }
}

/// Body of [`PATH_ANCHOR`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorRequest {
    /// The filesystem's UUID, 32 hex digits.
    pub fs_uuid: String,
    /// The superblock epoch.
    pub epoch: u64,
    /// The superblock's metadata digest, 64 hex digits.
    pub digest: String,
}

/// Body of [`PATH_CHECK_ANCHOR`].
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckAnchorRequest {
    /// The filesystem's UUID, 32 hex digits.
    pub fs_uuid: String,
    /// The superblock epoch.
    pub epoch: u64,
    /// The superblock's metadata digest (64 hex digits); optional so that older clients keep
    /// working (they get the epoch check only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Reply to [`PATH_WRAP`] and [`PATH_REWRAP`].
#[derive(Debug, Serialize, Deserialize)]
pub struct WrappedReply {
    /// The key version the key is now wrapped under.
    pub key_version: u32,
    /// The wrapped key, base64.
    pub wrapped: String,
}

/// Reply to [`PATH_UNWRAP`].
#[derive(Debug, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct KeyReply {
    /// The master key, base64.
    pub key: String,
}

/// Reply to [`PATH_ANCHOR`] and [`PATH_CHECK_ANCHOR`].
#[derive(Debug, Serialize, Deserialize)]
pub struct AnchorReply {
    /// The newest epoch the service has recorded for the filesystem.
    pub newest_epoch: u64,
}

/// Reply to any request that failed (HTTP status 4xx or 5xx).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ErrorReply {
    /// A stable code, e.g. `wrong_tenant`, `unknown_key_version`, `rollback`.
    #[serde(default)]
    pub error: String,
    /// What went wrong, for people.
    #[serde(default)]
    pub message: String,
    /// The id under which the service's audit log has the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields() {
        let e = serde_json::from_str::<UnwrapRequest>(
            r#"{"fs_uuid":"00","key_version":1,"wrapped":"","extra":1}"#,
        );
        assert!(e.is_err());
    }

    #[test]
    fn check_anchor_digest_is_optional_both_ways() {
        let r: CheckAnchorRequest =
            serde_json::from_str(r#"{"fs_uuid":"00","epoch":3}"#).expect("old client body");
        assert_eq!(r.digest, None);
        let s = serde_json::to_string(&r).expect("serialize");
        assert!(!s.contains("digest"), "{s}");
    }
}
