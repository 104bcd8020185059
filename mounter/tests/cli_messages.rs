//! What a user meets at the command line: every command that takes an IMAGE takes the
//! same names (a file, a tag, a digest, a SOURCE), and each refusal names the thing and
//! the reason with the right exit code. Needs no root and no FUSE.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_imgmount");

fn run(store: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .arg("--store")
        .arg(store)
        .env_remove("IMGMOUNT_STORE")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[track_caller]
fn ok(store: &Path, args: &[&str]) -> Output {
    let out = run(store, args);
    assert!(
        out.status.success(),
        "imgmount {args:?}: {}\n{}",
        out.status,
        stderr(&out)
    );
    out
}

/// Runs a command that must fail with `code` and print exactly `message` as its error.
#[track_caller]
fn fails(store: &Path, args: &[&str], code: i32, message: &str) {
    let out = run(store, args);
    assert_eq!(
        out.status.code(),
        Some(code),
        "imgmount {args:?}: {}",
        stderr(&out)
    );
    assert_eq!(
        stderr(&out),
        format!("imgmount: error: {message}\n"),
        "imgmount {args:?}"
    );
}

/// A root filesystem tarball: a small file (inline in the image) and a large one (an
/// object in the store).
fn rootfs_tar(path: &Path) -> Vec<u8> {
    let big: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    for (name, data) in [("etc/motd", &b"hello\n"[..]), ("usr/big", &big[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, name, data).unwrap();
    }
    b.finish().unwrap();
    big
}

#[test]
fn every_command_taking_an_image_takes_a_tag_a_digest_or_a_source() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tar = tmp.path().join("root.tar");
    let big = rootfs_tar(&tar);
    let source = format!("tar:{}", tar.display());

    // A SOURCE is imported first, and the command says what it imported and where.
    let out = ok(&store, &["ls", &source, "/etc"]);
    assert!(stdout(&out).contains(" motd\n"), "{}", stdout(&out));
    let said = stderr(&out);
    let digest = said
        .strip_prefix(&format!("imgmount: imported {source} as "))
        .and_then(|rest| rest.strip_suffix(&format!(", into the store {}\n", store.display())))
        .unwrap_or_else(|| panic!("{said}"))
        .to_owned();
    assert!(
        digest.starts_with("sha256:") && digest.len() == 71,
        "{digest}"
    );
    ok(&store, &["tag", &digest, "root"]);

    // A tag, a digest, a digest prefix and the SOURCE again all name it.
    let prefix = &digest["sha256:".len()..][..12];
    for name in ["root", digest.as_str(), prefix, source.as_str()] {
        let cat = ok(&store, &["cat", name, "/usr/big"]);
        assert_eq!(
            cat.stdout, big,
            "cat {name}: the store's objects, found by itself"
        );
        let dump = ok(&store, &["dump", name]);
        assert!(
            stdout(&dump).contains("\n/usr/big 50000 100644 "),
            "dump {name}"
        );
        let dg = ok(&store, &["digest", name]);
        assert_eq!(stdout(&dg), format!("{digest} {name}\n"), "digest {name}");
    }
    // The image file itself is still an IMAGE, and `digest` still digests any file.
    let file = store.join("images").join(&digest["sha256:".len()..]);
    let dg = ok(&store, &["digest", file.to_str().unwrap()]);
    assert_eq!(stdout(&dg), format!("{digest} {}\n", file.display()));
}

#[test]
fn names_that_name_nothing_say_so() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let none = tmp.path().join("none");
    let missing = format!(
        "\"nothere\" is not an image file (it does not exist), and there is no store at {}",
        none.display()
    );
    for cmd in [
        &["ls", "nothere"][..],
        &["cat", "nothere", "/x"],
        &["dump", "nothere"],
    ] {
        fails(&none, cmd, 1, &missing);
    }
    fails(&none, &["digest", "nothere"], 1, &missing);

    let tar = tmp.path().join("root.tar");
    rootfs_tar(&tar);
    ok(
        &store,
        &["import", "--tag", "root", &format!("tar:{}", tar.display())],
    );
    fails(
        &store,
        &["ls", "nothere.cfs"],
        1,
        &format!(
            "\"nothere.cfs\" is not an image file (it does not exist), and no image in the \
             store {} has that tag or digest",
            store.display()
        ),
    );
    fails(
        &store,
        &["cat", "root", "/etc/nope"],
        1,
        &format!(
            "/etc/nope does not exist in {}",
            fs::read_dir(store.join("images"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
                .display()
        ),
    );
    let dir = tmp.path().to_str().unwrap();
    fails(
        &store,
        &["ls", dir],
        1,
        &format!("{dir} is a directory, not an image file (for a root filesystem: dir:{dir})"),
    );
}

#[test]
fn an_unknown_transport_is_named_with_the_ones_there_are() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let transports = "oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE[:REF], \
                      docker://HOST[:PORT]/REPO[:TAG|@DIGEST], dir:PATH or tar:FILE";
    fails(
        &store,
        &["import", "ocii:./layout"],
        2,
        &format!("unknown transport \"ocii:\" in \"ocii:./layout\": a SOURCE is {transports}"),
    );
    for cmd in ["ls", "dump", "digest"] {
        fails(
            &store,
            &[cmd, "ocii:./layout"],
            2,
            &format!(
                "unknown transport \"ocii:\" in \"ocii:./layout\" (and it is not an image file \
                 or a stored image either): a SOURCE is {transports}"
            ),
        );
    }
}

/// Imports a root filesystem holding `motd`, returning its digest.
fn import_rootfs(store: &Path, dir: &Path, motd: &str, tag: Option<&str>) -> (String, String) {
    let tar = dir.join(format!("{motd}.tar"));
    let mut b = tar::Builder::new(fs::File::create(&tar).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(motd.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    b.append_data(&mut h, "etc/motd", motd.as_bytes()).unwrap();
    b.finish().unwrap();
    let source = format!("tar:{}", tar.display());
    let mut args = vec!["import"];
    if let Some(t) = tag {
        args.extend(["--tag", t]);
    }
    args.push(&source);
    let out = ok(store, &args);
    (stdout(&out).trim().to_owned(), stderr(&out))
}

#[test]
fn moving_a_tag_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (a, _) = import_rootfs(&store, tmp.path(), "a", None);
    let (b, _) = import_rootfs(&store, tmp.path(), "b", None);
    assert_eq!(
        stdout(&ok(&store, &["tag", &a, "web"])),
        format!("web -> {a}\n")
    );
    assert_eq!(
        stdout(&ok(&store, &["tag", &a, "web"])),
        format!("web -> {a} (unchanged)\n")
    );
    assert_eq!(
        stdout(&ok(&store, &["tag", &b, "web"])),
        format!("web -> {b} (moved from {a})\n")
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&ok(&store, &["tag", "--json", &a, "web"]))).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"tag": "web", "digest": a, "previous": b})
    );
    // An import that moves a tag says so too, on stderr (stdout is the digest).
    let (c, said) = import_rootfs(&store, tmp.path(), "c", Some("web"));
    assert_eq!(said, format!("imgmount: tag web moved from {a} to {c}\n"));
    let (_, said) = import_rootfs(&store, tmp.path(), "c", Some("web"));
    assert_eq!(said, "", "importing the same image again moves nothing");
}

