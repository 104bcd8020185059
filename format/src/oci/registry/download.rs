//! Downloading layer blobs: a few at a time, each into its file under the
//! store's `downloads/` (see [`crate::store::Download`]), resumed with an HTTP
//! range request where an earlier pull stopped, checked against its digest
//! and size when complete; and read back while it is still arriving
//! ([`FollowReader`]), so a layer is applied as it downloads and no layer is
//! ever whole in memory.
//!
//! Fetching knows nothing of layers, trees or objects: it turns a digest into
//! verified bytes on disk. (A lazy mount could use it to fetch on demand.)

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::errors::OciDistributionError;
use oci_client::{Client, Reference};
use tokio::sync::Semaphore;

use super::session::{Explain, Session};
use crate::oci::OciError;
use crate::oci::blob::{BlobDigest, BlobHasher};
use crate::oci::import::DownloadMeter;
use crate::store::{Download, ObjectStore};

/// Tries per blob before a network failure fails the pull.
const MAX_ATTEMPTS: u32 = 4;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const HASH_BUF: usize = 1 << 20;

/// Counts downloaded bytes, and tells the progress display.
#[derive(Clone)]
pub struct Meter {
    total: Arc<AtomicU64>,
    report: Option<DownloadMeter>,
}

impl Meter {
    pub fn new(report: Option<DownloadMeter>) -> Self {
        Meter {
            total: Arc::default(),
            report,
        }
    }

    fn add(&self, n: u64) {
        let total = self.total.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(r) = &self.report {
            r(total);
        }
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
struct State {
    /// Bytes of the file known to be written (readers may read that far).
    written: u64,
    file: Option<Arc<File>>,
    finished: bool,
    /// The error, once finished badly; taken by [`Blob::take_error`].
    error: Option<OciError>,
    /// Why it failed, as text, for readers (the error itself is taken once).
    failure: Option<String>,
    /// The locked download file, after success, until the pull commits.
    download: Option<Download>,
}

/// One blob being fetched.
pub struct Blob {
    pub digest: BlobDigest,
    pub size: u64,
    state: Mutex<State>,
    cond: Condvar,
}

impl Blob {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, file: &Arc<File>, written: u64) {
        let mut st = self.lock();
        st.file.get_or_insert_with(|| Arc::clone(file));
        st.written = written;
        self.cond.notify_all();
    }

    fn finish(&self, result: Result<Download, OciError>) {
        let mut st = self.lock();
        if st.finished {
            return;
        }
        match result {
            Ok(d) => st.download = Some(d),
            Err(e) => {
                st.failure = Some(e.to_string());
                st.error = Some(e);
            }
        }
        st.finished = true;
        self.cond.notify_all();
    }

    /// Waits for the download to end; returns its error if it failed.
    pub fn take_error(&self) -> Option<OciError> {
        let mut st = self.lock();
        while !st.finished {
            st = self.cond.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
        st.error.take()
    }
}

/// Finishes a blob's download as failed if its task ends without finishing it.
struct FinishOnDrop(Arc<Blob>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.finish(Err(OciError::Registry {
            what: format!("blob {}", self.0.digest),
            reason: "its download stopped before it ended (the pull was cancelled)".into(),
        }));
    }
}

/// What went wrong with one attempt at a blob.
enum Failure {
    /// The network or the server failed; trying again may work.
    Retry(String),
    /// The registry refused or lied; trying again would not help.
    Fatal(OciError),
}

fn fatal_or_retry(e: OciDistributionError, what: &str, explain: &Explain) -> Failure {
    match &e {
        OciDistributionError::RequestError(r) if !r.is_status() => Failure::Retry(r.to_string()),
        OciDistributionError::ServerError { code, .. } if *code >= 500 => {
            Failure::Retry(e.to_string())
        }
        _ => Failure::Fatal(explain.error(what, e)),
    }
}

/// The blobs of one pull.
pub struct Downloads<'s> {
    session: &'s Session,
    store: ObjectStore,
    slots: Arc<Semaphore>,
    meter: Meter,
    explain: Explain,
    blobs: HashMap<String, Arc<Blob>>,
}

