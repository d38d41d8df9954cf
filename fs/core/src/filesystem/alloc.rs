//! Inode numbers, block generations and incarnations: handed out from ranges reserved in the
//! counters record before use, so that no number or generation is ever used twice, even after
//! a crash or a counters record rolled back on storage.

use super::{lock, posix, Inner, GEN_RESERVE, INO_RESERVE};
use crate::crypto::incarnation::{
    first_generation, incarnation_of, BlockKeys, GENERATIONS_PER_INCARNATION, MAX_INCARNATION,
};
use crate::format::records::Counters;
use crate::{Error, Result};
use std::sync::Arc;

pub(super) struct CounterState {
    pub(super) next_ino: u64,
    pub(super) ino_reserved: u64,
    pub(super) next_gen: u64,
    pub(super) gen_reserved: u64,
    /// The incarnation this mount writes blocks under, and its keys (from the salt this
    /// mount drew; see [`crate::crypto::incarnation`]). `None` until the first one starts.
    pub(super) current: Option<(u32, Arc<BlockKeys>)>,
}

impl Inner {
    pub(super) fn store_counters(&self, c: &CounterState) -> Result<()> {
        let mut b = self.records.batch();
        b.put_counters(&Counters {
            ino_reserved: c.ino_reserved,
            gen_reserved: c.gen_reserved,
        });
        b.commit()
    }

    pub(crate) fn alloc_ino(&self) -> Result<u64> {
        let mut c = lock(&self.counters);
        let mut step = 1u64;
        loop {
            if c.next_ino >= c.ino_reserved {
                c.ino_reserved = c.next_ino + INO_RESERVE;
                self.store_counters(&c)?;
                self.records.flush()?;
            }
            let ino = c.next_ino;
            if !self.ino_in_use(ino)? {
                c.next_ino += 1;
                return Ok(ino);
            }
            // Numbers are never reused, so one in use means the counters record was put back
            // from an older copy on storage: a new file must not take over an existing inode
            // (and its contents). Skip ahead, doubling the stride, and check every number.
            tracing::error!(
                ino,
                "inode number already in use: the counters record was rolled back on storage; \
                 skipping ahead (check with fsck.digimed -n)"
            );
            c.next_ino = ino.saturating_add(step);
            step = step.saturating_mul(2);
        }
    }

    /// Whether inode number `ino` has an inode record or a pending reclaim mark.
    pub(super) fn ino_in_use(&self, ino: u64) -> Result<bool> {
        use crate::format::records::{ino_prefix, inode_key, prefix};
        let store = self.records.store();
        Ok(store.get(&inode_key(ino))?.is_some()
            || store.get(&ino_prefix(prefix::RECLAIM, ino))?.is_some())
    }

    /// Reserves `n` consecutive block generations, all of one incarnation; returns the first
    /// and the keys that encrypt and tag the blocks written with them.
    pub(crate) fn alloc_gens(&self, n: u64) -> Result<(u64, Arc<BlockKeys>)> {
        if n > GENERATIONS_PER_INCARNATION {
            return Err(Error::invalid(format!(
                "{n} block generations asked for at once"
            )));
        }
        let mut c = lock(&self.counters);
        let used = c.next_gen % GENERATIONS_PER_INCARNATION;
        let keys = match &c.current {
            Some((_, keys)) if used + n <= GENERATIONS_PER_INCARNATION => Arc::clone(keys),
            _ => self.start_incarnation(&mut c)?,
        };
        if c.next_gen + n > c.gen_reserved {
            c.gen_reserved = c.next_gen + n + GEN_RESERVE;
            self.store_counters(&c)?;
            self.records.flush()?;
        }
        let g = c.next_gen;
        c.next_gen += n;
        Ok((g, keys))
    }

    /// Starts the next incarnation: draws its salt, stores the salt record and counters
    /// that start at its first generation, and makes both durable before any block can be
    /// written under it. The number is above every generation the counters may have handed
    /// out, and an incarnation that already has a salt record is skipped (its blocks would
    /// stop verifying if the salt changed), so a counters record older than the salts
    /// cannot make a mount reuse one.
    pub(super) fn start_incarnation(&self, c: &mut CounterState) -> Result<Arc<BlockKeys>> {
        let exhausted = || {
            posix(
                libc::ENOSPC,
                format!(
                    "start a new incarnation: all {MAX_INCARNATION} incarnation numbers are used \
                     (block generation {:#x})",
                    c.gen_reserved.max(c.next_gen)
                ),
            )
        };
        let mut k = incarnation_of(c.gen_reserved.max(c.next_gen))
            .checked_add(1)
            .ok_or_else(exhausted)?;
        while k <= MAX_INCARNATION && self.records.has_incarnation(k)? {
            tracing::warn!(
                incarnation = k,
                "salt record of an incarnation above the counters found; skipping it"
            );
            k += 1;
        }
        if k > MAX_INCARNATION {
            return Err(exhausted());
        }
        let (salt, keys) = self.ring.create(k)?;
        let next_gen = first_generation(k);
        let gen_reserved = next_gen + GEN_RESERVE;
        let mut b = self.records.batch();
        b.put_incarnation(k, &salt);
        b.put_counters(&Counters {
            ino_reserved: c.ino_reserved,
            gen_reserved,
        });
        b.commit()?;
        self.records.flush()?;
        c.next_gen = next_gen;
        c.gen_reserved = gen_reserved;
        let keys = self.ring.adopt(k, keys);
        c.current = Some((k, Arc::clone(&keys)));
        tracing::debug!(incarnation = k, "started a new incarnation");
        Ok(keys)
    }

    /// The keys of the blocks written with generation `gen`; `None` if its incarnation has no
    /// salt record (damage or a mix of two stores: the block cannot be verified).
    pub(crate) fn keys_of(&self, gen: u64) -> Result<Option<Arc<BlockKeys>>> {
        let k = incarnation_of(gen);
        self.ring.get(k, || self.records.incarnation_salt(k))
    }
}
