//! Several threads change one small namespace at once (create, write, unlink while open, link,
//! rename over links of the same inode, truncate, fsync, release) while a dirty-memory bound
//! small enough to keep background writebacks running all the time makes writeback overlap
//! every operation. After a clean close, fsck finds nothing and a fresh mount reads every file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::{Rng, ROOT};
use digimedfs_core::check::{check_parts, CheckOptions, Mode};
use digimedfs_core::filesystem::{Filesystem, OpenOptions, SetAttr, ROOT_INO};
use digimedfs_core::testing::MemImage;
use std::sync::Arc;

/// Names the threads share, so that they collide often.
const NAMES: u64 = 10;

/// Accepts the errors that collisions between the threads legitimately cause; anything else
/// (EIO above all: an integrity failure) fails the test.
fn expected<T>(r: digimedfs_core::Result<T>, op: &str) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            let errno = e.errno();
            assert!(
                [libc::ENOENT, libc::EEXIST].contains(&errno),
                "{op}: unexpected error {e} (errno {errno})"
            );
            None
        }
    }
}

fn name(rng: &mut Rng) -> Vec<u8> {
    format!("f{}", rng.below(NAMES)).into_bytes()
}

fn data(rng: &mut Rng) -> Vec<u8> {
    // Inline (up to 64 KiB) and object-backed sizes.
    let len = [0, 100, 5_000, 70_000, 200_000][rng.below(5) as usize];
    let byte = rng.below(256) as u8;
    vec![byte; len]
}

fn worker(fs: &Filesystem, dir: u64, seed: u64, ops: usize) {
    let mut rng = Rng(seed);
    let mut open: Vec<(u64, u64)> = Vec::new();
    for _ in 0..ops {
        let n = name(&mut rng);
        match rng.below(9) {
            0 | 1 => {
                let flags = libc::O_RDWR | libc::O_CREAT;
                if let Some((a, fh)) =
                    expected(fs.create(&ROOT, dir, &n, 0o644, 0, flags), "create")
                {
                    let d = data(&mut rng);
                    fs.write(a.ino, fh, 0, &d).unwrap();
                    open.push((a.ino, fh));
                }
            }
            2 => {
                expected(fs.unlink(&ROOT, dir, &n), "unlink");
            }
            3 => {
                let to = name(&mut rng);
                expected(fs.rename(&ROOT, dir, &n, dir, &to, 0), "rename");
            }
            4 => {
                if let Some(a) = expected(fs.lookup(&ROOT, dir, &n), "lookup") {
                    let to = name(&mut rng);
                    expected(fs.link(&ROOT, a.ino, dir, &to), "link");
                }
            }
            5 => {
                if let Some(a) = expected(fs.lookup(&ROOT, dir, &n), "lookup") {
                    if let Some(fh) = expected(fs.open_file(&ROOT, a.ino, libc::O_RDWR), "open") {
                        let d = data(&mut rng);
                        let at = rng.below(150_000);
                        fs.write(a.ino, fh, at, &d).unwrap();
                        open.push((a.ino, fh));
                    }
                }
            }
            6 => {
                if let Some(a) = expected(fs.lookup(&ROOT, dir, &n), "lookup") {
                    let set = SetAttr {
                        size: Some(rng.below(120_000)),
                        ..SetAttr::default()
                    };
                    expected(fs.setattr(&ROOT, a.ino, &set), "truncate");
                }
            }
            7 => {
                if let Some((ino, fh)) = open.last().copied() {
                    fs.fsync(ino, fh, false).unwrap();
                }
            }
            _ => {
                if !open.is_empty() {
                    let (ino, fh) = open.swap_remove(rng.below(open.len() as u64) as usize);
                    fs.release(ino, fh).unwrap();
                }
            }
        }
        // Files unlinked while open: keep a few handles for a while.
        while open.len() > 4 {
            let (ino, fh) = open.remove(0);
            fs.release(ino, fh).unwrap();
        }
    }
    for (ino, fh) in open {
        fs.release(ino, fh).unwrap();
    }
}

fn run(seed: u64) {
    let img = MemImage::create(4096).unwrap();
    let opts = OpenOptions {
        max_dirty_bytes: 256 << 10,
        ..OpenOptions::default()
    };
    let fs = Arc::new(img.open(&opts).unwrap());
    let dir = fs.mkdir(&ROOT, ROOT_INO, b"d", 0o755, 0).unwrap().ino;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let fs = fs.clone();
            std::thread::spawn(move || worker(&fs, dir, seed * 100 + t + 1, 600))
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    fs.close().unwrap();

    let report = check_parts(
        &img.parts_to_check(),
        &CheckOptions {
            mode: Mode::Check,
            threads: 2,
        },
        &mut (),
    )
    .unwrap();
    let problems: Vec<String> = report
        .problems
        .iter()
        .map(|p| format!("{} (inode {:?}): {}", p.kind, p.ino, p.detail))
        .collect();
    assert!(
        problems.is_empty(),
        "seed {seed}: fsck found\n{}",
        problems.join("\n")
    );

    let fs = img.open(&OpenOptions::default()).unwrap();
    let fh = fs.opendir(&ROOT, dir, 0).unwrap();
    for e in fs.readdir(dir, fh, 0, 1000).unwrap() {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        let a = fs.getattr(e.ino).unwrap();
        let f = fs.open_file(&ROOT, e.ino, libc::O_RDONLY).unwrap();
        let got = fs.read(e.ino, f, 0, a.size as u32 + 1).unwrap();
        assert_eq!(
            got.len() as u64,
            a.size,
            "seed {seed}: short read of inode {}",
            e.ino
        );
        fs.release(e.ino, f).unwrap();
    }
    fs.close().unwrap();
}

#[test]
fn four_threads_on_one_namespace_leave_a_clean_filesystem() {
    for seed in 1..=10 {
        run(seed);
    }
}
