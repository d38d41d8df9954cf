//! `fsck.digimed`: checks and repairs a digimedfs filesystem. A thin shell over
//! [`digimedfs_core::check`]; exit status as fsck(8) (see [`exit`]).

mod json;

use fsck_digimed::{cli, exit};

use clap::Parser;
use digimedfs_core::check::{check, Answer, CheckOptions, CheckUi, Mode, Problem, Report};
use digimedfs_keyclient::cli::{KeyArgs, KeyServiceArgs};
use digimedfs_keyclient::mount_options;
use fsck_digimed::progress::{Display, Lines};
use std::fs::File;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(exit::USAGE),
            };
        }
    };
    digimedfs_core::hardening::quit_on_broken_pipe();
    // Warnings (a key file others can read, a damaged superblock copy) go to stderr, plainly
    // (to the journal under a systemd unit).
    digimedfs_core::logging::init_stderr(
        "fsck.digimed",
        tracing_subscriber::EnvFilter::new("warn"),
        true,
    );
    if let Err(e) = digimedfs_core::hardening::forbid_core_dumps() {
        eprintln!("warning: {e}");
    }
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let _ = writeln!(
                std::io::stderr(),
                "fsck.digimed: {}",
                digimedfs_core::error::render_chain(err.as_ref())
            );
            ExitCode::from(exit::OPERATIONAL)
        }
    }
}

/// The one-line progress display, on stderr or stdout.
type TermDisplay = Display<Box<dyn Write>>;

/// Prints passes (-v), progress (see [`fsck_digimed::progress`]) and asks questions
/// (interactive mode) on the terminal.
struct Terminal {
    verbose: bool,
    yes_to_all: bool,
    /// The one-line display: on stderr when that is a terminal, on stdout with `-C 0`.
    display: Option<TermDisplay>,
    /// `-C FD` completion lines.
    lines: Option<Lines<File>>,
}

impl Terminal {
    fn clear_bar(&mut self) {
        if let Some(d) = &mut self.display {
            d.clear();
        }
    }
}

impl CheckUi for Terminal {
    fn pass(&mut self, n: u8, name: &str) {
        self.clear_bar();
        if let Some(d) = &mut self.display {
            d.pass(name);
        }
        if self.verbose {
            eprintln!("Pass {n}: {name}");
        }
    }
    fn progress(&mut self, n: u8, done: u64, total: u64) {
        if let Some(l) = &mut self.lines {
            l.report(n, done, total);
        }
        if let Some(d) = &mut self.display {
            d.report(n, done, total);
        }
    }
    fn ask(&mut self, problem: &Problem, action: &str) -> Answer {
        self.clear_bar();
        if self.yes_to_all {
            return Answer::Yes;
        }
        eprintln!("{}", describe(problem));
        loop {
            eprint!("  {action}? [y]es / [n]o / [a]ll / [q]uit: ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            match std::io::stdin().lock().read_line(&mut line) {
                Ok(0) | Err(_) => return Answer::Quit,
                Ok(_) => {}
            }
            match line.trim() {
                "y" | "Y" | "yes" => return Answer::Yes,
                "n" | "N" | "no" => return Answer::No,
                "a" | "A" | "all" => {
                    self.yes_to_all = true;
                    return Answer::Yes;
                }
                "q" | "Q" | "quit" => return Answer::Quit,
                _ => {}
            }
        }
    }
}

fn run(cli: &cli::Cli) -> anyhow::Result<u8> {
    let mode = if cli.no {
        Mode::Check
    } else if cli.yes {
        Mode::Repair
    } else if cli.preen {
        Mode::Preen
    } else if std::io::stdin().is_terminal() && !cli.json {
        Mode::Ask
    } else {
        Mode::Check
    };
    if cli.key.service.tenant.is_some() && cli.key.service.url.is_none() {
        anyhow::bail!("--tenant goes with --keyservice URL");
    }
    let key_args = if cli.key.given() {
        cli.key.clone()
    } else {
        fstab_key(&cli.backing_dir)?
    };
    // A progress descriptor that is not open is refused before the key is fetched.
    let (display, lines) = progress_outputs(cli)?;
    let key = key_args.open()?;
    let mut ui = Terminal {
        verbose: cli.verbose && !cli.json,
        yes_to_all: false,
        display,
        lines,
    };
    let opts = CheckOptions { mode, threads: 0 };
    let report = check(
        &cli.backing_dir,
        key.as_ref(),
        &opts,
        &mut ui,
        &digimedfs_sled::Sled,
    );
    ui.clear_bar();
    let report = report?;
    let code = exit_code(&report);
    let backing = cli.backing_dir.display().to_string();
    if cli.json {
        println!("{}", json::report(&backing, &report, code));
    } else {
        print_human(&backing, &report, cli.verbose);
    }
    Ok(code)
}

