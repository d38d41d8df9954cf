//! Crash consistency at every storage write. A deterministic workload (creates, inline and
//! object-backed writes, partial overwrites of existing blocks, truncates, renames incl.
//! replacing ones, unlinks, fsyncs, syncfs, close) runs on a [`MemImage`] whose stores "crash"
//! at write number N, for every N (sampled when there are many) up to the workload's total.
//! From each crash we take several crash images (none / half / all of the unflushed metadata
//! batches; none / all / alternating objects' unsynced data) and prove that each one opens,
//! that every file in it reads completely without an integrity error (blocks may be old or new,
//! never unverifiable), and that every file fsynced before the crash and not touched since reads
//! back exactly its fsynced contents.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{bytes, count_writes, crash_points, dir_of, leaf, Rng, PATHS, ROOT};
use digimedfs_core::filesystem::{AtimeMode, FileKind, Filesystem, OpenOptions, SetAttr, ROOT_INO};
use digimedfs_core::format::records::INLINE_MAX;
use digimedfs_core::meta::CrashPoint;
use digimedfs_core::objects::ObjectStore;
use digimedfs_core::testing::MemImage;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the workload did before the crash.
struct Outcome {
    /// Path → contents at its last fsync, for files not touched since.
    synced: BTreeMap<String, Vec<u8>>,
    crashed: bool,
    ops: usize,
}

/// Runs the workload until an operation fails (the crash) or it completes.
fn workload(img: &MemImage, crash: &CrashPoint, seed: u64) -> Outcome {
    let steps: StepsFn = if seed == 0 { truncate_steps } else { steps };
    let mut out = Outcome {
        synced: BTreeMap::new(),
        crashed: false,
        ops: 0,
    };
    // noatime: whether a read updates atime depends on the clock tick, and the crash points
    // count the workload's writes, which must be the same in every run.
    let opened = img.open(&OpenOptions {
        atime: AtimeMode::Never,
        ..Default::default()
    });
    let fs = match opened {
        Ok(fs) => fs,
        Err(_) => {
            out.crashed = true;
            return out;
        }
    };
    let r = steps(&fs, &mut out, seed);
    match r {
        Ok(()) => {
            if fs.close().is_err() {
                out.crashed = true;
            }
        }
        Err(_) => out.crashed = true,
    }
    assert_eq!(
        out.crashed,
        crash.crashed(),
        "an operation failed without a crash (or the reverse)"
    );
    drop(fs);
    out
}

type StepsFn = fn(&Filesystem, &mut Outcome, u64) -> digimedfs_core::Result<()>;

/// Seed 0: the minimal sequence behind the truncate bug: a synced object-backed file (just
/// over [`INLINE_MAX`], so it has a data object; blocks 0 and 1 among its blocks) is truncated
/// into block 0 (entries dropped and flushed, the object's set_len not synced), then blocks 0
/// and 1 are rewritten. After a crash, block 1's entry says "new version, or a hole", but the
/// synced object still holds block 1's stale pre-truncate ciphertext, so it reads as EIO.
fn truncate_steps(fs: &Filesystem, out: &mut Outcome, _seed: u64) -> digimedfs_core::Result<()> {
    let (a, fh) = fs.create(&ROOT, ROOT_INO, b"f", 0o644, 0, libc::O_RDWR)?;
    fs.write(a.ino, fh, 0, &vec![1u8; INLINE_MAX as usize + 8192])?;
    fs.fsync(a.ino, fh, false)?;
    out.ops = 1;
    fs.setattr(
        &ROOT,
        a.ino,
        &SetAttr {
            size: Some(100),
            ..Default::default()
        },
    )?;
    out.ops = 2;
    fs.write(a.ino, fh, 0, &[2u8; 8192])?;
    out.ops = 3;
    fs.release(a.ino, fh)?;
    Ok(())
}

