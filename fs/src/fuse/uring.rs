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

use super::adapter::{DigimedFuse, OpResult, XattrReply, TTL};
use super::idlewait::{self, IdleWait};
use digimedfs_core::filesystem::{Attr, Ctx, DirEntry, FileKind, SetAttr, TimeSet};
use digimedfs_core::{Error, Result};
use fuser::{Errno, FopenFlags};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The kernel's switch for FUSE over io_uring.
const ENABLE_PARAMETER: &str = "/sys/module/fuse/parameters/enable_uring";

/// Entries registered per queue: requests the kernel can hand a queue before one is answered.
/// One thread serves a queue, so more only buffer; a few let background writeback and
/// readahead queue up behind a request in service.
const QUEUE_DEPTH: usize = 4;

/// READs of at least this many bytes go to the helper threads. Only readahead of a file read
/// in sequence asks for this much at once; a small read is answered sooner by the ring thread
/// than by a hand-over and a wake-up.
const HELPER_READ_MIN: u32 = 64 * 1024;

/// `user_data` of the eventfd read by which helpers wake a ring thread; entry indices are
/// below [`QUEUE_DEPTH`].
const WAKE: u64 = u64::MAX;

/// `FUSE_IO_URING_CMD_REGISTER` and `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// Sizes of `struct fuse_uring_req_header`'s parts and of `fuse_out_header`.
const IN_OUT_SIZE: usize = 128;
const OP_IN_SIZE: usize = 128;
const OUT_HEADER_SIZE: usize = 16;

/// Whether the running kernel lets a FUSE server use io_uring (the fuse module's
/// `enable_uring` parameter, off by default).
pub fn kernel_allows() -> bool {
    std::fs::read_to_string(ENABLE_PARAMETER)
        .map(|v| matches!(v.trim(), "Y" | "y" | "1"))
        .unwrap_or(false)
}

/// How a queue's thread tells [`Uring::start`] that its entries are registered, or which
/// queue failed and why.
type RegisteredTx = std::sync::mpsc::Sender<std::result::Result<(), (usize, std::io::Error)>>;

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

