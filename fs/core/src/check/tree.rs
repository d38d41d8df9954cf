//! Pass 3, first half: every directory entry record belongs to a directory, matches its key,
//! names a live inode of the right kind; the root and the counters exist and are ahead of
//! every number in use. The accepted entries then go to the walk (`links`).

use super::model::{EntryRec, InodeSum};
use super::{Checker, Fixability, ProblemKind};
use crate::crypto::incarnation::first_generation;
use crate::crypto::FsKeys;
use crate::filesystem::{FileKind, ROOT_INO};
use crate::format::records::{prefix, Counters, Dirent, Inode, Timestamp};
use crate::meta::{key_name, Records};
use crate::Result;
use std::collections::HashMap;

/// Length of a directory entry key: prefix, directory pseudonym, name MAC.
const DIRENT_KEY_LEN: usize = 25;

impl Checker<'_> {
    pub(super) fn pass_tree(&mut self, records: &Records, keys: &FsKeys) -> Result<()> {
        self.check_root();
        self.check_counters();
        self.check_incarnations();
        self.check_prev_marks();
        // Directory pseudonyms → directory inode.
        let mut dir_of: HashMap<[u8; 8], u64> = HashMap::new();
        for (ino, i) in self.model.inodes.iter() {
            if i.kind == FileKind::Dir {
                dir_of.insert(records.dir_pseudonym(ino), ino);
            }
        }
        // The entry records, read again from the store (pass 2 reported those that do not
        // open or decode), in key order: grouped by directory pseudonym.
        let mut entries: Vec<EntryRec> = Vec::new();
        let pfx = [prefix::DIRENT];
        let total = self.dirent_records;
        let mut done = 0u64;
        self.progress_start(3, total);
        records.store().scan(&pfx, None, &mut |key, value| {
            done += 1;
            self.progress_tick(3, done, total);
            if key.len() != DIRENT_KEY_LEN {
                return Ok(true);
            }
            let Ok(dirent) = records.open(key, value).and_then(|p| Dirent::decode(&p)) else {
                return Ok(true);
            };
            let dir = key
                .get(1..9)
                .and_then(|p| <[u8; 8]>::try_from(p).ok())
                .and_then(|p| dir_of.get(&p).copied());
            if let Some(e) = self.check_entry(keys, dir, key, dirent) {
                entries.push(e);
            }
            Ok(true)
        })?;
        drop(dir_of);
        self.progress_end(3, done);
        entries.shrink_to_fit();
        // The walk visits a directory's entries by name.
        let names = &self.model.names;
        entries.sort_unstable_by(|a, b| {
            a.dir
                .cmp(&b.dir)
                .then_with(|| names.get(a.name).cmp(names.get(b.name)))
        });
        self.model.entries = entries;
        self.walk_tree();
        Ok(())
    }

    /// One directory entry record (key `key`) of directory `dir` (`None`: no directory has
    /// its pseudonym): accepted (returned, with the inode's type), or reported (and its
    /// repair planned).
    fn check_entry(
        &mut self,
        keys: &FsKeys,
        dir: Option<u64>,
        key: &[u8],
        dirent: Dirent,
    ) -> Option<EntryRec> {
        let Some(dir) = dir else {
            let fix = self.problem(
                ProblemKind::StrayRecord,
                Some(dirent.ino),
                format!(
                    "{}: entry {:?} (inode {}) of a directory that does not exist",
                    key_name(key),
                    String::from_utf8_lossy(&dirent.name),
                    dirent.ino
                ),
                Fixability::Unsafe,
                "delete the entry (the inode it names is reconnected under /lost+found)",
            );
            if fix {
                self.plan.delete_keys.insert(key.to_vec());
            }
            return None;
        };
        let mac = keys.names.entry_key(dir, &dirent.name);
        if key.get(9..) != Some(mac.as_slice()) {
            let fix = self.problem(
                ProblemKind::BadRecord,
                Some(dir),
                format!("{}: entry name does not match its key", key_name(key)),
                Fixability::Unsafe,
                "delete the record",
            );
            if fix {
                self.plan.delete_keys.insert(key.to_vec());
            }
            return None;
        }
        let name = String::from_utf8_lossy(&dirent.name).into_owned();
        let Some(target) = self.model.inodes.get(dirent.ino) else {
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
                self.plan.delete_keys.insert(key.to_vec());
            }
            return None;
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
        }
        Some(EntryRec {
            dir,
            ino: dirent.ino,
            name: self.model.names.add(&dirent.name),
            kind: target.kind,
            live: true,
        })
    }

    fn check_root(&mut self) {
        let ok = self
            .model
            .inodes
            .get(ROOT_INO)
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
            self.model.inodes.insert(ROOT_INO, InodeSum::of(&root).0);
            self.model.parents.insert(ROOT_INO, root.parent);
            self.model.new_inodes.insert(ROOT_INO, root);
            self.plan.put_inodes.insert(ROOT_INO);
        }
    }

    fn check_counters(&mut self) {
        let max_ino = self.model.inodes.last_key().unwrap_or(ROOT_INO);
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
