//! `flotilla sim`: a simulated Kubernetes API server. One process serves N clusters, each under
//! `http://ADDR/clusters/NAME`, speaking the real JSON wire protocol (discovery, CRUD, watch,
//! the four patch types with server-side apply) so that kubectl and kube-rs work against it.
//! What it models and what it does not: docs/sim.md.

pub mod capacity;
pub mod cluster;
pub mod discovery;
pub mod error;
pub mod faults;
pub mod fields;
pub mod merge;
pub mod openapi;
pub mod pods;
pub mod select;
mod server;
pub mod table;
pub mod workload;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use capacity::{NodeCapacity, Resources};
pub use cluster::Cluster;
pub use error::ApiError;
pub use faults::Faults;

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
    /// Workloads with a container image matching this crash-loop (never ready; Jobs fail).
    pub crash_images: Option<regex::Regex>,
    /// How often a watch that asked for bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Events kept per cluster for watches resuming from a resourceVersion (older: 410).
    pub watch_history: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            clusters: 1,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            nodes: 3,
            ready_delay: Duration::from_millis(500),
            unready_images: None,
            crash_images: None,
            bookmark_interval: Duration::from_secs(5),
            watch_history: 1000,
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

    /// Sets `crash_images` from a regular expression.
    pub fn crash_images(mut self, re: &str) -> Result<SimConfig, SimError> {
        self.crash_images = Some(regex::Regex::new(re).map_err(|source| SimError::Regex {
            what: "--crash-images",
            source,
        })?);
        Ok(self)
    }
}

/// One request as seen by the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub cluster: String,
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
    pub field_manager: String,
    pub dry_run: bool,
    /// The HTTP status code answered (200 for watches that started).
    pub code: u16,
    /// The request's `User-Agent` (flotilla replicas add their id).
    pub user_agent: String,
}

impl AuditRecord {
    /// Whether the request could change state (dry runs cannot).
    pub fn is_mutation(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        ) && !self.dry_run
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

    /// A JSON merge patch of one object by `manager`, as `kubectl edit`/`scale` would send
    /// it (demos and tests make hand edits with it). `resource` is `group/version/plural`
    /// (`apps/v1/deployments`; core: `v1/configmaps`).
    pub fn edit(
        &self,
        cluster: &str,
        resource: &str,
        namespace: &str,
        name: &str,
        merge_patch: &str,
        manager: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let parts: Vec<&str> = resource.split('/').collect();
        let (group, version, plural) = match parts.as_slice() {
            [v, p] => ("", *v, *p),
            [g, v, p] => (*g, *v, *p),
            _ => return Err(ApiError::bad_request("resource is group/version/plural")),
        };
        let c = self
            .cluster(cluster)
            .ok_or_else(|| ApiError::bad_request("no such cluster"))?;
        let def = c
            .resource(group, version, plural)
            .ok_or_else(|| ApiError::bad_request("no such resource"))?;
        let query = cluster::Query::from([("fieldManager".to_string(), manager.to_string())]);
        c.patch(
            &def,
            namespace,
            name,
            None,
            "application/merge-patch+json",
            merge_patch.as_bytes(),
            &query,
            manager,
        )
        .map(|(_, v)| v)
    }

    /// The kubeconfig text for this sim.
    pub fn kubeconfig(&self) -> String {
        kubeconfig(self.addr, &self.cluster_names())
    }

    /// Sets the faults of one cluster (false if there is no such cluster).
    pub fn set_faults(&self, cluster: &str, faults: Faults) -> bool {
        match self.cluster(cluster) {
            Some(c) => {
                c.set_faults(faults);
                true
            }
            None => false,
        }
    }

    /// Overrides `--unready-images` for one cluster at runtime (`None`: the global setting).
    pub fn set_unready_images(&self, cluster: &str, re: Option<regex::Regex>) -> bool {
        match self.cluster(cluster) {
            Some(c) => {
                c.set_unready_images(re);
                true
            }
            None => false,
        }
    }

    /// Per node of one cluster: allocatable capacity, the requests of the simulated Pods on
    /// it, and the free remainder (`None` if there is no such cluster).
    pub fn free_capacity(&self, cluster: &str) -> Option<Vec<NodeCapacity>> {
        self.cluster(cluster).map(|c| c.free_capacity())
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
            if tokio::runtime::Handle::try_current().is_ok() {
                // Inside an async context blocking is not allowed: let the tasks end alone.
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_millis(200));
            }
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
        .map(|(i, n)| {
            Arc::new(Cluster::new(
                n,
                i as u64 + 1,
                config.nodes,
                config.watch_history,
            ))
        })
        .collect();
    Arc::new(Shared {
        clusters,
        audit: Mutex::new(Vec::new()),
        bookmark_interval: config.bookmark_interval,
    })
}

