//! The running digest of the store: [`DigestStore`] updates the digest of all records with
//! every batch and writes the store state record (epoch and digest) in the same batch, so the
//! record always describes exactly the records stored beside it.
//!
//! It is also where every change reaches the durable store, so a backup point records
//! pre-images here: while a point dumps the store, the first change of each key the dump has
//! not passed keeps the key's previous value, and [`DigestStore::scan_as_of_start`] reads the
//! store as it was when the point was taken while writers go on.

use super::records::xor_into;
use super::{lock, Batch, MetaStore, Records, ScanFn};
use crate::crypto::FsKeys;
use crate::format::records::{StoreState, STATE_KEY};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Keeps the store's digest up to date as batches are applied, instead of recomputing it, and
/// binds the store to a superblock epoch (docs/crypto.md "Rollback of the metadata store").
///
/// Sits directly on the durable store (below `BufferedStore`, so its work is done by the
/// hand-over thread, not by requests). For every batch it reads each changed key's current
/// value, XORs out the MAC of the old (key, sealed value) and XORs in the MAC of the new one,
/// and appends the sealed [`StoreState`] record (epoch and digest) to the same batch: the
/// record always describes exactly the records stored beside it, across crashes. A record put
/// back behind the store's back (a replay) is therefore never absorbed into the digest: every
/// later write XORs out what is actually stored, so the difference stays until fsck reports it.
///
/// A store without the record (made before it existed) is not tracked until
/// [`DigestStore::adopt`] computes its digest once.
pub struct DigestStore {
    /// Sealing and MACs, over the inner store.
    records: Records,
    /// `None` until the store has a state record.
    state: Mutex<Option<StoreState>>,
    /// While a backup point dumps the store: the values keys had when it was taken.
    recorder: Mutex<Option<PointRecorder>>,
}

/// Most bytes of pre-images a point records before it gives up (and fails, so the job can
/// take it again): the changes made while the dump runs, bounded.
pub const MAX_PREIMAGE_BYTES: usize = 256 << 20;

/// The pre-images of a point being dumped: for every key changed since the point was taken
/// and not yet passed by the dump, the value it had then (`None`: absent).
#[derive(Default)]
struct PointRecorder {
    /// The last key the dump has passed (`None`: none yet).
    cursor: Option<Vec<u8>>,
    pre: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    bytes: usize,
    /// More than [`MAX_PREIMAGE_BYTES`] were needed: the dump cannot be completed.
    overflow: bool,
    /// Pre-images recorded in all.
    recorded: usize,
}

impl DigestStore {
    /// Tracks `inner`, reading its state record (one `get`).
    pub fn open(
        inner: Arc<dyn MetaStore>,
        keys: Arc<FsKeys>,
        fs_uuid: &[u8; 16],
    ) -> Result<DigestStore> {
        let records = Records::new(inner, keys, fs_uuid);
        let state = records.store_state()?;
        Ok(DigestStore {
            records,
            state: Mutex::new(state),
            recorder: Mutex::new(None),
        })
    }

    /// Starts recording pre-images: from now on [`DigestStore::scan_as_of_start`] sees the
    /// store as it is now, whatever is applied meanwhile. The caller holds the point gate and
    /// has flushed, so nothing is buffered above this store.
    pub fn start_recording(&self) {
        *lock(&self.recorder) = Some(PointRecorder::default());
    }

    /// Stops recording pre-images and drops them; returns how many were recorded.
    pub fn stop_recording(&self) -> usize {
        lock(&self.recorder).take().map_or(0, |r| r.recorded)
    }

    /// Records the current value of each of `keys` not yet passed by the dump (the first
    /// change of a key after the point only). Called before every apply to the inner store,
    /// with the applies serialized.
    fn record<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> Result<()> {
        let mut guard = lock(&self.recorder);
        let Some(r) = guard.as_mut() else {
            return Ok(());
        };
        for k in keys {
            if r.overflow || r.cursor.as_deref().is_some_and(|c| k <= c) || r.pre.contains_key(k) {
                continue;
            }
            let old = self.records.store.get(k)?;
            r.bytes += k.len() + old.as_ref().map_or(0, Vec::len);
            r.recorded += 1;
            r.pre.insert(k.to_vec(), old);
            if r.bytes > MAX_PREIMAGE_BYTES {
                r.overflow = true;
                r.pre.clear();
            }
        }
        Ok(())
    }

