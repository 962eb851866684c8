//! Git remotes: a [`GitSource`] tracks one repository URL and one revision (branch, tag or
//! commit) in a bare cache repository, and yields immutable [`Snapshot`]s read straight from
//! the object database.
//!
//! gix does the network work (ref listing, fetch over `file://`, plain paths, `git://` and smart
//! HTTP(S)), the reading and the commit writing. Pushing is done by the `git` CLI
//! (`git push --porcelain --force-with-lease`), because gix cannot push yet.
//!
//! Credentials never appear in errors, logs or `Debug` output: URLs are shown with their
//! user information replaced by `***`, and every message that leaves this module passes
//! through [`Remote::redact`].

mod local;
mod poller;
mod push;
mod sign;
mod snapshot;
pub mod verify;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gix::ObjectId;
use gix::bstr::ByteSlice;

pub use local::open_local;
pub use poller::{Poller, Trigger, backoff};
pub use push::{CommitMessage, FileChange, Identity, PushOptions, Pushed};
pub use sign::CommitSigner;
pub use snapshot::Snapshot;
pub use verify::{Signer, Trust, TrustError, Unverified};

/// Errors of the Git source. Every message names the repository (redacted) and the revision.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("invalid repository URL {url}: {message}")]
    Url { url: String, message: String },
    #[error("invalid revision {rev:?}: {message}")]
    Rev { rev: String, message: String },
    #[error("credentials: {0}")]
    Credentials(String),
    #[error("cache {path}: {message}")]
    Cache { path: PathBuf, message: String },
    #[error("{repo} ({rev}): {message}")]
    Remote {
        repo: String,
        rev: String,
        message: String,
    },
    #[error("{repo}: {rev} does not exist {}", if *.local {
        "in the repository (no branch or tag by that name)"
    } else {
        "on the remote (deleted or never pushed)"
    })]
    RefNotFound {
        repo: String,
        rev: String,
        /// The repository is a local directory, not a remote.
        local: bool,
    },
    #[error("{repo}: commit {rev} is not in the repository")]
    CommitNotFound { repo: String, rev: String },
    #[error("{repo} ({rev}): cannot read the object database: {message}")]
    Read {
        repo: String,
        rev: String,
        message: String,
    },
    #[error("{repo} ({rev}): write-back needs a branch, not {what}")]
    NotABranch {
        repo: String,
        rev: String,
        what: &'static str,
    },
    #[error("{repo} ({rev}): computing the change failed: {message}")]
    Change {
        repo: String,
        rev: String,
        message: String,
    },
    #[error("{repo} ({rev}): push failed: {message}")]
    Push {
        repo: String,
        rev: String,
        message: String,
    },
    #[error("{repo} ({rev}): push rejected {attempts} times (the branch keeps moving); giving up")]
    PushRejected {
        repo: String,
        rev: String,
        attempts: u32,
    },
}

/// One line from an error and its causes: each distinct message once, joined by ": ".
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        let text = text.trim();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(text)) {
            parts.push(text.to_string());
        }
        next = e.source();
    }
    parts.join(": ")
}

/// A username and password (or token) for smart HTTP. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// A token sent as the password of HTTP basic auth (GitHub, GitLab, Gitea accept this).
    pub fn token(token: impl Into<String>) -> Credentials {
        Credentials::new("x-access-token", token)
    }

    /// Reads the password (or token) from the environment variable `password_var`; the
    /// username from `username_var` if given, else `x-access-token`.
    pub fn from_env(
        username_var: Option<&str>,
        password_var: &str,
    ) -> Result<Credentials, GitError> {
        let var = |name: &str| {
            std::env::var(name).map_err(|_| {
                GitError::Credentials(format!("environment variable {name} is not set"))
            })
        };
        let password = var(password_var)?;
        let username = match username_var {
            Some(u) => var(u)?,
            None => "x-access-token".to_string(),
        };
        Ok(Credentials::new(username, password))
    }

    /// Reads a file holding `username:password` or just a token (surrounding whitespace and
    /// one trailing newline ignored).
    pub fn from_file(path: &Path) -> Result<Credentials, GitError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| GitError::Credentials(format!("cannot read {}: {e}", path.display())))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(GitError::Credentials(format!(
                "{} is empty",
                path.display()
            )));
        }
        Ok(match text.split_once(':') {
            Some((user, password)) => Credentials::new(user, password),
            None => Credentials::token(text),
        })
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

