//! Segmented metadata dumps of backup points (issue 24), over a real backing directory.
//!
//! Proves that: a point after changing one small file (or adding and removing one) writes only
//! the few metadata segments around the changed records and hard-links every other segment
//! from the previous point, also when that point was ended in between (checked by inode
//! numbers, not by what the point reports); a
//! segmented point restores to a filesystem that checks clean and holds the same files; a
//! point in the layout of earlier builds (one `meta.dump`) still verifies and restores; and a
//! truncated or altered segment is reported by verify and refused by restore, also when the
//! manifest was rewritten to match (the segment index and the segments' own checks catch it),
//! and a file in `meta/` that the manifest does not list is reported. A point reports each
//! dump segment as it is finished (what a waiting `digimedfs backup begin` shows). Verify
//! and restore report their progress in counts that never go down and end at the files and
//! bytes the manifest lists (what `digimedfs backup verify` and `restore` show).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{KEY, ROOT};
use digimedfs_core::backing::{unlock_superblock, BackingDir};
use digimedfs_core::backup::{
    self, read_segmented, CopyProgress, DumpWriter, Manifest, ManifestEntry, Stage, DUMP,
    SEGMENT_DIR,
};
use digimedfs_core::check::{check, CheckOptions, Mode};
use digimedfs_core::confined::Confined;
use digimedfs_core::filesystem::{Filesystem, OpenOptions, ROOT_INO};
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use digimedfs_sled::Sled;
use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Small files: enough metadata for dozens of segments.
const FILES: usize = 20_000;
const SMALL: usize = 1200;

fn content(seed: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 13) as u8 ^ (seed as u8))
        .collect()
}

fn name(i: usize) -> String {
    format!("f{i:05}")
}

fn write_file(fs: &Filesystem, name: &str, data: &[u8]) -> u64 {
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, name.as_bytes(), 0o644, 0, libc::O_RDWR)
        .expect("create");
    fs.write(a.ino, fh, 0, data).expect("write");
    fs.release(a.ino, fh).expect("release");
    a.ino
}

fn open(dir: &Path) -> Filesystem {
    Filesystem::open(dir, &KEY, &OpenOptions::default(), &Sled).expect("open")
}

fn fsck_clean(dir: &Path) {
    let r = check(
        dir,
        &KEY,
        &CheckOptions {
            mode: Mode::Check,
            threads: 1,
        },
        &mut (),
        &Sled,
    )
    .expect("fsck -n runs");
    assert!(
        r.problems.is_empty(),
        "fsck -n of {dir:?}: {:?}",
        r.problems
    );
}

/// Every file of the root directory of `dir` has the contents `want` gives.
fn same_files(dir: &Path, want: &BTreeMap<String, Vec<u8>>) {
    let fs = open(dir);
    for (n, data) in want {
        let a = fs
            .lookup(&ROOT, ROOT_INO, n.as_bytes())
            .unwrap_or_else(|e| panic!("{n} missing from {dir:?}: {e}"));
        let got = fs.read(a.ino, 0, 0, 1 << 20).expect("read");
        assert!(got == *data, "{n} differs in {dir:?}");
    }
    fs.close().expect("close");
}

fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read_dir") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

/// The segment files of a point: name → (inode, length).
fn segments(point: &Path) -> BTreeMap<String, (u64, u64)> {
    std::fs::read_dir(point.join(SEGMENT_DIR))
        .expect("meta dir")
        .map(|e| e.expect("entry"))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| {
            let m = e.metadata().expect("stat");
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.ino(), m.len()),
            )
        })
        .collect()
}

/// Segments of `now` that are the very files (inodes) of `before`, and the bytes of the others.
fn reused_and_written(
    before: &BTreeMap<String, (u64, u64)>,
    now: &BTreeMap<String, (u64, u64)>,
) -> (usize, usize, u64) {
    let old: HashSet<u64> = before.values().map(|(ino, _)| *ino).collect();
    let reused = now.values().filter(|(ino, _)| old.contains(ino)).count();
    let written: Vec<u64> = now
        .values()
        .filter(|(ino, _)| !old.contains(ino))
        .map(|(_, len)| *len)
        .collect();
    (reused, written.len(), written.iter().sum())
}

