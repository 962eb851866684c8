//! Capacity estimation: how many more pods of one shape a cluster can take. The one
//! estimator behind workflow placement (`run: one` picks the cluster with the most room) and
//! burst pools (each cluster's room for a workload), in the manner of Karmada's general
//! replica estimator: per schedulable node, `allocatable - requested` divided by the pod's
//! requests, rounded down, summed over nodes; capped by what fleet.yaml declares.
//!
//! Pure: [`Observed::from_objects`] takes Node and Pod objects as the API serves them (the
//! caller lists them, e.g. with [`observe`]); nothing here reads a clock or a cluster except
//! [`observe`], a thin async reader over the [`Cluster`] trait.
//!
//! Amounts are kept in milli-units (`250m` CPU = 250, `1Gi` memory = 1073741824000), so one
//! integer type covers CPU, memory, pods and extended resources (`nvidia.com/gpu`).

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::cluster::{Cluster, ClusterError, Gvk};

/// Resource amounts in milli-units, by resource name (`cpu`, `memory`, `pods`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Resources(pub BTreeMap<String, u64>);

impl Resources {
    /// A resource list as the API serves it (`{"cpu": "2", "memory": "4Gi"}`); values that do
    /// not parse as quantities are skipped.
    pub fn from_list(v: &Value) -> Resources {
        let mut r = Resources::default();
        if let Some(m) = v.as_object() {
            for (k, q) in m {
                let milli = match q {
                    Value::String(s) => parse_milli(s),
                    Value::Number(n) => n.as_f64().and_then(|f| parse_milli(&f.to_string())),
                    _ => None,
                };
                if let Some(milli) = milli {
                    r.0.insert(k.clone(), milli);
                }
            }
        }
        r
    }

    /// The amount of `name` in milli-units (0 when absent).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    fn add(&mut self, o: &Resources) {
        for (k, v) in &o.0 {
            let e = self.0.entry(k.clone()).or_insert(0);
            *e = e.saturating_add(*v);
        }
    }

    /// Per resource, the larger of the two.
    fn max_with(&mut self, o: &Resources) {
        for (k, v) in &o.0 {
            let e = self.0.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    /// Per resource of `self`, what is left after `o` (never below zero).
    fn minus(&self, o: &Resources) -> Resources {
        Resources(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v.saturating_sub(o.get(k))))
                .collect(),
        )
    }
}

/// A Kubernetes quantity in milli-units (`spec::types::quantity_milli`).
pub use flotilla_spec::types::quantity_milli as parse_milli;

/// What one pod of a workload needs and where it may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Shape {
    /// Effective requests: max(sum of containers, largest init container) + overhead, as the
    /// scheduler counts them; a container's limits stand in for requests it does not set.
    pub requests: Resources,
    /// `spec.nodeSelector`: a node must carry every one of these labels.
    pub node_selector: BTreeMap<String, String>,
    /// `spec.tolerations` as (key, operator, value, effect).
    pub tolerations: Vec<Toleration>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Toleration {
    pub key: String,
    pub operator: String,
    pub value: String,
    pub effect: String,
}

