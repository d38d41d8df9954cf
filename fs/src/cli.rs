//! Command line of the `digimedfs` binary: the clap definitions, the `-o` mount option parser
//! and the argv rewrite that lets mount(8) (through mount.fuse3) call us as
//! `digimedfs BACKING MOUNTPOINT -o OPTIONS`.

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;

/// digimedfs: encrypted, integrity-protected research filesystem (FUSE).
#[derive(Debug, Parser)]
#[command(name = "digimedfs", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a new random key file (mode 0600); refuses to overwrite an existing file.
    Keygen {
        /// Where to write the key file.
        path: PathBuf,
    },
    /// Mount a digimedfs filesystem. `digimedfs BACKING_DIR MOUNTPOINT -o OPTIONS` (the form
    /// mount(8) uses for type fuse.digimedfs) means the same.
    Mount(MountArgs),
}

/// Arguments of `digimedfs mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Stay in the foreground and log to stderr (default: return once the mount is live and
    /// serve it from a background process).
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    /// Comma-separated mount options: key_file=PATH, ro, rw, allow_other, debug, force_unlock
    /// (take over the lock of a mount that no longer runs). Generic mount(8) options (dev,
    /// suid, nodev, nosuid, exec, noexec, auto, noauto, user, nouser, users, _netdev, nofail,
    /// defaults, x-*) are accepted and ignored. May be given more than once.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// The key file that unlocks the filesystem (same as -o key_file=PATH).
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,
    /// Internal: the background process reports readiness on this file descriptor.
    #[arg(long, hide = true, value_name = "FD")]
    pub ready_fd: Option<i32>,
    /// The backing directory holding the encrypted filesystem (as made by mkfs.digimed).
    pub backing_dir: PathBuf,
    /// Where to mount it.
    pub mountpoint: PathBuf,
}

/// The subcommand names and top-level flags clap understands itself.
const KNOWN_FIRST_ARGS: &[&str] = &["keygen", "mount", "help", "-h", "--help", "-V", "--version"];

/// Rewrites `argv` so the mount(8) helper form `digimedfs BACKING MOUNTPOINT -o OPTS` (and any
/// other invocation that does not start with a subcommand) is parsed as `digimedfs mount ...`.
pub fn normalize_args(mut args: Vec<OsString>) -> Vec<OsString> {
    let needs_mount = match args.get(1) {
        None => false,
        Some(first) => !KNOWN_FIRST_ARGS.iter().any(|known| first == known),
    };
    if needs_mount {
        args.insert(1, OsString::from("mount"));
    }
    args
}

/// The meaning of all `-o` options together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// `key_file=PATH`.
    pub key_file: Option<PathBuf>,
    /// `ro` (the last of `ro`/`rw` wins).
    pub read_only: bool,
    /// `allow_other`.
    pub allow_other: bool,
    /// `debug`: log at debug level.
    pub debug: bool,
    /// `force_unlock`: take over a stale lock.
    pub force_unlock: bool,
}

/// Generic options mount(8) and mount.fuse3 pass along that mean nothing to us.
const IGNORED_OPTIONS: &[&str] = &[
    "dev", "suid", "nodev", "nosuid", "exec", "noexec", "auto", "noauto", "user", "nouser",
    "users", "_netdev", "nofail", "defaults",
];

/// Parses the `-o` arguments (each a comma-separated list).
pub fn parse_mount_options(lists: &[String]) -> anyhow::Result<MountOptions> {
    let mut opts = MountOptions::default();
    for opt in lists.iter().flat_map(|list| list.split(',')) {
        let opt = opt.trim();
        if opt.is_empty() || IGNORED_OPTIONS.contains(&opt) || opt.starts_with("x-") {
            continue;
        }
        if let Some(path) = opt.strip_prefix("key_file=") {
            if path.is_empty() {
                bail!("mount option key_file= needs a path");
            }
            opts.key_file = Some(PathBuf::from(path));
            continue;
        }
        match opt {
            "ro" => opts.read_only = true,
            "rw" => opts.read_only = false,
            "allow_other" => opts.allow_other = true,
            "debug" => opts.debug = true,
            "force_unlock" => opts.force_unlock = true,
            "key_file" => bail!("mount option key_file needs a value: key_file=PATH"),
            other => bail!(
                "unknown mount option '{other}' (supported: key_file=PATH, ro, rw, allow_other, \
                 debug, force_unlock, and the generic mount(8) options, which are ignored)"
            ),
        }
    }
    Ok(opts)
}

/// The key file to use: `--key-file` or `-o key_file=`; both must agree if both are given.
pub fn key_file(args: &MountArgs, opts: &MountOptions) -> anyhow::Result<PathBuf> {
    match (&args.key_file, &opts.key_file) {
        (Some(a), Some(b)) if a != b => bail!(
            "--key-file {} and -o key_file={} disagree; give one",
            a.display(),
            b.display()
        ),
        (Some(a), _) => Ok(a.clone()),
        (None, Some(b)) => Ok(b.clone()),
        (None, None) => {
            bail!("no key file given: use --key-file PATH or -o key_file=PATH")
        }
    }
}