fn steps(fs: &Filesystem, out: &mut Outcome, seed: u64) -> digimedfs_core::Result<()> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x1000_0000_01B3));
    // Model of the current contents of every path.
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let d = fs.mkdir(&ROOT, ROOT_INO, b"d", 0o755, 0)?.ino;
    for step in 0..STEPS {
        out.ops = step;
        let path = PATHS[rng.below(PATHS.len() as u64) as usize].to_string();
        let parent = dir_of(&path, d);
        let choice = rng.below(100);
        if !files.contains_key(&path) || choice < 15 {
            // Create (or replace via O_TRUNC) with inline or object-backed contents: small
            // inline files, inline files near INLINE_MAX (later writes and truncates move them
            // to a data object), and files over INLINE_MAX (a data object from the start).
            let len = match rng.below(6) {
                0 | 1 => rng.below(4000),
                2 => INLINE_MAX - rng.below(8000),
                _ => INLINE_MAX + 1 + rng.below(150_000),
            } as usize;
            let data = bytes(&mut rng, len);
            out.synced.remove(&path);
            let (a, fh) = fs.create(
                &ROOT,
                parent,
                leaf(&path),
                0o644,
                0,
                libc::O_RDWR | libc::O_TRUNC,
            )?;
            files.insert(path.clone(), Vec::new());
            fs.write(a.ino, fh, 0, &data)?;
            files.insert(path.clone(), data);
            fs.release(a.ino, fh)?;
            continue;
        }
        let ino = fs.lookup(&ROOT, parent, leaf(&path))?.ino;
        match choice {
            15..=49 => {
                // Overwrite a part (often across existing blocks), possibly extending.
                let cur = files.get_mut(&path).unwrap();
                let off = rng.below(cur.len() as u64 + 2000) as usize;
                let max = if rng.below(2) == 0 { 300 } else { 20_000 };
                let len = 1 + rng.below(max) as usize;
                let data = bytes(&mut rng, len);
                out.synced.remove(&path);
                let fh = fs.open_file(&ROOT, ino, libc::O_RDWR)?;
                fs.write(ino, fh, off as u64, &data)?;
                if cur.len() < off + len {
                    cur.resize(off + len, 0);
                }
                cur[off..off + len].copy_from_slice(&data);
                fs.release(ino, fh)?;
            }
            50..=69 => {
                let fh = fs.open_file(&ROOT, ino, libc::O_RDONLY)?;
                fs.fsync(ino, fh, rng.below(2) == 0)?;
                fs.release(ino, fh)?;
                out.synced.insert(path.clone(), files[&path].clone());
            }
            70..=77 => {
                let cur = files.get_mut(&path).unwrap();
                let size = rng.below(cur.len() as u64 + 10_000);
                out.synced.remove(&path);
                fs.setattr(
                    &ROOT,
                    ino,
                    &SetAttr {
                        size: Some(size),
                        ..Default::default()
                    },
                )?;
                cur.resize(size as usize, 0);
            }
            78..=89 => {
                let to = PATHS[rng.below(PATHS.len() as u64) as usize].to_string();
                out.synced.remove(&path);
                out.synced.remove(&to);
                fs.rename(&ROOT, parent, leaf(&path), dir_of(&to, d), leaf(&to), 0)?;
                if to != path {
                    let data = files.remove(&path).unwrap();
                    files.insert(to, data);
                }
            }
            90..=94 => {
                out.synced.remove(&path);
                fs.unlink(&ROOT, parent, leaf(&path))?;
                files.remove(&path);
            }
            _ => fs.sync_all()?,
        }
    }
    out.ops = STEPS;
    Ok(())
}

fn read_all(fs: &Filesystem, ino: u64, what: &str) -> Vec<u8> {
    let size = fs.getattr(ino).unwrap().size;
    let mut got = Vec::new();
    while (got.len() as u64) < size {
        let chunk = fs
            .read(ino, 0, got.len() as u64, 1 << 20)
            .unwrap_or_else(|e| panic!("{what}: read at {} fails after the crash: {e}", got.len()));
        assert!(!chunk.is_empty());
        got.extend_from_slice(&chunk);
    }
    got
}