/// A populated filesystem with one point taken; returns the temp dir, backing dir and the
/// expected files.
fn populated() -> (tempfile::TempDir, PathBuf, BTreeMap<String, Vec<u8>>) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fs");
    mkfs(&dir, &KEY, &MkfsOptions::default(), &Sled).expect("mkfs");
    let fs = open(&dir);
    let mut want = BTreeMap::new();
    for i in 0..FILES {
        let data = content(i, SMALL);
        write_file(&fs, &name(i), &data);
        want.insert(name(i), data);
    }
    // One file with a data object, so the point has objects too.
    let big = content(7, 300_000);
    write_file(&fs, "big", &big);
    want.insert("big".into(), big);
    fs.close().expect("close");
    (tmp, dir, want)
}

/// Taking a point reports the dump's segments as they are finished: 1, 2, 3, ... up to the
/// point's segments (the last is finished with the dump, after the records).
#[test]
fn a_point_reports_its_segments_as_the_dump_finishes_them() {
    let (_tmp, dir, _want) = populated();
    let fs = open(&dir);
    let seen = std::cell::RefCell::new(Vec::new());
    let info = fs
        .backup_begin_progress(&|n| seen.borrow_mut().push(n))
        .expect("point");
    fs.close().expect("close");
    let seen = seen.into_inner();
    assert!(info.meta_segments > 2, "{info}");
    let last = *seen.last().expect("some progress");
    assert_eq!(seen, (1..=last).collect::<Vec<_>>());
    assert!(
        last + 1 >= info.meta_segments && last <= info.meta_segments,
        "{last} of {}",
        info.meta_segments
    );
}

/// Files and bytes of a copied point as the file tree holds them (the manifest aside).
fn tree_totals(dir: &Path) -> (u64, u64) {
    let mut t = (0, 0);
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        let m = e.metadata().expect("stat");
        if m.is_dir() {
            let (f, b) = tree_totals(&e.path());
            t = (t.0 + f, t.1 + b);
        } else if e.file_name() != backup::MANIFEST {
            t = (t.0 + 1, t.1 + m.len());
        }
    }
    t
}

/// Checks the reports of one stage: the same totals throughout, counts that start at 0,
/// never go down and end at `totals`.
fn check_stage(seen: &[CopyProgress], stage: Stage, totals: (u64, u64)) {
    let of: Vec<&CopyProgress> = seen.iter().filter(|p| p.stage == stage).collect();
    let (first, last) = (of.first().expect("reports"), of.last().expect("reports"));
    assert_eq!((first.files, first.bytes), (0, 0), "{stage:?} starts at 0");
    assert!(
        of.iter().all(|p| (p.total_files, p.total_bytes) == totals),
        "{stage:?}: totals other than the manifest's {totals:?}: {of:?}"
    );
    assert!(
        of.windows(2)
            .all(|w| w[0].files <= w[1].files && w[0].bytes <= w[1].bytes),
        "{stage:?}: counts went down: {of:?}"
    );
    assert_eq!(
        (last.files, last.bytes),
        totals,
        "{stage:?} does not end at the manifest's totals"
    );
}

