//! Pass 3, first half: every directory entry record belongs to a directory, matches its key,
//! names a live inode of the right kind; the root and the counters exist and are ahead of
//! every number in use. The accepted entries then go to the walk (`links`).

use super::model::EntryRec;
use super::{Checker, Fixability, ProblemKind};
use crate::crypto::incarnation::first_generation;
use crate::crypto::FsKeys;
use crate::filesystem::{FileKind, ROOT_INO};
use crate::format::records::{Counters, Dirent, Inode, Timestamp};
use crate::meta::{key_name, Records};
use std::collections::HashMap;

impl Checker<'_> {
    pub(super) fn pass_tree(&mut self, records: &Records, keys: &FsKeys) {
        self.check_root();
        self.check_counters();
        self.check_incarnations();
        self.check_prev_marks();
        // Directory pseudonyms → directory inode.
        let mut dir_of: HashMap<[u8; 8], u64> = HashMap::new();
        for (ino, i) in &self.model.inodes {
            if i.kind == FileKind::Dir {
                dir_of.insert(records.dir_pseudonym(*ino), *ino);
            }
        }
        let entries = std::mem::take(&mut self.model.entries);
        for (pseud, recs) in entries {
            let dir = dir_of.get(&pseud).copied();
            for rec in recs {
                self.check_entry(keys, dir, rec);
            }
        }
        self.walk_tree();
    }

    /// One directory entry record of directory `dir` (`None`: no directory has its
    /// pseudonym): accepted into the model, or reported (and its repair planned).
    fn check_entry(&mut self, keys: &FsKeys, dir: Option<u64>, rec: EntryRec) {
        let EntryRec { key, dirent } = rec;
        let Some(dir) = dir else {
            let fix = self.problem(
                ProblemKind::StrayRecord,
                Some(dirent.ino),
                format!(
                    "{}: entry {:?} (inode {}) of a directory that does not exist",
                    key_name(&key),
                    String::from_utf8_lossy(&dirent.name),
                    dirent.ino
                ),
                Fixability::Unsafe,
                "delete the entry (the inode it names is reconnected under /lost+found)",
            );
            if fix {
                self.plan.delete_keys.insert(key);
            }
            return;
        };
        let mac = keys.names.entry_key(dir, &dirent.name);
        if key.get(9..) != Some(mac.as_slice()) {
            let fix = self.problem(
                ProblemKind::BadRecord,
                Some(dir),
                format!("{}: entry name does not match its key", key_name(&key)),
                Fixability::Unsafe,
                "delete the record",
            );
            if fix {
                self.plan.delete_keys.insert(key);
            }
            return;
        }
        let name = String::from_utf8_lossy(&dirent.name).into_owned();
        let Some(target) = self.model.inodes.get(&dirent.ino) else {
            let fix = self.problem(
                ProblemKind::DanglingEntry,
                Some(dir),
                format!(
                    "entry {name:?} in directory {dir} names inode {}, which does not exist",
                    dirent.ino
                ),
                Fixability::Safe,
                "remove the entry",
            );
            if fix {
                self.plan.delete_keys.insert(key);
            }
            return;
        };
        if target.kind != dirent.kind {
            let tkind = target.kind;
            let fix = self.problem(
                ProblemKind::EntryKindMismatch,
                Some(dirent.ino),
                format!(
                    "entry {name:?} in directory {dir} says {:?}, inode {} is {:?}",
                    dirent.kind, dirent.ino, tkind
                ),
                Fixability::Safe,
                "set the entry's type from the inode",
            );
            if fix {
                self.plan.put_dirents.push((
                    dir,
                    Dirent {
                        name: dirent.name.clone(),
                        ino: dirent.ino,
                        kind: tkind,
                    },
                ));
            }
            self.model
                .dir_entries
                .entry(dir)
                .or_default()
                .insert(dirent.name, (dirent.ino, tkind));
            return;
        }
        self.model
            .dir_entries
            .entry(dir)
            .or_default()
            .insert(dirent.name, (dirent.ino, target.kind));
    }

    fn check_root(&mut self) {
        let ok = self
            .model
            .inodes
            .get(&ROOT_INO)
            .map(|i| i.kind == FileKind::Dir);
        if ok == Some(true) {
            return;
        }
        let fix = self.problem(
            ProblemKind::MissingRoot,
            Some(ROOT_INO),
            if ok.is_none() {
                "root inode missing".into()
            } else {
                "root inode is not a directory".into()
            },
            Fixability::Unsafe,
            "create a new, empty root directory (existing entries of / reattach to it)",
        );
        if fix {
            let now = Timestamp::now();
            let root = Inode::new(ROOT_INO, FileKind::Dir, 0o755, 0, 0, ROOT_INO, now);
            self.model.inodes.insert(ROOT_INO, root);
            self.plan.put_inodes.insert(ROOT_INO);
        }
    }

    fn check_counters(&mut self) {
        let max_ino = self
            .model
            .inodes
            .keys()
            .next_back()
            .copied()
            .unwrap_or(ROOT_INO);
        // A mount starts its incarnation above the counters; a salt record above them means
        // they were rolled back (the mount skips such incarnations, and so does this check).
        let max_gen = self.model.max_gen.max(
            self.model
                .incarnations
                .last()
                .map_or(0, |k| first_generation(*k)),
        );
        match self.model.counters {
            None => {
                let fix = self.problem(
                    ProblemKind::MissingCounters,
                    None,
                    "counters record missing (the filesystem cannot be mounted)".into(),
                    Fixability::Safe,
                    "recreate it above every inode number and block generation in use",
                );
                if fix {
                    self.model.counters = Some(Counters {
                        ino_reserved: max_ino + 1,
                        gen_reserved: max_gen + 1,
                    });
                    self.plan.put_counters = true;
                }
            }
            Some(c) if c.ino_reserved <= max_ino || c.gen_reserved <= max_gen => {
                let fix = self.problem(
                    ProblemKind::CountersBehind,
                    None,
                    format!(
                        "counters (next inode {}, next generation {}) are behind numbers in use \
                         (inode {max_ino}, generation {max_gen})",
                        c.ino_reserved, c.gen_reserved
                    ),
                    Fixability::Safe,
                    "raise the counters",
                );
                if fix {
                    self.model.counters = Some(Counters {
                        ino_reserved: c.ino_reserved.max(max_ino + 1),
                        gen_reserved: c.gen_reserved.max(max_gen + 1),
                    });
                    self.plan.put_counters = true;
                }
            }
            Some(_) => {}
        }
    }
}
