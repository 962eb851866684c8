//! The agent transport: work items, manifests, results and agent reports as objects in one
//! namespace of the management cluster per member cluster, reached only through the
//! reconciler's [`Cluster`] trait (server-side apply, get, list in one namespace, delete).
//!
//! The names below are pinned: the RBAC manifests in `deploy/` and the hub depend on them.
//! The hub writes Secrets (work items, manifests); the agent writes ConfigMaps only (results,
//! its report), so an agent's credentials cannot forge work.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use flotilla_reconciler::cluster::{
    ApplyOptions, Cluster, ClusterError, FieldManager, Gvk, ObjectRef,
};
use flotilla_reconciler::desired::DesiredObject;
use flotilla_reconciler::exchange::{Exchange, ExchangeError, WorkItem, WorkResult};
use flotilla_reconciler::rollout::model::{manifest_hash, short_id};
use serde_json::{Value, json};

use crate::report::AgentReport;

/// `app.kubernetes.io/managed-by: flotilla` on every object written here.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "flotilla";
/// What an object is: `work`, `manifests`, `result`, `status` (and `local` for the agent's
/// copy in its own cluster).
pub const LABEL_ROLE: &str = "flotilla.dev/role";
pub const LABEL_PLACEMENT: &str = "flotilla.dev/placement";
/// The first 40 hex digits of a manifests hash (a label value holds at most 63 characters).
pub const LABEL_MANIFESTS: &str = "flotilla.dev/manifests";
pub const ANNOTATION_HASH: &str = "flotilla.dev/hash";
pub const ANNOTATION_PART: &str = "flotilla.dev/part";
pub const ANNOTATION_PARTS: &str = "flotilla.dev/parts";

pub const ROLE_WORK: &str = "work";
pub const ROLE_MANIFESTS: &str = "manifests";
pub const ROLE_RESULT: &str = "result";
pub const ROLE_STATUS: &str = "status";
pub const ROLE_LOCAL: &str = "local";

/// Secret types.
pub const TYPE_WORK: &str = "flotilla.dev/work";
pub const TYPE_MANIFESTS: &str = "flotilla.dev/manifests";
pub const TYPE_LOCAL: &str = "flotilla.dev/agent-copy";

/// Data keys.
pub const KEY_ITEM: &str = "item.json";
pub const KEY_PART: &str = "part";
pub const KEY_RESULT: &str = "result.json";
pub const KEY_STATUS: &str = "status.json";

/// The agent's report ConfigMap.
pub const STATUS_NAME: &str = "agent-status";

/// The most compressed bytes in one part (a Secret holds at most ~1 MiB, base64 included).
pub const MAX_PART_BYTES: usize = 512 * 1024;
/// The most parts of one payload (64 × 512 KiB = 32 MiB compressed).
pub const MAX_PARTS: usize = 64;
/// The most bytes a payload may decompress to.
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024 * 1024;

/// The management-cluster namespace of a member cluster.
pub fn namespace(cluster: &str) -> String {
    format!("flotilla-cluster-{cluster}")
}

/// The work Secret of a placement.
pub fn work_name(placement: &str) -> String {
    format!("work-{placement}")
}

/// The result ConfigMap of a placement.
pub fn result_name(placement: &str) -> String {
    format!("result-{placement}")
}

/// Part `i` of the manifests with this hash.
pub fn part_name(hash: &str, i: usize) -> String {
    format!("manifests-{}-{i}", prefix(hash, 16))
}

/// The first `n` bytes of a hash (all of it when shorter, or not cut at a character).
fn prefix(hash: &str, n: usize) -> &str {
    hash.get(..n).unwrap_or(hash)
}

/// Part `i` of the agent's local copy of a placement's assignment (in its own cluster).
pub fn local_name(placement: &str, i: usize) -> String {
    format!("flotilla-agent-{placement}-{i}")
}

fn secret_gvk() -> Gvk {
    Gvk::new("", "v1", "Secret")
}

