//! A mount's counters, for the administrator: requests and errors by operation, bytes read and
//! written, integrity failures, and the core's cache and write-buffer figures
//! ([`core::CacheStats`]). The daemon writes them every [`PUBLISH_INTERVAL`] to one file per
//! mount in the Prometheus text format ([`metrics_path`]): `cat` reads it, and node_exporter's
//! textfile collector pointed at the directory exports it. The file is replaced atomically
//! (write, rename), so a reader never sees half of it, and removed when the mount ends.
//!
//! Nothing in it comes from the filesystem's contents: names, paths inside the mount and
//! inode numbers are never written; the labels are the mountpoint and the operation names.

use digimedfs_core::filesystem as core;
use digimedfs_core::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

/// How often the daemon rewrites its metrics file.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(5);

macro_rules! ops {
    ($($op:ident = $name:literal),* $(,)?) => {
        /// The request kinds the handlers count, one per handler.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Op { $($op),* }
        /// Their names in the metrics (the FUSE operation, lower case).
        const OP_NAMES: &[&str] = &[$($name),*];
    };
}

ops!(
    Lookup = "lookup",
    Getattr = "getattr",
    Setattr = "setattr",
    Readlink = "readlink",
    Mknod = "mknod",
    Mkdir = "mkdir",
    Unlink = "unlink",
    Rmdir = "rmdir",
    Symlink = "symlink",
    Rename = "rename",
    Link = "link",
    Open = "open",
    Create = "create",
    Read = "read",
    Write = "write",
    Flush = "flush",
    Release = "release",
    Fsync = "fsync",
    Opendir = "opendir",
    Readdir = "readdir",
    Readdirplus = "readdirplus",
    Releasedir = "releasedir",
    Fsyncdir = "fsyncdir",
    Statfs = "statfs",
    Setxattr = "setxattr",
    Getxattr = "getxattr",
    Listxattr = "listxattr",
    Removexattr = "removexattr",
    Access = "access",
    Fallocate = "fallocate",
    Ioctl = "ioctl",
    Lseek = "lseek",
    Forget = "forget",
);

impl Op {
    /// The operation's name, as logs and metrics give it.
    pub fn name(self) -> &'static str {
        OP_NAMES.get(self as usize).copied().unwrap_or("other")
    }
}

/// The counters the request handlers keep (shared by every clone of the adapter).
pub struct MountStats {
    requests: Vec<AtomicU64>,
    errors: Vec<AtomicU64>,
    integrity_failures: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
}

impl Default for MountStats {
    fn default() -> Self {
        MountStats {
            requests: OP_NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
            errors: OP_NAMES.iter().map(|_| AtomicU64::new(0)).collect(),
            integrity_failures: AtomicU64::new(0),
            bytes_read: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
        }
    }
}

impl MountStats {
    /// Counts one request of kind `op`.
    pub fn request(&self, op: Op) {
        if let Some(c) = self.requests.get(op as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Counts a request of kind `op` answered with `err` (an integrity failure also as such).
    pub fn error(&self, op: Op, err: &Error) {
        if let Some(c) = self.errors.get(op as usize) {
            c.fetch_add(1, Relaxed);
        }
        if matches!(err, Error::Integrity { .. }) {
            self.integrity_failures.fetch_add(1, Relaxed);
        }
    }

    /// Counts file data returned by a READ.
    pub fn read_bytes(&self, n: usize) {
        self.bytes_read.fetch_add(n as u64, Relaxed);
    }

    /// Counts file data accepted by a WRITE.
    pub fn written_bytes(&self, n: u32) {
        self.bytes_written.fetch_add(u64::from(n), Relaxed);
    }

    /// The counters in the Prometheus text format, labelled with `mountpoint`.
    pub fn render(
        &self,
        cache: &core::CacheStats,
        mountpoint: &Path,
        started: SystemTime,
    ) -> String {
        let mp = label_value(&mountpoint.to_string_lossy());
        let mut out = String::new();
        family(
            &mut out,
            "requests_total",
            "counter",
            "FUSE requests handled, by operation.",
        );
        for (name, c) in OP_NAMES.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "digimedfs_requests_total{{mountpoint=\"{mp}\",op=\"{name}\"}} {}",
                c.load(Relaxed)
            );
        }
        family(
            &mut out,
            "request_errors_total",
            "counter",
            "FUSE requests answered with an error, by operation (a missed lookup is no error).",
        );
        for (name, c) in OP_NAMES.iter().zip(&self.errors) {
            let _ = writeln!(
                out,
                "digimedfs_request_errors_total{{mountpoint=\"{mp}\",op=\"{name}\"}} {}",
                c.load(Relaxed)
            );
        }
        let scalars: [(&str, &str, &str, u64); 14] = [
            (
                "integrity_failures_total",
                "counter",
                "Requests refused because stored data or metadata failed authentication (EIO).",
                self.integrity_failures.load(Relaxed),
            ),
            (
                "read_bytes_total",
                "counter",
                "File data returned by reads.",
                self.bytes_read.load(Relaxed),
            ),
            (
                "written_bytes_total",
                "counter",
                "File data accepted by writes.",
                self.bytes_written.load(Relaxed),
            ),
            (
                "dirty_bytes",
                "gauge",
                "Written file data not yet handed to storage.",
                cache.dirty_bytes,
            ),
            (
                "in_flight_bytes",
                "gauge",
                "File data being written to storage.",
                cache.in_flight_bytes,
            ),
            (
                "inline_dirty_bytes",
                "gauge",
                "Small files' contents not yet stored.",
                cache.inline_dirty_bytes,
            ),
            (
                "max_dirty_bytes",
                "gauge",
                "The bound on the three buffers above (32 MiB; docs/performance.md, tuning table).",
                cache.max_dirty_bytes,
            ),
            (
                "nodes_loaded",
                "gauge",
                "Inodes held in memory.",
                cache.nodes_loaded,
            ),
            (
                "node_cache_hits_total",
                "counter",
                "Inode lookups served from memory.",
                cache.node_hits,
            ),
            (
                "node_cache_misses_total",
                "counter",
                "Inode lookups that read the metadata store.",
                cache.node_misses,
            ),
            (
                "chunk_cache_hits_total",
                "counter",
                "Block-map lookups served from memory.",
                cache.chunk_hits,
            ),
            (
                "chunk_cache_misses_total",
                "counter",
                "Block-map lookups that read the metadata store.",
                cache.chunk_misses,
            ),
            (
                "start_time_seconds",
                "gauge",
                "When the mount started, seconds since the Unix epoch.",
                unix_secs(started),
            ),
            (
                "metrics_time_seconds",
                "gauge",
                "When this file was written, seconds since the Unix epoch.",
                unix_secs(SystemTime::now()),
            ),
        ];
        for (name, kind, help, v) in scalars {
            family(&mut out, name, kind, help);
            let _ = writeln!(out, "digimedfs_{name}{{mountpoint=\"{mp}\"}} {v}");
        }
        out
    }
}

