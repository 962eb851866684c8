//! One backup of one cluster: discovery, paged lists, one file per kind written as the pages
//! arrive (bounded memory: a page and one upload buffer), the manifest last.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use flotilla_reconciler::cluster::{Cluster, Gvk, ObjectRef, ResourceInfo};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::filter::Filter;
use crate::{BackupError, FORMAT_VERSION, FileEntry, Manifest, SecretsMode, Store, hex};

/// Above this a file is uploaded in parts (S3's minimum part is 5 MiB).
const PART: usize = 8 * 1024 * 1024;

/// What to back up.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub fleet: String,
    pub backup: String,
    pub fleet_commit: Option<String>,
    pub filter: Filter,
    /// age X25519 recipients; none: Secrets are left out.
    pub recipients: Vec<String>,
    pub keep_status: bool,
    /// The backup's time (its directory name).
    pub now: DateTime<Utc>,
}

impl BackupRequest {
    /// The request for a fleet.yaml policy.
    pub fn from_policy(
        fleet: &str,
        b: &flotilla_spec::Backup,
        now: DateTime<Utc>,
    ) -> BackupRequest {
        BackupRequest {
            fleet: fleet.into(),
            backup: b.name.clone(),
            fleet_commit: None,
            filter: Filter::from_spec(&b.include, &b.exclude),
            recipients: b
                .encrypt
                .as_ref()
                .map(|e| e.age.clone())
                .unwrap_or_default(),
            keep_status: b.status,
            now,
        }
    }
}

/// A finished backup.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// `<backup>/<cluster>/<timestamp>` in the store.
    pub location: String,
    pub manifest: Manifest,
    pub seconds: f64,
}

/// Parses age recipients.
pub fn parse_recipients(list: &[String]) -> Result<Vec<age::x25519::Recipient>, BackupError> {
    list.iter()
        .map(|r| {
            r.parse::<age::x25519::Recipient>()
                .map_err(|e| BackupError::Crypto(format!("invalid age recipient {r:?}: {e}")))
        })
        .collect()
}

/// The object as stored: without server-owned fields (uid, resourceVersion, managedFields,
/// creationTimestamp, generation, selfLink, status unless kept), without owner references
/// (uids of the source cluster) and allocated Service IPs. `None` for what a controller
/// recreates: objects with a controller owner, service-account token Secrets.
pub fn clean(v: &Value, keep_status: bool) -> Option<Value> {
    let owned = v
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|refs| {
            refs.iter()
                .any(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        });
    if owned {
        return None;
    }
    if v.get("type").and_then(Value::as_str) == Some("kubernetes.io/service-account-token") {
        return None;
    }
    let mut out = flotilla_reconciler::diff::normalize(v);
    if keep_status && let (Some(status), Some(o)) = (v.get("status"), out.as_object_mut()) {
        o.insert("status".into(), status.clone());
    }
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("ownerReferences");
    }
    let is_service = v.get("kind").and_then(Value::as_str) == Some("Service")
        && v.get("apiVersion").and_then(Value::as_str) == Some("v1");
    if is_service && let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
        if spec.get("clusterIP").and_then(Value::as_str) != Some("None") {
            spec.remove("clusterIP");
            spec.remove("clusterIPs");
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                if let Some(p) = p.as_object_mut() {
                    p.remove("nodePort");
                }
            }
        }
    }
    // What ties an object to the old cluster's machines and volumes (as Velero does without
    // volume snapshots): a bare Pod's node, a claim's bound volume, a Job's generated selector.
    let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    match (api, v.get("kind").and_then(Value::as_str).unwrap_or("")) {
        ("v1", "Pod") => {
            if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("nodeName");
            }
        }
        ("v1", "PersistentVolumeClaim") => {
            if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("volumeName");
            }
            if let Some(a) = out
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                a.retain(|k, _| !k.starts_with("pv.kubernetes.io/"));
            }
        }
        ("batch/v1", "Job") => {
            const GENERATED: &[&str] = &[
                "controller-uid",
                "batch.kubernetes.io/controller-uid",
                "job-name",
                "batch.kubernetes.io/job-name",
            ];
            if let Some(spec) = out.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("selector");
                if let Some(l) = spec
                    .get_mut("template")
                    .and_then(|t| t.pointer_mut("/metadata/labels"))
                    .and_then(Value::as_object_mut)
                {
                    l.retain(|k, _| !GENERATED.contains(&k.as_str()));
                }
            }
        }
        _ => {}
    }
    Some(out)
}

