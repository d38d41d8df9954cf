//! digimedfs on real shared storage: a live CephFS (the throwaway cluster of
//! `tests/cephfs/cluster`) mounted by ceph-fuse twice, as client `a` and client `b`: two hosts
//! sharing one storage. Tests that act out a host that dies or is partitioned start a further
//! ceph-fuse client of their own, so the shared mounts a and b stay intact for the others.
//!
//! The tests need the cluster: `tests/cephfs/cluster start` and `eval "$(tests/cephfs/cluster
//! env)"` (scripts/test.sh does both). Without `DIGIMEDFS_CEPH_A`/`DIGIMEDFS_CEPH_B` they fail,
//! unless `DIGIMEDFS_SKIP_CEPH=1` says to skip them on purpose. The fencing test on a local
//! directory needs no cluster.

use digimedfs_core::format::records::INLINE_MAX;
use digimedfs_tests::{
    bin, daemon_pids, drop_caches, errno_of, is_mounted, mounts_at, process_alive, random_bytes,
    random_hex, run, run_ok, snapshot_files, unmount_and_wait, wait_until, walk_files, TestFs,
    TIMEOUT,
};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The two CephFS mounts of the test cluster.
struct Ceph {
    a: PathBuf,
    b: PathBuf,
}

/// The cluster, or None if the CephFS tests are skipped on purpose (`DIGIMEDFS_SKIP_CEPH=1`);
/// panics with instructions if the cluster is not there.
fn ceph() -> Option<Ceph> {
    if std::env::var("DIGIMEDFS_SKIP_CEPH").as_deref() == Ok("1") {
        eprintln!("DIGIMEDFS_SKIP_CEPH=1: CephFS test skipped");
        return None;
    }
    let var = |name: &str| -> PathBuf {
        match std::env::var_os(name) {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => panic!(
                "{name} is not set: the CephFS tests need the test cluster. Start it with \
                 `tests/cephfs/cluster start` and `eval \"$(tests/cephfs/cluster env)\"` (as \
                 scripts/test.sh does), or set DIGIMEDFS_SKIP_CEPH=1 to skip these tests"
            ),
        }
    };
    let (a, b) = (var("DIGIMEDFS_CEPH_A"), var("DIGIMEDFS_CEPH_B"));
    for m in [&a, &b] {
        let types: Vec<String> = mounts_at(m).into_iter().map(|(_, t)| t).collect();
        assert!(
            types.iter().any(|t| t.contains("ceph")),
            "{} is not a CephFS mount (found {types:?}); is the cluster running? \
             (`tests/cephfs/cluster status`)",
            m.display()
        );
    }
    Some(Ceph { a, b })
}

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cephfs/cluster")
}

/// `path` (under mount a) as host b sees it.
fn on_b(ceph: &Ceph, path: &Path) -> PathBuf {
    let rel = path
        .strip_prefix(&ceph.a)
        .unwrap_or_else(|_| panic!("{} is not under {}", path.display(), ceph.a.display()));
    ceph.b.join(rel)
}

/// One more ceph-fuse client: a host of its own that a test may kill or evict.
struct Host {
    id: String,
    dir: tempfile::TempDir,
    alive: bool,
}

impl Host {
    fn start(tag: &str) -> Host {
        Host::start_with(tag, "")
    }
    /// A host whose ceph-fuse gets `ceph_args` (Ceph's `CEPH_ARGS`: `--option=value …`).
    fn start_with(tag: &str, ceph_args: &str) -> Host {
        static N: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{tag}{}x{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("digimedfs-ceph-host-")
            .tempdir()
            .expect("temp dir");
        fs::create_dir(dir.path().join("ceph")).expect("mkdir");
        run_ok(
            Command::new(cluster_script())
                .env("CEPH_ARGS", ceph_args)
                .arg("mount")
                .arg(&id)
                .arg(dir.path().join("ceph")),
        );
        Host {
            id,
            dir,
            alive: true,
        }
    }
    /// Where this host sees the CephFS root.
    fn ceph(&self) -> PathBuf {
        self.dir.path().join("ceph")
    }
    /// A local directory of this host.
    fn local(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        fs::create_dir_all(&p).expect("mkdir");
        p
    }
    /// The host dies: its ceph-fuse is SIGKILLed and its mountpoint lazily unmounted.
    fn kill(&mut self) {
        run_ok(
            Command::new(cluster_script())
                .arg("kill-client")
                .arg(&self.id),
        );
        self.alive = false;
    }
    /// Aborts this host's FUSE connection (fusectl): every request blocked on it fails at
    /// once. A ceph-fuse whose reads are deadlocked (with its defaults, see
    /// [`READER_CEPH_ARGS`]) cannot even be killed before that, so a test that found a hang
    /// would hang too.
    fn abort_fuse_connection(&self) {
        let abort = |dev: &str| -> Option<PathBuf> {
            let (_, minor) = dev.split_once(':')?;
            Some(PathBuf::from(format!(
                "/sys/fs/fuse/connections/{minor}/abort"
            )))
        };
        let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let ceph = self.ceph();
        for line in info.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() > 4 && Path::new(f[4]) == ceph {
                let Some(file) = abort(f[2]) else { continue };
                if !file.exists() {
                    let _ = Command::new("mount")
                        .args(["-t", "fusectl", "none", "/sys/fs/fuse/connections"])
                        .output();
                }
                let _ = fs::write(&file, "1");
            }
        }
    }
    /// The MDS evicts this host's session: its caps and flocks are released and the client
    /// is blocklisted at the OSDs (a partitioned host, or the admin's step after a crash).
    fn evict(&self) {
        run_ok(Command::new(cluster_script()).arg("evict").arg(&self.id));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.alive {
            self.abort_fuse_connection();
            let _ = Command::new(cluster_script())
                .arg("kill-client")
                .arg(&self.id)
                .output();
            let _ = Command::new(cluster_script())
                .arg("evict")
                .arg(&self.id)
                .output();
        }
        digimedfs_tests::remove_metrics_files(&self.local("mnt"));
        let ceph = self.ceph();
        if is_mounted(&ceph) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&ceph)
                .output();
        }
    }
}

