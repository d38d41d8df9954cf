//! Whether an io_uring ring thread waits for its next request as a `SCHED_IDLE` thread.
//!
//! Why it should: the answer to a request wakes the caller while the ring thread still runs on
//! the caller's CPU, so the scheduler moves the caller to an idle CPU, whose queue and ring
//! thread then serve its next request, and every round trip pays a wake-up across CPUs. A CPU
//! that runs only `SCHED_IDLE` threads counts as idle when the scheduler places a woken task,
//! so a ring thread that waits as `SCHED_IDLE` keeps the caller where it is and its round trips
//! cheap (docs/performance.md, tuning table: `MAX_DELAY_PER_REQUEST`). Requests are served at
//! normal priority; only the wake-up happens at idle priority.
//!
//! Why it must not always: when busy threads share the ring thread's scheduling group (no
//! autogroup, no cpu cgroup of the daemon's own), a thread woken at idle priority waits behind
//! them, measured at 809 µs per round trip against 11 µs. So each ring thread watches its own
//! run delay (the time it spent runnable but not running, from `/proc/thread-self/schedstat`)
//! over every [`SAMPLE_REQUESTS`] requests, and when that averages more than
//! [`MAX_DELAY_PER_REQUEST`] per request it waits as a normal thread for a back-off period
//! (doubling, up to [`BACKOFF_MAX`], while the contention lasts) before it tries again.
//!
//! Why not while a file is read in sequence: the kernel's readahead sends the next READ from
//! the reader's own context without waiting for it, so the reader keeps the CPU and a ring
//! thread woken there at idle priority only runs once the reader blocks, on a page that READ
//! was to fetch: readahead turns synchronous (cold 512 MiB reads, median of 5: 727 MB/s, against
//! 818 with normal ring threads). Such READs are the large ones a ring thread hands to a
//! helper, so for [`STREAM_HOLD`] after each the thread waits as a normal thread
//! ([`IdleWait::streaming`]).
//!
//! Guarantees: a ring thread never stays `SCHED_IDLE` while it serves a request; without
//! `CAP_SYS_NICE` (or `RLIMIT_NICE` 20), or without a readable schedstat, it never goes idle.

use std::time::{Duration, Instant};

/// Requests between two looks at the run delay. Few, so that a thread that starves after a
/// pause gives up again after a few requests (each may wait milliseconds then); reading the
/// run delay costs one `pread`.
pub const SAMPLE_REQUESTS: u32 = 8;
/// Average run delay per request above which waiting as `SCHED_IDLE` is given up for a while.
/// Uncontended it is a few microseconds; starved it was hundreds.
pub const MAX_DELAY_PER_REQUEST: Duration = Duration::from_micros(50);
/// How long a ring thread waits as a normal thread after a large READ: longer than the gap
/// between two READs of a sequential reader (a millisecond or two), short against the work of
/// a program that reads one file and then does something else.
pub const STREAM_HOLD: Duration = Duration::from_millis(20);
/// First and longest back-off after contention was seen.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(64);

/// The decision of one ring thread, fed with its request count and run-delay readings.
#[derive(Debug)]
pub struct IdleWait {
    /// The thread may switch to `SCHED_IDLE` and back, and can read its run delay.
    allowed: bool,
    /// Not before this instant (contention was seen).
    paused_until: Option<Instant>,
    /// Not before this instant either (a file is being read in sequence).
    streaming_until: Option<Instant>,
    backoff: Duration,
    served: u32,
    /// Run delay (ns) at the start of the current sample.
    baseline_ns: Option<u64>,
}

impl IdleWait {
    /// `allowed`: the thread can leave `SCHED_IDLE` again and read its own run delay.
    pub fn new(allowed: bool) -> IdleWait {
        IdleWait {
            allowed,
            paused_until: None,
            streaming_until: None,
            backoff: BACKOFF_MIN,
            served: 0,
            baseline_ns: None,
        }
    }

    /// Never go idle again (the kernel stopped letting the thread switch back).
    pub fn disallow(&mut self) {
        self.allowed = false;
    }

    /// A large READ (readahead of a file read in sequence) was just handed to a helper: wait
    /// as a normal thread until `now` + [`STREAM_HOLD`].
    pub fn streaming(&mut self, now: Instant) {
        if self.allowed {
            self.streaming_until = Some(now + STREAM_HOLD);
        }
    }

