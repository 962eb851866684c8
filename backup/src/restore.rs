//! Restores a backup into a cluster: checksums first (nothing is applied from a corrupt
//! backup), then CRDs (waiting until Established), Namespaces, and the rest; server-side apply
//! with field manager `flotilla-restore`; existing objects skipped unless asked.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use flotilla_reconciler::cluster::{
    ApplyOptions, Cluster, ClusterError, FieldManager, Gvk, ObjectRef,
};
use flotilla_renderers::overrides::Matcher;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;
use serde_json::Value;

use crate::catalog::{self, Listed};
use crate::filter::Filter;
use crate::{BackupError, Store};

/// What to do with an object the target cluster already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    #[default]
    Skip,
    Update,
}

/// One patch of a restore's overrides: the placement overrides' language (`target`, then
/// `jsonPatch` or `mergePatch`), matched after the namespace map.
pub struct RestorePatch {
    matcher: Matcher,
    describe: String,
    json_patch: Option<json_patch::Patch>,
    merge_patch: Option<Value>,
}

/// Parses overrides: a JSON list of `{target: {group, version, kind, name, namespace,
/// labelSelector}, jsonPatch: [...] | mergePatch: {...}}` (or `{patches: [...]}`).
pub fn parse_patches(v: &Value) -> Result<Vec<RestorePatch>, String> {
    let list = match v {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("patches") {
            Some(Value::Array(a)) => a,
            _ => return Err("expected a list of patches or {patches: [...]}".into()),
        },
        _ => return Err("expected a list of patches or {patches: [...]}".into()),
    };
    let mut out = Vec::new();
    for (i, p) in list.iter().enumerate() {
        let at = |m: String| format!("patches[{i}]: {m}");
        let Some(o) = p.as_object() else {
            return Err(at("expected an object".into()));
        };
        for k in o.keys() {
            if !matches!(k.as_str(), "target" | "jsonPatch" | "mergePatch") {
                return Err(at(format!("unknown key {k:?}")));
            }
        }
        let t = o
            .get("target")
            .and_then(Value::as_object)
            .ok_or_else(|| at("needs a target".into()))?;
        let mut target = flotilla_spec::Target::default();
        for (k, v) in t {
            let s = v
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| at(format!("target.{k} must be a string")))?;
            match k.as_str() {
                "group" => target.group = Some(s),
                "version" => target.version = Some(s),
                "kind" => target.kind = Some(s),
                "name" => target.name = Some(s),
                "namespace" => target.namespace = Some(s),
                "labelSelector" => target.label_selector = Some(s),
                _ => return Err(at(format!("unknown key target.{k:?}"))),
            }
        }
        let json_patch = match o.get("jsonPatch") {
            Some(v) => Some(
                serde_json::from_value::<json_patch::Patch>(v.clone())
                    .map_err(|e| at(format!("invalid JSON patch: {e}")))?,
            ),
            None => None,
        };
        let merge_patch = o.get("mergePatch").cloned();
        if json_patch.is_some() == merge_patch.is_some() {
            return Err(at("needs exactly one of jsonPatch and mergePatch".into()));
        }
        let matcher = Matcher::new(&target, false).map_err(at)?;
        out.push(RestorePatch {
            matcher,
            describe: flotilla_renderers::overrides::describe(&target),
            json_patch,
            merge_patch,
        });
    }
    Ok(out)
}

/// How to restore.
#[derive(Default)]
pub struct RestoreRequest {
    /// Source namespace -> target namespace.
    pub namespace_map: BTreeMap<String, String>,
    /// Applied to the source namespaces and kinds.
    pub filter: Filter,
    pub patches: Vec<RestorePatch>,
    pub existing: Existing,
    /// Report what would happen; send no mutating request.
    pub dry_run: bool,
    /// age identities for the Secrets (none: encrypted Secrets are refused).
    pub identities: Vec<Box<dyn age::Identity + Send + Sync>>,
    /// How long to wait for a restored CRD to be Established (default 60 s).
    pub crd_timeout: Option<Duration>,
}

/// Parses an age identity file (`AGE-SECRET-KEY-1...` lines, comments allowed).
pub fn read_identities(
    text: &str,
) -> Result<Vec<Box<dyn age::Identity + Send + Sync>>, BackupError> {
    age::IdentityFile::from_buffer(text.as_bytes())
        .map_err(|e| BackupError::Crypto(format!("identity file: {e}")))?
        .into_identities()
        .map_err(|e| BackupError::Crypto(format!("identity file: {e}")))
}

