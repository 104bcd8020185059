//! PAX sparse files (GNU tar's formats 0.1 and 1.0, what `tar --sparse
//! --format=posix` writes). The old GNU `S` entries are expanded by the tar
//! crate itself; the PAX formats look like plain files named
//! `GNUSparseFile.N/NAME` whose real name, size and hole map are in PAX
//! records (and for 1.0 at the start of the data).

use std::io::{self, Read};

/// A sparse file's real name, size and data map.
#[derive(Clone, Debug)]
pub struct SparseInfo {
    pub name: Vec<u8>,
    pub real_size: u64,
    /// The map from a PAX record (format 0.1); `None` when it starts the data (1.0).
    map: Option<Vec<(u64, u64)>>,
}

/// Most map entries accepted: bounds memory on a hostile map.
const MAX_SEGMENTS: usize = 1 << 20;

fn pax_value<'p>(pax: &'p [(Vec<u8>, Vec<u8>)], key: &[u8]) -> Option<&'p [u8]> {
    pax.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_slice())
}

fn number(v: &[u8], what: &str) -> Result<u64, String> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| format!("PAX sparse {what} is not a number"))
}

/// Recognizes a PAX sparse entry from its records.
pub fn pax_sparse(pax: &[(Vec<u8>, Vec<u8>)]) -> Result<Option<SparseInfo>, String> {
    let major = pax_value(pax, b"GNU.sparse.major");
    let minor = pax_value(pax, b"GNU.sparse.minor");
    let map = pax_value(pax, b"GNU.sparse.map");
    let name = || {
        pax_value(pax, b"GNU.sparse.name")
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "PAX sparse entry without GNU.sparse.name".to_string())
    };
    match (major, minor, map) {
        (Some(b"1"), Some(b"0"), _) => {
            let size = pax_value(pax, b"GNU.sparse.realsize")
                .ok_or("PAX sparse 1.0 entry without GNU.sparse.realsize")?;
            Ok(Some(SparseInfo {
                name: name()?,
                real_size: number(size, "realsize")?,
                map: None,
            }))
        }
        (Some(_), _, _) => Err("unsupported PAX sparse format version".into()),
        (None, _, Some(map)) => {
            let size = pax_value(pax, b"GNU.sparse.size")
                .ok_or("PAX sparse 0.1 entry without GNU.sparse.size")?;
            let fields: Vec<&[u8]> = map.split(|b| *b == b',').collect();
            if !fields.len().is_multiple_of(2) || fields.len() / 2 > MAX_SEGMENTS {
                return Err("PAX sparse map has an odd or huge number of fields".into());
            }
            let mut segs = Vec::with_capacity(fields.len() / 2);
            for pair in fields.chunks_exact(2) {
                if let [off, len] = pair {
                    segs.push((number(off, "offset")?, number(len, "length")?));
                }
            }
            Ok(Some(SparseInfo {
                name: name()?,
                real_size: number(size, "size")?,
                map: Some(segs),
            }))
        }
        (None, _, None) if pax_value(pax, b"GNU.sparse.offset").is_some() => {
            Err("PAX sparse format 0.0 is not supported".into())
        }
        _ => Ok(None),
    }
}

