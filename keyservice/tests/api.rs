//! Key service API against a real server (TLS on 127.0.0.1:0).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use common::{contains, Env};
use digimedfs_keyservice::client::ServiceError as Error;
use digimedfs_keyservice::server::BackgroundServer;

const FS1: [u8; 16] = [1; 16];
const FS2: [u8; 16] = [2; 16];

fn master() -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(5))
        .collect()
}

#[test]
fn wrap_unwrap_roundtrip_and_tenant_separation() {
    let env = Env::new();
    let ta = env.tenant("A");
    let tb = env.tenant("B");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let b = env.client(&srv, "B", &tb);

    let (v, wrapped) = a.wrap(&FS1, &master()).unwrap();
    assert_eq!(v, 1);
    assert!(!contains(&wrapped, &master()));
    assert_eq!(a.unwrap(&FS1, v, &wrapped).unwrap().as_slice(), master());

    // B's token cannot unwrap A's wrapped key.
    let e = b.unwrap(&FS1, v, &wrapped).unwrap_err();
    assert!(matches!(e, Error::WrongTenant { .. }), "{e}");
    // The wrap is bound to the filesystem.
    let e = a.unwrap(&FS2, v, &wrapped).unwrap_err();
    assert!(matches!(e, Error::WrongTenant { .. }), "{e}");
    // Unknown key version.
    let e = a.unwrap(&FS1, 7, &wrapped).unwrap_err();
    assert!(
        matches!(e, Error::UnknownKeyVersion { version: 7, .. }),
        "{e}"
    );
    // Bad token.
    let bad = env.client(&srv, "A", &"00".repeat(32));
    let e = bad.unwrap(&FS1, v, &wrapped).unwrap_err();
    assert!(matches!(e, Error::BadCredential { .. }), "{e}");

    // Stopping the server writes the summary of refused unauthenticated requests.
    drop(srv);
    let log = env.audit();
    assert!(log.contains("\"tenant\":\"B\""), "{log}");
    assert!(log.contains("unwrap_failed"), "{log}");
    assert!(log.contains(&hex::encode(FS2)), "{log}");
    assert!(log.contains("unknown_key_version"), "{log}");
    assert!(log.contains("401 unauthorized"), "{log}");
    assert_eq!(
        env.admin
            .audit_verify(Some(&env.state.join("audit.log")), &Default::default())
            .unwrap()
            .lines,
        log.lines().count()
    );
}

#[test]
fn revocation_of_tenant_and_token() {
    let env = Env::new();
    let ta = env.tenant("A");
    let ta2 = env.admin.token_issue(Some("A")).unwrap().to_string();
    let tb = env.tenant("B");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let a2 = env.client(&srv, "A", &ta2);
    let b = env.client(&srv, "B", &tb);
    let (v, w) = a.wrap(&FS1, &master()).unwrap();
    let (vb, wb) = b.wrap(&FS2, &master()).unwrap();

    // Revoke A's first token by the prefix of its id: only that token stops working.
    let reg = env.admin.registry().unwrap();
    let id = hex::encode(digimedfs_keyservice::registry::token_hash(&ta));
    assert!(reg.tokens.iter().any(|t| t.hash == id));
    env.admin.token_revoke(&id[..10]).unwrap();
    let e = a.unwrap(&FS1, v, &w).unwrap_err();
    assert!(matches!(e, Error::Revoked { .. }), "{e}");
    assert_eq!(a2.unwrap(&FS1, v, &w).unwrap().as_slice(), master());

    // Revoke tenant A: its other token stops too; B is unaffected.
    env.admin.tenant_revoke("A").unwrap();
    let e = a2.unwrap(&FS1, v, &w).unwrap_err();
    assert!(matches!(e, Error::Revoked { .. }), "{e}");
    let e = a2.wrap(&[3; 16], &master()).unwrap_err();
    assert!(matches!(e, Error::Revoked { .. }), "{e}");
    assert_eq!(b.unwrap(&FS2, vb, &wb).unwrap().as_slice(), master());
    assert!(env.audit().contains("tenant_revoked"));
}