fn configmap_gvk() -> Gvk {
    Gvk::new("", "v1", "ConfigMap")
}

fn object_ref(gvk: Gvk, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        gvk,
        namespace: Some(namespace.into()),
        name: name.into(),
    }
}

/// Why a payload split across parts cannot be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartsError {
    #[error("{what}: no parts")]
    None { what: String },
    #[error("{what}: {count} parts, more than the limit of {MAX_PARTS}")]
    TooMany { what: String, count: usize },
    #[error("{what}: part {index} of {parts} is missing")]
    Missing {
        what: String,
        index: usize,
        parts: usize,
    },
    #[error("{what}: the parts disagree: {message}")]
    Inconsistent { what: String, message: String },
    #[error("{what}: decompresses to more than {MAX_PAYLOAD_BYTES} bytes")]
    TooLarge { what: String },
    #[error("{what}: does not decompress: {message}")]
    Corrupt { what: String, message: String },
    #[error("{what}: the content hashes to {found}, not to its name: refusing it")]
    Tampered { what: String, found: String },
}

/// gzip-compresses `payload` and splits it into parts of at most [`MAX_PART_BYTES`].
pub fn split(payload: &[u8]) -> Result<Vec<Vec<u8>>, PartsError> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let gz = enc
        .write_all(payload)
        .and_then(|()| enc.finish())
        .map_err(|e| PartsError::Corrupt {
            what: "payload".into(),
            message: e.to_string(),
        })?;
    let parts: Vec<Vec<u8>> = gz.chunks(MAX_PART_BYTES).map(<[u8]>::to_vec).collect();
    if parts.len() > MAX_PARTS {
        return Err(PartsError::TooMany {
            what: "payload".into(),
            count: parts.len(),
        });
    }
    Ok(parts)
}

/// Reassembles parts (by index; every index below `parts` present) and decompresses them,
/// bounded by [`MAX_PAYLOAD_BYTES`].
pub fn join(
    what: &str,
    parts: usize,
    pieces: &BTreeMap<usize, Vec<u8>>,
) -> Result<Vec<u8>, PartsError> {
    if parts == 0 {
        return Err(PartsError::None { what: what.into() });
    }
    if parts > MAX_PARTS {
        return Err(PartsError::TooMany {
            what: what.into(),
            count: parts,
        });
    }
    let mut gz = Vec::new();
    for index in 0..parts {
        let piece = pieces.get(&index).ok_or_else(|| PartsError::Missing {
            what: what.into(),
            index,
            parts,
        })?;
        gz.extend_from_slice(piece);
    }
    if let Some(extra) = pieces.keys().find(|i| **i >= parts) {
        return Err(PartsError::Inconsistent {
            what: what.into(),
            message: format!("part {extra} beyond the {parts} announced"),
        });
    }
    let mut out = Vec::new();
    let dec = flate2::read::GzDecoder::new(gz.as_slice());
    dec.take(MAX_PAYLOAD_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| PartsError::Corrupt {
            what: what.into(),
            message: e.to_string(),
        })?;
    if out.len() > MAX_PAYLOAD_BYTES {
        return Err(PartsError::TooLarge { what: what.into() });
    }
    Ok(out)
}

/// The manifests JSON the state store keeps (`[{"bundle", "object"}, ..]`) of `objects`.
pub fn manifests_json(objects: &[DesiredObject]) -> String {
    Value::Array(
        objects
            .iter()
            .map(|o| json!({"bundle": o.bundle, "object": o.value}))
            .collect(),
    )
    .to_string()
}

/// Decodes manifests JSON into objects; `None` when it is not that shape.
pub fn manifests_from_json(text: &str) -> Option<Vec<DesiredObject>> {
    let v: Vec<Value> = serde_json::from_str(text).ok()?;
    v.into_iter()
        .map(|e| {
            let bundle = e.get("bundle")?.as_str()?.to_string();
            let value = e.get("object")?.clone();
            Some(DesiredObject {
                bundle,
                object: ObjectRef::of(&value)?,
                value,
            })
        })
        .collect()
}

