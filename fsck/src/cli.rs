//! Command line of `fsck.digimed` (built as `fsck-digimed`).

use clap::{ArgGroup, Parser};
use std::path::PathBuf;

/// Check and repair a digimedfs filesystem.
///
/// Without -n, -y or -p: asks before each repair when standard input is a terminal, and
/// otherwise only checks (as -n).
#[derive(Debug, Parser)]
#[command(name = "fsck.digimed", version, about, long_about = None)]
#[command(group(ArgGroup::new("mode").args(["no", "yes", "preen"])))]
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
    /// Key file that unlocks the filesystem. Exactly one of --key-file and --keyservice.
    #[arg(
        long = "key-file",
        value_name = "PATH",
        required_unless_present = "keyservice",
        conflicts_with = "keyservice"
    )]
    pub key_file: Option<PathBuf>,
    /// Key service that unwraps the filesystem's key (with --tenant, --token-file, --ca-file).
    #[arg(
        long = "keyservice",
        value_name = "URL",
        requires_all = ["tenant", "token_file", "ca_file"]
    )]
    pub keyservice: Option<String>,
    /// Tenant at the key service.
    #[arg(long = "tenant", value_name = "ID", requires = "keyservice")]
    pub tenant: Option<String>,
    /// File holding the tenant's key service token.
    #[arg(long = "token-file", value_name = "PATH", requires = "keyservice")]
    pub token_file: Option<PathBuf>,
    /// CA certificate that signed the key service's TLS certificate.
    #[arg(long = "ca-file", value_name = "PATH", requires = "keyservice")]
    pub ca_file: Option<PathBuf>,
    /// The backing directory of the filesystem.
    pub backing_dir: PathBuf,
}
