//! The cache of loaded inodes (nodes), open handles, attributes and atime: every operation
//! reaches an inode through [`Inner::node`], so each inode has one node and one lock.

use super::{
    ensure_live, lock, posix, AtimeMode, Attr, FileKind, Handle, Inner, Node, NodeRef, NODE_CACHE,
    RELATIME_MAX_AGE,
};
use crate::format::records::{Inode, Storage, Timestamp};
use crate::Result;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

impl Inner {
    /// The time the daemon stamps on inodes: the kernel's coarse clock (one tick resolution).
    /// The kernel stamps the times it keeps under FUSE_WRITEBACK_CACHE (c/mtime on write,
    /// ctime on link and unlink) from that clock too, unless someone looked at the inode's
    /// times since (multigrain timestamps, Linux 6.13+, then give a fine time); a finer daemon
    /// clock made a later change carry an earlier time than one the kernel had just stamped
    /// (xfstests generic/423). The reverse, a kernel fine time followed within a tick by a
    /// daemon change, can still order the two the wrong way round.
    pub(crate) fn now() -> Timestamp {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec through the valid pointer it is given.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
        match u32::try_from(ts.tv_nsec) {
            Ok(nanos) if rc == 0 && nanos < 1_000_000_000 => Timestamp {
                secs: ts.tv_sec,
                nanos,
            },
            _ => Timestamp::now(),
        }
    }

    /// Records a read of `n` (a file's data, or a directory's entries) in its atime as the
    /// mount's atime mode says, the way Linux's `touch_atime` does: under `relatime` only when
    /// atime is not later than mtime or ctime or is a day old, under `strictatime` always,
    /// under `noatime` (and `nodiratime` for directories) or read-only never. Cheap: the node
    /// is only marked dirty and goes to the store with the next writeback (the 5 s flusher,
    /// fsync, unmount), never from here. Returns whether atime changed.
    pub(crate) fn touch_atime(&self, n: &mut Node) -> bool {
        if self.read_only || n.purged {
            return false;
        }
        let i = &n.inode;
        if i.kind == FileKind::Dir && !self.diratime {
            return false;
        }
        let now = Inner::now();
        let due = match self.atime {
            AtimeMode::Never => false,
            AtimeMode::Strict => true,
            AtimeMode::Relatime => {
                i.atime <= i.mtime
                    || i.atime <= i.ctime
                    || now.secs.saturating_sub(i.atime.secs) >= RELATIME_MAX_AGE
            }
        };
        if !due || i.atime == now {
            return false;
        }
        n.inode.atime = now;
        n.attr_dirty = true;
        true
    }

    pub(crate) fn check_writable(&self, op: &str) -> Result<()> {
        if self.read_only {
            Err(posix(libc::EROFS, format!("{op}: read-only filesystem")))
        } else if let Some(e) = self.mount.backing.as_ref().and_then(|b| b.fenced_error(op)) {
            Err(e)
        } else {
            Ok(())
        }
    }

    /// The loaded node of `ino`, loading it from the store if needed.
    pub(crate) fn node(&self, ino: u64) -> Result<NodeRef> {
        if let Some(n) = lock(&self.cache.nodes).get(&ino) {
            self.cache.node_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(n.clone());
        }
        self.cache.node_misses.fetch_add(1, Ordering::Relaxed);
        let inode = self
            .records
            .inode(ino)?
            .ok_or_else(|| posix(libc::ENOENT, format!("inode {ino}: no such inode")))?;
        Ok(self.insert_node(inode, false))
    }

