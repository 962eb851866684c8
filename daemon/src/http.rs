//! The daemon's HTTP surface: `/healthz`, `/readyz`, `/metrics`, `POST /hooks/git`, and the
//! JSON status API under `/api/v1`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use flotilla_reconciler::rollout::model::ClusterRevision;
use flotilla_reconciler::rollout::{Request as RolloutRequest, Rollout};

use crate::metrics::labels;
use crate::run::{Shared, Trigger};
use crate::webhook::{self, MAX_BODY, Verdict};

type AppState = Arc<Shared>;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/hooks/git", post(hook))
        .route("/api/v1/fleet", get(fleet))
        .route("/api/v1/rollouts", get(rollouts))
        .route("/api/v1/rollouts/{placement}", get(rollout))
        .route("/api/v1/rollouts/{placement}/{action}", post(control))
        .route("/api/v1/replicas", get(replicas))
        .route("/api/v1/clusters", get(clusters))
        .route("/api/v1/clusters/{name}", get(cluster))
        .route("/api/v1/drift", get(drift))
        .route("/api/v1/events", get(events))
        .route("/api/v1/events/stream", get(crate::ui::stream))
        .route("/api/v1/backups", get(backups))
        .route("/api/v1/backups/{name}/run", post(backup_run))
        .route("/api/v1/burst", get(burst))
        .route("/api/v1/images/scan", post(images_scan))
        .route("/api/v1/workflows", get(workflows))
        .route("/api/v1/workflows/{name}", get(workflow))
        .route("/api/v1/workflows/{name}/run", post(workflow_run))
        .with_state(shared)
}

fn json_response(status: StatusCode, value: Value) -> Response {
    (status, axum::Json(value)).into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json_response(status, json!({"error": message.into()}))
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> Response {
    let status = s.status();
    if status.ready && !status.draining {
        // Still serving the last good revision: ready, and saying which commit was refused.
        match &status.rejected {
            Some(r) => (
                StatusCode::OK,
                format!(
                    "ready (commit {} rejected; the last good revision keeps running)\n",
                    r.commit
                ),
            )
                .into_response(),
            None => (StatusCode::OK, "ready\n").into_response(),
        }
    } else if status.draining {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no valid revision loaded yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Reads at most `MAX_BODY` bytes; `None` when the body is larger.
async fn limited_body(body: Body) -> Result<Option<Bytes>, Response> {
    match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => Ok(Some(b)),
        Err(e) => {
            let inner = e.into_inner();
            if inner
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Ok(None)
            } else {
                Err(error(StatusCode::BAD_REQUEST, inner.to_string()))
            }
        }
    }
}

async fn hook(State(s): State<AppState>, req: Request) -> Response {
    let count = |style: &str, result: &str| {
        s.metrics
            .webhooks
            .get_or_create(&labels(&[("style", style), ("result", result)]))
            .inc();
    };
    let Some(secret) = &s.webhook_secret else {
        count("none", "disabled");
        return error(
            StatusCode::FORBIDDEN,
            "webhooks are disabled: start flotilla serve with --webhook-secret-file",
        );
    };
    let headers: HeaderMap = req.headers().clone();
    let too_large = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n > MAX_BODY);
    if too_large {
        count("unknown", "too_large");
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body over {MAX_BODY} bytes"),
        );
    }
    let body = match limited_body(req.into_body()).await {
        Ok(Some(b)) => b,
        Ok(None) => {
            count("unknown", "too_large");
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body over {MAX_BODY} bytes"),
            );
        }
        Err(r) => return r,
    };
    match webhook::judge(&headers, &body, secret, &s.config.rev) {
        Ok(Verdict::Fetch { style, git_ref }) => {
            count(style.label(), "triggered");
            let _ = s.triggers.send(Trigger::Webhook {
                style: style.label(),
            });
            json_response(
                StatusCode::ACCEPTED,
                json!({"triggered": true, "ref": git_ref}),
            )
        }
        Ok(Verdict::Ignore { style, reason }) => {
            count(style.label(), "ignored");
            tracing::info!(style = style.label(), %reason, "webhook ignored");
            json_response(
                StatusCode::ACCEPTED,
                json!({"triggered": false, "reason": reason}),
            )
        }
        Err(refusal) => {
            let (style, result, status) = match &refusal {
                webhook::Refusal::Unsigned => ("unknown", "unauthorized", StatusCode::UNAUTHORIZED),
                webhook::Refusal::BadSignature(st) => {
                    (st.label(), "unauthorized", StatusCode::UNAUTHORIZED)
                }
                webhook::Refusal::Malformed(st, _) => {
                    (st.label(), "bad_request", StatusCode::BAD_REQUEST)
                }
            };
            count(style, result);
            tracing::warn!(style, error = %refusal, "webhook refused");
            error(status, refusal.to_string())
        }
    }
}