/// Checks that manifests JSON decodes and hashes to `hash`.
pub fn verify_manifests(hash: &str, text: &str) -> Result<Vec<DesiredObject>, PartsError> {
    let what = format!("manifests {}", short_id(hash));
    let objects = manifests_from_json(text).ok_or_else(|| PartsError::Corrupt {
        what: what.clone(),
        message: "not a list of {bundle, object}".into(),
    })?;
    let found = manifest_hash(&objects);
    if found != hash {
        return Err(PartsError::Tampered {
            what,
            found: short_id(&found).to_string(),
        });
    }
    Ok(objects)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

fn annotation<'a>(o: &'a Value, key: &str) -> Option<&'a str> {
    o.pointer("/metadata/annotations")?.get(key)?.as_str()
}

fn name_of(o: &Value) -> &str {
    o.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Secret objects holding `payload` split into parts: `name(i)`, with the given labels,
/// annotations `hash`/`part`/`parts`, data `part`.
pub fn part_secrets(
    namespace: &str,
    name: &dyn Fn(usize) -> String,
    secret_type: &str,
    labels: &BTreeMap<String, String>,
    hash: &str,
    parts: &[Vec<u8>],
) -> Vec<Value> {
    parts
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": name(i),
                    "namespace": namespace,
                    "labels": labels,
                    "annotations": {
                        ANNOTATION_HASH: hash,
                        ANNOTATION_PART: i.to_string(),
                        ANNOTATION_PARTS: parts.len().to_string(),
                    },
                },
                "type": secret_type,
                "data": {KEY_PART: b64(bytes)},
            })
        })
        .collect()
}

/// Reassembles the payload of the part Secrets in `secrets` whose hash annotation is `hash`.
pub fn read_parts(what: &str, hash: &str, secrets: &[Value]) -> Result<Vec<u8>, PartsError> {
    let mut pieces = BTreeMap::new();
    let mut announced: BTreeSet<usize> = BTreeSet::new();
    for s in secrets {
        if annotation(s, ANNOTATION_HASH) != Some(hash) {
            continue;
        }
        let bad = |message: String| PartsError::Inconsistent {
            what: what.into(),
            message,
        };
        let index: usize = annotation(s, ANNOTATION_PART)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad(format!("{} has no part number", name_of(s))))?;
        let parts: usize = annotation(s, ANNOTATION_PARTS)
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad(format!("{} has no part count", name_of(s))))?;
        let bytes = s
            .pointer(&format!("/data/{KEY_PART}"))
            .and_then(Value::as_str)
            .and_then(unb64)
            .ok_or_else(|| bad(format!("{} has no base64 data {KEY_PART:?}", name_of(s))))?;
        announced.insert(parts);
        if pieces.insert(index, bytes).is_some() {
            return Err(bad(format!("part {index} appears twice")));
        }
    }
    let parts = match announced.len() {
        0 => return Err(PartsError::None { what: what.into() }),
        1 => announced.into_iter().next().unwrap_or(0),
        _ => {
            return Err(PartsError::Inconsistent {
                what: what.into(),
                message: format!("part counts {announced:?}"),
            });
        }
    };
    join(what, parts, &pieces)
}

/// An [`ExchangeError`] for a failed call on the management cluster, naming the object.
/// `Store` errors are what the rollout side retries (its `RemoteExecutor` turns them into
/// an unavailable cluster).
fn mgmt_err(verb: &str, namespace: &str, object: &str, e: &ClusterError) -> ExchangeError {
    ExchangeError::Store(format!(
        "management cluster: {verb} {namespace}/{object}: {e}"
    ))
}

fn parts_err(cluster: &str, e: &PartsError) -> ExchangeError {
    ExchangeError::Store(format!("cluster {cluster}: {e}"))
}

