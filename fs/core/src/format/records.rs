//! Metadata records: their keys in the metadata store and their plaintext encodings.
//!
//! Every value is sealed by [`crate::meta`] before it reaches the store; this module only
//! defines what is inside. Keys reveal no names: directory entries and xattrs are keyed by a
//! keyed MAC of the name, and the directory they belong to by a keyed pseudonym of its inode.
//! Layouts are specified in docs/format.md; all integers little-endian inside values and
//! big-endian inside keys (so that keys sort by number).

use super::codec::{Reader, Writer};
use super::kind::FileKind;
use crate::crypto::incarnation::{IncarnationSalt, SALT_LEN};
use crate::crypto::TAG_LEN;
use crate::{Error, Result};

/// Record type prefixes (first key byte).
pub mod prefix {
    /// Inode record: `I ‖ be64(ino)`.
    pub const INODE: u8 = b'I';
    /// Directory entry: `D ‖ dir_pseudonym(8) ‖ entry_mac(16)`.
    pub const DIRENT: u8 = b'D';
    /// Extended attribute: `X ‖ be64(ino) ‖ name_mac(16)`.
    pub const XATTR: u8 = b'X';
    /// Block map chunk: `B ‖ be64(ino) ‖ be64(chunk)`.
    pub const CHUNK: u8 = b'B';
    /// Inline (small file) data: `S ‖ be64(ino)`.
    pub const INLINE: u8 = b'S';
    /// Orphan (unlinked while open): `O ‖ be64(ino)`.
    pub const ORPHAN: u8 = b'O';
    /// Reclaim mark (a deleted inode whose inline data record goes later): `R ‖ be64(ino)`.
    pub const RECLAIM: u8 = b'R';
    /// Counters: `C`.
    pub const COUNTERS: u8 = b'C';
    /// Store state (the epoch the store belongs to and its running digest): `E`.
    pub const STATE: u8 = b'E';
    /// Incarnation salt: `N ‖ be32(incarnation)`.
    pub const INCARNATION: u8 = b'N';
    /// Previous-version mark (the chunk record `B ‖ be64(ino) ‖ be64(chunk)` has entries with
    /// a `prev`): `P ‖ be64(ino) ‖ be64(chunk)`.
    pub const PREV_MARK: u8 = b'P';
}

/// Blocks described by one chunk record.
pub const CHUNK_BLOCKS: u64 = 64;
/// Files up to this size live inline in the metadata store, with no data object. On shared
/// storage every object costs round trips to the metadata server (create, open, unlink); most
/// research small files (sources, configs, notes, small tables) fit here. At most
/// [`CHUNK_BLOCKS`] blocks of the smallest block size, so a file leaving inline storage needs
/// one chunk record.
pub const INLINE_MAX: u64 = 64 * 1024;
const INODE_VERSION: u8 = 1;
const CHUNK_VERSION: u8 = 1;

/// Key of an inode record.
pub fn inode_key(ino: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix::INODE;
    k[1..].copy_from_slice(&ino.to_be_bytes());
    k
}

/// Key prefix of all entries of one directory.
pub fn dirent_prefix(dir_pseudonym: &[u8; 8]) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix::DIRENT;
    k[1..].copy_from_slice(dir_pseudonym);
    k
}

/// Key of a directory entry.
pub fn dirent_key(dir_pseudonym: &[u8; 8], entry_mac: &[u8; 16]) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[..9].copy_from_slice(&dirent_prefix(dir_pseudonym));
    k[9..].copy_from_slice(entry_mac);
    k
}

/// Key prefix of one inode's records of type `p` (xattrs, chunks).
pub fn ino_prefix(p: u8, ino: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = p;
    k[1..].copy_from_slice(&ino.to_be_bytes());
    k
}

/// Key of an xattr.
pub fn xattr_key(ino: u64, name_mac: &[u8; 16]) -> [u8; 25] {
    let mut k = [0u8; 25];
    k[..9].copy_from_slice(&ino_prefix(prefix::XATTR, ino));
    k[9..].copy_from_slice(name_mac);
    k
}

/// Key of a chunk record.
pub fn chunk_key(ino: u64, chunk: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[..9].copy_from_slice(&ino_prefix(prefix::CHUNK, ino));
    k[9..].copy_from_slice(&chunk.to_be_bytes());
    k
}

