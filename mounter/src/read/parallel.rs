//! Verification of large reads on several cores.
//!
//! A FUSE thread serving a large read (the kernel sends up to 1 MiB) would otherwise hash all
//! of it alone while the other cores wait. When cores are free, the run of blocks is split
//! into parts: helper threads hash the others while the FUSE thread hashes the first, and
//! the reply is sent only once every part has verified. Small runs stay on the FUSE thread:
//! waking a helper costs more than hashing them.
//!
//! "Free" is measured, not guessed: [`CoreGauge`] says how many cores the machine has had to
//! spare for this process lately, and every thread hashing for this mount (FUSE threads and
//! helpers) is counted while it hashes. When other programs, or the mount's other reads,
//! already fill the cores, a read is not split and costs no more than before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use imgmount_format::verity::{BLOCK_SIZE, MerkleTree, VerityError};

use super::cores::CoreGauge;

/// The smallest part worth handing to another thread, so runs of twice this are split.
/// Measured on AMD EPYC (2 cores, SHA-NI, other builds idling; best of 5, verification alone,
/// one core against two): 64 KiB 24 us against 27-30 (the helper's wake-up costs more than
/// it saves), 128 KiB 44-46 against 35-44, 256 KiB 84-111 against 59-82, 512 KiB 172-181
/// against 105-138, 1 MiB 340-373 against 202-230. Through `Objects::read` (`cargo bench
/// --bench read_path -- split`), a 1 MiB read went from 382 to 302 us.
pub const PART_MIN: usize = 128 << 10;

/// Most threads one run is split between, however many cores there are.
const MAX_PARTS: usize = 8;

/// The unit of work threads take from a run: 16 blocks, hashed in interleaved pairs.
const CHUNK: usize = 16 * BLOCK_SIZE;

/// Splits runs of blocks between the calling thread and a small pool of helpers.
pub struct ParallelVerifier {
    /// Cores verification may use in all, the calling thread included (1: never split).
    cores: usize,
    /// Threads hashing for this mount right now.
    busy: AtomicUsize,
    /// Cores the machine has had to spare for this process lately.
    gauge: CoreGauge,
    /// The helpers, started at the first split (not before: the mount daemon forks after
    /// the read path is set up, and threads do not survive a fork).
    pool: OnceLock<Option<rayon::ThreadPool>>,
}

/// Counts a thread (or a group of them) as hashing, until dropped.
struct Busy<'a> {
    busy: &'a AtomicUsize,
    count: usize,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.busy.fetch_sub(self.count, Ordering::Relaxed);
    }
}

impl ParallelVerifier {
    /// A verifier using up to `cores` cores per run; 0 means as many as the machine has.
    pub fn new(cores: usize) -> Self {
        let cores = match cores {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let cores = cores.min(MAX_PARTS);
        ParallelVerifier {
            cores,
            busy: AtomicUsize::new(0),
            gauge: CoreGauge::new(cores),
            pool: OnceLock::new(),
        }
    }

    /// Checks the consecutive blocks `data` starting at block `first`, as
    /// [`MerkleTree::verify_data_blocks`] does, on several cores when the run is large and
    /// cores are free. On failure the error names the first block of the run found bad.
    pub fn verify(&self, tree: &MerkleTree, first: u64, data: &[u8]) -> Result<(), VerityError> {
        let before = self.busy.fetch_add(1, Ordering::Relaxed);
        let mut busy = Busy {
            busy: &self.busy,
            count: 1,
        };
        let mut parts = self.cores.saturating_sub(before).min(data.len() / PART_MIN);
        if parts >= 2 {
            // Asked only of runs that could be split: most reads are small.
            parts = parts.min(self.gauge.available().saturating_sub(before));
        }
        if parts < 2 {
            return tree.verify_data_blocks(first, data);
        }
        let Some(pool) = self.pool() else {
            return tree.verify_data_blocks(first, data);
        };
        self.busy.fetch_add(parts - 1, Ordering::Relaxed);
        busy.count = parts;

        // The run is cut into chunks that every thread takes from one counter, so a helper
        // the scheduler is slow to run (the machine's other cores busy) costs little: the
        // caller takes the chunks the helper has not started.
        let chunks = data.len().div_ceil(CHUNK);
        let next = AtomicUsize::new(0);
        // The first failure by position in the run, as one thread checking it in order
        // would report it.
        let failed: Mutex<Option<(usize, VerityError)>> = Mutex::new(None);
        let work = || {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= chunks {
                    return;
                }
                let chunk = &data[i * CHUNK..((i + 1) * CHUNK).min(data.len())];
                let at = first + (i * CHUNK / BLOCK_SIZE) as u64;
                if let Err(e) = tree.verify_data_blocks(at, chunk) {
                    let mut failed = failed.lock().unwrap_or_else(|p| p.into_inner());
                    if failed.as_ref().is_none_or(|(j, _)| i < *j) {
                        *failed = Some((i, e));
                    }
                }
            }
        };
        pool.in_place_scope(|scope| {
            for _ in 1..parts {
                scope.spawn(|_| work());
            }
            work();
        });
        drop(busy);
        match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// The helper threads, started on first use; `None` if they cannot be started, and then
    /// every run is hashed by the thread that asks.
    fn pool(&self) -> Option<&rayon::ThreadPool> {
        self.pool
            .get_or_init(|| {
                rayon::ThreadPoolBuilder::new()
                    .num_threads(self.cores - 1)
                    .thread_name(|i| format!("imgmount-verify-{i}"))
                    .build()
                    .inspect_err(|e| log::warn!("cannot start verification threads: {e}"))
                    .ok()
            })
            .as_ref()
    }
}

impl std::fmt::Debug for ParallelVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParallelVerifier")
            .field("cores", &self.cores)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgmount_format::verity::{HashAlg, merkle_tree_reader};

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    fn untrusted_tree(data: &[u8]) -> MerkleTree {
        let built = merkle_tree_reader(HashAlg::Sha256, data).unwrap();
        MerkleTree::from_bytes(built.digest(), data.len() as u64, built.into_bytes()).unwrap()
    }