/// What the hub reads the stored manifests JSON of a hash with (the state store's
/// `manifests` table). Called from async code: a blocking store read belongs in
/// `block_in_place` (the daemon's `blocking`).
pub type ManifestSource = Arc<dyn Fn(&str) -> Result<Option<String>, String> + Send + Sync>;

enum Side {
    Hub {
        manifests: ManifestSource,
        /// One publish per namespace at a time in this process (the manifests clean-up must
        /// not delete what another publish just uploaded); namespaces publish in parallel.
        locks: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
        /// Namespaces seen to exist (each is read once, created only when missing: the
        /// hub's Role may create namespaces but not patch them).
        namespaces: std::sync::Mutex<BTreeSet<String>>,
    },
    Agent {
        cluster: String,
    },
}

/// The work exchange over a management cluster's API server. [`KubeExchange::hub`] is the
/// rollout side (publishes, reads results and reports), [`KubeExchange::agent`] the member
/// cluster's side (reads its own namespace, writes results and its report).
pub struct KubeExchange {
    management: Arc<dyn Cluster>,
    side: Side,
    /// Unreferenced manifests Secrets younger than this are kept (another hub replica may
    /// have uploaded them for an item not yet written). Default 5 min.
    pub gc_grace: Duration,
}

impl KubeExchange {
    /// The hub's side: `manifests` reads the stored manifests JSON of a hash.
    pub fn hub(management: Arc<dyn Cluster>, manifests: ManifestSource) -> KubeExchange {
        KubeExchange {
            management,
            side: Side::Hub {
                manifests,
                locks: std::sync::Mutex::new(BTreeMap::new()),
                namespaces: std::sync::Mutex::new(BTreeSet::new()),
            },
            gc_grace: Duration::from_secs(300),
        }
    }

    /// The agent of member cluster `cluster`: only that cluster's namespace is read or written.
    pub fn agent(management: Arc<dyn Cluster>, cluster: &str) -> KubeExchange {
        KubeExchange {
            management,
            side: Side::Agent {
                cluster: cluster.into(),
            },
            gc_grace: Duration::from_secs(300),
        }
    }

    fn options() -> ApplyOptions {
        ApplyOptions {
            dry_run: false,
            force: true,
            manager: FieldManager::Agent,
        }
    }

    async fn apply(&self, object: &Value) -> Result<(), ExchangeError> {
        let ns = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("");
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
        self.management
            .apply(object, Self::options())
            .await
            .map(|_| ())
            .map_err(|e| mgmt_err("apply", ns, &format!("{kind} {}", name_of(object)), &e))
    }

    /// Refuses a cluster other than the agent's own.
    fn check_cluster(&self, cluster: &str) -> Result<(), ExchangeError> {
        match &self.side {
            Side::Agent { cluster: own } if own != cluster => Err(ExchangeError::Invalid {
                what: "work exchange",
                message: format!("the agent of cluster {own} does not serve cluster {cluster}"),
            }),
            _ => Ok(()),
        }
    }

    /// The agent report of `cluster` (`None` before its agent wrote one).
    pub async fn report(&self, cluster: &str) -> Result<Option<AgentReport>, ExchangeError> {
        self.check_cluster(cluster)?;
        let ns = namespace(cluster);
        let r = object_ref(configmap_gvk(), &ns, STATUS_NAME);
        let cm = self
            .management
            .get(&r)
            .await
            .map_err(|e| mgmt_err("get", &ns, &format!("ConfigMap {STATUS_NAME}"), &e))?;
        let Some(text) = cm
            .as_ref()
            .and_then(|cm| cm.get("data")?.get(KEY_STATUS))
            .and_then(Value::as_str)
        else {
            return Ok(None);
        };
        AgentReport::from_json(text)
            .map(Some)
            .map_err(|e| ExchangeError::Invalid {
                what: "agent report",
                message: format!("cluster {cluster}: ConfigMap {ns}/{STATUS_NAME}: {e}"),
            })
    }