#[test]
fn json_for_scripts_from_rm_extract_and_create() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let (a, _) = import_rootfs(&store, tmp.path(), "a", Some("one"));
    ok(&store, &["tag", &a, "two"]);
    let (b, _) = import_rootfs(&store, tmp.path(), "b", None);

    let out = tmp.path().join("out");
    let json: serde_json::Value = serde_json::from_str(&stdout(&ok(
        &store,
        &["extract", "--json", "one", out.to_str().unwrap()],
    )))
    .unwrap();
    assert_eq!(json["dir"], out.display().to_string());
    assert!(
        json["image"]
            .as_str()
            .unwrap()
            .ends_with(&a["sha256:".len()..])
    );
    assert!(json["skipped"]["devices"].is_u64());
    assert_eq!(fs::read(out.join("etc/motd")).unwrap(), b"a");

    let json: serde_json::Value =
        serde_json::from_str(&stdout(&ok(&store, &["rm", "--json", "one", &a, &b]))).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"name": "one", "untagged": ["one"], "removed": null},
            {"name": a, "untagged": ["two"], "removed": a},
            {"name": b, "untagged": [], "removed": b},
        ])
    );

    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("f"), b"x").unwrap();
    let image = tmp.path().join("t.cfs");
    let out = Command::new(BIN)
        .args(["create", "--json"])
        .args([&tree, &image])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let digest = stdout(&ok(&store, &["digest", image.to_str().unwrap()]));
    assert_eq!(
        json,
        serde_json::json!({
            "image": image.display().to_string(),
            "digest": digest.split(' ').next().unwrap(),
            "size": fs::metadata(&image).unwrap().len(),
        })
    );
}

