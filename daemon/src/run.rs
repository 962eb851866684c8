//! The daemon's loop. One task per concern — the Git thread (poll, check, render), one worker
//! per placement (its rollout engine), drift checks, the HTTP server — and one loop that
//! receives every trigger as a [`Trigger`], so what made the daemon act is visible in one
//! place (the `trigger` field of its logs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use flotilla_reconciler::report::Report;
use flotilla_reconciler::rollout::model::short_id;
use flotilla_reconciler::rollout::{Event, phase_after};
use flotilla_source::git::{self, GitSource};
use flotilla_state::Store;

use crate::adapters::{ConnectedClusters, PrometheusGates};
use crate::config::Validated;
use crate::events::{self, FleetEvent};
use crate::metrics::{Metrics, labels};
use crate::revision::{Loaded, Loader, Revision};
use crate::status::{DiagnosticJson, DriftSummary, FleetStatus, Rejected, RevisionStatus};
use crate::webhook::Secret;

/// Why the daemon stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("--listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("git source: {0}")]
    Git(String),
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("the daemon's main loop panicked (see the log)")]
    LoopPanicked,
    #[error("high availability: {0}")]
    Ha(String),
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Everything the loop sees happen. A closed set: each is handled in [`Daemon::handle`].
#[derive(Debug)]
pub(crate) enum Trigger {
    /// The Git thread polled (on its interval, or woken by a webhook).
    Fetched { took: Duration, fetch: Fetch },
    /// A verified webhook asked for a fetch.
    Webhook { style: &'static str },
    /// The drift interval elapsed.
    DriftDue,
    /// A drift check finished.
    DriftDone(Box<Report>, Vec<String>),
    /// The image scan interval elapsed, or `POST /api/v1/images/scan` asked for a scan.
    ImagesDue { requested: bool },
    /// An image scan (and its write-back) finished; `pushed` when a commit went out.
    ImagesDone(Box<crate::images::ImagesStatus>, bool),
    /// A person asked something of a placement's rollout through the API.
    Control { placement: String },
    /// A backup policy's schedule fired (see [`crate::backups`]).
    BackupsDue,
    /// `POST /api/v1/backups/{name}/run` asked for a backup now.
    BackupRequested { policy: String },
    /// One scheduled backup of one cluster finished.
    BackupDone(Box<crate::backups::Done>),
    /// The units this replica holds changed (see [`crate::ha`]): placement workers follow.
    Ownership,
    /// SIGTERM (or the embedding program) asked to stop.
    Shutdown,
}

#[derive(Debug)]
pub(crate) enum Fetch {
    Unchanged {
        commit: Option<String>,
    },
    Changed(Loaded),
    Failed(String),
    /// The fetch failed, but the cache holds a snapshot not loaded yet (a restart while the
    /// remote is down): loaded, and the failure reported.
    Cached(Loaded, String),
}

/// State shared by the loop, the workers and the HTTP handlers.
pub(crate) struct Shared {
    pub config: crate::config::Config,
    pub store: Store,
    pub metrics: Metrics,
    pub status: RwLock<FleetStatus>,
    pub drift: RwLock<Option<Report>>,
    pub current: RwLock<Option<Arc<Revision>>>,
    pub webhook_secret: Option<Secret>,
    pub api_token: Option<Secret>,
    pub triggers: mpsc::UnboundedSender<Trigger>,
    /// Wakes the Git thread.
    pub wake: std::sync::mpsc::Sender<()>,
    /// Rollout engines return at their next step boundary once set.
    pub stop: AtomicBool,
    pub clusters: ConnectedClusters,
    pub(crate) readers: ConnectedClusters,
    /// Scheduled backups: policies, next firings, last runs.
    pub backups: RwLock<crate::backups::BackupsStatus>,
    /// The burst controller's status and wake-up (`crate::burst`).
    pub(crate) burst: crate::burst::Burst,
    /// Clusters with `connect: agent`: the management cluster and their agents' reports.
    pub(crate) agents: crate::agents::Agents,
    /// Which units of work this replica holds (all of them when alone; see `crate::ha`).
    pub(crate) ownership: crate::ha::Ownership,
    /// Wakes the membership loop (a new revision brings new units).
    pub(crate) ha_nudge: Notify,
    /// Wakes the cluster owner's side of the work exchange (`crate::exchange`).
    pub(crate) work: Notify,
    /// Wakes rollouts waiting for an exchange result.
    pub(crate) results: Arc<Notify>,
    pub(crate) gates: PrometheusGates,
    /// What happened, for notifications and the live UI (`crate::events`).
    pub(crate) events: crate::events::Bus,
    /// Held by the prune of placements a new revision removed, and by each placement's heal
    /// after a drift check: a heal of the revision before can never put back what the prune
    /// just removed (it sees the new revision once it has the lock, and stops).
    pub(crate) heal_prune: tokio::sync::Mutex<()>,
    /// The web UI's event stream slots, drain signal and hash cache (`crate::ui`).
    pub(crate) live: crate::ui::Live,
    images: crate::images::ImageSettings,
    /// The keys commits must be signed with (`--verify-commits`).
    pub trust: Option<Arc<flotilla_source::git::Trust>>,
    /// Held (locked) while the daemon runs (redb only).
    _lock: Option<std::fs::File>,
}

impl Shared {
    pub fn status_mut(&self) -> std::sync::RwLockWriteGuard<'_, FleetStatus> {
        self.status.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn status(&self) -> FleetStatus {
        self.status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn current(&self) -> Option<Arc<Revision>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every rollout event: logged, counted, and reflected in the status.
    pub(crate) fn on_event(&self, e: &Event) {
        tracing::info!(
            target: "flotilla::rollout",
            placement = %e.placement,
            rollout = %e.rollout,
            batch = e.batch,
            cluster = e.cluster.as_deref(),
            kind = %e.kind,
            "{}",
            e.message
        );
        self.events.publish(events::of_rollout(e));
        if matches!(e.kind.as_str(), "apply-failed" | "rollback-failed")
            && let Some(c) = &e.cluster
        {
            self.metrics
                .apply_errors
                .get_or_create(&labels(&[("cluster", c)]))
                .inc();
        }
        if let Some(phase) = phase_after(&e.kind) {
            let mut status = self.status_mut();
            let p = status.placements.entry(e.placement.clone()).or_default();
            if let Some(old) = p.phase.take() {
                self.metrics
                    .rollout_phase
                    .get_or_create(&labels(&[("placement", &e.placement), ("phase", &old)]))
                    .set(0);
            }
            p.phase = Some(phase.label().to_string());
            p.rollout = Some(e.rollout.clone());
            self.metrics
                .rollout_phase
                .get_or_create(&labels(&[
                    ("placement", &e.placement),
                    ("phase", phase.label()),
                ]))
                .set(1);
        }
    }
}

/// A commit was refused (invalid fleet file, over its render budget, unreadable): the status,
/// the metrics and the event bus say so; the last good revision keeps running.
fn reject(
    shared: &Shared,
    commit: String,
    at: String,
    errors: Vec<DiagnosticJson>,
    signature: Option<crate::status::SignatureRejection>,
) {
    shared.metrics.fleet_valid.set(0);
    shared.metrics.fleet_errors.set(errors.len().max(1) as i64);
    let first = errors
        .first()
        .map(|e| e.text.clone())
        .unwrap_or_else(|| "rejected".to_string());
    let more = match errors.len() {
        0 | 1 => String::new(),
        n => format!(" (and {} more)", n - 1),
    };
    shared.events.publish(
        FleetEvent::new(
            events::Trigger::CommitRejected,
            format!("commit {} rejected: {first}{more}", short_id(&commit)),
        )
        .commit(commit.clone()),
    );
    let mut s = shared.status_mut();
    s.source.fetched_commit = Some(commit.clone());
    s.rejected = Some(Rejected {
        commit,
        at,
        errors,
        signature,
    });
}

/// A running daemon.
pub struct Running {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    server: tokio::task::JoinHandle<Result<(), std::io::Error>>,
}

impl Running {
    /// Asks the daemon to drain and stop (as SIGTERM does).
    pub fn shutdown(&self) {
        let _ = self.shared.triggers.send(Trigger::Shutdown);
    }