/// What a restore did to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RestoreAction {
    Created,
    Updated,
    Skipped,
    Failed,
}

impl RestoreAction {
    pub fn label(self, dry_run: bool) -> &'static str {
        match (self, dry_run) {
            (RestoreAction::Created, false) => "created",
            (RestoreAction::Created, true) => "would be created",
            (RestoreAction::Updated, false) => "updated",
            (RestoreAction::Updated, true) => "would be updated",
            (RestoreAction::Skipped, _) => "skipped",
            (RestoreAction::Failed, _) => "failed",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RestoreItem {
    pub object: String,
    pub action: RestoreAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The per-object report of a restore.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    /// `<backup>/<cluster>/<timestamp>`.
    pub source: String,
    pub target: String,
    pub dry_run: bool,
    pub objects: Vec<RestoreItem>,
}

impl RestoreReport {
    pub fn count(&self, a: RestoreAction) -> usize {
        self.objects.iter().filter(|o| o.action == a).count()
    }
    pub fn failed(&self) -> bool {
        self.count(RestoreAction::Failed) > 0
    }
}

/// Restores `listed` (from `store`) into `cluster`. Errors before anything is applied
/// (corrupt backup, missing identity, unreadable store) are `Err`; per-object failures are
/// in the report.
pub async fn restore(
    store: &Store,
    listed: &Listed,
    cluster: &dyn Cluster,
    req: &RestoreRequest,
) -> Result<RestoreReport, BackupError> {
    catalog::verify(store, listed).await?;
    let m = &listed.manifest;
    if m.files.iter().any(|f| f.encrypted) && req.identities.is_empty() {
        let wanted = m.files.iter().filter(|f| f.encrypted).count();
        if req
            .filter
            .keeps_restored_kind(&Gvk::new("", "v1", "Secret"))
        {
            return Err(BackupError::Crypto(format!(
                "the backup has {wanted} encrypted Secrets: give the age identity (--identity FILE) or exclude Secrets"
            )));
        }
    }
    let mut report = RestoreReport {
        source: listed.location.clone(),
        target: cluster.name().into(),
        dry_run: req.dry_run,
        objects: Vec::new(),
    };
    // Stage 0: CRDs, Namespaces (and cluster-wide RBAC), then the rest.
    let mut files: Vec<&crate::FileEntry> = m.files.iter().collect();
    files.sort_by_key(|f| {
        let gvk = Gvk::from_api_version(&f.api_version, &f.kind);
        let crd = gvk.kind == "CustomResourceDefinition";
        let r = ObjectRef {
            gvk,
            namespace: None,
            name: String::new(),
        };
        (flotilla_reconciler::sync::stage(&r), !crd)
    });
    let mut crds_applied = Vec::new();
    let mut discovery_refreshed = false;
    for f in files {
        let gvk = Gvk::from_api_version(&f.api_version, &f.kind);
        if !req.filter.keeps_restored_kind(&gvk) {
            continue;
        }
        if flotilla_reconciler::sync::stage(&ObjectRef {
            gvk: gvk.clone(),
            namespace: None,
            name: String::new(),
        }) > 0
            && !discovery_refreshed
        {
            // Wait for the CRDs this restore applied, then forget stale discovery.
            for crd in &crds_applied {
                let timeout = req.crd_timeout.unwrap_or(Duration::from_secs(60));
                match flotilla_reconciler::sync::wait_established(cluster, crd, timeout).await {
                    Ok(Ok(())) => {}
                    Ok(Err(reason)) => report.objects.push(RestoreItem {
                        object: crd.to_string(),
                        action: RestoreAction::Failed,
                        message: Some(reason),
                    }),
                    Err(e) => report.objects.push(RestoreItem {
                        object: crd.to_string(),
                        action: RestoreAction::Failed,
                        message: Some(e.to_string()),
                    }),
                }
            }
            cluster.refresh_discovery().await;
            discovery_refreshed = true;
        }
        // What the target already has of this kind (names only, one paged list instead of a
        // get per object); a cluster that refuses the list is asked object by object.
        let existing = existing_names(cluster, &gvk).await;
        // Streamed: a chunk and one partial line in memory (an encrypted Secret is one small
        // file, decrypted whole).
        let p = store.path(&[&listed.location, &f.path]);
        let read_err = |e| store.err(&format!("read {}", f.path), e);
        let mut stream = store.inner.get(&p).await.map_err(read_err)?.into_stream();
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let next = stream.next().await;
            let done = next.is_none();
            if let Some(chunk) = next {
                pending.extend_from_slice(&chunk.map_err(read_err)?);
                if f.encrypted {
                    continue;
                }
            } else if f.encrypted {
                pending = decrypt(&req.identities, &pending)
                    .map_err(|e| BackupError::Crypto(format!("{}: {e}", f.path)))?;
            }
            let mut used = 0;
            while let Some(n) = pending[used..].iter().position(|b| *b == b'\n') {
                let line = &pending[used..used + n];
                used += n + 1;
                apply_line(
                    cluster,
                    req,
                    listed,
                    f,
                    &gvk,
                    line,
                    existing.as_ref(),
                    &mut report,
                    &mut crds_applied,
                )
                .await?;
            }
            if done {
                let rest = &pending[used..];
                apply_line(
                    cluster,
                    req,
                    listed,
                    f,
                    &gvk,
                    rest,
                    existing.as_ref(),
                    &mut report,
                    &mut crds_applied,
                )
                .await?;
                break;
            }
            pending.drain(..used);
        }
    }
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
async fn apply_line(
    cluster: &dyn Cluster,
    req: &RestoreRequest,
    listed: &Listed,
    f: &crate::FileEntry,
    gvk: &Gvk,
    line: &[u8],
    existing: Option<&HashSet<(String, String)>>,
    report: &mut RestoreReport,
    crds_applied: &mut Vec<ObjectRef>,
) -> Result<(), BackupError> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| BackupError::Corrupt {
        backup: listed.location.clone(),
        message: format!("{}: {e}", f.path),
    })?;
    if let Some(item) = restore_one(cluster, v, req, existing).await {
        if item.action == RestoreAction::Created
            && !req.dry_run
            && gvk.kind == "CustomResourceDefinition"
            && let Some(r) = item_ref(&item.object, gvk)
        {
            crds_applied.push(r);
        }
        report.objects.push(item);
    }
    Ok(())
}

