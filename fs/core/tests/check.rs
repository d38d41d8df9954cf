//! fsck over a real backing directory: a clean filesystem is clean; each case of a corruption
//! corpus (on a fresh copy) is found as exactly its kind of problem, naming the inode or path,
//! without changing a byte in check-only mode; a repair then leaves a filesystem that checks
//! clean (or, for unrepairable damage, still reports only that damage), mounts, and reads every
//! undamaged file back identical.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{KEY, ROOT};
use digimedfs_core::backing::BackingDir;
use digimedfs_core::check::{check, check_parts, CheckOptions, Mode, ProblemKind, Report};
use digimedfs_core::filesystem::{unlock_superblock, Filesystem, OpenOptions, ROOT_INO};
use digimedfs_core::format::records::{inode_key, prefix, Dirent, Storage, INLINE_MAX};
use digimedfs_core::meta::{MetaStore, Records};
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use digimedfs_core::testing::{MemImage, StaticKey};
use digimedfs_core::Error;
use digimedfs_sled::{Sled, SledStore};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 13) as u8 ^ seed)
        .collect()
}

/// Files of the test filesystem: path, inode, contents, object (relative path).
#[derive(Clone)]
struct TestFile {
    path: String,
    ino: u64,
    data: Vec<u8>,
    object: Option<PathBuf>,
}

struct Pristine {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    files: Vec<TestFile>,
}

impl Pristine {
    fn file(&self, path: &str) -> &TestFile {
        self.files.iter().find(|f| f.path == path).unwrap()
    }
    /// A fresh copy of the backing directory.
    fn copy(&self) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dst = tmp.path().join("fs");
        copy_dir(&self.dir, &dst);
        (tmp, dst)
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

fn write_file(fs: &Filesystem, parent: u64, name: &str, data: &[u8]) -> u64 {
    let (a, fh) = fs
        .create(&ROOT, parent, name.as_bytes(), 0o644, 0, libc::O_RDWR)
        .unwrap();
    for (k, piece) in data.chunks(65536).enumerate() {
        fs.write(a.ino, fh, (k * 65536) as u64, piece).unwrap();
    }
    fs.release(a.ino, fh).unwrap();
    a.ino
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
    ]
    .into_iter()
    .enumerate()
    {
        let data = content(i as u8 + 1, len);
        let ino = write_file(&fs, ROOT_INO, name, &data);
        files.push(TestFile {
            path: format!("/{name}"),
            ino,
            data,
            object: None,
        });
    }
    let d = fs.mkdir(&ROOT, ROOT_INO, b"d", 0o755, 0).unwrap().ino;
    let e = fs.mkdir(&ROOT, d, b"e", 0o755, 0).unwrap().ino;
    let data = content(9, INLINE_MAX as usize + 4464);
    let ino = write_file(&fs, e, "f", &data);
    files.push(TestFile {
        path: "/d/e/f".into(),
        ino,
        data,
        object: None,
    });
    let big2 = files[3].ino;
    fs.link(&ROOT, big2, d, b"link").unwrap();
    fs.symlink(&ROOT, d, b"sym", b"../small").unwrap();
    fs.sync_all().unwrap();
    for f in &mut files {
        if let Storage::Object(id) = fs.records().inode(f.ino).unwrap().unwrap().storage {
            let h = hex::encode(id);
            f.object = Some(PathBuf::from("objects").join(&h[..2]).join(&h));
        }
        assert_eq!(
            f.object.is_some(),
            f.data.len() as u64 > INLINE_MAX,
            "{}: storage kind",
            f.path
        );
    }
    fs.close().unwrap();
    drop(fs);
    Pristine {
        _tmp: tmp,
        dir,
        files,
    }
}

fn run(dir: &Path, mode: Mode) -> Report {
    check(
        dir,
        &KEY,
        &CheckOptions { mode, threads: 0 },
        &mut (),
        &Sled,
    )
    .unwrap()
}

/// Every file under `dir` with its contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(p).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                out.insert(
                    e.path().strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(e.path()).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Checks with -n: must change nothing and report uncorrected problems (or none).
