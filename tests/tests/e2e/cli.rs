//! The command lines: mkfs-digimed's checks, keygen, mount option errors.

use digimedfs_tests::{bin, is_mounted, random_bytes, run, run_ok, TestFs};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn mkfs(key: &Path, backing: &Path, extra: &[&str]) -> Output {
    run(Command::new(bin("mkfs-digimed"))
        .args(extra)
        .args(["--tenant", "cli-test", "--key-file"])
        .arg(key)
        .arg(backing))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn mkfs_rejects_bad_block_size() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    run(Command::new(bin("digimedfs")).arg("keygen").arg(&key));
    let backing = dir.path().join("b");
    fs::create_dir(&backing).unwrap();
    for bad in ["1000", "2048", "131072", "5000", "abc"] {
        let out = mkfs(&key, &backing, &["-b", bad]);
        assert_eq!(
            out.status.code(),
            Some(1),
            "-b {bad}: {} ({})",
            out.status,
            stderr(&out)
        );
        assert!(
            stderr(&out).to_lowercase().contains("block size"),
            "-b {bad}: message does not mention the block size: {:?}",
            stderr(&out)
        );
        assert!(
            fs::read_dir(&backing).unwrap().next().is_none(),
            "-b {bad} wrote something"
        );
    }
}

#[test]
fn mkfs_nonempty_dir_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    run(Command::new(bin("digimedfs")).arg("keygen").arg(&key));
    let backing = dir.path().join("b");
    fs::create_dir(&backing).unwrap();
    fs::write(backing.join("precious"), b"do not lose me").unwrap();

    let out = mkfs(&key, &backing, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "non-empty dir without -f: {}",
        out.status
    );
    assert!(
        !stderr(&out).trim().is_empty(),
        "no message for a non-empty dir"
    );
    assert_eq!(
        fs::read(backing.join("precious")).unwrap(),
        b"do not lose me"
    );
    assert!(!backing.join("superblock").exists());

    // -f replaces only a digimedfs filesystem: the user's file is neither mixed into a new
    // filesystem nor deleted.
    let out = mkfs(&key, &backing, &["-f"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "-f over foreign files: {}",
        out.status
    );
    assert!(
        stderr(&out).contains("holds files that are not part of a digimedfs filesystem (precious)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        fs::read(backing.join("precious")).unwrap(),
        b"do not lose me"
    );
    assert!(!backing.join("superblock").exists());
    fs::remove_file(backing.join("precious")).unwrap();

    let out = mkfs(&key, &backing, &["-f"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "with -f: {} ({})",
        out.status,
        stderr(&out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("digimedfs filesystem created"),
        "mkfs output: {stdout:?}"
    );
    assert!(backing.join("superblock").exists());

    // An existing filesystem is also protected without -f.
    let out = mkfs(&key, &backing, &["-q"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "mkfs over a filesystem without -f: {}",
        out.status
    );
    let out = mkfs(&key, &backing, &["-q", "-f", "-L", "relabelled"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        out.stdout.is_empty(),
        "-q printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Missing required argument: exit 1 too.
    let out = run(Command::new(bin("mkfs-digimed"))
        .arg("--key-file")
        .arg(&key)
        .arg(&backing));
    assert_eq!(
        out.status.code(),
        Some(1),
        "missing --tenant: {}",
        out.status
    );
}

#[test]
fn mkfs_force_reformats_and_64k_blocks_work() {
    let mut fs = TestFs::unmounted(&[]);
    fs.mount();
    fs::write(fs.path("old"), b"old data").unwrap();
    fs.unmount();
    let out = mkfs(fs.key_file(), fs.backing(), &["-q", "-f", "-b", "64K"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    fs.mount();
    assert!(!fs.path("old").exists(), "mkfs -f kept old data");
    let data = random_bytes(300_000);
    fs::write(fs.path("big"), &data).unwrap();
    fs.remount();
    assert!(fs::read(fs.path("big")).unwrap() == data);
}

#[test]
fn keygen_and_mount_option_errors() {
    let fs = TestFs::unmounted(&[]);
    let key = fs.root_dir().join("k2");
    let out = run(Command::new(bin("digimedfs")).arg("keygen").arg(&key));
    assert!(out.status.success(), "keygen: {}", stderr(&out));
    let text = fs::read_to_string(&key).unwrap();
    assert!(
        text.starts_with("digimedfs-key-v1 "),
        "key file format: {text:?}"
    );
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = run(Command::new(bin("digimedfs")).arg("keygen").arg(&key));
    assert_eq!(
        out.status.code(),
        Some(1),
        "keygen over an existing file must fail"
    );
    assert_eq!(
        fs::read_to_string(&key).unwrap(),
        text,
        "keygen overwrote a key"
    );

    let out = run(&mut fs.mount_command(fs.key_file(), fs.mountpoint(), &["bogus_option"]));
    assert_eq!(out.status.code(), Some(1), "unknown option: {}", out.status);
    assert!(
        stderr(&out).contains("bogus_option"),
        "message: {:?}",
        stderr(&out)
    );
    assert!(!is_mounted(fs.mountpoint()));

    let out = run(&mut fs.mount_command(fs.key_file(), &fs.root_dir().join("no-such-dir"), &[]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "missing mountpoint: {}",
        out.status
    );
    assert!(!stderr(&out).trim().is_empty());
}

#[test]
fn read_only_mount() {
    let mut fs = TestFs::unmounted(&["ro"]);
    // Put something in first through a read-write mount.
    let out = run(&mut fs.mount_command(fs.key_file(), fs.mountpoint(), &["rw"]));
    assert!(out.status.success(), "{}", stderr(&out));
    fs.mark_mounted();
    fs::write(fs.path("f"), b"written rw").unwrap();
    fs.unmount();
    fs.mount();
    assert_eq!(fs::read(fs.path("f")).unwrap(), b"written rw");
    let e = fs::write(fs.path("g"), b"x").unwrap_err();
    assert_eq!(digimedfs_tests::errno_of(&e), libc::EROFS);
    let e = fs::OpenOptions::new()
        .write(true)
        .open(fs.path("f"))
        .unwrap_err();
    assert_eq!(digimedfs_tests::errno_of(&e), libc::EROFS);
}

/// A daemon that finishes closing after its mount point was unmounted from outside must not
/// unmount whatever was mounted there in the meantime (a remount of the project, say):
/// programs would then write into the bare mount point directory, unencrypted. The old daemon
/// is held stopped across the unmount and the new mount, then let go to close and exit.
#[test]
fn a_late_exiting_daemon_leaves_a_new_mount_on_its_mountpoint_alone() {
    use digimedfs_tests::{process_alive, wait_until};
    use std::time::Duration;
    let mut old = TestFs::new();
    fs::write(old.path("old.txt"), b"old").expect("write old");
    let old_pid = old.daemon_pid().expect("old daemon");
    // SAFETY: kill takes plain integers; `old_pid` is our own test daemon.
    assert_eq!(unsafe { libc::kill(old_pid, libc::SIGSTOP) }, 0);
    let out = run(Command::new("fusermount3").arg("-u").arg(old.mountpoint()));
    if !out.status.success() {
        // SAFETY: as above.
        unsafe { libc::kill(old_pid, libc::SIGCONT) };
        panic!("fusermount3 -u: {}", String::from_utf8_lossy(&out.stderr));
    }
    old.mark_unmounted();

    let new = TestFs::unmounted(&[]);
    let out = run(&mut new.mount_command(new.key_file(), old.mountpoint(), &[]));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(old_pid, libc::SIGCONT) }, 0);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt = old.mountpoint().to_path_buf();
    assert!(wait_until(Duration::from_secs(10), || is_mounted(&mnt)));
    fs::write(mnt.join("new.txt"), b"new").expect("write through the new mount");

    assert!(
        wait_until(Duration::from_secs(30), || !process_alive(old_pid)),
        "the old daemon did not exit"
    );
    assert!(
        is_mounted(&mnt),
        "the old daemon's exit unmounted the new mount"
    );
    assert_eq!(fs::read(mnt.join("new.txt")).expect("read new.txt"), b"new");
    assert!(!mnt.join("old.txt").exists());
    // `old`'s drop unmounts what is on its mount point now (the new mount) and waits for it.
}

/// mount(8) mounts only on directories: a mount on a regular file used to succeed, answer EIO
/// on the file and hold the filesystem's lock. And a second filesystem stacked on a mount point
/// would hide the first without a word. Both are refused before anything is mounted, and the
/// filesystem stays free for a proper mount.
#[test]
fn mount_refuses_a_file_or_an_occupied_mountpoint() {
    let mut t = TestFs::unmounted(&[]);
    let file = t.root_dir().join("not-a-dir");
    fs::write(&file, b"precious").unwrap();
    let out = run(&mut t.mount_command(t.key_file(), &file, &[]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        stderr(&out)
    );
    assert!(!is_mounted(&file));
    assert_eq!(fs::read(&file).unwrap(), b"precious");

    // A second filesystem on the first one's mountpoint.
    t.mount();
    let mut other = TestFs::unmounted(&[]);
    let out = run(&mut other.mount_command(other.key_file(), t.mountpoint(), &[]));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is already a mount point (type fuse.digimedfs)"),
        "{}",
        stderr(&out)
    );
    // The first mount is the one still there, and the second filesystem mounts elsewhere.
    fs::write(t.path("still-here"), b"x").unwrap();
    assert_eq!(fs::read(t.path("still-here")).unwrap(), b"x");
    other.mount();
    assert!(other.is_mounted());
}

/// A tenant id is what the key service accepts (1 to 64 of `A-Z a-z 0-9 . _ -`): mkfs refuses
/// `a b/c` (it used to accept it) and creates nothing.
#[test]
fn mkfs_refuses_a_tenant_the_key_service_would_not_hold() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    run(Command::new(bin("digimedfs")).arg("keygen").arg(&key));
    let backing = dir.path().join("b");
    for bad in ["a b/c", "", &"x".repeat(65)] {
        let out = run(Command::new(bin("mkfs-digimed"))
            .args(["--tenant", bad, "--key-file"])
            .arg(&key)
            .arg(&backing));
        assert_eq!(
            out.status.code(),
            Some(1),
            "tenant {bad:?}: {}",
            stderr(&out)
        );
        assert!(
            stderr(&out).contains("must be 1 to 64 characters"),
            "{}",
            stderr(&out)
        );
        assert!(!backing.join("superblock").exists());
    }
}

/// A key file others can read is said on the terminal by every command that reads it: mkfs,
/// fsck and a mount that goes to the background (whose daemon only logs). It used to be only
/// in the mount's log file.
#[test]
fn readable_key_file_is_warned_about_on_the_terminal() {
    let mut t = TestFs::unmounted(&[]);
    let key = t.root_dir().join("loose.key");
    fs::copy(t.key_file(), &key).unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    let warned = |out: &Output| {
        stderr(out).contains(&format!(
            "key file {} is readable by group or others (mode 0644)",
            key.display()
        ))
    };

    let other = t.root_dir().join("other");
    let out = mkfs(&key, &other, &["-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(warned(&out), "mkfs: {}", stderr(&out));

    let out = run(Command::new(bin("fsck-digimed"))
        .args(["-n", "--key-file"])
        .arg(&key)
        .arg(&other));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(warned(&out), "fsck: {}", stderr(&out));

    let out = run(&mut t.mount_command(&key, t.mountpoint(), &[]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    t.mark_mounted();
    assert!(warned(&out), "mount: {}", stderr(&out));

    // A key file only its owner can read: no warning.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let out = mkfs(&key, &t.root_dir().join("quiet"), &["-q"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("readable"), "{}", stderr(&out));
}

/// One mount of a filesystem at a time, read-only or not (sled opens its store exclusively):
/// a read-only mount takes the mount lock, so a read-write mount beside it (and a read-only
/// one beside a read-write mount) is refused with the same "already mounted by HOLDER" as a
/// second read-write mount, never sled's raw lock error; the first mount goes on unaffected.
#[test]
fn read_only_and_read_write_mounts_refuse_each_other_clearly() {
    let mut t = TestFs::unmounted(&[]);
    t.mount();
    fs::write(t.path("f"), b"before").unwrap();
    t.unmount();
    let second = t.root_dir().join("second");
    fs::create_dir(&second).unwrap();
    for (first, then) in [("ro", "rw"), ("rw", "ro"), ("ro", "ro")] {
        t.mount_with(&[first]);
        let out = run(&mut t.mount_command(t.key_file(), &second, &[then]));
        let e = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{then} beside {first}: {e}");
        assert!(
            e.contains("filesystem busy")
                && e.contains("is already mounted by host")
                && e.contains(&format!("pid {}", t.daemon_pid().expect("daemon")))
                && e.contains("unmount it there first"),
            "{then} beside {first}: {e}"
        );
        assert!(
            !e.contains("WouldBlock") && !e.contains("could not acquire lock"),
            "{then} beside {first}: raw lock error: {e}"
        );
        assert!(!is_mounted(&second), "{then} beside {first}: mounted");
        assert_eq!(fs::read(t.path("f")).unwrap(), b"before", "{first} mount");
        if first == "rw" {
            fs::write(t.path("f"), b"before").expect("the rw mount still writes");
        }
        t.unmount();
    }
}

/// A mount by a user other than root where /dev/fuse is root's only (mode 0600, as here) used
/// to fail with "I/O error on MNT: Permission denied", which points at the mountpoint. The
/// message says what an unprivileged mount needs. Runs the mount as `nobody` (setpriv); skipped
/// where /dev/fuse is open to everyone (the mount would then be allowed).
#[test]
fn unprivileged_mount_says_what_it_needs() {
    use std::os::unix::fs::MetadataExt;
    let mode = fs::metadata("/dev/fuse").expect("stat /dev/fuse").mode() & 0o777;
    if mode & 0o006 == 0o006 {
        eprintln!("skipped: /dev/fuse is mode {mode:o}, an unprivileged mount is allowed here");
        return;
    }
    let t = TestFs::unmounted(&[]);
    let nobody = "65534";
    let chown = |p: &Path| {
        let out = run(Command::new("chown")
            .args(["-R", &format!("{nobody}:{nobody}")])
            .arg(p));
        assert!(out.status.success(), "chown: {}", stderr(&out));
    };
    for p in [t.backing(), t.mountpoint(), t.key_file()] {
        chown(p);
    }
    let cmd = t.mount_command(t.key_file(), t.mountpoint(), &[]);
    let out = run(Command::new("setpriv")
        .args([
            &format!("--reuid={nobody}"),
            &format!("--regid={nobody}"),
            "--clear-groups",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args()));
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(!is_mounted(t.mountpoint()), "{e}");
    for needed in [
        "as uid 65534",
        "/dev/fuse (mode 0666",
        "setuid-root fusermount3",
        "or mount as root",
    ] {
        assert!(e.contains(needed), "{needed:?} missing: {e}");
    }
    assert!(!e.contains("I/O error"), "{e}");
}

/// `fsck -t digimed` (util-linux fsck(8)) used to check nothing and exit 0. fsck(8) runs the
/// checker with nothing but the fstab's first field (the backing directory): `fsck.digimed`
/// (no fstab line) or `fsck.fuse.digimedfs` (the line's type), found through PATH. The checker
/// takes the key options from the filesystem's fstab line (DIGIMEDFS_FSTAB here; fsck(8) reads
/// FSTAB_FILE), reports the damaged block and exits 4; without a key anywhere it exits 8 and
/// says both ways to give one; and the fsck(8) form of the command line key that message
/// names works too.
#[test]
fn fsck_wrapper_checks_with_the_fstab_key_or_fails_loudly() {
    use digimedfs_tests::walk_files;
    if run(Command::new("fsck").arg("--version"))
        .status
        .code()
        .is_none()
    {
        eprintln!("skipped: no fsck(8)");
        return;
    }
    let mut t = TestFs::new();
    fs::write(t.path("big"), random_bytes(1 << 20)).unwrap();
    t.unmount();
    // Storage zeroes the file's object.
    let objects = walk_files(&t.backing().join("objects"));
    assert_eq!(objects.len(), 1, "{objects:?}");
    let len = fs::metadata(&objects[0]).unwrap().len();
    fs::write(&objects[0], vec![0u8; len as usize]).unwrap();

    // The checker under the names fsck(8) looks for, in a directory only PATH names.
    let sbin = t.root_dir().join("sbin");
    fs::create_dir(&sbin).unwrap();
    for name in ["fsck.digimed", "fsck.fuse.digimedfs"] {
        std::os::unix::fs::symlink(bin("fsck-digimed"), sbin.join(name)).unwrap();
    }
    let path = format!(
        "{}:{}",
        sbin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let fstab = t.root_dir().join("fstab");
    fs::write(
        &fstab,
        format!(
            "# test fstab\n{} {} fuse.digimedfs key_file={},_netdev 0 0\n",
            t.backing().display(),
            t.mountpoint().display(),
            t.key_file().display()
        ),
    )
    .unwrap();
    let empty = t.root_dir().join("fstab-empty");
    fs::write(&empty, "# nothing here\n").unwrap();
    let fsck = |fsck_fstab: Option<&Path>, our_fstab: &Path, args: &[&str]| {
        let mut cmd = Command::new("fsck");
        cmd.env("PATH", &path)
            .env("DIGIMEDFS_FSTAB", our_fstab)
            .env_remove("FSTAB_FILE")
            .args(args)
            .arg(t.backing());
        if let Some(f) = fsck_fstab {
            cmd.env("FSTAB_FILE", f);
        }
        run(&mut cmd)
    };
    let show = |out: &Output| {
        format!(
            "{}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    };
    let checker = |out: &Output, name: &str| {
        // -V: fsck(8) prints the command it runs.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.contains(&format!("{}/{name}", sbin.display())),
            "fsck(8) did not run {name} from PATH: {}",
            show(out)
        );
    };

    // fsck(8) sees the fstab line (type fuse.digimedfs): it runs fsck.fuse.digimedfs, which
    // takes key_file= from the line.
    let out = fsck(Some(&fstab), &fstab, &["-V", "-t", "digimed", "-n"]);
    checker(&out, "fsck.fuse.digimedfs");
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("damaged_block"),
        "{}",
        show(&out)
    );
    // fsck(8) without the line runs fsck.digimed, which still finds the line.
    let out = fsck(None, &fstab, &["-V", "-t", "digimed", "-n"]);
    checker(&out, "fsck.digimed");
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));

    // No key anywhere: exit 8, nothing checked, both ways named.
    let out = fsck(None, &empty, &["-V", "-t", "digimed", "-n"]);
    checker(&out, "fsck.digimed");
    assert_eq!(out.status.code(), Some(8), "{}", show(&out));
    let e = stderr(&out);
    for needed in [
        "no key for",
        "nothing was checked",
        "--key-file PATH",
        "key_file=PATH",
    ] {
        assert!(e.contains(needed), "{needed:?} missing: {}", show(&out));
    }
    // The command-line form through fsck(8) that the message gives.
    let key = format!("--key-file={}", t.key_file().display());
    let out = fsck(None, &empty, &["-V", "-t", "digimed", "-n", "--", &key]);
    checker(&out, "fsck.digimed");
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("damaged_block"),
        "{}",
        show(&out)
    );
}

/// `digimedfs key` with key files (luksAddKey / luksKillSlot / gocryptfs -passwd): a second key
/// file is added and mounts the data written under the first; while mounted every change is
/// refused with the lock's message; the first slot is removed, after which the first key
/// fails as a wrong key; the last slot, a loose or missing new key file and a duplicate are
/// refused; `key change` replaces a key in one step; `key list` shows the slots and nothing
/// of the wrapped keys.
#[test]
fn key_slots_add_remove_change_with_key_files() {
    let mut t = TestFs::unmounted(&[]);
    let backing = t.backing().to_path_buf();
    let old = t.key_file().to_path_buf();
    let (k2, k3) = (t.root_dir().join("k2"), t.root_dir().join("k3"));
    for k in [&k2, &k3] {
        run_ok(Command::new(bin("digimedfs")).arg("keygen").arg(k));
    }
    t.mount();
    let data = random_bytes(300_000);
    fs::write(t.path("f"), &data).unwrap();
    t.unmount();
    let key = |args: &[&str], current: &Path, new: Option<&Path>| {
        let mut cmd = Command::new(bin("digimedfs"));
        cmd.arg("key").args(args).arg("--key-file").arg(current);
        if let Some(new) = new {
            cmd.arg("--new-key-file").arg(new);
        }
        run(cmd.arg(&backing))
    };
    let list = || {
        let out = run(Command::new(bin("digimedfs"))
            .args(["key", "list"])
            .arg(&backing));
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let l = list();
    assert!(
        l.contains("1 of 8 key slots in use") && l.contains("  slot 0: key file\n"),
        "{l}"
    );
    assert_eq!(l.lines().count(), 2, "{l}");

    let out = key(&["add"], &old, Some(&k2));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("key slot 1 added for key file"));
    let l = list();
    assert!(
        l.contains("2 of 8") && l.contains("  slot 1: key file\n"),
        "{l}"
    );
    // The same key again is a duplicate.
    let out = key(&["add"], &old, Some(&k2));
    assert!(
        stderr(&out).contains("is already in key slot 1"),
        "{}",
        stderr(&out)
    );

    // The new key mounts what was written under the old one; changes wait for the unmount.
    let out = run(&mut t.mount_command(&k2, t.mountpoint(), &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    t.mark_mounted();
    assert!(
        fs::read(t.path("f")).unwrap() == data,
        "f under the added key"
    );
    fs::write(t.path("g"), b"written under k2").unwrap();
    let out = key(&["remove", "--slot", "0"], &k2, None);
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("is already mounted by") && e.contains("unmount it there first"),
        "{e}"
    );
    t.unmount();

    let out = key(&["remove", "--slot", "0"], &k2, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(&mut t.mount_command(&old, t.mountpoint(), &[]));
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(
        e.contains("wrong key") && e.contains("does not unlock the filesystem"),
        "{e}"
    );
    assert!(!is_mounted(t.mountpoint()));
    let out = key(&["remove", "--slot", "1", "--force"], &k2, None);
    assert!(stderr(&out).contains("last key slot"), "{}", stderr(&out));

    // A new key file must exist and pass the key file checks.
    let out = key(&["add"], &k2, Some(&t.root_dir().join("missing")));
    assert!(
        stderr(&out).contains("make it first with `digimedfs keygen"),
        "{}",
        stderr(&out)
    );
    fs::set_permissions(&k3, fs::Permissions::from_mode(0o666)).unwrap();
    let out = key(&["add"], &k2, Some(&k3));
    assert!(
        stderr(&out).contains("writable by group or others"),
        "{}",
        stderr(&out)
    );
    fs::set_permissions(&k3, fs::Permissions::from_mode(0o600)).unwrap();

    // gocryptfs -passwd: k2's slot now opens with k3, in one step.
    let out = key(&["change"], &k2, Some(&k3));
    assert!(out.status.success(), "{}", stderr(&out));
    let l = list();
    assert!(
        l.contains("1 of 8") && l.contains("  slot 1: key file\n"),
        "{l}"
    );
    let out = run(&mut t.mount_command(&k2, t.mountpoint(), &[]));
    assert!(
        stderr(&out).contains("does not unlock the filesystem"),
        "{}",
        stderr(&out)
    );
    let out = run(&mut t.mount_command(&k3, t.mountpoint(), &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    t.mark_mounted();
    assert!(
        fs::read(t.path("f")).unwrap() == data,
        "f under the changed key"
    );
    assert_eq!(fs::read(t.path("g")).unwrap(), b"written under k2");
    t.unmount();

    // The copy's write fails (its temporary name taken by a directory) after the primary was
    // replaced: the command fails, says the change is in force, and it is.
    let obstacle = backing.join("superblock.bak.tmp");
    fs::create_dir(&obstacle).unwrap();
    let out = key(&["add"], &k3, Some(&k2));
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{e}");
    assert!(e.contains("the change is in force all the same"), "{e}");
    fs::remove_dir(&obstacle).unwrap();
    let l = list();
    assert!(
        l.contains("2 of 8") && l.contains("superblock.bak lists other slots"),
        "{l}"
    );
    let out = run(&mut t.mount_command(&k2, t.mountpoint(), &[]));
    assert!(out.status.success(), "{}", stderr(&out));
    t.mark_mounted();
    assert!(
        fs::read(t.path("f")).unwrap() == data,
        "f under the re-added key"
    );
    t.unmount();
    let l = list();
    assert!(
        !l.contains("superblock.bak lists other slots"),
        "the mount left the copy: {l}"
    );
}

/// The tools' output into a pipe nobody reads any more (`fsck.digimed -n B | head`) ends them
/// by SIGPIPE, as it does C tools, instead of a panic in the middle of the report; the mount
/// daemon is not affected (it keeps the pipe signal ignored).
#[test]
fn tools_end_quietly_on_a_closed_pipe() {
    use std::os::unix::process::ExitStatusExt;
    let mut t = TestFs::new();
    t.unmount();
    let (key, backing) = (t.key_file().to_owned(), t.backing().to_owned());
    let runs: Vec<(&str, Vec<String>)> = vec![
        (
            "fsck-digimed",
            vec![
                "-n".into(),
                "--key-file".into(),
                key.display().to_string(),
                backing.display().to_string(),
            ],
        ),
        (
            "digimedfs",
            vec!["info".into(), backing.display().to_string()],
        ),
        (
            "digimedfs",
            vec!["key".into(), "list".into(), backing.display().to_string()],
        ),
    ];
    for (tool, args) in runs {
        let (reader, writer) = std::io::pipe().expect("pipe");
        // Nobody will read: the tool's first write to stdout fails with EPIPE.
        drop(reader);
        let out = Command::new(bin(tool))
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run the tool");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked"),
            "{tool} {args:?} panicked on a closed pipe: {err}"
        );
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{tool} {args:?}: {:?}, stderr: {err}",
            out.status
        );
    }
}
