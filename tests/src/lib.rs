//! Fixtures for the digimedfs end-to-end tests: locate the built binaries, make a key and a
//! filesystem in a private temporary directory, and mount and unmount it through the real
//! `digimedfs` and `fusermount3` binaries.
//!
//! Every [`TestFs`] has its own directories, so tests can run in parallel.

// Test fixtures: a failed expectation panics, as in the tests that use them.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long mounts, unmounts and daemon exits may take before a test gives up.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variable: put the backing directories of [`TestFs::unmounted`] (and so of
/// [`TestFs::new`]) under this directory, e.g. a CephFS mount, instead of a local temp dir.
pub const BACKING_ROOT_ENV: &str = "DIGIMEDFS_TEST_BACKING_ROOT";

/// Mount options added to every fixture mount (comma-separated), e.g. `uring` to run the
/// whole suite over FUSE's io_uring transport.
pub const MOUNT_OPTIONS_ENV: &str = "DIGIMEDFS_TEST_MOUNT_OPTIONS";

/// The directory holding the workspace's built binaries (`target/debug`).
///
/// The test binary lives in `target/debug/deps/`, so its grandparent directory is where cargo
/// put `digimedfs` and `mkfs-digimed`; `CARGO_MANIFEST_DIR/../target/debug` is the fallback.
pub fn bin_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent().and_then(Path::parent) {
            if dir.join("digimedfs").is_file() {
                return dir.to_path_buf();
            }
        }
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

/// The path of a workspace binary; panics with a clear message if it has not been built.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "binary {} not found: build it first with `cargo build --workspace --bins`",
        path.display()
    );
    path
}

/// Runs a command to completion, capturing its output; panics if it cannot be started.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics with its output unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Decodes the octal escapes (`\040` etc.) /proc/mounts uses for special characters.
fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `/proc/mounts` entries (source, fstype) whose mountpoint is `mountpoint`.
pub fn mounts_at(mountpoint: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    let want = mountpoint.to_string_lossy();
    text.lines()
        .filter_map(|line| {
            let mut f = line.split(' ');
            let src = f.next()?;
            let mnt = f.next()?;
            let ty = f.next()?;
            (unescape_mount_field(mnt) == want).then(|| (unescape_mount_field(src), ty.to_string()))
        })
        .collect()
}

/// Whether anything is mounted at `mountpoint`.
pub fn is_mounted(mountpoint: &Path) -> bool {
    !mounts_at(mountpoint).is_empty()
}

/// The pids of `digimedfs` processes whose command line has `mountpoint` as an argument.
pub fn daemon_pids(mountpoint: &Path) -> Vec<i32> {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_digimedfs = args.first().is_some_and(|a| a.ends_with(b"digimedfs"));
        if is_digimedfs && args.iter().skip(1).any(|a| *a == want) {
            pids.push(pid);
        }
    }
    pids
}

/// Whether process `pid` exists and is not a zombie.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // The state follows the parenthesised command name.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(
                state.and_then(|s| s.chars().next()),
                Some('Z') | Some('X') | None
            )
        }
        Err(_) => false,
    }
}

/// A filesystem under test: a private temporary directory holding a key file, a backing
/// directory made by `mkfs-digimed`, and a mountpoint. Unmounted when dropped.
pub struct TestFs {
    dir: tempfile::TempDir,
    /// The directory holding the backing directory when it lives under another root than
    /// `dir` (shared storage); removed after the unmount.
    _backing_dir: Option<tempfile::TempDir>,
    key: PathBuf,
    backing: PathBuf,
    mnt: PathBuf,
    options: Vec<String>,
    mounted: bool,
}

impl TestFs {
    /// A fresh filesystem, mounted with default options.
    pub fn new() -> Self {
        Self::with_options(&[])
    }

    /// A fresh filesystem, mounted with `-o` options (e.g. `allow_other`).
    pub fn with_options(options: &[&str]) -> Self {
        let mut fs = Self::unmounted(options);
        fs.mount();
        fs
    }

