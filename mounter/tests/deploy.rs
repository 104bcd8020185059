//! Deployments booted under qemu (TCG): boot counting with automatic rollback, an update
//! and a rollback by hand, power cuts during `deploy` and during a staged image's first
//! boot, signed and badly signed images, and `/etc` and `/var` across all of it.
//!
//! One long chain of boots of one disk, each boot checked and reused by the next step (a
//! boot costs about a minute and a half under TCG). The images: v1 (pinned by the kernel
//! command line), v2 (its required health check fails), v3 and v5 (signed by the key the
//! initramfs trusts), v4 (signed by another key). Every console log is printed if a step
//! fails (see `qemu::Boots`).

mod common;
mod qemu;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use imgmount_format::verity::Digest;
use qemu::*;

/// How long a good boot may take to report under TCG.
const BOOT: Duration = Duration::from_secs(420);
/// How long a boot that reboots by itself (a failed check) may take.
const REBOOT: Duration = Duration::from_secs(480);
/// Power-cut trials, half during `deploy`, half during a staged image's first boot.
const TRIALS: usize = 10;

/// The files that make image vN: its version, a health check (failing in v2), and the
/// deployment units enabled as the README says.
fn version_layer(dir: &Path, n: u32) {
    let put = |rel: &str, bytes: &[u8], mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    let link = |target: &str, rel: &str| {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
    };
    put(
        "usr/share/imgmount-test/version",
        format!("v{n}\n").as_bytes(),
        0o644,
    );
    put(
        "etc/imgmount-test-version",
        format!("v{n}\n").as_bytes(),
        0o644,
    );
    let check = if n == 2 {
        "#!/bin/sh\necho \"v2 fails its health check on purpose\" >&2\nexit 1\n".to_owned()
    } else {
        format!("#!/bin/sh\necho \"v{n} is healthy\"\n")
    };
    put(
        "etc/imgmount/check/required.d/50-test",
        check.as_bytes(),
        0o755,
    );
    put(
        "etc/imgmount/check/wanted.d/60-optional",
        b"#!/bin/sh\necho 'a wanted check that fails is only logged' >&2\nexit 1\n",
        0o755,
    );
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/systemd");
    for unit in ["imgmount-check.service", "imgmount-bless.service"] {
        put(
            &format!("etc/systemd/system/{unit}"),
            &fs::read(contrib.join(unit)).unwrap(),
            0o644,
        );
    }
    // What `systemctl enable` makes of their [Install] sections.
    link(
        "../imgmount-bless.service",
        "etc/systemd/system/multi-user.target.wants/imgmount-bless.service",
    );
    link(
        "../imgmount-check.service",
        "etc/systemd/system/boot-complete.target.requires/imgmount-check.service",
    );
    link("../../sbin/imgmount", "usr/local/sbin/imgmount");
}

struct Images {
    digests: Vec<Digest>,
}

impl Images {
    fn v(&self, n: usize) -> Digest {
        self.digests[n - 1]
    }
}

/// v1..v5 in the store, tagged v1..v5, over the run's test image; v2, v3 signed in the
/// store by the trusted key, v4 by an untrusted one, v5's signature in a file on the store
/// disk (`/v5.sig`) for `deploy --signature`.
fn build_images(img: &TestImage, dir: &Path) -> Images {
    let t = Instant::now();
    let oci = img.work.join("oci");
    let store = img.store_fs.join("imgmount/store");
    let mut digests = Vec::new();
    for n in 1..=5u32 {
        let layer_dir = dir.join(format!("layer-v{n}"));
        version_layer(&layer_dir, n);
        let tar = dir.join(format!("layer-v{n}.tar"));
        run(std::process::Command::new("tar")
            .arg("-C")
            .arg(&layer_dir)
            .args(["--numeric-owner", "-cf"])
            .arg(&tar)
            .arg("."));
        run(std::process::Command::new("umoci")
            .args(["raw", "add-layer", "--image"])
            .arg(format!("{}:test", oci.display()))
            .args(["--tag", &format!("v{n}")])
            .arg(&tar));
        let out = run(std::process::Command::new(&img.binary)
            .arg("import")
            .arg("--store")
            .arg(&store)
            .args(["--tag", &format!("v{n}"), "--json"])
            .arg(format!("oci:{}:v{n}", oci.display())));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        digests.push(v["digest"].as_str().unwrap().parse().unwrap());
    }
    let trusted = dir.join("trusted.key");
    fs::write(&trusted, trusted_secret_key()).unwrap();
    let untrusted = dir.join("untrusted.key");
    run(std::process::Command::new(&img.binary)
        .arg("keygen")
        .arg(&untrusted));
    let sign = |key: &Path, tag: &str, out: Option<&Path>| {
        let mut cmd = std::process::Command::new(&img.binary);
        cmd.arg("sign")
            .arg("--key")
            .arg(key)
            .arg("--store")
            .arg(&store);
        if let Some(o) = out {
            cmd.arg("--output").arg(o);
        }
        run(cmd.arg(tag));
    };
    sign(&trusted, "v2", None);
    sign(&trusted, "v3", None);
    sign(&untrusted, "v4", None);
    sign(&trusted, "v5", Some(&img.store_fs.join("v5.sig")));
    eprintln!(
        "deploy: built, imported and signed v1..v5 in {:.1?}",
        t.elapsed()
    );
    Images { digests }
}