/// A remote repository location with any user information split off.
#[derive(Clone)]
pub struct Remote {
    /// What gix and the git CLI are given: no user information.
    url: String,
    /// For messages: user information shown as `***`.
    display: String,
    /// Credentials: the caller's, else those embedded in the URL.
    credentials: Option<Credentials>,
    /// Other secret text to redact (the URL's password as written, still percent-encoded).
    hidden: Vec<String>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.display)
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// True if `text` looks like a URL rather than a local path: `scheme://...`, or scp-like
/// `[user@]host:path` (as git decides: a `:` before any `/`).
pub fn is_url(text: &str) -> bool {
    if let Some((scheme, _)) = text.split_once("://") {
        return !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+');
    }
    scp_like(text).is_some()
}

/// `[userinfo@]host:path` split into (userinfo, host, path) when `text` is scp-like.
fn scp_like(text: &str) -> Option<(Option<&str>, &str, &str)> {
    let colon = text.find(':')?;
    if colon == 0 || text[..colon].contains('/') || text.contains("://") {
        return None;
    }
    // The user information ends at the last '@' before the first '/' (a password may hold ':').
    let head = &text[..text.find('/').unwrap_or(text.len())];
    let (userinfo, rest) = match head.rfind('@') {
        Some(at) => (Some(&text[..at]), &text[at + 1..]),
        None => (None, text),
    };
    let (host, path) = rest.split_once(':')?;
    if host.is_empty() || host.contains('/') {
        return None;
    }
    Some((userinfo, host, path))
}

/// `text` (a repository URL or path) with any user information replaced by `***`: the one
/// way a repository address given by a user reaches a message or log.
pub fn redact_url(text: &str) -> String {
    if let Some((scheme, rest)) = text.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        return match authority.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}{path}"),
            None => text.to_string(),
        };
    }
    match scp_like(text) {
        Some((Some(_), host, path)) => format!("***@{host}:{path}"),
        _ => text.to_string(),
    }
}

/// Percent-decodes user information (`%40` → `@`); `None` when the result is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (
                char::from(b[i + 1]).to_digit(16),
                char::from(b[i + 2]).to_digit(16),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl Remote {
    /// Parses a URL (`file://`, `git://`, `http(s)://`, `ssh://`) or a local path. User
    /// information in the URL (`https://user:token@host/...`) is split off and used as the
    /// credentials unless `credentials` is given.
    pub fn parse(text: &str, credentials: Option<Credentials>) -> Result<Remote, GitError> {
        if !text.contains("://")
            && let Some((userinfo, host, path)) = scp_like(text)
        {
            // ssh (scp syntax): a user name is part of the address, a password never is.
            let display = redact_url(text);
            let user = match userinfo {
                Some(u) if u.contains(':') => {
                    return Err(GitError::Url {
                        url: display,
                        message: "an scp-style (ssh) address cannot carry a password; use an \
                                  SSH key, or an https URL with a credentials file"
                            .into(),
                    });
                }
                Some(u) => format!("{u}@"),
                None => String::new(),
            };
            let url = format!("{user}{host}:{path}");
            return Ok(Remote {
                display: url.clone(),
                url,
                credentials,
                hidden: Vec::new(),
            });
        }
        if !is_url(text) {
            let path = std::path::absolute(text).map_err(|e| GitError::Url {
                url: text.to_string(),
                message: e.to_string(),
            })?;
            let url = path.to_str().ok_or_else(|| GitError::Url {
                url: path.display().to_string(),
                message: "the path is not UTF-8".into(),
            })?;
            return Ok(Remote {
                url: url.to_string(),
                display: url.to_string(),
                credentials,
                hidden: Vec::new(),
            });
        }
        let (scheme, rest) = text.split_once("://").unwrap_or(("", text));
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let url = format!("{scheme}://{host}{path}");
        let display = match userinfo {
            Some(_) => format!("{scheme}://***@{host}{path}"),
            None => url.clone(),
        };
        if !matches!(scheme, "file" | "git" | "http" | "https" | "ssh") {
            return Err(GitError::Url {
                url: display,
                message: format!("unsupported scheme {scheme:?} (file, git, http, https, ssh)"),
            });
        }
        // User information is percent-encoded in a URL (`p%40ss` is the password `p@ss`).
        let decode = |part: &str| {
            percent_decode(part).ok_or_else(|| GitError::Url {
                url: display.clone(),
                message: "the user information is not UTF-8 once percent-decoded".into(),
            })
        };
        let embedded = match userinfo {
            Some(u) => Some(match u.split_once(':') {
                Some((user, password)) => Credentials::new(decode(user)?, decode(password)?),
                None => Credentials::token(decode(u)?),
            }),
            None => None,
        };
        // The raw (encoded) text of embedded secrets is redacted from messages too.
        let hidden: Vec<String> = userinfo
            .map(|u| u.split_once(':').map_or(u, |(_, p)| p))
            .filter(|p| !p.is_empty())
            .map(|p| vec![p.to_string()])
            .unwrap_or_default();
        let credentials = credentials.or(embedded);
        if scheme == "http" && credentials.is_some() && !is_loopback(host) {
            return Err(GitError::Url {
                url: display,
                message: "will not send credentials in clear text over http to a host other \
                          than loopback; use https"
                    .into(),
            });
        }
        Ok(Remote {
            url,
            display,
            credentials,
            hidden,
        })
    }

    /// A local directory rather than a URL.
    pub fn is_local(&self) -> bool {
        !is_url(&self.url)
    }

    /// The URL without user information.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }

    /// Removes every secret from `message`.
    pub fn redact(&self, message: impl Into<String>) -> String {
        let mut message = message.into();
        if let Some(c) = &self.credentials
            && !c.password.is_empty()
        {
            message = message.replace(&c.password, "***");
        }
        for h in &self.hidden {
            message = message.replace(h.as_str(), "***");
        }
        message
    }

    /// A name for a cache directory: the URL with everything but `[A-Za-z0-9._-]` replaced.
    pub fn cache_name(&self) -> String {
        let mut name: String = self
            .url
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if name.len() > 120 {
            name = name.split_off(name.len() - 120);
        }
        name
    }
}

