//! The io_uring transport: when the kernel allows FUSE over io_uring (the fuse module's
//! `enable_uring`), the daemon serves requests from one pinned ring thread per CPU, by default
//! or with `-o uring`, and every kind of request works through it; when it does not, or with
//! `-o nouring`, the mount serves over `/dev/fuse`. The rest of the suite runs over io_uring
//! in scripts/test.sh's second pass, which switches `enable_uring` on (and passes
//! `DIGIMEDFS_TEST_MOUNT_OPTIONS=uring`, so that a kernel refusing it is logged as a warning).

use digimedfs_tests::{errno_of, random_bytes, set_xattr, TestFs};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};

/// Names of the daemon's threads.
fn thread_names(pid: i32) -> Vec<String> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

/// What the daemon of `mountpoint` logged (as root, to /var/log/digimedfs), for assertion
/// messages: a missing ring thread says why there.
fn daemon_log(mountpoint: &std::path::Path) -> String {
    let name = mountpoint
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "-");
    fs::read_to_string(format!("/var/log/digimedfs/{name}.log"))
        .unwrap_or_else(|e| format!("(no log of {name}: {e})"))
}

/// Number of the daemon's io_uring ring threads.
fn ring_threads(pid: i32) -> usize {
    thread_names(pid)
        .iter()
        .filter(|n| n.starts_with("digimedfs-ring"))
        .count()
}

/// Without a transport option a mount is served over io_uring exactly when the kernel allows
/// it; `nouring` keeps it on `/dev/fuse` either way (the last of `uring`/`nouring` wins, so it
/// also overrides the suite's `uring` in the second pass).
#[test]
fn io_uring_is_the_default_where_the_kernel_allows_it_and_nouring_opts_out() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let expected = if digimedfs::fuse::uring::kernel_allows() {
        cpus
    } else {
        0
    };
    let mut fs_ = TestFs::with_options(&[]);
    let pid = fs_.daemon_pid().expect("daemon pid");
    assert_eq!(
        ring_threads(pid),
        expected,
        "default mount: one ring thread per CPU where the kernel allows io_uring, else none; \
         threads {:?}; log:\n{}",
        thread_names(pid),
        daemon_log(fs_.mountpoint())
    );
    fs::write(fs_.path("f"), b"default transport").expect("write");
    fs_.unmount();

    fs_.mount_with(&["nouring"]);
    let pid = fs_.daemon_pid().expect("daemon pid");
    assert_eq!(
        ring_threads(pid),
        0,
        "nouring: no ring threads; threads {:?}",
        thread_names(pid)
    );
    assert_eq!(
        fs::read(fs_.path("f")).expect("read over /dev/fuse"),
        b"default transport"
    );
    fs_.unmount();
}

