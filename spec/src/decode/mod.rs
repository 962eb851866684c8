//! From the positioned YAML tree to the typed model, collecting *every* error on the way.
//!
//! Each decoder takes a node and its JSON pointer and returns `Some(value)` or records
//! errors and returns `None`; a parent carries on with its other fields either way, so one
//! run reports everything that is wrong. Mappings are read through [`Obj`], which remembers
//! which keys were asked for and reports the others as unknown, with a suggestion.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use crate::diag::{Sink, suggestion};
use crate::model::*;
use crate::types::{self, Duration, Pattern, Quantity, RepoPath, Schedule, SemverRange, TimeZone};
use crate::yaml::{Key, Node, Value};

mod images;
mod notifications;
mod placements;
mod schedules;
mod teams;

use images::image_policy;
use placements::placement;
pub use schedules::check_store;
use schedules::{backup, burst_pool, workflow};
use teams::team;

/// Decoding state: the diagnostics, plus what validation must know about dropped items.
#[derive(Default)]
pub(crate) struct Cx {
    pub sink: Sink,
    /// For lists where some items failed to decode: source index of each kept item.
    pub kept: HashMap<String, Vec<usize>>,
    /// For lists where some items failed to decode: the names those items had, so that
    /// references to them are not reported a second time as unknown.
    pub broken: HashMap<String, Vec<String>>,
}

impl Cx {
    pub(crate) fn error(
        &mut self,
        pos: crate::yaml::Pos,
        path: &Ptr<'_>,
        message: impl Into<String>,
    ) {
        self.sink.error(pos, &path.to_string(), message);
    }
}

/// A JSON pointer built lazily: decoding makes one for every field it reads, but only an
/// error turns it into a string.
#[derive(Clone, Copy)]
pub(crate) struct Ptr<'a> {
    parent: Option<&'a Ptr<'a>>,
    seg: Seg<'a>,
}

#[derive(Clone, Copy)]
enum Seg<'a> {
    Root,
    Key(&'a str),
    Index(usize),
}

impl Ptr<'static> {
    pub(crate) const ROOT: Ptr<'static> = Ptr {
        parent: None,
        seg: Seg::Root,
    };
}

impl std::fmt::Display for Ptr<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(parent) = self.parent {
            parent.fmt(f)?;
        }
        match self.seg {
            Seg::Root => Ok(()),
            Seg::Index(i) => write!(f, "/{i}"),
            Seg::Key(k) if k.contains(['~', '/']) => {
                write!(f, "/{}", k.replace('~', "~0").replace('/', "~1"))
            }
            Seg::Key(k) => write!(f, "/{k}"),
        }
    }
}

fn child<'a>(path: &'a Ptr<'a>, key: &'a str) -> Ptr<'a> {
    Ptr {
        parent: Some(path),
        seg: Seg::Key(key),
    }
}

fn index<'a>(path: &'a Ptr<'a>, i: usize) -> Ptr<'a> {
    Ptr {
        parent: Some(path),
        seg: Seg::Index(i),
    }
}

