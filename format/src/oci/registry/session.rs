//! One registry conversation through `oci-client`: connecting (TLS with the
//! system's roots, or as asked plain HTTP), authenticating, manifests and
//! small blobs. Blob downloads are in `download.rs`. Manifests are fetched with
//! the same `reqwest` directly (oci-client's token, same settings): oci-client
//! reads a manifest whole before anyone can check its size, and a lying
//! registry could send one without end.
//!
//! The client is async; its tokio runtime lives here and nowhere else: the
//! rest of the import is plain blocking code, and calls in through
//! [`Session::block_on`] or hands tasks to [`Session::spawn`].

use std::future::Future;
use std::sync::{Mutex, Once};
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciEnvelope, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};

use super::auth::{default_auth_files, find_credentials};
use super::manifest::ACCEPTED;
use crate::oci::OciError;
use crate::oci::blob::{BlobAlg, BlobDigest, MAX_JSON_SIZE};
use crate::oci::reference::DockerReference;
use crate::oci::registry_options::RegistryOptions;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A registry silent this long in the middle of a response has stalled.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const USER_AGENT: &str = concat!("imgmount/", env!("CARGO_PKG_VERSION"));

/// Connected to one repository of one registry.
pub struct Session {
    rt: tokio::runtime::Runtime,
    client: Client,
    /// For manifests, which oci-client would read whole before any size
    /// check: configured as `client` is.
    http: reqwest::Client,
    auth: RegistryAuth,
    /// The bearer token the last authentication gave (none: basic or anonymous), for
    /// the manifest requests made with `http`; renewed when one is refused.
    token: Mutex<Option<String>>,
    /// The repository, tagged as asked (manifests by digest are derived).
    image: Reference,
    /// `docker://…`, for messages.
    pub display: String,
    explain: Explain,
    /// Plain HTTP (only with `--tls-verify=false`, when TLS failed).
    pub plain_http: bool,
}

/// Words registry errors for the user; cheap to clone into download tasks.
#[derive(Clone, Debug)]
pub struct Explain {
    host: String,
    repo: String,
    has_creds: bool,
    tls_verify: bool,
}

/// rustls needs one process-wide crypto provider; ring is the one built in.
fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means another part of the process installed one already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The messages of an error and everything that caused it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

fn client(opts: &RegistryOptions, plain_http: bool) -> Client {
    Client::new(ClientConfig {
        protocol: if plain_http {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        accept_invalid_certificates: !opts.tls_verify,
        // Index entries are chosen here, with the whole list in the message.
        platform_resolver: None,
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        user_agent: USER_AGENT,
        ..ClientConfig::default()
    })
}

/// A plain HTTP client with the settings [`client`] gives oci-client's.
fn http_client(opts: &RegistryOptions) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(!opts.tls_verify)
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .user_agent(USER_AGENT)
        .build()
}

