//! Debian booted under qemu (TCG) with an imgmount image as its root filesystem, from both
//! initramfs families, and the boots that must fail safely. See `qemu/mod.rs` for the
//! harness; every boot here makes several checks, so each costs its minute once.

mod common;
mod qemu;

use std::time::Duration;

use qemu::*;

/// How long a good boot may take to report under TCG (about a minute and a half here).
const BOOT: Duration = Duration::from_secs(420);
/// How long poweroff or reboot may take once asked for.
const SHUTDOWN: Duration = Duration::from_secs(120);
/// How long a failing boot may take to reach the emergency shell.
const FAIL: Duration = Duration::from_secs(240);

fn stats_of<'a>(v: &'a serde_json::Value, path: &str) -> &'a serde_json::Value {
    v["paths"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["path"] == path))
        .unwrap_or_else(|| panic!("no stats for {path}: {v}"))
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

/// The checks every good boot makes: the root is the image, served by the daemon as a
/// root-storage daemon, the system is running, and a file reads right.
fn check_good_boot(r: &Report, img: &TestImage, transient: bool) {
    let source = format!("imgmount:{}", img.digest);
    if transient {
        // The overlay is /, and the image it lies on stays visible beside it.
        assert_eq!(r.get("root_types"), "overlay");
        assert_eq!(r.get("image_view"), format!("fuse.imgmount {source}"));
    } else {
        assert_eq!(r.get("root_types"), "fuse.imgmount");
        assert_eq!(r.get("root_source"), source);
    }
    assert_eq!(
        r.get("var_source"),
        "/imgmount/state/var",
        "/var is the shared state"
    );
    assert!(
        !r.get("daemon_pid").is_empty(),
        "a process with argv[0] @imgmount"
    );
    assert_eq!(r.get("daemon_oom"), "-1000");
    assert_eq!(
        r.get("daemon_root"),
        "/run/imgmount/store",
        "chrooted into the store"
    );
    assert!(
        !r.get("daemon_cgroup").contains(".service"),
        "the daemon left its unit's cgroup: {}",
        r.get("daemon_cgroup")
    );
    assert_eq!(
        (r.get("running"), r.get("failed")),
        ("running", ""),
        "systemctl is-system-running, and the failed units"
    );
}