/// A file being written: buffered, then uploaded in parts once it outgrows [`PART`].
struct FileWriter {
    path: Path,
    rel: String,
    buf: Vec<u8>,
    upload: Option<WriteMultipart>,
    hasher: Sha256,
    size: u64,
    objects: u64,
}

impl FileWriter {
    fn new(store: &Store, dir: &str, rel: String) -> FileWriter {
        FileWriter {
            path: store.path(&[dir, &rel]),
            rel,
            buf: Vec::new(),
            upload: None,
            hasher: Sha256::new(),
            size: 0,
            objects: 0,
        }
    }

    async fn write(&mut self, store: &Store, bytes: &[u8]) -> Result<(), BackupError> {
        self.hasher.update(bytes);
        self.size += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= PART {
            if self.upload.is_none() {
                let up = store
                    .inner
                    .put_multipart(&self.path)
                    .await
                    .map_err(|e| store.err(&format!("upload {}", self.rel), e))?;
                self.upload = Some(WriteMultipart::new_with_chunk_size(up, PART));
            }
            if let Some(up) = &mut self.upload {
                up.wait_for_capacity(2)
                    .await
                    .map_err(|e| store.err(&format!("upload {}", self.rel), e))?;
                up.put(Bytes::from(std::mem::take(&mut self.buf)));
            }
        }
        Ok(())
    }

    async fn finish(mut self, store: &Store) -> Result<(String, String, u64, u64), BackupError> {
        let what = format!("upload {}", self.rel);
        match self.upload.take() {
            None => {
                store
                    .inner
                    .put(&self.path, PutPayload::from(std::mem::take(&mut self.buf)))
                    .await
                    .map_err(|e| store.err(&what, e))?;
            }
            Some(mut up) => {
                if !self.buf.is_empty() {
                    up.put(Bytes::from(std::mem::take(&mut self.buf)));
                }
                up.finish().await.map_err(|e| store.err(&what, e))?;
            }
        }
        Ok((
            self.rel,
            hex(&self.hasher.finalize()),
            self.size,
            self.objects,
        ))
    }

    async fn abort(mut self) {
        if let Some(up) = self.upload.take() {
            let _ = up.abort().await;
        }
    }
}

fn group_dir(gvk: &Gvk) -> &str {
    if gvk.group.is_empty() {
        "core"
    } else {
        &gvk.group
    }
}

/// `ConfigMap`, `Widget.example.com`: how counts name a kind.
pub fn kind_key(gvk: &Gvk) -> String {
    if gvk.group.is_empty() {
        gvk.kind.clone()
    } else {
        format!("{}.{}", gvk.kind, gvk.group)
    }
}

/// A path segment for a name: what Kubernetes names allow passes unchanged; anything else
/// (never produced by a real API server) is refused.
fn segment(s: &str) -> Result<&str, BackupError> {
    if !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'))
    {
        Ok(s)
    } else {
        Err(BackupError::Settings {
            message: format!("refusing to store an object named {s:?}"),
        })
    }
}

const CRD: (&str, &str, &str) = ("apiextensions.k8s.io", "v1", "CustomResourceDefinition");