impl Shape {
    /// The shape of a pod spec (`spec` of a Pod or of a pod template).
    pub fn from_pod_spec(spec: &Value) -> Shape {
        let containers = |field: &str| -> Vec<Resources> {
            spec[field]
                .as_array()
                .map(|cs| cs.iter().map(container_requests).collect())
                .unwrap_or_default()
        };
        let mut requests = Resources::default();
        for c in containers("containers") {
            requests.add(&c);
        }
        for c in containers("initContainers") {
            requests.max_with(&c);
        }
        requests.add(&Resources::from_list(&spec["overhead"]));
        let node_selector = spec["nodeSelector"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let tolerations = spec["tolerations"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        let s = |f: &str| t[f].as_str().unwrap_or("").to_string();
                        Toleration {
                            key: s("key"),
                            operator: s("operator"),
                            value: s("value"),
                            effect: s("effect"),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Shape {
            requests,
            node_selector,
            tolerations,
        }
    }

    /// The pod shape of a workload object: its pod template (`spec.template`: Deployment,
    /// StatefulSet, ReplicaSet, DaemonSet, Job; `spec.jobTemplate.spec.template`: CronJob) or
    /// the object itself when it is a Pod. `None` when it has no pod template.
    pub fn of_workload(object: &Value) -> Option<Shape> {
        if object["kind"] == "Pod" {
            return object.get("spec").map(Shape::from_pod_spec);
        }
        let spec = &object["spec"];
        let template = spec
            .get("template")
            .or_else(|| spec["jobTemplate"]["spec"].get("template"))?;
        template.get("spec").map(Shape::from_pod_spec)
    }

    fn tolerates(&self, taint: &Taint) -> bool {
        self.tolerations.iter().any(|t| {
            (t.effect.is_empty() || t.effect == taint.effect)
                && if t.operator == "Exists" {
                    t.key.is_empty() || t.key == taint.key
                } else {
                    t.key == taint.key && t.value == taint.value
                }
        })
    }
}

fn container_requests(c: &Value) -> Resources {
    let mut r = Resources::from_list(&c["resources"]["limits"]);
    for (k, v) in Resources::from_list(&c["resources"]["requests"]).0 {
        r.0.insert(k, v);
    }
    r
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct Taint {
    key: String,
    value: String,
    effect: String,
}

/// One node as the estimator sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeRoom {
    pub name: String,
    /// Ready and not cordoned.
    pub schedulable: bool,
    pub labels: BTreeMap<String, String>,
    pub allocatable: Resources,
    /// Requests of the pods counted against the node, one pod slot (1000) each.
    pub requested: Resources,
    #[serde(skip)]
    taints: Vec<Taint>,
}

impl NodeRoom {
    /// `allocatable - requested`, per resource.
    pub fn free(&self) -> Resources {
        self.allocatable.minus(&self.requested)
    }

    /// How many pods of `shape` fit on this node now.
    pub fn room(&self, shape: &Shape) -> u64 {
        if !self.schedulable
            || shape
                .node_selector
                .iter()
                .any(|(k, v)| self.labels.get(k) != Some(v))
            || self.taints.iter().any(|t| {
                matches!(t.effect.as_str(), "NoSchedule" | "NoExecute") && !shape.tolerates(t)
            })
        {
            return 0;
        }
        // `free()` per resource, without building the map (this runs nodes x clusters times
        // when a workflow is placed).
        let free = |k: &str| {
            self.allocatable
                .get(k)
                .saturating_sub(self.requested.get(k))
        };
        let mut room = free("pods") / 1000;
        for (k, need) in &shape.requests.0 {
            if *need == 0 || k == "pods" {
                continue;
            }
            room = room.min(free(k) / need);
        }
        room
    }
}

/// A pod as counted against its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodUse {
    pub namespace: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    pub requests: Resources,
}

/// What a cluster's Nodes and Pods say, compacted: the input of every estimate. Cheap to
/// keep per cluster between listings (the daemon caches it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Observed {
    pub nodes: Vec<NodeRoom>,
    /// Pods bound to a node and not finished (Succeeded/Failed pods hold no resources);
    /// their requests are already counted in their node's `requested`.
    pub pods: Vec<PodUse>,
}

impl Observed {
    /// From Node and Pod objects as listed.
    pub fn from_objects(nodes: &[Value], pods: &[Value]) -> Observed {
        let mut out = Observed {
            nodes: nodes.iter().map(node_room).collect(),
            pods: Vec::new(),
        };
        out.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let index: BTreeMap<String, usize> = out
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        for p in pods {
            if matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
                continue;
            }
            let Some(node) = p["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else {
                continue;
            };
            let mut requests = Shape::from_pod_spec(&p["spec"]).requests;
            requests.0.insert("pods".into(), 1000);
            if let Some(&i) = index.get(node) {
                out.nodes[i].requested.add(&requests);
            }
            out.pods.push(PodUse {
                namespace: p["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                node: node.to_string(),
                labels: labels_of(p),
                requests,
            });
        }
        out
    }

    /// Every node with its requested amounts, counting every pod except those `skip` names
    /// (a burst pool skips the workload's own pods: they are what it is placing).
    pub fn capacity(&self, skip: impl Fn(&PodUse) -> bool) -> Vec<NodeRoom> {
        let mut nodes = self.nodes.clone();
        let index: BTreeMap<&str, usize> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect();
        for p in self.pods.iter().filter(|p| skip(p)) {
            if let Some(&i) = index.get(p.node.as_str()) {
                nodes[i].requested = nodes[i].requested.minus(&p.requests);
            }
        }
        nodes
    }

