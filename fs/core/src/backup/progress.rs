//! Progress of the long operations on a point copy: keyless verification (every file hashed)
//! and restore (verification, then every file copied or imported). The operations call a
//! callback with a [`CopyProgress`]; the totals come from the copy's manifest, read once
//! before the work starts. Reports are throttled (at most about every
//! [`crate::check::progress::INTERVAL`]), the first says nothing is done yet and the last
//! of each stage that succeeds is the manifest's totals (every file is counted as it is done);
//! counts never go down within a stage and never exceed the totals.
//! Nothing here knows of terminals: the front end decides whether and where to show them.

use super::manifest::ManifestStream;
use super::MANIFEST;
use crate::check::progress::Throttle;
use crate::confined::Confined;
use crate::{Error, Result};

/// What a long operation on a point copy is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Hashing the copy's files against its manifest.
    Verify,
    /// Copying the verified files into the new backing directory.
    Restore,
}

/// How far a verify or restore of a point copy is, in the manifest's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyProgress {
    /// What is being done.
    pub stage: Stage,
    /// Files of the manifest done in this stage.
    pub files: u64,
    /// Files the manifest lists.
    pub total_files: u64,
    /// Bytes done in this stage (a file counts with the length the manifest records).
    pub bytes: u64,
    /// Bytes the manifest lists.
    pub total_bytes: u64,
}

impl std::fmt::Display for CopyProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |n: u64| n as f64 / (1u64 << 20) as f64;
        let (done, total) = if self.total_bytes > 0 {
            (self.bytes, self.total_bytes)
        } else {
            (self.files, self.total_files)
        };
        let pct = if total == 0 {
            100.0
        } else {
            done.min(total) as f64 * 100.0 / total as f64
        };
        write!(
            f,
            "{}: {} of {} files, {:.1} of {:.1} MiB ({pct:.1}%)",
            match self.stage {
                Stage::Verify => "verifying",
                Stage::Restore => "restoring",
            },
            self.files,
            self.total_files,
            mib(self.bytes),
            mib(self.total_bytes),
        )
    }
}

/// Files and bytes the manifest of the copy `dir` lists (one streamed read of it).
pub(super) fn manifest_totals(dir: &Confined, shown: &std::path::Path) -> Result<(u64, u64)> {
    let (_, mut stream) = ManifestStream::open(dir, MANIFEST)?.ok_or_else(|| {
        Error::format(format!(
            "{}: no {MANIFEST}: not a copy of a digimedfs backup point",
            shown.display()
        ))
    })?;
    let (mut files, mut bytes) = (0u64, 0u64);
    while let Some(e) = stream.next_entry()? {
        files += 1;
        bytes = bytes.saturating_add(e.len);
    }
    Ok((files, bytes))
}

/// Counts one stage of an operation and reports it, throttled, to the caller's callback.
pub(super) struct Reporter<'a> {
    now: CopyProgress,
    throttle: Throttle,
    on_progress: &'a mut dyn FnMut(CopyProgress),
}

impl<'a> Reporter<'a> {
    /// Starts `stage` with the manifest's totals; reports that nothing is done yet.
    pub(super) fn start(
        stage: Stage,
        (total_files, total_bytes): (u64, u64),
        on_progress: &'a mut dyn FnMut(CopyProgress),
    ) -> Reporter<'a> {
        let now = CopyProgress {
            stage,
            files: 0,
            total_files,
            bytes: 0,
            total_bytes,
        };
        on_progress(now);
        Reporter {
            now,
            throttle: Throttle::new(),
            on_progress,
        }
    }

    /// `part` more bytes of the current file are done (reported only if due).
    pub(super) fn bytes(&mut self, part: u64) {
        self.now.bytes = self
            .now
            .bytes
            .saturating_add(part)
            .min(self.now.total_bytes);
        self.maybe_report();
    }

    /// A file is done whose manifest length is `len`, of which `counted` bytes were already
    /// passed to [`Reporter::bytes`].
    pub(super) fn file(&mut self, len: u64, counted: u64) {
        self.now.files = (self.now.files + 1).min(self.now.total_files);
        self.bytes(len.saturating_sub(counted));
    }

    fn maybe_report(&mut self) {
        if self.throttle.due() {
            (self.on_progress)(self.now);
        }
    }

    /// Ends the stage: reports the counts now (the totals, once every file was counted).
    pub(super) fn finish(self) {
        (self.on_progress)(self.now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_names_the_stage_and_counts_files_and_bytes() {
        let p = CopyProgress {
            stage: Stage::Verify,
            files: 3,
            total_files: 10,
            bytes: 1 << 20,
            total_bytes: 4 << 20,
        };
        assert_eq!(
            p.to_string(),
            "verifying: 3 of 10 files, 1.0 of 4.0 MiB (25.0%)"
        );
        let p = CopyProgress {
            stage: Stage::Restore,
            files: 1,
            total_files: 4,
            bytes: 0,
            total_bytes: 0,
        };
        assert_eq!(
            p.to_string(),
            "restoring: 1 of 4 files, 0.0 of 0.0 MiB (25.0%)"
        );
    }

    #[test]
    fn a_stage_starts_at_zero_never_exceeds_and_ends_at_the_totals() {
        let mut seen = Vec::new();
        let mut cb = |p: CopyProgress| seen.push(p);
        let mut r = Reporter::start(Stage::Verify, (2, 100), &mut cb);
        r.bytes(70);
        r.file(60, 70);
        r.file(500, 0);
        r.file(1, 0);
        r.finish();
        let first = seen.first().copied().expect("a first report");
        let last = seen.last().copied().expect("a last report");
        assert_eq!((first.files, first.bytes), (0, 0));
        assert_eq!((last.files, last.bytes), (2, 100));
        assert!(seen.iter().all(|p| p.files <= 2 && p.bytes <= 100));
    }
}
