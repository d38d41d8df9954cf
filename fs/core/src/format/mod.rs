//! On-disk format v1: byte layouts of the superblock and the metadata records, and the checked
//! codec they are read with. docs/format.md is the specification; this module implements it.

pub mod codec;
pub mod kind;
pub mod records;
pub mod superblock;

/// Formats a UUID as 8-4-4-4-12 hex.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h = hex::encode(u);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
