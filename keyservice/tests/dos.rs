//! What unauthenticated traffic can cost the key service (real server on 127.0.0.1:0).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::time::{Duration, Instant};

use common::Env;
use digimedfs_keyservice::client::ServiceError as Error;

const FS1: [u8; 16] = [1; 16];

fn audit_len(env: &Env) -> u64 {
    std::fs::metadata(env.state.join("audit.log"))
        .map(|m| m.len())
        .unwrap_or(0)
}

fn random_token() -> String {
    use rand::RngCore;
    let mut t = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut t);
    hex::encode(t)
}

/// A flood of requests with bad tokens adds a bounded number of audit lines (aggregated per
/// address and reason), and those lines account for every refused request.
#[test]
fn bad_token_flood_is_aggregated_in_the_audit_log() {
    const FLOOD: u64 = 400;
    let env = Env::new();
    let ta = env.tenant("A");
    let before;
    let start;
    {
        let srv = env.start();
        let a = env.client(&srv, "A", &ta);
        let (v, w) = a.wrap(&FS1, &[9u8; 64]).unwrap();
        before = audit_len(&env);
        start = Instant::now();
        for i in 0..FLOOD {
            // Half repeat one token, half are fresh, some have no token at all.
            let tok = if i % 2 == 0 {
                "ab".repeat(32)
            } else {
                random_token()
            };
            let bad = env.client(&srv, "A", &tok);
            let e = bad.unwrap(&FS1, v, &w).unwrap_err();
            assert!(
                matches!(e, Error::BadCredential { .. } | Error::RateLimited(_)),
                "{e}"
            );
        }
        eprintln!(
            "flood of {FLOOD} bad-token requests took {:?}; audit log grew by {} bytes while serving",
            start.elapsed(),
            audit_len(&env) - before
        );
        // A legitimate release is still audited on its own line.
        assert_eq!(a.unwrap(&FS1, v, &w).unwrap().as_slice(), &[9u8; 64]);
    }
    // The server has stopped: every pending summary is written.
    let grown = audit_len(&env) - before;
    eprintln!("audit log grew by {grown} bytes in all");
    let log = env.audit();
    let new_lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["outcome"] != "ok" || v["op"] != "wrap")
        .collect();
    assert!(
        new_lines.len() <= 8,
        "{} audit lines for {FLOOD} unauthenticated requests",
        new_lines.len()
    );
    let counted: u64 = new_lines
        .iter()
        .filter(|v| v["op"] == "unauthenticated")
        .map(|v| v["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counted, FLOOD, "{log}");
    assert!(new_lines
        .iter()
        .any(|v| v["op"] == "unwrap" && v["outcome"] == "ok" && v["tenant"] == "A"));
    env.admin
        .audit_verify(Some(&env.state.join("audit.log")), &Default::default())
        .unwrap();
}

/// Bad tokens from one address do not lock a valid token behind the same address out; the
/// same bad token repeated is limited on its own.
#[test]
fn bad_tokens_do_not_lock_out_a_valid_token_from_the_same_address() {
    let env = Env::new();
    let ta = env.tenant("A");
    let tb = env.tenant("B");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let b = env.client(&srv, "B", &tb);
    // 30 different bad tokens and 15 times the same one, all from 127.0.0.1.
    for _ in 0..30 {
        let bad = env.client(&srv, "A", &random_token());
        assert!(bad.wrap(&FS1, &[1u8; 64]).is_err());
    }
    let same = env.client(&srv, "A", &"cd".repeat(32));
    for _ in 0..15 {
        assert!(same.wrap(&FS1, &[1u8; 64]).is_err());
    }
    // That token is now refused with 429, however often it is retried.
    let e = same.wrap(&FS1, &[1u8; 64]).unwrap_err();
    assert!(matches!(e, Error::RateLimited(_)), "{e}");
    // Both tenants' valid tokens from the same address still work.
    let (v, w) = a.wrap(&FS1, &[1u8; 64]).unwrap();
    assert_eq!(a.unwrap(&FS1, v, &w).unwrap().as_slice(), &[1u8; 64]);
    b.wrap(&[2; 16], &[2u8; 64]).unwrap();
}

/// Idle TCP connections (no TLS handshake, no request) beyond the connection cap do not keep a
/// legitimate request out: the server closes the oldest idle one to admit a new connection.
/// The server's handshake timeout is set longer than the client's 15 s timeout, so without
/// that the legitimate request would fail.
#[test]
fn idle_connections_do_not_keep_a_legitimate_request_out() {
    let env = Env::new();
    let ta = env.tenant("A");
    let mut cfg = env.config();
    cfg.max_connections = 8;
    cfg.io_timeout = Duration::from_secs(120);
    cfg.handshake_timeout = Duration::from_secs(120);
    let srv = digimedfs_keyservice::server::BackgroundServer::start(cfg, common::cred()).unwrap();
    let a = env.client(&srv, "A", &ta);
    let idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(srv.addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let (v, w) = a.wrap(&FS1, &[3u8; 64]).unwrap();
    eprintln!(
        "wrap with {} idle connections held open (cap 8): {:?}",
        idle.len(),
        t.elapsed()
    );
    assert_eq!(a.unwrap(&FS1, v, &w).unwrap().as_slice(), &[3u8; 64]);
    drop(idle);
}

/// 300 idle connections at default settings (more than the 256-connection cap): a wrap still
/// succeeds (its latency is printed, not asserted).
#[test]
fn wrap_succeeds_with_300_idle_connections_at_default_settings() {
    let env = Env::new();
    let ta = env.tenant("A");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let t = Instant::now();
    a.wrap(&FS1, &[3u8; 64]).unwrap();
    eprintln!("wrap with no idle connections: {:?}", t.elapsed());
    let idle: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(srv.addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = a.wrap(&FS1, &[3u8; 64]);
    eprintln!(
        "wrap with 300 idle connections: {:?} ({})",
        t.elapsed(),
        if r.is_ok() { "ok" } else { "failed" }
    );
    drop(idle);
    r.unwrap();
}

/// With an audit log that cannot be written, unauthenticated requests are still answered 401
/// (their summary is not due yet, and when it is, its failure is only logged), while a key
/// release, which needs its own audit record, fails closed with 500.
#[test]
fn unwritable_audit_log_fails_releases_not_unauthenticated_refusals() {
    let env = Env::new();
    let ta = env.tenant("A");
    let srv = env.start();
    let a = env.client(&srv, "A", &ta);
    let (v, w) = a.wrap(&FS1, &[4u8; 64]).unwrap();
    let path = env.state.join("audit.log");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    let bad = env.client(&srv, "A", &"ab".repeat(32));
    let e = bad.unwrap(&FS1, v, &w).unwrap_err();
    assert!(matches!(e, Error::BadCredential { .. }), "{e}");
    let e = a.unwrap(&FS1, v, &w).unwrap_err();
    assert!(matches!(e, Error::Service { status: 500, .. }), "{e}");
}

/// The summary is written every `noise_interval` while the server runs, not only at shutdown,
/// and counts the refused requests of its interval.
#[test]
fn unauthenticated_summary_is_written_each_interval() {
    let env = Env::new();
    env.tenant("A");
    let mut cfg = env.config();
    cfg.noise_interval = Duration::from_millis(200);
    let srv = digimedfs_keyservice::server::BackgroundServer::start(cfg, common::cred()).unwrap();
    let bad = env.client(&srv, "A", &"ab".repeat(32));
    for _ in 0..5 {
        assert!(bad.wrap(&FS1, &[1u8; 64]).is_err());
    }
    let summarized = |env: &Env| -> u64 {
        env.audit()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["op"] == "unauthenticated")
            .map(|v| v["count"].as_u64().unwrap())
            .sum()
    };
    assert!(
        wait_until(
            || std::fs::metadata(env.state.join("audit.log")).is_ok() && summarized(&env) == 5
        ),
        "no summary of 5 refused requests while the server runs: {:?}",
        std::fs::read_to_string(env.state.join("audit.log"))
    );
    drop(srv);
    assert_eq!(summarized(&env), 5);
}

/// Polls `f` for up to 30 s.
fn wait_until(f: impl Fn() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
