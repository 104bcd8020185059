//! Layer records: an uncompressed layer tar with each stored file's content
//! replaced by a reference to its object, so the exact tar can be rebuilt
//! from the store without the blob (the idea of containers/storage's
//! tar-split).
//!
//! Why the tar and not the layer's tree: a tar is a sequence of operations
//! whose meaning depends on what lies below (a hard link to a file of a lower
//! layer, a path through a lower layer's symlink, whiteouts) and on order
//! within the layer. Replaying the same bytes through the same
//! [`super::TreeBuilder`] gives the same tree as the blob would, by
//! construction, and the rebuilt tar can be checked against the `diff_id`
//! that names the record: a record is never trusted, only verified.
//!
//! The file is zstd-compressed. Inside, all integers little endian:
//!
//! ```text
//! magic  "IMGLREC1"
//! u8     fs-verity algorithm of the objects (1 sha256, 2 sha512)
//! u8     diff_id algorithm (1 sha256, 2 sha512), then the diff_id's bytes
//! then segments, each a tag byte:
//!   'L' u32 len, len bytes        tar bytes kept as they are (1 ≤ len ≤ 1 MiB)
//!   'O' u64 size, digest bytes    the whole content of that object
//!   'E' u64 total                 the tar's length; nothing may follow
//! ```
//!
//! Recording watches the tar stream go by ([`Recording`]) while the import's
//! sink stores file contents ([`RecordingSink`]): the bytes that pass between
//! a sink's start and end are the file's content, and are checked (length and
//! a fast hash) to be exactly what the sink stored; otherwise (PAX sparse
//! files, whose tar bytes are not their content) the layer simply gets no
//! record.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::rc::Rc;

use xxhash_rust::xxh3::Xxh3;

use super::blob::{BlobAlg, BlobDigest};
use super::layer::ObjectSink;
use crate::store::ObjectStore;
use crate::store::fsops::{Expect, TempFile};
use crate::verity::{self, Digest, HashAlg};

const MAGIC: &[u8; 8] = b"IMGLREC1";
const SEG_LITERAL: u8 = b'L';
const SEG_OBJECT: u8 = b'O';
const SEG_END: u8 = b'E';
/// Largest literal segment.
const MAX_LITERAL: usize = 1 << 20;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("layer record: {}", msg.into()),
    )
}

fn blob_alg_id(alg: BlobAlg) -> u8 {
    match alg {
        BlobAlg::Sha256 => 1,
        BlobAlg::Sha512 => 2,
    }
}

fn write_header(out: &mut impl Write, verity: HashAlg, diff_id: &BlobDigest) -> io::Result<()> {
    out.write_all(MAGIC)?;
    out.write_all(&[verity.id(), blob_alg_id(diff_id.alg)])?;
    let raw = hex::decode(&diff_id.hex).map_err(|_| invalid("diff_id is not hex"))?;
    out.write_all(&raw)
}

fn read_u8(r: &mut impl Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// What a record's header says it is.
fn read_header(r: &mut impl Read) -> io::Result<(HashAlg, BlobDigest)> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)
        .map_err(|_| invalid("too short for its header"))?;
    if &magic != MAGIC {
        return Err(invalid("bad magic"));
    }
    let verity =
        HashAlg::from_id(read_u8(r)?).ok_or_else(|| invalid("unknown verity algorithm"))?;
    let alg = match read_u8(r)? {
        1 => BlobAlg::Sha256,
        2 => BlobAlg::Sha512,
        _ => return Err(invalid("unknown diff_id algorithm")),
    };
    let len = match alg {
        BlobAlg::Sha256 => 32,
        BlobAlg::Sha512 => 64,
    };
    let mut raw = vec![0u8; len];
    r.read_exact(&mut raw)?;
    Ok((
        verity,
        BlobDigest {
            alg,
            hex: hex::encode(raw),
        },
    ))
}

