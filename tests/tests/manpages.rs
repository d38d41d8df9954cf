//! The generated man pages and shell completions (fs/mangen): every binary and subcommand has a
//! page with the sections admins look for, fsck.digimed's EXIT STATUS lists the codes the binary
//! uses, pages render without warnings, and each shell's completion file is there and parses.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Every page that must exist: the binaries and the subcommands an admin runs.
const EXPECTED_PAGES: &[&str] = &[
    "man1/digimedfs.1",
    "man1/digimedfs-keygen.1",
    "man1/digimedfs-mount.1",
    "man1/digimedfs-rewrap.1",
    "man1/digimedfs-info.1",
    "man1/digimedfs-tune.1",
    "man1/digimedfs-key.1",
    "man1/digimedfs-key-list.1",
    "man1/digimedfs-key-add.1",
    "man1/digimedfs-key-remove.1",
    "man1/digimedfs-key-change.1",
    "man1/digimedfs-backup.1",
    "man1/digimedfs-backup-begin.1",
    "man1/digimedfs-backup-end.1",
    "man1/digimedfs-backup-status.1",
    "man1/digimedfs-backup-verify.1",
    "man1/digimedfs-backup-restore.1",
    "man8/mkfs.digimed.8",
    "man8/fsck.digimed.8",
    "man8/digimed-keyservice.8",
    "man8/digimed-keyservice-init.8",
    "man8/digimed-keyservice-serve.8",
    "man8/digimed-keyservice-tenant.8",
    "man8/digimed-keyservice-tenant-add.8",
    "man8/digimed-keyservice-tenant-list.8",
    "man8/digimed-keyservice-tenant-revoke.8",
    "man8/digimed-keyservice-token.8",
    "man8/digimed-keyservice-token-issue.8",
    "man8/digimed-keyservice-token-issue-admin.8",
    "man8/digimed-keyservice-token-revoke.8",
    "man8/digimed-keyservice-rotate.8",
    "man8/digimed-keyservice-retire.8",
    "man8/digimed-keyservice-accept-rollback.8",
    "man8/digimed-keyservice-anchor.8",
    "man8/digimed-keyservice-anchor-show.8",
    "man8/digimed-keyservice-anchor-clear.8",
    "man8/digimed-keyservice-status.8",
    "man8/digimed-keyservice-audit.8",
    "man8/digimed-keyservice-audit-verify.8",
    "man8/digimed-keyservice-audit-checkpoint.8",
    "man8/digimed-keyservice-audit-key.8",
];

const BINARIES: &[&str] = &[
    "digimedfs",
    "mkfs.digimed",
    "fsck.digimed",
    "digimed-keyservice",
];

/// The `.SH` headings of a page, unquoted.
fn headings(page: &str) -> Vec<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix(".SH "))
        .map(|h| h.trim().trim_matches('"').to_string())
        .collect()
}

fn generate() -> (tempfile::TempDir, digimedfs_mangen::Generated) {
    let dir = tempfile::tempdir().expect("temp dir");
    let done = digimedfs_mangen::generate(dir.path()).expect("generate pages");
    (dir, done)
}

#[test]
fn every_binary_and_subcommand_has_a_page_with_the_standard_sections() {
    let (dir, done) = generate();
    let man = dir.path().join("man");
    let written: BTreeSet<String> = done
        .man_pages
        .iter()
        .map(|(p, _)| {
            p.strip_prefix(&man)
                .expect("page under man/")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for page in EXPECTED_PAGES {
        assert!(
            written.contains(*page),
            "{page} missing; written: {written:?}"
        );
    }
    // And no subcommand the binaries accept is without a page.
    for program in digimedfs_mangen::programs() {
        let mut cmd = (program.command)().name(program.name);
        cmd.build();
        let mut stack = vec![(program.name.to_string(), cmd)];
        while let Some((name, cmd)) = stack.pop() {
            let page = format!("man{}/{name}.{}", program.section, program.section);
            assert!(written.contains(&page), "no page {page}");
            for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                if sub.get_name() != "help" {
                    stack.push((format!("{name}-{}", sub.get_name()), sub.clone()));
                }
            }
        }
    }
    for (path, _) in &done.man_pages {
        let text = std::fs::read_to_string(path).expect("read page");
        let h = headings(&text);
        for want in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS"] {
            assert_eq!(
                h.iter().filter(|x| *x == want).count(),
                1,
                "{}: section {want} once; headings {h:?}",
                path.display()
            );
        }
        assert!(
            h.iter().any(|x| x == "SEE ALSO"),
            "{}: {h:?}",
            path.display()
        );
        assert!(
            text.starts_with(".ie \\n(.g .ds Aq") || text.starts_with(".TH"),
            "{}",
            path.display()
        );
    }
    // The binaries' pages carry the hand-written FILES and EXAMPLES.
    for (page, section) in [
        ("digimedfs", "1"),
        ("mkfs.digimed", "8"),
        ("fsck.digimed", "8"),
        ("digimed-keyservice", "8"),
    ] {
        let text = std::fs::read_to_string(man.join(format!("man{section}/{page}.{section}")))
            .expect("read page");
        let h = headings(&text);
        for want in ["FILES", "EXAMPLES"] {
            assert!(h.iter().any(|x| x == want), "{page}: no {want} in {h:?}");
        }
    }
}

