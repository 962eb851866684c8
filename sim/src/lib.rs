//! `flotilla sim`: a simulated Kubernetes API server. One process serves N clusters, each under
//! `http://ADDR/clusters/NAME`, speaking the real JSON wire protocol (discovery, CRUD, watch,
//! the four patch types with server-side apply) so that kubectl and kube-rs work against it.
//! What it models and what it does not: docs/sim.md.

pub mod cluster;
pub mod discovery;
pub mod error;
pub mod fields;
pub mod openapi;
pub mod select;
mod server;
pub mod workload;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use cluster::Cluster;
pub use error::ApiError;

/// Errors starting or running the sim.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid regular expression for {what}: {source}")]
    Regex {
        what: &'static str,
        source: regex::Error,
    },
}

/// How to run the sim.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of clusters, named `sim-1` .. `sim-N`.
    pub clusters: usize,
    /// Where to listen (port 0: any free port).
    pub listen: SocketAddr,
    /// Simulated nodes per cluster.
    pub nodes: usize,
    /// How long a workload takes to become ready after a spec change.
    pub ready_delay: Duration,
    /// Workloads with a container image matching this never become ready.
    pub unready_images: Option<regex::Regex>,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            clusters: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            nodes: 3,
            ready_delay: Duration::from_millis(500),
            unready_images: None,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

impl SimConfig {
    /// Sets `unready_images` from a regular expression.
    pub fn unready_images(mut self, re: &str) -> Result<SimConfig, SimError> {
        self.unready_images = Some(regex::Regex::new(re).map_err(|source| SimError::Regex {
            what: "--unready-images",
            source,
        })?);
        Ok(self)
    }
}

/// One request as seen by the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub cluster: String,
    /// get, list, watch, create, update, patch, delete.
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub field_manager: String,
    pub dry_run: bool,
    /// The HTTP status code answered (200 for watches that started).
    pub code: u16,
}

impl AuditRecord {
    /// Whether the request could change state (dry runs cannot).
    pub fn is_mutation(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete") && !self.dry_run
    }
}

/// State shared by every connection.
pub struct Shared {
    pub clusters: Vec<Arc<Cluster>>,
    audit: Mutex<Vec<AuditRecord>>,
    pub(crate) bookmark_interval: Duration,
}

impl Shared {
    pub(crate) fn record(&self, rec: AuditRecord) {
        self.audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(rec);
    }
}

/// The cluster names of a sim with `n` clusters.
pub fn cluster_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("sim-{i}")).collect()
}

/// A kubeconfig with one context per cluster (no credentials), the first one current.
pub fn kubeconfig(addr: SocketAddr, names: &[String]) -> String {
    let mut s = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for n in names {
        s.push_str(&format!(
            "- name: {n}\n  cluster:\n    server: http://{addr}/clusters/{n}\n"
        ));
    }
    s.push_str("contexts:\n");
    for n in names {
        s.push_str(&format!(
            "- name: {n}\n  context:\n    cluster: {n}\n    user: sim\n    namespace: default\n"
        ));
    }
    s.push_str(&format!(
        "current-context: {}\nusers:\n- name: sim\n  user: {{}}\npreferences: {{}}\n",
        names.first().map(String::as_str).unwrap_or("")
    ));
    s
}

/// A running sim started with [`start`]; dropping it stops the server.
pub struct SimHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/clusters/NAME`.
    pub fn server_url(&self, cluster: &str) -> String {
        format!("http://{}/clusters/{cluster}", self.addr)
    }

    pub fn cluster_names(&self) -> Vec<String> {
        self.shared
            .clusters
            .iter()
            .map(|c| c.name.clone())
            .collect()
    }

    /// A cluster, for inspection from tests.
    pub fn cluster(&self, name: &str) -> Option<Arc<Cluster>> {
        self.shared
            .clusters
            .iter()
            .find(|c| c.name == name)
            .cloned()
    }

    /// The kubeconfig text for this sim.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(self.addr, &self.cluster_names())
    }

    /// A copy of the audit log so far.
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.shared
            .audit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops serving: the listener closes and open connections (watches included) end.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let _ = self.stop.send(true);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(200));
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.stop_now();
    }
}

fn build_shared(config: &SimConfig) -> Arc<Shared> {
    let clusters = cluster_names(config.clusters)
        .iter()
        .enumerate()
        .map(|(i, n)| Arc::new(Cluster::new(n, i as u64 + 1, config.nodes)))
        .collect();
    Arc::new(Shared {
        clusters,
        audit: Mutex::new(Vec::new()),
        bookmark_interval: config.bookmark_interval,
    })
}

/// Starts the sim on its own runtime (two worker threads) and returns once it listens.
pub fn start(config: SimConfig) -> Result<SimHandle, SimError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flotilla-sim")
        .enable_all()
        .build()
        .map_err(SimError::Runtime)?;
    let listener = runtime
        .block_on(TcpListener::bind(config.listen))
        .map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| SimError::Bind {
        addr: config.listen,
        source,
    })?;
    let shared = build_shared(&config);
    let (stop, stopped) = watch::channel(false);
    runtime.spawn(serve(listener, shared.clone(), config, stopped));
    Ok(SimHandle {
        addr,
        shared,
        stop,
        runtime: Some(runtime),
    })
}

/// Serves until `stop` turns true: accepts connections and runs the workload simulation.
async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    config: SimConfig,
    mut stop: watch::Receiver<bool>,
) {
    let sim = workload::Simulation {
        ready_delay: config.ready_delay,
        unready_images: config.unready_images.clone(),
    };
    let ticker_shared = shared.clone();
    let ticker = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            for c in &ticker_shared.clusters {
                sim.tick(c);
            }
        }
    });
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let shared = shared.clone();
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| server::handle(shared.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::select! {
                        r = conn => {
                            if let Err(e) = r {
                                tracing::debug!(error = %e, "connection ended");
                            }
                        }
                        _ = stop.changed() => {}
                    }
                });
            }
        }
    }
    ticker.abort();
}

/// `flotilla sim`: starts, writes the kubeconfig, and serves until SIGINT or SIGTERM.
pub fn run_until_signal(
    config: SimConfig,
    kubeconfig_out: &std::path::Path,
) -> Result<(), SimError> {
    let handle = start(config)?;
    std::fs::write(kubeconfig_out, handle.kubeconfig()).map_err(|source| SimError::Kubeconfig {
        path: kubeconfig_out.display().to_string(),
        source,
    })?;
    tracing::info!(addr = %handle.addr(), clusters = handle.cluster_names().len(), "flotilla sim serving");
    eprintln!(
        "flotilla sim: {} clusters on http://{}/clusters/NAME; kubeconfig {}",
        handle.cluster_names().len(),
        handle.addr(),
        kubeconfig_out.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SimError::Runtime)?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
    });
    handle.shutdown();
    Ok(())
}
