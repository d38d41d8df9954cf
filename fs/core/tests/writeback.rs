//! Writeback while the file is in use: a writeback releases the file once its block entries
//! are committed, so while its ciphertext is still on the way to the object, reads and writes
//! of the file go on and see the newest data; and writers past half the dirty-memory bound
//! get a background writeback instead of waiting for one.
//!
//! The object store here can hold every data write at a gate until the test opens it, so the
//! window between "entries committed" and "object written" stays open as long as the test
//! needs; the metadata store likewise holds flushes, for deletions committed during one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::ROOT;
use digimedfs_core::filesystem::{Filesystem, OpenOptions, ROOT_INO};
use digimedfs_core::meta::{Batch, MemStore, MetaStore, ScanFn};
use digimedfs_core::objects::{ObjectId, ObjectStore};
use digimedfs_core::testing::MemImage;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

const BS: usize = 4096;
/// Blocks in the test file: beyond inline storage.
const BLOCKS: usize = 32;

/// A point where storage calls wait while the test holds it closed.
#[derive(Default)]
struct Gate {
    /// Whether calls must wait, and how many are waiting.
    state: Mutex<(bool, usize)>,
    changed: Condvar,
}

/// Opens the gate when dropped, so a failing test does not leave a writeback (and the
/// filesystem's shutdown) waiting forever.
struct ClosedGate<'a>(&'a Gate);

impl Drop for ClosedGate<'_> {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().0 = false;
        self.0.changed.notify_all();
    }
}

impl Gate {
    fn close(&self) -> ClosedGate<'_> {
        self.state.lock().unwrap().0 = true;
        ClosedGate(self)
    }
    /// Called by the storage: returns once the gate is open.
    fn pass(&self) {
        let mut g = self.state.lock().unwrap();
        g.1 += 1;
        self.changed.notify_all();
        let mut g = self.changed.wait_while(g, |s| s.0).unwrap();
        g.1 -= 1;
    }
    /// Waits until a call is held at the closed gate.
    fn wait_for_held_call(&self) {
        let g = self.state.lock().unwrap();
        let (g, _) = self
            .changed
            .wait_timeout_while(g, Duration::from_secs(10), |s| s.1 == 0)
            .unwrap();
        assert!(g.1 > 0, "no storage call reached the gate");
    }
}

/// MemObjects whose `write_at` waits while the gate is closed.
struct GatedObjects {
    inner: Arc<dyn ObjectStore>,
    gate: Gate,
}

impl ObjectStore for GatedObjects {
    fn read_at(&self, id: &ObjectId, offset: u64, buf: &mut [u8]) -> digimedfs_core::Result<usize> {
        self.inner.read_at(id, offset, buf)
    }
    fn write_at(&self, id: &ObjectId, offset: u64, data: &[u8]) -> digimedfs_core::Result<()> {
        self.gate.pass();
        self.inner.write_at(id, offset, data)
    }
    fn set_len(&self, id: &ObjectId, len: u64) -> digimedfs_core::Result<()> {
        self.inner.set_len(id, len)
    }
    fn punch_hole(&self, id: &ObjectId, offset: u64, len: u64) -> digimedfs_core::Result<()> {
        self.inner.punch_hole(id, offset, len)
    }
    fn sync(&self, id: &ObjectId) -> digimedfs_core::Result<()> {
        self.inner.sync(id)
    }
    fn sync_all(&self) -> digimedfs_core::Result<()> {
        self.inner.sync_all()
    }
    fn remove(&self, id: &ObjectId) -> digimedfs_core::Result<()> {
        self.inner.remove(id)
    }
    fn list(&self) -> digimedfs_core::Result<Vec<(ObjectId, u64)>> {
        self.inner.list()
    }
}

/// Opens `img` with its object writes behind a gate.
fn open_gated(img: &MemImage, opts: &OpenOptions) -> (Arc<Filesystem>, Arc<GatedObjects>) {
    let gated = Arc::new(GatedObjects {
        inner: img.objects.clone(),
        gate: Gate::default(),
    });
    let fs = img
        .open_over(img.meta.clone(), gated.clone(), opts)
        .unwrap();
    (Arc::new(fs), gated)
}

