//! PAX extended headers, read by their records' lengths.
//!
//! A PAX record is `LENGTH KEY=VALUE\n`, where LENGTH counts the whole record, so a value
//! may hold any byte, a newline included: a symlink target with a newline, a binary
//! `SCHILY.xattr.security.capability`. The tar crate splits the header on newlines
//! instead; such a record then fails ("malformed pax extension"), and worse, the rest
//! of its value is taken for records of its own, so `\n22 linkpath=/etc/evil\n` inside
//! a value becomes the entry's link target for the tar crate but not for Go's
//! `archive/tar`, GNU tar or Python, which read by length.
//!
//! [`PaxFramer`] sits between the layer stream and the tar crate and passes every byte
//! through. It follows the archive's block structure as the tar crate does (headers,
//! data rounded to 512 bytes, PAX `size` overrides, GNU long names, old GNU sparse
//! extension blocks), parses each PAX extended header by length, and keeps the records
//! for the entry they describe, found by that entry's header position. It hands the tar
//! crate a copy of the header in which each record holding a newline is replaced by a
//! harmless record of the same length, so that both read the same `size`, `uid` and
//! `gid` and the archive is framed the same for both. The layer code takes `path`,
//! `linkpath` and the rest from the records kept here.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{self, Read};
use std::rc::Rc;

/// Largest PAX extended header read, as Go's `archive/tar` allows (`maxSpecialFileSize`).
pub const MAX_PAX_HEADER: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// One PAX record: key and value, as bytes.
pub type PaxRecord = (Vec<u8>, Vec<u8>);

/// Why a PAX extended header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaxError {
    #[error("record at byte {at}: the length {text:?} is not a decimal number")]
    BadLength { at: usize, text: String },
    #[error("record at byte {at}: length {len} is too short or runs past the header's end")]
    BadRecordLength { at: usize, len: usize },
    #[error("record at byte {at} does not end with a newline where its length says")]
    NoNewline { at: usize },
    #[error("record at byte {at} has no '='")]
    NoEquals { at: usize },
    #[error("record at byte {at} has an empty key or a NUL byte in its key")]
    BadKey { at: usize },
    #[error("record {key:?} holds a NUL byte")]
    NulInValue { key: String },
    #[error("record {key:?} is not a decimal number: {value:?}")]
    BadNumber { key: String, value: String },
    #[error("records give two different sizes")]
    ConflictingSizes,
}

/// Parses a PAX extended header's records by their lengths.
pub fn parse_records(body: &[u8]) -> Result<Vec<PaxRecord>, PaxError> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let rest = body.get(at..).unwrap_or_default();
        let space = rest.iter().position(|b| *b == b' ');
        let digits = space.and_then(|s| rest.get(..s)).unwrap_or(rest);
        let bad_length = || PaxError::BadLength {
            at,
            text: String::from_utf8_lossy(digits).into_owned(),
        };
        let space = space.ok_or_else(bad_length)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad_length());
        }
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad_length)?;
        // At least the length, its space and the newline; and inside the header.
        let record = rest
            .get(..len)
            .filter(|_| len > space + 1)
            .ok_or(PaxError::BadRecordLength { at, len })?;
        let Some((b'\n', key_value)) = record.get(space + 1..).and_then(<[u8]>::split_last) else {
            return Err(PaxError::NoNewline { at });
        };
        let eq = key_value
            .iter()
            .position(|b| *b == b'=')
            .ok_or(PaxError::NoEquals { at })?;
        let (key, value) = key_value.split_at(eq);
        let value = value.get(1..).unwrap_or_default();
        if key.is_empty() || key.contains(&0) {
            return Err(PaxError::BadKey { at });
        }
        // Names cannot hold NUL (Go refuses such records too).
        if matches!(key, b"path" | b"linkpath" | b"uname" | b"gname") && value.contains(&0) {
            return Err(PaxError::NulInValue {
                key: String::from_utf8_lossy(key).into_owned(),
            });
        }
        records.push((key.to_vec(), value.to_vec()));
        at += len;
    }
    Ok(records)
}

