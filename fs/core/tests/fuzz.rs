//! Fuzzing of every decoder of untrusted bytes in the library: the superblock, each metadata
//! record type, the backup dump (single-file and segmented: segment and index) and manifest, the key slot and key files. (The io_uring request
//! decoder and the mount-option parser live in the binary and are fuzzed in their own modules.)
//!
//! Each target gets seeds from the real encoders (a populated in-memory filesystem, a real
//! dump and manifest) plus the files in `fs/core/tests/fuzz-corpus/TARGET/`, and runs
//! `DIGIMEDFS_FUZZ_ITERS` mutated inputs (default 3 000 per target, so the suite stays quick;
//! set it to millions for a long run, and `DIGIMEDFS_FUZZ_SEED` to vary or reproduce a run).
//! Every input must come back as `Ok` or `Err`: a panic fails the test with the seed and the
//! input in hex, and so does any single allocation above [`ALLOC_LIMIT`] made while decoding
//! (a length field read from the input must never size an allocation unchecked).
//! `DIGIMEDFS_FUZZ_WRITE_CORPUS=1` rewrites the corpus directory from the current seeds.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use digimedfs_core::backup::{
    read_dump, read_segmented, DumpWriter, Manifest, ManifestEntry, SegmentWriter,
};
use digimedfs_core::confined::Confined;
use digimedfs_core::crypto::slots::{unwrap_master, wrap_master};
use digimedfs_core::crypto::{MasterKey, WrappingKey};
use digimedfs_core::filesystem::{Ctx, OpenOptions, ROOT_INO};
use digimedfs_core::format::records::{Chunk, Counters, Dirent, Inode, Xattr};
use digimedfs_core::format::superblock::Superblock;
use digimedfs_core::keysource::file::KeyFile;
use digimedfs_core::testing::{MemImage, Mutator};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Largest single allocation a decoder may make for inputs of this size (a few KiB): the
/// biggest legitimate one is a record or dump value of at most 64 KiB plus overhead, or the
/// read buffer of the dump reader (1 MiB).
const ALLOC_LIMIT: usize = 2 << 20;

thread_local! {
    /// Largest allocation on this thread while tracking (None: not tracking).
    static LARGEST: Cell<Option<usize>> = const { Cell::new(None) };
    /// Bytes allocated minus bytes freed on this thread, and the highest value it reached
    /// since the last reset.
    static LIVE: Cell<(isize, isize)> = const { Cell::new((0, 0)) };
}

/// The system allocator, noting the largest allocation of the tracking thread.
struct Tracking;

impl Tracking {
    fn live(delta: isize) {
        let _ = LIVE.try_with(|l| {
            let (now, peak) = l.get();
            let now = now + delta;
            l.set((now, peak.max(now)));
        });
    }