    /// Writes the agent's report (agent side: its own cluster only).
    pub async fn write_report(&self, report: &AgentReport) -> Result<(), ExchangeError> {
        self.check_cluster(&report.cluster)?;
        let ns = namespace(&report.cluster);
        let text = report.to_json().map_err(|e| ExchangeError::Invalid {
            what: "agent report",
            message: e.to_string(),
        })?;
        self.apply(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": STATUS_NAME,
                "namespace": ns,
                "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_ROLE: ROLE_STATUS},
            },
            "data": {KEY_STATUS: text},
        }))
        .await
    }

    async fn list(&self, gvk: Gvk, ns: &str, role: &str) -> Result<Vec<Value>, ExchangeError> {
        let kind = gvk.kind.clone();
        self.management
            .list_in(&gvk, ns, &format!("{LABEL_ROLE}={role}"))
            .await
            .map_err(|e| mgmt_err("list", ns, &format!("{kind}s ({role})"), &e))
    }

    fn item_of(secret: &Value) -> Result<WorkItem, ExchangeError> {
        let text = secret
            .get("data")
            .and_then(|d| d.get(KEY_ITEM))
            .and_then(Value::as_str)
            .and_then(unb64)
            .ok_or_else(|| ExchangeError::Decode {
                what: "work item",
                message: format!("Secret {} has no base64 {KEY_ITEM}", name_of(secret)),
            })?;
        let text = String::from_utf8(text).map_err(|e| ExchangeError::Decode {
            what: "work item",
            message: e.to_string(),
        })?;
        WorkItem::from_json(&text)
    }

    fn result_of(cm: &Value) -> Result<WorkResult, ExchangeError> {
        let text = cm
            .get("data")
            .and_then(|d| d.get(KEY_RESULT))
            .and_then(Value::as_str)
            .ok_or_else(|| ExchangeError::Decode {
                what: "work result",
                message: format!("ConfigMap {} has no {KEY_RESULT}", name_of(cm)),
            })?;
        WorkResult::from_json(text)
    }

    /// Uploads the manifests of `hash` to `ns` unless part 0 with that hash is there.
    async fn upload(
        &self,
        cluster: &str,
        ns: &str,
        hash: &str,
        source: &ManifestSource,
    ) -> Result<bool, ExchangeError> {
        let first = part_name(hash, 0);
        let existing = self
            .management
            .get(&object_ref(secret_gvk(), ns, &first))
            .await
            .map_err(|e| mgmt_err("get", ns, &format!("Secret {first}"), &e))?;
        if existing
            .as_ref()
            .is_some_and(|s| annotation(s, ANNOTATION_HASH) == Some(hash))
        {
            return Ok(false);
        }
        let text = source(hash)
            .map_err(|e| ExchangeError::Store(format!("manifests {}: {e}", short_id(hash))))?
            .ok_or_else(|| ExchangeError::Invalid {
                what: "manifests",
                message: format!("{} are not in the state store", short_id(hash)),
            })?;
        let parts = split(text.as_bytes()).map_err(|e| parts_err(cluster, &e))?;
        let labels = BTreeMap::from([
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_ROLE.to_string(), ROLE_MANIFESTS.to_string()),
            (LABEL_MANIFESTS.to_string(), prefix(hash, 40).to_string()),
        ]);
        for s in part_secrets(
            ns,
            &|i| part_name(hash, i),
            TYPE_MANIFESTS,
            &labels,
            hash,
            &parts,
        ) {
            self.apply(&s).await?;
        }
        tracing::debug!(target: "flotilla::agent", %cluster, manifests = %short_id(hash), parts = parts.len(), "manifests uploaded");
        Ok(true)
    }

    /// Deletes the manifests Secrets of `ns` that no work item references (older than the
    /// grace). Failures are logged: the next publish tries again.
    async fn collect(&self, ns: &str) {
        let (items, parts) = match (
            self.list(secret_gvk(), ns, ROLE_WORK).await,
            self.list(secret_gvk(), ns, ROLE_MANIFESTS).await,
        ) {
            (Ok(i), Ok(p)) => (i, p),
            (Err(e), _) | (_, Err(e)) => {
                tracing::debug!(target: "flotilla::agent", namespace = %ns, error = %e, "manifests clean-up skipped");
                return;
            }
        };
        let used: BTreeSet<String> = items
            .iter()
            .filter_map(|s| Self::item_of(s).ok())
            .map(|i| i.op.manifests().to_string())
            .collect();
        let now = chrono::Utc::now();
        for p in parts {
            let in_use = annotation(&p, ANNOTATION_HASH).is_some_and(|h| used.contains(h));
            let young = p
                .pointer("/metadata/creationTimestamp")
                .and_then(Value::as_str)
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_none_or(|t| {
                    (now - t.with_timezone(&chrono::Utc))
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        < self.gc_grace
                });
            if in_use || young {
                continue;
            }
            let name = name_of(&p).to_string();
            if let Err(e) = self
                .management
                .delete(&object_ref(secret_gvk(), ns, &name), false)
                .await
            {
                tracing::warn!(target: "flotilla::agent", namespace = %ns, secret = %name, error = %e, "deleting unused manifests failed");
            }
        }
    }
}

