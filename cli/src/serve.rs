//! `flotilla serve` (settings from flags, environment variables and an optional YAML config
//! file, in that order of precedence) and `flotilla status` (the daemon's status API).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use flotilla_daemon::Config;

use crate::INVALID;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Settings of `flotilla serve`. Each flag can also come from its environment variable or
/// from the config file (keys are the flag names: `poll-interval: 30s`).
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Where scheduled backups find S3-compatible stores (credentials from the environment).
    #[command(flatten)]
    pub s3: crate::backup::S3Args,
    /// YAML file with any of the settings below.
    #[arg(long, env = "FLOTILLA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The fleet repository: a Git URL (file://, git://, http(s)://) or a local repository.
    #[arg(long, env = "FLOTILLA_REPO")]
    pub repo: Option<String>,
    /// The branch (or tag, or full ref) to follow [default: main].
    #[arg(long = "ref", env = "FLOTILLA_REF", value_name = "REF")]
    pub rev: Option<String>,
    /// The fleet file, relative to the repository root [default: fleet.yaml].
    #[arg(long, env = "FLOTILLA_FLEET", value_name = "PATH")]
    pub fleet: Option<String>,
    /// kubeconfig naming the clusters' contexts [default: $KUBECONFIG, ~/.kube/config].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Rollout state: a directory (embedded redb, one daemon) or a PostgreSQL URL
    /// `postgres://USER@HOST:PORT/DB` shared by replicas (password from PGPASSWORD)
    /// [default: $XDG_STATE_HOME/flotilla/serve, ~/.local/state/flotilla/serve].
    #[arg(long, env = "FLOTILLA_STATE", value_name = "DIR|URL")]
    pub state: Option<PathBuf>,
    /// Run as one of several replicas: the namespace of the management cluster where each
    /// replica keeps its Lease (needs --state postgres://...).
    #[arg(long, env = "FLOTILLA_HA_NAMESPACE", value_name = "NS")]
    pub ha_namespace: Option<String>,
    /// kubeconfig of the management cluster [default: the pod's service account in a
    /// cluster, else $KUBECONFIG, ~/.kube/config].
    #[arg(long, env = "FLOTILLA_HA_KUBECONFIG", value_name = "FILE")]
    pub ha_kubeconfig: Option<PathBuf>,
    /// Context of the management cluster in that kubeconfig [default: its current context].
    #[arg(long, env = "FLOTILLA_HA_CONTEXT", value_name = "NAME")]
    pub ha_context: Option<String>,
    /// Clusters with `connect: agent`: context of the management cluster their agents pull
    /// work from (in --agents-kubeconfig, else --kubeconfig).
    #[arg(long, env = "FLOTILLA_AGENTS_CONTEXT", value_name = "NAME")]
    pub agents_context: Option<String>,
    /// kubeconfig holding --agents-context [default: --kubeconfig].
    #[arg(long, env = "FLOTILLA_AGENTS_KUBECONFIG", value_name = "FILE")]
    pub agents_kubeconfig: Option<PathBuf>,
    /// This replica's name, a DNS label [default: $POD_NAME, else the host name].
    #[arg(long, env = "FLOTILLA_REPLICA_ID", value_name = "ID")]
    pub replica_id: Option<String>,
    /// How long a replica's Lease lasts without renewal (whole seconds) [default: 15s].
    #[arg(long, env = "FLOTILLA_LEASE_DURATION", value_name = "DURATION", value_parser = crate::parse_duration)]
    pub lease_duration: Option<Duration>,
    /// How often a replica renews its Lease (below half the lease duration) [default: 5s].
    #[arg(long, env = "FLOTILLA_RENEW_PERIOD", value_name = "DURATION", value_parser = crate::parse_duration)]
    pub renew_period: Option<Duration>,
    /// Fetched repositories [default: $XDG_CACHE_HOME/flotilla, ~/.cache/flotilla].
    #[arg(long, env = "FLOTILLA_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Address of the HTTP server (webhooks, /metrics, status API) [default: 127.0.0.1:9410].
    #[arg(long, env = "FLOTILLA_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// How often the repository is polled [default: 1m].
    #[arg(long, env = "FLOTILLA_POLL_INTERVAL", value_name = "DURATION", value_parser = crate::parse_duration)]
    pub poll_interval: Option<Duration>,
    /// File holding the webhook secret (GitHub/generic HMAC key, GitLab token). Without it,
    /// /hooks/git refuses every request.
    #[arg(long, env = "FLOTILLA_WEBHOOK_SECRET_FILE", value_name = "FILE")]
    pub webhook_secret_file: Option<PathBuf>,
    /// File holding the bearer token the control API (POST /api/v1/...) requires. Needed
    /// when --listen is not a loopback address.
    #[arg(long, env = "FLOTILLA_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Directory of notification sink secrets, one file per secret name (a mounted
    /// Kubernetes Secret); `FLOTILLA_NOTIFY_<NAME>` variables are read besides it.
    #[arg(long, env = "FLOTILLA_NOTIFICATION_SECRETS", value_name = "DIR")]
    pub notification_secrets: Option<PathBuf>,
    /// Smart HTTP credentials for the repository: a file holding `user:password` or a token.
    #[arg(long, env = "FLOTILLA_CREDENTIALS_FILE", value_name = "FILE")]
    pub credentials_file: Option<PathBuf>,
    /// Report only: no rollouts, no self-heal; cluster connections refuse every mutating
    /// request.
    #[arg(long, env = "FLOTILLA_READ_ONLY", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub read_only: Option<bool>,
    /// Serve no web UI (the pages at /, /placements/..., /clusters/...); the JSON API and
    /// the event stream stay.
    #[arg(long, env = "FLOTILLA_NO_UI", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub no_ui: Option<bool>,
    /// Overrides the fleet's settings.driftInterval.
    #[arg(long, env = "FLOTILLA_DRIFT_INTERVAL", value_name = "DURATION", value_parser = crate::parse_duration)]
    pub drift_interval: Option<Duration>,
    /// How often burst pools are re-split (also on every new revision) [default: 15s].
    #[arg(long, env = "FLOTILLA_BURST_INTERVAL", value_name = "DURATION", value_parser = crate::parse_duration)]
    pub burst_interval: Option<Duration>,
    /// Clusters read at the same time by a drift check [default: 16].
    #[arg(long, env = "FLOTILLA_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// How long SIGTERM waits for rollouts to reach a step boundary [default: 30s].
    #[arg(long, env = "FLOTILLA_DRAIN_GRACE", value_name = "DURATION", value_parser = crate::parse_duration)]
    pub drain_grace: Option<Duration>,
    /// How often image policies are scanned and chosen tags written back to Git; 0s: only on
    /// POST /api/v1/images/scan [default: 5m].
    #[arg(long, env = "FLOTILLA_IMAGE_SCAN_INTERVAL", value_name = "DURATION", value_parser = crate::parse_duration)]
    pub image_scan_interval: Option<Duration>,
    /// Registry credentials (docker config.json `auths`) [default: $DOCKER_CONFIG/config.json,
    /// else ~/.docker/config.json, when it exists].
    #[arg(long, env = "FLOTILLA_DOCKER_CONFIG", value_name = "FILE")]
    pub docker_config: Option<PathBuf>,
    /// Reach this registry (host[:port]) over plain HTTP; loopback ones always are
    /// (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registries: Vec<String>,
    /// Log lines as text or JSON objects (one per line) [default: text].
    #[arg(long, env = "FLOTILLA_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Deploy only commits signed by a trusted key (--trusted-signers and/or
    /// --trusted-keys); an unsigned or otherwise signed tip is rejected and the last good
    /// revision keeps running.
    #[arg(long, env = "FLOTILLA_VERIFY_COMMITS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub verify_commits: Option<bool>,
    /// SSH allowed-signers file (ssh-keygen's format, as git's gpg.ssh.allowedSignersFile).
    #[arg(long, env = "FLOTILLA_TRUSTED_SIGNERS", value_name = "FILE")]
    pub trusted_signers: Option<PathBuf>,
    /// Armored OpenPGP public keys (gpg --export --armor) whose signatures are trusted.
    #[arg(long, env = "FLOTILLA_TRUSTED_KEYS", value_name = "FILE")]
    pub trusted_keys: Option<PathBuf>,
    /// Unencrypted OpenSSH private key (or armored OpenPGP secret key) that signs the
    /// image-update commits this daemon pushes, as git commit -S does.
    #[arg(long, env = "FLOTILLA_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// age identities that decrypt SOPS-encrypted files in bundles (else the key text in
    /// SOPS_AGE_KEY). See docs/secrets.md.
    #[arg(long, env = "SOPS_AGE_KEY_FILE", value_name = "FILE")]
    pub sops_age_key_file: Option<PathBuf>,
}