fn help(cmd: &str) -> String {
    let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
    assert!(out.status.success());
    stdout(&out)
}

const COMMANDS: [&str; 26] = [
    "create",
    "dump",
    "ls",
    "cat",
    "digest",
    "mount",
    "umount",
    "import",
    "pull",
    "images",
    "tag",
    "rm",
    "gc",
    "fsck",
    "extract",
    "enable-verity",
    "stats",
    "setup-root",
    "deploy",
    "status",
    "rollback",
    "bless",
    "mark-bad",
    "check",
    "keygen",
    "sign",
];

#[test]
fn help_explains_and_names_each_concept_one_way() {
    let mount = help("mount");
    for part in [
        "returns once the mount is ready",
        "a daemon stays behind",
        "syslog",
        "the kernel checks every page",
        "in user space against the",
        "-o nonempty",
        "Examples:",
        "0 turns the cache off",
    ] {
        assert!(mount.contains(part), "mount --help lacks {part:?}");
    }
    // No kernel parameter that nothing reads.
    assert!(!help("digest").contains("imgmount.digest="));

    // An option has the same metavariable in every command, and sizes are all SIZE.
    let mut seen: std::collections::BTreeMap<String, (String, &str)> = Default::default();
    for cmd in COMMANDS {
        for line in help(cmd).lines() {
            let line = line.trim_start();
            let Some(rest) = line.strip_prefix("--") else {
                continue;
            };
            let Some((name, meta)) = rest.split_once(" <") else {
                continue;
            };
            let meta = meta.split('>').next().unwrap().to_owned();
            if let Some((other, where_)) = seen.get(name) {
                assert_eq!(&meta, other, "--{name} in {cmd} and {where_}");
            }
            seen.insert(name.to_owned(), (meta, cmd));
        }
    }
    for size in ["cache-size", "max-size"] {
        assert_eq!(seen[size].0, "SIZE", "--{size}");
    }
    assert_eq!(seen["tag"].0, "TAG");
    assert_eq!(seen["verity"].0, "MODE");
}

#[test]
fn completions_and_man_pages_come_from_the_same_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for cmd in COMMANDS {
            assert!(script.contains(cmd), "{shell} completion lacks {cmd}");
        }
        assert!(
            script.contains("nonempty") || script.contains("--verity"),
            "{shell}"
        );
    }
    let out = Command::new(BIN)
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is bad usage");

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    let out = Command::new(BIN)
        .arg("manpages")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let page = |name: &str| fs::read_to_string(dir.join(format!("{name}.1"))).unwrap();
    assert!(page("imgmount").contains(".SH NAME"));
    for cmd in COMMANDS {
        let text = page(&format!("imgmount-{cmd}"));
        assert!(text.contains(&format!(".TH imgmount-{cmd} 1")), "{cmd}");
    }
    let mount = page("imgmount-mount");
    assert!(mount.contains("Detaching") && mount.contains("nonempty"));
}

#[test]
fn the_install_script_puts_everything_where_it_is_found() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("pkg");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/install.sh");
    let out = Command::new("sh")
        .arg(&script)
        .env("DESTDIR", &dest)
        .env("PREFIX", "/usr")
        .env("SBINDIR", "/usr/sbin")
        .env("IMGMOUNT_BIN", BIN)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dest.join("usr/bin/imgmount").is_file());
    assert_eq!(
        fs::read_link(dest.join("usr/sbin/mount.imgmount")).unwrap(),
        Path::new("/usr/bin/imgmount")
    );
    for f in [
        "usr/share/bash-completion/completions/imgmount",
        "usr/share/zsh/site-functions/_imgmount",
        "usr/share/fish/vendor_completions.d/imgmount.fish",
        "usr/share/man/man1/imgmount.1",
        "usr/share/man/man1/imgmount-mount.1",
    ] {
        assert!(fs::metadata(dest.join(f)).unwrap().len() > 100, "{f}");
    }
}

