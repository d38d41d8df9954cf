//! The data object store: one ciphertext object per regular file that outgrew inline storage.
//!
//! Objects are named by a random 128-bit id (hex), fanned out into 256 subdirectories of
//! `objects/` by their first byte, so no directory grows unbounded and names reveal nothing.
//! Block `i` of a file lives at byte `i * block_size` of its object; never-written blocks are
//! holes of the backing file. [`ObjectStore`] is the seam to storage: [`DirObjects`] in
//! production, [`MemObjects`] in crash tests.
//!
//! Segments: an object is addressed like one file of up to 2^63 bytes, but backing
//! filesystems stop much earlier (ext4 with 4 KiB blocks at [`SEGMENT_LEN`], 16 TiB − 4 KiB).
//! [`DirObjects`] therefore keeps object bytes `[0, SEGMENT_LEN)` in the object file itself and
//! bytes `[k × SEGMENT_LEN, (k+1) × SEGMENT_LEN)` for `k ≥ 1` in segment file
//! `objects/XX/<id>.seg/<k>` (decimal `k`), which exists only once something was written there.
//! A missing or short segment below the object's end reads as zeros, like a hole.
//!
//! Backup points: [`ObjectStore::freeze_into`] hard-links every object into a point directory;
//! from then on [`DirObjects`] copies an object that is still shared with a point (link count
//! above one) to a fresh file and renames that over the live name before its first change, so
//! the point's link keeps the bytes it had at the point (copy-on-write per object). Every
//! mutation holds the shared side of the point gate ([`ObjectStore::point_gate`]), which the
//! point takes exclusively while it dumps the metadata and links the objects.

use crate::confined::{Access, Confined, Kind};
#[cfg(any(test, feature = "testing"))]
use crate::meta::CrashPoint;
use crate::{Error, Result};
use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Above this many dirty objects a data barrier uses syncfs(2).
const SYNCFS_THRESHOLD: usize = 16;

/// Bytes of an object kept in one file of the backing filesystem: ext4's largest file with
/// 4 KiB blocks ((2^32 − 1) × 4096). Objects of earlier versions never reached it on ext4, so
/// they are exactly segment 0.
pub const SEGMENT_LEN: u64 = (1 << 44) - (1 << 12);

/// Suffix of the directory holding an object's segments `1, 2, …`.
pub const SEGMENT_DIR_SUFFIX: &str = ".seg";

/// Splits `[offset, offset + len)` of an object into per-segment pieces:
/// (segment, offset within the segment, range of the buffer).
fn pieces(offset: u64, len: usize) -> Vec<(u64, u64, std::ops::Range<usize>)> {
    let mut out = Vec::with_capacity(1);
    let mut done = 0usize;
    while done < len {
        let pos = offset.saturating_add(done as u64);
        let seg = pos / SEGMENT_LEN;
        let within = pos % SEGMENT_LEN;
        let room = SEGMENT_LEN - within;
        let take = ((len - done) as u64).min(room) as usize;
        out.push((seg, within, done..done + take));
        done += take;
    }
    out
}

/// Parses a segment file name (`1`, `2`, …; no leading zeros).
pub fn parse_segment_name(name: &str) -> Option<u64> {
    if name.is_empty() || name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok().filter(|k| *k >= 1)
}

/// Identifier of a data object.
pub type ObjectId = [u8; 16];

/// Storage for data objects.
pub trait ObjectStore: Send + Sync {
    /// Reads at `offset`; returns the bytes read (short only at the end of the object; 0 if the
    /// object does not exist).
    fn read_at(&self, id: &ObjectId, offset: u64, buf: &mut [u8]) -> Result<usize>;
    /// Writes at `offset`, creating the object if needed.
    fn write_at(&self, id: &ObjectId, offset: u64, data: &[u8]) -> Result<()>;
    /// Sets the object's length (new space reads as zeros).
    fn set_len(&self, id: &ObjectId, len: u64) -> Result<()>;
    /// Makes `[offset, offset+len)` read as zeros, freeing storage where possible.
    fn punch_hole(&self, id: &ObjectId, offset: u64, len: u64) -> Result<()>;
    /// Makes the object's data durable.
    fn sync(&self, id: &ObjectId) -> Result<()>;
    /// Makes every object's data durable.
    fn sync_all(&self) -> Result<()>;
    /// Removes the object (absent is fine).
    fn remove(&self, id: &ObjectId) -> Result<()>;
    /// Every object with its length.
    fn list(&self) -> Result<Vec<(ObjectId, u64)>>;
    /// The gate every mutation holds shared; a backup point holds it exclusively. `None`: this
    /// store cannot take backup points.
    fn point_gate(&self) -> Option<Arc<RwLock<()>>> {
        None
    }
    /// Hard-links every object that `wanted` accepts into `dest/XX/<id>` (`dest` relative to
    /// the backing directory) and keeps those links' contents unchanged from then on
    /// (copy-on-write). The caller holds the point gate exclusively. Returns every frozen
    /// object with its length.
    fn freeze_into(
        &self,
        dest: &str,
        _wanted: &dyn Fn(&ObjectId) -> bool,
    ) -> Result<Vec<(ObjectId, u64)>> {
        Err(Error::invalid(format!(
            "{dest}: this object store cannot take backup points"
        )))
    }
    /// Tells the store whether a backup point exists (whose links must be kept unchanged).
    fn set_point_active(&self, _active: bool) {}
}

/// Parses a hex object name.
pub fn parse_object_name(name: &str) -> Option<ObjectId> {
    let bytes = hex::decode(name).ok()?;
    bytes.try_into().ok()
}