    /// Whether to wait for the next request as `SCHED_IDLE`; `now` is asked only during a
    /// pause or a stream, and at most once (the clock is not read on every wait).
    pub fn idle_now(&mut self, now: impl FnOnce() -> Instant) -> bool {
        if !self.allowed {
            return false;
        }
        if self.streaming_until.is_none() && self.paused_until.is_none() {
            return true;
        }
        let now = now();
        if let Some(until) = self.streaming_until {
            if now < until {
                return false;
            }
            // The stream ended: what the run delay grew by meanwhile says nothing about
            // waiting idle, so measure afresh.
            self.streaming_until = None;
            self.served = 0;
            self.baseline_ns = None;
        }
        match self.paused_until {
            Some(until) if now < until => false,
            Some(_) => {
                // The pause is over: measure afresh.
                self.paused_until = None;
                self.served = 0;
                self.baseline_ns = None;
                true
            }
            None => true,
        }
    }

    /// Counts one served request; every [`SAMPLE_REQUESTS`] it asks `run_delay_ns` for the
    /// thread's total run delay and judges the sample (asking `now` only then).
    pub fn served(
        &mut self,
        now: impl FnOnce() -> Instant,
        run_delay_ns: impl FnOnce() -> Option<u64>,
    ) {
        if !self.allowed || self.paused_until.is_some() {
            return;
        }
        self.served += 1;
        if self.served < SAMPLE_REQUESTS && self.baseline_ns.is_some() {
            return;
        }
        let Some(total) = run_delay_ns() else {
            // Without the reading there is no protection against starving: stay normal.
            self.allowed = false;
            return;
        };
        if let Some(base) = self.baseline_ns {
            self.judge(total.saturating_sub(base), self.served, now());
        }
        self.served = 0;
        self.baseline_ns = Some(total);
    }

    /// One sample: `delay_ns` of run delay over `requests` requests.
    fn judge(&mut self, delay_ns: u64, requests: u32, now: Instant) {
        let per_request = delay_ns / u64::from(requests.max(1));
        if per_request > MAX_DELAY_PER_REQUEST.as_nanos() as u64 {
            let pause = self.backoff;
            self.paused_until = Some(now + pause);
            self.backoff = (pause * 2).min(BACKOFF_MAX);
            self.baseline_ns = None;
            tracing::debug!(
                "io_uring ring thread: {per_request} ns run delay per request; waiting as a \
                 normal thread for {pause:?}"
            );
        } else {
            self.backoff = (self.backoff / 2).max(BACKOFF_MIN);
        }
    }
}

/// Reads the run delay of the thread that opened it.
pub struct RunDelay {
    schedstat: Option<std::fs::File>,
    buf: [u8; 96],
}

impl RunDelay {
    /// Opens `/proc/thread-self/schedstat` of the calling thread (kept open: each reading is
    /// one `pread`).
    pub fn of_this_thread() -> RunDelay {
        RunDelay {
            schedstat: std::fs::File::open("/proc/thread-self/schedstat").ok(),
            buf: [0; 96],
        }
    }

    /// The thread's run delay so far, in ns: the second field of its schedstat.
    pub fn ns(&mut self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let n = self.schedstat.as_ref()?.read_at(&mut self.buf, 0).ok()?;
        let text = std::str::from_utf8(self.buf.get(..n)?).ok()?;
        text.split_whitespace().nth(1)?.parse().ok()
    }
}

/// Sets the calling thread's scheduling policy (priority 0); false if the kernel refused.
pub fn set_policy(policy: i32) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads one sched_param, for the calling thread (pid 0).
    unsafe { libc::sched_setscheduler(0, policy, &param) == 0 }
}

