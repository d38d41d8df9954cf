//! Running under systemd: readiness notification through `$NOTIFY_SOCKET` (a real unix
//! datagram socket standing in for systemd's) for real mounts.

use digimedfs_tests::{is_mounted, mounts_at, unmount_and_wait, wait_until, TestFs, TIMEOUT};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Stdio;

/// A stand-in for systemd's notification socket.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    sock: UnixDatagram,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind the notify socket");
        // A bound on a test that would otherwise hang; no assertion depends on timing.
        sock.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        NotifySocket {
            _dir: dir,
            path,
            sock,
        }
    }

    /// The next message; panics (naming what was awaited) if none arrives.
    fn recv(&self, awaiting: &str) -> String {
        let mut buf = [0u8; 4096];
        let n = self
            .sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification while awaiting {awaiting}: {e}"));
        String::from_utf8(buf[..n].to_vec()).expect("notification is UTF-8")
    }

    /// Receives messages until one carries `assignment` (e.g. `READY=1`); runs `at_arrival` on
    /// it at once, before anything else happens in the test. Returns all messages seen.
    fn until(&self, assignment: &str, mut at_arrival: impl FnMut(&str)) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let msg = self.recv(assignment);
            let found = msg.lines().any(|l| l == assignment);
            if found {
                at_arrival(&msg);
            }
            seen.push(msg);
            if found {
                return seen;
            }
        }
    }
}

/// Asserts that `mnt` answers stat(2) as the mounted digimedfs filesystem: its own device
/// (not the parent directory's) and a fuse.digimedfs entry in the mount table.
fn assert_serving(mnt: &Path, when: &str) {
    let parent_dev = std::fs::metadata(mnt.parent().expect("parent"))
        .expect("stat parent")
        .dev();
    let meta = std::fs::metadata(mnt).unwrap_or_else(|e| panic!("{when}: stat: {e}"));
    assert_ne!(
        meta.dev(),
        parent_dev,
        "{when}: {} is still the bare directory (same device as its parent)",
        mnt.display()
    );
    assert!(
        mounts_at(mnt).iter().any(|(_, ty)| ty == "fuse.digimedfs"),
        "{when}: no fuse.digimedfs mount at {}: {:?}",
        mnt.display(),
        mounts_at(mnt)
    );
}

/// `mount -f` as a `Type=notify` service runs it: READY=1 arrives only once the mountpoint
/// answers stat as the mounted filesystem, with a STATUS line naming it; SIGTERM (systemctl
/// stop) sends STOPPING=1, and the process unmounts and exits 0. Then the background mount
/// (no `-f`, as mount(8) runs it) with the variable inherited: READY=1 again only once
/// mounted, and STOPPING=1 when it is unmounted from outside.
#[test]
fn notify_socket_gets_ready_once_mounted_and_stopping_at_unmount() {
    let mut fs = TestFs::unmounted(&[]);
    let mnt = fs.mountpoint().to_path_buf();
    let notify = NotifySocket::new();
    let log = std::fs::File::create(fs.root_dir().join("foreground.log")).expect("log file");

    let mut cmd = fs.mount_command(fs.key_file(), &mnt, &[]);
    cmd.arg("-f")
        .env("NOTIFY_SOCKET", &notify.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let mut child = cmd.spawn().expect("start digimedfs mount -f");
    fs.mark_mounted();
    let seen = notify.until("READY=1", |msg| {
        assert_serving(&mnt, &format!("when READY=1 arrived ({msg:?})"));
    });
    let ready = seen.last().expect("READY message");
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=serving ") && l.ends_with(&*mnt.to_string_lossy())),
        "READY=1 comes with a STATUS line naming the mountpoint: {ready:?}"
    );
    assert!(
        !seen.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 before the stop: {seen:?}"
    );
    // The mount works once ready.
    std::fs::write(mnt.join("f"), b"ready").expect("write after READY=1");

    // SAFETY: kill takes plain integers; the pid is our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let stop = notify.until("STOPPING=1", |_| {});
    assert!(
        stop.iter().all(|m| !m.contains("READY=1")),
        "READY=1 again before stopping: {stop:?}"
    );
    let status = child.wait().expect("wait for digimedfs mount -f");
    let log = std::fs::read_to_string(fs.root_dir().join("foreground.log")).unwrap_or_default();
    assert!(
        status.success(),
        "mount -f exited {status}; its log:\n{log}"
    );
    assert!(
        wait_until(TIMEOUT, || !is_mounted(&mnt)),
        "still mounted after SIGTERM"
    );
    fs.mark_unmounted();

    // Background mount: the detached process inherits NOTIFY_SOCKET and notifies itself.
    let out = fs
        .mount_command(fs.key_file(), &mnt, &[])
        .env("NOTIFY_SOCKET", &notify.path)
        .output()
        .expect("run digimedfs mount");
    assert!(
        out.status.success(),
        "digimedfs mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs.mark_mounted();
    notify.until("READY=1", |msg| {
        assert_serving(&mnt, &format!("background: when READY=1 arrived ({msg:?})"));
    });
    assert_eq!(
        std::fs::read(mnt.join("f")).expect("read back"),
        b"ready",
        "data written before the restart"
    );
    unmount_and_wait(&mnt).expect("unmount");
    fs.mark_unmounted();
    notify.until("STOPPING=1", |_| {});
}

/// The fields of one journald native-protocol datagram (`KEY=value\n`, or `KEY\n`, a 64-bit
/// little-endian length, the value and `\n` for values that may hold newlines).
fn journal_fields(mut d: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let nl = d.iter().position(|&b| b == b'\n').unwrap_or(d.len());
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            out.push((
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                line[eq + 1..].to_vec(),
            ));
            d = d.get(nl + 1..).unwrap_or_default();
        } else {
            let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let value = d[nl + 9..nl + 9 + len].to_vec();
            out.push((String::from_utf8_lossy(line).into_owned(), value));
            d = d.get(nl + 9 + len + 1..).unwrap_or_default();
        }
    }
    out
}