/// Key of the previous-version mark of a chunk record.
pub fn prev_mark_key(ino: u64, chunk: u64) -> [u8; 17] {
    let mut k = chunk_key(ino, chunk);
    k[0] = prefix::PREV_MARK;
    k
}

/// `(ino, chunk)` of a chunk record key or a previous-version mark key (`None` if malformed).
pub fn chunk_of_key(key: &[u8]) -> Option<(u64, u64)> {
    let ino = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    let chunk = u64::from_be_bytes(key.get(9..17)?.try_into().ok()?);
    (key.len() == 17).then_some((ino, chunk))
}

/// Key of the counters record.
pub const COUNTERS_KEY: [u8; 1] = [prefix::COUNTERS];

/// Key of the store state record ([`StoreState`]).
pub const STATE_KEY: [u8; 1] = [prefix::STATE];
/// Key of the salt record of incarnation `k`.
pub fn incarnation_key(k: u32) -> [u8; 5] {
    let mut key = [0u8; 5];
    key[0] = prefix::INCARNATION;
    key[1..].copy_from_slice(&k.to_be_bytes());
    key
}

/// The incarnation number of an incarnation record key (`None` if malformed).
pub fn incarnation_of_key(key: &[u8]) -> Option<u32> {
    match key {
        [prefix::INCARNATION, rest @ ..] => <[u8; 4]>::try_from(rest).ok().map(u32::from_be_bytes),
        _ => None,
    }
}

/// Encodes the salt record of an incarnation: `version u8 (1) ‖ salt(32)`.
pub fn encode_incarnation(salt: &IncarnationSalt) -> zeroize::Zeroizing<Vec<u8>> {
    let mut v = zeroize::Zeroizing::new(Vec::with_capacity(1 + SALT_LEN));
    v.push(1);
    v.extend_from_slice(salt.expose());
    v
}

/// Decodes the salt record of an incarnation.
pub fn decode_incarnation(bytes: &[u8]) -> Result<IncarnationSalt> {
    match bytes {
        [1, salt @ ..] => IncarnationSalt::from_bytes(salt),
        [] => Err(Error::format("incarnation record: empty")),
        _ => Err(Error::format("incarnation record: unknown version")),
    }
}

/// A timestamp: seconds and nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Timestamp {
    /// Seconds (may be negative).
    pub secs: i64,
    /// Nanoseconds, < 1e9.
    pub nanos: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from_system(std::time::SystemTime::now())
    }
    /// From a `SystemTime`.
    pub fn from_system(t: std::time::SystemTime) -> Timestamp {
        match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => Timestamp {
                secs: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp {
                        secs: -(d.as_secs() as i64),
                        nanos: 0,
                    }
                } else {
                    Timestamp {
                        secs: -(d.as_secs() as i64) - 1,
                        nanos: 1_000_000_000 - d.subsec_nanos(),
                    }
                }
            }
        }
    }
    /// To a `SystemTime`.
    pub fn to_system(self) -> std::time::SystemTime {
        let nanos = std::time::Duration::from_nanos(u64::from(self.nanos));
        if self.secs >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(self.secs as u64) + nanos
        } else {
            std::time::UNIX_EPOCH - std::time::Duration::from_secs(self.secs.unsigned_abs()) + nanos
        }
    }
    fn put(&self, w: &mut Writer) {
        w.i64(self.secs).u32(self.nanos);
    }
    fn get(r: &mut Reader<'_>) -> Result<Timestamp> {
        let secs = r.i64()?;
        let nanos = r.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(Error::format("timestamp nanoseconds out of range"));
        }
        Ok(Timestamp { secs, nanos })
    }
}

/// Where a regular file's contents live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// No contents (size 0, or not a regular file).
    None,
    /// In an inline record of the metadata store.
    Inline,
    /// In the data object with this id.
    Object([u8; 16]),
}

/// An inode record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// Inode number (not encoded: it is the key).
    pub ino: u64,
    /// Type.
    pub kind: FileKind,
    /// Permission bits (lower 12).
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Hard links.
    pub nlink: u32,
    /// Device number.
    pub rdev: u32,
    /// Size in bytes.
    pub size: u64,
    /// Access time.
    pub atime: Timestamp,
    /// Modification time.
    pub mtime: Timestamp,
    /// Change time.
    pub ctime: Timestamp,
    /// Creation time.
    pub crtime: Timestamp,
    /// Generation (FUSE handle generation).
    pub generation: u64,
    /// Parent directory (directories only; 0 otherwise).
    pub parent: u64,
    /// Where the contents live.
    pub storage: Storage,
    /// Symlink target (symlinks only).
    pub target: Vec<u8>,
}