fn check_only(dir: &Path) -> Report {
    let before = snapshot(dir);
    let r = run(dir, Mode::Check);
    assert_eq!(
        before,
        snapshot(dir),
        "fsck -n changed the backing directory"
    );
    assert_eq!(r.fixed(), 0);
    assert!(!r.modified);
    r
}

fn kinds(r: &Report) -> Vec<ProblemKind> {
    let mut k: Vec<ProblemKind> = r.problems.iter().map(|p| p.kind).collect();
    k.sort();
    k.dedup();
    k
}

fn lookup_path(fs: &Filesystem, path: &str) -> u64 {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|s| !s.is_empty()) {
        ino = fs.lookup(&ROOT, ino, part.as_bytes()).unwrap().ino;
    }
    ino
}

fn read_all(fs: &Filesystem, ino: u64) -> digimedfs_core::Result<Vec<u8>> {
    let size = fs.getattr(ino)?.size;
    let fh = fs.open_file(&ROOT, ino, libc::O_RDONLY)?;
    let mut out = Vec::new();
    while (out.len() as u64) < size {
        let piece = fs.read(ino, fh, out.len() as u64, 1 << 20)?;
        if piece.is_empty() {
            break;
        }
        out.extend_from_slice(&piece);
    }
    fs.release(ino, fh)?;
    Ok(out)
}

/// Mounts and reads every file not in `damaged` back identical (through `renamed` paths).
fn verify_files(dir: &Path, p: &Pristine, damaged: &[&str], renamed: &[(&str, String)]) {
    let fs = Filesystem::open(dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    for f in &p.files {
        if damaged.contains(&f.path.as_str()) {
            continue;
        }
        let path = renamed
            .iter()
            .find(|(from, _)| *from == f.path)
            .map(|(_, to)| to.clone())
            .unwrap_or(f.path.clone());
        let ino = lookup_path(&fs, &path);
        assert_eq!(read_all(&fs, ino).unwrap(), f.data, "{path} differs");
    }
    fs.close().unwrap();
}

/// Repairs (-y), then a second -n must be clean except for `remaining` kinds.
fn repair_then_clean(dir: &Path, remaining: &[ProblemKind]) -> Report {
    let r = run(dir, Mode::Repair);
    let again = check_only(dir);
    assert_eq!(
        kinds(&again),
        remaining,
        "after repair: {:#?}",
        again.problems
    );
    r
}

fn keys_of(dir: &Path) -> (Records, Arc<SledStore>) {
    let (sb, keys) = unlock_superblock(&BackingDir::open(dir).unwrap(), &KEY).unwrap();
    let store = Arc::new(SledStore::open(&dir.join("meta"), 8 << 20).unwrap());
    (Records::new(store.clone(), keys, &sb.fs_uuid), store)
}

#[test]
fn clean_filesystem_is_clean() {
    let p = build();
    let (_t, dir) = p.copy();
    let r = check_only(&dir);
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(r.files, 6);
    assert_eq!(r.directories, 3);
    assert_eq!(r.symlinks, 1);
    assert!(r.blocks_verified > 0);
    let r = run(&dir, Mode::Repair);
    assert!(r.is_clean() && !r.modified);
    verify_files(&dir, &p, &[], &[]);
}

#[test]
fn wrong_key_is_refused() {
    let p = build();
    let err = check(
        &p.dir,
        &StaticKey([1; 32]),
        &CheckOptions::default(),
        &mut (),
        &Sled,
    )
    .unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
}

#[test]
fn bit_flip_in_a_block() {
    let p = build();
    let (_t, dir) = p.copy();
    let f = p.file("/big1");
    let obj = dir.join(f.object.as_ref().unwrap());
    let mut bytes = std::fs::read(&obj).unwrap();
    bytes[4096 + 17] ^= 0x01;
    std::fs::write(&obj, &bytes).unwrap();
    let r = check_only(&dir);
    assert_eq!(kinds(&r), [ProblemKind::DamagedBlock]);
    let d = &r.problems[0];
    assert_eq!(
        (d.ino, d.path.as_deref(), d.blocks.as_slice()),
        (Some(f.ino), Some("/big1"), &[1u64][..])
    );
    assert!(r.uncorrected() > 0);
    repair_then_clean(&dir, &[ProblemKind::DamagedBlock]);
    verify_files(&dir, &p, &["/big1"], &[]);
    // The rest of the damaged file stays readable; exactly the damaged block fails.
    let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    let fh = fs.open_file(&ROOT, f.ino, libc::O_RDONLY).unwrap();
    assert_eq!(fs.read(f.ino, fh, 0, 4096).unwrap(), f.data[..4096]);
    assert_eq!(fs.read(f.ino, fh, 4096, 10).unwrap_err().errno(), libc::EIO);
    assert_eq!(fs.read(f.ino, fh, 8192, 4096).unwrap(), f.data[8192..12288]);
    fs.release(f.ino, fh).unwrap();
    fs.close().unwrap();
}

#[test]
fn truncated_object() {
    let p = build();
    let (_t, dir) = p.copy();
    let f = p.file("/big3");
    let obj = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(f.object.as_ref().unwrap()))
        .unwrap();
    obj.set_len(100_000).unwrap();
    let r = check_only(&dir);
    assert_eq!(kinds(&r), [ProblemKind::DamagedBlock]);
    assert_eq!(r.problems[0].ino, Some(f.ino));
    assert_eq!(r.problems[0].path.as_deref(), Some("/big3"));
    assert!(
        r.problems[0].detail.contains("truncated"),
        "{}",
        r.problems[0].detail
    );
    repair_then_clean(&dir, &[ProblemKind::DamagedBlock]);
    verify_files(&dir, &p, &["/big3"], &[]);
}

