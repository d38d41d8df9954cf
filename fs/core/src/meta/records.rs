//! Typed, sealed access to the records of one filesystem: every value is sealed under the
//! metadata key with its record key as associated data, so it cannot be read, forged or moved
//! to another key, and every commit passes the point gate of backup points.

use super::{key_name, Batch, DigestStore, MetaStore};
use crate::crypto::{FsKeys, MetaSealer};
use crate::format::records::{
    self, prefix, Chunk, Counters, Dirent, Inode, StoreState, Xattr, STATE_KEY,
};
use crate::{Error, Result};
use std::sync::Arc;

/// Typed, sealed access to the records of one filesystem.
pub struct Records {
    pub(super) store: Arc<dyn MetaStore>,
    pub(super) keys: Arc<FsKeys>,
    ad_prefix: Vec<u8>,
    /// Held shared by every commit; a backup point holds it exclusively while it dumps.
    gate: Arc<std::sync::RwLock<()>>,
}

/// A batch of typed changes, sealed as they are added.
pub struct RecordBatch<'a> {
    records: &'a Records,
    batch: Batch,
}

impl RecordBatch<'_> {
    /// Puts an inode record.
    pub fn put_inode(&mut self, inode: &Inode) -> Result<()> {
        let key = records::inode_key(inode.ino);
        let value = self.records.seal(&key, &inode.encode()?);
        self.batch.put_raw(key.to_vec(), value);
        Ok(())
    }
    /// Puts a directory entry of directory `dir`.
    pub fn put_dirent(&mut self, dir: u64, entry: &Dirent) -> Result<()> {
        let key = self.records.dirent_key(dir, &entry.name);
        let value = self.records.seal(&key, &entry.encode()?);
        self.batch.put_raw(key.to_vec(), value);
        Ok(())
    }
    /// Deletes a directory entry.
    pub fn delete_dirent(&mut self, dir: u64, name: &[u8]) {
        let key = self.records.dirent_key(dir, name);
        self.batch.delete(&key);
    }
    /// Puts an xattr.
    pub fn put_xattr(&mut self, ino: u64, x: &Xattr) -> Result<()> {
        let key = records::xattr_key(ino, &self.records.keys.names.xattr_key(ino, &x.name));
        let value = self.records.seal(&key, &x.encode()?);
        self.batch.put_raw(key.to_vec(), value);
        Ok(())
    }
    /// Deletes an xattr.
    pub fn delete_xattr(&mut self, ino: u64, name: &[u8]) {
        let key = records::xattr_key(ino, &self.records.keys.names.xattr_key(ino, name));
        self.batch.delete(&key);
    }
    /// Puts (or, if empty, deletes) a chunk record, and in the same batch its
    /// previous-version mark: present exactly while some entry carries a `prev`, so that a
    /// mount finds those chunks by scanning the marks only (see `Inner::resolve_prev`).
    pub fn put_chunk(&mut self, ino: u64, chunk: u64, c: &Chunk) {
        let key = records::chunk_key(ino, chunk);
        if c.entries.is_empty() {
            self.batch.delete(&key);
        } else {
            let value = self.records.seal(&key, &c.encode());
            self.batch.put_raw(key.to_vec(), value);
        }
        let mark = records::prev_mark_key(ino, chunk);
        if c.entries.values().any(|e| e.prev.is_some()) {
            let value = self.records.seal(&mark, &[]);
            self.batch.put_raw(mark.to_vec(), value);
        } else {
            self.batch.delete(&mark);
        }
    }
    /// Deletes a chunk record by its key (from a scan) together with its previous-version mark.
    pub fn delete_chunk_key(&mut self, key: &[u8]) {
        self.batch.delete(key);
        if let Some((ino, chunk)) = records::chunk_of_key(key) {
            self.batch.delete(&records::prev_mark_key(ino, chunk));
        }
    }
    /// Puts inline data.
    pub fn put_inline(&mut self, ino: u64, data: &[u8]) {
        let key = records::ino_prefix(prefix::INLINE, ino);
        let value = self.records.seal(&key, data);
        self.batch.put_raw(key.to_vec(), value);
    }
    /// Deletes any raw key (used with keys from scans).
    pub fn delete_key(&mut self, key: &[u8]) {
        self.batch.delete(key);
    }
    /// Marks inode `ino` as an orphan (unlinked while open), or clears the mark.
    pub fn set_orphan(&mut self, ino: u64, orphan: bool) {
        self.set_mark(prefix::ORPHAN, ino, orphan);
    }
    /// Marks deleted inode `ino`'s inline data record for reclaiming later, or clears the mark.
    pub fn set_reclaim(&mut self, ino: u64, pending: bool) {
        self.set_mark(prefix::RECLAIM, ino, pending);
    }
    fn set_mark(&mut self, kind: u8, ino: u64, set: bool) {
        let key = records::ino_prefix(kind, ino);
        if set {
            let value = self.records.seal(&key, &[]);
            self.batch.put_raw(key.to_vec(), value);
        } else {
            self.batch.delete(&key);
        }
    }
    /// Puts the counters.
    pub fn put_counters(&mut self, c: &Counters) {
        let value = self.records.seal(&records::COUNTERS_KEY, &c.encode());
        self.batch.put_raw(records::COUNTERS_KEY.to_vec(), value);
    }
    /// Puts the store state record. Only for stores without a [`DigestStore`] (fsck repairs,
    /// mkfs): a digest store writes the record itself and refuses it from above.
    pub fn put_state(&mut self, s: &StoreState) {
        let value = self.records.seal(&STATE_KEY, &s.encode());
        self.batch.put_raw(STATE_KEY.to_vec(), value);
    }
    /// Puts the salt record of incarnation `k`.
    pub fn put_incarnation(&mut self, k: u32, salt: &crate::crypto::incarnation::IncarnationSalt) {
        let key = records::incarnation_key(k);
        let value = self.records.seal(&key, &records::encode_incarnation(salt));
        self.batch.put_raw(key.to_vec(), value);
    }
    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }
    /// Applies the batch atomically.
    pub fn commit(self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let _gate = self.records.gate.read().unwrap_or_else(|p| p.into_inner());
        self.records.store.apply(&self.batch)
    }
}

