//! Reading and writing object files well: [`ObjectFile`] starts the write-out of streamed
//! writes early and fetches ahead of sequential readers, and small reads fetch the aligned
//! window around them. All of it is advice to the backing filesystem: bytes read and written
//! are exactly those of the plain path.

use super::{lock, DirObjects, ObjectId, SEGMENT_LEN};
use crate::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;

/// Reads smaller than this fetch the aligned window of this size around them
/// ([`DirObjects::read_around`]): on a virtual disk a 16 KiB request costs what a 4 KiB one
/// does, and random reads of a file's blocks then often find their neighbours cached. Without
/// it a random-read run fetched the same bytes as gocryptfs in 35 578 disk requests against
/// 21 000 (gocryptfs's blocks straddle pages, so each of its reads brings a neighbour along).
pub(super) const READ_AROUND: u64 = 16 << 10;
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
pub(super) const STREAMING_WRITE: usize = 64 << 10;

/// An open object (segment) file and the read stream seen on it.
pub(super) struct ObjectFile {
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
    pub(super) fn new(file: File) -> ObjectFile {
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
    pub(super) fn start_write_out(&self, offset: u64, len: usize) {
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
    pub(super) fn read_ahead_for(&self, offset: u64, len: usize) {
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

/// Reads from `pos` until `buf` is full or the file ends; returns the bytes read.
pub(super) fn read_full(f: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
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
    pub(super) fn read_around(
        &self,
        id: &ObjectId,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<Option<usize>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confined::Confined;
    use crate::objects::ObjectStore;

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
}