fn read_digest(r: &mut impl Read, alg: HashAlg) -> io::Result<Digest> {
    let mut raw = [0u8; verity::MAX_DIGEST_LEN];
    let raw = raw
        .get_mut(..alg.digest_len())
        .ok_or_else(|| invalid("digest length"))?;
    r.read_exact(raw)?;
    Digest::new(alg, raw).ok_or_else(|| invalid("digest length"))
}

/// Opens a record and checks its header names `verity` and `diff_id`.
fn open_record(
    file: File,
    verity: HashAlg,
    diff_id: &BlobDigest,
) -> io::Result<zstd::stream::read::Decoder<'static, BufReader<File>>> {
    let mut src = zstd::stream::read::Decoder::new(file)?;
    let (v, d) = read_header(&mut src)?;
    if v != verity || &d != diff_id {
        return Err(invalid(format!(
            "it is the record of {d} for {} objects, not of {diff_id} for {}",
            v.name(),
            verity.name()
        )));
    }
    Ok(src)
}

// ---------------------------------------------------------------- writing

/// The span of tar bytes a sink is storing.
struct ObjectSpan {
    count: u64,
    hash: Xxh3,
}

/// Builds a record while a layer is applied; see the module documentation.
pub struct RecordWriter {
    out: Option<zstd::stream::write::Encoder<'static, BufWriter<File>>>,
    /// The record being written (removed if dropped unnamed, as on a failure).
    file: TempFile,
    literal: Vec<u8>,
    pos: u64,
    object: Option<ObjectSpan>,
    objects: Vec<Digest>,
    /// Why this layer gets no record, once something went wrong.
    failed: Option<String>,
}

impl RecordWriter {
    /// Starts a record in `file`, a new temporary file (in an import's staging area).
    pub fn create(file: TempFile, verity: HashAlg, diff_id: &BlobDigest) -> io::Result<Self> {
        let writer = file.file().try_clone()?;
        let mut out = zstd::stream::write::Encoder::new(BufWriter::new(writer), 3)?;
        write_header(&mut out, verity, diff_id)?;
        Ok(RecordWriter {
            out: Some(out),
            file,
            literal: Vec::new(),
            pos: 0,
            object: None,
            objects: Vec::new(),
            failed: None,
        })
    }

    fn fail(&mut self, why: String) {
        if self.failed.is_none() {
            self.failed = Some(why);
        }
        self.out = None;
        self.literal = Vec::new();
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(out) = &mut self.out
            && let Err(e) = out.write_all(bytes)
        {
            self.fail(format!(
                "cannot write {}: {e}",
                self.file.display().display()
            ));
        }
    }

    fn flush_literal(&mut self) {
        if self.literal.is_empty() || self.out.is_none() {
            return;
        }
        let lit = std::mem::take(&mut self.literal);
        for chunk in lit.chunks(MAX_LITERAL) {
            self.write(&[SEG_LITERAL]);
            self.write(&(chunk.len() as u32).to_le_bytes());
            self.write(chunk);
        }
        self.literal = lit;
        self.literal.clear();
    }

    /// Tar bytes passing by.
    fn observe(&mut self, data: &[u8]) {
        self.pos += data.len() as u64;
        if self.failed.is_some() {
            return;
        }
        match &mut self.object {
            Some(span) => {
                span.count += data.len() as u64;
                span.hash.update(data);
            }
            None => {
                self.literal.extend_from_slice(data);
                if self.literal.len() >= MAX_LITERAL {
                    self.flush_literal();
                }
            }
        }
    }

    /// The next bytes are a file's content, which a sink is storing.
    fn begin_object(&mut self) {
        self.flush_literal();
        self.object = Some(ObjectSpan {
            count: 0,
            hash: Xxh3::new(),
        });
    }

    /// The sink stored `len` bytes as `digest`; `content_hash` is the xxh3 of
    /// what it read.
    fn end_object(&mut self, digest: Digest, len: u64, content_hash: u64) {
        let Some(span) = self.object.take() else {
            return self.fail("a file's content ended that never began".into());
        };
        if self.failed.is_some() {
            return;
        }
        if span.count != len || span.hash.digest() != content_hash {
            return self.fail("a file's content is not its tar bytes (a PAX sparse file?)".into());
        }
        self.write(&[SEG_OBJECT]);
        self.write(&len.to_le_bytes());
        self.write(digest.as_bytes());
        self.objects.push(digest);
    }

