//! Load benchmark: N unwrap requests from C concurrent clients against an in-process key service
//! (real TLS on 127.0.0.1, real state directory and fsynced audit log in a temporary directory).
//! Prints requests per second, latency percentiles and the process's resident set.
//!
//! ```sh
//! cargo run --release -p digimedfs-keyservice --example load -- [N [C]]   # default 1000 50
//! ```
//!
//! Each client thread opens a new TLS connection per request (as the blocking client does).
//! The state directory lives under `$TMPDIR` (default /tmp): every unwrap is fsynced to the audit
//! log before the reply, so the filesystem's fsync latency bounds the throughput.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use digimedfs_keyservice::admin::Admin;
use digimedfs_keyservice::client::KeyService;
use digimedfs_keyservice::server::{BackgroundServer, ServerConfig};
use digimedfs_keyservice::state::Credential;

const FS: [u8; 16] = [0x4c; 16];

fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Mean latency of appending a 300-byte line and `fdatasync`ing it, in `dir` (what the audit log
/// does for every request, under its lock).
fn fsync_latency(dir: &std::path::Path) -> std::io::Result<Duration> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let rounds = 200u32;
    let t = Instant::now();
    for _ in 0..rounds {
        f.write_all(&[b'x'; 300])?;
        f.sync_data()?;
    }
    let d = t.elapsed() / rounds;
    std::fs::remove_file(&path)?;
    Ok(d)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1000), |a| a.parse())?;
    let c: usize = args.next().map_or(Ok(50), |a| a.parse())?;
    anyhow::ensure!(
        n > 0 && c > 0,
        "usage: load [REQUESTS [CLIENTS]] (both > 0)"
    );
    let c = c.min(n);

    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let cred = || Credential::passphrase("load benchmark passphrase");
    digimedfs_keyservice::admin::init(&state, &cred()?)?;
    let tls = digimedfs_keyservice::tls::write_demo(&dir.path().join("tls"))?;
    let admin = Admin::open(&state, &cred()?)?;
    admin.tenant_add("A")?;
    let token = admin.token_issue(Some("A"))?.to_string();
    let cfg = ServerConfig::new(
        state.clone(),
        "127.0.0.1:0".parse()?,
        tls.cert.clone(),
        tls.key.clone(),
    );
    let max_connections = cfg.max_connections;
    let srv = BackgroundServer::start(cfg, cred()?)?;
    let client = KeyService::new(&srv.url(), "A", &token, &tls.ca)?;
    let master: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(71)).collect();
    let (version, wrapped) = client.wrap(&FS, &master)?;
    for _ in 0..10 {
        anyhow::ensure!(client.unwrap(&FS, version, &wrapped)?.as_slice() == master);
    }
    let rss_before = rss();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak = rss();
            while !stop.load(Ordering::Relaxed) {
                peak = peak.max(rss());
                std::thread::sleep(Duration::from_millis(5));
            }
            peak
        })
    };

    let next = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(c + 1));
    let (master, wrapped) = (Arc::new(master), Arc::new(wrapped));
    let workers: Vec<_> = (0..c)
        .map(|_| {
            let (client, next, barrier) = (client.clone(), next.clone(), barrier.clone());
            let (master, wrapped) = (master.clone(), wrapped.clone());
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    let mut lat = Vec::new();
                    let mut errors = Vec::new();
                    barrier.wait();
                    while next.fetch_add(1, Ordering::Relaxed) < n {
                        let t = Instant::now();
                        match client.unwrap(&FS, version, &wrapped) {
                            Ok(k) if k.as_slice() == master.as_slice() => lat.push(t.elapsed()),
                            Ok(_) => errors.push("unwrapped to a different key".to_string()),
                            Err(e) => errors.push(e.to_string()),
                        }
                    }
                    (lat, errors)
                })
        })
        .collect::<std::io::Result<_>>()?;
    barrier.wait();
    let start = Instant::now();
    let mut lat = Vec::with_capacity(n);
    let mut errors = Vec::new();
    for w in workers {
        let (l, e) = w.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
        lat.extend(l);
        errors.extend(e);
    }
    let wall = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let rss_peak = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    lat.sort();
    let audit_lines = admin
        .audit_verify(Some(&state.join("audit.log")), &Default::default())?
        .lines;
    drop(srv);

    let fsync = fsync_latency(dir.path())?;

    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    println!(
        "unwrap load: {n} requests, {c} concurrent clients (new TLS connection per request), \
         server max_connections {max_connections}, state dir {}",
        dir.path().display()
    );
    println!(
        "completed {} ok, {} failed in {:.3} s: {:.0} requests/s",
        lat.len(),
        errors.len(),
        wall.as_secs_f64(),
        lat.len() as f64 / wall.as_secs_f64()
    );
    println!(
        "latency ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        ms(percentile(&lat, 50.0)),
        ms(percentile(&lat, 90.0)),
        ms(percentile(&lat, 99.0)),
        ms(lat.last().copied().unwrap_or_default())
    );
    println!(
        "RSS (server + clients in one process): before {:.1} MiB, peak {:.1} MiB",
        mib(rss_before),
        mib(rss_peak)
    );
    println!("audit log: {audit_lines} lines, chain verified");
    println!(
        "fsync probe (300-byte append + fdatasync, same filesystem): {:.3} ms, \
         ceiling about {:.0} audited requests/s",
        ms(fsync),
        1.0 / fsync.as_secs_f64()
    );
    if let Some(e) = errors.first() {
        anyhow::bail!("{} requests failed; first: {e}", errors.len());
    }
    Ok(())
}