/// `digimedfs mount` of `backing` on `mnt` with `key` and options.
fn mount_cmd(key: &Path, backing: &Path, mnt: &Path, options: &[&str]) -> Command {
    let mut cmd = Command::new(bin("digimedfs"));
    cmd.arg("mount");
    if !options.is_empty() {
        cmd.arg("-o").arg(options.join(","));
    }
    cmd.arg("--key-file").arg(key).arg(backing).arg(mnt);
    cmd
}

fn mount_ok(key: &Path, backing: &Path, mnt: &Path, options: &[&str]) {
    let out = run(&mut mount_cmd(key, backing, mnt, options));
    assert!(
        out.status.success(),
        "mounting {} on {} failed: {}",
        backing.display(),
        mnt.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_until(TIMEOUT, || is_mounted(mnt)),
        "{} never appeared",
        mnt.display()
    );
}

/// SIGKILLs the daemon serving `mnt` and lazily unmounts the dead mount.
fn kill_daemon(mnt: &Path) {
    let pids = daemon_pids(mnt);
    assert!(!pids.is_empty(), "no daemon serves {}", mnt.display());
    for &pid in &pids {
        // SAFETY: kill with plain integers; `pid` is a digimedfs daemon serving our mountpoint.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    assert!(wait_until(TIMEOUT, || pids
        .iter()
        .all(|&p| !process_alive(p))));
    let _ = Command::new("fusermount3")
        .args(["-u", "-z"])
        .arg(mnt)
        .output();
    assert!(wait_until(TIMEOUT, || !is_mounted(mnt)));
}

fn fsck_clean(key: &Path, backing: &Path) {
    let out = run(Command::new(bin("fsck-digimed"))
        .arg("-n")
        .arg("--key-file")
        .arg(key)
        .arg(backing));
    assert_eq!(
        out.status.code(),
        Some(0),
        "fsck -n of {} not clean:\nstdout: {}\nstderr: {}",
        backing.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write_synced(path: &Path, data: &[u8]) {
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(data).expect("write");
    f.sync_all().expect("fsync");
}

fn sync_dir(path: &Path) {
    File::open(path)
        .and_then(|d| d.sync_all())
        .unwrap_or_else(|e| panic!("fsync dir {}: {e}", path.display()));
}

/// What a tree looks like from inside: per path its kind, contents (files), target
/// (symlinks), size and link count.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display())) {
            let e = e.expect("entry");
            let p = e.path();
            let rel = p
                .strip_prefix(root)
                .expect("under root")
                .display()
                .to_string();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let desc = if m.is_dir() {
                stack.push(p.clone());
                format!("dir mode {:o}", m.mode() & 0o7777)
            } else if m.file_type().is_symlink() {
                format!(
                    "symlink -> {}",
                    fs::read_link(&p).expect("readlink").display()
                )
            } else {
                let data = fs::read(&p).expect("read");
                format!(
                    "file mode {:o} size {} nlink {} sum {:x}",
                    m.mode() & 0o7777,
                    m.len(),
                    m.nlink(),
                    data.iter()
                        .fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b))
                            .wrapping_mul(0x100000001b3))
                )
            };
            out.insert(rel, desc);
        }
    }
    out
}

