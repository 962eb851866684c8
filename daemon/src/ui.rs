//! The web UI's routes and the live event stream: gathers what the status API serves into
//! `flotilla_ui`'s views (the rendering is there, pure) and streams the event bus as
//! server-sent events.
//!
//! Pages (`/`, `/placements/{p}`, `/clusters/{c}`, `/workflows`, `/backups`, `/burst`, with
//! `?fragment=1` for the live region only) and `/ui/assets/*` are served unless
//! `flotilla serve --no-ui`; `GET /api/v1/events/stream` always is (it is API). Pages are
//! read-only: the control buttons call the existing `POST /api/v1/rollouts/...` with the
//! bearer token the user pasted (kept by the page in sessionStorage, never in a cookie, so a
//! cross-site request cannot carry it). Every page has a Content-Security-Policy allowing
//! only this origin's script and style, as a second line behind the escaping.
//!
//! An SSE stream is the response body of its request: it lives in that connection's task and
//! is dropped (its bus receiver and its slot among [`MAX_STREAMS`] with it) when the client
//! goes — noticed at the latest by the next heartbeat's write. It also ends when the daemon
//! drains and after [`STREAM_LIFETIME`] (the browser reconnects with `Last-Event-ID`).

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

use flotilla_reconciler::health::HealthStatus;
use flotilla_reconciler::report::ObjectState;
use flotilla_reconciler::rollout::Rollout;
use flotilla_reconciler::rollout::model::{ClusterRevision, ClusterState, Phase};
use flotilla_ui::{Cell, CellState, Nav};

use crate::events::{Bus, FleetEvent};
use crate::run::Shared;

type AppState = Arc<Shared>;

/// Concurrent event streams; one more is answered 503 (the browser retries).
pub const MAX_STREAMS: usize = 64;
/// A comment line this often keeps proxies from closing an idle stream and finds clients
/// that went away.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// The longest one stream stays open.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The UI's share of the daemon's state: the stream slots, the drain signal, and each
/// revision's manifest hashes (computed once per commit, not per page view).
pub(crate) struct Live {
    pub streams: Arc<Semaphore>,
    pub draining: watch::Sender<bool>,
    hashes: Mutex<Option<(String, Arc<Hashes>)>>,
}

/// (placement, cluster) → the manifest hash, or the render error.
type Hashes = HashMap<(String, String), Result<String, String>>;

impl Default for Live {
    fn default() -> Self {
        Live {
            streams: Arc::new(Semaphore::new(MAX_STREAMS)),
            draining: watch::channel(false).0,
            hashes: Mutex::new(None),
        }
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(fleet))
        .route("/placements/{name}", get(placement))
        .route("/clusters/{name}", get(cluster))
        .route("/workflows", get(workflows))
        .route("/backups", get(backups))
        .route("/burst", get(burst))
        .route("/ui/assets/app.css", get(css))
        .route("/ui/assets/app.js", get(js))
        .with_state(shared)
}

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn html(body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", flotilla_ui::APP_CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", flotilla_ui::APP_JS)
}

fn fragment(q: &[(String, String)]) -> bool {
    q.iter().any(|(k, v)| k == "fragment" && v == "1")
}

