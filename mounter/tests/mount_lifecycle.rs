//! Daemon life: `imgmount mount` returns once the mount serves; SIGTERM and SIGINT unmount
//! cleanly and end the daemon; after a killed daemon `imgmount umount` clears the dead
//! mount; `imgmount umount` refuses what is not an imgmount mount.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// The pid of the daemon serving `mnt` (found by its command line).
fn daemon_pid(mnt: &Path) -> i32 {
    let want = mnt.as_os_str().as_encoded_bytes();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.get(1) == Some(&&b"mount"[..]) && args.contains(&want) {
            return pid;
        }
    }
    panic!("no daemon for {mnt:?}");
}

fn wait_gone(pid: i32) {
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        // Reap it if it is our child (it is not: the mount command forked it), else wait.
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "daemon {pid} still running"
        );
        std::thread::sleep(Duration::from_millis(20));
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.split(' ').nth(2) == Some("Z") {
            return;
        }
    }
}

fn image(s: &Scratch) -> std::path::PathBuf {
    let d = data(1, 10_000);
    let o = s.object(&d);
    s.image(
        "image.cfs",
        &format!(
            "/ 4096 40755 2 0 0 0 1700000000.0 - - -\n{}\n",
            external_line("/f", d.len(), "100644", 1, &o)
        ),
    )
}

#[test]
fn signals_unmount_cleanly() {
    if !can_mount("signals_unmount_cleanly") {
        return;
    }
    let s = Scratch::new();
    let image = image(&s);
    let mnt = s.mkdir("mnt");
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let m = Mounted::new(&image, &mnt, &s.objects(), &[]);
        assert_eq!(
            fs::read(mnt.join("f")).unwrap().len(),
            10_000,
            "serving on return"
        );
        let pid = daemon_pid(&mnt);
        // SAFETY: sending a signal to a pid we just found.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
        wait_unmounted(&mnt);
        wait_gone(pid);
        std::mem::forget(m);
    }
}

#[test]
fn umount_clears_a_dead_mount() {
    if !can_mount("umount_clears_a_dead_mount") {
        return;
    }
    let s = Scratch::new();
    let image = image(&s);
    let mnt = s.mkdir("mnt");
    let m = Mounted::new(&image, &mnt, &s.objects(), &[]);
    let pid = daemon_pid(&mnt);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    wait_gone(pid);
    let err = fs::metadata(mnt.join("f")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN), "{err}");
    assert!(is_mounted(&mnt));
    m.unmount();

    // Not a mount point / not ours.
    let out = imgmount(&["umount".as_ref(), mnt.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a mount point"));
    let out = imgmount(&["umount".as_ref(), "/proc".as_ref()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an imgmount"));
}

#[test]
fn foreground_serves_until_signalled() {
    if !can_mount("foreground_serves_until_signalled") {
        return;
    }
    let s = Scratch::new();
    let image = image(&s);
    let mnt = s.mkdir("mnt");
    let mut child = std::process::Command::new(BIN)
        .arg("mount")
        .arg("-f")
        .arg(&image)
        .arg(&mnt)
        .arg("--objects")
        .arg(s.objects())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while !is_mounted(&mnt) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "foreground mount never appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::read(mnt.join("f")).unwrap().len(), 10_000);
    // SAFETY: our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM: {status}");
    assert!(!is_mounted(&mnt));
}