#[test]
fn debian_boots_from_an_image_in_the_store() {
    if !can_boot("debian_boots_from_an_image_in_the_store") {
        return;
    }
    let img = test_image();
    let mut boots = Boots::new("good");
    let disk = Disk::ext4(&boots.dir().join("store.img"), &img.store_fs, 2 << 30, true);
    let blob_object = img.object_of(&img.blob);
    let blob_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&img.blob));
    let etc_upper = format!("/imgmount/state/etc/{}/upper", img.digest.to_hex());

    // 1. initramfs-tools, first boot: the image's /var is copied to the state folder; /etc
    // and /var get written; the blob is read through user-space verification; then
    // fs-verity is turned on for every object, and the machine powers off.
    let mut vm = boots.start(
        "1-initramfs-tools",
        &img.initrd_tools,
        &[&disk],
        &img.cmdline(
            "boot=imgmount imgmount_test.actions=write-state,stats,enable-verity \
             imgmount_test.token=one imgmount_test.end=poweroff",
        ),
    );
    let (r, at) = vm.wait_report(BOOT);
    eprintln!("boot: 1 (initramfs-tools, first boot) reported after {at:.1?}");
    check_good_boot(&r, img, false);
    assert_eq!(r.get("etc_type"), "overlay");
    assert_eq!(
        r.get("blob_sha256"),
        blob_sha,
        "the blob read through / has its digest"
    );
    let stats: serde_json::Value = serde_json::from_str(r.get("stats")).unwrap();
    let blob = stats_of(&stats, &format!("/{BLOB}"));
    assert!(u(blob, "reads") > 0, "read by the daemon, verified: {blob}");
    assert_eq!(
        u(blob, "passthrough_opens"),
        0,
        "no kernel verity yet: {blob}"
    );
    assert_eq!(
        r.get("enable_verity"),
        "0",
        "imgmount enable-verity in the VM"
    );
    let off = vm.wait_exit(SHUTDOWN);
    eprintln!("boot: 1 powered off {:.1?} after its report", off - at);
    drop(vm);
    assert!(
        disk.is_clean(),
        "the store filesystem was remounted read-only at shutdown"
    );

    // On the disk: the /etc change in this image's upper layer, the /var file in the
    // shared var, and the blob's object with fs-verity.
    assert_eq!(
        disk.read(&format!("{etc_upper}/imgmount-test")).as_deref(),
        Some(&b"etc-one\n"[..])
    );
    assert_eq!(
        disk.read("/imgmount/state/var/lib/imgmount-test/state")
            .as_deref(),
        Some(&b"var-one\n"[..])
    );
    assert_ne!(
        disk.flags(&blob_object) & 0x10_0000,
        0,
        "EXT4_VERITY_FL on the blob's object"
    );

    // 2. initramfs-tools again, same disk: the changes are there, and the kernel now reads
    // verity objects by passthrough (no READ reaches the daemon); this one reboots.
    let mut vm = boots.start(
        "2-initramfs-tools",
        &img.initrd_tools,
        &[&disk],
        &img.cmdline(
            "boot=imgmount imgmount_test.actions=check-state,stats,store imgmount_test.end=reboot",
        ),
    );
    let (r, at) = vm.wait_report(BOOT);
    eprintln!("boot: 2 (initramfs-tools, verity objects) reported after {at:.1?}");
    check_good_boot(&r, img, false);
    assert_eq!(
        r.get("etc_state"),
        "etc-one",
        "/etc change survived the reboot"
    );
    assert_eq!(
        r.get("var_state"),
        "var-one",
        "/var file survived the reboot"
    );
    assert_eq!(r.get("blob_sha256"), blob_sha);
    let stats: serde_json::Value = serde_json::from_str(r.get("stats")).unwrap();
    for path in [format!("/{BLOB}"), "/usr/bin/sh".to_owned()] {
        let f = stats_of(&stats, &path);
        assert_eq!(u(f, "reads"), 0, "served by passthrough: {f}");
        assert!(u(f, "passthrough_opens") >= 1, "{f}");
    }
    assert!(
        u(&stats, "passthrough_opens") > 100,
        "most of the boot by passthrough: {stats}"
    );
    assert!(
        r.get("store_images").contains(TAG),
        "the boot store is root's default store: {}",
        r.get("store_images")
    );
    let off = vm.wait_exit(SHUTDOWN);
    eprintln!("boot: 2 rebooted {:.1?} after its report", off - at);
    drop(vm);
    assert!(disk.is_clean(), "clean after a reboot too");

    // 3. A block of the blob's object changed on the raw disk; dracut this time, with a
    // transient root over the image: the changed block reads as EIO, never as other bytes.
    disk.corrupt_block(&blob_object, 100);
    let mut vm = boots.start(
        "3-dracut",
        &img.initrd_dracut,
        &[&disk],
        &img.cmdline(
            "imgmount.root=transient imgmount_test.actions=check-state,write-usr,tamper-read \
             imgmount_test.end=poweroff",
        ),
    );
    let (r, at) = vm.wait_report(BOOT);
    eprintln!("boot: 3 (dracut, transient root, tampered object) reported after {at:.1?}");
    check_good_boot(&r, img, true);
    assert_eq!(
        r.get("etc_state"),
        "etc-one",
        "the same /etc state from the other initramfs"
    );
    assert_eq!(r.get("var_state"), "var-one");
    assert_eq!(r.get("usr_write"), "ok", "the transient root takes writes");
    assert!(
        r.get("tampered_read").starts_with("failed:")
            && r.get("tampered_read").contains("Input/output error"),
        "reading the changed block: {}",
        r.get("tampered_read")
    );
    let head = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        &img.blob[..100 * 4096],
    ));
    assert_eq!(
        r.get("head_sha256"),
        head,
        "the blocks before it read right"
    );
    assert!(
        r.get("blob_sha256").is_empty() || r.get("blob_sha256") == blob_sha,
        "never wrong bytes: {}",
        r.get("blob_sha256")
    );
    assert_eq!(
        r.get("usr_write_upper"),
        "/run/imgmount/transient-root/upper/usr/imgmount-test-transient",
        "the write went to the transient root's upper layer, in memory"
    );
    vm.wait_exit(SHUTDOWN);
}