/// Verify and restore of a copied point report progress: per stage (verify, then for restore
/// the verification and the copy, in that order) counts from 0 that never go down and end at
/// the files and bytes the manifest lists, which are those of the copy on disk.
#[test]
fn verify_and_restore_report_progress_up_to_the_manifest_totals() {
    let (tmp, dir, _want) = populated();
    let fs = open(&dir);
    fs.backup_begin().expect("point");
    let copy = tmp.path().join("copy");
    copy_tree(&point_of(&dir), &copy);
    fs.backup_end().expect("end");
    fs.close().expect("close");
    drop(fs);
    let text = std::fs::read_to_string(copy.join(backup::MANIFEST)).expect("manifest");
    let (m, _) = Manifest::parse(&text).expect("parse manifest");
    let totals = (
        m.entries.len() as u64,
        m.entries.iter().map(|e| e.len).sum::<u64>(),
    );
    assert_eq!(totals, tree_totals(&copy), "the manifest lists the copy");
    assert!(totals.1 > 1 << 20, "a point of some size: {totals:?}");

    let mut seen = Vec::new();
    let report = backup::verify_with(&copy, Some(&KEY), &mut |p| seen.push(p)).expect("verify");
    assert_eq!(report.problem_count, 0, "{report}");
    assert!(seen.iter().all(|p| p.stage == Stage::Verify), "{seen:?}");
    check_stage(&seen, Stage::Verify, totals);

    let mut seen = Vec::new();
    let restored = tmp.path().join("restored");
    backup::restore_with(&copy, &restored, Some(&KEY), &Sled, &mut |p| seen.push(p))
        .expect("restore");
    let first_restore = seen
        .iter()
        .position(|p| p.stage == Stage::Restore)
        .expect("restore reports");
    assert!(
        seen[..first_restore]
            .iter()
            .all(|p| p.stage == Stage::Verify)
            && seen[first_restore..]
                .iter()
                .all(|p| p.stage == Stage::Restore),
        "stages out of order"
    );
    check_stage(&seen, Stage::Verify, totals);
    check_stage(&seen, Stage::Restore, totals);
    eprintln!(
        "{totals:?}: restore reported {} times ({} while copying)",
        seen.len(),
        seen.len() - first_restore
    );
}

fn point_of(dir: &Path) -> PathBuf {
    dir.join(backup::BACKUP_DIR).join(backup::POINT_DIR)
}

/// Two points in a row with one small file changed in place between them: the second writes
/// only the segments holding the changed records (the file's contents and inode, the store
/// state) and links all the others. The point is ended (its segments are kept), one file
/// added and one removed: the next point again writes only a few segments, linked from the
/// kept ones, because boundaries follow the keys (cuts by position would shift every segment
/// after the insertion). The segmented point restores and checks clean with the same files.
#[test]
fn unchanged_segments_are_linked_and_the_point_restores() {
    let (tmp, dir, mut want) = populated();
    let fs = open(&dir);
    let p1 = fs.backup_begin().expect("first point");
    let s1 = segments(&point_of(&dir));
    let total: u64 = s1.values().map(|(_, l)| l).sum();
    assert!(s1.len() >= 20, "only {} segments", s1.len());
    assert_eq!(p1.meta_segments, s1.len());
    assert_eq!(
        p1.meta_segments_reused, 0,
        "nothing to reuse at the first point"
    );

    // Change one small file in place (same length).
    let victim = name(FILES / 2);
    let a = fs
        .lookup(&ROOT, ROOT_INO, victim.as_bytes())
        .expect("lookup");
    let fh = fs.open_file(&ROOT, a.ino, libc::O_RDWR).expect("open");
    fs.write(a.ino, fh, 100, b"changed between the points")
        .expect("write");
    fs.release(a.ino, fh).expect("release");
    want.get_mut(&victim).expect("victim")[100..126].copy_from_slice(b"changed between the points");

    let p2 = fs.backup_begin().expect("second point");
    let s2 = segments(&point_of(&dir));
    let (reused, written, bytes) = reused_and_written(&s1, &s2);
    eprintln!(
        "point 2: {} segments, {reused} linked, {written} written ({bytes} of {total} bytes)",
        s2.len()
    );
    assert_eq!(reused + written, s2.len());
    assert!(
        (1..=4).contains(&written),
        "{written} segments written for one changed file"
    );
    assert!(bytes * 10 < total, "{bytes} of {total} bytes written");
    assert_eq!(
        p2.meta_segments_reused, reused,
        "the report disagrees with the links"
    );

    // The job ends the point; its segments are kept for the next one (no objects).
    fs.backup_end().expect("end");
    let kept = dir.join(backup::BACKUP_DIR).join(backup::KEPT_DIR);
    assert!(!point_of(&dir).exists(), "the point outlived its end");
    assert_eq!(
        segments(&kept),
        s2,
        "the ended point's segments were not kept"
    );

    // One file added, one removed.
    write_file(&fs, "added", &content(99, SMALL));
    want.insert("added".into(), content(99, SMALL));
    fs.unlink(&ROOT, ROOT_INO, name(10).as_bytes())
        .expect("unlink");
    want.remove(&name(10));
    fs.backup_begin().expect("third point");
    let s3 = segments(&point_of(&dir));
    let (reused, written, bytes) = reused_and_written(&s2, &s3);
    eprintln!(
        "point 3: {} segments, {reused} linked, {written} written ({bytes} bytes)",
        s3.len()
    );
    assert!(
        (1..=10).contains(&written),
        "{written} segments written for one added and one removed file"
    );
    assert!(bytes * 5 < total, "{bytes} of {total} bytes written");
    assert!(!kept.exists(), "the kept segments outlived the next point");

    // The point as a backup job copies it, restored.
    let copy = tmp.path().join("copy");
    copy_tree(&point_of(&dir), &copy);
    fs.backup_end().expect("end");
    fs.close().expect("close");
    drop(fs);
    let report = backup::verify(&copy, Some(&KEY)).expect("verify");
    assert_eq!(report.problem_count, 0, "{report}");
    let restored = tmp.path().join("restored");
    let r = backup::restore(&copy, &restored, Some(&KEY), &Sled).expect("restore");
    assert!(r.objects >= 1);
    fsck_clean(&restored);
    same_files(&restored, &want);
}