    /// Calls `f` for every record as the store was at [`DigestStore::start_recording`], in
    /// key order, while batches go on being applied: a key's pre-image if it changed since,
    /// else its stored value; keys deleted since come from their pre-images, keys created
    /// since are skipped.
    pub fn scan_as_of_start(
        &self,
        f: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<()>,
    ) -> Result<()> {
        let overflow = || {
            Error::invalid(format!(
                "more than {} MiB of metadata changed while the backup point was dumped; take the point again when the filesystem is less busy",
                MAX_PREIMAGE_BYTES >> 20
            ))
        };
        // Moves the cursor to `upto` (None: the end) and returns what to emit up to it.
        let advance =
            |upto: Option<&[u8]>, stored: Option<&[u8]>| -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
                use std::ops::Bound;
                let mut guard = lock(&self.recorder);
                let r = guard.as_mut().ok_or_else(|| {
                    Error::invalid("the point's pre-image recorder is not running")
                })?;
                if r.overflow {
                    return Err(overflow());
                }
                let lo = match &r.cursor {
                    Some(c) => Bound::Excluded(c.clone()),
                    None => Bound::Unbounded,
                };
                let hi = match upto {
                    Some(k) => Bound::Excluded(k.to_vec()),
                    None => Bound::Unbounded,
                };
                // Keys the scan did not return before `upto` but that existed: deleted since.
                let mut out: Vec<(Vec<u8>, Vec<u8>)> = r
                    .pre
                    .range((lo, hi))
                    .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.clone())))
                    .collect();
                if let (Some(k), Some(v)) = (upto, stored) {
                    match r.pre.get(k) {
                        Some(Some(pre)) => out.push((k.to_vec(), pre.clone())),
                        Some(None) => {} // created since
                        None => out.push((k.to_vec(), v.to_vec())),
                    }
                    r.cursor = Some(k.to_vec());
                } else {
                    r.cursor = r.pre.keys().next_back().cloned().or(r.cursor.take());
                }
                Ok(out)
            };
        self.records.store.scan(&[], None, &mut |k, v| {
            advance(Some(k), Some(v))?
                .into_iter()
                .try_for_each(|(k, v)| f(k, v))
                .map(|()| true)
        })?;
        for (k, v) in advance(None, None)? {
            f(k, v)?;
        }
        Ok(())
    }

    /// The state as of the last applied batch (`None`: a store not yet adopted).
    pub fn state(&self) -> Option<StoreState> {
        *lock(&self.state)
    }

    /// Digest of the inner store, recomputed from every record (O(records)).
    pub fn recompute(&self) -> Result<[u8; 32]> {
        self.records.digest()
    }

    /// Starts tracking a store that has no state record: writes one with `digest` (from
    /// [`DigestStore::recompute`], with no write in between) and `epoch`. Not flushed.
    pub fn adopt(&self, epoch: u64, digest: [u8; 32]) -> Result<()> {
        let mut st = lock(&self.state);
        let s = StoreState { epoch, digest };
        self.write_state(&s)?;
        *st = Some(s);
        Ok(())
    }

    /// Binds the store to superblock epoch `epoch` (written, not flushed: the caller flushes
    /// before it writes a superblock with that epoch).
    pub fn bind_epoch(&self, epoch: u64) -> Result<()> {
        let mut st = lock(&self.state);
        let Some(cur) = *st else {
            return Err(Error::invalid(
                "binding a metadata store without a state record to an epoch (adopt it first)",
            ));
        };
        let s = StoreState { epoch, ..cur };
        self.write_state(&s)?;
        *st = Some(s);
        Ok(())
    }

    fn write_state(&self, s: &StoreState) -> Result<()> {
        self.record(std::iter::once(STATE_KEY.as_slice()))?;
        let mut b = Batch::default();
        b.put_raw(
            STATE_KEY.to_vec(),
            self.records.seal(&STATE_KEY, &s.encode()),
        );
        self.records.store.apply(&b)
    }
}

