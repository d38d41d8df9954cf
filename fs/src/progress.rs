//! The one-line progress display of the `digimedfs` admin commands (`backup begin`'s waiting
//! line, `backup verify` and `backup restore`): redrawn in place with `\r` on stderr when
//! stderr is a terminal, and cleared before the command prints its result. Anywhere else
//! (a pipe, a log file) nothing is written, so scripts and logs see only the result. The
//! core throttles what it reports, so nothing here does.

use digimedfs_core::backup::CopyProgress;
pub use digimedfs_keyclient::progress_line::Line;
use std::io::Write;

/// Shows on `line` how far a backup verify or restore is; a finished stage removes the line,
/// so a warning logged between stages (restore of a copy without a manifest MAC) starts on a
/// clean line.
pub fn show_copy<W: Write>(line: &mut Line<W>, p: CopyProgress) {
    if p.files == p.total_files && p.bytes == p.total_bytes {
        line.clear();
    } else {
        line.show(&p.to_string());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used)]
    use super::*;

    #[test]
    fn a_finished_stage_clears_the_line() {
        use digimedfs_core::backup::Stage;
        let mut out = Vec::new();
        {
            let mut line = Line::new(Some(&mut out));
            let p = CopyProgress {
                stage: Stage::Verify,
                files: 1,
                total_files: 2,
                bytes: 0,
                total_bytes: 0,
            };
            show_copy(&mut line, p);
            show_copy(&mut line, CopyProgress { files: 2, ..p });
        }
        let shown = "verifying: 1 of 2 files, 0.0 of 0.0 MiB (50.0%)";
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            format!("\r{shown}\r{}\r", " ".repeat(shown.len()))
        );
    }
}