fn item_ref(object: &str, gvk: &Gvk) -> Option<ObjectRef> {
    let name = object.rsplit('/').next()?;
    Some(ObjectRef {
        gvk: gvk.clone(),
        namespace: None,
        name: name.into(),
    })
}

#[cfg(test)]
pub(crate) fn decrypt_for_tests(
    identities: &[Box<dyn age::Identity + Send + Sync>],
    sealed: &[u8],
) -> Result<Vec<u8>, String> {
    decrypt(identities, sealed)
}

fn decrypt(
    identities: &[Box<dyn age::Identity + Send + Sync>],
    sealed: &[u8],
) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let d = age::Decryptor::new_buffered(sealed).map_err(|e| e.to_string())?;
    let mut r = d
        .decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// The object after the namespace map and the overrides; `None` when filtered out.
pub fn transform(mut v: Value, req: &RestoreRequest) -> Result<Option<Value>, String> {
    let Some(r) = ObjectRef::of(&v) else {
        return Err("an object without apiVersion, kind or name".into());
    };
    let is_ns = r.gvk.group.is_empty() && r.gvk.kind == "Namespace";
    let source_ns = if is_ns {
        Some(r.name.as_str())
    } else {
        r.namespace.as_deref()
    };
    if let Some(ns) = source_ns
        && !req.filter.keeps_namespace(ns)
    {
        return Ok(None);
    }
    if let Some(ns) = source_ns
        && let Some(to) = req.namespace_map.get(ns)
        && let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut)
    {
        let key = if is_ns { "name" } else { "namespace" };
        meta.insert(key.into(), Value::String(to.clone()));
        if is_ns && let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            labels.insert(
                "kubernetes.io/metadata.name".into(),
                Value::String(to.clone()),
            );
        }
    }
    for p in &req.patches {
        if !p.matcher.matches(&v) {
            continue;
        }
        if let Some(ops) = &p.json_patch {
            json_patch::patch(&mut v, &ops.0)
                .map_err(|e| format!("override ({}): {e}", p.describe))?;
        }
        if let Some(mp) = &p.merge_patch {
            json_patch::merge(&mut v, mp);
        }
    }
    Ok(Some(v))
}

/// (namespace, name) of every object of `gvk` in the cluster; `None` when it cannot be listed.
async fn existing_names(cluster: &dyn Cluster, gvk: &Gvk) -> Option<HashSet<(String, String)>> {
    let mut out = HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let (items, next) = cluster.list_page(gvk, token.as_deref()).await.ok()?;
        for i in &items {
            if let Some(r) = ObjectRef::of(i) {
                out.insert((r.namespace.unwrap_or_default(), r.name));
            }
        }
        token = next;
        if token.is_none() {
            return Some(out);
        }
    }
}

