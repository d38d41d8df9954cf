//! XTS tweaks and block-tag mask inputs never repeat across copies, restores and crashes
//! (issue 22, finding 3).
//!
//! Each read-write open writes its blocks under a new incarnation with a fresh random salt
//! (docs/crypto.md, "Incarnations"). These tests prove over real backing directories and
//! [`MemImage`]s that: two copies of one backing directory, both mounted and written with the
//! same data, share no 16-byte ciphertext unit at the same position (before incarnations,
//! both continued from the same counters and nearly every unit was equal); blocks of a
//! filesystem written before incarnations existed (generation < 2^40, made by the build before
//! them: a golden image) stay readable and pass fsck, and new writes to it go to a new
//! incarnation; a crash never makes a later mount reuse an incarnation's salt; and a block
//! whose incarnation has no salt record reads as EIO (naming inode and block) and is reported
//! by fsck, never a panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{KEY, ROOT};
use digimedfs_core::check::{check, check_parts, CheckOptions, ProblemKind};
use digimedfs_core::crypto::incarnation::{incarnation_of, GENERATIONS_PER_INCARNATION};
use digimedfs_core::filesystem::{Filesystem, OpenOptions, ROOT_INO};
use digimedfs_core::format::records::{incarnation_of_key, prefix, Storage};
use digimedfs_core::meta::{Batch, MetaStore, Records};
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use digimedfs_core::testing::MemImage;
use digimedfs_core::Error;
use digimedfs_sled::Sled;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const BS: usize = 4096;

fn content(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2654435761) >> 13) as u8 ^ seed)
        .collect()
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

/// Writes `data` over file `name` (created if missing) from offset 0, fsyncs; returns ino.
fn write_file(fs: &Filesystem, name: &str, data: &[u8]) -> u64 {
    let (ino, fh) = match fs.lookup(&ROOT, ROOT_INO, name.as_bytes()) {
        Ok(a) => (a.ino, fs.open_file(&ROOT, a.ino, libc::O_RDWR).unwrap()),
        Err(_) => {
            let (a, fh) = fs
                .create(&ROOT, ROOT_INO, name.as_bytes(), 0o644, 0, libc::O_RDWR)
                .unwrap();
            (a.ino, fh)
        }
    };
    for (k, piece) in data.chunks(65536).enumerate() {
        fs.write(ino, fh, (k * 65536) as u64, piece).unwrap();
    }
    fs.fsync(ino, fh, false).unwrap();
    fs.release(ino, fh).unwrap();
    ino
}

fn read_file(fs: &Filesystem, name: &str) -> digimedfs_core::Result<Vec<u8>> {
    let a = fs.lookup(&ROOT, ROOT_INO, name.as_bytes())?;
    fs.read(a.ino, 0, 0, a.size as u32 + 10)
}

/// Path of the data object of `ino`, relative to the backing directory.
fn object_of(fs: &Filesystem, ino: u64) -> PathBuf {
    match fs.records().inode(ino).unwrap().unwrap().storage {
        Storage::Object(id) => {
            let h = hex::encode(id);
            PathBuf::from("objects").join(&h[..2]).join(&h)
        }
        other => panic!("inode {ino}: not in an object ({other:?})"),
    }
}

/// The generations of every block entry of `ino` (current and previous versions).
fn generations(fs: &Filesystem, ino: u64) -> Vec<u64> {
    let mut out = Vec::new();
    fs.records()
        .chunks_from(ino, 0, &mut |_, ch| {
            for e in ch.entries.values() {
                out.push(e.cur.generation);
                if let Some(Some(p)) = e.prev {
                    out.push(p.generation);
                }
            }
            Ok(true)
        })
        .unwrap();
    out
}

/// The salt records of a store: incarnation → sealed value.
fn salt_records(store: &dyn MetaStore) -> BTreeMap<u32, Vec<u8>> {
    let mut out = BTreeMap::new();
    store
        .scan(&[prefix::INCARNATION], None, &mut |k, v| {
            out.insert(incarnation_of_key(k).unwrap(), v.to_vec());
            Ok(true)
        })
        .unwrap();
    out
}

/// Data as both timelines write it after the copy: the same file, with one 16-byte unit of
/// each block changed differently per timeline (as the live filesystem and the restored
/// point each go on).
fn timeline_data(base: &[u8], which: u8) -> Vec<u8> {
    let mut d = base.to_vec();
    for (b, block) in d.chunks_mut(BS).enumerate() {
        let unit = (b * 7) % (BS / 16);
        for x in &mut block[unit * 16..unit * 16 + 16] {
            *x ^= which;
        }
    }
    d
}

