//! Pass 2: every metadata record opens (AEAD) and decodes and its key is well formed; the
//! decoded records fill the checker's model. Also the record-level checks pass 3 runs first:
//! previous-version marks and incarnation salt records.

use super::model::block_index;
use super::model::InodeSum;
use super::{Checker, Fixability, ProblemKind};
use crate::crypto::incarnation::incarnation_of;
use crate::crypto::FsKeys;
use crate::filesystem::FileKind;
use crate::format::records::{self, prefix, Chunk, Counters, Dirent, Inode, StoreState, Xattr};
use crate::meta::{key_name, Records};
use crate::{Error, Result};

/// The record types (key prefixes) this version knows.
const KNOWN_PREFIXES: [u8; 11] = [
    prefix::INODE,
    prefix::DIRENT,
    prefix::XATTR,
    prefix::CHUNK,
    prefix::INLINE,
    prefix::ORPHAN,
    prefix::RECLAIM,
    prefix::COUNTERS,
    prefix::STATE,
    prefix::INCARNATION,
    prefix::PREV_MARK,
];

impl Checker<'_> {
    pub(super) fn pass_records(&mut self, records: &Records, keys: &FsKeys) -> Result<()> {
        // Records are decoded as the scan reads them: nothing but the model is kept.
        let mut n = 0u64;
        // The number of records is not known before the scan (the store keeps no count).
        self.progress_start(2, 0);
        records.store().scan(&[], None, &mut |key, value| {
            n += 1;
            if key.first() == Some(&prefix::DIRENT) {
                self.dirent_records += 1;
            }
            if let Err(e) = self.decode_record(records, keys, key, value) {
                let fix = self.problem(
                    ProblemKind::BadRecord,
                    record_ino(key),
                    format!("{}: {e}", key_name(key)),
                    Fixability::Unsafe,
                    "delete the record",
                );
                if fix {
                    self.plan.delete_keys.insert(key.to_vec());
                }
            }
            self.progress_tick(2, n, 0);
            Ok(true)
        })?;
        self.report.records = n;
        self.progress_end(2, n);
        Ok(())
    }

    fn decode_record(
        &mut self,
        records: &Records,
        keys: &FsKeys,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let Some(&p) = key.first() else {
            return Err(Error::format("empty key"));
        };
        if !KNOWN_PREFIXES.contains(&p) {
            let fix = self.problem(
                ProblemKind::UnknownRecord,
                None,
                format!("{}: unknown record type", key_name(key)),
                Fixability::Unsafe,
                "delete the record",
            );
            if fix {
                self.plan.delete_keys.insert(key.to_vec());
            }
            return Ok(());
        }
        let want_len = key_len(p);
        if key.len() != want_len {
            return Err(Error::format(format!(
                "key of {} bytes, expected {want_len}",
                key.len()
            )));
        }
        let plain = records.open(key, value)?;
        let ino = record_ino(key).unwrap_or(0);
        match p {
            prefix::INODE => {
                let inode = Inode::decode(ino, &plain)?;
                let (sum, object) = InodeSum::of(&inode);
                self.model.inodes.insert(ino, sum);
                if let Some(id) = object {
                    self.model.object_ids.insert(ino, id);
                }
                if inode.kind == FileKind::Dir {
                    self.model.parents.insert(ino, inode.parent);
                }
            }
            prefix::DIRENT => {
                // Checked against its directory in pass 3, which reads it again: entries
                // are not held through the scan.
                Dirent::decode(&plain)?;
            }
            prefix::XATTR => {
                let x = Xattr::decode(&plain)?;
                let name_mac = keys.names.xattr_key(ino, &x.name);
                if records::xattr_key(ino, &name_mac).as_slice() != key {
                    return Err(Error::integrity("xattr name does not match its key"));
                }
                self.model.xattr_keys.push(ino, name_mac);
            }
            prefix::CHUNK => {
                let c = Chunk::decode(&plain)?;
                self.note_chunk(ino, key, &c);
            }
            prefix::INLINE => {
                let len = u32::try_from(plain.len()).unwrap_or(u32::MAX);
                self.model.inline.insert(ino, len);
            }
            prefix::ORPHAN => {
                if !plain.is_empty() {
                    return Err(Error::format("orphan record with contents"));
                }
                self.model.orphans.insert(ino);
            }
            prefix::RECLAIM => {
                if !plain.is_empty() {
                    return Err(Error::format("reclaim mark with contents"));
                }
                self.model.reclaims.insert(ino);
            }
            prefix::STATE => {
                self.model.state = Some(StoreState::decode(&plain)?);
            }
            prefix::PREV_MARK => {
                if !plain.is_empty() {
                    return Err(Error::format("previous-version mark with contents"));
                }
                if let Some(c) = records::chunk_of_key(key) {
                    self.model.prev_marks.insert(c);
                }
            }
            prefix::INCARNATION => {
                records::decode_incarnation(&plain)?;
                if let Some(k) = records::incarnation_of_key(key) {
                    self.model.incarnations.insert(k);
                }
            }
            _ => {
                self.model.counters = Some(Counters::decode(&plain)?);
            }
        }
        Ok(())
    }

    /// Adds chunk record `c` (key `key`) of inode `ino` to the model: its summary, the
    /// highest generation, previous versions and the incarnations its versions name.
    fn note_chunk(&mut self, ino: u64, key: &[u8], c: &Chunk) {
        let idx = key
            .get(9..17)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        if c.entries.values().any(|e| e.prev.is_some()) {
            self.model.prev_chunks.insert((ino, idx));
        }
        let mut sum = self.model.chunks.get(ino).unwrap_or_default();
        sum.records += 1;
        for (slot, e) in &c.entries {
            sum.max_block = sum.max_block.max(block_index(idx, *slot));
            self.model.max_gen = self.model.max_gen.max(e.cur.generation);
            let prev = match e.prev {
                Some(Some(p)) => Some(p.generation),
                _ => None,
            };
            if let Some(p) = prev {
                self.model.max_gen = self.model.max_gen.max(p);
            }
            for gen in std::iter::once(e.cur.generation).chain(prev) {
                let k = incarnation_of(gen);
                if k > 0 {
                    self.model.used_incarnations.entry(k).or_insert((ino, 0)).1 += 1;
                }
            }
        }
        self.model.chunks.insert(ino, sum);
    }

    /// A previous-version mark belongs to a chunk record with a previous version (the mount
    /// resolves the chunks it marks; pass 5 resolves every chunk with one, marked or not).
    pub(super) fn check_prev_marks(&mut self) {
        let stale: Vec<(u64, u64)> = self
            .model
            .prev_marks
            .difference(&self.model.prev_chunks)
            .copied()
            .collect();
        for (ino, c) in stale {
            let fix = self.problem(
                ProblemKind::StrayRecord,
                Some(ino),
                format!(
                    "previous-version mark of inode {ino} chunk {c}, which has no previous version"
                ),
                Fixability::Safe,
                "delete the mark",
            );
            if fix {
                self.plan
                    .delete_keys
                    .insert(records::prev_mark_key(ino, c).to_vec());
            }
        }
    }

    /// Every incarnation that block versions name has its salt record. Without it the keys
    /// of those blocks cannot be derived: pass 5 reports each of them as damaged, and reads
    /// return EIO. Nothing can recreate a salt.
    pub(super) fn check_incarnations(&mut self) {
        let missing: Vec<(u32, (u64, u64))> = self
            .model
            .used_incarnations
            .iter()
            .filter(|(k, _)| !self.model.incarnations.contains(k))
            .map(|(k, v)| (*k, *v))
            .collect();
        for (k, (ino, count)) in missing {
            self.problem(
                ProblemKind::MissingIncarnation,
                Some(ino),
                format!(
                    "incarnation {k} has no salt record: {count} block version(s) written \
                     under it (the first in inode {ino}) cannot be verified"
                ),
                Fixability::None,
                "left; the blocks concerned are reported as damaged and read as EIO",
            );
        }
    }
}

fn record_ino(key: &[u8]) -> Option<u64> {
    match key.first().copied() {
        Some(
            prefix::INODE
            | prefix::XATTR
            | prefix::CHUNK
            | prefix::INLINE
            | prefix::ORPHAN
            | prefix::RECLAIM,
        ) => key
            .get(1..9)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes),
        _ => None,
    }
}

/// Length of a well-formed key of record type `p` (a known prefix).
fn key_len(p: u8) -> usize {
    match p {
        prefix::INODE | prefix::INLINE | prefix::ORPHAN | prefix::RECLAIM => 9,
        prefix::DIRENT | prefix::XATTR => 25,
        prefix::CHUNK | prefix::PREV_MARK => 17,
        prefix::INCARNATION => 5,
        _ => 1,
    }
}