    /// A fresh filesystem (key made, mkfs run), not mounted yet. The backing directory goes
    /// under `$DIGIMEDFS_TEST_BACKING_ROOT` if that is set (e.g. a CephFS mount), else next to
    /// the key and the mountpoint in a local temporary directory.
    pub fn unmounted(options: &[&str]) -> Self {
        match std::env::var_os(BACKING_ROOT_ENV) {
            Some(root) if !root.is_empty() => Self::unmounted_on(Path::new(&root), options),
            _ => Self::unmounted_in(None, options),
        }
    }

    /// A fresh filesystem, not mounted yet, whose backing directory is a new directory under
    /// `root` (for example a CephFS mount); the key and the mountpoint stay local.
    pub fn unmounted_on(root: &Path, options: &[&str]) -> Self {
        Self::unmounted_in(Some(root), options)
    }

    fn unmounted_in(root: Option<&Path>, options: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("digimedfs-e2e-")
            .tempdir()
            .expect("create temp dir");
        // Let non-root test users reach the mountpoint (allow_other tests).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod temp dir");
        let key = dir.path().join("key");
        let backing_dir = root.map(|root| {
            tempfile::Builder::new()
                .prefix("digimedfs-e2e-")
                .tempdir_in(root)
                .unwrap_or_else(|e| panic!("create a temp dir under {}: {e}", root.display()))
        });
        let backing = match &backing_dir {
            Some(d) => d.path().join("backing"),
            None => dir.path().join("backing"),
        };
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&backing).expect("mkdir backing");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        run_ok(Command::new(bin("digimedfs")).arg("keygen").arg(&key));
        run_ok(
            Command::new(bin("mkfs-digimed"))
                .args(["-q", "--tenant", "e2e", "--key-file"])
                .arg(&key)
                .arg(&backing),
        );
        TestFs {
            dir,
            _backing_dir: backing_dir,
            key,
            backing,
            mnt,
            options: options
                .iter()
                .map(|s| s.to_string())
                .chain(
                    std::env::var(MOUNT_OPTIONS_ENV)
                        .unwrap_or_default()
                        .split(',')
                        .filter(|o| !o.is_empty())
                        .map(str::to_string),
                )
                .collect(),
            mounted: false,
        }
    }

    /// The temporary directory holding everything of this filesystem.
    pub fn root_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The key file.
    pub fn key_file(&self) -> &Path {
        &self.key
    }

    /// The backing directory.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mnt
    }

    /// `rel` inside the mounted filesystem.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Whether the fixture believes the filesystem is mounted.
    pub fn is_mounted(&self) -> bool {
        self.mounted
    }

    /// A `digimedfs mount` command for this filesystem's backing dir onto `mountpoint`, with
    /// the fixture's options plus `extra_options`, using `key`.
    pub fn mount_command(&self, key: &Path, mountpoint: &Path, extra_options: &[&str]) -> Command {
        let mut cmd = Command::new(bin("digimedfs"));
        // Tests read the daemon's log file, also on hosts where journald runs.
        cmd.env("DIGIMEDFS_LOG", "file").arg("mount");
        let opts: Vec<&str> = self
            .options
            .iter()
            .map(String::as_str)
            .chain(extra_options.iter().copied())
            .collect();
        if !opts.is_empty() {
            cmd.arg("-o").arg(opts.join(","));
        }
        cmd.arg("--key-file")
            .arg(key)
            .arg(&self.backing)
            .arg(mountpoint);
        cmd
    }

    /// Mounts the filesystem; panics (with digimedfs's output) if that fails.
    pub fn mount(&mut self) {
        self.mount_with(&[]);
    }

    /// [`TestFs::mount`] with `extra_options` after the fixture's (a later option wins).
    pub fn mount_with(&mut self, extra_options: &[&str]) {
        assert!(!self.mounted, "already mounted");
        // A previous daemon may still be writing back after `fusermount3 -u` returned.
        self.wait_daemon_gone();
        let out = run(&mut self.mount_command(&self.key, &self.mnt, extra_options));
        assert!(
            out.status.success(),
            "digimedfs mount failed with {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            wait_until(TIMEOUT, || is_mounted(&self.mnt)),
            "digimedfs mount returned 0 but {} never appeared in /proc/mounts",
            self.mnt.display()
        );
        self.mounted = true;
    }

    /// Unmounts with `fusermount3 -u` (retrying while busy, then lazily with `-z`) and waits
    /// for the daemon to exit, so everything has been written back.
    pub fn unmount(&mut self) {
        if let Err(msg) = self.try_unmount() {
            panic!("{msg}");
        }
    }

    /// [`TestFs::unmount`] without panicking.
    pub fn try_unmount(&mut self) -> Result<(), String> {
        let pids = daemon_pids(&self.mnt);
        let mut last_err = String::new();
        let start = Instant::now();
        while is_mounted(&self.mnt) {
            let out = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mnt)
                .output()
                .map_err(|e| format!("cannot run fusermount3: {e}"))?;
            if out.status.success() {
                break;
            }
            last_err = String::from_utf8_lossy(&out.stderr).into_owned();
            if start.elapsed() > Duration::from_secs(5) {
                let _ = Command::new("fusermount3")
                    .arg("-u")
                    .arg("-z")
                    .arg(&self.mnt)
                    .output();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.mounted = false;
        if !wait_until(TIMEOUT, || !is_mounted(&self.mnt)) {
            return Err(format!("{} still mounted: {last_err}", self.mnt.display()));
        }
        if !wait_until(TIMEOUT, || pids.iter().all(|&p| !process_alive(p))) {
            return Err(format!(
                "digimedfs daemon(s) {pids:?} for {} did not exit after unmount",
                self.mnt.display()
            ));
        }
        Ok(())
    }

    /// Unmounts and mounts again.
    pub fn remount(&mut self) {
        self.unmount();
        self.mount();
    }

    /// The pid of the daemon serving this mount.
    pub fn daemon_pid(&self) -> Option<i32> {
        daemon_pids(&self.mnt)
            .into_iter()
            .find(|&p| process_alive(p))
    }

    /// Forgets that the filesystem is mounted (after the test tore it down itself).
    pub fn mark_unmounted(&mut self) {
        self.mounted = false;
    }

    /// Forgets that the filesystem is unmounted (after the test mounted it itself).
    pub fn mark_mounted(&mut self) {
        self.mounted = true;
    }

    fn wait_daemon_gone(&self) {
        let _ = wait_until(TIMEOUT, || self.daemon_pid().is_none());
    }
}

