//! `docker://` against a real registry: Debian's `docker-registry`, started
//! here on 127.0.0.1 with its own config and a temporary storage directory,
//! images pushed to it by `skopeo copy`, and a counting proxy in front that can
//! also lie (flip a byte, send too much, go slowly).
//!
//! What is shown: a pulled image is the image `imgmount import oci:` makes of
//! the same layout, and extracts and mounts to what `umoci unpack` gives; a
//! second image costs only its new layer; a pull killed mid-blob leaves the
//! store as it was and the next pull resumes (fetching the blob ≈ once); a
//! lying registry, a missing tag, missing credentials and a missing platform
//! are refused with a message that says so, the store unchanged; Basic and
//! token auth; TLS checked against the system's roots.
//!
//! Needs root and FUSE (for the mount and for umoci's ownership and devices)
//! and docker-registry, skopeo, umoci, htpasswd and openssl: skipped with a
//! reason otherwise, a failure under CI=true.

mod common;
mod registry;
mod umoci_image;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Mounted, data};
use registry::{
    Auth, Certs, PASS, Proxy, Registry, Tamper, TokenServer, USER, image_sizes, store_snapshot,
};
use umoci_image::{
    assert_same_tree, build_image, gnu_tar, imgmount, require_tools, sh, tools_present, write,
};

/// Root, FUSE, umoci, skopeo and tar, and the registry's tools.
fn tools(test: &str) -> bool {
    tools_present(test)
        && require_tools(
            test,
            &[
                ("docker-registry", &["--version"]),
                ("htpasswd", &["-nb", "a", "b"]),
                ("openssl", &["version"]),
            ],
        )
}

/// The test image pushed as `test/img:v1` to a registry without auth, a
/// proxy in front of it, and a store with other content.
struct World {
    tmp: tempfile::TempDir,
    img: PathBuf,
    reg: Registry,
    proxy: Proxy,
    store: PathBuf,
    /// `PROXY/test/img:v1`.
    image: String,
}

impl World {
    fn new() -> World {
        let tmp = scratch();
        let w = tmp.path();
        let img = build_image(w, "t");
        let reg = Registry::start(&w.join("registry"), Auth::None, None);
        reg.push(&format!("{}:t", img.display()), "test/img:v1", false);
        let proxy = Proxy::start(&reg.addr);
        let store = store_with_content(w);
        let image = format!("{}/test/img:v1", proxy.addr);
        World {
            tmp,
            img,
            reg,
            proxy,
            store,
            image,
        }
    }
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("imgmount-registry-")
        .tempdir_in(std::env::var_os("IMGMOUNT_TEST_DIR").unwrap_or_else(|| "/var/tmp".into()))
        .unwrap()
}

