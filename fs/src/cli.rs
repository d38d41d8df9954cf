//! Command line of the `digimedfs` binary: the clap definitions and the argv rewrite that lets
//! mount(8) (through mount.fuse3) call us as `digimedfs BACKING MOUNTPOINT -o OPTIONS`. The
//! `-o` parser is `digimedfs_keyclient::mount_options`, shared with fsck.digimed.

use anyhow::bail;
use clap::{ArgGroup, Args, Parser, Subcommand};
pub use digimedfs_keyclient::cli::{KeyArgs, KeyServiceArgs};
pub use digimedfs_keyclient::mount_options::{
    parse_mount_options, KeyServiceOptions, MountOptions,
};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

mod key;
pub use key::{KeyCommand, NewKeyArgs};

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
    /// Move the filesystem's key service slot to the tenant's newest key version (after
    /// `digimed-keyservice rotate`), without touching data. The filesystem must not be mounted.
    Rewrap {
        /// The key service to use (all four options are required).
        #[command(flatten)]
        service: KeyServiceArgs,
        /// The backing directory holding the filesystem.
        backing_dir: PathBuf,
    },
    /// Show what a backing directory says about its filesystem (like dumpe2fs -h): UUID, label,
    /// tenant, format, block size, epoch, flags, key slots, whether it is mounted and by whom,
    /// the backup point. Needs no key and writes nothing; without a key nothing shown is
    /// authenticated. With key options the superblock's MAC is checked too (exit 1 if it fails).
    Info(InfoArgs),
    /// Change the superblock of an unmounted filesystem (like tune2fs): its label. Needs the key
    /// (the superblock is authenticated); refused while the filesystem is mounted.
    Tune(TuneArgs),
    /// Key slots (like cryptsetup luksDump/luksAddKey/luksKillSlot): list them, add a key
    /// file or the key service, remove a slot, or replace a key in one step. Changes are
    /// offline: the filesystem must not be mounted (docs/operations.md, "Key management").
    Key {
        /// What to do.
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Backup points: consistent copies of a live filesystem for ordinary backup tools, keyless
    /// verification and restore (docs/backup.md).
    Backup {
        /// What to do.
        #[command(subcommand)]
        command: BackupCommand,
    },
}

/// `digimedfs backup` subcommands.
#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a backup point: flush, dump the metadata, freeze the data objects (copy-on-write)
    /// in BACKING/backup/point/, and print what to copy. Works from any host that sees the
    /// backing directory, without keys, while the filesystem is mounted (the daemon takes the
    /// point); an unmounted filesystem needs the key options. Replaces an earlier point.
    /// While the daemon works, a line on stderr (only when that is a terminal) shows the
    /// seconds waited and the metadata segments the daemon has dumped.
    Begin {
        /// Seconds to wait for the daemon's answer.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Key file or key service (to take a point offline; to check the manifest MAC).
        #[command(flatten)]
        key: KeyArgs,
        /// The backing directory (or, on the host that mounts it, the mountpoint).
        target: PathBuf,
    },
    /// End the current backup point once the copy is done: its links are removed and
    /// copy-on-write stops. No keys needed.
    End {
        /// Seconds to wait for the daemon's answer.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
        /// The backing directory (or the mountpoint).
        target: PathBuf,
    },
    /// Show the current backup point, if any.
    Status {
        /// The backing directory (or the mountpoint).
        target: PathBuf,
    },
    /// Check a copy of a point against its manifest without keys (every file present, same
    /// length and hash, nothing extra); with key options, also the manifest's MAC. Exits 1 and
    /// names every missing, changed or foreign file. While it hashes, a line on stderr (only
    /// when that is a terminal) shows the files and bytes checked of the manifest's totals.
    Verify {
        /// Key file or key service (to take a point offline; to check the manifest MAC).
        #[command(flatten)]
        key: KeyArgs,
        /// The copy (what was copied from BACKING/backup/point/).
        copy: PathBuf,
    },
    /// Turn a verified copy of a point into a new backing directory (no keys needed). With the
    /// key service, the admin must accept the rollback before it mounts (docs/backup.md).
    /// A line on stderr (only when that is a terminal) shows the files and bytes verified,
    /// then copied, of the manifest's totals.
    Restore {
        /// Key file or key service (to take a point offline; to check the manifest MAC).
        #[command(flatten)]
        key: KeyArgs,
        /// The copy of a point.
        copy: PathBuf,
        /// The new backing directory (must be missing or empty).
        target: PathBuf,
    },
}