    #[test]
    fn splits_find_a_bad_block_in_any_part() {
        let size = 4 << 20;
        let good = data(size + 1234);
        let v = ParallelVerifier::new(4);
        for bad_at in [0, 300 << 10, 1 << 20, (3 << 20) + 4096 * 7 + 1, size - 1] {
            let tree = untrusted_tree(&good);
            let mut bad = good.clone();
            bad[bad_at] ^= 0x40;
            // A run of 1 MiB + 5 blocks from block 100, split four ways.
            let run = 100 * 4096..(100 * 4096 + (1 << 20) + 5 * 4096);
            let want = if run.contains(&bad_at) {
                Err(VerityError::DataBlockMismatch {
                    block: (bad_at / 4096) as u64,
                })
            } else {
                Ok(())
            };
            assert_eq!(
                v.verify(&tree, 100, &bad[run]),
                want,
                "bad byte at {bad_at}"
            );
            // The whole file, last short block included.
            assert_eq!(
                v.verify(&tree, 0, &bad),
                Err(VerityError::DataBlockMismatch {
                    block: (bad_at / 4096) as u64
                })
            );
            v.verify(&tree, 0, &good).unwrap();
        }
        assert_eq!(v.busy.load(Ordering::Relaxed), 0);
        assert!(
            v.pool.get().is_some_and(Option::is_some),
            "the run was split"
        );
    }

    #[test]
    fn small_runs_and_one_core_stay_on_the_caller() {
        let good = data(2 << 20);
        let tree = untrusted_tree(&good);
        let small = ParallelVerifier::new(4);
        small.verify(&tree, 0, &good[..PART_MIN]).unwrap();
        assert!(small.pool.get().is_none(), "no helper for a small run");
        let single = ParallelVerifier::new(1);
        single.verify(&tree, 0, &good).unwrap();
        assert!(single.pool.get().is_none(), "no helper with one core");
        let mut bad = good.clone();
        bad[5] ^= 1;
        assert!(single.verify(&tree, 0, &bad).is_err());
    }

    #[test]
    fn busy_cores_are_not_split_further() {
        let good = data(2 << 20);
        let tree = untrusted_tree(&good);
        let v = ParallelVerifier::new(2);
        // Another read is being hashed: both cores are taken.
        v.busy.fetch_add(1, Ordering::Relaxed);
        v.verify(&tree, 0, &good).unwrap();
        assert!(v.pool.get().is_none());
        v.busy.fetch_sub(1, Ordering::Relaxed);
        v.verify(&tree, 0, &good).unwrap();
        assert!(v.pool.get().is_some());
    }
}