#[test]
fn rotation_and_rewrap() {
    let env = Env::new();
    let ta = env.tenant("A");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let (v1, w1) = a.wrap(&FS1, &master()).unwrap();
    assert_eq!(v1, 1);
    assert_eq!(env.admin.rotate("A").unwrap(), 2);
    let (v2, w2) = a.rewrap(&FS1, v1, &w1).unwrap();
    assert_eq!(v2, 2);
    assert_eq!(a.unwrap(&FS1, 2, &w2).unwrap().as_slice(), master());
    // The old version still unwraps until retired.
    assert_eq!(a.unwrap(&FS1, 1, &w1).unwrap().as_slice(), master());
    // A version-1 wrap presented as version 2 fails (version is bound).
    assert!(a.unwrap(&FS1, 2, &w1).is_err());
    // New wraps use version 2.
    assert_eq!(a.wrap(&FS2, &master()).unwrap().0, 2);
    env.admin.retire("A", 1).unwrap();
    let e = a.unwrap(&FS1, 1, &w1).unwrap_err();
    assert!(
        matches!(e, Error::UnknownKeyVersion { version: 1, .. }),
        "{e}"
    );
    assert!(env.admin.retire("A", 2).is_err());
}

#[test]
fn restart_serves_same_keys_and_wrong_passphrase_fails() {
    let env = Env::new();
    let ta = env.tenant("A");
    let (v, w) = {
        let srv = env.start();
        env.client(&srv, "A", &ta).wrap(&FS1, &master()).unwrap()
    };
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    assert_eq!(a.unwrap(&FS1, v, &w).unwrap().as_slice(), master());
    // Two instances on one state dir serve the same keys.
    let srv2 = env.start();
    let a2 = env.client(&srv2, "A", &ta);
    assert_eq!(a2.unwrap(&FS1, v, &w).unwrap().as_slice(), master());
    assert!(env
        .admin
        .audit_verify(Some(&env.state.join("audit.log")), &Default::default())
        .is_ok());

    let wrong = digimedfs_keyservice::state::Credential::passphrase("nope").unwrap();
    let e = digimedfs_keyservice::server::BackgroundServer::start(env.config(), wrong)
        .err()
        .unwrap();
    assert!(
        matches!(e, digimedfs_keyservice::Error::WrongCredential { .. }),
        "{e}"
    );
    drop(srv);
    // The service is unreachable once stopped.
    let e = a.unwrap(&FS1, v, &w).unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
}

#[test]
fn no_secret_bytes_in_state_or_audit() {
    let env = Env::new();
    let ta = env.tenant("A");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let (v, w) = a.wrap(&FS1, &master()).unwrap();
    a.unwrap(&FS1, v, &w).unwrap();
    env.admin.rotate("A").unwrap();
    a.rewrap(&FS1, v, &w).unwrap();
    drop(srv);

    // Derive the secrets the files must not contain.
    let root = digimedfs_keyservice::state::StateDir::new(&env.state)
        .unseal(&common::cred())
        .unwrap();
    let reg = env.admin.registry().unwrap();
    let seed = reg.seed(&root, "A").unwrap();
    let mut markers: Vec<(String, Vec<u8>)> = vec![
        ("root".into(), root.expose().to_vec()),
        ("seed".into(), seed.to_vec()),
        ("master".into(), master()),
        ("token".into(), ta.as_bytes().to_vec()),
        ("token bytes".into(), hex::decode(&ta).unwrap()),
        ("passphrase".into(), common::PASS.as_bytes().to_vec()),
    ];
    for ver in [1, 2] {
        markers.push((
            format!("kek v{ver}"),
            root.kek("A", &seed, ver).unwrap().to_vec(),
        ));
    }
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let files = common::all_files(&env.state);
    assert!(files.len() >= 3);
    for (path, bytes) in &files {
        for (name, m) in &markers {
            for needle in [m.clone(), hex::encode(m).into_bytes(), b64(m).into_bytes()] {
                // Any 16-byte window of the secret would already be a leak.
                for win in needle.windows(16.min(needle.len())) {
                    assert!(!contains(bytes, win), "{name} found in {}", path.display());
                }
            }
        }
    }
}

fn raw(env: &Env, srv: &digimedfs_keyservice::server::BackgroundServer, req: &str) -> u16 {
    let c = env.client(srv, "A", "x");
    c.exchange(req.as_bytes()).unwrap().status
}

