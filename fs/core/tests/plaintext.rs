//! No plaintext reaches the backing directory. Files, directories, symlinks and xattrs are
//! created over a real backing directory (mkfs + open, sled included) with names, contents,
//! symlink targets, xattr names and values that each carry a distinct random 16-hex-digit marker
//! (plus a 1 MiB file made of nothing but one marker repeated, and a small inline file). After
//! fsync and close, every byte of every file under the backing directory is scanned: no marker
//! appears anywhere. The backing directory holds only the expected top-level names, and the
//! image still reads back (so the test did not pass by writing nothing).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::ROOT;
use digimedfs_core::filesystem::{Filesystem, OpenOptions, ROOT_INO};
use digimedfs_core::mkfs::{mkfs, MkfsOptions};
use digimedfs_core::testing::StaticKey;
use digimedfs_sled::Sled;
use std::path::Path;

const KEY: StaticKey = StaticKey([11; 32]);

/// A fresh marker, remembered in `all`.
fn mk(all: &mut Vec<String>) -> String {
    let s = hex::encode(rand::random::<[u8; 8]>());
    all.push(s.clone());
    s
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let t = e.file_type().unwrap();
        if t.is_dir() {
            files_under(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn no_marker_reaches_the_backing_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fs");
    mkfs(&dir, &KEY, &MkfsOptions::default(), &Sled).unwrap();
    let mut markers: Vec<String> = Vec::new();
    let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    let mut expect = Vec::new();
    {
        // A directory whose name is a marker, holding a file whose name and contents are markers.
        let dname = format!("dir-{}", mk(&mut markers));
        let d = fs
            .mkdir(&ROOT, ROOT_INO, dname.as_bytes(), 0o755, 0)
            .unwrap();
        fs.setxattr(
            &ROOT,
            d.ino,
            format!("user.{}", mk(&mut markers)).as_bytes(),
            mk(&mut markers).as_bytes(),
            0,
        )
        .unwrap();
        let fname = format!("file-{}", mk(&mut markers));
        let body = format!("contents {} end", mk(&mut markers)).repeat(300);
        let (a, fh) = fs
            .create(&ROOT, d.ino, fname.as_bytes(), 0o644, 0, libc::O_RDWR)
            .unwrap();
        fs.write(a.ino, fh, 0, body.as_bytes()).unwrap();
        fs.setxattr(
            &ROOT,
            a.ino,
            format!("user.{}", mk(&mut markers)).as_bytes(),
            mk(&mut markers).repeat(50).as_bytes(),
            0,
        )
        .unwrap();
        fs.fsync(a.ino, fh, false).unwrap();
        fs.release(a.ino, fh).unwrap();
        expect.push((a.ino, body.into_bytes()));

        // Small inline file.
        let sname = mk(&mut markers);
        let small = mk(&mut markers);
        let (a, fh) = fs
            .create(&ROOT, ROOT_INO, sname.as_bytes(), 0o600, 0, libc::O_RDWR)
            .unwrap();
        fs.write(a.ino, fh, 0, small.as_bytes()).unwrap();
        fs.fsync(a.ino, fh, false).unwrap();
        fs.release(a.ino, fh).unwrap();
        expect.push((a.ino, small.into_bytes()));

        // 1 MiB of one marker repeated.
        let big = mk(&mut markers).repeat((1 << 20) / 16);
        assert_eq!(big.len(), 1 << 20);
        let (a, fh) = fs
            .create(
                &ROOT,
                ROOT_INO,
                format!("big-{}", mk(&mut markers)).as_bytes(),
                0o644,
                0,
                libc::O_RDWR,
            )
            .unwrap();
        for (k, piece) in big.as_bytes().chunks(128 * 1024).enumerate() {
            fs.write(a.ino, fh, (k * 128 * 1024) as u64, piece).unwrap();
        }
        fs.fsync(a.ino, fh, false).unwrap();
        fs.release(a.ino, fh).unwrap();
        expect.push((a.ino, big.into_bytes()));

        // Symlinks: marker name, marker target (short and long).
        fs.symlink(
            &ROOT,
            d.ino,
            mk(&mut markers).as_bytes(),
            mk(&mut markers).as_bytes(),
        )
        .unwrap();
        fs.symlink(
            &ROOT,
            ROOT_INO,
            format!("ln-{}", mk(&mut markers)).as_bytes(),
            format!("/x/{}", mk(&mut markers)).repeat(100).as_bytes(),
        )
        .unwrap();
        // A hard link and a renamed entry: names are only ever stored sealed.
        fs.link(&ROOT, expect[1].0, d.ino, mk(&mut markers).as_bytes())
            .unwrap();
        let (a, fh) = fs
            .create(
                &ROOT,
                ROOT_INO,
                mk(&mut markers).as_bytes(),
                0o644,
                0,
                libc::O_RDWR,
            )
            .unwrap();
        fs.release(a.ino, fh).unwrap();
        let old = markers.last().unwrap().clone();
        let new = mk(&mut markers);
        fs.rename(&ROOT, ROOT_INO, old.as_bytes(), d.ino, new.as_bytes(), 0)
            .unwrap();
        // Many entries in one directory with marker names.
        for _ in 0..50 {
            fs.mknod(
                &ROOT,
                d.ino,
                mk(&mut markers).as_bytes(),
                libc::S_IFREG | 0o644,
                0,
                0,
            )
            .unwrap();
        }
        fs.sync_all().unwrap();
    }
    fs.close().unwrap();
    drop(fs);

    let mut top: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    let allowed = ["lock", "meta", "objects", "superblock", "superblock.bak"];
    for name in &top {
        assert!(
            allowed.contains(&name.as_str()),
            "unexpected top-level name {name} (have {top:?})"
        );
    }
    for must in ["meta", "objects", "superblock", "superblock.bak"] {
        assert!(
            top.iter().any(|t| t == must),
            "{must} missing (have {top:?})"
        );
    }

    let mut files = Vec::new();
    files_under(&dir, &mut files);
    let mut total = 0usize;
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        total += bytes.len();
        for mk in &markers {
            assert!(
                !contains(&bytes, mk.as_bytes()),
                "marker {mk} found in {} (backing file)",
                f.display()
            );
            let raw = hex::decode(mk).unwrap();
            assert!(
                !contains(&bytes, &raw),
                "marker {mk} (raw bytes) found in {}",
                f.display()
            );
        }
        let name = f.strip_prefix(&dir).unwrap().to_string_lossy().into_owned();
        for mk in &markers {
            assert!(
                !name.contains(mk.as_str()),
                "marker {mk} in a backing file name {name}"
            );
        }
    }
    assert!(
        total > 1 << 20,
        "backing directory holds only {total} bytes: where did the data go?"
    );

    // The data is all there.
    let fs = Filesystem::open(&dir, &KEY, &OpenOptions::default(), &Sled).unwrap();
    for (ino, want) in &expect {
        assert!(
            &fs.read(*ino, 0, 0, 2 << 20).unwrap() == want,
            "inode {ino} reads back different bytes"
        );
    }
    fs.close().unwrap();
}
