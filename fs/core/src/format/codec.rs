//! A checked byte codec for on-disk records: a [`Writer`] that appends little-endian fields and
//! a [`Reader`] that never panics: every read past the end or a trailing byte is an error that
//! names the record being decoded.

use crate::{Error, Result};

/// Appends fields in the on-disk encoding (little-endian, length-prefixed byte strings).
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer with room for `cap` bytes.
    pub fn with_capacity(cap: usize) -> Writer {
        Writer {
            buf: Vec::with_capacity(cap),
        }
    }
    /// Appends one byte.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    /// Appends a little-endian u16.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian u32.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian u64.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends a little-endian i64.
    pub fn i64(&mut self, v: i64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// Appends raw bytes (fixed-size fields).
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(v);
        self
    }
    /// Appends a byte string prefixed by its u16 length. Longer strings are an error.
    pub fn bytes16(&mut self, v: &[u8]) -> Result<&mut Self> {
        let len = u16::try_from(v.len())
            .map_err(|_| Error::invalid(format!("field of {} bytes exceeds 65535", v.len())))?;
        self.u16(len);
        self.buf.extend_from_slice(v);
        Ok(self)
    }
    /// Appends a byte string prefixed by its u32 length.
    pub fn bytes32(&mut self, v: &[u8]) -> Result<&mut Self> {
        let len = u32::try_from(v.len())
            .map_err(|_| Error::invalid(format!("field of {} bytes exceeds 4 GiB", v.len())))?;
        self.u32(len);
        self.buf.extend_from_slice(v);
        Ok(self)
    }
    /// The bytes written so far.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf
    }
    /// Consumes the writer.
    pub fn into_vec(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads fields back; every method fails cleanly on short input.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`; `what` names the record in error messages.
    pub fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }
    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self.buf.split_at_checked(n) {
            Some((head, tail)) => {
                self.buf = tail;
                Ok(head)
            }
            None => Err(Error::format(format!(
                "{}: truncated (wanted {n} more bytes, {} left)",
                self.what,
                self.buf.len()
            ))),
        }
    }
    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
    /// Reads one byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian u16.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian u32.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian u64.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// Reads a little-endian i64.
    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    /// Reads a u16-length-prefixed byte string.
    pub fn bytes16(&mut self) -> Result<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
    /// Reads a u32-length-prefixed byte string.
    pub fn bytes32(&mut self) -> Result<&'a [u8]> {
        let len = self.u32()?;
        let len =
            usize::try_from(len).map_err(|_| Error::format(format!("{}: length", self.what)))?;
        self.take(len)
    }
    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// Fails if anything is left unread.
    pub fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::format(format!(
                "{}: {} trailing bytes",
                self.what,
                self.buf.len()
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let mut w = Writer::default();
        w.u8(1).u16(2).u32(3).u64(4).i64(-5);
        w.bytes16(b"name").unwrap();
        let bytes = w.into_vec();
        let mut r = Reader::new(&bytes, "test");
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.u16().unwrap(), 2);
        assert_eq!(r.u32().unwrap(), 3);
        assert_eq!(r.u64().unwrap(), 4);
        assert_eq!(r.i64().unwrap(), -5);
        assert_eq!(r.bytes16().unwrap(), b"name");
        r.finish().unwrap();
        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut], "test");
            let res = (|| -> Result<()> {
                r.u8()?;
                r.u16()?;
                r.u32()?;
                r.u64()?;
                r.i64()?;
                r.bytes16()?;
                Ok(())
            })();
            assert!(res.is_err(), "cut at {cut} must fail");
        }
    }
}