#[test]
fn posix_smoke_and_persistence_on_cephfs() {
    let Some(ceph) = ceph() else { return };
    let mut fs = TestFs::unmounted_on(&ceph.a, &[]);
    fs.mount();
    fs::create_dir_all(fs.path("a/b/c")).unwrap();
    fs::write(fs.path("a/small"), b"small file").unwrap();
    let big = random_bytes(3 * 1024 * 1024 + 123);
    write_synced(&fs.path("a/b/big"), &big);
    // Just over INLINE_MAX: a data object.
    let mid = random_bytes(INLINE_MAX as usize + 4464);
    fs::write(fs.path("a/b/c/mid"), &mid).unwrap();
    fs::rename(fs.path("a/small"), fs.path("a/b/renamed")).unwrap();
    fs::hard_link(fs.path("a/b/c/mid"), fs.path("a/mid-link")).unwrap();
    std::os::unix::fs::symlink("b/renamed", fs.path("a/sym")).unwrap();
    // Overwrite in the middle, append, truncate.
    let f = OpenOptions::new()
        .write(true)
        .open(fs.path("a/b/big"))
        .unwrap();
    f.write_all_at(b"patched in the middle", 1_000_000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let mut f = OpenOptions::new()
        .append(true)
        .open(fs.path("a/b/c/mid"))
        .unwrap();
    f.write_all(b"appended").unwrap();
    f.sync_data().unwrap();
    drop(f);
    // Truncating a file with a data object (over INLINE_MAX) into its first blocks.
    fs::write(
        fs.path("a/trunc"),
        random_bytes(INLINE_MAX as usize + 20_000),
    )
    .unwrap();
    OpenOptions::new()
        .write(true)
        .open(fs.path("a/trunc"))
        .unwrap()
        .set_len(5_000)
        .unwrap();
    for i in 0..200 {
        fs::write(fs.path(format!("a/b/c/f{i}")), format!("file {i}")).unwrap();
    }
    fs::remove_file(fs.path("a/b/c/f7")).unwrap();
    sync_dir(fs.mountpoint());

    let before = tree(fs.mountpoint());
    assert_eq!(fs::read(fs.path("a/sym")).unwrap(), b"small file");
    assert_eq!(
        fs::metadata(fs.path("a/mid-link")).unwrap().nlink(),
        2,
        "hard link count"
    );
    assert_eq!(fs::metadata(fs.path("a/trunc")).unwrap().len(), 5_000);
    assert!(!fs.path("a/b/c/f7").exists());
    fs.remount();
    drop_caches();
    let after = tree(fs.mountpoint());
    assert_eq!(before, after, "tree changed across a remount on CephFS");
    let mut want = big.clone();
    want[1_000_000..1_000_000 + 21].copy_from_slice(b"patched in the middle");
    assert!(
        fs::read(fs.path("a/b/big")).unwrap() == want,
        "big file differs"
    );
    fs.unmount();
    fsck_clean(fs.key_file(), fs.backing());
}

#[test]
fn no_plaintext_on_cephfs() {
    let Some(ceph) = ceph() else { return };
    let mut fs = TestFs::unmounted_on(&ceph.a, &[]);
    fs.mount();
    let m = |what: &str| (what.to_string(), format!("MARK{}", random_hex(12)));
    let markers = [
        m("content"),
        m("large content"),
        m("file name"),
        m("dir name"),
        m("symlink target"),
        m("xattr value"),
    ];
    fs::write(fs.path("f"), markers[0].1.as_bytes()).unwrap();
    // Over INLINE_MAX: a data object.
    let mut large = markers[1].1.repeat(2000).into_bytes();
    large.extend(random_bytes(INLINE_MAX as usize + 10_000));
    fs::write(fs.path("large"), &large).unwrap();
    fs::write(fs.path(&markers[2].1), b"x").unwrap();
    fs::create_dir(fs.path(&markers[3].1)).unwrap();
    std::os::unix::fs::symlink(&markers[4].1, fs.path("link")).unwrap();
    let (p, n) = (
        digimedfs_tests::cpath(fs.path("f")),
        digimedfs_tests::cpath("user.test"),
    );
    let v = markers[5].1.as_bytes();
    // SAFETY: valid C strings and a value buffer of the given length.
    let r = unsafe { libc::setxattr(p.as_ptr(), n.as_ptr(), v.as_ptr().cast(), v.len(), 0) };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
    fs.unmount();

    // What the storage (here: another host's view) holds.
    let backing_b = on_b(&ceph, fs.backing());
    let mut findings = Vec::new();
    let files = walk_files(&backing_b);
    assert!(
        files.len() >= 3,
        "backing dir seen from host b has only {files:?}"
    );
    for file in files {
        let name = file.to_string_lossy().into_owned();
        let data = fs::read(&file).unwrap();
        for (what, mk) in &markers {
            if name.contains(mk.as_str()) {
                findings.push(format!("{what} in a name: {name}"));
            }
            if data.windows(mk.len()).any(|w| w == mk.as_bytes()) {
                findings.push(format!("{what} in plaintext in {name}"));
            }
        }
    }
    assert!(findings.is_empty(), "plaintext on CephFS: {findings:#?}");
}

#[test]
fn tamper_through_other_host_gives_eio() {
    let Some(ceph) = ceph() else { return };
    let mut fs = TestFs::unmounted_on(&ceph.a, &[]);
    fs.mount();
    let other = random_bytes(100_000);
    write_synced(&fs.path("other"), &other);
    let objects = |root: &Path| -> std::collections::BTreeSet<PathBuf> {
        walk_files(&root.join("objects")).into_iter().collect()
    };
    let before = objects(fs.backing());
    let big = random_bytes(256 * 1024);
    write_synced(&fs.path("big"), &big);
    let new: Vec<PathBuf> = objects(fs.backing()).difference(&before).cloned().collect();
    assert_eq!(new.len(), 1, "expected one new object, found {new:?}");
    // The storage admin flips a byte through the other host's mount.
    let obj_b = on_b(&ceph, &new[0]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&obj_b)
        .unwrap();
    let mut byte = [0u8; 1];
    f.read_exact_at(&mut byte, 5000).unwrap();
    byte[0] ^= 0x01;
    f.write_all_at(&byte, 5000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    drop_caches();
    match fs::read(fs.path("big")) {
        Err(e) => assert_eq!(errno_of(&e), libc::EIO, "reading a tampered file: {e}"),
        Ok(data) if data == big => {
            panic!("tampered block not re-read from CephFS or not verified: original data back")
        }
        Ok(_) => panic!("tampered file returned corrupted data without an error"),
    }
    assert_eq!(fs::read(fs.path("other")).unwrap(), other);
    fs::write(fs.path("after"), b"still writable").unwrap();
    assert_eq!(fs::read(fs.path("after")).unwrap(), b"still writable");
}

#[test]
fn two_hosts_one_mount_at_a_time() {
    let Some(ceph) = ceph() else { return };
    let mut fs = TestFs::unmounted_on(&ceph.a, &[]);
    fs.mount();
    fs::create_dir(fs.path("dir")).unwrap();
    fs::write(fs.path("dir/from-a"), b"written on host a").unwrap();
    let big = random_bytes(1_500_000);
    fs::write(fs.path("big"), &big).unwrap();

    // Host b: same backing directory through its own CephFS client.
    let backing_b = on_b(&ceph, fs.backing());
    let mnt_b = fs.root_dir().join("mnt-b");
    fs::create_dir(&mnt_b).unwrap();
    let out = run(&mut mount_cmd(fs.key_file(), &backing_b, &mnt_b, &[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "second host's mount was not refused: {stderr}"
    );
    assert!(
        stderr.contains("already mounted by")
            && stderr.contains(&fs.backing().display().to_string()),
        "refusal does not name host a (its path {}): {stderr}",
        fs.backing().display()
    );
    assert!(!is_mounted(&mnt_b));
    // Host a is unharmed.
    assert_eq!(
        fs::read(fs.path("dir/from-a")).unwrap(),
        b"written on host a"
    );

    // a unmounts cleanly; b mounts (no force) and sees everything.
    fs.unmount();
    mount_ok(fs.key_file(), &backing_b, &mnt_b, &[]);
    assert_eq!(
        fs::read(mnt_b.join("dir/from-a")).unwrap(),
        b"written on host a"
    );
    assert!(
        fs::read(mnt_b.join("big")).unwrap() == big,
        "big file differs on b"
    );
    fs::write(mnt_b.join("from-b"), b"written on host b").unwrap();
    // Now a is refused, naming b.
    let out = run(&mut fs.mount_command(fs.key_file(), fs.mountpoint(), &[]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains(&backing_b.display().to_string()),
        "host a's mount while b holds it: {stderr}"
    );
    unmount_and_wait(&mnt_b).unwrap();
    fs.mount();
    assert_eq!(fs::read(fs.path("from-b")).unwrap(), b"written on host b");
    fs.unmount();
    fsck_clean(fs.key_file(), fs.backing());
}

/// Host x mounts, fsyncs, and dies as a VM dies (its CephFS client and its daemon killed).
/// Host b then takes over: at once if the admin evicts x's session (`evict`), else once the
/// MDS gives up x's session (session_autoclose: 30 s on the test cluster), which `digimedfs
/// mount` on b simply waits for. b sees everything x fsynced; fsck is clean.
fn crashed_host_is_taken_over(evict: bool) {
    let Some(ceph) = ceph() else { return };
    // Host b owns the fixture (its path, its mountpoint); host x will crash.
    let mut fs = TestFs::unmounted_on(&ceph.b, &[]);
    let mut x = Host::start("crash");
    let rel = fs.backing().strip_prefix(&ceph.b).unwrap().to_path_buf();
    let backing_x = x.ceph().join(&rel);
    let mnt_x = x.local("mnt");
    mount_ok(fs.key_file(), &backing_x, &mnt_x, &[]);
    let durable = random_bytes(700_000);
    write_synced(&mnt_x.join("durable"), &durable);
    fs::create_dir(mnt_x.join("dir")).unwrap();
    write_synced(&mnt_x.join("dir/small"), b"small and synced");
    sync_dir(&mnt_x.join("dir"));
    sync_dir(&mnt_x);
    // Written, not fsynced, over INLINE_MAX (a data object) when the host dies.
    fs::write(
        mnt_x.join("unsynced"),
        random_bytes(INLINE_MAX as usize + 50_000),
    )
    .unwrap();

    // The VM dies: its CephFS client first, so no unlock reaches the MDS (a daemon dying on a
    // live client would release its flock through that client), then the daemon.
    x.kill();
    kill_daemon(&mnt_x);
    if evict {
        x.evict();
    }
    let t = std::time::Instant::now();
    fs.mount();
    let took = t.elapsed();
    eprintln!("host b took over after {took:?} (evicted: {evict})");
    if evict {
        assert!(
            took < Duration::from_secs(15),
            "mount after eviction took {took:?}"
        );
    }
    assert!(
        fs::read(fs.path("durable")).unwrap() == durable,
        "fsynced file damaged"
    );
    assert_eq!(fs::read(fs.path("dir/small")).unwrap(), b"small and synced");
    fs::write(fs.path("after"), b"b works").unwrap();
    fs.unmount();
    fsck_clean(fs.key_file(), fs.backing());
}

#[test]
fn crashed_host_is_taken_over_after_eviction() {
    crashed_host_is_taken_over(true);
}

#[test]
fn crashed_host_is_taken_over_after_session_timeout() {
    crashed_host_is_taken_over(false);
}

/// A file the workload fsynced: its path and contents.
type Durable = (PathBuf, Vec<u8>);

#[test]
fn sled_on_cephfs_survives_daemon_crash_mid_workload() {
    let Some(ceph) = ceph() else { return };
    let fs = TestFs::unmounted_on(&ceph.a, &[]);
    let mnt_a = fs.mountpoint().to_path_buf();
    mount_ok(fs.key_file(), fs.backing(), &mnt_a, &[]);
    let durable: Arc<Mutex<Vec<Durable>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let (durable, stop, mnt) = (durable.clone(), stop.clone(), mnt_a.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let dir = mnt.join(format!("d{}", i % 7));
                if fs::create_dir_all(&dir).is_err() {
                    return;
                }
                let rel = PathBuf::from(format!("d{}/f{i}", i % 7));
                // Every fifth file over INLINE_MAX (a data object), the others inline.
                let len = if i.is_multiple_of(5) {
                    INLINE_MAX as usize + 4000
                } else {
                    300
                };
                let data = random_bytes(len);
                let Ok(mut f) = File::create(mnt.join(&rel)) else {
                    return;
                };
                if f.write_all(&data).is_err() {
                    return;
                }
                if i.is_multiple_of(4) {
                    if f.sync_all().is_err() || File::open(&dir).and_then(|d| d.sync_all()).is_err()
                    {
                        return;
                    }
                    durable.lock().unwrap().push((rel, data));
                } else if i.is_multiple_of(9) {
                    let _ = fs::rename(mnt.join(&rel), mnt.join(format!("{}.r", rel.display())));
                }
                i += 1;
            }
        })
    };
    std::thread::sleep(Duration::from_secs(4));
    kill_daemon(&mnt_a);
    stop.store(true, Ordering::Relaxed);
    worker.join().expect("worker");
    let durable = std::mem::take(&mut *durable.lock().unwrap());
    assert!(
        durable.len() >= 10,
        "workload made only {} durable files before the crash",
        durable.len()
    );

    // Host b takes over: the dead daemon's flock went with its process.
    let backing_b = on_b(&ceph, fs.backing());
    let mnt_b = fs.root_dir().join("mnt-b");
    fs::create_dir(&mnt_b).unwrap();
    mount_ok(fs.key_file(), &backing_b, &mnt_b, &[]);
    for (rel, data) in &durable {
        let got = fs::read(mnt_b.join(rel))
            .unwrap_or_else(|e| panic!("fsynced {} lost after the crash: {e}", rel.display()));
        assert!(got == *data, "fsynced {} damaged", rel.display());
    }
    unmount_and_wait(&mnt_b).unwrap();
    fsck_clean(fs.key_file(), &backing_b);
}

/// Makes the mount locks of `backing` protect nothing, as when a host's locks are lost while
/// it runs (a lease that expired during a partition, a session evicted without blocklisting):
/// the flocked files are replaced by copies (new inodes nobody locked).
fn lose_locks(backing: &Path) {
    for name in ["lock", "meta/db"] {
        let path = backing.join(name);
        let tmp = backing.join(format!("{}.copy", name.replace('/', "-")));
        fs::copy(&path, &tmp).unwrap_or_else(|e| panic!("copy {}: {e}", path.display()));
        File::open(&tmp).unwrap().sync_all().unwrap();
        fs::rename(&tmp, &path).unwrap();
    }
}

/// The size and mtime of the file a process has open as `…/meta/db (deleted)`.
fn orphaned_db_of(pid: i32) -> Option<(u64, i64, i64)> {
    for fd in fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let target = fs::read_link(fd.path()).ok()?;
        let t = target.to_string_lossy();
        if t.ends_with("meta/db (deleted)") {
            let m = fs::metadata(fd.path()).ok()?;
            return Some((m.len(), m.mtime(), m.mtime_nsec()));
        }
    }
    None
}

/// Host a runs on; host b takes over with `-o force_unlock` after a's locks were lost. a must
/// then fail its writes and never write to the backing directory again.
fn takeover_fences_old_mount(fs: &mut TestFs, backing_b: &Path) {
    fs.mount();
    let before = random_bytes(200_000);
    write_synced(&fs.path("before"), &before);
    sync_dir(fs.mountpoint());
    let pid_a = fs.daemon_pid().expect("daemon a");

    lose_locks(fs.backing());
    let mnt_b = fs.root_dir().join("mnt-b");
    fs::create_dir_all(&mnt_b).unwrap();
    mount_ok(fs.key_file(), backing_b, &mnt_b, &["force_unlock"]);
    fs::write(mnt_b.join("from-b"), b"b took over").unwrap();
    unmount_and_wait(&mnt_b).unwrap();
    let storage = snapshot_files(backing_b);
    let db_a = orphaned_db_of(pid_a);

    // a goes on writing: the data may sit in its memory, but nothing becomes durable. If a's
    // background writeback ran since the takeover, a has already found itself fenced and
    // refuses the create as a read-only filesystem.
    match File::create(fs.path("after")) {
        Ok(mut f) => {
            f.write_all(&random_bytes(100_000)).unwrap();
            let e = f
                .sync_all()
                .expect_err("fsync on the fenced host succeeded");
            assert_eq!(errno_of(&e), libc::EIO, "fsync on the fenced host: {e}");
        }
        Err(e) => assert_eq!(
            errno_of(&e),
            libc::EROFS,
            "create on the fenced host failed otherwise: {e}"
        ),
    }
    let e = fs::create_dir(fs.path("newdir")).expect_err("mkdir on the fenced host");
    assert_eq!(errno_of(&e), libc::EROFS, "mkdir on the fenced host: {e}");
    // Give a's background writeback a cycle or two.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        orphaned_db_of(pid_a),
        db_a,
        "the fenced host wrote to its metadata store"
    );
    // a's unmount fails to write back and must not touch the superblock either.
    fs.unmount();
    assert!(
        snapshot_files(backing_b) == storage,
        "the fenced host changed the backing directory after the takeover"
    );
    let logs: String = fs::read_dir("/var/log/digimedfs")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let tag = fs
                        .root_dir()
                        .file_name()
                        .unwrap()
                        .to_string_lossy()
                        .into_owned();
                    e.file_name().to_string_lossy().contains(&tag)
                })
                .filter_map(|e| fs::read_to_string(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        logs.contains("fenced: another host took over this filesystem at epoch"),
        "no fencing line in host a's log"
    );

    // b mounts again: what a fsynced before the takeover and what b wrote are there, a's
    // later writes are not.
    mount_ok(fs.key_file(), backing_b, &mnt_b, &[]);
    assert!(fs::read(mnt_b.join("before")).unwrap() == before);
    assert_eq!(fs::read(mnt_b.join("from-b")).unwrap(), b"b took over");
    assert!(!mnt_b.join("after").exists() && !mnt_b.join("newdir").exists());
    unmount_and_wait(&mnt_b).unwrap();
    fsck_clean(fs.key_file(), backing_b);
}