/// A page for a placement or cluster the fleet does not have: 404 with the page's frame.
fn not_found(body: String) -> Response {
    let mut r = html(body);
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

fn unavailable(message: &str) -> Response {
    let mut r = html(format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>flotilla</title></head><body><main><h1>Not yet</h1><p>{}</p></main></body></html>",
        flotilla_ui::esc(message)
    ));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

/// Each (placement, cluster)'s manifest hash of the running revision, cached per commit.
fn hashes(s: &Shared, rev: &crate::revision::Revision) -> Arc<Hashes> {
    let mut cache = s.live.hashes.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((commit, h)) = &*cache
        && *commit == rev.commit
    {
        return h.clone();
    }
    let mut out = HashMap::new();
    for (cluster, desired) in &rev.targets {
        for d in desired {
            let h = match &d.objects {
                Ok(objects) => Ok(flotilla_reconciler::rollout::model::manifest_hash(objects)),
                Err(e) => Err(e.clone()),
            };
            out.insert((d.placement.clone(), cluster.clone()), h);
        }
    }
    let out = Arc::new(out);
    *cache = Some((rev.commit.clone(), out.clone()));
    out
}

/// What the store and the last drift check say about every (placement, cluster).
struct Facts {
    hashes: Arc<Hashes>,
    rollouts: HashMap<String, Rollout>,
    /// (placement, cluster) → where the cluster is in its placement's rollout record
    /// (batch, position): a cell finds its step at once, not by searching the record.
    steps: HashMap<(String, String), (usize, usize)>,
    revisions: HashMap<(String, String), ClusterRevision>,
    /// (placement, cluster) → (drifted object ids, degraded object ids).
    drift: HashMap<(String, String), (Vec<String>, Vec<String>)>,
}

/// The facts of every placement of `rev`, on every cluster or only on cluster `only` (a
/// cluster page reads and indexes that cluster's, not the fleet's).
fn facts(s: &Shared, rev: &crate::revision::Revision, only: Option<&str>) -> Result<Facts, String> {
    let hashes = hashes(s, rev);
    let (rollouts, revisions) = s
        .store
        .read(|tx| {
            let rollouts: Vec<(String, Rollout)> = tx.rollouts()?;
            let mut revisions = HashMap::new();
            for p in &rev.fleet.placements {
                let p = p.name.as_str();
                let list: Vec<(String, ClusterRevision)> = match only {
                    Some(c) => tx
                        .revision(p, c)?
                        .map(|r| (c.to_string(), r))
                        .into_iter()
                        .collect(),
                    None => tx.revisions(p)?,
                };
                for (c, r) in list {
                    revisions.insert((p.to_string(), c), r);
                }
            }
            Ok((rollouts.into_iter().collect::<HashMap<_, _>>(), revisions))
        })
        .map_err(|e| format!("state store: {e}"))?;
    let mut drift = HashMap::new();
    if let Some(report) = &*s.drift.read().unwrap_or_else(|p| p.into_inner())
        && report.revision == rev.commit
    {
        for c in report
            .clusters
            .iter()
            .filter(|c| only.is_none_or(|o| o == c.name))
        {
            for p in &c.placements {
                let changed = p
                    .objects
                    .iter()
                    .filter(|o| o.state != ObjectState::InSync)
                    .map(|o| o.id.clone())
                    .collect();
                let degraded = p
                    .objects
                    .iter()
                    .filter(|o| {
                        o.health
                            .as_ref()
                            .is_some_and(|h| h.status == HealthStatus::Degraded)
                    })
                    .map(|o| o.id.clone())
                    .collect();
                drift.insert((p.name.clone(), c.name.clone()), (changed, degraded));
            }
        }
    }
    Ok(Facts {
        hashes,
        steps: step_index(&rollouts, only),
        rollouts,
        revisions,
        drift,
    })
}

/// (placement, cluster) → (batch, position) in the placement's rollout record, for every
/// cluster or only `only`.
fn step_index(
    rollouts: &HashMap<String, Rollout>,
    only: Option<&str>,
) -> HashMap<(String, String), (usize, usize)> {
    let mut steps = HashMap::new();
    for (placement, r) in rollouts {
        for (bi, b) in r.batches.iter().enumerate() {
            for (ci, c) in b.clusters.iter().enumerate() {
                if only.is_some_and(|o| o != c.cluster) {
                    continue;
                }
                steps.insert((placement.clone(), c.cluster.clone()), (bi, ci));
            }
        }
    }
    steps
}

fn listed(ids: &[String]) -> String {
    let mut s = ids.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    if ids.len() > 5 {
        s.push_str(&format!(" and {} more", ids.len() - 5));
    }
    s
}

/// One cell of the matrix (see docs/ui.md for the rules).
fn cell(f: &Facts, placement: &str, cluster: &str) -> Cell {
    let key = (placement.to_string(), cluster.to_string());
    let desired = match f.hashes.get(&key) {
        None => return Cell::new(CellState::NotPlaced),
        Some(Err(e)) => {
            return Cell {
                state: CellState::Failed,
                note: Some(format!("does not render: {e}")),
            };
        }
        Some(Ok(h)) => h,
    };
    let step = f.rollouts.get(placement).and_then(|r| {
        let &(bi, ci) = f.steps.get(&key)?;
        let c = r.batches.get(bi)?.clusters.get(ci)?;
        (c.hash == *desired).then_some((r, c))
    });
    let recorded = f.revisions.get(&key);
    let base = match step {
        Some((_, c)) if c.state == ClusterState::Failed => Cell {
            state: CellState::Failed,
            note: (!c.message.is_empty()).then(|| c.message.clone()),
        },
        Some((_, c)) if c.state == ClusterState::RolledBack => Cell {
            state: CellState::RolledBack,
            note: (!c.message.is_empty()).then(|| c.message.clone()),
        },
        Some((_, c)) if c.state == ClusterState::Passed => Cell::new(CellState::InSync),
        Some((_, c)) if c.state == ClusterState::Healthy => Cell {
            state: CellState::Healthy,
            note: Some("healthy; gates or soak ahead".into()),
        },
        Some((r, _)) if !r.phase.is_final() => Cell {
            state: CellState::Progressing,
            note: Some(format!("rollout {}", r.phase.label())),
        },
        _ if recorded.is_some_and(|r| r.good.as_deref() == Some(desired.as_str())) => {
            Cell::new(CellState::InSync)
        }
        // The rollout ended without bringing this cluster the revision: it keeps its last
        // good one.
        Some((r, _)) => Cell {
            state: match r.phase {
                Phase::RolledBack | Phase::RollbackFailed => CellState::RolledBack,
                Phase::Superseded => CellState::Progressing,
                _ => CellState::Failed,
            },
            note: Some(format!(
                "rollout {}; the last good revision keeps running",
                r.phase.label()
            )),
        },
        None => Cell {
            state: CellState::Progressing,
            note: Some("waiting for its rollout".into()),
        },
    };
    if matches!(base.state, CellState::InSync | CellState::Healthy)
        && let Some((changed, degraded)) = f.drift.get(&key)
    {
        if !changed.is_empty() {
            return Cell {
                state: CellState::Drifted,
                note: Some(format!("live differs from Git: {}", listed(changed))),
            };
        }
        if !degraded.is_empty() {
            return Cell {
                state: CellState::Degraded,
                note: Some(format!("degraded: {}", listed(degraded))),
            };
        }
    }
    base
}

async fn fleet(State(s): State<AppState>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let seq = s.events.last_seq();
    let status = s.status();
    let query =
        flotilla_ui::FleetQuery::from_pairs(q.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut view = flotilla_ui::FleetView {
        fleet: status.fleet.clone(),
        commit: status.revision.as_ref().map(|r| r.commit.clone()),
        commit_message: status.revision.as_ref().and_then(|r| r.message.clone()),
        rejected: status.rejected.as_ref().map(|r| flotilla_ui::Rejected {
            commit: r.commit.clone(),
            at: r.at.clone(),
            errors: r.errors.iter().map(|e| e.text.clone()).collect(),
        }),
        ready: status.ready,
        draining: status.draining,
        read_only: status.read_only,
        source_error: status.source.last_error.clone(),
        placements: Vec::new(),
        clusters: Vec::new(),
        seq,
    };
    if let Some(rev) = s.current() {
        let names: Vec<&str> = rev
            .fleet
            .placements
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        let f = match facts(&s, &rev, None) {
            Ok(f) => f,
            Err(e) => return unavailable(&e),
        };
        view.placements = names
            .iter()
            .map(|n| {
                let st = status.placements.get(*n);
                flotilla_ui::PlacementColumn {
                    name: n.to_string(),
                    phase: st.and_then(|p| p.phase.clone()),
                    error: st.and_then(|p| p.error.clone()),
                }
            })
            .collect();
        view.clusters = rev
            .fleet
            .clusters
            .iter()
            .map(|c| flotilla_ui::ClusterRow {
                name: c.name.clone(),
                labels: c.labels.clone(),
                cells: names.iter().map(|p| cell(&f, p, &c.name)).collect(),
            })
            .collect();
    }
    html(flotilla_ui::render_fleet(&view, &query, fragment(&q)))
}

async fn placement(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let seq = s.events.last_seq();
    let rev = s.current();
    let known = rev
        .as_ref()
        .is_some_and(|r| r.fleet.placements.iter().any(|p| p.name == name));
    let history = match flotilla_reconciler::rollout::control::history(&s.store, &name) {
        Ok(h) => h,
        Err(e) => return unavailable(&format!("state store: {e}")),
    };
    if !known && history.is_none() {
        return not_found(flotilla_ui::render_placement(
            &flotilla_ui::PlacementView {
                name,
                seq,
                ..Default::default()
            },
            fragment(&q),
        ));
    }
    let (rollout, events) = match history {
        Some((r, e)) => (Some(r), e),
        None => (None, Vec::new()),
    };
    let (diff, diff_note) = match &rollout {
        Some(r) => revision_diff(&s, r),
        None => (Vec::new(), None),
    };
    let view = flotilla_ui::PlacementView {
        diff,
        diff_note,
        error: s
            .status()
            .placements
            .get(&name)
            .and_then(|p| p.error.clone()),
        name,
        known,
        rollout,
        events,
        read_only: s.config.read_only,
        seq,
    };
    html(flotilla_ui::render_placement(&view, fragment(&q)))
}

/// Distinct (last good, new) manifest pairs compared for one page.
const MAX_DIFF_PAIRS: usize = 20;

/// What rollout `r` changes: the PR review comparison (`review::compare`, Secrets masked) of
/// each cluster's last good manifests with the ones the rollout brings, both as stored for
/// rollback. Clusters with the same pair are compared once and grouped.
fn revision_diff(
    s: &Shared,
    r: &Rollout,
) -> (
    Vec<flotilla_reconciler::review::ChangeGroup>,
    Option<String>,
) {
    use flotilla_reconciler::desired::Desired;
    use flotilla_reconciler::rollout::engine::manifests_from_json;
    // (last good hash, new hash) → the clusters with that pair.
    type Pair = (Option<String>, String);
    let mut pairs: Vec<(Pair, Vec<String>)> = Vec::new();
    for c in r.batches.iter().flat_map(|b| &b.clusters) {
        let key = (c.previous.clone(), c.hash.clone());
        match pairs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, clusters)) => clusters.push(c.cluster.clone()),
            None => pairs.push((key, vec![c.cluster.clone()])),
        }
    }
    let mut note = None;
    if pairs.len() > MAX_DIFF_PAIRS {
        note = Some(format!(
            "{} distinct changes; the first {MAX_DIFF_PAIRS} are shown",
            pairs.len()
        ));
        pairs.truncate(MAX_DIFF_PAIRS);
    }
    let read = s.store.read(|tx| {
        let mut out = Vec::new();
        for ((prev, hash), _) in &pairs {
            let prev = match prev {
                Some(p) => tx.manifests(p)?,
                None => Some("[]".to_string()),
            };
            out.push((prev, tx.manifests(hash)?));
        }
        Ok(out)
    });
    let texts = match read {
        Ok(t) => t,
        Err(e) => return (Vec::new(), Some(format!("state store: {e}"))),
    };
    let desired = |text: Option<String>| -> Option<Vec<Desired>> {
        let objects = manifests_from_json(&text?)?;
        Some(vec![Desired {
            placement: r.placement.clone(),
            prune: false,
            force: false,
            objects: Ok(objects),
        }])
    };
    let mut base = flotilla_reconciler::review::Rendered::new();
    let mut head = flotilla_reconciler::review::Rendered::new();
    let mut missing = 0;
    for (((_, _), clusters), (prev, new)) in pairs.iter().zip(texts) {
        match (desired(prev), desired(new)) {
            (Some(b), Some(h)) => {
                base.insert(clusters[0].clone(), b);
                head.insert(clusters[0].clone(), h);
            }
            _ => missing += clusters.len(),
        }
    }
    if missing > 0 {
        note = Some(format!(
            "the stored manifests of {missing} cluster(s) are gone (trimmed); they are left out"
        ));
    }
    let review = flotilla_reconciler::review::compare(flotilla_reconciler::review::Input {
        fleet: String::new(),
        base_rev: "last good".into(),
        head_rev: r.commit.clone(),
        base: &base,
        head: &head,
        head_plan: None,
        errors: Vec::new(),
        notes: Vec::new(),
    });
    // Each representative stands for every cluster with its pair.
    let mut groups = review.groups;
    for g in &mut groups {
        g.clusters = g
            .clusters
            .iter()
            .flat_map(|rep| {
                pairs
                    .iter()
                    .find(|(_, cs)| cs.first() == Some(rep))
                    .map(|(_, cs)| cs.clone())
                    .unwrap_or_else(|| vec![rep.clone()])
            })
            .collect();
        g.clusters.sort();
    }
    if groups.is_empty() && note.is_none() {
        note = Some("no object changes (the manifests are the same)".into());
    }
    (groups, note)
}

