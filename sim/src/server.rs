//! HTTP: routing `/clusters/NAME/...` to a cluster, discovery, verbs and watch streams.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::cluster::{Cluster, Event, Query, flag};
use crate::discovery::{self, ResourceDef};
use crate::error::ApiError;
use crate::table::Include;
use crate::{AuditRecord, Shared};

pub type Resp = Response<BoxBody<Bytes, Infallible>>;

const MAX_BODY: usize = 8 << 20;

/// A streaming body fed by a channel (watch events).
struct ChanBody(mpsc::Receiver<Bytes>);

impl Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn json_response(code: u16, v: &Value) -> Resp {
    text_response(code, serde_json::to_string(v).unwrap_or_default())
}

fn text_response(code: u16, body: String) -> Resp {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(Full::new(Bytes::from(body)).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

fn error_response(e: &ApiError) -> Resp {
    json_response(e.code, &e.status())
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

/// Percent-decoding (and `+` as space) of a query component.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match h {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A simulated fault: the connection is closed without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by a simulated fault")]
pub struct Dropped;

/// Entry point for one HTTP request.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Dropped> {
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    tracing::debug!(method = %req.method(), %path, accept = ?req.headers().get("accept"), "request");
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let ["admin", "clusters", name, "faults"] = segs.as_slice() {
        return Ok(admin_faults(&shared, name, req).await);
    }
    if let ["admin", "clusters", name, "unready-images"] = segs.as_slice() {
        return Ok(admin_unready(&shared, name, req).await);
    }
    if segs.len() < 2 || segs[0] != "clusters" {
        if path == "/healthz" || path == "/readyz" || path == "/livez" {
            return Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed()));
        }
        return Ok(error_response(&ApiError::not_found_path(&path)));
    }
    let Some(cluster) = shared.clusters.iter().find(|c| c.name == segs[1]).cloned() else {
        return Ok(error_response(&ApiError::new(
            404,
            "NotFound",
            format!("no simulated cluster named {:?}", segs[1]),
        )));
    };
    match cluster.decide() {
        crate::faults::Decision::Drop => return Err(Dropped),
        decision => {
            let latency = cluster.faults().latency;
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if let crate::faults::Decision::Error(code) = decision {
                let reason = match code {
                    429 => "TooManyRequests",
                    500 => "InternalError",
                    503 => "ServiceUnavailable",
                    _ => "InternalError",
                };
                let mut r = error_response(&ApiError::new(
                    code,
                    reason,
                    format!("simulated fault: {code} from cluster {}", cluster.name),
                ));
                if code == 429 || code == 503 {
                    r.headers_mut()
                        .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
                }
                return Ok(r);
            }
        }
    }
    let rest: Vec<String> = segs[2..].iter().map(|s| decode(s)).collect();
    let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let content_type = header(&req, "content-type");
    let user_agent = header(&req, "user-agent");
    let accept = header(&req, "accept");
    let body = if method == Method::POST
        || method == Method::PUT
        || method == Method::PATCH
        || method == Method::DELETE
    {
        match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                return Ok(error_response(&ApiError::new(
                    413,
                    "RequestEntityTooLarge",
                    "the request body is too large or could not be read",
                )));
            }
        }
    } else {
        Bytes::new()
    };
    if !body.is_empty()
        && (content_type.starts_with("application/vnd.kubernetes.protobuf")
            || content_type.starts_with("application/cbor"))
    {
        return Ok(error_response(&ApiError::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the flotilla sim accepts JSON and YAML request bodies only, not {content_type} \
                 (kubectl's typed generators such as `kubectl create configmap` send protobuf: \
                 use `kubectl create -f` or `kubectl apply` instead)"
            ),
        )));
    }
    let ctx = Ctx {
        shared: &shared,
        cluster: &cluster,
        method: &method,
        query: &query,
        content_type: &content_type,
        user_agent: &user_agent,
        accept: &accept,
        body: &body,
    };
    Ok(match route(&ctx, &rest) {
        Ok(r) => r,
        Err(e) => error_response(&e),
    })
}