#[test]
fn deleted_object() {
    let p = build();
    let (_t, dir) = p.copy();
    let f = p.file("/big2");
    std::fs::remove_file(dir.join(f.object.as_ref().unwrap())).unwrap();
    let r = check_only(&dir);
    assert_eq!(kinds(&r), [ProblemKind::MissingObject]);
    assert_eq!(r.problems[0].ino, Some(f.ino));
    assert!(
        r.problems[0].path.as_deref() == Some("/big2")
            || r.problems[0].path.as_deref() == Some("/d/link")
    );
    repair_then_clean(&dir, &[ProblemKind::MissingObject]);
    verify_files(&dir, &p, &["/big2"], &[]);
}

#[test]
fn extra_unknown_object() {
    let p = build();
    let (_t, dir) = p.copy();
    std::fs::create_dir_all(dir.join("objects/ab")).unwrap();
    std::fs::write(
        dir.join("objects/ab/ab00000000000000000000000000cafe"),
        vec![7u8; 8192],
    )
    .unwrap();
    let r = check_only(&dir);
    assert_eq!(kinds(&r), [ProblemKind::UnreferencedObject]);
    // Preen does not delete data.
    let r = run(&dir, Mode::Preen);
    assert_eq!(r.fixed(), 0);
    let r = repair_then_clean(&dir, &[]);
    assert_eq!(r.fixed(), 1);
    assert!(!dir
        .join("objects/ab/ab00000000000000000000000000cafe")
        .exists());
    verify_files(&dir, &p, &[], &[]);
}

