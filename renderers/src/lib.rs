//! Renders bundles into the Kubernetes objects one cluster should run.
//!
//! [`render`] takes a repository view ([`RepoFiles`]), the fleet, and one (placement,
//! bundle, cluster) and returns the objects in a stable order with the SHA-256 of their
//! canonical YAML. Steps, in order:
//!
//! 1. the bundle's [`Renderer`] ([`plain::PlainYaml`], [`kustomize::Kustomize`],
//!    [`jsonnet::Jsonnet`]);
//! 2. the bundle's `namespace` on namespaced objects that set none;
//! 3. the placement's overrides whose `clusters` select this cluster ([`overrides`]); a
//!    burst-split workload (`replicas:`) loses its `spec.replicas` (the burst controller
//!    owns it);
//! 4. tracking labels `flotilla.dev/fleet`, `flotilla.dev/placement`, `flotilla.dev/bundle`
//!    on each object's `metadata.labels` (nothing else changes);
//! 5. checking every object's identity ([`identity`]: apiVersion, kind, name and namespace
//!    valid per Kubernetes' rules), sorting in kustomize's legacy order ([`kinds`]) and
//!    refusing two objects with the same identity.
//!
//! Pure: no file system, network or clock; everything is read through `RepoFiles`, so the
//! same snapshot always renders byte-identical output.

pub mod budget;
pub mod cache;
pub mod emit;
pub mod identity;
pub mod jsonnet;
pub mod kinds;
pub mod kustomize;
pub mod overrides;
pub mod plain;
pub mod sops;

use flotilla_spec::{Bundle, Cluster, Fleet, Placement, RenderKind, RepoFiles};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use emit::{to_yaml, to_yaml_stream};

pub const LABEL_FLEET: &str = "flotilla.dev/fleet";
pub const LABEL_PLACEMENT: &str = "flotilla.dev/placement";
pub const LABEL_BUNDLE: &str = "flotilla.dev/bundle";

/// A rendered object and where it came from (`file:line:col` when known).
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub value: Value,
    pub origin: String,
}

/// What one render reads besides the repository.
pub struct Context<'a> {
    pub fleet: &'a Fleet,
    pub placement: &'a Placement,
    pub bundle: &'a Bundle,
    pub cluster: &'a Cluster,
    pub options: &'a RenderOptions,
}

/// Inputs that do not come from the fleet file.
#[derive(Debug, Clone, Default)]
pub struct RenderOptions {
    /// Longest a Jsonnet evaluation may take (default [`jsonnet::DEFAULT_TIMEOUT`]).
    pub jsonnet_timeout: Option<std::time::Duration>,
    /// Where Jsonnet runs (default: [`jsonnet::InProcess`]). Not part of a render's inputs:
    /// every evaluator gives the same output.
    pub jsonnet: Option<std::sync::Arc<dyn jsonnet::Evaluator>>,
    /// age identities for SOPS-encrypted files ([`sops`]); without them such a file fails
    /// its render. Fixed for the life of a [`cache::Cache`] (it is not part of a scope).
    pub sops: Option<std::sync::Arc<flotilla_sops::Keys>>,
}

/// One way of turning a bundle into objects.
pub trait Renderer {
    fn render(&self, repo: &dyn RepoFiles, cx: &Context<'_>) -> Result<Vec<Object>, Cause>;
}

/// The output of one render.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// In kustomize's legacy order (see [`kinds`]).
    pub objects: Vec<Value>,
    /// Hex SHA-256 of [`Rendered::yaml`].
    pub hash: String,
    /// The canonical multi-document YAML of `objects`.
    pub yaml: String,
}