/// The kernel command line: v1 pinned, and the test's actions.
fn cmdline(images: &Images, extra: &str) -> String {
    format!(
        "console=ttyS0 ro imgmount.store=LABEL={STORE_LABEL} imgmount.image=v1 \
         imgmount.digest={} {extra}",
        images.v(1)
    )
}

/// Which initramfs a boot uses: initramfs-tools (`boot=imgmount`), or dracut.
#[derive(Clone, Copy)]
enum Initramfs {
    Tools,
    Dracut,
}

/// `imgmount status --json` as the boot reported it (`status`, or `status_after` its
/// deploy or rollback).
fn status_at(r: &Report, key: &str) -> serde_json::Value {
    serde_json::from_str(r.get(key))
        .unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {}", r.get(key)))
}

fn status(r: &Report) -> serde_json::Value {
    status_at(r, "status")
}

fn deployment<'a>(st: &'a serde_json::Value, image: &Digest) -> &'a serde_json::Value {
    st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|d| d["image"] == image.to_string())
        .unwrap_or_else(|| panic!("no deployment of {image}: {st:#}"))
}

fn booted(st: &serde_json::Value) -> &serde_json::Value {
    let id = st["booted"]
        .as_u64()
        .unwrap_or_else(|| panic!("nothing booted: {st:#}"));
    st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("the booted deployment is not listed: {st:#}"))
}

/// What every good boot of a deployment must show: the root is the booted image, blessed,
/// and the state is whole and consistent.
fn check_consistent(r: &Report, st: &serde_json::Value, allowed: &[Digest]) {
    assert!(st["problem"].is_null(), "the state is whole: {st:#}");
    let b = booted(st);
    let image: Digest = b["image"].as_str().unwrap().parse().unwrap();
    assert!(
        allowed.contains(&image),
        "booted {image}, one of {allowed:?}"
    );
    assert_eq!(
        r.get("root_source"),
        format!("imgmount:{image}"),
        "/ is the booted image"
    );
    assert_eq!(
        b["state"], "good",
        "blessed once the boot completed: {st:#}"
    );
    let next = st["next_boot"].as_u64().unwrap();
    let n = st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == next)
        .unwrap();
    assert_ne!(
        n["state"], "bad",
        "the next boot is never a bad deployment: {st:#}"
    );
}

