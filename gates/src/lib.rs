//! Metric gates for canary rollouts.
//!
//! A fleet.yaml gate (`rollout.gates[].prometheus`) passes when every sample of its PromQL
//! `query` lies within `[min, max]`. This crate runs the instant query against Prometheus'
//! HTTP API ([`Prometheus::query`]) and judges the result ([`evaluate`]):
//!
//! - a query that returns no samples fails: an empty result never passes a gate;
//! - transport errors, 5xx and 429 answers are retried with exponential backoff
//!   ([`RetryPolicy`]); a gate that still cannot be evaluated is [`Outcome::Error`], which
//!   callers must treat as a failure;
//! - credentials in a gate URL (`http://user:pass@host`) are sent as basic auth and never
//!   appear in errors or logs ([`redact_url`]).
//!
//! Template variables (`${cluster.name}`, ...) in a gate query are expanded with
//! [`expand_query`] before building a [`Check`].

use std::fmt;
use std::time::Duration;

use flotilla_spec::model::{Cluster, Fleet, Gate, Placement, PrometheusGate};
use flotilla_spec::template::{Part, Scope, Template, Var};
use serde_json::Value;
use tracing::{debug, warn};

/// Everything that can go wrong while querying Prometheus or preparing a gate.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    /// The gate URL is not a usable http(s) URL. The URL is redacted.
    #[error("invalid Prometheus URL {url}: {reason}")]
    Url { url: String, reason: String },
    /// The request did not complete (connect, timeout, reset). Retried.
    #[error("querying {url}: {reason}")]
    Transport { url: String, reason: String },
    /// Prometheus answered `"status": "error"`. Retried when `http_status` is 5xx or 429.
    #[error("Prometheus at {url} rejected the query (HTTP {http_status}, {error_type}): {error}")]
    Prometheus {
        url: String,
        http_status: u16,
        error_type: String,
        error: String,
    },
    /// A non-success HTTP status without a Prometheus error body. Retried when 5xx or 429.
    #[error("Prometheus at {url} answered HTTP {http_status}: {body}")]
    Http {
        url: String,
        http_status: u16,
        body: String,
    },
    /// The answer is not the JSON the query API documents.
    #[error("unexpected answer from Prometheus at {url}: {reason}")]
    Decode { url: String, reason: String },
    /// A sample whose value is NaN or infinite: it cannot be compared with bounds.
    #[error("sample {sample} has the non-finite value {value}")]
    NonFinite { sample: String, value: String },
    /// The query returned a matrix or string; gates need an instant vector or scalar.
    #[error("the query returned a {0}; a gate needs an instant vector or a scalar")]
    ResultType(String),
    /// A template variable of the gate query could not be expanded.
    #[error("gate query {query:?}: {reason}")]
    Template { query: String, reason: String },
}

impl GateError {
    /// Whether trying again may help: transport errors, 5xx and 429.
    pub fn is_retryable(&self) -> bool {
        match self {
            GateError::Transport { .. } => true,
            GateError::Prometheus { http_status, .. } | GateError::Http { http_status, .. } => {
                *http_status >= 500 || *http_status == 429
            }
            _ => false,
        }
    }
}

/// One sample of a query result.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series, rendered like `flotilla_error_rate{job="x", cluster="a"}` (`{}` for a
    /// scalar or a series without labels).
    pub labels: String,
    pub value: f64,
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}", self.labels, self.value)
    }
}

/// A Prometheus HTTP API client.
#[derive(Debug, Clone)]
pub struct Prometheus {
    /// A client that failed to build reports its error from every query.
    client: Result<reqwest::Client, String>,
}

impl Prometheus {
    /// A client whose requests (connect included) give up after `timeout`.
    pub fn new(timeout: Duration) -> Prometheus {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("flotilla-gates/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| error_chain(&e));
        Prometheus { client }
    }

    /// Runs the instant query `query` (`GET {url}/api/v1/query`) and returns every sample.
    ///
    /// Handles the result types `vector` and `scalar`; NaN and infinite values are errors, and
    /// so is an answer with `"status": "error"` (carrying Prometheus' `errorType` and `error`).
    /// Credentials in `url` are sent as basic auth and redacted from errors.
    pub async fn query(&self, url: &str, query: &str) -> Result<Vec<Sample>, GateError> {
        let shown = redact_url(url);
        let client = self
            .client
            .as_ref()
            .map_err(|e| GateError::Client(e.clone()))?;
        let endpoint = query_url(url, query).map_err(|reason| GateError::Url {
            url: shown.clone(),
            reason,
        })?;
        debug!(url = %shown, query, "querying Prometheus");
        let response = client
            .get(endpoint)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| GateError::Transport {
                url: shown.clone(),
                reason: error_chain(&e.without_url()),
            })?;
        let status = response.status().as_u16();
        let body = response.bytes().await.map_err(|e| GateError::Transport {
            url: shown.clone(),
            reason: error_chain(&e.without_url()),
        })?;
        parse_response(&shown, status, &body)
    }
}

