//! Where the binaries' logs go (feature `logging`): to the systemd journal when the process
//! runs under systemd, otherwise to stderr, with ANSI colour codes only when stderr is a
//! terminal. The mount daemon adds its own choice for the detached process (`digimedfs`'s
//! `main.rs`): the journal when journald runs, else a log file.
//!
//! "Runs under systemd" is what systemd documents for it (systemd.exec(5), `$JOURNAL_STREAM`):
//! the variable holds `DEVICE:INODE` of the stream systemd connected stderr to, and it counts
//! only while stderr still is that stream (a child whose stderr was redirected inherits the
//! variable but not the stream). Journal entries carry the binary's name as
//! `SYSLOG_IDENTIFIER` (`journalctl -t digimedfs`) and the fields the caller names.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// journald's socket for native messages.
pub const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// `RUST_LOG` if it parses, else `default` (e.g. `"info"`).
pub fn env_filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// Whether `value` (a `$JOURNAL_STREAM`) names the file `fd` is open on.
pub fn journal_stream_matches(value: &OsStr, fd: impl AsFd) -> bool {
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match rustix::fs::fstat(fd) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// Whether stderr is connected to the journal (a systemd unit's stderr, `$JOURNAL_STREAM`).
pub fn stderr_is_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM")
        .is_some_and(|v| journal_stream_matches(&v, std::io::stderr()))
}

/// Whether journald's socket exists (journald runs on this host).
pub fn journald_available() -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(JOURNAL_SOCKET).is_ok_and(|m| m.file_type().is_socket())
}

/// A journal layer sending events as `ident` with `fields` (journal field names: upper case,
/// digits, `_`) on every entry. Fails if journald cannot be reached.
pub fn journal_layer(
    ident: &str,
    fields: &[(&str, String)],
) -> std::io::Result<tracing_journald::Layer> {
    Ok(tracing_journald::layer()?
        .with_syslog_identifier(ident.to_string())
        .with_custom_fields(fields.iter().map(|(k, v)| (*k, v.as_bytes()))))
}

/// Installs `layer` (from [`journal_layer`]) as the subscriber. Another subscriber already
/// installed (tests) is left in place.
pub fn init_journal(layer: tracing_journald::Layer, filter: EnvFilter) {
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init();
}

/// Logging of a command or a service: to the journal as `ident` when stderr is connected to it
/// (see [`stderr_is_journal`]), else to stderr, coloured only on a terminal. `plain` drops the
/// time and the module path (messages for the person at the command line).
pub fn init_stderr(ident: &str, filter: EnvFilter, plain: bool) {
    let mut journal_error = None;
    if stderr_is_journal() {
        match journal_layer(ident, &[]) {
            Ok(layer) => return init_journal(layer, filter),
            // Still to stderr, which the journal reads anyway.
            Err(e) => journal_error = Some(e),
        }
    }
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = if plain {
        builder.without_time().with_target(false).try_init()
    } else {
        builder.try_init()
    };
    if let Some(e) = journal_error {
        tracing::warn!("journald at {JOURNAL_SOCKET} unusable ({e}); logging to stderr");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn journal_stream_matches_only_the_named_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = std::fs::File::create(dir.path().join("a")).expect("a");
        let b = std::fs::File::create(dir.path().join("b")).expect("b");
        let m = a.metadata().expect("stat a");
        let value = format!("{}:{}", m.dev(), m.ino());
        assert!(journal_stream_matches(OsStr::new(&value), &a));
        // Inherited by a process whose stderr went elsewhere: not the journal.
        assert!(!journal_stream_matches(OsStr::new(&value), &b));
        for bad in [
            "",
            ":",
            "1",
            "x:y",
            &format!("{}:", m.dev()),
            &format!("{value}:1"),
        ] {
            assert!(!journal_stream_matches(OsStr::new(bad), &a), "{bad:?}");
        }
    }
}