impl<'s> Downloads<'s> {
    pub fn new(session: &'s Session, store: &ObjectStore, jobs: usize, meter: Meter) -> Self {
        Downloads {
            session,
            store: store.clone(),
            slots: Arc::new(Semaphore::new(jobs.max(1))),
            meter,
            explain: session.explain(),
            blobs: HashMap::new(),
        }
    }

    /// Starts fetching a blob (once, however often it is asked for). Blobs
    /// are served in the order asked, `jobs` at a time.
    pub fn start(&mut self, digest: &BlobDigest, size: u64) -> Arc<Blob> {
        let key = digest.to_string();
        if let Some(b) = self.blobs.get(&key) {
            return Arc::clone(b);
        }
        let blob = Arc::new(Blob {
            digest: digest.clone(),
            size,
            state: Mutex::default(),
            cond: Condvar::new(),
        });
        let task = Task {
            blob: Arc::clone(&blob),
            client: self.session.client().clone(),
            image: self.session.image().clone(),
            store: self.store.clone(),
            meter: self.meter.clone(),
            explain: self.explain.clone(),
        };
        let slots = Arc::clone(&self.slots);
        self.session.spawn(async move {
            // Whatever ends this task (an error, a panic, the runtime shutting
            // down), the blob is finished, so no reader waits forever.
            let _guard = FinishOnDrop(Arc::clone(&task.blob));
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let result = task.fetch().await;
            task.blob.finish(result);
        });
        self.blobs.insert(key, Arc::clone(&blob));
        blob
    }

    /// Reads a blob from its first byte, waiting for bytes still to come.
    pub fn reader(blob: &Arc<Blob>) -> FollowReader {
        FollowReader {
            blob: Arc::clone(blob),
            file: None,
            pos: 0,
            hasher: BlobHasher::new(blob.digest.alg),
            checked: false,
        }
    }

    /// Bytes downloaded so far.
    pub fn fetched(&self) -> u64 {
        self.meter.total()
    }

    /// After the pull committed: the blobs are not needed any more.
    pub fn remove_all(self) {
        for blob in self.blobs.values() {
            let download = blob.lock().download.take();
            if let Some(d) = download {
                // Left behind, it is only a download for gc to remove.
                let _ = d.remove();
            }
        }
    }
}

struct Task {
    blob: Arc<Blob>,
    client: Client,
    image: Reference,
    store: ObjectStore,
    meter: Meter,
    explain: Explain,
}

fn join_error(what: &str, e: tokio::task::JoinError) -> OciError {
    OciError::Registry {
        what: what.to_owned(),
        reason: format!("a download task failed: {e}"),
    }
}

/// Hashes the first `len` bytes of a file.
fn hash_prefix(file: &File, len: u64, mut hasher: BlobHasher) -> io::Result<BlobHasher> {
    let mut buf = vec![0u8; HASH_BUF];
    let mut pos = 0;
    while pos < len {
        let want = usize::try_from(len - pos).unwrap_or(HASH_BUF).min(HASH_BUF);
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let n = file.read_at(chunk, pos)?;
        if n == 0 {
            return Err(io::Error::other("the file shrank while it was read"));
        }
        hasher.update(chunk.get(..n).unwrap_or_default());
        pos += n as u64;
    }
    Ok(hasher)
}

impl Task {
    fn name(&self) -> String {
        self.blob.digest.to_string()
    }

    fn io_error(&self, op: &str, e: io::Error) -> OciError {
        OciError::Blob {
            blob: self.name(),
            reason: format!("cannot {op} its download file: {e}"),
        }
    }

