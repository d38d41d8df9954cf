//! Command line of `fsck.digimed` (built as `fsck-digimed`).

use clap::{ArgGroup, Parser};
use digimedfs_keyclient::cli::KeyArgs;
use std::path::PathBuf;

/// Check and repair a digimedfs filesystem.
///
/// Without -n, -y or -p: asks before each repair when standard input is a terminal, and
/// otherwise only checks (as -n). Without key options the key options of BACKING_DIR's
/// /etc/fstab line are used (key_file=PATH, or keyservice=URL,tenant=ID,token_file=PATH,
/// ca_file=PATH; type fuse.digimedfs), which is how `fsck -t digimed` (fsck(8)) runs it;
/// with neither it exits 8. Exit status as fsck(8): 0 clean, 1 corrected, 4 left
/// uncorrected, 8 operational error (no key, wrong key, unreadable), 16 usage, 32 cancelled.
#[derive(Debug, Parser)]
#[command(name = "fsck.digimed", version, about, long_about = None)]
#[command(
    after_help = "Without key options, the key options of BACKING_DIR's /etc/fstab line \
    (type fuse.digimedfs: key_file=PATH, or keyservice=URL,tenant=ID,token_file=PATH,\
    ca_file=PATH) are used; that is how `fsck -t digimed -n BACKING_DIR` (fsck(8), which runs \
    fsck.digimed or fsck.fuse.digimedfs) checks it. With no key anywhere nothing is checked \
    and the exit status is 8.\n\nExit status (fsck(8), bits combine): 0 clean, 1 corrected, \
    4 left uncorrected, 8 operational error (no key, wrong key, unreadable), 16 usage, \
    32 cancelled."
)]
#[command(group(ArgGroup::new("mode").args(["no", "yes", "preen"])))]
#[command(group(ArgGroup::new("key").args(["key_file", "url"])))]
#[command(group(ArgGroup::new("service").arg("url").requires_all(["tenant", "token_file", "ca_file"])))]
pub struct Cli {
    /// Check only; change nothing (works on a mounted filesystem: reads a snapshot of its metadata).
    #[arg(short = 'n')]
    pub no: bool,
    /// Repair every problem that can be repaired, including repairs that discard data no file refers to.
    #[arg(short = 'y')]
    pub yes: bool,
    /// Preen (-a is the same, as fsck(8) passes it): repair only what is safe without a human
    /// decision; exits 4 if problems that need -y or a human are left.
    #[arg(short = 'p', short_alias = 'a')]
    pub preen: bool,
    /// Progress as e2fsck: FD > 0 gets a line "PASS CURRENT MAX BACKING_DIR" per update (MAX 0:
    /// total not known yet); 0 draws a progress line on stdout; negative: none. Without -C a
    /// progress line is drawn on stderr only when that is a terminal.
    #[arg(short = 'C', value_name = "FD", allow_negative_numbers = true)]
    pub progress_fd: Option<i32>,
    /// Force a full check (the check is always full; accepted for fsck(8) compatibility).
    #[arg(short = 'f')]
    pub force: bool,
    /// Name each pass and print counts.
    #[arg(short = 'v')]
    pub verbose: bool,
    /// Print a machine-readable JSON report on standard output.
    #[arg(long = "json")]
    pub json: bool,
    /// The key that unlocks the filesystem: at most one of --key-file and --keyservice (with
    /// --tenant, --token-file, --ca-file); none: the key options of the fstab line of
    /// BACKING_DIR.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The backing directory of the filesystem.
    pub backing_dir: PathBuf,
}
