//! [`KubeCluster`]: the [`Cluster`] trait over kube-rs.
//!
//! Objects travel as raw JSON (`serde_json::Value`) through `kube::core::Request` and
//! `Client::request`, so what the reconciler sees is exactly what the server sent (no
//! round-trip through typed metadata). Every request waits on the cluster's token bucket and
//! is retried by [`KubeCluster::send`]; every mutation goes through [`KubeCluster::mutate`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use flotilla_reconciler::cluster::{
    ApplyOptions, Cluster, ClusterError, Gvk, ObjectRef, ResourceInfo,
};
use kube::core::{
    ApiResource, GroupVersionKind,
    discovery::Scope,
    params::{DeleteParams, GetParams, ListParams, Patch, PatchParams},
};
use serde_json::Value;

use crate::budget::{RetryPolicy, TokenBucket};
use crate::connector::ClientSettings;
use crate::segment::{ResourcePath, Segment};

/// The field manager of applies of what Git declares (`FieldManager::Flotilla`).
pub const FIELD_MANAGER: &str = "flotilla";

/// The tracing target of the audit lines (one per mutation).
pub const AUDIT_TARGET: &str = "flotilla::audit";

/// One fleet cluster reached through kube-rs. Made by [`crate::Connector::connect`].
pub struct KubeCluster {
    name: String,
    context: String,
    read_only: bool,
    client: kube::Client,
    bucket: TokenBucket,
    retry: RetryPolicy,
    attempt_timeout: Duration,
    page_size: u32,
    /// Discovery per GVK; `None` records a kind the cluster does not serve.
    discovery: RwLock<HashMap<Gvk, Option<Discovered>>>,
    /// The user every request impersonates (a team's ServiceAccount), if any.
    impersonate: Option<String>,
    /// Requests in flight at once (`ClientSettings::max_in_flight`), shared with the other
    /// connections on the same client.
    in_flight: Arc<tokio::sync::Semaphore>,
}

#[derive(Debug, Clone)]
struct Discovered {
    ar: ApiResource,
    namespaced: bool,
}

impl fmt::Debug for KubeCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeCluster")
            .field("name", &self.name)
            .field("context", &self.context)
            .field("read_only", &self.read_only)
            .field("impersonate", &self.impersonate)
            .finish_non_exhaustive()
    }
}

/// A request that failed for good (after the retries, if it was worth retrying).
enum Failure {
    Kube { error: kube::Error, attempts: u32 },
    TimedOut { after: Duration, attempts: u32 },
}

impl Failure {
    fn status(&self) -> Option<&kube::core::Status> {
        match self {
            Failure::Kube {
                error: kube::Error::Api(s),
                ..
            } => Some(s),
            _ => None,
        }
    }

    fn is_not_found(&self) -> bool {
        self.status().is_some_and(|s| s.code == 404)
    }
}

/// Worth another attempt: throttled, server errors, timeouts and connection failures.
fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

fn retry_after(e: &kube::Error) -> Option<Duration> {
    match e {
        kube::Error::Api(s) => s
            .details
            .as_ref()
            .map(|d| d.retry_after_seconds)
            .filter(|&s| s > 0)
            .map(|s| Duration::from_secs(u64::from(s))),
        _ => None,
    }
}

/// One mutation, described; only [`KubeCluster::mutate`] turns it into a request.
enum Mutation<'a> {
    Apply {
        object: &'a Value,
        options: ApplyOptions,
    },
    Delete {
        r: &'a ObjectRef,
        dry_run: bool,
    },
}

impl KubeCluster {
    pub(crate) fn new(
        name: &str,
        context: &str,
        read_only: bool,
        client: kube::Client,
        settings: &ClientSettings,
    ) -> KubeCluster {
        KubeCluster {
            name: name.into(),
            context: context.into(),
            read_only,
            client,
            bucket: TokenBucket::new(settings.qps, settings.burst),
            retry: settings.retry,
            attempt_timeout: settings.connect_timeout + settings.read_timeout,
            page_size: settings.list_page_size.max(1),
            discovery: RwLock::new(HashMap::new()),
            impersonate: None,
            in_flight: Arc::new(tokio::sync::Semaphore::new(settings.max_in_flight.max(1))),
        }
    }

