//! A real registry for the pull tests: Debian's `docker-registry` (the
//! distribution registry) on 127.0.0.1 with its own config and storage in a
//! temporary directory, optionally behind htpasswd or token auth or TLS; a
//! counting (and, when asked, lying) HTTP proxy in front of it; and a small
//! token server minting JWTs the registry trusts.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::umoci_image::sh;

/// Credentials of the test user.
pub const USER: &str = "tester";
pub const PASS: &str = "s3cret:with:colons";
const SERVICE: &str = "imgmount-test";
const ISSUER: &str = "imgmount-test-issuer";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

/// How the registry checks who pulls.
pub enum Auth {
    None,
    /// htpasswd (bcrypt) Basic auth for [`USER`]:[`PASS`].
    Basic,
    /// Bearer tokens from a [`TokenServer`].
    Token(TokenServer),
}

/// A running `docker-registry serve`, killed when dropped.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub dir: PathBuf,
    pub tls: bool,
    _auth: Auth,
}

/// A CA and a certificate for 127.0.0.1 it signed, made with openssl.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `openssl ARGS…` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    sh(Command::new("openssl").args(args).current_dir(dir));
}

/// A self-signed certificate and its key (`NAME.pem`, `NAME.key`) in `dir`.
fn self_signed(dir: &Path, name: &str, subject: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    let args = [
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", subject, "-keyout",
        &key, "-out", &pem,
    ];
    openssl(dir, &args);
}

impl Certs {
    pub fn new(dir: &Path) -> Certs {
        fs::create_dir_all(dir).unwrap();
        let p = |n: &str| dir.join(n);
        let openssl = |args: &[&str]| openssl(dir, args);
        self_signed(dir, "ca", "/CN=imgmount test CA");
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "req.csr",
        ]);
        fs::write(
            p("ext.cnf"),
            "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "cert.pem",
        ]);
        Certs {
            ca: p("ca.pem"),
            cert: p("cert.pem"),
            key: p("key.pem"),
        }
    }
}

impl Registry {
    /// Starts a registry storing under `dir/storage`.
    pub fn start(dir: &Path, auth: Auth, tls: Option<&Certs>) -> Registry {
        fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth_cfg = match &auth {
            Auth::None => String::new(),
            Auth::Basic => {
                let out = sh(Command::new("htpasswd").args(["-Bbn", USER, PASS]));
                fs::write(dir.join("htpasswd"), out).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: test\n    path: {}\n",
                    dir.join("htpasswd").display()
                )
            }
            Auth::Token(t) => format!(
                "auth:\n  token:\n    realm: http://{}/token\n    service: {SERVICE}\n    \
                 issuer: {ISSUER}\n    rootcertbundle: {}\n",
                t.addr,
                t.cert.display()
            ),
        };
        let tls_cfg = match tls {
            Some(c) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                c.cert.display(),
                c.key.display()
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n{tls_cfg}{auth_cfg}",
            dir.join("storage").display()
        );
        fs::write(dir.join("config.yml"), config).unwrap();
        let log = fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let reg = Registry {
            child,
            addr,
            dir: dir.to_owned(),
            tls: tls.is_some(),
            _auth: auth,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(&self.addr).is_ok() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not start:\n{}",
            fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
        );
    }

    /// `skopeo copy oci:LAYOUT docker://ADDR/REPO` (with `--all` for an index).
    pub fn push(&self, layout: &str, repo_tag: &str, all: bool) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "-q", "--dest-tls-verify=false"]);
        if !matches!(self._auth, Auth::None) {
            cmd.arg(format!("--dest-creds={USER}:{PASS}"));
        }
        if all {
            cmd.arg("--all");
        }
        cmd.arg(format!("oci:{layout}"))
            .arg(format!("docker://{}/{repo_tag}", self.addr));
        sh(&mut cmd);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One response the proxy relayed.
#[derive(Clone, Debug)]
pub struct Served {
    pub method: String,
    pub path: String,
    pub status: u16,
    /// Body bytes sent to the client.
    pub body: u64,
}

/// What the proxy does to blobs, besides counting.
#[derive(Default)]
pub struct Tamper {
    /// Flip a bit of the byte at this offset of the blob with this digest.
    pub flip: Option<(String, u64)>,
    /// Send this blob with bytes appended (and a Content-Length that says so).
    pub extra: Option<String>,
    /// Send this blob at most this many bytes per second.
    pub slow: Option<(String, u64)>,
    /// Answer every manifest GET with 200 and junk without end (until the client
    /// hangs up, or 1 GiB), stating this Content-Length, or none.
    pub flood_manifests: Option<Option<u64>>,
}

#[derive(Default)]
struct ProxyState {
    served: Vec<Served>,
    tamper: Tamper,
}

