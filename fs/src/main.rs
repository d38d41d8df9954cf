//! The `digimedfs` binary: `keygen` writes a key file, `mount` opens a filesystem (unlocked by a
//! key file or the key service) and serves it over FUSE, `rewrap` moves a filesystem's key
//! service slot to the tenant's newest key version, `info` shows what a backing directory says
//! (no key needed), `tune` relabels an unmounted filesystem, and `key` lists, adds, removes and
//! replaces key slots. A thin shell over the library; see
//! `docs/operations.md` and `docs/keyservice.md`.
//!
//! Without `-f`, `mount` returns only once the mount is live: it re-runs itself as a
//! background process (`mount -f --ready-fd 1`, stdout and stderr being a socket back to us),
//! which starts a new session, opens and mounts the filesystem and writes one zero byte to the
//! socket once the mount is live. Anything the background process prints before that (its error,
//! if mounting fails) is relayed to our stderr. The background process then logs to the
//! journal where journald runs (`DIGIMEDFS_LOG=file` keeps the file), else to
//! `/var/log/digimedfs/<mountpoint>.log`, or `$XDG_RUNTIME_DIR/digimedfs/<mountpoint>.log`, or
//! `/tmp/digimedfs-<uid>/<mountpoint>.log`, whichever is writable first.

use digimedfs::cli;

mod keys;

use anyhow::{anyhow, Context};
use cli::{Command, KeySpec, MountArgs, MountOptions};
use digimedfs::fuse::{mount_foreground, MountOpts};
use digimedfs_core::filesystem::{Filesystem, OpenOptions};
use digimedfs_core::keysource::{KeyFile, KeySource};
use digimedfs_core::logging;
use digimedfs_keyclient::{open_key_source, KeyService};
use digimedfs_sled::Sled;
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use tracing_subscriber::EnvFilter;

/// The background process already printed why it failed; exit 1 without another message.
#[derive(Debug)]
struct AlreadyReported;

impl std::fmt::Display for AlreadyReported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mount failed")
    }
}

impl std::error::Error for AlreadyReported {}

fn main() -> ExitCode {
    let cli = match cli::parse_args(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(1),
            };
        }
    };
    if let Err(e) = digimedfs_core::hardening::forbid_core_dumps() {
        tracing::warn!(error = %e, "core dumps could still hold key material");
    }
    if !matches!(cli.command, Command::Mount(_)) {
        digimedfs_core::hardening::quit_on_broken_pipe();
    }
    let result = match cli.command {
        Command::Keygen { path } => KeyFile::create_new(&path).map_err(anyhow::Error::from),
        Command::Mount(args) => mount(args),
        Command::Rewrap {
            service,
            backing_dir,
        } => rewrap(&service, &backing_dir),
        Command::Info(args) => info(&args),
        Command::Tune(args) => tune(&args),
        Command::Key { command } => {
            init_tool_logging();
            keys::run(command)
        }
        Command::Backup { command } => backup(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.is::<AlreadyReported>() => ExitCode::from(1),
        Err(err) => {
            // The background process has no terminal any more; stderr may be gone.
            let _ = writeln!(
                std::io::stderr(),
                "digimedfs: {}",
                digimedfs_core::error::render_chain(err.as_ref())
            );
            ExitCode::from(1)
        }
    }
}