impl Inode {
    /// A new, empty inode: link count 1 (2 for a directory, whose `parent` is `parent`), no
    /// contents, every time set to `now`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ino: u64,
        kind: FileKind,
        perm: u16,
        uid: u32,
        gid: u32,
        parent: u64,
        now: Timestamp,
    ) -> Inode {
        let dir = kind == FileKind::Dir;
        Inode {
            ino,
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: if dir { 2 } else { 1 },
            rdev: 0,
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            generation: 1,
            parent: if dir { parent } else { 0 },
            storage: Storage::None,
            target: Vec::new(),
        }
    }

    /// Encodes the record.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer::with_capacity(128 + self.target.len());
        w.u8(INODE_VERSION)
            .u8(self.kind.code())
            .u16(self.perm)
            .u32(self.uid)
            .u32(self.gid);
        w.u32(self.nlink).u32(self.rdev).u64(self.size);
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            t.put(&mut w);
        }
        w.u64(self.generation).u64(self.parent);
        match self.storage {
            Storage::None => {
                w.u8(0);
            }
            Storage::Inline => {
                w.u8(1);
            }
            Storage::Object(id) => {
                w.u8(2).raw(&id);
            }
        }
        w.bytes32(&self.target)?;
        Ok(w.into_vec())
    }

    /// Decodes the record of inode `ino`.
    pub fn decode(ino: u64, bytes: &[u8]) -> Result<Inode> {
        let mut r = Reader::new(bytes, "inode record");
        let version = r.u8()?;
        if version != INODE_VERSION {
            return Err(Error::format(format!(
                "inode {ino}: unknown record version {version}"
            )));
        }
        let code = r.u8()?;
        let kind = FileKind::from_code(code)
            .ok_or_else(|| Error::format(format!("inode {ino}: unknown file type {code}")))?;
        let perm = r.u16()?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let nlink = r.u32()?;
        let rdev = r.u32()?;
        let size = r.u64()?;
        let atime = Timestamp::get(&mut r)?;
        let mtime = Timestamp::get(&mut r)?;
        let ctime = Timestamp::get(&mut r)?;
        let crtime = Timestamp::get(&mut r)?;
        let generation = r.u64()?;
        let parent = r.u64()?;
        let storage = match r.u8()? {
            0 => Storage::None,
            1 => Storage::Inline,
            2 => Storage::Object(r.array()?),
            other => {
                return Err(Error::format(format!(
                    "inode {ino}: unknown storage kind {other}"
                )))
            }
        };
        let target = r.bytes32()?.to_vec();
        r.finish()?;
        Ok(Inode {
            ino,
            kind,
            perm,
            uid,
            gid,
            nlink,
            rdev,
            size,
            atime,
            mtime,
            ctime,
            crtime,
            generation,
            parent,
            storage,
            target,
        })
    }
}

/// A directory entry record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dirent {
    /// The entry's name.
    pub name: Vec<u8>,
    /// The inode it points to.
    pub ino: u64,
    /// The inode's type (for readdir without loading the inode).
    pub kind: FileKind,
}

impl Dirent {
    /// Encodes the record.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer::with_capacity(16 + self.name.len());
        w.u8(1).u64(self.ino).u8(self.kind.code());
        w.bytes16(&self.name)?;
        Ok(w.into_vec())
    }
    /// Decodes the record.
    pub fn decode(bytes: &[u8]) -> Result<Dirent> {
        let mut r = Reader::new(bytes, "directory entry");
        if r.u8()? != 1 {
            return Err(Error::format("directory entry: unknown record version"));
        }
        let ino = r.u64()?;
        let code = r.u8()?;
        let kind = FileKind::from_code(code)
            .ok_or_else(|| Error::format(format!("directory entry: unknown type {code}")))?;
        let name = r.bytes16()?.to_vec();
        r.finish()?;
        Ok(Dirent { name, ino, kind })
    }
}

