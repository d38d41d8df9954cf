//! Mounting through the key service: a real `digimed-keyservice` server (in-process, TLS on
//! 127.0.0.1 with a demo CA), the real `mkfs-digimed` and `digimedfs` binaries, real FUSE mounts.
//! Tenant isolation, revocation, rotation + `digimedfs rewrap`, and rollback detection.

use digimedfs_keyservice::admin::Admin;
use digimedfs_keyservice::server::{BackgroundServer, ServerConfig};
use digimedfs_keyservice::state::Credential;
use digimedfs_tests::{
    bin, is_mounted, run, snapshot_files, unmount_and_wait, wait_until, TIMEOUT,
};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const PASS: &str = "e2e key service passphrase";

/// A key service with its state directory, demo TLS and a running server; plus a private
/// directory for backing dirs and mountpoints. Mounts are undone before the server stops.
struct Ks {
    dir: tempfile::TempDir,
    ca: PathBuf,
    tls: digimedfs_keyservice::tls::DemoTls,
    admin: Admin,
    mounts: std::cell::RefCell<Vec<PathBuf>>,
    server: Option<BackgroundServer>,
}

impl Ks {
    fn new() -> Ks {
        let dir = tempfile::Builder::new()
            .prefix("digimedfs-e2e-ks-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let state = dir.path().join("state");
        let cred = || Credential::passphrase(PASS).unwrap();
        digimedfs_keyservice::admin::init(&state, &cred()).unwrap();
        let tls = digimedfs_keyservice::tls::write_demo(&dir.path().join("tls")).unwrap();
        let admin = Admin::open(&state, &cred()).unwrap();
        let mut cfg = ServerConfig::new(
            state.clone(),
            "127.0.0.1:0".parse().unwrap(),
            tls.cert.clone(),
            tls.key.clone(),
        );
        cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        let server = BackgroundServer::start(cfg, cred()).unwrap();
        Ks {
            dir,
            ca: tls.ca.clone(),
            tls,
            admin,
            mounts: Default::default(),
            server: Some(server),
        }
    }

    /// Stops the server (mounts stay; their key service calls fail from now on).
    fn stop_server(&mut self) {
        drop(self.server.take());
    }

    /// Starts the server again on the same state (on a new port: see [`Ks::url`]).
    fn start_server(&mut self) {
        let cfg = ServerConfig::new(
            self.path("state"),
            "127.0.0.1:0".parse().unwrap(),
            self.tls.cert.clone(),
            self.tls.key.clone(),
        );
        let cred = Credential::passphrase(PASS).unwrap();
        self.server = Some(BackgroundServer::start(cfg, cred).expect("restart key service"));
    }

    fn url(&self) -> String {
        self.server.as_ref().expect("server running").url()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Adds tenant `id` and writes a token for it to a 0600 file; returns the file.
    fn tenant(&self, id: &str) -> PathBuf {
        self.admin.tenant_add(id).unwrap();
        self.token(id)
    }

    /// Issues another token for `id` into a new 0600 file.
    fn token(&self, id: &str) -> PathBuf {
        let token = self.admin.token_issue(Some(id)).unwrap();
        let n = std::fs::read_dir(self.dir.path()).unwrap().count();
        let path = self.path(&format!("token-{id}-{n}"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        std::io::Write::write_all(&mut f, format!("{}\n", token.as_str()).as_bytes()).unwrap();
        path
    }

    /// `--keyservice URL --tenant T --token-file F --ca-file CA`.
    fn flags(&self, tenant: &str, token: &Path) -> Vec<String> {
        vec![
            "--keyservice".into(),
            self.url(),
            "--tenant".into(),
            tenant.into(),
            "--token-file".into(),
            token.display().to_string(),
            "--ca-file".into(),
            self.ca.display().to_string(),
        ]
    }

    /// mkfs through the key service; returns the backing dir and the filesystem UUID.
    fn mkfs(&self, name: &str, tenant: &str, token: &Path) -> (PathBuf, String) {
        let backing = self.path(name);
        let out = run(Command::new(bin("mkfs-digimed"))
            .args(self.flags(tenant, token))
            .arg(&backing));
        assert!(out.status.success(), "mkfs failed: {}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let uuid = text
            .split_whitespace()
            .find_map(|w| w.strip_prefix("uuid="))
            .unwrap_or_else(|| panic!("no uuid in {text:?}"))
            .to_string();
        (backing, uuid)
    }

    /// `digimedfs mount` with the key service flags.
    fn mount(&self, backing: &Path, mnt: &Path, tenant: &str, token: &Path) -> Output {
        std::fs::create_dir_all(mnt).unwrap();
        // daemon_log reads the file log, also where journald runs.
        let out = run(Command::new(bin("digimedfs"))
            .env("DIGIMEDFS_LOG", "file")
            .arg("mount")
            .args(self.flags(tenant, token))
            .arg(backing)
            .arg(mnt));
        self.note(mnt, &out);
        out
    }

    /// The mount(8) form: `digimedfs BACKING MNT -o keyservice=...,tenant=...,...`.
    fn mount_o(&self, backing: &Path, mnt: &Path, tenant: &str, token: &Path) -> Output {
        std::fs::create_dir_all(mnt).unwrap();
        let opts = format!(
            "keyservice={},tenant={tenant},token_file={},ca_file={},_netdev",
            self.url(),
            token.display(),
            self.ca.display()
        );
        let out = run(Command::new(bin("digimedfs"))
            .arg(backing)
            .arg(mnt)
            .arg("-o")
            .arg(opts));
        self.note(mnt, &out);
        out
    }

    fn note(&self, mnt: &Path, out: &Output) {
        if out.status.success() {
            assert!(
                wait_until(TIMEOUT, || is_mounted(mnt)),
                "mount returned 0 but nothing is mounted"
            );
            self.mounts.borrow_mut().push(mnt.to_path_buf());
        }
    }

    fn mount_ok(&self, backing: &Path, mnt: &Path, tenant: &str, token: &Path) {
        let out = self.mount(backing, mnt, tenant, token);
        assert!(out.status.success(), "mount failed: {}", stderr(&out));
    }

    /// Asserts that a mount attempt failed cleanly and its message contains `needle`.
    fn refused(&self, out: &Output, mnt: &Path, needle: &str) {
        assert!(
            !out.status.success(),
            "mount succeeded, expected {needle:?}"
        );
        assert_eq!(out.status.code(), Some(1));
        let e = stderr(out);
        assert!(
            e.to_lowercase().contains(needle),
            "expected {needle:?} in {e:?}"
        );
        assert!(
            !is_mounted(mnt),
            "something is mounted after a refused mount"
        );
    }

    fn unmount(&self, mnt: &Path) {
        unmount_and_wait(mnt).unwrap();
        self.mounts.borrow_mut().retain(|m| m != mnt);
    }

    fn audit(&self) -> String {
        std::fs::read_to_string(self.path("state").join("audit.log")).unwrap()
    }
}

impl Drop for Ks {
    fn drop(&mut self) {
        // Unmount while the server still runs: the daemons anchor their epoch at unmount.
        for m in self.mounts.borrow().iter() {
            if let Err(e) = unmount_and_wait(m) {
                eprintln!("Ks drop: {e}");
            }
        }
        drop(self.server.take());
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn mount_through_key_service_and_tenant_isolation() {
    let ks = Ks::new();
    let ta = ks.tenant("A");
    let tb = ks.tenant("B");
    let (backing, _uuid) = ks.mkfs("a", "A", &ta);
    let mnt = ks.path("mnt");

    ks.mount_ok(&backing, &mnt, "A", &ta);
    std::fs::write(mnt.join("hello.txt"), b"cohort A, sample 17").unwrap();
    ks.unmount(&mnt);
    // Remount in the mount(8) / fstab form.
    let out = ks.mount_o(&backing, &mnt, "A", &ta);
    assert!(out.status.success(), "mount -o failed: {}", stderr(&out));
    assert_eq!(
        std::fs::read(mnt.join("hello.txt")).unwrap(),
        b"cohort A, sample 17"
    );
    ks.unmount(&mnt);
    let log = ks.audit();
    assert!(log.contains("\"op\":\"unwrap\""), "{log}");
    assert!(log.contains("\"op\":\"anchor\""), "{log}");

    // Tenant B (its own token) cannot mount A's filesystem.
    let out = ks.mount(&backing, &mnt, "B", &tb);
    ks.refused(&out, &mnt, "wrong tenant");
    // Nor B's token presented as tenant A: the service refuses to unwrap.
    let out = ks.mount(&backing, &mnt, "A", &tb);
    ks.refused(&out, &mnt, "wrong tenant");
    assert!(ks.audit().contains("unwrap_failed"));

    // A bad token, a CA that did not sign the server, a service that is not there.
    let bogus = ks.path("bogus-token");
    std::fs::write(&bogus, "00".repeat(32)).unwrap();
    let out = ks.mount(&backing, &mnt, "A", &bogus);
    ks.refused(&out, &mnt, "rejected the credential");
    let other = digimedfs_keyservice::tls::write_demo(&ks.path("other-ca")).unwrap();
    let out = run(Command::new(bin("digimedfs"))
        .args([
            "mount",
            "--keyservice",
            &ks.url(),
            "--tenant",
            "A",
            "--token-file",
        ])
        .arg(&ta)
        .arg("--ca-file")
        .arg(&other.ca)
        .arg(&backing)
        .arg(&mnt));
    ks.refused(&out, &mnt, "tls handshake");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = run(Command::new(bin("digimedfs"))
        .args([
            "mount",
            "--keyservice",
            &dead,
            "--tenant",
            "A",
            "--token-file",
        ])
        .arg(&ta)
        .arg("--ca-file")
        .arg(&ks.ca)
        .arg(&backing)
        .arg(&mnt));
    ks.refused(&out, &mnt, "unreachable");

    // A key file and the key service together are refused by mkfs.
    let key = ks.path("k");
    run(Command::new(bin("digimedfs")).arg("keygen").arg(&key));
    let out = run(Command::new(bin("mkfs-digimed"))
        .arg("--key-file")
        .arg(&key)
        .args(ks.flags("A", &ta))
        .arg(ks.path("x")));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // Still mounts for A.
    ks.mount_ok(&backing, &mnt, "A", &ta);
    ks.unmount(&mnt);
}

#[test]
fn revoked_token_or_tenant_cannot_mount() {
    let ks = Ks::new();
    let ta = ks.tenant("A");
    let (backing, _) = ks.mkfs("a", "A", &ta);
    let mnt = ks.path("mnt");
    ks.mount_ok(&backing, &mnt, "A", &ta);
    ks.unmount(&mnt);

    // Revoke the token (by the full token): refused; a new token works.
    let token = std::fs::read_to_string(&ta).unwrap();
    ks.admin.token_revoke(token.trim()).unwrap();
    let out = ks.mount(&backing, &mnt, "A", &ta);
    ks.refused(&out, &mnt, "revoked");
    let ta2 = ks.token("A");
    ks.mount_ok(&backing, &mnt, "A", &ta2);
    ks.unmount(&mnt);

    // Revoke the tenant: every token of it is refused.
    ks.admin.tenant_revoke("A").unwrap();
    let out = ks.mount(&backing, &mnt, "A", &ta2);
    ks.refused(&out, &mnt, "revoked");
    assert!(ks.audit().contains("tenant_revoked"));
}

#[test]
fn rotate_then_rewrap_moves_the_slot_without_touching_data() {
    let ks = Ks::new();
    let ta = ks.tenant("A");
    let (backing, uuid) = ks.mkfs("a", "A", &ta);
    let (backing2, _) = ks.mkfs("b", "A", &ta);
    let mnt = ks.path("mnt");
    ks.mount_ok(&backing, &mnt, "A", &ta);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(mnt.join("data.bin"), &data).unwrap();
    ks.unmount(&mnt);

    assert_eq!(ks.admin.rotate("A").unwrap(), 2);
    let objects_before = snapshot_files(&backing.join("objects"));
    let meta_before = snapshot_files(&backing.join("meta"));
    assert!(!objects_before.is_empty());
    let superblock_before = std::fs::read(backing.join("superblock")).unwrap();

    let rewrap = |b: &Path| {
        run(Command::new(bin("digimedfs"))
            .arg("rewrap")
            .args(ks.flags("A", &ta))
            .arg(b))
    };
    let out = rewrap(&backing);
    assert!(out.status.success(), "rewrap failed: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains(&uuid) && text.contains("from key version 1 to 2"),
        "{text}"
    );
    assert_eq!(snapshot_files(&backing.join("objects")), objects_before);
    assert_eq!(snapshot_files(&backing.join("meta")), meta_before);
    assert_ne!(
        std::fs::read(backing.join("superblock")).unwrap(),
        superblock_before
    );
    assert!(ks.audit().contains("from version 1 to 2"));
    // A second rewrap has nothing to do.
    let out = rewrap(&backing);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to do"));

    // Retire version 1: the rewrapped filesystem mounts (version 2), the other does not.
    ks.admin.retire("A", 1).unwrap();
    ks.mount_ok(&backing, &mnt, "A", &ta);
    assert_eq!(std::fs::read(mnt.join("data.bin")).unwrap(), data);
    // Rewrap refuses a mounted filesystem.
    let out = rewrap(&backing);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("mounted"), "{}", stderr(&out));
    ks.unmount(&mnt);
    let out = ks.mount(&backing2, &mnt, "A", &ta);
    ks.refused(&out, &mnt, "key version 1 unknown");
}

#[test]
fn rollback_is_refused_until_accepted() {
    let ks = Ks::new();
    let ta = ks.tenant("A");
    let (backing, uuid) = ks.mkfs("a", "A", &ta);
    let mnt = ks.path("mnt");
    ks.mount_ok(&backing, &mnt, "A", &ta);
    std::fs::write(mnt.join("v1.txt"), b"first").unwrap();
    ks.unmount(&mnt);

    // An old copy, taken while unmounted.
    let old = ks.path("old");
    let cp = |from: &Path, to: &Path| {
        let out = run(Command::new("cp").arg("-a").arg(from).arg(to));
        assert!(out.status.success(), "cp: {}", stderr(&out));
    };
    cp(&backing, &old);
    // Mount, write, unmount: the epoch advances and the service records it.
    ks.mount_ok(&backing, &mnt, "A", &ta);
    std::fs::write(mnt.join("v2.txt"), b"second").unwrap();
    ks.unmount(&mnt);

    // Storage swaps the old copy back in: refused as a rollback.
    std::fs::remove_dir_all(&backing).unwrap();
    cp(&old, &backing);
    let out = ks.mount(&backing, &mnt, "A", &ta);
    ks.refused(&out, &mnt, "rollback");
    assert!(stderr(&out).contains("accept-rollback"), "{}", stderr(&out));

    // The admin accepts the restore: it mounts, and shows the old state.
    ks.admin.accept_rollback(&uuid).unwrap();
    ks.mount_ok(&backing, &mnt, "A", &ta);
    assert_eq!(std::fs::read(mnt.join("v1.txt")).unwrap(), b"first");
    assert!(!mnt.join("v2.txt").exists());
    ks.unmount(&mnt);
    // And keeps mounting afterwards (the anchor moved to the restored line).
    ks.mount_ok(&backing, &mnt, "A", &ta);
    ks.unmount(&mnt);
}

/// What the daemon of `mountpoint` logged (as root: /var/log/digimedfs/<name>.log).
fn daemon_log(mountpoint: &Path) -> String {
    let name = mountpoint
        .to_string_lossy()
        .trim_matches('/')
        .replace('/', "-");
    std::fs::read_to_string(format!("/var/log/digimedfs/{name}.log"))
        .unwrap_or_else(|e| panic!("no daemon log of {name}: {e}"))
}

/// An unmount while the key service is down is a clean close: the daemon warns that the
/// service did not record the epoch, logs no error, and the data is intact; the next mount
/// (service back) is accepted and records the newer epoch.
#[test]
fn unmount_while_the_key_service_is_down_is_clean() {
    let mut ks = Ks::new();
    let ta = ks.tenant("A");
    let (backing, uuid) = ks.mkfs("a", "A", &ta);
    let mnt = ks.path("mnt-ks-down");
    ks.mount_ok(&backing, &mnt, "A", &ta);
    std::fs::write(mnt.join("kept.txt"), b"intact").unwrap();
    let anchored = ks
        .admin
        .anchor_show(&uuid)
        .unwrap()
        .expect("the mount anchored")
        .epoch;
    ks.stop_server();
    ks.unmount(&mnt);

    let log = daemon_log(&mnt);
    assert!(
        !log.lines().any(|l| l.contains("ERROR")),
        "an unmount that wrote everything logged an error:\n{log}"
    );
    let warn = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("did not record epoch"))
        .unwrap_or_else(|| panic!("no warning about the anchor in:\n{log}"));
    assert!(
        warn.contains("closed cleanly") && warn.contains(&format!("epoch {}", anchored + 1)),
        "{warn}"
    );
    assert!(warn.contains("next mount accepts"), "{warn}");
    assert_eq!(
        ks.admin.anchor_show(&uuid).unwrap().map(|a| a.epoch),
        Some(anchored),
        "the service was down: its anchor cannot have moved"
    );

    // As the warning says: the next mount is accepted and records the newer epoch.
    ks.start_server();
    ks.mount_ok(&backing, &mnt, "A", &ta);
    assert_eq!(std::fs::read(mnt.join("kept.txt")).unwrap(), b"intact");
    let now = ks.admin.anchor_show(&uuid).unwrap().expect("anchor").epoch;
    assert!(now > anchored, "anchor {now} not past {anchored}");
    ks.unmount(&mnt);
}

/// Another tenant cannot take a new filesystem's anchor (its UUID is in the plaintext
/// superblock): posting it with the largest epoch before the first mount is refused, and the
/// owner mounts. An anchor poisoned before binding existed is cleared by the admin.
#[test]
fn another_tenant_cannot_claim_the_anchor_and_admin_clears_a_poisoned_one() {
    let ks = Ks::new();
    let ta = ks.tenant("A");
    let tb = ks.tenant("B");
    let (backing, uuid) = ks.mkfs("a", "A", &ta);
    let b =
        digimedfs_keyservice::client::KeyService::from_files(&ks.url(), "B", &tb, &ks.ca).unwrap();
    let raw = hex::decode(uuid.replace('-', "")).unwrap();
    let fs: [u8; 16] = raw.as_slice().try_into().unwrap();
    let e = b.record_anchor(&fs, u64::MAX, &[0xee; 32]).unwrap_err();
    assert!(
        matches!(
            e,
            digimedfs_keyservice::client::ServiceError::WrongTenant { .. }
        ),
        "{e}"
    );
    let mnt = ks.path("mnt");
    ks.mount_ok(&backing, &mnt, "A", &ta);
    std::fs::write(mnt.join("f"), b"x").unwrap();
    ks.unmount(&mnt);
    ks.mount_ok(&backing, &mnt, "A", &ta);
    ks.unmount(&mnt);

    // An anchor taken by B before anchors were bound (as anchors.json held it then).
    let anchors = ks.path("state").join("anchors.json");
    let poisoned = format!(
        r#"{{"{}": {{"tenant": "B", "epoch": {}, "digest": "{}", "accept_rollback": false}}}}"#,
        uuid.replace('-', ""),
        u64::MAX,
        "ee".repeat(32)
    );
    std::fs::write(&anchors, poisoned).unwrap();
    let out = ks.mount(&backing, &mnt, "A", &ta);
    ks.refused(&out, &mnt, "anchor clear");
    let cleared = ks.admin.anchor_clear(&uuid).unwrap();
    assert_eq!(cleared.tenant, "B");
    ks.mount_ok(&backing, &mnt, "A", &ta);
    assert_eq!(std::fs::read(mnt.join("f")).unwrap(), b"x");
    ks.unmount(&mnt);
    assert!(ks.audit().contains("\"op\":\"admin_anchor_clear\""));
}

/// Two lines of history at the same epoch: after an accepted restore of an old copy has
/// advanced to the epoch the original line had reached, storage puts the original line back.
/// The epochs are equal, the metadata digests are not: refused as a rollback.
#[test]
fn other_line_of_history_at_the_anchored_epoch_is_refused() {
    let ks = Ks::new();
    let ta = ks.tenant("A");
    let (backing, uuid) = ks.mkfs("a", "A", &ta);
    let mnt = ks.path("mnt");
    let cp = |from: &Path, to: &Path| {
        let out = run(Command::new("cp").arg("-a").arg(from).arg(to));
        assert!(out.status.success(), "cp: {}", stderr(&out));
    };
    ks.mount_ok(&backing, &mnt, "A", &ta);
    std::fs::write(mnt.join("v1.txt"), b"first").unwrap();
    ks.unmount(&mnt);
    let fork = ks.path("fork");
    cp(&backing, &fork);
    // The original line: one more mount cycle (two epochs).
    ks.mount_ok(&backing, &mnt, "A", &ta);
    std::fs::write(mnt.join("main.txt"), b"main line").unwrap();
    ks.unmount(&mnt);
    let original = ks.path("original");
    std::fs::rename(&backing, &original).unwrap();
    // The old copy is restored deliberately and advances by the same two epochs.
    std::fs::rename(&fork, &backing).unwrap();
    ks.admin.accept_rollback(&uuid).unwrap();
    ks.mount_ok(&backing, &mnt, "A", &ta);
    std::fs::write(mnt.join("fork.txt"), b"fork line").unwrap();
    ks.unmount(&mnt);
    // Storage swaps the original line back in: same epoch, other digest.
    std::fs::rename(&backing, ks.path("fork-now")).unwrap();
    std::fs::rename(&original, &backing).unwrap();
    let out = ks.mount(&backing, &mnt, "A", &ta);
    ks.refused(&out, &mnt, "digest");
}

/// A backup point copied and restored elsewhere is older than what the key service last saw:
/// its mount is refused as a rollback until the admin accepts it, then it shows the state of
/// the point. Tenant B's credentials cannot mount tenant A's restored copy.
#[test]
fn restored_backup_mounts_only_after_accepted_rollback() {
    let ks = Ks::new();
    let ta = ks.tenant("A");
    let tb = ks.tenant("B");
    let (backing, uuid) = ks.mkfs("a", "A", &ta);
    let mnt = ks.path("mnt");
    ks.mount_ok(&backing, &mnt, "A", &ta);
    std::fs::write(mnt.join("before.txt"), b"in the point").unwrap();
    std::fs::write(mnt.join("big.bin"), vec![7u8; 100_000]).unwrap();

    // The backup job: begin (no keys), copy the point, end.
    let begin = run(Command::new(bin("digimedfs"))
        .args(["backup", "begin"])
        .arg(&backing));
    assert!(begin.status.success(), "backup begin: {}", stderr(&begin));
    let copy = ks.path("copy");
    let out = run(Command::new("cp")
        .arg("-a")
        .arg(backing.join("backup/point"))
        .arg(&copy));
    assert!(out.status.success(), "cp: {}", stderr(&out));
    let end = run(Command::new(bin("digimedfs"))
        .args(["backup", "end"])
        .arg(&backing));
    assert!(end.status.success(), "backup end: {}", stderr(&end));
    std::fs::write(mnt.join("after.txt"), b"not in the point").unwrap();
    ks.unmount(&mnt);

    let restored = ks.path("restored");
    let out = run(Command::new(bin("digimedfs"))
        .args(["backup", "restore"])
        .arg(&copy)
        .arg(&restored));
    assert!(out.status.success(), "restore: {}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("accept-rollback"),
        "restore does not tell the admin about the rollback"
    );

    let rmnt = ks.path("rmnt");
    let out = ks.mount(&restored, &rmnt, "A", &ta);
    ks.refused(&out, &rmnt, "rollback");
    let out = ks.mount(&restored, &rmnt, "B", &tb);
    assert!(!out.status.success(), "tenant B mounted tenant A's copy");
    assert!(!is_mounted(&rmnt));

    ks.admin.accept_rollback(&uuid).unwrap();
    ks.mount_ok(&restored, &rmnt, "A", &ta);
    assert_eq!(
        std::fs::read(rmnt.join("before.txt")).unwrap(),
        b"in the point"
    );
    assert_eq!(
        std::fs::read(rmnt.join("big.bin")).unwrap(),
        vec![7u8; 100_000]
    );
    assert!(
        !rmnt.join("after.txt").exists(),
        "the restore holds a file written after the point"
    );
    ks.unmount(&rmnt);
}

/// A crash right after a backup point: the live superblock (the point's epoch + 1) keeps the
/// digest of the last clean unmount, and that is what the anchor must hold for that epoch, so
/// the remount after the crash is not taken for a rollback.
#[test]
fn crash_after_a_backup_point_remounts() {
    let ks = Ks::new();
    let ta = ks.tenant("A");
    let (backing, _uuid) = ks.mkfs("a", "A", &ta);
    let mnt = ks.path("mnt");
    ks.mount_ok(&backing, &mnt, "A", &ta);
    std::fs::write(mnt.join("before.txt"), b"in the point").unwrap();
    for step in ["begin", "end"] {
        let out = run(Command::new(bin("digimedfs"))
            .args(["backup", step])
            .arg(&backing));
        assert!(out.status.success(), "backup {step}: {}", stderr(&out));
    }
    let pids = digimedfs_tests::daemon_pids(&mnt);
    assert!(!pids.is_empty(), "no daemon serves {}", mnt.display());
    for pid in pids {
        // SAFETY: kill takes plain integers; `pid` is the digimedfs daemon of our own
        // mountpoint, found through its command line.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    assert!(wait_until(TIMEOUT, || digimedfs_tests::daemon_pids(&mnt).is_empty()));
    let out = run(Command::new("fusermount3").args(["-u", "-z"]).arg(&mnt));
    assert!(out.status.success(), "fusermount3 -u -z: {}", stderr(&out));
    ks.mounts.borrow_mut().retain(|m| m != &mnt);
    ks.mount_ok(&backing, &mnt, "A", &ta);
    assert_eq!(
        std::fs::read(mnt.join("before.txt")).unwrap(),
        b"in the point"
    );
    ks.unmount(&mnt);
}

/// A filesystem made with a key file moves to the key service (`digimedfs key change`) and
/// mounts through it with its data; the key file then fails as a wrong key. A key file slot is
/// added back unlocking through the service, and the key service as a second slot of the same
/// key version is refused as a duplicate. Last, `key change` moves it back to a key file, after
/// which the service no longer opens it.
#[test]
fn key_file_filesystem_moves_to_the_key_service() {
    let ks = Ks::new();
    let token = ks.tenant("lab");
    let (key, key2) = (ks.path("proj.key"), ks.path("spare.key"));
    for k in [&key, &key2] {
        let out = run(Command::new(bin("digimedfs")).arg("keygen").arg(k));
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let backing = ks.path("b");
    let out = run(Command::new(bin("mkfs-digimed"))
        .args(["-q", "--tenant", "lab", "--key-file"])
        .arg(&key)
        .arg(&backing));
    assert!(out.status.success(), "{}", stderr(&out));
    let mnt = ks.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mount_file = |k: &Path| {
        run(Command::new(bin("digimedfs"))
            .arg("mount")
            .arg("--key-file")
            .arg(k)
            .arg(&backing)
            .arg(&mnt))
    };
    let out = mount_file(&key);
    ks.note(&mnt, &out);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::write(mnt.join("f"), b"written under the key file").unwrap();
    ks.unmount(&mnt);

    let new_service = |k: &[String]| -> Vec<String> {
        k.iter()
            .map(|a| match a.strip_prefix("--") {
                Some(flag) => format!("--new-{flag}"),
                None => a.clone(),
            })
            .collect()
    };
    let out = run(Command::new(bin("digimedfs"))
        .args(["key", "change", "--key-file"])
        .arg(&key)
        .args(new_service(&ks.flags("lab", &token)))
        .arg(&backing));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(Command::new(bin("digimedfs"))
        .args(["key", "list"])
        .arg(&backing));
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        list.contains("1 of 8") && list.contains("slot 0: key service, key version 1"),
        "{list}"
    );

    ks.mount_ok(&backing, &mnt, "lab", &token);
    assert_eq!(
        std::fs::read(mnt.join("f")).unwrap(),
        b"written under the key file"
    );
    ks.unmount(&mnt);
    ks.refused(&mount_file(&key), &mnt, "does not unlock the filesystem");

    // A spare key file next to the service slot, unlocking through the service.
    let out = run(Command::new(bin("digimedfs"))
        .args(["key", "add"])
        .args(ks.flags("lab", &token))
        .arg("--new-key-file")
        .arg(&key2)
        .arg(&backing));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(Command::new(bin("digimedfs"))
        .args(["key", "add", "--key-file"])
        .arg(&key2)
        .args(new_service(&ks.flags("lab", &token)))
        .arg(&backing));
    assert!(
        stderr(&out).contains("is already in key slot 0"),
        "{}",
        stderr(&out)
    );
    let out = mount_file(&key2);
    ks.note(&mnt, &out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(mnt.join("f")).unwrap(),
        b"written under the key file"
    );
    ks.unmount(&mnt);

    // And back: the service slot becomes a key file slot; the service no longer opens it.
    let key3 = ks.path("back.key");
    let out = run(Command::new(bin("digimedfs")).arg("keygen").arg(&key3));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(Command::new(bin("digimedfs"))
        .args(["key", "change"])
        .args(ks.flags("lab", &token))
        .arg("--new-key-file")
        .arg(&key3)
        .arg(&backing));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(Command::new(bin("digimedfs"))
        .args(["key", "list"])
        .arg(&backing));
    let list = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        list.contains("2 of 8") && !list.contains("key service"),
        "{list}"
    );
    let out = ks.mount(&backing, &mnt, "lab", &token);
    ks.refused(&out, &mnt, "does not unlock the filesystem");
    let out = mount_file(&key3);
    ks.note(&mnt, &out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(mnt.join("f")).unwrap(),
        b"written under the key file"
    );
    ks.unmount(&mnt);
}

/// `GET /metrics` over plain HTTP from the key service's metrics listener: the body.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .expect("read the metrics reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "metrics reply: {head}");
    assert!(
        head.to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "metrics content type: {head}"
    );
    body.to_string()
}

/// The value of the sample `name` (with its labels, as in `a_total{x="y"}`) in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .parse()
        .unwrap()
}

/// The metrics listener counts real requests: after mkfs, a mount and its unmount through the
/// key service, a mount with a revoked token and one with an unknown token, the counters of
/// wrap, unwrap (ok, refused, unauthenticated), released keys and KEK derivations have moved,
/// the totals of tenants and key versions are right, the tenant's own counters hold every
/// authenticated wrap and unwrap, and the tenant is the only tenant label.
#[test]
fn metrics_count_requests_and_released_keys_per_tenant() {
    let ks = Ks::new();
    let addr = ks
        .server
        .as_ref()
        .and_then(|s| s.metrics_addr())
        .expect("metrics listener");
    let before = scrape(addr);
    let req = |e: &str, r: &str| {
        format!("digimed_keyservice_requests_total{{endpoint=\"{e}\",result=\"{r}\"}}")
    };
    for (e, r) in [("wrap", "ok"), ("unwrap", "ok"), ("unwrap", "refused")] {
        assert_eq!(sample(&before, &req(e, r)), 0.0);
    }

    let tenant = "cardio-metrics-tenant";
    let token = ks.tenant(tenant);
    let (backing, _) = ks.mkfs("m", tenant, &token);
    let mnt = ks.path("m-mnt");
    ks.mount_ok(&backing, &mnt, tenant, &token);
    ks.unmount(&mnt);
    // A token the service does not know (the real one with its last character changed).
    let real = std::fs::read_to_string(&token).unwrap();
    let real = real.trim();
    let last = real.chars().last().unwrap();
    let unknown = format!(
        "{}{}",
        &real[..real.len() - last.len_utf8()],
        if last == 'A' { 'B' } else { 'A' }
    );
    let unknown_file = ks.path("token-unknown");
    std::fs::write(&unknown_file, format!("{unknown}\n")).unwrap();
    std::fs::set_permissions(&unknown_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = ks.mount(&backing, &mnt, tenant, &unknown_file);
    ks.refused(&out, &mnt, "unknown token");
    ks.admin.token_revoke(real).unwrap();
    let out = ks.mount(&backing, &mnt, tenant, &token);
    ks.refused(&out, &mnt, "revoked");

    let after = scrape(addr);
    assert!(sample(&after, &req("wrap", "ok")) >= 1.0, "{after}");
    let unwraps = sample(&after, &req("unwrap", "ok"));
    assert!(unwraps >= 1.0, "{after}");
    assert!(sample(&after, &req("unwrap", "refused")) >= 1.0, "{after}");
    assert!(
        sample(&after, &req("unwrap", "unauthenticated")) >= 1.0,
        "{after}"
    );
    assert_eq!(
        sample(&after, "digimed_keyservice_keys_released_total"),
        unwraps,
        "every successful unwrap released one key"
    );
    // Every request's duration is in the histogram of its endpoint.
    let results: f64 = ["ok", "refused", "error", "unauthenticated"]
        .iter()
        .map(|r| sample(&after, &req("unwrap", r)))
        .sum();
    let duration = "digimed_keyservice_request_duration_seconds";
    assert_eq!(
        sample(&after, &format!("{duration}_count{{endpoint=\"unwrap\"}}")),
        results,
        "{after}"
    );
    assert_eq!(
        sample(
            &after,
            &format!("{duration}_bucket{{endpoint=\"unwrap\",le=\"+Inf\"}}")
        ),
        results,
        "{after}"
    );
    assert!(sample(&after, &format!("{duration}_sum{{endpoint=\"unwrap\"}}")) > 0.0);
    assert!(sample(&after, "digimed_keyservice_kek_derivations_total") >= 2.0);
    assert!(sample(&after, "digimed_keyservice_connections_total") >= 3.0);
    assert_eq!(
        sample(&after, "digimed_keyservice_audit_failures_total"),
        0.0
    );
    assert_eq!(
        sample(&after, "digimed_keyservice_start_time_seconds"),
        sample(&before, "digimed_keyservice_start_time_seconds")
    );
    assert_eq!(
        sample(&after, "digimed_keyservice_tenants{state=\"active\"}"),
        1.0
    );
    assert_eq!(
        sample(&after, "digimed_keyservice_key_versions{state=\"usable\"}"),
        1.0
    );
    ks.admin.rotate(tenant).unwrap();
    ks.admin.retire(tenant, 1).unwrap();
    let rotated = scrape(addr);
    assert_eq!(
        sample(
            &rotated,
            "digimed_keyservice_key_versions{state=\"retired\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&rotated, "digimed_keyservice_newest_key_version"),
        2.0
    );
    // One tenant: its counters are the totals of the requests that authenticated, and the
    // mount with an unknown token (refused before authentication) named no other tenant.
    let mine = |m: &str, r: &str| {
        format!("digimed_keyservice_{m}_total{{tenant=\"{tenant}\",result=\"{r}\"}}")
    };
    for (m, e) in [("wraps", "wrap"), ("unwraps", "unwrap")] {
        for r in ["ok", "refused", "error"] {
            assert_eq!(
                sample(&after, &mine(m, r)),
                sample(&after, &req(e, r)),
                "{after}"
            );
        }
    }
    assert_eq!(sample(&after, &mine("unwraps", "ok")), unwraps);
    let labels: std::collections::BTreeSet<&str> = rotated
        .lines()
        .filter_map(|l| l.split_once("tenant=\"")?.1.split_once('"'))
        .map(|(t, _)| t)
        .collect();
    assert_eq!(labels, [tenant].into(), "{rotated}");
}