#[test]
fn fsck_page_lists_the_exit_codes_fsck_uses() {
    let (dir, _) = generate();
    let text =
        std::fs::read_to_string(dir.path().join("man/man8/fsck.digimed.8")).expect("read page");
    let exit = digimedfs_mangen::roff_section(&text, "EXIT STATUS").expect("EXIT STATUS");
    use fsck_digimed::exit::*;
    for code in [CLEAN, CORRECTED, UNCORRECTED, OPERATIONAL, USAGE, CANCELLED] {
        assert!(
            exit.lines().any(|l| l == format!(".B {code}")),
            "code {code} not in fsck.digimed(8) EXIT STATUS:\n{exit}"
        );
    }
    // A subcommand page inherits its binary's exit status.
    let sub = std::fs::read_to_string(dir.path().join("man/man1/digimedfs-backup-verify.1"))
        .expect("read page");
    let exit = digimedfs_mangen::roff_section(&sub, "EXIT STATUS").expect("EXIT STATUS");
    assert!(exit.contains("backup verify"), "{exit}");
    assert!(
        sub.contains(".BR digimedfs\\-backup (1)"),
        "SEE ALSO names the parent"
    );
}

/// `man -l` on each page prints no warning (where man-db is installed: the package build and
/// CI install it).
#[test]
fn pages_render_without_warnings() {
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("man not installed (apt-get install man-db): rendering not checked");
        return;
    }
    let (_dir, done) = generate();
    for (path, _) in &done.man_pages {
        let out = Command::new("man")
            .arg("-l")
            .arg(path)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .env_remove("MANPAGER")
            .env("PAGER", "cat")
            .output()
            .expect("run man");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.is_empty(),
            "man -l {}: {stderr}",
            path.display()
        );
        assert!(!out.stdout.is_empty(), "{} rendered empty", path.display());
    }
}

/// Each shell's completion file exists, names the command, and parses in that shell (bash
/// always; zsh and fish where installed).
#[test]
fn completions_for_every_binary_and_shell() {
    let (dir, done) = generate();
    let comp = dir.path().join("completions");
    assert_eq!(done.completions.len(), BINARIES.len() * 3);
    for bin in BINARIES {
        let bash = std::fs::read_to_string(comp.join("bash").join(bin)).expect("bash file");
        assert!(
            bash.contains(&format!("complete -F _{}", bin.replace('-', "__")))
                || bash.contains(&format!(" {bin}\n")),
            "bash completion for {bin}:\n{}",
            &bash[bash.len().saturating_sub(400)..]
        );
        let zsh = std::fs::read_to_string(comp.join("zsh").join(format!("_{bin}"))).expect("zsh");
        assert!(
            zsh.starts_with(&format!("#compdef {bin}")),
            "{bin}: {}",
            &zsh[..60]
        );
        let fish = std::fs::read_to_string(comp.join("fish").join(format!("{bin}.fish")))
            .expect("fish file");
        assert!(fish.contains(&format!("complete -c {bin} ")), "{bin}");
        for (shell, file) in [
            ("bash", comp.join("bash").join(bin)),
            ("zsh", comp.join("zsh").join(format!("_{bin}"))),
            ("fish", comp.join("fish").join(format!("{bin}.fish"))),
        ] {
            check_syntax(shell, &file);
        }
    }
    // The subcommands are offered.
    let bash = std::fs::read_to_string(comp.join("bash/digimed-keyservice")).expect("bash");
    assert!(bash.contains("issue-admin"), "token issue-admin completes");
}

fn check_syntax(shell: &str, file: &Path) {
    match Command::new(shell).arg("-n").arg(file).output() {
        Ok(out) => assert!(
            out.status.success(),
            "{shell} -n {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) if shell != "bash" => eprintln!("{shell} not installed: syntax not checked"),
        Err(e) => panic!("bash: {e}"),
    }
}
