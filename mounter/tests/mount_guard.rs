//! A panic while answering one request fails that request with EIO and nothing else: the
//! daemon keeps serving (more panics than it has threads, then reads), and says what
//! happened in its log. The daemon counts what it served, per file and in total, tells
//! `imgmount stats`, and logs the summary when unmounted. Requests it does not serve get a
//! kernel filesystem's answers, quietly (isatty's TCGETS, cp's SEEK_DATA).
//!
//! The panic comes from a hook of debug builds (IMGMOUNT_DEBUG_PANIC_LOOKUP), which the
//! tests' binary is.

mod common;

use std::fs;
use std::process::Command;

use common::*;

#[test]
fn a_panicking_request_gets_eio_and_the_mount_lives() {
    if !can_mount("a_panicking_request_gets_eio_and_the_mount_lives") {
        return;
    }
    let s = Scratch::new();
    let d = data(7, 300_000);
    let o = s.object(&d);
    let image = s.image(
        "image.cfs",
        &format!(
            "/ 4096 40755 2 0 0 0 1700000000.0 - - -\n{}\n{}\n",
            external_line("/data", d.len(), "100644", 1, &o),
            external_line("/boom", d.len(), "100644", 1, &o),
        ),
    );
    let mnt = s.mkdir("mnt");
    let log = s.path("daemon.log");
    let out = Command::new(BIN)
        .arg("mount")
        .arg(&image)
        .arg(&mnt)
        .arg("--objects")
        .arg(s.objects())
        .args(["--threads", "2", "--log-file"])
        .arg(&log)
        .env("IMGMOUNT_DEBUG_PANIC_LOOKUP", "boom")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted { mnt: mnt.clone() };

    // Three times as many panics as request threads: had one thread died per panic, the
    // daemon would be gone after the second.
    for _ in 0..6 {
        let err = fs::metadata(mnt.join("boom")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    }
    assert!(is_mounted(&mnt));
    assert_eq!(
        fs::read(mnt.join("data")).unwrap(),
        d,
        "still serving, right bytes"
    );

    // isatty() asks TCGETS of a file, and cp asks SEEK_DATA/SEEK_HOLE: answered as a
    // kernel filesystem would.
    {
        use std::os::fd::AsRawFd;
        let f = fs::File::open(mnt.join("data")).unwrap();
        let fd = f.as_raw_fd();
        // SAFETY: plain calls on a descriptor we hold open.
        unsafe {
            assert_eq!(libc::isatty(fd), 0);
            assert_eq!(*libc::__errno_location(), libc::ENOTTY);
            assert_eq!(libc::lseek(fd, 5, libc::SEEK_DATA), 5);
            assert_eq!(libc::lseek(fd, 5, libc::SEEK_HOLE), d.len() as i64);
            assert_eq!(libc::lseek(fd, d.len() as i64, libc::SEEK_DATA), -1);
            assert_eq!(*libc::__errno_location(), libc::ENXIO);
        }
    }

    // The counters: the file's READs went through the daemon (no kernel verity here).
    let out = imgmount(&[
        "stats".as_ref(),
        "--json".as_ref(),
        mnt.as_os_str(),
        mnt.join("data").as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let file = &v["paths"][0];
    assert!(file["reads"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(file["read_bytes"].as_u64(), Some(d.len() as u64), "{v}");
    assert!(file["opens"].as_u64().unwrap() >= 1, "{v}");
    assert_eq!(file["passthrough_opens"].as_u64(), Some(0), "{v}");
    assert!(v["reads"].as_u64() >= file["reads"].as_u64(), "{v}");
    let out = imgmount(&["stats".as_ref(), s.path("").as_os_str()]);
    assert!(!out.status.success(), "not a mount point");

    m.unmount();
    // The daemon writes its last line after the unmount, on its way out.
    let t = std::time::Instant::now();
    let log = loop {
        let text = fs::read_to_string(&log).unwrap();
        if text.contains("served ") || t.elapsed() > std::time::Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        log.matches("panic while answering LOOKUP").count(),
        6,
        "each panic logged: {log}"
    );
    assert!(log.contains("served "), "the summary at unmount: {log}");
    assert!(log.contains(&format!("({} bytes)", d.len())), "{log}");
}