/// The `# HELP` and `# TYPE` lines of metric family `digimedfs_NAME`.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP digimedfs_{name} {help}");
    let _ = writeln!(out, "# TYPE digimedfs_{name} {kind}");
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `v` escaped as a Prometheus label value (backslash, double quote and newline).
fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Where the metrics of the mount on `mountpoint` go: `/run/digimedfs/metrics/NAME.prom` for
/// root, `$XDG_RUNTIME_DIR/digimedfs/metrics/NAME.prom` for others (no file without one),
/// NAME being the mountpoint as the log file names it (`crate::cli::log_name`).
pub fn metrics_path(mountpoint: &Path) -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let base = if euid == 0 {
        PathBuf::from("/run")
    } else {
        PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty())?)
    };
    let name = crate::cli::log_name(mountpoint);
    Some(
        base.join("digimedfs")
            .join("metrics")
            .join(format!("{name}.prom")),
    )
}

/// The thread that writes a mount's metrics file; stopping it removes the file.
pub struct Publisher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Publisher {
    /// Starts writing `stats` and `fs`'s cache figures for `mountpoint` to `path` now and every
    /// [`PUBLISH_INTERVAL`]. A directory or file that cannot be written costs a warning, never
    /// the mount.
    pub fn start(
        stats: Arc<MountStats>,
        fs: Arc<core::Filesystem>,
        mountpoint: PathBuf,
        path: PathBuf,
    ) -> Publisher {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = Arc::clone(&stop);
        let started = SystemTime::now();
        let thread = thread::Builder::new()
            .name("digimedfs-metrics".into())
            .spawn(move || {
                let mut warned = false;
                loop {
                    let text = stats.render(&fs.cache_stats(), &mountpoint, started);
                    match write_atomically(&path, &text) {
                        Ok(()) => warned = false,
                        Err(e) if !warned => {
                            tracing::warn!("metrics: writing {}: {e}", path.display());
                            warned = true;
                        }
                        Err(_) => {}
                    }
                    let (lock, cv) = &*flag;
                    let Ok(guard) = lock.lock() else { break };
                    let Ok((guard, _)) = cv.wait_timeout_while(guard, PUBLISH_INTERVAL, |s| !*s)
                    else {
                        break;
                    };
                    if *guard {
                        break;
                    }
                }
                let _ = std::fs::remove_file(&path);
            });
        let thread = match thread {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("metrics: cannot start the writer thread: {e}");
                None
            }
        };
        Publisher { stop, thread }
    }

    /// Stops the writer and removes the file.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        let (lock, cv) = &*self.stop;
        if let Ok(mut s) = lock.lock() {
            *s = true;
        }
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.halt();
    }
}

/// Writes `text` to `path` through a temporary file renamed over it, creating the directory
/// (mode 0755: the figures are not secret, and monitoring agents run as other users).
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)?;
    }
    let tmp = path.with_extension("prom.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_has_a_name_and_counts_separately() {
        assert_eq!(Op::Lookup.name(), "lookup");
        assert_eq!(Op::Forget.name(), "forget");
        let s = MountStats::default();
        s.request(Op::Write);
        s.request(Op::Write);
        s.request(Op::Read);
        s.error(
            Op::Read,
            &Error::Integrity {
                what: "block".into(),
            },
        );
        s.written_bytes(10);
        let text = s.render(
            &core::CacheStats::default(),
            Path::new("/mnt/a \"b\""),
            SystemTime::UNIX_EPOCH,
        );
        assert!(text.contains(
            "digimedfs_requests_total{mountpoint=\"/mnt/a \\\"b\\\"\",op=\"write\"} 2\n"
        ));
        assert!(text.contains("op=\"read\"} 1\n"));
        assert!(text.contains(
            "digimedfs_request_errors_total{mountpoint=\"/mnt/a \\\"b\\\"\",op=\"read\"} 1\n"
        ));
        assert!(text
            .contains("digimedfs_integrity_failures_total{mountpoint=\"/mnt/a \\\"b\\\"\"} 1\n"));
        assert!(
            text.contains("digimedfs_written_bytes_total{mountpoint=\"/mnt/a \\\"b\\\"\"} 10\n")
        );
        // Each family once, its HELP and TYPE before its samples.
        assert_eq!(
            text.matches("# TYPE digimedfs_requests_total counter")
                .count(),
            1
        );
    }
}
