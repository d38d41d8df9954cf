//! Pass 5: every object belongs to an inode, every referenced object exists and is not
//! longer than its file needs, and every block verifies against its tag (the reading is in
//! `verify`); entries still holding a previous version get it resolved in the plan.

use super::verify::{verify_objects, FileJob, JobResult};
use super::{Checker, Fixability, ProblemKind};
use crate::filesystem::{FileKind, Parts};
use crate::format::records::Storage;
use crate::meta::Records;
use crate::objects::ObjectId;
use crate::Result;

/// Most block numbers listed in one problem's detail text.
const MAX_LISTED_BLOCKS: usize = 16;

impl Checker<'_> {
    pub(super) fn pass_objects(&mut self, parts: &Parts, records: &Records) -> Result<()> {
        let bs = u64::from(parts.superblock.block_size);
        // Object id → length, sorted by id (a sorted vector: 24 bytes an object).
        let mut listed = parts.objects.list()?;
        listed.sort_unstable_by_key(|a| a.0);
        listed.dedup_by(|a, b| a.0 == b.0);
        listed.shrink_to_fit();
        self.report.objects = listed.len() as u64;
        let (files, owners) = self.object_jobs(&listed, bs);
        self.unreferenced_objects(&listed, &owners);
        drop(listed);
        drop(owners);
        let results = verify_objects(parts, records, &files, bs, self.opts.threads, &mut *self.ui)?;
        self.report_verification(&files, results);
        Ok(())
    }

    /// Checks the objects of object-backed files (shared, too long) and returns one job per
    /// file with block entries, and the objects referred to with their first inode (sorted).
    fn object_jobs(
        &mut self,
        listed: &[(ObjectId, u64)],
        bs: u64,
    ) -> (Vec<FileJob>, Vec<(ObjectId, u64)>) {
        // One small record per object-backed file; the block entries are read per segment.
        let mut files: Vec<FileJob> = Vec::new();
        let object_files: Vec<(u64, ObjectId, u64)> = self
            .model
            .inodes
            .iter()
            .filter_map(|(ino, i)| match (i.kind, self.model.storage_of(ino, &i)) {
                (FileKind::File, Storage::Object(id)) => Some((ino, id, i.size)),
                _ => None,
            })
            .collect();
        // Each object's owner is the first inode (lowest number) that refers to it.
        let mut owners: Vec<(ObjectId, u64)> = object_files
            .iter()
            .map(|(ino, id, _)| (*id, *ino))
            .collect();
        owners.sort_unstable();
        owners.dedup_by(|a, b| a.0 == b.0);
        for (ino, id, size) in object_files {
            let other = owner_of(&owners, &id).filter(|o| *o != ino);
            if let Some(other) = other {
                self.problem(
                    ProblemKind::SharedObject,
                    Some(ino),
                    format!(
                        "inodes {other} and {ino} both refer to object {}; at most one of them can read it",
                        hex::encode(id)
                    ),
                    Fixability::None,
                    "none",
                );
            }
            let max_block = match self.model.chunks.get(ino) {
                Some(sum) if sum.records > 0 => Some(sum.max_block),
                _ => None,
            };
            let len = listed
                .binary_search_by(|(l, _)| l.cmp(&id))
                .ok()
                .and_then(|i| listed.get(i))
                .map(|(_, len)| *len);
            if let Some(len) = len {
                let need = size.div_ceil(bs).saturating_mul(bs);
                if len > need {
                    let fix = self.problem(
                        ProblemKind::ObjectTooLong,
                        Some(ino),
                        format!(
                            "object {} is {len} bytes, its file needs {need}",
                            hex::encode(id)
                        ),
                        Fixability::Safe,
                        &format!("truncate it to {need} bytes"),
                    );
                    if fix {
                        self.plan.truncate_objects.push((id, need));
                    }
                }
            }
            if let Some(max_block) = max_block {
                files.push(FileJob {
                    ino,
                    id,
                    len: len.unwrap_or(0),
                    missing: len.is_none(),
                    keep: self.plan.trim_chunks.get(&ino).copied(),
                    end_block: max_block.saturating_add(1),
                });
            }
        }
        (files, owners)
    }

    /// Objects that no inode refers to (and no planned repair removes already).
    fn unreferenced_objects(&mut self, listed: &[(ObjectId, u64)], owners: &[(ObjectId, u64)]) {
        for (id, len) in listed {
            if owner_of(owners, id).is_some() || self.plan.remove_objects.contains(id) {
                continue;
            }
            let fix = self.problem(
                ProblemKind::UnreferencedObject,
                None,
                format!("object {} ({len} bytes) belongs to no inode", hex::encode(id)),
                Fixability::Unsafe,
                "delete it (its contents are lost: without an inode record nothing can be reconnected)",
            );
            if fix {
                self.plan.remove_objects.insert(*id);
            }
        }
    }

    /// Records the verification results: previous versions to resolve, missing objects and
    /// damaged blocks.
    fn report_verification(&mut self, files: &[FileJob], results: Vec<JobResult>) {
        for (job, res) in files.iter().zip(results) {
            self.report.blocks_verified += res.entries;
            // (An orphan goes as a whole: the mount or the repair purges it.)
            if !res.resolved.is_empty() && !job.missing && !self.model.orphans.contains(&job.ino) {
                self.report.previous_versions += res.resolved.len() as u64;
                if self.opts.mode.may_write() {
                    self.plan.resolve_prev.insert(job.ino, res.resolved.clone());
                }
            }
            if res.bad.is_empty() {
                continue;
            }
            let truncated = res.bad.iter().filter(|(_, t)| *t).count();
            let blocks: Vec<u64> = res.bad.iter().map(|(i, _)| *i).collect();
            if job.missing {
                let n = blocks.len();
                self.problem_blocks(
                    ProblemKind::MissingObject,
                    Some(job.ino),
                    format!(
                        "object {} of inode {} is missing: {n} stored blocks unreadable",
                        hex::encode(job.id),
                        job.ino
                    ),
                    blocks,
                    Fixability::None,
                    "none possible: reads of those blocks return EIO (restore the object from a backup)",
                );
                continue;
            }
            let mut listed_blocks: Vec<String> = blocks
                .iter()
                .take(MAX_LISTED_BLOCKS)
                .map(|b| b.to_string())
                .collect();
            if blocks.len() > MAX_LISTED_BLOCKS {
                listed_blocks.push(format!("… ({} in all)", blocks.len()));
            }
            let mut detail = format!(
                "inode {}: {} of {} blocks fail their integrity check (object {}): blocks {}",
                job.ino,
                blocks.len(),
                res.entries,
                hex::encode(job.id),
                listed_blocks.join(", ")
            );
            if truncated > 0 {
                detail.push_str(&format!(
                    "; {truncated} of them beyond the end of the truncated object"
                ));
            }
            if blocks.len() as u64 == res.entries && res.entries > 1 && truncated == 0 {
                detail
                    .push_str("; no block verifies: the object was replaced, swapped or replayed");
            }
            self.problem_blocks(
                ProblemKind::DamagedBlock,
                Some(job.ino),
                detail,
                blocks,
                Fixability::None,
                "left in place: reads of exactly these blocks return EIO, the rest of the file stays readable",
            );
        }
    }
}

/// The owner of object `id` in `owners` (sorted by id, one entry per id).
fn owner_of(owners: &[(ObjectId, u64)], id: &ObjectId) -> Option<u64> {
    owners
        .binary_search_by(|(o, _)| o.cmp(id))
        .ok()
        .and_then(|i| owners.get(i))
        .map(|(_, ino)| *ino)
}