/// Backs up `cluster` to `store` (see the module documentation). A failure leaves no
/// manifest, so nothing listable; the files written so far are deleted (best effort; what
/// remains is garbage-collected).
pub async fn backup(
    cluster: &dyn Cluster,
    store: &Store,
    req: &BackupRequest,
) -> Result<BackupOutcome, BackupError> {
    let started = Instant::now();
    let recipients = parse_recipients(&req.recipients)?;
    let ts = crate::timestamp_name(req.now);
    segment(&req.backup)?;
    segment(cluster.name())?;
    let dir = format!("{}/{}/{ts}", req.backup, cluster.name());
    let mut written: Vec<Path> = Vec::new();
    match backup_inner(cluster, store, req, &recipients, &dir, &ts, &mut written).await {
        Ok(manifest) => {
            tracing::info!(
                backup = %req.backup,
                cluster = %cluster.name(),
                location = %dir,
                objects = manifest.objects(),
                bytes = manifest.bytes(),
                "backup complete"
            );
            Ok(BackupOutcome {
                location: dir,
                manifest,
                seconds: started.elapsed().as_secs_f64(),
            })
        }
        Err(e) => {
            tracing::warn!(backup = %req.backup, cluster = %cluster.name(), error = %e, "backup failed");
            for p in &written {
                let _ = store.inner.delete(p).await;
            }
            Err(e)
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn backup_inner(
    cluster: &dyn Cluster,
    store: &Store,
    req: &BackupRequest,
    recipients: &[age::x25519::Recipient],
    dir: &str,
    ts: &str,
    written: &mut Vec<Path>,
) -> Result<Manifest, BackupError> {
    let started_at = Utc::now().to_rfc3339();
    let kinds = cluster.served_kinds().await?;
    let crd_gvk = Gvk::new(CRD.0, CRD.1, CRD.2);
    // CRD names (`plural.group`) of the custom kinds, from the CRD list (names only).
    let mut crd_names = BTreeSet::new();
    if kinds.iter().any(|(g, _)| *g == crd_gvk) {
        let mut token: Option<String> = None;
        loop {
            let (items, next) = cluster.list_page(&crd_gvk, token.as_deref()).await?;
            for i in &items {
                if let Some(n) = i.pointer("/metadata/name").and_then(Value::as_str) {
                    crd_names.insert(n.to_string());
                }
            }
            token = next;
            if token.is_none() {
                break;
            }
        }
    }
    let secret_gvk = Gvk::new("", "v1", "Secret");
    let mut secrets = SecretsMode::Excluded;
    let mut files = Vec::new();
    let mut counts = BTreeMap::new();
    let mut needed_crds = BTreeSet::new();
    let mut crds_written = false;
    for (gvk, info) in &kinds {
        if !req.filter.keeps_kind(gvk, info) {
            continue;
        }
        let is_secret = *gvk == secret_gvk;
        if is_secret && recipients.is_empty() {
            continue;
        }
        if is_secret {
            secrets = SecretsMode::Encrypted;
        }
        if *gvk == crd_gvk {
            crds_written = true;
        }
        let n = if is_secret {
            write_secrets(
                cluster, store, req, recipients, dir, gvk, info, &mut files, written,
            )
            .await?
        } else {
            write_kind(cluster, store, req, dir, gvk, info, &mut files, written).await?
        };
        if n > 0 {
            counts.insert(kind_key(gvk), n);
            let crd = format!("{}.{}", info.plural, gvk.group);
            if crd_names.contains(&crd) {
                needed_crds.insert(crd);
            }
        }
    }
    if !crds_written && !needed_crds.is_empty() {
        let rel = format!("resources/{}/{}/{}.ndjson", CRD.0, CRD.1, CRD.2);
        let mut w = FileWriter::new(store, dir, rel);
        written.push(w.path.clone());
        for name in &needed_crds {
            let r = ObjectRef {
                gvk: crd_gvk.clone(),
                namespace: None,
                name: name.clone(),
            };
            let Some(v) = cluster.get(&r).await? else {
                continue;
            };
            if let Some(c) = clean(&v, req.keep_status) {
                let mut line = serde_json::to_vec(&c).map_err(|e| BackupError::Settings {
                    message: e.to_string(),
                })?;
                line.push(b'\n');
                if let Err(e) = w.write(store, &line).await {
                    w.abort().await;
                    return Err(e);
                }
                w.objects += 1;
            }
        }
        let n = w.objects;
        let (path, sha256, size, objects) = w.finish(store).await?;
        files.push(FileEntry {
            path,
            sha256,
            size,
            api_version: format!("{}/{}", CRD.0, CRD.1),
            kind: CRD.2.into(),
            objects,
            encrypted: false,
        });
        counts.insert(kind_key(&crd_gvk), n);
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        fleet: req.fleet.clone(),
        backup: req.backup.clone(),
        cluster: cluster.name().into(),
        fleet_commit: req.fleet_commit.clone(),
        timestamp: ts.into(),
        started_at,
        finished_at: Utc::now().to_rfc3339(),
        counts,
        secrets,
        recipients: if secrets == SecretsMode::Encrypted {
            req.recipients.clone()
        } else {
            vec![]
        },
        status: req.keep_status,
        files,
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Settings {
        message: e.to_string(),
    })?;
    stall_for_tests().await;
    let mpath = store.path(&[dir, "manifest.json"]);
    store
        .inner
        .put(&mpath, PutPayload::from(body))
        .await
        .map_err(|e| store.err("upload manifest.json", e))?;
    Ok(manifest)
}

#[allow(clippy::too_many_arguments)]
async fn write_kind(
    cluster: &dyn Cluster,
    store: &Store,
    req: &BackupRequest,
    dir: &str,
    gvk: &Gvk,
    info: &ResourceInfo,
    files: &mut Vec<FileEntry>,
    written: &mut Vec<Path>,
) -> Result<u64, BackupError> {
    let rel = format!(
        "resources/{}/{}/{}.ndjson",
        group_dir(gvk),
        gvk.version,
        segment(&gvk.kind)?
    );
    let mut w: Option<FileWriter> = None;
    let mut token: Option<String> = None;
    loop {
        let page = cluster.list_page(gvk, token.as_deref()).await;
        let (items, next) = match page {
            Ok(p) => p,
            Err(e) => {
                if let Some(w) = w {
                    w.abort().await;
                }
                return Err(e.into());
            }
        };
        let mut chunk = Vec::new();
        let mut n = 0;
        for v in &items {
            if !req.filter.keeps_object(gvk, info.namespaced, v) {
                continue;
            }
            let Some(c) = clean(v, req.keep_status) else {
                continue;
            };
            if serde_json::to_writer(&mut chunk, &c).is_err() {
                continue;
            }
            chunk.push(b'\n');
            n += 1;
        }
        if n > 0 {
            let fw = w.get_or_insert_with(|| {
                let fw = FileWriter::new(store, dir, rel.clone());
                written.push(fw.path.clone());
                fw
            });
            fw.objects += n;
            if let Err(e) = fw.write(store, &chunk).await {
                if let Some(w) = w {
                    w.abort().await;
                }
                return Err(e);
            }
        }
        token = next;
        if token.is_none() {
            break;
        }
    }
    let Some(w) = w else { return Ok(0) };
    let (path, sha256, size, objects) = w.finish(store).await?;
    files.push(FileEntry {
        path,
        sha256,
        size,
        api_version: gvk.api_version(),
        kind: gvk.kind.clone(),
        objects,
        encrypted: false,
    });
    Ok(objects)
}

#[allow(clippy::too_many_arguments)]
async fn write_secrets(
    cluster: &dyn Cluster,
    store: &Store,
    req: &BackupRequest,
    recipients: &[age::x25519::Recipient],
    dir: &str,
    gvk: &Gvk,
    info: &ResourceInfo,
    files: &mut Vec<FileEntry>,
    written: &mut Vec<Path>,
) -> Result<u64, BackupError> {
    let mut count = 0;
    let mut token: Option<String> = None;
    loop {
        let (items, next) = cluster.list_page(gvk, token.as_deref()).await?;
        for v in &items {
            if !req.filter.keeps_object(gvk, info.namespaced, v) {
                continue;
            }
            let Some(c) = clean(v, req.keep_status) else {
                continue;
            };
            let r = ObjectRef::of(&c).ok_or_else(|| BackupError::Settings {
                message: "a Secret without a name".into(),
            })?;
            let ns = r.namespace.as_deref().unwrap_or("_");
            let rel = format!(
                "resources/core/v1/Secret/{}/{}.json.age",
                segment(ns)?,
                segment(&r.name)?
            );
            let plain = serde_json::to_vec(&c).map_err(|e| BackupError::Settings {
                message: e.to_string(),
            })?;
            let sealed = encrypt(recipients, &plain)?;
            drop(plain);
            let path = store.path(&[dir, &rel]);
            written.push(path.clone());
            let sha256 = hex(&Sha256::digest(&sealed));
            let size = sealed.len() as u64;
            store
                .inner
                .put(&path, PutPayload::from(sealed))
                .await
                .map_err(|e| store.err(&format!("upload {rel}"), e))?;
            files.push(FileEntry {
                path: rel,
                sha256,
                size,
                api_version: "v1".into(),
                kind: "Secret".into(),
                objects: 1,
                encrypted: true,
            });
            count += 1;
        }
        token = next;
        if token.is_none() {
            return Ok(count);
        }
    }
}

/// `plain` encrypted to every recipient (binary age format).
pub fn encrypt(
    recipients: &[age::x25519::Recipient],
    plain: &[u8],
) -> Result<Vec<u8>, BackupError> {
    use std::io::Write;
    let enc = age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
        .map_err(|e| BackupError::Crypto(e.to_string()))?;
    let mut out = Vec::with_capacity(plain.len() + 256);
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| BackupError::Crypto(e.to_string()))?;
    w.write_all(plain)
        .map_err(|e| BackupError::Crypto(e.to_string()))?;
    w.finish().map_err(|e| BackupError::Crypto(e.to_string()))?;
    Ok(out)
}

/// Test hook: with `FLOTILLA_TEST_STALL_BEFORE_MANIFEST=PATH` a backup that has uploaded every
/// file creates PATH and waits (10 minutes) before it writes its manifest, so the kill -9 test
/// kills it at exactly that point instead of racing it.
const STALL_HOOK: &str = "FLOTILLA_TEST_STALL_BEFORE_MANIFEST";

async fn stall_for_tests() {
    if let Some(marker) = std::env::var_os(STALL_HOOK) {
        tracing::warn!("{STALL_HOOK} is set: stalling before the manifest");
        if std::fs::write(&marker, b"stalled\n").is_ok() {
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn clean_drops_server_fields_and_what_controllers_recreate() {
        let v = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                "creationTimestamp": "t", "generation": 2, "managedFields": [{}],
                "ownerReferences": [{"kind": "X", "name": "x", "uid": "u2"}]},
            "spec": {"clusterIP": "10.0.0.7", "clusterIPs": ["10.0.0.7"], "ports": [{"port": 80, "nodePort": 30080}]},
            "status": {"loadBalancer": {}}});
        let c = clean(&v, false).unwrap_or_default();
        assert_eq!(
            c,
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"}, "spec": {"ports": [{"port": 80}]}})
        );
        let kept = clean(&v, true).unwrap_or_default();
        assert_eq!(kept["status"], json!({"loadBalancer": {}}));
        let owned = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-1", "ownerReferences": [{"controller": true, "uid": "u"}]}});
        assert_eq!(clean(&owned, false), None);
        let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
            "spec": {"selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}},
                "template": {"metadata": {"labels": {"app": "j", "batch.kubernetes.io/controller-uid": "u", "job-name": "j"}}}}});
        assert_eq!(
            clean(&job, false).unwrap_or_default()["spec"],
            json!({"template": {"metadata": {"labels": {"app": "j"}}}})
        );
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": []}});
        assert_eq!(
            clean(&pod, false).unwrap_or_default()["spec"],
            json!({"containers": []})
        );
        let token = json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token", "metadata": {"name": "t"}});
        assert_eq!(clean(&token, false), None);
    }

    #[test]
    fn encrypted_secrets_decrypt_with_the_identity_only() {
        let id = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let sealed = encrypt(&[id.to_public()], b"{\"kind\":\"Secret\"}").unwrap_or_default();
        assert!(sealed.starts_with(b"age-encryption.org/v1\n"));
        let ids: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(id)];
        let wrong: Vec<Box<dyn age::Identity + Send + Sync>> = vec![Box::new(other)];
        assert_eq!(
            crate::restore::decrypt_for_tests(&ids, &sealed).ok(),
            Some(b"{\"kind\":\"Secret\"}".to_vec())
        );
        assert!(crate::restore::decrypt_for_tests(&wrong, &sealed).is_err());
    }
}