#[test]
fn fencing_after_takeover_on_local_dir() {
    let mut fs = TestFs::unmounted(&[]);
    let backing = fs.backing().to_path_buf();
    takeover_fences_old_mount(&mut fs, &backing);
}

#[test]
fn fencing_after_takeover_on_cephfs() {
    let Some(ceph) = ceph() else { return };
    let mut fs = TestFs::unmounted_on(&ceph.a, &[]);
    let backing_b = on_b(&ceph, fs.backing());
    takeover_fences_old_mount(&mut fs, &backing_b);
}

#[test]
fn evicted_host_cannot_write_after_takeover() {
    let Some(ceph) = ceph() else { return };
    let mut fs = TestFs::unmounted_on(&ceph.b, &[]);
    let x = Host::start("part");
    let rel = fs.backing().strip_prefix(&ceph.b).unwrap().to_path_buf();
    let backing_x = x.ceph().join(&rel);
    let mnt_x = x.local("mnt");
    mount_ok(fs.key_file(), &backing_x, &mnt_x, &[]);
    let before = random_bytes(300_000);
    write_synced(&mnt_x.join("before"), &before);
    sync_dir(&mnt_x);

    // Host x is cut off (its daemon runs on): the MDS evicts its session, which releases its
    // flocks and blocklists it. b mounts without force_unlock.
    x.evict();
    fs.mount();
    fs::write(fs.path("from-b"), b"b took over").unwrap();
    fs.unmount();
    let storage = snapshot_files(fs.backing());

    let r = File::create(mnt_x.join("after")).and_then(|mut f| {
        f.write_all(&random_bytes(100_000))?;
        f.sync_all()
    });
    assert!(r.is_err(), "the evicted host's fsync succeeded");
    std::thread::sleep(Duration::from_secs(7));
    let _ = unmount_and_wait(&mnt_x);
    assert!(
        snapshot_files(fs.backing()) == storage,
        "the evicted host changed the backing directory after the takeover"
    );
    fs.mount();
    assert!(fs::read(fs.path("before")).unwrap() == before);
    assert_eq!(fs::read(fs.path("from-b")).unwrap(), b"b took over");
    assert!(!fs.path("after").exists());
    fs.unmount();
    fsck_clean(fs.key_file(), fs.backing());
}