    /// Asks for a fetch now (as a webhook does).
    pub fn fetch_now(&self) {
        let _ = self.shared.wake.send(());
    }

    pub fn status(&self) -> FleetStatus {
        self.shared.status()
    }

    /// The last drift check's report.
    pub fn drift_report(&self) -> Option<Report> {
        self.shared
            .drift
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the daemon has stopped.
    pub async fn wait(self) -> Result<(), DaemonError> {
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            // The loop itself died: say so and fail, rather than serve without it.
            tracing::error!(task = "loop", "the daemon's main loop panicked; stopping");
            self.server.abort();
            return Err(DaemonError::LoopPanicked);
        }
        self.server.abort();
        match self.server.await {
            Ok(Err(e)) => Err(DaemonError::Serve(e)),
            _ => Ok(()),
        }
    }
}

/// Validates `config`, binds the listener, and starts every task. Returns once the HTTP
/// server accepts connections; the first fetch runs in the background.
pub async fn start(config: crate::config::Config) -> Result<Running, DaemonError> {
    let v: Validated = config.validate()?;
    let listener = tokio::net::TcpListener::bind(v.config.listen)
        .await
        .map_err(|source| DaemonError::Bind {
            addr: v.config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| DaemonError::Bind {
        addr: v.config.listen,
        source,
    })?;
    let cache = v.config.cache_dir.join("git").join(v.remote.cache_name());
    let source = GitSource::open(v.remote.clone(), v.rev.clone(), cache)
        .map_err(|e| DaemonError::Git(e.to_string()))?;
    let ownership = match &v.config.ha {
        None => crate::ha::Ownership::alone(
            std::env::var("POD_NAME").unwrap_or_else(|_| "flotilla".to_string()),
        ),
        Some(ha) => crate::ha::Ownership::replicated(Arc::new(
            crate::ha::membership(ha).await.map_err(DaemonError::Ha)?,
        )),
    };
    // A replica names itself in every request, so clusters' audit logs tell replicas apart.
    let connector = match &v.config.ha {
        Some(ha) => {
            let mut settings = v.connector.settings().clone();
            settings.user_agent = format!("{} (replica {})", settings.user_agent, ha.replica_id);
            v.connector.clone().with_settings(settings)
        }
        None => v.connector.clone(),
    };
    let agents = crate::agents::Agents::new(
        v.config.agents.clone(),
        v.config.read_only,
        connector.settings().user_agent.clone(),
        v.store.clone(),
    );
    let (triggers, rx) = mpsc::unbounded_channel();
    let (wake, wake_rx) = std::sync::mpsc::channel();
    let status = FleetStatus {
        repo: v.remote.to_string(),
        rev: v.config.rev.clone(),
        read_only: v.config.read_only,
        ..FleetStatus::default()
    };
    let shared = Arc::new(Shared {
        store: v.store,
        metrics: Metrics::new(),
        status: RwLock::new(status),
        drift: RwLock::new(None),
        current: RwLock::new(None),
        webhook_secret: v.webhook_secret,
        api_token: v.api_token,
        triggers: triggers.clone(),
        wake,
        stop: AtomicBool::new(false),
        clusters: ConnectedClusters::empty(connector.clone(), v.config.read_only),
        readers: ConnectedClusters::empty(connector, true),
        backups: RwLock::new(crate::backups::BackupsStatus::default()),
        burst: crate::burst::Burst::new(),
        agents,
        ownership,
        ha_nudge: Notify::new(),
        work: Notify::new(),
        results: Arc::new(Notify::new()),
        gates: PrometheusGates::new(Duration::from_secs(10)),
        events: crate::events::Bus::new(),
        heal_prune: tokio::sync::Mutex::new(()),
        live: crate::ui::Live::default(),
        images: crate::images::ImageSettings {
            registries: flotilla_images::Settings {
                logins: v.registry_logins,
                insecure: v.config.insecure_registries.clone(),
                ..flotilla_images::Settings::default()
            },
            remote: v.remote.clone(),
            signer: v.signer.clone(),
            cache: v
                .config
                .cache_dir
                .join("git-write-back")
                .join(v.remote.cache_name()),
        },
        _lock: v.lock,
        trust: v.trust,
        config: v.config,
    });
    tracing::info!(
        repo = %shared.images.remote,
        rev = %shared.config.rev,
        listen = %addr,
        read_only = shared.config.read_only,
        "flotilla serve starting"
    );
    spawn_git_thread(shared.clone(), source, wake_rx);
    if shared.ownership.is_replicated() {
        crate::supervise::spawn(
            crate::supervise::Restart::WORKER,
            {
                let shared = shared.clone();
                move || crate::ha::run(shared.clone())
            },
            crate::supervise::report_to(shared.clone(), "membership", None),
        );
        crate::supervise::spawn(
            crate::supervise::Restart::WORKER,
            {
                let shared = shared.clone();
                move || crate::ha::listen(shared.clone())
            },
            crate::supervise::report_to(shared.clone(), "notifications", None),
        );
    }
    crate::supervise::spawn(
        crate::supervise::Restart::WORKER,
        {
            let shared = shared.clone();
            move || crate::exchange::serve(shared.clone())
        },
        crate::supervise::report_to(shared.clone(), "exchange", None),
    );
    crate::supervise::spawn(
        crate::supervise::Restart::WORKER,
        {
            let shared = shared.clone();
            move || crate::burst::run(shared.clone())
        },
        crate::supervise::report_to(shared.clone(), "burst", None),
    );
    let mut router = crate::http::router(shared.clone());
    if shared.config.ui {
        router = router.merge(crate::ui::router(shared.clone()));
    }
    let refused = {
        let counter = shared.metrics.http_connections_refused.clone();
        move || {
            counter.inc();
        }
    };
    let limits = shared.config.http_limits.clone();
    let server = tokio::spawn(crate::listen::serve(listener, router, limits, refused));
    let daemon = Daemon {
        shared: shared.clone(),
        workers: BTreeMap::new(),
        drift_running: Arc::new(AtomicBool::new(false)),
        next_drift: None,
        drift_every: None,
        images_running: false,
        backups: crate::backups::Backups::default(),
        next_images: None,
    };
    crate::supervise::spawn(
        crate::supervise::Restart::WORKER,
        {
            let shared = shared.clone();
            move || crate::notify::run(shared.clone())
        },
        crate::supervise::report_to(shared.clone(), "notify", None),
    );
    crate::workflows::spawn(shared.clone());
    let task = tokio::spawn(daemon.run(rx));
    Ok(Running {
        addr,
        shared,
        task,
        server,
    })
}

/// Polls on the interval (or when woken), checks and renders new commits, and hands the
/// result to the loop. Blocking Git I/O and the `!Send` render cache stay on this thread.
fn spawn_git_thread(
    shared: Arc<Shared>,
    mut source: GitSource,
    wake: std::sync::mpsc::Receiver<()>,
) {
    let interval = shared.config.poll_interval;
    let max_backoff = shared.config.max_backoff;
    let mut loader = new_loader(&shared);
    let spawned = std::thread::Builder::new()
        .name("flotilla-git".into())
        .spawn(move || {
            let mut failures = 0u32;
            let mut loaded = None;
            loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                let started = Instant::now();
                let polled = source.poll();
                let took = started.elapsed();
                // What counts is the snapshot, not what the poll says: after a restart the
                // cache already holds the tip, so the first poll is "unchanged" but nothing
                // is loaded yet.
                let fetch = match polled {
                    Ok(_) => {
                        failures = 0;
                        match source.current() {
                            Some(snapshot) if loaded != Some(snapshot.commit()) => {
                                loaded = Some(snapshot.commit());
                                let commit = snapshot.commit().to_string();
                                // A panicking check or render rejects the commit (the last
                                // good revision keeps running) and starts a fresh cache.
                                Fetch::Changed(
                                    crate::supervise::catch(|| loader.load(snapshot))
                                        .unwrap_or_else(|message| {
                                            crate::supervise::git_thread_panicked(&shared, &message);
                                            loader = new_loader(&shared);
                                            Loaded::Unreadable {
                                                commit,
                                                message: format!("checking and rendering the commit panicked: {message}"),
                                            }
                                        }),
                                )
                            }
                            Some(snapshot) => Fetch::Unchanged {
                                commit: Some(snapshot.commit().to_string()),
                            },
                            None => Fetch::Failed("the fetch brought no snapshot".into()),
                        }
                    }
                    Err(e) => {
                        failures = failures.saturating_add(1);
                        match source.current() {
                            // Git is down at start: run what the cache held before the
                            // restart rather than nothing.
                            Some(snapshot) if loaded != Some(snapshot.commit()) => {
                                loaded = Some(snapshot.commit());
                                Fetch::Cached(loader.load(snapshot), e.to_string())
                            }
                            _ => Fetch::Failed(e.to_string()),
                        }
                    }
                };
                if shared
                    .triggers
                    .send(Trigger::Fetched { took, fetch })
                    .is_err()
                {
                    return;
                }
                let delay = git::backoff(interval, max_backoff, failures);
                match wake.recv_timeout(delay) {
                    Ok(()) => while wake.try_recv().is_ok() {},
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the Git thread");
    }
}

struct Daemon {
    shared: Arc<Shared>,
    workers: BTreeMap<String, crate::workers::Worker>,
    drift_running: Arc<AtomicBool>,
    next_drift: Option<tokio::time::Instant>,
    /// The interval `next_drift` was scheduled with.
    drift_every: Option<Duration>,
    images_running: bool,
    next_images: Option<tokio::time::Instant>,
    backups: crate::backups::Backups,
}

impl Daemon {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Trigger>) {
        loop {
            let (drift_at, images_at) = (self.next_drift, self.next_images);
            let backups_at = self.backups.next_at(&self.shared);
            let trigger = tokio::select! {
                t = rx.recv() => match t {
                    Some(t) => t,
                    None => Trigger::Shutdown,
                },
                () = sleep_until(drift_at) => Trigger::DriftDue,
                () = sleep_until(images_at) => Trigger::ImagesDue { requested: false },
                () = sleep_until(backups_at) => Trigger::BackupsDue,
            };
            if matches!(trigger, Trigger::Shutdown) {
                self.drain().await;
                return;
            }
            self.handle(trigger).await;
        }
    }

    async fn handle(&mut self, trigger: Trigger) {
        let shared = self.shared.clone();
        match trigger {
            Trigger::Fetched { took, fetch } => {
                let result = if matches!(fetch, Fetch::Failed(_) | Fetch::Cached(..)) {
                    "error"
                } else {
                    "ok"
                };
                shared
                    .metrics
                    .fetch_seconds
                    .get_or_create(&labels(&[("result", result)]))
                    .observe(took.as_secs_f64());
                self.fetched(fetch).await;
            }
            Trigger::Webhook { style } => {
                tracing::info!(trigger = "webhook", style, "push received: fetching now");
                shared.status_mut().source.webhook_triggers += 1;
                let _ = shared.wake.send(());
                // Every replica fetches now, not at its next poll.
                if shared.ownership.is_replicated()
                    && let Err(e) = shared.store.notify(crate::ha::FETCH, "")
                {
                    tracing::warn!(error = %e, "cannot tell the other replicas to fetch");
                }
            }
            Trigger::DriftDue => {
                self.schedule_drift();
                self.start_drift();
            }
            Trigger::DriftDone(report, healed) => self.drift_done(*report, healed),
            Trigger::ImagesDue { requested } => {
                if !requested {
                    self.schedule_images();
                }
                self.start_images(requested);
            }
            Trigger::ImagesDone(mut status, pushed) => {
                self.images_running = false;
                let mut s = shared.status_mut();
                status.scans = s.images.as_ref().map(|i| i.scans).unwrap_or(0) + 1;
                s.images = Some(*status);
                drop(s);
                if pushed {
                    // The write-back commit rolls out without waiting for the next poll.
                    let _ = shared.wake.send(());
                }
            }
            Trigger::Control { placement } => {
                tracing::info!(trigger = "api", placement = %placement, "rollout request");
                if let Some(w) = self.workers.get(&placement) {
                    w.nudge.notify_one();
                }
            }
            Trigger::Ownership => {
                if let Some(rev) = shared.current() {
                    self.sync_workers(&rev);
                }
            }
            Trigger::BackupsDue => self.backups.due(&shared),
            Trigger::BackupRequested { policy } => self.backups.request(&shared, &policy),
            Trigger::BackupDone(done) => self.backups.done(&shared, *done),
            Trigger::Shutdown => {}
        }
    }

    async fn fetched(&mut self, fetch: Fetch) {
        let shared = self.shared.clone();
        let at = now();
        let failed = |message: String| {
            tracing::warn!(trigger = "poll", error = %message, "fetch failed; the last good revision keeps running");
            let mut s = shared.status_mut();
            s.source.last_fetch_at = Some(at.clone());
            s.source.last_fetch_ok = false;
            s.source.last_error = Some(message);
            s.source.consecutive_failures += 1;
            s.source.fetches += 1;
        };
        match fetch {
            Fetch::Failed(message) => failed(message),
            Fetch::Cached(loaded, message) => {
                failed(message);
                tracing::warn!("running the cached snapshot until the remote answers");
                self.loaded(loaded, at).await;
            }
            Fetch::Unchanged { commit } => {
                let mut s = shared.status_mut();
                s.source.last_fetch_at = Some(at);
                s.source.last_fetch_ok = true;
                s.source.last_error = None;
                s.source.consecutive_failures = 0;
                s.source.fetched_commit = commit;
                s.source.fetches += 1;
                drop(s);
                // Paused rollouts resumed from the command line, cluster retries: every
                // worker looks again.
                for w in self.workers.values() {
                    w.nudge.notify_one();
                }
            }
            Fetch::Changed(loaded) => {
                {
                    let mut s = shared.status_mut();
                    s.source.last_fetch_at = Some(at.clone());
                    s.source.last_fetch_ok = true;
                    s.source.last_error = None;
                    s.source.consecutive_failures = 0;
                    s.source.fetches += 1;
                }
                self.loaded(loaded, at).await;
            }
        }
    }

    /// A commit checked and rendered: run it, or report why not.
    async fn loaded(&mut self, loaded: Loaded, at: String) {
        let shared = self.shared.clone();
        match loaded {
            Loaded::Valid(rev) => self.new_revision(rev, at).await,
            Loaded::Invalid {
                commit,
                diagnostics,
            } => {
                for d in &diagnostics {
                    tracing::error!(trigger = "poll", commit = %commit, "{d}");
                }
                tracing::error!(
                    commit = %commit,
                    errors = diagnostics.len(),
                    "fleet file rejected; the last good revision keeps running"
                );
                reject(
                    &shared,
                    commit,
                    at,
                    diagnostics.iter().map(DiagnosticJson::from).collect(),
                    None,
                );
            }
            Loaded::OverBudget { commit, error } => {
                tracing::error!(commit = %commit, error = %error, "commit over its render budget; the last good revision keeps running");
                let message = error.to_string();
                reject(
                    &shared,
                    commit,
                    at,
                    vec![DiagnosticJson {
                        file: error.at.clone(),
                        line: 0,
                        column: 0,
                        message: message.clone(),
                        text: message,
                    }],
                    None,
                );
            }
            Loaded::Unverified(e) => {
                tracing::error!(
                    commit = %e.commit,
                    signer = e.signer.as_deref().unwrap_or("none"),
                    reason = %e.reason,
                    "commit signature rejected; the last good revision keeps running"
                );
                shared.metrics.commits_unverified.inc();
                let text = e.to_string();
                reject(
                    &shared,
                    e.commit.clone(),
                    at,
                    vec![DiagnosticJson {
                        file: String::new(),
                        line: 0,
                        column: 0,
                        message: e.reason.clone(),
                        text,
                    }],
                    Some(crate::status::SignatureRejection {
                        signer: e.signer,
                        reason: e.reason,
                    }),
                );
            }
            Loaded::Unreadable { commit, message } => {
                tracing::error!(commit = %commit, error = %message, "fleet file unreadable; the last good revision keeps running");
                let file = shared.config.fleet_file.clone();
                reject(
                    &shared,
                    commit,
                    at,
                    vec![DiagnosticJson {
                        file,
                        line: 0,
                        column: 0,
                        message: message.clone(),
                        text: message,
                    }],
                    None,
                );
            }
        }
    }

    async fn new_revision(&mut self, rev: Arc<Revision>, at: String) {
        let shared = self.shared.clone();
        tracing::info!(
            trigger = "poll",
            commit = %rev.commit,
            clusters = rev.fleet.clusters.len(),
            placements = rev.fleet.placements.len(),
            render_ms = rev.render_took.as_millis() as u64,
            "new revision"
        );
        for e in &rev.render_errors {
            if e.contains(flotilla_reconciler::tenancy::PREFIX) {
                tracing::error!(commit = %rev.commit, "refused: {e}");
            } else {
                tracing::error!(commit = %rev.commit, "render failed: {e}");
            }
        }
        shared
            .metrics
            .reconcile_seconds
            .get_or_create(&labels(&[("stage", "render")]))
            .observe(rev.render_took.as_secs_f64());
        shared.metrics.fleet_valid.set(1);
        shared.metrics.fleet_errors.set(0);
        shared.clusters.update(&rev.fleet).await;
        shared.readers.update(&rev.fleet).await;
        let previous = shared
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .replace(rev.clone());
        shared.burst.nudge.notify_one();
        if let Some(previous) = previous.filter(|_| !shared.config.read_only) {
            crate::prune::spawn_prune_removed(shared.clone(), &previous, &rev);
        }
        {
            let mut s = shared.status_mut();
            s.fleet = Some(rev.fleet.metadata.name.clone());
            s.source.fetched_commit = Some(rev.commit.clone());
            s.rejected = None;
            s.revision = Some(RevisionStatus {
                commit: rev.commit.clone(),
                message: rev.message.clone(),
                loaded_at: at,
                render_seconds: rev.render_took.as_secs_f64(),
                clusters: rev.fleet.clusters.len(),
                placements: rev.fleet.placements.len(),
                render_errors: rev.render_errors.clone(),
                warnings: rev.warnings.iter().map(DiagnosticJson::from).collect(),
            });
            s.ready = true;
            let names: Vec<&str> = rev
                .fleet
                .placements
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            s.placements.retain(|k, _| names.contains(&k.as_str()));
        }
        shared.ha_nudge.notify_one();
        self.sync_workers(&rev);
        if self.next_images.is_none() {
            self.schedule_images();
        }
        // A new interval (or the first revision) takes effect now, not after the old one.
        let every = self.drift_interval();
        if self.next_drift.is_none() || every != self.drift_every {
            self.schedule_drift();
        }
    }

    fn sync_workers(&mut self, rev: &Arc<Revision>) {
        crate::workers::sync(&mut self.workers, &self.shared, rev);
    }

    fn drift_interval(&self) -> Option<Duration> {
        if let Some(d) = self.shared.config.drift_interval {
            return Some(d);
        }
        self.shared
            .current()
            .map(|r| r.fleet.settings.drift_interval.value)
            .filter(|d| !d.is_zero())
    }

    fn schedule_drift(&mut self) {
        self.drift_every = self.drift_interval();
        self.next_drift = self.drift_every.map(|d| tokio::time::Instant::now() + d);
    }

    /// Image scans run on their interval once a revision with image policies is loaded
    /// (never in read-only mode: they push to Git).
    fn schedule_images(&mut self) {
        let has_policies = self
            .shared
            .current()
            .is_some_and(|r| !r.fleet.image_policies.is_empty());
        self.next_images = match self.shared.config.image_scan_interval {
            Some(every) if has_policies && !self.shared.config.read_only => {
                Some(tokio::time::Instant::now() + every)
            }
            _ => None,
        };
    }

    fn start_images(&mut self, requested: bool) {
        let Some(rev) = self.shared.current() else {
            return;
        };
        if self.shared.config.read_only
            || rev.fleet.image_policies.is_empty()
            || !self.shared.ownership.holds(crate::ha::IMAGES)
        {
            return;
        }
        if self.images_running {
            tracing::debug!("image scan still running; skipped");
            return;
        }
        self.images_running = true;
        tracing::info!(
            trigger = if requested { "api" } else { "images" },
            policies = rev.fleet.image_policies.len(),
            "image scan"
        );
        let shared = self.shared.clone();
        let report = crate::supervise::report_to(shared.clone(), "images", None);
        let on_panic = {
            let shared = shared.clone();
            move |f: &crate::supervise::Failure| {
                report(f);
                let status = crate::images::ImagesStatus {
                    last_scan_at: Some(now()),
                    results: vec![format!("the image scan panicked: {}", f.message)],
                    ..Default::default()
                };
                let _ = shared
                    .triggers
                    .send(Trigger::ImagesDone(Box::new(status), false));
            }
        };
        crate::supervise::spawn_once(
            async move {
                let (status, pushed) = crate::images::run(&shared.images, &rev).await;
                let _ = shared
                    .triggers
                    .send(Trigger::ImagesDone(Box::new(status), pushed));
            },
            on_panic,
        );
    }

    fn start_drift(&mut self) {
        let Some(rev) = self.shared.current() else {
            return;
        };
        if self.drift_running.swap(true, Ordering::SeqCst) {
            tracing::debug!("drift check still running; skipped");
            return;
        }
        let shared = self.shared.clone();
        let running = self.drift_running.clone();
        let on_panic = {
            let report = crate::supervise::report_to(shared.clone(), "drift", None);
            let running = running.clone();
            // The next drift check must still run.
            move |f: &crate::supervise::Failure| {
                report(f);
                running.store(false, Ordering::SeqCst);
            }
        };
        crate::supervise::spawn_once(
            async move {
                let started = Instant::now();
                let (report, healed) = crate::drift::drift_check(&shared, &rev).await;
                shared
                    .metrics
                    .reconcile_seconds
                    .get_or_create(&labels(&[("stage", "drift")]))
                    .observe(started.elapsed().as_secs_f64());
                running.store(false, Ordering::SeqCst);
                let _ = shared
                    .triggers
                    .send(Trigger::DriftDone(Box::new(report), healed));
            },
            on_panic,
        );
    }

    fn drift_done(&mut self, report: Report, healed: Vec<String>) {
        let shared = &self.shared;
        let mut drifted = Vec::new();
        let mut unreachable = Vec::new();
        let mut objects = 0;
        for c in &report.clusters {
            if c.error.is_some() {
                unreachable.push(c.name.clone());
                continue;
            }
            let summary = c.summary();
            let n = summary.objects - summary.in_sync;
            shared
                .metrics
                .drift_objects
                .get_or_create(&labels(&[("cluster", &c.name)]))
                .set(n as i64);
            if n > 0 {
                drifted.push(c.name.clone());
                objects += n;
            }
        }
        shared
            .metrics
            .drift_unreachable
            .set(unreachable.len() as i64);
        tracing::info!(
            trigger = "drift",
            commit = %report.revision,
            drifted = drifted.len(),
            objects,
            unreachable = unreachable.len(),
            self_healed = healed.len(),
            "drift check done"
        );
        let agents = match shared.current() {
            Some(rev) => shared.agents.statuses(|c| rev.is_agent(c)),
            None => Default::default(),
        };
        for (cluster, a) in &agents {
            if let Some(age) = a.report_age_seconds {
                shared
                    .metrics
                    .agent_report_age
                    .get_or_create(&labels(&[("cluster", cluster)]))
                    .set(age);
            }
        }
        shared.status_mut().agents = agents;
        for c in &report.clusters {
            let summary = c.summary();
            let n = summary.objects - summary.in_sync;
            if c.error.is_none() && n > 0 {
                shared.events.publish(
                    FleetEvent::new(
                        events::Trigger::DriftFound,
                        format!("{n} object(s) drifted from Git on cluster {}", c.name),
                    )
                    .cluster(c.name.clone())
                    .commit(report.revision.clone()),
                );
            }
        }
        shared.status_mut().drift = Some(DriftSummary {
            at: report.generated_at.clone(),
            commit: report.revision.clone(),
            clusters: report.clusters.len(),
            drifted_clusters: drifted,
            unreachable_clusters: unreachable,
            drifted_objects: objects,
            self_healed: healed,
        });
        *shared.drift.write().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// Stops taking work, lets rollouts reach a step boundary (within the grace period),
    /// and returns. Every step is already in the store, so whatever is cut off resumes.
    async fn drain(&mut self) {
        let shared = &self.shared;
        tracing::info!(
            grace_secs = shared.config.drain_grace.as_secs(),
            "draining: rollouts stop at their next step"
        );
        shared.status_mut().draining = true;
        shared.stop.store(true, Ordering::SeqCst);
        // Event streams say so and end (their clients would otherwise hold the listener).
        shared.live.draining.send_replace(true);
        let _ = shared.wake.send(());
        for w in self.workers.values() {
            w.nudge.notify_one();
        }
        let deadline = tokio::time::Instant::now() + shared.config.drain_grace;
        for (name, w) in std::mem::take(&mut self.workers) {
            let mut handle = w.handle;
            match tokio::time::timeout_at(deadline, &mut handle).await {
                Ok(_) => {}
                Err(_) => {
                    tracing::warn!(placement = %name, "still busy after the grace period; stopped (it resumes from the state store)");
                    handle.abort();
                }
            }
        }
        shared.ha_nudge.notify_one();
        crate::ha::leave_now(shared).await;
        tracing::info!("drained");
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A loader with the daemon's render options (where Jsonnet runs, the SOPS keys).
fn new_loader(shared: &Shared) -> Loader {
    let config = &shared.config;
    let mut loader = Loader::new(&config.fleet_file);
    loader.trust = shared.trust.clone();
    if let Some(exe) = &config.jsonnet_worker {
        loader.options.jsonnet = Some(std::sync::Arc::new(
            crate::jsonnet_worker::ProcessEvaluator::new(exe.clone()),
        ));
    }
    loader.options.sops = config.sops.clone();
    loader
}
