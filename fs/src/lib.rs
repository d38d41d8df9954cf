//! digimedfs: the FUSE front end of the encrypted research filesystem.
//!
//! The filesystem itself is `digimedfs-core` (no FUSE there); this crate adapts it to the
//! kernel through [`fuse`] (fuser over `/dev/fuse`, and FUSE over io_uring), and its binary
//! (`src/main.rs`) is the `digimedfs` command: mount, keys, backups.

pub mod fuse;