async fn fleet(State(s): State<AppState>) -> Response {
    let mut status = s.status();
    if s.ownership.is_replicated() {
        // Any replica answers for the whole fleet: placements driven elsewhere come from the
        // shared store (their rollout record and owner).
        let held = s.ownership.held();
        status.replica = Some(crate::status::ReplicaStatus {
            id: s.ownership.replica.clone(),
            members: held.members.clone(),
            units_held: held.units.len(),
            may_act: s.ownership.may_act(),
        });
        let stored = s.store.read(|tx| {
            let rollouts: Vec<(String, Rollout)> = tx.rollouts()?;
            let owners = tx.owners()?;
            Ok((rollouts, owners))
        });
        match stored {
            Ok((rollouts, owners)) => {
                let names: Vec<String> = s
                    .current()
                    .map(|r| r.fleet.placements.iter().map(|p| p.name.clone()).collect())
                    .unwrap_or_default();
                for name in names {
                    let unit = crate::ha::placement_unit(&name);
                    let owner = owners
                        .iter()
                        .find(|(u, _)| *u == unit)
                        .map(|(_, o)| o.holder.clone())
                        .filter(|h| !h.is_empty());
                    let p = status.placements.entry(name.clone()).or_default();
                    p.owner = owner;
                    if !held.units.contains_key(&unit)
                        && let Some((_, r)) = rollouts.iter().find(|(n, _)| *n == name)
                    {
                        p.rollout = Some(r.id.clone());
                        p.phase = Some(r.phase.label().to_string());
                        p.running = !r.phase.is_final();
                        p.last_outcome = (!r.message.is_empty()).then(|| r.message.clone());
                    }
                }
            }
            Err(e) => return store_error(e),
        }
    }
    json_response(
        StatusCode::OK,
        serde_json::to_value(status).unwrap_or(Value::Null),
    )
}

fn store_error(e: impl std::fmt::Display) -> Response {
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("state store: {e}"),
    )
}

async fn rollouts(State(s): State<AppState>) -> Response {
    match s.store.read(|tx| tx.rollouts::<Rollout>()) {
        Ok(list) => {
            let list: Vec<Rollout> = list.into_iter().map(|(_, r)| r).collect();
            json_response(StatusCode::OK, json!({"rollouts": list}))
        }
        Err(e) => store_error(e),
    }
}

async fn rollout(State(s): State<AppState>, Path(placement): Path<String>) -> Response {
    match flotilla_reconciler::rollout::control::history(&s.store, &placement) {
        Ok(Some((r, events))) => {
            json_response(StatusCode::OK, json!({"rollout": r, "events": events}))
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("placement {placement}: no rollout recorded"),
        ),
        Err(e) => store_error(e),
    }
}

fn authorized(s: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = &s.api_token else {
        return true;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    token.matches(given.as_bytes())
}

/// Whether a browser sent this request from another site (a page elsewhere posting to this
/// daemon, which on loopback may run without a token). The UI's own requests are same-origin;
/// the CLI and scripts send neither header. Cross-site requests never change anything.
fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if matches!(fetch_site, "cross-site" | "same-site") {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return false;
    };
    let origin = origin.to_str().unwrap_or("null");
    let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    authority.is_empty() || !authority.eq_ignore_ascii_case(host)
}

/// The answer to a cross-site request for a change (see [`cross_site`]).
fn refuse_cross_site(headers: &HeaderMap) -> Option<Response> {
    cross_site(headers).then(|| {
        error(
            StatusCode::FORBIDDEN,
            "cross-site request refused: changes come from this daemon's own pages or API clients",
        )
    })
}

/// The checks every mutating API request passes: not cross-site, the bearer token (when one
/// is set), and not a read-only daemon.
fn refuse_mutation(s: &Shared, headers: &HeaderMap, what: &str) -> Option<Response> {
    if let Some(refused) = refuse_cross_site(headers) {
        return Some(refused);
    }
    if !authorized(s, headers) {
        return Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ));
    }
    s.config.read_only.then(|| {
        error(
            StatusCode::FORBIDDEN,
            format!("read-only daemon: {what} not done here"),
        )
    })
}

