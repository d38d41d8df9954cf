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
