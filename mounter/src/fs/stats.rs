//! What a mount served: READ requests and opens, in total and per file, and how to ask.
//!
//! Files the kernel reads by FUSE passthrough send no READ to the daemon at all, so these
//! counters are how one sees passthrough at work: such a file shows opens, passthrough opens,
//! and zero reads. The daemon logs a summary when the mount ends and answers queries on an
//! abstract unix socket named after the mount's device number (`imgmount/stats/MAJ:MIN`).
//! An abstract name needs no path, so it stays reachable from a daemon that serves the root
//! filesystem from a chroot after `switch_root`; only root and the mount's owner may read it.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Counters of one mount, shared by the request threads.
#[derive(Default)]
pub struct ServeStats {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    opens: AtomicU64,
    passthrough_opens: AtomicU64,
    read_ahead: AtomicU64,
    files: Mutex<HashMap<u64, FileCounts>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCounts {
    pub reads: u64,
    pub read_bytes: u64,
    pub opens: u64,
    pub passthrough_opens: u64,
}

/// One file's counters, by inode number (as `stat` shows it through the mount).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStats {
    pub ino: u64,
    #[serde(flatten)]
    pub counts: FileCounts,
}

/// A snapshot of a mount's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    pub reads: u64,
    pub read_bytes: u64,
    pub opens: u64,
    pub passthrough_opens: u64,
    /// Objects opened and read ahead of the program (see `fs::readahead`).
    #[serde(default)]
    pub read_ahead: u64,
    /// Every file opened or read, by inode number.
    pub files: Vec<FileStats>,
}

impl ServeStats {
    pub fn new() -> Self {
        Self::default()
    }

    fn file(&self, ino: u64, update: impl FnOnce(&mut FileCounts)) {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        update(files.entry(ino).or_default());
    }

    /// A regular file was opened; `passthrough` if the kernel reads it directly.
    pub fn opened(&self, ino: u64, passthrough: bool) {
        self.opens.fetch_add(1, Ordering::Relaxed);
        if passthrough {
            self.passthrough_opens.fetch_add(1, Ordering::Relaxed);
        }
        self.file(ino, |f| {
            f.opens += 1;
            f.passthrough_opens += u64::from(passthrough);
        });
    }

    /// An object was opened and its first bytes read ahead of the program.
    pub fn read_ahead(&self) {
        self.read_ahead.fetch_add(1, Ordering::Relaxed);
    }

    /// A READ request was answered with `bytes` bytes.
    pub fn read(&self, ino: u64, bytes: usize) {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.read_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.file(ino, |f| {
            f.reads += 1;
            f.read_bytes += bytes as u64;
        });
    }

    pub fn snapshot(&self) -> StatsReport {
        let mut files: Vec<FileStats> = self
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(&ino, &counts)| FileStats { ino, counts })
            .collect();
        files.sort_by_key(|f| f.ino);
        StatsReport {
            reads: self.reads.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            opens: self.opens.load(Ordering::Relaxed),
            passthrough_opens: self.passthrough_opens.load(Ordering::Relaxed),
            read_ahead: self.read_ahead.load(Ordering::Relaxed),
            files,
        }
    }
}

impl StatsReport {
    pub fn file(&self, ino: u64) -> FileCounts {
        self.files
            .iter()
            .find(|f| f.ino == ino)
            .map_or_else(FileCounts::default, |f| f.counts)
    }

    /// The line logged when a mount ends.
    pub fn summary(&self) -> String {
        format!(
            "served {} READ requests ({} bytes) for {} files; {} opens, {} by passthrough; \
             {} objects read ahead",
            self.reads,
            self.read_bytes,
            self.files.len(),
            self.opens,
            self.passthrough_opens,
            self.read_ahead
        )
    }
}

/// The abstract socket name of the mount with this device number (`MAJ:MIN`).
pub fn socket_name(dev: &str) -> String {
    format!("imgmount/stats/{dev}")
}

fn socket_addr(dev: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(socket_name(dev).as_bytes())
}

/// The uid of the process at the other end of a unix socket.
fn peer_uid(sock: &UnixStream) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, which is that large.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Starts answering stats queries for the mount with device number `dev`, in a thread of
/// its own. A failure to listen is logged: counting goes on, only queries are lost.
pub fn listen(stats: Arc<ServeStats>, dev: &str) {
    let listener = match socket_addr(dev).and_then(|a| UnixListener::bind_addr(&a)) {
        Ok(l) => l,
        Err(e) => {
            log::warn!(
                "cannot listen for stats queries as {}: {e}",
                socket_name(dev)
            );
            return;
        }
    };
    // SAFETY: geteuid cannot fail.
    let owner = unsafe { libc::geteuid() };
    let spawned = std::thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                match peer_uid(&conn) {
                    Ok(uid) if uid == 0 || uid == owner => {}
                    _ => continue,
                }
                let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
                if let Ok(json) = serde_json::to_vec(&stats.snapshot()) {
                    let _ = conn.write_all(&json);
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the stats thread: {e}");
    }
}

/// Asks the daemon serving the mount with device number `dev` for its counters.
pub fn query(dev: &str) -> anyhow::Result<StatsReport> {
    let addr = socket_addr(dev)?;
    let mut conn = match UnixStream::connect_addr(&addr) {
        Ok(c) => c,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => bail!(
            "no daemon answers on {} (an imgmount older than stats, or one that could not listen)",
            socket_name(dev)
        ),
        Err(e) => return Err(e).with_context(|| format!("connecting to {}", socket_name(dev))),
    };
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    conn.read_to_end(&mut buf)
        .with_context(|| format!("reading from {}", socket_name(dev)))?;
    if buf.is_empty() {
        bail!(
            "the daemon on {} sent nothing: only root and the mount's owner may ask",
            socket_name(dev)
        );
    }
    serde_json::from_slice(&buf)
        .with_context(|| format!("parsing the answer of {}", socket_name(dev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_file_and_in_total() {
        let s = ServeStats::new();
        s.opened(5, false);
        s.read(5, 4096);
        s.read(5, 100);
        s.opened(9, true);
        s.opened(9, true);
        let r = s.snapshot();
        assert_eq!(
            (r.reads, r.read_bytes, r.opens, r.passthrough_opens),
            (2, 4196, 3, 2)
        );
        assert_eq!(
            r.file(5),
            FileCounts {
                reads: 2,
                read_bytes: 4196,
                opens: 1,
                passthrough_opens: 0
            }
        );
        assert_eq!(r.file(9).reads, 0);
        assert_eq!(r.file(9).passthrough_opens, 2);
        assert_eq!(r.file(1234), FileCounts::default());
        assert_eq!(
            r.summary(),
            "served 2 READ requests (4196 bytes) for 2 files; 3 opens, 2 by passthrough; \
             0 objects read ahead"
        );
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            json.contains(
                r#"{"ino":5,"reads":2,"read_bytes":4196,"opens":1,"passthrough_opens":0}"#
            ),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<StatsReport>(&json).unwrap(), r);
    }

    #[test]
    fn query_over_the_abstract_socket() {
        let s = Arc::new(ServeStats::new());
        s.read(3, 10);
        // A device number no real mount has, unique to this test process.
        let dev = format!("test-{}", std::process::id());
        listen(s.clone(), &dev);
        let r = query(&dev).unwrap();
        assert_eq!(r.reads, 1);
        assert_eq!(r.file(3).read_bytes, 10);
        s.read(3, 5);
        assert_eq!(
            query(&dev).unwrap().read_bytes,
            15,
            "each query sees the live counters"
        );
        assert!(query("no-such-mount").is_err());
    }
}
