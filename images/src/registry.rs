//! Registries: tag lists and manifest digests through the OCI distribution API (oci-client),
//! with credentials from a docker config.json, a per-registry request pace, retries with
//! backoff on 429/5xx and connection errors, and an in-process cache of tag lists.
//!
//! Conditional requests: oci-client does not expose response headers of `tags/list`, and the
//! distribution registry sends no ETag for it, so the cache is time based (`cache_ttl`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RegistryError {
    #[error("invalid image {image:?}: {message}")]
    Image { image: String, message: String },
    #[error("{registry}: not authorized for {image} ({hint})")]
    Unauthorized {
        registry: String,
        image: String,
        hint: String,
    },
    #[error("{registry}: {image} not found")]
    NotFound { registry: String, image: String },
    #[error("{registry}: unavailable after {attempts} attempts: {message}")]
    Unavailable {
        registry: String,
        attempts: u32,
        message: String,
    },
    #[error("{registry}: {message}")]
    Other { registry: String, message: String },
    #[error("docker config {path}: {message}")]
    Config { path: String, message: String },
}

/// A username and password for one registry. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

impl Login {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Login {
        Login {
            username: username.into(),
            password: password.into(),
        }
    }
}

/// Registry host (as in an image reference: `host[:port]`) → login.
#[derive(Debug, Clone, Default)]
pub struct Logins(HashMap<String, Login>);

impl Logins {
    /// Where docker keeps its config: `$DOCKER_CONFIG/config.json`, else
    /// `~/.docker/config.json`.
    pub fn default_path() -> Option<PathBuf> {
        let non_empty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
        if let Some(dir) = non_empty("DOCKER_CONFIG") {
            return Some(PathBuf::from(dir).join("config.json"));
        }
        non_empty("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
    }

    pub fn insert(&mut self, host: &str, login: Login) {
        self.0.insert(normalize_host(host), login);
    }

    pub fn get(&self, host: &str) -> Option<&Login> {
        self.0.get(&normalize_host(host)).or_else(|| {
            // Docker Hub's many names.
            if is_docker_hub(host) {
                self.0
                    .iter()
                    .find(|(h, _)| is_docker_hub(h))
                    .map(|(_, l)| l)
            } else {
                None
            }
        })
    }

    /// Reads `auths` of a docker config.json: `auth` (base64 `user:password`) or
    /// `username`/`password`. Credential helpers (`credsStore`, `credHelpers`) and
    /// `identitytoken` are not supported (a warning names them). A missing file is empty.
    pub fn from_docker_config(path: &Path) -> Result<Logins, RegistryError> {
        let err = |message: String| RegistryError::Config {
            path: path.display().to_string(),
            message,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Logins::default()),
            Err(e) => return Err(err(e.to_string())),
        };
        // The parser's message could quote the file; say only where.
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| err(format!("not valid JSON (line {})", e.line())))?;
        let mut logins = Logins::default();
        if json.get("credsStore").is_some() || json.get("credHelpers").is_some() {
            tracing::warn!(path = %path.display(), "credential helpers (credsStore, credHelpers) are not supported; only auths entries are read");
        }
        let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else {
            return Ok(logins);
        };
        for (host, entry) in auths {
            let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).unwrap_or("");
            let login = if !field("auth").is_empty() {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(field("auth").trim())
                    .map_err(|_| err(format!("auths.{host}.auth is not base64")))?;
                let decoded = String::from_utf8(decoded)
                    .map_err(|_| err(format!("auths.{host}.auth is not UTF-8")))?;
                match decoded.split_once(':') {
                    Some((u, p)) => Login::new(u, p),
                    None => return Err(err(format!("auths.{host}.auth is not user:password"))),
                }
            } else if !field("username").is_empty() {
                Login::new(field("username"), field("password"))
            } else {
                if !field("identitytoken").is_empty() {
                    tracing::warn!(registry = %host, "identitytoken logins are not supported");
                }
                continue;
            };
            logins.insert(host, login);
        }
        Ok(logins)
    }
}

/// `https://index.docker.io/v1/` → `index.docker.io`; `Host:5000` → `host:5000`.
fn normalize_host(host: &str) -> String {
    let h = host
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let h = h.split('/').next().unwrap_or(h);
    h.to_ascii_lowercase()
}

fn is_docker_hub(host: &str) -> bool {
    matches!(
        normalize_host(host).as_str(),
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    )
}

