//! Group commit: [`BufferedStore`] applies changes in memory and hands them to the inner store
//! as one batch per group, so a crash keeps or loses whole operations, never parts of one, and
//! (with its hand-over thread) no request waits while the engine writes a group.

use super::{lock, Batch, DigestStore, MetaStore, ScanFn};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

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

    fn close(&self) -> Result<()> {
        self.buffer.hand_over()?;
        self.buffer.inner.close()
    }

    fn digest_store(&self) -> Option<&DigestStore> {
        self.buffer.inner.digest_store()
    }
}