/// A backing directory copied at time T (a restore, a rollback, a copy mounted elsewhere) and
/// the original both go on and write the same file with nearly the same data. No 16-byte
/// ciphertext unit of the two objects may be equal at the same position: equal units are
/// what a reused (key, tweak) pair shows (before incarnations: 255 of every 256).
#[test]
fn copies_of_a_backing_directory_never_share_ciphertext() {
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    let b_dir = tmp.path().join("b");
    mkfs(&a_dir, &KEY, &MkfsOptions::default(), &Sled).unwrap();
    let base = content(3, 1 << 20);
    let fs = Filesystem::open(&a_dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    let ino = write_file(&fs, "f", &content(9, 1 << 20));
    let object = object_of(&fs, ino);
    fs.close().unwrap();
    drop(fs);
    // Time T.
    copy_dir(&a_dir, &b_dir);

    let mut objects = Vec::new();
    for (dir, which) in [(&a_dir, 1u8), (&b_dir, 2u8)] {
        let data = timeline_data(&base, which);
        let fs = Filesystem::open(dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
        assert_eq!(write_file(&fs, "f", &data), ino);
        assert_eq!(object_of(&fs, ino), object, "same object in both copies");
        assert_eq!(read_file(&fs, "f").unwrap(), data, "{}", dir.display());
        fs.close().unwrap();
        drop(fs);
        objects.push(std::fs::read(dir.join(&object)).unwrap());
    }
    let (a, b) = (&objects[0], &objects[1]);
    assert_eq!(a.len(), base.len());
    assert_eq!(b.len(), base.len());
    let units = a.len() / 16;
    let equal = a
        .chunks(16)
        .zip(b.chunks(16))
        .filter(|(x, y)| x == y)
        .count();
    // The plaintexts differ in one unit per block: 255 of 256 units are equal in plaintext.
    let equal_plain = timeline_data(&base, 1)
        .chunks(16)
        .zip(timeline_data(&base, 2).chunks(16))
        .filter(|(x, y)| x == y)
        .count();
    assert_eq!(equal_plain, units - units / 256);
    assert_eq!(
        equal, 0,
        "{equal} of {units} ciphertext units are equal between the two copies' objects"
    );
    // Both copies still pass fsck.
    for dir in [&a_dir, &b_dir] {
        let r = check(dir, &KEY, &CheckOptions::default(), &mut (), &Sled).unwrap();
        assert!(r.problems.is_empty(), "{}: {:?}", dir.display(), r.problems);
    }
}

/// Each read-write open starts a new incarnation, later than every earlier one, with its own
/// salt; a read-only open starts none; blocks carry their incarnation in the generation.
#[test]
fn every_read_write_open_starts_a_new_incarnation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    mkfs(&dir, &KEY, &MkfsOptions::default(), &Sled).unwrap();
    let mut seen: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    let mut last = 0;
    for round in 0..3u8 {
        let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
        let ino = write_file(&fs, "f", &content(round, 100_000));
        let gens = generations(&fs, ino);
        let k = incarnation_of(*gens.iter().max().unwrap());
        assert!(k > last, "round {round}: incarnation {k} after {last}");
        last = k;
        fs.close().unwrap();
        drop(fs);
        let ro = Filesystem::open(
            &dir,
            &KEY,
            &OpenOptions {
                read_only: true,
                ..Default::default()
            },
            &Sled,
        )
        .unwrap();
        assert_eq!(read_file(&ro, "f").unwrap(), content(round, 100_000));
        drop(ro);
        // The sealed salt records: earlier ones unchanged, one more per read-write open.
        let store = digimedfs_sled::SledStore::open(&dir.join("meta"), 1 << 20).unwrap();
        let now = salt_records(&store);
        for (k, v) in &seen {
            assert_eq!(
                now.get(k),
                Some(v),
                "salt record of incarnation {k} changed"
            );
        }
        assert_eq!(now.len(), seen.len() + 1, "round {round}");
        assert_eq!(now.keys().next_back(), Some(&k));
        seen = now;
    }
}

/// Rebuilds in `dir` the golden image `tests/data/legacy-gen0`: a filesystem made with
/// `Filesystem::open` by the build before incarnations (main at 33cdb53; key [`KEY`]; files
/// `big` = `content(5, 70_000)` in an object and `small` = `content(6, 1000)` inline; closed
/// cleanly). The superblocks and the object are the files it wrote; the metadata store is kept
/// as its (key, sealed value) pairs in hex (`records.hex`), because sled's files take 8 MiB,
/// and put back into a new store here, byte for byte.
fn golden_legacy(dir: &Path) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/legacy-gen0");
    std::fs::create_dir_all(dir).unwrap();
    for f in ["superblock", "superblock.bak"] {
        std::fs::copy(golden.join(f), dir.join(f)).unwrap();
    }
    copy_dir(&golden.join("objects"), &dir.join("objects"));
    let store = digimedfs_sled::SledStore::open(&dir.join("meta"), 1 << 20).unwrap();
    let mut b = Batch::default();
    let text = std::fs::read_to_string(golden.join("records.hex")).unwrap();
    for line in text.lines() {
        let (k, v) = line.split_once(' ').unwrap();
        b.ops_push(hex::decode(k).unwrap(), hex::decode(v).unwrap());
    }
    assert_eq!(b.len(), 8);
    store.apply(&b).unwrap();
    store.flush().unwrap();
}