impl MetaStore for DigestStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.records.store.get(key)
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        self.records.store.scan(prefix, after, f)
    }

    fn apply(&self, batch: &Batch) -> Result<()> {
        let inner = &self.records.store;
        let mut st = lock(&self.state);
        // Applies are serialized by `state`: nothing changes these keys between the
        // recording of their pre-images and the apply.
        self.record(
            batch
                .ops
                .iter()
                .map(|(k, _)| k.as_slice())
                .chain(st.is_some().then_some(STATE_KEY.as_slice())),
        )?;
        let Some(cur) = *st else {
            return inner.apply(batch);
        };
        let mut digest = cur.digest;
        // Values set earlier in this batch: a key changed twice is XORed out at its value
        // after the first change, which is what it holds then.
        let mut earlier: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
        for (k, v) in &batch.ops {
            if k.as_slice() == STATE_KEY {
                return Err(Error::invalid(
                    "the store state record is written only by the metadata layer",
                ));
            }
            let old = match earlier.get(k.as_slice()) {
                Some(o) => o.map(<[u8]>::to_vec),
                None => inner.get(k)?,
            };
            if let Some(old) = old {
                xor_into(&mut digest, &self.records.keys.digest.mac_parts(&[k, &old]));
            }
            if let Some(new) = v {
                xor_into(&mut digest, &self.records.keys.digest.mac_parts(&[k, new]));
            }
            earlier.insert(k, v.as_deref());
        }
        let next = StoreState { digest, ..cur };
        let mut with_state = Batch {
            ops: Vec::with_capacity(batch.ops.len() + 1),
        };
        with_state.ops.extend(batch.ops.iter().cloned());
        with_state.put_raw(
            STATE_KEY.to_vec(),
            self.records.seal(&STATE_KEY, &next.encode()),
        );
        inner.apply(&with_state)?;
        *st = Some(next);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.records.store.flush()
    }

    fn close(&self) -> Result<()> {
        self.records.store.close()
    }

    fn digest_store(&self) -> Option<&DigestStore> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;
    use crate::meta::MemStore;

    fn keys() -> Arc<FsKeys> {
        Arc::new(FsKeys::derive(&MasterKey::generate(), &[1; 16]).expect("keys"))
    }

    fn put(b: &mut Batch, k: &[u8], v: &[u8]) {
        b.ops_push(k.to_vec(), v.to_vec());
    }

    /// The running digest after batches with overwrites, deletes, absent keys and a key
    /// changed twice in one batch equals the digest recomputed from the records, and the
    /// state record written beside them says so.
    #[test]
    fn running_digest_follows_every_batch() {
        let keys = keys();
        let mem = Arc::new(MemStore::new());
        let raw = Records::new(mem.clone(), keys.clone(), &[1; 16]);
        let mut b = raw.batch();
        b.put_state(&StoreState {
            epoch: 4,
            digest: [0; 32],
        });
        b.commit().expect("state");
        let tracked = DigestStore::open(mem.clone(), keys.clone(), &[1; 16]).expect("open");
        let batches: Vec<Batch> = {
            let mut a = Batch::default();
            put(&mut a, b"Ia", b"1");
            put(&mut a, b"Ib", b"2");
            let mut b2 = Batch::default();
            put(&mut b2, b"Ia", b"3");
            b2.delete(b"Ib");
            b2.delete(b"Inever");
            put(&mut b2, b"Ic", b"4");
            put(&mut b2, b"Ic", b"5");
            let mut c = Batch::default();
            put(&mut c, b"Ib", b"6");
            c.delete(b"Ia");
            vec![a, b2, c]
        };
        for batch in &batches {
            tracked.apply(batch).expect("apply");
            let want = raw.digest().expect("digest");
            let state = tracked.state().expect("tracked");
            assert_eq!(state.digest, want);
            assert_eq!(raw.store_state().expect("read"), Some(state));
            assert_eq!(state.epoch, 4);
        }
        tracked.bind_epoch(5).expect("bind");
        assert_eq!(raw.store_state().expect("read").map(|s| s.epoch), Some(5));
        let mut bad = Batch::default();
        put(&mut bad, &STATE_KEY, b"forged");
        assert!(tracked.apply(&bad).is_err());
    }

    /// A store without a state record is not tracked until adopted, then is.
    #[test]
    fn legacy_store_is_tracked_once_adopted() {
        let keys = keys();
        let mem = Arc::new(MemStore::new());
        let raw = Records::new(mem.clone(), keys.clone(), &[1; 16]);
        let tracked = DigestStore::open(mem.clone(), keys, &[1; 16]).expect("open");
        let mut a = Batch::default();
        put(&mut a, b"Ia", b"1");
        tracked.apply(&a).expect("apply");
        assert_eq!(tracked.state(), None);
        assert_eq!(raw.store_state().expect("read"), None);
        assert!(tracked.bind_epoch(3).is_err());
        tracked
            .adopt(3, tracked.recompute().expect("digest"))
            .expect("adopt");
        let mut b = Batch::default();
        put(&mut b, b"Ia", b"2");
        tracked.apply(&b).expect("apply");
        assert_eq!(
            tracked.state().map(|s| s.digest),
            Some(raw.digest().expect("digest"))
        );
    }
}