/// Overwrites, in place, every record of a well-formed header that holds a newline with a
/// record of the same length that the tar crate reads as one unknown key (`x`), so that
/// splitting on newlines finds the same records, minus those, that reading by length does.
fn neutralize_newlines(body: &mut [u8]) {
    let mut at = 0usize;
    while at < body.len() {
        let Some(rest) = body.get_mut(at..) else {
            return;
        };
        let Some(space) = rest.iter().position(|b| *b == b' ') else {
            return;
        };
        let Some(len) = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return;
        };
        // The record is `LEN KEY=VALUE\n`: KEY=VALUE lies between the space and the final
        // newline (parse_records checked that much).
        let Some(key_value) = rest.get_mut(space + 1..len.saturating_sub(1)) else {
            return;
        };
        if key_value.contains(&b'\n') {
            // Becomes `x=xxx…`: a key, `=` and an inner newline make it 3 bytes or more.
            key_value.fill(b'x');
            if let Some(eq) = key_value.get_mut(1) {
                *eq = b'=';
            }
        }
        at += len;
    }
}

/// What the extended headers before an entry said about it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EntryExtensions {
    /// The PAX records, in order.
    pub records: Vec<PaxRecord>,
    /// A GNU long name (`L`) entry came before it; the tar crate takes the name from it.
    pub gnu_long_name: bool,
    /// A GNU long link (`K`) entry came before it.
    pub gnu_long_link: bool,
}

impl EntryExtensions {
    /// The last record under `key`, as GNU tar and Go take it.
    pub fn value(&self, key: &[u8]) -> Option<&[u8]> {
        self.records
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_slice())
    }

    /// The entry's path from a PAX `path` record, unless a GNU long name takes
    /// precedence (as in the tar crate) or the record is empty (which, in POSIX, means
    /// the header's own field).
    pub fn path(&self) -> Option<&[u8]> {
        self.value(b"path")
            .filter(|v| !v.is_empty() && !self.gnu_long_name)
    }

    /// The link target from a PAX `linkpath` record, on the same terms as [`Self::path`].
    pub fn link_path(&self) -> Option<&[u8]> {
        self.value(b"linkpath")
            .filter(|v| !v.is_empty() && !self.gnu_long_link)
    }

    /// A decimal record (`uid`, `gid`, `size`): `None` when absent, an error when it is
    /// not a number.
    pub fn number(&self, key: &[u8]) -> Result<Option<u64>, PaxError> {
        let Some(value) = self.value(key) else {
            return Ok(None);
        };
        std::str::from_utf8(value)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| PaxError::BadNumber {
                key: String::from_utf8_lossy(key).into_owned(),
                value: String::from_utf8_lossy(value).into_owned(),
            })
    }

    /// The size the archive's framing uses. The tar crate takes the first `size` record,
    /// the others the last: records that disagree are refused rather than read two ways.
    fn framing_size(&self) -> Result<Option<u64>, PaxError> {
        let mut sizes = self.records.iter().filter(|(k, _)| k == b"size");
        let Some((_, first)) = sizes.next() else {
            return Ok(None);
        };
        if sizes.any(|(_, v)| v != first) {
            return Err(PaxError::ConflictingSizes);
        }
        self.number(b"size")
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && !self.gnu_long_name && !self.gnu_long_link
    }
}

/// The extensions [`PaxFramer`] found, by the header position of the entry they
/// describe (`tar::Entry::raw_header_position`).
#[derive(Clone, Default)]
pub struct FoundExtensions(Rc<RefCell<HashMap<u64, EntryExtensions>>>);

impl FoundExtensions {
    /// Takes what was found for the entry whose header is at `header_position`.
    pub fn take(&self, header_position: u64) -> EntryExtensions {
        self.0
            .borrow_mut()
            .remove(&header_position)
            .unwrap_or_default()
    }

    fn put(&self, header_position: u64, ext: EntryExtensions) {
        self.0.borrow_mut().insert(header_position, ext);
    }
}

/// Where the framer is in the archive.
enum State {
    /// The next byte starts a header block.
    Header,
    /// Inside an entry's data (padding included): this many bytes left.
    Data(u64),
    /// After a GNU sparse header that says extension blocks follow; then `data` bytes.
    SparseExtension { data: u64 },
    /// Past the end of the archive, or past something the tar crate will refuse: bytes
    /// pass through untouched.
    Through,
}

/// Passes a tar stream through, reading its PAX extended headers by length on the way.
/// See the module documentation.
pub struct PaxFramer<R> {
    inner: R,
    /// Bytes read from `inner`, and so the archive position of the next byte read.
    offset: u64,
    /// A header block or extended header, ready to hand out from `ready_at`.
    ready: Vec<u8>,
    ready_at: usize,
    state: State,
    pending: EntryExtensions,
    found: FoundExtensions,
}

impl<R: Read> PaxFramer<R> {
    pub fn new(inner: R) -> Self {
        PaxFramer {
            inner,
            offset: 0,
            ready: Vec::new(),
            ready_at: 0,
            state: State::Header,
            pending: EntryExtensions::default(),
            found: FoundExtensions::default(),
        }
    }

