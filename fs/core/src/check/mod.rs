//! Checking and repairing a filesystem (fsck.digimed).
//!
//! [`check`] runs over a backing directory; [`check_parts`] runs the store-level passes over
//! explicit [`Parts`] (tests use it on a `testing::MemImage`). The passes, in order:
//!
//! 1. superblock: both copies decode, unlock and pass their MAC, and agree (then, for a
//!    check that may not write, the metadata store is copied, see `snapshot`);
//! 2. records: every metadata record opens (AEAD) and decodes; keys are well formed;
//! 3. tree: connected and acyclic from the root, entries point to live inodes of the right
//!    kind, every inode reachable or an orphan, link counts and `..` consistent;
//! 4. sizes: inline lengths, block entries beyond the size, storage kind per file type;
//! 5. objects: every object belongs to an inode, every referenced object exists, every block
//!    verifies against its tag (current or previous version, as reads accept), and entries
//!    that still have a previous version keep only the one the block holds (repair);
//! 6. backing directory: nothing but the known names (stale `*.tmp` files are removable);
//! 7. digest: the digest recomputed from the records matches the running digest of the store
//!    state record and, when the superblock says clean, the superblock's; the store belongs to
//!    the superblock's epoch (or the next, after a crash).
//!
//! Analysis decides each repair when it finds the problem (so later passes see the repaired
//! state) and records it in a plan; nothing is written until every pass ran, then the plan is
//! applied in one metadata batch, objects and stray files are removed, the store state record
//! is rewritten (fresh digest, bound to the next epoch), and the superblock is rewritten with
//! that digest, the next epoch and the clean flag.
//!
//! The `Checker` is one state machine split by responsibility: this module holds the public
//! API and the checker's core (problem recording, the pass order); each pass lives in its own
//! submodule as an `impl Checker` block, the repair plan in `plan`, the decoded store in
//! `model`.

mod backing;
mod digest;
mod links;
mod model;
mod objects;
mod plan;
pub(crate) mod progress;
mod records;
mod report;
mod sizes;
mod snapshot;
mod superblock;
mod tree;
mod verify;

pub use report::{Fixability, Problem, ProblemKind, Report};

use crate::backing::{BackingDir, LOCK_FILE, META_DIR, OBJECTS_DIR};
use crate::confined::{Access, Confined};
use crate::filesystem::{unlock_superblock, Parts};
use crate::keysource::KeySource;
use crate::meta::{MetaEngine, MetaStore, Records};
use crate::objects::{DirObjects, ObjectStore};
use crate::{Error, Result};
use model::Model;
use plan::Plan;
use snapshot::Snapshot;
use std::path::Path;
use std::sync::Arc;

/// Name of the directory under the root that receives reconnected inodes.
pub const LOST_FOUND: &[u8] = b"lost+found";

/// What fsck may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Check only; change nothing (`-n`). The metadata store is read from a snapshot copy.
    Check,
    /// Repair only what is safe without a human decision (`-p`).
    Preen,
    /// Repair everything repairable (`-y`).
    Repair,
    /// Ask [`CheckUi::ask`] for every repairable problem (interactive).
    Ask,
}

impl Mode {
    /// Whether this mode may write to the filesystem.
    pub fn may_write(self) -> bool {
        self != Mode::Check
    }
}

/// Options of a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// What may be changed.
    pub mode: Mode,
    /// Threads verifying block tags (0: one per available core).
    pub threads: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            mode: Mode::Check,
            threads: 0,
        }
    }
}

/// Answer to a repair question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Repair this problem.
    Yes,
    /// Leave this problem.
    No,
    /// Stop: leave everything unchanged.
    Quit,
}

/// Progress and questions of a check (the binary prints and prompts; tests use `()`).
pub trait CheckUi {
    /// Pass `n` (1–7) named `name` starts.
    fn pass(&mut self, _n: u8, _name: &str) {}
    /// Progress within pass `n`: `done` of `total` units (see [`PASS_UNITS`]; `total` 0 while
    /// unknown, which only pass 2 is until it ends). Called from the checking thread: once
    /// with `done == 0` when a pass starts, at most about every 100 ms during it (throttled
    /// by the checker, so an implementation need not), and once with `done == total` when it
    /// ends; `done` never exceeds a nonzero `total`.
    fn progress(&mut self, _n: u8, _done: u64, _total: u64) {}
    /// [`Mode::Ask`]: whether to apply `action` to `problem`.
    fn ask(&mut self, _problem: &Problem, _action: &str) -> Answer {
        Answer::No
    }
}

impl CheckUi for () {}