/// `GET|PUT /admin/clusters/NAME/faults`: read or set a cluster's faults (JSON, see
/// `Faults::from_json`). Admin requests are never subject to faults.
async fn admin_faults(shared: &Shared, name: &str, req: Request<Incoming>) -> Resp {
    let Some(cluster) = shared.clusters.iter().find(|c| c.name == name).cloned() else {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            format!("no simulated cluster named {name:?}"),
        ));
    };
    match *req.method() {
        Method::GET => json_response(200, &cluster.faults().to_json()),
        Method::PUT => {
            let body = match Limited::new(req.into_body(), 64 << 10).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error_response(&ApiError::bad_request("unreadable body")),
            };
            let parsed = serde_json::from_slice::<Value>(&body)
                .map_err(|e| e.to_string())
                .and_then(|v| crate::faults::Faults::from_json(&v));
            match parsed {
                Ok(f) => {
                    tracing::info!(cluster = name, faults = ?f, "faults set");
                    cluster.set_faults(f);
                    json_response(200, &cluster.faults().to_json())
                }
                Err(e) => error_response(&ApiError::bad_request(e)),
            }
        }
        _ => error_response(&ApiError::new(405, "MethodNotAllowed", "GET or PUT")),
    }
}

/// `GET|PUT /admin/clusters/NAME/unready-images`: the cluster's own unready-images regular
/// expression as plain text (an empty body goes back to the global `--unready-images`).
async fn admin_unready(shared: &Shared, name: &str, req: Request<Incoming>) -> Resp {
    let Some(cluster) = shared.clusters.iter().find(|c| c.name == name).cloned() else {
        return error_response(&ApiError::new(
            404,
            "NotFound",
            format!("no simulated cluster named {name:?}"),
        ));
    };
    let current =
        |c: &Cluster| json!({"unreadyImages": c.unready_images().map(|r| r.as_str().to_string())});
    match *req.method() {
        Method::GET => json_response(200, &current(&cluster)),
        Method::PUT => {
            let body = match Limited::new(req.into_body(), 64 << 10).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error_response(&ApiError::bad_request("unreadable body")),
            };
            let text = String::from_utf8_lossy(&body).trim().to_string();
            if text.is_empty() {
                cluster.set_unready_images(None);
            } else {
                match regex::Regex::new(&text) {
                    Ok(re) => cluster.set_unready_images(Some(re)),
                    Err(e) => {
                        return error_response(&ApiError::bad_request(format!(
                            "invalid regular expression: {e}"
                        )));
                    }
                }
            }
            json_response(200, &current(&cluster))
        }
        _ => error_response(&ApiError::new(405, "MethodNotAllowed", "GET or PUT")),
    }
}

fn header(req: &Request<Incoming>, name: &str) -> String {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

struct Ctx<'a> {
    shared: &'a Arc<Shared>,
    cluster: &'a Arc<Cluster>,
    method: &'a Method,
    query: &'a Query,
    content_type: &'a str,
    user_agent: &'a str,
    accept: &'a str,
    body: &'a Bytes,
}

