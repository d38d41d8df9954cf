//! Backup points as a backup job uses them: `digimedfs backup begin` on a live, busy mount,
//! copies made with real rsync (and restic), keyless `backup verify`, `backup restore` into a
//! new backing directory, `fsck-digimed -n`, and a mount of the result. Also what happens when
//! a job ignores the procedure and copies the live backing directory, how small an incremental
//! copy of a point is, how damage to a copy is named, that a copy holds no plaintext, and that a
//! restored point written on beside the live filesystem never reuses its XTS tweaks.

use digimedfs_core::format::records::INLINE_MAX;
use digimedfs_tests::{
    bin, cpath, daemon_pids, errno_of, is_mounted, process_alive, random_bytes, random_hex, run,
    run_ok, set_xattr, unmount_and_wait, wait_until, walk_files, TestFs, TIMEOUT,
};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// stdout and stderr of a command, for assertion messages.
fn show(out: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `digimedfs backup …` command.
fn backup_cmd(sub: &str) -> Command {
    let mut cmd = Command::new(bin("digimedfs"));
    cmd.arg("backup").arg(sub);
    cmd
}

/// `digimedfs backup begin BACKING` (the daemon takes the point); returns its message.
fn begin(backing: &Path) -> String {
    let out = run_ok(backup_cmd("begin").arg(backing));
    let msg = stdout(&out);
    assert!(
        msg.starts_with("point "),
        "backup begin did not report a point: {}",
        show(&out)
    );
    // Its waiting line is for terminals only; here stderr is a pipe.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains('\r') && !err.contains("waiting for the daemon"),
        "progress on a non-terminal stderr: {}",
        show(&out)
    );
    msg
}

/// `digimedfs backup end BACKING`.
fn end(backing: &Path) {
    run_ok(backup_cmd("end").arg(backing));
}

/// The point directory of a backing directory.
fn point_dir(backing: &Path) -> PathBuf {
    backing.join("backup").join("point")
}

/// Asserts that `out`'s stderr (a pipe here) holds none of the progress line that verify and
/// restore draw on a terminal.
fn no_progress_line(out: &Output, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains('\r') && !err.contains("verifying:") && !err.contains("restoring:"),
        "{what}: progress on a non-terminal stderr: {}",
        show(out)
    );
}

/// `digimedfs backup verify COPY [--key-file KEY]`; its stderr holds no progress line.
fn verify(copy: &Path, key: Option<&Path>) -> Output {
    let mut cmd = backup_cmd("verify");
    if let Some(key) = key {
        cmd.arg("--key-file").arg(key);
    }
    let out = run(cmd.arg(copy));
    no_progress_line(&out, "backup verify");
    out
}

/// `backup verify` that must pass.
fn verify_ok(copy: &Path, key: Option<&Path>) {
    let out = verify(copy, key);
    assert!(
        out.status.success() && stdout(&out).contains("complete copy of point"),
        "backup verify of {} failed: {}",
        copy.display(),
        show(&out)
    );
}

/// `digimedfs backup restore COPY NEW`, which must succeed, print its report on stdout and
/// no progress line on stderr.
fn restore(copy: &Path, new: &Path) {
    let out = run_ok(backup_cmd("restore").arg(copy).arg(new));
    assert!(
        stdout(&out).starts_with("restored point "),
        "backup restore printed no report: {}",
        show(&out)
    );
    no_progress_line(&out, "backup restore");
}

/// `fsck-digimed -n --key-file KEY BACKING`.
fn fsck_n(key: &Path, backing: &Path) -> Output {
    run(Command::new(bin("fsck-digimed"))
        .arg("-n")
        .arg("--key-file")
        .arg(key)
        .arg(backing))
}

/// `fsck-digimed -n` that must report a clean filesystem.
fn fsck_clean(key: &Path, backing: &Path) {
    let out = fsck_n(key, backing);
    assert!(
        out.status.success(),
        "fsck-digimed -n {} is not clean: {}",
        backing.display(),
        show(&out)
    );
}

/// `rsync -a EXTRA… SRC/ DST/`; returns the output (the caller judges the exit status).
fn rsync(src: &Path, dst: &Path, extra: &[&str]) -> Output {
    let mut s = src.as_os_str().to_owned();
    s.push("/");
    let mut d = dst.as_os_str().to_owned();
    d.push("/");
    run(Command::new("rsync")
        .env("LC_ALL", "C")
        .arg("-a")
        .args(extra)
        .arg(s)
        .arg(d))
}

/// rsync that must succeed.
fn rsync_ok(src: &Path, dst: &Path, extra: &[&str]) -> Output {
    let out = rsync(src, dst, extra);
    assert!(
        out.status.success(),
        "rsync {} -> {} failed: {}",
        src.display(),
        dst.display(),
        show(&out)
    );
    out
}

/// `cp -a SRC DST` (a copy of a copy, to damage).
fn cp_a(src: &Path, dst: &Path) {
    run_ok(Command::new("cp").arg("-a").arg(src).arg(dst));
}

/// A digimedfs mount made by the test (of a restored or copied backing directory); unmounted,
/// and its daemon gone, when dropped, also when the test panics.
struct Mounted {
    mnt: PathBuf,
}

impl Mounted {
    /// `digimedfs mount --key-file KEY BACKING MNT`: the guard if it mounted, otherwise the
    /// command's output (nothing is left mounted in that case).
    fn new(key: &Path, backing: &Path, mnt: &Path) -> Result<Mounted, Output> {
        fs::create_dir_all(mnt).expect("mkdir mountpoint");
        let out = run(Command::new(bin("digimedfs"))
            .arg("mount")
            .arg("--key-file")
            .arg(key)
            .arg(backing)
            .arg(mnt));
        let guard = Mounted {
            mnt: mnt.to_path_buf(),
        };
        if out.status.success() && wait_until(TIMEOUT, || is_mounted(mnt)) {
            Ok(guard)
        } else {
            drop(guard);
            Err(out)
        }
    }