async fn cluster(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let seq = s.events.last_seq();
    let Some(rev) = s.current() else {
        return unavailable("no valid revision loaded yet");
    };
    let Some(spec) = rev.fleet.clusters.iter().find(|c| c.name == name) else {
        return not_found(flotilla_ui::render_cluster(
            &flotilla_ui::ClusterView {
                name,
                seq,
                ..Default::default()
            },
            fragment(&q),
        ));
    };
    let f = match facts(&s, &rev, Some(&name)) {
        Ok(f) => f,
        Err(e) => return unavailable(&e),
    };
    let placements = rev
        .targets
        .get(&name)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|d| {
            let key = (d.placement.clone(), name.clone());
            let recorded = f.revisions.get(&key);
            flotilla_ui::ClusterPlacement {
                name: d.placement.clone(),
                cell: cell(&f, &d.placement, &name),
                desired: f.hashes.get(&key).and_then(|h| h.clone().ok()),
                applied: recorded.and_then(|r| r.applied.clone()),
                good: recorded.and_then(|r| r.good.clone()),
                render_error: d.objects.as_ref().err().cloned(),
            }
        })
        .collect();
    let (drift, drift_at) = match &*s.drift.read().unwrap_or_else(|p| p.into_inner()) {
        Some(report) => (
            report.clusters.iter().find(|c| c.name == name).cloned(),
            Some(report.generated_at.clone()),
        ),
        None => (None, None),
    };
    let view = flotilla_ui::ClusterView {
        name: spec.name.clone(),
        known: true,
        labels: spec.labels.clone(),
        connect: spec.connect.as_str().to_string(),
        commit: Some(rev.commit.clone()),
        placements,
        drift,
        drift_at,
        seq,
    };
    html(flotilla_ui::render_cluster(&view, fragment(&q)))
}