#[async_trait::async_trait]
impl Exchange for KubeExchange {
    async fn publish(&self, item: &WorkItem) -> Result<(), ExchangeError> {
        let Side::Hub {
            manifests,
            locks,
            namespaces,
        } = &self.side
        else {
            return Err(ExchangeError::Invalid {
                what: "work exchange",
                message: "an agent never publishes work".into(),
            });
        };
        let ns = namespace(&item.cluster);
        let lock = locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(ns.clone())
            .or_default()
            .clone();
        let _held = lock.lock().await;
        let known = namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&ns);
        if !known {
            let r = ObjectRef {
                gvk: Gvk::new("", "v1", "Namespace"),
                namespace: None,
                name: ns.clone(),
            };
            let found = self
                .management
                .get(&r)
                .await
                .map_err(|e| mgmt_err("get", &ns, "the namespace", &e))?;
            if found.is_none() {
                self.apply(&json!({
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {"name": ns, "labels": {LABEL_MANAGED_BY: MANAGED_BY}},
                }))
                .await?;
            }
            namespaces
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(ns.clone());
        }
        let hash = item.op.manifests();
        let uploaded = self.upload(&item.cluster, &ns, hash, manifests).await?;
        let json = item.to_json()?;
        self.apply(&json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": work_name(&item.placement),
                "namespace": ns,
                "labels": {
                    LABEL_MANAGED_BY: MANAGED_BY,
                    LABEL_ROLE: ROLE_WORK,
                    LABEL_PLACEMENT: item.placement,
                },
            },
            "type": TYPE_WORK,
            "data": {KEY_ITEM: b64(json.as_bytes())},
        }))
        .await?;
        // New manifests may leave older ones unused; without an upload nothing changed.
        if uploaded {
            self.collect(&ns).await;
        }
        Ok(())
    }

    async fn result(
        &self,
        cluster: &str,
        placement: &str,
    ) -> Result<Option<WorkResult>, ExchangeError> {
        self.check_cluster(cluster)?;
        let ns = namespace(cluster);
        let name = result_name(placement);
        let cm = self
            .management
            .get(&object_ref(configmap_gvk(), &ns, &name))
            .await
            .map_err(|e| mgmt_err("get", &ns, &format!("ConfigMap {name}"), &e))?;
        cm.as_ref().map(Self::result_of).transpose()
    }

    async fn pending(&self, cluster: &str) -> Result<Vec<WorkItem>, ExchangeError> {
        self.check_cluster(cluster)?;
        let ns = namespace(cluster);
        let items = self.list(secret_gvk(), &ns, ROLE_WORK).await?;
        let results = self.list(configmap_gvk(), &ns, ROLE_RESULT).await?;
        let answered: BTreeSet<String> = results
            .iter()
            .filter_map(|r| Self::result_of(r).ok())
            .map(|r| r.id)
            .collect();
        let mut out = Vec::new();
        for s in &items {
            let item = match Self::item_of(s) {
                Ok(i) => i,
                Err(e) => {
                    tracing::warn!(target: "flotilla::agent", %cluster, secret = %format!("{ns}/{}", name_of(s)), error = %e, "work item skipped");
                    continue;
                }
            };
            if item.cluster != cluster {
                tracing::warn!(target: "flotilla::agent", %cluster, secret = %format!("{ns}/{}", name_of(s)), item_cluster = %item.cluster, "work item for another cluster refused");
                continue;
            }
            if name_of(s) != work_name(&item.placement) {
                tracing::warn!(target: "flotilla::agent", %cluster, secret = %format!("{ns}/{}", name_of(s)), placement = %item.placement, "work item under another placement's name refused");
                continue;
            }
            if !answered.contains(&item.id) {
                out.push(item);
            }
        }
        Ok(out)
    }

    async fn complete(
        &self,
        cluster: &str,
        placement: &str,
        result: &WorkResult,
    ) -> Result<bool, ExchangeError> {
        self.check_cluster(cluster)?;
        let ns = namespace(cluster);
        let name = work_name(placement);
        let current = self
            .management
            .get(&object_ref(secret_gvk(), &ns, &name))
            .await
            .map_err(|e| mgmt_err("get", &ns, &format!("Secret {name}"), &e))?;
        let same = current
            .as_ref()
            .and_then(|s| Self::item_of(s).ok())
            .is_some_and(|i| i.id == result.id);
        if !same {
            return Ok(false);
        }
        let json = result.to_json()?;
        self.apply(&json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": result_name(placement),
                "namespace": ns,
                "labels": {
                    LABEL_MANAGED_BY: MANAGED_BY,
                    LABEL_ROLE: ROLE_RESULT,
                    LABEL_PLACEMENT: placement,
                },
            },
            "data": {KEY_RESULT: json},
        }))
        .await?;
        Ok(true)
    }

    async fn manifests(&self, hash: &str) -> Result<Option<String>, ExchangeError> {
        match &self.side {
            Side::Hub { manifests, .. } => manifests(hash)
                .map_err(|e| ExchangeError::Store(format!("manifests {}: {e}", short_id(hash)))),
            Side::Agent { cluster } => {
                let ns = namespace(cluster);
                let selector = format!(
                    "{LABEL_ROLE}={ROLE_MANIFESTS},{LABEL_MANIFESTS}={}",
                    prefix(hash, 40)
                );
                let secrets = self
                    .management
                    .list_in(&secret_gvk(), &ns, &selector)
                    .await
                    .map_err(|e| {
                        mgmt_err("list", &ns, &format!("manifests {}", short_id(hash)), &e)
                    })?;
                // Missing or incomplete parts are an error (retried), not "no such
                // manifests": the hub uploads them before the item that names them.
                let what = format!("manifests {} in {ns}", short_id(hash));
                let bytes =
                    read_parts(&what, hash, &secrets).map_err(|e| parts_err(cluster, &e))?;
                let text = String::from_utf8(bytes).map_err(|e| ExchangeError::Decode {
                    what: "manifests",
                    message: e.to_string(),
                })?;
                verify_manifests(hash, &text).map_err(|e| parts_err(cluster, &e))?;
                Ok(Some(text))
            }
        }
    }

    async fn has_manifests(&self, hash: &str) -> Result<bool, ExchangeError> {
        match &self.side {
            Side::Hub { manifests, .. } => manifests(hash)
                .map(|m| m.is_some())
                .map_err(|e| ExchangeError::Store(format!("manifests {}: {e}", short_id(hash)))),
            Side::Agent { .. } => Ok(self.manifests(hash).await?.is_some()),
        }
    }
}

#[cfg(test)]
mod tests;