/// True for hosts on this machine: `127.x.y.z`, `localhost`, `[::1]` (with or without port).
pub fn is_loopback(host: &str) -> bool {
    let h = normalize_host(host);
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        h.rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map(|(n, _)| n)
            .unwrap_or(&h)
    };
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// How to talk to registries.
#[derive(Debug, Clone)]
pub struct Settings {
    pub logins: Logins,
    /// Registries (host[:port]) reached over plain HTTP besides loopback ones.
    pub insecure: Vec<String>,
    /// Attempts per request (at least 1) for 429, 5xx and connection errors.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Least time between two requests to one registry.
    pub min_interval: Duration,
    /// How long a tag list is reused.
    pub cache_ttl: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            logins: Logins::default(),
            insecure: Vec::new(),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            min_interval: Duration::from_millis(50),
            cache_ttl: Duration::from_secs(60),
        }
    }
}

/// One client for every registry of a scan.
pub struct Registries {
    client: Client,
    settings: Settings,
    next_request: tokio::sync::Mutex<HashMap<String, Instant>>,
    tags: Mutex<HashMap<String, (Instant, Vec<String>)>>,
}

/// Splits `host[:port]/path` into the registry host and repository the way Docker does.
pub fn parse_image(image: &str) -> Result<Reference, RegistryError> {
    if image.contains('@')
        || image
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
    {
        return Err(RegistryError::Image {
            image: image.into(),
            message: "name the repository without tag or digest".into(),
        });
    }
    Reference::try_from(format!("{image}:latest")).map_err(|e| RegistryError::Image {
        image: image.into(),
        message: e.to_string(),
    })
}

