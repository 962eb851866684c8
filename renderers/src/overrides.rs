//! Per-cluster overrides from a placement, applied after the bundle renders: RFC 6902 JSON
//! patches, RFC 7386 merge patches and image changes on the objects a [`Target`] selects,
//! and the burst-pool workload (whose `spec.replicas` the render leaves out).
//!
//! An override applies when its `clusters` selector matches the cluster (with the labels
//! selectors see: the cluster's labels plus `name` and `kind`) and its `bundle` is unset or
//! names the bundle being rendered. A patch whose target selects nothing, or an image no
//! container uses, is an error, except for an override without `bundle` on a placement with
//! several bundles (it is meant for whichever bundle has the object).

use flotilla_spec::selector::{LabelRequirement, parse_label_selector};
use flotilla_spec::{Override, Target};
use serde_json::Value;

use crate::kinds::{Id, split_api_version, str_at};
use crate::{Context, Object};

/// Why an override could not be applied. Indexes are 0-based, as in the plan.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OverrideError {
    #[error("overrides[{index}].patches[{patch}]: the target ({target}) matches no object")]
    NoMatch {
        index: usize,
        patch: usize,
        target: String,
    },
    #[error("overrides[{index}].patches[{patch}]: {message}")]
    Invalid {
        index: usize,
        patch: usize,
        message: String,
    },
    #[error("overrides[{index}].patches[{patch}] on {object} (from {origin}): {message}")]
    Patch {
        index: usize,
        patch: usize,
        object: String,
        origin: String,
        message: String,
    },
    #[error("overrides[{index}].images[{image}]: no container uses image {name:?}")]
    NoImage {
        index: usize,
        image: usize,
        name: String,
    },
    #[error("replicas: the workload {workload} is not in the bundle")]
    NoWorkload { workload: String },
}

/// Applies the placement's overrides (and the burst split's ownership) that concern this
/// render.
pub fn apply(cx: &Context<'_>, objects: &mut [Object]) -> Result<(), OverrideError> {
    let labels = cx.cluster.selector_labels();
    let bundles = flotilla_spec::placement_bundles(cx.fleet, cx.placement).len();
    for (index, o) in cx.placement.overrides.iter().enumerate() {
        if !o.clusters.matches(&cx.cluster.name, &labels) {
            continue;
        }
        if o.bundle.as_ref().is_some_and(|b| b != &cx.bundle.name) {
            continue;
        }
        let strict = o.bundle.is_some() || bundles <= 1;
        apply_one(index, o, strict, objects)?;
    }
    // A burst-split workload's `spec.replicas` belongs to the burst controller (field manager
    // `flotilla-burst`): the render leaves it out, so Git's apply never owns or resets it and
    // a replica change is never a new revision.
    if let Some(split) = &cx.placement.replicas
        && split.bundle == cx.bundle.name
    {
        let w = &split.workload;
        let mut found = false;
        for obj in objects.iter_mut() {
            let id = Id::of(&obj.value);
            if id.kind == w.kind
                && id.name == w.name
                && w.namespace.as_ref().is_none_or(|ns| ns == &id.namespace)
                && let Some(spec) = obj.value.get_mut("spec").and_then(Value::as_object_mut)
            {
                spec.remove("replicas");
                found = true;
            }
        }
        if !found {
            let workload = match &w.namespace {
                Some(ns) => format!("{}/{ns}/{}", w.kind, w.name),
                None => format!("{}/{}", w.kind, w.name),
            };
            return Err(OverrideError::NoWorkload { workload });
        }
    }
    Ok(())
}