/// Expands a sparse entry's stored data into the file's content.
pub struct SparseReader<R> {
    inner: R,
    segs: Vec<(u64, u64)>,
    next_seg: usize,
    pos: u64,
    size: u64,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one decimal line of a 1.0 map; counts the bytes consumed.
fn read_line(r: &mut impl Read, consumed: &mut u64) -> io::Result<u64> {
    let mut digits = Vec::new();
    loop {
        let mut b = [0u8];
        r.read_exact(&mut b)?;
        *consumed += 1;
        match b {
            [b'\n'] => break,
            [d @ b'0'..=b'9'] if digits.len() < 20 => digits.push(d),
            _ => return Err(bad("malformed PAX sparse map")),
        }
    }
    std::str::from_utf8(&digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("malformed PAX sparse map"))
}

impl<R: Read> SparseReader<R> {
    pub fn new(mut inner: R, info: &SparseInfo) -> io::Result<Self> {
        let segs = match &info.map {
            Some(m) => m.clone(),
            None => {
                let mut consumed = 0;
                let n = read_line(&mut inner, &mut consumed)?;
                if n > MAX_SEGMENTS as u64 {
                    return Err(bad("PAX sparse map has too many segments"));
                }
                let mut segs = Vec::new();
                for _ in 0..n {
                    let off = read_line(&mut inner, &mut consumed)?;
                    let len = read_line(&mut inner, &mut consumed)?;
                    segs.push((off, len));
                }
                // The map is padded to a 512-byte boundary.
                let pad = (512 - consumed % 512) % 512;
                io::copy(&mut (&mut inner).take(pad), &mut io::sink())?;
                segs
            }
        };
        let mut end = 0u64;
        for &(off, len) in &segs {
            let seg_end = off
                .checked_add(len)
                .ok_or_else(|| bad("PAX sparse segment overflows"))?;
            if off < end || seg_end > info.real_size {
                return Err(bad("PAX sparse segments overlap or pass the file's end"));
            }
            end = seg_end;
        }
        Ok(SparseReader {
            inner,
            segs,
            next_seg: 0,
            pos: 0,
            size: info.real_size,
        })
    }
}

impl<R: Read> Read for SparseReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Skip empty segments and those already read.
        while let Some(&(off, len)) = self.segs.get(self.next_seg) {
            if self.pos >= off + len {
                self.next_seg += 1;
            } else {
                break;
            }
        }
        let (stop, from_data) = match self.segs.get(self.next_seg) {
            Some(&(off, _)) if self.pos < off => (off, false),
            Some(&(off, len)) => (off + len, true),
            None => (self.size, false),
        };
        let want = usize::try_from(stop - self.pos)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        if want == 0 {
            return Ok(0);
        }
        let out = buf.get_mut(..want).unwrap_or_default();
        let n = if from_data {
            let n = self.inner.read(out)?;
            if n == 0 {
                return Err(bad("PAX sparse data ends early"));
            }
            n
        } else {
            out.fill(0);
            want
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(k: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (k.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn format_1_0_expands_holes() {
        let pax = vec![
            rec("GNU.sparse.major", "1"),
            rec("GNU.sparse.minor", "0"),
            rec("GNU.sparse.name", "big"),
            rec("GNU.sparse.realsize", "10000"),
        ];
        let info = pax_sparse(&pax).unwrap().unwrap();
        assert_eq!(info.name, b"big");
        let mut data = b"2\n0\n3\n9000\n2\n".to_vec();
        data.resize(512, 0);
        data.extend_from_slice(b"abcXY");
        let mut out = Vec::new();
        SparseReader::new(&data[..], &info)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 10000);
        assert_eq!(&out[..3], b"abc");
        assert!(out[3..9000].iter().all(|b| *b == 0));
        assert_eq!(&out[9000..9002], b"XY");
        assert!(out[9002..].iter().all(|b| *b == 0));
    }

    #[test]
    fn format_0_1_and_bad_maps() {
        let pax = vec![
            rec("GNU.sparse.map", "4,2"),
            rec("GNU.sparse.name", "f"),
            rec("GNU.sparse.size", "8"),
        ];
        let info = pax_sparse(&pax).unwrap().unwrap();
        let mut out = Vec::new();
        SparseReader::new(&b"hi"[..], &info)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"\0\0\0\0hi\0\0");
        let overlapping = SparseInfo {
            name: b"f".to_vec(),
            real_size: 8,
            map: Some(vec![(4, 2), (5, 1)]),
        };
        assert!(SparseReader::new(&b"hi"[..], &overlapping).is_err());
        let past_end = SparseInfo {
            map: Some(vec![(7, 2)]),
            ..overlapping
        };
        assert!(SparseReader::new(&b"hi"[..], &past_end).is_err());
        assert!(pax_sparse(&[rec("GNU.sparse.offset", "0")]).is_err());
        assert!(pax_sparse(&[rec("path", "x")]).unwrap().is_none());
    }
}
