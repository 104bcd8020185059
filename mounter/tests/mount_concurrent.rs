//! 16 threads reading random ranges of several verified multi-MiB files through one mount:
//! every byte must be right. The kernel page cache would hide the daemon after the first
//! read of each page, so one thread keeps dropping the page cache and the daemon's own
//! block cache is kept small: the daemon keeps verifying blocks under concurrent load.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use common::*;

const THREADS: usize = 16;
const READS_PER_THREAD: usize = 400;

#[test]
fn sixteen_threads_random_ranges() {
    if !can_mount("sixteen_threads_random_ranges") {
        return;
    }
    let s = Scratch::new();
    let files: Vec<Vec<u8>> = (0..4)
        .map(|i| data(100 + i, (3 << 20) + 12_345 * i as usize))
        .collect();
    let mut dump = String::from("/ 4096 40755 2 0 0 0 1700000000.0 - - -\n");
    for (i, f) in files.iter().enumerate() {
        let o = s.object(f);
        dump.push_str(&external_line(&format!("/f{i}"), f.len(), "100644", 1, &o));
        dump.push('\n');
    }
    let image = s.image("image.cfs", &dump);
    let mnt = s.mkdir("mnt");
    let m = Mounted::new(
        &image,
        &mnt,
        &s.objects(),
        &["--verity=require", "--cache-size=1M", "--threads=4"],
    );

    let files = Arc::new(files);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let files = files.clone();
            let mnt = mnt.clone();
            std::thread::spawn(move || {
                let mut x = (t as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                let mut checked = 0u64;
                for r in 0..READS_PER_THREAD {
                    if t == 0 && r % 20 == 0 {
                        let _ = fs::write("/proc/sys/vm/drop_caches", "1");
                    }
                    let i = (next() % files.len() as u64) as usize;
                    let want = &files[i];
                    let off = next() % want.len() as u64;
                    let len = 1 + (next() % (300 << 10)) as usize;
                    let f = fs::File::open(mnt.join(format!("f{i}"))).unwrap();
                    let mut buf = vec![0u8; len];
                    let n = f.read_at(&mut buf, off).unwrap();
                    let end = (off as usize + len).min(want.len());
                    assert!(n > 0 || off as usize == want.len());
                    assert!(
                        buf[..n] == want[off as usize..off as usize + n],
                        "thread {t}: f{i} at {off}+{n}: wrong bytes"
                    );
                    assert!(off as usize + n <= end);
                    checked += n as u64;
                }
                checked
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(
        total > (THREADS * READS_PER_THREAD) as u64 * 1000,
        "{total} bytes checked"
    );

    // Whole files again, after dropping the page cache so the daemon serves them anew.
    let _ = fs::write("/proc/sys/vm/drop_caches", "1");
    for (i, want) in files.iter().enumerate() {
        assert!(
            fs::read(mnt.join(format!("f{i}"))).unwrap() == *want,
            "f{i}"
        );
    }
    m.unmount();
}
