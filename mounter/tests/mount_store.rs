//! `imgmount mount` takes, in place of IMAGE and --objects, a tag, an image
//! digest or a SOURCE string from the store — the laptop one-liner
//! `imgmount mount oci:./layout:tag ~/mnt`. Relative store paths must keep
//! working after the daemon detaches and changes directory.

mod common;

use std::fs;
use std::process::Command;

use common::*;

fn run(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "imgmount failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn mount_by_tag_digest_and_source() {
    if !can_mount("mount_by_tag_digest_and_source") {
        return;
    }
    let s = Scratch::new();
    let work = s.path("");
    let rootfs = s.mkdir("rootfs");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 4096) as u8).collect();
    fs::write(rootfs.join("big"), &big).unwrap();
    fs::write(rootfs.join("small"), b"small file").unwrap();

    // Relative paths on purpose: the daemon runs in `/`.
    let digest = ok(&run(
        &work,
        &["import", "--store", "st", "dir:rootfs", "--tag", "t1"],
    ));
    assert!(digest.starts_with("sha256:"), "import printed {digest:?}");

    for (i, spec) in [
        "t1",
        digest.as_str(),
        &digest["sha256:".len()..][..12],
        "dir:rootfs",
    ]
    .into_iter()
    .enumerate()
    {
        let mnt = s.mkdir(&format!("mnt{i}"));
        ok(&run(
            &work,
            &["mount", "--store", "st", spec, &format!("mnt{i}")],
        ));
        let guard = Mounted { mnt: mnt.clone() };
        assert_eq!(fs::read(mnt.join("big")).unwrap(), big, "via {spec}");
        assert_eq!(
            fs::read(mnt.join("small")).unwrap(),
            b"small file",
            "via {spec}"
        );
        guard.unmount();
    }

    // A name the store does not have is an error naming it, not a mount.
    let mnt = s.mkdir("mnt-missing");
    let out = run(
        &work,
        &["mount", "--store", "st", "no-such-tag", "mnt-missing"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-tag"),
        "error does not name the image: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));
}
