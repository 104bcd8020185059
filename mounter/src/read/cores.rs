//! How many cores this process could use right now, for deciding whether a large read is
//! worth splitting between threads.
//!
//! A helper thread that has to wait for a core is worse than none: the reply waits for its
//! part. So [`CoreGauge`] looks at what the machine did over the last [`INTERVAL`]: the cores
//! that were idle, plus those running only work niced below ours (our threads would preempt
//! it), plus those this process kept busy itself (its own threads share them). Reading two
//! `/proc` files every 100 ms costs a few microseconds; without `/proc` the gauge answers
//! "all of them", and the caller's own count of busy threads is the only limit.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How often the gauge samples again.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// Cores to spare for this process, re-measured at most every [`INTERVAL`].
pub struct CoreGauge {
    /// The most it ever answers (the cores this process may run on).
    cores: usize,
    /// The last sample; `try_lock`ed, so callers never wait for each other.
    last: Mutex<Option<CpuSample>>,
    /// The last answer.
    available: AtomicUsize,
}

/// Counters of `/proc/stat` (all CPUs) and `/proc/self/stat`, in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuSample {
    at: Instant,
    /// Online CPUs (the `cpuN` lines).
    cpus: u64,
    /// Ticks of all CPUs, and those spent idle or waiting for I/O (idle too).
    total: u64,
    idle: u64,
    /// Ticks spent running processes niced above 0.
    niced: u64,
    /// This process's user and system ticks, and its nice value.
    own: u64,
    own_nice: i64,
}

impl CoreGauge {
    /// A gauge that answers at most `cores`.
    pub fn new(cores: usize) -> Self {
        CoreGauge {
            cores,
            last: Mutex::new(None),
            available: AtomicUsize::new(cores),
        }
    }

    /// Cores this process could use now, 1 to `cores`. Until a second sample exists, and
    /// without `/proc`, `cores`.
    pub fn available(&self) -> usize {
        if let Ok(mut last) = self.last.try_lock()
            && last.is_none_or(|s| s.at.elapsed() >= INTERVAL)
            && let Some(now) = CpuSample::now()
        {
            if let Some(prev) = *last {
                let spare = cores_to_spare(&prev, &now, self.cores);
                self.available.store(spare, Ordering::Relaxed);
            }
            *last = Some(now);
        }
        self.available.load(Ordering::Relaxed)
    }
}

impl CpuSample {
    fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        CpuSample::parse(Instant::now(), &stat, &own)
    }

    /// From the texts of `/proc/stat` and `/proc/self/stat`; `None` if they are not as the
    /// kernel writes them.
    fn parse(at: Instant, stat: &str, own: &str) -> Option<Self> {
        // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"; guest time
        // is already counted in user and nice, so the first eight are the total.
        let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
        let f = cpu
            .split_whitespace()
            .map(|v| v.parse::<u64>().ok())
            .collect::<Option<Vec<_>>>()?;
        let cpus = stat
            .lines()
            .filter(|l| {
                l.strip_prefix("cpu")
                    .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
            })
            .count() as u64;
        // "pid (comm) state ...": comm may hold anything, so count fields from the last ')'.
        let rest: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| rest.get(n - 3).and_then(|v| v.parse::<i64>().ok());
        Some(CpuSample {
            at,
            cpus,
            total: f.get(..8)?.iter().sum(),
            idle: f.get(3)? + f.get(4)?,
            niced: *f.get(1)?,
            own: u64::try_from(field(14)? + field(15)?).ok()?,
            own_nice: field(19)?,
        })
    }
}