/// The source name shown in /proc/mounts for `backing`: its path, unless it contains
/// characters that cannot pass through a mount option string.
pub fn fsname_for(backing: &std::path::Path) -> Option<String> {
    let s = backing.to_str()?;
    if s.is_empty() || s.contains([',', '\\', '\n']) {
        return None;
    }
    Some(s.to_string())
}

/// Turns a path into a log file name: `/mnt/proj` → `mnt-proj`.
pub fn log_name(mountpoint: &std::path::Path) -> String {
    let raw = mountpoint.to_string_lossy();
    let name: String = raw
        .trim_matches('/')
        .chars()
        .map(|c| match c {
            '/' => '-',
            c if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' => c,
            _ => '_',
        })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        format!("root{name}")
    } else {
        name
    }
}

/// Parses argv into a [`Cli`], after [`normalize_args`].
pub fn parse_args(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(normalize_args(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn helper_form_becomes_mount() {
        let args = normalize_args(os(&["digimedfs", "/srv/b", "/mnt/p", "-o", "key_file=/k"]));
        assert_eq!(
            args,
            os(&[
                "digimedfs",
                "mount",
                "/srv/b",
                "/mnt/p",
                "-o",
                "key_file=/k"
            ])
        );
        let cli = parse_args(os(&[
            "digimedfs",
            "/srv/b",
            "/mnt/p",
            "-o",
            "rw,key_file=/k",
        ]))
        .unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert_eq!(m.backing_dir, PathBuf::from("/srv/b"));
        assert_eq!(m.mountpoint, PathBuf::from("/mnt/p"));
        assert_eq!(m.options, vec!["rw,key_file=/k".to_string()]);
        assert!(!m.foreground);
    }

    #[test]
    fn subcommands_and_flags_are_left_alone() {
        for first in ["keygen", "mount", "help", "--help", "-V"] {
            let args = os(&["digimedfs", first, "x"]);
            assert_eq!(normalize_args(args.clone()), args);
        }
        assert_eq!(normalize_args(os(&["digimedfs"])), os(&["digimedfs"]));
        // A leading flag of mount also selects mount.
        assert_eq!(
            normalize_args(os(&["digimedfs", "-f", "b", "m"])),
            os(&["digimedfs", "mount", "-f", "b", "m"])
        );
    }

    #[test]
    fn explicit_mount_parses() {
        let cli = parse_args(os(&[
            "digimedfs",
            "mount",
            "-f",
            "--key-file",
            "/k",
            "-o",
            "ro",
            "-o",
            "debug",
            "b",
            "m",
        ]))
        .unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert!(m.foreground);
        assert_eq!(m.key_file, Some(PathBuf::from("/k")));
        let o = parse_mount_options(&m.options).unwrap();
        assert!(o.read_only && o.debug && !o.allow_other);
        assert_eq!(key_file(&m, &o).unwrap(), PathBuf::from("/k"));
    }

    #[test]
    fn keygen_parses() {
        let cli = parse_args(os(&["digimedfs", "keygen", "/tmp/k"])).unwrap();
        assert!(
            matches!(cli.command, Command::Keygen { path } if path == std::path::Path::new("/tmp/k"))
        );
    }

    #[test]
    fn mount_options_parse() {
        let o = parse_mount_options(&[
            "key_file=/etc/digimedfs/p.key,allow_other,_netdev,nofail".into(),
            "dev,suid,rw,x-systemd.automount,defaults,force_unlock".into(),
        ])
        .unwrap();
        assert_eq!(o.key_file, Some(PathBuf::from("/etc/digimedfs/p.key")));
        assert!(o.allow_other && o.force_unlock && !o.read_only && !o.debug);
        assert!(parse_mount_options(&["ro,rw".into()])
            .map(|o| !o.read_only)
            .unwrap());
        assert!(parse_mount_options(&["rw,ro".into()])
            .map(|o| o.read_only)
            .unwrap());
    }

    #[test]
    fn bad_mount_options_are_rejected() {
        for bad in ["sync", "key_file=", "key_file", "allow_root", "blah=1"] {
            let err = parse_mount_options(&[bad.into()]).unwrap_err().to_string();
            assert!(
                err.contains("key_file") || err.contains(bad),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn key_file_sources_must_agree() {
        let cli = parse_args(os(&["digimedfs", "--key-file", "/a", "b", "m"])).unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        let same = MountOptions {
            key_file: Some("/a".into()),
            ..Default::default()
        };
        assert!(key_file(&m, &same).is_ok());
        let other = MountOptions {
            key_file: Some("/b".into()),
            ..Default::default()
        };
        assert!(key_file(&m, &other).is_err());
        let cli = parse_args(os(&["digimedfs", "b", "m"])).unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert!(key_file(&m, &MountOptions::default()).is_err());
    }

    #[test]
    fn names() {
        assert_eq!(log_name(std::path::Path::new("/mnt/proj")), "mnt-proj");
        assert_eq!(log_name(std::path::Path::new("/")), "root");
        assert_eq!(log_name(std::path::Path::new("/a b/c")), "a_b-c");
        assert_eq!(
            fsname_for(std::path::Path::new("/srv/b")),
            Some("/srv/b".into())
        );
        assert_eq!(fsname_for(std::path::Path::new("/srv/a,b")), None);
    }
}