fn route(ctx: &Ctx, rest: &[&str]) -> Result<Resp, ApiError> {
    let get = ctx.method == Method::GET;
    match rest {
        ["version"] if get => Ok(json_response(200, &discovery::version())),
        ["api" | "apis"] if get && discovery::wants_aggregated(ctx.accept) => {
            let doc = discovery::aggregated(&ctx.cluster.defs(), rest == ["api"]);
            let mut r = json_response(200, &doc);
            r.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static(discovery::AGGREGATED),
            );
            Ok(r)
        }
        ["api"] if get => Ok(json_response(200, &discovery::api_versions())),
        ["api", "v1"] if get => Ok(json_response(
            200,
            &discovery::resource_list(&ctx.cluster.defs(), "", "v1"),
        )),
        ["apis"] if get => Ok(json_response(
            200,
            &discovery::group_list(&ctx.cluster.defs()),
        )),
        ["apis", g] if get => discovery::group(&ctx.cluster.defs(), g)
            .map(|v| json_response(200, &v))
            .ok_or_else(|| ApiError::not_found_path(&format!("/apis/{g}"))),
        ["apis", g, v] if get => {
            let defs = ctx.cluster.defs();
            if defs.iter().any(|d| d.group == *g && d.version == *v) {
                Ok(json_response(200, &discovery::resource_list(&defs, g, v)))
            } else {
                Err(ApiError::not_found_path(&format!("/apis/{g}/{v}")))
            }
        }
        ["openapi", "v3"] if get => Ok(json_response(
            200,
            &crate::openapi::root(&ctx.cluster.defs()),
        )),
        ["openapi", "v3", "api", v] if get => {
            crate::openapi::group_version(&ctx.cluster.defs(), "", v)
                .map(|d| json_response(200, &d))
                .ok_or_else(|| ApiError::not_found_path(&format!("/openapi/v3/api/{v}")))
        }
        ["openapi", "v3", "apis", g, v] if get => {
            crate::openapi::group_version(&ctx.cluster.defs(), g, v)
                .map(|d| json_response(200, &d))
                .ok_or_else(|| ApiError::not_found_path(&format!("/openapi/v3/apis/{g}/{v}")))
        }
        ["api", "v1", tail @ ..] if !tail.is_empty() => resource(ctx, "", "v1", tail),
        ["apis", g, v, tail @ ..] if !tail.is_empty() => resource(ctx, g, v, tail),
        _ => Err(ApiError::not_found_path(&format!("/{}", rest.join("/")))),
    }
}

