//! Delivery: one bounded queue and one task per sink. [`Notifier::submit`] routes, de-dupes
//! and enqueues without awaiting anything; a full queue drops its oldest item (counted). A
//! sink's task sends one item at a time with a per-request timeout, retrying connection
//! errors, timeouts, 429 and 5xx with exponential backoff and jitter ([`crate::backoff`]).

use std::collections::{BTreeMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_spec::{NotificationSink, Notifications, SinkKind};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::Event;
use crate::backoff::{Backoff, retry_status};
use crate::dedup::{self, Dedup};
use crate::payload;
use crate::rules::Rules;
use crate::secrets::{Secret, SecretSource};

type Labels = Vec<(String, String)>;

/// Delivery settings (the same for every sink).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Items waiting per sink; beyond it the oldest is dropped.
    pub queue: usize,
    /// One HTTP request (connect included) or one Event post.
    pub timeout: Duration,
    pub backoff: Backoff,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            queue: 256,
            timeout: Duration::from_secs(10),
            backoff: Backoff::default(),
        }
    }
}

/// `flotilla_notifications_total{sink,outcome}` (sent, failed, retried, dropped,
/// deduplicated), `flotilla_notification_queue_depth{sink}` and
/// `flotilla_notification_sink_broken{sink}` (1: its secrets are missing).
#[derive(Clone, Default)]
pub struct Metrics {
    pub total: Family<Labels, Counter>,
    pub queue_depth: Family<Labels, Gauge>,
    pub broken: Family<Labels, Gauge>,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "notifications",
            "Notifications by sink and outcome (sent, failed, retried, dropped, deduplicated)",
            self.total.clone(),
        );
        registry.register(
            "notification_queue_depth",
            "Notifications waiting in each sink's queue",
            self.queue_depth.clone(),
        );
        registry.register(
            "notification_sink_broken",
            "1 when a sink cannot send at all (a secret it names is missing)",
            self.broken.clone(),
        );
    }

    fn count(&self, sink: &str, outcome: &str) {
        self.total
            .get_or_create(&vec![
                ("sink".to_string(), sink.to_string()),
                ("outcome".to_string(), outcome.to_string()),
            ])
            .inc();
    }

    fn sink(sink: &str) -> Labels {
        vec![("sink".to_string(), sink.to_string())]
    }
}

/// Why a post failed: worth another try, or final. Messages name no URL and no secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// A connection error, a timeout, 429 or 5xx: tried again after a backoff.
    #[error("{0} (retried)")]
    Retry(String),
    /// Any other answer: not tried again.
    #[error("{0}")]
    Final(String),
}

/// Kubernetes Events in target clusters: the caller's connections (this crate knows no
/// Kubernetes client).
#[async_trait::async_trait]
pub trait KubeEvents: Send + Sync {
    /// Creates (or leaves as it is) the `core/v1` Event `event` in cluster `cluster`.
    async fn post(&self, cluster: &str, event: &Value) -> Result<(), PostError>;
}

/// One sink's health, for the status API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkHealth {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `ok`, `failing` (its last delivery failed) or `broken` (it cannot send).
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub queued: usize,
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
    pub deduplicated: u64,
}

/// Where a sink sends, secrets resolved.
#[derive(Clone, PartialEq)]
enum Target {
    Webhook { url: Secret, key: Secret },
    Slack { url: Secret },
    Kube,
}

struct Job {
    event: Arc<Event>,
    text: String,
    clusters: Vec<String>,
}

struct Queue {
    items: Mutex<VecDeque<Job>>,
    wake: tokio::sync::Notify,
}

#[derive(Default)]
struct Health {
    error: Option<String>,
    failing: bool,
    sent: u64,
    failed: u64,
    dropped: u64,
    deduplicated: u64,
}