impl Default for TestFs {
    fn default() -> Self {
        Self::new()
    }
}

/// Where mounts publish their metrics files (docs/operations.md, "Metrics").
pub const METRICS_DIR: &str = "/run/digimedfs/metrics";

/// The metrics file of the mount on `mountpoint`, if it is there: the one whose samples carry
/// its (canonical) path as their `mountpoint` label.
pub fn metrics_file(mountpoint: &Path) -> Option<(PathBuf, String)> {
    let want = format!(
        "mountpoint=\"{}\"",
        mountpoint.canonicalize().ok()?.display()
    );
    std::fs::read_dir(METRICS_DIR)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "prom"))
        .find_map(|p| {
            let text = std::fs::read_to_string(&p).ok()?;
            text.contains(&want).then_some((p, text))
        })
}

/// The value of the first sample of metric `name` whose labels contain `label`.
pub fn metric_sample(text: &str, name: &str, label: &str) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Empties the kernel's page, dentry and inode caches, so that what follows reads through the
/// daemon (tests run as root).
pub fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .expect("write /proc/sys/vm/drop_caches (tests must run as root)");
}

/// Removes the metrics file a mount of `mountpoint` left in /run/digimedfs/metrics: a daemon
/// that exits removes its own, one a test killed cannot.
pub fn remove_metrics_files(mountpoint: &Path) {
    let want = format!("mountpoint=\"{}\"", mountpoint.display());
    let Ok(dir) = std::fs::read_dir(METRICS_DIR) else {
        return;
    };
    for p in dir.filter_map(|e| e.ok()).map(|e| e.path()) {
        if std::fs::read_to_string(&p).is_ok_and(|t| t.contains(&want)) {
            let _ = std::fs::remove_file(&p);
        }
    }
}