fn resource(ctx: &Ctx, group: &str, version: &str, tail: &[&str]) -> Result<Resp, ApiError> {
    let c = ctx.cluster;
    let lookup = |plural: &str| c.resource(group, version, plural);
    // (resource, namespace, name, subresource)
    let (def, ns, name, sub): (ResourceDef, Option<&str>, Option<&str>, Option<&str>) = match tail {
        ["namespaces", ns, plural, more @ ..]
            if lookup(plural).is_some_and(|d| d.namespaced) && more.len() <= 2 =>
        {
            let d = lookup(plural).ok_or_else(|| ApiError::not_found_path(plural))?;
            (d, Some(*ns), more.first().copied(), more.get(1).copied())
        }
        [plural, more @ ..] if more.len() <= 2 => {
            let d = lookup(plural).ok_or_else(|| {
                ApiError::not_found_path(&format!("{plural} in {group}/{version}"))
            })?;
            (d, None, more.first().copied(), more.get(1).copied())
        }
        _ => return Err(ApiError::not_found_path(&tail.join("/"))),
    };
    if let Some(s) = sub
        && !(s == "status" && def.status || s == "scale" && def.has_scale())
    {
        return Err(ApiError::not_found_path(&format!("{}/{s}", def.plural)));
    }
    if def.namespaced && name.is_some() && ns.is_none() {
        return Err(ApiError::not_found_path(&format!(
            "{} is namespaced: use /namespaces/NS/{}/NAME",
            def.plural, def.plural
        )));
    }
    let ns_str = if def.namespaced { ns.unwrap_or("") } else { "" };
    let q = ctx.query;
    // Server-side printing, for GETs that ask for a Table.
    let table =
        if crate::table::wants_table(ctx.accept) && ctx.method == Method::GET && sub.is_none() {
            Some(
                Include::from_query(q.get("includeObject").map(String::as_str))
                    .map_err(ApiError::bad_request)?,
            )
        } else {
            None
        };
    let verb;
    let result: Result<(u16, Value), ApiError> = match (ctx.method.clone(), name) {
        (Method::GET, None) if flag(q, "watch") => {
            audit(ctx, "watch", &def, ns_str, "");
            return watch(ctx, &def, ns, table);
        }
        (Method::GET, None) if table.is_some() => {
            let r = c.list(&def, ns, q);
            audit_code(
                ctx,
                "list",
                &def,
                ns_str,
                "",
                r.as_ref().map_or_else(|e| e.code, |_| 200),
            );
            let list = r?;
            let items = list["items"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            let t = crate::table::table(
                &def,
                items,
                list["metadata"].clone(),
                table.unwrap_or(Include::Metadata),
            );
            return Ok(table_response(&t));
        }
        (Method::GET, None) => {
            let r = c.list_text(&def, ns, q);
            audit_code(
                ctx,
                "list",
                &def,
                ns_str,
                "",
                r.as_ref().map_or_else(|e| e.code, |_| 200),
            );
            return r.map(|text| text_response(200, text));
        }
        (m, Some(n)) if sub == Some("scale") => {
            verb = match m {
                Method::GET => "get",
                Method::PUT => "update",
                _ => "patch",
            };
            c.scale(
                &def,
                ns_str,
                n,
                &m,
                ctx.content_type,
                ctx.body,
                q,
                ctx.user_agent,
            )
            .map(|v| (200, v))
        }
        (Method::GET, Some(n)) => {
            verb = "get";
            c.get(&def, ns_str, n).map(|v| (200, v))
        }
        (Method::POST, None) => {
            verb = "create";
            if def.namespaced && ns.is_none() {
                Err(ApiError::bad_request(
                    "a namespaced object needs /namespaces/NS/ in its URL",
                ))
            } else {
                c.create(&def, ns_str, ctx.body, q, ctx.user_agent)
                    .map(|v| (201, v))
            }
        }
        (Method::PUT, Some(n)) => {
            verb = "update";
            c.update(&def, ns_str, n, sub, ctx.body, q, ctx.user_agent)
                .map(|v| (200, v))
        }
        (Method::PATCH, Some(n)) => {
            verb = "patch";
            c.patch(
                &def,
                ns_str,
                n,
                sub,
                ctx.content_type,
                ctx.body,
                q,
                ctx.user_agent,
            )
        }
        (Method::DELETE, None) => {
            verb = "deletecollection";
            c.delete_collection(&def, ns, ctx.body, q).map(|v| (200, v))
        }
        (Method::DELETE, Some(n)) => {
            verb = "delete";
            c.delete(&def, ns_str, n, ctx.body, q).map(|v| (200, v))
        }
        _ => {
            return Err(ApiError::new(
                405,
                "MethodNotAllowed",
                format!(
                    "the server does not allow this method on the requested resource ({})",
                    ctx.method
                ),
            ));
        }
    };
    let name = name.unwrap_or("");
    let code = match &result {
        Ok((code, _)) => *code,
        Err(e) => e.code,
    };
    audit_code(ctx, verb, &def, ns_str, name, code);
    let (code, v) = result?;
    if let Some(include) = table {
        let meta = json!({"resourceVersion": v["metadata"]["resourceVersion"]});
        return Ok(table_response(&crate::table::table(
            &def,
            std::slice::from_ref(&v),
            meta,
            include,
        )));
    }
    Ok(json_response(code, &v))
}

fn table_response(t: &Value) -> Resp {
    let mut r = json_response(200, t);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static(crate::table::TABLE),
    );
    r
}

fn audit(ctx: &Ctx, verb: &str, def: &ResourceDef, ns: &str, name: &str) {
    audit_code(ctx, verb, def, ns, name, 200);
}

fn audit_code(ctx: &Ctx, verb: &str, def: &ResourceDef, ns: &str, name: &str, code: u16) {
    let rec = AuditRecord {
        cluster: ctx.cluster.name.clone(),
        verb: verb.to_string(),
        group: def.group.clone(),
        resource: def.plural.clone(),
        namespace: ns.to_string(),
        name: name.to_string(),
        field_manager: ctx.query.get("fieldManager").cloned().unwrap_or_default(),
        dry_run: ctx.query.get("dryRun").is_some_and(|d| d == "All"),
        code,
        user_agent: ctx.user_agent.to_string(),
    };
    tracing::debug!(?rec, "audit");
    ctx.shared.record(rec);
}

