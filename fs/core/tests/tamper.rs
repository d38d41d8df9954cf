//! Tamper and corruption detection over a real backing directory (and, for metadata records,
//! over [`MemImage`]). Proves that damage to stored data (bit flips, swapped, truncated,
//! deleted or replayed objects, zeroed blocks) surfaces as `EIO` on the damaged file only,
//! without panics, while undamaged files read back identical; that a damaged primary superblock
//! falls back to `superblock.bak` and damage to both gives a clear error; that a wrong key is
//! refused with [`Error::WrongKey`] before anything in the backing directory changes; and that
//! any damaged, garbage or moved (swapped) sealed metadata record, and an inode record deleted
//! from behind its entry, is reported as `EIO` by the operations touching it while everything
//! else keeps working.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{KEY, ROOT};
use digimedfs_core::backing::BackingDir;
use digimedfs_core::filesystem::{unlock_superblock, FileKind, Filesystem, OpenOptions, ROOT_INO};
use digimedfs_core::format::records::{inode_key, prefix, Storage, INLINE_MAX};
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use digimedfs_core::testing::{MemImage, StaticKey};
use digimedfs_core::Error;
use digimedfs_sled::Sled;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 13) as u8 ^ seed)
        .collect()
}

struct TestFile {
    name: &'static str,
    data: Vec<u8>,
    /// Path of the data object relative to the backing directory.
    object: Option<PathBuf>,
}

struct Pristine {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    files: Vec<TestFile>,
}

impl Pristine {
    fn object(&self, name: &str) -> PathBuf {
        self.files
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .object
            .clone()
            .unwrap()
    }
}

fn build() -> Pristine {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    mkfs(&dir, &KEY, &MkfsOptions::default(), &Sled).unwrap();
    let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    let mut files = Vec::new();
    // Files up to INLINE_MAX live in the sealed metadata store, larger ones in a data object.
    for (i, (name, len)) in [
        ("small", 100),
        ("inline", 4000),
        ("big1", 200_000),
        ("big2", 100_000),
        ("big3", 300_000),
        ("inline_max", INLINE_MAX as usize),
    ]
    .into_iter()
    .enumerate()
    {
        let data = content(i as u8 + 1, len);
        let (a, fh) = fs
            .create(&ROOT, ROOT_INO, name.as_bytes(), 0o644, 0, libc::O_RDWR)
            .unwrap();
        for (k, piece) in data.chunks(65536).enumerate() {
            fs.write(a.ino, fh, (k * 65536) as u64, piece).unwrap();
        }
        fs.fsync(a.ino, fh, false).unwrap();
        fs.release(a.ino, fh).unwrap();
        let object = match fs.records().inode(a.ino).unwrap().unwrap().storage {
            Storage::Object(id) => {
                let h = hex::encode(id);
                Some(PathBuf::from("objects").join(&h[..2]).join(&h))
            }
            _ => None,
        };
        assert_eq!(
            object.is_some(),
            len as u64 > INLINE_MAX,
            "{name}: storage kind"
        );
        files.push(TestFile { name, data, object });
    }
    fs.close().unwrap();
    drop(fs);
    for f in &files {
        if let Some(o) = &f.object {
            assert!(
                dir.join(o).is_file(),
                "{}: object file {} missing",
                f.name,
                o.display()
            );
        }
    }
    Pristine {
        _tmp: tmp,
        dir,
        files,
    }
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A fresh copy of the pristine image; returns (keeper, backing dir).
fn fresh(p: &Pristine) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    copy_dir(&p.dir, &dir);
    (tmp, dir)
}

fn flip(path: &Path, offset: u64, mask: u8) {
    let mut b = std::fs::read(path).unwrap();
    b[offset as usize] ^= mask;
    std::fs::write(path, b).unwrap();
}