/// The unit [`CheckUi::progress`] counts in each pass (index: pass number − 1).
pub const PASS_UNITS: [&str; 7] = [
    "bytes", "records", "entries", "inodes", "bytes", "steps", "records",
];

/// Number of passes.
pub const PASSES: u8 = 7;

/// Checks (and, depending on `opts.mode`, repairs) the filesystem in `backing`.
pub fn check(
    backing: &Path,
    key: &dyn KeySource,
    opts: &CheckOptions,
    ui: &mut dyn CheckUi,
    engine: &dyn MetaEngine,
) -> Result<Report> {
    if !backing.exists() {
        return Err(Error::io(
            backing,
            std::io::Error::from_raw_os_error(libc::ENOENT),
        ));
    }
    if !backing.is_dir() {
        return Err(Error::invalid(format!(
            "{}: not a directory",
            backing.display()
        )));
    }
    let dir = BackingDir::open(backing)?;
    // Mount lock: a mount holds an exclusive flock on `lock`. Repairs need it; a check only notes it.
    let (mounted, _lock) = probe_lock(&dir, opts.mode.may_write())?;
    if mounted && opts.mode.may_write() {
        return Err(Error::Busy {
            what: format!(
                "{} is mounted; unmount it before repairing (fsck -n checks a mounted filesystem \
                 read-only, from a snapshot of its metadata)",
                backing.display()
            ),
        });
    }
    let mut c = Checker::new(opts.clone(), ui);
    c.root = Some(dir.confined().clone());
    c.report.mounted = mounted;

    c.ui.pass(
        1,
        if opts.mode.may_write() {
            "superblock"
        } else {
            "superblock, copy of the metadata store"
        },
    );
    c.progress_start(1, 0);
    let (sb, keys) = unlock_superblock(&dir, key)?;
    c.pass_superblock(&dir, &keys);

    let meta_path = dir.path(META_DIR);
    let Some(meta_dir) = dir.confined().try_open_dir(META_DIR)? else {
        c.problem(
            ProblemKind::MetaMissing,
            None,
            format!(
                "{}: metadata store missing; no file can be read without it",
                meta_path.display()
            ),
            Fixability::None,
            "none possible: restore meta/ from a backup",
        );
        c.progress_end(1, 0);
        c.ui.pass(6, "backing directory");
        c.ui.progress(6, 0, 1);
        c.pass_backing(&dir);
        c.ui.progress(6, 1, 1);
        return Ok(c.finish_without_store());
    };
    let mut copied = 0;
    let (meta, _snapshot) = open_meta(&meta_dir, opts, engine, &mut |done, total| {
        copied = done;
        if done == 0 || c.throttle.due() {
            c.ui.progress(1, done, total.max(done));
        }
    })?;
    c.progress_end(1, copied);
    let objects_path = dir.path(OBJECTS_DIR);
    let objects_exist = dir.confined().try_open_dir(OBJECTS_DIR)?.is_some();
    let objects: Arc<dyn ObjectStore> = if !objects_exist {
        Arc::new(crate::objects::NoObjects)
    } else if opts.mode.may_write() {
        Arc::new(DirObjects::open(dir.confined())?)
    } else {
        Arc::new(DirObjects::open_read_only(dir.confined())?)
    };
    if !objects_exist {
        let fix = c.problem(
            ProblemKind::ObjectsDirMissing,
            None,
            format!("{}: objects directory missing", objects_path.display()),
            Fixability::Safe,
            "create an empty objects directory",
        );
        if fix {
            c.plan.create_objects_dir = true;
        }
    }
    let parts = Parts {
        superblock: sb,
        keys,
        meta,
        objects,
        backing: Some(dir),
    };
    let result = c.run_store_passes(&parts);
    drop(parts);
    result
}

/// Runs passes 2–7 over explicit storage parts (pass 6 only if `parts.backing` is set).
pub fn check_parts(parts: &Parts, opts: &CheckOptions, ui: &mut dyn CheckUi) -> Result<Report> {
    Checker::new(opts.clone(), ui).run_store_passes(parts)
}

/// Cache of the metadata store during a check: the passes read the store front to back
/// once, so a cache helps little and its bytes count against fsck's memory bound.
const META_CACHE_BYTES: u64 = 4 << 20;

