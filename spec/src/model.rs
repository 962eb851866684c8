//! The typed model of fleet.yaml. Plain data: no I/O, no positions (those live in the parsed
//! document and are found again by JSON pointer when a check needs to point somewhere).
//!
//! Field names follow Kubernetes conventions (camelCase in YAML). Every type derives
//! `JsonSchema`, so `flotilla schema` is generated from the same types the decoder fills.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::types::{Duration, Pattern, Quantity, RepoPath, Schedule, SemverRange, TimeZone};

pub const API_VERSION: &str = "flotilla.dev/v1alpha1";
pub const KIND: &str = "Fleet";

pub type Labels = BTreeMap<String, String>;

/// A fleet: everything flotilla manages, described in one file.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    deny_unknown_fields,
    title = "Fleet",
    description = "flotilla fleet.yaml"
)]
pub struct Fleet {
    /// Always `flotilla.dev/v1alpha1`.
    #[schemars(extend("const" = "flotilla.dev/v1alpha1"))]
    pub api_version: String,
    /// Always `Fleet`.
    #[schemars(extend("const" = "Fleet"))]
    pub kind: String,
    pub metadata: Metadata,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub clusters: Vec<Cluster>,
    #[serde(default)]
    pub bundles: Vec<Bundle>,
    #[serde(default)]
    pub baselines: Vec<Baseline>,
    /// Tenants: what the placements of each team may deploy, and where.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<Team>,
    #[serde(default)]
    pub placements: Vec<Placement>,
    #[serde(default)]
    pub burst_pools: Vec<BurstPool>,
    #[serde(default)]
    pub workflows: Vec<Workflow>,
    #[serde(default)]
    pub backups: Vec<Backup>,
    #[serde(default)]
    pub image_policies: Vec<ImagePolicy>,
    /// Where the daemon sends what happens (docs/notifications.md).
    #[serde(default)]
    pub notifications: Notifications,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Metadata {
    /// The fleet's name (a DNS label); used in `${fleet.name}`.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Fleet-wide defaults.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct Settings {
    /// How often live clusters are compared with Git (default 5m).
    pub drift_interval: Duration,
    /// Delete objects that were removed from Git (default true). Placements may override.
    pub prune: bool,
    /// Re-apply when a live cluster drifts from Git (default false: report only).
    pub self_heal: bool,
    /// Refuse to run a commit unless the daemon verifies commit signatures against trusted
    /// keys of its own (`--verify-commits`). Can turn verification on, never off, and never
    /// names keys: the trust anchor cannot come from the repository it checks.
    pub verify_commits: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            drift_interval: Duration {
                text: "5m".into(),
                value: std::time::Duration::from_secs(300),
            },
            prune: true,
            self_heal: false,
            verify_commits: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ClusterKind {
    #[default]
    Registered,
    Edge,
    Managed,
}

/// A member cluster. Credentials never live here: `context` names a context of the daemon's
/// kubeconfig.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub kind: ClusterKind,
    /// How the daemon reaches the cluster: `direct` (default: the kubeconfig context) or
    /// `agent` (a `flotilla agent` in the cluster pulls its work from the management cluster;
    /// the daemon never contacts the cluster).
    #[serde(default)]
    pub connect: Connect,
    /// Kubeconfig context (default: the cluster's name). Not used with `connect: agent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

/// How the daemon reaches a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Connect {
    /// With a kubeconfig context, from the daemon.
    #[default]
    Direct,
    /// Through its agent: work and status travel as objects in the cluster's namespace of the
    /// management cluster (`flotilla agent`).
    Agent,
}

impl Connect {
    pub fn as_str(&self) -> &'static str {
        match self {
            Connect::Direct => "direct",
            Connect::Agent => "agent",
        }
    }
}

impl Cluster {
    /// The kubeconfig context used to reach this cluster.
    pub fn context(&self) -> &str {
        self.context.as_deref().unwrap_or(&self.name)
    }

    /// Reached through a `flotilla agent`, never directly.
    pub fn is_agent(&self) -> bool {
        self.connect == Connect::Agent
    }

    /// The labels selectors see: the cluster's labels plus `name` and `kind`.
    pub fn selector_labels(&self) -> Labels {
        let mut l = self.labels.clone();
        l.insert("name".into(), self.name.clone());
        l.insert("kind".into(), self.kind.as_str().into());
        l
    }
}

