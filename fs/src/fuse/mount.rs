//! Mounting and serving: builds the `fuser` session configuration, mounts the adapter, waits
//! until the mount goes away (`fusermount3 -u`, `umount`) or SIGTERM/SIGINT arrives (then
//! unmounts), and in every case closes the filesystem so that all dirty data reaches storage.

use super::adapter::{DigimedFuse, UringMode};
use digimedfs_core::filesystem as core;
use digimedfs_core::{Error, Result};
use fuser::{MountOption, SessionACL};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Name of the filesystem type; the mount shows up as `fuse.digimedfs`.
pub const SUBTYPE: &str = "digimedfs";

/// Fewest and most request-serving threads.
const MIN_THREADS: usize = 4;
const MAX_THREADS: usize = 8;
/// Request-serving threads per CPU. More threads than CPUs, although most requests come one at
/// a time: the kernel hands each request to the longest-waiting reader, and with a spare
/// reader per CPU that is more often one the scheduler can wake cheaply (docs/performance.md,
/// tuning table: `THREADS_PER_CPU`).
const THREADS_PER_CPU: usize = 2;

/// How the filesystem is mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOpts {
    /// Mount read-only (the core must have been opened read-only too).
    pub read_only: bool,
    /// Let users other than the mounting one access the mount (`allow_other`; non-root mounts
    /// need `user_allow_other` in /etc/fuse.conf).
    pub allow_other: bool,
    /// Source shown in /proc/mounts; `digimedfs` when `None`. Must not contain a comma.
    pub fsname: Option<String>,
    /// Which transport serves requests (`uring`, `nouring`, or neither given).
    pub uring: UringMode,
}

/// Number of threads serving requests: [`THREADS_PER_CPU`] per available CPU, at least
/// [`MIN_THREADS`], at most [`MAX_THREADS`].
fn thread_count() -> usize {
    thread::available_parallelism()
        .map(|n| n.get().saturating_mul(THREADS_PER_CPU))
        .unwrap_or(MIN_THREADS)
        .clamp(MIN_THREADS, MAX_THREADS)
}

/// The `fuser` session configuration for `opts`.
pub fn mount_options(opts: &MountOpts) -> fuser::Config {
    let fsname = opts.fsname.clone().unwrap_or_else(|| SUBTYPE.to_string());
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(fsname),
        MountOption::Subtype(SUBTYPE.to_string()),
        // fuser passes `Subtype` only to fusermount3; when it mounts directly (as root) the
        // kernel needs `subtype=` among its options to show the type as fuse.digimedfs.
        // fusermount3 accepts the repeated option (the last one wins; both are equal).
        MountOption::CUSTOM(format!("subtype={SUBTYPE}")),
        // Permission checks are the kernel's, against the mode bits the core reports.
        MountOption::DefaultPermissions,
        if opts.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(thread_count());
    config.clone_fd = can_clone_fd();
    config
}

/// Whether each thread can get its own /dev/fuse descriptor: cloning opens /dev/fuse, which an
/// unprivileged user mounting through fusermount3 may not be allowed to do. Without it the
/// threads share one descriptor, which works everywhere.
fn can_clone_fd() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok()
}

/// What the serving loop waits for.
enum Event {
    /// SIGTERM or SIGINT arrived.
    Signal(i32),
    /// The session ended and its `destroy` closed the filesystem.
    Ended,
}

/// How often the serving loop also looks whether fuser's session thread has ended, should the
/// adapter's `destroy` never have said so.
const SESSION_CHECK: Duration = Duration::from_secs(1);

/// Mounts `fs` on `mountpoint` and serves it until it is unmounted.
///
/// Calls `ready` once the mount is live (the kernel handshake is done). Returns when the mount
/// is gone: unmounted from outside (`fusermount3 -u`, `umount`), or unmounted here after
/// SIGTERM/SIGINT (lazily if it is busy, in which case this returns once the last open file is
/// closed). In every case, including a failed mount, [`core::Filesystem::close`] runs exactly
/// once before this returns; its error is returned if serving itself succeeded.
pub fn mount_foreground(
    fs: Arc<core::Filesystem>,
    mountpoint: &Path,
    opts: &MountOpts,
    ready: impl FnOnce(),
) -> Result<()> {
    let adapter = DigimedFuse::new(Arc::clone(&fs)).with_uring(opts.uring);
    let closer = adapter.closer();
    let notifier_slot = adapter.notifier_slot();
    let at = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    let publisher = super::stats::metrics_path(&at)
        .map(|path| super::stats::Publisher::start(adapter.stats(), fs, at, path));
    let served = serve(adapter, notifier_slot, mountpoint, opts, ready);
    if let Some(p) = publisher {
        p.stop();
    }
    let closed = closer.close();
    match (served, closed) {
        (Ok(()), Ok(_)) => Ok(()),
        (Ok(()), Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
        (Err(e), Err(close_err)) => {
            tracing::error!("closing the filesystem failed: {close_err}");
            Err(e)
        }
    }
}

/// Registers the io_uring queues on `session`'s connection; on failure the mount stays on
/// `/dev/fuse` (the kernel falls back by itself when a registration fails).
fn start_uring(
    session: &fuser::Session<DigimedFuse>,
    handlers: DigimedFuse,
) -> Option<super::uring::Uring> {
    let device = match session.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!("io_uring: duplicating /dev/fuse failed: {e}; using /dev/fuse");
            return None;
        }
    };
    // The kernel wants room for the largest WRITE and READ it may send.
    let payload = super::adapter::MAX_WRITE as usize;
    match super::uring::Uring::start(device, handlers, payload) {
        Ok(u) => Some(u),
        Err(e) => {
            tracing::warn!("io_uring: {e}; using /dev/fuse");
            None
        }
    }
}