impl Drop for TestFs {
    fn drop(&mut self) {
        if self.mounted || is_mounted(&self.mnt) {
            if let Err(msg) = self.try_unmount() {
                eprintln!("TestFs drop: {msg}");
            }
        }
        // Never leave a daemon behind, whatever the test did.
        for pid in daemon_pids(&self.mnt) {
            // SAFETY: kill takes plain integers; `pid` is a digimedfs process serving our own
            // mountpoint, found through its command line.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(&self.mnt)
                .output();
        }
        remove_metrics_files(&self.mnt);
    }
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// A random lowercase hex string of `n_bytes * 2` characters.
pub fn random_hex(n_bytes: usize) -> String {
    hex::encode(random_bytes(n_bytes))
}

/// Every regular file under `dir`, recursively (symlinks not followed).
pub fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {d:?}: {e}")) {
            let entry = entry.expect("dir entry");
            let ft = entry.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(entry.path());
            } else if ft.is_file() {
                out.push(entry.path());
            }
        }
    }
    out
}

/// The OS error number of an I/O error, for assertions.
pub fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// A C string from a path (panics on interior NUL).
pub fn cpath(p: impl AsRef<OsStr>) -> std::ffi::CString {
    std::ffi::CString::new(p.as_ref().as_encoded_bytes()).expect("path has no NUL")
}

/// Unmounts `mountpoint` with `fusermount3 -u` (retrying while busy, then lazily) and waits for
/// its `digimedfs` daemon to exit, so everything has been written back (for mounts made outside
/// [`TestFs`], e.g. through the key service).
pub fn unmount_and_wait(mountpoint: &Path) -> Result<(), String> {
    let pids = daemon_pids(mountpoint);
    let start = Instant::now();
    let mut last_err = String::new();
    while is_mounted(mountpoint) {
        let out = Command::new("fusermount3")
            .arg("-u")
            .arg(mountpoint)
            .output()
            .map_err(|e| format!("cannot run fusermount3: {e}"))?;
        if out.status.success() {
            break;
        }
        last_err = String::from_utf8_lossy(&out.stderr).into_owned();
        if start.elapsed() > Duration::from_secs(5) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(mountpoint)
                .output();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !wait_until(TIMEOUT, || !is_mounted(mountpoint)) {
        return Err(format!(
            "{} still mounted: {last_err}",
            mountpoint.display()
        ));
    }
    if !wait_until(TIMEOUT, || pids.iter().all(|&p| !process_alive(p))) {
        return Err(format!(
            "digimedfs daemon(s) {pids:?} for {} did not exit after unmount",
            mountpoint.display()
        ));
    }
    Ok(())
}

/// Every regular file under `dir` as (relative path, contents), sorted: a before/after
/// comparison of two snapshots shows whether anything changed.
pub fn snapshot_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files: Vec<(PathBuf, Vec<u8>)> = walk_files(dir)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("read {p:?}: {e}"));
            (p.strip_prefix(dir).unwrap_or(&p).to_path_buf(), bytes)
        })
        .collect();
    files.sort();
    files
}

/// setxattr(2) of `name` on `p` with `flags`; the errno on failure.
pub fn try_set_xattr(p: &Path, name: &str, value: &[u8], flags: libc::c_int) -> Result<(), i32> {
    let (cp, cn) = (cpath(p), cpath(name));
    // SAFETY: valid C strings and a value buffer of the given length.
    let r = unsafe {
        libc::setxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Sets xattr `name` of `p` to `value`; panics with the path, name and error if that fails.
pub fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    if let Err(e) = try_set_xattr(p, name, value, 0) {
        panic!(
            "setxattr {} {name}: {}",
            p.display(),
            std::io::Error::from_raw_os_error(e)
        );
    }
}