impl ClusterKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ClusterKind::Registered => "registered",
            ClusterKind::Edge => "edge",
            ClusterKind::Managed => "managed",
        }
    }
}

/// What a cluster can hold, for burst-pool and workflow placement.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Capacity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<u32>,
    /// Replicas of burstable workloads this cluster can run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RenderKind {
    /// Plain YAML: a file or a directory of multi-document YAML files.
    Yaml,
    /// A Jsonnet main file.
    Jsonnet,
    /// A directory with a kustomization.yaml.
    Kustomize,
}

impl RenderKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            RenderKind::Yaml => "yaml",
            RenderKind::Jsonnet => "jsonnet",
            RenderKind::Kustomize => "kustomize",
        }
    }
}

/// A unit of configuration: a path in the repository and how to render it.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Bundle {
    pub name: String,
    pub path: RepoPath,
    /// yaml, jsonnet or kustomize; inferred from the path when omitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub render: Option<RenderKind>,
    /// Namespace for namespaced objects that do not set one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jsonnet: Option<JsonnetOptions>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct JsonnetOptions {
    /// `std.extVar` strings; may use `${cluster.name}`, `${cluster.labels.KEY}`, ...
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ext_vars: BTreeMap<String, String>,
    /// Top-level arguments: strings (templated) are passed as strings, other values as code.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tlas: BTreeMap<String, serde_json::Value>,
}

/// A named, versioned set of bundles that must be the same on every cluster it targets.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Baseline {
    pub name: String,
    pub version: String,
    pub bundles: Vec<String>,
}

/// A Kubernetes-style label selector over clusters, plus explicit names. All criteria must
/// hold; an empty selector selects every cluster.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Selector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
    /// Cluster names; when set, only these clusters can match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// What goes where and how it rolls out.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Placement {
    pub name: String,
    /// Bundles to deploy (or use `baseline`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<String>,
    /// A baseline whose bundles to deploy (or use `bundles`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    pub clusters: Selector,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<ReplicaSplit>,
    #[serde(default)]
    pub rollout: Rollout,
    /// Overrides `settings.prune` for this placement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<bool>,
    /// Take ownership of the fields Git declares when other managers (`kubectl edit`,
    /// `kubectl patch`) own them: Git wins (default `true`); `false` stops on such conflicts.
    #[serde(default = "default_true")]
    pub force_conflicts: bool,
    /// The team this placement belongs to: its rendered objects must stay inside the team's
    /// allowance and its clusters among the team's. Without a team a placement is
    /// unrestricted (the platform's own placements).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
}

/// A tenant of the fleet (like an Argo CD AppProject): which namespaces, kinds and clusters
/// its placements may target, and optionally whom their applies run as on the clusters.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Team {
    pub name: String,
    /// Namespaces the team's namespaced objects may live in: names or glob patterns
    /// (`*` matches any run of characters, `?` one character), e.g. `payments-*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Cluster-scoped kinds the team may deploy, as `group/kind` (`Namespace` or `/Namespace`
    /// for the core group, `rbac.authorization.k8s.io/ClusterRole`; `*` globs allowed).
    /// Empty: none. A Namespace object must also be named like one of `namespaces`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_resources: Vec<String>,
    /// Namespaced kinds the team may deploy (`group/kind`, globs allowed). Absent: every
    /// namespaced kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaced_resources: Option<Vec<String>>,
    /// The clusters the team's placements may target (default: every cluster).
    #[serde(default, skip_serializing_if = "Selector::is_empty")]
    pub clusters: Selector,
    /// `namespace/name` of a ServiceAccount on the target clusters: the team's applies and
    /// prunes are sent impersonating it (`system:serviceaccount:NAMESPACE:NAME`), so the
    /// cluster's RBAC fences the team in too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$"
    ))]
    pub service_account: Option<String>,
}

impl Team {
    /// The ServiceAccount to impersonate, as (namespace, name).
    pub fn service_account(&self) -> Option<(&str, &str)> {
        self.service_account
            .as_deref()
            .and_then(|s| s.split_once('/'))
    }

    /// The Kubernetes user name impersonated for this team's applies.
    pub fn impersonate_user(&self) -> Option<String> {
        self.service_account()
            .map(|(ns, name)| format!("system:serviceaccount:{ns}:{name}"))
    }
}