/// Opens a crash image and checks it.
fn check_image(img: &MemImage, synced: &BTreeMap<String, Vec<u8>>, what: &str) {
    let fs = img
        .open(&OpenOptions::default())
        .unwrap_or_else(|e| panic!("{what}: crash image does not open: {e}"));
    let mut stack = vec![(ROOT_INO, String::new())];
    let mut found: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    while let Some((dir, prefix)) = stack.pop() {
        let ents = fs
            .readdir(dir, 0, 0, 10_000)
            .unwrap_or_else(|e| panic!("{what}: readdir {prefix}/: {e}"));
        for e in ents {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let path = format!("{prefix}/{}", String::from_utf8_lossy(&e.name));
            let a = fs
                .getattr(e.ino)
                .unwrap_or_else(|err| panic!("{what}: getattr {path}: {err}"));
            match a.kind {
                FileKind::Dir => stack.push((e.ino, path)),
                _ => {
                    let data = read_all(&fs, e.ino, &format!("{what}: {path}"));
                    found.insert(path, data);
                }
            }
        }
    }
    for (path, want) in synced {
        let got = found
            .get(path)
            .unwrap_or_else(|| panic!("{what}: fsynced file {path} is gone"));
        assert!(
            got == want,
            "{what}: fsynced file {path} reads back different contents (len {} vs {})",
            got.len(),
            want.len()
        );
    }
    // The recovered image keeps working: write (a new data object), sync, reopen.
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, b"after-crash", 0o644, 0, libc::O_RDWR)
        .unwrap();
    fs.write(a.ino, fh, 0, &vec![7u8; INLINE_MAX as usize + 10_000])
        .unwrap();
    fs.release(a.ino, fh).unwrap();
    fs.close()
        .unwrap_or_else(|e| panic!("{what}: close after recovery: {e}"));
}

/// Runs the workload crashing at write `n`; None if the crash hit while making the image
/// (its first write copies the fresh records into the counting store).
fn crashed_at(n: u64, seed: u64) -> Option<(MemImage, Outcome)> {
    let crash = Arc::new(CrashPoint::new(n));
    let img = MemImage::create_with(4096, Some(crash.clone())).ok()?;
    let out = workload(&img, &crash, seed);
    Some((img, out))
}

fn crashes(n: u64, seed: u64) -> bool {
    crashed_at(n, seed).is_none_or(|(_, out)| out.crashed)
}

const STEPS: usize = 100;

#[test]

fn truncate_then_rewrite() {
    crash_at_every_write(0);
}

#[test]
fn crash_at_every_write_seed_1() {
    crash_at_every_write(1);
}

#[test]

fn crash_at_every_write_seed_2() {
    crash_at_every_write(2);
}

#[test]
fn crash_at_every_write_seed_3() {
    crash_at_every_write(3);
}

#[test]
fn crash_at_every_write_seed_4() {
    crash_at_every_write(4);
}

fn crash_at_every_write(seed: u64) {
    let (full, out) = crashed_at(u64::MAX, seed).expect("image without a crash point");
    assert!(!out.crashed);
    // The workload must exercise block writeback to data objects, not only inline records.
    assert!(
        !full.objects.list().unwrap().is_empty(),
        "seed {seed}: the workload left no data object (files over INLINE_MAX)"
    );
    // Total number of writes K: crashed_at(n) crashes iff n <= K.
    let total = count_writes(|n| crashes(n, seed));
    assert!(total > 5, "workload too small: {total} writes");
    let points = crash_points(total, 120, 20, 42);
    eprintln!(
        "seed {seed}: workload: {total} writes, checking {} crash points",
        points.len()
    );
    let mut with_synced = 0;
    for n in points {
        let Some((img, out)) = crashed_at(n, seed) else {
            continue;
        };
        assert!(out.crashed, "crash point {n} did not fire");
        if !out.synced.is_empty() {
            with_synced += 1;
        }
        let pending = img.meta.pending_batches();
        for keep_meta in [0, pending / 2, pending] {
            for (mode, name) in [(0, "no"), (1, "all"), (2, "alternate")] {
                let mut flip = false;
                let mut keep = |_: &[u8; 16]| match mode {
                    0 => false,
                    1 => true,
                    _ => {
                        flip = !flip;
                        flip
                    }
                };
                let crashed = img.crash_image(keep_meta, &mut keep);
                let what = format!(
                    "seed {seed}: crash at write {n} (op {}), {keep_meta}/{pending} unflushed batches kept, {name} unsynced object data kept",
                    out.ops
                );
                check_image(&crashed, &out.synced, &what);
            }
        }
    }
    assert!(
        seed == 0 || with_synced > 0,
        "no crash point had fsynced files to check"
    );
}