/// The settings a config file may hold, by key.
const KEYS: &[&str] = &[
    "repo",
    "ref",
    "fleet",
    "kubeconfig",
    "state",
    "ha-namespace",
    "ha-kubeconfig",
    "ha-context",
    "agents-context",
    "agents-kubeconfig",
    "replica-id",
    "lease-duration",
    "renew-period",
    "cache",
    "listen",
    "poll-interval",
    "webhook-secret-file",
    "api-token-file",
    "notification-secrets",
    "credentials-file",
    "read-only",
    "no-ui",
    "drift-interval",
    "burst-interval",
    "concurrency",
    "drain-grace",
    "image-scan-interval",
    "docker-config",
    "insecure-registries",
    "log-format",
    "verify-commits",
    "trusted-signers",
    "trusted-keys",
    "signing-key",
    "sops-age-key-file",
];

/// Fills every setting the flags and environment left unset from the config file.
fn merge_file(args: &mut ServeArgs, path: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--config {}", path.display()))?;
    let file = path.display().to_string();
    let root =
        flotilla_spec::yaml::parse(&text, &flotilla_spec::Limits::default()).map_err(|e| {
            let pos = e.pos().map(|p| format!("{}:{}:", p.line, p.column));
            anyhow::anyhow!("{file}:{} {}", pos.unwrap_or_default(), e.message())
        })?;
    let flotilla_spec::yaml::Value::Map(entries) = &root.value else {
        if matches!(root.value, flotilla_spec::yaml::Value::Null) {
            return Ok(());
        }
        anyhow::bail!(
            "{file}:{}:{}: expected a mapping of settings",
            root.pos.line,
            root.pos.column
        );
    };
    for (key, node) in entries {
        let at = format!("{file}:{}:{}", key.pos.line, key.pos.column);
        let value = node.to_json();
        let text = || -> anyhow::Result<String> {
            match &value {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => anyhow::bail!("{at}: {} must be a string", key.name),
            }
        };
        let duration = || -> anyhow::Result<Duration> {
            crate::parse_duration(&text()?).map_err(|e| anyhow::anyhow!("{at}: {}: {e}", key.name))
        };
        match key.name.as_str() {
            "repo" => {
                args.repo.get_or_insert(text()?);
            }
            "ref" => {
                args.rev.get_or_insert(text()?);
            }
            "fleet" => {
                args.fleet.get_or_insert(text()?);
            }
            "kubeconfig" => {
                args.kubeconfig.get_or_insert(text()?.into());
            }
            "sops-age-key-file" => {
                args.sops_age_key_file.get_or_insert(text()?.into());
            }
            "state" => {
                args.state.get_or_insert(text()?.into());
            }
            "cache" => {
                args.cache.get_or_insert(text()?.into());
            }
            "ha-namespace" => {
                args.ha_namespace.get_or_insert(text()?);
            }
            "ha-kubeconfig" => {
                args.ha_kubeconfig.get_or_insert(text()?.into());
            }
            "ha-context" => {
                args.ha_context.get_or_insert(text()?);
            }
            "agents-context" => {
                args.agents_context.get_or_insert(text()?);
            }
            "agents-kubeconfig" => {
                args.agents_kubeconfig.get_or_insert(text()?.into());
            }
            "replica-id" => {
                args.replica_id.get_or_insert(text()?);
            }
            "lease-duration" => {
                let d = duration()?;
                args.lease_duration.get_or_insert(d);
            }
            "renew-period" => {
                let d = duration()?;
                args.renew_period.get_or_insert(d);
            }
            "listen" => {
                let addr = text()?
                    .parse()
                    .map_err(|e| anyhow::anyhow!("{at}: listen: {e}"))?;
                args.listen.get_or_insert(addr);
            }
            "poll-interval" => {
                let d = duration()?;
                args.poll_interval.get_or_insert(d);
            }
            "webhook-secret-file" => {
                args.webhook_secret_file.get_or_insert(text()?.into());
            }
            "api-token-file" => {
                args.api_token_file.get_or_insert(text()?.into());
            }
            "notification-secrets" => {
                args.notification_secrets.get_or_insert(text()?.into());
            }
            "credentials-file" => {
                args.credentials_file.get_or_insert(text()?.into());
            }
            "read-only" => {
                let Value::Bool(b) = value else {
                    anyhow::bail!("{at}: read-only must be true or false");
                };
                args.read_only.get_or_insert(b);
            }
            "no-ui" => {
                let Value::Bool(b) = value else {
                    anyhow::bail!("{at}: no-ui must be true or false");
                };
                args.no_ui.get_or_insert(b);
            }
            "drift-interval" => {
                let d = duration()?;
                args.drift_interval.get_or_insert(d);
            }
            "burst-interval" => {
                let d = duration()?;
                args.burst_interval.get_or_insert(d);
            }
            "concurrency" => {
                let n = value.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    anyhow::anyhow!("{at}: concurrency must be a positive number")
                })?;
                args.concurrency.get_or_insert(n as usize);
            }
            "drain-grace" => {
                let d = duration()?;
                args.drain_grace.get_or_insert(d);
            }
            "image-scan-interval" => {
                let d = duration()?;
                args.image_scan_interval.get_or_insert(d);
            }
            "docker-config" => {
                args.docker_config.get_or_insert(text()?.into());
            }
            "insecure-registries" => {
                let Value::Array(items) = &value else {
                    anyhow::bail!("{at}: insecure-registries must be a list of host[:port]");
                };
                if args.insecure_registries.is_empty() {
                    for item in items {
                        let Some(h) = item.as_str() else {
                            anyhow::bail!(
                                "{at}: insecure-registries must be a list of host[:port]"
                            );
                        };
                        args.insecure_registries.push(h.to_string());
                    }
                }
            }
            "verify-commits" => {
                let Value::Bool(b) = value else {
                    anyhow::bail!("{at}: verify-commits must be true or false");
                };
                args.verify_commits.get_or_insert(b);
            }
            "trusted-signers" => {
                args.trusted_signers.get_or_insert(text()?.into());
            }
            "trusted-keys" => {
                args.trusted_keys.get_or_insert(text()?.into());
            }
            "signing-key" => {
                args.signing_key.get_or_insert(text()?.into());
            }
            "log-format" => {
                let f = match text()?.as_str() {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    other => anyhow::bail!("{at}: log-format {other:?}: text or json"),
                };
                args.log_format.get_or_insert(f);
            }
            other => {
                let hint = KEYS
                    .iter()
                    .map(|k| (strsim::jaro_winkler(k, other), k))
                    .filter(|(s, _)| *s > 0.8)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, k)| format!("; did you mean {k:?}?"))
                    .unwrap_or_default();
                anyhow::bail!("{at}: unknown setting {other:?}{hint}");
            }
        }
    }
    Ok(())
}

