//! Backup points: a consistent, self-contained state of a live filesystem that backup jobs copy
//! with ordinary tools, verify without keys, and restore to a mountable backing directory.
//!
//! A point lives in `BACKING/backup/point/` (see docs/backup.md and docs/format.md):
//!
//! - `superblock`: the superblock as of the point (clean, with the digest of the dumped records);
//! - `meta/`: every sealed metadata record as stored, sorted by key, in segments cut at
//!   key-defined boundaries plus an index; a segment that did not change is hard-linked from
//!   the previous point, so a point writes (and a delta tool sends) only changed segments.
//!   Points of earlier builds hold one `meta.dump` instead, still verified and restored. When
//!   a point ends, its `MANIFEST` and `meta/` move to `backup/kept/` for the next point to link;
//! - `objects/XX/<id>`: hard links to the data objects, kept unchanged by copy-on-write in the
//!   object store until the point is ended or replaced;
//! - `MANIFEST`: every file above with its length and BLAKE3 hash, and a MAC for key holders.
//!
//! The daemon takes and ends points on request: `digimedfs backup begin` (on any host that sees
//! the backing directory, without keys) writes `backup/request` and waits for `backup/reply`,
//! showing what the daemon reports in `backup/progress` meanwhile.
//! This module holds the formats, the request protocol, keyless verification and restore (both
//! report their progress to a callback, [`CopyProgress`]); the
//! point itself is taken by the core (`Filesystem::backup_begin`).

mod dump;
mod manifest;
mod progress;
mod request;
mod restore;
mod segments;
mod verify;

pub use dump::{read_dump, DumpWriter};
pub(crate) use manifest::previous_hashes;
pub use manifest::{current_point, file_stamp, hash_file, Manifest, ManifestEntry, ManifestHeader};
pub use progress::{CopyProgress, Stage};
pub(crate) use request::retire_point;
pub use request::{
    daemon_holds_lock, end, parse_progress, request, request_with, resolve_backing, take_request,
    write_progress, write_reply, Action, Waiting, PROGRESS_EVERY,
};
pub use restore::{restore, restore_with, RestoreReport};
pub use segments::{
    is_segmented, read_segmented, Segment, SegmentWriter, SegmentedDump, MAX_SEGMENT_BYTES,
    MAX_SEGMENT_RECORDS, SEGMENT_DIR, SEGMENT_INDEX, SOFT_BYTES,
};
pub use verify::{
    verify, verify_copy, verify_copy_with, verify_manifest_mac, verify_with, VerifyReport,
    MAX_PROBLEMS_LISTED,
};

use crate::confined::Confined;
use crate::Result;
use std::path::Path;

pub use crate::backing::BACKUP_DIR;
/// The current point, inside [`BACKUP_DIR`].
pub const POINT_DIR: &str = "point";
/// The metadata segments and manifest of the last ended point, inside [`BACKUP_DIR`]: kept so
/// that the next point links its unchanged segments instead of writing them (no objects).
pub const KEPT_DIR: &str = "kept";
/// A point being built, inside [`BACKUP_DIR`]; renamed to [`POINT_DIR`] when complete.
pub const POINT_NEW_DIR: &str = "point.new";
/// The manifest of a point.
pub const MANIFEST: &str = "MANIFEST";
/// The single-file metadata dump of points taken by earlier builds (read, no longer written).
pub const DUMP: &str = "meta.dump";
/// The superblock of a point.
pub const POINT_SUPERBLOCK: &str = "superblock";
/// A request to the daemon, inside [`BACKUP_DIR`].
pub const REQUEST: &str = "request";
/// The daemon's reply, inside [`BACKUP_DIR`].
pub const REPLY: &str = "reply";
/// The daemon's progress on a request, inside [`BACKUP_DIR`] (daemons of earlier builds
/// write none; clients of earlier builds do not read it).
pub const PROGRESS: &str = "progress";

/// One line about the current point of `backing`.
pub fn status(backing: &Path) -> Result<String> {
    let dir = Confined::open(backing)?;
    Ok(match current_point(&dir)? {
        Some(m) => format!(
            "point {} of filesystem {} taken at unix time {} (epoch {}), {} files; copy {}",
            m.point,
            crate::format::format_uuid(&m.fs_uuid),
            m.taken,
            m.epoch,
            m.entries.len(),
            backing.join(BACKUP_DIR).join(POINT_DIR).display()
        ),
        None => format!("no backup point in {}", backing.display()),
    })
}
