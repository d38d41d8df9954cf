//! Confidentiality and integrity as seen from outside: no plaintext in the backing directory,
//! wrong keys refused, tampering detected, single-mount locking, crash recovery (including
//! that a crash does not leave previous block versions acceptable after the next mount).

use crate::workload::{git, git_commit, have};
use digimedfs_core::format::records::INLINE_MAX;
use digimedfs_tests::{
    daemon_pids, drop_caches, errno_of, is_mounted, process_alive, random_bytes, random_hex, run,
    set_xattr, wait_until, walk_files, TestFs, TIMEOUT,
};
use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every file and directory name under `dir`, and every file's bytes, checked for `markers`;
/// returns the findings.
fn find_markers(dir: &Path, markers: &[(&str, String)]) -> Vec<String> {
    let mut findings = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            for (what, m) in markers {
                if name.contains(m.as_str()) {
                    findings.push(format!(
                        "{what} marker in a backing name: {}",
                        e.path().display()
                    ));
                }
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    for file in walk_files(dir) {
        let data = fs::read(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
        for (what, m) in markers {
            if data.windows(m.len()).any(|w| w == m.as_bytes()) {
                findings.push(format!("{what} marker in plaintext in {}", file.display()));
            }
        }
    }
    findings
}

#[test]
fn no_plaintext_in_backing_after_workload() {
    let mut fs = TestFs::new();
    let markers: Vec<(&str, String)> = [
        "small content",
        "large content",
        "file name",
        "dir name",
        "symlink target",
        "xattr name",
        "xattr value",
        "git content",
        "git message",
        "sqlite row",
    ]
    .into_iter()
    .map(|what| (what, format!("MARK{}", random_hex(12))))
    .collect();
    let m = |what: &str| markers.iter().find(|(w, _)| *w == what).unwrap().1.clone();

    // Contents: an inline-sized file (at most INLINE_MAX bytes) and a large one (a data object)
    // with the marker at several offsets, including across a block boundary.
    fs::write(fs.path("small"), format!("secret: {}", m("small content"))).unwrap();
    let mut big = random_bytes(300_000);
    for off in [0usize, 4090, 100_000, 299_000] {
        let mk = m("large content");
        big[off..off + mk.len()].copy_from_slice(mk.as_bytes());
    }
    fs::write(fs.path("big"), &big).unwrap();
    // Also text-like content made of the marker repeated (compressible, low entropy): once
    // inline, once over INLINE_MAX (a data object).
    fs::write(fs.path("repeated"), m("large content").repeat(2000)).unwrap();
    let mk = m("large content");
    let repeated_big = mk.repeat(2000 + INLINE_MAX as usize / mk.len());
    fs::write(fs.path("repeated-big"), &repeated_big).unwrap();
    // Names, targets, xattrs.
    fs::create_dir(fs.path(m("dir name"))).unwrap();
    fs::write(
        fs.path(format!("{}/{}", m("dir name"), m("file name"))),
        b"x",
    )
    .unwrap();
    std::os::unix::fs::symlink(m("symlink target"), fs.path("link")).unwrap();
    set_xattr(
        &fs.path("small"),
        &format!("user.{}", m("xattr name")),
        m("xattr value").as_bytes(),
    );

    // Workloads that write the markers themselves.
    if have("git") {
        let home = fs.root_dir().join("home");
        fs::create_dir(&home).unwrap();
        git_commit(
            &home,
            &fs.path("repo"),
            &m("git content"),
            &m("git message"),
        );
        let out = run(git(&home, &fs.path("repo")).args(["log", "-1", "--format=%s"]));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            m("git message")
        );
    }
    if have("python3") {
        let script = "import sqlite3, sys\ncon = sqlite3.connect(sys.argv[1])\n\
                      con.execute('create table t (v text)')\n\
                      with con:\n    con.executemany('insert into t values (?)', [(sys.argv[2],)] * 100)\n";
        let out = run(Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(fs.path("db.sqlite"))
            .arg(m("sqlite row")));
        assert!(
            out.status.success(),
            "python3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Everything durable while still mounted...
    for f in ["small", "big", "repeated", "repeated-big"] {
        File::open(fs.path(f)).unwrap().sync_all().unwrap();
    }
    let live = find_markers(fs.backing(), &markers);
    assert!(
        live.is_empty(),
        "plaintext in the backing dir of a live mount:\n{}",
        live.join("\n")
    );

    // ...and after an unmount has flushed everything.
    fs.unmount();
    let cold = find_markers(fs.backing(), &markers);
    assert!(
        cold.is_empty(),
        "plaintext in the backing dir after unmount:\n{}",
        cold.join("\n")
    );

    // The data is all still there, so the scan looked at the real thing.
    fs.mount();
    assert_eq!(fs::read(fs.path("big")).unwrap(), big);
    assert!(fs::read(fs.path("repeated-big")).unwrap() == repeated_big.as_bytes());
    assert_eq!(
        fs::read_link(fs.path("link")).unwrap(),
        PathBuf::from(m("symlink target"))
    );
}

#[test]
fn wrong_key_is_refused() {
    let mut fs = TestFs::unmounted(&[]);
    let wrong = fs.root_dir().join("wrong.key");
    run(Command::new(digimedfs_tests::bin("digimedfs"))
        .arg("keygen")
        .arg(&wrong));
    let garbage = fs.root_dir().join("garbage.key");
    fs::write(&garbage, "this is not a key\n").unwrap();
    let missing = fs.root_dir().join("missing.key");

    for (what, key) in [
        ("wrong key", &wrong),
        ("garbage key file", &garbage),
        ("missing key file", &missing),
    ] {
        let out = run(&mut fs.mount_command(key, fs.mountpoint(), &[]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{what}: exit status {} (stderr: {stderr})",
            out.status
        );
        assert!(
            stderr.to_lowercase().contains("key"),
            "{what}: stderr does not explain the problem: {stderr:?}"
        );
        assert!(
            !is_mounted(fs.mountpoint()),
            "{what}: something got mounted"
        );
        assert!(
            wait_until(TIMEOUT, || daemon_pids(fs.mountpoint())
                .iter()
                .all(|&p| !process_alive(p))),
            "{what}: a daemon stayed behind"
        );
        eprintln!("{what}: {}", stderr.trim());
    }
    // The right key still works afterwards (a failed attempt leaves no lock behind).
    fs.mount();
    fs::write(fs.path("ok"), b"ok").unwrap();
}

/// The data objects in the backing directory.
fn objects(backing: &Path) -> BTreeSet<PathBuf> {
    walk_files(&backing.join("objects")).into_iter().collect()
}

#[test]
fn tampered_object_gives_eio() {
    let fs = TestFs::new();
    fs::write(fs.path("small"), b"small and inline").unwrap();
    let other = random_bytes(100_000);
    let mut f = File::create(fs.path("other")).unwrap();
    f.write_all(&other).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let before = objects(fs.backing());
    let big = random_bytes(256 * 1024);
    let mut f = File::create(fs.path("big")).unwrap();
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let new: Vec<PathBuf> = objects(fs.backing()).difference(&before).cloned().collect();
    assert_eq!(
        new.len(),
        1,
        "expected exactly one new object for `big`, found {new:?}"
    );
    let object = &new[0];
    let len = fs::metadata(object).unwrap().len();
    assert!(
        len >= 256 * 1024,
        "object {} is only {len} bytes",
        object.display()
    );

    // Flip one byte in the second block on storage.
    let obj = OpenOptions::new()
        .read(true)
        .write(true)
        .open(object)
        .unwrap();
    let mut byte = [0u8; 1];
    obj.read_exact_at(&mut byte, 5000).unwrap();
    byte[0] ^= 0x01;
    obj.write_all_at(&byte, 5000).unwrap();
    obj.sync_all().unwrap();
    drop(obj);
    drop_caches();

    let pid = fs.daemon_pid().expect("daemon pid");
    match fs::read(fs.path("big")) {
        Err(e) => assert_eq!(errno_of(&e), libc::EIO, "reading a tampered file: {e}"),
        Ok(data) if data == big => panic!(
            "reading the tampered file succeeded with the original data: the tampered block was \
             not re-read from storage or not verified"
        ),
        Ok(_) => panic!("reading the tampered file returned corrupted data without an error"),
    }
    // Other files are fine, the daemon lives on, the filesystem still works.
    assert_eq!(fs::read(fs.path("other")).unwrap(), other);
    assert_eq!(fs::read(fs.path("small")).unwrap(), b"small and inline");
    assert!(
        process_alive(pid),
        "daemon died after reading a tampered block"
    );
    assert!(is_mounted(fs.mountpoint()));
    fs::write(fs.path("after"), b"still writable").unwrap();
    assert_eq!(fs::read(fs.path("after")).unwrap(), b"still writable");
    // Reading it again still fails (no caching of a bad block as good).
    let e = fs::read(fs.path("big")).expect_err("second read of the tampered file succeeded");
    assert_eq!(errno_of(&e), libc::EIO);
}

#[test]
fn second_mount_of_same_backing_is_refused() {
    let fs = TestFs::new();
    fs::write(fs.path("f"), b"first mount").unwrap();
    let mnt2 = fs.root_dir().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let out = run(&mut fs.mount_command(fs.key_file(), &mnt2, &[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "second mount succeeded; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.to_lowercase().contains("already mounted"),
        "message does not say it is already mounted: {stderr:?}"
    );
    assert!(!is_mounted(&mnt2), "second mountpoint got mounted");
    assert!(wait_until(TIMEOUT, || daemon_pids(&mnt2)
        .iter()
        .all(|&p| !process_alive(p))));
    // The first mount is unharmed.
    assert_eq!(fs::read(fs.path("f")).unwrap(), b"first mount");
    fs::write(fs.path("g"), b"still fine").unwrap();
}

#[test]
fn sigkill_daemon_then_remount() {
    let mut fs = TestFs::new();
    let data = random_bytes(300_000);
    let mut f = File::create(fs.path("durable")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    fs::create_dir(fs.path("dir")).unwrap();
    let mut f = File::create(fs.path("dir/small")).unwrap();
    f.write_all(b"small and synced").unwrap();
    f.sync_all().unwrap();
    drop(f);
    File::open(fs.path("dir")).unwrap().sync_all().unwrap();
    File::open(fs.mountpoint()).unwrap().sync_all().unwrap();

    let pid = fs.daemon_pid().expect("daemon pid");
    // SAFETY: kill with plain integers; `pid` is the digimedfs daemon of our own mount.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert!(
        wait_until(TIMEOUT, || !process_alive(pid)),
        "daemon survived SIGKILL"
    );
    let e = fs::metadata(fs.path("durable")).expect_err("dead mount still answers");
    // The kernel answers ENOTCONN, or ECONNABORTED for a request caught in flight, or (over
    // io_uring, `-o uring`) ECANCELED for one that was put on a queue of the dead daemon.
    assert!(
        [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED].contains(&errno_of(&e)),
        "access to a dead mount: {e}"
    );

    let out = run(Command::new("fusermount3").arg("-u").arg(fs.mountpoint()));
    assert!(
        out.status.success(),
        "fusermount3 -u on the dead mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(TIMEOUT, || !is_mounted(fs.mountpoint())));
    fs.mark_unmounted();

    // A plain remount (no force_unlock): the dead process's lock went with it.
    fs.mount();
    assert!(
        fs::read(fs.path("durable")).unwrap() == data,
        "fsynced file damaged after SIGKILL"
    );
    assert_eq!(fs::read(fs.path("dir/small")).unwrap(), b"small and synced");
    fs::write(fs.path("new"), b"works").unwrap();
    assert_eq!(fs::read(fs.path("new")).unwrap(), b"works");
}

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Issue 22 finding 2: `meta/` and `objects/` copied while unmounted and put back after the
/// user changed and deleted files are refused by the next mount, with a message naming both
/// epochs and an fsck command that works and reports the same; nothing gets mounted.
#[test]
fn rolled_back_metadata_store_is_refused_at_mount() {
    let mut fs = TestFs::new();
    fs::write(fs.path("kept"), b"version one").unwrap();
    fs::write(fs.path("deleted-later"), random_bytes(200_000)).unwrap();
    fs.unmount();
    let t1 = fs.root_dir().join("t1");
    copy_tree(&fs.backing().join("meta"), &t1.join("meta"));
    copy_tree(&fs.backing().join("objects"), &t1.join("objects"));

    fs.mount();
    fs::write(fs.path("kept"), b"version two, longer").unwrap();
    fs::set_permissions(
        fs.path("kept"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    fs::remove_file(fs.path("deleted-later")).unwrap();
    fs.unmount();

    for d in ["meta", "objects"] {
        fs::remove_dir_all(fs.backing().join(d)).unwrap();
        copy_tree(&t1.join(d), &fs.backing().join(d));
    }
    let out = run(&mut fs.mount_command(fs.key_file(), fs.mountpoint(), &[]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("mount: {}", stderr.trim());
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        !is_mounted(fs.mountpoint()),
        "the rolled-back store got mounted"
    );
    assert!(
        stderr.contains("metadata store belongs to epoch")
            && stderr.contains("but the superblock is at epoch")
            && stderr.contains("rolled back"),
        "{stderr}"
    );
    // The hint is a command that runs as printed (the binary is fsck-digimed before install).
    let hint = stderr
        .split("Check it with: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no fsck hint in {stderr:?}"))
        .trim();
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"fsck.digimed"), "{hint}");
    let out = run(Command::new(digimedfs_tests::bin("fsck-digimed")).args(&words[1..]));
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(4), "{report}");
    assert!(report.contains("epoch_mismatch"), "{report}");
    assert!(
        wait_until(TIMEOUT, || daemon_pids(fs.mountpoint())
            .iter()
            .all(|&p| !process_alive(p))),
        "a daemon stayed behind"
    );
}

/// SIGKILLs the daemon of `fs` and tears the dead mount down.
fn kill_and_unmount(fs: &mut TestFs) {
    let pid = fs.daemon_pid().expect("daemon pid");
    // SAFETY: kill with plain integers; `pid` is the digimedfs daemon of our own mount.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    assert!(
        wait_until(TIMEOUT, || !process_alive(pid)),
        "daemon survived SIGKILL"
    );
    let out = run(Command::new("fusermount3").arg("-u").arg(fs.mountpoint()));
    assert!(
        out.status.success(),
        "fusermount3 -u on the dead mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_until(TIMEOUT, || !is_mounted(fs.mountpoint())));
    fs.mark_unmounted();
}

/// `fsck-digimed -n --json` of the filesystem: (success, stdout).
fn fsck_json(fs: &TestFs) -> (bool, String) {
    let out = run(Command::new(digimedfs_tests::bin("fsck-digimed"))
        .arg("-n")
        .arg("--json")
        .arg("--key-file")
        .arg(fs.key_file())
        .arg(fs.backing()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Issue 22, finding 4: 48 MiB written without fsync, the daemon SIGKILLed a second later
/// (block entries of the last writebacks still accept "was a hole"), a remount, a clean
/// unmount, and then storage zeroes the object. Every block must read as EIO, and fsck must
/// report them. Before, the remount kept the "hole" versions acceptable for good: the zeroed
/// blocks read as zeros without an error and fsck was clean.
#[test]
fn zeroed_object_after_crash_and_remount_is_eio() {
    const LEN: usize = 48 << 20;
    let data = random_bytes(LEN);
    let mut fs = None;
    // The 5 s commit cycle may make everything durable before the kill (fsck -n then counts
    // no previous versions); then try again.
    for attempt in 0..3 {
        let mut t = TestFs::new();
        let mut f = File::create(t.path("f")).unwrap();
        for piece in data.chunks(1 << 20) {
            f.write_all(piece).unwrap();
        }
        drop(f);
        std::thread::sleep(std::time::Duration::from_secs(1));
        kill_and_unmount(&mut t);
        let (_, report) = fsck_json(&t);
        if !report.contains("\"previous_versions\":0,") {
            fs = Some(t);
            break;
        }
        eprintln!("attempt {attempt}: no previous versions left at the kill; again");
    }
    let mut fs = fs.expect("no attempt left previous versions at the kill");
    // The remount resolves them; a clean unmount. The blocks that hold data now are the
    // ones that reached storage (the others were still in the daemon's memory at the kill
    // and are holes, which read as zeros whatever storage does).
    fs.mount();
    let stored: Vec<u64> = {
        let f = File::open(fs.path("f")).unwrap();
        let mut buf = vec![0u8; 4096];
        let size = f.metadata().unwrap().len().min(LEN as u64);
        (0..size)
            .step_by(4096)
            .filter(|&off| {
                let n = f.read_at(&mut buf, off).unwrap();
                let want = &data[off as usize..(off as usize + n)];
                if buf[..n] == *want {
                    true
                } else {
                    assert!(
                        buf[..n].iter().all(|b| *b == 0),
                        "block at {off}: wrong data"
                    );
                    false
                }
            })
            .collect()
    };
    assert!(!stored.is_empty(), "nothing of the file reached storage");
    fs.unmount();
    // Storage zeroes the object.
    let objects: Vec<PathBuf> = walk_files(&fs.backing().join("objects"));
    assert_eq!(objects.len(), 1, "{objects:?}");
    let len = fs::metadata(&objects[0]).unwrap().len();
    fs::write(&objects[0], vec![0u8; len as usize]).unwrap();

    fs.mount();
    let f = File::open(fs.path("f")).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut read_ok = 0u64;
    for &off in &stored {
        match f.read_at(&mut buf, off) {
            Ok(_) => read_ok += 1,
            Err(e) => assert_eq!(errno_of(&e), libc::EIO, "block at {off}: {e}"),
        }
    }
    drop(f);
    assert_eq!(
        read_ok,
        0,
        "{read_ok} of {} zeroed blocks read back without an error",
        stored.len()
    );
    fs.unmount();
    let (clean, report) = fsck_json(&fs);
    assert!(
        !clean && report.contains("damaged_block"),
        "fsck -n does not report the zeroed blocks: {report}"
    );
}