#[test]
fn two_objects_swapped() {
    let p = build();
    let (_t, dir) = p.copy();
    let a = dir.join(p.file("/big1").object.as_ref().unwrap());
    let b = dir.join(p.file("/big3").object.as_ref().unwrap());
    let tmp = dir.join("swap");
    std::fs::rename(&a, &tmp).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(&tmp, &b).unwrap();
    let r = check_only(&dir);
    // big3's object (longer) now under big1: also longer than big1 needs.
    let damaged: Vec<Option<u64>> = r
        .of_kind(ProblemKind::DamagedBlock)
        .iter()
        .map(|p| p.ino)
        .collect();
    assert!(
        damaged.contains(&Some(p.file("/big1").ino))
            && damaged.contains(&Some(p.file("/big3").ino))
    );
    for k in kinds(&r) {
        assert!(
            matches!(k, ProblemKind::DamagedBlock | ProblemKind::ObjectTooLong),
            "{k}"
        );
    }
    assert!(r
        .of_kind(ProblemKind::DamagedBlock)
        .iter()
        .any(|p| p.detail.contains("swapped")));
    run(&dir, Mode::Repair);
    let again = check_only(&dir);
    assert_eq!(kinds(&again), [ProblemKind::DamagedBlock]);
    verify_files(&dir, &p, &["/big1", "/big3"], &[]);
}

#[test]
fn object_replaced_by_older_copy() {
    let p = build();
    let (_t, dir) = p.copy();
    let f = p.file("/big1");
    let obj = dir.join(f.object.as_ref().unwrap());
    let old = std::fs::read(&obj).unwrap();
    {
        let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
        let fh = fs.open_file(&ROOT, f.ino, libc::O_RDWR).unwrap();
        fs.write(f.ino, fh, 10, b"new bytes").unwrap();
        fs.fsync(f.ino, fh, false).unwrap();
        fs.release(f.ino, fh).unwrap();
        fs.close().unwrap();
    }
    std::fs::write(&obj, &old).unwrap();
    let r = check_only(&dir);
    assert_eq!(kinds(&r), [ProblemKind::DamagedBlock]);
    assert_eq!(r.problems[0].blocks, [0]);
    assert_eq!(r.problems[0].path.as_deref(), Some("/big1"));
    repair_then_clean(&dir, &[ProblemKind::DamagedBlock]);
    verify_files(&dir, &p, &["/big1"], &[]);
}

/// Deletes the directory entry named `name` (found by opening every D record).
fn delete_dirent(dir: &Path, name: &[u8]) -> Dirent {
    let (records, store) = keys_of(dir);
    let mut found = None;
    store
        .scan(&[prefix::DIRENT], None, &mut |k, v| {
            let d = digimedfs_core::format::records::Dirent::decode(&records.open(k, v)?)?;
            if d.name == name {
                found = Some((k.to_vec(), d));
            }
            Ok(true)
        })
        .unwrap();
    let (key, d) = found.unwrap();
    let mut b = records.batch();
    b.delete_key(&key);
    b.commit().unwrap();
    records.flush().unwrap();
    d
}

#[test]
fn deleted_directory_entry() {
    let p = build();
    let (_t, dir) = p.copy();
    delete_dirent(&dir, b"big1");
    let f = p.file("/big1");
    let r = check_only(&dir);
    // The store changed outside a mount, so the clean superblock's digest no longer matches.
    assert_eq!(
        kinds(&r),
        [ProblemKind::DisconnectedInode, ProblemKind::DigestMismatch]
    );
    assert_eq!(
        r.of_kind(ProblemKind::DisconnectedInode)[0].ino,
        Some(f.ino)
    );
    repair_then_clean(&dir, &[]);
    verify_files(
        &dir,
        &p,
        &[],
        &[("/big1", format!("/lost+found/#{}", f.ino))],
    );
}

#[test]
fn deleted_directory_entry_of_a_directory() {
    let p = build();
    let (_t, dir) = p.copy();
    delete_dirent(&dir, b"e");
    let r = check_only(&dir);
    let disc = r.of_kind(ProblemKind::DisconnectedInode);
    assert_eq!(
        disc.len(),
        1,
        "only the top of the lost subtree: {:#?}",
        r.problems
    );
    // /d lost a subdirectory: its link count is one too high.
    assert!(
        kinds(&r).contains(&ProblemKind::WrongNlink)
            || kinds(&r).contains(&ProblemKind::DisconnectedInode)
    );
    let e_ino = disc[0].ino.unwrap();
    repair_then_clean(&dir, &[]);
    verify_files(
        &dir,
        &p,
        &[],
        &[("/d/e/f", format!("/lost+found/#{e_ino}/f"))],
    );
}

