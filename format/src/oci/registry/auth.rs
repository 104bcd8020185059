//! Credentials for a registry, found where skopeo and podman find them
//! (containers-auth.json(5)):
//!
//! 1. `--creds USER:PASS`;
//! 2. `--authfile FILE`, or else `$REGISTRY_AUTH_FILE`, else
//!    `$XDG_RUNTIME_DIR/containers/auth.json` (`/run/containers/UID/auth.json`
//!    without it), then `$XDG_CONFIG_HOME/containers/auth.json`
//!    (`~/.config/…`), `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`)
//!    and the legacy `~/.dockercfg`: the first file with an entry wins.
//!
//! In a file, `credHelpers` (and docker's `credsStore`) name a
//! `docker-credential-NAME` program to ask; otherwise `auths` keys are
//! matched most specific first: `HOST/NS/REPO`, `HOST/NS`, …, `HOST` (keys
//! written as URLs, docker's older style, count by their host alone).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use crate::oci::reference::{DOCKER_HUB, DockerReference};
use crate::oci::registry_options::Credentials;

/// Largest auth file read.
const MAX_AUTH_FILE: u64 = 4 << 20;
/// Docker Hub's key in docker's config files.
const DOCKER_HUB_LEGACY_KEY: &str = "https://index.docker.io/v1/";

#[derive(Debug, Default, Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: HashMap<String, String>,
    #[serde(rename = "credsStore", default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

#[derive(Deserialize)]
struct HelperReply {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The auth files to search, in order.
pub fn default_auth_files() -> Vec<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env("HOME");
    let mut out = Vec::new();
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        out.push(f);
    } else if let Some(run) = env("XDG_RUNTIME_DIR") {
        out.push(run.join("containers/auth.json"));
    } else {
        // SAFETY: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        out.push(PathBuf::from(format!("/run/containers/{uid}/auth.json")));
    }
    match (env("XDG_CONFIG_HOME"), &home) {
        (Some(c), _) => out.push(c.join("containers/auth.json")),
        (None, Some(h)) => out.push(h.join(".config/containers/auth.json")),
        (None, None) => {}
    }
    match (env("DOCKER_CONFIG"), &home) {
        (Some(d), _) => out.push(d.join("config.json")),
        (None, Some(h)) => out.push(h.join(".docker/config.json")),
        (None, None) => {}
    }
    if let Some(h) = &home {
        out.push(h.join(".dockercfg"));
    }
    out
}

/// A key of `auths` as the registry (and path) it stands for.
fn normalize_key(key: &str) -> String {
    let key = match key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
    {
        // URL-style keys are docker's: only the host counts.
        Some(rest) => rest.split('/').next().unwrap_or(rest),
        None => key,
    };
    match key {
        "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
        k => k
            .strip_prefix("index.docker.io/")
            .map_or_else(|| k.to_owned(), |rest| format!("{DOCKER_HUB}/{rest}")),
    }
}

/// The keys a reference's credentials may be under, most specific first.
fn candidate_keys(reference: &DockerReference) -> Vec<String> {
    let mut out = Vec::new();
    let mut name = reference.name();
    loop {
        out.push(name.clone());
        match name.rfind('/') {
            Some(i) => name.truncate(i),
            None => break,
        }
    }
    out
}

fn decode_auth(auth: &str, file: &Path) -> Result<Credentials, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| format!("{}: an \"auth\" value is not base64", file.display()))?;
    let text = String::from_utf8(raw)
        .map_err(|_| format!("{}: an \"auth\" value is not UTF-8", file.display()))?;
    text.parse()
        .map_err(|_| format!("{}: an \"auth\" value is not USER:PASS", file.display()))
}

fn read_auth_file(path: &Path) -> Result<Option<AuthFile>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut text = String::new();
    file.take(MAX_AUTH_FILE)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
    // The legacy ~/.dockercfg is the `auths` map itself.
    let value = if value.get("auths").is_none()
        && value.get("credHelpers").is_none()
        && value.get("credsStore").is_none()
        && path.file_name().is_some_and(|n| n == ".dockercfg")
    {
        serde_json::json!({ "auths": value })
    } else {
        value
    };
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| format!("{} is not an auth file: {e}", path.display()))
}

/// Asks `docker-credential-HELPER get` for a registry's credentials.
fn ask_helper(helper: &str, registry: &str) -> Result<Option<Credentials>, String> {
    let server = if registry == DOCKER_HUB {
        DOCKER_HUB_LEGACY_KEY
    } else {
        registry
    };
    let program = format!("docker-credential-{helper}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run the credential helper {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("credential helper {program}: {e}"))?;
    if !out.status.success() {
        // Helpers exit non-zero for "no credentials for this server".
        return Ok(None);
    }
    let reply: HelperReply = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("credential helper {program} answered nonsense: {e}"))?;
    if reply.username == "<token>" {
        // An identity token (OAuth refresh token) is not a password.
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: reply.username,
        password: reply.secret,
    }))
}