/// How often and how patiently [`evaluate`] retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all (at least 1).
    pub attempts: u32,
    /// Wait before the second try; each later wait is `multiplier` times the previous one.
    pub initial_backoff: Duration,
    pub multiplier: u32,
}

impl Default for RetryPolicy {
    /// 3 attempts, waiting 500 ms then 1 s.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(500),
            multiplier: 2,
        }
    }
}

/// A gate ready to evaluate for one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Names the gate in messages (e.g. `shop/gates[0]@hz-1`).
    pub name: String,
    /// The Prometheus base URL; may carry credentials.
    pub url: String,
    /// PromQL with template variables already expanded.
    pub query: String,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl Check {
    /// A check for `gate` with its already expanded `query` (see [`expand_query`]).
    pub fn new(name: impl Into<String>, gate: &PrometheusGate, query: String) -> Check {
        Check {
            name: name.into(),
            url: gate.url.clone(),
            query,
            min: gate.min,
            max: gate.max,
        }
    }
}

/// The verdict on a gate. Only `Pass` lets a rollout proceed.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Every sample is within bounds (and there is at least one).
    Pass { samples: Vec<Sample> },
    /// The query ran and a sample is out of bounds, or there were no samples.
    Fail { reason: String },
    /// The gate could not be evaluated (after retries). Callers treat it as a failure.
    Error { reason: String },
}

impl Outcome {
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Pass { .. })
    }
}

/// Runs `check`'s query (retrying transport errors, 5xx and 429 per `retry`) and judges the
/// samples against its bounds.
pub async fn evaluate(prom: &Prometheus, check: &Check, retry: RetryPolicy) -> Outcome {
    if let Err(reason) = check_bounds(check.min, check.max) {
        return Outcome::Error {
            reason: format!("gate {}: {reason}", check.name),
        };
    }
    let attempts = retry.attempts.max(1);
    let mut backoff = retry.initial_backoff;
    let mut attempt = 1;
    loop {
        match prom.query(&check.url, &check.query).await {
            Ok(samples) => return judge(check, samples),
            Err(e) if e.is_retryable() && attempt < attempts => {
                warn!(gate = %check.name, attempt, attempts, error = %e, "gate query failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(retry.multiplier.max(1));
                attempt += 1;
            }
            Err(e) => {
                let tries = if attempt == 1 {
                    "1 attempt".to_string()
                } else {
                    format!("{attempt} attempts")
                };
                warn!(gate = %check.name, error = %e, "gate cannot be evaluated after {tries}");
                return Outcome::Error {
                    reason: format!("gate {} cannot be evaluated after {tries}: {e}", check.name),
                };
            }
        }
    }
}

/// Expands the template variables of `gate`'s query for `cluster` of `placement`.
///
/// Gates belong to a placement's rollout, so `${bundle.name}` is only defined when the
/// placement deploys exactly one bundle (listed, or through its baseline).
pub fn expand_query(
    gate: &Gate,
    fleet: &Fleet,
    placement: &Placement,
    cluster: &Cluster,
) -> Result<String, GateError> {
    let query = &gate.prometheus.query;
    let err = |reason: String| GateError::Template {
        query: query.clone(),
        reason,
    };
    let template = Template::parse(query).map_err(err)?;
    let uses_bundle = template
        .parts
        .iter()
        .any(|p| matches!(p, Part::Var(Var::BundleName)));
    let bundle = if uses_bundle {
        let bundles = flotilla_spec::placement_bundles(fleet, placement);
        match bundles.as_slice() {
            [one] => *one,
            _ => {
                return Err(err(format!(
                    "${{bundle.name}} is ambiguous in a gate of placement {:?}, which deploys {} bundles",
                    placement.name,
                    bundles.len()
                )));
            }
        }
    } else {
        ""
    };
    template
        .expand(&Scope {
            cluster,
            placement: &placement.name,
            bundle,
            fleet: &fleet.metadata.name,
        })
        .map_err(err)
}

/// `url` with any `user:password@` replaced by `***@`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!(
            "{}***{}",
            &url[..scheme_end + 3],
            &rest[at..] // keeps "@host..."
        ),
        None => url.to_string(),
    }
}

fn query_url(base: &str, query: &str) -> Result<reqwest::Url, String> {
    let mut url = reqwest::Url::parse(base.trim_end_matches('/')).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be http or https, not {:?}",
            url.scheme()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the URL must not have a query or fragment".into());
    }
    let path = format!("{}/api/v1/query", url.path().trim_end_matches('/'));
    url.set_path(&path);
    url.query_pairs_mut().append_pair("query", query);
    Ok(url)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