async fn restore_one(
    cluster: &dyn Cluster,
    v: Value,
    req: &RestoreRequest,
    known: Option<&HashSet<(String, String)>>,
) -> Option<RestoreItem> {
    let source = ObjectRef::of(&v).map(|r| r.to_string()).unwrap_or_default();
    let v = match transform(v, req) {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(message) => {
            return Some(RestoreItem {
                object: source,
                action: RestoreAction::Failed,
                message: Some(message),
            });
        }
    };
    let Some(r) = ObjectRef::of(&v) else {
        return Some(RestoreItem {
            object: source,
            action: RestoreAction::Failed,
            message: Some("an override removed the object's apiVersion, kind or name".into()),
        });
    };
    let item = |action, message: Option<String>| RestoreItem {
        object: r.to_string(),
        action,
        message,
    };
    let exists = match known {
        // A kind listed before its file: what the list did not have does not exist (the
        // restore is the only writer it knows of).
        Some(set) if r.gvk.kind != "CustomResourceDefinition" => {
            set.contains(&(r.namespace.clone().unwrap_or_default(), r.name.clone()))
        }
        _ => match cluster.get(&r).await {
            Ok(x) => x.is_some(),
            Err(e) => return Some(item(RestoreAction::Failed, Some(e.to_string()))),
        },
    };
    if exists && req.existing == Existing::Skip {
        return Some(item(RestoreAction::Skipped, Some("already exists".into())));
    }
    let action = if exists {
        RestoreAction::Updated
    } else {
        RestoreAction::Created
    };
    if req.dry_run {
        return Some(item(action, None));
    }
    let options = ApplyOptions {
        dry_run: false,
        force: exists,
        manager: FieldManager::Restore,
    };
    match cluster.apply(&v, options).await {
        Ok(_) => Some(item(action, None)),
        Err(e) => Some(item(RestoreAction::Failed, Some(server_message(&e)))),
    }
}

fn server_message(e: &ClusterError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(patches: Value) -> RestoreRequest {
        RestoreRequest {
            namespace_map: [("shop".to_string(), "shop-dr".to_string())].into(),
            patches: parse_patches(&patches).unwrap_or_else(|e| panic!("{e}")),
            ..RestoreRequest::default()
        }
    }

    #[test]
    fn namespace_map_then_overrides_by_kind_and_name() {
        let r = req(json!([
            {"target": {"kind": "PersistentVolumeClaim", "namespace": "shop-dr"},
             "jsonPatch": [{"op": "replace", "path": "/spec/storageClassName", "value": "cloud-essd"}]},
            {"target": {"kind": "Ingress", "name": "web"}, "mergePatch": {"spec": {"ingressClassName": "alb"}}}
        ]));
        let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": "shop"}, "spec": {"storageClassName": "local-ssd"}});
        let out = transform(pvc, &r).ok().flatten().unwrap_or_default();
        assert_eq!(out["metadata"]["namespace"], "shop-dr");
        assert_eq!(out["spec"]["storageClassName"], "cloud-essd");
        let ing = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "blog"}, "spec": {"ingressClassName": "nginx"}});
        let out = transform(ing, &r).ok().flatten().unwrap_or_default();
        assert_eq!(out["metadata"]["namespace"], "blog");
        assert_eq!(out["spec"]["ingressClassName"], "alb");
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}}});
        let out = transform(ns, &r).ok().flatten().unwrap_or_default();
        assert_eq!(out["metadata"]["name"], "shop-dr");
        assert_eq!(
            out["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "shop-dr"
        );
    }

    #[test]
    fn a_failing_json_patch_names_the_override() {
        let r = req(json!([{"target": {"kind": "ConfigMap"},
            "jsonPatch": [{"op": "replace", "path": "/data/missing", "value": "x"}]}]));
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "x"}, "data": {}});
        let e = transform(cm, &r).err().unwrap_or_default();
        assert!(e.contains("override (kind=ConfigMap)"), "{e}");
    }

    #[test]
    fn bad_override_files_are_refused_with_the_entry() {
        let e = parse_patches(&json!([{"target": {"kind": "X"}}]))
            .err()
            .unwrap_or_default();
        assert_eq!(
            e,
            "patches[0]: needs exactly one of jsonPatch and mergePatch"
        );
        let e = parse_patches(&json!([{"target": {"knd": "X"}, "mergePatch": {}}]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("unknown key target.\"knd\""), "{e}");
        let e = parse_patches(&json!({"x": 1})).err().unwrap_or_default();
        assert!(e.contains("expected a list of patches"), "{e}");
    }
}
