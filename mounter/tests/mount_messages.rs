//! What `imgmount mount` says when it will not mount, and where a detached daemon's
//! refusals go.

mod common;

use std::fs;
use std::process::Command;

use common::*;

fn mount_cmd(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(BIN).arg("mount").args(args).output().unwrap()
}

/// A small image file (its objects beside it) to mount.
fn small_image(s: &Scratch) -> std::path::PathBuf {
    let tree = s.path("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::write(tree.join("etc/motd"), b"hi\n").unwrap();
    let image = s.path("img.cfs");
    let out = imgmount(&[
        "create".as_ref(),
        "--digest-store".as_ref(),
        s.path("objects").as_os_str(),
        tree.as_os_str(),
        image.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    image
}

#[test]
fn mount_points_that_would_hide_something_are_refused() {
    let s = Scratch::new();
    let image = small_image(&s);
    let full = s.path("full");
    fs::create_dir(&full).unwrap();
    fs::write(full.join("precious"), b"x").unwrap();
    fs::write(full.join("other"), b"y").unwrap();
    let out = mount_cmd(&[image.as_os_str(), full.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with(&format!(
            "imgmount: error: mount point {} is not empty: the mount would hide ",
            full.display()
        )) && err.ends_with(" and 1 more; use -o nonempty to mount over it\n"),
        "{err}"
    );
    let missing = s.path("missing");
    let out = mount_cmd(&[image.as_os_str(), missing.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "imgmount: error: mount point {} does not exist\n",
            missing.display()
        )
    );

    if !can_mount("mount_points_that_would_hide_something_are_refused") {
        return;
    }
    // An existing mount (here a tmpfs) is refused too, even when empty.
    let busy = s.path("busy");
    fs::create_dir(&busy).unwrap();
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&busy)
        .status()
        .unwrap();
    assert!(status.success());
    let out = mount_cmd(&[image.as_os_str(), busy.as_os_str()]);
    let _ = Command::new("umount").arg(&busy).status();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "imgmount: error: mount point {} is already a mount point (tmpfs): unmount it \
             first, or use -o nonempty to mount over it\n",
            busy.display()
        )
    );
    // Asked for, the mount goes over the full directory and hides its files.
    let out = mount_cmd(&[
        image.as_os_str(),
        full.as_os_str(),
        "-o".as_ref(),
        "nonempty".as_ref(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let motd = fs::read(full.join("etc/motd"));
    let hidden = full.join("precious").exists();
    let _ = imgmount(&["umount".as_ref(), full.as_os_str()]);
    wait_unmounted(&full);
    assert_eq!(motd.unwrap(), b"hi\n");
    assert!(!hidden);
    assert!(full.join("precious").exists(), "back after unmounting");
}
