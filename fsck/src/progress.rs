//! Where `fsck.digimed` shows the progress of a check ([`digimedfs_core::check::CheckUi::progress`]):
//!
//! * `-C FD` (FD > 0): e2fsck's completion lines for a front end, one per report,
//!   `PASS CURRENT MAX DEVICE\n` ([`Lines`]); `MAX` 0 means the total is not known yet;
//! * a one-line display overwritten with `\r` and cleared at the end ([`Display`]): on stdout
//!   with `-C 0` (e2fsck's completion bar), and by default on stderr when that is a terminal.
//!
//! Without `-C` and with stderr not a terminal nothing is written, so logs and scripts stay
//! clean. The checker throttles its reports (about every 100 ms), so nothing here does.

use digimedfs_core::check::{PASSES, PASS_UNITS};
use digimedfs_keyclient::progress_line::Line;
use std::io::Write;

/// e2fsck's `-C FD` completion lines on a file descriptor the caller passed.
pub struct Lines<W: Write> {
    out: W,
    /// The fourth field: the backing directory, escaped ([`device_field`]).
    device: String,
    /// A write failed (the reader went away): the check goes on without progress.
    broken: bool,
}

impl<W: Write> Lines<W> {
    /// Lines about `device` to `out`.
    pub fn new(out: W, device: &str) -> Lines<W> {
        Lines {
            out,
            device: device_field(device),
            broken: false,
        }
    }

    /// Writes `PASS CURRENT MAX DEVICE`.
    pub fn report(&mut self, pass: u8, done: u64, total: u64) {
        if self.broken {
            return;
        }
        let line = format!("{pass} {done} {total} {}\n", self.device);
        if self.out.write_all(line.as_bytes()).is_err() || self.out.flush().is_err() {
            self.broken = true;
        }
    }
}

/// The backing directory as one whitespace-free field (front ends such as systemd-fsck read
/// it with `%s`): bytes that are whitespace, control characters or `\` become `\xNN`.
pub fn device_field(device: &str) -> String {
    let mut s = String::with_capacity(device.len());
    for c in device.chars() {
        if c.is_whitespace() || c.is_control() || c == '\\' {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                s.push_str(&format!("\\x{b:02x}"));
            }
        } else {
            s.push(c);
        }
    }
    s
}

/// The one-line progress display of the passes, drawn on a [`Line`].
pub struct Display<W: Write> {
    line: Line<W>,
    /// Name of the current pass.
    pass_name: String,
}

impl<W: Write> Display<W> {
    /// A display on `out` (nothing is drawn until the first report).
    pub fn new(out: W) -> Display<W> {
        Display {
            line: Line::new(Some(out)),
            pass_name: String::new(),
        }
    }

    /// Pass `n` named `name` starts.
    pub fn pass(&mut self, name: &str) {
        self.pass_name = name.to_string();
    }

    /// Redraws the line for `done` of `total` in pass `pass`.
    pub fn report(&mut self, pass: u8, done: u64, total: u64) {
        self.line
            .show(&status_line(pass, &self.pass_name, done, total));
    }

    /// Removes the line (before other output, and at the end).
    pub fn clear(&mut self) {
        self.line.clear();
    }
}

/// The text of the display: pass, count and, when the total is known, a percentage.
pub fn status_line(pass: u8, name: &str, done: u64, total: u64) -> String {
    let unit = PASS_UNITS
        .get(usize::from(pass).saturating_sub(1))
        .copied()
        .unwrap_or("units");
    let count = |n: u64| {
        if unit == "bytes" {
            format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
        } else {
            n.to_string()
        }
    };
    let head = format!("Pass {pass}/{PASSES} {name}");
    if total == 0 {
        let unit = if unit == "bytes" { "" } else { unit };
        format!("{head}: {} {unit}", count(done))
            .trim_end()
            .to_string()
    } else {
        let pct = done.min(total) as f64 * 100.0 / total as f64;
        let of = if unit == "bytes" {
            format!("{} of {}", count(done), count(total))
        } else {
            format!("{done} of {total} {unit}")
        };
        format!("{head}: {of} ({pct:.1}%)")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn lines_have_e2fsck_fields_and_an_escaped_device() {
        let mut out = Vec::new();
        let mut l = Lines::new(&mut out, "/srv/my backing");
        l.report(2, 10, 0);
        l.report(5, 3, 7);
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text,
            "2 10 0 /srv/my\\x20backing\n5 3 7 /srv/my\\x20backing\n"
        );
    }

    #[test]
    fn display_overwrites_its_line_and_clears_it() {
        let mut out = Vec::new();
        {
            let mut d = Display::new(&mut out);
            d.pass("metadata records");
            d.report(2, 123_456, 0);
            d.pass("directory tree");
            d.report(3, 5, 10);
            d.clear();
        }
        let text = String::from_utf8(out).expect("utf-8");
        let first = "Pass 2/7 metadata records: 123456 records";
        let second = "Pass 3/7 directory tree: 5 of 10 entries (50.0%)";
        let pad = first.len().saturating_sub(second.len());
        assert_eq!(
            text,
            format!(
                "\r{first}\r{second}{}\r{}\r",
                " ".repeat(pad),
                " ".repeat(second.len())
            )
        );
        assert!(!text.contains('\n'), "never a new line: {text:?}");
    }
}
