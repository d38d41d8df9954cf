//! Pass 4: file sizes against their inline data or block entries, storage kind per file
//! type, and records (inline data, block maps, xattrs, reclaim marks) of inodes that do not
//! exist or cannot own them.

use super::model::{block_index, scan_chunks, InodeSum, Model};
use super::{Checker, Fixability, ProblemKind};
use crate::filesystem::FileKind;
use crate::format::records::{self, prefix, Storage, CHUNK_BLOCKS};
use crate::meta::Records;

impl Checker<'_> {
    pub(super) fn pass_sizes(&mut self, records: &Records, bs: u64) {
        // By slot: nothing in this pass adds or removes an inode.
        let total = self.model.inodes.slots() as u64;
        self.progress_start(4, total);
        for slot in 0..self.model.inodes.slots() {
            self.progress_tick(4, slot as u64 + 1, total);
            let Some((ino, inode)) = self.model.inodes.at(slot) else {
                continue;
            };
            self.count(&inode);
            self.check_storage(records, ino, &inode, bs);
        }
        self.progress_end(4, total);
        self.stray_records_of_missing_inodes();
        self.check_reclaims();
        self.stray_xattrs();
    }

    /// Adds `inode` to the report's tallies.
    fn count(&mut self, inode: &InodeSum) {
        match inode.kind {
            FileKind::File => {
                self.report.files += 1;
                self.report.bytes = self.report.bytes.saturating_add(u128::from(inode.size));
            }
            FileKind::Dir => self.report.directories += 1,
            FileKind::Symlink => self.report.symlinks += 1,
            _ => self.report.special += 1,
        }
    }

    /// The storage kind of `inode` against its type, and its records against its storage.
    fn check_storage(&mut self, records: &Records, ino: u64, inode: &InodeSum, bs: u64) {
        let storage = self.model.storage_of(ino, inode);
        // An orphan left in place goes with all its records when it is removed: records
        // that would be stray on a live file (e.g. an inline record an interrupted
        // conversion left) are part of that one problem.
        let orphan = self.model.orphan_inodes.contains(&ino);
        let has_inline = self.model.inline.contains_key(ino) && !orphan;
        let has_chunks = self.model.chunks.get(ino).is_some_and(|m| m.records > 0) && !orphan;
        if inode.kind != FileKind::File {
            if storage != Storage::None {
                self.problem(
                    ProblemKind::StorageMismatch,
                    Some(ino),
                    format!(
                        "inode {ino} is a {:?} but has file storage {:?}",
                        inode.kind, storage
                    ),
                    Fixability::None,
                    "none",
                );
            }
            if has_inline {
                self.stray_inline(ino, "not a regular file");
            }
            if has_chunks {
                self.stray_chunks(ino, "not a regular file");
            }
            return;
        }
        match storage {
            Storage::Inline => {
                if has_chunks {
                    self.stray_chunks(ino, "an inline file");
                }
                self.check_inline_size(ino, inode);
            }
            Storage::None => {
                // The core stores an empty inline record for an empty file without
                // storage (truncated to 0): consistent, not stray.
                let empty_inline = self.model.inline.get(ino) == Some(0);
                if has_inline && !(empty_inline && inode.size == 0) {
                    self.stray_inline(ino, "a file without storage");
                }
                if has_chunks {
                    self.stray_chunks(ino, "a file without a data object");
                }
                if inode.size > 0 {
                    self.problem(
                        ProblemKind::SizeMismatch,
                        Some(ino),
                        format!("inode {ino}: size {} but no stored data", inode.size),
                        Fixability::None,
                        "none (reads return zeros)",
                    );
                }
            }
            Storage::Object(_) => {
                if has_inline {
                    self.stray_inline(ino, "a file stored in an object");
                }
                self.check_beyond_size(records, ino, inode, bs);
            }
        }
    }

    /// The inline data length of an inline file against its size.
    fn check_inline_size(&mut self, ino: u64, inode: &InodeSum) {
        match self.model.inline.get(ino).map(u64::from) {
            None if inode.size > 0 => {
                self.problem(
                    ProblemKind::SizeMismatch,
                    Some(ino),
                    format!(
                        "inode {ino}: size {} but its inline data record is missing",
                        inode.size
                    ),
                    Fixability::None,
                    "none possible: the contents are lost (reads return zeros)",
                );
            }
            Some(len) if len != inode.size => {
                let small = inode.size <= records::INLINE_MAX;
                let fix = self.problem(
                    ProblemKind::SizeMismatch,
                    Some(ino),
                    format!(
                        "inode {ino}: size {} but {len} bytes of inline data",
                        inode.size
                    ),
                    if small {
                        Fixability::Safe
                    } else {
                        Fixability::None
                    },
                    "resize the inline data to the file size (what reads already return)",
                );
                if fix {
                    self.plan.resize_inline.insert(ino, inode.size);
                }
            }
            _ => {}
        }
    }

    /// Block map and inline data records of inodes that do not exist.
    fn stray_records_of_missing_inodes(&mut self) {
        let stray_chunks: Vec<u64> = self
            .model
            .chunks
            .keys()
            .filter(|i| missing(&self.model, i))
            .collect();
        for ino in stray_chunks {
            self.stray_chunks(ino, "a missing inode");
        }
        // A deleted inode's inline data with a reclaim mark is the mount's pending work, not
        // a problem: the next mount removes it.
        let stray_inline: Vec<u64> = self
            .model
            .inline
            .keys()
            .filter(|i| missing(&self.model, i) && !self.model.reclaims.contains(i))
            .collect();
        for ino in stray_inline {
            self.stray_inline(ino, "a missing inode");
        }
    }

    /// Reclaim marks of inodes that exist.
    fn check_reclaims(&mut self) {
        let stale_reclaims: Vec<u64> = self
            .model
            .reclaims
            .iter()
            .copied()
            .filter(|i| self.model.inodes.contains_key(*i))
            .collect();
        for ino in stale_reclaims {
            let fix = self.problem(
                ProblemKind::StaleReclaim,
                Some(ino),
                format!("reclaim mark for inode {ino}, which exists"),
                Fixability::Safe,
                "delete the mark (the inode keeps its inline data)",
            );
            if fix {
                self.model.reclaims.remove(&ino);
                self.plan
                    .delete_keys
                    .insert(records::ino_prefix(prefix::RECLAIM, ino).to_vec());
            }
        }
    }

    /// Xattr records of inodes that do not exist.
    fn stray_xattrs(&mut self) {
        let stray_x: Vec<u64> = self
            .model
            .xattr_keys
            .inos()
            .into_iter()
            .filter(|i| missing(&self.model, i))
            .collect();
        for ino in stray_x {
            let fix = self.problem(
                ProblemKind::StrayRecord,
                Some(ino),
                format!("xattrs of inode {ino}, which does not exist"),
                Fixability::Unsafe,
                "delete them",
            );
            if fix {
                for k in self.model.xattr_keys.take(ino) {
                    self.plan.delete_keys.insert(k);
                }
            }
        }
    }

    fn stray_inline(&mut self, ino: u64, owner: &str) {
        let fix = self.problem(
            ProblemKind::StrayRecord,
            Some(ino),
            format!("inline data record of inode {ino}, which is {owner}"),
            Fixability::Unsafe,
            "delete the record",
        );
        if fix {
            self.model.inline.remove(ino);
            self.plan
                .delete_keys
                .insert(records::ino_prefix(prefix::INLINE, ino).to_vec());
        }
    }

    fn stray_chunks(&mut self, ino: u64, owner: &str) {
        let n = self.model.chunks.get(ino).map(|m| m.records).unwrap_or(0);
        let fix = self.problem(
            ProblemKind::StrayRecord,
            Some(ino),
            format!("{n} block map record(s) of inode {ino}, which is {owner}"),
            Fixability::Unsafe,
            "delete them",
        );
        if fix {
            self.model.chunks.remove(ino);
            self.plan.delete_chunks.insert(ino);
        }
    }

    fn check_beyond_size(&mut self, records: &Records, ino: u64, inode: &InodeSum, bs: u64) {
        let keep = inode.size.div_ceil(bs);
        match self.model.chunks.get(ino) {
            Some(sum) if sum.records > 0 && sum.max_block >= keep => {}
            _ => return,
        }
        // Rare: only now list the entries (from the store, not from memory).
        let mut beyond = Vec::new();
        let _ = scan_chunks(records, ino, keep / CHUNK_BLOCKS, &mut |c, ch| {
            for slot in ch.entries.keys() {
                let idx = block_index(c, *slot);
                if idx >= keep {
                    beyond.push(idx);
                }
            }
            true
        });
        if beyond.is_empty() {
            return;
        }
        let fix = self.problem_blocks(
            ProblemKind::BlocksBeyondSize,
            Some(ino),
            format!(
                "inode {ino}: {} block entries beyond its size {}",
                beyond.len(),
                inode.size
            ),
            beyond,
            Fixability::Safe,
            "drop the entries (the data beyond the end of the file is never read)",
        );
        if fix {
            self.plan.trim_chunks.insert(ino, keep);
            if let Some(sum) = self.model.chunks.get_mut(ino) {
                sum.max_block = keep.saturating_sub(1);
            }
        }
    }
}

/// Whether records of inode `i` have no inode (neither existing nor purged by a repair).
fn missing(m: &Model, i: &u64) -> bool {
    !m.inodes.contains_key(*i) && !m.purged.contains(i)
}