fn apply_one(
    index: usize,
    o: &Override,
    strict: bool,
    objects: &mut [Object],
) -> Result<(), OverrideError> {
    for (patch, p) in o.patches.iter().enumerate() {
        let matcher = Matcher::new(&p.target, false).map_err(|message| OverrideError::Invalid {
            index,
            patch,
            message,
        })?;
        let ops: Option<json_patch::Patch> = match &p.json_patch {
            Some(ops) => {
                let v = serde_json::to_value(ops).map_err(|e| OverrideError::Invalid {
                    index,
                    patch,
                    message: e.to_string(),
                })?;
                Some(
                    serde_json::from_value(v).map_err(|e| OverrideError::Invalid {
                        index,
                        patch,
                        message: format!("invalid JSON patch: {e}"),
                    })?,
                )
            }
            None => None,
        };
        let mut matched = 0;
        for obj in objects.iter_mut() {
            if !matcher.matches(&obj.value) {
                continue;
            }
            matched += 1;
            if let Some(ops) = &ops {
                crate::budget::patch_bounded(
                    &mut obj.value,
                    &ops.0,
                    crate::budget::MAX_OBJECT_BYTES,
                )
                .map_err(|message| OverrideError::Patch {
                    index,
                    patch,
                    object: Id::of(&obj.value).to_string(),
                    origin: obj.origin.clone(),
                    message,
                })?;
            }
            if let Some(m) = &p.merge_patch {
                json_patch::merge(&mut obj.value, m);
            }
            // The identity check before hashing names the patch as well as the file.
            obj.origin = format!(
                "{}, patched by overrides[{index}].patches[{patch}]",
                obj.origin
            );
        }
        if matched == 0 && strict {
            return Err(OverrideError::NoMatch {
                index,
                patch,
                target: describe(&p.target),
            });
        }
    }
    for (image, im) in o.images.iter().enumerate() {
        let mut n = 0;
        for obj in objects.iter_mut() {
            n += set_images(
                &mut obj.value,
                &im.name,
                im.new_name.as_deref(),
                im.tag.as_deref(),
                im.digest.as_deref(),
            );
        }
        if n == 0 && strict {
            return Err(OverrideError::NoImage {
                index,
                image,
                name: im.name.clone(),
            });
        }
    }
    Ok(())
}

/// A target as text: `kind=Deployment, name=web`.
pub fn describe(t: &Target) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("group", &t.group),
        ("version", &t.version),
        ("kind", &t.kind),
        ("name", &t.name),
        ("namespace", &t.namespace),
        ("labelSelector", &t.label_selector),
    ] {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    }
    if parts.is_empty() {
        "everything".into()
    } else {
        parts.join(", ")
    }
}

/// Selects objects by group/version/kind/name/namespace and a label selector.
pub struct Matcher {
    fields: Vec<(Field, FieldMatch)>,
    labels: Vec<LabelRequirement>,
    annotations: Vec<LabelRequirement>,
}

#[derive(Clone, Copy)]
enum Field {
    Group,
    Version,
    Kind,
    Name,
    Namespace,
}

enum FieldMatch {
    Exact(String),
    Regex(regex::Regex),
}

impl Matcher {
    /// `regex`: match names and kinds as anchored regular expressions (kustomize targets).
    pub fn new(t: &Target, regex: bool) -> Result<Matcher, String> {
        Matcher::with_annotations(t, None, regex)
    }

    pub fn with_annotations(
        t: &Target,
        annotation_selector: Option<&str>,
        regex: bool,
    ) -> Result<Matcher, String> {
        let mut fields = Vec::new();
        for (f, v) in [
            (Field::Group, &t.group),
            (Field::Version, &t.version),
            (Field::Kind, &t.kind),
            (Field::Name, &t.name),
            (Field::Namespace, &t.namespace),
        ] {
            if let Some(v) = v {
                let m = if regex {
                    FieldMatch::Regex(
                        regex::Regex::new(&format!("^(?:{v})$"))
                            .map_err(|e| format!("invalid pattern {v:?}: {e}"))?,
                    )
                } else {
                    FieldMatch::Exact(v.clone())
                };
                fields.push((f, m));
            }
        }
        let labels = match &t.label_selector {
            Some(s) => parse_label_selector(s)?,
            None => Vec::new(),
        };
        let annotations = match annotation_selector {
            Some(s) => parse_label_selector(s)?,
            None => Vec::new(),
        };
        Ok(Matcher {
            fields,
            labels,
            annotations,
        })
    }