/// Opens the metadata store in `meta_dir`: in place when the check may write, else a private
/// copy, returned with the store (the copy is removed when dropped); `progress` gets the
/// bytes copied.
fn open_meta(
    meta_dir: &Confined,
    opts: &CheckOptions,
    engine: &dyn MetaEngine,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<(Arc<dyn MetaStore>, Option<Snapshot>)> {
    // -n must work on a mounted filesystem and change nothing: sled has no read-only mode and
    // locks its directory, so a check reads a private copy of the store.
    if opts.mode.may_write() {
        Ok((engine.open_in(meta_dir, META_CACHE_BYTES)?, None))
    } else {
        let snap = Snapshot::copy_of(meta_dir, progress)?;
        let store = engine.open_path(&snap.path, META_CACHE_BYTES)?;
        Ok((store, Some(snap)))
    }
}

/// Tests the mount lock. With `hold`, keeps the lock (returned) for the duration of a repair.
fn probe_lock(dir: &BackingDir, hold: bool) -> Result<(bool, Option<std::fs::File>)> {
    let path = dir.path(LOCK_FILE);
    let Some(file) = dir.confined().try_open_file(LOCK_FILE, Access::Read)? else {
        return Ok((false, None));
    };
    match file.try_lock() {
        Ok(()) => {
            if hold {
                Ok((false, Some(file)))
            } else {
                let _ = file.unlock();
                Ok((false, None))
            }
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok((true, None)),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// The state of one check: options, report, planned repairs and the decoded store.
struct Checker<'u> {
    opts: CheckOptions,
    ui: &'u mut dyn CheckUi,
    report: Report,
    plan: Plan,
    /// Indices of problems whose repair is planned.
    planned: Vec<usize>,
    model: Model,
    /// The backing directory, when checking one.
    root: Option<Confined>,
    /// When the current pass next reports its progress.
    throttle: progress::Throttle,
    /// Directory entry records pass 2 scanned (the unit total of pass 3).
    dirent_records: u64,
}

impl<'u> Checker<'u> {
    fn new(opts: CheckOptions, ui: &'u mut dyn CheckUi) -> Checker<'u> {
        Checker {
            opts,
            ui,
            report: Report::default(),
            plan: Plan::default(),
            planned: Vec::new(),
            model: Model::default(),
            root: None,
            throttle: progress::Throttle::new(),
            dirent_records: 0,
        }
    }

    /// Reports the start of pass `n` of `total` units and restarts the throttle.
    fn progress_start(&mut self, n: u8, total: u64) {
        self.throttle.restart();
        self.ui.progress(n, 0, total);
    }

    /// Counts one unit of pass `n`, `done` so far of `total`; reports when the throttle says.
    fn progress_tick(&mut self, n: u8, done: u64, total: u64) {
        if self.throttle.tick() {
            // A store that changed under a check cannot push the count past the total.
            let total = if total == 0 { 0 } else { total.max(done) };
            self.ui.progress(n, done, total);
        }
    }

    /// Reports the end of pass `n`: all `done` units.
    fn progress_end(&mut self, n: u8, done: u64) {
        self.ui.progress(n, done, done);
    }

    /// Records a problem; returns whether its repair is to be applied.
    fn problem(
        &mut self,
        kind: ProblemKind,
        ino: Option<u64>,
        detail: String,
        fixability: Fixability,
        action: &str,
    ) -> bool {
        self.problem_blocks(kind, ino, detail, Vec::new(), fixability, action)
    }

    fn problem_blocks(
        &mut self,
        kind: ProblemKind,
        ino: Option<u64>,
        detail: String,
        blocks: Vec<u64>,
        fixability: Fixability,
        action: &str,
    ) -> bool {
        let path = ino.and_then(|i| self.model.path_of(i));
        let p = Problem {
            kind,
            ino,
            path,
            detail,
            blocks,
            fixability,
            action: action.to_string(),
            fixed: false,
        };
        let fix = if self.report.cancelled {
            false
        } else {
            match (self.opts.mode, fixability) {
                (_, Fixability::None) | (Mode::Check, _) => false,
                (Mode::Preen, f) => f == Fixability::Safe,
                (Mode::Repair, _) => true,
                (Mode::Ask, _) => match self.ui.ask(&p, action) {
                    Answer::Yes => true,
                    Answer::No => false,
                    Answer::Quit => {
                        self.report.cancelled = true;
                        false
                    }
                },
            }
        };
        if fix {
            self.planned.push(self.report.problems.len());
        }
        self.report.problems.push(p);
        fix
    }

    fn run_store_passes(mut self, parts: &Parts) -> Result<Report> {
        let records = Records::new(
            parts.meta.clone(),
            parts.keys.clone(),
            &parts.superblock.fs_uuid,
        );
        self.report.was_clean = parts.superblock.is_clean();
        self.ui.pass(2, "metadata records");
        self.pass_records(&records, &parts.keys)?;
        self.ui.pass(3, "directory tree");
        self.pass_tree(&records, &parts.keys)?;
        self.ui.pass(4, "sizes and storage");
        self.pass_sizes(&records, u64::from(parts.superblock.block_size));
        self.ui.pass(5, "data objects");
        self.pass_objects(parts, &records)?;
        if let Some(dir) = &parts.backing {
            self.ui.pass(6, "backing directory");
            self.ui.progress(6, 0, 1);
            self.pass_backing(dir);
            self.ui.progress(6, 1, 1);
        }
        self.ui.pass(7, "metadata digest");
        let digest = self.digest_with_progress(&records)?;
        self.pass_digest(&parts.superblock, digest);
        self.fill_paths();
        if self.report.cancelled || !self.opts.mode.may_write() {
            return Ok(self.report);
        }
        let mark_clean = !parts.superblock.is_clean() && self.report.problems.is_empty();
        if self.plan.is_empty() && !mark_clean {
            return Ok(self.report);
        }
        self.apply(parts, &records)?;
        for i in std::mem::take(&mut self.planned) {
            if let Some(p) = self.report.problems.get_mut(i) {
                p.fixed = true;
            }
        }
        self.report.modified = true;
        Ok(self.report)
    }

    fn finish_without_store(mut self) -> Report {
        self.fill_paths();
        // Nothing is applied without a store except removing stray temporary files.
        if self.opts.mode.may_write() && !self.report.cancelled {
            let mut ok = true;
            for f in &self.plan.remove_files {
                ok &= self.root.as_ref().is_some_and(|r| r.remove_file(f).is_ok());
            }
            if ok {
                for i in std::mem::take(&mut self.planned) {
                    if let Some(p) = self.report.problems.get_mut(i) {
                        if p.kind == ProblemKind::StaleTemp {
                            p.fixed = true;
                            self.report.modified = true;
                        }
                    }
                }
            }
        }
        self.report
    }

    fn fill_paths(&mut self) {
        for p in &mut self.report.problems {
            if p.path.is_none() {
                if let Some(i) = p.ino {
                    p.path = self.model.path_of(i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystem::{Ctx, OpenOptions, ROOT_INO};
    use crate::testing::MemImage;

    /// Bytes the checker's per-file structures may hold per small file (name of 8 bytes):
    /// inode summary 25, inline length 13, entry 32, name 8, walk state 10, plus vector
    /// growth. Before the model was made compact it held a full inode record, every name in
    /// a tree of maps and a path string per inode (several hundred bytes a file).
    const MAX_MODEL_BYTES_PER_FILE: usize = 160;

    /// The model after passes 2–4 over 5 000 small files in directories of 500 stays within
    /// [`MAX_MODEL_BYTES_PER_FILE`], and the check finds them all.
    #[test]
    fn model_bytes_per_file_are_bounded() {
        let img = MemImage::create(4096).expect("image");
        let fs = img.open(&OpenOptions::default()).expect("open");
        let ctx = Ctx::ROOT;
        let files = 5000u64;
        let mut dir = ROOT_INO;
        let mut last = 0;
        for i in 0..files {
            if i % 500 == 0 {
                let name = format!("d{:03}", i / 500);
                dir = fs
                    .mkdir(&ctx, ROOT_INO, name.as_bytes(), 0o755, 0)
                    .expect("mkdir")
                    .ino;
            }
            let name = format!("f{i:07}");
            let (a, fh) = fs
                .create(&ctx, dir, name.as_bytes(), 0o644, 0, libc::O_RDWR)
                .expect("create");
            fs.write(a.ino, fh, 0, &[i as u8; 100]).expect("write");
            fs.release(a.ino, fh).expect("release");
            last = a.ino;
        }
        fs.close().expect("close");
        let parts = img.parts_to_check();
        let mut ui = ();
        let mut c = Checker::new(CheckOptions::default(), &mut ui);
        let records = Records::new(
            parts.meta.clone(),
            parts.keys.clone(),
            &parts.superblock.fs_uuid,
        );
        c.pass_records(&records, &parts.keys).expect("pass 2");
        c.pass_tree(&records, &parts.keys).expect("pass 3");
        c.pass_sizes(&records, u64::from(parts.superblock.block_size));
        assert_eq!(c.report.files, files);
        assert_eq!(c.model.entries.len() as u64, files + files / 500);
        // Paths come from the entries kept, not from a string per inode.
        assert_eq!(c.model.path_of(last).as_deref(), Some("/d009/f0004999"));
        let per_file = c.model.heap_bytes() / files as usize;
        assert!(
            per_file <= MAX_MODEL_BYTES_PER_FILE,
            "{per_file} bytes per file (bound {MAX_MODEL_BYTES_PER_FILE})"
        );
    }
}