async fn workflows(State(s): State<AppState>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let seq = s.events.last_seq();
    let Some(rev) = s.current() else {
        return unavailable("no valid revision loaded yet");
    };
    let mut out = Vec::new();
    for w in &rev.fleet.workflows {
        match crate::workflows::describe(&rev, &s.store, w, 10) {
            Ok(v) => out.push(v),
            Err(e) => return unavailable(&e),
        }
    }
    html(flotilla_ui::render_status_page(
        "Workflows",
        Nav::Workflows,
        "/api/v1/workflows",
        &json!({ "workflows": out }),
        seq,
        fragment(&q),
    ))
}

async fn backups(State(s): State<AppState>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let seq = s.events.last_seq();
    let status = s.backups.read().unwrap_or_else(|p| p.into_inner()).clone();
    html(flotilla_ui::render_status_page(
        "Backups",
        Nav::Backups,
        "/api/v1/backups",
        &serde_json::to_value(status).unwrap_or(Value::Null),
        seq,
        fragment(&q),
    ))
}

async fn burst(State(s): State<AppState>, Query(q): Query<Vec<(String, String)>>) -> Response {
    let seq = s.events.last_seq();
    html(flotilla_ui::render_status_page(
        "Burst pools",
        Nav::Burst,
        "/api/v1/burst",
        &serde_json::to_value(s.burst.status()).unwrap_or(Value::Null),
        seq,
        fragment(&q),
    ))
}