async fn control(
    State(s): State<AppState>,
    Path((placement, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_mutation(&s, &headers, "rollouts are") {
        return refused;
    }
    let Some(request) = RolloutRequest::parse(&action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("unknown action {action:?} (pause, resume, abort, rollback)"),
        );
    };
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    match flotilla_reconciler::rollout::control::request(&s.store, &placement, request, &now) {
        Ok(message) => {
            let _ = s.triggers.send(Trigger::Control {
                placement: placement.clone(),
            });
            // The replica holding the placement may be another one.
            if s.ownership.is_replicated()
                && let Err(e) = s.store.notify(crate::ha::CONTROL, &placement)
            {
                tracing::warn!(error = %e, "cannot tell the other replicas of the request");
            }
            json_response(StatusCode::OK, json!({"message": message}))
        }
        Err(flotilla_reconciler::rollout::ControlError::State(e)) => store_error(e),
        Err(e @ flotilla_reconciler::rollout::ControlError::NoRollout(_)) => {
            error(StatusCode::NOT_FOUND, e.to_string())
        }
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

/// This replica, the live replicas it sees, the units it holds, and who holds every unit
/// (from the shared state store, so any replica gives the same table).
async fn replicas(State(s): State<AppState>) -> Response {
    let held = s.ownership.held();
    match s.store.read(|tx| tx.owners()) {
        Ok(owners) => {
            let owners: serde_json::Map<String, Value> = owners
                .into_iter()
                .map(|(unit, o)| (unit, json!({"holder": o.holder, "epoch": o.epoch})))
                .collect();
            json_response(
                StatusCode::OK,
                json!({
                    "replica": s.ownership.replica,
                    "replicated": s.ownership.is_replicated(),
                    "mayAct": s.ownership.may_act(),
                    "members": held.members,
                    "held": held.units,
                    "owners": owners,
                }),
            )
        }
        Err(e) => store_error(e),
    }
}

async fn clusters(State(s): State<AppState>) -> Response {
    let Some(rev) = s.current() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid revision loaded yet",
        );
    };
    let names: Vec<&str> = rev.fleet.clusters.iter().map(|c| c.name.as_str()).collect();
    json_response(StatusCode::OK, json!({"clusters": names}))
}

async fn cluster(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(rev) = s.current() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid revision loaded yet",
        );
    };
    let Some(spec) = rev.fleet.clusters.iter().find(|c| c.name == name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("cluster {name:?} is not in the fleet"),
        );
    };
    let desired = rev
        .targets
        .get(&name)
        .map(Vec::as_slice)
        .unwrap_or_default();
    // What the store recorded for this cluster, every placement in one read.
    let recorded = s.store.read(|tx| {
        let mut out = Vec::new();
        for d in desired {
            let revisions: Vec<(String, ClusterRevision)> = tx.revisions(&d.placement)?;
            out.push(
                revisions
                    .into_iter()
                    .find(|(c, _)| *c == name)
                    .map(|(_, r)| r),
            );
        }
        Ok(out)
    });
    let recorded = match recorded {
        Ok(r) => r,
        Err(e) => return store_error(e),
    };
    let mut placements = Vec::new();
    for (d, recorded) in desired.iter().zip(recorded) {
        let (hash, error) = match &d.objects {
            Ok(objects) => (
                Some(flotilla_reconciler::rollout::model::manifest_hash(objects)),
                None,
            ),
            Err(e) => (None, Some(e.clone())),
        };
        let applied = recorded.as_ref().and_then(|r| r.applied.clone());
        let good = recorded.as_ref().and_then(|r| r.good.clone());
        placements.push(json!({
            "name": d.placement,
            "desired": hash,
            "applied": applied,
            "good": good,
            "upToDate": hash.is_some() && applied == hash && good == hash,
            "renderError": error,
        }));
    }
    let drift = s
        .drift
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|r| r.clusters.iter().find(|c| c.name == name).cloned());
    json_response(
        StatusCode::OK,
        json!({
            "name": spec.name,
            "labels": spec.labels,
            "connect": spec.connect.as_str(),
            "context": (!spec.is_agent()).then(|| spec.context()),
            "commit": rev.commit,
            "placements": placements,
            "drift": drift,
            "agent": s.status().agents.get(&name),
        }),
    )
}

async fn burst(State(s): State<AppState>) -> Response {
    json_response(
        StatusCode::OK,
        serde_json::to_value(s.burst.status()).unwrap_or(Value::Null),
    )
}