#[test]
fn deleted_inode_record() {
    let p = build();
    let (_t, dir) = p.copy();
    let f = p.file("/big3");
    {
        let (records, _store) = keys_of(&dir);
        let mut b = records.batch();
        b.delete_key(&inode_key(f.ino));
        b.commit().unwrap();
        records.flush().unwrap();
    }
    let r = check_only(&dir);
    assert_eq!(
        kinds(&r),
        [
            ProblemKind::DanglingEntry,
            ProblemKind::StrayRecord,
            ProblemKind::UnreferencedObject,
            ProblemKind::DigestMismatch
        ]
    );
    assert!(r.of_kind(ProblemKind::DanglingEntry)[0]
        .detail
        .contains("big3"));
    assert_eq!(r.of_kind(ProblemKind::StrayRecord)[0].ino, Some(f.ino));
    repair_then_clean(&dir, &[]);
    assert!(!dir.join(f.object.as_ref().unwrap()).exists());
    verify_files(&dir, &p, &["/big3"], &[]);
}

#[test]
fn wrong_nlink() {
    let p = build();
    let (_t, dir) = p.copy();
    let f = p.file("/big1");
    {
        let (records, _store) = keys_of(&dir);
        let mut inode = records.inode(f.ino).unwrap().unwrap();
        inode.nlink = 5;
        let mut b = records.batch();
        b.put_inode(&inode).unwrap();
        b.commit().unwrap();
        records.flush().unwrap();
    }
    let r = check_only(&dir);
    assert_eq!(
        kinds(&r),
        [ProblemKind::WrongNlink, ProblemKind::DigestMismatch]
    );
    let w = r.of_kind(ProblemKind::WrongNlink)[0];
    assert_eq!((w.ino, w.path.as_deref()), (Some(f.ino), Some("/big1")));
    // Preen fixes the link count but does not accept the changed digest.
    let r = run(&dir, Mode::Preen);
    assert_eq!(r.fixed(), 1);
    let again = check_only(&dir);
    assert!(
        again.is_clean(),
        "preen wrote a fresh digest after repairing: {:#?}",
        again.problems
    );
    let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    assert_eq!(fs.getattr(f.ino).unwrap().nlink, 1);
    fs.close().unwrap();
    drop(fs);
    verify_files(&dir, &p, &[], &[]);
}

#[test]
fn damaged_primary_superblock() {
    let p = build();
    let (_t, dir) = p.copy();
    let sb = dir.join("superblock");
    let mut bytes = std::fs::read(&sb).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x40;
    std::fs::write(&sb, &bytes).unwrap();
    let r = check_only(&dir);
    assert_eq!(kinds(&r), [ProblemKind::SuperblockDamaged]);
    assert!(
        r.problems[0].detail.starts_with("superblock:"),
        "{}",
        r.problems[0].detail
    );
    let r = repair_then_clean(&dir, &[]);
    assert_eq!(r.fixed(), 1);
    assert_eq!(
        std::fs::read(&sb).unwrap(),
        std::fs::read(dir.join("superblock.bak")).unwrap()
    );
    verify_files(&dir, &p, &[], &[]);
}

#[test]
fn missing_meta_directory() {
    let p = build();
    let (_t, dir) = p.copy();
    std::fs::remove_dir_all(dir.join("meta")).unwrap();
    let r = check_only(&dir);
    assert_eq!(kinds(&r), [ProblemKind::MetaMissing]);
    let r = run(&dir, Mode::Repair);
    assert_eq!(r.uncorrected(), 1);
    assert!(
        !dir.join("meta").exists(),
        "repair must not create an empty store"
    );
}