/// [`ObjectStore`] on a POSIX directory: `objects/` of a backing directory, every file in it
/// reached through [`Confined`] (never through a link, never outside).
pub struct DirObjects {
    /// The backing directory (backup points link objects into it).
    backing: Confined,
    /// Its `objects/` directory.
    dir: Confined,
    /// Open files by (object, segment).
    files: Mutex<lru::LruCache<(ObjectId, u64), Arc<ObjectFile>>>,
    /// Written (object, segment) files not yet synced.
    dirty: Mutex<std::collections::HashSet<(ObjectId, u64)>>,
    /// Shared by every mutation, exclusive while a backup point is taken.
    gate: Arc<RwLock<()>>,
    /// A backup point may share objects (hard links): mutations must check before writing.
    point_active: AtomicBool,
    /// Object files (object, segment) known not to be shared with a point since it was taken.
    private: Mutex<std::collections::HashSet<(ObjectId, u64)>>,
    /// Serializes copy-on-write so one object is copied once.
    cow: Mutex<()>,
    /// Whether syncfs(2) on the backing filesystem makes written data durable. Not on FUSE
    /// (ceph-fuse keeps written data in its own cache until each file is fsynced) nor on
    /// network filesystems; there every dirty object gets its own fdatasync.
    syncfs_is_durable: bool,
    /// Opened for reading only (fsck -n): every change fails with EROFS.
    read_only: bool,
}

impl DirObjects {
    /// The store in `objects/` of the backing directory `backing` (created if missing).
    pub fn open(backing: &Confined) -> Result<DirObjects> {
        backing.create_dir_all(crate::backing::OBJECTS_DIR)?;
        let dir = backing.open_dir(crate::backing::OBJECTS_DIR)?;
        // A point left by an earlier mount (or one taken offline) still shares objects: every
        // writer, fsck's repairs included, must copy before changing them.
        let point_active = ["point", "point.new"].iter().any(|p| {
            backing
                .status(&format!("{}/{p}", crate::backing::BACKUP_DIR))
                .ok()
                .flatten()
                .is_some()
        });
        let syncfs_is_durable = local_filesystem(&dir);
        Ok(DirObjects::with(
            backing.clone(),
            dir,
            point_active,
            syncfs_is_durable,
            false,
        ))
    }

    /// The store in `objects/` of `backing`, read-only: nothing is created, files are opened
    /// for reading, and every change fails with EROFS (fsck -n).
    pub fn open_read_only(backing: &Confined) -> Result<DirObjects> {
        let dir = backing.open_dir(crate::backing::OBJECTS_DIR)?;
        Ok(DirObjects::with(backing.clone(), dir, false, false, true))
    }

