//! The running digest of the store: [`DigestStore`] updates the digest of all records with
//! every batch and writes the store state record (epoch and digest) in the same batch, so the
//! record always describes exactly the records stored beside it.

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
/// Sits directly on the durable store (below [`BufferedStore`], so its work is done by the
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
        })
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
