//! [`Connector`]: one loaded kubeconfig and the client settings, making one [`KubeCluster`]
//! per fleet cluster from its kubeconfig context.

use std::path::Path;
use std::time::Duration;

use kube::config::KubeConfigOptions;

use crate::budget::RetryPolicy;
use crate::kube_cluster::KubeCluster;
use crate::kubeconfig::{Kubeconfig, KubeconfigError, Paths};

/// Why a fleet cluster could not be connected. Messages name the fleet cluster, the
/// context and the kubeconfig files; never credentials.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "fleet cluster {cluster:?}: no context {context:?} in kubeconfig {} (contexts: {})",
        Paths(paths),
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )]
    UnknownContext {
        cluster: String,
        context: String,
        paths: Vec<std::path::PathBuf>,
        known: Vec<String>,
    },
    #[error(
        "fleet cluster {cluster:?}: context {context:?} in kubeconfig {}: {message}",
        Paths(paths)
    )]
    Config {
        cluster: String,
        context: String,
        paths: Vec<std::path::PathBuf>,
        message: String,
    },
    #[error("fleet cluster {cluster:?}: cannot build a client for context {context:?}: {message}")]
    Client {
        cluster: String,
        context: String,
        message: String,
    },
}

/// How every [`KubeCluster`] made by a [`Connector`] talks to its API server.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSettings {
    /// Sustained requests per second per cluster (a value that is not positive: no limit).
    pub qps: f64,
    /// Requests allowed at once above `qps`.
    pub burst: u32,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time to wait for a response; each attempt is also bounded by
    /// `connect_timeout + read_timeout` in all.
    pub read_timeout: Duration,
    pub retry: RetryPolicy,
    /// Objects per page when listing (`limit`, then `continue`).
    pub list_page_size: u32,
    /// The `User-Agent` of every request (`flotilla/VERSION`; a replica adds its id, so a
    /// cluster's audit log tells replicas apart).
    pub user_agent: String,
    /// Requests in flight at once per cluster (every connection to it made through one
    /// connector counts together). Over HTTP/1.1 each needs a connection of its own, and an
    /// idle one is kept for 90 s: 1 keeps one connection per cluster, as client-go's one
    /// HTTP/2 connection does, so a fleet of N clusters holds about N sockets however many
    /// placements and checks reach a cluster at once.
    pub max_in_flight: usize,
}

impl Default for ClientSettings {
    fn default() -> ClientSettings {
        ClientSettings {
            qps: 50.0,
            burst: 100,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            list_page_size: 500,
            user_agent: format!("flotilla/{}", env!("CARGO_PKG_VERSION")),
            max_in_flight: 1,
        }
    }
}

/// Sets the client's `User-Agent` (a value that is not a valid header is left out).
fn user_agent(config: &mut kube::Config, settings: &ClientSettings) {
    match http::HeaderValue::from_str(&settings.user_agent) {
        Ok(v) => config.headers.push((http::header::USER_AGENT, v)),
        Err(_) => {
            tracing::warn!(user_agent = %settings.user_agent, "not a valid User-Agent; left out")
        }
    }
}

/// Makes [`KubeCluster`]s from one kubeconfig.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use flotilla_cluster::Connector;
/// let connector = Connector::load(None)?; // like kubectl: KUBECONFIG, else ~/.kube/config
/// let prod = connector.connect("prod-eu", "gke_prod_eu", false).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Connector {
    kubeconfig: Kubeconfig,
    settings: ClientSettings,
    /// One HTTP client (connection pool, TLS configuration) per (context, impersonated
    /// user), shared by every connection made through this connector and its clones: a
    /// daemon's read-only and read-write connections to a cluster share one pool.
    clients: ClientCache,
}

#[derive(Clone, Default)]
struct ClientCache(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<ClientKey, Shared>>>);

/// (context, impersonated user).
type ClientKey = (String, Option<String>);

/// A client and the limit on its requests in flight, shared by its connections.
#[derive(Clone)]
struct Shared {
    client: kube::Client,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for ClientCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "ClientCache({n} clients)")
    }
}

impl Connector {
    pub fn new(kubeconfig: Kubeconfig) -> Connector {
        Connector {
            kubeconfig,
            settings: ClientSettings::default(),
            clients: ClientCache::default(),
        }
    }

    /// [`Kubeconfig::load`] then [`Connector::new`].
    pub fn load(path: Option<&Path>) -> Result<Connector, KubeconfigError> {
        Ok(Connector::new(Kubeconfig::load(path)?))
    }

    pub fn with_settings(mut self, settings: ClientSettings) -> Connector {
        self.settings = settings;
        // Clients are built with the settings: none made before is reused.
        self.clients = ClientCache::default();
        self
    }

    pub fn settings(&self) -> &ClientSettings {
        &self.settings
    }

    pub fn kubeconfig(&self) -> &Kubeconfig {
        &self.kubeconfig
    }

    /// The fleet cluster `cluster` reached through kubeconfig context `context`. With
    /// `read_only`, every mutation (dry-runs included) is refused before it is sent.
    ///
    /// Nothing is sent to the cluster here (discovery is lazy); exec credential plugins may
    /// run.
    pub async fn connect(
        &self,
        cluster: &str,
        context: &str,
        read_only: bool,
    ) -> Result<KubeCluster, ConnectError> {
        self.connect_as(cluster, context, read_only, None).await
    }