#[test]
fn uring_option_serves_every_request_kind_or_falls_back() {
    let fs_ = TestFs::with_options(&["uring"]);
    let pid = fs_.daemon_pid().expect("daemon pid");
    let rings = ring_threads(pid);
    if digimedfs::fuse::uring::kernel_allows() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            rings,
            cpus,
            "one ring thread per CPU when the kernel allows it; threads {:?}; log:\n{}",
            thread_names(pid),
            daemon_log(fs_.mountpoint())
        );
    } else {
        assert_eq!(
            rings, 0,
            "no ring threads when the kernel does not allow io_uring"
        );
    }

    // Create, write, read back (beyond one block and at an offset), truncate.
    let f = fs_.path("file");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(&f, &data).expect("write");
    assert_eq!(fs::read(&f).expect("read"), data);
    let h = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&f)
        .expect("open");
    h.write_all_at(b"xyz", 70_000).expect("pwrite");
    let mut back = [0u8; 3];
    h.read_exact_at(&mut back, 70_000).expect("pread");
    assert_eq!(&back, b"xyz");
    h.set_len(1000).expect("truncate");
    h.sync_all().expect("fsync");
    drop(h);
    assert_eq!(fs::metadata(&f).expect("stat").len(), 1000);

    // Directories, renames, links, symlinks, modes, xattrs, listing.
    fs::create_dir(fs_.path("d")).expect("mkdir");
    fs::rename(&f, fs_.path("d/moved")).expect("rename");
    fs::hard_link(fs_.path("d/moved"), fs_.path("d/link")).expect("link");
    assert_eq!(fs::metadata(fs_.path("d/link")).expect("stat").len(), 1000);
    std::os::unix::fs::symlink("moved", fs_.path("d/sym")).expect("symlink");
    assert_eq!(
        fs::read_link(fs_.path("d/sym")).expect("readlink"),
        std::path::Path::new("moved")
    );
    fs::set_permissions(fs_.path("d/moved"), fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(
        fs::metadata(fs_.path("d/moved"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );
    set_xattr(&fs_.path("d/moved"), "user.k", b"v");
    let mut names: Vec<String> = fs::read_dir(fs_.path("d"))
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["link", "moved", "sym"]);
    let many = fs_.path("many");
    fs::create_dir(&many).expect("mkdir many");
    for i in 0..300 {
        fs::write(many.join(format!("entry-with-a-longer-name-{i:04}")), b"x").expect("create");
    }
    assert_eq!(fs::read_dir(&many).expect("readdir").count(), 300);

    // Errors come back as errnos.
    let e = fs::read(fs_.path("missing")).expect_err("ENOENT");
    assert_eq!(errno_of(&e), libc::ENOENT);
    let e = fs::remove_dir(fs_.path("d")).expect_err("ENOTEMPTY");
    assert_eq!(errno_of(&e), libc::ENOTEMPTY);

    // Removal, and everything still there after a remount.
    fs::remove_file(fs_.path("d/link")).expect("unlink");
    let mut fs_ = fs_;
    fs_.remount();
    assert_eq!(fs::read(fs_.path("d/moved")).expect("read").len(), 1000);
    assert_eq!(
        fs::read_dir(fs_.path("many")).expect("readdir").count(),
        300
    );
    fs::remove_dir_all(fs_.path("many")).expect("rm -r");
    fs_.unmount();
}

/// Files written in sequence reach the daemon as large WRITEs from the kernel's writeback,
/// queued on the ring of whichever CPU sent them, and a WRITE may wait there for the daemon's
/// dirty data to be written back; several writers at once, large and small files mixed, come
/// back intact after a remount.
#[test]
fn large_writes_from_several_writers_come_back_intact() {
    let mut fs_ = TestFs::with_options(&["uring"]);
    let bigs: Vec<Vec<u8>> = (0..3)
        .map(|i| random_bytes((20 << 20) + 4099 * i))
        .collect();
    let writers: Vec<_> = bigs
        .iter()
        .enumerate()
        .map(|(i, data)| {
            let path = fs_.path(format!("big-{i}"));
            let data = data.clone();
            std::thread::spawn(move || {
                let mut f = fs::File::create(&path).expect("create big");
                for piece in data.chunks(1 << 20) {
                    f.write_all(piece).expect("write big");
                }
                f.sync_all().expect("fsync big");
            })
        })
        .collect();
    let smalls: Vec<Vec<u8>> = (0..100).map(|i| random_bytes(500 + 61 * i)).collect();
    for (i, s) in smalls.iter().enumerate() {
        fs::write(fs_.path(format!("small-{i}")), s).expect("write small");
    }
    for w in writers {
        w.join().expect("writer thread");
    }
    fs_.remount();
    for (i, want) in bigs.iter().enumerate() {
        let got = fs::read(fs_.path(format!("big-{i}"))).expect("read big");
        assert_eq!(got.len(), want.len(), "big-{i} length");
        assert!(got == *want, "big-{i} differs after a remount");
    }
    for (i, want) in smalls.iter().enumerate() {
        let got = fs::read(fs_.path(format!("small-{i}"))).expect("read small");
        assert!(got == *want, "small-{i} differs after a remount");
    }
    fs_.unmount();
}

/// A file read in sequence after a remount comes through the kernel's readahead in large READs
/// (up to 1 MiB over `/dev/fuse`, whose readahead the daemon raises as root; 128 KiB over
/// io_uring), which ring threads hand to helper threads; the data comes back intact, also
/// while small reads of other files are answered alongside.
#[test]
fn large_reads_after_a_remount_come_back_intact() {
    let mut fs_ = TestFs::with_options(&["uring"]);
    let big = random_bytes(24 << 20);
    fs::write(fs_.path("big"), &big).expect("write big");
    let smalls: Vec<Vec<u8>> = (0..50).map(|i| random_bytes(1000 + 97 * i)).collect();
    for (i, s) in smalls.iter().enumerate() {
        fs::write(fs_.path(format!("small-{i}")), s).expect("write small");
    }
    fs_.remount();

    // The daemon raises its mount's readahead where it may write the knob (root, sysfs
    // writable), unless it serves the mount over io_uring.
    let dev = fs::metadata(fs_.mountpoint()).expect("stat mount").dev();
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let knob_c = digimedfs_tests::cpath(&knob);
    // SAFETY: geteuid has no preconditions; access reads a NUL-terminated path that lives
    // until the call returns.
    let writable =
        unsafe { libc::geteuid() == 0 && libc::access(knob_c.as_ptr(), libc::W_OK) == 0 };
    if writable && !digimedfs::fuse::uring::kernel_allows() {
        let kb = fs::read_to_string(&knob).expect("read the mount's readahead");
        assert_eq!(kb.trim(), "1024", "{knob}");
    }
    if digimedfs::fuse::uring::kernel_allows() {
        let pid = fs_.daemon_pid().expect("daemon pid");
        let helpers = thread_names(pid)
            .iter()
            .filter(|n| n.starts_with("digimedfs-read"))
            .count();
        assert!(
            helpers >= 1,
            "helper threads for large reads; threads {:?}",
            thread_names(pid)
        );
    }

    let reader = {
        let path = fs_.path("big");
        std::thread::spawn(move || fs::read(path).expect("read big"))
    };
    for round in 0..5 {
        for (i, s) in smalls.iter().enumerate() {
            let got = fs::read(fs_.path(format!("small-{i}"))).expect("read small");
            assert!(got == *s, "small-{i} differs in round {round}");
        }
    }
    let got = reader.join().expect("reader thread");
    assert_eq!(got.len(), big.len());
    assert!(got == big, "big file differs after a remount");
    fs_.unmount();
}