/// Runs `cat /proc/self/mountinfo` in the emergency shell and returns its output.
fn mounts_from_the_shell(vm: &mut Vm) -> String {
    // The marker is computed, so the echoed command line does not match it.
    vm.send("cat /proc/self/mountinfo; echo @@MOUNTS-$((40+2))");
    vm.wait_console("@@MOUNTS-42", Duration::from_secs(60));
    let c = vm.console();
    let end = c.rfind("@@MOUNTS-42").unwrap();
    let start = c[..end].rfind("cat /proc/self/mountinfo").unwrap_or(0);
    c[start..end].to_owned()
}

#[test]
fn bad_boots_stop_in_the_emergency_shell() {
    if !can_boot("bad_boots_stop_in_the_emergency_shell") {
        return;
    }
    let img = test_image();
    let mut boots = Boots::new("bad");
    let disk = Disk::ext4(
        &boots.dir().join("store.img"),
        &img.store_fs,
        2 << 30,
        false,
    );
    let wrong = imgmount_format::verity::digest_bytes(
        imgmount_format::verity::HashAlg::Sha256,
        b"not the image",
    );

    // A wrong pinned digest: both digests on the console, the emergency shell, and no root.
    let mut vm = boots.start(
        "wrong-digest-initramfs-tools",
        &img.initrd_tools,
        &[&disk],
        &img.cmdline(&format!("boot=imgmount imgmount.digest={wrong}")),
    );
    let at = vm.wait_console("(initramfs)", FAIL);
    eprintln!("boot: wrong digest reached the initramfs shell after {at:.1?}");
    let c = vm.console();
    let line = c
        .lines()
        .find(|l| l.contains("refusing to boot it"))
        .unwrap_or_else(|| panic!("no refusal on the console"));
    assert!(
        line.contains(&img.digest.to_string()) && line.contains(&wrong.to_string()),
        "both digests named: {line}"
    );
    assert!(c.contains("setup-root FAILED: nothing is mounted on /root"));
    let mounts = mounts_from_the_shell(&mut vm);
    assert!(
        !mounts.contains(" /root "),
        "nothing mounted on /root:\n{mounts}"
    );
    assert!(!mounts.contains("fuse.imgmount"), "{mounts}");
    vm.kill();

    // A store device that never appears: named, with the wait, then the shell.
    let mut vm = boots.start(
        "no-device-initramfs-tools",
        &img.initrd_tools,
        &[&disk],
        &img.cmdline("boot=imgmount imgmount.store=LABEL=no-such-store imgmount.wait=3"),
    );
    let at = vm.wait_console("(initramfs)", FAIL);
    eprintln!("boot: missing device reached the initramfs shell after {at:.1?}");
    let c = vm.console();
    assert!(
        c.contains(
            "the store device LABEL=no-such-store (imgmount.store=) did not appear within 3 s"
        ),
        "the missing device named"
    );
    assert!(
        c.contains("block devices present:") && c.contains("vda"),
        "what is there instead"
    );
    vm.kill();

    // dracut: the unit fails, the wrong digest is named, and the initrd's emergency mode
    // starts instead of switching root.
    let mut vm = boots.start(
        "wrong-digest-dracut",
        &img.initrd_dracut,
        &[&disk],
        &img.cmdline(&format!("imgmount.digest={wrong} rd.shell")),
    );
    let at = vm.wait_console("refusing to boot it", FAIL);
    eprintln!("boot: wrong digest refused by the dracut unit after {at:.1?}");
    vm.wait_console("emergency", FAIL);
    let c = vm.console();
    assert!(c.contains(&wrong.to_string()) && c.contains(&img.digest.to_string()));
    assert!(
        c.contains("Failed to start") && c.contains("imgmount"),
        "the unit failed"
    );
    assert!(
        !c.contains("initrd-switch-root.target"),
        "no switch to any root"
    );
    // systemd's emergency shell asks first.
    vm.wait_console("Press Enter for maintenance", FAIL);
    vm.send("");
    std::thread::sleep(Duration::from_secs(3));
    let mounts = mounts_from_the_shell(&mut vm);
    assert!(
        !mounts.contains(" /sysroot "),
        "nothing mounted on /sysroot:\n{mounts}"
    );
    assert!(!mounts.contains("fuse.imgmount"), "{mounts}");
    vm.kill();
}