/// An xattr record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Xattr {
    /// Full name (e.g. `user.comment`).
    pub name: Vec<u8>,
    /// Value.
    pub value: Vec<u8>,
}

impl Xattr {
    /// Encodes the record.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut w = Writer::with_capacity(8 + self.name.len() + self.value.len());
        w.u8(1).bytes16(&self.name)?.bytes32(&self.value)?;
        Ok(w.into_vec())
    }
    /// Decodes the record.
    pub fn decode(bytes: &[u8]) -> Result<Xattr> {
        let mut r = Reader::new(bytes, "xattr");
        if r.u8()? != 1 {
            return Err(Error::format("xattr: unknown record version"));
        }
        let name = r.bytes16()?.to_vec();
        let value = r.bytes32()?.to_vec();
        r.finish()?;
        Ok(Xattr { name, value })
    }
}

/// Version of one block: the generation it was written with and its integrity tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockVersion {
    /// Filesystem-wide unique write generation (never 0).
    pub generation: u64,
    /// MAC over the block's ciphertext and identity.
    pub tag: [u8; TAG_LEN],
}

/// The state of one block in a chunk record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockEntry {
    /// The current version.
    pub cur: BlockVersion,
    /// While the current version is not yet known durable, what the block may still hold after
    /// a crash: the previous version, or `Some(None)` for "was a hole (reads as zeros)".
    pub prev: Option<Option<BlockVersion>>,
}

/// A chunk record: the versions of [`CHUNK_BLOCKS`] consecutive blocks; absent = hole.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Chunk {
    /// Entries indexed by block number within the chunk.
    pub entries: std::collections::BTreeMap<u8, BlockEntry>,
}

impl Chunk {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(3 + self.entries.len() * 50);
        w.u8(CHUNK_VERSION).u16(self.entries.len() as u16);
        for (idx, e) in &self.entries {
            w.u8(*idx).u64(e.cur.generation).raw(&e.cur.tag);
            match e.prev {
                None => {
                    w.u8(0);
                }
                Some(None) => {
                    w.u8(1);
                }
                Some(Some(p)) => {
                    w.u8(2).u64(p.generation).raw(&p.tag);
                }
            }
        }
        w.into_vec()
    }
    /// Decodes the record.
    pub fn decode(bytes: &[u8]) -> Result<Chunk> {
        let mut r = Reader::new(bytes, "chunk record");
        if r.u8()? != CHUNK_VERSION {
            return Err(Error::format("chunk record: unknown version"));
        }
        let n = r.u16()?;
        if u64::from(n) > CHUNK_BLOCKS {
            return Err(Error::format(format!("chunk record: {n} entries")));
        }
        let mut entries = std::collections::BTreeMap::new();
        for _ in 0..n {
            let idx = r.u8()?;
            if u64::from(idx) >= CHUNK_BLOCKS {
                return Err(Error::format(format!("chunk record: block index {idx}")));
            }
            let cur = BlockVersion {
                generation: r.u64()?,
                tag: r.array()?,
            };
            let prev = match r.u8()? {
                0 => None,
                1 => Some(None),
                2 => Some(Some(BlockVersion {
                    generation: r.u64()?,
                    tag: r.array()?,
                })),
                other => return Err(Error::format(format!("chunk record: prev kind {other}"))),
            };
            entries.insert(idx, BlockEntry { cur, prev });
        }
        r.finish()?;
        Ok(Chunk { entries })
    }
}

/// Allocation counters, reserved in ranges so that a crash never reuses a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Inode numbers below this may have been used.
    pub ino_reserved: u64,
    /// Block generations below this may have been used.
    pub gen_reserved: u64,
}

impl Counters {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(17);
        w.u8(1).u64(self.ino_reserved).u64(self.gen_reserved);
        w.into_vec()
    }
    /// Decodes the record.
    pub fn decode(bytes: &[u8]) -> Result<Counters> {
        let mut r = Reader::new(bytes, "counters");
        if r.u8()? != 1 {
            return Err(Error::format("counters: unknown version"));
        }
        let c = Counters {
            ino_reserved: r.u64()?,
            gen_reserved: r.u64()?,
        };
        r.finish()?;
        Ok(c)
    }
}

