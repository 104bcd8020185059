//! Reading ahead across files.
//!
//! The kernel reads ahead within a file, never across files. A program that reads a
//! directory's files one after another (tar, `cp -r`, a build, a boot) waits for each
//! object's open, sidecar and first read in turn: one disk round trip after another, with
//! the disk idle in between. The daemon knows more than the kernel here: once a directory
//! has been listed, the files after the one just opened are the likely next ones. So when a
//! listed file is opened, the next files of that listing (a window of [`WINDOW`] by
//! default, `mount --read-ahead-files`) are fetched by up to [`THREADS`] threads at once,
//! ahead of the program: their objects opened (sidecars loaded and checked) and their first
//! bytes read.
//!
//! Nothing is served from this. It warms the page cache and the open-object cache; every
//! byte the program gets is still verified when it is read, and a fetch that fails is
//! forgotten (the program's own open reports it). A file opened without a listing (a path
//! looked up directly) fetches nothing, and a listing nobody reads from costs only its
//! bookkeeping.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};

/// How many files past the one opened are fetched, unless the mount says otherwise.
pub const WINDOW: usize = 32;
/// Fetches at once: requests in flight for the disk, not cores (fetchers mostly wait).
pub const THREADS: usize = 4;
/// Listed files remembered; past that, every listing is forgotten and learnt again.
const REMEMBERED: usize = 1 << 20;
/// Queued fetches beyond this many windows are dropped oldest first: the program has
/// moved on.
const QUEUED_WINDOWS: usize = 4;

/// What a fetch does with a file's inode number (open and warm its object).
pub type Fetch = dyn Fn(u64) + Send + Sync;

/// Schedules fetches of the files after the ones opened (see the module docs). Dropping it
/// ends its threads.
pub struct ReadAhead {
    /// Files fetched past the one opened; 0: none, and listings are not even remembered.
    window: usize,
    shared: Arc<Shared>,
}

/// What the fetching threads share with the scheduler.
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    fetch: Box<Fetch>,
}

#[derive(Default)]
struct State {
    /// Each listed directory's regular files, in listing order.
    listings: HashMap<u64, Listing>,
    /// Where each listed file is: its directory and its index there.
    at: HashMap<u64, (u64, usize)>,
    queue: VecDeque<u64>,
    threads: usize,
    stop: bool,
}

#[derive(Default)]
struct Listing {
    files: Vec<u64>,
    /// The directory offset the next part of the listing starts at.
    next: u64,
    /// Files before this index have been fetched or queued.
    ahead: usize,
}