/// A counting HTTP/1.1 proxy in front of a registry (plain HTTP).
pub struct Proxy {
    pub addr: String,
    state: Arc<Mutex<ProxyState>>,
    stop: Arc<AtomicBool>,
}

fn read_head(r: &mut impl BufRead) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            return Some(lines);
        }
        lines.push(line);
    }
}

fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The head with `Connection: close` and, if given, a new Content-Length.
fn rewrite(head: &[String], content_length: Option<u64>) -> String {
    let mut out = String::new();
    for (i, l) in head.iter().enumerate() {
        let name = l
            .split_once(':')
            .map(|(k, _)| k.trim().to_ascii_lowercase());
        if i > 0
            && (name.as_deref() == Some("connection")
                || (content_length.is_some() && name.as_deref() == Some("content-length")))
        {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    if let Some(n) = content_length {
        out.push_str(&format!("Content-Length: {n}\r\n"));
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn relay(client: TcpStream, upstream: &str, state: &Mutex<ProxyState>) -> Option<()> {
    let mut client_r = BufReader::new(client.try_clone().ok()?);
    let mut client_w = client;
    let req = read_head(&mut client_r)?;
    let mut first = req.first()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let mut up = TcpStream::connect(upstream).ok()?;
    up.write_all(rewrite(&req, None).as_bytes()).ok()?;
    let mut up_r = BufReader::new(up.try_clone().ok()?);
    let resp = read_head(&mut up_r)?;
    let status: u16 = resp.first()?.split(' ').nth(1)?.parse().ok()?;
    let flood = state.lock().unwrap().tamper.flood_manifests;
    if let Some(length) = flood
        && method == "GET"
        && path.contains("/manifests/")
    {
        let length = length.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n\
             {length}Connection: close\r\n\r\n"
        );
        let mut sent = 0u64;
        let junk = vec![b' '; 64 * 1024];
        if client_w.write_all(head.as_bytes()).is_ok() {
            while sent < 1 << 30 && client_w.write_all(&junk).is_ok() {
                sent += junk.len() as u64;
            }
        }
        state.lock().unwrap().served.push(Served {
            method,
            path,
            status: 200,
            body: sent,
        });
        let _ = client_w.shutdown(Shutdown::Both);
        return Some(());
    }
    let blob = path
        .rsplit_once("/blobs/")
        .map(|(_, d)| d.to_owned())
        .filter(|_| method == "GET");
    let (flip, extra, slow) = {
        let st = state.lock().unwrap();
        let t = &st.tamper;
        let mine = |d: &Option<String>| d.is_some() && *d == blob;
        (
            t.flip.clone().filter(|(d, _)| Some(d) == blob.as_ref()),
            mine(&t.extra),
            t.slow.clone().filter(|(d, _)| Some(d) == blob.as_ref()),
        )
    };
    const JUNK: &[u8] = b"sixteen bytes!!!";
    let length = header(&resp, "content-length").and_then(|v| v.parse::<u64>().ok());
    let new_length = match (extra, length) {
        (true, Some(n)) if status < 300 => Some(n + JUNK.len() as u64),
        _ => None,
    };
    client_w
        .write_all(rewrite(&resp, new_length).as_bytes())
        .ok()?;
    // The start offset of this response within the blob, for a flip.
    let start = header(&resp, "content-range")
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split('-').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let mut sent = 0u64;
    let mut buf = vec![0u8; 32 * 1024];
    let began = Instant::now();
    let record = |sent: u64| {
        state.lock().unwrap().served.push(Served {
            method: method.clone(),
            path: path.clone(),
            status,
            body: sent,
        });
    };
    loop {
        let n = match up_r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        if let Some((_, off)) = &flip
            && status < 300
        {
            let pos = start + sent;
            if *off >= pos && *off < pos + n as u64 {
                chunk[(*off - pos) as usize] ^= 0x40;
            }
        }
        if client_w.write_all(chunk).is_err() {
            record(sent);
            return None;
        }
        sent += n as u64;
        if let Some((_, rate)) = &slow {
            let due = Duration::from_secs_f64(sent as f64 / *rate as f64);
            if let Some(wait) = due.checked_sub(began.elapsed()) {
                thread::sleep(wait);
            }
        }
    }
    if new_length.is_some() && client_w.write_all(JUNK).is_ok() {
        sent += JUNK.len() as u64;
    }
    record(sent);
    let _ = client_w.shutdown(Shutdown::Both);
    Some(())
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(Mutex::new(ProxyState::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp, up) = (Arc::clone(&state), Arc::clone(&stop), upstream.to_owned());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, up) = (Arc::clone(&st), up.clone());
                thread::spawn(move || relay(conn, &up, &st));
            }
        });
        Proxy { addr, state, stop }
    }

    pub fn tamper(&self, t: Tamper) {
        self.state.lock().unwrap().tamper = t;
    }

    /// Forgets what was served so far.
    pub fn reset(&self) -> Vec<Served> {
        std::mem::take(&mut self.state.lock().unwrap().served)
    }

    pub fn served(&self) -> Vec<Served> {
        self.state.lock().unwrap().served.clone()
    }

    /// Body bytes sent for GETs of this blob.
    pub fn blob_bytes(&self, digest: &str) -> u64 {
        self.served()
            .iter()
            .filter(|s| s.method == "GET" && s.path.ends_with(&format!("/blobs/{digest}")))
            .map(|s| s.body)
            .sum()
    }

    /// Body bytes of everything but the `/v2/` version checks.
    pub fn content_bytes(&self) -> u64 {
        self.served()
            .iter()
            .filter(|s| s.path != "/v2/")
            .map(|s| s.body)
            .sum()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// A token service: checks [`USER`]:[`PASS`] (Basic) and answers with a JWT
/// for the scopes asked, signed with a key whose certificate the registry
/// trusts.
pub struct TokenServer {
    pub addr: String,
    pub cert: PathBuf,
    /// Token requests seen, and how many were refused.
    pub requests: Arc<Mutex<(u32, u32)>>,
}

impl TokenServer {
    pub fn start(dir: &Path) -> TokenServer {
        fs::create_dir_all(dir).unwrap();
        self_signed(dir, "token", "/CN=token signer");
        openssl(
            dir,
            &[
                "x509",
                "-in",
                "token.pem",
                "-outform",
                "DER",
                "-out",
                "token.der",
            ],
        );
        let der = fs::read(dir.join("token.der")).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new((0, 0)));
        let (dir2, req2) = (dir.to_owned(), Arc::clone(&requests));
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                serve_token(conn, &dir2, &der, &req2);
            }
        });
        TokenServer {
            addr,
            cert: dir.join("token.pem"),
            requests,
        }
    }
}

