//! FUSE over io_uring (Linux 6.14+): the kernel hands each request to a queue of the CPU the
//! caller runs on, and a thread pinned to that CPU answers it and fetches the next in one
//! `io_uring_enter`. On a VM whose idle vCPUs halt, that halves the cost of a round trip
//! against `/dev/fuse` for a caller that stays on its vCPU, where `/dev/fuse` wakes a thread
//! on the other vCPU for the request and again for the reply. A caller woken while the ring
//! thread still holds its vCPU is often moved to the other one, which costs a wake-up again
//! (docs/performance.md, tuning table: `pin_to_cpu`, `MAX_DELAY_PER_REQUEST`); so ring threads
//! wait as `SCHED_IDLE` while that does not starve them ([`super::idlewait`]).
//!
//! fuser mounts and runs the session as before: it negotiates `FUSE_OVER_IO_URING` at INIT
//! and keeps serving `/dev/fuse`, which the kernel still uses until every queue has an entry
//! and afterwards for FORGET and INTERRUPT. [`Uring::start`] then registers the queues. Each
//! request is decoded here from the kernel's wire format (the header and op structures of
//! `<linux/fuse.h>`, protocol 7.42+), passed to the same handler the fuser adapter calls
//! ([`DigimedFuse`]'s `op_*` methods) and its answer encoded into the entry's buffers.
//!
//! A ring thread answers each request itself, except large READs (readahead of a file read in
//! sequence): those go to helper threads, so that several disk reads and their decryption run
//! at once on every CPU, as they do with `/dev/fuse`'s several request threads; a helper hands
//! the answered entry back and wakes the ring thread through an eventfd that thread keeps a
//! read pending on, and the ring thread commits it.
//!
//! Nothing read from the kernel is trusted to be well formed: a short structure or a name
//! without its NUL is answered with EINVAL, never a panic. If the kernel refuses the
//! registration (for example because `enable_uring` was switched off meanwhile) it falls back
//! to `/dev/fuse` for the whole connection, and so does this mount.
//!
//! - `queue`: the registered entries, the queue threads that wait on the ring and commit
//!   answers, and the helper threads for large READs.
//! - `wire`: the kernel's wire format: request headers, opcodes, bounds-checked decoding and
//!   reply encoding.
//! - `dispatch`: one request in an entry → one handler call → one reply in the entry.

mod dispatch;
mod queue;
mod wire;

use super::adapter::DigimedFuse;
use super::idlewait::{self, IdleWait};
use digimedfs_core::{Error, Result};
use queue::{start_helpers, Queue};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{mpsc, Arc};
use std::thread;
use wire::Header;

/// The kernel's switch for FUSE over io_uring.
const ENABLE_PARAMETER: &str = "/sys/module/fuse/parameters/enable_uring";

/// Whether the running kernel lets a FUSE server use io_uring (the fuse module's
/// `enable_uring` parameter, off by default).
pub fn kernel_allows() -> bool {
    std::fs::read_to_string(ENABLE_PARAMETER)
        .map(|v| matches!(v.trim(), "Y" | "y" | "1"))
        .unwrap_or(false)
}

/// The running io_uring queues of one mount. Their threads end when the connection does, so
/// nothing joins them.
pub struct Uring {
    queues: usize,
}

impl Uring {
    /// Registers one queue per CPU on the FUSE connection of `device` (a duplicate of the
    /// session's `/dev/fuse` descriptor, after INIT negotiated `FUSE_OVER_IO_URING`), each
    /// served by a thread pinned to its CPU. `payload` is the size of each entry's data
    /// buffer: at least the larger of the negotiated `max_write` and `max_pages` pages.
    ///
    /// Returns once every queue's thread runs and has handed its entries to the kernel, so
    /// that a mount reported ready is served by all its queues.
    pub fn start(device: OwnedFd, handlers: DigimedFuse, payload: usize) -> Result<Uring> {
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        let idle_allowed = idlewait::allowed();
        if !idle_allowed {
            tracing::info!(
                "io_uring: ring threads cannot wait as SCHED_IDLE here (no CAP_SYS_NICE and \
                 RLIMIT_NICE below 20, or no /proc/thread-self/schedstat): callers may move \
                 between CPUs"
            );
        }
        let device = Arc::new(device);
        let helpers = start_helpers((2 * cpus).max(4), &handlers)?;
        let (registered_tx, registered) = mpsc::channel();
        for qid in 0..cpus {
            let queue = Queue::new(qid, payload, helpers.clone())
                .map_err(|e| Error::io(format!("io_uring queue {qid}"), e))?;
            let device = Arc::clone(&device);
            let handlers = handlers.clone();
            let registered = registered_tx.clone();
            thread::Builder::new()
                .name(format!("digimedfs-ring-{qid}"))
                .spawn(move || {
                    let idle = IdleWait::new(idle_allowed);
                    queue.serve(device.as_raw_fd(), &handlers, registered, idle)
                })
                .map_err(|e| Error::io(format!("io_uring queue {qid} thread"), e))?;
        }
        drop(registered_tx);
        // The helpers end once every queue has ended and dropped its sender.
        drop(helpers);
        for _ in 0..cpus {
            match registered.recv() {
                Ok(Ok(())) => {}
                Ok(Err((qid, e))) => return Err(Error::io(format!("io_uring queue {qid}"), e)),
                Err(_) => {
                    return Err(Error::io(
                        "io_uring queues",
                        std::io::Error::other("a queue thread ended before registering"),
                    ))
                }
            }
        }
        Ok(Uring { queues: cpus })
    }

    /// Number of queues.
    pub fn queues(&self) -> usize {
        self.queues
    }
}

/// One registered entry: the kernel writes each request into its buffers and reads the reply
/// from them, so they stay at one address (boxed) for the life of the queue, also while a
/// helper holds the entry.
struct Entry {
    header: Box<Header>,
    payload: Vec<u8>,
    iov: Box<[libc::iovec; 2]>,
}

// SAFETY: the raw pointers in `iov` point into the entry's own boxed buffers, which move with
// it; the queue (and with it every entry) is used by one thread at a time.
unsafe impl Send for Entry {}