/// A filesystem made by the build before incarnations (golden image in tests/data): its
/// blocks have generations below 2^40 and there are no salt records. It reads back, passes
/// fsck, and blocks written now go to incarnation ≥ 1 while untouched blocks stay as they were.
#[test]
fn filesystem_from_before_incarnations_stays_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    golden_legacy(&dir);
    let want = content(5, 70_000);
    let small = content(6, 1000);

    let r = check(&dir, &KEY, &CheckOptions::default(), &mut (), &Sled).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);

    let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    let ino = fs.lookup(&ROOT, ROOT_INO, b"big").unwrap().ino;
    let before = generations(&fs, ino);
    assert!(!before.is_empty());
    assert!(
        before.iter().all(|g| *g < GENERATIONS_PER_INCARNATION),
        "golden image: every block of incarnation 0"
    );
    assert_eq!(read_file(&fs, "big").unwrap(), want);
    assert_eq!(read_file(&fs, "small").unwrap(), small);
    // Overwrite the first block only.
    let fh = fs.open_file(&ROOT, ino, libc::O_RDWR).unwrap();
    fs.write(ino, fh, 0, &[0xee; BS]).unwrap();
    fs.fsync(ino, fh, false).unwrap();
    fs.release(ino, fh).unwrap();
    fs.close().unwrap();
    drop(fs);

    let mut expect = want.clone();
    expect[..BS].fill(0xee);
    let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    assert_eq!(read_file(&fs, "big").unwrap(), expect);
    let mut c0 = None;
    fs.records()
        .chunks_from(ino, 0, &mut |_, ch| {
            c0 = Some(ch);
            Ok(false)
        })
        .unwrap();
    let c0 = c0.unwrap();
    assert!(incarnation_of(c0.entries[&0].cur.generation) >= 1);
    assert!(c0.entries[&1].cur.generation < GENERATIONS_PER_INCARNATION);
    fs.close().unwrap();
    drop(fs);
    let r = check(&dir, &KEY, &CheckOptions::default(), &mut (), &Sled).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

/// A crash (unflushed metadata lost, unsynced data kept or lost) never makes the next mount
/// reuse an incarnation: the salt record of the crashed mount's incarnation is durable before
/// any block of it is written, its blocks read back, and the next mount takes a higher
/// incarnation. Two mounts of the same crashed state (a copy) draw different salts.
#[test]
fn incarnations_survive_crashes() {
    let img = MemImage::create(BS as u32).unwrap();
    let fs = img.open(&OpenOptions::default()).unwrap();
    let synced = content(1, 300_000);
    let ino = write_file(&fs, "f", &synced);
    let k1 = incarnation_of(*generations(&fs, ino).iter().max().unwrap());
    assert!(k1 >= 1);
    // More writes, never fsynced, then the crash.
    let fh = fs.open_file(&ROOT, ino, libc::O_RDWR).unwrap();
    fs.write(ino, fh, 8192, &[7u8; 3 * BS]).unwrap();
    let salts_before = salt_records(&*img.meta);
    assert!(salts_before.contains_key(&k1), "salt durable before blocks");
    for keep_obj in [false, true] {
        let crashed = img.crash_image(0, &mut |_| keep_obj);
        assert_eq!(salt_records(&*crashed.meta), salts_before);
        let mut salts = Vec::new();
        for _ in 0..2 {
            // Two mounts of the same crashed state.
            let copy = crashed.crash_image(0, &mut |_| true);
            let fs2 = copy.open(&OpenOptions::default()).unwrap();
            let got = read_file(&fs2, "f").unwrap();
            assert_eq!(got.len(), synced.len());
            let salt = salt_records(&*copy.meta);
            let k2 = *salt.keys().next_back().unwrap();
            assert!(k2 > k1, "incarnation {k2} after crash of {k1}");
            assert_eq!(salt.get(&k1), salts_before.get(&k1));
            // The salt itself (sealed values differ by their random nonces anyway).
            let records = Records::new(
                copy.meta.clone(),
                copy.keys.clone(),
                &copy.superblock.fs_uuid,
            );
            salts.push(*records.incarnation_salt(k2).unwrap().unwrap().expose());
            fs2.close().unwrap();
        }
        assert_ne!(salts[0], salts[1], "two mounts of one state drew one salt");
    }
    drop(fs);
}