/// The ceph-fuse options of a host that reads a live backing directory (docs/operations.md,
/// "Reading a live backing directory from another host"): no object cacher (`client_oc`), and
/// no reverse invalidation of the kernel's page cache (`fuse_use_invalidate_cb`). With the
/// object cacher, ceph-fuse (16.2) reads ahead holding the file's cache capability; when the MDS
/// revokes it because another client writes the file, a read that arrives meanwhile waits for
/// the revocation and is never woken, and every invalidation of the file's pages then waits for
/// the page that read holds locked. Without the object cacher every read goes to the OSDs and
/// holds its capabilities only while it runs. Without the invalidation callback the kernel drops a file's
/// cached pages when it is opened instead of when ceph-fuse is told to give them up, so no
/// ceph-fuse thread ever waits for the kernel's page locks.
const READER_CEPH_ARGS: &str = "--client_oc=false --fuse_use_invalidate_cb=false";

/// How long one read pass of a backing directory may take. A liveness bound, not a
/// performance assertion: a pass takes seconds on the test cluster; the bound only tells a
/// read that hangs (the stall reported on meta/db lasted 11 minutes) from a slow one.
const LIVE_READ_BOUND: Duration = Duration::from_secs(120);

/// What one read pass saw: per file (relative path) its length and an FNV-1a hash of its
/// contents.
type ReadView = BTreeMap<PathBuf, (u64, u64)>;