impl Records {
    /// Typed access over `store` for the filesystem whose keys are `keys`.
    pub fn new(store: Arc<dyn MetaStore>, keys: Arc<FsKeys>, fs_uuid: &[u8; 16]) -> Records {
        let mut ad_prefix = crate::crypto::kdf::AD_RECORD.to_vec();
        ad_prefix.extend_from_slice(fs_uuid);
        Records {
            store,
            keys,
            ad_prefix,
            gate: Arc::new(std::sync::RwLock::new(())),
        }
    }

    /// Makes commits share `gate` (the object store's point gate), so a backup point that holds
    /// it exclusively sees no metadata change either.
    pub fn set_gate(&mut self, gate: Arc<std::sync::RwLock<()>>) {
        self.gate = gate;
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn MetaStore> {
        &self.store
    }

    /// A new empty batch.
    pub fn batch(&self) -> RecordBatch<'_> {
        RecordBatch {
            records: self,
            batch: Batch::default(),
        }
    }

    fn ad(&self, key: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(self.ad_prefix.len() + key.len());
        ad.extend_from_slice(&self.ad_prefix);
        ad.extend_from_slice(key);
        ad
    }

    pub(super) fn seal(&self, key: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.sealer().seal(&self.ad(key), plaintext)
    }

    fn sealer(&self) -> &MetaSealer {
        &self.keys.meta
    }

    /// Opens a sealed value stored under `key`.
    pub fn open(&self, key: &[u8], sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        self.sealer().open(&self.ad(key), sealed).ok_or_else(|| {
            Error::integrity(format!(
                "{}: record fails authentication (tampered, corrupted or moved)",
                key_name(key)
            ))
        })
    }

