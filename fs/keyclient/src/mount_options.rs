//! The `-o` mount options (what mount(8) and an fstab line hand `digimedfs`), parsed once for
//! every program that reads them: the mount itself, and `fsck.digimed`, which finds the key
//! options of a filesystem in its /etc/fstab entry ([`fstab_options`]) when fsck(8) runs it
//! with nothing but the backing directory. No clap here: the options are a plain
//! comma-separated list.

use digimedfs_core::filesystem::AtimeMode;
use std::path::{Path, PathBuf};

/// A mount option list that cannot be used; the message names the option.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OptionError(pub String);

/// Whether requests are served over FUSE's io_uring transport (the FUSE front end's `uring` module) or over
/// `/dev/fuse`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UringMode {
    /// io_uring when the kernel allows it (the fuse module's `enable_uring`, which an
    /// administrator switches on), else `/dev/fuse`, logged at info level. The default: an
    /// administrator who switched the kernel's transport on wants it used, and it is the faster
    /// one for metadata work and random reads (docs/performance.md, "Current results").
    #[default]
    Auto,
    /// `uring`: as `Auto`, but a kernel that does not offer it is worth a warning.
    Requested,
    /// `nouring`: always `/dev/fuse` (cold sequential reads of large files were faster there).
    Off,
}

/// The meaning of all `-o` options together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// `key_file=PATH`.
    pub key_file: Option<PathBuf>,
    /// `keyservice=URL`, `tenant=ID`, `token_file=PATH`, `ca_file=PATH`.
    pub service: KeyServiceOptions,
    /// `ro` (the last of `ro`/`rw` wins).
    pub read_only: bool,
    /// `allow_other`.
    pub allow_other: bool,
    /// `debug`: log at debug level.
    pub debug: bool,
    /// `force_unlock`: take over a stale lock.
    pub force_unlock: bool,
    /// `remount`: change the flags of an existing mount (mount -o remount,ro).
    pub remount: bool,
    /// `uring` ([`UringMode::Requested`]) or `nouring` ([`UringMode::Off`]), the last one
    /// given; neither: [`UringMode::Auto`], io_uring when the kernel allows it.
    pub uring: UringMode,
    /// The access-time options, as the kernel combines them: `strictatime` wins, then
    /// `noatime`, else `relatime` (the default).
    pub atime: AtimeFlags,
}

/// The access-time mount options given, as mount(8) turns them into mount flags: each
/// option sets or clears one flag, whatever the order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AtimeFlags {
    /// `noatime` (cleared by `atime`).
    pub noatime: bool,
    /// `strictatime` (cleared by `nostrictatime`).
    pub strictatime: bool,
    /// `nodiratime` (cleared by `diratime`).
    pub nodiratime: bool,
}

impl AtimeFlags {
    /// The atime mode these flags give, as Linux decides it for a mount: `strictatime` beats
    /// `noatime`; without either it is `relatime` (`relatime` and `norelatime` change nothing).
    pub fn mode(&self) -> AtimeMode {
        if self.strictatime {
            AtimeMode::Strict
        } else if self.noatime {
            AtimeMode::Never
        } else {
            AtimeMode::Relatime
        }
    }
}

/// The key service options given with `-o`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyServiceOptions {
    /// `keyservice=URL`.
    pub url: Option<String>,
    /// `tenant=ID`.
    pub tenant: Option<String>,
    /// `token_file=PATH`.
    pub token_file: Option<PathBuf>,
    /// `ca_file=PATH`.
    pub ca_file: Option<PathBuf>,
}

/// Generic options mount(8) and mount.fuse3 pass along that mean nothing to us. `sync`,
/// `dirsync` and `lazytime` are accepted like on other FUSE filesystems but writes are not made
/// synchronous: use fsync (documented in operations.md). (The access-time options are not
/// here: the kernel leaves atime of FUSE inodes to the filesystem, see [`AtimeFlags`].)
const IGNORED_OPTIONS: &[&str] = &[
    "dev",
    "suid",
    "nodev",
    "nosuid",
    "exec",
    "noexec",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "defaults",
    // The kernel's default whatever these say: relatime unless strictatime or noatime.
    "relatime",
    "norelatime",
    "lazytime",
    "nolazytime",
    "sync",
    "async",
    "dirsync",
    "iversion",
    "noiversion",
    "silent",
    "loud",
];

/// The supported options, for error messages.
const SUPPORTED: &str = "supported: key_file=PATH, keyservice=URL, tenant=ID, token_file=PATH, \
                         ca_file=PATH, ro, rw, allow_other, debug, force_unlock, uring, \
                         nouring, relatime, strictatime, noatime, nodiratime, and the other \
                         generic mount(8) options, which are ignored";