    /// Counts this connection's requests in flight with the others on `in_flight`.
    pub(crate) fn sharing_requests(
        mut self,
        in_flight: Arc<tokio::sync::Semaphore>,
    ) -> KubeCluster {
        self.in_flight = in_flight;
        self
    }

    /// Marks the requests as sent impersonating `user` (the client must carry the header).
    pub(crate) fn impersonating(mut self, user: Option<&str>) -> KubeCluster {
        self.impersonate = user.map(str::to_string);
        self
    }

    /// The user this connection impersonates, if any.
    pub fn impersonated_user(&self) -> Option<&str> {
        self.impersonate.as_deref()
    }

    /// The kubeconfig context this cluster was reached through.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// Runs one request with the budget: a token per attempt, a timeout per attempt, and
    /// retries with backoff for what [`retryable`] accepts.
    async fn send<T, F, Fut>(&self, what: &str, request: F) -> Result<T, Failure>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let attempts = self.retry.attempts();
        let mut attempt = 1;
        loop {
            self.bucket.acquire().await;
            // Held for this attempt only (not across the backoff below). Never closed, so
            // `acquire` cannot fail; if it did, the request goes out unlimited.
            let permit = self.in_flight.acquire().await.ok();
            let outcome = tokio::time::timeout(self.attempt_timeout, request()).await;
            drop(permit);
            let (failure, wait_hint) = match outcome {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(error)) => {
                    if !retryable(&error) || attempt >= attempts {
                        return Err(Failure::Kube {
                            error,
                            attempts: attempt,
                        });
                    }
                    let hint = retry_after(&error);
                    (error.to_string(), hint)
                }
                Err(_) => {
                    if attempt >= attempts {
                        return Err(Failure::TimedOut {
                            after: self.attempt_timeout,
                            attempts: attempt,
                        });
                    }
                    (format!("timed out after {:?}", self.attempt_timeout), None)
                }
            };
            let delay = self.retry.delay(attempt, wait_hint);
            tracing::debug!(
                cluster = %self.name,
                request = what,
                attempt,
                error = %failure,
                ?delay,
                "request failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// The [`ClusterError`] for a failed request; `apply` turns 409 into `Conflict`.
    fn error(&self, f: Failure, apply: bool) -> ClusterError {
        let cluster = self.name.clone();
        match f {
            Failure::TimedOut { after, attempts } => ClusterError::Unavailable {
                cluster,
                message: format!("no answer within {after:?} ({attempts} attempts)"),
            },
            Failure::Kube {
                error: kube::Error::Api(s),
                attempts,
            } => {
                if apply && s.code == 409 {
                    ClusterError::Conflict {
                        cluster,
                        message: s.message,
                    }
                } else if (400..500).contains(&s.code) && s.code != 429 {
                    ClusterError::Rejected {
                        cluster,
                        code: s.code,
                        reason: s.reason,
                        message: s.message,
                    }
                } else {
                    ClusterError::Unavailable {
                        cluster,
                        message: format!(
                            "{} {}: {} ({attempts} attempts)",
                            s.code, s.reason, s.message
                        ),
                    }
                }
            }
            Failure::Kube {
                error: error @ (kube::Error::SerdeError(_) | kube::Error::BuildRequest(_)),
                ..
            } => ClusterError::Invalid {
                cluster,
                message: error.to_string(),
            },
            Failure::Kube { error, attempts } => ClusterError::Unavailable {
                cluster,
                message: format!("{error} ({attempts} attempts)"),
            },
        }
    }

    /// Discovery of `gvk`, cached (a kind that is not served is cached as `None` until
    /// [`Cluster::refresh_discovery`]).
    async fn discover(&self, gvk: &Gvk) -> Result<Option<Discovered>, ClusterError> {
        if let Some(hit) = self
            .discovery
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(gvk)
        {
            return Ok(hit.clone());
        }
        let kgvk = GroupVersionKind::gvk(&gvk.group, &gvk.version, &gvk.kind);
        let found = match self
            .send("discovery", || {
                kube::discovery::pinned_kind(&self.client, &kgvk)
            })
            .await
        {
            Ok((ar, caps)) => Some(Discovered {
                ar,
                namespaced: caps.scope == Scope::Namespaced,
            }),
            // Every API server serves core/v1: a 404 there means the URL is not an API
            // server (a wrong path in the kubeconfig), not that nothing exists.
            Err(f) if f.is_not_found() && gvk.group.is_empty() && gvk.version == "v1" => {
                return Err(self.error(f, false));
            }
            // The group/version is not served, or it is and the kind is not in it.
            Err(f) if f.is_not_found() => None,
            Err(Failure::Kube {
                error: kube::Error::Discovery(_),
                ..
            }) => None,
            Err(f) => return Err(self.error(f, false)),
        };
        tracing::debug!(cluster = %self.name, %gvk, served = found.is_some(), "discovery");
        self.discovery
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(gvk.clone(), found.clone());
        Ok(found)
    }

    /// The namespace a request for `r` goes to: its own for namespaced kinds (required),
    /// none for cluster-scoped ones.
    fn namespace<'a>(
        &self,
        r: &'a ObjectRef,
        d: &Discovered,
    ) -> Result<Option<&'a str>, ClusterError> {
        if !d.namespaced {
            return Ok(None);
        }
        match r.namespace.as_deref() {
            Some(ns) => Ok(Some(ns)),
            None => Err(ClusterError::Invalid {
                cluster: self.name.clone(),
                message: format!(
                    "{r}: {} is namespaced but the object has no namespace",
                    r.gvk.kind
                ),
            }),
        }
    }

    /// The request builder for `d`'s collection (in `namespace`): every part of the path is
    /// an encoded [`Segment`].
    fn request(
        &self,
        d: &Discovered,
        namespace: Option<&str>,
    ) -> Result<kube::core::Request, ClusterError> {
        let seg = |what, v: &str| self.segment(what, v);
        let group = match d.ar.group.as_str() {
            "" => None,
            g => Some(seg("API group", g)?),
        };
        let path = ResourcePath::new(
            group.as_ref(),
            &seg("API version", &d.ar.version)?,
            namespace
                .map(|ns| seg("namespace", ns))
                .transpose()?
                .as_ref(),
            &seg("resource", &d.ar.plural)?,
        );
        Ok(kube::core::Request::new(path.as_str()))
    }

    /// `value` as an encoded path segment, or an error naming this cluster.
    fn segment(&self, what: &'static str, value: &str) -> Result<Segment, ClusterError> {
        Segment::new(what, value).map_err(|e| ClusterError::Invalid {
            cluster: self.name.clone(),
            message: e.to_string(),
        })
    }

    /// The one way a mutation reaches the cluster: refused in read-only mode before anything
    /// is sent (discovery included), else written to the audit log, then sent. Returns the
    /// server's object for an apply, `None` for a delete.
    async fn mutate(&self, m: Mutation<'_>) -> Result<Option<Value>, ClusterError> {
        let (verb, r, dry_run, force, manager) = match &m {
            Mutation::Apply { object, options } => {
                let r = ObjectRef::of(object).ok_or_else(|| ClusterError::Invalid {
                    cluster: self.name.clone(),
                    message: "cannot apply an object without apiVersion, kind and metadata.name"
                        .into(),
                })?;
                (
                    "apply",
                    r,
                    options.dry_run,
                    options.force,
                    options.manager.as_str(),
                )
            }
            Mutation::Delete { r, dry_run } => ("delete", (*r).clone(), *dry_run, false, ""),
        };
        // A name or namespace no request path can hold is refused before the audit line:
        // nothing is attempted.
        self.segment("name", &r.name)?;
        if let Some(ns) = &r.namespace {
            self.segment("namespace", ns)?;
        }
        tracing::info!(
            target: AUDIT_TARGET,
            cluster = %self.name,
            verb,
            object = %r,
            impersonate = self.impersonate.as_deref().unwrap_or(""),
            dry_run,
            force,
            manager,
            "{}",
            if self.read_only { "refused: read-only" } else { "mutation" }
        );
        if self.read_only {
            return Err(ClusterError::ReadOnly {
                cluster: self.name.clone(),
                verb: verb.into(),
                object: r.to_string(),
            });
        }
        let Some(d) = self.discover(&r.gvk).await? else {
            return match m {
                Mutation::Apply { .. } => Err(ClusterError::UnknownKind {
                    cluster: self.name.clone(),
                    gvk: r.gvk.to_string(),
                }),
                // Nothing of a kind that is not served exists.
                Mutation::Delete { .. } => Ok(None),
            };
        };
        let ns = self.namespace(&r, &d)?;
        let rq = self.request(&d, ns)?;
        let name = self.segment("name", &r.name)?;
        match m {
            Mutation::Apply { object, options } => {
                let mut pp = PatchParams::apply(options.manager.as_str());
                if options.force {
                    pp = pp.force();
                }
                if options.dry_run {
                    pp = pp.dry_run();
                }
                let patch = Patch::Apply(object);
                let v: Value = self
                    .send("apply", || async {
                        let req = rq
                            .patch(name.as_str(), &pp, &patch)
                            .map_err(kube::Error::BuildRequest)?;
                        self.client.request::<Value>(req).await
                    })
                    .await
                    .map_err(|f| self.error(f, true))?;
                if !v.is_object() {
                    return Err(ClusterError::Invalid {
                        cluster: self.name.clone(),
                        message: format!("apply of {r}: the server's answer is not an object"),
                    });
                }
                Ok(Some(v))
            }
            Mutation::Delete { dry_run, .. } => {
                let mut dp = DeleteParams::background();
                if dry_run {
                    dp = dp.dry_run();
                }
                match self
                    .send("delete", || async {
                        let req = rq
                            .delete(name.as_str(), &dp)
                            .map_err(kube::Error::BuildRequest)?;
                        self.client.request::<Value>(req).await
                    })
                    .await
                {
                    Ok(_) => Ok(None),
                    Err(f) if f.is_not_found() => Ok(None),
                    Err(f) => Err(self.error(f, false)),
                }
            }
        }
    }
}

