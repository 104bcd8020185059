//! The deployment commands on a temporary store, without a machine to boot: `deploy`,
//! `status`, `rollback`, `bless`, `mark-bad`, `check`, `keygen`, `sign`, `rm` and `gc`
//! keeping deployed images, and `deploy` killed at random points.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use imgmount::deploy::commit::{StateRead, read_state};
use imgmount::deploy::decide::{BootInput, BootTarget, TrustedBy, Verdict, decide_boot};
use imgmount::deploy::state::Status;
use imgmount_format::store::fsops::Dir;
use imgmount_format::verity::Digest;

const BIN: &str = env!("CARGO_BIN_EXE_imgmount");

/// A store holding images v1, v2, v3 (tags), and where the test keeps its files.
struct Fixture {
    dir: tempfile::TempDir,
    digests: Vec<Digest>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut digests = Vec::new();
        for n in 1..=3 {
            let root = dir.path().join(format!("root{n}"));
            std::fs::create_dir_all(root.join("etc")).unwrap();
            std::fs::write(root.join("etc/os"), format!("v{n}\n")).unwrap();
            let store = dir.path().join("store");
            let out = Command::new(BIN)
                .arg("import")
                .arg("--store")
                .arg(&store)
                .args(["--tag", &format!("v{n}"), "--json"])
                .arg(format!("dir:{}", root.display()))
                .output()
                .unwrap();
            let text = common::success_stdout(&["import"], out);
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            digests.push(v["digest"].as_str().unwrap().parse().unwrap());
        }
        let f = Fixture { dir, digests };
        f.boot_pinned(1);
        f
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn booted_file(&self) -> PathBuf {
        self.dir.path().join("booted")
    }

    fn v(&self, n: usize) -> Digest {
        self.digests[n - 1]
    }

    /// This "boot" is of the pinned image vN.
    fn boot_pinned(&self, n: usize) {
        std::fs::write(
            self.booted_file(),
            imgmount::deploy::booted::format(None, &self.v(n)),
        )
        .unwrap();
    }

    /// This "boot" is deployment `id`.
    fn boot_deployment(&self, id: u32) {
        let st = self.state();
        let image = st.get(id).unwrap().image;
        std::fs::write(
            self.booted_file(),
            imgmount::deploy::booted::format(Some(id), &image),
        )
        .unwrap();
    }

    /// `imgmount CMD --store S --booted-file B ARGS`.
    fn run(&self, cmd: &str, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.arg(cmd);
        if cmd != "keygen" {
            c.arg("--store").arg(self.store());
        }
        if !matches!(cmd, "sign" | "keygen" | "rm" | "gc" | "cat" | "import") {
            c.arg("--booted-file").arg(self.booted_file());
        }
        c.args(args).current_dir(self.dir.path()).output().unwrap()
    }

    fn ok(&self, cmd: &str, args: &[&str]) -> String {
        common::success_stdout(&[cmd], self.run(cmd, args))
    }