/// Parses the `-o` arguments (each a comma-separated list).
pub fn parse_mount_options(lists: &[String]) -> Result<MountOptions, OptionError> {
    let mut opts = MountOptions::default();
    for opt in lists.iter().flat_map(|list| list.split(',')) {
        let opt = opt.trim();
        if opt.is_empty() || IGNORED_OPTIONS.contains(&opt) || opt.starts_with("x-") {
            continue;
        }
        if let Some((name, value)) = opt.split_once('=') {
            if value.is_empty() {
                return Err(OptionError(format!("mount option {name}= needs a value")));
            }
            let ks = &mut opts.service;
            match name {
                "key_file" => opts.key_file = Some(PathBuf::from(value)),
                "keyservice" => ks.url = Some(value.to_string()),
                "tenant" => ks.tenant = Some(value.to_string()),
                "token_file" => ks.token_file = Some(PathBuf::from(value)),
                "ca_file" => ks.ca_file = Some(PathBuf::from(value)),
                _ => {
                    return Err(OptionError(format!(
                        "unknown mount option '{opt}' ({SUPPORTED})"
                    )))
                }
            }
            continue;
        }
        match opt {
            "ro" => opts.read_only = true,
            "rw" => opts.read_only = false,
            "allow_other" => opts.allow_other = true,
            "debug" => opts.debug = true,
            "force_unlock" => opts.force_unlock = true,
            "remount" => opts.remount = true,
            "uring" => opts.uring = UringMode::Requested,
            "nouring" => opts.uring = UringMode::Off,
            "atime" => opts.atime.noatime = false,
            "noatime" => opts.atime.noatime = true,
            "strictatime" => opts.atime.strictatime = true,
            "nostrictatime" => opts.atime.strictatime = false,
            "diratime" => opts.atime.nodiratime = false,
            "nodiratime" => opts.atime.nodiratime = true,
            "key_file" | "keyservice" | "tenant" | "token_file" | "ca_file" => {
                return Err(OptionError(format!(
                    "mount option {opt} needs a value: {opt}=..."
                )))
            }
            other => {
                return Err(OptionError(format!(
                    "unknown mount option '{other}' ({SUPPORTED})"
                )))
            }
        }
    }
    Ok(opts)
}

/// The filesystem types an fstab line of a digimedfs filesystem has: `fuse.digimedfs` (what
/// mount(8) needs) or `digimedfs`.
pub const FSTAB_TYPES: &[&str] = &["fuse.digimedfs", "digimedfs"];

/// The fstab file to read: `$DIGIMEDFS_FSTAB` (meant for tests) or /etc/fstab.
pub fn fstab_path() -> PathBuf {
    std::env::var_os("DIGIMEDFS_FSTAB")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from("/etc/fstab"), PathBuf::from)
}

/// The mount options of `backing`'s line in the fstab text `text`: the first line whose first
/// field is `backing` (as written, or the same directory after resolving links) and whose
/// type is one of [`FSTAB_TYPES`]. `None` when there is no such line. Octal escapes (`\040`
/// for a space) are decoded as fstab(5) says.
pub fn fstab_options(text: &str, backing: &Path) -> Result<Option<MountOptions>, OptionError> {
    let canonical = backing.canonicalize().ok();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(spec), Some(_dir), Some(kind)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if !FSTAB_TYPES.contains(&kind) {
            continue;
        }
        let spec = PathBuf::from(digimedfs_core::mounts::unescape(spec));
        let same = spec == backing
            || canonical
                .as_ref()
                .is_some_and(|c| spec.canonicalize().ok().as_ref() == Some(c));
        if !same {
            continue;
        }
        let options = digimedfs_core::mounts::unescape(fields.next().unwrap_or("defaults"));
        return parse_mount_options(&[options])
            .map(Some)
            .map_err(|e| OptionError(format!("fstab entry of {}: {e}", backing.display())));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_line_of_the_backing_directory_gives_its_key_options() {
        let text = "# comment\n\
            /dev/sda1 / ext4 defaults 0 1\n\
            /srv/other /mnt/o fuse.digimedfs key_file=/etc/digimedfs/o.key 0 0\n\
            /srv/b /mnt/p fuse.digimedfs key_file=/etc/digimedfs/p.key,allow_other,_netdev 0 0\n\
            /srv/b /mnt/q nfs rw 0 0\n";
        let o = fstab_options(text, Path::new("/srv/b")).unwrap().unwrap();
        assert_eq!(o.key_file, Some(PathBuf::from("/etc/digimedfs/p.key")));
        assert!(o.allow_other);
        assert!(fstab_options(text, Path::new("/srv/none"))
            .unwrap()
            .is_none());
        let ks = "/srv/a\\040b /mnt/p digimedfs keyservice=https://ks:8443,tenant=t,\
                  token_file=/t,ca_file=/ca 0 0";
        let o = fstab_options(ks, Path::new("/srv/a b")).unwrap().unwrap();
        assert_eq!(o.service.url.as_deref(), Some("https://ks:8443"));
        assert_eq!(o.service.tenant.as_deref(), Some("t"));
        let bad = "/srv/b /mnt/p fuse.digimedfs key_file=/k,bogus 0 0";
        let e = fstab_options(bad, Path::new("/srv/b"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/srv/b") && e.contains("bogus"), "{e}");
    }
}
