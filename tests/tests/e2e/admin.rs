//! `digimedfs info` and `digimedfs tune` through the built binary: what info reports of a fresh
//! filesystem (text and JSON), of a mounted one, with a key and with a tampered superblock;
//! relabelling with tune, its refusals, and the errors for paths that are not filesystems; key
//! service slots and tune's refusal of a rolled-back superblock with a real key service.

use digimedfs_core::format::superblock::Superblock;
use digimedfs_tests::{bin, run, run_ok, TestFs};
use serde_json::Value;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `digimedfs info [extra] BACKING`.
fn info(backing: &Path, extra: &[&str]) -> Output {
    run(Command::new(bin("digimedfs"))
        .arg("info")
        .args(extra)
        .arg(backing))
}

/// The `Field: value` lines of info's text form.
fn fields(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// `digimedfs info --json [extra] BACKING`, which must succeed, parsed.
fn info_json(backing: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    let out = info(backing, &args);
    assert!(out.status.success(), "info --json: {}", stderr(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("info --json is not JSON ({e}): {}", stdout(&out)))
}

/// `digimedfs tune -L LABEL --key-file KEY BACKING`.
fn tune(key: &Path, backing: &Path, label: &str) -> Output {
    run(Command::new(bin("digimedfs"))
        .args(["tune", "-L", label, "--key-file"])
        .arg(key)
        .arg(backing))
}

/// A key and a filesystem made with label `cohort-a`, tenant `cardio` and 8 KiB blocks, in a
/// temporary directory; returns (dir, key, backing, uuid mkfs printed).
fn labelled_fs() -> (tempfile::TempDir, PathBuf, PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    let backing = dir.path().join("backing");
    fs::create_dir(&backing).unwrap();
    run_ok(Command::new(bin("digimedfs")).arg("keygen").arg(&key));
    let out = run_ok(
        Command::new(bin("mkfs-digimed"))
            .args([
                "-L",
                "cohort-a",
                "-b",
                "8K",
                "--tenant",
                "cardio",
                "--key-file",
            ])
            .arg(&key)
            .arg(&backing),
    );
    let uuid = stdout(&out)
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uuid="))
        .expect("mkfs prints the uuid")
        .to_string();
    (dir, key, backing, uuid)
}

#[test]
fn info_reports_what_mkfs_was_given_without_a_key_or_key_material() {
    let (_dir, _key, backing, uuid) = labelled_fs();
    let out = info(&backing, &[]);
    assert!(out.status.success(), "info: {}", stderr(&out));
    let text = stdout(&out);
    let f = fields(&text);
    assert_eq!(f["Filesystem UUID"], uuid, "{text}");
    assert_eq!(f["Filesystem label"], "cohort-a", "{text}");
    assert_eq!(f["Tenant"], "cardio", "{text}");
    assert_eq!(f["Block size"], "8192", "{text}");
    assert_eq!(f["Format version"], "1", "{text}");
    assert_eq!(f["Epoch"], "1", "{text}");
    assert_eq!(f["Key slot 0"], "key-file", "{text}");
    assert_eq!(f["Superblock"], "unverified: read without a key", "{text}");
    assert!(
        f["Flags"].starts_with("clean, store state record"),
        "{text}"
    );
    assert!(f["Mounted"].starts_with("no"), "{text}");
    assert_eq!(f["Backup point"], "none", "{text}");
    assert_eq!(f["Other superblock copy"], "identical", "{text}");

    let j = info_json(&backing, &[]);
    assert_eq!(j["fs_uuid"], uuid.as_str());
    assert_eq!(j["label"], "cohort-a");
    assert_eq!(j["tenant"], "cardio");
    assert_eq!(j["block_size"], 8192);
    assert_eq!(j["format_version"], 1);
    assert_eq!(j["cipher_suite"], 1);
    assert_eq!(j["epoch"], 1);
    assert_eq!(j["verified"], false);
    assert_eq!(j["flags"]["clean"], true);
    assert_eq!(j["flags"]["store_state"], true);
    assert_eq!(j["key_slots"].as_array().map(Vec::len), Some(1));
    assert_eq!(j["key_slots"][0]["index"], 0);
    assert_eq!(j["key_slots"][0]["kind_name"], "key-file");
    assert_eq!(j["mount"]["mounted"], false);
    assert_eq!(j["backup_point"]["present"], false);
    let created = j["created"].as_i64().expect("created is a number");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - 3600..=now).contains(&created), "created {created}");

    // Neither form shows the wrapped master key.
    let sb = Superblock::decode_unverified(&fs::read(backing.join("superblock")).unwrap()).unwrap();
    let wrapped = hex::encode(&sb.slots[0].wrapped);
    let json_text = stdout(&info(&backing, &["--json"]));
    for form in [&text, &json_text] {
        assert!(!form.contains(&wrapped), "wrapped key printed: {form}");
        assert!(
            !form.contains(&wrapped[..16]),
            "part of the wrapped key printed: {form}"
        );
    }
    // info wrote nothing: no lock file appeared.
    assert!(!backing.join("lock").exists(), "info created the lock file");
}