/// A point in the layout of earlier builds (`meta.dump` instead of `meta/`, made here from a
/// segmented point with the single-file writer and a manifest with its MAC) still verifies,
/// restores and checks clean.
#[test]
fn old_single_file_point_still_restores() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fs");
    mkfs(&dir, &KEY, &MkfsOptions::default(), &Sled).expect("mkfs");
    let fs = open(&dir);
    let mut want = BTreeMap::new();
    for i in 0..50 {
        write_file(&fs, &name(i), &content(i, SMALL));
        want.insert(name(i), content(i, SMALL));
    }
    write_file(&fs, "big", &content(3, 200_000));
    want.insert("big".into(), content(3, 200_000));
    fs.backup_begin().expect("point");
    let copy = tmp.path().join("copy");
    copy_tree(&point_of(&dir), &copy);
    fs.backup_end().expect("end");
    fs.close().expect("close");
    drop(fs);

    let c = Confined::open(&copy).expect("copy");
    let text = std::fs::read_to_string(copy.join(backup::MANIFEST)).expect("manifest");
    let (mut m, _) = Manifest::parse(&text).expect("parse");
    let mut w = DumpWriter::create(&c, DUMP, &m.fs_uuid).expect("dump");
    read_segmented(&c, &mut |k, v| w.record(&k, &v)).expect("read segments");
    w.finish().expect("finish");
    std::fs::remove_dir_all(copy.join(SEGMENT_DIR)).expect("rm meta");
    let (hash, len) = backup::hash_file(&c, DUMP).expect("hash");
    m.entries.retain(|e| !e.path.starts_with("meta/"));
    m.entries.insert(
        1,
        ManifestEntry {
            path: DUMP.into(),
            len,
            hash,
            stamp: None,
        },
    );
    let (_, keys) = unlock_superblock(&BackingDir::open(&copy).expect("dir"), &KEY).expect("keys");
    std::fs::write(copy.join(backup::MANIFEST), m.encode(&keys.superblock)).expect("manifest");

    let report = backup::verify(&copy, Some(&KEY)).expect("verify");
    assert_eq!(report.problem_count, 0, "{report}");
    let restored = tmp.path().join("restored");
    backup::restore(&copy, &restored, Some(&KEY), &Sled).expect("restore old layout");
    fsck_clean(&restored);
    same_files(&restored, &want);
}