impl Fleet {
    /// The team of a placement (`None`: no team, or an unknown one — validation refuses that).
    pub fn team_of(&self, placement: &Placement) -> Option<&Team> {
        let name = placement.team.as_deref()?;
        self.teams.iter().find(|t| t.name == name)
    }
}

/// Per-cluster changes applied after a bundle renders.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Override {
    /// Which of the placement's clusters this override applies to.
    pub clusters: Selector,
    /// The bundle to change (default: every bundle of the placement).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<Patch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageOverride>,
    /// Extra Jsonnet ext vars for these clusters (templated like `jsonnet.extVars`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub variables: BTreeMap<String, String>,
}

/// A patch of the objects matching `target`: exactly one of `jsonPatch` and `mergePatch`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Patch {
    pub target: Target,
    /// RFC 6902 operations.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_patch: Option<Vec<JsonPatchOp>>,
    /// An RFC 7386 merge patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub merge_patch: Option<serde_json::Value>,
}

/// Selects objects by group/version/kind/name/namespace/labels; unset fields match anything.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Target {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// A label selector in kubectl syntax: `app=web,tier!=cache,env in (prod,staging),!legacy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_selector: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct JsonPatchOp {
    pub op: JsonPatchOpKind,
    /// A JSON pointer (RFC 6901).
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JsonPatchOpKind {
    Add,
    Remove,
    Replace,
    Move,
    Copy,
    Test,
}

/// Changes an image reference, like kustomize's `images`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ImageOverride {
    /// The image as written in the manifests, without tag or digest.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Spreads a workload's replicas over the placement's clusters, overflowing to a burst pool.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ReplicaSplit {
    pub bundle: String,
    pub workload: WorkloadRef,
    /// How many replicas in all: a number, or demand from a Prometheus query.
    pub total: Total,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_pool: Option<String>,
    /// How long a primary may be unreachable before its share counts as lost and the pool
    /// takes it (default 2m).
    #[serde(default = "default_unreachable_grace")]
    pub unreachable_grace: Duration,
}

/// A replica total: fixed, or `clamp(ceil(value / perReplica), min, max)` of a query.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Total {
    Fixed(u32),
    Demand(Demand),
}

impl Total {
    /// The total when it is known without a query (fixed), else the demand's `min`.
    pub fn declared(&self) -> u32 {
        match self {
            Total::Fixed(n) => *n,
            Total::Demand(d) => d.min,
        }
    }
}

/// Replicas from a Prometheus query, evaluated every `interval`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Demand {
    pub prometheus: DemandQuery,
    /// The query value one replica serves (> 0).
    pub per_replica: f64,
    #[serde(default)]
    pub min: u32,
    pub max: u32,
    /// How often the query runs (default 30s).
    #[serde(default = "default_demand_interval")]
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct DemandQuery {
    pub url: String,
    /// PromQL; the first sample's value is the demand.
    pub query: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct WorkloadRef {
    pub kind: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OnFailure {
    /// Put every cluster that took the failed revision back on its last good revision.
    #[default]
    Rollback,
    /// Stop and wait for a person.
    Pause,
}

/// How a new revision walks across the placement's clusters.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct Rollout {
    /// Named batches first, then cumulative percentages ending at 100. Default: one batch.
    #[serde(default)]
    pub batches: Vec<Batch>,
    /// Clusters applied at once inside a batch (default 1).
    #[schemars(range(min = 1))]
    pub max_concurrent: u32,
    /// How long a cluster may take to become healthy (default 10m).
    pub health_deadline: Duration,
    /// Wait after a healthy batch before the next (default 0s; a batch may set its own).
    pub soak: Duration,
    /// Failed clusters tolerated before the rollout stops (default 0).
    pub max_failures: u32,
    pub on_failure: OnFailure,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<Gate>,
    /// When rollouts may proceed; empty means always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<Window>,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            batches: Vec::new(),
            max_concurrent: 1,
            health_deadline: Duration {
                text: "10m".into(),
                value: std::time::Duration::from_secs(600),
            },
            soak: Duration::zero(),
            max_failures: 0,
            on_failure: OnFailure::Rollback,
            gates: Vec::new(),
            windows: Vec::new(),
        }
    }
}