/// Reads every regular file under `root` to its end, as a backup tool does. Files and
/// directories that vanish between the listing and the open are skipped: the mount deletes
/// and renames while the pass runs. Other errors are returned with the path.
fn read_pass(root: &Path) -> Result<ReadView, String> {
    let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
    let mut view = ReadView::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match fs::read_dir(&d) {
            Ok(it) => it,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(format!("read_dir {}: {e}", d.display())),
        };
        for entry in entries {
            let entry = match entry {
                Ok(en) => en,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(format!("read_dir {}: {e}", d.display())),
            };
            let path = entry.path();
            let ft = match entry.file_type() {
                Ok(t) => t,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(format!("lstat {}: {e}", path.display())),
            };
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            if !ft.is_file() {
                continue;
            }
            let mut f = match File::open(&path) {
                Ok(f) => f,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(format!("open {}: {e}", path.display())),
            };
            let (mut len, mut hash) = (0u64, 0xcbf29ce484222325u64);
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = std::io::Read::read(&mut f, &mut buf)
                    .map_err(|e| format!("read {}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                len += n as u64;
                for b in &buf[..n] {
                    hash = (hash ^ u64::from(*b)).wrapping_mul(0x100000001b3);
                }
            }
            let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
            view.insert(rel, (len, hash));
        }
    }
    Ok(view)
}

