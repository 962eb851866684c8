//! The daemon's settings, and their validation before anything is bound or started.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flotilla_source::git::{Credentials, Remote, Rev};

use crate::webhook::Secret;

/// Everything `flotilla serve` is told (flags, environment, config file), resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// How scheduled backups reach S3-compatible stores (endpoint, region, credentials from
    /// the environment or files): never from fleet.yaml, redacted in `Debug`.
    pub backup_store: flotilla_backup::StoreSettings,
    /// The fleet repository URL (file://, git://, http(s)://) or a local repository path.
    pub repo: String,
    /// The branch (or tag, full ref) to follow.
    pub rev: String,
    /// The fleet file, relative to the repository root.
    pub fleet_file: String,
    pub kubeconfig: Option<PathBuf>,
    /// Rollout state (redb), when `state_url` is not set.
    pub state_dir: PathBuf,
    /// Rollout state in PostgreSQL (`postgres://user@host:port/db`), shared by replicas.
    pub state_url: Option<String>,
    /// Several replicas, one fleet: Leases in a management cluster (`None`: this daemon
    /// drives the whole fleet alone).
    pub ha: Option<HaSettings>,
    /// Clusters with `connect: agent`: the management cluster their agents pull work from
    /// (`None`: rollouts to such clusters fail, saying so).
    pub agents: Option<AgentSettings>,
    /// Fetched repositories.
    pub cache_dir: PathBuf,
    pub listen: SocketAddr,
    pub poll_interval: Duration,
    /// The longest wait between polls while the remote keeps failing.
    pub max_backoff: Duration,
    pub webhook_secret_file: Option<PathBuf>,
    /// Bearer token required by the mutating API (`POST /api/v1/...`).
    pub api_token_file: Option<PathBuf>,
    pub credentials: Option<Credentials>,
    /// Report only: no rollouts, no self-heal, and every cluster connection refuses
    /// mutating requests.
    pub read_only: bool,
    /// Overrides the fleet's `settings.driftInterval`.
    pub drift_interval: Option<Duration>,
    /// Clusters read at the same time by a drift check.
    pub concurrency: usize,
    /// How long SIGTERM waits for rollouts to reach a step boundary.
    pub drain_grace: Duration,
    /// How often rollouts poll health while waiting.
    pub health_poll: Duration,
    /// How often image policies are scanned (`None`: only on `POST /api/v1/images/scan`).
    pub image_scan_interval: Option<Duration>,
    /// Registry credentials: a docker config.json (default: $DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json, when it exists).
    pub docker_config: Option<PathBuf>,
    /// Registries (host[:port]) reached over plain HTTP besides loopback ones.
    pub insecure_registries: Vec<String>,
    /// The `flotilla` executable that evaluates Jsonnet in capped, killable worker processes
    /// (`jsonnet_worker`); `None` evaluates in-process (jrsonnet unbounded: tests only).
    pub jsonnet_worker: Option<PathBuf>,
    /// age identities for SOPS-encrypted files in bundles (`--sops-age-key-file`,
    /// `SOPS_AGE_KEY_FILE`, `SOPS_AGE_KEY`); `Debug` shows only their public keys.
    pub sops: Option<std::sync::Arc<flotilla_renderers::sops::Keys>>,
    /// Timeouts and the connection cap of the HTTP server.
    pub http_limits: crate::listen::Limits,
    /// How often burst pools are re-split (and on every new revision).
    pub burst_interval: Duration,
    /// Deploy only commits whose signature verifies against `trusted_signers` and/or
    /// `trusted_keys` (docs/signed-commits.md).
    pub verify_commits: bool,
    /// An SSH allowed-signers file (ssh-keygen's format).
    pub trusted_signers: Option<PathBuf>,
    /// Armored OpenPGP public keys.
    pub trusted_keys: Option<PathBuf>,
    /// An unencrypted OpenSSH private key or OpenPGP secret key that signs the image-update
    /// commits it pushes.
    pub signing_key: Option<PathBuf>,
    /// Secrets of notification sinks: one file per secret name (a mounted Kubernetes
    /// Secret); `FLOTILLA_NOTIFY_<NAME>` variables are read besides it.
    pub notification_secrets: Option<PathBuf>,
    /// Fault injection for tests (`FLOTILLA_FAULT_PANIC_PLACEMENT`): this placement's worker
    /// panics once, before its first rollout run.
    pub fault_panic_placement: Option<String>,
    /// Serve the web UI (`/`, `/placements/...`, ...; `flotilla serve --no-ui` turns it off).
    pub ui: bool,
}

