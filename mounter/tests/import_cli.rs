//! The store commands from the command line: import, images, tag, rm, gc,
//! fsck, extract; their output for scripts and their exit codes. Needs no root.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::rootfs_tar;

const BIN: &str = env!("CARGO_BIN_EXE_imgmount");

fn run(store: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--store")
        .arg(store)
        .output()
        .unwrap()
}

fn ok(store: &Path, args: &[&str]) -> String {
    common::success_stdout(args, run(store, args))
}

fn images(store: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&ok(store, &["images", "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn import_tag_rm_gc_fsck_extract() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let a = tmp.path().join("a.tar");
    let b = tmp.path().join("b.tar");
    rootfs_tar(
        &a,
        &[("etc/motd", b"hi\n".to_vec()), ("big", vec![7u8; 20_000])],
    );
    rootfs_tar(
        &b,
        &[("big", vec![7u8; 20_000]), ("other", vec![8u8; 30_000])],
    );

    let report: serde_json::Value = serde_json::from_str(&ok(
        &store,
        &[
            "import",
            &format!("tar:{}", a.display()),
            "--tag",
            "a",
            "--json",
            "--no-sync",
        ],
    ))
    .unwrap();
    let da = report["digest"].as_str().unwrap().to_owned();
    assert!(da.starts_with("sha256:") && da.len() == 71, "{da}");
    assert_eq!(report["new_objects"], 1);
    let db = ok(&store, &["import", &format!("tar:{}", b.display())])
        .trim()
        .to_owned();
    assert_ne!(da, db);

    let list = images(&store);
    assert_eq!(list.len(), 2);
    let tags: Vec<_> = list.iter().map(|i| i["tags"].clone()).collect();
    assert!(tags.contains(&serde_json::json!(["a"])), "{tags:?}");

    // Tag by a digest prefix; the image then has two names.
    let prefix = &db["sha256:".len().."sha256:".len() + 10];
    ok(&store, &["tag", prefix, "team/b:1"]);
    let extracted = tmp.path().join("out");
    ok(
        &store,
        &["extract", "team/b:1", extracted.to_str().unwrap()],
    );
    assert_eq!(
        fs::read(extracted.join("other")).unwrap(),
        vec![8u8; 30_000]
    );

    // rm of the only tag removes the image; gc then frees only its own object.
    let out = ok(&store, &["rm", "team/b:1"]);
    assert!(out.contains("removed"), "{out}");
    assert_eq!(images(&store).len(), 1);
    let gc: serde_json::Value = serde_json::from_str(&ok(&store, &["gc", "--json"])).unwrap();
    assert_eq!(gc["removed_objects"], 1, "{gc}");
    assert_eq!(gc["kept_objects"], 1, "{gc}");
    ok(&store, &["fsck"]);

    // A corrupted object: fsck exits 1, --repair removes it.
    let objects = store.join("objects");
    let fan = fs::read_dir(&objects)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let obj = fs::read_dir(&fan).unwrap().next().unwrap().unwrap().path();
    let mut bytes = fs::read(&obj).unwrap();
    bytes[0] ^= 1;
    fs::write(&obj, bytes).unwrap();
    let out = run(&store, &["fsck", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!report["problems"].as_array().unwrap().is_empty());
    assert_eq!(run(&store, &["fsck", "--repair"]).status.code(), Some(1));
    assert!(!obj.exists());
    // Extract refuses the image whose content is gone, naming the file.
    let out = run(
        &store,
        &["extract", "a", tmp.path().join("out2").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("big"));
}

#[test]
fn bad_usage_exits_2_and_missing_images_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    // An unknown transport, and a registry reference that is malformed.
    for bad in [
        "docker-daemon:x",
        "docker://h.io/Upper",
        "docker://h.io/x:-bad",
    ] {
        assert_eq!(
            run(&store, &["import", bad]).status.code(),
            Some(2),
            "{bad}"
        );
    }
    let a = tmp.path().join("a.tar");
    rootfs_tar(&a, &[("f", b"x".to_vec())]);
    let out = run(
        &store,
        &["import", &format!("tar:{}", a.display()), "--tag", "../x"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        run(&store, &["import", "tar:/nonexistent.tar"])
            .status
            .code(),
        Some(1)
    );
    ok(&store, &["import", &format!("tar:{}", a.display())]);
    let out = run(
        &store,
        &[
            "extract",
            "no-such-tag",
            tmp.path().join("o").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-tag"));
}

#[test]
fn the_default_store_follows_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.tar");
    rootfs_tar(&a, &[("f", vec![1u8; 100])]);
    let env_store = tmp.path().join("from-env");
    let out = Command::new(BIN)
        .args(["import", &format!("tar:{}", a.display())])
        .env("IMGMOUNT_STORE", &env_store)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env_store.join("images").is_dir());
}
