//! Pass 7: the digest recomputed from the records matches the store's running digest and,
//! when the superblock says clean, the superblock's; the store belongs to the superblock's
//! epoch (or the next, after a crash). Accepting a mismatch rewrites the superblock.

use super::{Checker, Fixability, ProblemKind};
use crate::format::superblock::{Superblock, FLAG_STORE_STATE};
use crate::meta::Records;
use crate::Result;

impl Checker<'_> {
    /// The digest of every record ([`Records::digest`]), reporting progress against the
    /// number of records pass 2 scanned.
    pub(super) fn digest_with_progress(&mut self, records: &Records) -> Result<[u8; 32]> {
        let total = self.report.records;
        let mut done = 0u64;
        let mut acc = [0u8; 32];
        self.progress_start(7, total);
        records.store().scan(&[], None, &mut |k, v| {
            done += 1;
            records.add_to_digest(&mut acc, k, v);
            self.progress_tick(7, done, total);
            Ok(true)
        })?;
        self.progress_end(7, done);
        Ok(acc)
    }

    /// Compares the recomputed digest of the records with the running digest the store keeps
    /// and, when clean, with the superblock's; and the store's epoch with the superblock's.
    pub(super) fn pass_digest(&mut self, sb: &Superblock, digest: [u8; 32]) {
        let state = self.model.state;
        let mut differs = Vec::new();
        if let Some(s) = state {
            if s.digest != digest {
                differs.push("the running digest the store keeps with every write");
            }
        }
        if sb.is_clean() && digest != sb.meta_digest {
            differs.push("the digest the last clean unmount recorded in the superblock");
        }
        if !differs.is_empty() {
            let fix = self.problem(
                ProblemKind::DigestMismatch,
                None,
                format!(
                    "metadata records differ from {}: a record was put back from an older copy \
                     (replayed), or records were changed, added or removed outside digimedfs",
                    differs.join(" and from ")
                ),
                Fixability::Unsafe,
                "accept the metadata as it is now and store its digest",
            );
            self.plan.rewrite_superblock |= fix;
        }
        if state.is_none() && sb.flags & FLAG_STORE_STATE != 0 {
            let fix = self.problem(
                ProblemKind::EpochMismatch,
                None,
                format!(
                    "metadata store has no store state record, but the superblock (epoch {}) says \
                     it has one: the store was replaced on storage or the record deleted (mounts \
                     refuse it)",
                    sb.epoch
                ),
                Fixability::Unsafe,
                "accept the metadata store as it is and bind it to the superblock's epoch",
            );
            self.plan.rewrite_superblock |= fix;
        }
        if let Some(s) = state {
            if s.epoch != sb.epoch && Some(s.epoch) != sb.epoch.checked_add(1) {
                let fix = self.problem(
                    ProblemKind::EpochMismatch,
                    None,
                    format!(
                        "metadata store belongs to epoch {} but the superblock is at epoch {}: \
                         the store was {} (mounts refuse it)",
                        s.epoch,
                        sb.epoch,
                        if s.epoch < sb.epoch {
                            "rolled back (an older copy of meta/ put back) or replaced"
                        } else {
                            "replaced, or the superblock rolled back"
                        }
                    ),
                    Fixability::Unsafe,
                    "accept the metadata store as it is (a deliberate rollback) and bind it to the \
                     superblock's epoch",
                );
                self.plan.rewrite_superblock |= fix;
            }
        }
    }
}