/// Credentials for `reference` in one parsed auth file.
fn lookup_in(
    file: &AuthFile,
    path: &Path,
    reference: &DockerReference,
) -> Result<Option<Credentials>, String> {
    let helpers: HashMap<String, &String> = file
        .cred_helpers
        .iter()
        .map(|(k, v)| (normalize_key(k), v))
        .collect();
    if let Some(helper) = helpers.get(&reference.registry) {
        return ask_helper(helper, &reference.registry);
    }
    let auths: HashMap<String, &AuthEntry> = file
        .auths
        .iter()
        .map(|(k, v)| (normalize_key(k), v))
        .collect();
    for key in candidate_keys(reference) {
        if let Some(entry) = auths.get(&key) {
            match &entry.auth {
                Some(a) if !a.is_empty() => return decode_auth(a, path).map(Some),
                // An empty entry stands for the default helper's credentials.
                _ => break,
            }
        }
    }
    match &file.creds_store {
        Some(store) if !store.is_empty() => ask_helper(store, &reference.registry),
        _ => Ok(None),
    }
}

/// Finds the credentials to use for `reference`: `creds` if given, else the
/// first auth file (of `files`) with an entry for it. `None` means anonymous.
pub fn find_credentials(
    reference: &DockerReference,
    creds: Option<&Credentials>,
    files: &[PathBuf],
) -> Result<Option<Credentials>, String> {
    if let Some(c) = creds {
        return Ok(Some(c.clone()));
    }
    for path in files {
        let Some(file) = read_auth_file(path)? else {
            continue;
        };
        if let Some(c) = lookup_in(&file, path, reference)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn reference(s: &str) -> DockerReference {
        DockerReference::parse(s).unwrap()
    }

    #[test]
    fn most_specific_key_wins_across_files() {
        let dir = tempfile::tempdir().unwrap();
        let containers = dir.path().join("auth.json");
        std::fs::write(
            &containers,
            serde_json::json!({"auths": {
                "reg.example:5000": {"auth": b64("host:h")},
                "reg.example:5000/team": {"auth": b64("team:t")},
            }})
            .to_string(),
        )
        .unwrap();
        let docker = dir.path().join("config.json");
        std::fs::write(
            &docker,
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": b64("hub:pa:ss")},
                "https://other.example/v1/": {"auth": b64("o:o")},
            }})
            .to_string(),
        )
        .unwrap();
        let files = vec![dir.path().join("missing.json"), containers, docker];
        let find = |r: &str| {
            find_credentials(&reference(r), None, &files)
                .unwrap()
                .map(|c| (c.username, c.password))
        };
        assert_eq!(
            find("reg.example:5000/team/app:1"),
            Some(("team".into(), "t".into()))
        );
        assert_eq!(
            find("reg.example:5000/other/app"),
            Some(("host".into(), "h".into()))
        );
        assert_eq!(find("debian:12"), Some(("hub".into(), "pa:ss".into())));
        assert_eq!(find("other.example/x"), Some(("o".into(), "o".into())));
        assert_eq!(find("nowhere.example/x"), None);
        let given: Credentials = "cli:pw".parse().unwrap();
        let c = find_credentials(
            &reference("reg.example:5000/team/app"),
            Some(&given),
            &files,
        )
        .unwrap();
        assert_eq!(c, Some(given));
    }

    #[test]
    fn broken_files_say_which() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, b"{not json").unwrap();
        let err =
            find_credentials(&reference("h.io/x"), None, std::slice::from_ref(&f)).unwrap_err();
        assert!(err.contains("auth.json"), "{err}");
        std::fs::write(
            &f,
            serde_json::json!({"auths": {"h.io": {"auth": "!!!"}}}).to_string(),
        )
        .unwrap();
        let err = find_credentials(&reference("h.io/x"), None, &[f]).unwrap_err();
        assert!(err.contains("base64"), "{err}");
    }

    #[test]
    fn legacy_dockercfg_and_key_forms() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join(".dockercfg");
        std::fs::write(
            &f,
            serde_json::json!({"https://h.io": {"auth": b64("u:p")}}).to_string(),
        )
        .unwrap();
        let c = find_credentials(&reference("h.io/x"), None, &[f])
            .unwrap()
            .unwrap();
        assert_eq!(c.username, "u");
        assert_eq!(
            normalize_key("index.docker.io/library"),
            "docker.io/library"
        );
        assert_eq!(normalize_key("http://h:5000/v2/"), "h:5000");
        assert_eq!(
            candidate_keys(&reference("h:1/a/b/c")),
            ["h:1/a/b/c", "h:1/a/b", "h:1/a", "h:1"]
        );
    }
}