/// Raises the mount's readahead to [`MAX_READAHEAD`](super::adapter::MAX_READAHEAD), the
/// window INIT asked for. The kernel caps a FUSE mount's readahead at its default of 128 KiB
/// whatever INIT says, and so splits a file read in sequence into 128 KiB READs; at 1 MiB
/// each READ carries eight times the data for the same round trip and per-request work
/// (docs/performance.md, tuning table: `MAX_READAHEAD`). Only root may write the mount's
/// `/sys/class/bdi/<major>:<minor>/read_ahead_kb`; elsewhere the mount keeps 128 KiB, which
/// costs only speed. A window an administrator already set larger is left alone.
///
/// Mounts served over io_uring keep 128 KiB: there, cold reads of a large file with 1 MiB
/// READs were slower and far more variable, for a reason not found yet (same row).
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let want_kb = u64::from(super::adapter::MAX_READAHEAD / 1024);
    let dev = match std::fs::metadata(mountpoint) {
        Ok(m) => m.dev(),
        Err(e) => {
            tracing::debug!("readahead: stat {}: {e}", mountpoint.display());
            return;
        }
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    let current = std::fs::read_to_string(&knob)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    if current.is_some_and(|kb| kb >= want_kb) {
        return;
    }
    match std::fs::write(&knob, want_kb.to_string()) {
        Ok(()) => tracing::debug!("readahead: {knob} = {want_kb}"),
        Err(e) => tracing::debug!("readahead: {knob} stays {current:?} KiB: {e}"),
    }
}

/// The error of a mount the kernel (or fusermount3) refused. A permission error of a user
/// other than root says what an unprivileged mount needs: a bare "Permission denied" on the
/// mountpoint sends the admin to the mountpoint, while the cause is /dev/fuse (fuser opens it
/// itself first, and gives up when it may not) or fusermount3.
fn mount_failed(mountpoint: &Path, e: io::Error, euid: u32) -> Error {
    if euid == 0 || e.kind() != io::ErrorKind::PermissionDenied {
        return Error::io(mountpoint, e);
    }
    Error::posix(
        libc::EACCES,
        format!(
            "mounting {} as uid {euid}: unprivileged mounts need read and write access \
             to /dev/fuse (mode 0666, as most distributions set it) and a setuid-root \
             fusermount3 (`ls -l /dev/fuse $(command -v fusermount3)` shows both), and write \
             access to the mountpoint; or mount as root",
            mountpoint.display()
        ),
    )
}

