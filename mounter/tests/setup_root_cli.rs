//! `imgmount setup-root` on the host, where nothing can be booted: what it would mount
//! (`--dry-run`), how it refuses a command line that pins nothing (exit 2), and that a store
//! device that never appears fails after the wait with nothing mounted (exit 1). The boots
//! themselves are in boot.rs.

mod common;

use std::fs;

use common::*;

const A: &str = "8b7df143d91c716ecfa5fc1730022f6b421b05cedee8fd52b1fc65a96030ad52";

fn setup_root(s: &Scratch, cmdline: &str, extra: &[&str]) -> std::process::Output {
    let file = s.path("cmdline");
    fs::write(&file, format!("{cmdline}\n")).unwrap();
    let target = s.mkdir("root");
    let run = s.mkdir("run/imgmount");
    std::process::Command::new(BIN)
        .arg("setup-root")
        .arg("--cmdline")
        .arg(&file)
        .arg("--target")
        .arg(&target)
        .arg("--run-dir")
        .arg(&run)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn dry_run_shows_the_plan() {
    let s = Scratch::new();
    let out = setup_root(
        &s,
        &format!(
            "BOOT_IMAGE=/vmlinuz ro boot=imgmount imgmount.store=LABEL=st imgmount.image=os imgmount.digest=sha256:{A} quiet"
        ),
        &["--dry-run"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let root = s.path("root");
    let store = s.path("run/imgmount/store");
    for want in [
        "store device:   LABEL=st (waiting up to 30 s)".to_owned(),
        format!("pinned digest:  sha256:{A}"),
        "image:          tag \"os\"".to_owned(),
        format!(
            "mount -t overlay imgmount-etc -o lowerdir={}/etc,upperdir={}/imgmount/state/etc/{A}/upper",
            root.display(),
            store.display()
        ),
        format!(
            "mount --bind {}/imgmount/state/var {}/var",
            store.display(),
            root.display()
        ),
        format!(
            "mount --bind {}/imgmount/store {}/var/lib/imgmount",
            store.display(),
            root.display()
        ),
    ] {
        assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn unpinned_or_imageless_command_lines_are_usage_errors() {
    let s = Scratch::new();
    for (cmdline, says) in [
        (
            "ro imgmount.store=/dev/vdb imgmount.image=latest",
            "imgmount.digest=",
        ),
        ("ro root=/dev/sda1 quiet", "names no image"),
        (
            "imgmount.image=x imgmount.digest=sha256:12",
            "imgmount.digest=sha256:12",
        ),
    ] {
        let out = setup_root(&s, cmdline, &[]);
        assert_eq!(out.status.code(), Some(2), "{cmdline}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{cmdline}: {err}");
    }
}

#[test]
fn a_store_that_never_appears_fails_after_the_wait() {
    let s = Scratch::new();
    let t = std::time::Instant::now();
    let out = setup_root(
        &s,
        &format!("imgmount.store=LABEL=imgmount-test-no-such-label imgmount.wait=1 composefs={A}"),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        t.elapsed() >= std::time::Duration::from_secs(1),
        "it waited"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "the store device LABEL=imgmount-test-no-such-label (imgmount.store=) did not appear within 1 s"
        ),
        "{err}"
    );
    assert!(
        err.contains("setup-root FAILED: nothing is mounted on"),
        "{err}"
    );
    assert!(!is_mounted(&s.path("root")));
    assert!(!is_mounted(&s.path("run/imgmount/store")));
}