    /// Ends the record after the whole tar (to its very end) has passed;
    /// returns its file (still under its temporary name) and the objects it
    /// names, or why there is none (then the file is gone).
    pub fn finish(mut self) -> Result<(TempFile, Vec<Digest>), String> {
        if self.object.is_some() {
            self.fail("the tar ended inside a file's content".into());
        }
        self.flush_literal();
        let total = self.pos;
        self.write(&[SEG_END]);
        self.write(&total.to_le_bytes());
        if let Some(why) = self.failed.take() {
            return Err(why);
        }
        let done = match self.out.take() {
            Some(out) => out
                .finish()
                .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                .map(drop),
            None => Err(io::Error::other("no output")),
        };
        match done {
            Ok(()) => Ok((self.file, self.objects)),
            Err(e) => Err(format!(
                "cannot write {}: {e}",
                self.file.display().display()
            )),
        }
    }
}

/// A tar stream passing into the tree builder, seen by a [`RecordWriter`].
pub struct Recording<R> {
    inner: R,
    rec: Rc<RefCell<RecordWriter>>,
}

impl<R: Read> Recording<R> {
    pub fn new(inner: R, rec: Rc<RefCell<RecordWriter>>) -> Self {
        Recording { inner, rec }
    }

    /// Reads what is left of the stream (tar stops at its end marker; the
    /// record, like the diff_id, covers everything).
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }
}

impl<R: Read> Read for Recording<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.rec
            .borrow_mut()
            .observe(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// Hashes (xxh3) what is read through it.
struct Xxh3Reader<'a> {
    inner: &'a mut dyn Read,
    hash: Xxh3,
}

impl Read for Xxh3Reader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(buf.get(..n).unwrap_or_default());
        Ok(n)
    }
}

/// The import's sink, telling the record where each file's content is.
pub struct RecordingSink<'a> {
    pub inner: &'a mut dyn ObjectSink,
    pub rec: Rc<RefCell<RecordWriter>>,
}

impl ObjectSink for RecordingSink<'_> {
    fn store(&mut self, data: &mut dyn Read) -> io::Result<(Digest, u64)> {
        self.rec.borrow_mut().begin_object();
        let mut hashed = Xxh3Reader {
            inner: data,
            hash: Xxh3::new(),
        };
        let (digest, len) = self.inner.store(&mut hashed)?;
        self.rec
            .borrow_mut()
            .end_object(digest, len, hashed.hash.digest());
        Ok((digest, len))
    }
}

// ---------------------------------------------------------------- replaying

/// What a replay's reader tells its sink: where the stream is, and the last
/// object it finished emitting (start, end, digest).
#[derive(Default)]
pub struct ReplayShared {
    pos: Cell<u64>,
    last_object: Cell<Option<(u64, u64, Digest)>>,
}

enum Segment {
    Next,
    Literal(u64),
    Object {
        file: File,
        remaining: u64,
        start: u64,
        digest: Digest,
    },
    End,
}

/// The tar rebuilt from a record and the store's objects.
pub struct RecordReplay {
    src: zstd::stream::read::Decoder<'static, BufReader<File>>,
    store: ObjectStore,
    verity: HashAlg,
    seg: Segment,
    shared: Rc<ReplayShared>,
}

impl RecordReplay {
    /// Starts replaying `file`, which must be the record of `diff_id` for
    /// objects named by `verity` digests.
    pub fn open(
        store: &ObjectStore,
        file: File,
        verity: HashAlg,
        diff_id: &BlobDigest,
    ) -> io::Result<Self> {
        Ok(RecordReplay {
            src: open_record(file, verity, diff_id)?,
            store: store.clone(),
            verity,
            seg: Segment::Next,
            shared: Rc::default(),
        })
    }