    fn with(
        backing: Confined,
        dir: Confined,
        point_active: bool,
        syncfs_is_durable: bool,
        read_only: bool,
    ) -> DirObjects {
        DirObjects {
            backing,
            dir,
            files: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(256).unwrap_or(NonZeroUsize::MIN),
            )),
            dirty: Mutex::new(Default::default()),
            gate: Arc::new(RwLock::new(())),
            point_active: AtomicBool::new(point_active),
            private: Mutex::new(Default::default()),
            cow: Mutex::new(()),
            syncfs_is_durable,
            read_only,
        }
    }

    fn refuse_read_only(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::posix(libc::EROFS, "objects are opened read-only"));
        }
        Ok(())
    }

    /// Directory of object `id`'s segments `1, 2, …`, relative to `objects/`.
    pub fn segment_dir(&self, id: &ObjectId) -> String {
        let name = hex::encode(id);
        format!(
            "{}/{name}{SEGMENT_DIR_SUFFIX}",
            name.get(..2).unwrap_or("00")
        )
    }

    /// Path of segment `seg` of object `id` relative to `objects/` (segment 0 is the object
    /// file).
    pub fn segment_path(&self, id: &ObjectId, seg: u64) -> String {
        if seg == 0 {
            self.path_of(id)
        } else {
            format!("{}/{seg}", self.segment_dir(id))
        }
    }

    /// A path relative to `objects/` as a full path, for messages.
    fn shown(&self, rel: &str) -> PathBuf {
        self.dir.display(rel)
    }

    /// The segments `k ≥ 1` of object `id` that exist, with their lengths, in order.
    fn segments(&self, id: &ObjectId) -> Result<Vec<(u64, u64)>> {
        let dir = self.segment_dir(id);
        let Some(entries) = self.dir.list_dir(&dir)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for ent in entries {
            if ent.kind != Kind::File {
                continue;
            }
            if let Some(k) = ent.name.to_str().and_then(parse_segment_name) {
                let len = self
                    .dir
                    .status(&format!("{dir}/{k}"))?
                    .map_or(0, |st| st.len);
                out.push((k, len));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Length of object `id` as one address space: the end of its last segment's data.
    fn logical_len(&self, id: &ObjectId) -> Result<u64> {
        let base = self.dir.status(&self.path_of(id))?.map_or(0, |st| st.len);
        Ok(self
            .segments(id)?
            .into_iter()
            .map(|(k, len)| k.saturating_mul(SEGMENT_LEN).saturating_add(len))
            .fold(base, u64::max))
    }

    /// Forgets the open file and the bookkeeping of one object file.
    fn forget(&self, id: &ObjectId, seg: u64) {
        lock(&self.files).pop(&(*id, seg));
        lock(&self.dirty).remove(&(*id, seg));
        lock(&self.private).remove(&(*id, seg));
    }

    /// Before the first change of an object after a point: if the object is still shared with
    /// the point (more than one link), copy it to a fresh file and rename that over the live
    /// name, so the point keeps the old bytes. The copy is durable before the rename, so a
    /// crash leaves either the old or the copied file under the live name, both complete.
    fn unshare(&self, id: &ObjectId, seg: u64) -> Result<()> {
        let key = (*id, seg);
        if !self.point_active.load(Ordering::Acquire) || lock(&self.private).contains(&key) {
            return Ok(());
        }
        let _one = lock(&self.cow);
        if lock(&self.private).contains(&key) {
            return Ok(());
        }
        let path = self.segment_path(id, seg);
        let Some(st) = self.dir.status(&path)? else {
            lock(&self.private).insert(key);
            return Ok(());
        };
        if st.nlink > 1 {
            let tmp = format!("{path}.cow");
            let src = self.dir.open_file(&path, Access::Read)?;
            // Never written through: a leftover (or anything planted) is removed first.
            self.dir.remove_file(&tmp)?;
            let dst = self.dir.open_file(&tmp, Access::CreateNew)?;
            copy_sparse(&src, &self.shown(&path), &dst, &self.shown(&tmp))?;
            dst.sync_all().map_err(|e| Error::io(self.shown(&tmp), e))?;
            self.dir.rename(&tmp, &path)?;
            match path.rsplit_once('/') {
                Some((parent, _)) => self.dir.open_dir(parent)?.sync()?,
                None => self.dir.sync()?,
            }
            lock(&self.files).put(key, Arc::new(ObjectFile::new(dst)));
            tracing::debug!(object = %hex::encode(id), segment = seg, "object copied on write (shared with a backup point)");
        }
        lock(&self.private).insert(key);
        Ok(())
    }

    /// Path of object `id` relative to `objects/`.
    pub fn path_of(&self, id: &ObjectId) -> String {
        let name = hex::encode(id);
        format!("{}/{name}", name.get(..2).unwrap_or("00"))
    }

    fn file(&self, id: &ObjectId, seg: u64, create: bool) -> Result<Option<Arc<ObjectFile>>> {
        if let Some(f) = lock(&self.files).get(&(*id, seg)) {
            return Ok(Some(f.clone()));
        }
        let path = self.segment_path(id, seg);
        let access = if self.read_only {
            Access::Read
        } else {
            Access::ReadWrite
        };
        let opened = match self.dir.try_open_file(&path, access) {
            // A read-only backing directory (ro mount, fsck -n on a snapshot) can still be read.
            Err(Error::Io { source, .. })
                if !create
                    && matches!(
                        source.raw_os_error(),
                        Some(libc::EACCES) | Some(libc::EROFS)
                    ) =>
            {
                self.dir.try_open_file(&path, Access::Read)?
            }
            other => other?,
        };
        let file = match opened {
            Some(f) => f,
            None => {
                if !create {
                    return Ok(None);
                }
                if let Some((dir, _)) = path.rsplit_once('/') {
                    self.dir.create_dir_all(dir)?;
                }
                self.dir.open_file(&path, Access::Create)?
            }
        };
        let file = Arc::new(ObjectFile::new(file));
        lock(&self.files).put((*id, seg), file.clone());
        Ok(Some(file))
    }

    /// Makes `[offset, offset+len)` of one object file read as zeros.
    fn punch_file(&self, id: &ObjectId, seg: u64, offset: u64, len: u64) -> Result<()> {
        self.unshare(id, seg)?;
        let Some(f) = self.file(id, seg, false)? else {
            return Ok(());
        };
        let path = self.shown(&self.segment_path(id, seg));
        let size = f.metadata().map_err(|e| Error::io(&path, e))?.len();
        if offset >= size {
            return Ok(());
        }
        let len = len.min(size - offset);
        use std::os::fd::AsRawFd;
        let (Ok(off), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(Error::invalid("punch range out of range"));
        };
        // SAFETY: fallocate on a valid, open descriptor owned by `f`; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off,
                l,
            )
        };
        if rc != 0 {
            // Backing filesystems without hole punching get explicit zeros.
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut pos = offset;
            while pos < offset + len {
                let n = (offset + len - pos).min(zeros.len() as u64) as usize;
                f.write_all_at(zeros.get(..n).unwrap_or_default(), pos)
                    .map_err(|e| Error::io(&path, e))?;
                pos += n as u64;
            }
        }
        lock(&self.dirty).insert((*id, seg));
        Ok(())
    }

    fn sync_file(&self, id: &ObjectId, seg: u64) -> Result<()> {
        if let Some(f) = self.file(id, seg, false)? {
            f.sync_data()
                .map_err(|e| Error::io(self.shown(&self.segment_path(id, seg)), e))?;
        }
        Ok(())
    }
}

/// Reads smaller than this fetch the aligned window of this size around them
/// ([`DirObjects::read_around`]): on a virtual disk a 16 KiB request costs what a 4 KiB one
/// does, and random reads of a file's blocks then often find their neighbours cached. Without
/// it a random-read run fetched the same bytes as gocryptfs in 35 578 disk requests against
/// 21 000 (gocryptfs's blocks straddle pages, so each of its reads brings a neighbour along).
const READ_AROUND: u64 = 16 << 10;
/// How far ahead of a sequential reader the object file is fetched ([`ReadStream`]).
const READ_AHEAD_WINDOW: u64 = 16 << 20;
/// Pieces in which the window is requested: the kernel caps one request for advice at the
/// device's readahead or largest I/O (128 KiB–8 MiB), and drops the rest silently.
const READ_AHEAD_PIECE: u64 = 1 << 20;
/// Reads in a row that must continue one another before the window is fetched, so that
/// random reads that happen to land close together fetch nothing.
const STREAM_MIN_STREAK: u32 = 3;

/// Writes at least this long are a stream (writeback of a file written in sequence: the core
/// writes runs of up to 128 KiB) whose write-out to the disk starts at once
/// ([`ObjectFile::start_write_out`]); shorter ones are left to the page cache, where rewrites of
/// the same blocks coalesce.
const STREAMING_WRITE: usize = 64 << 10;

/// An open object (segment) file and the read stream seen on it.
struct ObjectFile {
    file: File,
    stream: Mutex<ReadStream>,
}

impl std::ops::Deref for ObjectFile {
    type Target = File;
    fn deref(&self) -> &File {
        &self.file
    }
}