/// One wave: exactly one of `clusters` (named/selected clusters) or `percent`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Batch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Selector>,
    /// Cumulative share (1-100) of the clusters not named by earlier batches.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub soak: Option<Duration>,
    /// A workflow run in each cluster of the batch once it is healthy, before its gates; a
    /// failed or timed-out run is that cluster's failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
}

/// Verification of a rollout batch by a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Verify {
    /// The name of a workflow of this fleet.
    pub workflow: String,
}

/// A check between batches.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Gate {
    pub prometheus: PrometheusGate,
}

/// Passes when every sample of `query` is within [min, max].
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PrometheusGate {
    pub url: String,
    /// PromQL; may use `${cluster.name}` and other template variables.
    pub query: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// A maintenance window: opens at each cron firing, stays open for `duration`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Window {
    pub schedule: Schedule,
    pub duration: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<TimeZone>,
}

/// Clusters that take overflow replicas.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct BurstPool {
    pub name: String,
    pub clusters: Selector,
    #[schemars(range(min = 1))]
    pub max_replicas: u32,
    /// Minimum time between scale-ins of the pool (default 10m).
    #[serde(default = "default_cooldown")]
    pub cooldown: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RunMode {
    /// On the one matching cluster with the most free capacity.
    #[default]
    One,
    /// On every matching cluster.
    Each,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Concurrency {
    Allow,
    #[default]
    Forbid,
    Replace,
}

/// Batch work on a schedule.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Workflow {
    pub name: String,
    pub schedule: Schedule,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<TimeZone>,
    pub clusters: Selector,
    #[serde(default)]
    pub run: RunMode,
    /// A file with the Job (or other completing kind) to submit.
    pub template: RepoPath,
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Finished runs to keep (default 10).
    #[serde(default = "default_history")]
    pub history: u32,
    #[serde(default)]
    pub suspend: bool,
    /// How late a firing may still start (after downtime); later ones are recorded as missed.
    /// Without it, one missed firing runs however late.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub starting_deadline: Option<Duration>,
    /// With `run: each`: at most this many clusters run at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<u32>,
    /// A run still active after this long is failed and its object deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// How to tell that an object of a kind other than `batch/v1` Job has finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion: Option<Completion>,
}

/// Fields of a completing object that mean it succeeded or failed.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Completion {
    pub succeeded: FieldMatch,
    pub failed: FieldMatch,
}

/// Matches when the field at `path` (dot-separated, e.g. `status.phase`) holds one of `values`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct FieldMatch {
    pub path: String,
    pub values: Vec<String>,
}

impl FieldMatch {
    /// True when `object`'s field at `path` is a string (or number/bool shown as text) in
    /// `values`.
    pub fn matches(&self, object: &serde_json::Value) -> bool {
        let mut v = object;
        for part in self.path.split('.') {
            match v.get(part) {
                Some(next) => v = next,
                None => return false,
            }
        }
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(b) => b.to_string(),
            serde_json::Value::Number(n) => n.to_string(),
            _ => return false,
        };
        self.values.contains(&text)
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ResourceFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
}

/// Scheduled exports of cluster objects.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Backup {
    pub name: String,
    pub schedule: Schedule,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<TimeZone>,
    pub clusters: Selector,
    #[serde(default)]
    pub include: ResourceFilter,
    #[serde(default)]
    pub exclude: ResourceFilter,
    /// How long to keep a backup.
    pub retain: Duration,
    /// Where backups go: `file:///path` or `s3://bucket/prefix`.
    pub store: String,
    /// Encryption of Secrets; without it Secrets are left out of the backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<BackupEncryption>,
    /// Keep each object's `status` (default: dropped, the controllers rebuild it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub status: bool,
}

/// How a backup encrypts the Secrets it keeps.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct BackupEncryption {
    /// age X25519 recipients (`age1...`); any one identity decrypts.
    pub age: Vec<String>,
}

/// Which images to track and how to write accepted tags back to Git.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct ImagePolicy {
    pub name: String,
    /// The repository to scan, without tag: `registry.example.com/shop/frontend`.
    pub image: String,
    pub policy: TagPolicy,
    pub write_back: WriteBack,
}