/// [`read_pass`] of `root` under [`LIVE_READ_BOUND`]: runs it on a thread of its own and
/// panics, with that thread's kernel stack, if it has not finished in time (a read blocked in
/// D state cannot be interrupted; the thread is left behind). Returns the view and how long the
/// pass took.
fn bounded_read_pass(root: &Path, what: &str) -> (ReadView, Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    let root_owned = root.to_path_buf();
    std::thread::spawn(move || {
        // SAFETY: gettid takes no arguments and only returns the calling thread's id.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let _ = tx.send(Err(tid));
        let _ = tx.send(Ok(read_pass(&root_owned)));
    });
    let t = std::time::Instant::now();
    let tid = match rx.recv_timeout(TIMEOUT) {
        Ok(Err(tid)) => tid,
        other => panic!("reader thread did not start: {other:?}"),
    };
    match rx.recv_timeout(LIVE_READ_BOUND) {
        Ok(Ok(Ok(view))) => (view, t.elapsed()),
        Ok(Ok(Err(e))) => panic!("{what}: reading {} failed: {e}", root.display()),
        Ok(Err(_)) | Err(_) => {
            let task = format!("/proc/self/task/{tid}");
            let stack = fs::read_to_string(format!("{task}/stack")).unwrap_or_default();
            let wchan = fs::read_to_string(format!("{task}/wchan")).unwrap_or_default();
            panic!(
                "{what}: reading {} did not finish within {LIVE_READ_BOUND:?} (reader thread \
                 {tid} waits in {wchan}):\n{stack}",
                root.display()
            );
        }
    }
}

/// Per file under `root` (relative path): contents, size and modification time, as the host
/// that mounts sees it.
fn at_rest_state(root: &Path) -> Vec<(PathBuf, Vec<u8>, u64, i64, i64)> {
    snapshot_files(root)
        .into_iter()
        .map(|(rel, data)| {
            let m = fs::metadata(root.join(&rel)).expect("stat");
            (rel, data, m.len(), m.mtime(), m.mtime_nsec())
        })
        .collect()
}

/// A busy workload in `mnt` until `stop`: small inline files and data objects, fsyncs of
/// files and directories, renames and deletes. Returns how many files it wrote.
fn busy_writer(mnt: PathBuf, id: usize, stop: Arc<AtomicBool>) -> usize {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let dir = mnt.join(format!("w{id}/d{}", i % 5));
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let path = dir.join(format!("f{i}"));
        // Every seventh file over INLINE_MAX (a data object), the others inline.
        let len = if i.is_multiple_of(7) {
            INLINE_MAX as usize + 4000
        } else {
            500
        };
        let mut f =
            File::create(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        f.write_all(&random_bytes(len)).expect("write");
        if i.is_multiple_of(3) {
            f.sync_all().expect("fsync");
            sync_dir(&dir);
        }
        drop(f);
        if i % 4 == 1 {
            fs::rename(&path, dir.join(format!("r{i}"))).expect("rename");
        }
        if i >= 10 {
            let old = mnt.join(format!("w{id}/d{}", (i - 10) % 5));
            let _ = fs::remove_file(old.join(format!("f{}", i - 10)));
            let _ = fs::remove_file(old.join(format!("r{}", i - 10)));
        }
        i += 1;
    }
    i
}