/// Opens `dir` and checks: files in `damaged` fail with EIO when read whole, every other file
/// reads back identical.
fn check(p: &Pristine, dir: &Path, damaged: &[&str]) -> Filesystem {
    let fs = Filesystem::open(dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    for f in &p.files {
        let a = fs.lookup(&ROOT, ROOT_INO, f.name.as_bytes()).unwrap();
        assert_eq!(a.size, f.data.len() as u64, "{}: size", f.name);
        let r = fs.read(a.ino, 0, 0, f.data.len() as u32 + 10);
        if damaged.contains(&f.name) {
            let e = r.expect_err(&format!("{}: damaged file read back without error", f.name));
            assert_eq!(e.errno(), libc::EIO, "{}: {e}", f.name);
            assert!(matches!(e, Error::Integrity { .. }), "{}: {e:?}", f.name);
        } else {
            let got = r.unwrap_or_else(|e| panic!("{}: undamaged file fails: {e}", f.name));
            assert!(
                got == f.data,
                "{}: undamaged file reads back different bytes",
                f.name
            );
        }
    }
    fs
}

#[test]
fn pristine_copy_reads_back() {
    let p = build();
    let (_t, dir) = fresh(&p);
    check(&p, &dir, &[]).close().unwrap();
}

#[test]
fn bit_flip_in_data_object() {
    let p = build();
    for (offset, mask) in [(0u64, 1u8), (5000, 0x80), (199_999, 4)] {
        let (_t, dir) = fresh(&p);
        flip(&dir.join(p.object("big1")), offset, mask);
        let fs = check(&p, &dir, &["big1"]);
        // Blocks other than the damaged one still read.
        let a = fs.lookup(&ROOT, ROOT_INO, b"big1").unwrap();
        let blk = offset / 4096;
        let other = if blk == 0 { 4096 * 5 } else { 0 };
        assert_eq!(
            fs.read(a.ino, 0, other, 4096).unwrap(),
            p.files[2].data[other as usize..other as usize + 4096]
        );
        let e = fs.read(a.ino, 0, blk * 4096, 10).unwrap_err();
        assert_eq!(e.errno(), libc::EIO);
        fs.close().unwrap();
    }
}

#[test]
fn swapped_objects() {
    let p = build();
    let (_t, dir) = fresh(&p);
    let (o1, o2) = (dir.join(p.object("big1")), dir.join(p.object("big2")));
    let tmp = dir.join("swap.tmp");
    std::fs::rename(&o1, &tmp).unwrap();
    std::fs::rename(&o2, &o1).unwrap();
    std::fs::rename(&tmp, &o2).unwrap();
    check(&p, &dir, &["big1", "big2"]).close().unwrap();
}

#[test]
fn truncated_object() {
    let p = build();
    for len in [100_000u64, 4096 * 10, 0] {
        let (_t, dir) = fresh(&p);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(p.object("big3")))
            .unwrap();
        f.set_len(len).unwrap();
        drop(f);
        check(&p, &dir, &["big3"]).close().unwrap();
    }
}

#[test]
fn deleted_object() {
    let p = build();
    let (_t, dir) = fresh(&p);
    std::fs::remove_file(dir.join(p.object("big2"))).unwrap();
    check(&p, &dir, &["big2"]).close().unwrap();
}

#[test]
fn zeroed_block() {
    let p = build();
    let (_t, dir) = fresh(&p);
    let path = dir.join(p.object("big1"));
    let mut b = std::fs::read(&path).unwrap();
    b[8192..12288].fill(0);
    std::fs::write(&path, b).unwrap();
    check(&p, &dir, &["big1"]).close().unwrap();
}

