//! Helpers shared by the core's integration tests: the caller and key the tests act as, a
//! deterministic random source, test data, and the paths of the crash workloads. Each test
//! binary uses a part of it.

#![allow(dead_code)]

use digimedfs_core::filesystem::{Ctx, ROOT_INO};
use digimedfs_core::testing::StaticKey;

/// The superuser, as every test acts.
pub const ROOT: Ctx = Ctx::ROOT;

/// The key of the test filesystems (the golden image in tests/data was made with it).
pub const KEY: StaticKey = StaticKey([42; 32]);

/// xorshift64*: the same sequence for the same seed, so a failing case can be rerun.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `len` bytes of data that differ from block to block and from call to call.
pub fn bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let seed = rng.next();
    (0..len)
        .map(|i| (seed.rotate_left((i % 64) as u32) as u8) ^ (i >> 7) as u8)
        .collect()
}

/// The paths the crash workloads use: four in the root, four in directory `/d`.
pub const PATHS: [&str; 8] = ["/a", "/b", "/c", "/e", "/d/a", "/d/b", "/d/c", "/d/e"];

/// The directory inode of one of [`PATHS`], `/d` being inode `d`.
pub fn dir_of(path: &str, d: u64) -> u64 {
    if path.starts_with("/d/") {
        d
    } else {
        ROOT_INO
    }
}

/// The last component of one of [`PATHS`].
pub fn leaf(path: &str) -> &[u8] {
    path.rsplit('/').next().unwrap_or(path).as_bytes()
}

/// How many writes a deterministic workload makes, given `crashes(n)`: whether it stops with a
/// crash when the crash point is write `n` (true up to the total, false beyond).
pub fn count_writes(crashes: impl Fn(u64) -> bool) -> u64 {
    let (mut lo, mut hi) = (0u64, 1u64);
    while crashes(hi) {
        lo = hi;
        hi *= 2;
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if crashes(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// The crash points to test out of `total` writes: all of them when there are at most `max`;
/// otherwise `max` evenly spaced ones, `extra` random ones drawn with `seed`, and the last.
pub fn crash_points(total: u64, max: u64, extra: usize, seed: u64) -> Vec<u64> {
    if total <= max {
        return (1..=total).collect();
    }
    let mut rng = Rng(seed);
    let mut points: Vec<u64> = (0..max).map(|i| 1 + i * total / max).collect();
    points.extend((0..extra).map(|_| 1 + rng.below(total)));
    points.push(total);
    points.sort_unstable();
    points.dedup();
    points
}