    fn get_open(&self, key: &[u8]) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        match self.store.get(key)? {
            Some(v) => Ok(Some(self.open(key, &v)?)),
            None => Ok(None),
        }
    }

    /// The pseudonym under which directory `dir`'s entries are stored.
    pub fn dir_pseudonym(&self, dir: u64) -> [u8; 8] {
        let mac = self.keys.names.entry_key(dir, b"");
        let mut out = [0u8; 8];
        out.copy_from_slice(&mac[..8]);
        out
    }

    fn dirent_key(&self, dir: u64, name: &[u8]) -> [u8; 25] {
        records::dirent_key(
            &self.dir_pseudonym(dir),
            &self.keys.names.entry_key(dir, name),
        )
    }

    /// The readdir cookie of entry `name` in `dir` (63 bits, never 0, 1 or 2).
    pub fn dirent_cookie_of_key(key: &[u8]) -> i64 {
        let mut b = [0u8; 8];
        if let Some(s) = key.get(9..17) {
            b.copy_from_slice(s);
        }
        let v = (u64::from_be_bytes(b) >> 1) as i64;
        v.max(3)
    }

    /// Reads inode `ino`.
    pub fn inode(&self, ino: u64) -> Result<Option<Inode>> {
        match self.get_open(&records::inode_key(ino))? {
            Some(v) => Ok(Some(Inode::decode(ino, &v)?)),
            None => Ok(None),
        }
    }

    /// Looks up `name` in directory `dir`.
    pub fn dirent(&self, dir: u64, name: &[u8]) -> Result<Option<Dirent>> {
        let key = self.dirent_key(dir, name);
        match self.get_open(&key)? {
            Some(v) => {
                let d = Dirent::decode(&v)?;
                if d.name != name {
                    return Err(Error::integrity(format!(
                        "directory entry in directory {dir}: name does not match its key"
                    )));
                }
                Ok(Some(d))
            }
            None => Ok(None),
        }
    }

    /// Entries of `dir` in key order after cookie `after` (exclusive); `f` returns false to stop.
    pub fn scan_dir(
        &self,
        dir: u64,
        after_cookie: Option<i64>,
        f: &mut dyn FnMut(i64, Dirent) -> Result<bool>,
    ) -> Result<()> {
        let pfx = records::dirent_prefix(&self.dir_pseudonym(dir));
        let start: Option<Vec<u8>> = after_cookie.map(|c| {
            // Smallest key whose cookie is > c: cookie = top 63 bits of the MAC.
            let mut k = pfx.to_vec();
            let v = ((c as u64) << 1) | 1;
            k.extend_from_slice(&v.to_be_bytes());
            k.extend_from_slice(&[0xff; 8]);
            k
        });
        self.store.scan(&pfx, start.as_deref(), &mut |k, v| {
            let plain = self.open(k, v)?;
            let d = Dirent::decode(&plain)?;
            f(Self::dirent_cookie_of_key(k), d)
        })
    }

    /// Whether directory `dir` has any entry.
    pub fn dir_is_empty(&self, dir: u64) -> Result<bool> {
        let pfx = records::dirent_prefix(&self.dir_pseudonym(dir));
        let mut empty = true;
        self.store.scan(&pfx, None, &mut |_, _| {
            empty = false;
            Ok(false)
        })?;
        Ok(empty)
    }

    /// Reads an xattr.
    pub fn xattr(&self, ino: u64, name: &[u8]) -> Result<Option<Xattr>> {
        let key = records::xattr_key(ino, &self.keys.names.xattr_key(ino, name));
        match self.get_open(&key)? {
            Some(v) => Ok(Some(Xattr::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// All xattrs of `ino`.
    pub fn xattrs(&self, ino: u64) -> Result<Vec<Xattr>> {
        let mut out = Vec::new();
        let pfx = records::ino_prefix(prefix::XATTR, ino);
        self.store.scan(&pfx, None, &mut |k, v| {
            out.push(Xattr::decode(&self.open(k, v)?)?);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Whether `ino` has at least one xattr.
    pub fn has_xattrs(&self, ino: u64) -> Result<bool> {
        let mut found = false;
        self.store.scan(
            &records::ino_prefix(prefix::XATTR, ino),
            None,
            &mut |_, _| {
                found = true;
                Ok(false)
            },
        )?;
        Ok(found)
    }

    /// Keys of all records of type `p` belonging to `ino` (for deletion).
    pub fn keys_of(&self, p: u8, ino: u64) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        self.store
            .scan(&records::ino_prefix(p, ino), None, &mut |k, _| {
                out.push(k.to_vec());
                Ok(true)
            })?;
        Ok(out)
    }

    /// Reads a chunk record (empty if absent).
    pub fn chunk(&self, ino: u64, chunk: u64) -> Result<Chunk> {
        match self.get_open(&records::chunk_key(ino, chunk))? {
            Some(v) => Chunk::decode(&v),
            None => Ok(Chunk::default()),
        }
    }

    /// All chunk records of `ino` at or after chunk `from`, in order.
    pub fn chunks_from(
        &self,
        ino: u64,
        from: u64,
        f: &mut dyn FnMut(u64, Chunk) -> Result<bool>,
    ) -> Result<()> {
        let pfx = records::ino_prefix(prefix::CHUNK, ino);
        let after = if from == 0 {
            None
        } else {
            Some(records::chunk_key(ino, from - 1).to_vec())
        };
        self.store.scan(&pfx, after.as_deref(), &mut |k, v| {
            let idx = k
                .get(9..17)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| Error::format(format!("{}: bad key", key_name(k))))?;
            let c = Chunk::decode(&self.open(k, v)?)?;
            f(idx, c)
        })
    }

    /// Reads inline data of `ino`.
    pub fn inline(&self, ino: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_open(&records::ino_prefix(prefix::INLINE, ino))?
            .map(|v| v.to_vec()))
    }

    /// All orphan inode numbers.
    pub fn orphans(&self) -> Result<Vec<u64>> {
        self.marked(prefix::ORPHAN)
    }

    /// Inode numbers with a reclaim mark (deleted; inline data record not yet removed).
    pub fn reclaims(&self) -> Result<Vec<u64>> {
        self.marked(prefix::RECLAIM)
    }

    fn marked(&self, kind: u8) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        self.store.scan(&[kind], None, &mut |k, v| {
            self.open(k, v)?;
            if let Some(b) = k.get(1..9).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                out.push(u64::from_be_bytes(b));
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// Reads the counters.
    pub fn counters(&self) -> Result<Option<Counters>> {
        match self.get_open(&records::COUNTERS_KEY)? {
            Some(v) => Ok(Some(Counters::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Reads the store state record (`None` in a store made before it existed).
    pub fn store_state(&self) -> Result<Option<StoreState>> {
        match self.get_open(&STATE_KEY)? {
            Some(v) => Ok(Some(StoreState::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Chunks with a previous-version mark, as `(ino, chunk)`.
    pub fn prev_marks(&self) -> Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        self.store.scan(&[prefix::PREV_MARK], None, &mut |k, v| {
            self.open(k, v)?;
            let c = records::chunk_of_key(k)
                .ok_or_else(|| Error::format(format!("{}: bad key", key_name(k))))?;
            out.push(c);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Whether incarnation `k` has a salt record (readable or not).
    pub fn has_incarnation(&self, k: u32) -> Result<bool> {
        Ok(self.store.get(&records::incarnation_key(k))?.is_some())
    }

    /// Reads the salt of incarnation `k` (`None` if it has no record).
    pub fn incarnation_salt(
        &self,
        k: u32,
    ) -> Result<Option<crate::crypto::incarnation::IncarnationSalt>> {
        match self.get_open(&records::incarnation_key(k))? {
            Some(v) => Ok(Some(records::decode_incarnation(&v)?)),
            None => Ok(None),
        }
    }

    /// The layer keeping the running digest under this store, if there is one.
    pub fn digest_store(&self) -> Option<&DigestStore> {
        self.store.digest_store()
    }

    /// Digest of the whole store: XOR of keyed MACs of every (key, sealed value) pair except
    /// the store state record, which carries the digest. Reads every record: O(records).
    pub fn digest(&self) -> Result<[u8; 32]> {
        let mut acc = [0u8; 32];
        self.store.scan(&[], None, &mut |k, v| {
            self.add_to_digest(&mut acc, k, v);
            Ok(true)
        })?;
        Ok(acc)
    }

    /// Adds one (key, sealed value) pair to a digest being computed (see [`Records::digest`]);
    /// the store state record is left out.
    pub fn add_to_digest(&self, acc: &mut [u8; 32], key: &[u8], sealed: &[u8]) {
        if key != STATE_KEY {
            xor_into(acc, &self.keys.digest.mac_parts(&[key, sealed]));
        }
    }

    /// Makes everything applied so far durable.
    pub fn flush(&self) -> Result<()> {
        self.store.flush()
    }

    /// Makes everything durable and closes the store ([`MetaStore::close`]).
    pub fn close(&self) -> Result<()> {
        self.store.close()
    }
}

pub(super) fn xor_into(acc: &mut [u8; 32], m: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(m.iter()) {
        *a ^= b;
    }
}