#[test]
fn a_tampered_object_is_refused_naming_the_file_and_the_object() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let tar = tmp.path().join("root.tar");
    let big = rootfs_tar(&tar);
    ok(
        &store,
        &["import", "--tag", "root", &format!("tar:{}", tar.display())],
    );
    let dump = stdout(&ok(&store, &["dump", "root"]));
    let line = dump.lines().find(|l| l.starts_with("/usr/big ")).unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    let (object, digest) = (fields[8], fields[10]);
    let path = store.join("objects").join(object);
    let mut bytes = fs::read(&path).unwrap();
    bytes[40_000] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let found = {
        let mut copy = big.clone();
        copy[40_000] ^= 1;
        let dir = tmp.path().join("f");
        fs::write(&dir, &copy).unwrap();
        let out = ok(&store, &["digest", dir.to_str().unwrap()]);
        stdout(&out).split(' ').next().unwrap().to_owned()
    };
    fails(
        &store,
        &["cat", "root", "/usr/big"],
        1,
        &format!(
            "refused to read /usr/big: object {} does not match the image: expected \
             sha256:{digest}, found {found}",
            path.display()
        ),
    );
}

#[test]
fn the_readme_documents_every_flag_of_every_command() {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let reference = readme
        .split("## Every command and flag")
        .nth(1)
        .expect("README has the reference section");
    let reference = reference.split("\n## ").next().unwrap();
    let blocks: Vec<&str> = reference.split("\n#### ").skip(1).collect();
    let mut commands = COMMANDS.to_vec();
    commands.extend(["completions", "manpages"]);
    for cmd in commands {
        let block = blocks
            .iter()
            .find(|b| {
                b.contains(&format!("`imgmount {cmd} ")) || b.contains(&format!("`imgmount {cmd}`"))
            })
            .unwrap_or_else(|| panic!("README documents no `imgmount {cmd}`"));
        let text = help(cmd);
        let options = text.split("\nOptions:\n").nth(1).unwrap_or_default();
        for line in options.lines() {
            // The option column: `-f, --foreground`, `--store <DIR>`.
            let Some(column) = line.trim_start().split("  ").next() else {
                continue;
            };
            let is_flag = |w: &&str| {
                let mut c = w.chars();
                c.next() == Some('-')
                    && match c.next() {
                        Some('-') => c.next().is_some_and(|c| c.is_ascii_lowercase()),
                        Some(c) => c.is_ascii_alphabetic(),
                        None => false,
                    }
            };
            for flag in column.split([',', ' ']).filter(is_flag) {
                if matches!(flag, "-h" | "--help" | "-V" | "--version") {
                    continue;
                }
                let documented = block.contains(&format!("`{flag} "))
                    || block.contains(&format!("`{flag}`"))
                    || block.contains(&format!("[{flag} "))
                    || block.contains(&format!("[{flag}]"));
                assert!(
                    documented,
                    "README does not document `imgmount {cmd} {flag}`"
                );
            }
        }
    }
}

fn composefs_c(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/composefs-c")
        .join(name)
}

#[test]
fn create_dump_and_ls_agree_with_c_composefs() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("links.cfs");
    let out = Command::new(BIN)
        .arg("create")
        .arg("--from-file")
        .arg(composefs_c("links.dump"))
        .arg(&image)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(fs::read(&image).unwrap() == fs::read(composefs_c("links.cfs")).unwrap());
    let store = tmp.path().join("store");
    let dump = ok(
        &store,
        &["dump", composefs_c("links.cfs").to_str().unwrap()],
    );
    assert_eq!(
        stdout(&dump),
        fs::read_to_string(composefs_c("links.cfs.dump")).unwrap()
    );
    // ls shows the stored link count (5 for /d/t's inode, 7 for /b), as the mount does.
    let ls = stdout(&ok(
        &store,
        &["ls", "--json", composefs_c("links.cfs").to_str().unwrap()],
    ));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&ls).unwrap();
    let nlink = |name: &str| {
        entries.iter().find(|e| e["name"] == name).unwrap()["nlink"]
            .as_u64()
            .unwrap()
    };
    assert_eq!((nlink("a"), nlink("b"), nlink("d")), (5, 7, 2));
    let big = stdout(&ok(
        &store,
        &["ls", composefs_c("links.cfs").to_str().unwrap(), "/d/big"],
    ));
    assert!(big.contains(" 4500 "), "{big}");
}

#[test]
fn a_corrupt_image_is_named_with_its_reason_once() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("cut.cfs");
    let bytes = fs::read(composefs_c("links.cfs")).unwrap();
    fs::write(&image, &bytes[..2000]).unwrap();
    let shown = image.to_str().unwrap();
    fails(
        &tmp.path().join("store"),
        &["dump", shown],
        1,
        &format!("reading {shown}: /: inode 36: directory size 4096 exceeds the image size"),
    );
}
