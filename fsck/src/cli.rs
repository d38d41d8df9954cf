//! Command line of `fsck.digimed` (built as `fsck-digimed`).

use clap::{ArgGroup, Parser};
use digimedfs_keyclient::cli::KeyArgs;
use std::path::PathBuf;

/// Check and repair a digimedfs filesystem.
///
/// Without -n, -y or -p: asks before each repair when standard input is a terminal, and
/// otherwise only checks (as -n).
#[derive(Debug, Parser)]
#[command(name = "fsck.digimed", version, about, long_about = None)]
#[command(group(ArgGroup::new("mode").args(["no", "yes", "preen"])))]
#[command(group(ArgGroup::new("key").args(["key_file", "url"]).required(true)))]
#[command(group(ArgGroup::new("service").arg("url").requires_all(["tenant", "token_file", "ca_file"])))]
pub struct Cli {
    /// Check only; change nothing (works on a mounted filesystem: reads a snapshot of its metadata).
    #[arg(short = 'n')]
    pub no: bool,
    /// Repair every problem that can be repaired, including repairs that discard data no file refers to.
    #[arg(short = 'y')]
    pub yes: bool,
    /// Preen: repair only what is safe without a human decision.
    #[arg(short = 'p', short_alias = 'a')]
    pub preen: bool,
    /// Force a full check (the check is always full; accepted for fsck(8) compatibility).
    #[arg(short = 'f')]
    pub force: bool,
    /// Name each pass and print counts.
    #[arg(short = 'v')]
    pub verbose: bool,
    /// Print a machine-readable JSON report on standard output.
    #[arg(long = "json")]
    pub json: bool,
    /// The key that unlocks the filesystem: exactly one of --key-file and --keyservice (with
    /// --tenant, --token-file, --ca-file).
    #[command(flatten)]
    pub key: KeyArgs,
    /// The backing directory of the filesystem.
    pub backing_dir: PathBuf,
}
