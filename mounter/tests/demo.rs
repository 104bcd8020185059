//! The README's first command: `testdata/demo.sh`, run with the test build of imgmount.
//! As root it mounts as a throwaway user through fusermount3; it must show every file
//! matching umoci's sums, the wrong digest refused and the tampered object refused.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_demo_runs_and_shows_the_main_job() {
    if !can_mount("the_demo_runs_and_shows_the_main_job") {
        return;
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true needs fusermount3 (fuse3) for the demo"
        );
        eprintln!("skipping the demo: no fusermount3");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../testdata/demo.sh");
    let out = Command::new("bash")
        .arg(script)
        .env("IMGMOUNT_DEMO_BIN", BIN)
        .env_remove("IMGMOUNT_STORE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{err}");
    for want in [
        "running imgmount as user imgmount-demo-",
        "all 5 files match",
        "etc/hostname is gone: layer 2's whiteout applied",
        "Line 0073 of the manual: every 4 KiB block of this file is checked",
        "refused to read /usr/share/doc/demo/manual.txt: object /",
        "== done; removing",
    ] {
        assert!(
            text.contains(want),
            "demo output lacks {want:?}:\n{text}\n{err}"
        );
    }
    for want in [
        "but --digest requires sha256:0000",
        "imgmount: error: refused to read /usr/share/doc/demo/manual.txt: object ",
        "Input/output error",
    ] {
        assert!(err.contains(want), "demo stderr lacks {want:?}:\n{err}");
    }
    // It cleaned up: no user, no directory, /dev/fuse as it was.
    let users = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(!users.contains("imgmount-demo-"), "a demo user is left");
    let left = std::fs::read_dir("/var/tmp")
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("imgmount-demo.")
        });
    assert!(!left, "a demo directory is left in /var/tmp");
}
