//! Pass 3, second half: the walk from the root. The tree is connected and acyclic, every
//! inode is reachable or an orphan (disconnected ones are reconnected under /lost+found),
//! link counts and `..` are consistent. Repairs are planned, never written here.

use super::model::{join_path, InodeSum, Walk, NO_PATH, ROOT_PATH};
use super::{Checker, Fixability, ProblemKind, LOST_FOUND};
use crate::filesystem::{FileKind, ROOT_INO};
use crate::format::records::{self, prefix, Counters, Dirent, Inode, Storage, Timestamp};
use std::collections::VecDeque;

impl Checker<'_> {
    pub(super) fn walk_tree(&mut self) {
        let Some(root) = self.model.inodes.slot(ROOT_INO) else {
            return;
        };
        if !self.model.inodes.contains_key(ROOT_INO) {
            return;
        }
        let mut w = Walk::default();
        w.grow(self.model.inodes.slots());
        w.parent_of.insert(ROOT_INO, ROOT_INO);
        if let Some(p) = w.path.get_mut(root) {
            *p = ROOT_PATH;
        }
        self.model.walk = Some(w);
        self.bfs(ROOT_INO);
        self.check_orphans();
        self.reconnect_disconnected();
        self.check_links();
    }

    fn walk(&mut self) -> &mut Walk {
        self.model.walk.get_or_insert_with(Walk::default)
    }

    /// Slot of `ino` in the walk's vectors (grown for inodes added since it started).
    fn walk_slot(&mut self, ino: u64) -> Option<usize> {
        let s = self.model.inodes.slot(ino)?;
        let slots = self.model.inodes.slots();
        self.walk().grow(slots);
        Some(s)
    }

    fn reached(&self, ino: u64) -> bool {
        self.flag(ino, |w| &w.reached)
    }

    fn unattached(&self, ino: u64) -> bool {
        self.flag(ino, |w| &w.unattached)
    }

    fn flag(&self, ino: u64, which: fn(&Walk) -> &Vec<bool>) -> bool {
        let (Some(w), Some(s)) = (self.model.walk.as_ref(), self.model.inodes.slot(ino)) else {
            return false;
        };
        which(w).get(s).copied().unwrap_or(false)
    }

    fn set_reached(&mut self, ino: u64) {
        if let Some(s) = self.walk_slot(ino) {
            if let Some(r) = self.walk().reached.get_mut(s) {
                *r = true;
            }
        }
    }

    fn set_unattached(&mut self, ino: u64) {
        if let Some(s) = self.walk_slot(ino) {
            if let Some(r) = self.walk().unattached.get_mut(s) {
                *r = true;
            }
        }
    }

    fn add_ref(&mut self, ino: u64) {
        if let Some(s) = self.walk_slot(ino) {
            if let Some(r) = self.walk().refs.get_mut(s) {
                *r = r.saturating_add(1);
            }
        }
    }

    /// Records that the path of `ino` goes through entry `id`: `first` only if it has none.
    fn set_path(&mut self, ino: u64, id: usize, first: bool) {
        let via = u32::try_from(id + 2).unwrap_or(NO_PATH);
        if let Some(s) = self.walk_slot(ino) {
            if let Some(p) = self.walk().path.get_mut(s) {
                if !first || *p == NO_PATH {
                    *p = via;
                }
            }
        }
    }

    /// Orphans: unlinked-while-open inodes a crash left behind. A stale orphan record is
    /// deleted; an orphan inode is purged or, if left, kept out of the walk.
    fn check_orphans(&mut self) {
        for o in self.model.orphans.clone() {
            let key = records::ino_prefix(prefix::ORPHAN, o).to_vec();
            let reached = self.reached(o);
            if !self.model.inodes.contains_key(o) || reached {
                let what = if reached {
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
                self.set_unattached(o);
                self.model.orphan_inodes.insert(o);
            }
        }
    }

    /// Disconnected inodes: reconnects the tops of unreachable subtrees under /lost+found
    /// until every inode is reached, left unattached or purged.
    fn reconnect_disconnected(&mut self) {
        loop {
            let remaining: Vec<u64> = self
                .model
                .inodes
                .keys()
                .filter(|i| {
                    !self.reached(*i) && !self.unattached(*i) && !self.model.purged.contains(i)
                })
                .collect();
            if remaining.is_empty() {
                break;
            }
            // Inodes named by an entry of a remaining directory (sorted, for lookups).
            let mut incoming: Vec<u64> = Vec::new();
            for e in self
                .model
                .entries
                .iter()
                .chain(self.model.added_entries.iter())
            {
                if e.live && remaining.binary_search(&e.dir).is_ok() {
                    incoming.push(e.ino);
                }
            }
            incoming.sort_unstable();
            let mut tops: Vec<u64> = remaining
                .iter()
                .copied()
                .filter(|i| incoming.binary_search(i).is_err())
                .collect();
            drop(incoming);
            if tops.is_empty() {
                tops.extend(remaining.first().copied());
            }
            drop(remaining);
            for top in tops {
                if self.reached(top) {
                    continue;
                }
                self.reconnect(top);
            }
        }
    }

    /// Link counts and parents (`..`) against what the walk found.
    fn check_links(&mut self) {
        for slot in 0..self.model.inodes.slots() {
            let Some((ino, inode)) = self.model.inodes.at(slot) else {
                continue;
            };
            if self.unattached(ino) || self.model.purged.contains(&ino) {
                continue;
            }
            let (want, what) = match &self.model.walk {
                Some(w) if inode.kind == FileKind::Dir => (
                    2 + w.subdirs.get(&ino).copied().unwrap_or(0),
                    "2 + subdirectories",
                ),
                Some(w) => (
                    u64::from(w.refs.get(slot).copied().unwrap_or(0)),
                    "entries naming it",
                ),
                None if inode.kind == FileKind::Dir => (2, "2 + subdirectories"),
                None => (0, "entries naming it"),
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
                    if let Some(i) = self.model.inodes.get_mut(ino) {
                        i.nlink = u32::try_from(want).unwrap_or(u32::MAX);
                        self.plan.put_inodes.insert(ino);
                    }
                }
            }
            let Some(inode) = self.model.inodes.get(ino) else {
                continue;
            };
            if inode.kind == FileKind::Dir {
                let parent_of = self
                    .model
                    .walk
                    .as_ref()
                    .and_then(|w| w.parent_of.get(&ino).copied());
                let recorded = self.model.parents.get(ino).unwrap_or(0);
                if let Some(p) = parent_of {
                    if recorded != p {
                        let have = recorded;
                        let fix = self.problem(
                            ProblemKind::WrongParent,
                            Some(ino),
                            format!("directory {ino} records parent {have}, but its entry is in directory {p}"),
                            Fixability::Safe,
                            &format!("set its parent to {p}"),
                        );
                        if fix && self.model.inodes.contains_key(ino) {
                            self.model.parents.insert(ino, p);
                            self.plan.put_inodes.insert(ino);
                        }
                    }
                }
            }
        }
    }

    /// Breadth-first walk from `start` (already reached) over accepted entries.
    fn bfs(&mut self, start: u64) {
        self.set_reached(start);
        let mut queue = VecDeque::from([start]);
        while let Some(dir) = queue.pop_front() {
            for id in self.model.entry_ids_of(dir) {
                let Some(e) = self.model.entry(id).copied() else {
                    continue;
                };
                let (ino, kind) = (e.ino, e.kind);
                if kind == FileKind::Dir {
                    if self.reached(ino) {
                        let base = self.model.path_of(dir).unwrap_or_default();
                        let name = self.model.names.get(e.name).to_vec();
                        let path = join_path(&base, &name);
                        let fix = self.problem(
                            ProblemKind::ExtraDirLink,
                            Some(ino),
                            format!("{path}: another link to directory {ino} (a directory has exactly one entry)"),
                            Fixability::Unsafe,
                            "remove this entry",
                        );
                        if fix {
                            self.drop_entry(id, dir, &name);
                        } else {
                            self.add_ref(ino);
                        }
                        continue;
                    }
                    self.set_reached(ino);
                    let w = self.walk();
                    w.parent_of.insert(ino, dir);
                    *w.subdirs.entry(dir).or_default() += 1;
                    self.add_ref(ino);
                    self.set_path(ino, id, false);
                    queue.push_back(ino);
                } else {
                    self.set_reached(ino);
                    self.add_ref(ino);
                    self.set_path(ino, id, true);
                }
            }
        }
    }

    fn drop_entry(&mut self, id: usize, dir: u64, name: &[u8]) {
        let n = self.model.entries.len();
        let e = match id.checked_sub(n) {
            None => self.model.entries.get_mut(id),
            Some(a) => self.model.added_entries.get_mut(a),
        };
        if let Some(e) = e {
            e.live = false;
        }
        self.plan.delete_dirents.push((dir, name.to_vec()));
    }

    fn reconnect(&mut self, ino: u64) {
        let kind = self
            .model
            .inodes
            .get(ino)
            .map(|i| i.kind)
            .unwrap_or(FileKind::File);
        let fix = self.problem(
            ProblemKind::DisconnectedInode,
            Some(ino),
            format!("inode {ino} ({kind:?}) is not reachable from / and not an orphan"),
            Fixability::Safe,
            &format!("reconnect it as /lost+found/#{ino}"),
        );
        let lf = if fix { self.lost_found() } else { None };
        let Some(lf) = lf else {
            // Left alone: its subtree is walked so it is not reported again.
            self.set_unattached(ino);
            self.bfs(ino);
            return;
        };
        let mut name = format!("#{ino}").into_bytes();
        let mut n = 1;
        while self.model.lookup(lf, &name).is_some() {
            name = format!("#{ino}.{n}").into_bytes();
            n += 1;
        }
        self.add_entry(lf, &name, ino, kind);
        if kind == FileKind::Dir {
            self.bfs(ino);
        }
    }

    fn add_entry(&mut self, dir: u64, name: &[u8], ino: u64, kind: FileKind) {
        let id = self.model.add_entry(dir, name, ino, kind);
        self.plan.put_dirents.push((
            dir,
            Dirent {
                name: name.to_vec(),
                ino,
                kind,
            },
        ));
        self.set_path(ino, id, false);
        self.add_ref(ino);
        self.set_reached(ino);
        if kind == FileKind::Dir {
            let w = self.walk();
            *w.subdirs.entry(dir).or_default() += 1;
            w.parent_of.insert(ino, dir);
        }
    }

    /// The inode of /lost+found, creating it (in the plan) if needed.
    fn lost_found(&mut self) -> Option<u64> {
        match self
            .model
            .lookup(ROOT_INO, LOST_FOUND)
            .map(|e| (e.ino, e.kind))
        {
            Some((ino, FileKind::Dir)) => return Some(ino),
            Some(_) => return None,
            None => {}
        }
        let max_ino = self.model.inodes.last_key().unwrap_or(ROOT_INO);
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
        // Above every live inode: a new slot at the end or a dead one, so no slot moves.
        self.model.inodes.insert(ino, InodeSum::of(&inode).0);
        self.model.parents.insert(ino, inode.parent);
        self.model.new_inodes.insert(ino, inode);
        self.plan.put_inodes.insert(ino);
        self.add_entry(ROOT_INO, LOST_FOUND, ino, FileKind::Dir);
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
        if self.model.inline.remove(ino).is_some() {
            self.plan
                .delete_keys
                .insert(records::ino_prefix(prefix::INLINE, ino).to_vec());
        }
        if self.model.chunks.remove(ino).is_some() {
            self.plan.delete_chunks.insert(ino);
        }
        for k in self.model.xattr_keys.take(ino) {
            self.plan.delete_keys.insert(k);
        }
        if let Some(i) = self.model.inodes.remove(ino) {
            if let Storage::Object(id) = self.model.storage_of(ino, &i) {
                self.plan.remove_objects.insert(id);
            }
        }
        self.model.object_ids.remove(ino);
        self.model.new_inodes.remove(&ino);
        self.model.purged.insert(ino);
    }
}