#[test]
fn stale_tmp_file_and_unknown_file() {
    let p = build();
    let (_t, dir) = p.copy();
    std::fs::write(dir.join("superblock.tmp"), b"half").unwrap();
    std::fs::write(dir.join("notes.txt"), b"hello").unwrap();
    let r = check_only(&dir);
    assert_eq!(
        kinds(&r),
        [ProblemKind::StaleTemp, ProblemKind::UnknownFile]
    );
    let r = run(&dir, Mode::Preen);
    assert_eq!(r.fixed(), 1);
    assert!(!dir.join("superblock.tmp").exists() && dir.join("notes.txt").exists());
    let again = check_only(&dir);
    assert_eq!(kinds(&again), [ProblemKind::UnknownFile]);
}

#[test]
fn mounted_filesystem() {
    let p = build();
    let (_t, dir) = p.copy();
    let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    let err = check(
        &dir,
        &KEY,
        &CheckOptions {
            mode: Mode::Repair,
            threads: 0,
        },
        &mut (),
        &Sled,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    // -n works on the live mount, from a snapshot.
    let r = check(&dir, &KEY, &CheckOptions::default(), &mut (), &Sled).unwrap();
    assert!(r.mounted);
    assert!(r.of_kind(ProblemKind::DamagedBlock).is_empty());
    fs.close().unwrap();
}

#[test]
fn orphans_in_memory_image() {
    let img = MemImage::create(4096).unwrap();
    let fs = img.open(&OpenOptions::default()).unwrap();
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, b"gone", 0o644, 0, libc::O_RDWR)
        .unwrap();
    // Over INLINE_MAX: the orphan has a data object, which the repair must remove too.
    fs.write(a.ino, fh, 0, &content(3, INLINE_MAX as usize + 50_000))
        .unwrap();
    fs.fsync(a.ino, fh, false).unwrap();
    fs.unlink(&ROOT, ROOT_INO, b"gone").unwrap();
    fs.sync_all().unwrap();
    // "Crash" with the file still open: the orphan stays behind.
    let crashed = img.crash_image(usize::MAX, &mut |_| true);
    drop(fs);
    assert_eq!(
        digimedfs_core::objects::ObjectStore::list(&*crashed.objects)
            .unwrap()
            .len(),
        1,
        "the orphan's data object"
    );
    let r = check_parts(&crashed.parts_to_check(), &CheckOptions::default(), &mut ()).unwrap();
    assert_eq!(kinds(&r), [ProblemKind::OrphanInode]);
    assert_eq!(r.problems[0].ino, Some(a.ino));
    let r = check_parts(
        &crashed.parts_to_check(),
        &CheckOptions {
            mode: Mode::Preen,
            threads: 2,
        },
        &mut (),
    )
    .unwrap();
    assert_eq!(r.fixed(), 1);
    let r = check_parts(&crashed.parts_to_check(), &CheckOptions::default(), &mut ()).unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert!(
        digimedfs_core::objects::ObjectStore::list(&*crashed.objects)
            .unwrap()
            .is_empty()
    );
}