/// Where progress goes (e2fsck's `-C`): FD > 0 gets completion lines, 0 a display on stdout
/// (not with --json, whose stdout is the report), a negative FD (e2fsck: shown only after
/// SIGUSR1) nothing; without -C a display on stderr when that is a terminal (not with --json).
fn progress_outputs(cli: &cli::Cli) -> anyhow::Result<(Option<TermDisplay>, Option<Lines<File>>)> {
    let stderr_display = || -> Option<TermDisplay> {
        (std::io::stderr().is_terminal() && !cli.json)
            .then(|| Display::new(Box::new(std::io::stderr()) as Box<dyn Write>))
    };
    Ok(match cli.progress_fd {
        None => (stderr_display(), None),
        Some(0) if cli.json => (None, None),
        Some(0) => (Some(Display::new(Box::new(std::io::stdout()))), None),
        Some(fd) if fd < 0 => (None, None),
        Some(fd) => {
            let device = cli.backing_dir.display().to_string();
            (None, Some(Lines::new(progress_file(fd)?, &device)))
        }
    })
}

/// A descriptor of our own for `fd`, the caller's progress descriptor (close-on-exec).
fn progress_file(fd: i32) -> anyhow::Result<File> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC only reads `fd`; an invalid one makes it fail with EBADF.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        anyhow::bail!(
            "-C {fd}: cannot use file descriptor {fd} for progress: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `dup` is a new descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(dup) })
}

/// The key options of `backing`'s fstab line, for a run without key options (fsck(8) passes
/// only the fstab's first field). None there either is an operational error (exit 8): a check
/// that checked nothing must never look clean.
fn fstab_key(backing: &Path) -> anyhow::Result<KeyArgs> {
    let fstab = mount_options::fstab_path();
    let text = match std::fs::read_to_string(&fstab) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => anyhow::bail!("reading {}: {e}", fstab.display()),
    };
    let opts = mount_options::fstab_options(&text, backing)?;
    let found = opts.is_some();
    let opts = opts.unwrap_or_default();
    let key = KeyArgs {
        key_file: opts.key_file,
        service: KeyServiceArgs {
            url: opts.service.url,
            tenant: opts.service.tenant,
            token_file: opts.service.token_file,
            ca_file: opts.service.ca_file,
        },
    };
    if key.given() {
        return Ok(key);
    }
    let b = backing.display();
    let entry = if found {
        format!("its line in {} has no key options", fstab.display())
    } else {
        format!(
            "{} has no line for it (first field {b}, type fuse.digimedfs)",
            fstab.display()
        )
    };
    anyhow::bail!(
        "no key for {b}: nothing was checked. Give the key on the command line (`fsck.digimed \
         -n --key-file PATH {b}`, or --keyservice URL --tenant ID --token-file PATH --ca-file \
         PATH; through fsck(8): `fsck -t digimed -n -- --key-file=PATH {b}`), or in the mount \
         options of {b}'s fstab line (key_file=PATH, or keyservice=URL,tenant=ID,\
         token_file=PATH,ca_file=PATH), which is where `fsck -t digimed {b}` finds it; {entry}"
    )
}

fn exit_code(r: &Report) -> u8 {
    if r.cancelled {
        return exit::CANCELLED;
    }
    let mut code = exit::CLEAN;
    if r.fixed() > 0 {
        code |= exit::CORRECTED;
    }
    if r.uncorrected() > 0 {
        code |= exit::UNCORRECTED;
    }
    code
}

fn describe(p: &Problem) -> String {
    let mut s = format!("{}:", p.kind);
    if let Some(path) = &p.path {
        s.push_str(&format!(" {path}"));
    }
    if let Some(ino) = p.ino {
        s.push_str(&format!(" (inode {ino})"));
    }
    s.push_str(&format!(": {}", p.detail));
    s
}

fn print_human(backing: &str, r: &Report, verbose: bool) {
    if r.mounted {
        eprintln!(
            "fsck.digimed: {backing} is mounted; checked a snapshot of its metadata (problems in \
             files being written may be transient)"
        );
    }
    for p in &r.problems {
        let outcome = if p.fixed { "FIXED" } else { "NOT FIXED" };
        println!("{}\n  {outcome}: {}", describe(p), p.action);
    }
    if verbose {
        println!(
            "{} records, {} objects, {} blocks verified, {} block entries with a previous \
             version ({}), superblock was {}",
            r.records,
            r.objects,
            r.blocks_verified,
            r.previous_versions,
            if r.modified {
                "each now keeps the version its block holds"
            } else {
                "the next read-write mount keeps the version each block holds"
            },
            if r.was_clean {
                "clean"
            } else {
                "not clean (last mount did not unmount)"
            }
        );
    }
    println!(
        "{backing}: {} files, {} directories, {} symlinks, {} special, {} bytes",
        r.files, r.directories, r.symlinks, r.special, r.bytes
    );
    let verdict = if r.cancelled {
        "cancelled; nothing was changed"
    } else if r.problems.is_empty() {
        "clean"
    } else if r.uncorrected() > 0 {
        "errors left uncorrected"
    } else {
        "errors corrected"
    };
    println!(
        "{backing}: {} problems found, {} fixed, {} left uncorrected: {verdict}",
        r.problems.len(),
        r.fixed(),
        r.uncorrected()
    );
}