/// A stand-in for journald: a datagram socket in `dir/journal/socket`, which
/// [`in_private_run`] makes the process see at /run/systemd/journal/socket.
struct FakeJournal {
    dir: tempfile::TempDir,
    sock: UnixDatagram,
}

impl FakeJournal {
    fn new() -> FakeJournal {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("journal")).expect("mkdir journal");
        let sock = UnixDatagram::bind(dir.path().join("journal/socket")).expect("bind journal");
        sock.set_read_timeout(Some(TIMEOUT)).expect("read timeout");
        FakeJournal { dir, sock }
    }

    /// Entries (non-empty datagrams) until one whose MESSAGE contains `needle`; all of them.
    fn until_message(&self, needle: &str) -> Vec<Vec<(String, Vec<u8>)>> {
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = self.sock.recv(&mut buf).unwrap_or_else(|e| {
                panic!("no journal entry with {needle:?}: {e}; got {entries:?}")
            });
            if n == 0 {
                continue; // tracing-journald's probe
            }
            let fields = journal_fields(&buf[..n]);
            let hit = fields
                .iter()
                .any(|(k, v)| k == "MESSAGE" && String::from_utf8_lossy(v).contains(needle));
            entries.push(fields);
            if hit {
                return entries;
            }
        }
    }
}

fn field<'a>(entry: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    entry
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// A command run in a private mount namespace whose /run is a fresh tmpfs holding only the fake
/// journal's socket at /run/systemd/journal/socket (the host's /run stays untouched).
fn in_private_run(journal: &FakeJournal, argv: &[&std::ffi::OsStr]) -> std::process::Command {
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(
            "set -e; mount -t tmpfs tmpfs /run; mkdir -p /run/systemd/journal; \
             mount --bind \"$0\" /run/systemd/journal; exec \"$@\"",
        )
        .arg(journal.dir.path().join("journal"))
        .args(argv);
    cmd
}

/// The log file a background mount of `mnt` would write as root.
fn file_log(mnt: &Path) -> std::path::PathBuf {
    let name = mnt.to_string_lossy().trim_matches('/').replace('/', "-");
    Path::new("/var/log/digimedfs").join(format!("{name}.log"))
}

