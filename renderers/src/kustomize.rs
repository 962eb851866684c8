//! A subset of kustomize, built in: a directory with `kustomization.yaml` (or `.yml`, or
//! `Kustomization`). Where a field is supported its output matches `kubectl kustomize` (5.5)
//! exactly (the fixtures under `fixtures/render/kustomize-*` were generated with it); an
//! unsupported field is an error naming it, never silently ignored.
//!
//! Supported: `resources` (files and kustomization directories inside the repository),
//! `namespace`, `namePrefix`, `nameSuffix`, `commonLabels`, `labels`, `commonAnnotations`,
//! `images`, `replicas`, `patches` (RFC 6902 lists, and strategic-merge-style patches with
//! lists of objects merged by their key), `patchesJson6902`, `patchesStrategicMerge`,
//! `configMapGenerator`, `secretGenerator` (with kustomize's content-hash name suffix and
//! references in pod specs updated), `generatorOptions`.
//!
//! Transformations run in kustomize's order: patches, namespace, prefix/suffix, labels,
//! annotations, JSON 6902 patches, replicas, images; then, once at the top, hash suffixes
//! and name references.

use std::collections::BTreeMap;
use std::rc::Rc;

use flotilla_spec::types::RepoPath;
use flotilla_spec::yaml::{Node, Value as YValue};
use flotilla_spec::{Limits, PathKind, RepoError, RepoFiles, Target};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::kinds::{is_cluster_scoped, str_at};
use crate::overrides::{Matcher, set_images};
use crate::plain::{self, PlainError};
use crate::{Context, Object, Renderer};

/// Nested kustomizations deeper than this are refused (a cycle would otherwise recurse).
pub const MAX_DEPTH: usize = 32;

/// Why a kustomization did not build.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KustomizeError {
    #[error(transparent)]
    Plain(#[from] PlainError),
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{0}: no kustomization.yaml, kustomization.yml or Kustomization in this directory")]
    NoKustomization(String),
    #[error("{at}: {message}")]
    Invalid { at: String, message: String },
    #[error("{at}: {field} is not supported by flotilla's built-in kustomize")]
    Unsupported { at: String, field: String },
    #[error("{at}: kustomizations nested deeper than {MAX_DEPTH} levels (a cycle?)")]
    TooDeep { at: String },
}

/// The kustomize renderer.
pub struct Kustomize;

impl Renderer for Kustomize {
    fn render(&self, repo: &dyn RepoFiles, cx: &Context<'_>) -> Result<Vec<Object>, crate::Cause> {
        Ok(build(repo, &cx.bundle.path)?)
    }
}

/// Builds the kustomization in `dir` like `kubectl kustomize dir`.
pub fn build(repo: &dyn RepoFiles, dir: &RepoPath) -> Result<Vec<Object>, KustomizeError> {
    let mut items = accumulate(repo, dir, 0)?;
    add_hashes(&mut items);
    fix_references(&mut items);
    Ok(items.into_iter().map(|r| r.obj).collect())
}

/// An object being built, with what name references need.
struct Res {
    obj: Object,
    /// Kind and name when first read or generated.
    orig_name: String,
    orig_ns: String,
    needs_hash: bool,
}

impl Res {
    fn kind(&self) -> &str {
        str_at(&self.obj.value, &["kind"]).unwrap_or("")
    }
    fn name(&self) -> &str {
        str_at(&self.obj.value, &["metadata", "name"]).unwrap_or("")
    }
    fn namespace(&self) -> &str {
        str_at(&self.obj.value, &["metadata", "namespace"]).unwrap_or("")
    }
}

const SUPPORTED: &[&str] = &[
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "namePrefix",
    "nameSuffix",
    "commonLabels",
    "labels",
    "commonAnnotations",
    "images",
    "replicas",
    "patches",
    "patchesJson6902",
    "patchesStrategicMerge",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
];

/// A parsed kustomization with positions for messages.
struct Kust<'a> {
    file: String,
    root: Rc<Node>,
    dir: &'a RepoPath,
}

