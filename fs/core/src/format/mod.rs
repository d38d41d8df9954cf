//! On-disk format v1: byte layouts of the superblock and the metadata records, and the checked
//! codec they are read with. docs/format.md is the specification; this module implements it.

pub mod codec;
pub mod records;
pub mod superblock;