    /// Where the extensions of each entry can be looked up once the tar crate has read
    /// its header.
    pub fn extensions(&self) -> FoundExtensions {
        self.found.clone()
    }

    /// Reads up to `buf.len()` bytes, fewer only at the end of the stream.
    fn read_full(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.offset += done as u64;
        Ok(done)
    }

    /// Reads the next header block and decides what follows it.
    fn next_header(&mut self) -> io::Result<()> {
        let position = self.offset;
        let mut block = [0u8; BLOCK as usize];
        let got = self.read_full(&mut block)?;
        self.ready.clear();
        self.ready_at = 0;
        self.ready.extend_from_slice(&block[..got]);
        if got < block.len() || block.iter().all(|b| *b == 0) {
            // The end, as the tar crate sees it (it does not look past a zero block).
            self.state = State::Through;
            return Ok(());
        }
        let mut header = tar::Header::new_old();
        header.as_mut_bytes().copy_from_slice(&block);
        let Ok(size) = header.entry_size() else {
            // The tar crate refuses this header itself.
            self.state = State::Through;
            return Ok(());
        };
        let kind = header.entry_type();
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        if recognized && kind.is_pax_local_extensions() {
            return self.extended_header(position, size);
        }
        if recognized && (kind.is_gnu_longname() || kind.is_gnu_longlink()) {
            self.pending.gnu_long_name |= kind.is_gnu_longname();
            self.pending.gnu_long_link |= kind.is_gnu_longlink();
            self.state = State::Data(round_up(size)?);
            return Ok(());
        }
        // An entry the pending extensions describe. PAX `size` applies to it unless it
        // is itself an extension header (as in the tar crate).
        let ext = std::mem::take(&mut self.pending);
        let is_extension = kind.is_pax_global_extensions()
            || kind.is_pax_local_extensions()
            || kind.is_gnu_longname()
            || kind.is_gnu_longlink();
        let size = match ext.framing_size() {
            Err(e) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("PAX records of the entry at byte {position}: {e}"),
                ));
            }
            Ok(Some(pax)) if !is_extension => pax,
            Ok(_) => size,
        };
        if !ext.is_empty() {
            self.found.put(position, ext);
        }
        let extended = kind.is_gnu_sparse() && header.as_gnu().is_some_and(|g| g.is_extended());
        self.state = if extended {
            State::SparseExtension { data: size }
        } else {
            State::Data(round_up(size)?)
        };
        Ok(())
    }

    /// Reads a PAX extended header's body, keeps its records for the next entry and
    /// queues the body, newline records neutralized, after its header block.
    fn extended_header(&mut self, position: u64, size: u64) -> io::Result<()> {
        if size > MAX_PAX_HEADER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "PAX extended header at byte {position} holds {size} bytes, more than \
                     {MAX_PAX_HEADER}"
                ),
            ));
        }
        // Bounded by MAX_PAX_HEADER above.
        let padded = round_up(size)? as usize;
        let start = self.ready.len();
        self.ready.resize(start + padded, 0);
        let got = {
            let mut body = std::mem::take(&mut self.ready);
            let got = self.read_full(&mut body[start..]);
            self.ready = body;
            got?
        };
        if got < padded {
            self.ready.truncate(start + got);
            self.state = State::Through;
            return Ok(());
        }
        let Some(body) = self.ready.get_mut(start..start + size as usize) else {
            return Err(invalid(
                position,
                PaxError::BadRecordLength { at: 0, len: 0 },
            ));
        };
        let records = parse_records(body).map_err(|e| invalid(position, e))?;
        neutralize_newlines(body);
        // A second extended header for the same entry: the tar crate refuses that.
        self.pending.records = records;
        self.state = State::Header;
        Ok(())
    }

    /// Reads one GNU sparse extension block.
    fn sparse_extension(&mut self, data: u64) -> io::Result<()> {
        let mut ext = tar::GnuExtSparseHeader::new();
        let got = self.read_full(ext.as_mut_bytes())?;
        self.ready.clear();
        self.ready_at = 0;
        self.ready.extend_from_slice(&ext.as_bytes()[..got]);
        self.state = if got < BLOCK as usize {
            State::Through
        } else if ext.is_extended() {
            State::SparseExtension { data }
        } else {
            State::Data(round_up(data)?)
        };
        Ok(())
    }
}

fn round_up(size: u64) -> io::Result<u64> {
    size.checked_next_multiple_of(BLOCK)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "entry size overflows"))
}