/// A mapping being read. Call [`Obj::finish`] once every known key has been asked for.
pub(crate) struct Obj<'a> {
    node: &'a Node,
    entries: &'a [(Key, Rc<Node>)],
    what: &'static str,
    path: &'a Ptr<'a>,
    known: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    pub(crate) fn new(
        cx: &mut Cx,
        node: &'a Node,
        path: &'a Ptr<'a>,
        what: &'static str,
    ) -> Option<Obj<'a>> {
        match &node.value {
            Value::Map(entries) => Some(Obj {
                node,
                entries,
                what,
                path,
                known: Vec::with_capacity(8),
            }),
            Value::Null => Some(Obj {
                node,
                entries: &[],
                what,
                path,
                known: Vec::with_capacity(8),
            }),
            _ => {
                cx.error(
                    node.pos,
                    path,
                    format!("expected {what} (a mapping), found {}", node.type_name()),
                );
                None
            }
        }
    }

    fn lookup(&mut self, key: &'static str) -> Option<&'a Rc<Node>> {
        self.known.push(key);
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// An optional field; `null` counts as absent.
    pub(crate) fn opt<T>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        f: impl FnOnce(&mut Cx, &Node, &Ptr<'_>) -> Option<T>,
    ) -> Option<T> {
        let node = self.lookup(key)?;
        if node.value == Value::Null {
            return None;
        }
        f(cx, node, &child(self.path, key))
    }

    /// A required field: reports it missing at the mapping.
    pub(crate) fn req<T>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        f: impl FnOnce(&mut Cx, &Node, &Ptr<'_>) -> Option<T>,
    ) -> Option<T> {
        match self.lookup(key) {
            Some(node) if node.value != Value::Null => f(cx, node, &child(self.path, key)),
            Some(node) => {
                cx.error(
                    node.pos,
                    &child(self.path, key),
                    format!("{key:?} of {} must not be empty", self.what),
                );
                None
            }
            None => {
                cx.error(
                    self.node.pos,
                    self.path,
                    format!("{} is missing the required key {key:?}", self.what),
                );
                None
            }
        }
    }

    /// An optional list (absent = empty); items that fail to decode are dropped after reporting.
    pub(crate) fn list<T>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        f: impl FnMut(&mut Cx, &Node, &Ptr<'_>) -> Option<T>,
    ) -> Vec<T> {
        self.opt(cx, key, |cx, n, p| Some(list(cx, n, p, f)))
            .unwrap_or_default()
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.entries
            .iter()
            .any(|(k, v)| k.name == key && v.value != Value::Null)
    }

    pub(crate) fn pos(&self) -> crate::yaml::Pos {
        self.node.pos
    }

    pub(crate) fn path(&self) -> &'a Ptr<'a> {
        self.path
    }

    /// Reports keys nobody asked for.
    pub(crate) fn finish(self, cx: &mut Cx) {
        for (k, _) in self.entries {
            if !self.known.contains(&k.name.as_str()) {
                let hint = suggestion(&k.name, self.known.iter().copied());
                let valid = if hint.is_empty() {
                    let mut keys = self.known.clone();
                    keys.sort_unstable();
                    format!("; expected one of: {}", keys.join(", "))
                } else {
                    hint
                };
                cx.error(
                    k.pos,
                    &child(self.path, &k.name),
                    format!("unknown key {:?} in {}{valid}", k.name, self.what),
                );
            }
        }
    }
}

pub(crate) fn list<T>(
    cx: &mut Cx,
    node: &Node,
    path: &Ptr<'_>,
    mut f: impl FnMut(&mut Cx, &Node, &Ptr<'_>) -> Option<T>,
) -> Vec<T> {
    match &node.value {
        Value::Seq(items) => {
            let mut out = Vec::with_capacity(items.len());
            let mut kept = Vec::with_capacity(items.len());
            for (i, n) in items.iter().enumerate() {
                match f(cx, n, &index(path, i)) {
                    Some(v) => {
                        out.push(v);
                        kept.push(i);
                    }
                    None => {
                        if let Some(Value::Str(name)) = n.get("name").map(|n| &n.value) {
                            cx.broken
                                .entry(path.to_string())
                                .or_default()
                                .push(name.clone());
                        }
                    }
                }
            }
            if kept.len() != items.len() {
                cx.kept.insert(path.to_string(), kept);
            }
            out
        }
        Value::Null => Vec::new(),
        _ => {
            let what = match path.seg {
                Seg::Key(k) => format!(" for {k:?}"),
                _ => String::new(),
            };
            cx.error(
                node.pos,
                path,
                format!("expected a list{what}, found {}", node.type_name()),
            );
            Vec::new()
        }
    }
}

pub(crate) fn string(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<String> {
    match &node.value {
        Value::Str(s) => Some(s.clone()),
        Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
            cx.error(
                node.pos,
                path,
                format!(
                    "expected a string, found {} (quote it to keep it a string)",
                    node.type_name()
                ),
            );
            None
        }
        _ => {
            cx.error(
                node.pos,
                path,
                format!("expected a string, found {}", node.type_name()),
            );
            None
        }
    }
}

fn checked<T>(
    cx: &mut Cx,
    node: &Node,
    path: &Ptr<'_>,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<T> {
    let s = string(cx, node, path)?;
    match parse(&s) {
        Ok(v) => Some(v),
        Err(msg) => {
            cx.error(node.pos, path, msg);
            None
        }
    }
}

pub(crate) fn name(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<String> {
    checked(cx, node, path, |s| {
        types::check_name(s).map(|_| s.to_string())
    })
}

fn bool_(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<bool> {
    match &node.value {
        Value::Bool(b) => Some(*b),
        Value::Str(s) if matches!(s.as_str(), "yes" | "no" | "on" | "off" | "y" | "n") => {
            cx.error(
                node.pos,
                path,
                format!("expected true or false, found the string {s:?}"),
            );
            None
        }
        _ => {
            cx.error(
                node.pos,
                path,
                format!("expected true or false, found {}", node.type_name()),
            );
            None
        }
    }
}

fn uint(cx: &mut Cx, node: &Node, path: &Ptr<'_>, min: u32, max: u32) -> Option<u32> {
    match &node.value {
        Value::Int(i) if *i >= i64::from(min) && *i <= i64::from(max) => u32::try_from(*i).ok(),
        Value::Int(i) => {
            cx.error(
                node.pos,
                path,
                format!("expected an integer from {min} to {max}, found {i}"),
            );
            None
        }
        _ => {
            cx.error(
                node.pos,
                path,
                format!(
                    "expected an integer from {min} to {max}, found {}",
                    node.type_name()
                ),
            );
            None
        }
    }
}

fn number(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<f64> {
    match &node.value {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) if f.is_finite() => Some(*f),
        _ => {
            cx.error(
                node.pos,
                path,
                format!("expected a finite number, found {}", node.type_name()),
            );
            None
        }
    }
}

fn enumeration<T: Copy>(
    cx: &mut Cx,
    node: &Node,
    path: &Ptr<'_>,
    options: &[(&'static str, T)],
) -> Option<T> {
    let s = string(cx, node, path)?;
    if let Some((_, v)) = options.iter().find(|(n, _)| *n == s) {
        return Some(*v);
    }
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let hint = suggestion(&s, names.iter().copied());
    cx.error(
        node.pos,
        path,
        format!("expected one of {}, found {s:?}{hint}", names.join(", ")),
    );
    None
}

fn string_map(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<BTreeMap<String, String>> {
    let Value::Map(entries) = &node.value else {
        if node.value == Value::Null {
            return Some(BTreeMap::new());
        }
        cx.error(
            node.pos,
            path,
            format!("expected a mapping of strings, found {}", node.type_name()),
        );
        return None;
    };
    let mut out = BTreeMap::new();
    for (k, v) in entries {
        let p = child(path, &k.name);
        let value = match &v.value {
            Value::Str(s) => s.clone(),
            Value::Null => String::new(),
            Value::Int(_) | Value::Float(_) | Value::Bool(_) => {
                cx.error(
                    v.pos,
                    &p,
                    format!("expected a string, found {} (quote it)", v.type_name()),
                );
                continue;
            }
            _ => {
                cx.error(
                    v.pos,
                    &p,
                    format!("expected a string, found {}", v.type_name()),
                );
                continue;
            }
        };
        out.insert(k.name.clone(), value);
    }
    Some(out)
}

fn labels(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Labels> {
    let map = string_map(cx, node, path)?;
    if let Value::Map(entries) = &node.value {
        for (k, v) in entries {
            if let Err(e) = types::check_label_key(&k.name) {
                cx.error(k.pos, &child(path, &k.name), e);
            }
            if let Some(val) = map.get(&k.name)
                && let Err(e) = types::check_label_value(val)
            {
                cx.error(v.pos, &child(path, &k.name), e);
            }
        }
    }
    Some(map)
}

fn names(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Vec<String>> {
    Some(list(cx, node, path, string))
}

pub(crate) fn fleet(cx: &mut Cx, node: &Node) -> Option<Fleet> {
    let mut o = Obj::new(cx, node, &Ptr::ROOT, "the fleet")?;
    let api_version = o.req(cx, "apiVersion", |cx, n, p| {
        let s = string(cx, n, p)?;
        if s != API_VERSION {
            cx.error(
                n.pos,
                p,
                format!("unsupported apiVersion {s:?}; expected {API_VERSION:?}"),
            );
        }
        Some(s)
    });
    let kind = o.req(cx, "kind", |cx, n, p| {
        let s = string(cx, n, p)?;
        if s != KIND {
            cx.error(
                n.pos,
                p,
                format!("unsupported kind {s:?}; expected {KIND:?}"),
            );
        }
        Some(s)
    });
    let metadata = o.req(cx, "metadata", metadata);
    let settings = o.opt(cx, "settings", settings);
    let clusters = o.list(cx, "clusters", cluster);
    let bundles = o.list(cx, "bundles", bundle);
    let baselines = o.list(cx, "baselines", baseline);
    let teams = o.list(cx, "teams", team);
    let placements = o.list(cx, "placements", placement);
    let burst_pools = o.list(cx, "burstPools", burst_pool);
    let workflows = o.list(cx, "workflows", workflow);
    let backups = o.list(cx, "backups", backup);
    let image_policies = o.list(cx, "imagePolicies", image_policy);
    let notifications = o
        .opt(cx, "notifications", notifications::notifications)
        .unwrap_or_default();
    o.finish(cx);
    Some(Fleet {
        api_version: api_version?,
        kind: kind?,
        metadata: metadata?,
        settings: settings.unwrap_or_default(),
        clusters,
        bundles,
        baselines,
        teams,
        placements,
        burst_pools,
        workflows,
        backups,
        image_policies,
        notifications,
    })
}

fn metadata(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Metadata> {
    let mut o = Obj::new(cx, node, path, "metadata")?;
    let n = o.req(cx, "name", name);
    let l = o.opt(cx, "labels", labels).unwrap_or_default();
    let a = o.opt(cx, "annotations", string_map).unwrap_or_default();
    o.finish(cx);
    Some(Metadata {
        name: n?,
        labels: l,
        annotations: a,
    })
}

fn duration(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Duration> {
    if let Value::Int(i) = node.value {
        cx.error(
            node.pos,
            path,
            format!("expected a duration with a unit, e.g. {i}s or {i}m"),
        );
        return None;
    }
    checked(cx, node, path, Duration::parse)
}

fn schedule(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Schedule> {
    checked(cx, node, path, Schedule::parse)
}

fn timezone(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<TimeZone> {
    checked(cx, node, path, TimeZone::parse)
}

fn repo_path(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<RepoPath> {
    checked(cx, node, path, RepoPath::parse)
}

fn settings(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Settings> {
    let mut o = Obj::new(cx, node, path, "settings")?;
    let d = Settings::default();
    let s = Settings {
        drift_interval: o
            .opt(cx, "driftInterval", duration)
            .unwrap_or(d.drift_interval),
        prune: o.opt(cx, "prune", bool_).unwrap_or(d.prune),
        self_heal: o.opt(cx, "selfHeal", bool_).unwrap_or(d.self_heal),
        verify_commits: o
            .opt(cx, "verifyCommits", bool_)
            .unwrap_or(d.verify_commits),
    };
    o.finish(cx);
    Some(s)
}

/// `flotilla-cluster-` (17 characters) plus the name must be a namespace name (63).
const MAX_AGENT_CLUSTER_NAME: usize = 63 - 17;

fn cluster(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Cluster> {
    let mut o = Obj::new(cx, node, path, "a cluster")?;
    let connect = o
        .opt(cx, "connect", |cx, n, p| {
            enumeration(
                cx,
                n,
                p,
                &[("direct", Connect::Direct), ("agent", Connect::Agent)],
            )
        })
        .unwrap_or_default();
    let n = o.req(cx, "name", |cx, n, p| {
        let s = name(cx, n, p)?;
        // Its agent's namespace on the management cluster is `flotilla-cluster-<name>`.
        if connect == Connect::Agent && s.len() > MAX_AGENT_CLUSTER_NAME {
            cx.error(
                n.pos,
                p,
                format!(
                    "a cluster with connect: agent has a name of at most {MAX_AGENT_CLUSTER_NAME} characters (its namespace on the management cluster is flotilla-cluster-<name>); {s:?} has {}",
                    s.len()
                ),
            );
            return None;
        }
        Some(s)
    });
    let l = o.opt(cx, "labels", labels).unwrap_or_default();
    let kind = o
        .opt(cx, "kind", |cx, n, p| {
            enumeration(
                cx,
                n,
                p,
                &[
                    ("registered", ClusterKind::Registered),
                    ("edge", ClusterKind::Edge),
                    ("managed", ClusterKind::Managed),
                ],
            )
        })
        .unwrap_or_default();
    let context = o.opt(cx, "context", |cx, n, p| {
        let s = string(cx, n, p)?;
        if connect == Connect::Agent {
            cx.error(
                n.pos,
                p,
                "a cluster with connect: agent is never contacted by the daemon, so it has no context: remove it",
            );
            return None;
        }
        Some(s)
    });
    let capacity = o.opt(cx, "capacity", capacity);
    o.finish(cx);
    Some(Cluster {
        name: n?,
        labels: l,
        kind,
        connect,
        context,
        capacity,
    })
}

fn capacity(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Capacity> {
    let mut o = Obj::new(cx, node, path, "capacity")?;
    let quantity = |cx: &mut Cx, n: &Node, p: &Ptr<'_>| {
        let text = match &n.value {
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            _ => string(cx, n, p)?,
        };
        match Quantity::parse(&text) {
            Ok(q) => Some(q),
            Err(e) => {
                cx.error(n.pos, p, e);
                None
            }
        }
    };
    let c = Capacity {
        cpu: o.opt(cx, "cpu", quantity),
        memory: o.opt(cx, "memory", quantity),
        pods: o.opt(cx, "pods", |cx, n, p| uint(cx, n, p, 0, 1_000_000)),
        replicas: o.opt(cx, "replicas", |cx, n, p| uint(cx, n, p, 0, 1_000_000)),
    };
    o.finish(cx);
    Some(c)
}

fn bundle(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Bundle> {
    let mut o = Obj::new(cx, node, path, "a bundle")?;
    let n = o.req(cx, "name", name);
    let p = o.req(cx, "path", repo_path);
    let render = o.opt(cx, "render", |cx, n, p| {
        enumeration(
            cx,
            n,
            p,
            &[
                ("yaml", RenderKind::Yaml),
                ("jsonnet", RenderKind::Jsonnet),
                ("kustomize", RenderKind::Kustomize),
            ],
        )
    });
    let namespace = o.opt(cx, "namespace", name);
    let jsonnet = o.opt(cx, "jsonnet", jsonnet_options);
    o.finish(cx);
    Some(Bundle {
        name: n?,
        path: p?,
        render,
        namespace,
        jsonnet,
    })
}

fn jsonnet_options(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<JsonnetOptions> {
    let mut o = Obj::new(cx, node, path, "jsonnet options")?;
    let ext_vars = o.opt(cx, "extVars", string_map).unwrap_or_default();
    let tlas = o
        .opt(cx, "tlas", |cx, n, p| {
            let Value::Map(entries) = &n.value else {
                cx.error(
                    n.pos,
                    p,
                    format!("expected a mapping of arguments, found {}", n.type_name()),
                );
                return None;
            };
            Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            )
        })
        .unwrap_or_default();
    o.finish(cx);
    Some(JsonnetOptions { ext_vars, tlas })
}

fn baseline(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Baseline> {
    let mut o = Obj::new(cx, node, path, "a baseline")?;
    let n = o.req(cx, "name", name);
    let version = o.req(cx, "version", string);
    let bundles = o.req(cx, "bundles", names);
    o.finish(cx);
    Some(Baseline {
        name: n?,
        version: version?,
        bundles: bundles?,
    })
}

pub(crate) fn selector(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Selector> {
    let mut o = Obj::new(cx, node, path, "a cluster selector")?;
    let match_labels = o.opt(cx, "matchLabels", labels).unwrap_or_default();
    let match_expressions = o.list(cx, "matchExpressions", requirement);
    let names = o.opt(cx, "names", names).unwrap_or_default();
    o.finish(cx);
    Some(Selector {
        match_labels,
        match_expressions,
        names,
    })
}

fn requirement(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Requirement> {
    let mut o = Obj::new(cx, node, path, "a match expression")?;
    let key = o.req(cx, "key", |cx, n, p| {
        checked(cx, n, p, |s| {
            types::check_label_key(s).map(|_| s.to_string())
        })
    });
    let operator = o.req(cx, "operator", |cx, n, p| {
        enumeration(
            cx,
            n,
            p,
            &[
                ("In", Operator::In),
                ("NotIn", Operator::NotIn),
                ("Exists", Operator::Exists),
                ("DoesNotExist", Operator::DoesNotExist),
            ],
        )
    });
    let values = o
        .opt(cx, "values", |cx, n, p| {
            Some(list(cx, n, p, |cx, n, p| {
                checked(cx, n, p, |s| {
                    types::check_label_value(s).map(|_| s.to_string())
                })
            }))
        })
        .unwrap_or_default();
    if let Some(op) = operator {
        match op {
            Operator::In | Operator::NotIn if values.is_empty() => {
                cx.error(
                    o.pos(),
                    o.path(),
                    format!("operator {op:?} needs a non-empty \"values\" list"),
                );
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                cx.error(
                    o.pos(),
                    o.path(),
                    format!("operator {op:?} takes no \"values\""),
                );
            }
            _ => {}
        }
    }
    o.finish(cx);
    Some(Requirement {
        key: key?,
        operator: operator?,
        values,
    })
}
