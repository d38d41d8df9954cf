//! The metadata store: an ordered key-value store that only ever holds sealed records.
//!
//! [`MetaStore`] is the narrow seam to storage (sled in production, [`MemStore`] in crash
//! tests); [`Records`] on top of it seals every value with AES-256-GCM-SIV under the metadata key
//! with the record's key as associated data, so values cannot be read, forged, or moved to
//! another key. [`DigestStore`] keeps the digest of all records up to date with every batch and
//! binds the store to a superblock epoch (the store state record), so a rolled-back store is
//! refused at open and a replayed record is never absorbed into a fresh digest.
//!
//! Contract relied upon (sled 0.34 provides it): a batch is applied atomically; after a crash
//! the store holds a prefix of the applied batches that includes every batch applied before the
//! last completed [`MetaStore::flush`].

use crate::confined::Confined;
use crate::crypto::{FsKeys, MetaSealer};
use crate::format::records::{
    self, prefix, Chunk, Counters, Dirent, Inode, StoreState, Xattr, STATE_KEY,
};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// One atomic group of changes: `None` deletes the key.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// Whether the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Number of changes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    fn put_raw(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }
    /// Puts a raw value (test images).
    pub fn ops_push(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }
    /// Deletes `key`.
    pub fn delete(&mut self, key: &[u8]) {
        self.ops.push((key.to_vec(), None));
    }
    /// The changes in order.
    pub fn ops(&self) -> &[(Vec<u8>, Option<Vec<u8>>)] {
        &self.ops
    }
}

/// Visitor for scans: gets key and value, returns `false` to stop.
pub type ScanFn<'a> = dyn FnMut(&[u8], &[u8]) -> Result<bool> + 'a;

/// An ordered key-value store with atomic batches and an explicit durability point.
pub trait MetaStore: Send + Sync {
    /// The value of `key`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Visits keys starting with `prefix` in ascending order, starting after `after` if given.
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()>;
    /// Applies a batch atomically.
    fn apply(&self, batch: &Batch) -> Result<()>;
    /// Makes every applied batch durable.
    fn flush(&self) -> Result<()>;
    /// The layer that keeps the running digest and the store state record, if this store is
    /// (or sits on) one.
    fn digest_store(&self) -> Option<&DigestStore> {
        None
    }
}

/// The store engine: opens the [`MetaStore`] of a backing directory. This is the seam where
/// the engine (sled, in the `digimedfs-sled` crate) plugs into the core, which never names it.
pub trait MetaEngine: Send + Sync {
    /// Opens (or creates) the store in a backing directory's `meta/`, reached through `meta`.
    /// The engine must not follow links out of it (see docs/threat-model.md).
    fn open_in(&self, meta: &Confined, cache_bytes: u64) -> Result<Arc<dyn MetaStore>>;
    /// Opens (or creates) a store in a private directory `path` (fsck's snapshot of a mounted
    /// filesystem's store, test directories).
    fn open_path(&self, path: &Path, cache_bytes: u64) -> Result<Arc<dyn MetaStore>>;
}

#[cfg(any(test, feature = "testing"))]
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Counts writes across the stores of one crash test and "crashes" at the N-th: from then on
/// every write and sync fails, as if the machine had stopped.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub struct CrashPoint {
    remaining: AtomicU64,
    crashed: AtomicBool,
}

#[cfg(any(test, feature = "testing"))]
impl CrashPoint {
    /// Crashes at write number `n` (1-based); `u64::MAX` never crashes.
    pub fn new(n: u64) -> CrashPoint {
        CrashPoint {
            remaining: AtomicU64::new(n),
            crashed: AtomicBool::new(false),
        }
    }
    /// Counts one write; fails if this or an earlier write crashed.
    pub fn tick(&self, what: &str) -> Result<()> {
        self.check(what)?;
        if self.remaining.fetch_sub(1, Ordering::SeqCst) <= 1 {
            self.crashed.store(true, Ordering::SeqCst);
        }
        self.check(what)
    }
    /// Fails if the crash happened.
    pub fn check(&self, what: &str) -> Result<()> {
        if self.crashed.load(Ordering::SeqCst) {
            Err(Error::io(what, std::io::Error::other("simulated crash")))
        } else {
            Ok(())
        }
    }
    /// Whether the crash happened.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }
}