    /// Like [`Connector::connect`], with every request sent impersonating `user`
    /// (`Impersonate-User`, e.g. `system:serviceaccount:team-a:deployer`): the API server
    /// authorizes each request as that user, after checking that the context's own identity
    /// may `impersonate` it. A team's applies go through such a connection.
    pub async fn connect_as(
        &self,
        cluster: &str,
        context: &str,
        read_only: bool,
        impersonate: Option<&str>,
    ) -> Result<KubeCluster, ConnectError> {
        if !self.kubeconfig.has_context(context) {
            return Err(ConnectError::UnknownContext {
                cluster: cluster.into(),
                context: context.into(),
                paths: self.kubeconfig.paths().to_vec(),
                known: self
                    .kubeconfig
                    .contexts()
                    .into_iter()
                    .map(str::to_string)
                    .collect(),
            });
        }
        let key = (context.to_string(), impersonate.map(str::to_string));
        let cached = self
            .clients
            .0
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned());
        let shared = match cached {
            Some(c) => c,
            None => {
                let c = Shared {
                    client: self.build_client(cluster, context, impersonate).await?,
                    in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(
                        self.settings.max_in_flight.max(1),
                    )),
                };
                if let Ok(mut m) = self.clients.0.lock() {
                    m.insert(key, c.clone());
                }
                c
            }
        };
        tracing::debug!(
            cluster,
            context,
            read_only,
            impersonate,
            "cluster client ready"
        );
        Ok(
            KubeCluster::new(cluster, context, read_only, shared.client, &self.settings)
                .impersonating(impersonate)
                .sharing_requests(shared.in_flight),
        )
    }

    /// A new HTTP client for `context` (impersonating `impersonate`), with the settings.
    async fn build_client(
        &self,
        cluster: &str,
        context: &str,
        impersonate: Option<&str>,
    ) -> Result<kube::Client, ConnectError> {
        install_crypto_provider();
        let options = KubeConfigOptions {
            context: Some(context.to_string()),
            cluster: None,
            user: None,
        };
        let mut config =
            kube::Config::from_custom_kubeconfig(self.kubeconfig.only_context(context), &options)
                .await
                .map_err(|e| ConnectError::Config {
                    cluster: cluster.into(),
                    context: context.into(),
                    paths: self.kubeconfig.paths().to_vec(),
                    message: e.to_string(),
                })?;
        config.connect_timeout = Some(self.settings.connect_timeout);
        config.read_timeout = Some(self.settings.read_timeout);
        user_agent(&mut config, &self.settings);
        // A plain-HTTP server (a sim, a local proxy) never uses TLS: an empty trust store
        // instead of the system's, which kube would otherwise load and parse again for every
        // cluster (CPU and memory per cluster).
        if config.cluster_url.scheme_str() == Some("http") && config.root_cert.is_none() {
            config.root_cert = Some(Vec::new());
        }
        if let Some(user) = impersonate {
            // Only this user: no groups of the context's own identity are carried along.
            config.auth_info.impersonate = Some(user.to_string());
            config.auth_info.impersonate_groups = None;
        }
        // Time a response from when its request was written, not from when the pooled
        // connection went idle.
        config.reset_reader_on_write = true;
        // Retries are ours (budget::RetryPolicy), counted against the token bucket.
        config.default_retry = false;
        kube::Client::try_from(config).map_err(|e| ConnectError::Client {
            cluster: cluster.into(),
            context: context.into(),
            message: e.to_string(),
        })
    }
}

impl Connector {
    /// A read-write connection with the pod's service account (`KUBERNETES_SERVICE_HOST`,
    /// the mounted token and CA), default client settings. For a daemon running in the
    /// cluster it coordinates in (its Leases); the fleet's clusters come from a kubeconfig.
    pub async fn in_cluster(cluster: &str) -> Result<KubeCluster, ConnectError> {
        install_crypto_provider();
        let settings = ClientSettings::default();
        let mut config = kube::Config::incluster().map_err(|e| ConnectError::Client {
            cluster: cluster.into(),
            context: "(in-cluster)".into(),
            message: e.to_string(),
        })?;
        config.connect_timeout = Some(settings.connect_timeout);
        config.read_timeout = Some(settings.read_timeout);
        user_agent(&mut config, &settings);
        config.reset_reader_on_write = true;
        config.default_retry = false;
        let client = kube::Client::try_from(config).map_err(|e| ConnectError::Client {
            cluster: cluster.into(),
            context: "(in-cluster)".into(),
            message: e.to_string(),
        })?;
        Ok(KubeCluster::new(
            cluster,
            "(in-cluster)",
            false,
            client,
            &settings,
        ))
    }
}

/// rustls needs a process-wide crypto provider when more than one is compiled in (kube asks
/// for ring, other dependencies bring aws-lc-rs). Installs ring unless the process already
/// chose one.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            // Err only when another thread installed one in between: that one is kept.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}