/// Starts the sim on its own runtime (two worker threads) and returns once it listens. It
/// may be called from synchronous or asynchronous code.
pub fn start(config: SimConfig) -> Result<SimHandle, SimError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("flotilla-sim")
        .enable_all()
        .build()
        .map_err(SimError::Runtime)?;
    // Bound with std and handed to tokio (no `block_on`), so that async code (a
    // `#[tokio::test]`) can start a sim too.
    let bind_err = |source| SimError::Bind {
        addr: config.listen,
        source,
    };
    let std_listener = std::net::TcpListener::bind(config.listen).map_err(bind_err)?;
    std_listener.set_nonblocking(true).map_err(bind_err)?;
    let listener = {
        let _guard = runtime.enter();
        TcpListener::from_std(std_listener).map_err(bind_err)?
    };
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
        crash_images: config.crash_images.clone(),
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

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// One raw HTTP/1.1 request; returns the status code and the whole response text.
    fn http(addr: SocketAddr, method: &str, path: &str, ctype: &str, body: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, out)
    }

    fn sim() -> SimHandle {
        start(SimConfig {
            bookmark_interval: Duration::from_millis(200),
            ..Default::default()
        })
        .expect("start")
    }

    const CMS: &str = "/clusters/sim-1/api/v1/namespaces/default/configmaps";

    #[test]
    fn malformed_requests_are_status_400s() {
        let s = sim();
        let a = s.addr();
        for (method, path, ctype, body) in [
            ("POST", CMS, "application/json", "{not json"),
            ("POST", CMS, "application/json", "[1,2]"),
            ("POST", CMS, "application/json", "{\"metadata\": 5}"),
            (
                "PATCH",
                &format!("{CMS}/x?fieldManager=m"),
                "application/apply-patch+yaml",
                "a: [",
            ),
            ("GET", &format!("{CMS}?labelSelector=a%20b%20c"), "", ""),
            ("GET", &format!("{CMS}?limit=x"), "", ""),
            ("GET", &format!("{CMS}?continue=zz"), "", ""),
            ("GET", &format!("{CMS}?fieldSelector=spec.x%3D1"), "", ""),
        ] {
            let (code, text) = http(a, method, path, ctype, body);
            assert!(code == 400 || code == 422, "{method} {path} {body}: {text}");
            assert!(
                text.contains("\"kind\":\"Status\"") && text.contains("\"status\":\"Failure\""),
                "{text}"
            );
        }
        let (code, text) = http(a, "GET", "/clusters/sim-9/api", "", "");
        assert_eq!(code, 404, "{text}");
        let (code, text) = http(
            a,
            "PATCH",
            &format!("{CMS}/x"),
            "application/apply-patch+yaml",
            "{}",
        );
        assert_eq!(code, 422, "fieldManager is required: {text}");
        let (code, _) = http(
            a,
            "POST",
            CMS,
            "application/vnd.kubernetes.protobuf",
            "k8s\0",
        );
        assert_eq!(code, 415);
        // The server survived all of it.
        assert_eq!(http(a, "GET", "/clusters/sim-1/version", "", "").0, 200);
    }

    #[test]
    fn list_pages_with_limit_and_continue() {
        let s = sim();
        let a = s.addr();
        for n in ["a", "b", "c"] {
            let body =
                format!("{{\"metadata\":{{\"name\":\"{n}\",\"labels\":{{\"k\":\"{n}\"}}}}}}");
            assert_eq!(http(a, "POST", CMS, "application/json", &body).0, 201);
        }
        let (_, text) = http(a, "GET", &format!("{CMS}?limit=2"), "", "");
        let json_start = text.find("\r\n\r\n").map(|i| i + 4).unwrap_or(0);
        let body = &text[json_start..];
        let token = body
            .split("\"continue\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("a continue token");
        let (_, rest) = http(a, "GET", &format!("{CMS}?limit=2&continue={token}"), "", "");
        assert!(
            rest.contains("\"name\":\"c\"") && !rest.contains("\"name\":\"a\""),
            "{rest}"
        );
        let (_, sel) = http(
            a,
            "GET",
            &format!("{CMS}?labelSelector=k%20notin%20(a,b)"),
            "",
            "",
        );
        assert!(
            sel.contains("\"name\":\"c\"") && !sel.contains("\"name\":\"b\""),
            "{sel}"
        );
    }

    #[test]
    fn watch_replays_from_resource_version_with_bookmarks() {
        let s = sim();
        let a = s.addr();
        let (_, list) = http(a, "GET", CMS, "", "");
        let rv: u64 = list
            .split("\"resourceVersion\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|r| r.parse().ok())
            .expect("list resourceVersion");
        http(
            a,
            "POST",
            CMS,
            "application/json",
            "{\"metadata\":{\"name\":\"w\"}}",
        );
        http(
            a,
            "PATCH",
            &format!("{CMS}/w"),
            "application/merge-patch+json",
            "{\"data\":{\"x\":\"1\"}}",
        );
        http(a, "DELETE", &format!("{CMS}/w"), "application/json", "");
        let (code, text) = http(
            a,
            "GET",
            &format!(
                "{CMS}?watch=1&resourceVersion={rv}&allowWatchBookmarks=true&timeoutSeconds=1"
            ),
            "",
            "",
        );
        assert_eq!(code, 200);
        let added = text.find("{\"type\":\"ADDED\"").expect("ADDED");
        let modified = text.find("{\"type\":\"MODIFIED\"").expect("MODIFIED");
        let deleted = text.find("{\"type\":\"DELETED\"").expect("DELETED");
        assert!(added < modified && modified < deleted, "{text}");
        assert!(text.contains("{\"type\":\"BOOKMARK\""), "{text}");
        // Watch-list: the current objects, then a bookmark that ends the initial state.
        http(
            a,
            "POST",
            CMS,
            "application/json",
            "{\"metadata\":{\"name\":\"v\"}}",
        );
        let (_, text) = http(
            a,
            "GET",
            &format!(
                "{CMS}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1"
            ),
            "",
            "",
        );
        let added = text.find("\"name\":\"v\"").expect("initial ADDED");
        let end = text
            .find("k8s.io/initial-events-end")
            .expect("initial-events-end");
        assert!(added < end, "{text}");
        let audit = s.audit();
        assert!(audit.iter().any(|r| r.verb == "watch"));
        assert_eq!(audit.iter().filter(|r| r.is_mutation()).count(), 4);
    }

    #[test]
    fn faults_from_the_admin_endpoint_and_the_rust_api() {
        let s = sim();
        let a = s.addr();
        let faults = "{\"errorRate\": 0.5, \"errorCode\": 429, \"latencyMs\": 20}";
        let (code, text) = http(
            a,
            "PUT",
            "/admin/clusters/sim-1/faults",
            "application/json",
            faults,
        );
        assert_eq!(code, 200, "{text}");
        let started = std::time::Instant::now();
        let codes: Vec<u16> = (0..4)
            .map(|_| http(a, "GET", "/clusters/sim-1/api/v1/namespaces", "", "").0)
            .collect();
        assert_eq!(codes.iter().filter(|c| **c == 429).count(), 2, "{codes:?}");
        assert!(
            started.elapsed() >= Duration::from_millis(80),
            "latency applies"
        );
        let (_, text) = http(a, "GET", "/clusters/sim-1/version", "", "");
        assert!(
            text.contains("TooManyRequests") || text.contains("gitVersion"),
            "{text}"
        );
        // Other clusters are unaffected; bad fault documents are 400s.
        let s2 = start(SimConfig {
            clusters: 2,
            ..Default::default()
        })
        .expect("start");
        assert!(s2.set_faults(
            "sim-2",
            Faults {
                partition: true,
                ..Default::default()
            }
        ));
        let (code, text) = http(s2.addr(), "GET", "/clusters/sim-2/api", "", "");
        assert_eq!(code, 0, "a partition answers nothing: {text}");
        assert_eq!(http(s2.addr(), "GET", "/clusters/sim-1/api", "", "").0, 200);
        assert!(!s2.set_faults("sim-9", Faults::default()));
        let (code, _) = http(
            a,
            "PUT",
            "/admin/clusters/sim-1/faults",
            "application/json",
            "{\"errorRate\": 7}",
        );
        assert_eq!(code, 400);
        let (code, _) = http(
            a,
            "PUT",
            "/admin/clusters/sim-1/faults",
            "application/json",
            "{}",
        );
        assert_eq!(code, 200);
        assert_eq!(http(a, "GET", "/clusters/sim-1/api", "", "").0, 200);
        let path = "/admin/clusters/sim-1/unready-images";
        let (code, text) = http(a, "PUT", path, "text/plain", "^bad/");
        assert!(code == 200 && text.contains("^bad/"), "{text}");
        assert_eq!(http(a, "PUT", path, "text/plain", "(").0, 400);
        let (_, text) = http(a, "PUT", path, "text/plain", "");
        assert!(text.contains("\"unreadyImages\":null"), "{text}");
    }

    #[test]
    fn kubeconfig_has_a_context_per_cluster() {
        let names = cluster_names(2);
        let k = kubeconfig(SocketAddr::from(([127, 0, 0, 1], 80)), &names);
        assert!(k.contains("server: http://127.0.0.1:80/clusters/sim-2"));
        assert!(k.contains("- name: sim-1\n  context:"));
    }
}
