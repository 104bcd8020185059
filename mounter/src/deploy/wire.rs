//! Little-endian fields in and out of byte buffers, for the deployment files' formats
//! ([`super::state`], [`super::signature`]).
//!
//! [`WireReader`] never panics: every read past the end is an error naming the field, so
//! a truncated or hostile file is refused with a reason.

/// A read of a field that the bytes do not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ends inside {field} (at byte {offset})")]
pub struct Truncated {
    pub field: &'static str,
    pub offset: usize,
}

/// Reads typed fields from the front of a byte slice.
pub struct WireReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> WireReader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        WireReader { bytes, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Truncated> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len());
        match end {
            Some(end) => {
                let out = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(out)
            }
            None => Err(Truncated {
                field,
                offset: self.pos,
            }),
        }
    }

    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Truncated> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    pub fn u8(&mut self, field: &'static str) -> Result<u8, Truncated> {
        Ok(self.array::<1>(field)?[0])
    }

    pub fn u16(&mut self, field: &'static str) -> Result<u16, Truncated> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub fn u32(&mut self, field: &'static str) -> Result<u32, Truncated> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub fn u64(&mut self, field: &'static str) -> Result<u64, Truncated> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
}

/// Appends typed fields to a byte buffer.
#[derive(Default)]
pub struct WireWriter {
    pub buf: Vec<u8>,
}

impl WireWriter {
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut w = WireWriter::default();
        w.u8(1).u16(0x0203).u32(0x0405_0607).u64(8).bytes(b"xy");
        let mut r = WireReader::new(&w.buf);
        assert_eq!(r.u8("a"), Ok(1));
        assert_eq!(r.u16("b"), Ok(0x0203));
        assert_eq!(r.u32("c"), Ok(0x0405_0607));
        assert_eq!(r.u64("d"), Ok(8));
        assert_eq!(r.remaining(), 2);
        assert_eq!(
            r.u32("e"),
            Err(Truncated {
                field: "e",
                offset: 15
            })
        );
        assert_eq!(r.bytes(2, "f"), Ok(&b"xy"[..]));
        assert_eq!(r.remaining(), 0);
        assert!(r.bytes(usize::MAX, "huge").is_err(), "no overflow");
    }
}
