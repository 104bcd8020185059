//! What `imgmount mount` says when it will not mount, and where a detached daemon's
//! refusals go.

mod common;

use std::fs;
use std::process::Command;

use common::*;

#[track_caller]
fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

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
    assert_ok(&out);
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
    assert_ok(&out);
    let motd = fs::read(full.join("etc/motd"));
    let hidden = full.join("precious").exists();
    let _ = imgmount(&["umount".as_ref(), full.as_os_str()]);
    wait_unmounted(&full);
    assert_eq!(motd.unwrap(), b"hi\n");
    assert!(!hidden);
    assert!(full.join("precious").exists(), "back after unmounting");
}

/// An image with `/dir/a` (20 blocks, an object), mounted once so its Merkle tree sidecar
/// exists, then the object's block 5 tampered with: reads there are refused.
fn tampered(s: &Scratch) -> std::path::PathBuf {
    let a = data(3, 20 * 4096);
    let oa = s.object(&a);
    let dump = format!(
        "/ 4096 40755 3 0 0 0 1700000000.0 - - -\n\
         /dir 4096 40755 2 0 0 0 1700000000.0 - - -\n{}\n",
        external_line("/dir/a", a.len(), "100644", 1, &oa)
    );
    let image = s.image("image.cfs", &dump);
    let mnt = s.mkdir("first");
    let m = Mounted::new(&image, &mnt, &s.objects(), &[]);
    assert!(fs::read(mnt.join("dir/a")).unwrap() == a);
    m.unmount();
    let object = s.objects().join(&oa.1);
    let mut bytes = fs::read(&object).unwrap();
    bytes[5 * 4096 + 7] ^= 1;
    fs::write(&object, bytes).unwrap();
    image
}

fn refusal_line(object_name: &str) -> String {
    format!(
        "refused to read /dir/a: object {object_name}: block at offset 20480 failed verification"
    )
}

fn object_name(s: &Scratch) -> String {
    let mut names = Vec::new();
    for d in fs::read_dir(s.objects()).unwrap() {
        let d = d.unwrap().path();
        for f in fs::read_dir(&d).unwrap() {
            let f = f.unwrap().path();
            // As the image's redirect names it.
            names.push(format!(
                "/{}",
                f.strip_prefix(s.objects()).unwrap().display()
            ));
        }
    }
    assert_eq!(names.len(), 1, "{names:?}");
    names.remove(0)
}

#[test]
fn a_detached_daemon_tells_syslog_which_file_it_refused() {
    if !can_mount("a_detached_daemon_tells_syslog_which_file_it_refused") {
        return;
    }
    let s = Scratch::new();
    let image = tampered(&s);
    let socket_path = s.path("syslog");
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    syslog
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mnt = s.mkdir("mnt");
    let out = Command::new(BIN)
        .arg("mount")
        .arg(&image)
        .arg(&mnt)
        .arg("--objects")
        .arg(s.objects())
        .env("IMGMOUNT_SYSLOG_SOCKET", &socket_path)
        .env_remove("IMGMOUNT_LOG")
        .output()
        .unwrap();
    assert_ok(&out);
    let m = Mounted { mnt: mnt.clone() };
    assert!(pread(&mnt.join("dir/a"), 0, 4096).is_ok());
    let err = pread(&mnt.join("dir/a"), 5 * 4096, 4096).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let mut buf = vec![0u8; 16 << 10];
    let n = syslog.recv(&mut buf).expect("a syslog message within 10 s");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    m.unmount();
    // daemon.err, the program and its pid, then the file, the object and the offset.
    assert!(msg.starts_with("<27>imgmount["), "{msg}");
    assert!(
        msg.contains(&format!("]: {}", refusal_line(&object_name(&s)))),
        "{msg}"
    );
}

#[test]
fn in_the_foreground_refusals_go_to_stderr() {
    if !can_mount("in_the_foreground_refusals_go_to_stderr") {
        return;
    }
    let s = Scratch::new();
    let image = tampered(&s);
    let mnt = s.mkdir("mnt");
    let child = Command::new(BIN)
        .arg("mount")
        .arg("-f")
        .arg(&image)
        .arg(&mnt)
        .arg("--objects")
        .arg(s.objects())
        .env_remove("IMGMOUNT_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while !is_mounted(&mnt) {
        assert!(start.elapsed().as_secs() < 20, "not mounted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let m = Mounted { mnt: mnt.clone() };
    let err = pread(&mnt.join("dir/a"), 5 * 4096, 100).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    m.unmount();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let log = String::from_utf8_lossy(&out.stderr);
    let want = format!("]: error: {}", refusal_line(&object_name(&s)));
    assert!(
        log.lines()
            .any(|l| l.starts_with("imgmount[") && l.contains(&want)),
        "{log}"
    );
}

/// `mount.imgmount`, as mount(8) runs it: the same binary under that name.
fn helper(s: &Scratch) -> std::path::PathBuf {
    let link = s.path("sbin/mount.imgmount");
    fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    link
}

#[test]
fn the_mount_helper_takes_what_mount_8_passes() {
    let s = Scratch::new();
    let image = small_image(&s);
    let mnt = s.mkdir("mnt");
    let helper = helper(&s);
    // -f: everything checked, nothing mounted (what `mount -f` and `mount -fav` do).
    let objects = format!("rw,objects={},nofail,_netdev", s.path("objects").display());
    let out = Command::new(&helper)
        .arg("-f")
        .arg(&image)
        .arg(&mnt)
        .args(["-o", &objects, "-t", "imgmount"])
        .output()
        .unwrap();
    assert_ok(&out);
    assert!(!is_mounted(&mnt));
    let out = Command::new(&helper)
        .arg(&image)
        .arg(&mnt)
        .args(["-N", "4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "mount.imgmount: error: -N (another mount namespace) is not supported\n"
    );

    if !can_mount("the_mount_helper_takes_what_mount_8_passes") {
        return;
    }
    let out = Command::new(&helper)
        .arg(&image)
        .arg(&mnt)
        .args(["-o", &format!("{objects},verity=require,noexec")])
        .output()
        .unwrap();
    assert_ok(&out);
    let m = Mounted { mnt: mnt.clone() };
    assert_eq!(fs::read(mnt.join("etc/motd")).unwrap(), b"hi\n");
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(&format!(" {} ", mnt.display())))
        .unwrap()
        .to_owned();
    m.unmount();
    assert!(
        line.contains("fuse.imgmount") && line.contains("noexec"),
        "{line}"
    );
}
