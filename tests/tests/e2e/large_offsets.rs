//! Data at very large offsets (xfstests generic/525, bug B5): with 4 KiB blocks, block index
//! 2^32 − 1 starts at 16 TiB − 4 KiB, where an ext4 backing file ends. Data written there, across
//! that point and at 2^63 − 2 must read back after a remount, fsck must find it all, and reads
//! at any offset up to 2^63 − 1 must succeed (0 bytes past the end of the file).

use digimedfs_tests::{bin, run, TestFs};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

const BS: u64 = 4096;
/// The largest file size (and offset + 1) Linux allows.
const MAX: u64 = i64::MAX as u64;

/// (name, offset, byte): below, at and above block 2^32 − 1, straddling the 16 TiB − 4 KiB
/// segment boundary of the object, and the last bytes a file can have.
fn cases() -> Vec<(&'static str, u64, u8, usize)> {
    vec![
        ("below", (u64::from(u32::MAX) - 1) * BS, 0x65, 100),
        ("at", u64::from(u32::MAX) * BS, 0x66, 100),
        ("above", (u64::from(u32::MAX) + 1) * BS, 0x67, 100),
        ("straddle", u64::from(u32::MAX) * BS - 50, 0x68, 100),
        ("last", MAX - 1, 0x61, 1),
        ("last_block", MAX - BS, 0x62, 4095),
    ]
}

fn write_at(p: &Path, data: &[u8], offset: u64) {
    let f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    f.write_all_at(data, offset)
        .unwrap_or_else(|e| panic!("pwrite {} at {offset}: {e}", p.display()));
    f.sync_all()
        .unwrap_or_else(|e| panic!("fsync {}: {e}", p.display()));
}

fn read_at(p: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f
            .read_at(&mut buf[done..], offset + done as u64)
            .unwrap_or_else(|e| panic!("pread {} at {offset}: {e}", p.display()));
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    buf
}

fn fsck_clean(key: &Path, backing: &Path) -> String {
    let out = run(Command::new(bin("fsck-digimed"))
        .arg("-n")
        .arg("--key-file")
        .arg(key)
        .arg(backing));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "fsck-digimed -n is not clean:\n{text}"
    );
    text
}

#[test]
fn data_at_large_offsets_survives_remount_and_fsck() {
    let mut fs = TestFs::new();
    for (name, off, byte, len) in cases() {
        let p = fs.path(name);
        // Some data at the start too, so the object has both its file and segments.
        write_at(&p, &[1u8; 70_000], 0);
        write_at(&p, &vec![byte; len], off);
        assert_eq!(fs::metadata(&p).unwrap().len(), off + len as u64, "{name}");
    }
    fs.remount();
    for (name, off, byte, len) in cases() {
        let p = fs.path(name);
        assert_eq!(fs::metadata(&p).unwrap().len(), off + len as u64, "{name}");
        assert_eq!(read_at(&p, off, len), vec![byte; len], "{name} at {off}");
        assert_eq!(read_at(&p, 0, 70_000), vec![1u8; 70_000], "{name} head");
        // Holes around the data read as zeros, past the end as nothing.
        if off >= 8 {
            assert_eq!(read_at(&p, off - 8, 8), vec![0u8; 8], "{name} before");
        }
        if off + (len as u64) < MAX {
            // (A read from 2^63 − 1 on is the kernel's EINVAL on every filesystem.)
            assert_eq!(
                read_at(&p, off + len as u64, 1),
                Vec::<u8>::new(),
                "{name} EOF"
            );
        }
        assert_eq!(
            read_at(&p, MAX - 1, 1).len(),
            usize::from(off + len as u64 == MAX)
        );
    }
    // Shrinking drops the data beyond the end; growing again reads zeros there.
    let p = fs.path("at");
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(u64::from(u32::MAX) * BS + 10).unwrap();
    f.set_len(u64::from(u32::MAX) * BS + 100).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut want = vec![0x66u8; 10];
    want.resize(100, 0);
    assert_eq!(read_at(&p, u64::from(u32::MAX) * BS, 100), want);
    fs.unmount();
    let report = fsck_clean(fs.key_file(), fs.backing());
    // The sum of the sizes (two files of 2^63 − 1 bytes and more) is printed, not wrapped.
    let total: u128 = cases()
        .iter()
        .map(|(_, o, _, l)| u128::from(*o) + *l as u128)
        .sum();
    assert!(
        report.contains(&format!(" {total} bytes")),
        "fsck total bytes, want {total}:\n{report}"
    );
    fs.mount();
    assert_eq!(read_at(&p, u64::from(u32::MAX) * BS, 100), want);
    // Unlinking removes the object with all its segments.
    for (name, ..) in cases() {
        fs::remove_file(fs.path(name)).unwrap();
    }
    fs.unmount();
    let mut left = Vec::new();
    for sub in fs::read_dir(fs.backing().join("objects")).unwrap() {
        for e in fs::read_dir(sub.unwrap().path()).unwrap() {
            left.push(e.unwrap().path());
        }
    }
    assert!(left.is_empty(), "objects left after unlink: {left:?}");
    fsck_clean(fs.key_file(), fs.backing());
}

#[test]
fn sparse_file_of_maximal_size_reads_everywhere() {
    let fs = TestFs::new();
    let p = fs.path("huge");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&p)
        .unwrap();
    f.set_len(MAX).unwrap();
    drop(f);
    // Any offset below the size reads zeros; no EINVAL (reads ending past 2^63 − 1 are the
    // kernel's EINVAL on every filesystem, so the lengths here stay within it).
    for off in [
        0,
        u64::from(u32::MAX) * BS,
        1 << 44,
        1 << 62,
        MAX - 4096,
        MAX - 1,
    ] {
        let len = (MAX - off).min(4096) as usize;
        assert_eq!(read_at(&p, off, len), vec![0u8; len], "at {off}");
    }
}