#[test]
fn replayed_old_object() {
    let p = build();
    let (_t, dir) = fresh(&p);
    let path = dir.join(p.object("big1"));
    let old = std::fs::read(&path).unwrap();
    {
        let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
        let a = fs.lookup(&ROOT, ROOT_INO, b"big1").unwrap();
        let fh = fs.open_file(&ROOT, a.ino, libc::O_RDWR).unwrap();
        fs.write(a.ino, fh, 0, &content(99, 8192)).unwrap();
        fs.fsync(a.ino, fh, false).unwrap();
        fs.release(a.ino, fh).unwrap();
        assert_eq!(fs.read(a.ino, fh, 0, 8192).unwrap(), content(99, 8192));
        fs.close().unwrap();
    }
    assert_ne!(
        std::fs::read(&path).unwrap(),
        old,
        "rewrite did not change the object"
    );
    std::fs::write(&path, &old).unwrap();
    let fs = check(&p, &dir, &["big1"]);
    let a = fs.lookup(&ROOT, ROOT_INO, b"big1").unwrap();
    // The rewritten blocks are rejected; blocks not rewritten are still the old (valid) ones.
    assert_eq!(fs.read(a.ino, 0, 0, 4096).unwrap_err().errno(), libc::EIO);
    assert_eq!(
        fs.read(a.ino, 0, 4096, 4096).unwrap_err().errno(),
        libc::EIO
    );
    assert_eq!(
        fs.read(a.ino, 0, 8192, 8192).unwrap(),
        p.files[2].data[8192..16384]
    );
    fs.close().unwrap();
}

#[test]

fn damaged_primary_superblock_falls_back_to_copy() {
    let p = build();
    let (_t, dir) = fresh(&p);
    let sb = dir.join("superblock");
    let orig = std::fs::read(&sb).unwrap();
    let backing = BackingDir::open(&dir).unwrap();
    let mut refused = Vec::new();
    for i in 0..orig.len() {
        let mut b = orig.clone();
        b[i] ^= 0x10;
        std::fs::write(&sb, &b).unwrap();
        if let Err(e) = unlock_superblock(&backing, &KEY) {
            refused.push(format!("byte {i}: {e}"));
        }
    }
    std::fs::write(&sb, &orig).unwrap();
    assert!(
        refused.is_empty(),
        "a damaged primary superblock with an intact copy was refused:\n{}",
        refused.join("\n")
    );
}

#[test]
fn damaged_superblock_mac_opens_with_backup() {
    let p = build();
    let (_t, dir) = fresh(&p);
    let len = std::fs::metadata(dir.join("superblock")).unwrap().len();
    flip(&dir.join("superblock"), len - 1, 1);
    check(&p, &dir, &[]).close().unwrap();
    // The next clean close rewrote both copies.
    let (sb, bak) = (
        std::fs::read(dir.join("superblock")).unwrap(),
        std::fs::read(dir.join("superblock.bak")).unwrap(),
    );
    assert_eq!(sb, bak);
    check(&p, &dir, &[]).close().unwrap();
}

#[test]
fn both_superblocks_damaged_is_a_clear_error() {
    let p = build();
    for where_ in ["mac", "header", "slot", "truncated", "missing"] {
        let (_t, dir) = fresh(&p);
        for name in ["superblock", "superblock.bak"] {
            let path = dir.join(name);
            let len = std::fs::metadata(&path).unwrap().len();
            match where_ {
                "mac" => flip(&path, len - 1, 1),
                "header" => flip(&path, 40, 0x40),
                "slot" => flip(&path, len - 40, 0x40),
                "truncated" => {
                    std::fs::write(&path, &std::fs::read(&path).unwrap()[..len as usize / 3])
                        .unwrap()
                }
                _ => std::fs::remove_file(&path).unwrap(),
            }
        }
        let before = hash_tree(&dir);
        let e = match Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled) {
            Ok(_) => panic!("{where_}: opened with both superblocks damaged"),
            Err(e) => e,
        };
        if where_ == "slot" {
            // A damaged key slot cannot be told apart from a wrong key.
            assert!(
                matches!(e, Error::WrongKey { .. }) || e.errno() == libc::EIO,
                "{where_}: {e:?}"
            );
        } else {
            assert!(
                !matches!(e, Error::WrongKey { .. }),
                "{where_}: damage reported as a wrong key: {e}"
            );
            assert_eq!(e.errno(), libc::EIO, "{where_}: {e}");
            assert!(
                e.to_string().contains("superblock"),
                "{where_}: unclear error: {e}"
            );
        }
        assert_eq!(
            hash_tree(&dir),
            before,
            "{where_}: failed open changed the backing directory"
        );
    }
}