/// Mounts, calls `ready`, and waits for the end of the session.
fn serve(
    adapter: DigimedFuse,
    notifier_slot: Arc<OnceLock<fuser::Notifier>>,
    mountpoint: &Path,
    opts: &MountOpts,
    ready: impl FnOnce(),
) -> Result<()> {
    let mountpoint = mountpoint
        .canonicalize()
        .map_err(|e| Error::io(mountpoint, e))?;

    // Signals are caught from before the mount on, so a SIGTERM during mounting still leads to
    // a clean unmount instead of killing the process with a live mount.
    let mut signals = Signals::new([SIGTERM, SIGINT]).map_err(|e| {
        Error::posix(
            e.raw_os_error().unwrap_or(libc::EIO),
            format!("installing SIGTERM/SIGINT handlers: {e}"),
        )
    })?;
    let signal_handle = signals.handle();
    let (tx, rx) = mpsc::channel::<Event>();
    let signal_tx = tx.clone();
    let signal_thread = thread::Builder::new()
        .name("digimedfs-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if signal_tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| Error::posix(libc::EAGAIN, format!("spawning signal thread: {e}")))?;
    let stop_signals = move || {
        signal_handle.close();
        let _ = signal_thread.join();
    };

    let config = mount_options(opts);
    let handlers = adapter.clone();
    // The session's `destroy` says when it is over (see the loop below); the hook is shared by
    // every clone of the adapter.
    let ended_tx = tx.clone();
    adapter.on_destroyed(Box::new(move || {
        let _ = ended_tx.send(Event::Ended);
    }));
    let session = match fuser::Session::new(adapter, &mountpoint, &config) {
        Ok(session) => session,
        Err(e) => {
            stop_signals();
            // SAFETY: geteuid has no preconditions and cannot fail.
            let euid = unsafe { libc::geteuid() };
            return Err(mount_failed(&mountpoint, e, euid));
        }
    };
    // INIT is done: the queues can be registered before the session loop starts.
    let uring = if handlers.uring_agreed() {
        start_uring(&session, handlers)
    } else {
        None
    };
    // Our own handle on the connection, to tell once the session is over whether the kernel
    // still has this mount (see below).
    let connection = match session.as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            let _ = unmount(&mountpoint);
            stop_signals();
            return Err(Error::io(
                format!("{}: duplicating /dev/fuse", mountpoint.display()),
                e,
            ));
        }
    };
    let session = match session.spawn() {
        Ok(session) => session,
        Err(e) => {
            let _ = unmount(&mountpoint);
            stop_signals();
            return Err(Error::io(&mountpoint, e));
        }
    };
    // Never dropped: fuser 0.18 unmounts the mount point *by path* when the session's mount
    // handle is dropped, and its test whether the connection is still alive is inverted
    // (fuser pull request 703, not in a release yet), so after an unmount from outside it
    // unmounted whatever was mounted on the same path meanwhile, e.g. a new mount of the same
    // project made while this daemon was still writing back: programs would then write into
    // the bare mount point directory, unencrypted. Whether to unmount is decided below from
    // our own handle on the connection; the session's few descriptors go with the process.
    let session = std::mem::ManuallyDrop::new(session);
    let _ = notifier_slot.set(session.notifier());
    // After spawn: finding the mount's device asks the running session for the root's
    // attributes. Not over io_uring, where 1 MiB READs made cold sequential reads slower
    // (see raise_readahead).
    if uring.is_none() {
        raise_readahead(&mountpoint);
    }
    tracing::info!(
        "mounted on {} ({} threads{}{}{})",
        mountpoint.display(),
        config.n_threads.unwrap_or(1),
        match &uring {
            Some(u) => format!(", io_uring on {} CPUs", u.queues()),
            None => String::new(),
        },
        if opts.read_only { ", read-only" } else { "" },
        if opts.allow_other {
            ", allow_other"
        } else {
            ""
        },
    );
    ready();

    let mut unmount_requested = false;
    let mut stopping_sent = false;
    loop {
        match rx.recv_timeout(SESSION_CHECK) {
            Ok(Event::Signal(sig)) => {
                let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                if unmount_requested {
                    tracing::warn!(
                        "{name} again: still waiting for open files on {} to be closed",
                        mountpoint.display()
                    );
                    continue;
                }
                tracing::info!("{name} received: unmounting {}", mountpoint.display());
                stopping(&mut stopping_sent, &mountpoint);
                if !connection_alive(&connection) {
                    // Unmounted from outside meanwhile: the path may hold another mount now.
                    unmount_requested = true;
                    continue;
                }
                match unmount(&mountpoint) {
                    Ok(()) => unmount_requested = true,
                    Err(e) => tracing::error!(
                        "unmounting {} failed: {e}; still serving it",
                        mountpoint.display()
                    ),
                }
            }
            Ok(Event::Ended) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if session.guard.is_finished() {
                    break;
                }
            }
        }
    }
    stopping(&mut stopping_sent, &mountpoint);
    // `destroy` is the session thread's last work; let it finish its return.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !session.guard.is_finished() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(1));
    }
    stop_signals();
    if connection_alive(&connection) {
        // The session ended while the kernel still has the mount (its threads failed): take
        // it down as fuser would have, lazily if busy.
        tracing::error!(
            "the session on {} ended while still mounted; unmounting",
            mountpoint.display()
        );
        let _ = unmount(&mountpoint);
        return Err(Error::io(
            &mountpoint,
            io::Error::other("the FUSE session ended while the filesystem was mounted"),
        ));
    }
    tracing::info!("{} unmounted", mountpoint.display());
    Ok(())
}

/// Tells systemd (under a `Type=notify` unit) once that the mount is going away: on SIGTERM or
/// SIGINT, or when the session ended because the filesystem was unmounted from outside. The
/// write-back that follows may take a while; the status line says so.
fn stopping(sent: &mut bool, mountpoint: &Path) {
    if !*sent {
        *sent = true;
        digimedfs_core::sd_notify::notify_or_warn(&format!(
            "STOPPING=1\nSTATUS=unmounting {}: writing back and closing",
            mountpoint.display()
        ));
    }
}