    fn fails(&self, cmd: &str, args: &[&str], code: i32) -> String {
        let out = self.run(cmd, args);
        assert_eq!(
            out.status.code(),
            Some(code),
            "imgmount {cmd} {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok("status", &["--json"])).unwrap()
    }

    fn state(&self) -> imgmount::deploy::state::DeploymentState {
        match read_state(&Dir::open(&self.store()).unwrap()) {
            StateRead::Ok(s) => s,
            other => panic!("the state: {other:?}"),
        }
    }
}

fn entry(st: &serde_json::Value, id: u64) -> &serde_json::Value {
    st["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == id)
        .unwrap_or_else(|| panic!("no deployment {id}: {st:#}"))
}

#[test]
fn deploy_bless_rollback_and_mark_bad() {
    let f = Fixture::new();
    assert!(f.ok("status", &[]).contains("no deployments"));
    let out = f.ok("deploy", &["v2", "--tries", "2"]);
    assert!(
        out.contains("deployment 2") && out.contains("pending, 2 tries"),
        "{out}"
    );
    let st = f.status();
    assert_eq!(st["next_boot"], 2);
    assert_eq!(
        st["booted"], 1,
        "the pinned boot is adopted as deployment 1"
    );
    assert_eq!(st["rollback"], 1);
    assert_eq!(entry(&st, 1)["state"], "good");
    assert_eq!(entry(&st, 2)["state"], "pending");
    assert_eq!(entry(&st, 2)["tries_left"], 2);
    assert_eq!(entry(&st, 2)["tag"], "v2");

    // Booted into 2 and blessed; blessing again changes nothing.
    f.boot_deployment(2);
    assert!(f.ok("bless", &[]).contains("is good"));
    assert!(f.ok("bless", &[]).contains("already good"));
    let st = f.status();
    assert_eq!(
        (st["booted"].clone(), st["rollback"].clone()),
        (2.into(), 1.into())
    );

    // Rollback makes 1 the next boot, and back again.
    assert!(f.ok("rollback", &[]).contains("deployment 1"));
    assert_eq!(f.status()["next_boot"], 1);
    assert!(f.ok("rollback", &[]).contains("deployment 2"));

    // A third deployment, marked bad by hand: the next boot is the last good one.
    f.ok("deploy", &["v3"]);
    let st = f.status();
    assert_eq!(
        st["deployments"].as_array().unwrap().len(),
        2,
        "A/B: two kept: {st:#}"
    );
    assert!(entry(&st, 3)["state"] == "pending");
    let out = f.ok(
        "mark-bad",
        &["--deployment", "3", "--reason", "web\nserver down"],
    );
    assert!(out.contains("the next boot is deployment 2"), "{out}");
    let st = f.status();
    assert_eq!(entry(&st, 3)["state"], "bad");
    assert_eq!(
        entry(&st, 3)["note"],
        "web server down",
        "control characters cleaned"
    );
    assert!(f.ok("status", &[]).contains("bad: web server down"));
    f.boot_deployment(3);
    assert!(f.fails("bless", &[], 1).contains("marked bad"));

    // Bad usage is exit 2, naming the flag.
    assert!(
        f.fails("deploy", &["v1", "--tries", "0"], 2)
            .contains("--tries")
    );
    assert!(
        f.fails("deploy", &["v1", "--keep", "1"], 2)
            .contains("--keep")
    );
    assert!(f.fails("deploy", &["nonesuch"], 1).contains("nonesuch"));
    // Without a record of the boot, there is nothing to bless or mark.
    std::fs::remove_file(f.booted_file()).unwrap();
    assert!(f.fails("bless", &[], 1).contains("not booted"));
    assert!(f.fails("mark-bad", &[], 1).contains("--deployment"));
}

#[test]
fn keygen_sign_and_deploy_with_a_signature_file() {
    let f = Fixture::new();
    let out = f.ok("keygen", &["release"]);
    assert!(out.contains("release.pub"), "{out}");
    let secret = f.dir.path().join("release");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(f.fails("keygen", &["release"], 1).contains("exists"));
    let public = std::fs::read_to_string(f.dir.path().join("release.pub")).unwrap();
    let key = imgmount::deploy::keys::parse_public(&public).unwrap();
    let id = imgmount::deploy::keys::key_id(&key);

    // A signature file, then deploy --signature stores it with the image.
    f.ok("sign", &["--key", "release", "--output", "v2.sig", "v2"]);
    f.ok("deploy", &["v2", "--signature", "v2.sig"]);
    let st = f.status();
    assert_eq!(entry(&st, 2)["signed"], serde_json::json!([id]));
    // A signature of another image is refused.
    f.fails("deploy", &["v3", "--signature", "v2.sig"], 1);
    // A damaged signature file is refused with its name.
    let mut bytes = std::fs::read(f.dir.path().join("v2.sig")).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(f.dir.path().join("bad.sig"), &bytes).unwrap();
    let err = f.fails("deploy", &["v2", "--signature", "bad.sig"], 1);
    assert!(err.contains("not a valid signature"), "{err}");
    // import --signature stores it too.
    f.ok("sign", &["--key", "release", "--output", "v1.sig", "v1"]);
    let root = f.dir.path().join("root1");
    f.ok(
        "import",
        &[
            "--signature",
            "v1.sig",
            "--tag",
            "v1",
            &format!("dir:{}", root.display()),
        ],
    );
    let store = Dir::open(&f.store()).unwrap();
    assert!(
        imgmount::deploy::store::read_signatures(&store, &f.v(1))
            .unwrap()
            .is_some()
    );
    let err = f.fails(
        "import",
        &[
            "--signature",
            "v1.sig",
            "--tag",
            "v3",
            &format!("dir:{}", f.dir.path().join("root3").display()),
        ],
        1,
    );
    assert!(err.contains("not sha256") || err.contains("signs"), "{err}");
    // Signed in the store directly; the boot's rule accepts the trusted key only.
    f.ok("sign", &["--key", "release", "v3"]);
    let sigs = imgmount::deploy::store::read_signatures(&store, &f.v(3))
        .unwrap()
        .unwrap();
    let trusted = [imgmount::deploy::keys::PublicKey {
        name: "release".into(),
        key,
    }];
    assert!(matches!(
        sigs.check(&trusted),
        imgmount::deploy::signature::SignatureCheck::Trusted(_)
    ));
    assert!(matches!(
        sigs.check(&[]),
        imgmount::deploy::signature::SignatureCheck::Refused(_)
    ));
    // A secret key file that is not one is a usage error.
    std::fs::write(f.dir.path().join("junk"), "nothing\n").unwrap();
    f.fails("sign", &["--key", "junk", "v3"], 2);
}

#[test]
fn rm_and_gc_keep_deployed_images() {
    let f = Fixture::new();
    f.ok("deploy", &["v2"]);
    let err = f.fails("rm", &[&f.v(2).to_string()], 1);
    assert!(err.contains("deployment 2"), "{err}");
    // Untagging is fine; the image stays while deployed.
    f.ok("rm", &["v2"]);
    f.ok("rm", &["v3"]);
    f.ok("gc", &[]);
    let cat = f.ok("cat", &[&f.v(2).to_string(), "/etc/os"]);
    assert_eq!(
        cat, "v2\n",
        "the deployed image and its objects survived gc"
    );
    let v3 = f.run("cat", &[&f.v(3).to_string(), "/etc/os"]);
    assert!(!v3.status.success(), "an image not deployed went");
}

#[test]
fn check_runs_required_and_wanted_and_records_a_failure() {
    let f = Fixture::new();
    f.ok("deploy", &["v2", "--tries", "2"]);
    f.boot_deployment(2);
    let checks = f.dir.path().join("check");
    let put = |rel: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt;
        let p = checks.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    put("required.d/10-ok", "#!/bin/sh\nexit 0\n");
    put("wanted.d/10-meh", "#!/bin/sh\necho meh >&2\nexit 3\n");
    let dir = checks.to_str().unwrap();
    let out = f.ok("check", &["--dir", dir, "--no-reboot"]);
    assert!(out.contains("every required health check passed"), "{out}");
    put(
        "required.d/20-web",
        "#!/bin/sh\necho 'no answer on :80' >&2\nexit 1\n",
    );
    let err = f.fails("check", &["--dir", dir, "--no-reboot"], 1);
    assert!(err.contains("20-web") && err.contains("no answer"), "{err}");
    let st = f.status();
    assert_eq!(entry(&st, 2)["state"], "pending", "a try is left");
    assert!(entry(&st, 2)["note"].as_str().unwrap().contains("20-web"));
    // The last try: the state says no tries left; the failure makes it bad.
    let mut s = f.state();
    s.get_mut(2).unwrap().status = Status::Pending { tries_left: 0 };
    s.generation += 1;
    let store = Dir::open(&f.store()).unwrap();
    let (dir_fd, _lock) = imgmount::deploy::commit::lock_state_dir(&store).unwrap();
    imgmount::deploy::commit::write_state(&dir_fd, &StateRead::Ok(f.state()), &s).unwrap();
    drop(_lock);
    f.fails("check", &["--dir", dir, "--no-reboot"], 1);
    let st = f.status();
    assert_eq!(entry(&st, 2)["state"], "bad");
    assert!(
        entry(&st, 2)["note"]
            .as_str()
            .unwrap()
            .contains("no answer on :80")
    );
    assert_eq!(st["next_boot"], 1, "the last good deployment boots next");
    // A check that hangs is killed at the timeout.
    put("required.d/30-hang", "#!/bin/sh\nsleep 60\n");
    std::fs::remove_file(checks.join("required.d/20-web")).unwrap();
    let t = std::time::Instant::now();
    let err = f.fails("check", &["--dir", dir, "--no-reboot", "--timeout", "1"], 1);
    assert!(err.contains("did not finish within 1 s"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30));
}

/// What a boot would do with this state, every image trusted.
fn boots_something_good(read: &StateRead, pin: &Digest) -> bool {
    let input = BootInput {
        state: read,
        pin,
        use_deployments: true,
        now: 0,
    };
    let d = decide_boot(&input, &mut |_| Verdict::Trusted(TrustedBy::Pin));
    match d.target {
        Some(BootTarget::Deployment(id)) => {
            let st = d.new_state.as_ref().or(read.state()).unwrap();
            !matches!(st.get(id).unwrap().status, Status::Bad)
        }
        Some(BootTarget::Pinned) => true,
        None => false,
    }
}

#[test]
fn deploy_killed_at_random_points_leaves_a_whole_state() {
    let f = Fixture::new();
    f.ok("deploy", &["v2"]);
    let seed: u64 = std::env::var("IMGMOUNT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xdead_0008);
    let delays = common::data(seed, 60);
    let store = Dir::open(&f.store()).unwrap();
    let (mut killed, mut finished) = (0, 0);
    for (i, d) in delays.iter().enumerate() {
        let tag = ["v1", "v2", "v3"][i % 3];
        let mut child = Command::new(BIN)
            .args(["deploy", tag, "--store"])
            .arg(f.store())
            .arg("--booted-file")
            .arg(f.booted_file())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(u64::from(*d) * 80));
        match child.try_wait().unwrap() {
            Some(_) => finished += 1,
            None => {
                child.kill().unwrap();
                killed += 1;
            }
        }
        child.wait().unwrap();
        let read = read_state(&store);
        assert!(
            matches!(read, StateRead::Ok(_)),
            "after deploy {i} ({tag}) killed at {} us: {read:?}",
            u64::from(*d) * 80
        );
        assert!(boots_something_good(&read, &f.v(1)), "{read:?}");
    }
    eprintln!("deploy killed {killed} times, finished {finished} times (seed {seed})");
    assert!(killed > 0, "some deploys were interrupted (seed {seed})");
    let names: Vec<String> = std::fs::read_dir(f.store().join("deployments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(
        names.len() <= 2,
        "temporary files are cleaned up by the next change: {names:?}"
    );
}
