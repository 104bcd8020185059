//! Crash consistency: `import`, `gc` and `rm` are each killed with SIGKILL (`kill -9`) at
//! random points, at least 20 times each, the points drawn from a fixed seed
//! (`IMGMOUNT_CRASH_SEED` picks another; `IMGMOUNT_CRASH_ROUNDS` more rounds). After every
//! kill, `fsck` must pass and the next import must succeed (and `fsck` pass again).
//!
//! The points are times after the start, uniform over how long an uninterrupted run of the
//! same command took, so they fall all through its work. Only kills that interrupted the
//! command count towards the 20 (a run that ended first is checked too, and updates how
//! long a run takes on this machine now).

mod common;
mod hostile;

use std::fs;
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hostile::*;

/// xorshift64*: deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..max`.
    fn below(&mut self, max: Duration) -> Duration {
        let nanos = max.as_nanos().max(1) as u64;
        Duration::from_nanos(self.next() % nanos)
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn files(seed: u64, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("d{}/f{i}", i % 17),
                data(seed * 100_000 + i as u64, 4097 + (i * 131) % 9000),
            )
        })
        .collect()
}

fn tar_of(w: &World, name: &str, files: &[(String, Vec<u8>)]) -> String {
    let path = w.work(name);
    rootfs_tar(&path, files);
    format!("tar:{}", path.display())
}

/// What a run with a kill scheduled did.
enum Ran {
    Killed,
    /// Ended by itself first, after this long.
    Finished(Duration),
}

/// Runs `imgmount ARGS --store S`, killing it with SIGKILL after `after` unless it ended
/// first.
fn run_killed(w: &World, args: &[&str], after: Duration) -> Ran {
    let mut cmd = command();
    cmd.args(args)
        .arg("--store")
        .arg(&w.store)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while start.elapsed() < after {
        if child.try_wait().unwrap().is_some() {
            return Ran::Finished(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    let _ = child.kill();
    let status = child.wait().unwrap();
    if status.signal() == Some(libc::SIGKILL) {
        Ran::Killed
    } else {
        Ran::Finished(start.elapsed())
    }
}

/// Kills `args` at random points until `rounds` kills have interrupted it (a run that
/// ends before its kill does not count, and teaches how long a run takes: the delays are
/// uniform over the last such duration, starting from `span`). `prepare` runs before each
/// try, `check` after it. Returns the number of tries.
fn kill_rounds(
    w: &World,
    args: &[&str],
    rounds: u64,
    rng: &mut Rng,
    mut span: Duration,
    mut prepare: impl FnMut(),
    mut check: impl FnMut(u64),
) -> u64 {
    let mut killed = 0;
    let mut tries = 0;
    while killed < rounds {
        assert!(
            tries < rounds * 4,
            "{args:?}: only {killed} of {tries} kills interrupted it"
        );
        prepare();
        match run_killed(w, args, rng.below(span)) {
            Ran::Killed => killed += 1,
            Ran::Finished(took) => span = took,
        }
        check(tries);
        tries += 1;
    }
    tries
}

/// How long `imgmount ARGS` takes uninterrupted (it must succeed).
fn timed(w: &World, args: &[&str]) -> Duration {
    let start = Instant::now();
    w.ok(args);
    start.elapsed()
}

/// What must hold after every kill.
fn check_consistent(w: &World, what: &str, round: u64, next: &mut u64) {
    let out = w.run(&["fsck", "--json"]);
    assert!(
        out.status.success(),
        "{what} round {round}: fsck failed after the kill:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    *next += 1;
    let source = tar_of(w, "next.tar", &files(10_000 + *next, 3));
    w.ok(&[
        "import",
        &source,
        "--tag",
        &format!("next{next}"),
        "--no-sync",
    ]);
    w.ok(&["fsck"]);
}

#[test]
fn kill_9_at_random_points() {
    let seed = env_or("IMGMOUNT_CRASH_SEED", 0x005e_ed12);
    let rounds = env_or("IMGMOUNT_CRASH_ROUNDS", 20);
    let mut rng = Rng(seed | 1);
    let w = World::new();
    // How many follow-up imports ran (each names its image and content afresh).
    let next = std::cell::RefCell::new(0u64);
    w.import("base", &[("keep", data(1, 50_000))]);

    // import: a layer of 400 files, killed part way; then imported again.
    let big = files(1, 400);
    let source = tar_of(&w, "big.tar", &big);
    let import = ["import", source.as_str(), "--tag", "big", "--no-sync"];
    let span = timed(&w, &import);
    w.ok(&["rm", "big"]);
    w.ok(&["gc"]);
    let import_tries = kill_rounds(
        &w,
        &import,
        rounds,
        &mut rng,
        span,
        || {},
        |round| {
            check_consistent(&w, "import", round, &mut next.borrow_mut());
            w.ok(&import);
            w.ok(&["fsck"]);
            w.ok(&["rm", "big"]);
        },
    );

    // gc: 400 unreferenced objects to remove each round.
    let junk = files(2, 400);
    let junk_source = tar_of(&w, "junk.tar", &junk);
    let make_junk = || {
        w.ok(&["import", &junk_source, "--tag", "junk", "--no-sync"]);
        w.ok(&["rm", "junk"]);
    };
    w.ok(&["gc"]);
    make_junk();
    let span = timed(&w, &["gc"]);
    let gc_tries = kill_rounds(&w, &["gc"], rounds, &mut rng, span, make_junk, |round| {
        check_consistent(&w, "gc", round, &mut next.borrow_mut());
        w.ok(&["gc"]);
    });

    // rm: 300 tags over 6 images, removed in one command.
    let images: Vec<_> = (0..6)
        .map(|i| w.import(&format!("img{i}"), &files(20 + i, 2)))
        .collect();
    let refs = w.store.join("refs");
    let make_tags = || {
        let mut tags = Vec::new();
        for t in 0..300 {
            let tag = format!("t{t}");
            let link = refs.join(&tag);
            let _ = fs::remove_file(&link);
            symlink(format!("../images/{}", images[t % 6].to_hex()), &link).unwrap();
            tags.push(tag);
        }
        // The images may have been removed by an earlier round (with their last tag):
        // import them again, keeping only the t* tags.
        for (i, d) in images.iter().enumerate() {
            if !w.image(d).exists() {
                w.import(&format!("img{i}"), &files(20 + i as u64, 2));
            }
            let _ = fs::remove_file(refs.join(format!("img{i}")));
        }
        tags
    };
    let tags = make_tags();
    let mut rm: Vec<&str> = vec!["rm"];
    rm.extend(tags.iter().map(String::as_str));
    let span = timed(&w, &rm);
    let rm_tries = kill_rounds(
        &w,
        &rm,
        rounds,
        &mut rng,
        span,
        || {
            make_tags();
        },
        |round| check_consistent(&w, "rm", round, &mut next.borrow_mut()),
    );
    eprintln!(
        "seed {seed:#x}: {rounds} kills that interrupted each command; tries: import \
         {import_tries}, gc {gc_tries}, rm {rm_tries}"
    );
    // The store is still whole: every image extracts.
    w.ok(&["gc"]);
    w.ok(&["extract", "base", w.work("final").to_str().unwrap()]);
}