/// Arguments of `digimedfs info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// Print one JSON object (stable snake_case field names) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Optional: a key file or the key service, to verify the superblock's MAC.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The backing directory holding the filesystem.
    pub backing_dir: PathBuf,
}

/// Arguments of `digimedfs tune`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("key").args(["key_file", "url"]).required(true)))]
#[command(group(ArgGroup::new("change").args(["label"]).required(true).multiple(true)))]
pub struct TuneArgs {
    /// The new label: at most 64 bytes of UTF-8 (as mkfs.digimed -L); "" removes it.
    #[arg(short = 'L', long = "label", value_name = "LABEL")]
    pub label: Option<String>,
    /// The key that unlocks the filesystem: a key file or the key service.
    #[command(flatten)]
    pub key: KeyArgs,
    /// The backing directory holding the filesystem.
    pub backing_dir: PathBuf,
}

/// Arguments of `digimedfs mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Stay in the foreground and log to stderr (default: return once the mount is live and
    /// serve it from a background process).
    #[arg(short = 'f', long = "foreground")]
    pub foreground: bool,
    /// Comma-separated mount options: key_file=PATH, keyservice=URL, tenant=ID,
    /// token_file=PATH, ca_file=PATH, ro, rw, allow_other, debug, force_unlock (take over the
    /// lock of a mount that no longer runs), nouring (serve requests over /dev/fuse even where
    /// the kernel allows FUSE over io_uring, which is used by default then: Linux 6.14+ with
    /// the fuse module's enable_uring on; uring: the same default, with a warning when the
    /// kernel does not allow it), and when reads
    /// update access times: relatime (default), strictatime, noatime, nodiratime. Other
    /// generic mount(8) options (dev, suid, nodev, nosuid, exec, noexec, auto, noauto, user,
    /// nouser, users, _netdev, nofail, defaults, x-*) are accepted and ignored. May be given
    /// more than once.
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub options: Vec<String>,
    /// The key that unlocks the filesystem (or -o key_file=, -o keyservice=...).
    #[command(flatten)]
    pub key: KeyArgs,
    /// Internal: the background process reports readiness on this file descriptor.
    #[arg(long, hide = true, value_name = "FD")]
    pub ready_fd: Option<i32>,
    /// The backing directory holding the encrypted filesystem (as made by mkfs.digimed).
    pub backing_dir: PathBuf,
    /// Where to mount it.
    pub mountpoint: PathBuf,
}

/// The subcommand names and top-level flags clap understands itself.
const KNOWN_FIRST_ARGS: &[&str] = &[
    "keygen",
    "mount",
    "rewrap",
    "info",
    "tune",
    "key",
    "backup",
    "help",
    "-h",
    "--help",
    "-V",
    "--version",
];

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

/// Where the key that unlocks a filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// A local key file (key slot kind 1).
    File(PathBuf),
    /// The key service (key slot kind 2).
    Service(ServiceSpec),
}

/// A complete key service configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// `https://host:port`.
    pub url: String,
    /// Tenant id.
    pub tenant: String,
    /// Token file.
    pub token_file: PathBuf,
    /// CA certificate file.
    pub ca_file: PathBuf,
}

/// One setting given on the command line and/or with `-o`; both must agree if both are given.
fn merge<T: Clone + PartialEq + std::fmt::Debug>(
    flag: &str,
    opt: &str,
    cli: &Option<T>,
    o: &Option<T>,
) -> anyhow::Result<Option<T>> {
    match (cli, o) {
        (Some(a), Some(b)) if a != b => {
            bail!("--{flag} {a:?} and -o {opt}={b:?} disagree; give one")
        }
        (Some(a), _) => Ok(Some(a.clone())),
        (None, b) => Ok(b.clone()),
    }
}

