//! Pass 3, second half: the walk from the root. The tree is connected and acyclic, every
//! inode is reachable or an orphan (disconnected ones are reconnected under /lost+found),
//! link counts and `..` are consistent. Repairs are planned, never written here.

use super::{Checker, Fixability, ProblemKind, LOST_FOUND};
use crate::filesystem::{FileKind, ROOT_INO};
use crate::format::records::{self, prefix, Counters, Dirent, Inode, Storage, Timestamp};
use std::collections::{BTreeSet, HashMap, VecDeque};

impl Checker<'_> {
    pub(super) fn walk_tree(&mut self) {
        if !self.model.inodes.contains_key(&ROOT_INO) {
            return;
        }
        let mut w = Walk::default();
        w.parent_of.insert(ROOT_INO, ROOT_INO);
        self.model.paths.insert(ROOT_INO, "/".into());
        self.bfs(&mut w, ROOT_INO);
        self.check_orphans(&mut w);
        self.reconnect_disconnected(&mut w);
        self.check_links(&w);
    }

    /// Orphans: unlinked-while-open inodes a crash left behind. A stale orphan record is
    /// deleted; an orphan inode is purged or, if left, kept out of the walk.
    fn check_orphans(&mut self, w: &mut Walk) {
        for o in self.model.orphans.clone() {
            let key = records::ino_prefix(prefix::ORPHAN, o).to_vec();
            if !self.model.inodes.contains_key(&o) || w.reached.contains(&o) {
                let what = if w.reached.contains(&o) {
                    "is linked"
                } else {
                    "does not exist"
                };
                let fix = self.problem(
                    ProblemKind::StaleOrphan,
                    Some(o),
                    format!("orphan record for inode {o}, which {what}"),
                    Fixability::Safe,
                    "delete the orphan record",
                );
                if fix {
                    self.plan.delete_keys.insert(key);
                }
                continue;
            }
            let fix = self.problem(
                ProblemKind::OrphanInode,
                Some(o),
                format!("inode {o} was unlinked while open and not removed (crash)"),
                Fixability::Safe,
                "remove the inode and its data",
            );
            if fix {
                self.purge(o);
            } else {
                w.unattached.insert(o);
                self.model.orphan_inodes.insert(o);
            }
        }
    }

    /// Disconnected inodes: reconnects the tops of unreachable subtrees under /lost+found
    /// until every inode is reached, left unattached or purged.
    fn reconnect_disconnected(&mut self, w: &mut Walk) {
        loop {
            let remaining: BTreeSet<u64> = self
                .model
                .inodes
                .keys()
                .copied()
                .filter(|i| {
                    !w.reached.contains(i)
                        && !w.unattached.contains(i)
                        && !self.model.purged.contains(i)
                })
                .collect();
            if remaining.is_empty() {
                break;
            }
            let mut incoming: BTreeSet<u64> = BTreeSet::new();
            for (dir, ents) in &self.model.dir_entries {
                if remaining.contains(dir) {
                    incoming.extend(ents.values().map(|(i, _)| *i));
                }
            }
            let mut tops: Vec<u64> = remaining
                .iter()
                .copied()
                .filter(|i| !incoming.contains(i))
                .collect();
            if tops.is_empty() {
                tops.extend(remaining.first().copied());
            }
            for top in tops {
                if w.reached.contains(&top) {
                    continue;
                }
                self.reconnect(w, top);
            }
        }
    }

    /// Link counts and parents (`..`) against what the walk found.
    fn check_links(&mut self, w: &Walk) {
        let inos: Vec<u64> = self.model.inodes.keys().copied().collect();
        for ino in inos {
            if w.unattached.contains(&ino) || self.model.purged.contains(&ino) {
                continue;
            }
            let Some(inode) = self.model.inodes.get(&ino) else {
                continue;
            };
            let (want, what) = if inode.kind == FileKind::Dir {
                (
                    2 + w.subdirs.get(&ino).copied().unwrap_or(0),
                    "2 + subdirectories",
                )
            } else {
                (w.refs.get(&ino).copied().unwrap_or(0), "entries naming it")
            };
            if u64::from(inode.nlink) != want {
                let have = inode.nlink;
                let fix = self.problem(
                    ProblemKind::WrongNlink,
                    Some(ino),
                    format!("inode {ino} has link count {have}, {what} = {want}"),
                    Fixability::Safe,
                    &format!("set the link count to {want}"),
                );
                if fix {
                    if let Some(i) = self.model.inodes.get_mut(&ino) {
                        i.nlink = u32::try_from(want).unwrap_or(u32::MAX);
                        self.plan.put_inodes.insert(ino);
                    }
                }
            }
            let Some(inode) = self.model.inodes.get(&ino) else {
                continue;
            };
            if inode.kind == FileKind::Dir {
                if let Some(&p) = w.parent_of.get(&ino) {
                    if inode.parent != p {
                        let have = inode.parent;
                        let fix = self.problem(
                            ProblemKind::WrongParent,
                            Some(ino),
                            format!("directory {ino} records parent {have}, but its entry is in directory {p}"),
                            Fixability::Safe,
                            &format!("set its parent to {p}"),
                        );
                        if fix {
                            if let Some(i) = self.model.inodes.get_mut(&ino) {
                                i.parent = p;
                                self.plan.put_inodes.insert(ino);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Breadth-first walk from `start` (already reached) over accepted entries.
    fn bfs(&mut self, w: &mut Walk, start: u64) {
        w.reached.insert(start);
        let mut queue = VecDeque::from([start]);
        while let Some(dir) = queue.pop_front() {
            let ents: Vec<(Vec<u8>, (u64, FileKind))> = self
                .model
                .dir_entries
                .get(&dir)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
                .unwrap_or_default();
            let base = self.model.paths.get(&dir).cloned().unwrap_or_default();
            for (name, (ino, kind)) in ents {
                let path = join_path(&base, &name);
                if kind == FileKind::Dir {
                    if w.reached.contains(&ino) {
                        let fix = self.problem(
                            ProblemKind::ExtraDirLink,
                            Some(ino),
                            format!("{path}: another link to directory {ino} (a directory has exactly one entry)"),
                            Fixability::Unsafe,
                            "remove this entry",
                        );
                        if fix {
                            self.drop_entry(dir, &name);
                        } else {
                            *w.refs.entry(ino).or_default() += 1;
                        }
                        continue;
                    }
                    w.reached.insert(ino);
                    w.parent_of.insert(ino, dir);
                    *w.subdirs.entry(dir).or_default() += 1;
                    *w.refs.entry(ino).or_default() += 1;
                    self.model.paths.insert(ino, path);
                    queue.push_back(ino);
                } else {
                    w.reached.insert(ino);
                    *w.refs.entry(ino).or_default() += 1;
                    self.model.paths.entry(ino).or_insert(path);
                }
            }
        }
    }

    fn drop_entry(&mut self, dir: u64, name: &[u8]) {
        if let Some(m) = self.model.dir_entries.get_mut(&dir) {
            m.remove(name);
        }
        self.plan.delete_dirents.push((dir, name.to_vec()));
    }

    fn reconnect(&mut self, w: &mut Walk, ino: u64) {
        let kind = self
            .model
            .inodes
            .get(&ino)
            .map(|i| i.kind)
            .unwrap_or(FileKind::File);
        let fix = self.problem(
            ProblemKind::DisconnectedInode,
            Some(ino),
            format!("inode {ino} ({kind:?}) is not reachable from / and not an orphan"),
            Fixability::Safe,
            &format!("reconnect it as /lost+found/#{ino}"),
        );
        let lf = if fix { self.lost_found(w) } else { None };
        let Some(lf) = lf else {
            // Left alone: its subtree is walked so it is not reported again.
            w.unattached.insert(ino);
            self.bfs(w, ino);
            return;
        };
        let mut name = format!("#{ino}").into_bytes();
        let mut n = 1;
        while self
            .model
            .dir_entries
            .get(&lf)
            .is_some_and(|m| m.contains_key(&name))
        {
            name = format!("#{ino}.{n}").into_bytes();
            n += 1;
        }
        self.add_entry(w, lf, &name, ino, kind);
        if kind == FileKind::Dir {
            self.bfs(w, ino);
        }
    }

    fn add_entry(&mut self, w: &mut Walk, dir: u64, name: &[u8], ino: u64, kind: FileKind) {
        self.model
            .dir_entries
            .entry(dir)
            .or_default()
            .insert(name.to_vec(), (ino, kind));
        self.plan.put_dirents.push((
            dir,
            Dirent {
                name: name.to_vec(),
                ino,
                kind,
            },
        ));
        let base = self.model.paths.get(&dir).cloned().unwrap_or_default();
        self.model.paths.insert(ino, join_path(&base, name));
        *w.refs.entry(ino).or_default() += 1;
        w.reached.insert(ino);
        if kind == FileKind::Dir {
            *w.subdirs.entry(dir).or_default() += 1;
            w.parent_of.insert(ino, dir);
        }
    }

    /// The inode of /lost+found, creating it (in the plan) if needed.
    fn lost_found(&mut self, w: &mut Walk) -> Option<u64> {
        match self
            .model
            .dir_entries
            .get(&ROOT_INO)
            .and_then(|m| m.get(LOST_FOUND))
        {
            Some((ino, FileKind::Dir)) => return Some(*ino),
            Some(_) => return None,
            None => {}
        }
        let max_ino = self
            .model
            .inodes
            .keys()
            .next_back()
            .copied()
            .unwrap_or(ROOT_INO);
        let counters = self.model.counters.unwrap_or(Counters {
            ino_reserved: max_ino + 1,
            gen_reserved: 1,
        });
        let ino = counters.ino_reserved.max(max_ino + 1);
        self.model.counters = Some(Counters {
            ino_reserved: ino + 1,
            gen_reserved: counters.gen_reserved,
        });
        self.plan.put_counters = true;
        let now = Timestamp::now();
        let inode = Inode::new(ino, FileKind::Dir, 0o700, 0, 0, ROOT_INO, now);
        self.model.inodes.insert(ino, inode);
        self.plan.put_inodes.insert(ino);
        self.add_entry(w, ROOT_INO, LOST_FOUND, ino, FileKind::Dir);
        Some(ino)
    }

    /// Plans deleting every record and the object of `ino`.
    fn purge(&mut self, ino: u64) {
        self.plan
            .delete_keys
            .insert(records::inode_key(ino).to_vec());
        self.plan
            .delete_keys
            .insert(records::ino_prefix(prefix::ORPHAN, ino).to_vec());
        if self.model.inline.remove(&ino).is_some() {
            self.plan
                .delete_keys
                .insert(records::ino_prefix(prefix::INLINE, ino).to_vec());
        }
        if self.model.chunks.remove(&ino).is_some() {
            self.plan.delete_chunks.insert(ino);
        }
        for k in self.model.xattr_keys.remove(&ino).unwrap_or_default() {
            self.plan.delete_keys.insert(k);
        }
        if let Some(i) = self.model.inodes.remove(&ino) {
            if let Storage::Object(id) = i.storage {
                self.plan.remove_objects.insert(id);
            }
        }
        self.model.purged.insert(ino);
    }
}

/// What the walk has found so far.
#[derive(Default)]
struct Walk {
    reached: BTreeSet<u64>,
    unattached: BTreeSet<u64>,
    refs: HashMap<u64, u64>,
    subdirs: HashMap<u64, u64>,
    parent_of: HashMap<u64, u64>,
}

fn join_path(base: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if base.ends_with('/') {
        format!("{base}{name}")
    } else {
        format!("{base}/{name}")
    }
}
