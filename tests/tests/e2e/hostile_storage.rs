//! Storage as the adversary (issue 22, finding 1): someone who can write the backing directory
//! plants symbolic links where the mount opens files. The mount runs as root on the VM, so a
//! followed link would let storage read the VM's files (through messages the daemon writes
//! back to storage) or overwrite them. Every test keeps a "victim" file outside the backing
//! directory, points a planted link at it, and checks that the victim is neither changed nor
//! repeated anywhere storage can read.

use digimedfs_tests::{errno_of, random_hex, run, wait_until, walk_files, TestFs, TIMEOUT};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A file outside the backing directory holding a unique secret; returns its path and text.
fn victim(fs: &TestFs, name: &str) -> (PathBuf, String) {
    let secret = format!("VM-SECRET-{}", random_hex(16));
    let path = fs.root_dir().join(name);
    fs::write(&path, &secret).expect("write victim");
    (path, secret)
}

/// Every file of the backing directory that contains `secret` (links are not followed).
fn leaks(backing: &Path, secret: &str) -> Vec<PathBuf> {
    walk_files(backing)
        .into_iter()
        .filter(|p| {
            fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
                && fs::read(p)
                    .is_ok_and(|d| d.windows(secret.len()).any(|w| w == secret.as_bytes()))
        })
        .collect()
}

/// Replaces `path` by a symbolic link to `target`.
fn plant_link(path: &Path, target: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
    symlink(target, path).expect("plant symlink");
}

fn mount_output(fs: &TestFs) -> std::process::Output {
    run(&mut fs.mount_command(fs.key_file(), fs.mountpoint(), &[]))
}

#[test]
fn a_lock_link_is_refused_and_its_target_never_written() {
    let fs = TestFs::unmounted(&[]);
    let (victim, secret) = victim(&fs, "victim.key");
    plant_link(&fs.backing().join("lock"), &victim);
    let out = mount_output(&fs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mount through a lock link succeeded");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert!(
        !stderr.contains(&secret),
        "the victim's contents were printed: {stderr}"
    );
    assert_eq!(fs::read_to_string(&victim).expect("victim"), secret);
}

#[test]
fn a_fenced_mount_never_writes_a_linked_lock_file_into_the_backup_reply() {
    let mut fs = TestFs::new();
    fs::write(fs.path("f"), b"data").expect("write");
    let (victim, secret) = victim(&fs, "proj.key");
    let backing = fs.backing().to_path_buf();
    // The attack of the review: the lock file becomes a link to the key, the superblock
    // changes so the mount fences itself (and describes the "holder" from `lock`), and a
    // backup request asks the daemon to write its error to storage.
    fs::rename(backing.join("lock"), backing.join("lock.old")).expect("move lock");
    symlink(&victim, backing.join("lock")).expect("plant");
    OpenOptions::new()
        .append(true)
        .open(backing.join("superblock"))
        .and_then(|mut f| f.write_all(b"x"))
        .expect("append to superblock");
    let nonce = random_hex(16);
    fs::create_dir_all(backing.join("backup")).expect("mkdir backup");
    fs::write(backing.join("backup/request"), format!("begin {nonce}\n")).expect("request");
    let reply = backing.join("backup/reply");
    assert!(
        wait_until(TIMEOUT, || fs::read_to_string(&reply)
            .is_ok_and(|r| r.starts_with(&nonce))),
        "no reply from the daemon"
    );
    let text = fs::read_to_string(&reply).expect("reply");
    assert!(
        text.contains(" error "),
        "a fenced mount took a point: {text}"
    );
    assert!(
        !text.contains(&secret),
        "the key file went to storage: {text}"
    );
    assert!(
        leaks(&backing, &secret).is_empty(),
        "{:?}",
        leaks(&backing, &secret)
    );
    assert_eq!(fs::read_to_string(&victim).expect("victim"), secret);
    // Writes now fail (fenced); the unmount must not write through the link either.
    let _ = fs.try_unmount();
    assert_eq!(fs::read_to_string(&victim).expect("victim"), secret);
}

#[test]
fn a_superblock_tmp_link_is_replaced_not_written_through() {
    let mut fs = TestFs::unmounted(&[]);
    let (victim, secret) = victim(&fs, "victim.key");
    for name in ["superblock.tmp", "superblock.bak.tmp"] {
        symlink(&victim, fs.backing().join(name)).expect("plant");
    }
    fs.mount();
    fs::write(fs.path("f"), b"data").expect("write");
    fs.unmount();
    assert_eq!(fs::read_to_string(&victim).expect("victim"), secret);
    fs.mount();
    assert_eq!(fs::read(fs.path("f")).expect("read"), b"data");
}

/// The object file of the only large file in `backing`.
fn only_object(backing: &Path) -> PathBuf {
    let objects: Vec<PathBuf> = walk_files(&backing.join("objects"));
    assert_eq!(objects.len(), 1, "{objects:?}");
    objects.into_iter().next().expect("one object")
}

#[test]
fn an_object_replaced_by_a_link_is_eio_and_its_target_untouched() {
    let mut fs = TestFs::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(fs.path("big"), &data).expect("write");
    fs.unmount();
    let object = only_object(fs.backing());
    // The victim holds the object's own ciphertext, so following the link would even verify.
    let victim = fs.root_dir().join("victim.bin");
    fs::copy(&object, &victim).expect("copy object");
    let before = fs::read(&victim).expect("victim");
    plant_link(&object, &victim);
    fs.mount();
    let err = fs::read(fs.path("big")).expect_err("read through a link");
    assert_eq!(errno_of(&err), libc::EIO, "{err}");
    let written = OpenOptions::new()
        .write(true)
        .open(fs.path("big"))
        .and_then(|mut f| {
            f.write_all(&[7u8; 8192])?;
            f.sync_all()
        });
    assert!(
        written.is_err(),
        "a write through a linked object succeeded"
    );
    assert!(
        fs::read(&victim).expect("victim") == before,
        "the victim was changed"
    );
}

#[test]
fn a_metadata_store_holding_a_link_is_refused() {
    for name in ["conf", "db"] {
        let fs = TestFs::unmounted(&[]);
        let (victim, secret) = victim(&fs, "victim.key");
        plant_link(&fs.backing().join("meta").join(name), &victim);
        let out = mount_output(&fs);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "mount with meta/{name} a link succeeded"
        );
        assert!(stderr.contains("symbolic link"), "meta/{name}: {stderr}");
        assert_eq!(
            fs::read_to_string(&victim).expect("victim"),
            secret,
            "meta/{name}"
        );
    }
}

#[test]
fn fsck_reports_planted_links_and_never_follows_them() {
    let mut fs = TestFs::new();
    fs::write(fs.path("f"), b"data").expect("write");
    fs.unmount();
    let (victim, secret) = victim(&fs, "victim.key");
    symlink(&victim, fs.backing().join("objects").join("stray")).expect("plant");
    let out = run(
        std::process::Command::new(digimedfs_tests::bin("fsck-digimed"))
            .args(["-n", "--key-file"])
            .arg(fs.key_file())
            .arg(fs.backing()),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("symbolic link"), "{stdout}");
    assert!(!stdout.contains(&secret));
    // A point request handled offline must not follow links either (nothing mounted).
    std::thread::sleep(Duration::from_millis(10));
    assert_eq!(fs::read_to_string(&victim).expect("victim"), secret);
}