impl ReadAhead {
    /// A scheduler fetching the `window` files after each one opened with `fetch`.
    pub fn new(window: usize, fetch: Box<Fetch>) -> Self {
        ReadAhead {
            window,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                fetch,
            }),
        }
    }

    /// Part of directory `dir`'s listing, from `offset`: its regular files in order, and
    /// the offset after the last entry. A listing that restarts at 0 replaces the old one;
    /// a part that does not follow on (a seek) is ignored.
    pub fn listed(&self, dir: u64, offset: u64, files: &[u64], next: u64) {
        if self.window == 0 {
            return;
        }
        let mut st = self.shared.lock();
        if offset == 0 {
            if let Some(old) = st.listings.remove(&dir) {
                for f in old.files {
                    st.at.remove(&f);
                }
            }
        } else if st.listings.get(&dir).is_none_or(|l| l.next != offset) {
            return;
        }
        if st.at.len() + files.len() > REMEMBERED {
            st.listings.clear();
            st.at.clear();
            if offset != 0 {
                return;
            }
        }
        let st = &mut *st;
        let listing = st.listings.entry(dir).or_default();
        for &f in files {
            st.at.insert(f, (dir, listing.files.len()));
            listing.files.push(f);
        }
        listing.next = next;
    }

    /// File `nid` was opened: queue the files after it in its listing not yet fetched.
    pub fn opened(&self, nid: u64) {
        if self.window == 0 {
            return;
        }
        let mut st = self.shared.lock();
        let Some(&(dir, i)) = st.at.get(&nid) else {
            return;
        };
        let st = &mut *st;
        let Some(listing) = st.listings.get_mut(&dir) else {
            return;
        };
        let from = listing.ahead.max(i + 1);
        let to = (i + 1).saturating_add(self.window).min(listing.files.len());
        if from >= to {
            return;
        }
        st.queue.extend(&listing.files[from..to]);
        listing.ahead = to;
        while st.queue.len() > QUEUED_WINDOWS.saturating_mul(self.window) {
            st.queue.pop_front();
        }
        // Started on first use: the daemon forks after the filesystem is made, and a
        // fork keeps no threads.
        while st.threads < THREADS.min(self.window) {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name("imgmount-readahead".into())
                .spawn(move || shared.fetcher());
            if spawned.is_err() {
                break;
            }
            st.threads += 1;
        }
        self.shared.wake.notify_all();
    }

    #[cfg(test)]
    fn queued(&self) -> Vec<u64> {
        self.shared.lock().queue.iter().copied().collect()
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fetching thread: takes queued files until the scheduler is dropped.
    fn fetcher(&self) {
        loop {
            let nid = {
                let mut st = self.lock();
                loop {
                    if st.stop {
                        return;
                    }
                    if let Some(nid) = st.queue.pop_front() {
                        break nid;
                    }
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            };
            (self.fetch)(nid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn idle() -> ReadAhead {
        // Fetches that never finish their queue in the test: the queue itself is checked.
        ReadAhead::new(
            WINDOW,
            Box::new(|_| std::thread::sleep(Duration::from_secs(3600))),
        )
    }

    #[test]
    fn an_open_queues_the_files_after_it_once() {
        let ra = idle();
        let files: Vec<u64> = (100..200).collect();
        ra.listed(1, 0, &files[..60], 60);
        ra.listed(1, 60, &files[60..], 100);
        // Until the threads take them, everything queued stays in the queue; they sleep
        // on the first ones.
        ra.opened(100);
        std::thread::sleep(Duration::from_millis(50));
        let first = ra.queued();
        assert_eq!(first.len(), WINDOW - THREADS);
        assert_eq!(first.last(), Some(&(100 + WINDOW as u64)));
        // The next open adds only what is new.
        ra.opened(101);
        assert_eq!(ra.queued().last(), Some(&(101 + WINDOW as u64)));
        assert_eq!(ra.queued().len(), WINDOW - THREADS + 1);
        // Opening a file the window passed adds nothing twice.
        ra.opened(102);
        let q = ra.queued();
        let mut dedup = q.clone();
        dedup.dedup();
        assert_eq!(q, dedup);
    }

    #[test]
    fn unlisted_files_and_seeks_fetch_nothing() {
        let ra = idle();
        ra.opened(7);
        assert!(ra.queued().is_empty());
        ra.listed(1, 0, &[10, 11], 2);
        // A part that does not follow on is ignored.
        ra.listed(1, 5, &[12, 13], 7);
        ra.opened(12);
        assert!(ra.queued().is_empty());
        // The last file of a listing has nothing after it.
        ra.opened(11);
        assert!(ra.queued().is_empty());
    }

    #[test]
    fn a_relisting_replaces_the_old_one() {
        let ra = idle();
        ra.listed(1, 0, &[10, 11, 12], 3);
        ra.listed(1, 0, &[20, 21], 2);
        ra.opened(10);
        assert!(ra.queued().is_empty());
    }

    /// A scheduler with `window` whose fetches are recorded, and the record.
    fn recording(window: usize) -> (ReadAhead, Arc<Mutex<Vec<u64>>>) {
        let done = Arc::new(Mutex::new(Vec::new()));
        let d = done.clone();
        let ra = ReadAhead::new(window, Box::new(move |nid| d.lock().unwrap().push(nid)));
        (ra, done)
    }

    /// [`recording`], with a directory of files 0 to 9 listed and file 0 opened.
    fn first_of_ten_opened(window: usize) -> (ReadAhead, Arc<Mutex<Vec<u64>>>) {
        let (ra, done) = recording(window);
        let files: Vec<u64> = (0..10).collect();
        ra.listed(5, 0, &files, 10);
        ra.opened(0);
        (ra, done)
    }

    /// What has been fetched once `want` fetches are done (or 2 s have passed), sorted.
    fn fetched(done: &Mutex<Vec<u64>>, want: usize) -> Vec<u64> {
        for _ in 0..200 {
            if done.lock().unwrap().len() >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut got = done.lock().unwrap().clone();
        got.sort();
        got
    }

    #[test]
    fn the_window_bounds_what_is_fetched() {
        let (ra, done) = first_of_ten_opened(3);
        assert_eq!(fetched(&done, 3), vec![1, 2, 3]);
        // Given time, nothing past the window follows.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(fetched(&done, 3), vec![1, 2, 3]);
        ra.opened(1);
        assert_eq!(fetched(&done, 4), vec![1, 2, 3, 4]);
        // No more threads than the window has files.
        assert_eq!(ra.shared.lock().threads, 3);
    }

    #[test]
    fn a_window_of_zero_fetches_nothing_and_starts_no_thread() {
        let (ra, done) = first_of_ten_opened(0);
        std::thread::sleep(Duration::from_millis(50));
        assert!(done.lock().unwrap().is_empty());
        let st = ra.shared.lock();
        assert_eq!((st.threads, st.listings.len(), st.at.len()), (0, 0, 0));
    }

    #[test]
    fn fetchers_fetch_in_order_and_end_with_the_scheduler() {
        let (ra, done) = first_of_ten_opened(WINDOW);
        assert_eq!(fetched(&done, 9), (1..10).collect::<Vec<_>>());
        let weak = Arc::downgrade(&ra.shared);
        drop(ra);
        // The threads let go within their wait.
        for _ in 0..200 {
            if weak.strong_count() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(weak.strong_count(), 0);
    }
}
