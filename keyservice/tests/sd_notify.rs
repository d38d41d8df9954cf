//! `serve` under systemd's `Type=notify`: it sends `READY=1` to `$NOTIFY_SOCKET` only once it
//! listens (the address in STATUS= accepts connections), stops cleanly on SIGTERM (exit 0,
//! `STOPPING=1`), and without `$NOTIFY_SOCKET` serves as before.

#![allow(clippy::expect_used, clippy::panic)]

use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn keyservice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_digimed-keyservice"));
    cmd.env("DIGIMED_KS_PASSPHRASE", "notify test passphrase")
        .env_remove("NOTIFY_SOCKET");
    cmd
}

/// Kills the server if the test fails half-way.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Receives one datagram as text (generous timeout: a hang fails the test instead of CI).
fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification from the key service");
    String::from_utf8_lossy(buf.get(..n).expect("within buffer")).into_owned()
}

#[test]
fn serve_reports_ready_once_listening_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let out = keyservice()
        .arg("init")
        .arg(&state)
        .arg("--demo-tls")
        .output()
        .expect("run init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let notify_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&notify_path).expect("bind NOTIFY_SOCKET");
    sock.set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    let mut server = Server(
        keyservice()
            .env("NOTIFY_SOCKET", &notify_path)
            .arg("serve")
            .arg(&state)
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(state.join("tls/server.pem"))
            .arg("--tls-key")
            .arg(state.join("tls/server.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start serve"),
    );

    let msg = recv(&sock);
    let lines: Vec<&str> = msg.lines().collect();
    assert!(lines.contains(&"READY=1"), "{msg:?}");
    let addr = lines
        .iter()
        .find_map(|l| l.strip_prefix("STATUS=listening on "))
        .and_then(|s| s.strip_suffix(" (TLS)"))
        .unwrap_or_else(|| panic!("no listening address in {msg:?}"));
    // Ready means listening: the port accepts a connection now, without retrying.
    std::net::TcpStream::connect(addr).expect("connect to the address READY reported");

    // SIGTERM (systemctl stop) is a clean stop.
    let pid = i32::try_from(server.0.id()).expect("pid");
    // SAFETY: kill(2) on the child we started and have not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(recv(&sock), "STOPPING=1");
    let status = server.0.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
}
