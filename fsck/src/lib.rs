//! `fsck.digimed`'s command line and exit codes as a library, so that the man page and shell
//! completions (fs/mangen) are generated from the same clap definitions and exit codes the
//! binary uses.

pub mod cli;
pub mod exit;
pub mod progress;
