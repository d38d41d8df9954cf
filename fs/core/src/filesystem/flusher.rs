//! When buffered writes go to storage: the background flusher (the commit cycle every
//! [`FLUSH_INTERVAL`] and early writebacks past half the dirty-memory bound), the backup
//! request watcher, and the writer-side bound that keeps dirty memory limited.

use super::{backup, lock, Inner, NodeRef, FLUSH_INTERVAL};
use crate::Result;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What the background threads are asked to do.
#[derive(Default)]
pub(super) struct Signal {
    pub(super) stopped: bool,
    /// Buffered writes passed half the dirty-memory bound: the flusher should write back now.
    pub(super) writeback_wanted: bool,
}

/// Why the flusher woke.
enum FlusherWake {
    Stopped,
    WritebackWanted,
    Periodic,
}

/// Waits `interval` or until the filesystem is closed; returns false once closed.
fn wait_or_stop(inner: &Inner, interval: Duration) -> bool {
    let (m, cv) = &inner.signal;
    let (signal, _) = cv
        .wait_timeout_while(lock(m), interval, |s| !s.stopped)
        .unwrap_or_else(|p| p.into_inner());
    !signal.stopped
}

/// Waits until the filesystem is closed, a writer asks for an early writeback, or `interval`
/// has passed.
fn wait_for_flusher_work(inner: &Inner, interval: Duration) -> FlusherWake {
    let (m, cv) = &inner.signal;
    let (mut signal, _) = cv
        .wait_timeout_while(lock(m), interval, |s| !s.stopped && !s.writeback_wanted)
        .unwrap_or_else(|p| p.into_inner());
    if signal.stopped {
        FlusherWake::Stopped
    } else if std::mem::take(&mut signal.writeback_wanted) {
        FlusherWake::WritebackWanted
    } else {
        FlusherWake::Periodic
    }
}

/// The commit cycle every [`FLUSH_INTERVAL`], and writebacks that writers ask for when half
/// the dirty-memory bound is used, so that they rarely reach the bound and wait themselves.
pub(super) fn flusher(weak: std::sync::Weak<Inner>) {
    let mut next_cycle = std::time::Instant::now() + FLUSH_INTERVAL;
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let wait = next_cycle.saturating_duration_since(std::time::Instant::now());
        let done = match wait_for_flusher_work(&inner, wait) {
            FlusherWake::Stopped => return,
            FlusherWake::WritebackWanted => inner.writeback_over(inner.max_dirty / 2),
            FlusherWake::Periodic => {
                next_cycle = std::time::Instant::now() + FLUSH_INTERVAL;
                // A failed reclaim keeps its marks for the next cycle; the writeback runs
                // either way.
                let reclaimed = inner.reclaim_inline(false);
                inner.writeback_all().and(reclaimed)
            }
        };
        if let Err(e) = done {
            tracing::error!(error = %e, "background writeback failed");
        }
    }
}

/// Serves backup requests that backup jobs leave in the backing directory.
pub(super) fn backup_watcher(weak: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = weak.upgrade() else { return };
        if !wait_or_stop(&inner, backup::REQUEST_POLL) {
            return;
        }
        inner.serve_backup_request();
    }
}

impl Inner {
    /// Bytes of buffered writes (blocks and inline contents) not yet written back.
    pub(super) fn dirty_total(&self) -> usize {
        self.mem.dirty_bytes.load(Ordering::Relaxed)
            + self.mem.inline_dirty_bytes.load(Ordering::Relaxed)
    }

    /// After a write: past half the dirty-memory bound the flusher is asked to write back (in
    /// the background, while writers go on). A writer that finds dirty and in-flight bytes
    /// together past the bound waits for the running writeback, and writes back itself if
    /// dirty bytes alone are still past it: memory stays bounded while writes and writeback
    /// overlap.
    pub(crate) fn after_write(&self) -> Result<()> {
        if self.dirty_total() > self.max_dirty / 2 {
            let (m, cv) = &self.signal;
            let mut signal = lock(m);
            if !signal.writeback_wanted {
                signal.writeback_wanted = true;
                cv.notify_all();
            }
        }
        // In flight first, then dirty: a writeback moves bytes from dirty to in flight
        // (publishing the latter with Release), so this order never counts them twice; counting
        // them twice made a writer wait for a writeback it had just asked for.
        let in_flight = self.mem.in_flight_bytes.load(Ordering::Acquire);
        if self.dirty_total() + in_flight > self.max_dirty {
            self.writeback_over(self.max_dirty)
        } else {
            Ok(())
        }
    }

    /// Writes back every dirty node (not necessarily durable).
    pub(crate) fn writeback_dirty(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.writeback_nodes(self.dirty_nodes())
    }

    /// Writes back every dirty node if buffered writes still exceed `level` bytes once no
    /// other writeback runs. Writers that cross the bound while a writeback is under way wait
    /// for it and then find the bound met, instead of each running (and syncing the metadata
    /// store for) a writeback of the few blocks written meanwhile.
    pub(super) fn writeback_over(&self, level: usize) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        let wb = lock(&self.wb_lock);
        if self.dirty_total() <= level {
            return Ok(());
        }
        self.writeback_nodes_locked(&wb, self.dirty_nodes())
    }

    /// Nodes with changes not yet written back (and any node locked right now, which may).
    pub(super) fn dirty_nodes(&self) -> Vec<(u64, NodeRef)> {
        let nodes: Vec<(u64, NodeRef)> = lock(&self.cache.nodes)
            .iter()
            .map(|(i, n)| (*i, n.clone()))
            .collect();
        nodes
            .into_iter()
            .filter(|(_, n)| n.try_lock().map(|g| g.is_dirty()).unwrap_or(true))
            .collect()
    }

    /// Writes back every dirty node, runs a data barrier and flushes the metadata store; then
    /// removes objects whose deletion is durable.
    pub(crate) fn writeback_all(&self) -> Result<()> {
        if self.read_only {
            return Ok(());
        }
        self.writeback_dirty()?;
        self.barrier()?;
        // Every cycle ends durable: the metadata store has no flusher of its own, so this is the
        // commit interval (as ext4's 5 s journal commit).
        self.flush_and_delete_doomed()
    }

    pub(super) fn sync_all(&self) -> Result<()> {
        self.writeback_all()
    }

    /// Unmount: every pending reclaim done, then everything durable.
    pub(super) fn sync_all_final(&self) -> Result<()> {
        self.reclaim_inline(true)?;
        self.writeback_all()
    }
}
