//! Process hardening for the programs that hold key material (the mount daemon, mkfs, fsck,
//! rewrap and offline backup points).
//!
//! Key types wipe themselves on drop, but while a key is alive a core dump would write it to
//! disk in the clear (threat-model.md: key material is never written unwrapped). A process made
//! non-dumpable (`PR_SET_DUMPABLE 0`) produces no core dump on a crash and cannot be attached
//! to or read through `/proc/PID/mem` by other users; it stays non-dumpable across its threads
//! and is reset by nothing but an exec.
//!
//! Also the one signal setting the command-line tools share: output into a closed pipe ends
//! the tool quietly, as it does a C tool ([`quit_on_broken_pipe`]).

/// Makes this process non-dumpable. Fails only where the kernel refuses the call; callers
/// report that and go on (the key types still wipe themselves).
pub fn forbid_core_dumps() -> crate::Result<()> {
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable).map_err(
        |e| {
            crate::Error::posix(
                e.raw_os_error(),
                "prctl(PR_SET_DUMPABLE, 0): keeping key material out of core dumps",
            )
        },
    )
}

/// Restores the default action of SIGPIPE (terminate), which the Rust runtime sets to ignore:
/// `fsck.digimed -n B | head` must end fsck quietly when `head` has seen enough, not panic in
/// the middle of its report ("failed printing to stdout"). Only for tools whose output is
/// their product: their sockets (the key service client) are written with `MSG_NOSIGNAL` by
/// the standard library and still get EPIPE; the mount daemon keeps SIGPIPE ignored.
pub fn quit_on_broken_pipe() {
    // SAFETY: installs the default disposition of one signal; no handler code runs, and no
    // other thread has been started yet by any caller (each calls this first thing in main).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_becomes_non_dumpable() {
        // Runs in the test process itself: the flag is what a core dump and ptrace consult.
        super::forbid_core_dumps().expect("prctl");
        let dumpable = rustix::process::dumpable_behavior().expect("read back");
        assert_eq!(dumpable, rustix::process::DumpableBehavior::NotDumpable);
    }
}
