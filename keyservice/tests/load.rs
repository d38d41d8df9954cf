//! Load: 1 000 concurrent unwrap requests against a real in-process server (TLS on
//! 127.0.0.1:0, real state directory, fsynced audit log) all complete, and memory stays bounded.
//!
//! No assertion on speed: throughput and latency are reported by `examples/load.rs`
//! (`cargo run --release -p digimedfs-keyservice --example load`), see docs/keyservice.md "Load".
//! The overall timeout below is only a hang guard.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::time::Duration;

use common::Env;

const FS: [u8; 16] = [0x4c; 16];
/// Concurrent unwrap requests, one thread and one TLS connection each.
const REQUESTS: usize = 1000;
/// Bound on the growth of the process's resident set (server and clients are both in-process).
const MAX_GROWTH: u64 = 200 * 1024 * 1024;
/// Hang guard only (the load normally takes a few seconds).
const HANG_GUARD: Duration = Duration::from_secs(180);

fn master() -> Vec<u8> {
    (0..64u8)
        .map(|i| i.wrapping_mul(71).wrapping_add(13))
        .collect()
}

/// This process's resident set size in bytes, from `VmRSS` in /proc/self/status.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// Audit lines recording a successful unwrap.
fn ok_unwraps(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["op"] == "unwrap" && v["outcome"] == "ok"
        })
        .count()
}

#[test]
fn thousand_concurrent_unwraps_complete_with_bounded_memory() {
    let env = Env::new();
    let token = env.tenant("A");
    // Default server settings: at most 256 connections at once, the rest wait in the kernel's
    // accept queue; that queueing is part of what is tested.
    let srv = env.start();
    let client = env.client(&srv, "A", &token);
    let (version, wrapped) = client.wrap(&FS, &master()).unwrap();
    // Warm up (lazy initialisation in TLS, allocator, tokio pools) before the baseline.
    for _ in 0..5 {
        assert_eq!(
            client.unwrap(&FS, version, &wrapped).unwrap().as_slice(),
            master()
        );
    }
    let unwraps_before = ok_unwraps(&env.audit());
    let rss_before = rss();

    // Sample the resident set while the load runs, to bound the peak and not only the end.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = rss();
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss());
                std::thread::sleep(Duration::from_millis(5));
            }
            peak.max(rss())
        })
    };

    // 1000 threads released together by a barrier; each opens its own TLS connection and does
    // one unwrap. The results come back over a channel so that a hang fails the test instead of
    // blocking it forever.
    let (tx, rx) = mpsc::channel();
    let barrier = Arc::new(Barrier::new(REQUESTS));
    let wrapped = Arc::new(wrapped);
    let mut threads = Vec::with_capacity(REQUESTS);
    for i in 0..REQUESTS {
        let (c, b, w, tx) = (client.clone(), barrier.clone(), wrapped.clone(), tx.clone());
        let t = std::thread::Builder::new()
            .name(format!("unwrap-{i}"))
            .stack_size(256 * 1024)
            .spawn(move || {
                b.wait();
                let r = c
                    .unwrap(&FS, version, &w)
                    .map(|k| k.as_slice() == master().as_slice())
                    .map_err(|e| e.to_string());
                let _ = tx.send((i, r));
            })
            .unwrap();
        threads.push(t);
    }
    drop(tx);
    let deadline = std::time::Instant::now() + HANG_GUARD;
    let mut failures = Vec::new();
    let mut done = 0usize;
    while done < REQUESTS {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, Ok(true))) => done += 1,
            Ok((i, Ok(false))) => {
                done += 1;
                failures.push(format!("request {i}: unwrapped to a different key"));
            }
            Ok((i, Err(e))) => {
                done += 1;
                failures.push(format!("request {i}: {e}"));
            }
            Err(e) => panic!(
                "only {done} of {REQUESTS} unwraps finished within {HANG_GUARD:?} ({e}); \
                 failures so far: {failures:?}"
            ),
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let rss_peak = sampler.join().unwrap();
    let rss_after = rss();
    assert!(
        failures.is_empty(),
        "{} of {REQUESTS} unwraps failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );

    // Every request was audited (fsynced before its reply) and the chain is intact.
    let log = env.audit();
    let new_unwraps = ok_unwraps(&log) - unwraps_before;
    assert!(
        new_unwraps >= REQUESTS,
        "{new_unwraps} new unwrap audit lines"
    );
    assert_eq!(
        env.admin
            .audit_verify(Some(&env.state.join("audit.log")), &Default::default())
            .unwrap()
            .lines,
        log.lines().count()
    );

    // Bounded memory: the growth of the whole process (server plus the 1000 client threads),
    // at its peak during the load and after it, stays under the bound.
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "RSS before {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
        mib(rss_before),
        mib(rss_peak),
        mib(rss_after)
    );
    assert!(
        rss_peak.saturating_sub(rss_before) < MAX_GROWTH,
        "RSS grew from {:.1} MiB to a peak of {:.1} MiB",
        mib(rss_before),
        mib(rss_peak)
    );
    assert!(
        rss_after.saturating_sub(rss_before) < MAX_GROWTH,
        "RSS grew from {:.1} MiB to {:.1} MiB",
        mib(rss_before),
        mib(rss_after)
    );

    // Still serving after the load.
    assert_eq!(
        client.unwrap(&FS, version, &wrapped).unwrap().as_slice(),
        master()
    );
}