/// Resolves flags, environment and config file into the daemon's config.
pub fn resolve(mut args: ServeArgs) -> anyhow::Result<(Config, LogFormat)> {
    if let Some(path) = args.config.clone() {
        merge_file(&mut args, &path)?;
    }
    let repo = args
        .repo
        .context("--repo is required (or FLOTILLA_REPO, or `repo:` in --config)")?;
    let state_url = args
        .state
        .as_ref()
        .map(|s| s.to_string_lossy().to_string())
        .filter(|s| s.starts_with("postgres://") || s.starts_with("postgresql://"));
    let state = match args.state {
        Some(s) if state_url.is_none() => s,
        _ => crate::user_dir("XDG_STATE_HOME", ".local/state", "--state")?.join("serve"),
    };
    let cache = match args.cache {
        Some(c) => c,
        None => crate::user_dir("XDG_CACHE_HOME", ".cache", "--cache")?,
    };
    let mut config = Config::new(repo, state, cache);
    config.state_url = state_url;
    match (args.agents_context, args.agents_kubeconfig) {
        (Some(context), kubeconfig) => {
            config.agents = Some(flotilla_daemon::config::AgentSettings {
                kubeconfig: kubeconfig.or_else(|| args.kubeconfig.clone()),
                context,
            });
        }
        (None, Some(_)) => anyhow::bail!("--agents-kubeconfig needs --agents-context"),
        (None, None) => {}
    }
    if let Some(namespace) = args.ha_namespace {
        let replica_id = match args.replica_id {
            Some(id) => id,
            None => match std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()) {
                Some(id) => id,
                None => hostname()?,
            },
        };
        config.ha = Some(flotilla_daemon::config::HaSettings {
            kubeconfig: args.ha_kubeconfig,
            context: args.ha_context,
            namespace,
            replica_id,
            lease_duration: args.lease_duration.unwrap_or(Duration::from_secs(15)),
            renew_period: args.renew_period.unwrap_or(Duration::from_secs(5)),
        });
    } else if args.replica_id.is_some()
        || args.ha_kubeconfig.is_some()
        || args.ha_context.is_some()
        || args.lease_duration.is_some()
        || args.renew_period.is_some()
    {
        anyhow::bail!(
            "--replica-id, --ha-kubeconfig, --ha-context, --lease-duration and --renew-period need --ha-namespace"
        );
    }
    config.jsonnet_worker = Some(std::env::current_exe()?);
    config.sops = crate::sops_keys::load(args.sops_age_key_file.as_deref())?;
    if let Some(r) = args.rev {
        config.rev = r;
    }
    if let Some(f) = args.fleet {
        config.fleet_file = f;
    }
    config.backup_store = args.s3.settings()?;
    config.kubeconfig = args.kubeconfig;
    if let Some(l) = args.listen {
        config.listen = l;
    }
    if let Some(p) = args.poll_interval {
        config.poll_interval = p;
    }
    config.webhook_secret_file = args.webhook_secret_file;
    config.api_token_file = args.api_token_file;
    config.notification_secrets = args.notification_secrets;
    if let Some(f) = &args.credentials_file {
        config.credentials = Some(flotilla_source::git::Credentials::from_file(f)?);
    }
    config.read_only = args.read_only.unwrap_or(false);
    config.ui = !args.no_ui.unwrap_or(false);
    config.drift_interval = args.drift_interval;
    if let Some(b) = args.burst_interval {
        config.burst_interval = b.max(Duration::from_millis(100));
    }
    if let Some(c) = args.concurrency {
        config.concurrency = c;
    }
    if let Some(g) = args.drain_grace {
        config.drain_grace = g;
    }
    if let Some(i) = args.image_scan_interval {
        config.image_scan_interval = (!i.is_zero()).then_some(i);
    }
    config.docker_config = args.docker_config;
    config.insecure_registries = args.insecure_registries;
    config.verify_commits = args.verify_commits.unwrap_or(false);
    config.trusted_signers = args.trusted_signers;
    config.trusted_keys = args.trusted_keys;
    config.signing_key = args.signing_key;
    // Fault injection for tests only; not a documented setting.
    config.fault_panic_placement = std::env::var("FLOTILLA_FAULT_PANIC_PLACEMENT")
        .ok()
        .filter(|s| !s.is_empty());
    Ok((config, args.log_format.unwrap_or(LogFormat::Text)))
}

