//! [`NoObjects`]: the object store of a backing directory without `objects/`, which holds
//! nothing and refuses every change.

use super::{ObjectId, ObjectStore};
use crate::{Error, Result};

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