    /// Gets the whole blob into its download file and checks it.
    async fn fetch(&self) -> Result<Download, OciError> {
        let name = self.name();
        let (size, alg) = (self.blob.size, self.blob.digest.alg);
        let store = self.store.clone();
        let key = name.clone();
        let download = tokio::task::spawn_blocking(move || store.open_download(&key))
            .await
            .map_err(|e| join_error(&name, e))??;
        let file = Arc::new(
            download
                .file()
                .try_clone()
                .map_err(|e| self.io_error("open", e))?,
        );
        let mut len = download.len()?;
        if len > size {
            download.truncate()?;
            len = 0;
        }
        let mut hasher = BlobHasher::new(alg);
        if len > 0 {
            // What an earlier pull left: hash it (to go on from there), and if
            // it is all there, check it before anyone reads it.
            let f = Arc::clone(&file);
            let prefix =
                tokio::task::spawn_blocking(move || hash_prefix(&f, len, BlobHasher::new(alg)))
                    .await
                    .map_err(|e| join_error(&name, e))?
                    .map_err(|e| self.io_error("read", e))?;
            if len < size {
                hasher = prefix;
            } else if prefix.finalize() == self.blob.digest {
                self.blob.publish(&file, len);
                return Ok(download);
            } else {
                download.truncate()?;
                len = 0;
            }
        }
        self.blob.publish(&file, len);
        let mut attempt = 0;
        while len < size {
            attempt += 1;
            let failure = match self.attempt(&file, &mut hasher, &mut len).await {
                Ok(()) if len == size => break,
                Ok(()) => Failure::Retry(format!(
                    "the registry ended the blob after {len} of {size} bytes"
                )),
                Err(f) => f,
            };
            match failure {
                Failure::Fatal(e) => {
                    let _ = download.remove();
                    return Err(e);
                }
                // The whole blob arrived and the stream still failed: the
                // digest check below says whether it matters.
                Failure::Retry(_) if len == size => break,
                Failure::Retry(why) if attempt >= MAX_ATTEMPTS => {
                    return Err(OciError::Registry {
                        what: name,
                        reason: format!(
                            "the download failed {attempt} times, last: {why} \
                             ({len} of {size} bytes are kept; pulling again resumes there)"
                        ),
                    });
                }
                Failure::Retry(_) => {
                    tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(attempt - 1)).await;
                }
            }
        }
        let actual = hasher.finalize();
        if actual != self.blob.digest {
            let _ = download.remove();
            return Err(OciError::BlobDigest {
                blob: name,
                expected: self.blob.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(download)
    }

    /// One request for the rest of the blob, from `len` on.
    async fn attempt(
        &self,
        file: &Arc<File>,
        hasher: &mut BlobHasher,
        len: &mut u64,
    ) -> Result<(), Failure> {
        let name = self.name();
        let size = self.blob.size;
        let response = self
            .client
            .pull_blob_stream_partial(&self.image, name.as_str(), *len, None)
            .await
            .map_err(|e| fatal_or_retry(e, &format!("blob {name}"), &self.explain))?;
        // A server that ignores the range sends it all again: skip what we have.
        let (mut skip, mut stream) = match response {
            BlobResponse::Partial(s) => (0, s),
            BlobResponse::Full(s) => (*len, s),
        };
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure::Retry(e.to_string()))?;
            self.meter.add(chunk.len() as u64);
            let mut data = &chunk[..];
            if skip > 0 {
                let k = usize::try_from(skip).unwrap_or(usize::MAX).min(data.len());
                data = data.get(k..).unwrap_or_default();
                skip -= k as u64;
            }
            if data.is_empty() {
                continue;
            }
            if *len + data.len() as u64 > size {
                return Err(Failure::Fatal(OciError::BlobSize {
                    blob: name,
                    expected: size,
                    actual: format!("more than {size} (the registry sent too much)"),
                }));
            }
            file.write_all_at(data, *len)
                .map_err(|e| Failure::Fatal(self.io_error("write", e)))?;
            hasher.update(data);
            *len += data.len() as u64;
            self.blob.publish(file, *len);
        }
        Ok(())
    }
}

/// Reads a blob as it downloads; checks what it read against the digest at
/// the end (the download is checked too, but this is what was applied).
pub struct FollowReader {
    blob: Arc<Blob>,
    file: Option<Arc<File>>,
    pos: u64,
    hasher: BlobHasher,
    checked: bool,
}

impl FollowReader {
    fn fail(&self, why: String) -> io::Error {
        io::Error::other(format!("blob {}: {why}", self.blob.digest))
    }