impl Kust<'_> {
    fn at(&self, node: &Node) -> String {
        format!("{}:{}", self.file, node.pos)
    }

    fn invalid(&self, node: &Node, message: impl Into<String>) -> KustomizeError {
        KustomizeError::Invalid {
            at: self.at(node),
            message: message.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&Rc<Node>> {
        self.root.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<String>, KustomizeError> {
        match self.get(key) {
            None => Ok(None),
            Some(n) => match &n.value {
                YValue::Str(s) => Ok(Some(s.clone())),
                YValue::Null => Ok(None),
                _ => Err(self.invalid(n, format!("{key} must be a string"))),
            },
        }
    }

    fn list(&self, key: &str) -> Result<Vec<Rc<Node>>, KustomizeError> {
        match self.get(key) {
            None => Ok(Vec::new()),
            Some(n) => match &n.value {
                YValue::Seq(items) => Ok(items.clone()),
                YValue::Null => Ok(Vec::new()),
                _ => Err(self.invalid(n, format!("{key} must be a list"))),
            },
        }
    }

    fn string_map(&self, node: Option<&Rc<Node>>) -> Result<Map<String, Value>, KustomizeError> {
        let Some(n) = node else {
            return Ok(Map::new());
        };
        match &n.value {
            YValue::Null => Ok(Map::new()),
            YValue::Map(entries) => {
                let mut out = Map::new();
                for (k, v) in entries {
                    let s = match &v.value {
                        YValue::Str(s) => s.clone(),
                        YValue::Int(i) => i.to_string(),
                        YValue::Float(f) => f.to_string(),
                        YValue::Bool(b) => b.to_string(),
                        YValue::Null => String::new(),
                        _ => return Err(self.invalid(v, "expected a string value")),
                    };
                    out.insert(k.name.clone(), Value::String(s));
                }
                Ok(out)
            }
            _ => Err(self.invalid(n, "expected a mapping of strings")),
        }
    }

    /// A path relative to the kustomization's directory, confined to the repository.
    fn path(&self, node: &Node, rel: &str) -> Result<RepoPath, KustomizeError> {
        if rel.contains("://") || rel.starts_with("github.com/") || rel.starts_with("git@") {
            return Err(KustomizeError::Unsupported {
                at: self.at(node),
                field: format!("the remote resource {rel:?}"),
            });
        }
        if rel.starts_with('/') {
            return Err(self.invalid(node, format!("{rel:?} is absolute")));
        }
        let joined = if self.dir.as_str() == "." {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.dir.as_str())
        };
        RepoPath::parse(&joined).map_err(|_| {
            self.invalid(
                node,
                format!("{rel:?} leads outside the repository; resources must stay inside it"),
            )
        })
    }
}

fn accumulate(
    repo: &dyn RepoFiles,
    dir: &RepoPath,
    depth: usize,
) -> Result<Vec<Res>, KustomizeError> {
    let Some(path) = flotilla_spec::kustomization_file(repo, dir) else {
        return Err(KustomizeError::NoKustomization(dir.to_string()));
    };
    let file = path.to_string();
    if depth > MAX_DEPTH {
        return Err(KustomizeError::TooDeep { at: file });
    }
    let text = repo.read_to_string(&path)?;
    let root = flotilla_spec::yaml::parse(&text, &Limits::default()).map_err(|e| {
        KustomizeError::Invalid {
            at: match e.pos() {
                Some(p) => format!("{file}:{p}"),
                None => file.clone(),
            },
            message: e.message(),
        }
    })?;
    let k = Kust {
        file,
        root: Rc::new(root),
        dir,
    };
    match &k.root.value {
        YValue::Map(entries) => {
            for (key, _) in entries {
                if !SUPPORTED.contains(&key.name.as_str()) {
                    return Err(KustomizeError::Unsupported {
                        at: format!("{}:{}", k.file, key.pos),
                        field: key.name.clone(),
                    });
                }
            }
        }
        YValue::Null => {}
        _ => return Err(k.invalid(&k.root, "a kustomization must be a mapping")),
    }

    let mut items: Vec<Res> = Vec::new();
    for n in k.list("resources")? {
        let YValue::Str(rel) = &n.value else {
            return Err(k.invalid(&n, "a resource must be a path"));
        };
        let p = k.path(&n, rel)?;
        match repo.kind(&p) {
            PathKind::Dir => items.extend(accumulate(repo, &p, depth + 1)?),
            PathKind::File => {
                let mut objs = Vec::new();
                plain::read_file(repo, &p, &mut objs)?;
                items.extend(objs.into_iter().map(new_res));
            }
            PathKind::Missing => {
                return Err(k.invalid(&n, format!("{} does not exist", p.as_str())));
            }
            PathKind::Escapes => {
                return Err(k.invalid(&n, format!("{} leads outside the repository", p.as_str())));
            }
        }
    }

    generators(repo, &k, &mut items)?;

    // Transformers, in kustomize's order.
    for n in k.list("patchesStrategicMerge")? {
        let (text, origin) = match &n.value {
            YValue::Str(s) if !s.contains('\n') && !s.contains(':') => {
                let p = k.path(&n, s)?;
                (repo.read_to_string(&p)?, p.to_string())
            }
            YValue::Str(s) => (s.clone(), k.at(&n)),
            _ => return Err(k.invalid(&n, "expected a path or an inline patch")),
        };
        smp_patches(&k, &n, &origin, &text, None, &mut items)?;
    }
    for n in k.list("patches")? {
        patch_entry(repo, &k, &n, &mut items, false)?;
    }
    if let Some(ns) = k.string("namespace")? {
        for r in &mut items {
            set_namespace(&mut r.obj.value, &ns);
        }
    }
    let prefix = k.string("namePrefix")?.unwrap_or_default();
    let suffix = k.string("nameSuffix")?.unwrap_or_default();
    if !prefix.is_empty() || !suffix.is_empty() {
        for r in &mut items {
            let kind = r.kind();
            if matches!(
                kind,
                "CustomResourceDefinition" | "Namespace" | "APIService"
            ) {
                continue;
            }
            let name = format!("{prefix}{}{suffix}", r.name());
            set_path(&mut r.obj.value, &["metadata", "name"], Value::String(name));
        }
    }
    let common = k.string_map(k.get("commonLabels"))?;
    if !common.is_empty() {
        for r in &mut items {
            add_labels(&mut r.obj.value, &common, true, true);
        }
    }
    for n in k.list("labels")? {
        let pairs = k.string_map(n.get("pairs"))?;
        let flag = |key: &str| -> Result<bool, KustomizeError> {
            match n.get(key).map(|v| &v.value) {
                None | Some(YValue::Null) => Ok(false),
                Some(YValue::Bool(b)) => Ok(*b),
                Some(_) => Err(k.invalid(&n, format!("{key} must be true or false"))),
            }
        };
        let selectors = flag("includeSelectors")?;
        let templates = flag("includeTemplates")? || selectors;
        if n.get("fields").is_some() {
            return Err(KustomizeError::Unsupported {
                at: k.at(&n),
                field: "labels[].fields".into(),
            });
        }
        for r in &mut items {
            add_labels(&mut r.obj.value, &pairs, selectors, templates);
        }
    }
    let annotations = k.string_map(k.get("commonAnnotations"))?;
    if !annotations.is_empty() {
        for r in &mut items {
            add_annotations(&mut r.obj.value, &annotations);
        }
    }
    for n in k.list("patchesJson6902")? {
        patch_entry(repo, &k, &n, &mut items, true)?;
    }
    for n in k.list("replicas")? {
        let name = n.get("name").map(|v| v.to_json());
        let count = n.get("count").map(|v| v.to_json());
        let (Some(Value::String(name)), Some(Value::Number(count))) = (name, count) else {
            return Err(k.invalid(&n, "a replicas entry needs name and count"));
        };
        for r in &mut items {
            if r.name() == name
                && matches!(
                    r.kind(),
                    "Deployment" | "ReplicaSet" | "StatefulSet" | "ReplicationController"
                )
            {
                set_path(
                    &mut r.obj.value,
                    &["spec", "replicas"],
                    Value::Number(count.clone()),
                );
            }
        }
    }
    for n in k.list("images")? {
        let field = |key: &str| -> Option<String> {
            n.get(key).and_then(|v| match &v.value {
                YValue::Str(s) => Some(s.clone()),
                YValue::Int(i) => Some(i.to_string()),
                YValue::Float(f) => Some(f.to_string()),
                _ => None,
            })
        };
        let Some(name) = field("name") else {
            return Err(k.invalid(&n, "an images entry needs a name"));
        };
        let (new_name, new_tag, digest) = (field("newName"), field("newTag"), field("digest"));
        for r in &mut items {
            set_images(
                &mut r.obj.value,
                &name,
                new_name.as_deref(),
                new_tag.as_deref(),
                digest.as_deref(),
            );
        }
    }
    Ok(items)
}

fn new_res(obj: Object) -> Res {
    let orig_name = str_at(&obj.value, &["metadata", "name"])
        .unwrap_or("")
        .to_string();
    let orig_ns = str_at(&obj.value, &["metadata", "namespace"])
        .unwrap_or("")
        .to_string();
    Res {
        obj,
        orig_name,
        orig_ns,
        needs_hash: false,
    }
}

fn set_path(v: &mut Value, path: &[&str], value: Value) {
    let mut cur = v;
    for (i, p) in path.iter().enumerate() {
        let Some(m) = cur.as_object_mut() else {
            return;
        };
        if i == path.len() - 1 {
            m.insert((*p).to_string(), value);
            return;
        }
        cur = m
            .entry((*p).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// The map at `path`, created (when `create`) if missing. `None` if the path crosses a
/// non-mapping or is missing and not created.
fn map_at<'v>(v: &'v mut Value, path: &[&str], create: bool) -> Option<&'v mut Map<String, Value>> {
    let mut cur = v;
    for p in path {
        let m = cur.as_object_mut()?;
        if !m.contains_key(*p) {
            if !create {
                return None;
            }
            m.insert((*p).to_string(), Value::Object(Map::new()));
        }
        cur = m.get_mut(*p)?;
        if cur.is_null() && create {
            *cur = Value::Object(Map::new());
        }
    }
    cur.as_object_mut()
}

fn merge_into(target: Option<&mut Map<String, Value>>, add: &Map<String, Value>) {
    if let Some(t) = target {
        for (k, v) in add {
            t.insert(k.clone(), v.clone());
        }
    }
}

const WORKLOADS: &[&str] = &[
    "Deployment",
    "ReplicaSet",
    "DaemonSet",
    "StatefulSet",
    "ReplicationController",
];

fn add_labels(v: &mut Value, labels: &Map<String, Value>, selectors: bool, templates: bool) {
    merge_into(map_at(v, &["metadata", "labels"], true), labels);
    let kind = str_at(v, &["kind"]).unwrap_or("").to_string();
    let k = kind.as_str();
    if selectors {
        match k {
            "Service" | "ReplicationController" => {
                merge_into(map_at(v, &["spec", "selector"], true), labels)
            }
            _ if WORKLOADS.contains(&k) => merge_into(
                map_at(v, &["spec", "selector", "matchLabels"], true),
                labels,
            ),
            "Job" | "PodDisruptionBudget" => merge_into(
                map_at(v, &["spec", "selector", "matchLabels"], false),
                labels,
            ),
            "CronJob" => merge_into(
                map_at(
                    v,
                    &["spec", "jobTemplate", "spec", "selector", "matchLabels"],
                    false,
                ),
                labels,
            ),
            "NetworkPolicy" => merge_into(
                map_at(v, &["spec", "podSelector", "matchLabels"], false),
                labels,
            ),
            _ => {}
        }
    }
    if templates {
        merge_into_templates(v, k, "labels", labels);
        if k == "StatefulSet"
            && let Some(Value::Array(vcts)) = v
                .get_mut("spec")
                .and_then(|s| s.get_mut("volumeClaimTemplates"))
        {
            for t in vcts {
                merge_into(map_at(t, &["metadata", "labels"], true), labels);
            }
        }
    }
}

fn add_annotations(v: &mut Value, annotations: &Map<String, Value>) {
    merge_into(map_at(v, &["metadata", "annotations"], true), annotations);
    let kind = str_at(v, &["kind"]).unwrap_or("").to_string();
    merge_into_templates(v, &kind, "annotations", annotations);
}

/// Merges into `field` (labels or annotations) of the pod templates a kind carries (and a
/// CronJob's job template), as kustomize's commonLabels/commonAnnotations do.
fn merge_into_templates(v: &mut Value, kind: &str, field: &str, add: &Map<String, Value>) {
    let paths: &[&[&str]] = if WORKLOADS.contains(&kind) || kind == "Job" {
        &[&["spec", "template", "metadata"]]
    } else if kind == "CronJob" {
        &[
            &["spec", "jobTemplate", "metadata"],
            &["spec", "jobTemplate", "spec", "template", "metadata"],
        ]
    } else {
        &[]
    };
    for path in paths {
        let full: Vec<&str> = path.iter().copied().chain([field]).collect();
        merge_into(map_at(v, &full, true), add);
    }
}

fn set_namespace(v: &mut Value, ns: &str) {
    let kind = str_at(v, &["kind"]).unwrap_or("").to_string();
    if !is_cluster_scoped(&kind) {
        set_path(v, &["metadata", "namespace"], Value::String(ns.to_string()));
    }
    // kustomize's default (`defaultOnly`): binding subjects naming the ServiceAccount
    // `default` follow the namespace; others follow their ServiceAccount (name references).
    if (kind == "RoleBinding" || kind == "ClusterRoleBinding")
        && let Some(Value::Array(subjects)) = v.get_mut("subjects")
    {
        for s in subjects {
            if s.get("kind").and_then(Value::as_str) == Some("ServiceAccount")
                && s.get("name").and_then(Value::as_str) == Some("default")
                && let Some(m) = s.as_object_mut()
            {
                m.insert("namespace".into(), Value::String(ns.to_string()));
            }
        }
    }
}

/// One entry of `patches` (or `patchesJson6902` when `json6902_only`).
fn patch_entry(
    repo: &dyn RepoFiles,
    k: &Kust<'_>,
    n: &Rc<Node>,
    items: &mut [Res],
    json6902_only: bool,
) -> Result<(), KustomizeError> {
    if n.get("options").is_some() {
        return Err(KustomizeError::Unsupported {
            at: k.at(n),
            field: "patches[].options".into(),
        });
    }
    let (text, origin) = match (n.get("path"), n.get("patch")) {
        (Some(p), None) => {
            let YValue::Str(rel) = &p.value else {
                return Err(k.invalid(p, "path must be a string"));
            };
            let path = k.path(p, rel)?;
            (repo.read_to_string(&path)?, path.to_string())
        }
        (None, Some(p)) => {
            let YValue::Str(s) = &p.value else {
                return Err(k.invalid(p, "patch must be a string"));
            };
            (s.clone(), k.at(p))
        }
        _ => return Err(k.invalid(n, "a patch needs exactly one of path and patch")),
    };
    let target = match n.get("target") {
        Some(t) => Some(target_of(k, t)?),
        None => None,
    };
    let docs = plain::parse_docs(&origin, &text)?;
    let is_list = docs.first().is_some_and(|d| d.0.is_array());
    if is_list || json6902_only {
        let Some((ops, _)) = docs.into_iter().next() else {
            return Ok(());
        };
        let ops: json_patch::Patch = serde_json::from_value(ops)
            .map_err(|e| k.invalid(n, format!("invalid JSON patch in {origin}: {e}")))?;
        let Some(matcher) = target else {
            return Err(k.invalid(n, "a JSON 6902 patch needs a target"));
        };
        for r in items.iter_mut() {
            if matcher.matches_with(&r.obj.value, Some(&r.orig_name), Some(&r.orig_ns)) {
                crate::budget::patch_bounded(
                    &mut r.obj.value,
                    &ops.0,
                    crate::budget::MAX_OBJECT_BYTES,
                )
                .map_err(|e| {
                    k.invalid(
                        n,
                        format!(
                            "patch {origin} on {}: {e}",
                            crate::kinds::Id::of(&r.obj.value)
                        ),
                    )
                })?;
            }
        }
        return Ok(());
    }
    smp_docs(k, n, &origin, docs, target, items)
}

fn target_of(k: &Kust<'_>, t: &Node) -> Result<Matcher, KustomizeError> {
    let get = |key: &str| -> Option<String> {
        t.get(key).and_then(|v| match &v.value {
            YValue::Str(s) => Some(s.clone()),
            _ => None,
        })
    };
    let target = Target {
        group: get("group"),
        version: get("version"),
        kind: get("kind"),
        name: get("name"),
        namespace: get("namespace"),
        label_selector: get("labelSelector"),
    };
    let ann = get("annotationSelector");
    Matcher::with_annotations(&target, ann.as_deref(), true).map_err(|e| k.invalid(t, e))
}

fn smp_patches(
    k: &Kust<'_>,
    n: &Node,
    origin: &str,
    text: &str,
    target: Option<Matcher>,
    items: &mut [Res],
) -> Result<(), KustomizeError> {
    let docs = plain::parse_docs(origin, text)?;
    smp_docs(k, n, origin, docs, target, items)
}

fn smp_docs(
    k: &Kust<'_>,
    n: &Node,
    origin: &str,
    docs: Vec<(Value, String)>,
    target: Option<Matcher>,
    items: &mut [Res],
) -> Result<(), KustomizeError> {
    for (patch, _) in docs {
        if !patch.is_object() {
            return Err(k.invalid(n, format!("{origin}: a patch must be a mapping or a list")));
        }
        let mut matched = 0;
        for r in items.iter_mut() {
            let hit = match &target {
                Some(m) => m.matches_with(&r.obj.value, Some(&r.orig_name), Some(&r.orig_ns)),
                None => {
                    let id = crate::kinds::Id::of(&r.obj.value);
                    let pid = crate::kinds::Id::of(&patch);
                    id.kind == pid.kind
                        && (id.name == pid.name || r.orig_name == pid.name)
                        && id.group == pid.group
                        && (pid.namespace.is_empty()
                            || pid.namespace == id.namespace
                            || pid.namespace == r.orig_ns)
                }
            };
            if hit {
                matched += 1;
                let mut p = patch.clone();
                if target.is_some()
                    && let Some(md) = p.get_mut("metadata").and_then(Value::as_object_mut)
                {
                    // With an explicit target the patch's own name does not rename objects.
                    md.remove("name");
                    md.remove("namespace");
                }
                strategic_merge(&mut r.obj.value, &p, "");
            }
        }
        if matched == 0 && target.is_none() {
            return Err(k.invalid(
                n,
                format!(
                    "the object patched by {origin}, {}, is not among the resources",
                    crate::kinds::Id::of(&patch)
                ),
            ));
        }
    }
    Ok(())
}

/// The merge key of a list of objects in a strategic merge patch, by field name.
fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "hostAliases" => {
            if field == "hostAliases" {
                "ip"
            } else {
                "name"
            }
        }
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "ports" => {
            if items.iter().all(|i| i.get("containerPort").is_some()) {
                "containerPort"
            } else {
                "port"
            }
        }
        _ => return None,
    };
    Some(key)
}

