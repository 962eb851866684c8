//! Where backups live: `file:///path` (a directory) or `s3://bucket/prefix` (any
//! S3-compatible endpoint), through the `object_store` crate.
//!
//! Credentials come from [`StoreSettings`] (the daemon's or the CLI's settings and the
//! environment), never from fleet.yaml; `Debug` of the settings redacts the secret.

use std::fmt;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;

use crate::BackupError;

/// S3 connection settings. Unused for `file://` stores.
#[derive(Clone, Default)]
pub struct StoreSettings {
    /// `http://127.0.0.1:9000`, `https://oss-cn-hangzhou.aliyuncs.com`; `None`: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Plain `http://` endpoints (allowed only for loopback hosts unless set).
    pub allow_http: bool,
}

impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

impl StoreSettings {
    /// Reads a credential from a file (trailing newline dropped).
    pub fn read_secret_file(path: &std::path::Path) -> Result<String, BackupError> {
        let text = std::fs::read_to_string(path).map_err(|e| BackupError::Settings {
            message: format!("cannot read {}: {e}", path.display()),
        })?;
        Ok(text.trim_end_matches(['\n', '\r']).to_string())
    }

    fn endpoint_is_loopback(&self) -> bool {
        self.endpoint.as_deref().is_some_and(|e| {
            let rest = e.strip_prefix("http://").unwrap_or(e);
            let host = rest.split(['/', ':']).next().unwrap_or("");
            host == "localhost"
                || host == "["
                || host.starts_with("127.")
                || rest.starts_with("[::1]")
        })
    }
}

/// An opened store: the object store and the key prefix every path is under.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<dyn ObjectStore>,
    pub(crate) prefix: Path,
    url: String,
    /// The directory of a `file://` store.
    pub(crate) local_root: Option<std::path::PathBuf>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

impl Store {
    /// Opens `url` (validated like fleet.yaml's `store`).
    pub fn open(url: &str, settings: &StoreSettings) -> Result<Store, BackupError> {
        let url =
            flotilla_spec::check_store(url).map_err(|message| BackupError::Settings { message })?;
        if let Some(dir) = url.strip_prefix("file://").map(str::to_string) {
            let dir = dir.as_str();
            std::fs::create_dir_all(dir).map_err(|e| BackupError::Store {
                store: url.clone(),
                message: format!("cannot create {dir}: {e}"),
            })?;
            let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| BackupError::Store {
                store: url.clone(),
                message: e.to_string(),
            })?;
            return Ok(Store {
                inner: Arc::new(fs),
                prefix: Path::default(),
                url,
                local_root: Some(std::path::PathBuf::from(dir)),
            });
        }
        let rest = url.strip_prefix("s3://").unwrap_or(&url);
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(settings.region.as_deref().unwrap_or("us-east-1"));
        if let Some(e) = &settings.endpoint {
            b = b
                .with_endpoint(e)
                .with_virtual_hosted_style_request(false)
                .with_allow_http(settings.allow_http || settings.endpoint_is_loopback());
        }
        match (&settings.access_key_id, &settings.secret_access_key) {
            (Some(id), Some(secret)) => {
                b = b.with_access_key_id(id).with_secret_access_key(secret);
            }
            (None, None) => {
                return Err(BackupError::Settings {
                    message: format!(
                        "store {url}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the credential files)"
                    ),
                });
            }
            _ => {
                return Err(BackupError::Settings {
                    message: format!(
                        "store {url}: an S3 access key id needs its secret access key, and the other way round"
                    ),
                });
            }
        }
        let s3 = b.build().map_err(|e| BackupError::Store {
            store: url.clone(),
            message: e.to_string(),
        })?;
        Ok(Store {
            inner: Arc::new(s3),
            prefix: Path::from(prefix.trim_matches('/')),
            url,
            local_root: None,
        })
    }

    /// The store's URL (no credentials in it).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// `prefix/parts...`.
    pub(crate) fn path(&self, parts: &[&str]) -> Path {
        let mut p = self.prefix.clone();
        for part in parts {
            for seg in part.split('/').filter(|s| !s.is_empty()) {
                p = p.join(seg);
            }
        }
        p
    }

    /// The part of `p` after the store's prefix.
    pub(crate) fn relative(&self, p: &Path) -> String {
        match p.prefix_match(&self.prefix) {
            Some(parts) => parts
                .map(|s| s.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/"),
            None => p.to_string(),
        }
    }

    pub(crate) fn err(&self, what: &str, e: object_store::Error) -> BackupError {
        BackupError::Store {
            store: self.url.clone(),
            message: format!("{what}: {}", describe(&e)),
        }
    }
}

/// An object store error in one line, without the request's headers.
fn describe(e: &object_store::Error) -> String {
    let s = e.to_string();
    // Never echo anything that could carry a signature or a key.
    s.lines().next().unwrap_or("").to_string()
}