/// The store state record: which superblock epoch the store belongs to, and the running
/// digest of every other record (docs/format.md "Store state", docs/crypto.md). Written in the
/// same batch as the records it describes, so a crash never separates them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreState {
    /// The superblock epoch this store belongs to (the superblock's, or one more after a crash
    /// between binding the store to a new epoch and writing that superblock).
    pub epoch: u64,
    /// XOR over every other record of the keyed MAC of (key, sealed value).
    pub digest: [u8; 32],
}

const STATE_VERSION: u8 = 1;

impl StoreState {
    /// Encodes the record.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(41);
        w.u8(STATE_VERSION).u64(self.epoch).raw(&self.digest);
        w.into_vec()
    }
    /// Decodes the record.
    pub fn decode(bytes: &[u8]) -> Result<StoreState> {
        let mut r = Reader::new(bytes, "store state");
        if r.u8()? != STATE_VERSION {
            return Err(Error::format("store state: unknown version"));
        }
        let s = StoreState {
            epoch: r.u64()?,
            digest: r.array()?,
        };
        r.finish()?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_state_roundtrip_and_garbage() {
        let s = StoreState {
            epoch: 9,
            digest: [5; 32],
        };
        let bytes = s.encode();
        assert_eq!(StoreState::decode(&bytes).expect("decode"), s);
        for cut in 0..bytes.len() {
            assert!(StoreState::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(StoreState::decode(&longer).is_err());
        let mut v2 = bytes;
        v2[0] = 2;
        assert!(StoreState::decode(&v2).is_err());
    }

    #[test]
    fn inode_roundtrip_and_garbage() {
        let ino = Inode {
            ino: 5,
            kind: FileKind::Symlink,
            perm: 0o777,
            uid: 1000,
            gid: 100,
            nlink: 1,
            rdev: 0,
            size: 4,
            atime: Timestamp { secs: -5, nanos: 7 },
            mtime: Timestamp::now(),
            ctime: Timestamp::now(),
            crtime: Timestamp::now(),
            generation: 9,
            parent: 0,
            storage: Storage::Object([3; 16]),
            target: b"/tmp".to_vec(),
        };
        let bytes = ino.encode().unwrap();
        assert_eq!(Inode::decode(5, &bytes).unwrap(), ino);
        for cut in 0..bytes.len() {
            assert!(Inode::decode(5, &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn chunk_roundtrip() {
        let mut c = Chunk::default();
        let v = BlockVersion {
            generation: 7,
            tag: [1; 16],
        };
        c.entries.insert(0, BlockEntry { cur: v, prev: None });
        c.entries.insert(
            5,
            BlockEntry {
                cur: v,
                prev: Some(None),
            },
        );
        c.entries.insert(
            63,
            BlockEntry {
                cur: v,
                prev: Some(Some(v)),
            },
        );
        let bytes = c.encode();
        assert_eq!(Chunk::decode(&bytes).unwrap(), c);
        let mut bad = bytes.clone();
        bad[3] = 64; // block index out of range
        assert!(Chunk::decode(&bad).is_err());
    }

    #[test]
    fn incarnation_record_roundtrip_and_garbage() {
        let salt = IncarnationSalt::from_bytes(&[9; SALT_LEN]).unwrap();
        let bytes = encode_incarnation(&salt);
        assert_eq!(decode_incarnation(&bytes).unwrap().expose(), &[9; SALT_LEN]);
        for cut in 0..bytes.len() {
            assert!(decode_incarnation(&bytes[..cut]).is_err());
        }
        let mut long = bytes.to_vec();
        long.push(0);
        assert!(decode_incarnation(&long).is_err());
        let mut bad = bytes.to_vec();
        bad[0] = 2;
        assert!(decode_incarnation(&bad).is_err());
        assert_eq!(incarnation_key(0x0102_0304), *b"N\x01\x02\x03\x04");
        assert_eq!(incarnation_of_key(&incarnation_key(77)), Some(77));
        assert_eq!(incarnation_of_key(b"N\x01\x02\x03"), None);
        assert_eq!(incarnation_of_key(b"C"), None);
    }

    #[test]
    fn timestamps_roundtrip() {
        for t in [
            Timestamp { secs: 0, nanos: 1 },
            Timestamp {
                secs: -1,
                nanos: 999_999_999,
            },
        ] {
            assert_eq!(Timestamp::from_system(t.to_system()), t);
        }
    }
}