    /// The sink to apply the rebuilt tar with: it stores nothing (the objects
    /// are in the store) but checks each file's content is one whole object.
    pub fn sink(&self) -> ReplaySink {
        ReplaySink {
            shared: Rc::clone(&self.shared),
            alg: self.verity,
        }
    }

    fn pos(&self) -> u64 {
        self.shared.pos.get()
    }

    fn advance(&self, n: usize) {
        self.shared.pos.set(self.pos() + n as u64);
    }

    fn next_segment(&mut self) -> io::Result<()> {
        let tag = read_u8(&mut self.src).map_err(|_| invalid("it ends without its end marker"))?;
        self.seg = match tag {
            SEG_LITERAL => {
                let len = read_u32(&mut self.src)? as usize;
                if len == 0 || len > MAX_LITERAL {
                    return Err(invalid(format!("a literal of {len} bytes")));
                }
                Segment::Literal(len as u64)
            }
            SEG_OBJECT => {
                let size = read_u64(&mut self.src)?;
                let digest = read_digest(&mut self.src, self.verity)?;
                // A regular file of the recorded size, through no symlink.
                let file = self
                    .store
                    .objects_fd()
                    .open_file(digest.object_path(), Expect::Size(size))
                    .map_err(|e| invalid(format!("object {digest} (of {size} bytes): {e}")))?;
                Segment::Object {
                    file,
                    remaining: size,
                    start: self.pos(),
                    digest,
                }
            }
            SEG_END => {
                let total = read_u64(&mut self.src)?;
                if total != self.pos() {
                    return Err(invalid(format!(
                        "it says the tar has {total} bytes, it rebuilt {}",
                        self.pos()
                    )));
                }
                if read_u8(&mut self.src).is_ok() {
                    return Err(invalid("bytes after its end marker"));
                }
                Segment::End
            }
            t => return Err(invalid(format!("unknown segment {t:#x}"))),
        };
        Ok(())
    }
}

impl Read for RecordReplay {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.seg {
                Segment::Next => self.next_segment()?,
                Segment::End => return Ok(0),
                Segment::Literal(0) | Segment::Object { remaining: 0, .. } => {
                    self.seg = Segment::Next;
                }
                Segment::Literal(rem) => {
                    let want = buf.len().min(usize::try_from(*rem).unwrap_or(usize::MAX));
                    let out = buf.get_mut(..want).unwrap_or_default();
                    let n = self.src.read(out)?;
                    if n == 0 {
                        return Err(invalid("it ends inside a literal"));
                    }
                    *rem -= n as u64;
                    self.advance(n);
                    return Ok(n);
                }
                Segment::Object {
                    file,
                    remaining,
                    start,
                    digest,
                } => {
                    let want = buf
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    let out = buf.get_mut(..want).unwrap_or_default();
                    let n = file.read(out)?;
                    if n == 0 {
                        return Err(invalid(format!("object {digest} is shorter than recorded")));
                    }
                    *remaining -= n as u64;
                    let (start, digest, done) = (*start, *digest, *remaining == 0);
                    self.advance(n);
                    if done {
                        self.shared
                            .last_object
                            .set(Some((start, self.pos(), digest)));
                    }
                    return Ok(n);
                }
            }
        }
    }
}

/// Counts what is read through it.
struct Counting<'a> {
    inner: &'a mut dyn Read,
    n: u64,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// See [`RecordReplay::sink`].
pub struct ReplaySink {
    shared: Rc<ReplayShared>,
    alg: HashAlg,
}

impl ObjectSink for ReplaySink {
    fn store(&mut self, data: &mut dyn Read) -> io::Result<(Digest, u64)> {
        let start = self.shared.pos.get();
        let mut counted = Counting { inner: data, n: 0 };
        // Hashing the content is what makes the tree's digest true: the
        // rebuilt tar is checked against the diff_id as a whole, and this
        // checks the object it came from is the one named.
        let digest = verity::digest_reader(self.alg, &mut counted)?;
        let end = self.shared.pos.get();
        match self.shared.last_object.get() {
            Some((s, e, d)) if s == start && e == end && d == digest && counted.n == e - s => {
                Ok((digest, counted.n))
            }
            _ => Err(invalid(
                "a file's content is not the whole object the record names",
            )),
        }
    }
}