fn parse_response(url: &str, http_status: u16, body: &[u8]) -> Result<Vec<Sample>, GateError> {
    let decode = |reason: String| GateError::Decode {
        url: url.to_string(),
        reason,
    };
    let json: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) if (200..300).contains(&http_status) => {
            return Err(decode(format!("the body is not JSON: {e}")));
        }
        Err(_) => {
            return Err(GateError::Http {
                url: url.to_string(),
                http_status,
                body: snippet(body),
            });
        }
    };
    match json.get("status").and_then(Value::as_str) {
        Some("success") if (200..300).contains(&http_status) => {}
        Some("error") => {
            let field = |k: &str| {
                json.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("(none)")
                    .to_string()
            };
            return Err(GateError::Prometheus {
                url: url.to_string(),
                http_status,
                error_type: field("errorType"),
                error: field("error"),
            });
        }
        _ if !(200..300).contains(&http_status) => {
            return Err(GateError::Http {
                url: url.to_string(),
                http_status,
                body: snippet(body),
            });
        }
        other => return Err(decode(format!("\"status\" is {other:?}"))),
    }
    let data = json
        .get("data")
        .ok_or_else(|| decode("no \"data\"".into()))?;
    let result = data
        .get("result")
        .ok_or_else(|| decode("no \"data.result\"".into()))?;
    match data.get("resultType").and_then(Value::as_str) {
        Some("vector") => {
            let items = result
                .as_array()
                .ok_or_else(|| decode("a vector result is not an array".into()))?;
            items
                .iter()
                .map(|item| {
                    let labels = match item.get("metric") {
                        Some(Value::Object(m)) => render_labels(m),
                        None => "{}".to_string(),
                        Some(_) => {
                            return Err(decode("a sample's \"metric\" is not an object".into()));
                        }
                    };
                    let value = item
                        .get("value")
                        .ok_or_else(|| decode(format!("sample {labels} has no \"value\"")))?;
                    sample_value(&labels, value, &decode).map(|value| Sample { labels, value })
                })
                .collect()
        }
        Some("scalar") => {
            let labels = "{}".to_string();
            let value = sample_value(&labels, result, &decode)?;
            Ok(vec![Sample { labels, value }])
        }
        Some(other) => Err(GateError::ResultType(other.to_string())),
        None => Err(decode("no \"data.resultType\"".into())),
    }
}

/// `[timestamp, "value"]` → a finite f64.
fn sample_value(
    labels: &str,
    value: &Value,
    decode: &dyn Fn(String) -> GateError,
) -> Result<f64, GateError> {
    let text = value
        .as_array()
        .and_then(|pair| pair.get(1))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            decode(format!(
                "sample {labels}: the value is not [time, \"number\"]"
            ))
        })?;
    let parsed: f64 = text
        .parse()
        .map_err(|_| decode(format!("sample {labels}: {text:?} is not a number")))?;
    if parsed.is_finite() {
        Ok(parsed)
    } else {
        Err(GateError::NonFinite {
            sample: labels.to_string(),
            value: text.to_string(),
        })
    }
}

/// `name{k="v", ...}`, values escaped like PromQL strings.
fn render_labels(metric: &serde_json::Map<String, Value>) -> String {
    let name = metric.get("__name__").and_then(Value::as_str).unwrap_or("");
    let pairs: Vec<String> = metric
        .iter()
        .filter(|(k, _)| k.as_str() != "__name__")
        .map(|(k, v)| {
            let v = v
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            let escaped = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{escaped}\"")
        })
        .collect();
    format!("{name}{{{}}}", pairs.join(", "))
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_string(),
    }
}

fn check_bounds(min: Option<f64>, max: Option<f64>) -> Result<(), String> {
    if min.is_none() && max.is_none() {
        return Err("has neither min nor max".into());
    }
    if min.is_some_and(f64::is_nan) || max.is_some_and(f64::is_nan) {
        return Err("a bound is NaN".into());
    }
    if let (Some(lo), Some(hi)) = (min, max)
        && lo > hi
    {
        return Err(format!("min ({lo}) is greater than max ({hi})"));
    }
    Ok(())
}

fn judge(check: &Check, samples: Vec<Sample>) -> Outcome {
    if samples.is_empty() {
        return Outcome::Fail {
            reason: format!(
                "gate {}: the query returned no samples (an empty result never passes a gate): {}",
                check.name, check.query
            ),
        };
    }
    let out: Vec<String> = samples
        .iter()
        .filter_map(|s| match (check.min, check.max) {
            (Some(lo), _) if s.value < lo => Some(format!("{s} is below min {lo}")),
            (_, Some(hi)) if s.value > hi => Some(format!("{s} is above max {hi}")),
            _ => None,
        })
        .collect();
    if out.is_empty() {
        debug!(gate = %check.name, samples = samples.len(), "gate passed");
        return Outcome::Pass { samples };
    }
    const SHOWN: usize = 5;
    let mut reason = format!(
        "gate {}: {} of {} samples out of bounds: {}",
        check.name,
        out.len(),
        samples.len(),
        out[..out.len().min(SHOWN)].join("; ")
    );
    if out.len() > SHOWN {
        reason.push_str(&format!("; and {} more", out.len() - SHOWN));
    }
    Outcome::Fail { reason }
}

#[cfg(test)]
mod tests;
