//! Man pages and shell completions of the four digimedfs commands, generated from the same clap
//! definitions the binaries parse with (`digimedfs::cli`, `mkfs_digimed::cli`,
//! `fsck_digimed::cli`, `digimedfs_keyservice::cli`), so that they cannot drift from `--help`.
//!
//! [`generate`] writes, under one output directory:
//! - `man/man1/` and `man/man8/`: one page per binary and one per (visible) subcommand, named as
//!   git names them (`digimedfs-backup-begin.1`). After clap's NAME, SYNOPSIS, DESCRIPTION,
//!   OPTIONS and COMMANDS come the hand-written sections of `docs/man/PAGE.roff` (EXIT STATUS,
//!   ENVIRONMENT, FILES, EXAMPLES, SEE ALSO); a subcommand page without its own EXIT STATUS
//!   takes its binary's, and every subcommand page refers to its parent in SEE ALSO.
//! - `completions/bash/NAME`, `completions/zsh/_NAME`, `completions/fish/NAME.fish`, named as
//!   bash-completion, zsh's vendor-completions and fish's vendor_completions.d look them up.
//!
//! Nothing here reads the environment or the clock: the same sources give the same files.

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One installed binary.
pub struct Program {
    /// The name it is installed and run as.
    pub name: &'static str,
    /// Man section: 1 for user commands in /usr/bin, 8 for administration commands in /usr/sbin.
    pub section: &'static str,
    /// Its clap command.
    pub command: fn() -> clap::Command,
}

/// The four binaries, in the order their pages are written.
pub fn programs() -> [Program; 4] {
    [
        Program {
            name: "digimedfs",
            section: "1",
            command: digimedfs::cli::Cli::command,
        },
        Program {
            name: "mkfs.digimed",
            section: "8",
            command: mkfs_digimed::cli::Cli::command,
        },
        Program {
            name: "fsck.digimed",
            section: "8",
            command: fsck_digimed::cli::Cli::command,
        },
        Program {
            name: "digimed-keyservice",
            section: "8",
            command: digimedfs_keyservice::cli::Cli::command,
        },
    ]
}

/// The hand-written sections (docs/man/), by page name.
const FRAGMENTS: &[(&str, &str)] = &[
    (
        "digimedfs",
        include_str!("../../../docs/man/digimedfs.roff"),
    ),
    (
        "digimedfs-mount",
        include_str!("../../../docs/man/digimedfs-mount.roff"),
    ),
    (
        "digimedfs-info",
        include_str!("../../../docs/man/digimedfs-info.roff"),
    ),
    (
        "digimedfs-tune",
        include_str!("../../../docs/man/digimedfs-tune.roff"),
    ),
    (
        "mkfs.digimed",
        include_str!("../../../docs/man/mkfs.digimed.roff"),
    ),
    (
        "fsck.digimed",
        include_str!("../../../docs/man/fsck.digimed.roff"),
    ),
    (
        "digimed-keyservice",
        include_str!("../../../docs/man/digimed-keyservice.roff"),
    ),
    (
        "digimed-keyservice-serve",
        include_str!("../../../docs/man/digimed-keyservice-serve.roff"),
    ),
];

/// The hand-written fragment of page `name`, if there is one.
fn fragment(name: &str) -> Option<&'static str> {
    FRAGMENTS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// The section `heading` of a roff fragment (from its `.SH` line to the next `.SH`).
pub fn roff_section<'a>(roff: &'a str, heading: &str) -> Option<&'a str> {
    let quoted = format!(".SH \"{heading}\"\n");
    let plain = format!(".SH {heading}\n");
    let start = roff.find(&quoted).or_else(|| roff.find(&plain))?;
    let body_start = start + roff.get(start..)?.find('\n')? + 1;
    let end = roff
        .get(body_start..)?
        .find("\n.SH ")
        .map_or(roff.len(), |i| body_start + i + 1);
    roff.get(start..end)
}

/// What [`generate`] wrote.
#[derive(Debug, Default)]
pub struct Generated {
    /// Every man page, with its section.
    pub man_pages: Vec<(PathBuf, String)>,
    /// Every completion file.
    pub completions: Vec<PathBuf>,
}