/// A truncated or altered segment is named by verify and refused by restore; a segment
/// altered together with its manifest line (what a keyless restore cannot tell from the
/// manifest) is still refused, by the segment index.
#[test]
fn damaged_segments_are_detected() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("fs");
    mkfs(&dir, &KEY, &MkfsOptions::default(), &Sled).expect("mkfs");
    let fs = open(&dir);
    for i in 0..200 {
        write_file(&fs, &name(i), &content(i, SMALL));
    }
    fs.backup_begin().expect("point");
    let good = tmp.path().join("good");
    copy_tree(&point_of(&dir), &good);
    fs.backup_end().expect("end");
    fs.close().expect("close");
    drop(fs);
    let seg = segments(&good)
        .into_iter()
        .max_by_key(|(_, (_, len))| *len)
        .map(|(n, _)| format!("{SEGMENT_DIR}/{n}"))
        .expect("a segment");
    let bytes = std::fs::read(good.join(&seg)).expect("read");

    let damaged = |label: &str, data: &[u8], fix_manifest: bool| {
        let c = tmp.path().join(label);
        copy_tree(&good, &c);
        std::fs::write(c.join(&seg), data).expect("damage");
        if fix_manifest {
            let cc = Confined::open(&c).expect("copy");
            let (hash, len) = backup::hash_file(&cc, &seg).expect("hash");
            let text = std::fs::read_to_string(c.join(backup::MANIFEST)).expect("manifest");
            let (mut m, _) = Manifest::parse(&text).expect("parse");
            for e in &mut m.entries {
                if e.path == seg {
                    (e.len, e.hash) = (len, hash);
                }
            }
            // No MAC line: what someone without the keys can write.
            std::fs::write(c.join(backup::MANIFEST), m.body()).expect("manifest");
        } else {
            let report = backup::verify(&c, None).expect("verify runs");
            assert!(
                report
                    .problems
                    .iter()
                    .any(|p| p.starts_with("changed: ") && p.contains(&seg)),
                "{label}: verify does not name {seg}: {report}"
            );
        }
        let e = backup::restore(
            &c,
            &tmp.path().join(format!("{label}-restored")),
            None,
            &Sled,
        )
        .expect_err("damaged copy restored");
        eprintln!("{label}: {e}");
        e
    };
    damaged("truncated", &bytes[..bytes.len() - 5], false);
    let mut flipped = bytes.clone();
    let at = bytes.len() / 2;
    flipped[at] ^= 0x40;
    damaged("flipped", &flipped, false);
    let e = damaged("forged", &flipped, true);
    assert!(
        e.to_string().contains("segment"),
        "forged segment refused for another reason: {e}"
    );
    let e = damaged("forged-truncated", &bytes[..bytes.len() - 5], true);
    assert!(e.to_string().contains("truncated"), "{e}");

    // A file in meta/ that the point does not list.
    let c = tmp.path().join("stray");
    copy_tree(&good, &c);
    std::fs::write(c.join(SEGMENT_DIR).join("0000.seg"), b"DGMSEG01").expect("stray");
    let report = backup::verify(&c, None).expect("verify runs");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.starts_with("not part of point") && p.ends_with("meta/0000.seg")),
        "verify does not name the stray segment: {report}"
    );
}

/// The state one writer's first `m` operations leave: the contents of its file `w{t}` and which
/// of its files `w{t}-{j}` exist. Operation m: m % 3 == 0 rewrites `w{t}` (and fsyncs it),
/// 1 creates `w{t}-{m}`, 2 removes `w{t}-{m-4}`.
fn writer_state(t: usize, m: u64) -> (Vec<u8>, Vec<u64>) {
    let last_write = m - m % 3;
    let files = (1..=m).filter(|j| j % 3 == 1 && j + 4 > m).collect();
    (writer_content(t, last_write), files)
}

fn writer_content(t: usize, m: u64) -> Vec<u8> {
    format!("writer {t} after operation {m:>12}").into_bytes()
}