    /// Caches the node of `inode`; `created` says it was just created (so it has no xattrs).
    pub(crate) fn insert_node(&self, inode: Inode, created: bool) -> NodeRef {
        let ino = inode.ino;
        let mut nodes = lock(&self.cache.nodes);
        if let Some(n) = nodes.get(&ino) {
            return n.clone();
        }
        if nodes.len() >= self.cache.node_trim_at.load(Ordering::Relaxed) {
            nodes.retain(|_, n| {
                if Arc::strong_count(n) > 1 {
                    return true;
                }
                match n.try_lock() {
                    Ok(g) => g.is_dirty() || g.open_count > 0,
                    Err(_) => true,
                }
            });
            // Dirty and open nodes stay. Until the cache has grown by a quarter again, do not
            // trim: with thousands of dirty nodes (access times of a tree being read, waiting
            // for the 5 s writeback) every insert rescanned them all, 7% of the daemon's time
            // reading the benchmark tree.
            self.cache.node_trim_at.store(
                nodes.len().max(NODE_CACHE) + NODE_CACHE / 4,
                Ordering::Relaxed,
            );
        }
        let node = Arc::new(Mutex::new(Node {
            inode,
            attr_dirty: false,
            open_count: 0,
            inline: None,
            inline_dirty: false,
            inline_charge: 0,
            dirty: BTreeMap::new(),
            purged: false,
            xattrs_absent: created,
            in_flight: None,
        }));
        nodes.insert(ino, node.clone());
        node
    }

    pub(crate) fn forget_node(&self, ino: u64) {
        lock(&self.cache.nodes).remove(&ino);
    }

    /// Registers an open handle of `node`; fails if the inode was deleted meanwhile (its
    /// last name went while the caller was on its way here).
    pub(crate) fn new_handle(&self, node: &NodeRef, ino: u64) -> Result<u64> {
        {
            let mut n = lock(node);
            ensure_live(&n, "open")?;
            n.open_count += 1;
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.handles).insert(fh, Handle { ino });
        Ok(fh)
    }

    pub(crate) fn attr_of(&self, i: &Inode) -> Attr {
        let bs = self.block_size;
        let blocks = match i.storage {
            Storage::Object(_) => i.size.div_ceil(bs) * (bs / 512),
            Storage::Inline => i.size.div_ceil(512),
            Storage::None => 0,
        };
        let size = if i.kind == FileKind::Symlink {
            i.target.len() as u64
        } else {
            i.size
        };
        Attr {
            ino: i.ino,
            size,
            blocks,
            atime: i.atime.to_system(),
            mtime: i.mtime.to_system(),
            ctime: i.ctime.to_system(),
            crtime: i.crtime.to_system(),
            kind: i.kind,
            perm: i.perm,
            nlink: i.nlink,
            uid: i.uid,
            gid: i.gid,
            rdev: i.rdev,
            blksize: bs as u32,
            generation: i.generation,
        }
    }

    pub(super) fn release_node(&self, ino: u64) -> Result<()> {
        let node = self.node(ino)?;
        let purge = {
            let mut n = lock(&node);
            n.open_count = n.open_count.saturating_sub(1);
            if n.open_count == 0 && !n.inline_dirty {
                // Stored: keep memory bounded by not caching contents of closed files.
                n.inline = None;
            }
            n.open_count == 0 && n.inode.nlink == 0 && !n.purged
        };
        if purge {
            let _ns = lock(&self.ns_lock);
            let _wb = lock(&self.wb_lock);
            let mut n = lock(&node);
            if n.open_count == 0 && n.inode.nlink == 0 && !n.purged {
                self.drop_dirty(&mut n);
                n.purged = true;
                let inode = n.inode.clone();
                drop(n);
                self.purge_inode(&inode)?;
                self.forget_node(ino);
            }
        }
        Ok(())
    }

    /// Sets a node's inline-dirty flag and recounts its unstored inline bytes (call it again
    /// after changing dirty inline contents).
    pub(crate) fn set_inline_dirty(&self, n: &mut Node, dirty: bool) {
        n.inline_dirty = dirty;
        let charge = if dirty {
            n.inline.as_ref().map_or(0, Vec::len).max(512)
        } else {
            0
        };
        if charge >= n.inline_charge {
            self.mem
                .inline_dirty_bytes
                .fetch_add(charge - n.inline_charge, Ordering::Relaxed);
        } else {
            self.mem
                .inline_dirty_bytes
                .fetch_sub(n.inline_charge - charge, Ordering::Relaxed);
        }
        n.inline_charge = charge;
    }

    pub(crate) fn drop_dirty(&self, n: &mut Node) {
        let bytes = n.dirty.len() * self.block_size as usize;
        n.dirty.clear();
        self.mem.dirty_bytes.fetch_sub(
            bytes.min(self.mem.dirty_bytes.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        self.set_inline_dirty(n, false);
        n.attr_dirty = false;
    }
}