impl Registries {
    /// A client for `images` (repositories); loopback registries and `settings.insecure` ones
    /// are reached over plain HTTP, every other one over HTTPS only.
    pub fn new(images: &[String], settings: Settings) -> Registries {
        let mut plain: Vec<String> = settings
            .insecure
            .iter()
            .map(|h| normalize_host(h))
            .collect();
        for image in images {
            if let Ok(r) = parse_image(image) {
                let host = r.resolve_registry().to_string();
                if is_loopback(&host) && !plain.contains(&host) {
                    plain.push(host);
                }
            }
        }
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::HttpsExcept(plain),
            ..Default::default()
        });
        Registries {
            client,
            settings,
            next_request: tokio::sync::Mutex::new(HashMap::new()),
            tags: Mutex::new(HashMap::new()),
        }
    }

    fn auth(&self, host: &str) -> RegistryAuth {
        match self.settings.logins.get(host) {
            Some(l) => RegistryAuth::Basic(l.username.clone(), l.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Waits for the registry's turn (at most one request per `min_interval`, later after a
    /// 429 or 5xx).
    async fn pace(&self, host: &str, extra: Duration) {
        let wait = {
            let mut next = self.next_request.lock().await;
            let now = Instant::now();
            let at = next.get(host).copied().unwrap_or(now).max(now) + extra;
            next.insert(host.to_string(), at + self.settings.min_interval);
            at.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Runs `op` with pacing and retries; classifies the final error.
    async fn call<T, F, Fut>(&self, r: &Reference, what: &str, op: F) -> Result<T, RegistryError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let host = r.resolve_registry().to_string();
        let image = format!("{}/{}", r.registry(), r.repository());
        let attempts = self.settings.max_attempts.max(1);
        let mut backoff = self.settings.initial_backoff;
        let mut extra = Duration::ZERO;
        let mut last = String::new();
        for attempt in 1..=attempts {
            self.pace(&host, extra).await;
            tracing::debug!(registry = %host, %image, attempt, "{what}");
            let e = match op().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let retry = match &e {
                OciDistributionError::ServerError { code, .. } => *code == 429 || *code >= 500,
                OciDistributionError::RequestError(re) => {
                    re.is_connect() || re.is_timeout() || re.is_request()
                }
                OciDistributionError::UnauthorizedError { .. } => {
                    return Err(RegistryError::Unauthorized {
                        registry: host,
                        image,
                        hint: self.auth_hint(r),
                    });
                }
                OciDistributionError::AuthenticationFailure(_) => {
                    return Err(RegistryError::Unauthorized {
                        registry: host,
                        image,
                        hint: self.auth_hint(r),
                    });
                }
                OciDistributionError::ImageManifestNotFoundError(_) => {
                    return Err(RegistryError::NotFound {
                        registry: host,
                        image,
                    });
                }
                OciDistributionError::RegistryError { envelope, .. } => {
                    use oci_client::errors::OciErrorCode as C;
                    let any = |f: fn(&C) -> bool| envelope.errors.iter().any(|e| f(&e.code));
                    if any(|c| matches!(c, C::Unauthorized | C::Denied)) {
                        return Err(RegistryError::Unauthorized {
                            registry: host,
                            image,
                            hint: self.auth_hint(r),
                        });
                    }
                    if any(|c| matches!(c, C::NameUnknown | C::ManifestUnknown | C::NotFound)) {
                        return Err(RegistryError::NotFound {
                            registry: host,
                            image,
                        });
                    }
                    any(|c| matches!(c, C::Toomanyrequests))
                }
                _ => false,
            };
            last = describe(&e);
            if !retry {
                return Err(RegistryError::Other {
                    registry: host,
                    message: format!("{what} {image}: {last}"),
                });
            }
            tracing::info!(registry = %host, %image, attempt, error = %last, "registry request failed; backing off");
            if attempt < attempts {
                extra = backoff;
                backoff = (backoff * 2).min(self.settings.max_backoff);
            }
        }
        Err(RegistryError::Unavailable {
            registry: host,
            attempts,
            message: format!("{what} {image}: {last}"),
        })
    }

    fn auth_hint(&self, r: &Reference) -> String {
        match self.settings.logins.get(r.resolve_registry()) {
            Some(l) => format!("the credentials of user {} were refused", l.username),
            None => format!(
                "no credentials for {} in the docker config",
                r.resolve_registry()
            ),
        }
    }

    /// Every tag of `image` (a repository, without tag), from the cache when fresh.
    pub async fn list_tags(&self, image: &str) -> Result<Vec<String>, RegistryError> {
        let r = parse_image(image)?;
        let key = format!("{}/{}", r.resolve_registry(), r.repository());
        if let Ok(cache) = self.tags.lock()
            && let Some((at, tags)) = cache.get(&key)
            && at.elapsed() < self.settings.cache_ttl
        {
            return Ok(tags.clone());
        }
        let auth = self.auth(r.resolve_registry());
        let mut tags: Vec<String> = Vec::new();
        let page = 1000;
        loop {
            let last = tags.last().cloned();
            let resp = self
                .call(&r, "list tags of", || {
                    self.client
                        .list_tags(&r, &auth, Some(page), last.as_deref())
                })
                .await?;
            let n = resp.tags.len();
            let before = tags.len();
            for t in resp.tags {
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
            // A registry that ignores `n` returns everything at once; one that repeats
            // itself stops the loop too.
            if n < page || tags.len() == before {
                break;
            }
        }
        if let Ok(mut cache) = self.tags.lock() {
            cache.insert(key, (Instant::now(), tags.clone()));
        }
        Ok(tags)
    }

    /// The manifest digest (`sha256:...`) that `image:tag` points to now.
    pub async fn digest(&self, image: &str, tag: &str) -> Result<String, RegistryError> {
        let base = parse_image(image)?;
        let r = Reference::with_tag(
            base.registry().to_string(),
            base.repository().to_string(),
            tag.to_string(),
        );
        let auth = self.auth(r.resolve_registry());
        self.call(&r, "fetch the digest of", || {
            self.client.fetch_manifest_digest(&r, &auth)
        })
        .await
    }
}

fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:80",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["registry.example.com", "10.0.0.1:5000", "ghcr.io"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn docker_config_auths() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("bot:s3cret:with:colons");
        std::fs::write(
            &path,
            format!(
                r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{auth}"}}, "https://index.docker.io/v1/": {{"username": "hub", "password": "pw"}}, "tok.example": {{"identitytoken": "x"}}}}}}"#
            ),
        )
        .expect("write");
        let logins = Logins::from_docker_config(&path).expect("read");
        let l = logins.get("127.0.0.1:5000").expect("login");
        assert_eq!(l.username, "bot");
        assert_eq!(l.password, "s3cret:with:colons");
        assert!(!format!("{l:?}").contains("s3cret"));
        assert_eq!(logins.get("docker.io").expect("hub").username, "hub");
        assert!(logins.get("tok.example").is_none());
        assert!(
            Logins::from_docker_config(&dir.path().join("missing.json"))
                .expect("missing is empty")
                .get("x")
                .is_none()
        );
        std::fs::write(&path, "{not json").expect("write");
        assert!(Logins::from_docker_config(&path).is_err());
    }

    #[test]
    fn image_names() {
        let r = parse_image("127.0.0.1:5000/shop/frontend").expect("parse");
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "shop/frontend");
        let r = parse_image("nginx").expect("parse");
        assert_eq!(r.repository(), "library/nginx");
        assert!(parse_image("reg/app:1.0").is_err());
        assert!(parse_image("reg/app@sha256:abc").is_err());
    }
}