impl ObjectFile {
    fn new(file: File) -> ObjectFile {
        ObjectFile {
            file,
            stream: Mutex::new(ReadStream::default()),
        }
    }

    /// Starts writing `[offset, offset + len)` out to the disk without waiting for it. The
    /// kernel otherwise leaves written data in the page cache until a sync or its background
    /// threshold (a share of memory: gigabytes on a VM with 24 GiB), so a 1 GiB file written
    /// and then fsynced reached the disk only in the fsync; started early, the disk works
    /// while the rest is still being encrypted. Advice only: nothing is made durable by it
    /// (fsync does that), and its errors are ignored (a failed write-out is reported by the
    /// fsync).
    fn start_write_out(&self, offset: u64, len: usize) {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: sync_file_range on a valid descriptor owned by `self.file`; no memory is
        // passed.
        unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
    }

    /// Asks the backing filesystem to fetch ahead of a sequential reader. Its own readahead
    /// keeps one window in flight and waits for the reader to reach it, which on a virtual
    /// disk left the disk idle between windows (fewer than one request in flight on average,
    /// against eight for gocryptfs, whose concurrent reads keep a queue). Advice only: it
    /// changes nothing but the page cache, and its errors are ignored.
    fn read_ahead_for(&self, offset: u64, len: usize) {
        let Some((start, len)) = lock(&self.stream).on_read(offset, len as u64) else {
            return;
        };
        use std::os::fd::AsRawFd;
        let mut piece_start = start;
        let end = start.saturating_add(len);
        while piece_start < end {
            let piece_len = (end - piece_start).min(READ_AHEAD_PIECE);
            let (Ok(s), Ok(l)) = (i64::try_from(piece_start), i64::try_from(piece_len)) else {
                return;
            };
            // SAFETY: posix_fadvise on a valid descriptor owned by `self.file`; no memory is
            // passed.
            unsafe { libc::posix_fadvise(self.file.as_raw_fd(), s, l, libc::POSIX_FADV_WILLNEED) };
            piece_start += piece_len;
        }
    }
}

/// Recognizes a sequential reader of one file and says what to fetch ahead of it.
#[derive(Debug, Default)]
struct ReadStream {
    /// End of the furthest read of the current stream.
    last_end: u64,
    /// Reads in a row that continued the stream.
    streak: u32,
    /// End of what was already requested ahead.
    fetched_to: u64,
}

