//! Command line of `mkfs.digimed` (built as `mkfs-digimed`): clap definitions and the block
//! size parser.

use clap::{ArgGroup, Parser};
use digimedfs_keyclient::cli::KeyArgs;
use std::path::PathBuf;

/// Block size used when `-b` is not given.
pub const DEFAULT_BLOCK_SIZE: u32 = 4096;
/// Smallest accepted block size.
const MIN_BLOCK_SIZE: u32 = 4096;
/// Largest accepted block size.
const MAX_BLOCK_SIZE: u32 = 65536;

/// Create a digimedfs filesystem in a backing directory.
#[derive(Debug, Parser)]
#[command(name = "mkfs.digimed", version, about, long_about = None)]
#[command(group(ArgGroup::new("key").args(["key_file", "url"]).required(true)))]
#[command(group(ArgGroup::new("service").arg("url").requires_all(["tenant", "token_file", "ca_file"])))]
pub struct Cli {
    /// Replace an existing digimedfs filesystem in BACKING_DIR (destroys it); a directory that
    /// holds anything else is refused.
    #[arg(short = 'f', long = "force")]
    pub force: bool,
    /// Print nothing on success.
    #[arg(short = 'q', long = "quiet")]
    pub quiet: bool,
    /// Filesystem label.
    #[arg(short = 'L', long = "label", value_name = "LABEL", default_value = "")]
    pub label: String,
    /// Block size in bytes: a power of two from 4096 to 65536; a K suffix means KiB (4K, 64K).
    #[arg(
        short = 'b',
        long = "block-size",
        value_name = "BLOCK_SIZE",
        default_value_t = DEFAULT_BLOCK_SIZE,
        value_parser = parse_block_size
    )]
    pub block_size: u32,
    /// The key that wraps the new filesystem's master key: exactly one of --key-file and
    /// --keyservice (with --tenant, --token-file, --ca-file). --tenant also names the tenant the
    /// filesystem belongs to (1 to 64 of A-Z a-z 0-9 . _ -; default with --key-file: `default`).
    #[command(flatten)]
    pub key: KeyArgs,
    /// The backing directory to create the filesystem in.
    pub backing_dir: PathBuf,
}

/// Parses a block size: `4096`, `65536`, `4K`, `64k`; a power of two from 4096 to 65536.
pub fn parse_block_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (digits, scale) = match t.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1024u32),
        None => (t, 1),
    };
    let size = digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("'{s}' is not a block size (examples: 4096, 4K, 64K)"))?;
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) || !size.is_power_of_two() {
        return Err(format!(
            "block size {size} is not a power of two from {MIN_BLOCK_SIZE} (4K) to \
             {MAX_BLOCK_SIZE} (64K)"
        ));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes() {
        assert_eq!(parse_block_size("4096"), Ok(4096));
        assert_eq!(parse_block_size("4K"), Ok(4096));
        assert_eq!(parse_block_size("8k"), Ok(8192));
        assert_eq!(parse_block_size("64K"), Ok(65536));
        assert_eq!(parse_block_size("65536"), Ok(65536));
        for bad in [
            "",
            "K",
            "2048",
            "128K",
            "5000",
            "4M",
            "-4096",
            "4 K",
            "99999999999K",
            "0",
        ] {
            assert!(parse_block_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_full_command_line() {
        let cli = Cli::try_parse_from([
            "mkfs.digimed",
            "-f",
            "-q",
            "-L",
            "cardio",
            "-b",
            "64K",
            "--tenant",
            "t1",
            "--key-file",
            "/k",
            "/srv/b",
        ])
        .unwrap();
        assert!(cli.force && cli.quiet);
        assert_eq!(
            (cli.label.as_str(), cli.key.service.tenant.as_deref()),
            ("cardio", Some("t1"))
        );
        assert_eq!(cli.block_size, 65536);
        assert_eq!(cli.key.key_file, Some(PathBuf::from("/k")));
        assert_eq!(cli.backing_dir, PathBuf::from("/srv/b"));
    }

    #[test]
    fn defaults_and_required_key() {
        let cli = Cli::try_parse_from(["mkfs.digimed", "--tenant", "t", "--key-file", "/k", "/b"])
            .unwrap();
        assert_eq!(cli.block_size, DEFAULT_BLOCK_SIZE);
        assert!(!cli.force && !cli.quiet && cli.label.is_empty());
        assert!(Cli::try_parse_from(["mkfs.digimed", "--tenant", "t", "/srv/b"]).is_err());
        let cli = Cli::try_parse_from(["mkfs.digimed", "--key-file", "/k", "/srv/b"]).unwrap();
        assert_eq!(cli.key.service.tenant, None);
        assert!(
            Cli::try_parse_from(["mkfs.digimed", "-b", "3K", "--key-file", "/k", "/b"]).is_err()
        );
    }

    #[test]
    fn key_service_options() {
        let ks = [
            "mkfs.digimed",
            "--keyservice",
            "https://127.0.0.1:8443",
            "--tenant",
            "A",
            "--token-file",
            "/t",
            "--ca-file",
            "/ca",
            "/b",
        ];
        let cli = Cli::try_parse_from(ks).unwrap();
        assert_eq!(
            cli.key.service.url.as_deref(),
            Some("https://127.0.0.1:8443")
        );
        assert_eq!(cli.key.key_file, None);
        // Exactly one of --key-file and --keyservice.
        let mut both = ks.to_vec();
        both.splice(1..1, ["--key-file", "/k"]);
        assert!(Cli::try_parse_from(both).is_err());
        // --keyservice needs --tenant, --token-file and --ca-file.
        for skip in [3, 5, 7] {
            let mut v = ks.to_vec();
            v.drain(skip..skip + 2);
            assert!(Cli::try_parse_from(v).is_err(), "without {}", ks[skip]);
        }
        // --token-file / --ca-file only with --keyservice (refused before any file is read).
        let stray = Cli::try_parse_from([
            "mkfs.digimed",
            "--key-file",
            "/nonexistent/k",
            "--token-file",
            "/t",
            "/b",
        ])
        .unwrap();
        let err = stray.key.open().err().unwrap().to_string();
        assert!(err.contains("go with --keyservice"), "{err}");
    }
}
