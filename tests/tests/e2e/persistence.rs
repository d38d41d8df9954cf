//! A tree built on the mount survives unmount and remount exactly: compared path by path with
//! the same tree built on the ordinary disk.

use digimedfs_core::format::records::INLINE_MAX;
use digimedfs_tests::{cpath, random_bytes, set_xattr, TestFs};
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The random contents both trees share: sizes around the block size (4096), around INLINE_MAX
/// (the largest file stored inline, without a data object) and larger.
struct Blobs {
    s4095: Vec<u8>,
    s4096: Vec<u8>,
    s4097: Vec<u8>,
    inline_max: Vec<u8>,
    over_inline_max: Vec<u8>,
    s100k: Vec<u8>,
    s3m: Vec<u8>,
    xattr_big: Vec<u8>,
}

fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn set_times(p: &Path, sec: i64, nsec: i64) {
    let times = [
        libc::timespec {
            tv_sec: sec - 1000,
            tv_nsec: nsec,
        },
        libc::timespec {
            tv_sec: sec,
            tv_nsec: nsec,
        },
    ];
    let cp = cpath(p);
    // SAFETY: valid C string and timespec array for the duration of the call.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cp.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(
        r,
        0,
        "utimensat {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// The user.* xattrs of `p` (not following symlinks), sorted.
fn user_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let cp = cpath(p);
    let mut out = BTreeMap::new();
    // SAFETY: a null buffer with size 0 asks for the list's size.
    let size = unsafe { libc::llistxattr(cp.as_ptr(), std::ptr::null_mut(), 0) };
    assert!(
        size >= 0,
        "llistxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    let mut names = vec![0u8; size as usize];
    // SAFETY: `names` has room for its length.
    let n = unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(n >= 0);
    names.truncate(n as usize);
    for name in names.split(|&b| b == 0).filter(|s| s.starts_with(b"user.")) {
        let cn = std::ffi::CString::new(name).unwrap();
        // SAFETY: valid C strings; null buffer asks for the size.
        let len = unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), std::ptr::null_mut(), 0) };
        assert!(len >= 0);
        let mut v = vec![0u8; len as usize];
        // SAFETY: `v` has room for its length.
        let got =
            unsafe { libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
        assert!(got >= 0);
        v.truncate(got as usize);
        out.insert(String::from_utf8_lossy(name).into_owned(), v);
    }
    out
}

