//! digimedfs: the FUSE front end of the encrypted research filesystem.
//!
//! The filesystem itself is `digimedfs-core` (no FUSE there); this crate adapts it to the
//! kernel through [`fuse`] (fuser over `/dev/fuse`, and FUSE over io_uring), and its binary
//! (`src/main.rs`) is the `digimedfs` command: mount, keys, backups, `info` and `tune` (their
//! output formed by [`admin`]). Its command line ([`cli`]) lives here so that the man pages and
//! completions (fs/mangen) come from the same clap definitions the binary parses with.

// `cli` names this crate `digimedfs::…`, as the binary does.
extern crate self as digimedfs;

pub mod admin;
pub mod cli;
pub mod fuse;
pub mod progress;