/// Points taken while writers go on: writers are held only for an instant, and each point
/// holds exactly the state at that instant — for every writer, the state after some number
/// of its operations between those it had finished and those it had started when the point's
/// `at_gate` callback ran — even though records changed while the dump ran (it reports how
/// many it took from their pre-images, and the test requires some). Each point restores and
/// checks clean.
#[test]
fn points_under_concurrent_writers_hold_the_state_at_the_gate() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Mutex;
    const WRITERS: usize = 3;
    let (tmp, dir, _) = populated();
    let fs = open(&dir);
    let mut handles = Vec::new();
    for t in 0..WRITERS {
        let (a, fh) = fs
            .create(
                &ROOT,
                ROOT_INO,
                format!("w{t}").as_bytes(),
                0o644,
                0,
                libc::O_RDWR,
            )
            .expect("create");
        fs.write(a.ino, fh, 0, &writer_content(t, 0))
            .expect("write");
        fs.fsync(a.ino, fh, false).expect("fsync");
        handles.push((a.ino, fh));
    }
    let started: Vec<AtomicU64> = (0..WRITERS).map(|_| AtomicU64::new(0)).collect();
    let done: Vec<AtomicU64> = (0..WRITERS).map(|_| AtomicU64::new(0)).collect();
    let stop = AtomicBool::new(false);
    let mut points = Vec::new();
    std::thread::scope(|s| {
        for (t, &(ino, fh)) in handles.iter().enumerate() {
            let (fs, started, done, stop) = (&fs, &started[t], &done[t], &stop);
            s.spawn(move || {
                let mut m = 0u64;
                while !stop.load(Ordering::Acquire) {
                    m += 1;
                    started.store(m, Ordering::SeqCst);
                    match m % 3 {
                        0 => {
                            fs.write(ino, fh, 0, &writer_content(t, m)).expect("write");
                            fs.fsync(ino, fh, false).expect("fsync");
                        }
                        1 => {
                            let (a, h) = fs
                                .create(
                                    &ROOT,
                                    ROOT_INO,
                                    format!("w{t}-{m}").as_bytes(),
                                    0o644,
                                    0,
                                    libc::O_RDWR,
                                )
                                .expect("create");
                            fs.release(a.ino, h).expect("release");
                        }
                        _ => {
                            if m > 4 {
                                fs.unlink(&ROOT, ROOT_INO, format!("w{t}-{}", m - 4).as_bytes())
                                    .expect("unlink");
                            }
                        }
                    }
                    done.store(m, Ordering::SeqCst);
                }
            });
        }
        // Let the writers get going, then take points while they run.
        while done.iter().any(|d| d.load(Ordering::SeqCst) < 10) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        for round in 0..3 {
            let at: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
            let info = fs
                .backup_begin_at(&|| {
                    *at.lock().unwrap() = (0..WRITERS)
                        .map(|t| {
                            (
                                done[t].load(Ordering::SeqCst),
                                started[t].load(Ordering::SeqCst),
                            )
                        })
                        .collect();
                })
                .expect("point under load");
            let copy = tmp.path().join(format!("copy{round}"));
            copy_tree(&point_of(&dir), &copy);
            eprintln!("{info}");
            points.push((copy, at.into_inner().unwrap(), info.preimages));
        }
        stop.store(true, Ordering::Release);
    });
    for (ino, fh) in handles {
        fs.release(ino, fh).expect("release");
    }
    fs.backup_end().expect("end");
    fs.close().expect("close");
    drop(fs);

    let preimages: usize = points.iter().map(|p| p.2).sum();
    assert!(
        preimages > 0,
        "no record changed while a point was dumped: the test proves nothing"
    );
    for (round, (copy, at, _)) in points.iter().enumerate() {
        let restored = tmp.path().join(format!("restored{round}"));
        backup::restore(copy, &restored, Some(&KEY), &Sled).expect("restore");
        fsck_clean(&restored);
        let r = open(&restored);
        for (t, &(lo, hi)) in at.iter().enumerate() {
            let a = r
                .lookup(&ROOT, ROOT_INO, format!("w{t}").as_bytes())
                .expect("w");
            let content = r.read(a.ino, 0, 0, 4096).expect("read");
            let files: Vec<u64> = (1..=hi)
                .filter(|j| {
                    r.lookup(&ROOT, ROOT_INO, format!("w{t}-{j}").as_bytes())
                        .is_ok()
                })
                .collect();
            assert!(
                (lo..=hi).any(|m| writer_state(t, m) == (content.clone(), files.clone())),
                "point {round}, writer {t}: {:?} with files {files:?} is the state after none of its operations {lo}..={hi}",
                String::from_utf8_lossy(&content)
            );
        }
        r.close().expect("close");
    }
}