/// Key slot changes (`digimedfs key add|remove|change`) interrupted at every step of their one
/// superblock rewrite, over a real backing directory: write `superblock.tmp` (partly, then
/// fully), rename it over `superblock`, write `superblock.bak.tmp` (partly), rename it over
/// `superblock.bak`. Before the primary's rename every key of the old slot set (and only those)
/// opens; from the rename on, every key of the new set and only those, though `superblock.bak`
/// still lists the old set until its rename: a key that only the stale copy lists is refused
/// as a wrong key. Every file written before reads back unchanged in every state; the change
/// itself never touches the metadata store or the objects; and the next read-write mount
/// rewrites the copy, as `fsck.digimed -p` does (after either, the sets still hold).
mod key_slot_changes {
    use super::*;
    use digimedfs_core::backing::{SUPERBLOCK, SUPERBLOCK_BAK};
    use digimedfs_core::check::{check, CheckOptions, Mode, ProblemKind};
    use digimedfs_core::filesystem::unlock_superblock;
    use digimedfs_core::keyslots::{edit, Edit};
    use digimedfs_core::mkfs::{mkfs, MkfsOptions};
    use digimedfs_core::testing::StaticKey;
    use digimedfs_core::Error;
    use digimedfs_sled::Sled;
    use std::path::Path;

    const A: StaticKey = StaticKey([0xa1; 32]);
    const B: StaticKey = StaticKey([0xb2; 32]);

    fn files() -> Vec<(&'static str, Vec<u8>)> {
        let mut rng = Rng(7);
        vec![
            ("small", bytes(&mut rng, 300)),
            ("large", bytes(&mut rng, INLINE_MAX as usize + 70_000)),
        ]
    }