/// What a record says: the fs-verity algorithm of its objects, the diff_id
/// it rebuilds, and the objects it names with their sizes.
pub struct RecordSummary {
    pub verity: HashAlg,
    pub diff_id: BlobDigest,
    pub objects: Vec<(Digest, u64)>,
}

/// Reads a whole record (but no object) and says what it is.
pub fn scan_record(file: File) -> io::Result<RecordSummary> {
    let mut src = zstd::stream::read::Decoder::new(file)?;
    let (verity, diff_id) = read_header(&mut src)?;
    let mut out = Vec::new();
    loop {
        match read_u8(&mut src).map_err(|_| invalid("it ends without its end marker"))? {
            SEG_LITERAL => {
                let len = u64::from(read_u32(&mut src)?);
                if len == 0 || len > MAX_LITERAL as u64 {
                    return Err(invalid(format!("a literal of {len} bytes")));
                }
                if io::copy(&mut (&mut src).take(len), &mut io::sink())? != len {
                    return Err(invalid("it ends inside a literal"));
                }
            }
            SEG_OBJECT => {
                let size = read_u64(&mut src)?;
                out.push((read_digest(&mut src, verity)?, size));
            }
            SEG_END => {
                read_u64(&mut src)?;
                return Ok(RecordSummary {
                    verity,
                    diff_id,
                    objects: out,
                });
            }
            t => return Err(invalid(format!("unknown segment {t:#x}"))),
        }
    }
}

/// The objects a record names.
pub fn record_objects(file: File) -> io::Result<Vec<(Digest, u64)>> {
    scan_record(file).map(|r| r.objects)
}