fn hash_tree(dir: &Path) -> BTreeMap<PathBuf, blake3::Hash> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, blake3::Hash>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                out.insert(
                    e.path().strip_prefix(root).unwrap().to_path_buf(),
                    blake3::hash(b"<dir>"),
                );
                walk(root, &e.path(), out);
            } else {
                out.insert(
                    e.path().strip_prefix(root).unwrap().to_path_buf(),
                    blake3::hash(&std::fs::read(e.path()).unwrap()),
                );
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

#[test]
fn wrong_key_is_refused_before_any_write() {
    let p = build();
    let (_t, dir) = fresh(&p);
    let before = hash_tree(&dir);
    for opts in [
        OpenOptions::default(),
        OpenOptions {
            read_only: true,
            ..Default::default()
        },
    ] {
        match Filesystem::open(&dir, &StaticKey([43; 32]), &opts, &Sled) {
            Ok(_) => panic!("opened with the wrong key"),
            Err(e) => assert!(matches!(e, Error::WrongKey { .. }), "{e:?}"),
        }
    }
    assert_eq!(
        hash_tree(&dir),
        before,
        "backing directory changed by a refused open"
    );
    check(&p, &dir, &[]).close().unwrap();
}

// ---------------------------------------------------------------- sealed metadata records

struct MemFs {
    img: MemImage,
    /// Path → expected contents (files), or None (directories, symlinks).
    expect: BTreeMap<String, Option<Vec<u8>>>,
    inos: BTreeMap<String, u64>,
}

fn mem_fs() -> MemFs {
    let img = MemImage::create(4096).unwrap();
    let fs = img.open(&OpenOptions::default()).unwrap();
    let mut expect = BTreeMap::new();
    let mut inos = BTreeMap::new();
    let d = fs.mkdir(&ROOT, ROOT_INO, b"d", 0o755, 0).unwrap();
    expect.insert("/d".to_string(), None);
    inos.insert("/d".to_string(), d.ino);
    // f1 and f3 inline, f2 and f4 object-backed (block map chunk records).
    for (parent, pname, name, len) in [
        (ROOT_INO, "", "f1", 100),
        (ROOT_INO, "", "f2", INLINE_MAX as usize + 50_000),
        (d.ino, "/d", "f3", 3000),
        (d.ino, "/d", "f4", INLINE_MAX as usize + 20_000),
    ] {
        let (a, fh) = fs
            .create(&ROOT, parent, name.as_bytes(), 0o644, 0, libc::O_RDWR)
            .unwrap();
        let data = content(len as u8, len);
        fs.write(a.ino, fh, 0, &data).unwrap();
        fs.release(a.ino, fh).unwrap();
        fs.setxattr(&ROOT, a.ino, b"user.k", name.as_bytes(), 0)
            .unwrap();
        expect.insert(format!("{pname}/{name}"), Some(data));
        inos.insert(format!("{pname}/{name}"), a.ino);
    }
    let l = fs.symlink(&ROOT, d.ino, b"ln", b"../f1").unwrap();
    expect.insert("/d/ln".to_string(), None);
    inos.insert("/d/ln".to_string(), l.ino);
    fs.close().unwrap();
    drop(fs);
    MemFs { img, expect, inos }
}

fn copy_img(img: &MemImage) -> MemImage {
    assert_eq!(img.meta.pending_batches(), 0);
    img.crash_image(0, &mut |_| true)
}

/// Walks everything; returns the errors met. Panics if anything reads back wrong.
fn walk_errors(fs: &Filesystem, m: &MemFs) -> Vec<Error> {
    let mut errs = Vec::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    let mut seen = 0;
    while let Some((dir, path)) = stack.pop() {
        if let Err(e) = fs.getattr(dir) {
            errs.push(e);
        }
        if let Err(e) = fs.listxattr(&ROOT, dir) {
            errs.push(e);
        }
        let ents = match fs.readdir(dir, 0, 0, 1000) {
            Ok(e) => e,
            Err(e) => {
                errs.push(e);
                continue;
            }
        };
        for e in ents {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let p = format!("{path}/{}", String::from_utf8(e.name.clone()).unwrap());
            let want = m
                .expect
                .get(&p)
                .unwrap_or_else(|| panic!("unexpected entry {p}"));
            assert_eq!(e.ino, m.inos[&p], "{p}: entry names another inode");
            seen += 1;
            if let Err(err) = fs.lookup(&ROOT, dir, &e.name) {
                errs.push(err);
            }
            match fs.listxattr(&ROOT, e.ino) {
                Ok(_) => {
                    if want.is_some() {
                        match fs.getxattr(&ROOT, e.ino, b"user.k") {
                            Ok(v) => assert_eq!(
                                v,
                                p.rsplit('/').next().unwrap().as_bytes(),
                                "{p}: xattr value"
                            ),
                            Err(err) => errs.push(err),
                        }
                    }
                }
                Err(err) => errs.push(err),
            }
            let attr = match fs.getattr(e.ino) {
                Ok(a) => a,
                Err(err) => {
                    errs.push(err);
                    continue;
                }
            };
            match attr.kind {
                FileKind::Dir => stack.push((e.ino, p)),
                FileKind::Symlink => match fs.readlink(e.ino) {
                    Ok(t) => assert_eq!(t, b"../f1", "{p}: symlink target"),
                    Err(err) => errs.push(err),
                },
                _ => {
                    let want = want.as_ref().unwrap();
                    assert_eq!(attr.size, want.len() as u64, "{p}: size");
                    match fs.read(e.ino, 0, 0, 1 << 20) {
                        Ok(got) => assert!(&got == want, "{p}: reads back different bytes"),
                        Err(err) => errs.push(err),
                    }
                }
            }
        }
    }
    if errs.is_empty() {
        assert_eq!(seen, m.expect.len(), "entries missing without an error");
    }
    errs
}

#[test]
fn every_damaged_record_is_detected() {
    let m = mem_fs();
    {
        let fs = copy_img(&m.img).open(&OpenOptions::default()).unwrap();
        assert!(walk_errors(&fs, &m).is_empty());
    }
    let dump = m.img.meta.dump();
    assert!(dump.len() > 10);
    for kind in [prefix::INLINE, prefix::CHUNK] {
        assert!(
            dump.keys().any(|k| k.first() == Some(&kind)),
            "no {:?} record to damage",
            kind as char
        );
    }
    for (key, value) in &dump {
        for damage in ["flip", "garbage", "truncate"] {
            let img = copy_img(&m.img);
            let bad = match damage {
                "flip" => {
                    let mut v = value.clone();
                    let i = v.len() / 2;
                    v[i] ^= 0x20;
                    v
                }
                "garbage" => vec![0xA5; 40],
                _ => value[..value.len() / 2].to_vec(),
            };
            img.meta.poke(key, Some(bad));
            let what = format!("{damage} {}", digimedfs_core::meta::key_name(key));
            match img.open(&OpenOptions::default()) {
                Err(e) => assert_eq!(e.errno(), libc::EIO, "{what}: open: {e}"),
                Ok(fs) => {
                    let errs = walk_errors(&fs, &m);
                    assert!(!errs.is_empty(), "{what}: damage went unnoticed");
                    for e in &errs {
                        assert_eq!(e.errno(), libc::EIO, "{what}: {e}");
                    }
                }
            }
        }
    }
}

#[test]
fn garbage_inode_record_fails_only_that_inode() {
    let m = mem_fs();
    let img = copy_img(&m.img);
    let f1 = m.inos["/f1"];
    img.meta.poke(&inode_key(f1), Some(vec![0x5A; 64]));
    let fs = img.open(&OpenOptions::default()).unwrap();
    assert_eq!(fs.getattr(f1).unwrap_err().errno(), libc::EIO);
    assert_eq!(
        fs.lookup(&ROOT, ROOT_INO, b"f1").unwrap_err().errno(),
        libc::EIO
    );
    assert_eq!(fs.read(f1, 0, 0, 10).unwrap_err().errno(), libc::EIO);
    let f2 = m.inos["/f2"];
    assert_eq!(
        &fs.read(f2, 0, 0, 1 << 20).unwrap(),
        m.expect["/f2"].as_ref().unwrap()
    );
    let d = fs.lookup(&ROOT, ROOT_INO, b"d").unwrap();
    let f3 = fs.lookup(&ROOT, d.ino, b"f3").unwrap();
    assert_eq!(
        &fs.read(f3.ino, 0, 0, 1 << 20).unwrap(),
        m.expect["/d/f3"].as_ref().unwrap()
    );
    // Writes elsewhere still work.
    let (n, fh) = fs
        .create(&ROOT, d.ino, b"new", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(n.ino, fh, 0, b"fine").unwrap();
    fs.release(n.ino, fh).unwrap();
    fs.close().unwrap();
}

/// An entry whose inode record is gone (deleted from the store) is damage, reported as EIO:
/// not as ENOENT, which the kernel would cache as a missing name with nothing to say why.
#[test]
fn deleted_inode_record_behind_an_entry_is_eio() {
    let m = mem_fs();
    let img = copy_img(&m.img);
    let f1 = m.inos["/f1"];
    img.meta.poke(&inode_key(f1), None);
    let fs = img.open(&OpenOptions::default()).unwrap();
    assert_eq!(
        fs.lookup(&ROOT, ROOT_INO, b"f1").unwrap_err().errno(),
        libc::EIO
    );
    assert_eq!(
        fs.lookup(&ROOT, ROOT_INO, b"no-such-name")
            .unwrap_err()
            .errno(),
        libc::ENOENT,
        "a name that is not there is still ENOENT"
    );
    let f2 = fs.lookup(&ROOT, ROOT_INO, b"f2").unwrap();
    assert_eq!(
        &fs.read(f2.ino, 0, 0, 1 << 20).unwrap(),
        m.expect["/f2"].as_ref().unwrap()
    );
    fs.close().unwrap();
}

#[test]
fn swapped_inode_records_are_detected() {
    let m = mem_fs();
    let img = copy_img(&m.img);
    let (f1, f3) = (m.inos["/f1"], m.inos["/d/f3"]);
    let dump = img.meta.dump();
    let (k1, k3) = (inode_key(f1), inode_key(f3));
    let (v1, v3) = (dump[&k1[..]].clone(), dump[&k3[..]].clone());
    img.meta.poke(&k1, Some(v3));
    img.meta.poke(&k3, Some(v1));
    let fs = img.open(&OpenOptions::default()).unwrap();
    for ino in [f1, f3] {
        let e = fs.getattr(ino).unwrap_err();
        assert_eq!(e.errno(), libc::EIO, "{e}");
        assert!(
            e.to_string().contains("moved") || e.to_string().contains("authentication"),
            "{e}"
        );
    }
    let f2 = m.inos["/f2"];
    assert_eq!(
        &fs.read(f2, 0, 0, 1 << 20).unwrap(),
        m.expect["/f2"].as_ref().unwrap()
    );
    fs.close().unwrap();
}

#[test]
fn records_moved_between_any_two_keys_are_detected() {
    let m = mem_fs();
    let dump = m.img.meta.dump();
    let keys: Vec<&Vec<u8>> = dump.keys().collect();
    for (i, a) in keys.iter().enumerate() {
        // Each key with its successor and one far away: covers same-type and cross-type moves.
        for b in [
            keys[(i + 1) % keys.len()],
            keys[(i + keys.len() / 2) % keys.len()],
        ] {
            if a == &b || dump[*a] == dump[b] {
                continue;
            }
            let img = copy_img(&m.img);
            img.meta.poke(a, Some(dump[b].clone()));
            let what = format!(
                "{} moved over {}",
                digimedfs_core::meta::key_name(b),
                digimedfs_core::meta::key_name(a)
            );
            match img.open(&OpenOptions::default()) {
                Err(e) => assert_eq!(e.errno(), libc::EIO, "{what}: open: {e}"),
                Ok(fs) => {
                    let errs = walk_errors(&fs, &m);
                    assert!(!errs.is_empty(), "{what}: went unnoticed");
                    for e in &errs {
                        assert_eq!(e.errno(), libc::EIO, "{what}: {e}");
                    }
                }
            }
        }
    }
}