/// An error in the PAX extended header whose own header is at byte `position`.
fn invalid(position: u64, e: PaxError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("PAX extended header at byte {position}: {e}"),
    )
}

impl<R: Read> Read for PaxFramer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(ready) = self.ready.get(self.ready_at..).filter(|r| !r.is_empty()) {
                let n = ready.len().min(buf.len());
                buf[..n].copy_from_slice(&ready[..n]);
                self.ready_at += n;
                return Ok(n);
            }
            match self.state {
                State::Through => return self.inner.read(buf),
                State::Data(0) => self.state = State::Header,
                State::Data(left) => {
                    let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                    let n = self.inner.read(&mut buf[..want])?;
                    self.offset += n as u64;
                    self.state = State::Data(left - n as u64);
                    return Ok(n);
                }
                State::Header => self.next_header()?,
                State::SparseExtension { data } => self.sparse_extension(data)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &[u8]) -> Vec<u8> {
        // The length counts its own digits.
        let tail = 1 + key.len() + 1 + value.len() + 1;
        let mut len = tail + 1;
        while len != tail + len.to_string().len() {
            len = tail + len.to_string().len();
        }
        let mut out = format!("{len} {key}=").into_bytes();
        out.extend_from_slice(value);
        out.push(b'\n');
        out
    }

    #[test]
    fn records_are_read_by_length() {
        let mut body = record("linkpath", b"a\nb");
        body.extend(record("SCHILY.xattr.security.capability", b"\x01\0\n\0"));
        body.extend(record("path", b"x=y z"));
        let recs = parse_records(&body).unwrap();
        assert_eq!(
            recs,
            vec![
                (b"linkpath".to_vec(), b"a\nb".to_vec()),
                (
                    b"SCHILY.xattr.security.capability".to_vec(),
                    b"\x01\0\n\0".to_vec()
                ),
                (b"path".to_vec(), b"x=y z".to_vec()),
            ]
        );
        assert_eq!(&record("linkpath", b"a\nb")[..], b"16 linkpath=a\nb\n");
    }

    #[test]
    fn a_value_cannot_smuggle_records() {
        let body = record("user", b"\n22 linkpath=/etc/evil\n");
        let recs = parse_records(&body).unwrap();
        assert_eq!(recs.len(), 1);
        let ext = EntryExtensions {
            records: recs,
            ..Default::default()
        };
        assert_eq!(ext.link_path(), None);
        // And the tar crate, reading the neutralized copy, finds nothing either.
        let mut copy = body.clone();
        neutralize_newlines(&mut copy);
        assert_eq!(copy.len(), body.len());
        assert!(!copy[..copy.len() - 1].contains(&b'\n'));
        let theirs: Vec<_> = tar::PaxExtensions::new(&copy)
            .map(|e| e.unwrap().key_bytes().to_vec())
            .collect();
        assert_eq!(theirs, vec![b"x".to_vec()]);
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        let cases: &[(&[u8], PaxError)] = &[
            (
                b"x path=a\n",
                PaxError::BadLength {
                    at: 0,
                    text: "x".into(),
                },
            ),
            (
                b"12path=a\n",
                PaxError::BadLength {
                    at: 0,
                    text: "12path=a\n".into(),
                },
            ),
            (b"99 path=a\n", PaxError::BadRecordLength { at: 0, len: 99 }),
            (b"2 \n", PaxError::BadRecordLength { at: 0, len: 2 }),
            (b"3 \n", PaxError::NoEquals { at: 0 }),
            (b"11 path=ab", PaxError::BadRecordLength { at: 0, len: 11 }),
            (b"10 path=abc", PaxError::NoNewline { at: 0 }),
            (b"9 pathab\n", PaxError::NoEquals { at: 0 }),
            (b"6 =ab\n", PaxError::BadKey { at: 0 }),
            (
                b"12 path=a\0b\n",
                PaxError::NulInValue { key: "path".into() },
            ),
            (
                b"9 path=a\n9 path=",
                PaxError::BadRecordLength { at: 9, len: 9 },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_records(body).as_ref(),
                Err(want),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(parse_records(b"").unwrap(), vec![]);
        let ext = EntryExtensions {
            records: parse_records(b"8 uid=x\n").unwrap(),
            ..Default::default()
        };
        assert!(ext.number(b"uid").is_err());
        let sizes = EntryExtensions {
            records: parse_records(b"9 size=1\n9 size=2\n").unwrap(),
            ..Default::default()
        };
        assert_eq!(sizes.framing_size(), Err(PaxError::ConflictingSizes));
    }
}
