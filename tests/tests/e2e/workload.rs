//! Real programs on the mount: git, a C compiler, SQLite (through python3).

use digimedfs_tests::{run, TestFs};
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

/// Whether `prog` can be run; prints why a test is skipped if not.
pub fn have(prog: &str) -> bool {
    let ok = Command::new(prog)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIPPED: `{prog}` is not installed; this workload is not tested");
    }
    ok
}

fn check(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A git command with a private, empty configuration.
pub fn git(home: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=E2E Tester",
            "-c",
            "user.email=e2e@example.org",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "core.fsyncMethod=fsync",
        ]);
    cmd
}

/// The text file of [`git_commit`]'s repository: over INLINE_MAX, so its work-tree copy is
/// object-backed (git's compressed blob of it is small and inline).
fn lib_txt() -> String {
    "line\n".repeat(digimedfs_core::format::records::INLINE_MAX as usize / 5 + 5000)
}

/// Runs git init/add/commit in `repo` with one file holding `content` and commit message
/// `message`; returns the commit id.
pub fn git_commit(home: &Path, repo: &Path, content: &str, message: &str) -> String {
    fs::create_dir_all(repo.join("src")).unwrap();
    check("git init", run(git(home, repo).arg("init").arg("-q")));
    fs::write(repo.join("README"), content).unwrap();
    fs::write(repo.join("src/lib.txt"), lib_txt()).unwrap();
    fs::write(repo.join("big.bin"), digimedfs_tests::random_bytes(300_000)).unwrap();
    check("git add", run(git(home, repo).args(["add", "-A"])));
    check(
        "git commit",
        run(git(home, repo).args(["commit", "-q", "-m", message])),
    );
    check(
        "git rev-parse",
        run(git(home, repo).args(["rev-parse", "HEAD"])),
    )
    .trim()
    .to_string()
}

#[test]
fn git_init_commit_clone_fsck() {
    if !have("git") {
        return;
    }
    let fs = TestFs::new();
    let home = fs.root_dir().join("home");
    fs::create_dir(&home).unwrap();
    let repo = fs.path("repo");
    let head = git_commit(&home, &repo, "hello from digimedfs\n", "first commit");

    // A second commit that renames and deletes.
    fs::rename(repo.join("src/lib.txt"), repo.join("src/moved.txt")).unwrap();
    fs::write(repo.join("README"), "changed\n").unwrap();
    check("git add", run(git(&home, &repo).args(["add", "-A"])));
    check(
        "git commit 2",
        run(git(&home, &repo).args(["commit", "-q", "-m", "second"])),
    );
    check("git gc", run(git(&home, &repo).args(["gc", "-q"])));

    // Clone from the mount to the mount (a local clone hard-links objects).
    check(
        "git clone",
        run(git(&home, fs.mountpoint())
            .arg("clone")
            .arg("-q")
            .arg(&repo)
            .arg(fs.path("clone"))),
    );
    let clone = fs.path("clone");
    check(
        "git fsck (clone)",
        run(git(&home, &clone).args(["fsck", "--full", "--strict"])),
    );
    check(
        "git fsck (repo)",
        run(git(&home, &repo).args(["fsck", "--full", "--strict"])),
    );
    let log = check(
        "git log",
        run(git(&home, &clone).args(["log", "--format=%s"])),
    );
    assert_eq!(log, "second\nfirst commit\n");
    let first = check(
        "git rev-parse",
        run(git(&home, &clone).args(["rev-parse", "HEAD~1"])),
    );
    assert_eq!(first.trim(), head);
    assert_eq!(
        fs::read_to_string(clone.join("README")).unwrap(),
        "changed\n"
    );
    assert_eq!(
        fs::read_to_string(clone.join("src/moved.txt")).unwrap(),
        lib_txt()
    );
    let status = check(
        "git status",
        run(git(&home, &clone).args(["status", "--porcelain"])),
    );
    assert_eq!(status, "", "clone work tree not clean");
}

#[test]
fn build_and_run_c_program() {
    if !have("cc") {
        return;
    }
    let fs = TestFs::new();
    let dir = fs.path("proj");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("util.h"), "int triangle(int n);\n").unwrap();
    fs::write(
        dir.join("util.c"),
        "#include \"util.h\"\nint triangle(int n) { return n <= 0 ? 0 : n + triangle(n - 1); }\n",
    )
    .unwrap();
    fs::write(
        dir.join("main.c"),
        "#include <stdio.h>\n#include \"util.h\"\n\
         int main(void) { printf(\"triangle(100)=%d\\n\", triangle(100)); return 0; }\n",
    )
    .unwrap();
    // Separate compile and link steps, objects written to the mount.
    for src in ["util.c", "main.c"] {
        check(
            &format!("cc -c {src}"),
            run(Command::new("cc")
                .current_dir(&dir)
                .args(["-c", "-O1", src])),
        );
    }
    check(
        "cc link",
        run(Command::new("cc")
            .current_dir(&dir)
            .args(["-o", "prog", "main.o", "util.o"])),
    );
    let out = check("./prog", run(&mut Command::new(dir.join("prog"))));
    assert_eq!(out, "triangle(100)=5050\n");
}

#[test]
fn sqlite_via_python() {
    if !have("python3") {
        return;
    }
    let mut fs = TestFs::new();
    let db = fs.path("data.db");
    let script = r#"
import sqlite3, sys
db = sys.argv[1]
con = sqlite3.connect(db)
con.execute("create table t (id integer primary key, name text, payload blob)")
with con:
    con.executemany("insert into t (name, payload) values (?, ?)",
                    [("row %d" % i, bytes([i % 256]) * 300) for i in range(1000)])
print(con.execute("select count(*) from t").fetchone()[0])
print(con.execute("pragma integrity_check").fetchone()[0])
con.close()
"#;
    let out = check(
        "python3 sqlite",
        run(Command::new("python3").arg("-c").arg(script).arg(&db)),
    );
    assert_eq!(out, "1000\nok\n");

    fs.remount();
    let query = r#"
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
print(con.execute("select count(*), sum(length(payload)) from t").fetchone())
print(con.execute("pragma integrity_check").fetchone()[0])
print(con.execute("select name from t where id = 500").fetchone()[0])
"#;
    let out = check(
        "python3 sqlite query",
        run(Command::new("python3").arg("-c").arg(query).arg(&db)),
    );
    assert_eq!(out, "(1000, 300000)\nok\nrow 499\n");
}