/// `digimedfs mount`.
fn mount(args: MountArgs) -> anyhow::Result<()> {
    let opts = cli::parse_mount_options(&args.options)?;
    if opts.remount {
        return remount(&args.mountpoint, opts.read_only);
    }
    let key_spec = cli::key_spec(&args, &opts)?;
    check_mountpoint(&args.mountpoint)?;
    if !args.foreground {
        // The daemon only logs this; say it where the admin looks now.
        let (what, secret) = match &key_spec {
            KeySpec::File(p) => ("key file", p),
            KeySpec::Service(s) => ("token file", &s.token_file),
        };
        if let Some(w) = digimedfs_core::keysource::file::loose_file_warning(what, secret) {
            eprintln!("digimedfs: warning: {w}");
        }
        return spawn_background(&args);
    }
    let ready_fd = args.ready_fd;
    if ready_fd.is_some() {
        // SAFETY: setsid takes no arguments and touches no memory of ours. It detaches this
        // background process from the caller's terminal and process group, so the caller's
        // Ctrl-C or hangup cannot kill a live mount. It fails only if we already lead a process
        // group, which a freshly spawned child does not; then we simply keep the old session.
        unsafe { libc::setsid() };
    }

    let backing = canonical(&args.backing_dir, "backing directory")?;
    let mountpoint = canonical(&args.mountpoint, "mountpoint")?;
    let log_file = init_logging(&opts, ready_fd.is_some(), &mountpoint, &backing);
    // Read the key file, or the token and CA files, before leaving the working directory.
    let key = key_source(&key_spec)?;
    let fsck_hint = {
        let spec = match &key_spec {
            KeySpec::File(p) => KeySpec::File(canonical(p, "key file")?),
            other => other.clone(),
        };
        cli::fsck_check_command(&spec, &backing)
    };
    if ready_fd.is_some() {
        // Do not keep the caller's working directory busy.
        let _ = std::env::set_current_dir("/");
    }

    // Open before mounting: a wrong key or a filesystem in use fails here, with nothing mounted.
    digimedfs_core::sd_notify::notify_or_warn(&format!("STATUS=opening {}", backing.display()));
    let fs = {
        let open = OpenOptions {
            read_only: opts.read_only,
            force_unlock: opts.force_unlock,
            // The mount always uses default_permissions: the kernel checks permissions with
            // the caller's supplementary groups, which the core cannot see.
            check_permissions: false,
            // The kernel leaves atime of FUSE inodes to us.
            atime: opts.atime.mode(),
            diratime: !opts.atime.nodiratime,
            ..Default::default()
        };
        match Filesystem::open(&backing, key.as_ref(), &open, &Sled) {
            Ok(fs) => fs,
            // Damage found before anything was mounted: say how to look at it.
            Err(e @ digimedfs_core::Error::Integrity { .. }) => {
                return Err(anyhow!(
                    "opening {}: {e}. Check it with: {fsck_hint}",
                    backing.display()
                ));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("opening {}", backing.display())))
            }
        }
    };
    tracing::info!(
        "opened {} with {}; mounting on {}",
        backing.display(),
        key.describe(),
        mountpoint.display()
    );
    drop(key);

    let mount_opts = MountOpts {
        read_only: opts.read_only,
        allow_other: opts.allow_other,
        fsname: cli::fsname_for(&backing),
        uring: opts.uring,
    };
    mount_foreground(Arc::new(fs), &mountpoint, &mount_opts, || {
        // Under a `Type=notify` unit (`mount -f`): the mount answers requests now.
        digimedfs_core::sd_notify::notify_or_warn(&format!(
            "READY=1\nSTATUS=serving {} on {}",
            backing.display(),
            mountpoint.display()
        ));
        if let Some(fd) = ready_fd {
            report_ready(fd, log_file.as_ref());
        }
    })
    .with_context(|| format!("serving {}", mountpoint.display()))
}

/// Opens the key source `spec` names.
fn key_source(spec: &KeySpec) -> anyhow::Result<Box<dyn KeySource>> {
    Ok(match spec {
        KeySpec::File(path) => {
            let path = canonical(path, "key file")?;
            open_key_source(Some(&path), None, None, None, None)?
        }
        KeySpec::Service(s) => open_key_source(
            None,
            Some(&s.url),
            Some(&s.tenant),
            Some(&s.token_file),
            Some(&s.ca_file),
        )?,
    })
}

/// `digimedfs rewrap`.
fn rewrap(args: &cli::KeyServiceArgs, backing: &Path) -> anyhow::Result<()> {
    init_tool_logging();
    let Some(spec) = cli::service_spec(args, &cli::KeyServiceOptions::default())? else {
        return Err(anyhow!(
            "rewrap needs the key service: --keyservice URL --tenant ID --token-file PATH \
             --ca-file PATH"
        ));
    };
    let ks = KeyService::from_files(&spec.url, &spec.tenant, &spec.token_file, &spec.ca_file)
        .map_err(digimedfs_core::Error::from)?;
    let report = digimedfs_keyclient::rewrap_filesystem(backing, &ks)
        .with_context(|| format!("rewrapping the key slot of {}", backing.display()))?;
    for s in &report.slots {
        if s.from == s.to {
            println!(
                "filesystem {} (tenant {}): key slot {} already uses key version {}, the \
                 newest; nothing to do",
                report.fs_uuid, report.tenant, s.index, s.to
            );
        } else {
            println!(
                "filesystem {} (tenant {}): key slot {} rewrapped from key version {} to {}; \
                 data untouched",
                report.fs_uuid, report.tenant, s.index, s.from, s.to
            );
        }
    }
    Ok(())
}

/// Logging of the offline tools (info, tune, key): warnings and errors of the library on
/// stderr (their result goes to stdout), or the journal under systemd; `RUST_LOG` overrides.
fn init_tool_logging() {
    logging::init_stderr("digimedfs", logging::env_filter("warn"), false);
}