/// The host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`), lower-cased.
fn hostname() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty());
    name.context("--replica-id: no POD_NAME and no host name to default to; pass --replica-id")
}

/// Runs the daemon until SIGTERM or Ctrl-C, then drains.
pub fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let rt = crate::live::runtime()?;
    rt.block_on(async move {
        let running = flotilla_daemon::start(config).await?;
        // Through the log, so that `--log-format json` keeps stderr one JSON object a line.
        tracing::info!(url = %format!("http://{}", running.addr), "listening");
        wait_for_signal().await;
        tracing::info!("signal received: draining");
        running.shutdown();
        running.wait().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The daemon to talk to: `--server`, else $FLOTILLA_SERVER.
#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// The daemon's address (http://HOST:PORT) [env: FLOTILLA_SERVER].
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// File holding the daemon's API token (for pause, resume, abort, rollback).
    #[arg(long, env = "FLOTILLA_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,
    /// Longest a request to the daemon may take, answer included (default 30s).
    #[arg(long = "server-timeout", value_name = "DURATION", value_parser = crate::parse_duration)]
    pub timeout: Option<Duration>,
}

/// The largest answer the client reads from the daemon; a longer one is an error.
pub const MAX_RESPONSE: usize = 16 << 20;

impl ServerArgs {
    pub fn url(&self) -> Option<String> {
        self.server
            .clone()
            .or_else(|| {
                std::env::var("FLOTILLA_SERVER")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .map(|s| s.trim_end_matches('/').to_string())
    }
}

/// A JSON request to the daemon: (HTTP status, body).
pub fn call(
    server: &ServerArgs,
    base: &str,
    method: &str,
    path: &str,
) -> anyhow::Result<(u16, Value)> {
    let token = match &server.api_token_file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--api-token-file {}", f.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    let url = format!("{base}{path}");
    let rt = crate::live::runtime()?;
    rt.block_on(async {
        let limit = server.timeout.unwrap_or(Duration::from_secs(30));
        let client = reqwest::Client::builder()
            .connect_timeout(limit)
            .timeout(limit)
            .build()?;
        let mut req = match method {
            "POST" => client.post(&url),
            _ => client.get(&url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let mut resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the daemon at {base}"))?;
        let status = resp.status().as_u16();
        let too_long = || {
            anyhow::anyhow!(
                "the daemon at {base} answered {path} with more than {} MiB; not reading further",
                MAX_RESPONSE >> 20
            )
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE as u64)
        {
            return Err(too_long());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            let e = if e.is_timeout() {
                anyhow::anyhow!("no complete answer within {limit:?}")
            } else {
                anyhow::Error::new(e)
            };
            e.context(format!("reading the answer of {base}{path}"))
        })? {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(too_long());
            }
            body.extend_from_slice(&chunk);
        }
        let body = String::from_utf8_lossy(&body).into_owned();
        let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
        Ok((status, value))
    })
}

fn s<'v>(v: &'v Value, pointer: &str) -> &'v str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("-")
}

/// `flotilla status`: what the daemon runs and how its placements stand. Exit 0 when it runs
/// a valid revision and nothing is failing, 1 otherwise, 2 when it cannot be reached.
pub fn status(server: &ServerArgs) -> anyhow::Result<ExitCode> {
    let base = server
        .url()
        .unwrap_or_else(|| "http://127.0.0.1:9410".to_string());
    let (code, v) = call(server, &base, "GET", "/api/v1/fleet")?;
    if code != 200 {
        anyhow::bail!("{base}/api/v1/fleet answered {code}: {v}");
    }
    let mut out = String::new();
    let mut healthy = v.get("ready").and_then(Value::as_bool) == Some(true);
    out.push_str(&format!(
        "fleet {} from {} ({}){}\n",
        s(&v, "/fleet"),
        s(&v, "/repo"),
        s(&v, "/ref"),
        if v.get("readOnly").and_then(Value::as_bool) == Some(true) {
            ", read-only"
        } else {
            ""
        }
    ));
    out.push_str(&format!(
        "  running commit {} (fetched {}, last fetch {} {})\n",
        s(&v, "/revision/commit"),
        s(&v, "/source/fetchedCommit"),
        s(&v, "/source/lastFetchAt"),
        if v.pointer("/source/lastFetchOk").and_then(Value::as_bool) == Some(true) {
            "ok".to_string()
        } else {
            format!("failed: {}", s(&v, "/source/lastError"))
        }
    ));
    if let Some(r) = v.get("replica").filter(|r| !r.is_null()) {
        let members: Vec<&str> = r
            .get("members")
            .and_then(Value::as_array)
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out.push_str(&format!(
            "  replica {} of {} ({}), holding {} units{}\n",
            s(r, "/id"),
            members.len(),
            members.join(", "),
            r.get("unitsHeld").and_then(Value::as_u64).unwrap_or(0),
            if r.get("mayAct").and_then(Value::as_bool) == Some(false) {
                "; its Lease lapsed: not acting until renewed"
            } else {
                ""
            }
        ));
    }
    if let Some(r) = v.get("rejected").filter(|r| !r.is_null()) {
        healthy = false;
        out.push_str(&format!(
            "  commit {} rejected; the last good revision keeps running:\n",
            s(r, "/commit")
        ));
        for e in r
            .get("errors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push_str(&format!("    {}\n", s(e, "/text")));
        }
    }
    if let Some(placements) = v.get("placements").and_then(Value::as_object) {
        out.push_str("placements:\n");
        for (name, p) in placements {
            let phase = s(p, "/phase");
            if matches!(
                phase,
                "Failed" | "RolledBack" | "RollbackFailed" | "Aborted" | "Paused"
            ) || p.get("error").is_some_and(|e| !e.is_null())
            {
                healthy = false;
            }
            let owner = p
                .get("owner")
                .and_then(Value::as_str)
                .map(|o| format!("[{o}] "))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {name:<24} {phase:<12} {owner}{}{}\n",
                s(p, "/lastOutcome"),
                p.get("error")
                    .and_then(Value::as_str)
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(d) = v.get("drift").filter(|d| !d.is_null()) {
        let drifted = d
            .get("driftedClusters")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "drift at {}: {} objects differ{}\n",
            s(d, "/at"),
            d.get("driftedObjects").and_then(Value::as_u64).unwrap_or(0),
            if drifted.is_empty() {
                String::new()
            } else {
                format!(" on {drifted}")
            }
        ));
    }
    if let Some(sinks) = v.get("notifications").and_then(Value::as_array) {
        // A broken or failing sink is shown, not counted against the exit code: the fleet
        // itself is fine.
        out.push_str("notification sinks:\n");
        for k in sinks {
            let n = |f: &str| k.get(f).and_then(Value::as_u64).unwrap_or(0);
            out.push_str(&format!(
                "  {:<24} {:<18} {:<8} sent {}, failed {}, dropped {}, deduplicated {}, queued {}{}\n",
                s(k, "/name"),
                s(k, "/type"),
                s(k, "/state"),
                n("sent"),
                n("failed"),
                n("dropped"),
                n("deduplicated"),
                n("queued"),
                k.get("error")
                    .and_then(Value::as_str)
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(agents) = v.get("agents").and_then(Value::as_object) {
        out.push_str("agent clusters:\n");
        for (name, a) in agents {
            let applied: Vec<String> = a
                .get("applied")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(p, h)| format!("{p}@{}", h.as_str().unwrap_or("-")))
                .collect();
            let report = match a.get("lastReport").and_then(Value::as_str) {
                Some(at) => format!(
                    "last report {at} ({} s before the daemon read it){}",
                    a.get("reportAgeSeconds")
                        .and_then(Value::as_i64)
                        .unwrap_or(0),
                    if a.get("hubReachable").and_then(Value::as_bool) == Some(false) {
                        ", written after an outage"
                    } else {
                        ""
                    }
                ),
                None => "never reported".to_string(),
            };
            out.push_str(&format!(
                "  {name:<24} {report}; applied {}{}\n",
                if applied.is_empty() {
                    "nothing".to_string()
                } else {
                    applied.join(", ")
                },
                a.get("error")
                    .and_then(Value::as_str)
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
    print!("{out}");
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID)
    })
}