#[derive(serde::Deserialize)]
pub(crate) struct StreamQuery {
    after: Option<u64>,
}

/// `GET /api/v1/events/stream`: the event bus as server-sent events (`id:` = `seq`, `data:`
/// = the event's JSON). Starts after `Last-Event-ID`, else `?after=`, else now.
pub(crate) async fn stream(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Response {
    let Ok(permit) = s.live.streams.clone().try_acquire_owned() else {
        tracing::warn!(max = MAX_STREAMS, "too many event streams; refusing one");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            axum::Json(json!({"error": format!("at most {MAX_STREAMS} event streams at once")})),
        )
            .into_response();
    };
    let after = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(q.after);
    let body = Body::from_stream(events(
        &s.events,
        after,
        permit,
        s.live.draining.subscribe(),
        HEARTBEAT,
        STREAM_LIFETIME,
    ));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

struct Sse {
    past: VecDeque<Arc<FleetEvent>>,
    rx: broadcast::Receiver<Arc<FleetEvent>>,
    draining: watch::Receiver<bool>,
    first: Option<String>,
    done: bool,
    heartbeat: Duration,
    until: tokio::time::Instant,
    _permit: OwnedSemaphorePermit,
}

fn frame(e: &FleetEvent) -> Bytes {
    let data = serde_json::to_string(e).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("id: {}\ndata: {data}\n\n", e.seq))
}