/// Whether ring threads may wait as `SCHED_IDLE`: leaving it needs CAP_SYS_NICE or an
/// RLIMIT_NICE of 20, so this tries both ways on a throwaway thread (a ring thread must never
/// get stuck there), and the run delay must be readable.
pub fn allowed() -> bool {
    std::thread::Builder::new()
        .name("digimedfs-sched-probe".into())
        .spawn(|| {
            RunDelay::of_this_thread().ns().is_some()
                && set_policy(libc::SCHED_IDLE)
                && set_policy(libc::SCHED_OTHER)
        })
        .ok()
        .and_then(|probe| probe.join().ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves `n` requests with `delay_each` of run delay each, reading from `total`.
    fn serve(w: &mut IdleWait, now: Instant, n: u32, delay_each: u64, total: &mut u64) {
        for _ in 0..n {
            *total += delay_each;
            let t = *total;
            w.served(|| now, || Some(t));
        }
    }

    #[test]
    fn uncontended_thread_keeps_waiting_idle() {
        let now = Instant::now();
        let mut w = IdleWait::new(true);
        let mut total = 0;
        assert!(w.idle_now(|| now));
        serve(&mut w, now, 10 * SAMPLE_REQUESTS, 3_000, &mut total);
        assert!(w.idle_now(|| now));
    }

    #[test]
    fn starved_thread_pauses_with_growing_backoff_then_tries_again() {
        let start = Instant::now();
        let mut w = IdleWait::new(true);
        let mut total = 0;
        // First reading is the baseline, then one starved sample.
        serve(&mut w, start, SAMPLE_REQUESTS + 1, 800_000, &mut total);
        assert!(
            !w.idle_now(|| start),
            "a starved sample pauses idle waiting"
        );
        assert!(!w.idle_now(|| start + BACKOFF_MIN / 2));
        // After the first back-off it tries again; starved again, it pauses twice as long.
        let t1 = start + BACKOFF_MIN;
        assert!(w.idle_now(|| t1));
        serve(&mut w, t1, SAMPLE_REQUESTS + 1, 800_000, &mut total);
        assert!(!w.idle_now(|| t1 + BACKOFF_MIN));
        assert!(w.idle_now(|| t1 + 2 * BACKOFF_MIN));
    }

    #[test]
    fn backoff_is_capped_and_shrinks_again_when_calm() {
        let mut now = Instant::now();
        let mut w = IdleWait::new(true);
        let mut total = 0;
        for _ in 0..20 {
            assert!(w.idle_now(|| now));
            serve(&mut w, now, SAMPLE_REQUESTS + 1, 800_000, &mut total);
            now += BACKOFF_MAX;
        }
        assert_eq!(w.backoff, BACKOFF_MAX);
        assert!(w.idle_now(|| now));
        serve(&mut w, now, 20 * SAMPLE_REQUESTS, 1_000, &mut total);
        assert_eq!(w.backoff, BACKOFF_MIN);
    }

    #[test]
    fn streaming_waits_as_a_normal_thread_for_the_hold_then_idle_again() {
        let start = Instant::now();
        let mut w = IdleWait::new(true);
        let mut total = 0;
        serve(&mut w, start, SAMPLE_REQUESTS + 1, 1_000, &mut total);
        assert!(w.idle_now(|| start));
        w.streaming(start);
        assert!(!w.idle_now(|| start + STREAM_HOLD / 2));
        // The next large READ extends the hold.
        w.streaming(start + STREAM_HOLD / 2);
        assert!(!w.idle_now(|| start + STREAM_HOLD));
        // Run delay gathered while streaming is not held against idle waiting afterwards.
        total += 50_000_000;
        let after = start + 2 * STREAM_HOLD;
        assert!(w.idle_now(|| after));
        serve(&mut w, after, SAMPLE_REQUESTS + 1, 1_000, &mut total);
        assert!(
            w.idle_now(|| after),
            "the stream's run delay caused a pause"
        );

        let mut w = IdleWait::new(false);
        w.streaming(start);
        assert!(!w.idle_now(|| start + 2 * STREAM_HOLD));
    }

    #[test]
    fn without_permission_or_reading_it_never_goes_idle() {
        let now = Instant::now();
        let mut w = IdleWait::new(false);
        assert!(!w.idle_now(|| now));
        let mut w = IdleWait::new(true);
        w.served(|| now, || None);
        assert!(!w.idle_now(|| now), "no run delay to watch: stay normal");
        let mut w = IdleWait::new(true);
        w.disallow();
        assert!(!w.idle_now(|| now));
    }

    #[test]
    fn run_delay_of_this_thread_is_readable_and_never_shrinks() {
        // Linux with schedstat (CONFIG_SCHED_INFO), as on every machine this runs on.
        let mut delay = RunDelay::of_this_thread();
        let first = delay.ns().expect("run delay readable");
        let second = delay.ns().expect("read again from the same file");
        assert!(second >= first, "run delay only grows");
    }
}