    fn note(size: usize) {
        // `try_with`: the allocator may run while thread-locals are torn down.
        let _ = LARGEST.try_with(|l| {
            if let Some(max) = l.get() {
                l.set(Some(max.max(size)));
            }
        });
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds GlobalAlloc's contract;
// the only addition is a thread-local size note that does not allocate.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Tracking::note(layout.size());
        Tracking::live(layout.size() as isize);
        // SAFETY: forwarded with the caller's layout (see the impl's comment).
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Tracking::live(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System` with this layout (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Tracking::note(layout.size());
        Tracking::live(layout.size() as isize);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Tracking::note(new_size);
        Tracking::live(new_size as isize - layout.size() as isize);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

fn iterations() -> usize {
    digimedfs_core::testing::fuzz_iterations()
}

fn base_seed() -> u64 {
    std::env::var("DIGIMEDFS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x00D1_61ED)
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target)
}

/// The built-in seeds plus the target's corpus files; rewrites the corpus if asked to.
fn seeds_with_corpus(target: &str, mut seeds: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let dir = corpus_dir(target);
    if std::env::var_os("DIGIMEDFS_FUZZ_WRITE_CORPUS").is_some() {
        std::fs::create_dir_all(&dir).expect("corpus dir");
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), s).expect("write corpus");
        }
    }
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            seeds.push(std::fs::read(e.path()).expect("read corpus file"));
        }
    }
    assert!(!seeds.is_empty(), "no seeds for {target}");
    seeds
}

/// Runs `decode` on the seeds themselves and on mutated inputs; fails on a panic or an
/// allocation above [`ALLOC_LIMIT`]. Returns how many inputs decoded without error.
fn fuzz(target: &str, seeds: Vec<Vec<u8>>, decode: impl Fn(&[u8]) -> bool) -> usize {
    let seeds = seeds_with_corpus(target, seeds);
    let seed = base_seed()
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) ^ u64::from(b));
    let mut m = Mutator::new(seed);
    let mut accepted = 0;
    let inputs = seeds
        .clone()
        .into_iter()
        .chain((0..iterations()).map(|_| m.input(&seeds)));
    for (n, input) in inputs.enumerate() {
        LARGEST.with(|l| l.set(Some(0)));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode(&input)));
        let largest = LARGEST.with(|l| l.replace(None)).unwrap_or(0);
        match result {
            Ok(ok) => accepted += usize::from(ok),
            Err(_) => panic!(
                "{target}: input {n} (seed {seed}) panicked: {}",
                hex::encode(&input)
            ),
        }
        assert!(
            largest <= ALLOC_LIMIT,
            "{target}: input {n} (seed {seed}) of {} bytes made an allocation of {largest} bytes: {}",
            input.len(),
            hex::encode(input.get(..256).unwrap_or(&input))
        );
    }
    accepted
}

/// A filesystem with one of everything, and its records' plaintexts by key prefix.
fn populated() -> (MemImage, BTreeMap<u8, Vec<Vec<u8>>>) {
    let img = MemImage::create(4096).expect("image");
    {
        let fs = img.open(&OpenOptions::default()).expect("open");
        let ctx = Ctx::ROOT;
        let d = fs.mkdir(&ctx, ROOT_INO, b"dir", 0o755, 0).expect("mkdir");
        let (small, fh) = fs
            .create(&ctx, d.ino, b"small", 0o644, 0, libc::O_RDWR)
            .expect("create");
        fs.write(small.ino, fh, 0, b"small contents")
            .expect("write");
        fs.release(small.ino, fh).expect("release");
        let (big, fh) = fs
            .create(&ctx, ROOT_INO, b"big", 0o600, 0, libc::O_RDWR)
            .expect("create");
        fs.write(big.ino, fh, 0, &vec![7u8; 300_000])
            .expect("write");
        fs.release(big.ino, fh).expect("release");
        fs.symlink(&ctx, ROOT_INO, b"link", b"dir/small")
            .expect("symlink");
        fs.setxattr(&ctx, small.ino, b"user.note", b"value", 0)
            .expect("setxattr");
        fs.close().expect("close");
    }
    let records = digimedfs_core::meta::Records::new(
        img.meta.clone(),
        img.keys.clone(),
        &img.superblock.fs_uuid,
    );
    let mut by_prefix: BTreeMap<u8, Vec<Vec<u8>>> = BTreeMap::new();
    for (k, v) in img.meta.dump() {
        let plain = records.open(&k, &v).expect("open record");
        by_prefix
            .entry(k.first().copied().unwrap_or(0))
            .or_default()
            .push(plain.to_vec());
    }
    (img, by_prefix)
}

#[test]
fn superblock_decoder() {
    let (img, _) = populated();
    let seed = img.superblock.encode(&img.keys.superblock).expect("encode");
    let n = fuzz("superblock", vec![seed], |b| {
        Superblock::decode_unverified(b).is_ok()
    });
    assert!(n >= 1, "not even the seed decoded");
}

#[test]
fn record_decoders() {
    let (_, by_prefix) = populated();
    let seeds = |p: u8| by_prefix.get(&p).cloned().unwrap_or_default();
    let inodes = seeds(b'I');
    assert!(inodes.len() >= 4, "{} inode records", inodes.len());
    assert!(fuzz("inode", inodes, |b| Inode::decode(9, b).is_ok()) >= 4);
    assert!(fuzz("dirent", seeds(b'D'), |b| Dirent::decode(b).is_ok()) >= 1);
    assert!(fuzz("xattr", seeds(b'X'), |b| Xattr::decode(b).is_ok()) >= 1);
    assert!(fuzz("chunk", seeds(b'B'), |b| Chunk::decode(b).is_ok()) >= 1);
    assert!(fuzz("counters", seeds(b'C'), |b| Counters::decode(b).is_ok()) >= 1);
}

#[test]
fn backup_dump_reader() {
    let (img, _) = populated();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Confined::open(dir.path()).expect("dir");
    let mut w = DumpWriter::create(&c, "seed", &img.superblock.fs_uuid).expect("dump");
    for (k, v) in img.meta.dump() {
        w.record(&k, &v).expect("record");
    }
    w.finish().expect("finish");
    let seed = std::fs::read(dir.path().join("seed")).expect("read");
    let n = fuzz("dump", vec![seed], |b| {
        std::fs::write(dir.path().join("in"), b).expect("write input");
        read_dump(&c, "in", &mut |_, _| Ok(())).is_ok()
    });
    assert!(n >= 1);
}

/// The segmented dump: a real one-segment dump of the populated image; the mutated input
/// replaces the segment (target `segment`) or the index (target `segment-index`).
#[test]
fn backup_segment_reader() {
    let (img, _) = populated();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = Confined::open(dir.path()).expect("dir");
    c.create_dir("p").expect("point dir");
    let mut w = SegmentWriter::create(&c, "p", &img.superblock.fs_uuid, None).expect("dump");
    for (k, v) in img.meta.dump() {
        w.record(&k, &v).expect("record");
    }
    let dump = w.finish().expect("finish");
    let p = c.open_dir("p").expect("point");
    for (target, rel) in [
        ("segment", dump.segments[0].path.clone()),
        ("segment-index", dump.index_path.clone()),
    ] {
        let file = dir.path().join("p").join(&rel);
        let seed = std::fs::read(&file).expect("read");
        let n = fuzz(target, vec![seed.clone()], |b| {
            std::fs::write(&file, b).expect("write input");
            read_segmented(&p, &mut |_, _| Ok(())).is_ok()
        });
        std::fs::write(&file, &seed).expect("put the seed back");
        assert!(n >= 1, "{target}: not even the seed read");
    }
}

#[test]
fn backup_manifest_parser() {
    let (img, _) = populated();
    let manifest = Manifest {
        fs_uuid: img.superblock.fs_uuid,
        point: "0123456789abcdef".into(),
        taken: 1_700_000_000,
        epoch: 7,
        entries: vec![
            ManifestEntry {
                path: "superblock".into(),
                len: 300,
                hash: [1; 32],
                stamp: None,
            },
            ManifestEntry {
                path: "objects/ab/abababababababababababababababab".into(),
                len: 8192,
                hash: [2; 32],
                stamp: Some("12.345".into()),
            },
        ],
    };
    let seed = manifest.encode(&img.keys.superblock).into_bytes();
    let n = fuzz("manifest", vec![seed], |b| {
        Manifest::parse(&String::from_utf8_lossy(b)).is_ok()
    });
    assert!(n >= 1);
}

#[test]
fn key_slot_unwrap() {
    let wrapping = WrappingKey::from_bytes(&[5; 32]).expect("key");
    let master = MasterKey::from_bytes(&[9; 64]).expect("master");
    let ad = b"dgm1 slot example";
    let seed = wrap_master(&wrapping, &[1; 16], ad, &master);
    let n = fuzz("slot", vec![seed], |b| {
        unwrap_master(&wrapping, &[1; 16], ad, b).is_some()
    });
    assert!(n >= 1, "the genuine slot did not unwrap");
}

#[test]
fn key_file_parser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good");
    KeyFile::create_new(&good).expect("keygen");
    let seed = std::fs::read(&good).expect("read");
    let path = dir.path().join("in");
    let n = fuzz("keyfile", vec![seed], |b| {
        std::fs::write(&path, b).expect("write input");
        KeyFile::open(&path).is_ok()
    });
    assert!(n >= 1);
}

/// Issue 22, finding 9: a hostile manifest of 40 MB (400 000 well-formed lines naming objects
/// the copy does not hold) is verified in bounded memory: the manifest is streamed and only
/// the first problems are listed. Held 1.19 GB for 300 MB before; the bound here is the
/// thread's peak of live heap bytes during `verify_copy`, which is deterministic.
#[test]
fn hostile_manifest_is_verified_in_bounded_memory() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(dir.path().join("MANIFEST")).expect("manifest"),
    );
    writeln!(
        w,
        "digimedfs-backup-point 1\nfs {}\npoint 0011\ntaken 1\nepoch 2",
        "ab".repeat(16)
    )
    .expect("write");
    for i in 0..400_000u64 {
        let id = format!("{:032x}", u128::from(i) << 64 | 0x0f);
        writeln!(w, "file objects/{}/{id} 4096 {}", &id[..2], "cd".repeat(32)).expect("write");
    }
    w.flush().expect("flush");
    drop(w);
    let size = std::fs::metadata(dir.path().join("MANIFEST"))
        .expect("stat")
        .len();
    assert!(size > 40_000_000, "{size}");
    LIVE.with(|l| l.set((0, 0)));
    let report = digimedfs_core::backup::verify_copy(dir.path()).expect("verify");
    let (_, peak) = LIVE.with(Cell::get);
    assert_eq!(report.files, 400_000);
    assert_eq!(
        report.problem_count, 400_000,
        "every listed object is missing"
    );
    assert_eq!(
        report.problems.len(),
        digimedfs_core::backup::MAX_PROBLEMS_LISTED
    );
    assert!(
        peak < 16 << 20,
        "verify_copy of a {size}-byte manifest peaked at {peak} live heap bytes"
    );
}