impl Config {
    /// Defaults for everything but the repository and the directories.
    pub fn new(repo: impl Into<String>, state_dir: PathBuf, cache_dir: PathBuf) -> Config {
        Config {
            backup_store: flotilla_backup::StoreSettings::default(),
            repo: repo.into(),
            rev: "main".into(),
            fleet_file: "fleet.yaml".into(),
            kubeconfig: None,
            state_dir,
            state_url: None,
            ha: None,
            agents: None,
            cache_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 9410)),
            poll_interval: Duration::from_secs(60),
            max_backoff: Duration::from_secs(600),
            webhook_secret_file: None,
            api_token_file: None,
            credentials: None,
            read_only: false,
            drift_interval: None,
            concurrency: 16,
            drain_grace: Duration::from_secs(30),
            health_poll: Duration::from_millis(500),
            image_scan_interval: Some(Duration::from_secs(300)),
            docker_config: None,
            insecure_registries: Vec::new(),
            jsonnet_worker: None,
            sops: None,
            http_limits: crate::listen::Limits::default(),
            fault_panic_placement: None,
            verify_commits: false,
            trusted_signers: None,
            trusted_keys: None,
            signing_key: None,
            notification_secrets: None,
            ui: true,
            burst_interval: Duration::from_secs(15),
        }
    }
}

/// The management cluster through which agent clusters get their work (docs/agent.md).
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// `None`: the default kubeconfig lookup.
    pub kubeconfig: Option<PathBuf>,
    pub context: String,
}

/// Where and as whom a replica keeps its Lease (docs/daemon.md "High availability").
#[derive(Debug, Clone)]
pub struct HaSettings {
    /// kubeconfig of the management cluster (`None`: the default kubeconfig lookup).
    pub kubeconfig: Option<PathBuf>,
    /// Its context (`None`: the kubeconfig's current context).
    pub context: Option<String>,
    /// The namespace of the replicas' Leases.
    pub namespace: String,
    /// This replica's name (a DNS label; default `POD_NAME`, else the host name).
    pub replica_id: String,
    pub lease_duration: Duration,
    pub renew_period: Duration,
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--repo {repo}: {message}")]
    Repo { repo: String, message: String },
    #[error("--ref {rev}: {message}")]
    Rev { rev: String, message: String },
    #[error("--{flag} {}: {message}", .path.display())]
    File {
        flag: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("--kubeconfig: {0}")]
    Kubeconfig(String),
    #[error("--state {}: {message}", .path.display())]
    State { path: PathBuf, message: String },
    #[error(
        "--listen {0}: the control API would be reachable from other hosts without a token; pass --api-token-file (or listen on 127.0.0.1)"
    )]
    ExposedWithoutToken(SocketAddr),
    #[error("--{flag}: {message}")]
    Value { flag: &'static str, message: String },
    #[error("--{flag} {error}")]
    Trust {
        flag: &'static str,
        error: flotilla_source::git::TrustError,
    },
}

