//! [`MemObjects`]: the in-memory object store of the crash tests, which knows which bytes
//! were synced and can produce the objects a crash at any point leaves.

use super::{lock, ObjectId, ObjectStore};
use crate::meta::CrashPoint;
use crate::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Default, Clone)]
struct MemObject {
    durable: Vec<u8>,
    view: Vec<u8>,
    dirty: bool,
}

/// In-memory [`ObjectStore`] that knows which bytes were synced, for crash tests.
#[derive(Default)]
pub struct MemObjects {
    objects: Mutex<HashMap<ObjectId, MemObject>>,
    crash: Option<Arc<CrashPoint>>,
}

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