    /// How many pods of `shape` the cluster can take now, every pod counted. Cost: nodes x
    /// resources (the pods were summed per node when observed).
    pub fn room(&self, shape: &Shape) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.room(shape))
            .fold(0u64, u64::saturating_add)
    }

    /// [`Observed::room`] with the pods `skip` names not counted as using anything.
    pub fn room_skipping(&self, shape: &Shape, skip: impl Fn(&PodUse) -> bool) -> u64 {
        self.capacity(skip)
            .iter()
            .map(|n| n.room(shape))
            .fold(0u64, u64::saturating_add)
    }

    /// Why no pod of `shape` fits (for an `Unschedulable` record), or `None` when one does.
    pub fn why_no_room(&self, shape: &Shape) -> Option<String> {
        if self.room(shape) > 0 {
            return None;
        }
        let nodes = self.capacity(|_| false);
        if nodes.is_empty() {
            return Some("the cluster has no nodes".into());
        }
        let ready: Vec<&NodeRoom> = nodes.iter().filter(|n| n.schedulable).collect();
        if ready.is_empty() {
            return Some(format!(
                "none of its {} node(s) is Ready and schedulable",
                nodes.len()
            ));
        }
        let wanted: Vec<String> = shape
            .requests
            .0
            .iter()
            .filter(|(k, v)| **v > 0 && k.as_str() != "pods")
            .map(|(k, v)| format!("{k} {}", show_milli(k, *v)))
            .collect();
        let best = ready
            .iter()
            .map(|n| {
                let f = n.free();
                let parts: Vec<String> = shape
                    .requests
                    .0
                    .keys()
                    .chain(std::iter::once(&"pods".to_string()))
                    .map(|k| format!("{k} {}", show_milli(k, f.get(k))))
                    .collect();
                format!("{}: {}", n.name, parts.join(", "))
            })
            .take(3)
            .collect::<Vec<_>>()
            .join("; ");
        Some(format!(
            "no schedulable node has room for one pod ({}); free: {best}",
            if wanted.is_empty() {
                "a pod slot".to_string()
            } else {
                wanted.join(", ")
            }
        ))
    }
}

/// A milli-unit amount for people: CPU in cores or `m`, memory in Mi, others in units.
pub fn show_milli(resource: &str, v: u64) -> String {
    match resource {
        "cpu" if v.is_multiple_of(1000) => format!("{}", v / 1000),
        "cpu" => format!("{v}m"),
        "memory" | "ephemeral-storage" => format!("{}Mi", v / 1000 / 1048576),
        _ => format!("{}", v / 1000),
    }
}

fn labels_of(o: &Value) -> BTreeMap<String, String> {
    o["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn node_room(n: &Value) -> NodeRoom {
    let ready = n["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    let cordoned = n["spec"]["unschedulable"].as_bool().unwrap_or(false);
    let taints = n["spec"]["taints"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| Taint {
                    key: t["key"].as_str().unwrap_or("").to_string(),
                    value: t["value"].as_str().unwrap_or("").to_string(),
                    effect: t["effect"].as_str().unwrap_or("").to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    NodeRoom {
        name: n["metadata"]["name"].as_str().unwrap_or("").to_string(),
        schedulable: ready && !cordoned,
        labels: labels_of(n),
        allocatable: Resources::from_list(&n["status"]["allocatable"]),
        requested: Resources::default(),
        taints,
    }
}

/// The room fleet.yaml declares for `shape` on a cluster (`clusters[].capacity`): the
/// declared totals divided by the pod's requests, and `replicas` when `workload` is true
/// (burst pools); `None` when nothing declared applies. It caps the live estimate; without
/// cluster access (`flotilla plan`) it is the estimate.
pub fn declared_room(
    capacity: Option<&flotilla_spec::model::Capacity>,
    shape: &Shape,
    workload: bool,
) -> Option<u64> {
    let c = capacity?;
    let mut room: Option<u64> = None;
    let mut cap = |v: u64| room = Some(room.map_or(v, |r| r.min(v)));
    let per = |declared: &Option<flotilla_spec::types::Quantity>, name: &str| {
        let total = declared.as_ref().and_then(|q| parse_milli(&q.text))?;
        let need = shape.requests.get(name);
        (need > 0).then(|| total / need)
    };
    if let Some(v) = per(&c.cpu, "cpu") {
        cap(v);
    }
    if let Some(v) = per(&c.memory, "memory") {
        cap(v);
    }
    if let Some(p) = c.pods {
        cap(u64::from(p));
    }
    if workload && let Some(r) = c.replicas {
        cap(u64::from(r));
    }
    room
}

/// `live` capped by `declared`; with neither, 0 (nothing is known to fit).
pub fn combine(live: Option<u64>, declared: Option<u64>) -> u64 {
    match (live, declared) {
        (Some(l), Some(d)) => l.min(d),
        (Some(l), None) => l,
        (None, Some(d)) => d,
        (None, None) => 0,
    }
}

/// Lists the cluster's Nodes and Pods (read-only) into an [`Observed`].
pub async fn observe(cluster: &dyn Cluster) -> Result<Observed, ClusterError> {
    let nodes = cluster.list(&Gvk::new("", "v1", "Node"), "").await?;
    let pods = cluster.list(&Gvk::new("", "v1", "Pod"), "").await?;
    Ok(Observed::from_objects(&nodes, &pods))
}

/// The name of the cluster with the most room for `shape` among `candidates` (name, room),
/// ties broken by name; `None` when no candidate has room for one pod.
pub fn emptiest<'a>(candidates: impl IntoIterator<Item = (&'a str, u64)>) -> Option<&'a str> {
    candidates
        .into_iter()
        .filter(|(_, room)| *room > 0)
        .min_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)))
        .map(|(name, _)| name)
}

#[cfg(test)]
mod tests;