/// What validation produced: parsed and read, ready to run.
pub struct Validated {
    pub config: Config,
    pub remote: Remote,
    pub rev: Rev,
    pub webhook_secret: Option<Secret>,
    pub api_token: Option<Secret>,
    pub connector: flotilla_cluster::Connector,
    pub store: flotilla_state::Store,
    pub registry_logins: flotilla_images::Logins,
    /// The keys commits must be signed with (`--verify-commits`).
    pub trust: Option<std::sync::Arc<flotilla_source::git::Trust>>,
    /// Signs image-update commits (`--signing-key`).
    pub signer: Option<std::sync::Arc<flotilla_source::git::CommitSigner>>,
    /// `STATE/daemon.lock`, locked for the daemon's lifetime: one daemon per redb store
    /// (`None` with PostgreSQL, where replicas coordinate through Leases and fencing).
    pub lock: Option<std::fs::File>,
}

/// The file a running daemon keeps locked in its state directory.
pub const DAEMON_LOCK: &str = "daemon.lock";

/// Locks `dir/daemon.lock` (created if missing); `Ok(None)` when another process holds it.
pub fn lock_state_dir(dir: &Path) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(DAEMON_LOCK))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

fn read_secret(flag: &'static str, path: &Path) -> Result<Secret, ConfigError> {
    let bytes = std::fs::read(path).map_err(|e| ConfigError::File {
        flag,
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    Secret::from_file_contents(&bytes).ok_or_else(|| ConfigError::File {
        flag,
        path: path.to_path_buf(),
        message: "the file is empty".into(),
    })
}

impl Config {
    /// Checks every setting and opens what the daemon will use; nothing is bound yet.
    pub fn validate(self) -> Result<Validated, ConfigError> {
        let remote =
            Remote::parse(&self.repo, self.credentials.clone()).map_err(|e| ConfigError::Repo {
                repo: flotilla_source::git::redact_url(&self.repo),
                message: e.to_string(),
            })?;
        let rev = Rev::parse(&self.rev).map_err(|e| ConfigError::Rev {
            rev: self.rev.clone(),
            message: e.to_string(),
        })?;
        if flotilla_spec::types::RepoPath::parse(&self.fleet_file).is_err() {
            return Err(ConfigError::Value {
                flag: "fleet",
                message: format!("{:?} is not a path inside the repository", self.fleet_file),
            });
        }
        if self.poll_interval < Duration::from_millis(100) {
            return Err(ConfigError::Value {
                flag: "poll-interval",
                message: "at least 100ms".into(),
            });
        }
        if self.concurrency == 0 {
            return Err(ConfigError::Value {
                flag: "concurrency",
                message: "at least 1".into(),
            });
        }
        let webhook_secret = self
            .webhook_secret_file
            .as_deref()
            .map(|p| read_secret("webhook-secret-file", p))
            .transpose()?;
        let api_token = self
            .api_token_file
            .as_deref()
            .map(|p| read_secret("api-token-file", p))
            .transpose()?;
        if let Some(dir) = &self.notification_secrets
            && !dir.is_dir()
        {
            return Err(ConfigError::File {
                flag: "notification-secrets",
                path: dir.clone(),
                message: "not a directory".into(),
            });
        }
        if api_token.is_none() && !self.read_only && !self.listen.ip().is_loopback() {
            return Err(ConfigError::ExposedWithoutToken(self.listen));
        }
        let (trust, signer) = self.signatures()?;
        let connector = flotilla_cluster::Connector::load(self.kubeconfig.as_deref())
            .map_err(|e| ConfigError::Kubeconfig(e.to_string()))?;
        if self.ha.is_some() && self.state_url.is_none() {
            return Err(ConfigError::Value {
                flag: "ha-namespace",
                message: "several replicas need a shared state store: pass --state postgres://..."
                    .into(),
            });
        }
        let (store, lock) = match &self.state_url {
            Some(url) => {
                let store =
                    flotilla_state::Store::open_url(url).map_err(|e| ConfigError::State {
                        path: PathBuf::from(flotilla_source::git::redact_url(url)),
                        message: e.to_string(),
                    })?;
                (store, None)
            }
            None => {
                std::fs::create_dir_all(&self.state_dir).map_err(|e| ConfigError::State {
                    path: self.state_dir.clone(),
                    message: e.to_string(),
                })?;
                let lock = match lock_state_dir(&self.state_dir) {
                    Ok(Some(lock)) => lock,
                    Ok(None) => {
                        return Err(ConfigError::State {
                            path: self.state_dir.clone(),
                            message: "another flotilla serve uses this state directory".into(),
                        });
                    }
                    Err(e) => {
                        return Err(ConfigError::State {
                            path: self.state_dir.clone(),
                            message: e.to_string(),
                        });
                    }
                };
                let store = flotilla_state::Store::open_shared(&self.state_dir).map_err(|e| {
                    ConfigError::State {
                        path: self.state_dir.clone(),
                        message: e.to_string(),
                    }
                })?;
                (store, Some(lock))
            }
        };
        // Manifests holding SOPS-decrypted data are sealed at rest with the same keys.
        let store = match &self.sops {
            Some(keys) => store.sealed(std::sync::Arc::new(crate::adapters::SopsSealer(
                keys.clone(),
            ))),
            None => store,
        };
        // A missing docker config is no logins.
        let registry_logins = match self
            .docker_config
            .clone()
            .or_else(flotilla_images::Logins::default_path)
        {
            Some(p) => {
                flotilla_images::Logins::from_docker_config(&p).map_err(|e| ConfigError::File {
                    flag: "docker-config",
                    path: p.clone(),
                    message: e.to_string(),
                })?
            }
            None => flotilla_images::Logins::default(),
        };
        std::fs::create_dir_all(&self.cache_dir).map_err(|e| ConfigError::File {
            flag: "cache",
            path: self.cache_dir.clone(),
            message: e.to_string(),
        })?;
        Ok(Validated {
            config: self,
            remote,
            rev,
            webhook_secret,
            api_token,
            connector,
            store,
            registry_logins,
            trust,
            signer,
            lock,
        })
    }

    /// Loads the trust anchors and the signing key. Trust comes from these files only, never
    /// from the repository being verified; a trust file without `--verify-commits` (or the
    /// reverse) is refused rather than silently ignored.
    #[allow(clippy::type_complexity)]
    pub fn signatures(
        &self,
    ) -> Result<
        (
            Option<std::sync::Arc<flotilla_source::git::Trust>>,
            Option<std::sync::Arc<flotilla_source::git::CommitSigner>>,
        ),
        ConfigError,
    > {
        let signer = self
            .signing_key
            .as_deref()
            .map(|p| {
                flotilla_source::git::CommitSigner::load(p)
                    .map(std::sync::Arc::new)
                    .map_err(|error| ConfigError::Trust {
                        flag: "signing-key",
                        error,
                    })
            })
            .transpose()?;
        if !self.verify_commits {
            for (flag, given) in [
                ("trusted-signers", &self.trusted_signers),
                ("trusted-keys", &self.trusted_keys),
            ] {
                if given.is_some() {
                    return Err(ConfigError::Value {
                        flag,
                        message: "has no effect without --verify-commits; pass both".into(),
                    });
                }
            }
            return Ok((None, signer));
        }
        if self.trusted_signers.is_none() && self.trusted_keys.is_none() {
            return Err(ConfigError::Value {
                flag: "verify-commits",
                message: "needs the keys to trust: --trusted-signers FILE (SSH allowed signers) and/or --trusted-keys FILE (OpenPGP public keys)".into(),
            });
        }
        let mut trust = flotilla_source::git::Trust::new();
        if let Some(p) = &self.trusted_signers {
            trust
                .load_allowed_signers(p)
                .map_err(|error| ConfigError::Trust {
                    flag: "trusted-signers",
                    error,
                })?;
        }
        if let Some(p) = &self.trusted_keys {
            trust
                .load_openpgp_keys(p)
                .map_err(|error| ConfigError::Trust {
                    flag: "trusted-keys",
                    error,
                })?;
        }
        Ok((Some(std::sync::Arc::new(trust)), signer))
    }
}