    /// A mount that must succeed.
    fn ok(key: &Path, backing: &Path, mnt: &Path) -> Mounted {
        Mounted::new(key, backing, mnt).unwrap_or_else(|out| {
            panic!(
                "digimedfs mount of {} failed: {}",
                backing.display(),
                show(&out)
            )
        })
    }

    fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            if let Err(msg) = unmount_and_wait(&self.mnt) {
                eprintln!("Mounted drop: {msg}");
            }
        }
        for pid in daemon_pids(&self.mnt) {
            if process_alive(pid) {
                // SAFETY: kill takes plain integers; `pid` is the digimedfs daemon of our own
                // mountpoint, found through its command line.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
        if is_mounted(&self.mnt) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.mnt)
                .output();
        }
    }
}

/// Sets the stop flag of a workload thread when dropped, so a failing test does not leave it
/// writing forever.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The deterministic contents C_i of workload file `i`: lengths from 1 byte to INLINE_MAX
/// (stored inline), around INLINE_MAX (either) and up to ~2 × INLINE_MAX (a data object), bytes
/// from a generator seeded by `i`, so any mix-up of two files or any stale block shows.
fn content(i: u64) -> Vec<u8> {
    const M: usize = INLINE_MAX as usize;
    const LENS: [usize; 8] = [
        1,
        17,
        1000,
        12_288,
        M - 500,
        M + 1,
        M + 12_288,
        2 * M + 4465,
    ];
    let len = LENS[(i % 8) as usize] + (i.wrapping_mul(131) % 977) as usize;
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// How `data` differs from `want`: lengths, the differing 4 KiB blocks and whether the
/// differing bytes read as zeros.
fn describe_diff(data: &[u8], want: &[u8]) -> String {
    let differing: Vec<usize> = (0..data.len().min(want.len()))
        .filter(|&o| data[o] != want[o])
        .collect();
    let zeros = differing.iter().filter(|&&o| data[o] == 0).count();
    let blocks: BTreeSet<usize> = differing.iter().map(|o| o / 4096).collect();
    format!(
        "{} bytes read, {} expected; {} bytes differ (first at {:?}, {zeros} of them read as 0) in 4 KiB blocks {blocks:?}",
        data.len(),
        want.len(),
        differing.len(),
        differing.first()
    )
}

/// Whether `data`, read back from a file that was being written with `want` and not fsynced,
/// is a state that write could have left: no longer than `want`, every 4 KiB block equal to
/// `want`'s or all zeros (written but not yet durable).
fn unsynced_prefix(data: &[u8], want: &[u8]) -> bool {
    data.len() <= want.len()
        && data
            .chunks(4096)
            .zip(want.chunks(4096))
            .all(|(got, exp)| exp.starts_with(got) || got.iter().all(|&b| b == 0))
}

/// Splits a workload name `PREFIX_N` into (prefix, N).
fn parse_name(name: &str) -> Option<(&str, u64)> {
    let (prefix, n) = name.rsplit_once('_')?;
    Some((prefix, n.parse().ok()?))
}

/// Writes `data` to a new file at `path` in 8 KiB pieces and fsyncs it.
fn write_fsync(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = File::create(path)?;
    for piece in data.chunks(8192) {
        f.write_all(piece)?;
    }
    f.sync_all()
}

/// Files and bytes of every regular file under `dir`.
fn tree_size(dir: &Path) -> (usize, u64) {
    let files = walk_files(dir);
    let bytes = files
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    (files.len(), bytes)
}

/// The `file PATH LEN HASH …` lines of a MANIFEST as PATH → (LEN, HASH).
fn manifest_files(dir: &Path) -> BTreeMap<String, (u64, String)> {
    let text = fs::read_to_string(dir.join("MANIFEST")).expect("read MANIFEST");
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() >= 4 && f[0] == "file").then(|| {
                (
                    f[1].to_string(),
                    (f[2].parse().expect("manifest length"), f[3].to_string()),
                )
            })
        })
        .collect()
}

fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let (cp, cn) = (cpath(p), cpath(name));
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe { libc::getxattr(cp.as_ptr(), cn.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| {
        buf.truncate(r as usize);
        buf
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Online backup under load
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// write tmp_i, fsync, rename tmp_i → f_i
    Create,
    /// rename f_i → g_i
    Rename,
    /// unlink g_i
    Delete,
}

/// One workload operation with the instants just before its first and after its last syscall.
#[derive(Debug, Clone, Copy)]
struct Op {
    i: u64,
    kind: Kind,
    start: Instant,
    end: Instant,
}

/// The safe-update workload: step s creates f_s (tmp_s, fsync, rename); odd steps rename
/// f_{s-5} → g_{s-5}; steps ≡ 1 (mod 4) delete g_{s-9}. Runs until `stop`; returns the log.
fn safe_update_workload(root: PathBuf, stop: Arc<AtomicBool>) -> Vec<Op> {
    let mut log = Vec::new();
    let mut s = 0u64;
    let timed = |log: &mut Vec<Op>, i: u64, kind: Kind, f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        log.push(Op {
            i,
            kind,
            start,
            end: Instant::now(),
        });
    };
    while !stop.load(Ordering::SeqCst) && s < 50_000 {
        timed(&mut log, s, Kind::Create, &mut || {
            let tmp = root.join(format!("tmp_{s}"));
            write_fsync(&tmp, &content(s)).unwrap_or_else(|e| panic!("write tmp_{s}: {e}"));
            fs::rename(&tmp, root.join(format!("f_{s}")))
                .unwrap_or_else(|e| panic!("rename tmp_{s} -> f_{s}: {e}"));
        });
        if s % 2 == 1 && s >= 5 {
            let j = s - 5;
            timed(&mut log, j, Kind::Rename, &mut || {
                fs::rename(root.join(format!("f_{j}")), root.join(format!("g_{j}")))
                    .unwrap_or_else(|e| panic!("rename f_{j} -> g_{j}: {e}"));
            });
        }
        if s % 4 == 1 && s >= 9 {
            let k = s - 9;
            timed(&mut log, k, Kind::Delete, &mut || {
                fs::remove_file(root.join(format!("g_{k}")))
                    .unwrap_or_else(|e| panic!("unlink g_{k}: {e}"));
            });
        }
        s += 1;
        // Busy, but not so busy that checking four restored copies takes minutes.
        if s.is_multiple_of(2) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    log
}

/// One copy of a point and the instants around its `backup begin`.
struct Round {
    copy: PathBuf,
    t0: Instant,
    t1: Instant,
}

/// What a restored round holds.
struct RoundSummary {
    files: usize,
    bytes: u64,
    /// tmp_i files (caught between write and rename).
    tmp: usize,
    /// tmp_i files with blocks that read as zeros (written, not yet durable at the point).
    tmp_with_zero_blocks: usize,
}

/// Checks a mounted restore of round `r` against the workload log.
fn check_restored_round(k: usize, r: &Round, root: &Path, log: &[Op]) -> RoundSummary {
    // What the restored tree holds, by i.
    let mut present: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let (mut files, mut bytes, mut tmp, mut zero_blocks) = (0usize, 0u64, 0usize, 0usize);
    for e in fs::read_dir(root).expect("read_dir restored root") {
        let e = e.expect("dir entry");
        let name = e.file_name().to_string_lossy().into_owned();
        let Some((prefix, i)) = parse_name(&name) else {
            panic!("copy {k}: unexpected name {name:?} in the restored tree");
        };
        let data = fs::read(e.path())
            .unwrap_or_else(|err| panic!("copy {k}: reading restored {name} failed: {err}"));
        let want = content(i);
        match prefix {
            "f" | "g" => assert!(
                data == want,
                "copy {k}: restored {name} has {} bytes that are not its contents C_{i} ({} bytes)",
                data.len(),
                want.len()
            ),
            // Not fsynced yet: what was written so far, where a block whose data had not
            // reached storage at the point may read as zeros (its write was not durable).
            "tmp" => {
                tmp += 1;
                assert!(
                    unsynced_prefix(&data, &want),
                    "copy {k}: restored {name} is not a prefix of C_{i} (zero blocks allowed): {}",
                    describe_diff(&data, &want)
                );
                if !want.starts_with(&data) {
                    zero_blocks += 1;
                }
            }
            _ => panic!("copy {k}: unexpected name {name:?} in the restored tree"),
        }
        files += 1;
        bytes += data.len() as u64;
        present.entry(i).or_default().push(prefix.to_string());
    }

    let mut ops: BTreeMap<u64, Vec<&Op>> = BTreeMap::new();
    for op in log {
        ops.entry(op.i).or_default().push(op);
    }
    for (i, names) in &present {
        assert!(
            names.len() == 1,
            "copy {k}: i={i} present under several names {names:?} (a rename is atomic)"
        );
        assert!(
            ops.contains_key(i),
            "copy {k}: i={i} present but never created"
        );
    }
    for (i, ops) in &ops {
        let find = |kind| ops.iter().find(|o| o.kind == kind).copied();
        let (c, rn, del) = (find(Kind::Create), find(Kind::Rename), find(Kind::Delete));
        let here = present.get(i).map(|v| v[0].as_str());
        let c = c.expect("every i starts with its create");
        if c.start > r.t1 {
            assert!(
                here.is_none(),
                "copy {k}: {:?}_{i} present although its create started after `backup begin` returned",
                here
            );
        }
        if c.end < r.t0 && rn.is_none_or(|o| o.start > r.t1) {
            assert_eq!(
                here,
                Some("f"),
                "copy {k}: f_{i} was complete before `backup begin` and not renamed until after it, \
                 but the point holds {here:?}"
            );
        }
        if let Some(rn) = rn {
            if rn.end < r.t0 && del.is_none_or(|o| o.start > r.t1) {
                assert_eq!(
                    here,
                    Some("g"),
                    "copy {k}: g_{i} was renamed before `backup begin` and not deleted until after \
                     it, but the point holds {here:?}"
                );
            }
        }
        if let Some(del) = del {
            if del.end < r.t0 {
                assert!(
                    here.is_none(),
                    "copy {k}: i={i} was deleted before `backup begin` but the point holds {here:?}"
                );
            }
        }
    }
    RoundSummary {
        files,
        bytes,
        tmp,
        tmp_with_zero_blocks: zero_blocks,
    }
}

/// A point taken while a workload creates, renames and deletes files with the safe update
/// pattern, copied with rsync, is a consistent state of the filesystem: it verifies, restores,
/// fsck finds it clean, and it holds every change acknowledged before `backup begin` started
/// (and none started after it returned), every file with exactly its contents. Four rounds,
/// two of which leave the point in place so the next `begin` replaces it.
#[test]
fn online_backup_under_load() {
    let fs = TestFs::new();
    let work = fs.root_dir().join("work");
    fs::create_dir(&work).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    let workload: JoinHandle<Vec<Op>> = {
        let (root, stop) = (fs.mountpoint().to_path_buf(), stop.clone());
        std::thread::spawn(move || safe_update_workload(root, stop))
    };
    // Let the workload build up some files before the first point.
    std::thread::sleep(Duration::from_millis(500));

    let mut rounds = Vec::new();
    for k in 0..4 {
        let copy = work.join(format!("copy{k}"));
        let t0 = Instant::now();
        let msg = begin(fs.backing());
        let t1 = Instant::now();
        rsync_ok(&point_dir(fs.backing()), &copy, &["--delete"]);
        // Rounds 1 and 3 leave the point in place: the next begin replaces it.
        if k % 2 == 0 {
            end(fs.backing());
        }
        println!("round {k}: {}", msg.trim());
        rounds.push(Round { copy, t0, t1 });
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::SeqCst);
    let log = workload
        .join()
        .expect("the workload failed (see its panic above)");
    end(fs.backing());
    let creates = log.iter().filter(|o| o.kind == Kind::Create).count();
    println!(
        "workload: {} operations, {creates} files created",
        log.len()
    );
    assert!(creates > 20, "the workload made only {creates} files");

    // fsck findings are collected so the contents of every copy are checked as well.
    let mut unclean = Vec::new();
    for (k, r) in rounds.iter().enumerate() {
        verify_ok(&r.copy, None);
        verify_ok(&r.copy, Some(fs.key_file()));
        let new = work.join(format!("restored{k}"));
        restore(&r.copy, &new);
        let out = fsck_n(fs.key_file(), &new);
        if !out.status.success() {
            println!(
                "copy {k}: fsck-digimed -n of the restore is not clean:\n{}",
                show(&out)
            );
            unclean.push(format!("copy {k}: {}", show(&out)));
        }
        let m = Mounted::ok(fs.key_file(), &new, &work.join(format!("mnt{k}")));
        let s = check_restored_round(k, r, &m.mnt, &log);
        let (cfiles, cbytes) = tree_size(&r.copy);
        println!(
            "copy {k}: {cfiles} point files ({cbytes} bytes) -> restored tree with {} files, {} bytes ({} tmp files caught mid-write, {} of them with not-yet-durable blocks reading as zeros): consistent",
            s.files, s.bytes, s.tmp, s.tmp_with_zero_blocks
        );
    }
    assert!(
        unclean.is_empty(),
        "fsck-digimed -n found problems in restored points:\n{}",
        unclean.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 2. A naive copy of the live backing directory
// ---------------------------------------------------------------------------------------------

/// A job that ignores the procedure and rsyncs the whole live backing directory (superblock,
/// meta/, objects/) while files are being written gets a copy that may be broken, but never
/// one that silently reads back wrong data: fsck or mount refuses it, or each file reads back
/// as written (a file still being written: a prefix of it) or fails with EIO.
#[test]
fn copy_without_procedure_is_restorable_or_detected() {
    let fs = TestFs::new();
    let work = fs.root_dir().join("work");
    fs::create_dir(&work).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_guard = StopOnDrop(stop.clone());
    // Files written once (create, write, fsync), never changed.
    let workload: JoinHandle<Vec<(u64, Instant, Instant)>> = {
        let (root, stop) = (fs.mountpoint().to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let mut log = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) && i < 50_000 {
                let start = Instant::now();
                write_fsync(&root.join(format!("f_{i}")), &content(i))
                    .unwrap_or_else(|e| panic!("write f_{i}: {e}"));
                log.push((i, start, Instant::now()));
                i += 1;
            }
            log
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    let mut copies = Vec::new();
    for k in 0..3 {
        let copy = work.join(format!("copy{k}"));
        let c0 = Instant::now();
        let out = rsync(fs.backing(), &copy, &[]);
        let c1 = Instant::now();
        // 24: some files vanished during the copy (the metadata store rewrites its files).
        let code = out.status.code();
        assert!(
            matches!(code, Some(0) | Some(24)),
            "rsync of the live backing dir failed: {}",
            show(&out)
        );
        copies.push((copy, c0, c1, code));
        std::thread::sleep(Duration::from_millis(400));
    }
    stop.store(true, Ordering::SeqCst);
    let log = workload
        .join()
        .expect("the workload failed (see its panic above)");
    let by_i: BTreeMap<u64, (Instant, Instant)> =
        log.iter().map(|&(i, s, e)| (i, (s, e))).collect();
    println!("workload: {} files written", log.len());

    let mut wrong = Vec::new();
    for (k, (copy, c0, c1, code)) in copies.iter().enumerate() {
        let fsck = fsck_n(fs.key_file(), copy);
        let fsck_what = if fsck.status.success() {
            "fsck clean".to_string()
        } else {
            let err = String::from_utf8_lossy(&fsck.stderr);
            let text = stdout(&fsck);
            let last = text
                .lines()
                .chain(err.lines())
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .to_string();
            format!("fsck exit {:?}: {last}", fsck.status.code())
        };
        let mnt = work.join(format!("mnt{k}"));
        let mounted = match Mounted::new(fs.key_file(), copy, &mnt) {
            Ok(m) => m,
            Err(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                println!(
                    "naive copy {k} (rsync exit {code:?}): {fsck_what}; mount refused: {}",
                    err.trim()
                );
                continue;
            }
        };
        let (mut ok, mut prefix, mut zero_blocks) = (0, 0, 0);
        let (mut eio, mut eio_stable, mut missing_stable) = (0, 0, 0);
        let mut seen = BTreeSet::new();
        for e in fs::read_dir(&mounted.mnt).expect("read_dir of the mounted copy") {
            let e = e.expect("dir entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(("f", i)) = parse_name(&name) else {
                wrong.push(format!("copy {k}: unexpected name {name:?}"));
                continue;
            };
            seen.insert(i);
            let Some(&(start, done)) = by_i.get(&i) else {
                wrong.push(format!("copy {k}: {name} was never written"));
                continue;
            };
            if start > *c1 {
                wrong.push(format!("copy {k}: {name} was started after the copy ended"));
            }
            let want = content(i);
            match fs::read(e.path()) {
                Ok(data) if data == want => ok += 1,
                // Written while rsync ran: a prefix of what was written (blocks not yet
                // durable reading as zeros) is a fair state.
                Ok(data) if done >= *c0 && unsynced_prefix(&data, &want) => {
                    prefix += 1;
                    if !want.starts_with(&data) {
                        zero_blocks += 1;
                    }
                }
                Ok(data) => wrong.push(format!(
                    "copy {k}: {name} reads back wrong data: {}{}",
                    describe_diff(&data, &want),
                    if done < *c0 {
                        " although it was fsynced before the copy started"
                    } else {
                        ""
                    }
                )),
                Err(err) if errno_of(&err) == libc::EIO => {
                    eio += 1;
                    if done < *c0 {
                        eio_stable += 1;
                    }
                }
                Err(err) => wrong.push(format!("copy {k}: reading {name}: {err}")),
            }
        }
        for (&i, &(_, done)) in &by_i {
            if done < *c0 && !seen.contains(&i) {
                missing_stable += 1;
            }
        }
        println!(
            "naive copy {k} (rsync exit {code:?}): {fsck_what}; mounted; {ok} files ok, {prefix} partial (written during the copy; {zero_blocks} with blocks reading as zeros), {eio} EIO ({eio_stable} of them fsynced before the copy started), {missing_stable} files fsynced before the copy missing"
        );
    }
    assert!(
        wrong.is_empty(),
        "a naive copy silently returned wrong data:\n{}",
        wrong.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Incremental copies of points are small
// ---------------------------------------------------------------------------------------------

/// The number after `label` in rsync --stats output (`Literal data: 1,234 bytes`).
fn rsync_stat(out: &Output, label: &str) -> u64 {
    let text = stdout(out);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(label))
        .unwrap_or_else(|| panic!("no {label:?} in rsync --stats output:\n{text}"));
    let digits: String = line[line.find(':').map_or(0, |p| p + 1)..]
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("cannot parse {label:?} in {line:?}"))
}

/// After a full copy of a point, the copy of the next point sends only what changed: a few MiB
/// after a 1 MiB overwrite inside a big file, or after 100 small new files — not the size of
/// the file nor of the metadata store. The updated copy still verifies and restores.
/// DIGIMEDFS_BACKUP_BIG_MB sets the big file's size (default 1024).
#[test]
fn incremental_backup_is_small() {
    const MIB: u64 = 1 << 20;
    const LIMIT: u64 = 16 * MIB;
    let big_mb: u64 = std::env::var("DIGIMEDFS_BACKUP_BIG_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
        .max(2);
    let started = Instant::now();
    let fs = TestFs::new();
    let work = fs.root_dir().join("work");
    fs::create_dir(&work).unwrap();
    let copy = work.join("copy");
    let point = point_dir(fs.backing());

    let big = fs.path("big");
    {
        let mut f = File::create(&big).unwrap();
        for _ in 0..big_mb {
            f.write_all(&random_bytes(MIB as usize)).unwrap();
        }
        f.sync_all().unwrap();
    }
    let t_write = started.elapsed();
    begin(fs.backing());
    rsync_ok(&point, &copy, &[]);
    end(fs.backing());
    verify_ok(&copy, None);
    let t_full = started.elapsed();

    let mut table = Vec::new();
    let incremental = |what: String, table: &mut Vec<String>| {
        begin(fs.backing());
        let out = rsync_ok(&point, &copy, &["--delete", "--no-whole-file", "--stats"]);
        end(fs.backing());
        let literal = rsync_stat(&out, "Literal data:");
        let matched = rsync_stat(&out, "Matched data:");
        let (_, total) = tree_size(&copy);
        let line = format!(
            "{what}: literal {literal} bytes, matched {matched} bytes, total point size {total}"
        );
        println!("{line}");
        table.push(line);
        assert!(
            literal < LIMIT,
            "{what}: rsync sent {literal} literal bytes (limit {LIMIT}); stats:\n{}",
            stdout(&out)
        );
        verify_ok(&copy, None);
    };

    // 1 MiB overwritten in the middle of the big file.
    let patch = random_bytes(MIB as usize);
    let mid = big_mb / 2 * MIB;
    {
        let f = OpenOptions::new().write(true).open(&big).unwrap();
        f.write_all_at(&patch, mid).unwrap();
        f.sync_all().unwrap();
    }
    incremental(
        format!("after 1 MiB overwrite in {big_mb} MiB file"),
        &mut table,
    );

    // 100 small files.
    let mut small = Vec::new();
    for n in 0..100u64 {
        let data = random_bytes(1024 + (n as usize * 37) % 2048);
        write_fsync(&fs.path(format!("small_{n}")), &data).unwrap();
        small.push(data);
    }
    incremental("after 100 small files (1-3 KiB)".to_string(), &mut table);
    let t_incr = started.elapsed();

    // The last copy restores to a clean filesystem holding what was written.
    let new = work.join("restored");
    restore(&copy, &new);
    fsck_clean(fs.key_file(), &new);
    let m = Mounted::ok(fs.key_file(), &new, &work.join("mnt"));
    for (n, data) in small.iter().enumerate() {
        let got = fs::read(m.path(format!("small_{n}"))).unwrap();
        assert!(
            got == *data,
            "restored small_{n} differs from what was written"
        );
    }
    let restored = File::open(m.path("big")).unwrap();
    assert_eq!(
        restored.metadata().unwrap().len(),
        big_mb * MIB,
        "restored big file size"
    );
    let live = File::open(&big).unwrap();
    for off in [0, mid, (big_mb - 1) * MIB] {
        let (mut a, mut b) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
        restored.read_exact_at(&mut a, off).unwrap();
        live.read_exact_at(&mut b, off).unwrap();
        assert!(
            a == b,
            "restored big file differs from the live one at offset {off}"
        );
    }
    println!(
        "incremental_backup_is_small ({big_mb} MiB): write {:.1} s, full copy done at {:.1} s, incrementals done at {:.1} s, total {:.1} s",
        t_write.as_secs_f64(),
        t_full.as_secs_f64(),
        t_incr.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for line in &table {
        println!("  {line}");
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Keyless verification names the damage
// ---------------------------------------------------------------------------------------------

/// Asserts that `backup verify` of `copy` fails and names `want` in a line of its stdout.
fn verify_names(copy: &Path, want: &str, what: &str) {
    let out = verify(copy, None);
    assert!(
        !out.status.success(),
        "backup verify passed a copy with {what}: {}",
        show(&out)
    );
    assert!(
        stdout(&out).lines().any(|l| l.contains(want)),
        "backup verify of a copy with {what} does not name {want:?}: {}",
        show(&out)
    );
}

/// `backup verify` without keys passes an rsync copy of a point and names every kind of damage:
/// a missing object, a flipped bit, an object from a later point, a stray file. With the key it
/// also checks the manifest's MAC, which catches a manifest edited to match a swapped object.
#[test]
fn verify_without_keys_names_damage() {
    let fs = TestFs::new();
    let work = fs.root_dir().join("work");
    fs::create_dir(&work).unwrap();
    fs::write(fs.path("small"), b"tiny").unwrap();
    // Three files over INLINE_MAX, so with a data object each.
    fs::write(fs.path("mid"), random_bytes(INLINE_MAX as usize + 10_000)).unwrap();
    fs::write(
        fs.path("changing"),
        random_bytes(INLINE_MAX as usize + 50_000),
    )
    .unwrap();
    fs::write(fs.path("large"), random_bytes(300_000)).unwrap();
    File::open(fs.mountpoint()).unwrap().sync_all().unwrap();
    for f in ["small", "mid", "changing", "large"] {
        File::open(fs.path(f)).unwrap().sync_all().unwrap();
    }

    begin(fs.backing());
    let good = work.join("good");
    rsync_ok(&point_dir(fs.backing()), &good, &[]);
    verify_ok(&good, None);
    verify_ok(&good, Some(fs.key_file()));
    let files = manifest_files(&good);
    let objects: Vec<&String> = files.keys().filter(|p| p.starts_with("objects/")).collect();
    assert!(
        objects.len() >= 3,
        "expected objects for the files over INLINE_MAX, the manifest lists {objects:?}"
    );
    let victim = files
        .iter()
        .filter(|(p, _)| p.starts_with("objects/"))
        .max_by_key(|(_, (len, _))| *len)
        .map(|(p, _)| p.clone())
        .unwrap();

    // A later point, taken while the first one still exists, after `changing` was modified in
    // place (same length): its object has the same path and other contents.
    {
        let f = OpenOptions::new()
            .write(true)
            .open(fs.path("changing"))
            .unwrap();
        f.write_all_at(b"a later version", 20_000).unwrap();
        f.sync_all().unwrap();
    }
    begin(fs.backing());
    let later = work.join("later");
    rsync_ok(&point_dir(fs.backing()), &later, &[]);
    end(fs.backing());
    verify_ok(&later, None);
    verify_ok(&good, None);
    let later_files = manifest_files(&later);
    let changed: Vec<&String> = files
        .iter()
        .filter(|(p, (_, h))| {
            p.starts_with("objects/") && later_files.get(*p).is_some_and(|(_, h2)| h2 != h)
        })
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "exactly the object of `changing` should differ between the points: {changed:?}"
    );
    let swapped = changed[0].clone();

    // Missing object.
    let c = work.join("missing");
    cp_a(&good, &c);
    fs::remove_file(c.join(&victim)).unwrap();
    verify_names(&c, &format!("missing: {victim}"), "a deleted object");

    // One bit flipped.
    let c = work.join("flipped");
    cp_a(&good, &c);
    let mut bytes = fs::read(c.join(&victim)).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x10;
    fs::write(c.join(&victim), &bytes).unwrap();
    verify_names(&c, &format!("changed: {victim}"), "a flipped bit");

    // The same object from the later point.
    let c = work.join("mixed");
    cp_a(&good, &c);
    fs::copy(later.join(&swapped), c.join(&swapped)).unwrap();
    verify_names(
        &c,
        &format!("changed: {swapped}"),
        "an object from a later point",
    );

    // A stray file.
    let c = work.join("stray");
    cp_a(&good, &c);
    fs::write(c.join("objects").join("notes.txt"), b"not mine").unwrap();
    verify_names(&c, "not part of point", "a stray file");
    verify_names(&c, "objects/notes.txt", "a stray file");

    // MAC line altered: keyless verify cannot tell, the key holder can.
    let c = work.join("badmac");
    cp_a(&good, &c);
    let text = fs::read_to_string(c.join("MANIFEST")).unwrap();
    let mac_at = text.find("\nmac ").expect("manifest has a mac line") + 5;
    let mut t = text.clone().into_bytes();
    t[mac_at] = if t[mac_at] == b'0' { b'1' } else { b'0' };
    fs::write(c.join("MANIFEST"), &t).unwrap();
    verify_ok(&c, None);
    let out = verify(&c, Some(fs.key_file()));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("MAC"),
        "verify --key-file passed a manifest with an altered MAC: {}",
        show(&out)
    );

    // A forged copy: the later object swapped in and its manifest line edited to match. The
    // keyless check has nothing to object to; the MAC does.
    let c = work.join("forged");
    cp_a(&good, &c);
    fs::copy(later.join(&swapped), c.join(&swapped)).unwrap();
    let (old_hash, new_hash) = (&files[&swapped].1, &later_files[&swapped].1);
    let text = fs::read_to_string(c.join("MANIFEST")).unwrap();
    assert!(text.contains(old_hash.as_str()));
    fs::write(c.join("MANIFEST"), text.replace(old_hash, new_hash)).unwrap();
    verify_ok(&c, None);
    let out = verify(&c, Some(fs.key_file()));
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("MAC"),
        "verify --key-file passed a forged manifest: {}",
        show(&out)
    );
    // Restored anyway, the forged copy reads back the old contents or EIO for `changing`,
    // never the later bytes under the old metadata.
    let new = work.join("forged-restored");
    restore(&c, &new);
    let m = Mounted::ok(fs.key_file(), &new, &work.join("mnt"));
    match fs::read(m.path("changing")) {
        Ok(data) => assert!(
            !data.windows(15).any(|w| w == b"a later version"),
            "the forged restore silently shows the later object's contents"
        ),
        Err(e) => assert_eq!(errno_of(&e), libc::EIO, "reading changing: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 5. No plaintext in a copy; another key cannot mount it
// ---------------------------------------------------------------------------------------------

/// Every name and every file's bytes under `dir` checked for `marker`; returns the findings.
fn find_marker(dir: &Path, marker: &str) -> Vec<String> {
    let mut findings = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().contains(marker) {
                findings.push(format!("marker in a name: {}", e.path().display()));
            }
            let ty = e.file_type().unwrap();
            if ty.is_dir() {
                stack.push(e.path());
            } else if ty.is_symlink() {
                let t = fs::read_link(e.path()).unwrap();
                if t.to_string_lossy().contains(marker) {
                    findings.push(format!("marker in a symlink: {}", e.path().display()));
                }
            }
        }
    }
    for file in walk_files(dir) {
        let data = fs::read(&file).unwrap();
        if data.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            findings.push(format!("marker in plaintext in {}", file.display()));
        }
    }
    findings
}

/// A copy of a point holds no plaintext of names, contents, xattrs or symlink targets; its
/// restore does not mount with another key, and mounts with the right one.
#[test]
fn backup_copy_has_no_plaintext_and_other_key_cannot_mount() {
    let fs = TestFs::new();
    let work = fs.root_dir().join("work");
    fs::create_dir(&work).unwrap();
    let marker = format!("MARK{}", random_hex(12));
    let dir = fs.path(format!("dir-{marker}"));
    fs::create_dir(&dir).unwrap();
    fs::write(
        dir.join(format!("name-{marker}")),
        format!("small {marker}"),
    )
    .unwrap();
    let mut big = random_bytes(200_000);
    for off in [0usize, 4090, 100_000, 199_000] {
        big[off..off + marker.len()].copy_from_slice(marker.as_bytes());
    }
    fs::write(fs.path("big"), &big).unwrap();
    // Low-entropy contents over INLINE_MAX (a data object).
    fs::write(
        fs.path("repeated"),
        marker.repeat(3000 + INLINE_MAX as usize / marker.len()),
    )
    .unwrap();
    std::os::unix::fs::symlink(format!("/target/{marker}"), fs.path("link")).unwrap();
    set_xattr(
        &fs.path("big"),
        &format!("user.{marker}"),
        format!("value {marker}").as_bytes(),
    );

    begin(fs.backing());
    let copy = work.join("copy");
    rsync_ok(&point_dir(fs.backing()), &copy, &[]);
    end(fs.backing());
    verify_ok(&copy, None);
    let findings = find_marker(&copy, &marker);
    assert!(
        findings.is_empty(),
        "plaintext in the copy:\n{}",
        findings.join("\n")
    );

    let new = work.join("restored");
    restore(&copy, &new);
    let findings = find_marker(&new, &marker);
    assert!(
        findings.is_empty(),
        "plaintext in the restore:\n{}",
        findings.join("\n")
    );

    let other = work.join("other-key");
    run_ok(Command::new(bin("digimedfs")).arg("keygen").arg(&other));
    let mnt = work.join("mnt");
    match Mounted::new(&other, &new, &mnt) {
        Ok(_m) => panic!("the restored copy mounted with another key"),
        Err(out) => assert!(
            !out.status.success() && !is_mounted(&mnt),
            "mount with another key: {}",
            show(&out)
        ),
    }
    let out = verify(&copy, Some(&other));
    assert!(
        !out.status.success(),
        "verify accepted another key: {}",
        show(&out)
    );

    let m = Mounted::ok(fs.key_file(), &new, &mnt);
    assert_eq!(
        fs::read_to_string(m.path(format!("dir-{marker}/name-{marker}"))).unwrap(),
        format!("small {marker}")
    );
    assert!(
        fs::read(m.path("big")).unwrap() == big,
        "restored big file differs"
    );
    assert_eq!(
        fs::read_link(m.path("link")).unwrap(),
        PathBuf::from(format!("/target/{marker}"))
    );
    assert_eq!(
        get_xattr(&m.path("big"), &format!("user.{marker}")),
        Some(format!("value {marker}").into_bytes())
    );
}

// ---------------------------------------------------------------------------------------------
// 6. restic
// ---------------------------------------------------------------------------------------------

/// A restic job with `backup begin` as pre hook and `backup end` as post hook backs up the
/// point; `restic restore` gives a copy that verifies, restores and mounts with the files.
#[test]
fn restic_backup_of_point_restores() {
    if !Command::new("restic")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        eprintln!("SKIPPED: restic is not installed");
        return;
    }
    let fs = TestFs::new();
    let work = fs.root_dir().join("work");
    fs::create_dir(&work).unwrap();
    let mut want = BTreeMap::new();
    for n in 0..20u64 {
        let data = content(n * 3 + 1);
        fs::write(fs.path(format!("r_{n}")), &data).unwrap();
        want.insert(format!("r_{n}"), data);
    }
    let repo = work.join("repo");
    let restic = |args: &[&str], cwd: &Path| {
        let mut cmd = Command::new("restic");
        cmd.current_dir(cwd)
            .env("RESTIC_PASSWORD", "e2e-password")
            .env("RESTIC_CACHE_DIR", work.join("cache"))
            .arg("-r")
            .arg(&repo)
            .arg("-q")
            .args(args);
        run_ok(&mut cmd)
    };
    restic(&["init"], &work);
    // The job: pre hook, backup, post hook.
    begin(fs.backing());
    restic(&["backup", "."], &point_dir(fs.backing()));
    end(fs.backing());
    assert!(
        !point_dir(fs.backing()).exists(),
        "backup end left the point in place"
    );

    let out = work.join("out");
    restic(
        &["restore", "latest", "--target", out.to_str().unwrap()],
        &work,
    );
    verify_ok(&out, None);
    verify_ok(&out, Some(fs.key_file()));
    let new = work.join("restored");
    restore(&out, &new);
    fsck_clean(fs.key_file(), &new);
    let m = Mounted::ok(fs.key_file(), &new, &work.join("mnt"));
    for (name, data) in &want {
        assert!(
            fs::read(m.path(name)).unwrap() == *data,
            "{name} restored through restic differs"
        );
    }
}

/// Issue 22, finding 9: a copy whose manifest lost its MAC line is refused by a restore with
/// the key options and restored with a warning without them; a restore with the key options
/// prints a check command that runs as printed. With stderr a pipe, none of these runs writes
/// the progress line (nor does any other verify or restore here: see [`no_progress_line`]).
#[test]
fn restore_checks_the_manifest_mac_with_key_options() {
    let fs = TestFs::new();
    fs::write(fs.path("f"), b"contents").expect("write");
    begin(fs.backing());
    let root = fs.root_dir();
    let copy = root.join("copy");
    cp_a(&point_dir(fs.backing()), &copy);

    // An intact copy, restored with the key: MAC checked, and a working fsck hint.
    let good = root.join("restored-good");
    let out = run_ok(
        backup_cmd("restore")
            .arg("--key-file")
            .arg(fs.key_file())
            .arg(&copy)
            .arg(&good),
    );
    no_progress_line(&out, "restore with the key");
    let text = stdout(&out);
    assert!(text.contains("manifest MAC verified"), "{text}");
    let hint = text
        .split("Check it with `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .unwrap_or_else(|| panic!("no check command in {text:?}"));
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(words.first(), Some(&"fsck.digimed"), "{hint}");
    let check = run(Command::new(bin("fsck-digimed")).args(&words[1..]));
    assert_eq!(check.status.code(), Some(0), "{hint}: {}", show(&check));

    // The same copy without its MAC line.
    let manifest = copy.join("MANIFEST");
    let stripped: String = fs::read_to_string(&manifest)
        .expect("manifest")
        .lines()
        .filter(|l| !l.starts_with("mac "))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&manifest, stripped).expect("strip the MAC line");
    let refused = run(backup_cmd("restore")
        .arg("--key-file")
        .arg(fs.key_file())
        .arg(&copy)
        .arg(root.join("restored-refused")));
    assert!(!refused.status.success(), "restored without a MAC line");
    assert!(show(&refused).contains("no MAC"), "{}", show(&refused));
    no_progress_line(&refused, "a refused restore");
    let warned = run_ok(
        backup_cmd("restore")
            .arg(&copy)
            .arg(root.join("restored-warned")),
    );
    assert!(stdout(&warned).contains("WARNING"), "{}", show(&warned));
    no_progress_line(&warned, "a restore that warns");
    let verified = run_ok(backup_cmd("verify").arg(&copy));
    assert!(stdout(&verified).contains("WARNING"), "{}", show(&verified));
    no_progress_line(&verified, "a verify that warns");
}

/// Overwrites `path` in place (no truncation) with `data` in 64 KiB pieces and fsyncs it.
fn overwrite_fsync(path: &Path, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).expect("open");
    for (k, piece) in data.chunks(65536).enumerate() {
        f.write_all_at(piece, (k * 65536) as u64).expect("write");
    }
    f.sync_all().expect("fsync");
}

/// The only data object of a backing directory.
fn only_object(backing: &Path) -> PathBuf {
    let objects = walk_files(&backing.join("objects"));
    assert_eq!(
        objects.len(),
        1,
        "objects of {}: {objects:?}",
        backing.display()
    );
    objects.into_iter().next().expect("one object")
}

/// Issue 22, finding 3: a point restored with `backup restore` and the live filesystem (after
/// a remount) both go on and write the same file with nearly the same data (one 16-byte unit
/// per 4 KiB block differs). Both continue from the same stored counters, so before
/// per-incarnation keys the two objects had 255 of every 256 ciphertext units equal (reused
/// XTS tweaks). Now no unit
/// may be equal at the same position, and both filesystems read back and pass fsck.
#[test]
fn restored_point_never_reuses_tweaks_of_the_live_filesystem() {
    let mut fs = TestFs::new();
    let work = fs.root_dir().join("work");
    fs::create_dir(&work).unwrap();
    let base = random_bytes(1 << 20);
    write_fsync(&fs.path("f"), &random_bytes(1 << 20)).unwrap();
    begin(fs.backing());
    let copy = work.join("copy");
    cp_a(&point_dir(fs.backing()), &copy);
    end(fs.backing());
    // A routine remount of the live filesystem: it continues from the stored counters, as
    // the restored copy does.
    fs.unmount();
    fs.mount();
    let new = work.join("restored");
    restore(&copy, &new);

    let timeline = |which: u8| {
        let mut d = base.clone();
        for (b, block) in d.chunks_mut(4096).enumerate() {
            let unit = (b * 7) % 256;
            for x in &mut block[unit * 16..unit * 16 + 16] {
                *x ^= which;
            }
        }
        d
    };
    let (live_data, restored_data) = (timeline(1), timeline(2));
    overwrite_fsync(&fs.path("f"), &live_data);
    {
        let m = Mounted::ok(fs.key_file(), &new, &work.join("mnt"));
        overwrite_fsync(&m.path("f"), &restored_data);
        assert!(
            fs::read(m.path("f")).unwrap() == restored_data,
            "restored f"
        );
    }
    assert!(fs::read(fs.path("f")).unwrap() == live_data, "live f");
    fs.unmount();

    let live_obj = only_object(fs.backing());
    let restored_obj = only_object(&new);
    assert_eq!(
        live_obj.file_name(),
        restored_obj.file_name(),
        "the same object in both"
    );
    let (a, b) = (
        fs::read(&live_obj).unwrap(),
        fs::read(&restored_obj).unwrap(),
    );
    assert_eq!(a.len(), 1 << 20);
    assert_eq!(b.len(), 1 << 20);
    let equal = a
        .chunks(16)
        .zip(b.chunks(16))
        .filter(|(x, y)| x == y)
        .count();
    assert_eq!(
        equal,
        0,
        "{equal} of {} ciphertext units equal between the live and the restored object",
        a.len() / 16
    );
    fsck_clean(fs.key_file(), fs.backing());
    fsck_clean(fs.key_file(), &new);
}