fn event_line(ev: &Event) -> Bytes {
    Bytes::from(ev.line())
}

/// A watch event whose object is printed as a one-row Table.
fn table_event_line(def: &ResourceDef, ev: &Event, include: Include) -> Bytes {
    let obj = crate::cluster::load(&ev.object);
    let meta = json!({"resourceVersion": obj["metadata"]["resourceVersion"]});
    let t = crate::table::table(def, std::slice::from_ref(&obj), meta, include);
    let mut line = serde_json::to_vec(&json!({"type": ev.kind, "object": t})).unwrap_or_default();
    line.push(b'\n');
    Bytes::from(line)
}

fn watch(
    ctx: &Ctx,
    def: &ResourceDef,
    ns: Option<&str>,
    table: Option<Include>,
) -> Result<Resp, ApiError> {
    let q = ctx.query;
    let labels = crate::select::LabelSelector::parse(
        q.get("labelSelector").map(String::as_str).unwrap_or(""),
    )
    .map_err(ApiError::bad_request)?;
    let fields = crate::select::FieldSelector::parse(
        q.get("fieldSelector").map(String::as_str).unwrap_or(""),
    )
    .map_err(ApiError::bad_request)?;
    let bookmarks = flag(q, "allowWatchBookmarks");
    let initial_end = flag(q, "sendInitialEvents") && bookmarks;
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800));
    let (initial, mut rx, mut last_rv) = ctx.cluster.watch(def, ns, q)?;
    let key = (def.group.clone(), def.version.clone(), def.plural.clone());
    let ns = ns.map(str::to_string);
    let api_version = def.api_version();
    let kind = def.kind.clone();
    let table_def = def.clone();
    let line_of = move |ev: &Event| match table {
        Some(include) => table_event_line(&table_def, ev, include),
        None => event_line(ev),
    };
    let bookmark_every = ctx.shared.bookmark_interval;
    let (tx, body_rx) = mpsc::channel::<Bytes>(64);
    let cluster = ctx.cluster.clone();
    let matches = move |ev: &Event| {
        ev.res == key
            && ns.as_ref().is_none_or(|n| *n == ev.namespace)
            && labels.matches(&ev.labels)
            && fields.matches_parts(&ev.name, &ev.namespace)
    };
    tokio::spawn(async move {
        let send = |line: Bytes| {
            let tx = tx.clone();
            let delay = cluster.faults().watch_delay;
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                tx.send(line).await.is_ok()
            }
        };
        for ev in &initial {
            if matches(ev) && !send(line_of(ev)).await {
                return;
            }
        }
        if initial_end {
            // Watch-list (sendInitialEvents=true): the initial state is complete.
            let b = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
                "metadata": {"resourceVersion": last_rv.to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"}}}});
            let mut line = serde_json::to_vec(&b).unwrap_or_default();
            line.push(b'\n');
            if !send(Bytes::from(line)).await {
                return;
            }
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(bookmark_every);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                _ = tick.tick(), if bookmarks => {
                    let b = json!({"type": "BOOKMARK", "object": {"apiVersion": api_version, "kind": kind,
                        "metadata": {"resourceVersion": last_rv.to_string()}}});
                    let mut line = serde_json::to_vec(&b).unwrap_or_default();
                    line.push(b'\n');
                    if !send(Bytes::from(line)).await { return; }
                }
                r = rx.recv() => match r {
                    Ok(ev) => {
                        last_rv = ev.rv;
                        if matches(&ev) && !send(line_of(&ev)).await {
                            return;
                        }
                    }
                    // A slow watcher fell behind: end the stream, the client re-lists.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(ChanBody(body_rx).boxed())
        .map_err(|e| ApiError::new(500, "InternalError", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = parse_query(Some("labelSelector=app%20in%20(a%2Cb)&watch=1&x=%zz&y=%4"));
        assert_eq!(q["labelSelector"], "app in (a,b)");
        assert_eq!(q["watch"], "1");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["y"], "%4");
    }
}