/// `digimedfs info`: exits 1 when key options were given and the superblock does not verify.
fn info(args: &cli::InfoArgs) -> anyhow::Result<()> {
    init_tool_logging();
    let key = match cli::optional_key_spec(&args.key)? {
        Some(spec) => Some(key_source(&spec)?),
        None => None,
    };
    let info = digimedfs_core::admin::info(&args.backing_dir, key.as_deref())?;
    if args.json {
        println!("{}", digimedfs::admin::info_json(&info));
    } else {
        print!("{}", digimedfs::admin::info_text(&info));
    }
    if let digimedfs_core::admin::Verification::Failed(why) = &info.verification {
        return Err(anyhow!(
            "the superblock of {} does not verify: {}",
            args.backing_dir.display(),
            digimedfs::admin::printable(why)
        ));
    }
    Ok(())
}

/// `digimedfs tune`.
fn tune(args: &cli::TuneArgs) -> anyhow::Result<()> {
    init_tool_logging();
    let Some(label) = &args.label else {
        return Err(anyhow!("nothing to change: give --label LABEL"));
    };
    // Before the key is opened: a bad label needs no key service round trip.
    digimedfs_core::format::superblock::check_label(label)?;
    let Some(spec) = cli::optional_key_spec(&args.key)? else {
        return Err(anyhow!(
            "tune needs the key: --key-file PATH, or --keyservice URL --tenant ID --token-file \
             PATH --ca-file PATH"
        ));
    };
    let key = key_source(&spec)?;
    let report = digimedfs_core::admin::set_label(&args.backing_dir, key.as_ref(), label)
        .with_context(|| format!("relabelling {}", args.backing_dir.display()))?;
    println!("{}", digimedfs::admin::tune_text(&report));
    Ok(())
}

/// `digimedfs backup`.
fn backup(command: cli::BackupCommand) -> anyhow::Result<()> {
    use digimedfs::progress::Line;
    use digimedfs_core::backup as b;
    use std::time::Duration;
    logging::init_stderr("digimedfs", logging::env_filter("warn"), false);
    match command {
        cli::BackupCommand::Begin {
            timeout,
            key,
            target,
        } => {
            let backing = b::resolve_backing(&target)?;
            let key = match cli::optional_key_spec(&key)? {
                Some(spec) => Some(key_source(&spec)?),
                None => None,
            };
            // While the daemon works: elapsed time (and its dump segments) on a terminal only.
            let mut line = Line::stderr();
            let msg = digimedfs_core::filesystem::begin_point_with(
                &backing,
                key.as_deref(),
                Duration::from_secs(timeout),
                &Sled,
                &mut |w| line.show(&w.to_string()),
            );
            line.clear();
            println!("{}", msg?);
        }
        cli::BackupCommand::End { timeout, target } => {
            let backing = b::resolve_backing(&target)?;
            println!("{}", b::end(&backing, Duration::from_secs(timeout))?);
        }
        cli::BackupCommand::Status { target } => {
            println!("{}", b::status(&b::resolve_backing(&target)?)?);
        }
        cli::BackupCommand::Verify { key, copy } => {
            let key = match cli::optional_key_spec(&key)? {
                Some(spec) => Some(key_source(&spec)?),
                None => None,
            };
            let mut line = Line::stderr();
            let report = b::verify_with(&copy, key.as_deref(), &mut |p| {
                digimedfs::progress::show_copy(&mut line, p)
            })?;
            line.clear();
            println!("{report}");
            if !report.problems.is_empty() {
                return Err(AlreadyReported.into());
            }
        }
        cli::BackupCommand::Restore { key, copy, target } => {
            let spec = cli::optional_key_spec(&key)?;
            let key = match &spec {
                Some(spec) => Some(key_source(spec)?),
                None => None,
            };
            let mut line = Line::stderr();
            let mut report = b::restore_with(&copy, &target, key.as_deref(), &Sled, &mut |p| {
                digimedfs::progress::show_copy(&mut line, p)
            })?;
            line.clear();
            if let Some(spec) = &spec {
                report.check_command = Some(cli::fsck_check_command(spec, &target));
            }
            println!("{report}");
        }
    }
    Ok(())
}