/// Exactly one of `semver`, `pattern` and `digest`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct TagPolicy {
    /// The highest tag inside this range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semver: Option<SemverRange>,
    /// The greatest tag matching a regex, ordered by a captured part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pattern: Option<PatternPolicy>,
    /// Follow the digest behind a mutable tag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<DigestPolicy>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PatternPolicy {
    pub regex: Pattern,
    /// What to order by, e.g. `$ts` (default: the whole tag).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extract: Option<String>,
    #[serde(default)]
    pub order: TagOrder,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum TagOrder {
    #[default]
    Alphabetical,
    Numerical,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct DigestPolicy {
    pub tag: String,
}

/// Where and how an accepted tag is committed.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct WriteBack {
    /// Files to update (each must exist in the repository).
    pub files: Vec<RepoPath>,
    /// The branch to read from and, without `pushBranch`, to push to (default main).
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Push to this branch instead (for a pull request).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_branch: Option<String>,
    /// Placeholders: {{image}}, {{from}}, {{to}}, {{policy}}.
    #[serde(default = "default_commit_message")]
    pub commit_message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<Author>,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Author {
    pub name: String,
    pub email: String,
}

pub const DEFAULT_COMMIT_MESSAGE: &str = "images: {{image}} {{from}} -> {{to}}";

pub fn default_unreachable_grace() -> Duration {
    Duration {
        text: "2m".into(),
        value: std::time::Duration::from_secs(120),
    }
}

pub fn default_demand_interval() -> Duration {
    Duration {
        text: "30s".into(),
        value: std::time::Duration::from_secs(30),
    }
}

pub fn default_cooldown() -> Duration {
    Duration {
        text: "10m".into(),
        value: std::time::Duration::from_secs(600),
    }
}

pub fn default_history() -> u32 {
    10
}

pub fn default_branch() -> String {
    "main".into()
}

pub fn default_commit_message() -> String {
    DEFAULT_COMMIT_MESSAGE.into()
}

pub fn default_true() -> bool {
    true
}

/// The notification triggers: the daemon's event bus names (`daemon::events::Trigger`).
pub const NOTIFICATION_TRIGGERS: &[&str] = &[
    "rollout-started",
    "rollout-succeeded",
    "rollout-failed",
    "rolled-back",
    "rollout-paused",
    "rollout-step",
    "drift-found",
    "self-healed",
    "commit-rejected",
    "workflow-failed",
    "workflow-run",
    "backup-failed",
    "backup-succeeded",
];

/// Where notifications go and which events reach them. Sinks name their secrets; the values
/// never come from Git (docs/notifications.md).
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[serde(default)]
#[schemars(deny_unknown_fields)]
pub struct Notifications {
    pub sinks: Vec<NotificationSink>,
    pub rules: Vec<NotificationRule>,
    /// A repeat (same trigger, placement, cluster and message) within this window is sent
    /// once (default 1h; `0s` sends every one).
    pub dedup_window: Duration,
}

impl Default for Notifications {
    fn default() -> Self {
        Notifications {
            sinks: Vec::new(),
            rules: Vec::new(),
            dedup_window: default_dedup_window(),
        }
    }
}

pub fn default_dedup_window() -> Duration {
    Duration {
        text: "1h".into(),
        value: std::time::Duration::from_secs(3600),
    }
}

/// One destination of notifications.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct NotificationSink {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// webhook: the URL, when it is not secret (else `urlSecret`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// webhook: the secret that holds the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_secret: Option<String>,
    /// webhook: the secret that holds the HMAC-SHA256 key; slack: the secret that holds the
    /// incoming-webhook URL. A name, resolved by the daemon from its secrets directory or
    /// `FLOTILLA_NOTIFY_<NAME>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// JSON body of the event, signed with `X-Flotilla-Signature: sha256=<hex>`.
    Webhook,
    /// A Slack-compatible incoming webhook (`{"text": ...}`).
    Slack,
    /// A `core/v1` Event in each target cluster the event concerns.
    KubernetesEvents,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Slack => "slack",
            SinkKind::KubernetesEvents => "kubernetes-events",
        }
    }
}

/// Which events go to which sinks. An empty filter list matches everything.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct NotificationRule {
    /// Trigger names (`rollout-started`, `rolled-back`, ...).
    pub triggers: Vec<String>,
    /// Placement names or globs (`*`, `?`); empty = any, including events of no placement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub placements: Vec<String>,
    /// Cluster names or globs; empty = any, including events of no cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<String>,
    pub sinks: Vec<String>,
    /// The message text, with `${trigger}`, `${placement}`, `${cluster}`, `${message}`, ...
    /// (default: the event's message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}