/// Blocks whose incarnation has no salt record fail with EIO naming inode and block (never a
/// panic or zeros); other files stay readable; fsck reports the missing record and the blocks.
#[test]
fn missing_salt_record_is_eio_and_reported() {
    let img = MemImage::create(BS as u32).unwrap();
    let fs = img.open(&OpenOptions::default()).unwrap();
    let ino = write_file(&fs, "big", &content(2, 200_000));
    write_file(&fs, "small", &content(3, 500));
    let k = incarnation_of(*generations(&fs, ino).iter().max().unwrap());
    fs.close().unwrap();
    drop(fs);
    let mut b = Batch::default();
    for k in salt_records(&*img.meta).keys() {
        let mut key = vec![prefix::INCARNATION];
        key.extend_from_slice(&k.to_be_bytes());
        b.delete(&key);
    }
    img.meta.apply(&b).unwrap();
    img.meta.flush().unwrap();

    let fs = img.open(&OpenOptions::default()).unwrap();
    let e = read_file(&fs, "big").expect_err("blocks without their salt read back");
    assert_eq!(e.errno(), libc::EIO, "{e}");
    assert!(matches!(e, Error::Integrity { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("inode {ino} block 0")) && msg.contains("no salt record"),
        "{msg}"
    );
    assert_eq!(read_file(&fs, "small").unwrap(), content(3, 500));
    fs.close().unwrap();
    drop(fs);

    let r = check_parts(&img.parts_to_check(), &CheckOptions::default(), &mut ()).unwrap();
    let missing: Vec<_> = r
        .problems
        .iter()
        .filter(|p| p.kind == ProblemKind::MissingIncarnation)
        .collect();
    assert_eq!(missing.len(), 1, "{:?}", r.problems);
    assert!(missing[0].detail.contains(&format!("incarnation {k}")));
    assert!(r
        .problems
        .iter()
        .any(|p| p.kind == ProblemKind::DamagedBlock && p.ino == Some(ino)));
}

/// A rolled-back counters record (an older sealed value put back by storage) must not make
/// a mount take an incarnation that already has a salt record: it would replace that salt,
/// and the blocks written under it would stop verifying (or, with the old salt kept, the
/// mount would reuse its keys and tweaks).
#[test]
fn rolled_back_counters_never_reuse_an_incarnation() {
    let img = MemImage::create(BS as u32).unwrap();
    let fs = img.open(&OpenOptions::default()).unwrap();
    write_file(&fs, "a", &content(1, 100_000));
    fs.close().unwrap();
    drop(fs);
    let old_counters = img.meta.get(&[prefix::COUNTERS]).unwrap().unwrap();
    let fs = img.open(&OpenOptions::default()).unwrap();
    let ino_b = write_file(&fs, "b", &content(2, 100_000));
    let k2 = incarnation_of(*generations(&fs, ino_b).iter().max().unwrap());
    fs.close().unwrap();
    drop(fs);
    let salt_k2 = salt_records(&*img.meta)[&k2].clone();
    let mut b = Batch::default();
    b.ops_push(vec![prefix::COUNTERS], old_counters);
    img.meta.apply(&b).unwrap();
    img.meta.flush().unwrap();

    let fs = img.open(&OpenOptions::default()).unwrap();
    assert_eq!(
        salt_records(&*img.meta)[&k2],
        salt_k2,
        "salt of {k2} replaced"
    );
    // (No new inode: the rolled-back counters would hand out b's number again, which is
    // finding 2's concern, not this one.)
    let ino_a = write_file(&fs, "a", &content(3, 100_000));
    let k3 = incarnation_of(*generations(&fs, ino_a).iter().max().unwrap());
    assert!(k3 > k2, "incarnation {k3} after {k2}");
    assert!(
        read_file(&fs, "b").unwrap() == content(2, 100_000),
        "b reads back"
    );
    assert!(
        read_file(&fs, "a").unwrap() == content(3, 100_000),
        "a reads back"
    );
    fs.close().unwrap();
}