/// The frames of one stream: the kept events after `after`, then each new one; a `lagged`
/// event when the reader fell behind or asked for events this process never had (the page
/// redraws); heartbeat comments; a `draining` event and the end when the daemon drains.
pub(crate) fn events(
    bus: &Bus,
    after: Option<u64>,
    permit: OwnedSemaphorePermit,
    draining: watch::Receiver<bool>,
    heartbeat: Duration,
    lifetime: Duration,
) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static {
    let last = bus.last_seq();
    let after = after.unwrap_or(last);
    let (past, rx) = bus.since(after);
    let mut first = String::from("retry: 2000\n\n");
    if after > last {
        // Another daemon process numbered those: the page is older than this process.
        first.push_str("event: lagged\ndata: {\"missed\":null}\n\n");
    }
    let state = Sse {
        past: past.into(),
        rx,
        draining,
        first: Some(first),
        done: false,
        heartbeat,
        until: tokio::time::Instant::now() + lifetime,
        _permit: permit,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        if let Some(f) = st.first.take() {
            return Some((Ok(Bytes::from(f)), st));
        }
        if let Some(e) = st.past.pop_front() {
            return Some((Ok(frame(&e)), st));
        }
        let drained = Bytes::from_static(b"event: draining\ndata: {}\n\n");
        if *st.draining.borrow() {
            st.done = true;
            return Some((Ok(drained), st));
        }
        tokio::select! {
            r = st.rx.recv() => match r {
                Ok(e) => Some((Ok(frame(&e)), st)),
                Err(broadcast::error::RecvError::Lagged(n)) => Some((
                    Ok(Bytes::from(format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n"))),
                    st,
                )),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            _ = st.draining.changed() => {
                st.done = true;
                Some((Ok(drained), st))
            }
            _ = tokio::time::sleep_until(st.until) => None,
            _ = tokio::time::sleep(st.heartbeat) => Some((Ok(Bytes::from_static(b": heartbeat\n\n")), st)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Trigger;
    use futures::StreamExt;

    async fn next_text(
        s: &mut (impl futures::Stream<Item = Result<Bytes, Infallible>> + Unpin),
    ) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(5), s.next())
            .await
            .expect("a frame within 5 s")
            .map(|b| String::from_utf8_lossy(&b.unwrap_or_default()).into_owned())
    }

    #[tokio::test]
    async fn a_stream_resumes_after_its_last_id_and_ends_on_drain_freeing_its_slot() {
        let bus = Bus::new();
        let slots = Arc::new(Semaphore::new(1));
        let (drain, drain_rx) = watch::channel(false);
        bus.publish(FleetEvent::new(Trigger::DriftFound, "one").cluster("a"));
        bus.publish(FleetEvent::new(Trigger::SelfHealed, "two").cluster("a"));
        let permit = slots.clone().try_acquire_owned().expect("a slot");
        let mut s = Box::pin(events(
            &bus,
            Some(1),
            permit,
            drain_rx,
            Duration::from_millis(200),
            Duration::from_secs(60),
        ));
        assert!(
            slots.clone().try_acquire_owned().is_err(),
            "the slot is held"
        );
        assert_eq!(next_text(&mut s).await.as_deref(), Some("retry: 2000\n\n"));
        let second = next_text(&mut s).await.unwrap_or_default();
        assert!(second.starts_with("id: 2\ndata: {\"seq\":2,"), "{second}");
        assert!(second.contains("\"message\":\"two\""), "{second}");
        bus.publish(FleetEvent::new(Trigger::RolloutStep, "three"));
        let third = next_text(&mut s).await.unwrap_or_default();
        assert!(third.starts_with("id: 3\n"), "{third}");
        assert_eq!(
            next_text(&mut s).await.as_deref(),
            Some(": heartbeat\n\n"),
            "idle streams send heartbeats"
        );
        drain.send_replace(true);
        assert_eq!(
            next_text(&mut s).await.as_deref(),
            Some("event: draining\ndata: {}\n\n")
        );
        assert_eq!(next_text(&mut s).await, None, "the stream ends");
        drop(s);
        assert!(
            slots.clone().try_acquire_owned().is_ok(),
            "a finished stream gives its slot back"
        );
    }

    #[tokio::test]
    async fn a_dropped_stream_frees_its_slot_and_an_old_id_asks_for_a_redraw() {
        let bus = Bus::new();
        let slots = Arc::new(Semaphore::new(1));
        let (_drain, drain_rx) = watch::channel(false);
        let permit = slots.clone().try_acquire_owned().expect("a slot");
        let mut s = Box::pin(events(
            &bus,
            Some(99),
            permit,
            drain_rx,
            HEARTBEAT,
            STREAM_LIFETIME,
        ));
        let first = next_text(&mut s).await.unwrap_or_default();
        assert!(first.contains("event: lagged"), "{first}");
        // The client goes: hyper drops the body, and with it the stream.
        drop(s);
        assert!(slots.try_acquire_owned().is_ok());
    }

    #[test]
    fn cells_follow_the_rollout_then_the_record_then_drift() {
        use flotilla_reconciler::rollout::model::{Batch, ClusterStep, Step};
        let key = |p: &str, c: &str| (p.to_string(), c.to_string());
        let rollout = Rollout {
            id: "web@1".into(),
            placement: "web".into(),
            commit: "c".into(),
            revision: "r".into(),
            phase: Phase::Progressing,
            batches: vec![Batch {
                number: 1,
                soak_secs: 0,
                step: Step::Applying,
                clusters: ["a", "b", "c"]
                    .iter()
                    .zip([
                        ClusterState::Failed,
                        ClusterState::Applied,
                        ClusterState::Passed,
                    ])
                    .map(|(c, state)| ClusterStep {
                        cluster: c.to_string(),
                        hash: "h2".into(),
                        previous: None,
                        state,
                        message: String::new(),
                    })
                    .collect(),
            }],
            current: 0,
            failures: 0,
            max_failures: 0,
            started_at: String::new(),
            updated_at: String::new(),
            pause_requested: false,
            stop_requested: None,
            message: String::new(),
        };
        let mut hashes = Hashes::new();
        for c in ["a", "b", "c", "d"] {
            hashes.insert(key("web", c), Ok("h2".into()));
        }
        hashes.insert(key("web", "e"), Err("no such file".into()));
        let rollouts = HashMap::from([("web".to_string(), rollout)]);
        let f = Facts {
            hashes: Arc::new(hashes),
            steps: step_index(&rollouts, None),
            rollouts,
            revisions: HashMap::from([(
                key("web", "d"),
                ClusterRevision {
                    applied: Some("h2".into()),
                    good: Some("h2".into()),
                },
            )]),
            drift: HashMap::from([(
                key("web", "c"),
                (vec!["Deployment.apps/shop/web".into()], vec![]),
            )]),
        };
        let states: Vec<CellState> = ["a", "b", "c", "d", "e", "z"]
            .iter()
            .map(|c| cell(&f, "web", c).state)
            .collect();
        assert_eq!(
            states,
            [
                CellState::Failed,
                CellState::Progressing,
                CellState::Drifted,
                CellState::InSync,
                CellState::Failed,
                CellState::NotPlaced
            ]
        );
        assert_eq!(
            cell(&f, "web", "c").note.as_deref(),
            Some("live differs from Git: Deployment.apps/shop/web")
        );
    }
}