#[test]
fn deployments_roll_back_update_survive_power_cuts_and_check_signatures() {
    if !can_boot("deployments_roll_back_update_survive_power_cuts_and_check_signatures") {
        return;
    }
    let img = test_image();
    let mut boots = Boots::new("deploy");
    let images = build_images(img, boots.dir());
    let disk = Disk::ext4(
        &boots.dir().join("store.img"),
        &img.store_fs,
        3 << 30,
        false,
    );
    let total = Instant::now();
    let mut count = 0;
    let mut boot = |boots: &mut Boots, which: Initramfs, name: &str, extra: &str| {
        count += 1;
        let (initrd, family) = match which {
            Initramfs::Tools => (&img.initrd_tools, "boot=imgmount "),
            Initramfs::Dracut => (&img.initrd_dracut, ""),
        };
        let line = format!("{family}{}", cmdline(&images, extra));
        boots.start(&format!("{count:02}-{name}"), initrd, &[&disk], &line)
    };

    // 1. v1, pinned, first boot: /etc and /var written; v2 deployed with 2 tries.
    let mut vm = boot(
        &mut boots,
        Initramfs::Tools,
        "v1-deploy-v2",
        "imgmount_test.actions=write-state,version,deploy,status imgmount_test.token=a \
         imgmount_test.deploy=v2 imgmount_test.tries=2 imgmount_test.end=reboot",
    );
    let (r, at) = vm.wait_report(BOOT);
    eprintln!("deploy: 1 (v1, pinned) reported after {at:.1?}");
    assert_eq!(r.get("root_source"), format!("imgmount:{}", images.v(1)));
    assert_eq!(r.get("version"), "v1");
    assert_eq!(r.get("deploy"), "0");
    assert_eq!(
        status(&r)["deployments"],
        serde_json::json!([]),
        "no deployments before"
    );
    let st = status_at(&r, "status_after");
    assert_eq!(st["next_boot"], deployment(&st, &images.v(2))["id"]);
    assert_eq!(
        deployment(&st, &images.v(1))["state"],
        "good",
        "the pinned boot adopted"
    );
    vm.wait_exit(REBOOT);

    // 2, 3. v2's required check fails on each of its 2 tries; each boot reboots itself.
    for try_no in 1..=2 {
        let mut vm = boot(
            &mut boots,
            Initramfs::Tools,
            &format!("v2-try-{try_no}"),
            "imgmount_test.actions=",
        );
        vm.wait_console(&format!("try {try_no} of 2"), BOOT);
        vm.wait_console("v2 fails its health check on purpose", BOOT);
        let at = vm.wait_exit(REBOOT);
        eprintln!("deploy: v2 try {try_no} failed its check and rebooted after {at:.1?}");
    }

    // 4. v1 boots by itself; v2 is bad with the reason. /etc and /var are v1's. v3 deployed.
    let mut vm = boot(
        &mut boots,
        Initramfs::Tools,
        "v1-after-v2-deploy-v3",
        "imgmount_test.actions=check-state,version,status,deploy imgmount_test.deploy=v3 \
         imgmount_test.tries=3 imgmount_test.end=reboot",
    );
    let (r, at) = vm.wait_report(BOOT);
    eprintln!("deploy: v1 booted by itself after v2's last try ({at:.1?})");
    let st = status(&r);
    check_consistent(&r, &st, &[images.v(1)]);
    let v2 = deployment(&st, &images.v(2));
    assert_eq!(v2["state"], "bad", "{st:#}");
    let note = v2["note"].as_str().unwrap();
    assert!(
        note.contains("50-test") && note.contains("on purpose"),
        "the reason names the check and its output: {note}"
    );
    assert_eq!((r.get("etc_state"), r.get("var_state")), ("etc-a", "var-a"));
    assert_eq!(r.get("deploy"), "0");
    vm.wait_exit(REBOOT);

    // 5. v3: blessed on its first boot, v1 the rollback; /etc carried, /var shared; then
    // /etc and /var written again and `imgmount rollback`.
    let mut vm = boot(
        &mut boots,
        Initramfs::Tools,
        "v3-update",
        "imgmount_test.actions=check-state,version,write-state,status,rollback \
         imgmount_test.token=b imgmount_test.end=reboot",
    );
    let (r, at) = vm.wait_report(BOOT);
    eprintln!("deploy: v3 booted and was blessed ({at:.1?})");
    let st = status(&r);
    check_consistent(&r, &st, &[images.v(3)]);
    assert_eq!(
        st["rollback"],
        deployment(&st, &images.v(1))["id"],
        "{st:#}"
    );
    assert_eq!(
        (r.get("etc_state"), r.get("var_state")),
        ("etc-a", "var-a"),
        "v1's local /etc change is carried to v3, /var is shared"
    );
    assert_eq!(
        (r.get("version"), r.get("etc_version")),
        ("v3", "v3"),
        "an /etc file not changed locally comes from the new image"
    );
    assert_eq!(r.get("rollback"), "0");
    vm.wait_exit(REBOOT);

    // 6. Rolled back to v1: its own /etc (v3's change is not carried back), the shared /var.
    // v4 (signed by a key the initramfs does not trust) deployed.
    let mut vm = boot(
        &mut boots,
        Initramfs::Tools,
        "v1-rollback-deploy-v4",
        "imgmount_test.actions=check-state,version,status,deploy imgmount_test.deploy=v4 \
         imgmount_test.tries=3 imgmount_test.end=reboot",
    );
    let (r, at) = vm.wait_report(BOOT);
    eprintln!("deploy: rolled back to v1 ({at:.1?})");
    let st = status(&r);
    check_consistent(&r, &st, &[images.v(1)]);
    assert_eq!(
        (r.get("etc_state"), r.get("var_state"), r.get("etc_version")),
        ("etc-a", "var-b", "v1"),
        "v1 keeps its own /etc; /var is shared"
    );
    assert_eq!(r.get("deploy"), "0");
    vm.wait_exit(REBOOT);

    // 7. v4 is refused at boot and marked bad; v1 boots in the same boot. v5 deployed with
    // its signature file.
    let mut vm = boot(
        &mut boots,
        Initramfs::Tools,
        "v4-refused-deploy-v5",
        "imgmount_test.actions=version,status,deploy imgmount_test.deploy=v5 \
         imgmount_test.tries=3 imgmount_test.signature=/run/imgmount/store/v5.sig \
         imgmount_test.end=reboot",
    );
    let (r, at) = vm.wait_report(BOOT);
    eprintln!("deploy: v4 refused, v1 booted ({at:.1?})");
    let st = status(&r);
    check_consistent(&r, &st, &[images.v(1)]);
    let v4 = deployment(&st, &images.v(4));
    assert_eq!(v4["state"], "bad");
    assert!(
        v4["note"].as_str().unwrap().contains("does not trust"),
        "refused for its key: {v4}"
    );
    assert_eq!(r.get("deploy"), "0");
    vm.wait_exit(REBOOT);

    // 8. v5, signed by the trusted key, boots and is blessed, from the dracut initramfs (its
    // module ships the trusted key too). It starts the power-cut trials: deploying v1, v3
    // and v5 in turn until killed (two of each three leave an image staged, whose first
    // boot the next trial cuts).
    let seed = std::env::var("IMGMOUNT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0008_u64);
    eprintln!("deploy: power-cut seed {seed} (IMGMOUNT_TEST_SEED)");
    let mut rng = common::data(seed, 2 * TRIALS + 2).into_iter();
    let trial_cmdline =
        "imgmount_test.actions=version,status,deploy-loop imgmount_test.loop=v1,v3,v5";
    let good = [images.v(1), images.v(3), images.v(5)];
    let mut vm = boot(&mut boots, Initramfs::Dracut, "v5-signed", trial_cmdline);
    let (r, at) = vm.wait_report(BOOT);
    eprintln!("deploy: v5 (signed) booted ({at:.1?})");
    let st = status(&r);
    check_consistent(&r, &st, &[images.v(5)]);
    let mut kills = Vec::new();
    for round in 0..TRIALS / 2 {
        // During `deploy`: the loop starts when the report is done.
        let t = Instant::now();
        while !vm.report().0.contains_key("deploy_loop") {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "the deploy loop did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let wait = Duration::from_millis(200 + u64::from(rng.next().unwrap()) * 16);
        std::thread::sleep(wait);
        vm.kill();
        kills.push(format!(
            "trial {}: during deploy, {wait:.1?} into the loop",
            2 * round
        ));
        // The next boot (the staged image's first, if a deploy completed) is cut part way.
        let wait = Duration::from_millis(8_000 + u64::from(rng.next().unwrap()) * 250);
        vm = boot(
            &mut boots,
            Initramfs::Tools,
            &format!("trial-{round}-cut"),
            trial_cmdline,
        );
        std::thread::sleep(wait);
        let seen = vm.console();
        let phase = seen
            .lines()
            .rev()
            .find(|l| l.contains("imgmount"))
            .unwrap_or("before setup-root")
            .trim()
            .to_owned();
        vm.kill();
        kills.push(format!(
            "trial {}: during a boot, {wait:.1?} after qemu started (last: {phase})",
            2 * round + 1
        ));
        // The check boot, which also starts the next round.
        vm = boot(
            &mut boots,
            Initramfs::Tools,
            &format!("trial-{round}-check"),
            trial_cmdline,
        );
        let (r, at) = vm.wait_report(BOOT);
        let st = status(&r);
        check_consistent(&r, &st, &good);
        eprintln!(
            "deploy: after power cuts {} and {}, booted {} ({at:.1?})",
            2 * round,
            2 * round + 1,
            booted(&st)["image"]
        );
    }
    vm.kill();
    for k in &kills {
        eprintln!("deploy: {k}");
    }
    eprintln!("deploy: {count} boots in {:.1?}", total.elapsed());
}