/// Sets `apiVersion` and `kind` on a list item that lacks them (API servers omit them in
/// lists).
fn with_type(mut item: Value, ar: &ApiResource) -> Value {
    if let Some(o) = item.as_object_mut() {
        if !o.contains_key("apiVersion") {
            o.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
        }
        if !o.contains_key("kind") {
            o.insert("kind".into(), Value::String(ar.kind.clone()));
        }
    }
    item
}

#[async_trait::async_trait]
impl Cluster for KubeCluster {
    fn name(&self) -> &str {
        &self.name
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    async fn resource(&self, gvk: &Gvk) -> Result<Option<ResourceInfo>, ClusterError> {
        Ok(self.discover(gvk).await?.map(|d| ResourceInfo {
            plural: d.ar.plural,
            namespaced: d.namespaced,
        }))
    }

    async fn refresh_discovery(&self) {
        self.discovery
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    async fn get(&self, r: &ObjectRef) -> Result<Option<Value>, ClusterError> {
        let Some(d) = self.discover(&r.gvk).await? else {
            return Ok(None);
        };
        let rq = self.request(&d, self.namespace(r, &d)?)?;
        let name = self.segment("name", &r.name)?;
        let gp = GetParams::default();
        match self
            .send("get", || async {
                let req = rq
                    .get(name.as_str(), &gp)
                    .map_err(kube::Error::BuildRequest)?;
                self.client.request::<Value>(req).await
            })
            .await
        {
            Ok(v) => Ok(Some(with_type(v, &d.ar))),
            Err(f) if f.is_not_found() => Ok(None),
            Err(f) => Err(self.error(f, false)),
        }
    }

    async fn served_kinds(&self) -> Result<Vec<(Gvk, ResourceInfo)>, ClusterError> {
        let discovery = self
            .send("discovery", || {
                kube::discovery::Discovery::new(self.client.clone()).run()
            })
            .await
            .map_err(|f| self.error(f, false))?;
        let mut out = Vec::new();
        for group in discovery.groups() {
            for (ar, caps) in group.recommended_resources() {
                if !caps.supports_operation(kube::discovery::verbs::LIST) {
                    continue;
                }
                out.push((
                    Gvk::new(&ar.group, &ar.version, &ar.kind),
                    ResourceInfo {
                        plural: ar.plural.clone(),
                        namespaced: caps.scope == Scope::Namespaced,
                    },
                ));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    async fn list_page(
        &self,
        gvk: &Gvk,
        continue_token: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ClusterError> {
        let Some(d) = self.discover(gvk).await? else {
            return Ok((vec![], None));
        };
        let rq = self.request(&d, None)?;
        let mut lp = ListParams::default().limit(self.page_size);
        if let Some(t) = continue_token {
            lp = lp.continue_token(t);
        }
        let mut page: Value = self
            .send("list", || async {
                let req = rq.list(&lp).map_err(kube::Error::BuildRequest)?;
                self.client.request::<Value>(req).await
            })
            .await
            .map_err(|f| self.error(f, false))?;
        let items = match page.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items.into_iter().map(|i| with_type(i, &d.ar)).collect(),
            Some(Value::Null) | None => vec![],
            Some(_) => {
                return Err(ClusterError::Invalid {
                    cluster: self.name.clone(),
                    message: format!("list of {gvk}: items is not an array"),
                });
            }
        };
        let token = page
            .pointer("/metadata/continue")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        Ok((items, token))
    }

    async fn list(&self, gvk: &Gvk, label_selector: &str) -> Result<Vec<Value>, ClusterError> {
        self.list_at(gvk, None, label_selector).await
    }

    async fn list_in(
        &self,
        gvk: &Gvk,
        namespace: &str,
        label_selector: &str,
    ) -> Result<Vec<Value>, ClusterError> {
        self.list_at(gvk, Some(namespace), label_selector).await
    }

    async fn apply(&self, object: &Value, options: ApplyOptions) -> Result<Value, ClusterError> {
        self.mutate(Mutation::Apply { object, options })
            .await?
            .ok_or_else(|| ClusterError::Invalid {
                cluster: self.name.clone(),
                message: "apply returned no object".into(),
            })
    }

    async fn delete(&self, r: &ObjectRef, dry_run: bool) -> Result<(), ClusterError> {
        self.mutate(Mutation::Delete { r, dry_run })
            .await
            .map(|_| ())
    }
}

impl KubeCluster {
    /// Every page of `gvk`'s collection: in every namespace (`namespace` None) or in one (for
    /// a namespaced kind; a cluster-scoped kind ignores it).
    async fn list_at(
        &self,
        gvk: &Gvk,
        namespace: Option<&str>,
        label_selector: &str,
    ) -> Result<Vec<Value>, ClusterError> {
        let Some(d) = self.discover(gvk).await? else {
            return Ok(vec![]);
        };
        let rq = self.request(&d, namespace.filter(|_| d.namespaced))?;
        let mut items = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut lp = ListParams::default().limit(self.page_size);
            if !label_selector.is_empty() {
                lp = lp.labels(label_selector);
            }
            if let Some(t) = &token {
                lp = lp.continue_token(t);
            }
            let mut page: Value = self
                .send("list", || async {
                    let req = rq.list(&lp).map_err(kube::Error::BuildRequest)?;
                    self.client.request::<Value>(req).await
                })
                .await
                .map_err(|f| self.error(f, false))?;
            match page.get_mut("items").map(Value::take) {
                Some(Value::Array(page_items)) => {
                    items.extend(page_items.into_iter().map(|i| with_type(i, &d.ar)))
                }
                Some(Value::Null) | None => {}
                Some(_) => {
                    return Err(ClusterError::Invalid {
                        cluster: self.name.clone(),
                        message: format!("list of {gvk}: items is not an array"),
                    });
                }
            }
            token = page
                .pointer("/metadata/continue")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                return Ok(items);
            }
        }
    }
}