/// The complete key service configuration from the flags, or `None` if no key service option
/// was given at all; an error if only some were.
pub fn service_spec(
    args: &KeyServiceArgs,
    opts: &KeyServiceOptions,
) -> anyhow::Result<Option<ServiceSpec>> {
    let url = merge("keyservice", "keyservice", &args.url, &opts.url)?;
    let tenant = merge("tenant", "tenant", &args.tenant, &opts.tenant)?;
    let token_file = merge(
        "token-file",
        "token_file",
        &args.token_file,
        &opts.token_file,
    )?;
    let ca_file = merge("ca-file", "ca_file", &args.ca_file, &opts.ca_file)?;
    match (url, tenant, token_file, ca_file) {
        (None, None, None, None) => Ok(None),
        (Some(url), Some(tenant), Some(token_file), Some(ca_file)) => Ok(Some(ServiceSpec {
            url,
            tenant,
            token_file,
            ca_file,
        })),
        (url, tenant, token, ca) => {
            let missing: Vec<&str> = [
                (url.is_none(), "--keyservice URL (-o keyservice=URL)"),
                (tenant.is_none(), "--tenant ID (-o tenant=ID)"),
                (token.is_none(), "--token-file PATH (-o token_file=PATH)"),
                (ca.is_none(), "--ca-file PATH (-o ca_file=PATH)"),
            ]
            .into_iter()
            .filter_map(|(m, name)| m.then_some(name))
            .collect();
            bail!(
                "incomplete key service options: also give {}",
                missing.join(", ")
            )
        }
    }
}

/// The key to use: a key file (`--key-file` or `-o key_file=`) or the key service; exactly one.
pub fn key_spec(args: &MountArgs, opts: &MountOptions) -> anyhow::Result<KeySpec> {
    let file = merge("key-file", "key_file", &args.key.key_file, &opts.key_file)?;
    let service = service_spec(&args.key.service, &opts.service)?;
    match (file, service) {
        (Some(_), Some(_)) => bail!(
            "a key file and the key service are mutually exclusive: give either --key-file \
             (-o key_file=) or the key service options"
        ),
        (Some(f), None) => Ok(KeySpec::File(f)),
        (None, Some(s)) => Ok(KeySpec::Service(s)),
        (None, None) => bail!(
            "no key given: use --key-file PATH (-o key_file=PATH), or --keyservice URL --tenant \
             ID --token-file PATH --ca-file PATH (-o keyservice=URL,tenant=ID,token_file=PATH,\
             ca_file=PATH)"
        ),
    }
}