#[test]
fn info_while_mounted_names_the_holder_and_leaves_the_mount_alone() {
    let mut t = TestFs::new();
    fs::write(t.path("before"), b"written before info").unwrap();
    let pid = t.daemon_pid().expect("daemon pid");
    let out = info(t.backing(), &[]);
    assert!(out.status.success(), "info: {}", stderr(&out));
    let text = stdout(&out);
    let f = fields(&text);
    let mounted = &f["Mounted"];
    assert!(
        mounted.starts_with("yes: lock held by host ") && mounted.contains(&format!(" pid {pid} ")),
        "{text}"
    );
    assert!(f["Flags"].starts_with("not clean"), "{text}");
    let j = info_json(t.backing(), &[]);
    assert_eq!(j["mount"]["mounted"], true);
    assert!(
        j["mount"]["holder"]
            .as_str()
            .is_some_and(|h| h.contains(&format!(" pid {pid} "))),
        "{j}"
    );
    let mnt = t.mountpoint().canonicalize().unwrap();
    assert!(
        j["mount"]["mount_points"]
            .as_array()
            .is_some_and(|a| a.iter().any(|p| p.as_str() == mnt.to_str())),
        "{j}"
    );
    assert_eq!(j["flags"]["clean"], false);

    assert_eq!(j["backup_point"]["present"], false);

    // A backup point shows with the epoch its manifest gives (as `backup status` says it).
    run_ok(
        Command::new(bin("digimedfs"))
            .args(["backup", "begin"])
            .arg(t.backing()),
    );
    let status = stdout(&run_ok(
        Command::new(bin("digimedfs"))
            .args(["backup", "status"])
            .arg(t.backing()),
    ));
    let j = info_json(t.backing(), &[]);
    let point = &j["backup_point"];
    assert_eq!(point["present"], true, "{j}");
    assert_eq!(point["same_fs"], true, "{j}");
    let epoch = point["epoch"].as_u64().expect("point epoch");
    assert!(
        status.contains(&format!("(epoch {epoch})")),
        "{status} / {j}"
    );
    let line = fields(&stdout(&info(t.backing(), &[])))["Backup point"].clone();
    assert!(line.contains(&format!("at epoch {epoch}")), "{line}");
    run_ok(
        Command::new(bin("digimedfs"))
            .args(["backup", "end"])
            .arg(t.backing()),
    );

    // The mount goes on serving, and still holds its lock.
    fs::write(t.path("after"), b"written after info").unwrap();
    assert_eq!(fs::read(t.path("before")).unwrap(), b"written before info");
    assert_eq!(t.daemon_pid(), Some(pid));
    assert_eq!(info_json(t.backing(), &[])["mount"]["mounted"], true);
    t.remount();
    assert_eq!(fs::read(t.path("after")).unwrap(), b"written after info");
    t.unmount();
    let j = info_json(t.backing(), &[]);
    assert_eq!(j["mount"]["mounted"], false);
    assert_eq!(j["flags"]["clean"], true);
}