    /// Waits until there is something to read; returns how much (0: the end).
    fn wait(&mut self) -> io::Result<u64> {
        let blob = Arc::clone(&self.blob);
        let mut st = blob.lock();
        loop {
            if self.file.is_none() {
                self.file = st.file.clone();
            }
            if self.file.is_some() && st.written > self.pos {
                return Ok(st.written - self.pos);
            }
            if st.finished {
                return match &st.failure {
                    None => Ok(0),
                    Some(why) => Err(io::Error::other(why.clone())),
                };
            }
            st = blob.cond.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

impl Read for FollowReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let avail = self.wait()?;
        if avail == 0 {
            if !self.checked {
                if self.pos != self.blob.size {
                    return Err(self.fail(format!(
                        "{} bytes arrived, its descriptor says {}",
                        self.pos, self.blob.size
                    )));
                }
                let actual =
                    std::mem::replace(&mut self.hasher, BlobHasher::new(self.blob.digest.alg))
                        .finalize();
                if actual != self.blob.digest {
                    return Err(self.fail(format!("what was read has digest {actual}")));
                }
                self.checked = true;
            }
            return Ok(0);
        }
        let want = usize::try_from(avail).unwrap_or(usize::MAX).min(buf.len());
        let out = buf.get_mut(..want).unwrap_or_default();
        let Some(file) = &self.file else {
            return Err(self.fail("its download file vanished".into()));
        };
        let n = file.read_at(out, self.pos)?;
        if n == 0 {
            return Err(self.fail("its download file shrank".into()));
        }
        self.hasher.update(out.get(..n).unwrap_or_default());
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sha2::{Digest as _, Sha256};

    use super::*;

    fn blob_of(data: &[u8]) -> Arc<Blob> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        Arc::new(Blob {
            digest: BlobDigest::parse(&digest).unwrap(),
            size: data.len() as u64,
            state: Mutex::default(),
            cond: Condvar::new(),
        })
    }

    /// Writes `data` into the blob's download file in pieces, from a thread,
    /// then finishes it with `end`.
    fn feed(
        store: &ObjectStore,
        blob: &Arc<Blob>,
        data: Vec<u8>,
        end: Option<OciError>,
    ) -> std::thread::JoinHandle<()> {
        let download = store.open_download(&blob.digest.to_string()).unwrap();
        let file = Arc::new(download.file().try_clone().unwrap());
        let blob = Arc::clone(blob);
        std::thread::spawn(move || {
            let mut len = 0;
            for chunk in data.chunks(7000) {
                file.write_all_at(chunk, len).unwrap();
                len += chunk.len() as u64;
                blob.publish(&file, len);
                std::thread::sleep(Duration::from_millis(1));
            }
            blob.finish(match end {
                None => Ok(download),
                Some(e) => Err(e),
            });
        })
    }

    #[test]
    fn a_reader_follows_a_growing_blob_and_checks_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = ObjectStore::create(dir.path()).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();

        let blob = blob_of(&data);
        let writer = feed(&store, &blob, data.clone(), None);
        let mut got = Vec::new();
        Downloads::reader(&blob).read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got, data);
        assert!(blob.take_error().is_none());
        drop(blob); // and the download's lock with it

        // A download that fails: the reader fails with its reason.
        let blob = blob_of(&data);
        let cut = data[..50_000].to_vec();
        let why = OciError::Registry {
            what: "blob".into(),
            reason: "the network went away".into(),
        };
        let writer = feed(&store, &blob, cut, Some(why));
        let err = Downloads::reader(&blob)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        writer.join().unwrap();
        assert!(err.to_string().contains("the network went away"), "{err}");
        assert!(blob.take_error().is_some());

        // Bytes that are not the blob, even if the download said yes.
        let blob = blob_of(&data);
        let mut other = data.clone();
        other[77] ^= 1;
        std::fs::remove_file(store.downloads_dir().join("sha256").join(&blob.digest.hex)).unwrap();
        let writer = feed(&store, &blob, other, None);
        let err = Downloads::reader(&blob)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        writer.join().unwrap();
        assert!(
            err.to_string().contains("what was read has digest"),
            "{err}"
        );
    }

    #[test]
    fn a_task_that_ends_unfinished_fails_its_blob() {
        let blob = blob_of(b"x");
        drop(FinishOnDrop(Arc::clone(&blob)));
        let err = blob.take_error().unwrap();
        assert!(err.to_string().contains("stopped"), "{err}");
    }
}