impl ReadStream {
    /// Records a read of `[offset, offset + len)`; returns the range `(start, len)` to fetch
    /// ahead, if any. A read continues the stream if it starts within four reads of where
    /// the furthest read ended (request threads finish neighbouring READs out of order);
    /// once [`STREAM_MIN_STREAK`] reads in a row did, the window past the stream is topped
    /// up whenever less than half of it is left. A late read from behind an established
    /// stream is passed over; any other read starts a new stream.
    fn on_read(&mut self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let end = offset.saturating_add(len);
        let slack = len.max(128 << 10).saturating_mul(4);
        if offset.abs_diff(self.last_end) <= slack {
            self.streak = self.streak.saturating_add(1);
            self.last_end = self.last_end.max(end);
        } else if self.streak >= STREAM_MIN_STREAK
            && offset < self.last_end
            && offset.saturating_add(READ_AHEAD_WINDOW) >= self.last_end
        {
            return None;
        } else {
            *self = ReadStream {
                last_end: end,
                streak: 0,
                fetched_to: 0,
            };
            return None;
        }
        if self.streak < STREAM_MIN_STREAK {
            return None;
        }
        let want = self.last_end.saturating_add(READ_AHEAD_WINDOW);
        if self.fetched_to.saturating_add(READ_AHEAD_WINDOW / 2) > want {
            return None;
        }
        let start = self.fetched_to.max(self.last_end);
        self.fetched_to = want;
        Some((start, want - start))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads from `pos` until `buf` is full or the file ends; returns the bytes read.
fn read_full(f: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let rest = buf.get_mut(done..).unwrap_or_default();
        match f.read_at(rest, pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

impl DirObjects {
    /// A read smaller than [`READ_AROUND`] fetches the aligned window that holds it, in one
    /// request, so that reads of its neighbours find them in the backing page cache. Returns
    /// `None` (the caller reads plainly) when the read crosses a window or a segment, or the
    /// window comes back short (end of object, a missing file).
    fn read_around(&self, id: &ObjectId, offset: u64, buf: &mut [u8]) -> Result<Option<usize>> {
        let start = offset - offset % READ_AROUND;
        let end = start.saturating_add(READ_AROUND);
        let seg = start / SEGMENT_LEN;
        if offset.saturating_add(buf.len() as u64) > end || (end - 1) / SEGMENT_LEN != seg {
            return Ok(None);
        }
        let Some(f) = self.file(id, seg, false)? else {
            return Ok(None);
        };
        let mut window = [0u8; READ_AROUND as usize];
        let got = read_full(&f, &mut window, start % SEGMENT_LEN)
            .map_err(|e| Error::io(self.segment_path(id, seg), e))?;
        let skip = (offset - start) as usize;
        match window.get(skip..skip + buf.len()) {
            Some(part) if skip + buf.len() <= got => {
                // Counted here only: a read that falls back is counted by the plain path.
                f.read_ahead_for(offset % SEGMENT_LEN, buf.len());
                buf.copy_from_slice(part);
                Ok(Some(buf.len()))
            }
            _ => Ok(None),
        }
    }
}

impl ObjectStore for DirObjects {
    fn read_at(&self, id: &ObjectId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if (buf.len() as u64) < READ_AROUND {
            if let Some(n) = self.read_around(id, offset, buf)? {
                return Ok(n);
            }
        }
        let mut short = false;
        for (seg, within, range) in pieces(offset, buf.len()) {
            let part = buf.get_mut(range).unwrap_or_default();
            let mut done = 0;
            if let Some(f) = self.file(id, seg, false)? {
                f.read_ahead_for(within, part.len());
                done = read_full(&f, part, within)
                    .map_err(|e| Error::io(self.shown(&self.segment_path(id, seg)), e))?;
            }
            if done < part.len() {
                // A hole up to a later segment, or the end of the object.
                part.get_mut(done..).unwrap_or_default().fill(0);
                short = true;
            }
        }
        if !short {
            return Ok(buf.len());
        }
        let end = self.logical_len(id)?;
        Ok(end.saturating_sub(offset).min(buf.len() as u64) as usize)
    }

    fn write_at(&self, id: &ObjectId, offset: u64, data: &[u8]) -> Result<()> {
        self.refuse_read_only()?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        for (seg, within, range) in pieces(offset, data.len()) {
            self.unshare(id, seg)?;
            let f = self
                .file(id, seg, true)?
                .ok_or_else(|| Error::integrity("object vanished"))?;
            let part = data.get(range).unwrap_or_default();
            f.write_all_at(part, within)
                .map_err(|e| Error::io(self.shown(&self.segment_path(id, seg)), e))?;
            if part.len() >= STREAMING_WRITE {
                f.start_write_out(within, part.len());
            }
            lock(&self.dirty).insert((*id, seg));
        }
        Ok(())
    }

    fn set_len(&self, id: &ObjectId, len: u64) -> Result<()> {
        self.refuse_read_only()?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let last = len.saturating_sub(1) / SEGMENT_LEN;
        // Segments wholly beyond the new end go; the one holding the end gets its length.
        let segments = self.segments(id)?;
        let mut kept = 0usize;
        for (seg, _) in &segments {
            if *seg > last {
                self.forget(id, *seg);
                self.dir.remove_file(&self.segment_path(id, *seg))?;
            } else {
                kept += 1;
            }
        }
        if kept == 0 && !segments.is_empty() && last == 0 {
            // Best effort: an empty directory is harmless, but tidier gone.
            let _ = self.dir.remove_dir(&self.segment_dir(id));
        }
        self.unshare(id, last)?;
        let f = self
            .file(id, last, true)?
            .ok_or_else(|| Error::integrity("object vanished"))?;
        f.set_len(len - last * SEGMENT_LEN)
            .map_err(|e| Error::io(self.shown(&self.segment_path(id, last)), e))?;
        lock(&self.dirty).insert((*id, last));
        Ok(())
    }

    fn punch_hole(&self, id: &ObjectId, offset: u64, len: u64) -> Result<()> {
        self.refuse_read_only()?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        let end = offset.saturating_add(len);
        let mut pos = offset;
        while pos < end {
            let seg = pos / SEGMENT_LEN;
            let within = pos % SEGMENT_LEN;
            let take = (end - pos).min(SEGMENT_LEN - within);
            if seg == 0 || self.dir.status(&self.segment_path(id, seg))?.is_some() {
                self.punch_file(id, seg, within, take)?;
            }
            pos += take;
        }
        Ok(())
    }

    fn sync(&self, id: &ObjectId) -> Result<()> {
        self.sync_file(id, 0)?;
        let segs: Vec<u64> = {
            let mut dirty = lock(&self.dirty);
            dirty.remove(&(*id, 0));
            let segs: Vec<u64> = dirty
                .iter()
                .filter(|(i, _)| i == id)
                .map(|(_, s)| *s)
                .collect();
            for s in &segs {
                dirty.remove(&(*id, *s));
            }
            segs
        };
        for seg in segs {
            self.sync_file(id, seg)?;
        }
        Ok(())
    }

    fn sync_all(&self) -> Result<()> {
        let files: Vec<(ObjectId, u64)> = lock(&self.dirty).drain().collect();
        if files.len() > SYNCFS_THRESHOLD && self.syncfs_is_durable {
            // One syncfs(2) of the backing filesystem beats thousands of fdatasync calls (one
            // journal commit instead of one per object).
            match rustix::fs::syncfs(self.dir.as_fd()) {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(error = %e, "syncfs failed; syncing objects one by one"),
            }
        }
        for (id, seg) in files {
            self.sync_file(&id, seg)?;
        }
        Ok(())
    }

    fn remove(&self, id: &ObjectId) -> Result<()> {
        self.refuse_read_only()?;
        let _gate = self.gate.read().unwrap_or_else(|p| p.into_inner());
        {
            let mut files = lock(&self.files);
            let open: Vec<(ObjectId, u64)> = files
                .iter()
                .map(|(k, _)| *k)
                .filter(|(i, _)| i == id)
                .collect();
            for k in open {
                files.pop(&k);
            }
        }
        lock(&self.dirty).retain(|(i, _)| i != id);
        lock(&self.private).retain(|(i, _)| i != id);
        self.dir.remove_file(&self.path_of(id))?;
        self.dir.remove_tree(&self.segment_dir(id))?;
        Ok(())
    }

    fn list(&self) -> Result<Vec<(ObjectId, u64)>> {
        let mut out: HashMap<ObjectId, u64> = HashMap::new();
        for sub in self.dir.list()? {
            // Only the fan-out directories this store writes; anything else is fsck's to report.
            let (Kind::Dir, Some(sub_name)) = (sub.kind, sub.name.to_str()) else {
                continue;
            };
            for ent in self.dir.open_dir(sub_name)?.list()? {
                let Some(name) = ent.name.to_str() else {
                    continue;
                };
                if let (Kind::File, Some(id)) = (ent.kind, parse_object_name(name)) {
                    let len = self
                        .dir
                        .status(&format!("{sub_name}/{name}"))?
                        .map_or(0, |st| st.len);
                    let e = out.entry(id).or_insert(0);
                    *e = (*e).max(len);
                } else if let (Kind::Dir, Some(id)) = (
                    ent.kind,
                    name.strip_suffix(SEGMENT_DIR_SUFFIX)
                        .and_then(parse_object_name),
                ) {
                    let end = self
                        .segments(&id)?
                        .into_iter()
                        .map(|(k, len)| k.saturating_mul(SEGMENT_LEN).saturating_add(len))
                        .max()
                        .unwrap_or(0);
                    let e = out.entry(id).or_insert(0);
                    *e = (*e).max(end);
                }
            }
        }
        Ok(out.into_iter().collect())
    }

    fn point_gate(&self) -> Option<Arc<RwLock<()>>> {
        Some(self.gate.clone())
    }

    fn freeze_into(
        &self,
        dest: &str,
        wanted: &dyn Fn(&ObjectId) -> bool,
    ) -> Result<Vec<(ObjectId, u64)>> {
        let mut objects = self.list()?;
        objects.retain(|(id, _)| wanted(id));
        // A point is one file per object (its manifest, verification and restore know no
        // segments): refuse rather than take a point that silently lacks data.
        for (id, _) in &objects {
            if self.dir.status(&self.segment_dir(id))?.is_some() {
                return Err(Error::posix(
                    libc::EFBIG,
                    format!(
                        "backup point: object {} holds data beyond {SEGMENT_LEN} bytes (16 TiB), which backup points cannot carry yet",
                        hex::encode(id)
                    ),
                ));
            }
        }
        // Mark first: from here on every mutation checks the link count.
        self.point_active.store(true, Ordering::Release);
        lock(&self.private).clear();
        for (id, _) in &objects {
            let rel = self.path_of(id);
            if let Some((sub, _)) = rel.split_once('/') {
                self.backing.create_dir_all(&format!("{dest}/{sub}"))?;
            }
            self.backing.hard_link(
                &format!("{}/{rel}", crate::backing::OBJECTS_DIR),
                &format!("{dest}/{rel}"),
            )?;
        }
        Ok(objects)
    }

    fn set_point_active(&self, active: bool) {
        self.point_active.store(active, Ordering::Release);
        lock(&self.private).clear();
    }
}

/// Whether `dir` is on a local disk filesystem whose syncfs(2) is a full data barrier.
fn local_filesystem(dir: &Confined) -> bool {
    const LOCAL: [i64; 5] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0x2FC1_2FC1, // zfs
    ];
    // `f_type` is i64 here but narrower on other targets.
    #[allow(clippy::unnecessary_cast)]
    let local = |t| LOCAL.contains(&(t as i64));
    rustix::fs::fstatfs(dir.as_fd()).is_ok_and(|st| local(st.f_type))
}

/// Copies `src` to `dst` keeping holes: only the data ranges (SEEK_DATA/SEEK_HOLE) are copied,
/// and `dst` gets `src`'s length. Paths are for error messages.
pub fn copy_sparse(src: &File, src_path: &Path, dst: &File, dst_path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let len = src.metadata().map_err(|e| Error::io(src_path, e))?.len();
    dst.set_len(0).map_err(|e| Error::io(dst_path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let Ok(off) = i64::try_from(pos) else { break };
        // SAFETY: lseek on a valid, open descriptor owned by `src`; no memory is passed.
        let data = unsafe { libc::lseek(src.as_raw_fd(), off, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole remains
            }
            if err.raw_os_error() == Some(libc::EINVAL) {
                // No SEEK_DATA support: copy everything.
                copy_range(src, src_path, dst, dst_path, pos, len, &mut buf)?;
                break;
            }
            return Err(Error::io(src_path, err));
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        let (start, end) = (
            data as u64,
            if hole < 0 {
                len
            } else {
                (hole as u64).min(len)
            },
        );
        copy_range(src, src_path, dst, dst_path, start, end, &mut buf)?;
        pos = end.max(start + 1);
    }
    dst.set_len(len).map_err(|e| Error::io(dst_path, e))
}

fn copy_range(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    start: u64,
    end: u64,
    buf: &mut [u8],
) -> Result<()> {
    let mut pos = start;
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let n = src
            .read_at(chunk, pos)
            .map_err(|e| Error::io(src_path, e))?;
        if n == 0 {
            break;
        }
        dst.write_all_at(chunk.get(..n).unwrap_or_default(), pos)
            .map_err(|e| Error::io(dst_path, e))?;
        pos += n as u64;
    }
    Ok(())
}

/// The object store of a backing directory that has no `objects/` directory: it holds no
/// object, so every read finds none, and refuses every write (fsck then reports each object a
/// file needs as missing).
#[derive(Debug, Default)]
pub struct NoObjects;

impl NoObjects {
    fn refuse(op: &str, id: &ObjectId) -> Error {
        Error::invalid(format!(
            "{op} object {}: the backing directory has no {} directory",
            hex::encode(id),
            crate::backing::OBJECTS_DIR
        ))
    }
}

impl ObjectStore for NoObjects {
    fn read_at(&self, _id: &ObjectId, _offset: u64, _buf: &mut [u8]) -> Result<usize> {
        Ok(0)
    }
    fn write_at(&self, id: &ObjectId, _offset: u64, _data: &[u8]) -> Result<()> {
        Err(Self::refuse("write", id))
    }
    fn set_len(&self, id: &ObjectId, _len: u64) -> Result<()> {
        Err(Self::refuse("truncate", id))
    }
    fn punch_hole(&self, id: &ObjectId, _offset: u64, _len: u64) -> Result<()> {
        Err(Self::refuse("punch a hole in", id))
    }
    fn sync(&self, _id: &ObjectId) -> Result<()> {
        Ok(())
    }
    fn sync_all(&self) -> Result<()> {
        Ok(())
    }
    fn remove(&self, _id: &ObjectId) -> Result<()> {
        Ok(())
    }
    fn list(&self) -> Result<Vec<(ObjectId, u64)>> {
        Ok(Vec::new())
    }
}

#[cfg(any(test, feature = "testing"))]
#[derive(Default, Clone)]
struct MemObject {
    durable: Vec<u8>,
    view: Vec<u8>,
    dirty: bool,
}

#[cfg(any(test, feature = "testing"))]
/// In-memory [`ObjectStore`] that knows which bytes were synced, for crash tests.
#[derive(Default)]
pub struct MemObjects {
    objects: Mutex<HashMap<ObjectId, MemObject>>,
    crash: Option<Arc<CrashPoint>>,
}

#[cfg(any(test, feature = "testing"))]
impl MemObjects {
    /// An empty store.
    pub fn new() -> MemObjects {
        MemObjects::default()
    }
    /// An empty store whose writes count towards `crash`.
    pub fn with_crash_point(crash: Arc<CrashPoint>) -> MemObjects {
        MemObjects {
            objects: Mutex::new(HashMap::new()),
            crash: Some(crash),
        }
    }
    /// The store a crash leaves: for each object either its synced state, or (where
    /// `keep_unsynced` says so for that object) its latest state.
    pub fn crash_image(&self, keep_unsynced: &mut dyn FnMut(&ObjectId) -> bool) -> MemObjects {
        let objs = lock(&self.objects);
        let mut out = HashMap::new();
        for (id, o) in objs.iter() {
            let bytes = if o.dirty && keep_unsynced(id) {
                o.view.clone()
            } else {
                o.durable.clone()
            };
            out.insert(
                *id,
                MemObject {
                    durable: bytes.clone(),
                    view: bytes,
                    dirty: false,
                },
            );
        }
        MemObjects {
            objects: Mutex::new(out),
            crash: None,
        }
    }
    /// Raw bytes of an object (tamper tests).
    pub fn raw(&self, id: &ObjectId) -> Option<Vec<u8>> {
        lock(&self.objects).get(id).map(|o| o.view.clone())
    }
    /// Replaces an object's raw bytes (tamper tests).
    pub fn poke(&self, id: &ObjectId, bytes: Option<Vec<u8>>) {
        let mut objs = lock(&self.objects);
        match bytes {
            Some(b) => {
                objs.insert(
                    *id,
                    MemObject {
                        durable: b.clone(),
                        view: b,
                        dirty: false,
                    },
                );
            }
            None => {
                objs.remove(id);
            }
        }
    }
    fn tick(&self, what: &str) -> Result<()> {
        match &self.crash {
            Some(c) => c.tick(what),
            None => Ok(()),
        }
    }
    fn check(&self, what: &str) -> Result<()> {
        match &self.crash {
            Some(c) => c.check(what),
            None => Ok(()),
        }
    }
}

#[cfg(any(test, feature = "testing"))]
impl ObjectStore for MemObjects {
    fn read_at(&self, id: &ObjectId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let objs = lock(&self.objects);
        let Some(o) = objs.get(id) else { return Ok(0) };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(o.view.len());
        let src = o.view.get(start..).unwrap_or_default();
        let n = src.len().min(buf.len());
        if let (Some(d), Some(s)) = (buf.get_mut(..n), src.get(..n)) {
            d.copy_from_slice(s);
        }
        Ok(n)
    }
    fn write_at(&self, id: &ObjectId, offset: u64, data: &[u8]) -> Result<()> {
        self.tick("object write")?;
        let mut objs = lock(&self.objects);
        let o = objs.entry(*id).or_default();
        let start = usize::try_from(offset).map_err(|_| Error::invalid("offset"))?;
        let end = start + data.len();
        if o.view.len() < end {
            o.view.resize(end, 0);
        }
        if let Some(d) = o.view.get_mut(start..end) {
            d.copy_from_slice(data);
        }
        o.dirty = true;
        Ok(())
    }
    fn set_len(&self, id: &ObjectId, len: u64) -> Result<()> {
        self.tick("object set_len")?;
        let mut objs = lock(&self.objects);
        let o = objs.entry(*id).or_default();
        o.view
            .resize(usize::try_from(len).map_err(|_| Error::invalid("len"))?, 0);
        o.dirty = true;
        Ok(())
    }
    fn punch_hole(&self, id: &ObjectId, offset: u64, len: u64) -> Result<()> {
        self.tick("object punch")?;
        let mut objs = lock(&self.objects);
        if let Some(o) = objs.get_mut(id) {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(o.view.len());
            let end = usize::try_from(offset.saturating_add(len))
                .unwrap_or(usize::MAX)
                .min(o.view.len());
            if let Some(d) = o.view.get_mut(start..end) {
                d.fill(0);
            }
            o.dirty = true;
        }
        Ok(())
    }
    fn sync(&self, id: &ObjectId) -> Result<()> {
        self.check("object sync")?;
        if let Some(o) = lock(&self.objects).get_mut(id) {
            o.durable = o.view.clone();
            o.dirty = false;
        }
        Ok(())
    }
    fn sync_all(&self) -> Result<()> {
        self.check("object sync_all")?;
        for o in lock(&self.objects).values_mut() {
            if o.dirty {
                o.durable = o.view.clone();
                o.dirty = false;
            }
        }
        Ok(())
    }
    fn remove(&self, id: &ObjectId) -> Result<()> {
        self.tick("object remove")?;
        // Removal is a metadata operation of the backing filesystem; model it as immediate.
        lock(&self.objects).remove(id);
        Ok(())
    }
    fn list(&self) -> Result<Vec<(ObjectId, u64)>> {
        Ok(lock(&self.objects)
            .iter()
            .map(|(k, v)| (*k, v.view.len() as u64))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;

    #[test]
    fn a_sequential_reader_gets_the_window_ahead_topped_up_at_half() {
        let mut s = ReadStream::default();
        assert_eq!(s.on_read(0, 128 * KIB), None);
        assert_eq!(s.on_read(128 * KIB, 128 * KIB), None);
        // The third read in a row starts the window past the stream's end.
        assert_eq!(
            s.on_read(256 * KIB, 128 * KIB),
            Some((384 * KIB, READ_AHEAD_WINDOW))
        );
        // Nothing more until less than half the window is left ahead...
        let mut off = 384 * KIB;
        while off + 128 * KIB + READ_AHEAD_WINDOW / 2 < 384 * KIB + READ_AHEAD_WINDOW {
            assert_eq!(s.on_read(off, 128 * KIB), None, "at {off}");
            off += 128 * KIB;
        }
        // ...then only the part not yet requested.
        let end = off + 128 * KIB;
        assert_eq!(
            s.on_read(off, 128 * KIB),
            Some((384 * KIB + READ_AHEAD_WINDOW, end - 384 * KIB))
        );
    }

    #[test]
    fn reads_finished_out_of_order_keep_the_stream() {
        let mut s = ReadStream::default();
        for i in [0u64, 2, 1, 3] {
            let _ = s.on_read(i * MIB, MIB);
        }
        assert!(s.streak >= STREAM_MIN_STREAK);
        let fetched = s.fetched_to;
        assert!(fetched >= 4 * MIB + READ_AHEAD_WINDOW / 2);
        // A straggler from well behind neither resets the stream nor fetches.
        assert_eq!(s.on_read(MIB / 2, 4 * KIB), None);
        assert_eq!(s.fetched_to, fetched);
        let streak = s.streak;
        let _ = s.on_read(4 * MIB, MIB);
        assert_eq!(
            s.streak,
            streak + 1,
            "the stream goes on after the straggler"
        );
    }

    #[test]
    fn random_reads_fetch_nothing() {
        let mut s = ReadStream::default();
        // 4 KiB reads scattered over 256 MiB, two of them close to the previous one.
        let offsets = [
            7 * MIB,
            200 * MIB,
            200 * MIB + 100 * KIB,
            31 * MIB,
            31 * MIB + 8 * KIB,
            150 * MIB,
        ];
        for off in offsets {
            assert_eq!(s.on_read(off, 4 * KIB), None, "at {off}");
        }
        // Jumping elsewhere in the middle of a stream starts over.
        let mut s = ReadStream::default();
        for i in 0..4 {
            let _ = s.on_read(i * 128 * KIB, 128 * KIB);
        }
        assert_eq!(s.on_read(100 * MIB, 128 * KIB), None);
        assert_eq!(s.streak, 0);
        assert_eq!(s.fetched_to, 0);
    }

    #[test]
    fn small_reads_through_the_window_return_exactly_their_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirObjects::open(&Confined::open(dir.path()).expect("dir")).expect("open");
        let id = [9u8; 16];
        let len = 40 * KIB + 1234;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 253) as u8).collect();
        store.write_at(&id, 0, &data).expect("write");
        // Inside a window, across a window's end, up to and past the object's end.
        let cases = [
            (0, 4096),
            (4096, 4096),
            (12 * KIB, 4096),
            (15 * KIB, 2048),
            (16 * KIB - 1, 2),
            (32 * KIB + 100, 100),
            (len - 10, 10),
            (len - 10, 100),
            (len, 10),
            (len + 5000, 10),
        ];
        for (off, n) in cases {
            let mut buf = vec![0xAAu8; n as usize];
            let got = store.read_at(&id, off, &mut buf).expect("read");
            let want = data
                .get(off.min(len) as usize..(off + n).min(len) as usize)
                .unwrap_or_default();
            assert_eq!(got, want.len(), "length at {off}+{n}");
            assert_eq!(buf.get(..got), Some(want), "bytes at {off}+{n}");
        }
        // A missing object reads as nothing.
        let mut buf = [1u8; 10];
        assert_eq!(store.read_at(&[1u8; 16], 0, &mut buf).expect("read"), 0);
    }

    #[test]
    fn read_ahead_leaves_object_bytes_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = DirObjects::open(&Confined::open(dir.path()).expect("dir")).expect("open");
        let id = [7u8; 16];
        let data: Vec<u8> = (0..40 * MIB).map(|i| (i % 251) as u8).collect();
        store.write_at(&id, 0, &data).expect("write");
        let mut back = vec![0u8; data.len()];
        for (i, chunk) in back.chunks_mut(128 * KIB as usize).enumerate() {
            let n = store
                .read_at(&id, i as u64 * 128 * KIB, chunk)
                .expect("read");
            assert_eq!(n, chunk.len());
        }
        assert!(back == data, "bytes read back differ");
    }

    #[test]
    fn syncfs_is_trusted_only_on_local_disk_filesystems() {
        // procfs is no disk filesystem; FUSE and network mounts are refused the same way.
        assert!(!local_filesystem(
            &Confined::open(Path::new("/proc")).expect("proc")
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        let on_disk = local_filesystem(&Confined::open(dir.path()).expect("dir"));
        let fs_type = std::process::Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(dir.path())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let expected = ["ext2/ext3", "xfs", "btrfs", "tmpfs", "zfs"].contains(&fs_type.as_str());
        assert_eq!(on_disk, expected, "temp dir on {fs_type}");
    }

    #[test]
    fn copy_sparse_keeps_contents_length_and_holes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let src = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&a)
            .expect("create a");
        src.write_all_at(b"head", 0).expect("write");
        src.write_all_at(b"tail", 10 << 20).expect("write");
        src.set_len((12 << 20) + 3).expect("len");
        let dst = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&b)
            .expect("create b");
        copy_sparse(&src, &a, &dst, &b).expect("copy");
        assert_eq!(std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
        use std::os::unix::fs::MetadataExt;
        let blocks = dst.metadata().expect("meta").blocks();
        assert!(blocks < 1024, "the hole was filled: {blocks} sectors");
    }
}