/// Whether the kernel still has the FUSE connection behind `device`: it reports `POLLERR` on
/// the device once the mount is gone (unmounted, or the connection aborted), as libfuse's
/// `fuse_kern_unmount` checks before it unmounts.
fn connection_alive(device: &OwnedFd) -> bool {
    let mut pfd = libc::pollfd {
        fd: device.as_raw_fd(),
        events: 0,
        revents: 0,
    };
    loop {
        // SAFETY: one pollfd that lives across the call, on a descriptor we own; no timeout.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        if rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return rc == 0 || (rc > 0 && pfd.revents & libc::POLLERR == 0);
    }
}

/// Unmounts `mountpoint`; if it is busy, detaches it lazily (the session then ends when the
/// last open file on it is closed). Uses umount2(2) when privileged, `fusermount3 -u` otherwise.
fn unmount(mountpoint: &Path) -> io::Result<()> {
    match umount2(mountpoint, 0) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            tracing::warn!(
                "{} is busy: detaching it now; the filesystem is closed once the last open \
                 file on it is closed",
                mountpoint.display()
            );
            umount2(mountpoint, libc::MNT_DETACH)
        }
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => fusermount_unmount(mountpoint, false)
            .or_else(|e| {
                tracing::warn!("{e}; detaching {} lazily", mountpoint.display());
                fusermount_unmount(mountpoint, true)
            }),
        Err(e) => Err(e),
    }
}

/// umount2(2).
fn umount2(mountpoint: &Path, flags: libc::c_int) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `path` is a valid NUL-terminated string that outlives the call; umount2 only
    // reads it and has no other memory effects.
    let rc = unsafe { libc::umount2(path.as_ptr(), flags) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts through the setuid helper, for unprivileged mounts.
fn fusermount_unmount(mountpoint: &Path, lazy: bool) -> io::Result<()> {
    let mut last_err = io::Error::from(io::ErrorKind::NotFound);
    for helper in ["fusermount3", "fusermount"] {
        let mut cmd = Command::new(helper);
        cmd.arg("-u");
        if lazy {
            cmd.arg("-z");
        }
        cmd.arg("--").arg(mountpoint);
        match cmd.output() {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => {
                return Err(io::Error::other(format!(
                    "{helper} -u {}: {}",
                    mountpoint.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => last_err = e,
            Err(e) => return Err(e),
        }
    }
    Err(last_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unprivileged_permission_error_says_what_a_user_mount_needs() {
        let denied = || io::Error::from_raw_os_error(libc::EACCES);
        let msg = mount_failed(Path::new("/mnt/p"), denied(), 1000).to_string();
        for needed in [
            "/dev/fuse",
            "0666",
            "setuid-root fusermount3",
            "mount as root",
        ] {
            assert!(msg.contains(needed), "{needed} missing: {msg}");
        }
        assert!(!msg.contains("I/O error"), "{msg}");
        assert_eq!(
            mount_failed(Path::new("/mnt/p"), denied(), 1000).errno(),
            libc::EACCES
        );
        // Root, or another error: the plain error on the mountpoint.
        let msg = mount_failed(Path::new("/mnt/p"), denied(), 0).to_string();
        assert!(!msg.contains("/dev/fuse"), "{msg}");
        let other = io::Error::from_raw_os_error(libc::ENOTCONN);
        let msg = mount_failed(Path::new("/mnt/p"), other, 1000).to_string();
        assert!(
            msg.contains("/mnt/p") && !msg.contains("/dev/fuse"),
            "{msg}"
        );
    }

    #[test]
    fn options_always_have_names_and_default_permissions() {
        let c = mount_options(&MountOpts::default());
        assert!(c
            .mount_options
            .contains(&MountOption::FSName("digimedfs".into())));
        assert!(c
            .mount_options
            .contains(&MountOption::Subtype("digimedfs".into())));
        assert!(c.mount_options.contains(&MountOption::DefaultPermissions));
        assert!(c.mount_options.contains(&MountOption::RW));
        assert!(!c.mount_options.contains(&MountOption::RO));
        assert_eq!(c.acl, SessionACL::Owner);
        assert_eq!(c.clone_fd, can_clone_fd());
        let n = c.n_threads.unwrap_or(0);
        assert!((MIN_THREADS..=MAX_THREADS).contains(&n));
    }

    #[test]
    fn options_follow_flags() {
        let opts = MountOpts {
            read_only: true,
            allow_other: true,
            fsname: Some("/srv/backing".into()),
            uring: UringMode::Off,
        };
        let c = mount_options(&opts);
        assert!(c.mount_options.contains(&MountOption::RO));
        assert!(!c.mount_options.contains(&MountOption::RW));
        assert!(c
            .mount_options
            .contains(&MountOption::FSName("/srv/backing".into())));
        assert_eq!(c.acl, SessionACL::All);
    }
}