/// The cores to spare between two samples, from 1 to `cores`. A core counts only if other
/// programs at our priority used at most a quarter of it: a helper that shares its core
/// with another program gets preempted mid-part, and the reply waits for it. (Rounding to
/// the nearest core instead fed on itself: a helper that got half a core made this
/// process's own time 1.5 cores, which rounded up to 2, so it kept splitting.)
fn cores_to_spare(prev: &CpuSample, now: &CpuSample, cores: usize) -> usize {
    let total = now.total.saturating_sub(prev.total);
    if total == 0 || now.cpus == 0 {
        return cores;
    }
    let mut spare = now.idle.saturating_sub(prev.idle) + now.own.saturating_sub(prev.own);
    if now.own_nice <= 0 {
        // Our threads run before niced work: its cores are ours for the asking. (When we
        // are niced ourselves, our own ticks are in this column too, and counted above.)
        spare += now.niced.saturating_sub(prev.niced);
    }
    // `total` is cpus x ticks-per-CPU: this many ticks of spare time make one core.
    let spare_cores = spare as f64 * now.cpus as f64 / total as f64;
    ((spare_cores + 0.25).floor() as usize).clamp(1, cores.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  241882 122444 50632 1367144 2376 0 307 642 0 0\n\
        cpu0 118688 60696 23866 688202 809 0 26 309 0 0\n\
        cpu1 123193 61747 26765 678942 1566 0 281 332 0 0\n\
        intr 1 2 3\n";
    const OWN: &str = "4242 (imgmount (x) y) S 1 4242 4242 0 -1 4194624 500 0 0 0 \
        1200 300 0 0 20 0 5 0 1000 100000 500 18446744073709551615";

    fn sample(total: u64, idle: u64, niced: u64, own: u64, own_nice: i64) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            cpus: 2,
            total,
            idle,
            niced,
            own,
            own_nice,
        }
    }

    #[test]
    fn parses_proc_files() {
        let s = CpuSample::parse(Instant::now(), STAT, OWN).unwrap();
        assert_eq!(s.cpus, 2);
        assert_eq!(
            s.total,
            241882 + 122444 + 50632 + 1367144 + 2376 + 307 + 642
        );
        assert_eq!(s.idle, 1367144 + 2376);
        assert_eq!(s.niced, 122444);
        assert_eq!(s.own, 1500, "utime + stime, with ') ' inside comm");
        assert_eq!(s.own_nice, 0);
        assert!(CpuSample::parse(Instant::now(), "intr 1\n", OWN).is_none());
        assert!(CpuSample::parse(Instant::now(), STAT, "4242 (x").is_none());
        assert!(CpuSample::parse(Instant::now(), "cpu  1 2 x\n", OWN).is_none());
    }

    #[test]
    fn spare_cores_from_two_samples() {
        let prev = sample(0, 0, 0, 0, 0);
        // 2 CPUs over 100 ticks each (200 in all).
        // Both idle: 2.
        assert_eq!(cores_to_spare(&prev, &sample(200, 200, 0, 0, 0), 2), 2);
        // One CPU running us, the other idle: 2.
        assert_eq!(cores_to_spare(&prev, &sample(200, 100, 0, 100, 0), 2), 2);
        // One running us, the other someone else at our priority: 1.
        assert_eq!(cores_to_spare(&prev, &sample(200, 0, 0, 100, 0), 2), 1);
        // Our helper got half the other core, someone else the rest: still 1.
        assert_eq!(cores_to_spare(&prev, &sample(200, 0, 0, 150, 0), 2), 1);
        // Others use a little of the machine: 2.
        assert_eq!(cores_to_spare(&prev, &sample(200, 85, 0, 100, 0), 2), 2);
        // ... but niced below us: 2; not if we are niced as well (our ticks are niced then).
        assert_eq!(cores_to_spare(&prev, &sample(200, 0, 100, 100, 0), 2), 2);
        assert_eq!(cores_to_spare(&prev, &sample(200, 0, 200, 100, 10), 2), 1);
        // Everything busy with others: still 1 (the caller's own thread).
        assert_eq!(cores_to_spare(&prev, &sample(200, 0, 0, 0, 0), 2), 1);
        // Never more than allowed, and no time passed: all.
        assert_eq!(cores_to_spare(&prev, &sample(200, 200, 0, 0, 0), 1), 1);
        assert_eq!(cores_to_spare(&prev, &prev, 2), 2);
    }

    #[test]
    fn gauge_reads_this_machine() {
        let gauge = CoreGauge::new(4);
        assert_eq!(gauge.available(), 4, "no second sample yet");
        std::thread::sleep(INTERVAL);
        let n = gauge.available();
        assert!((1..=4).contains(&n), "{n}");
    }
}
