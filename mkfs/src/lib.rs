//! `mkfs.digimed`'s command line as a library, so that the man page and shell completions
//! (fs/mangen) are generated from the same clap definitions the binary parses with.

pub mod cli;