#[cfg(any(test, feature = "testing"))]
/// In-memory [`MetaStore`] that models the contract above, for crash tests: it remembers which
/// batches were flushed and can produce the image a crash leaves.
#[derive(Default)]
pub struct MemStore {
    state: Mutex<MemState>,
}

#[cfg(any(test, feature = "testing"))]
#[derive(Default, Clone)]
struct MemState {
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    pending: Vec<Batch>,
    view: BTreeMap<Vec<u8>, Vec<u8>>,
    crash: Option<Arc<CrashPoint>>,
}

#[cfg(any(test, feature = "testing"))]
impl MemStore {
    /// An empty store.
    pub fn new() -> MemStore {
        MemStore::default()
    }
    /// An empty store whose writes count towards `crash` and fail once it fired.
    pub fn with_crash_point(crash: Arc<CrashPoint>) -> MemStore {
        let s = MemStore::default();
        if let Ok(mut st) = s.state.lock() {
            st.crash = Some(crash);
        }
        s
    }
    /// The store a crash leaves: the durable records plus the first `keep` unflushed batches.
    pub fn crash_image(&self, keep: usize) -> MemStore {
        let st = lock(&self.state);
        let mut map = st.durable.clone();
        for b in st.pending.iter().take(keep) {
            apply_to(&mut map, b);
        }
        let out = MemStore::default();
        if let Ok(mut o) = out.state.lock() {
            o.durable = map.clone();
            o.view = map;
        }
        out
    }
    /// Number of applied but not flushed batches.
    pub fn pending_batches(&self) -> usize {
        lock(&self.state).pending.len()
    }
    /// All records (for tests that scan or tamper).
    pub fn dump(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        lock(&self.state).view.clone()
    }
    /// Replaces a record's raw value (tamper tests).
    pub fn poke(&self, key: &[u8], value: Option<Vec<u8>>) {
        let mut st = lock(&self.state);
        match value {
            Some(v) => {
                st.view.insert(key.to_vec(), v.clone());
                st.durable.insert(key.to_vec(), v);
            }
            None => {
                st.view.remove(key);
                st.durable.remove(key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(any(test, feature = "testing"))]
fn apply_to(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, b: &Batch) {
    for (k, v) in &b.ops {
        match v {
            Some(v) => {
                map.insert(k.clone(), v.clone());
            }
            None => {
                map.remove(k);
            }
        }
    }
}

#[cfg(any(test, feature = "testing"))]
impl MetaStore for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(lock(&self.state).view.get(key).cloned())
    }
    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        let items: Vec<(Vec<u8>, Vec<u8>)> = {
            let st = lock(&self.state);
            let range: Box<dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>> =
                match after {
                    Some(a) => Box::new(st.view.range::<[u8], _>((
                        std::ops::Bound::Excluded(a),
                        std::ops::Bound::Unbounded,
                    ))),
                    None => Box::new(st.view.range::<[u8], _>((
                        std::ops::Bound::Included(prefix),
                        std::ops::Bound::Unbounded,
                    ))),
                };
            range
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (k, v) in items {
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
    fn apply(&self, batch: &Batch) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(c) = &st.crash {
            c.tick("metadata batch")?;
        }
        apply_to(&mut st.view, batch);
        st.pending.push(batch.clone());
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(c) = &st.crash {
            c.check("metadata flush")?;
        }
        let pending = std::mem::take(&mut st.pending);
        for b in &pending {
            apply_to(&mut st.durable, b);
        }
        Ok(())
    }
}

/// A readable name for a record key in messages (type and inode, never a secret).
pub fn key_name(key: &[u8]) -> String {
    let ino = key
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(u64::from_be_bytes);
    match (key.first().copied(), ino) {
        (Some(prefix::INODE), Some(i)) => format!("inode record {i}"),
        (Some(prefix::CHUNK), Some(i)) => {
            let chunk = key
                .get(9..17)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            format!("block map of inode {i} chunk {}", chunk.unwrap_or(0))
        }
        (Some(prefix::INLINE), Some(i)) => format!("inline data of inode {i}"),
        (Some(prefix::XATTR), Some(i)) => format!("xattr of inode {i}"),
        (Some(prefix::ORPHAN), Some(i)) => format!("orphan record {i}"),
        (Some(prefix::RECLAIM), Some(i)) => format!("reclaim mark of inode {i}"),
        (Some(prefix::PREV_MARK), Some(i)) => format!("previous-version mark of inode {i}"),
        (Some(prefix::DIRENT), _) => format!(
            "directory entry {}",
            hex::encode(key.get(1..).unwrap_or(&[]))
        ),
        (Some(prefix::COUNTERS), _) => "counters record".to_string(),
        (Some(prefix::STATE), _) => "store state record".to_string(),
        (Some(prefix::INCARNATION), _) => match records::incarnation_of_key(key) {
            Some(k) => format!("salt record of incarnation {k}"),
            None => format!("record {}", hex::encode(key)),
        },
        _ => format!("record {}", hex::encode(key)),
    }
}

/// Typed, sealed access to the records of one filesystem.
pub struct Records {
    store: Arc<dyn MetaStore>,
    keys: Arc<FsKeys>,
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

    fn seal(&self, key: &[u8], plaintext: &[u8]) -> Vec<u8> {
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
}

fn xor_into(acc: &mut [u8; 32], m: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(m.iter()) {
        *a ^= b;
    }
}

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

    fn digest_store(&self) -> Option<&DigestStore> {
        Some(self)
    }
}

/// Group commit over another [`MetaStore`]: changes are applied in memory (atomically per
/// batch, visible to every reader at once) and reach the inner store as one batch at the next
/// [`MetaStore::flush`], or earlier when many accumulate. Each operation then costs a map
/// insert instead of a sled batch (which rolls sled's log buffer twice), and because the whole
/// group is one inner batch, a crash keeps or loses whole operations, never parts of one.
///
/// A group that fills up between flushes is handed over by the operation that filled it
/// ([`BufferedStore::new`]) or, for a mount, by a thread of the store's own
/// ([`BufferedStore::with_handover_thread`]), so that no request waits while sled loads and
/// rewrites the pages of a thousand keys; requests only wait (and hand over themselves) once
/// [`BACKLOG_GROUPS`] groups have piled up behind a hand-over.
pub struct BufferedStore {
    buffer: Arc<Buffer>,
    /// The hand-over thread, if this store has one; stopped and joined on drop.
    worker: Option<Worker>,
}

/// The buffered changes, shared with the hand-over thread.
struct Buffer {
    inner: Arc<dyn MetaStore>,
    /// Changes not yet handed to the inner store.
    pending: Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Changes being handed over right now; still visible to readers until applied.
    flushing: Mutex<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// Serializes hand-overs so groups reach the inner store in order.
    handover: Mutex<()>,
    limit: usize,
    /// Bytes (keys and values) in `pending`: a group is also handed over when it holds this
    /// many, so large inline records cannot pile up in memory.
    pending_bytes: std::sync::atomic::AtomicUsize,
}

/// Bytes of buffered changes that trigger a hand-over regardless of their number.
const GROUP_BYTES: usize = 2 << 20;

/// With a hand-over thread, the operation that finds this many full groups buffered hands
/// them over itself: the bound on memory (each group's superseded sled pages are kept until
/// it is in) when the thread falls behind (docs/performance.md, tuning table: `BACKLOG_GROUPS`).
pub const BACKLOG_GROUPS: usize = 2;

fn entry_bytes(k: &[u8], v: &Option<Vec<u8>>) -> usize {
    k.len() + v.as_ref().map_or(0, Vec::len)
}

/// How an operation's changes left the buffer's fill.
enum Fill {
    Room,
    /// A group is full: hand it over (in the background if there is a thread for it).
    Full,
    /// [`BACKLOG_GROUPS`] groups are full: the operation hands them over itself.
    Backlog,
}

struct Worker {
    wake: Arc<WorkerSignal>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct WorkerSignal {
    state: Mutex<WorkerState>,
    cv: std::sync::Condvar,
}

#[derive(Default)]
struct WorkerState {
    wanted: bool,
    stop: bool,
}

impl BufferedStore {
    /// Buffers up to `limit` changed keys; the operation that fills a group hands it over.
    /// Deterministic (no thread of its own): what the crash tests' images need.
    pub fn new(inner: Arc<dyn MetaStore>, limit: usize) -> BufferedStore {
        BufferedStore {
            buffer: Arc::new(Buffer::new(inner, limit)),
            worker: None,
        }
    }

    /// Like [`BufferedStore::new`], but full groups are handed over by a thread of the
    /// store's own while operations go on, up to [`BACKLOG_GROUPS`] groups. A hand-over that
    /// fails there is logged and its changes stay buffered: the next hand-over or
    /// [`MetaStore::flush`] retries them, and the flush reports the error.
    pub fn with_handover_thread(inner: Arc<dyn MetaStore>, limit: usize) -> Result<BufferedStore> {
        let buffer = Arc::new(Buffer::new(inner, limit));
        let wake = Arc::new(WorkerSignal::default());
        let thread = {
            let buffer = Arc::clone(&buffer);
            let wake = Arc::clone(&wake);
            std::thread::Builder::new()
                .name("digimedfs-meta".into())
                .spawn(move || handover_loop(&buffer, &wake))
                .map_err(|e| Error::io("metadata hand-over thread", e))?
        };
        Ok(BufferedStore {
            buffer,
            worker: Some(Worker {
                wake,
                thread: Some(thread),
            }),
        })
    }
}

fn handover_loop(buffer: &Buffer, wake: &WorkerSignal) {
    loop {
        {
            let mut state = lock(&wake.state);
            while !state.wanted && !state.stop {
                state = wake.cv.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
            if state.stop {
                return;
            }
            state.wanted = false;
        }
        if let Err(e) = buffer.hand_over() {
            tracing::error!(
                "metadata store: handing over buffered changes: {e}; kept for the next commit"
            );
        }
    }
}

impl Drop for BufferedStore {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.as_mut() {
            lock(&worker.wake.state).stop = true;
            worker.wake.cv.notify_all();
            if let Some(thread) = worker.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Buffer {
    fn new(inner: Arc<dyn MetaStore>, limit: usize) -> Buffer {
        Buffer {
            inner,
            pending: Mutex::new(BTreeMap::new()),
            flushing: Mutex::new(BTreeMap::new()),
            handover: Mutex::new(()),
            limit: limit.max(1),
            pending_bytes: std::sync::atomic::AtomicUsize::new(0),
        }
    }
    /// Hands the buffered changes to the inner store as one batch (not made durable).
    fn hand_over(&self) -> Result<()> {
        let _order = lock(&self.handover);
        let group = {
            let mut pending = lock(&self.pending);
            let mut flushing = lock(&self.flushing);
            *flushing = std::mem::take(&mut *pending);
            self.pending_bytes
                .store(0, std::sync::atomic::Ordering::Relaxed);
            flushing.clone()
        };
        if group.is_empty() {
            return Ok(());
        }
        let batch = Batch {
            ops: group.into_iter().collect(),
        };
        let res = self.inner.apply(&batch);
        if res.is_err() {
            // Keep the changes visible and retry with the next group.
            let mut pending = lock(&self.pending);
            let mut flushing = lock(&self.flushing);
            for (k, v) in std::mem::take(&mut *flushing) {
                pending.entry(k).or_insert(v);
            }
            let bytes = pending.iter().map(|(k, v)| entry_bytes(k, v)).sum();
            self.pending_bytes
                .store(bytes, std::sync::atomic::Ordering::Relaxed);
            return res;
        }
        lock(&self.flushing).clear();
        Ok(())
    }

    /// The buffered view of `[start, ..)` restricted to `prefix`, newest change first.
    fn overlay(&self, prefix: &[u8], after: Option<&[u8]>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        use std::ops::Bound;
        let range = |m: &BTreeMap<Vec<u8>, Option<Vec<u8>>>| -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
            let lower = match after {
                Some(a) => Bound::Excluded(a),
                None => Bound::Included(prefix),
            };
            m.range::<[u8], _>((lower, Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        // Both locks at once, as in `get`.
        let pending = lock(&self.pending);
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> =
            range(&lock(&self.flushing)).into_iter().collect();
        for (k, v) in range(&pending) {
            merged.insert(k, v);
        }
        drop(pending);
        merged.into_iter().collect()
    }

    /// Buffers `batch`'s changes; says whether a group is full now.
    fn add(&self, batch: &Batch) -> Fill {
        use std::sync::atomic::Ordering::Relaxed;
        let mut pending = lock(&self.pending);
        for (k, v) in &batch.ops {
            let added = entry_bytes(k, v);
            let removed = pending
                .insert(k.clone(), v.clone())
                .map_or(0, |old| entry_bytes(k, &old));
            if added >= removed {
                self.pending_bytes.fetch_add(added - removed, Relaxed);
            } else {
                self.pending_bytes.fetch_sub(removed - added, Relaxed);
            }
        }
        let keys = pending.len();
        let bytes = self.pending_bytes.load(Relaxed);
        if keys >= BACKLOG_GROUPS * self.limit || bytes >= BACKLOG_GROUPS * GROUP_BYTES {
            Fill::Backlog
        } else if keys >= self.limit || bytes >= GROUP_BYTES {
            Fill::Full
        } else {
            Fill::Room
        }
    }
}

impl MetaStore for BufferedStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let b = &self.buffer;
        {
            // Both locks at once (in hand-over order): a hand-over moves keys between the two
            // maps under both, and must not be seen half done.
            let pending = lock(&b.pending);
            if let Some(v) = pending.get(key) {
                return Ok(v.clone());
            }
            if let Some(v) = lock(&b.flushing).get(key) {
                return Ok(v.clone());
            }
        }
        b.inner.get(key)
    }

    fn scan(&self, prefix: &[u8], after: Option<&[u8]>, f: &mut ScanFn<'_>) -> Result<()> {
        let overlay = self.buffer.overlay(prefix, after);
        let mut next = 0usize;
        let mut stopped = false;
        self.buffer.inner.scan(prefix, after, &mut |k, v| {
            // Buffered keys before this one come first.
            while let Some((ok, ov)) = overlay.get(next) {
                if ok.as_slice() >= k {
                    break;
                }
                next += 1;
                if let Some(ov) = ov {
                    if !f(ok, ov)? {
                        stopped = true;
                        return Ok(false);
                    }
                }
            }
            if let Some((ok, ov)) = overlay.get(next) {
                if ok.as_slice() == k {
                    next += 1;
                    return match ov {
                        Some(ov) => {
                            let go = f(ok, ov)?;
                            stopped = !go;
                            Ok(go)
                        }
                        None => Ok(true),
                    };
                }
            }
            let go = f(k, v)?;
            stopped = !go;
            Ok(go)
        })?;
        if stopped {
            return Ok(());
        }
        for (ok, ov) in overlay.get(next..).unwrap_or_default() {
            if let Some(ov) = ov {
                if !f(ok, ov)? {
                    break;
                }
            }
        }
        Ok(())
    }

    fn apply(&self, batch: &Batch) -> Result<()> {
        match (self.buffer.add(batch), &self.worker) {
            (Fill::Room, _) => Ok(()),
            (Fill::Full, Some(worker)) => {
                let mut state = lock(&worker.wake.state);
                if !state.wanted {
                    state.wanted = true;
                    worker.wake.cv.notify_one();
                }
                Ok(())
            }
            (Fill::Full, None) | (Fill::Backlog, _) => self.buffer.hand_over(),
        }
    }

    fn flush(&self) -> Result<()> {
        self.buffer.hand_over()?;
        self.buffer.inner.flush()
    }

    fn digest_store(&self) -> Option<&DigestStore> {
        self.buffer.inner.digest_store()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::MasterKey;

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