/// Host a's mount writes busily (four writers) while a backup host (a ceph-fuse client started
/// with `ceph_args`) reads: with `read_live`, the whole live backing directory again and again
/// for a minute (every file, `meta/db` included, which the mount writes and fsyncs all the
/// time); then `backup/point` after `digimedfs backup begin`. Every pass must finish within
/// [`LIVE_READ_BOUND`] (a liveness bound, not a performance assertion), the point must read the
/// same twice and verify while the mount goes on writing, and a read pass over the directory
/// at rest must change nothing in it.
fn reads_by_backup_host(ceph_args: &str, read_live: bool) {
    let Some(ceph) = ceph() else { return };
    let mut fs = TestFs::unmounted_on(&ceph.a, &[]);
    fs.mount();
    let reader = Host::start_with("read", ceph_args);
    let rel = fs.backing().strip_prefix(&ceph.a).unwrap().to_path_buf();
    let backing_r = reader.ceph().join(&rel);

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|id| {
            let (mnt, stop) = (fs.mountpoint().to_path_buf(), stop.clone());
            std::thread::spawn(move || busy_writer(mnt, id, stop))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // The live directory, read again and again while the mount writes: whole passes on two
    // threads and passes of `meta/` alone on a third, as several backup tools at once.
    let live = std::time::Instant::now();
    let roots = [backing_r.clone(), backing_r.clone(), backing_r.join("meta")];
    let readers: Vec<_> = roots
        .into_iter()
        .filter(|_| read_live)
        .map(|root| {
            std::thread::spawn(move || {
                let mut passes = Vec::new();
                while passes.len() < 3 || live.elapsed() < Duration::from_secs(60) {
                    let (view, took) = bounded_read_pass(&root, "live backing dir");
                    let db = [Path::new("meta/db"), Path::new("db")]
                        .iter()
                        .find_map(|p| view.get(*p))
                        .map(|&(len, _)| len);
                    assert!(
                        db.is_some_and(|len| len > 0),
                        "a pass of {} missed meta/db: {view:?}",
                        root.display()
                    );
                    passes.push((took, view.len()));
                }
                passes
            })
        })
        .collect();
    for r in readers {
        let passes = r
            .join()
            .unwrap_or_else(|_| panic!("a reader of the live directory failed (see above)"));
        eprintln!("live passes (time, files): {passes:?}");
    }

    // The point, taken from the backup host while the writes go on.
    let out = run_ok(
        Command::new(bin("digimedfs"))
            .args(["backup", "begin"])
            .arg(&backing_r),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("point "),
        "backup begin did not report a point: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let point = backing_r.join("backup/point");
    let (first, took1) = bounded_read_pass(&point, "backup point");
    let (second, took2) = bounded_read_pass(&point, "backup point, again");
    eprintln!("point passes: {took1:?}, {took2:?} ({} files)", first.len());
    assert!(
        first.contains_key(Path::new("MANIFEST")) && first.contains_key(Path::new("meta/index")),
        "the point read from the backup host lacks its MANIFEST or metadata index: {first:?}"
    );
    assert!(
        first == second,
        "the point changed between two reads while the mount wrote"
    );
    run_ok(
        Command::new(bin("digimedfs"))
            .args(["backup", "verify"])
            .arg(&point),
    );

    stop.store(true, Ordering::Relaxed);
    let written: usize = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    assert!(written >= 50, "the workload wrote only {written} files");
    run_ok(
        Command::new(bin("digimedfs"))
            .args(["backup", "end"])
            .arg(&backing_r),
    );
    fs.unmount();

    // At rest: a read pass from the backup host changes nothing in the directory.
    let before = at_rest_state(fs.backing());
    let (at_rest, took) = bounded_read_pass(&backing_r, "backing dir at rest");
    eprintln!("pass at rest: {took:?} ({} files)", at_rest.len());
    assert!(
        at_rest_state(fs.backing()) == before,
        "a read pass from the backup host changed the backing directory"
    );
    fsck_clean(fs.key_file(), fs.backing());
}

/// The backup procedure on CephFS: a backup host with ceph-fuse's defaults copies
/// `backup/point/` while the mount writes (docs/backup.md), within the bound.
#[test]
fn backup_host_reads_point_while_mount_writes() {
    reads_by_backup_host("", false);
}

/// Reading the whole live backing directory from another host, as the operations guide tells
/// the admin to mount it ([`READER_CEPH_ARGS`]), while the mount writes on host a with
/// ceph-fuse's defaults. With ceph-fuse's defaults on the reading host the readers deadlock
/// within a minute; with only its page cache off (`fuse_disable_pagecache`), or only the
/// invalidation callback off, readers still blocked for longer than the bound.
#[test]
fn backup_host_reads_live_backing_dir_without_hanging() {
    reads_by_backup_host(READER_CEPH_ARGS, true);
}