/// Why a render failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Cause {
    #[error(transparent)]
    Plain(#[from] plain::PlainError),
    #[error(transparent)]
    Kustomize(#[from] kustomize::KustomizeError),
    #[error(transparent)]
    Override(#[from] overrides::OverrideError),
    #[error(transparent)]
    Jsonnet(#[from] jsonnet::JsonnetError),
    #[error(transparent)]
    Budget(#[from] budget::BudgetError),
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{id} is defined twice: at {first} and at {second}")]
    Duplicate {
        id: String,
        first: String,
        second: String,
    },
}

/// A failed render of one (placement, bundle, cluster).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("placement {placement:?}, bundle {bundle:?}, cluster {cluster:?}: {cause}")]
pub struct RenderError {
    pub placement: String,
    pub bundle: String,
    pub cluster: String,
    pub cause: Box<Cause>,
}

/// Renders `bundle` of `placement` for `cluster`.
pub fn render(
    repo: &dyn RepoFiles,
    fleet: &Fleet,
    placement: &Placement,
    bundle: &Bundle,
    cluster: &Cluster,
    options: &RenderOptions,
) -> Result<Rendered, RenderError> {
    let cx = Context {
        fleet,
        placement,
        bundle,
        cluster,
        options,
    };
    render_cx(repo, &cx).map_err(|cause| RenderError {
        placement: placement.name.clone(),
        bundle: bundle.name.clone(),
        cluster: cluster.name.clone(),
        cause: Box::new(cause),
    })
}

/// One render with a budget of its own (the default [`budget::Limits`]).
fn render_cx(repo: &dyn RepoFiles, cx: &Context<'_>) -> Result<Rendered, Cause> {
    let budget = budget::Budget::new(budget::Limits::default());
    let metered = budget::Metered {
        inner: repo,
        budget: &budget,
    };
    let objects = base(&metered, cx);
    if let Some(e) = budget.exceeded() {
        return Err(e.into());
    }
    let objects = objects?;
    budget.charge_objects(objects.len() as u64, &cx.bundle.path)?;
    let rendered = complete(cx, objects)?;
    budget.charge_output(rendered.yaml.len() as u64, &cx.bundle.path)?;
    Ok(rendered)
}

/// Step 1: the bundle's renderer alone (the only step that reads the repository).
pub(crate) fn base(repo: &dyn RepoFiles, cx: &Context<'_>) -> Result<Vec<Object>, Cause> {
    let kind = flotilla_spec::render_kind(cx.bundle, repo);
    tracing::debug!(bundle = %cx.bundle.name, cluster = %cx.cluster.name, kind = kind.as_str(), "render");
    let repo = sops::Decrypting::new(repo, cx.options.sops.as_deref());
    let mut objects = match kind {
        RenderKind::Yaml => plain::PlainYaml.render(&repo, cx),
        RenderKind::Kustomize => kustomize::Kustomize.render(&repo, cx),
        RenderKind::Jsonnet => jsonnet::Jsonnet.render(&repo, cx),
    }?;
    sops::mark(&mut objects, &repo.decrypted.borrow());
    Ok(objects)
}

/// Steps 2-6, per cluster: namespace, overrides, tracking labels, order, hash.
pub(crate) fn complete(cx: &Context<'_>, mut objects: Vec<Object>) -> Result<Rendered, Cause> {
    if let Some(ns) = &cx.bundle.namespace {
        for o in &mut objects {
            default_namespace(&mut o.value, ns);
        }
    }
    overrides::apply(cx, &mut objects)?;
    for o in &mut objects {
        track(&mut o.value, cx);
    }
    finish(objects)
}

/// Sets `metadata.namespace` on a namespaced object that has none.
pub fn default_namespace(v: &mut Value, ns: &str) {
    let kind = kinds::str_at(v, &["kind"]).unwrap_or("");
    if kinds::is_cluster_scoped(kind) {
        return;
    }
    if let Some(md) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        let has = md
            .get("namespace")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        if !has {
            md.insert("namespace".into(), Value::String(ns.to_string()));
        }
    }
}

fn track(v: &mut Value, cx: &Context<'_>) {
    let Some(md) = v.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let labels = md
        .entry("labels")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !labels.is_object() {
        *labels = Value::Object(serde_json::Map::new());
    }
    if let Some(l) = labels.as_object_mut() {
        l.insert(LABEL_FLEET.into(), cx.fleet.metadata.name.clone().into());
        l.insert(LABEL_PLACEMENT.into(), cx.placement.name.clone().into());
        l.insert(LABEL_BUNDLE.into(), cx.bundle.name.clone().into());
    }
}

/// Checks every object's identity ([`identity`]), sorts, refuses duplicates, and hashes.
pub fn finish(objects: Vec<Object>) -> Result<Rendered, Cause> {
    for o in &objects {
        identity::check(&o.value).map_err(|message| Cause::Invalid {
            origin: o.origin.clone(),
            message,
        })?;
    }
    let mut keyed: Vec<(kinds::Id, Object)> = objects
        .into_iter()
        .map(|o| (kinds::Id::of(&o.value), o))
        .collect();
    let mut seen: std::collections::HashMap<_, &str> = std::collections::HashMap::new();
    for (id, o) in &keyed {
        if let Some(first) = seen.insert(id.identity(), &o.origin) {
            return Err(Cause::Duplicate {
                id: id.to_string(),
                first: first.to_string(),
                second: o.origin.clone(),
            });
        }
    }
    keyed.sort_by(|a, b| kinds::legacy_order(&a.0, &b.0));
    let objects: Vec<Value> = keyed.into_iter().map(|(_, o)| o.value).collect();
    let yaml = to_yaml_stream(&objects);
    let hash = hex(&Sha256::digest(yaml.as_bytes()));
    Ok(Rendered {
        objects,
        hash,
        yaml,
    })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