/// Runs imgmount with `args` and `--store STORE`.
fn run(store: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--store").arg(store);
    // No auth file of this machine's user must leak into the tests.
    cmd.env("REGISTRY_AUTH_FILE", "/nonexistent/auth.json")
        .env("DOCKER_CONFIG", "/nonexistent");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `imgmount pull --json --tls-verify=false IMAGE …`, which must succeed.
fn pull(store: &Path, image: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["pull", "--json", "--tls-verify=false", image];
    args.extend_from_slice(extra);
    let out = run(store, &args, &[]);
    assert!(
        out.status.success(),
        "pull {image} failed: {}",
        stderr(&out)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `imgmount pull` that must fail with exit 1; returns its stderr.
fn pull_fails(store: &Path, image: &str, extra: &[&str], envs: &[(&str, &str)]) -> String {
    let mut args = vec!["pull", image];
    args.extend_from_slice(extra);
    let out = run(store, &args, envs);
    assert_eq!(
        out.status.code(),
        Some(1),
        "pull {image} {extra:?} should fail: {}{}",
        stderr(&out),
        String::from_utf8_lossy(&out.stdout)
    );
    stderr(&out)
}

fn import_digest(store: &Path, layout: &Path, tag: &str) -> String {
    imgmount(
        &["import", &format!("oci:{}:{tag}", layout.display())],
        store,
    )
    .trim()
    .to_owned()
}

/// A store holding one small image already (imported from a tarball, so its
/// tmp/ exists too), so "unchanged" is about a store with content.
fn store_with_content(w: &Path) -> PathBuf {
    let store = w.join("store");
    let d = w.join("other-root");
    write(&d, "etc/motd", b"another image\n", 0o644);
    write(&d, "data/blob", &data(99, 20_000), 0o644);
    let tar = w.join("other-root.tar");
    gnu_tar(&d, &tar);
    imgmount(&["import", &format!("tar:{}", tar.display())], &store);
    store
}

fn unpack(layout: &Path, tag: &str, out: &Path) -> PathBuf {
    sh(Command::new("umoci")
        .args(["unpack", "--image", &format!("{}:{tag}", layout.display())])
        .arg(out));
    out.join("rootfs")
}

/// The test image plus one layer: a second image sharing its base layers.
fn add_layer(w: &Path, layout: &Path, from: &str, to: &str) -> PathBuf {
    let d = w.join(format!("extra-{to}"));
    write(&d, "srv/new-file", &data(4242, 300_000), 0o644);
    write(&d, "srv/note", b"only in the second image\n", 0o644);
    let tar = w.join(format!("extra-{to}.tar"));
    gnu_tar(&d, &tar);
    sh(Command::new("umoci")
        .args(["raw", "add-layer", "--image"])
        .arg(format!("{}:{from}", layout.display()))
        .args(["--tag", to])
        .arg(&tar));
    tar
}

#[test]
fn a_pulled_image_is_the_imported_image_and_shares_layers() {
    if !tools("a_pulled_image_is_the_imported_image_and_shares_layers") {
        return;
    }
    let tmp = scratch();
    let w = tmp.path();
    let img = build_image(w, "t");
    add_layer(w, &img, "t", "t2");
    let reg = Registry::start(&w.join("registry"), Auth::None, None);
    reg.push(&format!("{}:t", img.display()), "test/img:v1", false);
    reg.push(&format!("{}:t2", img.display()), "test/app:v2", false);
    let proxy = Proxy::start(&reg.addr);
    let store = w.join("store");

    // The image, as pulled, is the image an OCI import makes of the layout.
    let v1 = format!("{}/test/img:v1", proxy.addr);
    let pulled = pull(&store, &v1, &[]);
    let digest = pulled["digest"].as_str().unwrap().to_owned();
    assert_eq!(digest, import_digest(&w.join("oci-store"), &img, "t"));
    assert_eq!(pulled["tag"], v1.as_str());
    let sizes = image_sizes(&img, "t");
    let blobs: u64 = sizes.layers.iter().map(|l| l.1).sum();
    assert_eq!(pulled["fetched_bytes"], blobs, "each blob fetched once");
    assert!(
        fs::read_dir(store.join("downloads/sha256"))
            .unwrap()
            .next()
            .is_none(),
        "a pull that succeeded leaves no downloads"
    );

    // Extracted and mounted, it is what umoci unpacks.
    let rootfs = unpack(&img, "t", &w.join("bundle"));
    let out = w.join("extract");
    imgmount(&["extract", &digest, out.to_str().unwrap()], &store);
    assert_same_tree("extract of the pulled image", &rootfs, &out);
    let mnt = w.join("mnt");
    fs::create_dir(&mnt).unwrap();
    let image = store
        .join("images")
        .join(digest.trim_start_matches("sha256:"));
    let m = Mounted::new(&image, &mnt, &store.join("objects"), &[]);
    assert_same_tree("mount of the pulled image", &rootfs, &mnt);
    m.unmount();

    // A second image sharing the base layers costs its new layer, manifest
    // and config, even from another repository.
    let sizes2 = image_sizes(&img, "t2");
    let new_layer = sizes2.layers.last().unwrap().1;
    proxy.reset();
    let v2 = format!("{}/test/app:v2", proxy.addr);
    let second = pull(&store, &v2, &[]);
    let served = proxy.content_bytes();
    eprintln!(
        "second image: {served} bytes served; new layer {new_layer}, manifest {}, config {}",
        sizes2.manifest, sizes2.config
    );
    assert!(
        served <= new_layer + sizes2.manifest + sizes2.config,
        "the registry served {served} bytes for the second image; its new layer has \
         {new_layer}, manifest {} and config {}",
        sizes2.manifest,
        sizes2.config
    );
    assert_eq!(second["reused_layers"], 3);
    assert_eq!(second["fetched_bytes"], new_layer);
    assert_eq!(
        second["digest"].as_str().unwrap(),
        import_digest(&w.join("oci-store"), &img, "t2")
    );

    // The same manifest again is the same image, for free: a pull, an OCI
    // import of the layout, and a mount of the SOURCE alike.
    proxy.reset();
    let again = pull(&store, &v1, &[]);
    assert_eq!(again["digest"], digest.as_str());
    assert_eq!(again["reused_image"], true);
    assert!(proxy.content_bytes() <= sizes.manifest + sizes.config);
    let json = imgmount(
        &["import", "--json", &format!("oci:{}:t", img.display())],
        &store,
    );
    assert!(json.contains("\"reused_image\": true"), "{json}");
    proxy.reset();
    let out = Command::new(BIN)
        .args(["mount", "--tls-verify=false", &format!("docker://{v1}")])
        .arg(&mnt)
        .arg("--store")
        .arg(&store)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount docker://: {}", stderr(&out));
    let m = Mounted { mnt: mnt.clone() };
    assert_eq!(
        fs::read(mnt.join("data/big")).unwrap(),
        data(3, 5 << 20),
        "the mount serves the pulled content"
    );
    m.unmount();
    assert!(proxy.content_bytes() <= sizes.manifest + sizes.config);

    // The store is sound; gc keeps what the images and their records need,
    // and lets layer records go with the last image using them.
    imgmount(&["fsck"], &store);
    let gc = imgmount(&["gc", "--json"], &store);
    assert!(gc.contains("\"removed_objects\": 0"), "{gc}");
    assert!(gc.contains("\"removed_layer_records\": 0"), "{gc}");
    imgmount(&["rm", &digest, second["digest"].as_str().unwrap()], &store);
    let gc = imgmount(&["gc", "--json"], &store);
    assert!(!gc.contains("\"removed_layer_records\": 0"), "{gc}");
    assert_eq!(
        fs::read_dir(store.join("layers/sha256")).unwrap().count(),
        0
    );
    // With nothing left to reuse, everything is downloaded again.
    let fresh = pull(&store, &v1, &[]);
    assert_eq!(fresh["fetched_bytes"], blobs);
    assert_eq!(fresh["digest"], digest.as_str());
}

#[test]
fn a_pull_killed_mid_blob_changes_nothing_and_resumes() {
    if !tools("a_pull_killed_mid_blob_changes_nothing_and_resumes") {
        return;
    }
    let World {
        tmp,
        img,
        reg: _registry,
        proxy,
        store,
        image,
    } = World::new();
    let w = tmp.path();
    let before = store_snapshot(&store, false);
    let (big, size) = image_sizes(&img, "t")
        .layers
        .into_iter()
        .max_by_key(|l| l.1)
        .unwrap();
    assert!(size > 4 << 20, "the large layer has {size} bytes");
    proxy.tamper(Tamper {
        slow: Some((big.clone(), 1 << 20)),
        ..Tamper::default()
    });
    let mut child = Command::new(BIN)
        .args(["pull", "--tls-verify=false", &image, "--store"])
        .arg(&store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = store.join("downloads/sha256").join(&big[7..]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have >= size * 2 / 5 {
            break;
        }
        assert!(Instant::now() < deadline, "the download did not progress");
        assert!(child.try_wait().unwrap().is_none(), "the pull ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept = fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < size, "{kept} of {size} bytes kept");
    assert_eq!(
        store_snapshot(&store, false),
        before,
        "a killed pull changed the store"
    );

    proxy.tamper(Tamper::default());
    let done = pull(&store, &image, &[]);
    let fetched = proxy.blob_bytes(&big);
    eprintln!("resume: {kept} of {size} bytes kept at the kill, {fetched} fetched in all");
    assert!(
        fetched >= size && fetched * 10 <= size * 11,
        "the blob of {size} bytes took {fetched} bytes over both pulls"
    );
    assert_eq!(
        done["digest"].as_str().unwrap(),
        import_digest(&w.join("oci-store"), &img, "t")
    );
    assert!(!partial.exists(), "the download is gone once committed");
    imgmount(&["fsck"], &store);
}

#[test]
fn lying_registries_and_missing_tags_change_nothing() {
    if !tools("lying_registries_and_missing_tags_change_nothing") {
        return;
    }
    let world = World::new();
    let (proxy, store, image) = (&world.proxy, &world.store, &world.image);
    let before = store_snapshot(store, true);
    let layers = image_sizes(&world.img, "t").layers;
    let no_download = |digest: &str| {
        let path = store.join("downloads/sha256").join(&digest[7..]);
        assert!(!path.exists(), "a bad blob was kept: {path:?}");
    };

    // One flipped byte in each blob in turn: refused, naming the blob. (The
    // other blobs a failed pull downloaded are kept for the next pull: clear
    // them, so each round downloads the blob it flips.)
    for (digest, size) in &layers {
        let _ = fs::remove_dir_all(store.join("downloads"));
        proxy.tamper(Tamper {
            flip: Some((digest.clone(), size / 2)),
            ..Tamper::default()
        });
        let err = pull_fails(store, image, &["--tls-verify=false"], &[]);
        assert!(
            err.contains(digest.as_str()),
            "error does not name {digest}: {err}"
        );
        assert_eq!(store_snapshot(store, true), before, "after a flipped byte");
        no_download(digest);
    }

    // A blob longer than its descriptor says.
    let _ = fs::remove_dir_all(store.join("downloads"));
    let (digest, _) = &layers[0];
    proxy.tamper(Tamper {
        extra: Some(digest.clone()),
        ..Tamper::default()
    });
    let err = pull_fails(store, image, &["--tls-verify=false"], &[]);
    assert!(
        err.contains(digest.as_str()) && err.contains("more than"),
        "{err}"
    );
    assert_eq!(store_snapshot(store, true), before, "after a wrong size");
    no_download(digest);
    proxy.tamper(Tamper::default());

    // A manifest without end, stated or not: refused once it passes the bound
    // of a JSON document, long before it is all sent.
    for stated in [Some(10 << 30), None] {
        proxy.reset();
        proxy.tamper(Tamper {
            flood_manifests: Some(stated),
            ..Tamper::default()
        });
        let err = pull_fails(store, image, &["--tls-verify=false"], &[]);
        assert!(
            err.contains("tag v1") && err.contains("more than the 16777216 bytes"),
            "{err}"
        );
        // The proxy records the flood once its writes fail, after the pull hung up.
        let mut flooded = None;
        for _ in 0..100 {
            let served = proxy.served();
            let manifests = served.iter().filter(|s| s.path.contains("/manifests/"));
            if manifests.clone().next().is_some() {
                flooded = Some(manifests.map(|s| s.body).sum::<u64>());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let flooded = flooded.expect("the proxy served no manifest");
        assert!(flooded < 256 << 20, "{flooded} bytes read of a flood");
        assert_eq!(store_snapshot(store, true), before, "after a flood");
    }
    proxy.tamper(Tamper::default());

    // A tag the registry does not have, and a repository it does not have.
    let err = pull_fails(
        store,
        &format!("{}/test/img:nope", proxy.addr),
        &["--tls-verify=false"],
        &[],
    );
    assert!(
        err.contains("tag nope") && err.contains("no such tag"),
        "{err}"
    );
    let err = pull_fails(
        store,
        &format!("{}/test/none:v1", proxy.addr),
        &["--tls-verify=false"],
        &[],
    );
    assert!(err.contains("test/none"), "{err}");
    // A registry that speaks no TLS, without --tls-verify=false.
    let err = pull_fails(store, image, &[], &[]);
    assert!(err.contains("--tls-verify=false"), "{err}");
    // Nothing listening.
    let err = pull_fails(
        store,
        "127.0.0.1:9/test/img:v1",
        &["--tls-verify=false"],
        &[],
    );
    assert!(err.contains("cannot connect"), "{err}");
    assert_eq!(store_snapshot(store, true), before);
}

/// Adds to the layout an arm64 image and an index `multi` of it and `t`.
fn add_index(w: &Path, layout: &Path) {
    let l = layout.display();
    sh(Command::new("umoci").args(["new", "--image", &format!("{l}:arm")]));
    sh(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{l}:arm"),
        "--architecture",
        "arm64",
    ]));
    let d = w.join("arm-root");
    write(&d, "etc/arch", b"arm64\n", 0o644);
    let tar = w.join("arm.tar");
    gnu_tar(&d, &tar);
    sh(Command::new("umoci")
        .args(["raw", "add-layer", "--image", &format!("{l}:arm")])
        .arg(&tar));
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let entry = |tag: &str| {
        index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .unwrap()
            .clone()
    };
    let with_platform = |mut e: serde_json::Value, p: serde_json::Value| {
        e.as_object_mut().unwrap().remove("annotations");
        e["platform"] = p;
        e
    };
    let multi = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            with_platform(entry("t"), serde_json::json!({"os": "linux", "architecture": "amd64"})),
            with_platform(entry("arm"), serde_json::json!(
                {"os": "linux", "architecture": "arm64", "variant": "v8"})),
        ],
    });
    let bytes = multi.to_string().into_bytes();
    let hex = common::sha256_hex(&bytes);
    fs::write(layout.join("blobs/sha256").join(&hex), &bytes).unwrap();
    index["manifests"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }));
    fs::write(&index_path, index.to_string()).unwrap();
}

#[test]
fn an_index_gives_the_platform_asked_for_or_lists_its_platforms() {
    if !tools("an_index_gives_the_platform_asked_for_or_lists_its_platforms") {
        return;
    }
    let tmp = scratch();
    let w = tmp.path();
    let img = build_image(w, "t");
    add_index(w, &img);
    let reg = Registry::start(&w.join("registry"), Auth::None, None);
    reg.push(&format!("{}:multi", img.display()), "test/multi:v1", true);
    let store = store_with_content(w);
    let image = format!("{}/test/multi:v1", reg.addr);

    let before = store_snapshot(&store, true);
    let err = pull_fails(
        &store,
        &image,
        &["--tls-verify=false", "--platform", "linux/s390x"],
        &[],
    );
    assert!(
        err.contains("no linux/s390x image")
            && err.contains("linux/amd64")
            && err.contains("linux/arm64/v8"),
        "{err}"
    );
    assert_eq!(store_snapshot(&store, true), before);

    // By default this machine's platform (the CI machines are linux/amd64).
    if cfg!(target_arch = "x86_64") {
        let amd = pull(&store, &image, &[]);
        assert_eq!(
            amd["digest"].as_str().unwrap(),
            import_digest(&w.join("oci-store"), &img, "t")
        );
    }
    let arm = pull(
        &store,
        &image,
        &["--platform", "linux/arm64", "--tag", "arm"],
    );
    let arm_digest = arm["digest"].as_str().unwrap();
    assert_eq!(arm_digest, import_digest(&w.join("oci-store"), &img, "arm"));
    let arm_image = store.join("images").join(&arm_digest[7..]);
    let listing = sh(Command::new(BIN).arg("ls").arg(&arm_image).arg("/etc"));
    assert!(listing.contains("arch"), "{listing}");
    let err = pull_fails(
        &store,
        &image,
        &["--tls-verify=false", "--platform", "linux/arm64/v7"],
        &[],
    );
    assert!(err.contains("linux/arm64/v8"), "{err}");
}

#[test]
fn basic_and_token_auth() {
    if !tools("basic_and_token_auth") {
        return;
    }
    let tmp = scratch();
    let w = tmp.path();
    let img = build_image(w, "t");
    let layout = format!("{}:t", img.display());
    let want = import_digest(&w.join("oci-store"), &img, "t");
    let creds = format!("{USER}:{PASS}");

    // htpasswd: Basic auth.
    let reg = Registry::start(&w.join("basic"), Auth::Basic, None);
    reg.push(&layout, "test/img:v1", false);
    let image = format!("{}/test/img:v1", reg.addr);
    let store = store_with_content(w);
    let before = store_snapshot(&store, true);
    let err = pull_fails(&store, &image, &["--tls-verify=false"], &[]);
    assert!(
        err.contains("needs credentials") && err.contains("--creds"),
        "{err}"
    );
    let err = pull_fails(
        &store,
        &image,
        &["--tls-verify=false", "--creds", "tester:wrong"],
        &[],
    );
    assert!(err.contains("refused"), "{err}");
    assert_eq!(store_snapshot(&store, true), before);
    let got = pull(&store, &image, &["--creds", &creds]);
    assert_eq!(got["digest"], want.as_str());
    // From an auth file, as `skopeo login` writes it: named, or found by
    // REGISTRY_AUTH_FILE.
    let auth_file = w.join("auth.json");
    fs::write(
        &auth_file,
        serde_json::json!({"auths": {reg.addr.clone(): {"auth":
            base64_of(&creds)}}})
        .to_string(),
    )
    .unwrap();
    let s2 = w.join("store2");
    let got = pull(&s2, &image, &["--authfile", auth_file.to_str().unwrap()]);
    assert_eq!(got["digest"], want.as_str());
    let s3 = w.join("store3");
    let out = run(
        &s3,
        &["pull", "--tls-verify=false", &image],
        &[("REGISTRY_AUTH_FILE", auth_file.to_str().unwrap())],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    drop(reg);

    // Token auth: the registry's challenge names a token service, which wants
    // the credentials and answers with a signed JWT.
    let tokens = TokenServer::start(&w.join("tokens"));
    let counts = std::sync::Arc::clone(&tokens.requests);
    let reg = Registry::start(&w.join("token"), Auth::Token(tokens), None);
    reg.push(&layout, "test/img:v1", false);
    let image = format!("{}/test/img:v1", reg.addr);
    let store = store_with_content(&w.join("t"));
    let before = store_snapshot(&store, true);
    let err = pull_fails(&store, &image, &["--tls-verify=false"], &[]);
    assert!(
        err.contains("token service") && err.contains("incorrect username or password"),
        "{err}"
    );
    assert_eq!(store_snapshot(&store, true), before);
    let got = pull(&store, &image, &["--creds", &creds]);
    assert_eq!(got["digest"], want.as_str());
    let (asked, refused) = *counts.lock().unwrap();
    assert!(
        asked > refused && refused >= 1,
        "{asked} token requests, {refused} refused"
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn tls_is_checked_against_the_system_roots() {
    if !tools("tls_is_checked_against_the_system_roots") {
        return;
    }
    let tmp = scratch();
    let w = tmp.path();
    let img = build_image(w, "t");
    let certs = Certs::new(&w.join("certs"));
    let reg = Registry::start(&w.join("registry"), Auth::None, Some(&certs));
    reg.push(&format!("{}:t", img.display()), "test/img:v1", false);
    let image = format!("{}/test/img:v1", reg.addr);
    let store = store_with_content(w);
    let before = store_snapshot(&store, true);
    // Not signed by a CA the system trusts: refused.
    let err = pull_fails(&store, &image, &[], &[]);
    assert!(err.contains("not trusted"), "{err}");
    assert_eq!(store_snapshot(&store, true), before);
    // The CA added to the roots (as SSL_CERT_FILE names them): verified.
    let ca = certs.ca.to_str().unwrap();
    let out = run(
        &store,
        &["pull", "--json", &image],
        &[("SSL_CERT_FILE", ca)],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let want = import_digest(&w.join("oci-store"), &img, "t");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&want));
    // Or no check at all, over TLS still.
    let s2 = w.join("store2");
    let got = pull(&s2, &image, &[]);
    assert_eq!(got["digest"], want.as_str());
}

/// Not a test: writes the test image as an OCI layout (tag `t`) to
/// $IMGMOUNT_TEST_IMAGE_OUT, for benches/pull_compare.sh.
#[test]
#[ignore]
fn write_the_test_image() {
    let Some(out) = std::env::var_os("IMGMOUNT_TEST_IMAGE_OUT") else {
        panic!("set IMGMOUNT_TEST_IMAGE_OUT to the layout directory to write");
    };
    let tmp = scratch();
    let img = build_image(tmp.path(), "t");
    sh(Command::new("cp").arg("-a").arg(&img).arg(&out));
}