    pub fn matches(&self, v: &Value) -> bool {
        self.matches_with(v, None, None)
    }

    /// Like [`Matcher::matches`], also accepting an earlier name or namespace of the object
    /// (kustomize matches targets against original and current names).
    pub fn matches_with(&self, v: &Value, orig_name: Option<&str>, orig_ns: Option<&str>) -> bool {
        let (group, version) = split_api_version(str_at(v, &["apiVersion"]).unwrap_or(""));
        for (f, m) in &self.fields {
            let actual = match f {
                Field::Group => group,
                Field::Version => version,
                Field::Kind => str_at(v, &["kind"]).unwrap_or(""),
                Field::Name => str_at(v, &["metadata", "name"]).unwrap_or(""),
                Field::Namespace => str_at(v, &["metadata", "namespace"]).unwrap_or(""),
            };
            let alt = match f {
                Field::Name => orig_name,
                Field::Namespace => orig_ns,
                _ => None,
            };
            let test = |x: &str| match m {
                FieldMatch::Exact(s) => s == x,
                FieldMatch::Regex(r) => r.is_match(x),
            };
            let ok = test(actual) || alt.is_some_and(test);
            if !ok {
                return false;
            }
        }
        // Look labels up in place: no copy of the object's maps per candidate.
        let all_match = |reqs: &[LabelRequirement], key: &str| {
            let map = v
                .get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_object);
            reqs.iter()
                .all(|r| r.matches_with(|k| map.and_then(|m| m.get(k)).and_then(Value::as_str)))
        };
        all_match(&self.labels, "labels") && all_match(&self.annotations, "annotations")
    }
}

/// Splits an image reference into name, tag and digest (`reg:5000/app:1.0@sha256:..`).
pub fn split_image(s: &str) -> (&str, Option<&str>, Option<&str>) {
    let (rest, digest) = match s.split_once('@') {
        Some((a, d)) => (a, Some(d)),
        None => (s, None),
    };
    match rest.rfind(':') {
        Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..]), digest),
        _ => (rest, None, digest),
    }
}

/// Rewrites `image` fields of containers, init containers and ephemeral containers anywhere
/// in the object whose image name is `name`, like kustomize's `images`. Returns how many.
pub fn set_images(
    v: &mut Value,
    name: &str,
    new_name: Option<&str>,
    new_tag: Option<&str>,
    digest: Option<&str>,
) -> usize {
    let mut n = 0;
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if matches!(
                    k.as_str(),
                    "containers" | "initContainers" | "ephemeralContainers"
                ) && let Value::Array(items) = child
                {
                    for c in items.iter_mut() {
                        if let Some(img) = c.get_mut("image")
                            && let Some(s) = img.as_str()
                            && let Some(new) = new_image(s, name, new_name, new_tag, digest)
                        {
                            *img = Value::String(new);
                            n += 1;
                        }
                    }
                }
                n += set_images(child, name, new_name, new_tag, digest);
            }
        }
        Value::Array(items) => {
            for c in items {
                n += set_images(c, name, new_name, new_tag, digest);
            }
        }
        _ => {}
    }
    n
}

fn new_image(
    current: &str,
    name: &str,
    new_name: Option<&str>,
    new_tag: Option<&str>,
    new_digest: Option<&str>,
) -> Option<String> {
    let (n, tag, digest) = split_image(current);
    if n != name {
        return None;
    }
    let mut out = new_name.filter(|s| !s.is_empty()).unwrap_or(n).to_string();
    let (tag, digest) = match (
        new_tag.filter(|s| !s.is_empty()),
        new_digest.filter(|s| !s.is_empty()),
    ) {
        (Some(t), Some(d)) => (Some(t), Some(d)),
        (Some(t), None) => (Some(t), None),
        (None, Some(d)) => (None, Some(d)),
        (None, None) => (tag, digest),
    };
    if let Some(t) = tag {
        out.push(':');
        out.push_str(t);
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    Some(out)
}