#[test]
fn bad_input_is_refused_and_service_keeps_serving() {
    let env = Env::new();
    let ta = env.tenant("A");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let post = |ct: &str, body: &str| {
        format!(
            "POST /v1/wrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ta}\r\n\
             Content-Type: {ct}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let key64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([7u8; 64])
    };
    let fs = hex::encode(FS1);
    assert_eq!(raw(&env, &srv, &post("application/json", "{not json")), 400);
    assert_eq!(
        raw(
            &env,
            &srv,
            &post(
                "application/json",
                &format!(r#"{{"fs_uuid":"{fs}","key":"{key64}","extra":1}}"#)
            )
        ),
        400
    );
    assert_eq!(
        raw(
            &env,
            &srv,
            &post(
                "application/json",
                &format!(r#"{{"fs_uuid":"{fs}","key":"AAAA"}}"#)
            )
        ),
        400
    );
    assert_eq!(
        raw(
            &env,
            &srv,
            &post(
                "text/plain",
                &format!(r#"{{"fs_uuid":"{fs}","key":"{key64}"}}"#)
            )
        ),
        415
    );
    let big = format!(r#"{{"fs_uuid":"{fs}","key":"{}"}}"#, "A".repeat(20_000));
    assert_eq!(raw(&env, &srv, &post("application/json", &big)), 413);
    // Chunked body over the limit (no Content-Length).
    let chunk = "B".repeat(17_000);
    let chunked = format!(
        "POST /v1/wrap HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ta}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         {:x}\r\n{chunk}\r\n0\r\n\r\n",
        chunk.len()
    );
    assert_eq!(raw(&env, &srv, &chunked), 413);
    assert_eq!(
        raw(
            &env,
            &srv,
            "GET /v1/nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ),
        404
    );
    assert_eq!(
        raw(
            &env,
            &srv,
            "GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ),
        200
    );

    // Plaintext HTTP on the TLS port: no HTTP answer, connection closed.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(srv.addr()).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(!contains(&buf, b"HTTP/1.1 200"));
    }
    // A client trusting another CA refuses the server.
    {
        let other = tempfile::tempdir().unwrap();
        let tls2 = digimedfs_keyservice::tls::write_demo(other.path()).unwrap();
        let c =
            digimedfs_keyservice::client::KeyService::new(&srv.url(), "A", &ta, &tls2.ca).unwrap();
        let e = c.wrap(&FS1, &[7u8; 64]).unwrap_err();
        assert!(matches!(e, Error::Tls { .. }), "{e}");
    }

    // Still serving.
    let (v, w) = a.wrap(&FS1, &[7u8; 64]).unwrap();
    assert_eq!(a.unwrap(&FS1, v, &w).unwrap().as_slice(), &[7u8; 64]);
}

#[test]
fn failed_auth_is_rate_limited_per_token_and_address() {
    let env = Env::new();
    let ta = env.tenant("A");
    let mut cfg = env.config();
    cfg.address_failure_limit = 25;
    let srv = digimedfs_keyservice::server::BackgroundServer::start(cfg, common::cred()).unwrap();
    let bad = env.client(&srv, "A", &"ab".repeat(32));
    for _ in 0..10 {
        let e = bad.wrap(&FS1, &master()).unwrap_err();
        assert!(matches!(e, Error::BadCredential { .. }), "{e}");
    }
    // The same bad token again: limited.
    let e = bad.wrap(&FS1, &master()).unwrap_err();
    assert!(matches!(e, Error::RateLimited(_)), "{e}");
    // Another bad token from the same address is not limited yet; past the address's limit
    // (25 failures) every bad token from it is.
    for i in 0..14u8 {
        let other = env.client(&srv, "A", &hex::encode([i; 32]));
        let e = other.wrap(&FS1, &master()).unwrap_err();
        assert!(matches!(e, Error::BadCredential { .. }), "{i}: {e}");
    }
    let fresh = env.client(&srv, "A", &"ef".repeat(32));
    let e = fresh.wrap(&FS1, &master()).unwrap_err();
    assert!(matches!(e, Error::RateLimited(_)), "{e}");
    // A valid token from that address is never locked out.
    let a = env.client(&srv, "A", &ta);
    a.wrap(&FS1, &master()).unwrap();
}

#[test]
fn audit_chain_detects_edits_and_unwritable_log_refuses() {
    let env = Env::new();
    let ta = env.tenant("A");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let (v, w) = a.wrap(&FS1, &master()).unwrap();
    for _ in 0..3 {
        a.unwrap(&FS1, v, &w).unwrap();
    }
    let path = env.state.join("audit.log");
    assert_eq!(
        env.admin
            .audit_verify(Some(&path), &Default::default())
            .unwrap()
            .lines,
        4
    );
    let log = std::fs::read_to_string(&path).unwrap();
    assert!(!log.contains(&ta));

    // Edit line 2: verify names line 2.
    let mut lines: Vec<String> = log.lines().map(str::to_string).collect();
    lines[1] = lines[1].replace("\"unwrap\"", "\"wrap\"");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let e = env
        .admin
        .audit_verify(Some(&path), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2 "), "{e}");
    // Remove line 3: line 3 (the old line 4) no longer chains.
    std::fs::write(&path, &log).unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    lines.remove(2);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let e = env
        .admin
        .audit_verify(Some(&path), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 3 "), "{e}");
    std::fs::write(&path, &log).unwrap();

    // The CLI names the bad line too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_digimed-keyservice"))
        .env("DIGIMED_KS_PASSPHRASE", common::PASS)
        .args(["audit", "verify"])
        .arg(&env.state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Unwritable audit log: replace it by a directory; requests fail with 500.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let e = a.unwrap(&FS1, v, &w).unwrap_err();
    assert!(matches!(e, Error::Service { status: 500, .. }), "{e}");
}

#[test]
fn rollback_anchor() {
    let env = Env::new();
    let ta = env.tenant("A");
    let tb = env.tenant("B");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    a.wrap(&FS1, &master()).unwrap();
    a.record_anchor(&FS1, 5, &[1; 32]).unwrap();
    a.verify_anchor(&FS1, 5, &[1; 32]).unwrap();
    a.verify_anchor(&FS1, 6, &[1; 32]).unwrap();
    assert!(a.verify_anchor(&FS1, 4, &[1; 32]).is_err());
    assert!(a.record_anchor(&FS1, 4, &[1; 32]).is_err());
    // Another tenant cannot move A's anchor.
    let b = env.client(&srv, "B", &tb);
    assert!(matches!(
        b.record_anchor(&FS1, 9, &[1; 32]),
        Err(Error::WrongTenant { .. })
    ));
    env.admin.accept_rollback(&hex::encode(FS1)).unwrap();
    a.verify_anchor(&FS1, 4, &[1; 32]).unwrap();
    a.record_anchor(&FS1, 4, &[2; 32]).unwrap();
    assert!(a.verify_anchor(&FS1, 3, &[1; 32]).is_err());
}

/// A filesystem's anchor belongs to the tenant that wrapped its key: another tenant, who can
/// read the UUID in the plaintext superblock, can neither claim nor poison it, and every such
/// refusal is audited.
#[test]
fn anchor_is_bound_to_the_tenant_that_wrapped_the_key() {
    let env = Env::new();
    let ta = env.tenant("A");
    let tb = env.tenant("B");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let b = env.client(&srv, "B", &tb);
    // mkfs by A.
    let (v, w) = a.wrap(&FS1, &master()).unwrap();
    // B tries to take the new filesystem's anchor before its first mount.
    let e = b.record_anchor(&FS1, u64::MAX, &[0xee; 32]).unwrap_err();
    assert!(matches!(e, Error::WrongTenant { .. }), "{e}");
    let e = b.verify_anchor(&FS1, 1, &[1; 32]).unwrap_err();
    assert!(matches!(e, Error::WrongTenant { .. }), "{e}");
    // Nor can B wrap a key for it.
    let e = b.wrap(&FS1, &master()).unwrap_err();
    assert!(matches!(e, Error::WrongTenant { .. }), "{e}");
    // A's first mount: unwrap, check, anchor.
    assert_eq!(a.unwrap(&FS1, v, &w).unwrap().as_slice(), master());
    a.verify_anchor(&FS1, 1, &[1; 32]).unwrap();
    a.record_anchor(&FS1, 1, &[1; 32]).unwrap();
    // A filesystem nobody wrapped or unwrapped here cannot be anchored at all.
    let e = b.record_anchor(&FS2, 7, &[1; 32]).unwrap_err();
    assert!(matches!(e, Error::WrongTenant { .. }), "{e}");

    let refusals: Vec<serde_json::Value> = env
        .audit()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["tenant"] == "B" && v["outcome"] == "refused")
        .collect();
    assert_eq!(refusals.len(), 4, "{refusals:?}");
    assert!(refusals.iter().all(|v| v["reason"]
        .as_str()
        .unwrap()
        .starts_with("403 wrong_tenant")));
}

/// A filesystem bound before this service knew its owner (or claimed by another tenant's wrap
/// alone) is bound by the first successful unwrap; `anchor clear` (audited) removes a binding.
#[test]
fn unwrap_binds_and_admin_clears_an_anchor() {
    let env = Env::new();
    let ta = env.tenant("A");
    let tb = env.tenant("B");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let b = env.client(&srv, "B", &tb);
    let (v, w) = a.wrap(&FS1, &master()).unwrap();
    a.unwrap(&FS1, v, &w).unwrap();
    a.record_anchor(&FS1, 9, &[1; 32]).unwrap();

    // The admin clears it (CLI, audited): no binding left, B still cannot anchor it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_digimed-keyservice"))
        .env("DIGIMED_KS_PASSPHRASE", common::PASS)
        .args(["anchor", "clear"])
        .arg(&env.state)
        .arg(hex::encode(FS1))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("anchor cleared (was tenant A, epoch 9)"));
    assert!(env.admin.anchor_show(&hex::encode(FS1)).unwrap().is_none());
    let e = b.record_anchor(&FS1, u64::MAX, &[1; 32]).unwrap_err();
    assert!(matches!(e, Error::WrongTenant { .. }), "{e}");
    // B claims it by a wrap; A's unwrap (which only A's key can do) takes it over, since B's
    // claim was never anchored.
    b.wrap(&FS1, &master()).unwrap();
    a.unwrap(&FS1, v, &w).unwrap();
    a.verify_anchor(&FS1, 3, &[1; 32]).unwrap();
    a.record_anchor(&FS1, 3, &[2; 32]).unwrap();
    let e = b.verify_anchor(&FS1, 3, &[1; 32]).unwrap_err();
    assert!(matches!(e, Error::WrongTenant { .. }), "{e}");
    let shown = env.admin.anchor_show(&hex::encode(FS1)).unwrap().unwrap();
    assert_eq!((shown.tenant.as_str(), shown.epoch), ("A", 3));

    let log = env.audit();
    assert!(log.contains("\"op\":\"admin_anchor_clear\""), "{log}");
    assert_eq!(
        env.admin
            .audit_verify(Some(&env.state.join("audit.log")), &Default::default())
            .unwrap()
            .lines,
        log.lines().count()
    );
    // Clearing a filesystem without an anchor is an error naming it.
    let e = env.admin.anchor_clear(&hex::encode(FS2)).unwrap_err();
    assert!(e.to_string().contains(&hex::encode(FS2)), "{e}");
}

/// At the anchored epoch, a superblock with another metadata digest is a replacement: `check`
/// refuses it and `record` does not overwrite the recorded digest; a newer epoch moves on.
/// A client that sends no digest (older versions) gets the epoch check only.
#[test]
fn anchor_compares_the_digest_at_the_recorded_epoch() {
    let env = Env::new();
    let ta = env.tenant("A");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let (d1, d2, d3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    a.wrap(&FS1, &master()).unwrap();
    a.record_anchor(&FS1, 5, &d1).unwrap();
    a.verify_anchor(&FS1, 5, &d1).unwrap();
    let e = a.verify_anchor(&FS1, 5, &d2).unwrap_err();
    assert!(matches!(e, Error::Rollback { .. }), "{e}");
    assert!(e.to_string().contains("digest"), "{e}");
    let e = a.record_anchor(&FS1, 5, &d2).unwrap_err();
    assert!(matches!(e, Error::Rollback { .. }), "{e}");
    // The recorded digest is still d1.
    a.verify_anchor(&FS1, 5, &d1).unwrap();
    a.record_anchor(&FS1, 5, &d1).unwrap();
    let e = a.record_anchor(&FS1, 4, &d1).unwrap_err();
    assert!(matches!(e, Error::Rollback { .. }), "{e}");
    // A newer epoch with another digest is the normal course.
    a.verify_anchor(&FS1, 6, &d2).unwrap();
    a.record_anchor(&FS1, 6, &d2).unwrap();
    assert!(a.verify_anchor(&FS1, 6, &d1).is_err());
    // Old clients: no digest in check_anchor.
    let body = format!(r#"{{"fs_uuid":"{}","epoch":6}}"#, hex::encode(FS1));
    assert_eq!(
        a.post("/v1/check_anchor", body.as_bytes()).unwrap().status,
        200
    );
    // After an accepted rollback, the other line of history is accepted once.
    env.admin.accept_rollback(&hex::encode(FS1)).unwrap();
    a.verify_anchor(&FS1, 6, &d3).unwrap();
    a.record_anchor(&FS1, 6, &d3).unwrap();
    assert!(a.verify_anchor(&FS1, 6, &d2).is_err());
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// Rewrites `lines` (JSON objects without their last member) as an unkeyed SHA-256 chain, the
/// way the unkeyed format was written: what anyone can compute without a key.
fn unkeyed_chain(lines: &[String]) -> String {
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for l in lines {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(l).unwrap();
        v.remove("mac");
        v.remove("hash");
        v.insert("prev".into(), serde_json::Value::String(prev.clone()));
        let body = serde_json::to_string(&v).unwrap();
        let hash = sha256_hex(body.as_bytes());
        let line = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
        prev = sha256_hex(line.as_bytes());
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// Deleting an entry and recomputing the chain without the audit key does not pass `audit
/// verify`, neither with SHA-256 values in the `mac` members nor as an unkeyed chain.
#[test]
fn audit_chain_is_keyed() {
    let env = Env::new();
    let ta = env.tenant("A");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let (v, w) = a.wrap(&FS1, &master()).unwrap();
    for _ in 0..3 {
        a.unwrap(&FS1, v, &w).unwrap();
    }
    drop(srv);
    let path = env.state.join("audit.log");
    let log = std::fs::read_to_string(&path).unwrap();
    let verified = env
        .admin
        .audit_verify(Some(&path), &Default::default())
        .unwrap();
    assert_eq!((verified.lines, verified.legacy), (4, 0));
    let mut lines: Vec<String> = log.lines().map(str::to_string).collect();
    lines.remove(1);

    // 1. Keep the format, recompute prev/mac as plain SHA-256 (the old unkeyed rule).
    let mut forged = String::new();
    let mut prev = "0".repeat(64);
    for l in &lines {
        let mut v: serde_json::Map<String, serde_json::Value> = serde_json::from_str(l).unwrap();
        v.remove("mac");
        v.insert("prev".into(), serde_json::Value::String(prev.clone()));
        let body = serde_json::to_string(&v).unwrap();
        let mac = sha256_hex(body.as_bytes());
        prev = mac.clone();
        forged.push_str(&format!(
            "{},\"mac\":\"{mac}\"}}\n",
            &body[..body.len() - 1]
        ));
    }
    std::fs::write(&path, &forged).unwrap();
    let e = env
        .admin
        .audit_verify(Some(&path), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 1 ") && e.contains("MAC"), "{e}");

    // 2. Downgrade the whole log to an unkeyed chain: refused unless explicitly allowed.
    std::fs::write(&path, unkeyed_chain(&lines)).unwrap();
    let e = env
        .admin
        .audit_verify(Some(&path), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("none of its 3 lines is keyed"), "{e}");

    // 3. The CLI, with the key handed to an auditor in a file, without the credential.
    std::fs::write(&path, &log).unwrap();
    let bin = env!("CARGO_BIN_EXE_digimed-keyservice");
    let out = std::process::Command::new(bin)
        .env("DIGIMED_KS_PASSPHRASE", common::PASS)
        .args(["audit", "key"])
        .arg(&env.state)
        .output()
        .unwrap();
    assert!(out.status.success());
    let key_file = env.dir.path().join("audit.key");
    std::fs::write(&key_file, &out.stdout).unwrap();
    let verify = |extra: &[&str]| {
        std::process::Command::new(bin)
            .env_remove("DIGIMED_KS_PASSPHRASE")
            .args(["audit", "verify", "--audit-log"])
            .arg(&path)
            .arg("--audit-key-file")
            .arg(&key_file)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = verify(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 lines, keyed chain intact"));
    std::fs::write(&path, &forged).unwrap();
    assert!(!verify(&[]).status.success());

    // 4. A checkpoint taken now detects a later cut-off tail.
    std::fs::write(&path, &log).unwrap();
    let out = std::process::Command::new(bin)
        .env("DIGIMED_KS_PASSPHRASE", common::PASS)
        .args(["audit", "checkpoint"])
        .arg(&env.state)
        .output()
        .unwrap();
    assert!(out.status.success());
    let cp = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(cp.starts_with("4:"), "{cp}");
    assert!(verify(&["--checkpoint", &cp]).status.success());
    let cut: String = log.lines().take(3).map(|l| format!("{l}\n")).collect();
    std::fs::write(&path, cut).unwrap();
    assert!(
        verify(&[]).status.success(),
        "a cut tail alone is not detectable"
    );
    let out = verify(&["--checkpoint", &cp]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tail was cut off"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A log written before the chain was keyed is verified as an unkeyed prefix; the keyed chain
/// starts after it and covers it, so editing the prefix is detected even with its SHA-256
/// chain recomputed.
#[test]
fn legacy_unkeyed_prefix_is_verified_and_covered_by_the_keyed_chain() {
    let env = Env::new();
    let ta = env.tenant("A");
    let legacy: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"time":"2026-01-01T00:00:0{i}.000Z","request_id":"{i:016x}","tenant":"A","fs_uuid":null,"op":"wrap","key_version":1,"client":"127.0.0.1:1","outcome":"ok","reason":""}}"#
            )
        })
        .collect();
    let path = env.state.join("audit.log");
    std::fs::write(&path, unkeyed_chain(&legacy)).unwrap();
    let allow = digimedfs_keyservice::audit::VerifyOpts {
        allow_unkeyed: true,
        ..Default::default()
    };
    assert_eq!(
        env.admin.audit_verify(Some(&path), &allow).unwrap().legacy,
        3
    );
    {
        let srv = env.start();
        env.client(&srv, "A", &ta).wrap(&FS1, &master()).unwrap();
    }
    let v = env
        .admin
        .audit_verify(Some(&path), &Default::default())
        .unwrap();
    assert_eq!((v.lines, v.legacy), (4, 3));
    assert!(v.to_string().contains("keyed chain from line 4"), "{v}");

    // Edit a legacy line and recompute the whole unkeyed prefix: the keyed line 4 notices.
    let log = std::fs::read_to_string(&path).unwrap();
    let mut edited = legacy.clone();
    edited[1] = edited[1].replace("\"wrap\"", "\"unwrap\"");
    let keyed = log.lines().nth(3).unwrap();
    std::fs::write(&path, unkeyed_chain(&edited) + keyed + "\n").unwrap();
    let e = env
        .admin
        .audit_verify(Some(&path), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 4 "), "{e}");
}

/// A server on `env` with its metrics listener on 127.0.0.1.
fn start_with_metrics(env: &Env) -> (BackgroundServer, std::net::SocketAddr) {
    let mut cfg = env.config();
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let srv = BackgroundServer::start(cfg, common::cred()).unwrap();
    let addr = srv.metrics_addr().expect("metrics listener");
    (srv, addr)
}

/// `GET /metrics` over plain HTTP: the body.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("HTTP reply");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample `name` (labels included) in `text`, if there is one.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

/// `metric{tenant="t",result="r"}`.
fn per_tenant(metric: &str, t: &str, r: &str) -> String {
    format!("digimed_keyservice_{metric}_total{{tenant=\"{t}\",result=\"{r}\"}}")
}

/// The distinct `tenant` label values in `text`.
fn tenant_labels(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once("tenant=\"")?.1.split_once('"'))
        .map(|(t, _)| t.to_string())
        .collect()
}

/// Two tenants' wraps and unwraps through real TLS show in the per-tenant counters with their
/// exact numbers: successes, refusals after authentication (B presenting A's wrapped key, a
/// revoked token of A) and a 5xx (A's unwrap with the audit log unwritable), and they add up to
/// the unwrap totals of `requests_total`.
#[test]
fn metrics_count_wraps_and_unwraps_per_tenant() {
    let env = Env::new();
    let ta = env.tenant("A");
    let ta2 = env.admin.token_issue(Some("A")).unwrap().to_string();
    let tb = env.tenant("B");
    let (srv, addr) = start_with_metrics(&env);
    let before = scrape(addr);
    for t in ["A", "B"] {
        for r in ["ok", "refused", "error"] {
            assert_eq!(sample(&before, &per_tenant("unwraps", t, r)), Some(0));
        }
    }
    let a = env.client(&srv, "A", &ta);
    let a2 = env.client(&srv, "A", &ta2);
    let b = env.client(&srv, "B", &tb);
    let (v, w) = a.wrap(&FS1, &master()).unwrap();
    let (vb, wb) = b.wrap(&FS2, &master()).unwrap();
    for _ in 0..3 {
        a.unwrap(&FS1, v, &w).unwrap();
    }
    b.unwrap(&FS2, vb, &wb).unwrap();
    let e = b.unwrap(&FS1, v, &w).unwrap_err();
    assert!(matches!(e, Error::WrongTenant { .. }), "{e}");
    env.admin
        .token_revoke(&hex::encode(digimedfs_keyservice::registry::token_hash(
            &ta2,
        )))
        .unwrap();
    let e = a2.unwrap(&FS1, v, &w).unwrap_err();
    assert!(matches!(e, Error::Revoked { .. }), "{e}");
    let audit = env.state.join("audit.log");
    std::fs::remove_file(&audit).unwrap();
    std::fs::create_dir(&audit).unwrap();
    let e = a.unwrap(&FS1, v, &w).unwrap_err();
    assert!(matches!(e, Error::Service { status: 500, .. }), "{e}");

    let text = scrape(addr);
    for (metric, t, r, n) in [
        ("unwraps", "A", "ok", 3),
        ("unwraps", "A", "refused", 1),
        ("unwraps", "A", "error", 1),
        ("unwraps", "B", "ok", 1),
        ("unwraps", "B", "refused", 1),
        ("unwraps", "B", "error", 0),
        ("wraps", "A", "ok", 1),
        ("wraps", "B", "ok", 1),
        ("rewraps", "A", "ok", 0),
    ] {
        let name = per_tenant(metric, t, r);
        assert_eq!(sample(&text, &name), Some(n), "{name} in:\n{text}");
    }
    for r in ["ok", "refused", "error"] {
        let total =
            format!("digimed_keyservice_requests_total{{endpoint=\"unwrap\",result=\"{r}\"}}");
        let per: u64 = ["A", "B"]
            .iter()
            .map(|t| sample(&text, &per_tenant("unwraps", t, r)).unwrap())
            .sum();
        assert_eq!(sample(&text, &total), Some(per), "{total} in:\n{text}");
    }
    assert_eq!(tenant_labels(&text), ["A", "B"].map(String::from).into());
}

/// Requests that did not authenticate for a tenant of the registry add no tenant series: an
/// unknown token from a client configured for tenant "ghost", a request without a token whose
/// body names a tenant, an admin token, and a token whose record names a tenant the registry
/// does not have (an edited registry.json). Each is still in the totals.
#[test]
fn metrics_have_no_series_for_unknown_or_unauthenticated_tenants() {
    let env = Env::new();
    let ta = env.tenant("A");
    let admin_token = env.admin.token_issue(None).unwrap().to_string();
    // A tenant token whose tenant is not in the registry (only a hand edit does this).
    let orphan = "cd".repeat(32);
    let reg_path = env.state.join("registry.json");
    let mut reg = digimedfs_keyservice::registry::Registry::load(&reg_path).unwrap();
    reg.tokens
        .push(digimedfs_keyservice::registry::TokenRecord {
            hash: hex::encode(digimedfs_keyservice::registry::token_hash(&orphan)),
            tenant: Some("ghost-orphan".into()),
            role: digimedfs_keyservice::registry::Role::Tenant,
            revoked: false,
        });
    reg.save(&reg_path).unwrap();
    let (srv, addr) = start_with_metrics(&env);
    let (v, w) = env.client(&srv, "A", &ta).wrap(&FS1, &master()).unwrap();

    let unknown = env.client(&srv, "ghost-unknown", &"ab".repeat(32));
    let e = unknown.unwrap(&FS1, v, &w).unwrap_err();
    assert!(matches!(e, Error::BadCredential { .. }), "{e}");
    let body = format!(
        r#"{{"tenant":"ghost-body","fs_uuid":"{}","key_version":1,"wrapped":"AAAA"}}"#,
        hex::encode(FS1)
    );
    let raw_req = format!(
        "POST /v1/unwrap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(raw(&env, &srv, &raw_req), 401);
    let e = env
        .client(&srv, "A", &admin_token)
        .unwrap(&FS1, v, &w)
        .unwrap_err();
    assert!(
        matches!(e, Error::Revoked { .. }) && e.to_string().contains("admin tokens"),
        "{e}"
    );
    let e = env
        .client(&srv, "ghost-orphan", &orphan)
        .unwrap(&FS1, v, &w)
        .unwrap_err();
    assert!(
        matches!(e, Error::Revoked { .. }) && e.to_string().contains("tenant removed"),
        "{e}"
    );

    let text = scrape(addr);
    let total = |r: &str| {
        sample(
            &text,
            &format!("digimed_keyservice_requests_total{{endpoint=\"unwrap\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(total("unauthenticated"), Some(2), "{text}");
    assert_eq!(total("refused"), Some(2), "{text}");
    assert!(
        !text.contains("ghost"),
        "a tenant from outside the registry:\n{text}"
    );
    assert_eq!(tenant_labels(&text), ["A"].map(String::from).into());
    assert_eq!(
        sample(&text, &per_tenant("unwraps", "A", "refused")),
        Some(0)
    );
    assert_eq!(sample(&text, &per_tenant("wraps", "A", "ok")), Some(1));
}