/// Writes all man pages and completions under `out` (created if missing).
pub fn generate(out: &Path) -> Result<Generated> {
    let mut done = Generated::default();
    for program in programs() {
        let dir = out.join("man").join(format!("man{}", program.section));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cmd = (program.command)()
            .name(program.name)
            .bin_name(program.name)
            .disable_help_subcommand(true);
        cmd.build();
        let top_exit = fragment(program.name)
            .and_then(|f| roff_section(f, "EXIT STATUS"))
            .with_context(|| format!("docs/man/{}.roff has no EXIT STATUS", program.name))?;
        write_pages(&cmd, &program, None, top_exit, &dir, &mut done)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let (sub, file) = match shell {
                Shell::Bash => ("bash", program.name.to_string()),
                Shell::Zsh => ("zsh", format!("_{}", program.name)),
                _ => ("fish", format!("{}.fish", program.name)),
            };
            let dir = out.join("completions").join(sub);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), program.name, &mut buf);
            let path = dir.join(file);
            std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
            done.completions.push(path);
        }
    }
    Ok(done)
}

/// Writes the page of `cmd` (a built command) and of each visible subcommand below it.
fn write_pages(
    cmd: &clap::Command,
    program: &Program,
    parent: Option<&str>,
    top_exit: &str,
    dir: &Path,
    done: &mut Generated,
) -> Result<()> {
    let page = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let man = clap_mangen::Man::new(cmd.clone())
        .section(program.section)
        .source(format!("digimedfs {}", env!("CARGO_PKG_VERSION")))
        .manual(if program.section == "8" {
            "System Administration"
        } else {
            "User Commands"
        });
    let mut text = Vec::new();
    man.render_title(&mut text)?;
    man.render_name_section(&mut text)?;
    man.render_synopsis_section(&mut text)?;
    man.render_description_section(&mut text)?;
    // Every command has at least --help, so OPTIONS is never empty.
    man.render_options_section(&mut text)?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut text)?;
    }
    if cmd.get_after_help().is_some() || cmd.get_after_long_help().is_some() {
        // clap's after_help, under a proper heading.
        let mut extra = Vec::new();
        man.render_extra_section(&mut extra)?;
        let extra = String::from_utf8_lossy(&extra).replace(".SH EXTRA", ".SH NOTES");
        text.extend_from_slice(extra.as_bytes());
    }
    let own = fragment(&page).unwrap_or("");
    if roff_section(own, "EXIT STATUS").is_none() {
        text.extend_from_slice(top_exit.as_bytes());
    }
    // The fragment's sections except SEE ALSO, which a subcommand page extends.
    let own_see_also = roff_section(own, "SEE ALSO");
    let rest = match own_see_also {
        Some(s) => own.replacen(s, "", 1),
        None => own.to_string(),
    };
    text.extend_from_slice(rest.as_bytes());
    if !rest.is_empty() && !rest.ends_with('\n') {
        text.push(b'\n');
    }
    match (parent, own_see_also) {
        (None, Some(s)) => text.extend_from_slice(s.as_bytes()),
        (Some(parent), _) => {
            let mut refs = vec![format!(".BR {} ({})", roff_name(parent), program.section)];
            if parent != program.name {
                refs.push(format!(
                    ".BR {} ({})",
                    roff_name(program.name),
                    program.section
                ));
            }
            if let Some(s) = own_see_also {
                refs.extend(
                    s.lines()
                        .skip(1)
                        .map(|l| l.trim_end_matches(',').to_string()),
                );
            }
            writeln!(text, ".SH \"SEE ALSO\"\n{}", refs.join(",\n"))?;
        }
        (None, None) => {}
    }
    if cmd.get_version().is_some() || cmd.get_long_version().is_some() {
        man.render_version_section(&mut text)?;
    }
    let path = dir.join(format!("{page}.{}", program.section));
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    done.man_pages.push((path, program.section.to_string()));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(sub, program, Some(&page), top_exit, dir, done)?;
    }
    Ok(())
}

/// A command name as roff text (`-` escaped so it stays a hyphen and can be searched).
fn roff_name(name: &str) -> String {
    name.replace('-', "\\-")
}