impl Session {
    /// Finds credentials, connects and authenticates for pulling `reference`.
    pub fn connect(reference: &DockerReference, opts: &RegistryOptions) -> Result<Self, OciError> {
        install_crypto();
        let display = format!("docker://{reference}");
        let files = match &opts.auth_file {
            Some(f) => vec![f.clone()],
            None => default_auth_files(),
        };
        let creds = find_credentials(reference, opts.creds.as_ref(), &files).map_err(|reason| {
            OciError::Registry {
                what: "credentials".into(),
                reason,
            }
        })?;
        let auth = match &creds {
            Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
            None => RegistryAuth::Anonymous,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("imgmount-pull")
            .enable_all()
            .build()
            .map_err(|e| OciError::Registry {
                what: display.clone(),
                reason: format!("cannot start the HTTP client's runtime: {e}"),
            })?;
        let image = Reference::with_tag(
            reference.registry.clone(),
            reference.repository.clone(),
            reference.tag.clone().unwrap_or_else(|| "latest".into()),
        );
        let explain = Explain {
            host: image.registry().to_owned(),
            repo: image.repository().to_owned(),
            has_creds: creds.is_some(),
            tls_verify: opts.tls_verify,
        };
        let http = http_client(opts).map_err(|e| OciError::Registry {
            what: display.clone(),
            reason: format!("cannot set up the HTTP client: {}", error_chain(&e)),
        })?;
        let mut session = Session {
            rt,
            client: client(opts, false),
            http,
            auth,
            token: Mutex::new(None),
            image,
            display,
            explain,
            plain_http: false,
        };
        let what = format!("registry {}", reference.registry);
        match session.ping() {
            Ok(()) => Ok(session),
            // As skopeo does with --tls-verify=false: a registry that does not
            // speak TLS at all is spoken to in plain HTTP.
            Err(OciDistributionError::RequestError(e)) if !opts.tls_verify && e.is_connect() => {
                session.client = client(opts, true);
                session.plain_http = true;
                session.ping().map_err(|e| session.error(&what, e))?;
                Ok(session)
            }
            Err(e) => Err(session.error(&what, e)),
        }
    }

    /// `GET /v2/`, and a token when the registry asks for one.
    fn ping(&self) -> Result<(), OciDistributionError> {
        self.rt.block_on(self.authenticate(&self.image)).map(drop)
    }

    /// Authenticates for pulling `image` (oci-client keeps what it needs for its own
    /// requests); returns the bearer token, if the registry gave one, and keeps it.
    async fn authenticate(
        &self,
        image: &Reference,
    ) -> Result<Option<String>, OciDistributionError> {
        let token = self
            .client
            .auth(image, &self.auth, RegistryOperation::Pull)
            .await?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = token.clone();
        Ok(token)
    }

    /// Runs a future of this session to completion.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Runs a future in the background.
    pub fn spawn<F>(&self, f: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.spawn(f)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The repository, to name blobs in.
    pub fn image(&self) -> &Reference {
        &self.image
    }

    /// See [`Explain::error`].
    pub fn error(&self, what: &str, e: OciDistributionError) -> OciError {
        self.explain.error(what, e)
    }

    pub fn explain(&self) -> Explain {
        self.explain.clone()
    }

    /// Fetches a manifest or index by tag or digest (`reference`), checked
    /// against the digest it is asked by and the one the registry states;
    /// returns its bytes and digest. A registry that offers or sends more than
    /// [`MAX_JSON_SIZE`] is refused as soon as it does: the body is never
    /// read whole first.
    pub fn manifest(&self, reference: &str) -> Result<(Vec<u8>, BlobDigest), OciError> {
        let image = match BlobDigest::parse(reference) {
            Some(_) => self.image.clone_with_digest(reference.to_owned()),
            None => Reference::with_tag(
                self.image.registry().to_owned(),
                self.image.repository().to_owned(),
                reference.to_owned(),
            ),
        };
        let what = match image.digest() {
            Some(d) => format!("manifest {d}"),
            None => format!("tag {reference}"),
        };
        self.block_on(self.get_manifest(&image))
            .map_err(|e| match e {
                ManifestFailure::Registry(e) => self.error(&what, e),
                ManifestFailure::Bad(reason) => OciError::Registry {
                    what: what.clone(),
                    reason,
                },
            })
    }

    /// `GET /v2/REPO/manifests/REF`, authenticated as oci-client would, with
    /// the body read chunk by chunk up to [`MAX_JSON_SIZE`].
    async fn get_manifest(
        &self,
        image: &Reference,
    ) -> Result<(Vec<u8>, BlobDigest), ManifestFailure> {
        let url = format!(
            "{scheme}://{registry}/v2/{repo}/manifests/{reference}",
            scheme = if self.plain_http { "http" } else { "https" },
            registry = image.resolve_registry(),
            repo = image.repository(),
            reference = image.digest().or(image.tag()).unwrap_or("latest"),
        );
        // With basic credentials only when a token is not what the registry wants:
        // they go only to a registry that asks for them, as oci-client sends them.
        let get = |token: Option<String>, basic: bool| {
            let mut req = self.http.get(&url).header("Accept", ACCEPTED.join(", "));
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            } else if let (true, RegistryAuth::Basic(user, pass)) = (basic, &self.auth) {
                req = req.basic_auth(user, Some(pass));
            }
            req.send()
        };
        // The token from connecting, first: a token request per manifest would cost a
        // round trip to the token service each.
        let token = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut response = get(token, false).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            // The token expired, or the registry wants credentials: authenticate again.
            let token = self.authenticate(image).await?;
            let basic = token.is_none();
            response = get(token, basic).await?;
        }
        let status = response.status();
        let stated = response
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap_or("(not text)").to_owned())
            .filter(|v| !v.is_empty());
        if let Some(n) = response.content_length()
            && n > MAX_JSON_SIZE
        {
            return Err(ManifestFailure::Bad(format!(
                "the registry offers {n} bytes, more than the {MAX_JSON_SIZE} bytes a manifest \
                 may have"
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if (body.len() + chunk.len()) as u64 > MAX_JSON_SIZE {
                return Err(ManifestFailure::Bad(format!(
                    "the registry sent more than the {MAX_JSON_SIZE} bytes a manifest may have"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        registry_status(status, &body, &url)?;
        let digest = manifest_digest(&body, image.digest(), stated.as_deref())
            .map_err(ManifestFailure::Bad)?;
        Ok((body, digest))
    }

    /// Fetches a small blob (a config) whole, checking its size and digest.
    pub fn small_blob(&self, digest: &BlobDigest, size: u64) -> Result<Vec<u8>, OciError> {
        let what = format!("blob {digest}");
        if size > MAX_JSON_SIZE {
            return Err(OciError::Blob {
                blob: digest.to_string(),
                reason: format!("{size} bytes is too large for a JSON document"),
            });
        }
        let name = digest.to_string();
        let fetch = async {
            let mut body = Vec::new();
            let response = self
                .client
                .pull_blob_stream_partial(&self.image, name.as_str(), 0, None)
                .await?;
            let (BlobResponse::Full(mut stream) | BlobResponse::Partial(mut stream)) = response;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                body.extend_from_slice(&chunk);
                if body.len() as u64 > size {
                    break;
                }
            }
            Ok::<_, OciDistributionError>(body)
        };
        let body = self.block_on(fetch).map_err(|e| self.error(&what, e))?;
        crate::oci::blob::verify_blob(&body[..], &digest.to_string(), digest, Some(size))?;
        Ok(body)
    }
}

/// Why a manifest could not be fetched: what the registry or the connection
/// said, or what was wrong with what it sent.
enum ManifestFailure {
    Registry(OciDistributionError),
    Bad(String),
}

impl From<OciDistributionError> for ManifestFailure {
    fn from(e: OciDistributionError) -> Self {
        ManifestFailure::Registry(e)
    }
}

impl From<reqwest::Error> for ManifestFailure {
    fn from(e: reqwest::Error) -> Self {
        ManifestFailure::Registry(OciDistributionError::RequestError(e))
    }
}

/// A response's status as oci-client words it, so that [`Explain::error`]
/// reads manifest errors as it reads every other: 200 is the only success;
/// a client error carries the registry's error envelope when it sent one.
fn registry_status(
    status: reqwest::StatusCode,
    body: &[u8],
    url: &str,
) -> Result<(), OciDistributionError> {
    let url = url.to_owned();
    let message = || String::from_utf8_lossy(body).into_owned();
    match status {
        reqwest::StatusCode::OK => Ok(()),
        reqwest::StatusCode::UNAUTHORIZED => Err(OciDistributionError::UnauthorizedError { url }),
        s if s.is_success() => Err(OciDistributionError::SpecViolationError(format!(
            "expected HTTP status 200 for a manifest, got {s}"
        ))),
        s if s.is_client_error() => Err(match serde_json::from_slice::<OciEnvelope>(body) {
            Ok(envelope) => OciDistributionError::RegistryError { envelope, url },
            Err(_) => OciDistributionError::ServerError {
                code: s.as_u16(),
                url,
                message: message(),
            },
        }),
        s => Err(OciDistributionError::ServerError {
            code: s.as_u16(),
            url,
            message: message(),
        }),
    }
}

/// The digest of a manifest's `body`, checked against the digest it was asked
/// by (`asked`) and the one the registry states (`stated`, its
/// `Docker-Content-Digest`, which names it when both are given, as the
/// distribution spec has it).
fn manifest_digest(
    body: &[u8],
    asked: Option<&str>,
    stated: Option<&str>,
) -> Result<BlobDigest, String> {
    let mut found = None;
    for (whose, d) in [("asked for", asked), ("the registry states", stated)] {
        let Some(d) = d else { continue };
        let want = BlobDigest::parse(d)
            .ok_or_else(|| format!("the digest {whose}, {d:?}, is not sha256:HEX or sha512:HEX"))?;
        let got = BlobDigest::of(want.alg, body);
        if got != want {
            return Err(format!(
                "the manifest sent has digest {got}, not {want} (the digest {whose})"
            ));
        }
        found = Some(want);
    }
    Ok(found.unwrap_or_else(|| BlobDigest::of(BlobAlg::Sha256, body)))
}

impl Explain {
    /// A registry error as a message that says what to do about it; `what`
    /// names the image or blob asked for.
    pub fn error(&self, what: &str, e: OciDistributionError) -> OciError {
        let host = self.host.as_str();
        let repo = self.repo.as_str();
        let login = format!(
            "pass --creds USER:PASS, or log in with `skopeo login {host}` or `podman login {host}`"
        );
        let reason = match &e {
            OciDistributionError::UnauthorizedError { .. } if self.has_creds => {
                format!("the credentials given for {repo} were refused (HTTP 401)")
            }
            OciDistributionError::UnauthorizedError { .. } => {
                format!("{repo} needs credentials (HTTP 401): {login}")
            }
            OciDistributionError::AuthenticationFailure(body) => {
                let body: String = body.trim().chars().take(300).collect();
                if self.has_creds {
                    format!("the token service refused access to {repo}: {body}")
                } else {
                    format!("the token service refused access to {repo}: {body}; {login}")
                }
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let has = |c: OciErrorCode| envelope.errors.iter().any(|e| e.code == c);
                let messages: Vec<&str> =
                    envelope.errors.iter().map(|e| e.message.as_str()).collect();
                let messages = messages.join("; ");
                if has(OciErrorCode::ManifestUnknown) {
                    format!("{repo} has no such tag or manifest")
                } else if has(OciErrorCode::NameUnknown) {
                    format!("there is no repository {repo}")
                } else if has(OciErrorCode::BlobUnknown) {
                    format!("{repo} does not have it")
                } else if has(OciErrorCode::Unauthorized) || has(OciErrorCode::Denied) {
                    format!("access to {repo} was denied: {messages}; {login}")
                } else if has(OciErrorCode::Toomanyrequests) {
                    format!("the registry is rate limiting this client: {messages}")
                } else {
                    format!("the registry answered: {messages}")
                }
            }
            OciDistributionError::ServerError { code, message, .. } => {
                let message: String = message.trim().chars().take(300).collect();
                match code {
                    404 => format!("not found in {repo} (HTTP 404)"),
                    c => format!("the registry answered HTTP {c}: {message}"),
                }
            }
            OciDistributionError::RequestError(r) if r.is_connect() => {
                let chain = error_chain(r);
                if chain.to_lowercase().contains("certificate") {
                    format!(
                        "cannot connect: the TLS certificate of {host} is not trusted ({chain}); \
                         add its CA to the system's roots, or use --tls-verify=false for a \
                         registry you trust (such as one on loopback)"
                    )
                } else if self.tls_verify && chain.contains("InvalidContentType") {
                    format!(
                        "cannot connect to {host} with TLS: it does not speak TLS ({chain}); \
                         a registry on plain HTTP needs --tls-verify=false"
                    )
                } else if self.tls_verify {
                    format!(
                        "cannot connect to {host}: {chain} (is the registry running? \
                         one without TLS needs --tls-verify=false)"
                    )
                } else {
                    format!("cannot connect to {host}: {chain} (is the registry running?)")
                }
            }
            OciDistributionError::RequestError(r) if r.is_timeout() => {
                format!("{host} did not answer in time: {}", error_chain(r))
            }
            OciDistributionError::DigestError(d) => {
                format!("its content does not match its digest: {d}")
            }
            other => error_chain(other),
        };
        OciError::Registry {
            what: what.to_owned(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn manifest_digests_are_checked_and_the_stated_one_names_it() {
        let body = br#"{"schemaVersion":2}"#;
        let d256 = BlobDigest::of(BlobAlg::Sha256, body).to_string();
        let d512 = BlobDigest::of(BlobAlg::Sha512, body).to_string();
        let other = BlobDigest::of(BlobAlg::Sha256, b"other").to_string();
        assert_eq!(manifest_digest(body, None, None).unwrap().to_string(), d256);
        assert_eq!(
            manifest_digest(body, Some(&d256), None)
                .unwrap()
                .to_string(),
            d256
        );
        // Asked by sha256, stated as sha512: both checked, the stated one returned.
        let got = manifest_digest(body, Some(&d256), Some(&d512)).unwrap();
        assert_eq!(got.to_string(), d512);
        let e = manifest_digest(body, Some(&other), None).unwrap_err();
        assert!(e.contains(&other) && e.contains("asked for"), "{e}");
        let e = manifest_digest(body, Some(&d256), Some(&other)).unwrap_err();
        assert!(e.contains(&other) && e.contains("registry states"), "{e}");
        let e = manifest_digest(body, None, Some("md5:abc")).unwrap_err();
        assert!(e.contains("md5:abc"), "{e}");
    }

    #[test]
    fn manifest_statuses_read_as_oci_client_words_them() {
        use reqwest::StatusCode;
        let url = "http://r/v2/a/manifests/t";
        assert!(registry_status(StatusCode::OK, b"", url).is_ok());
        let unknown = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#;
        match registry_status(StatusCode::NOT_FOUND, unknown, url) {
            Err(OciDistributionError::RegistryError { envelope, .. }) => {
                assert_eq!(envelope.errors[0].code, OciErrorCode::ManifestUnknown)
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            registry_status(StatusCode::NOT_FOUND, b"<html>", url),
            Err(OciDistributionError::ServerError { code: 404, .. })
        ));
        assert!(matches!(
            registry_status(StatusCode::UNAUTHORIZED, b"", url),
            Err(OciDistributionError::UnauthorizedError { .. })
        ));
        assert!(matches!(
            registry_status(StatusCode::NO_CONTENT, b"", url),
            Err(OciDistributionError::SpecViolationError(_))
        ));
        assert!(matches!(
            registry_status(StatusCode::BAD_GATEWAY, b"down", url),
            Err(OciDistributionError::ServerError { code: 502, .. })
        ));
    }

    fn explain(has_creds: bool) -> Explain {
        Explain {
            host: "reg.example:5000".into(),
            repo: "team/app".into(),
            has_creds,
            tls_verify: true,
        }
    }

    fn envelope(code: OciErrorCode) -> OciDistributionError {
        OciDistributionError::RegistryError {
            envelope: oci_client::errors::OciEnvelope {
                errors: vec![oci_client::errors::OciError {
                    code,
                    message: "registry says no".into(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "http://x".into(),
        }
    }

    #[test]
    fn errors_say_what_to_do() {
        let unauthorized = || OciDistributionError::UnauthorizedError { url: "u".into() };
        let e = explain(false).error("tag v1", unauthorized()).to_string();
        assert!(e.starts_with("tag v1: team/app needs credentials"), "{e}");
        assert!(
            e.contains("--creds") && e.contains("skopeo login reg.example:5000"),
            "{e}"
        );
        let e = explain(true).error("tag v1", unauthorized()).to_string();
        assert!(e.contains("were refused"), "{e}");
        let e = explain(false)
            .error("tag v9", envelope(OciErrorCode::ManifestUnknown))
            .to_string();
        assert_eq!(e, "tag v9: team/app has no such tag or manifest");
        let e = explain(false)
            .error("tag v1", envelope(OciErrorCode::Denied))
            .to_string();
        assert!(
            e.contains("denied: registry says no") && e.contains("--creds"),
            "{e}"
        );
        let e = explain(true)
            .error(
                "registry r",
                OciDistributionError::AuthenticationFailure("  bad password\n".into()),
            )
            .to_string();
        assert_eq!(
            e,
            "registry r: the token service refused access to team/app: bad password"
        );
        let e = explain(false)
            .error(
                "blob b",
                OciDistributionError::ServerError {
                    code: 503,
                    url: "u".into(),
                    message: "down for maintenance".into(),
                },
            )
            .to_string();
        assert!(e.contains("HTTP 503: down for maintenance"), "{e}");
    }

    #[test]
    fn error_chains_are_joined_without_repeats() {
        let e = Layer(
            "error sending request",
            Some(Box::new(Layer(
                "connect failed",
                Some(Box::new(Layer("connect failed", None))),
            ))),
        );
        assert_eq!(error_chain(&e), "error sending request: connect failed");
    }
}