/// `host[:port]` names this machine (credentials may travel over plain http to it).
fn is_loopback(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        authority.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Where a `git://` URL points.
struct GitDaemonTarget {
    host: String,
    port: Option<u16>,
    path: String,
}

fn git_daemon_target(url: &str) -> Option<GitDaemonTarget> {
    let rest = url.strip_prefix("git://")?;
    let (authority, path) = rest.split_at(rest.find('/')?);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !authority.ends_with(']') => (h, Some(p.parse().ok()?)),
        _ => (authority, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some(GitDaemonTarget {
        host: host.to_string(),
        port,
        path: path.to_string(),
    })
}

/// HTTP transport options: every request (the ref listing, the pack) must finish within
/// `timeout`.
fn http_options(timeout: Duration) -> gix_transport::client::blocking_io::http::Options {
    let backend = gix_transport::client::blocking_io::http::reqwest::Options {
        configure_client: None,
        configure_request: Some(Box::new(move |request| {
            *request.timeout_mut() = Some(timeout);
            Ok(())
        })),
    };
    gix_transport::client::blocking_io::http::Options {
        connect_timeout: Some(timeout.min(Duration::from_secs(10))),
        user_agent: Some(concat!("flotilla/", env!("CARGO_PKG_VERSION")).to_string()),
        backend: Some(Arc::new(Mutex::new(backend))),
        ..Default::default()
    }
}

/// How long a network operation may stall (git://) or take per request (HTTP) by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Which revision a source follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rev {
    /// The remote's default branch (its `HEAD`).
    Head,
    /// A short name: a branch if the remote has one by that name, else a tag.
    Name(String),
    /// A full reference name such as `refs/heads/main` or `refs/tags/v1`.
    Ref(String),
    /// A full commit id (40 hex digits): immutable, never polled again once fetched.
    Commit(ObjectId),
}

impl Rev {
    pub fn parse(text: &str) -> Result<Rev, GitError> {
        let bad = |message: &str| GitError::Rev {
            rev: text.to_string(),
            message: message.to_string(),
        };
        if text.is_empty() || text == "HEAD" {
            return Ok(Rev::Head);
        }
        if text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return ObjectId::from_hex(text.as_bytes())
                .map(Rev::Commit)
                .map_err(|e| bad(&e.to_string()));
        }
        let full = if text.starts_with("refs/") {
            text.to_string()
        } else {
            format!("refs/heads/{text}")
        };
        if text.contains(['~', '^', ':']) || text.contains("..") || text.contains("@{") {
            return Err(bad(
                "a remote URL takes a branch, tag, full ref or full commit id; expressions \
                 such as HEAD~1, A...B or short commit ids need a local clone (--repo DIR)",
            ));
        }
        gix::refs::FullName::try_from(full.as_str())
            .map_err(|e| bad(&format!("not a valid reference name ({e})")))?;
        if text.contains('*') {
            return Err(bad("patterns are not allowed"));
        }
        Ok(if text.starts_with("refs/") {
            Rev::Ref(text.to_string())
        } else {
            Rev::Name(text.to_string())
        })
    }

    /// The branch this revision names, if it names one for sure.
    fn branch(&self) -> Option<&str> {
        match self {
            Rev::Name(n) => Some(n),
            Rev::Ref(r) => r.strip_prefix("refs/heads/"),
            Rev::Head | Rev::Commit(_) => None,
        }
    }

    /// (remote ref, local tracking ref) pairs to fetch, in order of preference.
    fn candidates(&self) -> Vec<(String, String)> {
        let track = |remote: &str| {
            let local = match remote.strip_prefix("refs/") {
                Some(rest) => format!("refs/flotilla/{rest}"),
                None => format!("refs/flotilla/{remote}"),
            };
            (remote.to_string(), local)
        };
        match self {
            Rev::Head => vec![track("HEAD")],
            Rev::Name(n) => vec![
                track(&format!("refs/heads/{n}")),
                track(&format!("refs/tags/{n}")),
            ],
            Rev::Ref(r) => vec![track(r)],
            Rev::Commit(_) => vec![
                ("refs/heads/*".into(), "refs/flotilla/heads/*".into()),
                ("refs/tags/*".into(), "refs/flotilla/tags/*".into()),
            ],
        }
    }
}