/// The canonical form of a path given on the command line.
/// Refuses a mountpoint that is not a directory (mount(8) mounts only on directories; a mount on
/// a file would answer EIO there and hold the filesystem's lock) or that is already a mount
/// point (a second filesystem stacked on it would hide the first without a word).
fn check_mountpoint(mountpoint: &Path) -> anyhow::Result<()> {
    let meta = std::fs::metadata(mountpoint)
        .with_context(|| format!("mountpoint {}", mountpoint.display()))?;
    if !meta.is_dir() {
        anyhow::bail!(
            "mountpoint {} is not a directory: mount on an empty directory",
            mountpoint.display()
        );
    }
    let path = canonical(mountpoint, "mountpoint")?;
    if let Some(m) = digimedfs_core::mounts::at(&digimedfs_core::mounts::current(), &path) {
        let fstype = m.fstype;
        anyhow::bail!(
            "{} is already a mount point (type {fstype}): unmount it first (umount {}), or mount \
             on another directory",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

fn canonical(path: &Path, what: &str) -> anyhow::Result<PathBuf> {
    path.canonicalize()
        .with_context(|| format!("{what} {}", path.display()))
}

/// Re-runs this program as a background process that mounts, and waits until the mount is
/// live (exit 0) or the background process fails (its message is relayed, exit 1).
fn spawn_background(args: &MountArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating the digimedfs executable")?;
    // A socket pair works like a pipe here (and std::io::pipe is newer than our MSRV).
    let (mut from_child, to_child) = UnixStream::pair().context("creating a pipe")?;
    let to_child_err = to_child.try_clone().context("duplicating a pipe")?;

    let mut cmd = std::process::Command::new(exe);
    cmd.args(["mount", "-f", "--ready-fd", "1"]);
    for list in &args.options {
        cmd.arg("-o").arg(list);
    }
    if let Some(key) = &args.key.key_file {
        cmd.arg("--key-file").arg(key);
    }
    let ks = &args.key.service;
    if let Some(url) = &ks.url {
        cmd.arg("--keyservice").arg(url);
    }
    if let Some(tenant) = &ks.tenant {
        cmd.arg("--tenant").arg(tenant);
    }
    if let Some(token) = &ks.token_file {
        cmd.arg("--token-file").arg(token);
    }
    if let Some(ca) = &ks.ca_file {
        cmd.arg("--ca-file").arg(ca);
    }
    cmd.arg("--").arg(&args.backing_dir).arg(&args.mountpoint);
    // glibc gives each of the FUSE threads its own malloc arena (up to 8 per core); blocks
    // allocated by one thread and freed by the writeback thread then stay spread over many
    // arenas. Two arenas cut the daemon's peak memory from 254 to 222 MiB (1 GiB dd, then
    // extracting /usr/include and /usr/share/doc); dd and tar timings moved less than the
    // machine's noise. An explicit setting by the admin wins.
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        cmd.env("MALLOC_ARENA_MAX", "2");
    }
    // glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB),
    // after which the daemon's multi-MiB write buffers and sled's 8 MiB log buffers come from
    // the heap and leave it fragmented. A fixed threshold keeps them in their own mappings,
    // returned at free (docs/performance.md, tuning table: `MALLOC_MMAP_THRESHOLD_`). An
    // explicit setting by the admin wins.
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none()
        && std::env::var_os("GLIBC_TUNABLES").is_none()
    {
        cmd.env("MALLOC_MMAP_THRESHOLD_", "262144");
    }
    cmd.stdin(Stdio::null())
        .stdout(OwnedFd::from(to_child))
        .stderr(OwnedFd::from(to_child_err));
    let mut child = cmd.spawn().context("starting the background process")?;
    // `cmd` holds our copies of the pipe's write end; drop them so we see EOF when the
    // background process exits.
    drop(cmd);

    let mut relayed = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match from_child.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("reading from the background process"),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        if let Some(pos) = chunk.iter().position(|&b| b == 0) {
            relayed.extend_from_slice(chunk.get(..pos).unwrap_or_default());
            let _ = std::io::stderr().write_all(&relayed);
            return Ok(());
        }
        relayed.extend_from_slice(chunk);
    }
    let status = child.wait().context("waiting for the background process")?;
    if relayed.is_empty() {
        return Err(anyhow!(
            "the background process exited ({status}) before the mount was live"
        ));
    }
    let _ = std::io::stderr().write_all(&relayed);
    Err(AlreadyReported.into())
}

/// In the background process, once the mount is live: tells the waiting parent, then points
/// stdin, stdout and stderr away from the pipe (at the log file, or /dev/null).
fn report_ready(fd: RawFd, log_file: Option<&File>) {
    // SAFETY: `fd` was handed to us by the parent for this purpose and nothing in this process
    // closes it before the borrow ends: we only duplicate it here.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    match borrowed.try_clone_to_owned() {
        Ok(owned) => {
            let mut pipe = File::from(owned);
            if let Err(e) = pipe.write_all(&[0]) {
                tracing::warn!("telling the parent that the mount is live failed: {e}");
            }
        }
        Err(e) => tracing::warn!("ready fd {fd} is unusable: {e}"),
    }

    let devnull = File::options().read(true).write(true).open("/dev/null");
    let Ok(devnull) = devnull else {
        tracing::warn!("cannot open /dev/null; keeping stdio");
        return;
    };
    let out = log_file.map_or(devnull.as_raw_fd(), |f| f.as_raw_fd());
    for (src, target) in [(devnull.as_raw_fd(), 0), (out, 1), (out, 2)] {
        // SAFETY: both descriptors are open for the duration of the call; dup2 atomically
        // replaces `target` (stdin/stdout/stderr), which std keeps using as before.
        if unsafe { libc::dup2(src, target) } < 0 {
            tracing::warn!(
                "redirecting fd {target} failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Sets up logging: in the foreground the journal under a systemd unit, else stderr; in the
/// background process the journal where journald runs (unless `DIGIMEDFS_LOG=file`), else a
/// log file. Journal entries name the mountpoint and backing directory
/// (`DIGIMEDFS_MOUNTPOINT=`, `DIGIMEDFS_BACKING=`). Returns the log file, if any. `-o debug`
/// logs at debug level, otherwise `RUST_LOG` or `info`.
fn init_logging(
    opts: &MountOptions,
    background: bool,
    mountpoint: &Path,
    backing: &Path,
) -> Option<File> {
    // fuser 0.18 retries the unmount we already did when its session ends and warns that it
    // failed; that warning is noise, so fuser::mnt logs errors only unless asked otherwise.
    let filter = if opts.debug {
        EnvFilter::new("debug")
    } else {
        logging::env_filter("info,fuser::mnt=error")
    };
    let to_journal = if background {
        logging::journald_available()
            && std::env::var_os("DIGIMEDFS_LOG").is_none_or(|v| v != "file")
    } else {
        logging::stderr_is_journal()
    };
    let mut journal_error = None;
    if to_journal {
        let fields = [
            ("DIGIMEDFS_MOUNTPOINT", mountpoint.display().to_string()),
            ("DIGIMEDFS_BACKING", backing.display().to_string()),
        ];
        match logging::journal_layer("digimedfs", &fields) {
            Ok(layer) => {
                logging::init_journal(layer, filter);
                return None;
            }
            Err(e) => journal_error = Some(e),
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let file = if background {
        open_log_file(&cli::log_name(mountpoint))
    } else {
        None
    };
    let copy = match file {
        Some((path, file)) => {
            let copy = file.try_clone().ok();
            let _ = builder
                .with_ansi(false)
                .with_writer(Mutex::new(file))
                .try_init();
            tracing::info!("logging to {}", path.display());
            copy
        }
        None if background => {
            let _ = builder.with_writer(std::io::sink).try_init();
            None
        }
        None => {
            let ansi = std::io::stderr().is_terminal();
            let _ = builder
                .with_ansi(ansi)
                .with_writer(std::io::stderr)
                .try_init();
            None
        }
    };
    if let Some(e) = journal_error {
        tracing::warn!("journald unusable ({e}); logging here instead");
    }
    copy
}

/// Opens `<dir>/<name>.log` for appending in the first usable log directory.
fn open_log_file(name: &str) -> Option<(PathBuf, File)> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};

    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut dirs = vec![(PathBuf::from("/var/log/digimedfs"), 0o750)];
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        dirs.push((PathBuf::from(run).join("digimedfs"), 0o700));
    }
    dirs.push((std::env::temp_dir().join(format!("digimedfs-{uid}")), 0o700));

    for (dir, mode) in dirs {
        let _ = std::fs::DirBuilder::new().mode(mode).create(&dir);
        // Only a real directory of ours (or root's) is trusted; in /tmp anyone could have
        // planted a symlink or directory under that name.
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() && (m.uid() == uid || m.uid() == 0) => {}
            _ => continue,
        }
        let path = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path);
        if let Ok(file) = file {
            return Some((path, file));
        }
    }
    None
}

/// `mount -o remount,ro|rw`: the daemon keeps running; the kernel changes the mount's flags.
fn remount(mountpoint: &Path, read_only: bool) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .context("mountpoint contains a NUL byte")?;
    let mut flags = libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    // SAFETY: `target` is a valid NUL-terminated path; source, type and data may be null for
    // MS_REMOUNT, and the kernel reads nothing else from our memory.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("remounting {}", mountpoint.display()));
    }
    Ok(())
}