/// Runs `f` on another thread and returns its result, failing if it takes over 10 s (the
/// file would then still be locked by the writeback held at the gate).
fn within_10s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the file stayed locked while its writeback waited for the object write")
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn blocks_in_flight_read_and_change_while_the_object_write_waits() {
    let img = MemImage::create(BS as u32).unwrap();
    let (fs, gate) = open_gated(&img, &OpenOptions::default());
    // Version A of every block, durable.
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, b"f", 0o644, 0, libc::O_RDWR)
        .unwrap();
    let ino = a.ino;
    let v_a = pattern(0xA0, BLOCKS * BS);
    fs.write(ino, fh, 0, &v_a).unwrap();
    fs.fsync(ino, fh, false).unwrap();
    // Blocks 1 and 2 rewritten (version B); the fsync's writeback stops at the gate.
    let v_b = pattern(0xB0, 2 * BS);
    fs.write(ino, fh, BS as u64, &v_b).unwrap();
    let closed = gate.gate.close();
    let syncing = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.fsync(ino, fh, false))
    };
    gate.gate.wait_for_held_call();

    // The object still holds version A of blocks 1 and 2, their entries name version B.
    let mut want = v_a.clone();
    want[BS..3 * BS].copy_from_slice(&v_b);
    let got = {
        let fs = fs.clone();
        within_10s(move || fs.read(ino, fh, 0, (BLOCKS * BS) as u32).unwrap())
    };
    assert!(got == want, "a read during the object write saw stale data");

    // A partial write into a block in flight starts from its new version.
    let patch = pattern(0xC0, 100);
    {
        let fs = fs.clone();
        let patch = patch.clone();
        within_10s(move || fs.write(ino, fh, (2 * BS + 50) as u64, &patch).unwrap());
    }
    want[2 * BS + 50..2 * BS + 150].copy_from_slice(&patch);
    let got = {
        let fs = fs.clone();
        within_10s(move || fs.read(ino, fh, 0, (BLOCKS * BS) as u32).unwrap())
    };
    assert!(
        got == want,
        "a partial write into a block in flight lost data"
    );

    drop(closed);
    syncing.join().unwrap().unwrap();
    assert!(fs.read(ino, fh, 0, (BLOCKS * BS) as u32).unwrap() == want);
    fs.fsync(ino, fh, false).unwrap();
    fs.release(ino, fh).unwrap();
    fs.close().unwrap();

    // Everything is in storage: a fresh mount reads the same.
    let fs = img.open(&OpenOptions::default()).unwrap();
    let a = fs.lookup(&ROOT, ROOT_INO, b"f").unwrap();
    let fh = fs.open_file(&ROOT, a.ino, libc::O_RDONLY).unwrap();
    assert!(fs.read(a.ino, fh, 0, (BLOCKS * BS) as u32).unwrap() == want);
    fs.close().unwrap();
}

#[test]
fn writers_wait_while_dirty_and_in_flight_data_exceed_the_bound() {
    let img = MemImage::create(BS as u32).unwrap();
    let opts = OpenOptions {
        max_dirty_bytes: 1 << 20,
        ..OpenOptions::default()
    };
    let (fs, gated) = open_gated(&img, &opts);
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, b"f", 0o644, 0, libc::O_RDWR)
        .unwrap();
    let ino = a.ino;
    // 600 KiB: past half the bound, so the flusher writes it back and is held at the gate
    // with those blocks in flight.
    let closed = gated.gate.close();
    fs.write(ino, fh, 0, &pattern(1, 600 << 10)).unwrap();
    gated.gate.wait_for_held_call();
    // 200 KiB more stays within the bound (in flight and dirty together)...
    fs.write(ino, fh, 600 << 10, &pattern(2, 200 << 10))
        .unwrap();
    // ...300 KiB more does not: the writer waits for the writeback held at the gate.
    let (tx, rx) = mpsc::channel();
    {
        let fs = fs.clone();
        std::thread::spawn(move || {
            let _ = tx.send(fs.write(ino, fh, 800 << 10, &pattern(3, 300 << 10)));
        });
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "a write past the bound returned while 600 KiB were still in flight"
    );
    drop(closed);
    let written = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the waiting writer never resumed");
    assert_eq!(written.unwrap(), 300 << 10);
    let mut want = pattern(1, 600 << 10);
    want.extend_from_slice(&pattern(2, 200 << 10));
    want.extend_from_slice(&pattern(3, 300 << 10));
    assert!(fs.read(ino, fh, 0, want.len() as u32).unwrap() == want);
    fs.release(ino, fh).unwrap();
    fs.close().unwrap();
}

/// Bytes the object store holds for the file's object (0 if it has none yet).
fn stored_len(img: &MemImage) -> u64 {
    img.objects
        .list()
        .unwrap()
        .iter()
        .map(|(_, len)| *len)
        .sum()
}