fn serve_token(conn: TcpStream, dir: &Path, der: &[u8], requests: &Mutex<(u32, u32)>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut w = conn;
    let Some(head) = read_head(&mut r) else {
        return;
    };
    let path = head
        .first()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("")
        .to_owned();
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
    );
    let authorized = header(&head, "authorization") == Some(want.as_str());
    let mut counts = requests.lock().unwrap();
    counts.0 += 1;
    if !authorized {
        counts.1 += 1;
        drop(counts);
        let body = r#"{"details":"incorrect username or password"}"#;
        let _ = write!(
            w,
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        return;
    }
    drop(counts);
    let query = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    let access: Vec<serde_json::Value> = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .filter_map(|scope| {
            let scope = scope
                .replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%2C", ",");
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            Some(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header_json = serde_json::json!({
        "typ": "JWT",
        "alg": "RS256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": USER,
        "aud": SERVICE,
        "exp": now + 600,
        "nbf": now - 60,
        "iat": now,
        "jti": format!("{now}-{}", rand_tag()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header_json.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(dir.join("token.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let sig = child.wait_with_output().unwrap().stdout;
    let token = format!("{signing_input}.{}", b64url(&sig));
    let body = serde_json::json!({"token": token, "expires_in": 600}).to_string();
    let _ = write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

fn rand_tag() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// Every file and directory under a store with its size and type, except
/// `downloads/` (partial blobs are kept there for resuming on purpose) and,
/// when `with_tmp` is false, `tmp/` (where a killed import leaves staging).
pub fn store_snapshot(store: &Path, with_tmp: bool) -> BTreeSet<String> {
    sh(Command::new("find")
        .arg(store)
        .args(["-printf", "%P %s %y\n"]))
    .lines()
    .filter(|l| !l.starts_with("downloads"))
    .filter(|l| with_tmp || !l.starts_with("tmp/"))
    .map(str::to_owned)
    .collect()
}

/// The sizes of what a pull of `layout:tag` fetches: manifest, config and
/// each layer blob (digest, size).
pub struct ImageSizes {
    pub manifest: u64,
    pub config: u64,
    pub layers: Vec<(String, u64)>,
}

pub fn image_sizes(layout: &Path, tag: &str) -> ImageSizes {
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {layout:?}"));
    let blob = |d: &serde_json::Value| layout.join("blobs/sha256").join(&d.as_str().unwrap()[7..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(&desc["digest"])).unwrap()).unwrap();
    ImageSizes {
        manifest: desc["size"].as_u64().unwrap(),
        config: manifest["config"]["size"].as_u64().unwrap(),
        layers: manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().unwrap().to_owned(),
                    l["size"].as_u64().unwrap(),
                )
            })
            .collect(),
    }
}