struct Sink {
    spec: NotificationSink,
    /// `Err`: broken, with why (no secret values).
    target: Result<Target, String>,
    queue: Arc<Queue>,
    health: Arc<Mutex<Health>>,
    task: Option<JoinHandle<()>>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

struct State {
    fleet: String,
    rules: Rules,
    sinks: BTreeMap<String, Sink>,
    dedup: Dedup,
    placements: BTreeMap<String, Vec<String>>,
}

/// The notifier (see the module docs). Must be used inside a tokio runtime.
pub struct Notifier {
    state: Mutex<State>,
    settings: Settings,
    metrics: Metrics,
    kube: Option<Arc<dyn KubeEvents>>,
    client: Result<reqwest::Client, String>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Notifier {
    pub fn new(
        settings: Settings,
        metrics: Metrics,
        kube: Option<Arc<dyn KubeEvents>>,
    ) -> Notifier {
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            // A redirect could carry a signed body somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("no HTTP client: {}", e.without_url()));
        Notifier {
            state: Mutex::new(State {
                fleet: String::new(),
                rules: Rules::empty(),
                sinks: BTreeMap::new(),
                dedup: Dedup::new(Duration::ZERO),
                placements: BTreeMap::new(),
            }),
            settings,
            metrics,
            kube,
            client,
        }
    }

    /// Takes a revision's notifications: rules replaced, sinks whose settings and secrets
    /// are unchanged keep their queue and task, others start afresh; a sink whose secret is
    /// missing is broken (logged and counted here, once per configuration) and the others
    /// work. `placements` names each placement's clusters (Kubernetes Events of events with
    /// a placement but no cluster go to all of them).
    pub fn configure(
        &self,
        fleet: &str,
        n: &Notifications,
        secrets: &SecretSource,
        placements: BTreeMap<String, Vec<String>>,
    ) {
        let mut state = lock(&self.state);
        state.fleet = fleet.to_string();
        state.rules = Rules::new(fleet, n);
        state.dedup.set_window(n.dedup_window.value);
        state.placements = placements;
        let mut old = std::mem::take(&mut state.sinks);
        for spec in &n.sinks {
            let target = self.resolve(spec, secrets);
            if let Some(s) = old.remove(&spec.name)
                && s.spec == *spec
                && s.target == target
            {
                state.sinks.insert(spec.name.clone(), s);
                continue;
            }
            let broken = Metrics::sink(&spec.name);
            let health = Arc::new(Mutex::new(Health::default()));
            let queue = Arc::new(Queue {
                items: Mutex::new(VecDeque::new()),
                wake: tokio::sync::Notify::new(),
            });
            let task = match &target {
                Ok(t) => {
                    self.metrics.broken.get_or_create(&broken).set(0);
                    tracing::info!(sink = %spec.name, kind = spec.kind.as_str(), "notification sink ready");
                    Some(tokio::spawn(worker(
                        spec.name.clone(),
                        fleet.to_string(),
                        t.clone(),
                        queue.clone(),
                        health.clone(),
                        self.settings.clone(),
                        self.metrics.clone(),
                        self.client.clone(),
                        self.kube.clone(),
                    )))
                }
                Err(why) => {
                    self.metrics.broken.get_or_create(&broken).set(1);
                    tracing::warn!(sink = %spec.name, error = %why, "notification sink broken; the other sinks keep working");
                    lock(&health).error = Some(why.clone());
                    None
                }
            };
            self.metrics.queue_depth.get_or_create(&broken).set(0);
            state.sinks.insert(
                spec.name.clone(),
                Sink {
                    spec: spec.clone(),
                    target,
                    queue,
                    health,
                    task,
                },
            );
        }
        for name in old.keys() {
            let l = Metrics::sink(name);
            self.metrics.queue_depth.remove(&l);
            self.metrics.broken.remove(&l);
        }
    }

    fn resolve(&self, spec: &NotificationSink, secrets: &SecretSource) -> Result<Target, String> {
        let secret = |name: &Option<String>| match name {
            Some(n) => secrets.resolve(n),
            None => Err("no secret named".to_string()),
        };
        match spec.kind {
            SinkKind::Webhook => {
                let url = match (&spec.url, &spec.url_secret) {
                    (Some(u), _) => Secret::new(u.clone()),
                    (None, s) => secret(s)?,
                };
                let key = secret(&spec.secret)?;
                self.client.as_ref().map_err(Clone::clone)?;
                Ok(Target::Webhook { url, key })
            }
            SinkKind::Slack => {
                let url = secret(&spec.secret)?;
                self.client.as_ref().map_err(Clone::clone)?;
                Ok(Target::Slack { url })
            }
            SinkKind::KubernetesEvents => match self.kube {
                Some(_) => Ok(Target::Kube),
                None => Err("no cluster connections to post Events through".to_string()),
            },
        }
    }

    /// Routes `e` to its sinks. Never blocks on a sink: repeats are counted and skipped,
    /// a full queue loses its oldest item.
    pub fn submit(&self, e: Event) {
        let mut state = lock(&self.state);
        let routes = state.rules.route(&e);
        if routes.is_empty() {
            return;
        }
        let event = Arc::new(e);
        let now = Instant::now();
        for d in routes {
            let key = dedup::key(&d.sink, &event);
            if !state.dedup.admit(key, now) {
                self.metrics.count(&d.sink, "deduplicated");
                if let Some(s) = state.sinks.get(&d.sink) {
                    lock(&s.health).deduplicated += 1;
                }
                tracing::debug!(sink = %d.sink, seq = event.seq, "notification deduplicated");
                continue;
            }
            let clusters = match (&event.cluster, &event.placement) {
                (Some(c), _) => vec![c.clone()],
                (None, Some(p)) => state.placements.get(p).cloned().unwrap_or_default(),
                (None, None) => Vec::new(),
            };
            let Some(sink) = state.sinks.get(&d.sink) else {
                continue;
            };
            if sink.task.is_none() {
                self.metrics.count(&d.sink, "failed");
                lock(&sink.health).failed += 1;
                continue;
            }
            let depth = {
                let mut q = lock(&sink.queue.items);
                if q.len() >= self.settings.queue.max(1) {
                    q.pop_front();
                    self.metrics.count(&d.sink, "dropped");
                    lock(&sink.health).dropped += 1;
                    tracing::warn!(sink = %d.sink, "notification queue full; dropped the oldest");
                }
                q.push_back(Job {
                    event: event.clone(),
                    text: d.text,
                    clusters,
                });
                q.len()
            };
            self.metrics
                .queue_depth
                .get_or_create(&Metrics::sink(&d.sink))
                .set(depth as i64);
            sink.queue.wake.notify_one();
        }
    }

    /// Every sink's health, by name.
    pub fn health(&self) -> Vec<SinkHealth> {
        let state = lock(&self.state);
        state
            .sinks
            .values()
            .map(|s| {
                let h = lock(&s.health);
                let state = match (&s.target, h.failing) {
                    (Err(_), _) => "broken",
                    (Ok(_), true) => "failing",
                    (Ok(_), false) => "ok",
                };
                SinkHealth {
                    name: s.spec.name.clone(),
                    kind: s.spec.kind.as_str().to_string(),
                    state: state.to_string(),
                    error: h.error.clone(),
                    queued: lock(&s.queue.items).len(),
                    sent: h.sent,
                    failed: h.failed,
                    dropped: h.dropped,
                    deduplicated: h.deduplicated,
                }
            })
            .collect()
    }
}

/// A number in [0, 1) from the process's random hasher keys.
fn jitter() -> f64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    sink: String,
    fleet: String,
    target: Target,
    queue: Arc<Queue>,
    health: Arc<Mutex<Health>>,
    settings: Settings,
    metrics: Metrics,
    client: Result<reqwest::Client, String>,
    kube: Option<Arc<dyn KubeEvents>>,
) {
    let depth = metrics
        .queue_depth
        .get_or_create(&Metrics::sink(&sink))
        .clone();
    loop {
        let job = loop {
            let next = lock(&queue.items).pop_front();
            match next {
                Some(j) => break j,
                None => queue.wake.notified().await,
            }
        };
        depth.set(lock(&queue.items).len() as i64);
        let posts: Vec<Post> = match &target {
            Target::Webhook { url, key } => {
                let body = payload::webhook_body(&fleet, &job.event, &job.text);
                let sig = payload::signature(key.expose().as_bytes(), &body);
                vec![Post::Http {
                    url: url.clone(),
                    body,
                    signature: Some(sig),
                }]
            }
            Target::Slack { url } => vec![Post::Http {
                url: url.clone(),
                body: payload::slack_body(&job.text),
                signature: None,
            }],
            Target::Kube => job
                .clusters
                .iter()
                .map(|c| Post::Kube {
                    cluster: c.clone(),
                    event: payload::kube_event(&job.event, c, &job.text),
                })
                .collect(),
        };
        for post in posts {
            let mut attempt = 1;
            let outcome = loop {
                let r = match &post {
                    Post::Http {
                        url,
                        body,
                        signature,
                    } => match &client {
                        Ok(c) => send_http(c, url, body, signature.as_deref()).await,
                        Err(e) => Err(PostError::Final(e.clone())),
                    },
                    Post::Kube { cluster, event } => match &kube {
                        Some(k) => {
                            match tokio::time::timeout(settings.timeout, k.post(cluster, event))
                                .await
                            {
                                Ok(r) => r,
                                Err(_) => Err(PostError::Retry(format!(
                                    "cluster {cluster}: no answer within {:?}",
                                    settings.timeout
                                ))),
                            }
                        }
                        None => Err(PostError::Final("no cluster connections".into())),
                    },
                };
                match r {
                    Ok(()) => break Ok(()),
                    Err(PostError::Retry(why)) => match settings.backoff.delay(attempt, jitter()) {
                        Some(wait) => {
                            metrics.count(&sink, "retried");
                            tracing::info!(sink = %sink, seq = job.event.seq, attempt, error = %why, retry_in = ?wait, "notification not delivered; retrying");
                            tokio::time::sleep(wait).await;
                            attempt += 1;
                        }
                        None => break Err(why),
                    },
                    Err(PostError::Final(why)) => break Err(why),
                }
            };
            let mut h = lock(&health);
            match outcome {
                Ok(()) => {
                    metrics.count(&sink, "sent");
                    h.sent += 1;
                    h.failing = false;
                    h.error = None;
                    tracing::debug!(sink = %sink, seq = job.event.seq, trigger = %job.event.trigger, "notification sent");
                }
                Err(why) => {
                    metrics.count(&sink, "failed");
                    h.failed += 1;
                    h.failing = true;
                    tracing::warn!(sink = %sink, seq = job.event.seq, trigger = %job.event.trigger, attempts = attempt, error = %why, "notification failed");
                    h.error = Some(why);
                }
            }
        }
    }
}

enum Post {
    Http {
        url: Secret,
        body: Vec<u8>,
        signature: Option<String>,
    },
    Kube {
        cluster: String,
        event: Value,
    },
}

/// One POST. Errors name neither the URL (it may be a secret) nor the answer's body.
async fn send_http(
    client: &reqwest::Client,
    url: &Secret,
    body: &[u8],
    signature: Option<&str>,
) -> Result<(), PostError> {
    let mut req = client
        .post(url.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(reqwest::header::USER_AGENT, "flotilla-notify")
        .body(body.to_vec());
    if let Some(sig) = signature {
        req = req.header("X-Flotilla-Signature", sig);
    }
    match req.send().await {
        Ok(resp) => {
            let code = resp.status().as_u16();
            if resp.status().is_success() {
                Ok(())
            } else if retry_status(code) {
                Err(PostError::Retry(format!("HTTP {code}")))
            } else {
                Err(PostError::Final(format!("HTTP {code}")))
            }
        }
        Err(e) if e.is_builder() => Err(PostError::Final(
            "the URL is not a valid http(s) URL".to_string(),
        )),
        Err(e) => {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "cannot connect"
            } else {
                "request failed"
            };
            Err(PostError::Retry(what.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_spec::NotificationRule;
    use std::io::{Read, Write};

    fn notifications(url: &str) -> Notifications {
        Notifications {
            sinks: vec![NotificationSink {
                name: "hook".into(),
                kind: SinkKind::Webhook,
                url: Some(url.into()),
                url_secret: None,
                secret: Some("key".into()),
            }],
            rules: vec![NotificationRule {
                triggers: vec!["drift-found".into()],
                placements: vec![],
                clusters: vec![],
                sinks: vec!["hook".into()],
                template: None,
            }],
            ..Notifications::default()
        }
    }

    fn secrets() -> SecretSource {
        SecretSource::new(None, [("FLOTILLA_NOTIFY_KEY".to_string(), "k".to_string())])
    }

    fn event(i: usize) -> Event {
        Event {
            seq: i as u64,
            trigger: crate::Trigger::DriftFound,
            cluster: Some("c".into()),
            message: format!("drift {i}"),
            ..Event::default()
        }
    }

    async fn health_until(n: &Notifier, ok: impl Fn(&SinkHealth) -> bool) -> SinkHealth {
        for _ in 0..200 {
            if let Some(h) = n.health().into_iter().next()
                && ok(&h)
            {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sink never reached the expected state: {:?}", n.health());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sink_that_never_answers_neither_blocks_submit_nor_grows_its_queue() {
        // Accepts connections and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in listener.incoming().flatten() {
                held.push(s);
            }
        });
        let n = Notifier::new(
            Settings {
                queue: 4,
                timeout: Duration::from_secs(60),
                backoff: Backoff::default(),
            },
            Metrics::default(),
            None,
        );
        n.configure(
            "f",
            &notifications(&format!("http://127.0.0.1:{port}/")),
            &secrets(),
            BTreeMap::new(),
        );
        let t0 = Instant::now();
        for i in 0..10 {
            n.submit(event(i));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "submit waited for the sink"
        );
        // One in flight (hanging), four queued, the oldest of the rest dropped.
        let h = health_until(&n, |h| h.queued + h.dropped as usize >= 9).await;
        assert!(h.queued <= 4, "{h:?}");
        assert!(h.dropped >= 5, "{h:?}");
        assert_eq!(h.sent, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_4xx_is_final_and_repeats_are_counted_not_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(Mutex::new(0usize));
        let count = hits.clone();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                *lock(&count) += 1;
                let _ = s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        let n = Notifier::new(Settings::default(), Metrics::default(), None);
        n.configure(
            "f",
            &notifications(&format!("http://127.0.0.1:{port}/")),
            &secrets(),
            BTreeMap::new(),
        );
        n.submit(event(1));
        n.submit(event(1));
        let h = health_until(&n, |h| h.failed == 1).await;
        assert_eq!(h.state, "failing");
        assert_eq!(h.error.as_deref(), Some("HTTP 404"));
        assert_eq!(h.deduplicated, 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(*lock(&hits), 1, "a 404 is not retried");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_keeps_an_unchanged_sink_and_restarts_a_changed_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
            }
        });
        let url = format!("http://127.0.0.1:{port}/");
        let n = Notifier::new(Settings::default(), Metrics::default(), None);
        n.configure("f", &notifications(&url), &secrets(), BTreeMap::new());
        n.submit(event(1));
        health_until(&n, |h| h.sent == 1).await;
        // The same settings and secrets (a new commit that changed something else): kept.
        n.configure("f", &notifications(&url), &secrets(), BTreeMap::new());
        assert_eq!(n.health()[0].sent, 1);
        // A rotated key: a fresh sink.
        let rotated = SecretSource::new(
            None,
            [("FLOTILLA_NOTIFY_KEY".to_string(), "k2".to_string())],
        );
        n.configure("f", &notifications(&url), &rotated, BTreeMap::new());
        assert_eq!(n.health()[0].sent, 0);
        // Rules are replaced: a trigger no rule names any more is not sent.
        let mut other = notifications(&url);
        other.rules[0].triggers = vec!["rolled-back".into()];
        n.configure("f", &other, &rotated, BTreeMap::new());
        n.submit(event(2));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let h = &n.health()[0];
        assert_eq!((h.sent, h.queued, h.failed), (0, 0, 0), "{h:?}");
    }

    #[tokio::test]
    async fn a_missing_secret_breaks_only_its_sink() {
        let mut n11s = notifications("http://127.0.0.1:9/");
        n11s.sinks[0].secret = Some("absent".into());
        let n = Notifier::new(Settings::default(), Metrics::default(), None);
        n.configure("f", &n11s, &secrets(), BTreeMap::new());
        n.submit(event(1));
        let h = n.health().into_iter().next().expect("a sink");
        assert_eq!(h.state, "broken");
        assert_eq!(h.failed, 1);
        assert!(
            h.error
                .is_some_and(|e| e.contains("FLOTILLA_NOTIFY_ABSENT"))
        );
    }
}