/// A strategic-merge-style patch: RFC 7386 semantics, except lists of objects with a known
/// merge key (containers and volumes by `name`, ports by port, ...) are merged item by item,
/// and `$patch: delete` removes an item.
fn strategic_merge(target: &mut Value, patch: &Value, field: &str) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, pv) in p {
                if pv.is_null() {
                    t.remove(k);
                    continue;
                }
                match t.get_mut(k) {
                    Some(tv) => strategic_merge(tv, pv, k),
                    None => {
                        let mut v = pv.clone();
                        strip_directives(&mut v);
                        t.insert(k.clone(), v);
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(p))
            if p.iter().all(Value::is_object)
                && t.iter().all(Value::is_object)
                && merge_key(field, p).is_some() =>
        {
            let Some(key) = merge_key(field, p) else {
                return;
            };
            let mut added = Vec::new();
            for item in p {
                let kv = item.get(key);
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match t.iter().position(|ti| ti.get(key) == kv && kv.is_some()) {
                    Some(i) if delete => {
                        t.remove(i);
                    }
                    Some(i) => strategic_merge(&mut t[i], item, ""),
                    None if delete => {}
                    None => {
                        let mut v = item.clone();
                        strip_directives(&mut v);
                        added.push(v);
                    }
                }
            }
            // Items only the patch has go after the existing ones (as kubectl kustomize does).
            t.append(&mut added);
        }
        (t, p) => {
            let mut v = p.clone();
            strip_directives(&mut v);
            *t = v;
        }
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("$patch");
            for c in m.values_mut() {
                strip_directives(c);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Generators

fn generators(
    repo: &dyn RepoFiles,
    k: &Kust<'_>,
    items: &mut Vec<Res>,
) -> Result<(), KustomizeError> {
    let opts = k.get("generatorOptions");
    let global_labels = k.string_map(opts.and_then(|o| o.get("labels")))?;
    let global_annotations = k.string_map(opts.and_then(|o| o.get("annotations")))?;
    let global_no_hash = bool_at(k, opts.and_then(|o| o.get("disableNameSuffixHash")))?;
    let global_immutable = bool_at(k, opts.and_then(|o| o.get("immutable")))?;
    for (field, secret) in [("configMapGenerator", false), ("secretGenerator", true)] {
        for (i, n) in k.list(field)?.into_iter().enumerate() {
            let s = |key: &str| -> Result<Option<String>, KustomizeError> {
                match n.get(key).map(|v| &v.value) {
                    None | Some(YValue::Null) => Ok(None),
                    Some(YValue::Str(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(k.invalid(&n, format!("{key} must be a string"))),
                }
            };
            let Some(name) = s("name")? else {
                return Err(k.invalid(&n, format!("{field}[{i}] needs a name")));
            };
            if let Some(b) = s("behavior")?
                && b != "create"
            {
                return Err(KustomizeError::Unsupported {
                    at: k.at(&n),
                    field: format!("{field}[{i}].behavior: {b}"),
                });
            }
            let mut data: BTreeMap<String, String> = BTreeMap::new();
            let mut put = |key: String, value: String, node: &Node| {
                if data.insert(key.clone(), value).is_some() {
                    return Err(k.invalid(node, format!("key {key:?} is set twice")));
                }
                Ok(())
            };
            for l in list_of(k, n.get("literals"))? {
                let YValue::Str(text) = &l.value else {
                    return Err(k.invalid(&l, "a literal must be a string KEY=VALUE"));
                };
                let Some((key, value)) = text.split_once('=') else {
                    return Err(k.invalid(&l, format!("literal {text:?} is not KEY=VALUE")));
                };
                put(key.to_string(), unquote(value).to_string(), &l)?;
            }
            for f in list_of(k, n.get("files"))? {
                let YValue::Str(text) = &f.value else {
                    return Err(k.invalid(&f, "a file must be a path or KEY=PATH"));
                };
                let (key, rel) = match text.split_once('=') {
                    Some((key, rel)) => (key.to_string(), rel),
                    None => (
                        text.rsplit('/').next().unwrap_or(text).to_string(),
                        text.as_str(),
                    ),
                };
                let p = k.path(&f, rel)?;
                let bytes = repo.read(&p)?;
                let Ok(content) = String::from_utf8(bytes) else {
                    return Err(KustomizeError::Unsupported {
                        at: k.at(&f),
                        field: format!("binary file {} (binaryData)", p.as_str()),
                    });
                };
                put(key, content, &f)?;
            }
            let mut envs = list_of(k, n.get("envs"))?;
            if let Some(e) = n.get("env") {
                envs.push(e.clone());
            }
            for e in envs {
                let YValue::Str(rel) = &e.value else {
                    return Err(k.invalid(&e, "an env file must be a path"));
                };
                let p = k.path(&e, rel)?;
                let text = repo.read_to_string(&p)?;
                for (ln, line) in text.lines().enumerate() {
                    let line = line.trim_start_matches('\u{feff}');
                    if line.trim().is_empty() || line.trim_start().starts_with('#') {
                        continue;
                    }
                    let Some((key, value)) = line.split_once('=') else {
                        return Err(KustomizeError::Invalid {
                            at: format!("{}:{}", p.as_str(), ln + 1),
                            message: format!(
                                "{line:?} is not KEY=VALUE (reading the environment is not supported)"
                            ),
                        });
                    };
                    put(key.trim_start().to_string(), value.to_string(), &e)?;
                }
            }
            let o = n.get("options");
            let mut labels = global_labels.clone();
            labels.extend(k.string_map(o.and_then(|o| o.get("labels")))?);
            let mut annotations = global_annotations.clone();
            annotations.extend(k.string_map(o.and_then(|o| o.get("annotations")))?);
            let no_hash = bool_at(k, o.and_then(|o| o.get("disableNameSuffixHash")))?
                .or(global_no_hash)
                .unwrap_or(false);
            let immutable = bool_at(k, o.and_then(|o| o.get("immutable")))?
                .or(global_immutable)
                .unwrap_or(false);
            let mut md = Map::new();
            md.insert("name".into(), Value::String(name.clone()));
            if let Some(ns) = s("namespace")? {
                md.insert("namespace".into(), Value::String(ns));
            }
            if !labels.is_empty() {
                md.insert("labels".into(), Value::Object(labels));
            }
            if !annotations.is_empty() {
                md.insert("annotations".into(), Value::Object(annotations));
            }
            let mut obj = Map::new();
            obj.insert("apiVersion".into(), "v1".into());
            obj.insert(
                "kind".into(),
                if secret { "Secret" } else { "ConfigMap" }.into(),
            );
            obj.insert("metadata".into(), Value::Object(md));
            let data: Map<String, Value> = data
                .into_iter()
                .map(|(key, v)| {
                    let v = if secret {
                        wrap70(&base64(v.as_bytes()))
                    } else {
                        v
                    };
                    (key, Value::String(v))
                })
                .collect();
            if !data.is_empty() {
                obj.insert("data".into(), Value::Object(data));
            }
            if secret {
                let ty = s("type")?.unwrap_or_else(|| "Opaque".into());
                obj.insert("type".into(), Value::String(ty));
            }
            if immutable {
                obj.insert("immutable".into(), Value::Bool(true));
            }
            let orig_ns = s("namespace")?.unwrap_or_default();
            items.push(Res {
                orig_ns,
                obj: Object {
                    value: Value::Object(obj),
                    origin: format!("{} {field}[{i}]", k.at(&n)),
                },
                orig_name: name,
                needs_hash: !no_hash,
            });
        }
    }
    Ok(())
}

fn list_of(k: &Kust<'_>, n: Option<&Rc<Node>>) -> Result<Vec<Rc<Node>>, KustomizeError> {
    match n.map(|n| (n, &n.value)) {
        None | Some((_, YValue::Null)) => Ok(Vec::new()),
        Some((_, YValue::Seq(items))) => Ok(items.clone()),
        Some((n, _)) => Err(k.invalid(n, "expected a list")),
    }
}

fn bool_at(k: &Kust<'_>, n: Option<&Rc<Node>>) -> Result<Option<bool>, KustomizeError> {
    match n.map(|n| (n, &n.value)) {
        None | Some((_, YValue::Null)) => Ok(None),
        Some((_, YValue::Bool(b))) => Ok(Some(*b)),
        Some((n, _)) => Err(k.invalid(n, "expected true or false")),
    }
}

/// `"a b"` and `'a b'` lose their quotes, as in kustomize literals.
fn unquote(s: &str) -> &str {
    if s.len() >= 2
        && ((s.starts_with('"') && s.ends_with('"')) || (s.starts_with('\'') && s.ends_with('\'')))
    {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

/// kustomize breaks encoded secret values into lines of 70 characters, each ending in a
/// newline, once the value reaches 70 characters.
fn wrap70(s: &str) -> String {
    if s.len() < 70 {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + s.len() / 70 + 1);
    for chunk in s.as_bytes().chunks(70) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out
}

/// Standard base64 with padding (what Kubernetes stores in `Secret.data`).
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Hash suffixes and name references

fn add_hashes(items: &mut [Res]) {
    for r in items.iter_mut().filter(|r| r.needs_hash) {
        let h = content_hash(&r.obj.value);
        let name = format!("{}-{h}", r.name());
        set_path(&mut r.obj.value, &["metadata", "name"], Value::String(name));
    }
}

/// kustomize's name suffix: the first 10 hex digits of the SHA-256 of a JSON encoding (Go's
/// `encoding/json`: sorted keys, HTML-safe escapes) of kind, an empty name, data (and
/// binaryData, stringData, type), with a few digits swapped for letters.
pub fn content_hash(v: &Value) -> String {
    let kind = str_at(v, &["kind"]).unwrap_or("");
    // kustomize 5.5 hashes an empty name (checked against `kubectl kustomize`).
    let name = "";
    let field = |f: &str| v.get(f).cloned().unwrap_or(Value::String(String::new()));
    let mut m = Map::new();
    m.insert("kind".into(), kind.into());
    m.insert("name".into(), name.into());
    m.insert("data".into(), field("data"));
    if kind == "Secret" {
        m.insert("type".into(), field("type"));
        if let Some(sd) = v.get("stringData").filter(|x| x.is_object()) {
            m.insert("stringData".into(), sd.clone());
        }
    } else if let Some(bd) = v.get("binaryData").filter(|x| x.is_object()) {
        m.insert("binaryData".into(), bd.clone());
    }
    let mut enc = String::new();
    go_json(&Value::Object(m), &mut enc);
    let hex = crate::hex(&Sha256::digest(enc.as_bytes()));
    hex.chars()
        .take(10)
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            c => c,
        })
        .collect()
}

fn go_json(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_string(key, out);
                out.push(':');
                if let Some(x) = m.get(key) {
                    go_json(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                go_json(x, out);
            }
            out.push(']');
        }
        Value::String(s) => go_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

fn go_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Points references to ConfigMaps, Secrets and ServiceAccounts (in pod specs and role
/// bindings) at the objects' final names, after prefixes, suffixes and hashes.
fn fix_references(items: &mut [Res]) {
    // (kind, original name) -> [(namespace, final name)]
    let mut renamed: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
    for r in items.iter() {
        if r.orig_name != r.name() {
            renamed
                .entry((r.kind().to_string(), r.orig_name.clone()))
                .or_default()
                .push((r.namespace().to_string(), r.name().to_string()));
        }
    }
    if renamed.is_empty() {
        return;
    }
    let lookup_full = |kind: &str, name: &str, ns: &str| -> Option<(String, String)> {
        let c = renamed.get(&(kind.to_string(), name.to_string()))?;
        c.iter()
            .find(|(n, _)| n == ns)
            .or_else(|| c.first())
            .cloned()
    };
    let lookup = |kind: &str, name: &str, ns: &str| lookup_full(kind, name, ns).map(|(_, new)| new);
    for r in items.iter_mut() {
        let ns = r.namespace().to_string();
        let kind = r.kind().to_string();
        let v = &mut r.obj.value;
        let pod_path: Option<&[&str]> = match kind.as_str() {
            "Pod" => Some(&["spec"]),
            "Deployment"
            | "ReplicaSet"
            | "DaemonSet"
            | "StatefulSet"
            | "Job"
            | "ReplicationController" => Some(&["spec", "template", "spec"]),
            "CronJob" => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
            _ => None,
        };
        if let Some(path) = pod_path
            && let Some(spec) = map_at(v, path, false)
        {
            fix_pod_spec(spec, &|k, n| lookup(k, n, &ns));
        }
        if kind == "RoleBinding" || kind == "ClusterRoleBinding" {
            if let Some(Value::Array(subjects)) = v.get_mut("subjects") {
                for s in subjects {
                    if s.get("kind").and_then(Value::as_str) == Some("ServiceAccount") {
                        let sns = s
                            .get("namespace")
                            .and_then(Value::as_str)
                            .unwrap_or(&ns)
                            .to_string();
                        let found = s
                            .get("name")
                            .and_then(Value::as_str)
                            .and_then(|n| lookup_full("ServiceAccount", n, &sns));
                        if let Some((new_ns, new_name)) = found
                            && let Some(m) = s.as_object_mut()
                        {
                            m.insert("name".into(), Value::String(new_name));
                            if !new_ns.is_empty() {
                                m.insert("namespace".into(), Value::String(new_ns));
                            }
                        }
                    }
                }
            }
            if let Some(role) = v.get_mut("roleRef")
                && let Some(rk) = role.get("kind").and_then(Value::as_str).map(str::to_string)
            {
                rename(role, "name", &rk, &|k, n| lookup(k, n, &ns));
            }
        }
    }
}

type Lookup<'a> = dyn Fn(&str, &str) -> Option<String> + 'a;

fn rename(v: &mut Value, field: &str, kind: &str, lookup: &Lookup<'_>) {
    if let Some(slot) = v.get_mut(field)
        && let Some(old) = slot.as_str()
        && let Some(new) = lookup(kind, old)
    {
        *slot = Value::String(new);
    }
}

fn each(v: Option<&mut Value>) -> impl Iterator<Item = &mut Value> {
    v.and_then(Value::as_array_mut)
        .map(|a| a.iter_mut())
        .into_iter()
        .flatten()
}

fn fix_pod_spec(spec: &mut Map<String, Value>, lookup: &Lookup<'_>) {
    if let Some(sa) = spec.get_mut("serviceAccountName") {
        let mut holder = json!({ "n": sa.clone() });
        rename(&mut holder, "n", "ServiceAccount", lookup);
        *sa = holder["n"].take();
    }
    for s in each(spec.get_mut("imagePullSecrets")) {
        rename(s, "name", "Secret", lookup);
    }
    for vol in each(spec.get_mut("volumes")) {
        if let Some(cm) = vol.get_mut("configMap") {
            rename(cm, "name", "ConfigMap", lookup);
        }
        if let Some(sec) = vol.get_mut("secret") {
            rename(sec, "secretName", "Secret", lookup);
        }
        if let Some(projected) = vol.get_mut("projected") {
            for src in each(projected.get_mut("sources")) {
                if let Some(cm) = src.get_mut("configMap") {
                    rename(cm, "name", "ConfigMap", lookup);
                }
                if let Some(sec) = src.get_mut("secret") {
                    rename(sec, "name", "Secret", lookup);
                }
            }
        }
    }
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        for c in each(spec.get_mut(field)) {
            for e in each(c.get_mut("envFrom")) {
                if let Some(r) = e.get_mut("configMapRef") {
                    rename(r, "name", "ConfigMap", lookup);
                }
                if let Some(r) = e.get_mut("secretRef") {
                    rename(r, "name", "Secret", lookup);
                }
            }
            for e in each(c.get_mut("env")) {
                if let Some(vf) = e.get_mut("valueFrom") {
                    if let Some(r) = vf.get_mut("configMapKeyRef") {
                        rename(r, "name", "ConfigMap", lookup);
                    }
                    if let Some(r) = vf.get_mut("secretKeyRef") {
                        rename(r, "name", "Secret", lookup);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn go_json_escapes_like_encoding_json() {
        let mut s = String::new();
        go_json(&json!({"b": "<&>\n\u{1}", "a": [1, true, null]}), &mut s);
        assert_eq!(s, r#"{"a":[1,true,null],"b":"\u003c\u0026\u003e\n\u0001"}"#);
    }

    #[test]
    fn images_split() {
        use crate::overrides::split_image;
        assert_eq!(split_image("nginx"), ("nginx", None, None));
        assert_eq!(
            split_image("reg:5000/app:1.0@sha256:ab"),
            ("reg:5000/app", Some("1.0"), Some("sha256:ab"))
        );
        assert_eq!(split_image("reg:5000/app"), ("reg:5000/app", None, None));
    }
}