/// Where journald runs (its socket exists), the detached mount daemon logs there, as
/// `SYSLOG_IDENTIFIER=digimedfs` with its mountpoint and backing directory as fields, and
/// writes no log file; SIGTERM's unmount is logged there too.
#[test]
fn detached_mount_logs_to_journald_with_its_mountpoint() {
    let fs = TestFs::unmounted(&[]);
    let mnt = fs.mountpoint().to_path_buf();
    let journal = FakeJournal::new();
    let digimedfs = digimedfs_tests::bin("digimedfs");
    let out = in_private_run(
        &journal,
        &[
            digimedfs.as_os_str(),
            "mount".as_ref(),
            "--key-file".as_ref(),
            fs.key_file().as_os_str(),
            fs.backing().as_os_str(),
            mnt.as_os_str(),
        ],
    )
    .env_remove("DIGIMEDFS_LOG")
    .output()
    .expect("run unshare");
    assert!(
        out.status.success(),
        "mount in a private namespace: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pids = digimedfs_tests::daemon_pids(&mnt);
    assert!(!pids.is_empty(), "no daemon for {}", mnt.display());
    let entries = journal.until_message("mounted on");
    let last = entries.last().expect("an entry");
    assert_eq!(field(last, "SYSLOG_IDENTIFIER"), Some(&b"digimedfs"[..]));
    assert_eq!(
        field(last, "DIGIMEDFS_MOUNTPOINT"),
        Some(mnt.as_os_str().as_encoded_bytes())
    );
    assert_eq!(
        field(last, "DIGIMEDFS_BACKING"),
        Some(fs.backing().as_os_str().as_encoded_bytes())
    );
    assert!(
        !file_log(&mnt).exists(),
        "{} written although journald runs",
        file_log(&mnt).display()
    );
    for &pid in &pids {
        // SAFETY: kill takes plain integers; `pid` serves our own mountpoint.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    journal.until_message("unmounted");
    assert!(wait_until(TIMEOUT, || pids
        .iter()
        .all(|&p| !digimedfs_tests::process_alive(p))));
}

/// Under a systemd unit (`$JOURNAL_STREAM` names stderr), `mount -f` logs to the journal and
/// nothing to stderr; with the variable inherited but stderr elsewhere, it logs to stderr
/// without colour codes.
#[test]
fn foreground_mount_logs_to_the_journal_only_when_stderr_is_the_journal_stream() {
    let fs = TestFs::unmounted(&[]);
    let mnt = fs.mountpoint().to_path_buf();
    let journal = FakeJournal::new();
    let digimedfs = digimedfs_tests::bin("digimedfs");
    for stderr_is_journal in [true, false] {
        let stderr_path = fs.root_dir().join(format!("stderr-{stderr_is_journal}"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let stream = if stderr_is_journal {
            std::fs::metadata(&stderr_path).expect("stat")
        } else {
            std::fs::metadata(fs.key_file()).expect("stat")
        };
        let mut child = in_private_run(
            &journal,
            &[
                digimedfs.as_os_str(),
                "mount".as_ref(),
                "-f".as_ref(),
                "--key-file".as_ref(),
                fs.key_file().as_os_str(),
                fs.backing().as_os_str(),
                mnt.as_os_str(),
            ],
        )
        .env(
            "JOURNAL_STREAM",
            format!("{}:{}", stream.dev(), stream.ino()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start mount -f");
        if stderr_is_journal {
            let entries = journal.until_message("mounted on");
            let last = entries.last().expect("an entry");
            assert_eq!(field(last, "SYSLOG_IDENTIFIER"), Some(&b"digimedfs"[..]));
            assert_eq!(
                field(last, "DIGIMEDFS_MOUNTPOINT"),
                Some(mnt.as_os_str().as_encoded_bytes())
            );
        } else {
            assert!(
                wait_until(TIMEOUT, || std::fs::read_to_string(&stderr_path)
                    .is_ok_and(|s| s.contains("mounted on"))),
                "mount -f never logged to its stderr"
            );
        }
        // SAFETY: kill takes plain integers; the pid is our own child (exec'd by unshare).
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait");
        let text = std::fs::read_to_string(&stderr_path).expect("read stderr");
        assert!(status.success(), "mount -f exited {status}: {text}");
        if stderr_is_journal {
            assert_eq!(
                text, "",
                "logged to stderr although it is the journal stream"
            );
        } else {
            assert!(!text.contains('\x1b'), "colour codes in a file: {text:?}");
        }
    }
}

/// No binary writes ANSI colour codes to a stderr that is not a terminal: each logs a warning
/// about a key file others can read, into a pipe.
#[test]
fn no_colour_codes_on_a_pipe() {
    let fs = TestFs::unmounted(&[]);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(fs.key_file(), std::fs::Permissions::from_mode(0o640))
        .expect("chmod key");
    let fresh = fs.root_dir().join("fresh");
    std::fs::create_dir(&fresh).expect("mkdir");
    let bin = digimedfs_tests::bin;
    let mut commands = vec![
        std::process::Command::new(bin("digimedfs")),
        std::process::Command::new(bin("mkfs-digimed")),
        std::process::Command::new(bin("fsck-digimed")),
    ];
    commands[0]
        .args(["backup", "verify", "--key-file"])
        .arg(fs.key_file())
        .arg(fs.root_dir().join("no-such-copy"));
    commands[1]
        .args(["-q", "--tenant", "t", "--key-file"])
        .arg(fs.key_file())
        .arg(&fresh);
    commands[2]
        .arg("--key-file")
        .arg(fs.key_file())
        .arg(fs.backing());
    for cmd in &mut commands {
        let out = cmd
            .env_remove("NO_COLOR")
            .env_remove("JOURNAL_STREAM")
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("readable by group or others"),
            "{cmd:?} did not warn: {err}"
        );
        assert!(!err.contains('\x1b'), "{cmd:?} wrote colour codes: {err:?}");
    }
}