fn build_tree(root: &Path, b: &Blobs) {
    let p = |s: &str| root.join(s);
    for d in ["a", "a/b", "a/b/c", "empty", "sticky"] {
        fs::create_dir(p(d)).unwrap();
    }
    fs::write(p("s0"), b"").unwrap();
    fs::write(p("s1"), b"1").unwrap();
    fs::write(p("s4095"), &b.s4095).unwrap();
    fs::write(p("a/s4096"), &b.s4096).unwrap();
    fs::write(p("a/b/s4097"), &b.s4097).unwrap();
    fs::write(p("a/inline_max"), &b.inline_max).unwrap();
    fs::write(p("a/b/over_inline_max"), &b.over_inline_max).unwrap();
    fs::write(p("a/s100k"), &b.s100k).unwrap();
    fs::write(p("a/b/c/s3m"), &b.s3m).unwrap();
    fs::write(p("name with spaces & ünïcödé"), b"odd name").unwrap();
    std::os::unix::fs::symlink("../s4095", p("a/link_rel")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/absolute/target", p("link_abs")).unwrap();
    std::os::unix::fs::symlink("b/c", p("a/dirlink")).unwrap();
    fs::hard_link(p("a/b/s4097"), p("hl_s4097")).unwrap();
    fs::hard_link(p("a/b/over_inline_max"), p("hl_over_inline_max")).unwrap();
    fs::hard_link(p("a/s100k"), p("a/b/c/hl_s100k")).unwrap();
    fs::hard_link(p("a/s100k"), p("hl_s100k_2")).unwrap();
    set_xattr(&p("s1"), "user.colour", b"blue");
    set_xattr(&p("a"), "user.dir", b"on a directory");
    set_xattr(&p("a/b/c/s3m"), "user.big", &b.xattr_big);
    set_xattr(&p("a/b/c/s3m"), "user.empty", b"");
    set_mode(&p("s0"), 0o600);
    set_mode(&p("s1"), 0o755);
    set_mode(&p("s4095"), 0o400);
    set_mode(&p("a/s4096"), 0o4755);
    set_mode(&p("a/inline_max"), 0o640);
    set_mode(&p("a/b"), 0o700);
    set_mode(&p("empty"), 0o711);
    set_mode(&p("sticky"), 0o1777);
    std::os::unix::fs::chown(p("a/b/s4097"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::chown(p("a/b/over_inline_max"), Some(4321), Some(8765)).unwrap();
    std::os::unix::fs::lchown(p("link_abs"), Some(42), Some(43)).unwrap();

    // Times last, deepest first, so creating entries does not move them again.
    let mut all = Vec::new();
    collect(root, root, &mut all);
    all.sort();
    all.sort_by_key(|rel| std::cmp::Reverse(rel.matches('/').count()));
    for (i, rel) in all.iter().enumerate() {
        set_times(
            &root.join(rel),
            1_500_000_000 + i as i64 * 3600,
            100_000_007 * (i as i64 % 9) + 1,
        );
    }
}

/// Relative paths of everything under `dir`.
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let path = e.path();
        out.push(
            path.strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
        if e.file_type().unwrap().is_dir() {
            collect(root, &path, out);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Entry {
    kind: &'static str,
    size: Option<u64>,
    mode: u32,
    nlink: u64,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    content_hash: Option<(usize, u64)>,
    target: Option<String>,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn hash(data: &[u8]) -> (usize, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    data.hash(&mut h);
    (data.len(), h.finish())
}

fn snapshot(root: &Path) -> BTreeMap<String, Entry> {
    let mut rels = Vec::new();
    collect(root, root, &mut rels);
    let mut out = BTreeMap::new();
    for rel in rels {
        let path = root.join(&rel);
        let m = fs::symlink_metadata(&path).unwrap();
        let ft = m.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "other"
        };
        let entry = Entry {
            kind,
            // Directory sizes are filesystem-specific.
            size: (kind != "dir").then_some(m.len()),
            mode: m.mode(),
            nlink: m.nlink(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
            content_hash: (kind == "file").then(|| hash(&fs::read(&path).unwrap())),
            target: (kind == "symlink")
                .then(|| fs::read_link(&path).unwrap().to_string_lossy().into_owned()),
            // Linux allows no user.* xattrs on symlinks.
            xattrs: if kind == "symlink" {
                BTreeMap::new()
            } else {
                user_xattrs(&path)
            },
        };
        out.insert(rel, entry);
    }
    out
}

fn diff(what: &str, want: &BTreeMap<String, Entry>, got: &BTreeMap<String, Entry>) {
    let mut problems = Vec::new();
    for (rel, w) in want {
        match got.get(rel) {
            None => problems.push(format!("{rel}: missing")),
            Some(g) if g != w => problems.push(format!("{rel}:\n  want {w:?}\n  got  {g:?}")),
            Some(_) => {}
        }
    }
    for rel in got.keys().filter(|k| !want.contains_key(*k)) {
        problems.push(format!("{rel}: unexpected"));
    }
    assert!(
        problems.is_empty(),
        "{what}: {} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn tree_survives_remount() {
    let mut fs = TestFs::new();
    let blobs = Blobs {
        s4095: random_bytes(4095),
        s4096: random_bytes(4096),
        s4097: random_bytes(4097),
        inline_max: random_bytes(INLINE_MAX as usize),
        over_inline_max: random_bytes(INLINE_MAX as usize + 1),
        s100k: random_bytes(100 * 1024),
        s3m: random_bytes(3 << 20),
        xattr_big: random_bytes(1000),
    };
    let reference = fs.root_dir().join("reference");
    fs::create_dir(&reference).unwrap();
    build_tree(&reference, &blobs);
    fs::create_dir(fs.path("tree")).unwrap();
    build_tree(&fs.path("tree"), &blobs);

    let want = snapshot(&reference);
    assert!(want.len() >= 22, "reference tree too small: {}", want.len());
    diff(
        "mounted tree vs reference (before remount)",
        &want,
        &snapshot(&fs.path("tree")),
    );
    fs.remount();
    diff(
        "mounted tree vs reference (after remount)",
        &want,
        &snapshot(&fs.path("tree")),
    );
    // And once more, after a read-only pass (atime updates must not disturb anything).
    fs.remount();
    diff(
        "mounted tree vs reference (second remount)",
        &want,
        &snapshot(&fs.path("tree")),
    );
}