impl std::fmt::Display for Rev {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rev::Head => f.write_str("HEAD"),
            Rev::Name(n) => f.write_str(n),
            Rev::Ref(r) => f.write_str(r),
            Rev::Commit(id) => write!(f, "{id}"),
        }
    }
}

/// What a [`GitSource::poll`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// The remote still points where the current snapshot is.
    Unchanged,
    /// A new snapshot is current.
    Changed {
        from: Option<ObjectId>,
        to: ObjectId,
        /// The new commit does not descend from the old one (force-push, rewritten history).
        rewritten: bool,
    },
}

/// One repository URL and revision, fetched into a bare cache repository.
pub struct GitSource {
    remote: Remote,
    rev: Rev,
    cache: PathBuf,
    repo: gix::Repository,
    current: Option<Snapshot>,
    timeout: Duration,
    shallow: Option<std::num::NonZeroU32>,
    /// Held (an exclusive advisory lock on `CACHE.lock`, beside the cache) for as long as this source
    /// lives: one process per cache, so lock files found on open are stale.
    _lock: Arc<std::fs::File>,
}

/// Cache locks this process holds: a second `GitSource` on the same cache in this process
/// shares the lock (flock would otherwise make it wait for itself).
static HELD_LOCKS: Mutex<Vec<(PathBuf, std::sync::Weak<std::fs::File>)>> = Mutex::new(Vec::new());

/// How long `open` waits for another process to release the cache.
const CACHE_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Takes the cache's process lock, then removes lock files a killed process left behind
/// (gix refuses to update a ref whose `.lock` exists).
fn lock_cache(cache: &Path) -> Result<Arc<std::fs::File>, String> {
    let mut held = HELD_LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    held.retain(|(_, w)| w.strong_count() > 0);
    if let Some(file) = held
        .iter()
        .find(|(p, _)| p == cache)
        .and_then(|(_, w)| w.upgrade())
    {
        return Ok(file);
    }
    let file = Arc::new(lock_cache_file(cache)?);
    held.push((cache.to_path_buf(), Arc::downgrade(&file)));
    Ok(file)
}

fn lock_cache_file(cache: &Path) -> Result<std::fs::File, String> {
    let mut name = cache.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    let path = cache.with_file_name(name);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let started = std::time::Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < CACHE_LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "in use by another flotilla process (waited {} s for {})",
                    CACHE_LOCK_WAIT.as_secs(),
                    path.display()
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", path.display()));
            }
        }
    }
    let mut stale = Vec::new();
    for name in [
        "packed-refs.lock",
        "shallow.lock",
        "config.lock",
        "HEAD.lock",
    ] {
        let p = cache.join(name);
        if p.is_file() {
            stale.push(p);
        }
    }
    let mut dirs = vec![cache.join("refs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(p),
                Ok(t) if t.is_file() && p.extension().is_some_and(|e| e == "lock") => stale.push(p),
                _ => {}
            }
        }
    }
    for p in stale {
        tracing::warn!(path = %p.display(), "removing a lock file left by an interrupted run");
        std::fs::remove_file(&p).map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
    }
    Ok(file)
}

impl std::fmt::Debug for GitSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitSource")
            .field("remote", &self.remote)
            .field("rev", &self.rev)
            .field("cache", &self.cache)
            .field("current", &self.current.as_ref().map(|s| s.commit()))
            .finish()
    }
}

/// How deep [`GitSource::poll`] looks for the old commit in the new history before calling
/// an update a rewrite.
const ANCESTRY_LIMIT: usize = 100_000;

