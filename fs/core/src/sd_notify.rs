//! systemd readiness notification (sd_notify(3)) without libsystemd: one datagram with
//! `READY=1`, `STOPPING=1` or `STATUS=...` to the unix socket named by `$NOTIFY_SOCKET`, which
//! systemd sets for a `Type=notify` service. Outside systemd (no `$NOTIFY_SOCKET`) every call
//! is a no-op, so the key service's `serve` and `digimedfs mount` behave the same by hand and
//! under a unit.
//!
//! A path starting with `@` is a socket in the abstract namespace (as systemd may pass it).

use std::ffi::OsStr;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to `$NOTIFY_SOCKET`, if set.
/// Returns whether a message was sent.
pub fn notify(state: &str) -> std::io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) {
        Some(path) => send(&path, state).map(|()| true),
        None => Ok(false),
    }
}

/// [`notify`], logging a warning if the message could not be sent (systemd then sees no
/// readiness and times the unit out, which the warning explains).
pub fn notify_or_warn(state: &str) {
    if let Err(e) = notify(state) {
        let first = state.lines().next().unwrap_or_default();
        tracing::warn!(error = %e, "could not send {first} to systemd ($NOTIFY_SOCKET)");
    }
}

/// Sends `state` to the notification socket `path` (`@NAME`: abstract namespace).
pub fn send(path: &OsStr, state: &str) -> std::io::Result<()> {
    let addr = match path.as_encoded_bytes().strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(path)?,
    };
    let sock = UnixDatagram::unbound()?;
    let sent = sock.send_to_addr(state.as_bytes(), &addr)?;
    if sent != state.len() {
        return Err(std::io::Error::other(format!(
            "NOTIFY_SOCKET {}: sent {sent} of {} bytes",
            path.to_string_lossy(),
            state.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    #[test]
    fn sends_to_a_path_and_to_an_abstract_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");

        let name = format!("digimedfs-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        send(OsStr::new(&format!("@{name}")), "STOPPING=1").expect("send abstract");
        let n = sock.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
        // No listener: an error, not a silent success.
        assert!(send(dir.path().join("none").as_os_str(), "READY=1").is_err());
    }
}