#[test]
fn info_with_the_key_verifies_and_a_flipped_label_byte_fails_the_mac() {
    let (dir, key, backing, _) = labelled_fs();
    let out = info(&backing, &["--key-file", key.to_str().unwrap()]);
    assert!(out.status.success(), "info with key: {}", stderr(&out));
    let f = fields(&stdout(&out));
    assert!(
        f["Superblock"].starts_with("verified: MAC matches (key slot 0"),
        "{}",
        stdout(&out)
    );
    let j = info_json(&backing, &["--key-file", key.to_str().unwrap()]);
    assert_eq!(j["verified"], true);
    assert_eq!(j["verified_slot"], 0);

    // Flip one bit of the label in the primary superblock ("cohort-a" -> "bohort-a").
    let path = backing.join("superblock");
    let mut bytes = fs::read(&path).unwrap();
    let at = bytes
        .windows(8)
        .position(|w| w == b"cohort-a")
        .expect("label in the superblock");
    bytes[at] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    // Without a key the change cannot be told: shown as read, unverified, exit 0.
    let out = info(&backing, &[]);
    assert!(out.status.success(), "info: {}", stderr(&out));
    let f = fields(&stdout(&out));
    assert_eq!(f["Filesystem label"], "bohort-a");
    assert_eq!(f["Superblock"], "unverified: read without a key");
    assert_eq!(f["Other superblock copy"], "differs");

    // With the key: the MAC fails, said on stdout and stderr, exit 1.
    let out = info(&backing, &["--key-file", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let f = fields(&stdout(&out));
    assert!(
        f["Superblock"].starts_with("NOT verified") && f["Superblock"].contains("MAC mismatch"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("does not verify"), "{}", stderr(&out));
    let out = info(&backing, &["--json", "--key-file", key.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON even when it fails");
    assert_eq!(j["verified"], false);
    assert!(
        j["verify_error"]
            .as_str()
            .is_some_and(|e| e.contains("MAC mismatch")),
        "{j}"
    );

    // A key that opens no slot is a verification failure too.
    let other = dir.path().join("other.key");
    run_ok(Command::new(bin("digimedfs")).arg("keygen").arg(&other));
    bytes[at] ^= 0x01;
    fs::write(&path, &bytes).unwrap();
    let out = info(&backing, &["--key-file", other.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        fields(&stdout(&out))["Superblock"].contains("wrong key"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn tune_relabels_and_the_filesystem_still_mounts_and_checks_clean() {
    let mut t = TestFs::unmounted(&[]);
    t.mount();
    fs::write(t.path("data"), b"kept across the relabel").unwrap();
    t.unmount();
    let before = info_json(t.backing(), &[]);
    assert_eq!(before["label"], "");

    let out = tune(t.key_file(), t.backing(), "cohort-b");
    assert!(out.status.success(), "tune: {}", stderr(&out));
    assert!(
        stdout(&out).contains("label changed from \"\" to \"cohort-b\""),
        "{}",
        stdout(&out)
    );
    let after = info_json(t.backing(), &["--key-file", t.key_file().to_str().unwrap()]);
    assert_eq!(after["label"], "cohort-b");
    assert_eq!(after["verified"], true, "{after}");
    assert_eq!(after["other_copy"], "identical", "{after}");
    // Only the label changed: the epoch stays bound to the metadata store.
    for field in [
        "fs_uuid",
        "epoch",
        "tenant",
        "block_size",
        "created",
        "flags",
        "key_slots",
    ] {
        assert_eq!(before[field], after[field], "{field} changed");
    }
    let out = tune(t.key_file(), t.backing(), "cohort-b");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("nothing to do"), "{}", stdout(&out));

    t.mount();
    assert_eq!(
        fs::read(t.path("data")).unwrap(),
        b"kept across the relabel"
    );
    t.unmount();
    assert_eq!(info_json(t.backing(), &[])["label"], "cohort-b");
    let out = run(Command::new(bin("fsck-digimed"))
        .args(["-n", "--key-file"])
        .arg(t.key_file())
        .arg(t.backing()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "fsck -n after tune: {}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
fn tune_refuses_a_mounted_filesystem_and_overlong_labels() {
    let mut t = TestFs::new();
    let out = tune(t.key_file(), t.backing(), "while-mounted");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("is already mounted by host"),
        "{}",
        stderr(&out)
    );
    assert_eq!(info_json(t.backing(), &[])["label"], "");
    fs::write(t.path("f"), b"still served").unwrap();
    t.unmount();

    let too_long = "x".repeat(65);
    let out = tune(t.key_file(), t.backing(), &too_long);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("at most 64 bytes"),
        "{}",
        stderr(&out)
    );
    // Bytes count, not characters: 32 × "é" is 64 bytes, 33 × is 66.
    let out = tune(t.key_file(), t.backing(), &"é".repeat(33));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("66 bytes"), "{}", stderr(&out));
    assert_eq!(info_json(t.backing(), &[])["label"], "");
    let out = tune(t.key_file(), t.backing(), &"é".repeat(32));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(info_json(t.backing(), &[])["label"], "é".repeat(32));

    // mkfs.digimed -L takes the same labels.
    let other = t.root_dir().join("other");
    fs::create_dir(&other).unwrap();
    let mkfs = |label: &str| {
        run(Command::new(bin("mkfs-digimed"))
            .args(["-q", "-L", label, "--key-file"])
            .arg(t.key_file())
            .arg(&other))
    };
    let out = mkfs(&too_long);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("at most 64 bytes"),
        "{}",
        stderr(&out)
    );
    assert!(mkfs(&"é".repeat(32)).status.success());
}

#[test]
fn info_and_tune_name_the_path_that_is_not_a_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    run_ok(Command::new(bin("digimedfs")).arg("keygen").arg(&key));
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let garbage = dir.path().join("garbage");
    fs::create_dir(&garbage).unwrap();
    fs::write(garbage.join("superblock"), b"not a superblock at all").unwrap();
    let cases = [
        (&missing, "no such directory"),
        (&key, "not a directory"),
        (&empty, "not a digimedfs filesystem"),
        (&garbage, "bad magic"),
    ];
    for (path, why) in cases {
        for out in [
            info(path, &[]),
            info(path, &["--json"]),
            tune(&key, path, "x"),
        ] {
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(1), "{}: {err}", path.display());
            assert!(
                err.contains(path.to_str().unwrap()) && err.contains(why),
                "{}: {err}",
                path.display()
            );
            assert!(!err.contains("panicked"), "{err}");
            assert!(out.stdout.is_empty(), "{}", stdout(&out));
        }
    }
    // Nothing was created in them.
    assert!(!missing.exists());
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
}

/// A running key service (in-process, demo TLS on 127.0.0.1) with tenant `A` and a token file
/// for it; returns the server, the `--keyservice ... --ca-file ...` flags, and its directory.
fn key_service() -> (
    digimedfs_keyservice::server::BackgroundServer,
    Vec<String>,
    tempfile::TempDir,
) {
    use digimedfs_keyservice::state::Credential;
    use std::os::unix::fs::OpenOptionsExt;
    const PASS: &str = "e2e admin passphrase";
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cred = || Credential::passphrase(PASS).unwrap();
    digimedfs_keyservice::admin::init(&state, &cred()).unwrap();
    let tls = digimedfs_keyservice::tls::write_demo(&dir.path().join("tls")).unwrap();
    let admin = digimedfs_keyservice::admin::Admin::open(&state, &cred()).unwrap();
    admin.tenant_add("A").unwrap();
    let token = admin.token_issue(Some("A")).unwrap();
    let token_file = dir.path().join("token");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&token_file)
        .unwrap();
    std::io::Write::write_all(&mut f, format!("{}\n", token.as_str()).as_bytes()).unwrap();
    let cfg = digimedfs_keyservice::server::ServerConfig::new(
        state,
        "127.0.0.1:0".parse().unwrap(),
        tls.cert.clone(),
        tls.key.clone(),
    );
    let server = digimedfs_keyservice::server::BackgroundServer::start(cfg, cred()).unwrap();
    let flags = vec![
        "--keyservice".to_string(),
        server.url(),
        "--tenant".into(),
        "A".into(),
        "--token-file".into(),
        token_file.display().to_string(),
        "--ca-file".into(),
        tls.ca.display().to_string(),
    ];
    (server, flags, dir)
}

#[test]
fn key_service_slots_show_their_version_and_tune_refuses_a_rollback() {
    let (_server, ks, dir) = key_service();
    let backing = dir.path().join("backing");
    run_ok(
        Command::new(bin("mkfs-digimed"))
            .args(["-q", "-L", "cohort-ks"])
            .args(&ks)
            .arg(&backing),
    );
    let ks_args: Vec<&str> = ks.iter().map(String::as_str).collect();
    let out = info(&backing, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fields(&stdout(&out))["Key slot 0"],
        "key-service, key version 1"
    );
    let j = info_json(&backing, &ks_args);
    assert_eq!(j["verified"], true, "{j}");
    assert_eq!(j["key_slots"][0]["kind_name"], "key-service");
    assert_eq!(j["key_slots"][0]["key_version"], 1);
    assert_eq!(j["key_slots"][0]["key_id"], "01000000");

    // An old copy; then a mount and unmount move the epoch on, and the key service records it.
    let old = dir.path().join("old");
    run_ok(Command::new("cp").arg("-a").arg(&backing).arg(&old));
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    run_ok(
        Command::new(bin("digimedfs"))
            .arg("mount")
            .args(&ks)
            .arg(&backing)
            .arg(&mnt),
    );
    assert!(digimedfs_tests::wait_until(
        digimedfs_tests::TIMEOUT,
        || digimedfs_tests::is_mounted(&mnt)
    ));
    digimedfs_tests::unmount_and_wait(&mnt).unwrap();

    let tune_ks = |b: &Path, label: &str| {
        run(Command::new(bin("digimedfs"))
            .args(["tune", "-L", label])
            .args(&ks)
            .arg(b))
    };
    let out = tune_ks(&backing, "cohort-ks2");
    assert!(out.status.success(), "tune: {}", stderr(&out));
    let j = info_json(&backing, &ks_args);
    assert_eq!(
        (&j["label"], &j["verified"]),
        (&"cohort-ks2".into(), &true.into())
    );

    // Storage puts the old copy back: tune does not build on a rolled-back superblock.
    fs::remove_dir_all(&backing).unwrap();
    run_ok(Command::new("cp").arg("-a").arg(&old).arg(&backing));
    let out = tune_ks(&backing, "on-a-rollback");
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(stderr(&out).contains("rollback"), "{}", stderr(&out));
    assert_eq!(info_json(&backing, &[])["label"], "cohort-ks");
}