/// `struct fuse_uring_req_header`: the request's `fuse_in_header` (and then the reply's
/// `fuse_out_header`), the op's fixed-size arguments, and `fuse_uring_ent_in_out`.
#[repr(C, align(8))]
struct Header {
    in_out: [u8; IN_OUT_SIZE],
    op_in: [u8; OP_IN_SIZE],
    ent: [u8; 32],
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

/// A large READ handed to a helper: the entry (`k` of its queue) with the request in it, and
/// where to return it answered.
struct Job {
    k: usize,
    commit_id: u64,
    entry: Entry,
    back: Arc<Answered>,
}

/// Entries that helpers answered, waiting for their queue's thread to commit them; `wake` is
/// the eventfd that thread keeps a read pending on.
struct Answered {
    entries: Mutex<Vec<(usize, u64, Entry)>>,
    wake: OwnedFd,
}

impl Answered {
    fn new() -> std::io::Result<Answered> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor that
        // nothing else owns.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nothing else.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Answered {
            entries: Mutex::new(Vec::new()),
            wake,
        })
    }

    /// Returns an answered entry and wakes its queue's thread. The entry is queued before the
    /// eventfd is written, so a thread that drains the queue on the read's completion finds
    /// it, or finds the eventfd written again and drains once more.
    fn hand_back(&self, k: usize, commit_id: u64, entry: Entry) {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((k, commit_id, entry));
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to a descriptor this owns.
        let rc = unsafe { libc::write(self.wake.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if rc != one.len() as isize {
            tracing::error!(
                "io_uring helper: waking the ring thread failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    fn take(&self) -> Vec<(usize, u64, Entry)> {
        std::mem::take(&mut *self.entries.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Starts `n` helper threads that answer the requests sent to the returned sender; they end
/// when every clone of it is dropped.
fn start_helpers(n: usize, handlers: &DigimedFuse) -> Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..n {
        let rx = Arc::clone(&rx);
        let handlers = handlers.clone();
        thread::Builder::new()
            .name(format!("digimedfs-read-{i}"))
            .spawn(move || {
                let mut out = Vec::new();
                loop {
                    // One helper waits in recv while the others wait for the lock.
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(mut job) = job else { return };
                    answer_request(&mut job.entry, &handlers, &mut out);
                    job.back.hand_back(job.k, job.commit_id, job.entry);
                }
            })
            .map_err(|e| Error::io(format!("io_uring helper thread {i}"), e))?;
    }
    Ok(tx)
}

/// Whether the request in `header` is a READ large enough for a helper.
fn wants_helper(header: &Header) -> bool {
    ne_u32(&header.in_out, 4) == Some(op::READ)
        && ne_u32(&header.op_in, 16).is_some_and(|size| size >= HELPER_READ_MIN)
}

struct Queue {
    qid: usize,
    ring: IoUring<squeue::Entry128, cqueue::Entry32>,
    /// The registered entries; `None` while a helper holds one.
    entries: Vec<Option<Entry>>,
    /// Where helpers send large READs; `None` once that failed (then all is answered here).
    helpers: Option<mpsc::Sender<Job>>,
    answered: Arc<Answered>,
    /// The eventfd read's buffer. Leaked (8 bytes a queue) so that it outlives a read still
    /// pending when the ring is torn down.
    wake_buf: &'static mut u64,
    /// Reply bodies are built here before they are copied into their entry; kept across
    /// requests so serving one allocates nothing here.
    out: Vec<u8>,
}

impl Queue {
    fn new(qid: usize, payload: usize, helpers: mpsc::Sender<Job>) -> std::io::Result<Queue> {
        let ring = IoUring::builder().build((QUEUE_DEPTH * 2) as u32)?;
        let mut entries = Vec::with_capacity(QUEUE_DEPTH);
        for _ in 0..QUEUE_DEPTH {
            let mut header = Box::new(Header {
                in_out: [0; IN_OUT_SIZE],
                op_in: [0; OP_IN_SIZE],
                ent: [0; 32],
            });
            let mut payload = vec![0u8; payload];
            let iov = Box::new([
                libc::iovec {
                    iov_base: (&mut *header as *mut Header).cast(),
                    iov_len: std::mem::size_of::<Header>(),
                },
                libc::iovec {
                    iov_base: payload.as_mut_ptr().cast(),
                    iov_len: payload.len(),
                },
            ]);
            entries.push(Some(Entry {
                header,
                payload,
                iov,
            }));
        }
        Ok(Queue {
            qid,
            ring,
            entries,
            helpers: Some(helpers),
            answered: Arc::new(Answered::new()?),
            wake_buf: Box::leak(Box::new(0)),
            out: Vec::new(),
        })
    }

    /// The queue's thread: pins itself, registers the entries (telling `registered` how that
    /// went), then answers requests until the connection ends, waiting for them as
    /// `SCHED_IDLE` when `idle` says so (see [`idlewait`]).
    fn serve(
        mut self,
        device: i32,
        handlers: &DigimedFuse,
        registered: RegisteredTx,
        mut idle: IdleWait,
    ) {
        pin_to_cpu(self.qid);
        let mut run_delay = idlewait::RunDelay::of_this_thread();
        // Completions, collected here; kept across requests so serving one allocates nothing.
        let mut done: Vec<(u64, i32)> = Vec::with_capacity(QUEUE_DEPTH * 2);
        let registering = (0..self.entries.len())
            .try_for_each(|k| self.push(device, CMD_REGISTER, k, 0))
            .and_then(|()| self.arm_wake())
            .and_then(|()| self.ring.submit().map(drop));
        // The kernel takes or refuses each entry while the submission is processed, so a
        // refusal is already among the completions; a taken entry completes when a request
        // arrives, which may be already too, and is served below.
        done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let refused = done
            .iter()
            .find(|(_, res)| *res < 0)
            .map(|(_, res)| std::io::Error::from_raw_os_error(-res));
        if let Err(e) = registering.and_then(|()| refused.map_or(Ok(()), Err)) {
            tracing::error!("io_uring queue {}: registering: {e}", self.qid);
            let _ = registered.send(Err((self.qid, e)));
            return;
        }
        let _ = registered.send(Ok(()));
        drop(registered);
        // Each pass submits the answers of the previous one and waits for the next request in
        // one io_uring_enter: the caller is woken while this thread goes to sleep, not later.
        loop {
            if done.is_empty() {
                let idle_now = idle.idle_now(Instant::now);
                if idle_now {
                    idlewait::set_policy(libc::SCHED_IDLE);
                }
                let waited = self.ring.submit_and_wait(1);
                if idle_now && !idlewait::set_policy(libc::SCHED_OTHER) {
                    // The probe said this works; if it stops working, stay as we are rather
                    // than keep dropping to SCHED_IDLE.
                    tracing::warn!(
                        "io_uring queue {}: leaving SCHED_IDLE failed: {}",
                        self.qid,
                        std::io::Error::last_os_error()
                    );
                    idle.disallow();
                }
                match waited {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => {
                        tracing::error!("io_uring queue {}: {e}", self.qid);
                        return;
                    }
                }
                done.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            }
            for &(k, res) in &done {
                if k == WAKE {
                    if let Err(e) = self.take_back_answered(device, res) {
                        tracing::error!("io_uring queue {}: committing: {e}", self.qid);
                        return;
                    }
                    continue;
                }
                if res < 0 {
                    // The connection is gone (unmount: ENOTCONN, or the kernel refused another
                    // queue's registration and fell back to /dev/fuse): nothing more will come.
                    let err = std::io::Error::from_raw_os_error(-res);
                    tracing::info!(
                        "io_uring queue {}: entry ended ({err}); queue stops",
                        self.qid
                    );
                    return;
                }
                let Some(slot) = usize::try_from(k)
                    .ok()
                    .and_then(|k| self.entries.get_mut(k))
                else {
                    continue;
                };
                let Some(entry) = slot.as_mut() else {
                    continue;
                };
                let commit_id = ne_u64(&entry.header.ent, 8).unwrap_or(0);
                if let (Some(helpers), true) = (&self.helpers, wants_helper(&entry.header)) {
                    if let Some(entry) = slot.take() {
                        let job = Job {
                            k: k as usize,
                            commit_id,
                            entry,
                            back: Arc::clone(&self.answered),
                        };
                        match helpers.send(job) {
                            Ok(()) => {
                                idle.streaming(Instant::now());
                                continue;
                            }
                            Err(mpsc::SendError(job)) => {
                                tracing::warn!(
                                    "io_uring queue {}: helpers gone; answering reads here",
                                    self.qid
                                );
                                self.helpers = None;
                                *slot = Some(job.entry);
                            }
                        }
                    }
                }
                let Some(entry) = slot.as_mut() else {
                    continue;
                };
                answer_request(entry, handlers, &mut self.out);
                idle.served(Instant::now, || run_delay.ns());
                if let Err(e) = self.push(device, CMD_COMMIT_AND_FETCH, k as usize, commit_id) {
                    tracing::error!("io_uring queue {}: committing: {e}", self.qid);
                    return;
                }
            }
            done.clear();
        }
    }

    /// Puts the entries helpers answered back in place and queues their commits, then queues
    /// the eventfd read again; `res` is the result of the read that woke this thread.
    fn take_back_answered(&mut self, device: i32, res: i32) -> std::io::Result<()> {
        if res < 0 && res != -libc::EINTR && res != -libc::EAGAIN {
            // Answered entries are still taken back below; only the wake-up is in doubt.
            tracing::warn!(
                "io_uring queue {}: helper wake-up read: {}",
                self.qid,
                std::io::Error::from_raw_os_error(-res)
            );
        }
        for (k, commit_id, entry) in self.answered.take() {
            if let Some(slot) = self.entries.get_mut(k) {
                *slot = Some(entry);
                self.push(device, CMD_COMMIT_AND_FETCH, k, commit_id)?;
            }
        }
        self.arm_wake()
    }

    /// Queues a read of the helpers' eventfd, which completes when one hands an entry back.
    fn arm_wake(&mut self) -> std::io::Result<()> {
        let buf: *mut u64 = &mut *self.wake_buf;
        let sqe = opcode::Read::new(types::Fd(self.answered.wake.as_raw_fd()), buf.cast(), 8)
            .build()
            .user_data(WAKE);
        // SAFETY: the buffer is never freed, and the eventfd stays open while `answered` (which
        // the queue holds) does; the ring, torn down with the queue, cancels the read.
        unsafe { self.ring.submission().push(&sqe.into()) }
            .map_err(|_| std::io::Error::other("submission queue full"))
    }

    /// Queues one command for entry `k`; the next `submit_and_wait` submits it.
    fn push(&mut self, device: i32, cmd_op: u32, k: usize, commit_id: u64) -> std::io::Result<()> {
        let Some(entry) = self.entries.get(k).and_then(Option::as_ref) else {
            return Ok(());
        };
        // struct fuse_uring_cmd_req: flags, commit_id, qid, padding.
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_ne_bytes());
        cmd[16..18].copy_from_slice(&(self.qid as u16).to_ne_bytes());
        let sqe = opcode::UringCmd80::new(types::Fd(device), cmd_op)
            .cmd(cmd)
            .addr(Some(entry.iov.as_ptr() as u64))
            .build()
            .user_data(k as u64);
        let sqe = with_len(sqe, 2);
        // SAFETY: the iovecs and the buffers they describe live in `self.entries`, which the
        // queue owns until its thread ends; the kernel stops using them when the command
        // completes, which is before the thread ends (it only ends after a completion says
        // the connection is gone) or at process exit.
        unsafe { self.ring.submission().push(&sqe) }
            .map_err(|_| std::io::Error::other("submission queue full"))
    }
}

/// `sqe` with its `len` field set: io-uring's builder for `IORING_OP_URING_CMD` has no setter
/// for it, and FUSE wants the number of iovecs there.
fn with_len(sqe: squeue::Entry128, len: u32) -> squeue::Entry128 {
    // Offset of `len` in struct io_uring_sqe: opcode, flags, ioprio, fd, off, addr, len.
    const LEN_OFFSET: usize = 24;
    // SAFETY: `squeue::Entry128` is `#[repr(C)]`: a 64-byte `io_uring_sqe` followed by the
    // 64-byte command tail, so it is exactly 128 plain bytes with no invalid bit patterns.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(sqe) };
    raw[LEN_OFFSET..LEN_OFFSET + 4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: as above; only the `len` field changed.
    unsafe { std::mem::transmute(raw) }
}

/// Pins the calling thread to `cpu`; a failure only costs speed, so it is logged.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it, and
    // sched_setaffinity reads it for the calling thread (pid 0).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::warn!(
            "io_uring queue {cpu}: pinning to its CPU failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Decodes the request in `entry`, runs it and writes the reply into `entry`; `out` is scratch
/// space for the reply body.
fn answer_request(entry: &mut Entry, handlers: &DigimedFuse, out: &mut Vec<u8>) {
    let h = &entry.header;
    let unique = ne_u64(&h.in_out, 8).unwrap_or(0);
    let opcode = ne_u32(&h.in_out, 4).unwrap_or(0);
    let payload_len = ne_u32(&h.ent, 16)
        .map_or(0, |n| n as usize)
        .min(entry.payload.len());
    let req = Request {
        nodeid: ne_u64(&h.in_out, 16).unwrap_or(0),
        ctx: Ctx {
            uid: ne_u32(&h.in_out, 24).unwrap_or(u32::MAX),
            gid: ne_u32(&h.in_out, 28).unwrap_or(u32::MAX),
            pid: ne_u32(&h.in_out, 32).unwrap_or(0),
        },
        op_in: h.op_in,
    };
    out.clear();
    let result = dispatch(
        handlers,
        opcode,
        &req,
        entry.payload.get(..payload_len).unwrap_or(&[]),
        out,
    );
    let (error, body_len) = match result {
        Ok(data) => {
            // READ data comes back as its own buffer: copied once, into the entry.
            let body = data.as_deref().unwrap_or(out);
            match entry.payload.get_mut(..body.len()) {
                Some(dst) => {
                    dst.copy_from_slice(body);
                    (0i32, body.len())
                }
                None => (-libc::ERANGE, 0),
            }
        }
        Err(e) => (-e.code(), 0),
    };
    let h = &mut entry.header;
    h.in_out = [0; IN_OUT_SIZE];
    let total = (OUT_HEADER_SIZE + body_len) as u32;
    h.in_out[0..4].copy_from_slice(&total.to_ne_bytes());
    h.in_out[4..8].copy_from_slice(&error.to_ne_bytes());
    h.in_out[8..16].copy_from_slice(&unique.to_ne_bytes());
    h.ent[16..20].copy_from_slice(&(body_len as u32).to_ne_bytes());
}

/// What a request carries besides its payload.
struct Request {
    nodeid: u64,
    ctx: Ctx,
    op_in: [u8; OP_IN_SIZE],
}

impl Request {
    fn u32_at(&self, off: usize) -> OpResult<u32> {
        ne_u32(&self.op_in, off).ok_or(einval())
    }
    fn u64_at(&self, off: usize) -> OpResult<u64> {
        ne_u64(&self.op_in, off).ok_or(einval())
    }
}

fn einval() -> Errno {
    Errno::from_i32(libc::EINVAL)
}

fn ne_u32(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_ne_bytes)
}

fn ne_u64(b: &[u8], off: usize) -> Option<u64> {
    b.get(off..off + 8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_ne_bytes)
}

/// The NUL-terminated string at the start of `b` and what follows its NUL.
fn cstr(b: &[u8]) -> OpResult<(&[u8], &[u8])> {
    let end = b.iter().position(|&c| c == 0).ok_or(einval())?;
    let head = b.get(..end).ok_or(einval())?;
    Ok((head, b.get(end + 1..).unwrap_or(&[])))
}

/// FUSE opcodes served here (`enum fuse_opcode`).
mod op {
    pub const LOOKUP: u32 = 1;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const IOCTL: u32 = 39;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
}

/// `fuse_setattr_in.valid` bits.
mod fattr {
    pub const MODE: u32 = 1 << 0;
    pub const UID: u32 = 1 << 1;
    pub const GID: u32 = 1 << 2;
    pub const SIZE: u32 = 1 << 3;
    pub const ATIME: u32 = 1 << 4;
    pub const MTIME: u32 = 1 << 5;
    pub const FH: u32 = 1 << 6;
    pub const ATIME_NOW: u32 = 1 << 7;
    pub const MTIME_NOW: u32 = 1 << 8;
    pub const CTIME: u32 = 1 << 10;
}

/// `FUSE_WRITE_KILL_SUIDGID` in `fuse_write_in.write_flags`.
const WRITE_KILL_SUIDGID: u32 = 1 << 2;
/// `FUSE_FSYNC_FDATASYNC` in `fuse_fsync_in.fsync_flags`.
const FSYNC_FDATASYNC: u32 = 1;

/// Runs request `opcode`: its reply body is either returned (data the handler produced as
/// one buffer) or appended to `out`.
fn dispatch(
    h: &DigimedFuse,
    opcode: u32,
    r: &Request,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> OpResult<Option<Vec<u8>>> {
    let ino = r.nodeid;
    let ctx = &r.ctx;
    match opcode {
        op::LOOKUP => put_entry(out, &h.op_lookup(ctx, ino, cstr(payload)?.0)?),
        op::GETATTR => put_attr_out(out, &h.op_getattr(ino)?),
        op::SETATTR => put_attr_out(out, &h.op_setattr(ctx, ino, &setattr_in(r)?)?),
        op::READLINK => return h.op_readlink(ino).map(Some),
        op::SYMLINK => {
            let (name, rest) = cstr(payload)?;
            let (target, _) = cstr(rest)?;
            put_entry(out, &h.op_symlink(ctx, ino, name, target)?)
        }
        op::MKNOD => {
            let (mode, rdev, umask) = (r.u32_at(0)?, r.u32_at(4)?, r.u32_at(8)?);
            let name = cstr(payload)?.0;
            put_entry(out, &h.op_mknod(ctx, ino, name, mode, umask, rdev)?)
        }
        op::MKDIR => {
            let (mode, umask) = (r.u32_at(0)?, r.u32_at(4)?);
            put_entry(out, &h.op_mkdir(ctx, ino, cstr(payload)?.0, mode, umask)?)
        }
        op::UNLINK => h.op_unlink(ctx, ino, cstr(payload)?.0)?,
        op::RMDIR => h.op_rmdir(ctx, ino, cstr(payload)?.0)?,
        op::RENAME | op::RENAME2 => {
            let newdir = r.u64_at(0)?;
            let flags = if opcode == op::RENAME2 {
                r.u32_at(8)?
            } else {
                0
            };
            let (name, rest) = cstr(payload)?;
            let (newname, _) = cstr(rest)?;
            h.op_rename(ctx, ino, name, newdir, newname, flags)?
        }
        op::LINK => {
            let old = r.u64_at(0)?;
            put_entry(out, &h.op_link(ctx, old, ino, cstr(payload)?.0)?)
        }
        op::OPEN => {
            let (fh, flags) = h.op_open(ctx, ino, r.u32_at(0)? as i32)?;
            put_open_out(out, fh, flags)
        }
        op::CREATE => {
            let (flags, mode, umask) = (r.u32_at(0)? as i32, r.u32_at(4)?, r.u32_at(8)?);
            let name = cstr(payload)?.0;
            let (a, fh, open_flags) = h.op_create(ctx, ino, name, mode, umask, flags)?;
            put_entry(out, &a);
            put_open_out(out, fh, open_flags)
        }
        op::READ => {
            let (fh, offset, size) = (r.u64_at(0)?, r.u64_at(8)?, r.u32_at(16)?);
            let flags = r.u32_at(32)? as i32;
            return h.op_read(ino, fh, offset, size, flags).map(Some);
        }
        op::WRITE => {
            let (fh, offset, size) = (r.u64_at(0)?, r.u64_at(8)?, r.u32_at(16)? as usize);
            let kill = r.u32_at(20)? & WRITE_KILL_SUIDGID != 0;
            let data = payload.get(..size).ok_or(einval())?;
            let n = h.op_write(ctx, ino, fh, offset, data, kill)?;
            put_u32s(out, &[n, 0])
        }
        op::FLUSH => h.op_flush()?,
        op::RELEASE => h.op_release(ino, r.u64_at(0)?)?,
        op::FSYNC => {
            let datasync = r.u32_at(8)? & FSYNC_FDATASYNC != 0;
            h.op_fsync(ino, r.u64_at(0)?, datasync)?
        }
        op::OPENDIR => {
            let fh = h.op_opendir(ctx, ino, r.u32_at(0)? as i32)?;
            put_open_out(out, fh, FopenFlags::empty())
        }
        op::READDIR => {
            let (fh, offset, size) = (r.u64_at(0)?, r.u64_at(8)?, r.u32_at(16)? as usize);
            h.op_readdir(ino, fh, offset, |ent, next| {
                !put_dirent(out, size, ent, next)
            })?
        }
        op::READDIRPLUS => {
            let (fh, offset, size) = (r.u64_at(0)?, r.u64_at(8)?, r.u32_at(16)? as usize);
            h.op_readdirplus(ino, fh, offset, |ent, next, a| {
                !put_direntplus(out, size, ent, next, a)
            })?
        }
        op::RELEASEDIR => h.op_releasedir(ino, r.u64_at(0)?)?,
        op::FSYNCDIR => {
            let datasync = r.u32_at(8)? & FSYNC_FDATASYNC != 0;
            h.op_fsyncdir(ino, r.u64_at(0)?, datasync)?
        }
        op::STATFS => {
            let s = h.op_statfs(ino)?;
            for v in [s.blocks, s.bfree, s.bavail, s.files, s.ffree] {
                out.extend_from_slice(&v.to_ne_bytes());
            }
            put_u32s(out, &[s.bsize, s.namelen, s.frsize, 0, 0, 0, 0, 0, 0, 0])
        }
        op::SETXATTR => {
            let (size, flags) = (r.u32_at(0)? as usize, r.u32_at(4)? as i32);
            let (name, rest) = cstr(payload)?;
            let value = rest.get(..size).ok_or(einval())?;
            h.op_setxattr(ctx, ino, name, value, flags, 0)?
        }
        op::GETXATTR => {
            let size = r.u32_at(0)?;
            put_xattr(out, h.op_getxattr(ctx, ino, cstr(payload)?.0, size)?)
        }
        op::LISTXATTR => put_xattr(out, h.op_listxattr(ctx, ino, r.u32_at(0)?)?),
        op::REMOVEXATTR => h.op_removexattr(ctx, ino, cstr(payload)?.0)?,
        op::ACCESS => h.op_access(ctx, ino, r.u32_at(0)? as i32)?,
        op::FALLOCATE => {
            let (fh, offset, length) = (r.u64_at(0)?, r.u64_at(8)?, r.u64_at(16)?);
            let mode = r.u32_at(24)? as i32;
            h.op_fallocate(ctx, ino, fh, offset, length, mode)?
        }
        op::IOCTL => h.op_ioctl()?,
        op::LSEEK => {
            let (fh, offset, whence) = (r.u64_at(0)?, r.u64_at(8)? as i64, r.u32_at(16)? as i32);
            let pos = h.op_lseek(ino, fh, offset, whence)?;
            out.extend_from_slice(&pos.to_ne_bytes())
        }
        _ => return Err(Errno::ENOSYS),
    }
    Ok(None)
}

/// The core's view of a `fuse_setattr_in`.
fn setattr_in(r: &Request) -> OpResult<SetAttr> {
    let valid = r.u32_at(0)?;
    // The field decoded by `read` if `bit` is set in `valid`, else None.
    fn field<T>(valid: u32, bit: u32, read: impl FnOnce() -> OpResult<T>) -> OpResult<Option<T>> {
        if valid & bit != 0 {
            read().map(Some)
        } else {
            Ok(None)
        }
    }
    let time = |secs_at: usize, nsec_at: usize, now_bit: u32| -> OpResult<TimeSet> {
        if valid & now_bit != 0 {
            return Ok(TimeSet::Now);
        }
        let secs = r.u64_at(secs_at)? as i64;
        Ok(TimeSet::At(system_time(secs, r.u32_at(nsec_at)?)))
    };
    Ok(SetAttr {
        mode: field(valid, fattr::MODE, || Ok(r.u32_at(68)? & 0o7777))?,
        uid: field(valid, fattr::UID, || r.u32_at(76))?,
        gid: field(valid, fattr::GID, || r.u32_at(80))?,
        size: field(valid, fattr::SIZE, || r.u64_at(16))?,
        atime: field(valid, fattr::ATIME, || time(32, 56, fattr::ATIME_NOW))?,
        mtime: field(valid, fattr::MTIME, || time(40, 60, fattr::MTIME_NOW))?,
        ctime: field(valid, fattr::CTIME, || {
            Ok(system_time(r.u64_at(48)? as i64, r.u32_at(64)?))
        })?,
        fh: field(valid, fattr::FH, || r.u64_at(8))?,
    })
}

fn system_time(secs: i64, nsecs: u32) -> SystemTime {
    let nsecs = Duration::from_nanos(u64::from(nsecs.min(999_999_999)));
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nsecs
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nsecs
    }
}

/// Seconds and nanoseconds since the epoch, as `fuse_attr` carries them.
fn time_parts(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nanos) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nanos > 0 {
                secs -= 1;
                nanos = 1_000_000_000 - nanos;
            }
            (secs as u64, nanos)
        }
    }
}

fn type_bits(kind: FileKind) -> u32 {
    match kind {
        FileKind::File => libc::S_IFREG,
        FileKind::Dir => libc::S_IFDIR,
        FileKind::Symlink => libc::S_IFLNK,
        FileKind::Fifo => libc::S_IFIFO,
        FileKind::CharDev => libc::S_IFCHR,
        FileKind::BlockDev => libc::S_IFBLK,
        FileKind::Socket => libc::S_IFSOCK,
    }
}

fn put_u32s(out: &mut Vec<u8>, vs: &[u32]) {
    for v in vs {
        out.extend_from_slice(&v.to_ne_bytes());
    }
}

/// `struct fuse_attr` (88 bytes).
fn put_attr(out: &mut Vec<u8>, a: &Attr) {
    let (at, an) = time_parts(a.atime);
    let (mt, mn) = time_parts(a.mtime);
    let (ct, cn) = time_parts(a.ctime);
    for v in [a.ino, a.size, a.blocks, at, mt, ct] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    let mode = type_bits(a.kind) | u32::from(a.perm);
    put_u32s(
        out,
        &[
            an, mn, cn, mode, a.nlink, a.uid, a.gid, a.rdev, a.blksize, 0,
        ],
    );
}

/// `struct fuse_entry_out` (128 bytes); a node id of 0 is a negative entry.
fn put_entry(out: &mut Vec<u8>, a: &Attr) {
    let ttl = TTL.as_secs();
    for v in [a.ino, a.generation, ttl, ttl] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    put_u32s(out, &[TTL.subsec_nanos(), TTL.subsec_nanos()]);
    put_attr(out, a);
}

/// `struct fuse_attr_out` (104 bytes).
fn put_attr_out(out: &mut Vec<u8>, a: &Attr) {
    out.extend_from_slice(&TTL.as_secs().to_ne_bytes());
    put_u32s(out, &[TTL.subsec_nanos(), 0]);
    put_attr(out, a);
}

/// `struct fuse_open_out` (16 bytes).
fn put_open_out(out: &mut Vec<u8>, fh: u64, flags: FopenFlags) {
    out.extend_from_slice(&fh.to_ne_bytes());
    put_u32s(out, &[flags.bits(), 0]);
}

fn put_xattr(out: &mut Vec<u8>, x: XattrReply) {
    match x {
        // struct fuse_getxattr_out
        XattrReply::Size(n) => put_u32s(out, &[n, 0]),
        XattrReply::Data(d) => out.extend_from_slice(&d),
    }
}

/// `struct fuse_dirent` for `ent` if it fits within `limit` bytes of reply; false if not.
fn put_dirent(out: &mut Vec<u8>, limit: usize, ent: &DirEntry, next: u64) -> bool {
    let len = dirent_len(ent.name.len());
    if out.len() + len > limit {
        return false;
    }
    dirent_body(out, ent.ino, next, type_bits(ent.kind) >> 12, &ent.name);
    true
}

/// `struct fuse_direntplus` (an entry_out, then the dirent) if it fits; false if not.
fn put_direntplus(out: &mut Vec<u8>, limit: usize, ent: &DirEntry, next: u64, a: &Attr) -> bool {
    let len = 128 + dirent_len(ent.name.len());
    if out.len() + len > limit {
        return false;
    }
    put_entry(out, a);
    dirent_body(out, ent.ino, next, type_bits(ent.kind) >> 12, &ent.name);
    true
}

/// Size of a `fuse_dirent` with a name of `n` bytes, padded to 8.
fn dirent_len(n: usize) -> usize {
    (24 + n + 7) & !7
}

fn dirent_body(out: &mut Vec<u8>, ino: u64, next: u64, dtype: u32, name: &[u8]) {
    let start = out.len();
    out.extend_from_slice(&ino.to_ne_bytes());
    out.extend_from_slice(&next.to_ne_bytes());
    put_u32s(out, &[name.len() as u32, dtype]);
    out.extend_from_slice(name);
    out.resize(start + dirent_len(name.len()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr() -> Attr {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        Attr {
            ino: 7,
            size: 100,
            blocks: 1,
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: FileKind::File,
            perm: 0o640,
            nlink: 1,
            uid: 1000,
            gid: 100,
            rdev: 0,
            blksize: 4096,
            generation: 3,
        }
    }

    #[test]
    fn replies_have_the_kernels_sizes() {
        let mut out = Vec::new();
        put_attr(&mut out, &attr());
        assert_eq!(out.len(), 88);
        out.clear();
        put_entry(&mut out, &attr());
        assert_eq!(out.len(), 128);
        assert_eq!(ne_u64(&out, 0), Some(7));
        assert_eq!(ne_u64(&out, 8), Some(3));
        // mode at 40 + 60
        assert_eq!(ne_u32(&out, 100), Some(libc::S_IFREG | 0o640));
        out.clear();
        put_attr_out(&mut out, &attr());
        assert_eq!(out.len(), 104);
        out.clear();
        put_open_out(&mut out, 9, FopenFlags::FOPEN_KEEP_CACHE);
        assert_eq!(out.len(), 16);
        assert_eq!(std::mem::size_of::<Header>(), 288);
    }

    #[test]
    fn dirents_are_padded_and_stop_at_the_limit() {
        let ent = DirEntry {
            ino: 5,
            next_offset: 1,
            kind: FileKind::Dir,
            name: b"abc".to_vec(),
        };
        let mut out = Vec::new();
        assert!(put_dirent(&mut out, 64, &ent, 1));
        assert_eq!(out.len(), 32);
        assert_eq!(ne_u32(&out, 16), Some(3));
        assert_eq!(ne_u32(&out, 20), Some(libc::DT_DIR as u32));
        assert!(put_dirent(&mut out, 64, &ent, 2));
        assert!(!put_dirent(&mut out, 64, &ent, 3));
        assert_eq!(out.len(), 64);
        let mut plus = Vec::new();
        assert!(!put_direntplus(&mut plus, 150, &ent, 1, &attr()));
        assert!(put_direntplus(&mut plus, 160, &ent, 1, &attr()));
        assert_eq!(plus.len(), 160);
    }

    #[test]
    fn times_round_trip_either_side_of_the_epoch() {
        for t in [
            UNIX_EPOCH + Duration::new(5, 7),
            UNIX_EPOCH - Duration::new(5, 7),
            UNIX_EPOCH,
        ] {
            let (s, n) = time_parts(t);
            assert_eq!(system_time(s as i64, n), t);
        }
    }

    #[test]
    fn names_need_their_nul() {
        assert_eq!(cstr(b"a\0b\0").ok(), Some((&b"a"[..], &b"b\0"[..])));
        assert!(cstr(b"abc").is_err());
    }

    #[test]
    fn setattr_decodes_the_fields_marked_valid() {
        let mut op_in = [0u8; OP_IN_SIZE];
        let valid = fattr::MODE | fattr::SIZE | fattr::MTIME | fattr::MTIME_NOW | fattr::FH;
        op_in[0..4].copy_from_slice(&valid.to_ne_bytes());
        op_in[8..16].copy_from_slice(&42u64.to_ne_bytes());
        op_in[16..24].copy_from_slice(&4096u64.to_ne_bytes());
        op_in[68..72].copy_from_slice(&(libc::S_IFREG | 0o4755).to_ne_bytes());
        op_in[76..80].copy_from_slice(&1000u32.to_ne_bytes());
        let r = Request {
            nodeid: 1,
            ctx: Ctx {
                uid: 0,
                gid: 0,
                pid: 1,
            },
            op_in,
        };
        let s = setattr_in(&r).expect("decodes");
        assert_eq!(s.mode, Some(0o4755));
        assert_eq!(s.size, Some(4096));
        assert_eq!(s.mtime, Some(TimeSet::Now));
        assert_eq!(s.fh, Some(42));
        assert_eq!((s.uid, s.gid, s.atime, s.ctime), (None, None, None, None));
    }

    /// Fuzzes the request decoder and dispatch with the kernel's side as the adversary: random
    /// opcodes, node ids, fixed arguments and payloads (names with and without their NUL,
    /// sizes beyond the payload) run against a real in-memory filesystem. Every request must be
    /// answered with a reply that fits its entry, never a panic. `DIGIMEDFS_FUZZ_ITERS` sets
    /// the number of requests (default 3 000).
    #[test]
    fn random_requests_get_replies_never_panics() {
        use digimedfs_core::testing::{Mutator, StaticKey};
        let iters = digimedfs_core::testing::fuzz_iterations();
        // A real backing directory: requests may write at any offset, which only a sparse
        // object file holds.
        let dir = tempfile::tempdir().expect("tempdir");
        let key = StaticKey([3; 32]);
        digimedfs_core::mkfs::mkfs(dir.path(), &key, &Default::default(), &digimedfs_sled::Sled)
            .expect("mkfs");
        let fs = Arc::new(
            digimedfs_core::filesystem::Filesystem::open(
                dir.path(),
                &key,
                &Default::default(),
                &digimedfs_sled::Sled,
            )
            .expect("open"),
        );
        let handlers = DigimedFuse::new(fs.clone());
        const OPS: [u32; 33] = [
            op::LOOKUP,
            op::GETATTR,
            op::SETATTR,
            op::READLINK,
            op::SYMLINK,
            op::MKNOD,
            op::MKDIR,
            op::UNLINK,
            op::RMDIR,
            op::RENAME,
            op::LINK,
            op::OPEN,
            op::READ,
            op::WRITE,
            op::STATFS,
            op::RELEASE,
            op::FSYNC,
            op::SETXATTR,
            op::GETXATTR,
            op::LISTXATTR,
            op::REMOVEXATTR,
            op::FLUSH,
            op::OPENDIR,
            op::READDIR,
            op::RELEASEDIR,
            op::FSYNCDIR,
            op::ACCESS,
            op::CREATE,
            op::IOCTL,
            op::FALLOCATE,
            op::READDIRPLUS,
            op::RENAME2,
            op::LSEEK,
        ];
        let names: Vec<Vec<u8>> = vec![
            b"a\0".to_vec(),
            b"b\0c\0".to_vec(),
            b"user.x\0value".to_vec(),
            b"noterminator".to_vec(),
            Vec::new(),
            vec![b'n'; 300],
        ];
        let mut m = Mutator::new(0x5EED_0001);
        let mut out = Vec::new();
        for n in 0..iters {
            let mut header = Box::new(Header {
                in_out: [0; IN_OUT_SIZE],
                op_in: [0; OP_IN_SIZE],
                ent: [0; 32],
            });
            let opcode = if m.below(20) == 0 {
                m.next_u64() as u32
            } else {
                OPS[m.below(OPS.len())]
            };
            let nodeid = [1, 2, 3, 4, m.next_u64()][m.below(5)];
            header.in_out[4..8].copy_from_slice(&opcode.to_ne_bytes());
            header.in_out[8..16].copy_from_slice(&(n as u64).to_ne_bytes());
            header.in_out[16..24].copy_from_slice(&nodeid.to_ne_bytes());
            for field in header.op_in.chunks_mut(4) {
                let v: u32 = match m.below(4) {
                    0 => 0,
                    1 => m.below(5000) as u32,
                    2 => [0o644, 0o755, libc::O_RDWR as u32, 1, 3][m.below(5)],
                    _ => m.next_u64() as u32,
                };
                field.copy_from_slice(&v.to_ne_bytes());
            }
            let payload = m.input(&names);
            let declared = match m.below(3) {
                0 => payload.len() as u32,
                1 => m.next_u64() as u32,
                _ => m.below(payload.len() + 2) as u32,
            };
            header.ent[16..20].copy_from_slice(&declared.to_ne_bytes());
            let mut buffer = vec![0u8; 64 << 10];
            let start = buffer.len().min(payload.len());
            buffer[..start].copy_from_slice(&payload[..start]);
            let mut entry = Entry {
                header,
                payload: buffer,
                iov: Box::new(
                    [libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }; 2],
                ),
            };
            answer_request(&mut entry, &handlers, &mut out);
            let total = ne_u32(&entry.header.in_out, 0).expect("reply length");
            let body = ne_u32(&entry.header.ent, 16).expect("body length") as usize;
            assert!(
                body <= entry.payload.len(),
                "request {n}: body {body} beyond the entry"
            );
            assert_eq!(total as usize, OUT_HEADER_SIZE + body, "request {n}");
        }
        drop(handlers);
        fs.close().expect("close");
    }
}