/// The key source given by a key file option and the key service options, if any.
pub fn optional_key_spec(key: &KeyArgs) -> anyhow::Result<Option<KeySpec>> {
    let service = service_spec(&key.service, &KeyServiceOptions::default())?;
    match (&key.key_file, service) {
        (Some(_), Some(_)) => bail!("a key file and the key service are mutually exclusive"),
        (Some(f), None) => Ok(Some(KeySpec::File(f.clone()))),
        (None, Some(s)) => Ok(Some(KeySpec::Service(s))),
        (None, None) => Ok(None),
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

/// The `fsck.digimed -n` command that checks `backing` with the same key as `spec`, for hints
/// printed when a mount finds damage (paths quoted for a POSIX shell where needed).
pub fn fsck_check_command(spec: &KeySpec, backing: &Path) -> String {
    let q = |p: &Path| shell_quote(&p.to_string_lossy());
    let key = match spec {
        KeySpec::File(path) => format!("--key-file {}", q(path)),
        KeySpec::Service(s) => format!(
            "--keyservice {} --tenant {} --token-file {} --ca-file {}",
            shell_quote(&s.url),
            shell_quote(&s.tenant),
            q(&s.token_file),
            q(&s.ca_file)
        ),
    };
    format!("fsck.digimed -n {key} {}", q(backing))
}

/// `s` as one word for a POSIX shell: unchanged if it only has safe characters, else in single
/// quotes.
fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-:@%+=,".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fsck_command_names_the_same_key_and_quotes_paths() {
        use super::{fsck_check_command, KeySpec, ServiceSpec};
        use std::path::{Path, PathBuf};
        assert_eq!(
            fsck_check_command(&KeySpec::File("/etc/k.key".into()), Path::new("/srv/b")),
            "fsck.digimed -n --key-file /etc/k.key /srv/b"
        );
        assert_eq!(
            fsck_check_command(&KeySpec::File("/a b/k".into()), Path::new("/srv/it's")),
            "fsck.digimed -n --key-file '/a b/k' '/srv/it'\\''s'"
        );
        let s = ServiceSpec {
            url: "https://ks:8443".into(),
            tenant: "lab".into(),
            token_file: PathBuf::from("/t"),
            ca_file: PathBuf::from("/ca.pem"),
        };
        assert_eq!(
            fsck_check_command(&KeySpec::Service(s), Path::new("/b")),
            "fsck.digimed -n --keyservice https://ks:8443 --tenant lab --token-file /t --ca-file /ca.pem /b"
        );
    }

    use super::*;
    use digimedfs::fuse::UringMode;
    use digimedfs_core::filesystem::AtimeMode;

    /// Fuzzes the `-o` parser (what an fstab line or `mount -o` hands the daemon): mutated
    /// option lists must parse or fail with an error, never panic. `DIGIMEDFS_FUZZ_ITERS` sets
    /// the number of inputs (default 3 000).
    #[test]
    fn mount_option_parser_never_panics() {
        let iters = digimedfs_core::testing::fuzz_iterations();
        let seeds: Vec<Vec<u8>> = [
            "key_file=/etc/digimedfs/p.key,allow_other,_netdev",
            "keyservice=https://ks:8443,tenant=cardio,token_file=/t,ca_file=/ca.pem,ro",
            "rw,uring,relatime,force_unlock,debug,x-systemd.automount",
            "nouring,noatime,nodiratime,strictatime,defaults,nosuid,nodev",
            "key_file=,=,,,tenant==x",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        let mut m = digimedfs_core::testing::Mutator::new(0x0917_0417);
        let mut accepted = 0;
        for n in 0..iters {
            let lists: Vec<String> = (0..1 + m.below(3))
                .map(|_| String::from_utf8_lossy(&m.input(&seeds)).into_owned())
                .collect();
            let parsed = std::panic::catch_unwind(|| parse_mount_options(&lists).is_ok())
                .unwrap_or_else(|_| panic!("input {n} panicked: {lists:?}"));
            accepted += usize::from(parsed);
        }
        assert!(accepted > 0, "no mutated option list parsed at all");
    }

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
        assert_eq!(m.key.key_file, Some(PathBuf::from("/k")));
        let o = parse_mount_options(&m.options).unwrap();
        assert!(o.read_only && o.debug && !o.allow_other);
        assert_eq!(
            key_spec(&m, &o).unwrap(),
            KeySpec::File(PathBuf::from("/k"))
        );
    }

    #[test]
    fn keygen_parses() {
        let cli = parse_args(os(&["digimedfs", "keygen", "/tmp/k"])).unwrap();
        assert!(
            matches!(cli.command, Command::Keygen { path } if path == std::path::Path::new("/tmp/k"))
        );
    }

    #[test]
    fn info_and_tune_parse_and_are_not_taken_for_mount() {
        let cli = parse_args(os(&["digimedfs", "info", "--json", "/srv/b"])).unwrap();
        let Command::Info(i) = cli.command else {
            panic!("not info")
        };
        assert!(i.json && !i.key.given());
        assert_eq!(i.backing_dir, PathBuf::from("/srv/b"));
        let cli = parse_args(os(&[
            "digimedfs",
            "tune",
            "-L",
            "cohort-b",
            "--key-file",
            "/k",
            "/srv/b",
        ]))
        .unwrap();
        let Command::Tune(t) = cli.command else {
            panic!("not tune")
        };
        assert_eq!(t.label.as_deref(), Some("cohort-b"));
        assert_eq!(t.key.key_file, Some(PathBuf::from("/k")));
        // tune needs a key and something to change.
        assert!(parse_args(os(&["digimedfs", "tune", "-L", "x", "/srv/b"])).is_err());
        assert!(parse_args(os(&["digimedfs", "tune", "--key-file", "/k", "/srv/b"])).is_err());
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
    fn transport_options() {
        let uring = |o: &str| parse_mount_options(&[o.into()]).unwrap().uring;
        assert_eq!(
            uring("rw"),
            UringMode::Auto,
            "neither given: the default (io_uring if allowed)"
        );
        assert_eq!(uring("uring"), UringMode::Requested);
        assert_eq!(uring("nouring"), UringMode::Off);
        assert_eq!(uring("uring,nouring"), UringMode::Off, "the last one wins");
        assert_eq!(uring("nouring,uring"), UringMode::Requested);
    }

    #[test]
    fn atime_options() {
        let parsed = |o: &str| parse_mount_options(&[o.into()]).unwrap().atime;
        let mode = |o: &str| parsed(o).mode();
        assert_eq!(mode("rw"), AtimeMode::Relatime);
        assert_eq!(mode("relatime"), AtimeMode::Relatime);
        assert_eq!(mode("norelatime"), AtimeMode::Relatime);
        assert_eq!(mode("strictatime"), AtimeMode::Strict);
        assert_eq!(mode("noatime"), AtimeMode::Never);
        assert_eq!(mode("noatime,atime"), AtimeMode::Relatime);
        assert_eq!(mode("strictatime,nostrictatime"), AtimeMode::Relatime);
        // As the kernel combines the flags: strictatime wins over noatime in any order, and
        // relatime does not clear noatime.
        assert_eq!(mode("noatime,strictatime"), AtimeMode::Strict);
        assert_eq!(mode("strictatime,noatime"), AtimeMode::Strict);
        assert_eq!(mode("noatime,relatime"), AtimeMode::Never);
        assert!(!parsed("relatime").nodiratime);
        assert!(parsed("nodiratime").nodiratime);
        assert!(!parsed("nodiratime,diratime").nodiratime);
        assert_eq!(mode("nodiratime"), AtimeMode::Relatime);
    }

    #[test]
    fn bad_mount_options_are_rejected() {
        for bad in [
            "nosync_please",
            "key_file=",
            "key_file",
            "allow_root",
            "blah=1",
        ] {
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
        assert!(key_spec(&m, &same).is_ok());
        let other = MountOptions {
            key_file: Some("/b".into()),
            ..Default::default()
        };
        assert!(key_spec(&m, &other).is_err());
        let cli = parse_args(os(&["digimedfs", "b", "m"])).unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        assert!(key_spec(&m, &MountOptions::default()).is_err());
    }

    #[test]
    fn key_service_options() {
        let service = ServiceSpec {
            url: "https://ks:8443".into(),
            tenant: "A".into(),
            token_file: "/t".into(),
            ca_file: "/ca".into(),
        };
        // As flags.
        let cli = parse_args(os(&[
            "digimedfs",
            "mount",
            "--keyservice",
            "https://ks:8443",
            "--tenant",
            "A",
            "--token-file",
            "/t",
            "--ca-file",
            "/ca",
            "b",
            "m",
        ]))
        .unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        let o = parse_mount_options(&m.options).unwrap();
        assert_eq!(key_spec(&m, &o).unwrap(), KeySpec::Service(service.clone()));
        // As -o options (the mount(8) / fstab form).
        let cli = parse_args(os(&[
            "digimedfs",
            "b",
            "m",
            "-o",
            "keyservice=https://ks:8443,tenant=A,token_file=/t,ca_file=/ca,_netdev",
        ]))
        .unwrap();
        let Command::Mount(m) = cli.command else {
            panic!("not mount")
        };
        let o = parse_mount_options(&m.options).unwrap();
        assert_eq!(key_spec(&m, &o).unwrap(), KeySpec::Service(service));
        // Incomplete: names what is missing.
        let o = parse_mount_options(&["keyservice=https://ks:1,tenant=A".into()]).unwrap();
        let cli = parse_args(os(&["digimedfs", "b", "m"])).unwrap();
        let Command::Mount(bare) = cli.command else {
            panic!("not mount")
        };
        let e = key_spec(&bare, &o).unwrap_err().to_string();
        assert!(e.contains("--token-file") && e.contains("--ca-file"), "{e}");
        assert!(!e.contains("--tenant"), "{e}");
        // Exclusive with a key file.
        let mut both = parse_mount_options(&m.options).unwrap();
        both.key_file = Some("/k".into());
        let e = key_spec(&m, &both).unwrap_err().to_string();
        assert!(e.contains("mutually exclusive"), "{e}");
        // Flag and option must agree.
        let cli = parse_args(os(&["digimedfs", "--tenant", "B", "b", "m"])).unwrap();
        let Command::Mount(m2) = cli.command else {
            panic!("not mount")
        };
        let e = key_spec(&m2, &parse_mount_options(&m.options).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("disagree"), "{e}");
        for bad in ["tenant", "keyservice=", "token_file", "ca_file="] {
            assert!(parse_mount_options(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn rewrap_parses() {
        let cli = parse_args(os(&[
            "digimedfs",
            "rewrap",
            "--keyservice",
            "https://ks:8443",
            "--tenant",
            "A",
            "--token-file",
            "/t",
            "--ca-file",
            "/ca",
            "/srv/b",
        ]))
        .unwrap();
        let Command::Rewrap {
            service,
            backing_dir,
        } = cli.command
        else {
            panic!("not rewrap")
        };
        assert_eq!(backing_dir, PathBuf::from("/srv/b"));
        assert!(service_spec(&service, &KeyServiceOptions::default())
            .unwrap()
            .is_some());
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
