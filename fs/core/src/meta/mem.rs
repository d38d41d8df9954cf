//! The in-memory [`MetaStore`] of the crash tests and the [`CrashPoint`] that stops it: it
//! models the store contract of the parent module exactly (atomic batches, durability at
//! flush) and can produce the image a crash at any point leaves.

use super::{lock, Batch, MetaStore, ScanFn};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counts writes across the stores of one crash test and "crashes" at the N-th: from then on
/// every write and sync fails, as if the machine had stopped.
#[derive(Debug)]
pub struct CrashPoint {
    remaining: AtomicU64,
    crashed: AtomicBool,
}

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

/// In-memory [`MetaStore`] that models the contract above, for crash tests: it remembers which
/// batches were flushed and can produce the image a crash leaves.
#[derive(Default)]
pub struct MemStore {
    state: Mutex<MemState>,
}

#[derive(Default, Clone)]
struct MemState {
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    pending: Vec<Batch>,
    view: BTreeMap<Vec<u8>, Vec<u8>>,
    crash: Option<Arc<CrashPoint>>,
}

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