impl GitSource {
    /// Opens (creating if needed) the bare cache repository at `cache`. No network access: the
    /// last snapshot fetched before a restart is available at once through [`Self::current`].
    pub fn open(
        remote: Remote,
        rev: Rev,
        cache: impl Into<PathBuf>,
    ) -> Result<GitSource, GitError> {
        let cache = cache.into();
        let cache_err = |message: String| GitError::Cache {
            path: cache.clone(),
            message,
        };
        if let Some(parent) = cache.parent() {
            std::fs::create_dir_all(parent).map_err(|e| cache_err(e.to_string()))?;
        }
        let lock = lock_cache(&cache).map_err(cache_err)?;
        if !cache.join("objects").is_dir() {
            std::fs::create_dir_all(&cache).map_err(|e| cache_err(e.to_string()))?;
            gix::init_bare(&cache).map_err(|e| cache_err(describe(&e)))?;
        }
        let repo = gix::open_opts(&cache, gix::open::Options::isolated())
            .map_err(|e| cache_err(describe(&e)))?;
        let mut source = GitSource {
            remote,
            rev,
            cache,
            repo,
            current: None,
            timeout: DEFAULT_TIMEOUT,
            shallow: None,
            _lock: lock,
        };
        source.current = source.load_cached().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the cached revision");
            None
        });
        Ok(source)
    }

    /// Bounds network operations: a git:// server that sends nothing for `timeout`, or an
    /// HTTP request that takes longer, fails the poll. Default [`DEFAULT_TIMEOUT`].
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Makes the first fetch of a branch or tag shallow: only `depth` commits of history
    /// (1 = just the tip). Later fetches bring the new commits only. Commit revisions always
    /// fetch full history (the commit may be anywhere in it).
    pub fn set_shallow_depth(&mut self, depth: Option<std::num::NonZeroU32>) {
        self.shallow = depth;
    }

    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    pub fn rev(&self) -> &Rev {
        &self.rev
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// The last good snapshot, if any was ever fetched (also across restarts).
    pub fn current(&self) -> Option<&Snapshot> {
        self.current.as_ref()
    }

    fn remote_err(&self, message: impl std::fmt::Display) -> GitError {
        GitError::Remote {
            repo: self.remote.display.clone(),
            rev: self.rev.to_string(),
            message: self.remote.redact(message.to_string()),
        }
    }

    fn read_err(&self, message: impl std::fmt::Display) -> GitError {
        GitError::Read {
            repo: self.remote.display.clone(),
            rev: self.rev.to_string(),
            message: self.remote.redact(message.to_string()),
        }
    }

    /// The snapshot the cache holds for our revision, without network access.
    fn load_cached(&self) -> Result<Option<Snapshot>, GitError> {
        if let Rev::Commit(id) = &self.rev {
            return match self.repo.has_object(id) {
                true => self.snapshot_of(*id).map(Some),
                false => Ok(None),
            };
        }
        for (_, local) in self.rev.candidates() {
            if let Some(id) = self.tracking_tip(&local)? {
                return self.snapshot_of(id).map(Some);
            }
        }
        Ok(None)
    }

    /// What a local tracking ref points to (not peeled).
    fn tracking_tip(&self, local: &str) -> Result<Option<ObjectId>, GitError> {
        let reference = self
            .repo
            .try_find_reference(local)
            .map_err(|e| self.read_err(describe(&e)))?;
        Ok(reference.and_then(|r| r.target().try_id().map(|id| id.to_owned())))
    }

    /// A snapshot of `id` (a commit or a tag that peels to one).
    fn snapshot_of(&self, id: ObjectId) -> Result<Snapshot, GitError> {
        let object = self
            .repo
            .find_object(id)
            .map_err(|e| self.read_err(describe(&e)))?;
        let commit = object.peel_to_commit().map_err(|e| GitError::Read {
            repo: self.remote.display.clone(),
            rev: self.rev.to_string(),
            message: format!("{id} is not a commit: {}", describe(&e)),
        })?;
        let tree = commit
            .tree_id()
            .map_err(|e| self.read_err(describe(&e)))?
            .detach();
        Ok(Snapshot::new(
            self.repo.clone(),
            commit.id,
            tree,
            self.remote.display.clone(),
            self.rev.to_string(),
        ))
    }

    /// Asks the remote where our revision points (one ref listing, no pack) and fetches only
    /// if it moved. On any error the current snapshot stays as it was.
    pub fn poll(&mut self) -> Result<Poll, GitError> {
        let interrupt = AtomicBool::new(false);
        self.poll_with_interrupt(&interrupt)
    }

    /// [`Self::poll`], abandoning the fetch when `interrupt` becomes true.
    pub fn poll_with_interrupt(&mut self, interrupt: &AtomicBool) -> Result<Poll, GitError> {
        let from = self.current.as_ref().map(|s| s.commit());
        if let Rev::Commit(id) = &self.rev {
            if from.is_some() {
                return Ok(Poll::Unchanged);
            }
            self.fetch(interrupt)?;
            if !self.repo.has_object(id) {
                return Err(GitError::CommitNotFound {
                    repo: self.remote.display.clone(),
                    rev: id.to_string(),
                });
            }
            let snapshot = self.snapshot_of(*id)?;
            self.current = Some(snapshot);
            return Ok(Poll::Changed {
                from,
                to: *id,
                rewritten: false,
            });
        }
        let Some(tip) = self.fetch(interrupt)? else {
            return Ok(Poll::Unchanged);
        };
        let snapshot = self.snapshot_of(tip)?;
        let to = snapshot.commit();
        if from == Some(to) {
            return Ok(Poll::Unchanged);
        }
        let rewritten = match from {
            Some(old) => !self.descends_from(to, old),
            None => false,
        };
        if rewritten {
            tracing::warn!(
                repo = %self.remote,
                rev = %self.rev,
                from = %from.map(|f| f.to_string()).unwrap_or_default(),
                to = %to,
                "history rewritten (force-push): following the remote"
            );
        } else {
            tracing::info!(
                repo = %self.remote,
                rev = %self.rev,
                from = %from.map(|f| f.to_string()).unwrap_or_default(),
                to = %to,
                "new commit"
            );
        }
        self.current = Some(snapshot);
        Ok(Poll::Changed {
            from,
            to,
            rewritten,
        })
    }

    /// True if `old` is `new` or one of its ancestors (within [`ANCESTRY_LIMIT`] commits).
    fn descends_from(&self, new: ObjectId, old: ObjectId) -> bool {
        let Ok(walk) = self.repo.rev_walk([new]).all() else {
            return false;
        };
        walk.take(ANCESTRY_LIMIT)
            .filter_map(Result::ok)
            .any(|info| info.id == old)
    }

    /// Lists the remote refs we track and fetches if they moved. Returns the remote tip (the
    /// tracking ref's new value) if the fetch changed or confirmed it, `None` for a commit rev.
    fn fetch(&self, interrupt: &AtomicBool) -> Result<Option<ObjectId>, GitError> {
        let candidates = self.rev.candidates();
        let specs: Vec<String> = candidates
            .iter()
            .map(|(remote, local)| format!("+{remote}:{local}"))
            .collect();
        let remote = self
            .repo
            .remote_at_without_url_rewrite(self.remote.url.as_str())
            .map_err(|e| self.remote_err(describe(&e)))?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(
                specs.iter().map(String::as_str),
                gix::remote::Direction::Fetch,
            )
            .map_err(|e| self.remote_err(describe(&e)))?;
        if let Some(daemon) = git_daemon_target(&self.remote.url) {
            // Our own socket, so that a server that stops answering cannot hang the poll.
            let transport = self.git_daemon_transport(&daemon)?;
            let connection = remote.to_connection_with_transport(transport);
            return self.fetch_over(connection, &candidates, interrupt);
        }
        let mut connection = remote
            .connect(gix::remote::Direction::Fetch)
            .map_err(|e| self.remote_err(format!("cannot connect: {}", describe(&e))))?;
        if self.remote.url.starts_with("http://") || self.remote.url.starts_with("https://") {
            connection = connection.with_transport_options(Box::new(http_options(self.timeout)));
        }
        self.fetch_over(connection, &candidates, interrupt)
    }

    /// A git:// connection with connect, read and write timeouts.
    fn git_daemon_transport(
        &self,
        target: &GitDaemonTarget,
    ) -> Result<gix_transport::client::git::blocking_io::Connection<TcpStream, TcpStream>, GitError>
    {
        use std::net::ToSocketAddrs;
        let port = target.port.unwrap_or(9418);
        let addr = (target.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| self.remote_err(format!("cannot resolve {}: {e}", target.host)))?
            .next()
            .ok_or_else(|| self.remote_err(format!("cannot resolve {}", target.host)))?;
        let timeout = self.timeout;
        let read = TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(10)))
            .map_err(|e| self.remote_err(format!("cannot connect: {e}")))?;
        // No Nagle: the protocol is a few small writes per round trip, and waiting for the
        // server's delayed ACK costs ~40 ms each.
        read.set_read_timeout(Some(timeout))
            .and_then(|()| read.set_write_timeout(Some(timeout)))
            .and_then(|()| read.set_nodelay(true))
            .map_err(|e| self.remote_err(format!("cannot set timeouts: {e}")))?;
        let write = read
            .try_clone()
            .map_err(|e| self.remote_err(format!("cannot connect: {e}")))?;
        Ok(gix_transport::client::git::blocking_io::Connection::new(
            read,
            write,
            gix_transport::Protocol::V2,
            target.path.as_str(),
            Some((target.host.clone(), target.port)),
            gix_transport::client::git::ConnectMode::Daemon,
            false,
        ))
    }

    fn fetch_over<T>(
        &self,
        connection: gix::remote::Connection<'_, '_, '_, T>,
        candidates: &[(String, String)],
        interrupt: &AtomicBool,
    ) -> Result<Option<ObjectId>, GitError>
    where
        T: gix_transport::client::blocking_io::Transport,
    {
        let credentials = self.remote.credentials.clone();
        let connection = connection.with_credentials(move |action| match action {
            gix::credentials::helper::Action::Get(ctx) => match &credentials {
                Some(c) => Ok(Some(gix::credentials::protocol::Outcome {
                    identity: gix::sec::identity::Account {
                        username: c.username.clone(),
                        password: c.password.clone(),
                        oauth_refresh_token: None,
                    },
                    next: ctx.into(),
                })),
                None => Ok(None),
            },
            _ => Ok(None),
        });
        let prepare = connection
            .prepare_fetch(gix::progress::Discard, Default::default())
            .map_err(|e| self.remote_err(describe(&e)))?;
        let ref_map = prepare.ref_map();
        let wanted = if matches!(self.rev, Rev::Commit(_)) {
            None
        } else {
            // The first candidate the remote has (a branch before a tag of the same name).
            let found = candidates.iter().find_map(|(remote, local)| {
                ref_map.mappings.iter().find(|m| {
                    m.local
                        .as_ref()
                        .is_some_and(|l| l.as_bstr() == local.as_str())
                        && (remote == "HEAD" || m.remote.as_name().is_some())
                })
            });
            let Some(mapping) = found else {
                return Err(GitError::RefNotFound {
                    repo: self.remote.display.clone(),
                    rev: self.rev.to_string(),
                    local: self.remote.is_local(),
                });
            };
            let (Some(local), Some(remote_id)) = (mapping.local.clone(), mapping.remote.as_id())
            else {
                return Err(GitError::RefNotFound {
                    repo: self.remote.display.clone(),
                    rev: self.rev.to_string(),
                    local: self.remote.is_local(),
                });
            };
            let local = local.to_string();
            let remote_id = remote_id.to_owned();
            if self.tracking_tip(&local)? == Some(remote_id) && self.repo.has_object(remote_id) {
                // Nothing moved: no negotiation, no pack.
                tracing::debug!(repo = %self.remote, rev = %self.rev, "unchanged");
                return Ok(Some(remote_id));
            }
            Some((local, remote_id))
        };
        tracing::debug!(repo = %self.remote, rev = %self.rev, "fetching");
        let mut prepare = prepare;
        if let (Some(depth), Some((local, _))) = (self.shallow, &wanted)
            && self.tracking_tip(local)?.is_none()
        {
            // Only the first fetch is shallow: later ones bring just the new commits, and the
            // old tip stays an ancestor so fast-forwards are not mistaken for rewrites.
            prepare = prepare.with_shallow(gix::remote::fetch::Shallow::DepthAtRemote(depth));
        }
        prepare
            .receive(gix::progress::Discard, interrupt)
            .map_err(|e| self.remote_err(format!("fetch failed: {}", describe(&e))))?;
        match wanted {
            None => Ok(None),
            Some((local, remote_id)) => match self.tracking_tip(&local)? {
                Some(id) if id == remote_id => Ok(Some(id)),
                other => Err(self.remote_err(format!(
                    "after the fetch {local} is {other:?}, expected {remote_id}"
                ))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_user_information() -> Result<(), GitError> {
        let r = Remote::parse("https://bot:s3cr3t@example.com/fleet.git", None)?;
        assert_eq!(r.url(), "https://example.com/fleet.git");
        assert_eq!(r.to_string(), "https://***@example.com/fleet.git");
        assert_eq!(r.credentials(), Some(&Credentials::new("bot", "s3cr3t")));
        assert!(!format!("{r:?}").contains("s3cr3t"));
        assert_eq!(r.redact("denied for s3cr3t"), "denied for ***");
        let explicit = Remote::parse(
            "https://bot:s3cr3t@example.com/fleet.git",
            Some(Credentials::token("t0k")),
        )?;
        assert_eq!(explicit.credentials(), Some(&Credentials::token("t0k")));
        assert!(!format!("{explicit:?}").contains("t0k"));
        assert!(Remote::parse("ftp://example.com/x", None).is_err());
        // Credentials travel over plain http to loopback only.
        assert!(Remote::parse("http://bot:pw@example.com/x", None).is_err());
        assert!(Remote::parse("http://example.com/x", Some(Credentials::token("t"))).is_err());
        assert!(Remote::parse("http://example.com/x", None).is_ok());
        assert!(Remote::parse("http://bot:pw@127.0.0.1:8080/x", None).is_ok());
        assert!(Remote::parse("http://bot:pw@[::1]:8080/x", None).is_ok());
        assert!(Remote::parse("http://bot:pw@localhost/x", None).is_ok());
        let local = Remote::parse("some/dir", None)?;
        assert!(Path::new(local.url()).is_absolute());
        Ok(())
    }

    #[test]
    fn percent_encoded_passwords_are_decoded_and_redacted_in_both_forms() -> Result<(), GitError> {
        let r = Remote::parse("https://al%69ce:p%40ss%3Aw0rd@example.com/f.git", None)?;
        assert_eq!(
            r.credentials(),
            Some(&Credentials::new("alice", "p@ss:w0rd"))
        );
        assert_eq!(r.to_string(), "https://***@example.com/f.git");
        assert_eq!(
            r.redact("sent p@ss:w0rd, typed p%40ss%3Aw0rd"),
            "sent ***, typed ***"
        );
        // A lone or malformed escape stays as written.
        let r = Remote::parse("https://bot:100%25%zz%@example.com/f.git", None)?;
        assert_eq!(r.credentials(), Some(&Credentials::new("bot", "100%%zz%")));
        Ok(())
    }

    #[test]
    fn scp_style_addresses_are_ssh_and_never_carry_a_password() -> Result<(), GitError> {
        assert!(is_url("git@example.com:org/fleet.git"));
        assert!(is_url("alice:PW@host:f.git"));
        assert!(!is_url("./some:dir"));
        assert!(!is_url("/abs/some:dir"));
        assert!(!is_url("plain/dir"));
        let r = Remote::parse("git@example.com:org/fleet.git", None)?;
        assert_eq!(r.url(), "git@example.com:org/fleet.git");
        let err = Remote::parse("alice:PW@host:f.git", None)
            .expect_err("a password in scp syntax")
            .to_string();
        assert!(!err.contains("PW"), "{err}");
        assert!(err.contains("***@host:f.git"), "{err}");
        assert!(err.contains("cannot carry a password"), "{err}");
        assert_eq!(redact_url("alice:PW@host:f.git"), "***@host:f.git");
        assert_eq!(
            redact_url("http://alice:PW@host/f.git"),
            "http://***@host/f.git"
        );
        assert_eq!(redact_url("/srv/fleet"), "/srv/fleet");
        Ok(())
    }

    #[test]
    fn git_daemon_targets() {
        let t = git_daemon_target("git://127.0.0.1:9000/fleet.git").expect("target");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("127.0.0.1", Some(9000), "/fleet.git")
        );
        let t = git_daemon_target("git://[::1]/a/b.git").expect("target");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", None, "/a/b.git")
        );
        let t = git_daemon_target("git://[::1]:9/x").expect("target");
        assert_eq!((t.host.as_str(), t.port), ("::1", Some(9)));
        assert!(git_daemon_target("http://h/x").is_none());
    }

    #[test]
    fn revisions_parse() -> Result<(), GitError> {
        assert_eq!(Rev::parse("")?, Rev::Head);
        assert_eq!(Rev::parse("main")?, Rev::Name("main".into()));
        assert_eq!(Rev::parse("refs/tags/v1")?, Rev::Ref("refs/tags/v1".into()));
        assert!(matches!(
            Rev::parse("0123456789abcdef0123456789abcdef01234567")?,
            Rev::Commit(_)
        ));
        assert!(Rev::parse("a..b").is_err());
        // rev-parse expressions need a local clone (see `open_local`): the error says so.
        for text in ["HEAD~1", "main^", "origin/main...HEAD", "main@{1}"] {
            let e = Rev::parse(text).expect_err(text).to_string();
            assert!(e.contains("need a local clone"), "{text}: {e}");
        }
        assert!(Rev::parse("feature/*").is_err());
        Ok(())
    }
}
