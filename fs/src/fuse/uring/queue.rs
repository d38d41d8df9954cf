//! The ring side of each queue: its registered entries, the thread pinned to the queue's CPU
//! that waits for requests and commits their answers in one `io_uring_enter`, and the helper
//! threads that answer large READs. Every entry's buffers stay at one address until the
//! kernel is done with them.

use super::dispatch::answer_request;
use super::wire::{ne_u32, ne_u64, op, Header, IN_OUT_SIZE, OP_IN_SIZE};
use super::{DigimedFuse, Entry};
use crate::fuse::idlewait::{self, IdleWait};
use digimedfs_core::{Error, Result};
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread;
use std::time::Instant;

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

/// How a queue's thread tells [`super::Uring::start`] that its entries are registered, or which
/// queue failed and why.
pub(super) type RegisteredTx =
    std::sync::mpsc::Sender<std::result::Result<(), (usize, std::io::Error)>>;

/// A large READ handed to a helper: the entry (`k` of its queue) with the request in it, and
/// where to return it answered.
pub(super) struct Job {
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
pub(super) fn start_helpers(n: usize, handlers: &DigimedFuse) -> Result<mpsc::Sender<Job>> {
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

pub(super) struct Queue {
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
    pub(super) fn new(
        qid: usize,
        payload: usize,
        helpers: mpsc::Sender<Job>,
    ) -> std::io::Result<Queue> {
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
    pub(super) fn serve(
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
