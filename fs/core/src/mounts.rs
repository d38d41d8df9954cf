//! This host's mount table (/proc/self/mountinfo), read with its octal escapes undone, so a
//! mount point or source with a space in its path is found like any other.

use std::path::{Path, PathBuf};

/// One mounted filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted.
    pub point: PathBuf,
    /// Its type, e.g. `fuse.digimedfs`.
    pub fstype: String,
    /// Its source (for digimedfs: the backing directory).
    pub source: PathBuf,
}

/// The mounts in `mountinfo` (the text of /proc/self/mountinfo); malformed lines are skipped.
pub fn parse(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, rest) = line.split_once(" - ")?;
            let point = mount.split(' ').nth(4)?;
            let mut rest = rest.split(' ');
            let fstype = rest.next()?;
            let source = rest.next()?;
            Some(Mount {
                point: PathBuf::from(unescape(point)),
                fstype: fstype.to_string(),
                source: PathBuf::from(unescape(source)),
            })
        })
        .collect()
}

/// This host's mounts (none if the table cannot be read).
pub fn current() -> Vec<Mount> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The mount whose mount point is `path`, if any (the last one: what the path shows).
pub fn at(mounts: &[Mount], path: &Path) -> Option<Mount> {
    mounts.iter().rev().find(|m| m.point == path).cloned()
}

/// Undoes the octal escapes (`\040` for a space, also tab, newline, backslash) that the
/// kernel's mount table and fstab(5) use for the same characters.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|x| (b'0'..=b'7').contains(x)));
        match (c, digits) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, x| acc * 8 + u32::from(x - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mount_points_and_sources_with_escaped_names() {
        let info = "22 1 0:21 / / rw - ext4 /dev/vda rw\n\
                    40 22 0:50 / /mnt/my\\040proj rw,nosuid - fuse.digimedfs /srv/b\\040x rw\n";
        let mounts = parse(info);
        let m = at(&mounts, Path::new("/mnt/my proj")).expect("the digimedfs mount");
        assert_eq!(m.fstype, "fuse.digimedfs");
        assert_eq!(m.source, Path::new("/srv/b x"));
        assert_eq!(
            at(&mounts, Path::new("/")).map(|m| m.fstype).as_deref(),
            Some("ext4")
        );
        assert_eq!(at(&mounts, Path::new("/mnt")), None);
        assert!(parse("garbage\n\n - \n").is_empty());
    }
}