async fn drift(State(s): State<AppState>) -> Response {
    match &*s.drift.read().unwrap_or_else(|p| p.into_inner()) {
        Some(report) => json_response(
            StatusCode::OK,
            serde_json::to_value(report).unwrap_or(Value::Null),
        ),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no drift check has run yet",
        ),
    }
}

#[derive(serde::Deserialize)]
struct EventsQuery {
    /// Only events with a greater `seq`.
    #[serde(default)]
    after: u64,
}

/// The event bus's recent events (`crate::events`), oldest first, and the newest `seq`.
async fn events(
    State(s): State<AppState>,
    axum::extract::Query(q): axum::extract::Query<EventsQuery>,
) -> Response {
    let (past, _) = s.events.since(q.after);
    json_response(
        StatusCode::OK,
        json!({
            "last": s.events.last_seq(),
            "events": past.iter().map(|e| serde_json::to_value(&**e).unwrap_or(Value::Null)).collect::<Vec<_>>(),
        }),
    )
}

/// Scheduled backups: policies, clusters, next firings, last runs.
async fn backups(State(s): State<AppState>) -> Response {
    let status = s.backups.read().unwrap_or_else(|p| p.into_inner()).clone();
    json_response(
        StatusCode::OK,
        serde_json::to_value(status).unwrap_or(Value::Null),
    )
}

/// Runs a backup policy now. Backups only read clusters, so read-only daemons run them too;
/// the API token is still required.
async fn backup_run(
    State(s): State<AppState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_cross_site(&headers) {
        return refused;
    }
    if !authorized(&s, &headers) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    }
    let known = s
        .current()
        .is_some_and(|r| r.fleet.backups.iter().any(|b| b.name == name));
    if !known {
        return error(
            StatusCode::NOT_FOUND,
            format!("no backup policy {name:?} in the current revision"),
        );
    }
    let _ = s.triggers.send(Trigger::BackupRequested {
        policy: name.clone(),
    });
    json_response(
        StatusCode::ACCEPTED,
        json!({"message": format!("backup {name} requested: see /api/v1/backups")}),
    )
}

async fn images_scan(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_mutation(&s, &headers, "image updates are") {
        return refused;
    }
    let _ = s.triggers.send(Trigger::ImagesDue { requested: true });
    json_response(
        StatusCode::ACCEPTED,
        json!({"message": "image scan requested: see `images` in /api/v1/fleet"}),
    )
}

async fn workflows(State(s): State<AppState>) -> Response {
    let Some(rev) = s.current() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid revision loaded yet",
        );
    };
    let mut out = Vec::new();
    for w in &rev.fleet.workflows {
        match crate::workflows::describe(&rev, &s.store, w, 10) {
            Ok(v) => out.push(v),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
        }
    }
    json_response(StatusCode::OK, json!({"workflows": out}))
}

async fn workflow(State(s): State<AppState>, Path(name): Path<String>) -> Response {
    let Some(rev) = s.current() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no valid revision loaded yet",
        );
    };
    let Some(w) = rev.fleet.workflows.iter().find(|w| w.name == name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("workflow {name:?} is not in the fleet"),
        );
    };
    match crate::workflows::describe(&rev, &s.store, w, usize::MAX) {
        Ok(v) => json_response(StatusCode::OK, v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

#[derive(serde::Deserialize)]
struct RunQuery {
    cluster: Option<String>,
}

async fn workflow_run(
    State(s): State<AppState>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RunQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = refuse_mutation(&s, &headers, "workflow runs are") {
        return refused;
    }
    match crate::workflows::run_now(s.clone(), &name, q.cluster.as_deref()).await {
        Ok(records) => json_response(StatusCode::OK, json!({"runs": records})),
        Err(e) => error(StatusCode::NOT_FOUND, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, axum::http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_requests_from_another_site_are_cross_site() {
        let host = ("host", "127.0.0.1:9410");
        // The CLI, curl, scripts: no Origin.
        assert!(!cross_site(&headers(&[host])));
        // The UI's own pages.
        assert!(!cross_site(&headers(&[
            host,
            ("origin", "http://127.0.0.1:9410")
        ])));
        assert!(!cross_site(&headers(&[
            host,
            ("sec-fetch-site", "same-origin")
        ])));
        // Another site, a sandboxed page, a sibling subdomain.
        assert!(cross_site(&headers(&[
            host,
            ("origin", "https://evil.example")
        ])));
        assert!(cross_site(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(cross_site(&headers(&[host, ("origin", "null")])));
        assert!(cross_site(&headers(&[
            host,
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(cross_site(&headers(&[
            host,
            ("sec-fetch-site", "same-site")
        ])));
    }
}