/// Xattr records are found by inode: those of an inode whose record is gone are stray (and
/// deleted by a repair), those of an orphan go with it; nothing else of either is left.
#[test]
fn xattrs_of_missing_and_orphan_inodes() {
    let img = MemImage::create(4096).unwrap();
    let fs = img.open(&OpenOptions::default()).unwrap();
    let (x, fh) = fs
        .create(&ROOT, ROOT_INO, b"x", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.release(x.ino, fh).unwrap();
    fs.setxattr(&ROOT, x.ino, b"user.a", b"1", 0).unwrap();
    fs.setxattr(&ROOT, x.ino, b"user.b", b"2", 0).unwrap();
    let (kept, fh) = fs
        .create(&ROOT, ROOT_INO, b"kept", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.release(kept.ino, fh).unwrap();
    fs.setxattr(&ROOT, kept.ino, b"user.c", b"3", 0).unwrap();
    let (o, _fh) = fs
        .create(&ROOT, ROOT_INO, b"open", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.setxattr(&ROOT, o.ino, b"user.d", b"4", 0).unwrap();
    fs.unlink(&ROOT, ROOT_INO, b"open").unwrap();
    fs.sync_all().unwrap();
    // "Crash" with `open` still open: it stays behind as an orphan.
    let img = img.crash_image(usize::MAX, &mut |_| true);
    drop(fs);
    let records = Records::new(img.meta.clone(), img.keys.clone(), &img.superblock.fs_uuid);
    let mut b = records.batch();
    b.delete_key(&inode_key(x.ino));
    b.commit().unwrap();
    let xattr_records = |ino: u64| {
        let mut n = 0;
        let pfx = digimedfs_core::format::records::ino_prefix(prefix::XATTR, ino);
        img.meta
            .scan(&pfx, None, &mut |_, _| {
                n += 1;
                Ok(true)
            })
            .unwrap();
        n
    };
    assert_eq!(
        (
            xattr_records(x.ino),
            xattr_records(kept.ino),
            xattr_records(o.ino)
        ),
        (2, 1, 1)
    );
    let r = check_parts(&img.parts_to_check(), &CheckOptions::default(), &mut ()).unwrap();
    let stray = r.of_kind(ProblemKind::StrayRecord);
    assert_eq!(stray.len(), 1, "{:#?}", r.problems);
    assert_eq!(stray[0].ino, Some(x.ino));
    assert_eq!(
        stray[0].detail,
        format!("xattrs of inode {}, which does not exist", x.ino)
    );
    assert_eq!(r.of_kind(ProblemKind::OrphanInode)[0].ino, Some(o.ino));
    let repair = CheckOptions {
        mode: Mode::Repair,
        threads: 1,
    };
    check_parts(&img.parts_to_check(), &repair, &mut ()).unwrap();
    let r = check_parts(&img.parts_to_check(), &CheckOptions::default(), &mut ()).unwrap();
    assert!(r.is_clean(), "{:#?}", r.problems);
    assert_eq!(
        (
            xattr_records(x.ino),
            xattr_records(kept.ino),
            xattr_records(o.ino)
        ),
        (0, 1, 0)
    );
}

/// Two inodes naming the same object: the one with the higher number is reported as sharing
/// it with the lower, once; the object the second one lost belongs to no inode.
#[test]
fn two_inodes_sharing_an_object() {
    let img = MemImage::create(4096).unwrap();
    let fs = img.open(&OpenOptions::default()).unwrap();
    let mut inos = Vec::new();
    for (i, name) in [b"a", b"b"].into_iter().enumerate() {
        let (f, fh) = fs
            .create(&ROOT, ROOT_INO, name, 0o644, 0, libc::O_RDWR)
            .unwrap();
        fs.write(f.ino, fh, 0, &content(i as u8, INLINE_MAX as usize + 8192))
            .unwrap();
        fs.release(f.ino, fh).unwrap();
        inos.push(f.ino);
    }
    fs.close().unwrap();
    let records = Records::new(img.meta.clone(), img.keys.clone(), &img.superblock.fs_uuid);
    let a = records.inode(inos[0]).unwrap().unwrap();
    let mut b = records.inode(inos[1]).unwrap().unwrap();
    let (Storage::Object(id_a), Storage::Object(id_b)) = (a.storage, b.storage) else {
        panic!("both files should be stored in objects");
    };
    b.storage = Storage::Object(id_a);
    let mut batch = records.batch();
    batch.put_inode(&b).unwrap();
    batch.commit().unwrap();
    let r = check_parts(&img.parts_to_check(), &CheckOptions::default(), &mut ()).unwrap();
    let shared = r.of_kind(ProblemKind::SharedObject);
    assert_eq!(shared.len(), 1, "{:#?}", r.problems);
    assert_eq!(shared[0].ino, Some(inos[1]));
    assert!(
        shared[0].detail.starts_with(&format!(
            "inodes {} and {} both refer to object {}",
            inos[0],
            inos[1],
            hex::encode(id_a)
        )),
        "{}",
        shared[0].detail
    );
    let unreferenced = r.of_kind(ProblemKind::UnreferencedObject);
    assert_eq!(unreferenced.len(), 1, "{:#?}", r.problems);
    assert!(unreferenced[0].detail.contains(&hex::encode(id_b)));
}