/// Whether a record could be replayed: its header names `verity` and
/// `diff_id`, it parses to its end, and every object it names is in the
/// store with the recorded size. (Only replaying proves it right.)
pub fn record_is_plausible(
    store: &ObjectStore,
    file: File,
    verity: HashAlg,
    diff_id: &BlobDigest,
) -> bool {
    match scan_record(file) {
        Ok(r) => {
            r.verity == verity
                && &r.diff_id == diff_id
                && r.objects
                    .iter()
                    .all(|(d, size)| store.object_size(d) == Some(*size))
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Seek;

    use std::path::{Path, PathBuf};

    use sha2::{Digest as _, Sha256};

    use super::*;
    use crate::oci::{Limits, TreeBuilder};
    use crate::store::fsops::Dir;

    /// Stores content in the store directly (a test's stand-in for staging).
    struct StoreSink<'a>(&'a ObjectStore);

    impl ObjectSink for StoreSink<'_> {
        fn store(&mut self, data: &mut dyn Read) -> io::Result<(Digest, u64)> {
            let mut buf = Vec::new();
            data.read_to_end(&mut buf)?;
            let d = self
                .0
                .insert_bytes(&buf, HashAlg::Sha256)
                .map_err(io::Error::other)?;
            Ok((d, buf.len() as u64))
        }
    }

    fn tar_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn diff_id(data: &[u8]) -> BlobDigest {
        BlobDigest::parse(&format!("sha256:{}", hex::encode(Sha256::digest(data)))).unwrap()
    }

    /// Applies `tar` recording it; returns the tree and the record's path.
    fn record(store: &ObjectStore, dir: &Path, tar: &[u8]) -> (crate::tree::Tree, PathBuf) {
        let dir = Dir::open(dir).unwrap();
        let tmp = dir.create_temp("rec-", 0o600).unwrap();
        let rec = RecordWriter::create(tmp, HashAlg::Sha256, &diff_id(tar)).unwrap();
        let rec = Rc::new(RefCell::new(rec));
        let mut inner = StoreSink(store);
        let mut sink = RecordingSink {
            inner: &mut inner,
            rec: Rc::clone(&rec),
        };
        let mut stream = Recording::new(tar, Rc::clone(&rec));
        let mut b = TreeBuilder::new(Limits::default());
        b.apply_layer(&mut stream, "l", &mut sink, &mut |_| {})
            .unwrap();
        stream.drain().unwrap();
        drop((sink, stream));
        let rec = Rc::try_unwrap(rec).ok().unwrap().into_inner();
        let (file, objects) = rec.finish().unwrap();
        assert_eq!(objects.len(), 2, "two files above the inline size");
        file.persist(&dir, "rec").unwrap();
        (b.finish(), dir.display("rec"))
    }

    #[test]
    fn replay_rebuilds_the_tar_and_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path().join("s"))
            .unwrap()
            .with_fsync(false);
        let tar = tar_of(&[
            ("a/big", vec![7u8; 100_000]),
            ("a/small", b"tiny".to_vec()),
            ("b", (0..5000u32).map(|i| i as u8).collect()),
        ]);
        let (tree, path) = record(&store, dir.path(), &tar);
        let recorded = std::fs::metadata(&path).unwrap().len();
        assert!(
            recorded < 2048,
            "a record is mostly headers: {recorded} bytes"
        );

        assert!(record_is_plausible(
            &store,
            File::open(&path).unwrap(),
            HashAlg::Sha256,
            &diff_id(&tar)
        ));
        let file = File::open(&path).unwrap();
        let mut replay = RecordReplay::open(&store, file, HashAlg::Sha256, &diff_id(&tar)).unwrap();
        let mut sink = replay.sink();
        let mut b = TreeBuilder::new(Limits::default());
        let mut rebuilt = Vec::new();
        {
            let mut tee = TeeReader(&mut replay, &mut rebuilt);
            b.apply_layer(&mut tee, "l", &mut sink, &mut |_| {})
                .unwrap();
            io::copy(&mut tee, &mut io::sink()).unwrap();
        }
        assert_eq!(rebuilt, tar, "the exact tar comes back");
        assert_eq!(b.finish(), tree);

        // The wrong key is refused before anything is read.
        let file = File::open(&path).unwrap();
        let other = diff_id(b"other");
        assert!(RecordReplay::open(&store, file, HashAlg::Sha256, &other).is_err());
    }

    #[test]
    fn a_changed_object_or_record_does_not_replay() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path().join("s"))
            .unwrap()
            .with_fsync(false);
        let tar = tar_of(&[("f", vec![1u8; 9000]), ("g", vec![2u8; 9000])]);
        let (_, path) = record(&store, dir.path(), &tar);
        let objects = record_objects(File::open(&path).unwrap()).unwrap();
        // Swap the content of one object for other bytes of the same size.
        let obj = store.object_path(&objects[0].0);
        let mut perm = std::fs::metadata(&obj).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
        std::fs::set_permissions(&obj, perm).unwrap();
        std::fs::write(&obj, vec![3u8; 9000]).unwrap();
        let file = File::open(&path).unwrap();
        let mut replay = RecordReplay::open(&store, file, HashAlg::Sha256, &diff_id(&tar)).unwrap();
        let mut sink = replay.sink();
        let mut b = TreeBuilder::new(Limits::default());
        assert!(
            b.apply_layer(&mut replay, "l", &mut sink, &mut |_| {})
                .is_err()
        );
        // A missing object makes the record implausible.
        std::fs::remove_file(&obj).unwrap();
        assert!(!record_is_plausible(
            &store,
            File::open(&path).unwrap(),
            HashAlg::Sha256,
            &diff_id(&tar)
        ));
        // Garbage is not a record, and is not read past its header.
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not zstd at all").unwrap();
        let mut f = File::open(&junk).unwrap();
        assert!(record_objects(f.try_clone().unwrap()).is_err());
        f.rewind().unwrap();
        assert!(RecordReplay::open(&store, f, HashAlg::Sha256, &diff_id(&tar)).is_err());
    }

    struct TeeReader<'a, R>(&'a mut R, &'a mut Vec<u8>);
    impl<R: Read> Read for TeeReader<'_, R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }
}