    fn copy_dir(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).expect("mkdir");
        for e in std::fs::read_dir(src).expect("read_dir") {
            let e = e.expect("entry");
            let to = dst.join(e.file_name());
            if e.file_type().expect("type").is_dir() {
                copy_dir(&e.path(), &to);
            } else {
                std::fs::copy(e.path(), &to).expect("copy");
            }
        }
    }

    /// Every file under `meta/` and `objects/` with its contents.
    fn data_files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.join("meta"), dir.join("objects")];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("read_dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.insert(p.display().to_string(), std::fs::read(&p).expect("read"));
                }
            }
        }
        out
    }

    /// A filesystem unlocked by A (and B when `with_b`) holding [`files`], closed cleanly.
    fn setup(dir: &Path, with_b: bool) {
        mkfs(dir, &A, &MkfsOptions::default(), &Sled).expect("mkfs");
        let fs = Filesystem::open(dir, &A, &OpenOptions::default(), &Sled).expect("open");
        for (name, data) in files() {
            let (a, fh) = fs
                .create(&ROOT, ROOT_INO, name.as_bytes(), 0o644, 0, libc::O_RDWR)
                .expect("create");
            fs.write(a.ino, fh, 0, &data).expect("write");
            fs.release(a.ino, fh).expect("release");
        }
        fs.close().expect("close");
        drop(fs);
        if with_b {
            edit(dir, &A, Edit::Add(&B)).expect("add B");
        }
    }

    /// Whether `key` opens the filesystem read-only; if it does, every file must read back.
    fn opens(dir: &Path, key: &StaticKey, what: &str) -> bool {
        let ro = OpenOptions {
            read_only: true,
            ..Default::default()
        };
        match Filesystem::open(dir, key, &ro, &Sled) {
            Ok(fs) => {
                for (name, want) in files() {
                    let ino = fs
                        .lookup(&ROOT, ROOT_INO, name.as_bytes())
                        .unwrap_or_else(|e| panic!("{what}: lookup {name}: {e}"))
                        .ino;
                    assert!(read_all(&fs, ino, what) == want, "{what}: {name} differs");
                }
                true
            }
            Err(Error::WrongKey { what: msg }) => {
                assert!(
                    msg.contains("does not unlock the filesystem"),
                    "{what}: {msg}"
                );
                false
            }
            Err(e) => panic!("{what}: open fails other than with a wrong key: {e}"),
        }
    }

    /// A step of the rewrite: its name, the primary, the copy, leftover temporary files.
    type CrashState<'a> = (&'a str, &'a [u8], &'a [u8], Vec<(&'a str, Vec<u8>)>);

    fn interrupted(name: &str, with_b: bool, change: Edit<'_>, old: [bool; 2], new: [bool; 2]) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pristine = tmp.path().join("pristine");
        setup(&pristine, with_b);
        let old_sb = std::fs::read(pristine.join(SUPERBLOCK)).expect("old superblock");
        // The complete change, on a copy: the new superblock, and nothing else touched.
        let done = tmp.path().join("done");
        copy_dir(&pristine, &done);
        let data = data_files(&done);
        edit(&done, &A, change).expect("the change");
        assert_eq!(
            data_files(&done),
            data,
            "{name}: the change touched meta/ or objects/"
        );
        let new_sb = std::fs::read(done.join(SUPERBLOCK)).expect("new superblock");
        assert_eq!(std::fs::read(done.join(SUPERBLOCK_BAK)).unwrap(), new_sb);
        assert_ne!(old_sb, new_sb);

        let half = |b: &[u8]| b[..b.len() / 2].to_vec();
        // (step, primary, copy, leftover tmp files) after each step of the rewrite.
        let states: Vec<CrashState<'_>> = vec![
            ("nothing written", &old_sb, &old_sb, vec![]),
            (
                "primary tmp half written",
                &old_sb,
                &old_sb,
                vec![("superblock.tmp", half(&new_sb))],
            ),
            (
                "primary tmp written",
                &old_sb,
                &old_sb,
                vec![("superblock.tmp", new_sb.clone())],
            ),
            ("primary renamed", &new_sb, &old_sb, vec![]),
            (
                "copy tmp half written",
                &new_sb,
                &old_sb,
                vec![("superblock.bak.tmp", half(&new_sb))],
            ),
            (
                "copy tmp written",
                &new_sb,
                &old_sb,
                vec![("superblock.bak.tmp", new_sb.clone())],
            ),
            ("copy renamed", &new_sb, &new_sb, vec![]),
        ];
        for (step, primary, copy, leftovers) in states {
            let what = format!("{name}: crash after {step}");
            let dir = tmp.path().join("crashed");
            let _ = std::fs::remove_dir_all(&dir);
            copy_dir(&pristine, &dir);
            std::fs::write(dir.join(SUPERBLOCK), primary).unwrap();
            std::fs::write(dir.join(SUPERBLOCK_BAK), copy).unwrap();
            for (file, contents) in &leftovers {
                std::fs::write(dir.join(file), contents).unwrap();
            }
            let want = if primary == old_sb.as_slice() {
                old
            } else {
                new
            };
            let got = [opens(&dir, &A, &what), opens(&dir, &B, &what)];
            assert_eq!(got, want, "{what}: which of [A, B] open");
            // fsck -n with a key that opens names a differing copy, and the next read-write
            // mount rewrites it; the key sets stay as they were.
            let key = if got[0] { &A } else { &B };
            let report = check(
                &dir,
                key,
                &CheckOptions {
                    mode: Mode::Check,
                    threads: 1,
                },
                &mut (),
                &Sled,
            )
            .expect("fsck -n runs");
            let mismatch = report
                .problems
                .iter()
                .any(|p| p.kind == ProblemKind::SuperblockMismatch);
            assert_eq!(
                mismatch,
                primary != copy,
                "{what}: fsck -n: {:?}",
                report.problems
            );
            // Repaired by fsck -p on one copy of the state, by a read-write mount on another.
            let fscked = tmp.path().join("fscked");
            let _ = std::fs::remove_dir_all(&fscked);
            copy_dir(&dir, &fscked);
            let preen = CheckOptions {
                mode: Mode::Preen,
                threads: 1,
            };
            check(&fscked, key, &preen, &mut (), &Sled).expect("fsck -p runs");
            let fs = Filesystem::open(&dir, key, &OpenOptions::default(), &Sled)
                .unwrap_or_else(|e| panic!("{what}: read-write open: {e}"));
            fs.close().expect("close");
            drop(fs);
            for (d, by) in [(&dir, "read-write mount"), (&fscked, "fsck -p")] {
                assert_eq!(
                    std::fs::read(d.join(SUPERBLOCK)).unwrap(),
                    std::fs::read(d.join(SUPERBLOCK_BAK)).unwrap(),
                    "{what}: the {by} left the copy differing"
                );
                let after = [opens(d, &A, &what), opens(d, &B, &what)];
                assert_eq!(after, want, "{what}: after a {by}");
            }
        }
    }

    #[test]
    fn add_interrupted_at_every_step() {
        interrupted("add B", false, Edit::Add(&B), [true, false], [true, true]);
    }

    #[test]
    fn change_interrupted_at_every_step() {
        interrupted(
            "change A to B",
            false,
            Edit::Change(&B),
            [true, false],
            [false, true],
        );
    }

    #[test]
    fn remove_interrupted_at_every_step() {
        let remove = Edit::Remove {
            index: 1,
            force: false,
        };
        interrupted("remove B", true, remove, [true, true], [true, false]);
    }

    /// A key that tells the test when a mount has read the superblock and opens a slot with it.
    struct Signalling(
        StaticKey,
        std::sync::Mutex<Option<std::sync::mpsc::Sender<()>>>,
    );

    impl digimedfs_core::keysource::KeySource for Signalling {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn kind(&self) -> u8 {
            self.0.kind()
        }
        fn wrapping_key(
            &self,
            fs_uuid: &[u8; 16],
        ) -> digimedfs_core::Result<digimedfs_core::crypto::WrappingKey> {
            if let Some(tx) = self.1.lock().unwrap().take() {
                let _ = tx.send(());
            }
            self.0.wrapping_key(fs_uuid)
        }
    }

    /// A mount that read the superblock while a key change held the lock must not write the
    /// old slots back once it gets the lock: here slot 0 (key A) is removed between the
    /// mount's unlock with A and its lock, so the mount is refused as a wrong key and the
    /// removal stays.
    #[test]
    fn a_mount_waiting_for_the_lock_sees_the_key_change() {
        use digimedfs_core::backing::BackingDir;
        use digimedfs_core::keyslots::Unlocked;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("b");
        setup(&dir, true);
        let backing = BackingDir::open(&dir).expect("backing");
        let lock = backing.lock(false).expect("the key change's lock");
        let (tx, rx) = std::sync::mpsc::channel();
        let key = Signalling(StaticKey(A.0), std::sync::Mutex::new(Some(tx)));
        let mount_dir = dir.clone();
        let mount = std::thread::spawn(move || {
            Filesystem::open(&mount_dir, &key, &OpenOptions::default(), &Sled).map(|fs| {
                fs.close().expect("close");
            })
        });
        rx.recv().expect("the mount reads the superblock");
        let (sb, keys) = unlock_superblock(&backing, &B).expect("unlock with B");
        let mut u = Unlocked::new(sb, &keys, &B).expect("B opens a slot");
        u.remove(0, false).expect("remove A's slot");
        backing
            .write_superblock(&u.encode_checked(None).expect("encode"))
            .expect("write");
        drop(lock);
        match mount.join().expect("mount thread") {
            Err(Error::WrongKey { .. }) => {}
            other => panic!("the mount with the removed key: {other:?}"),
        }
        assert!(!opens(&dir, &A, "after the race"));
        assert!(opens(&dir, &B, "after the race"));
    }

    /// The real rewrite, stopped between the primary and the copy (the copy's temporary name
    /// is taken by a directory, so its write fails): the command fails, the primary is new, the
    /// copy old, and the new key set is in force.
    #[test]
    fn change_stopped_by_a_failing_copy_write() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("b");
        setup(&dir, false);
        let old_copy = std::fs::read(dir.join(SUPERBLOCK_BAK)).unwrap();
        std::fs::create_dir(dir.join("superblock.bak.tmp")).unwrap();
        let e = edit(&dir, &A, Edit::Change(&B)).expect_err("the copy's write fails");
        assert!(e.to_string().contains("superblock.bak.tmp"), "{e}");
        assert_eq!(std::fs::read(dir.join(SUPERBLOCK_BAK)).unwrap(), old_copy);
        assert_ne!(std::fs::read(dir.join(SUPERBLOCK)).unwrap(), old_copy);
        std::fs::remove_dir(dir.join("superblock.bak.tmp")).unwrap();
        assert!(!opens(&dir, &A, "stopped change, old key"));
        assert!(opens(&dir, &B, "stopped change, new key"));
    }
}