#[test]
fn writes_past_half_the_dirty_bound_are_written_back_in_the_background() {
    let img = MemImage::create(BS as u32).unwrap();
    let opts = OpenOptions {
        max_dirty_bytes: 1 << 20,
        ..OpenOptions::default()
    };
    let fs = img.open(&opts).unwrap();
    let (a, fh) = fs
        .create(&ROOT, ROOT_INO, b"f", 0o644, 0, libc::O_RDWR)
        .unwrap();
    // A third of the bound: nothing asks for a writeback before the 5 s commit cycle.
    let first = pattern(1, 340 << 10);
    fs.write(a.ino, fh, 0, &first).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(stored_len(&img), 0, "written back below half the bound");
    // Past half the bound (still below it, so the writer itself does not write back): the
    // flusher does, well before its next commit cycle.
    let second = pattern(2, 240 << 10);
    fs.write(a.ino, fh, first.len() as u64, &second).unwrap();
    let total = (first.len() + second.len()) as u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while stored_len(&img) < total && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        stored_len(&img),
        total,
        "no background writeback past half the bound"
    );
    let mut want = first;
    want.extend_from_slice(&second);
    assert!(fs.read(a.ino, fh, 0, total as u32).unwrap() == want);
    fs.release(a.ino, fh).unwrap();
    fs.close().unwrap();
}

/// MemStore whose `flush` waits while its gate is closed.
struct GatedMeta {
    inner: Arc<MemStore>,
    gate: Gate,
}

impl MetaStore for GatedMeta {
    fn get(&self, key: &[u8]) -> digimedfs_core::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        f: &mut ScanFn<'_>,
    ) -> digimedfs_core::Result<()> {
        self.inner.scan(prefix, after, f)
    }
    fn apply(&self, batch: &Batch) -> digimedfs_core::Result<()> {
        self.inner.apply(batch)
    }
    fn flush(&self) -> digimedfs_core::Result<()> {
        self.gate.pass();
        self.inner.flush()
    }
}

#[test]
fn objects_of_deletions_committed_during_a_flush_wait_for_the_next_one() {
    let img = MemImage::create(BS as u32).unwrap();
    let meta = Arc::new(GatedMeta {
        inner: img.meta.clone(),
        gate: Gate::default(),
    });
    let fs = Arc::new(
        img.open_over(meta.clone(), img.objects.clone(), &OpenOptions::default())
            .unwrap(),
    );
    // Two files with data objects, durable.
    let data = pattern(0x5A, BLOCKS * BS);
    for name in [&b"g"[..], b"f"] {
        let (a, fh) = fs
            .create(&ROOT, ROOT_INO, name, 0o644, 0, libc::O_RDWR)
            .unwrap();
        fs.write(a.ino, fh, 0, &data).unwrap();
        fs.fsync(a.ino, fh, false).unwrap();
        fs.release(a.ino, fh).unwrap();
    }
    fs.sync_all().unwrap();
    // g's object waits for its deletion to be durable; a commit cycle starts and its metadata
    // flush is held at the gate.
    fs.unlink(&ROOT, ROOT_INO, b"g").unwrap();
    let closed = meta.gate.close();
    let cycle = {
        let fs = fs.clone();
        std::thread::spawn(move || fs.sync_all())
    };
    meta.gate.wait_for_held_call();
    // f is deleted while that flush runs: its deletion is not in the flush.
    fs.unlink(&ROOT, ROOT_INO, b"f").unwrap();
    drop(closed);
    cycle.join().unwrap().unwrap();

    // A crash now keeps only what was flushed: f still exists there, and so must its data.
    let crashed = img.crash_image(0, &mut |_| true);
    let fs2 = crashed.open(&OpenOptions::default()).unwrap();
    let f = fs2.lookup(&ROOT, ROOT_INO, b"f").unwrap();
    let fh = fs2.open_file(&ROOT, f.ino, libc::O_RDONLY).unwrap();
    let got = fs2.read(f.ino, fh, 0, data.len() as u32);
    assert!(
        matches!(&got, Ok(d) if *d == data),
        "the object of a deletion that was not yet durable is gone: {:?}",
        got.map(|d| d.len())
    );
    assert!(
        fs2.lookup(&ROOT, ROOT_INO, b"g").is_err(),
        "g's deletion was flushed"
    );
    fs2.close().unwrap();
    fs.close().unwrap();
}
