//! The daemon's Prometheus metrics (OpenMetrics text at `/metrics`).

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;
type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;

fn seconds_histogram() -> Histogram {
    // 5 ms .. ~160 s
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// Every metric the daemon exports.
pub struct Metrics {
    registry: Registry,
    /// Git fetches (polls), by result.
    pub fetch_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// Render of one commit for every cluster; rollout runs per placement; drift checks.
    pub reconcile_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    /// 1 for the phase each placement's latest rollout is in, 0 for the others it was in.
    pub rollout_phase: Family<Labels, Gauge>,
    /// Failed applies per cluster (rollouts, rollbacks and self-heal).
    pub apply_errors: Family<Labels, Counter>,
    /// Objects that differ from Git, per cluster, at the last drift check.
    pub drift_objects: Family<Labels, Gauge>,
    /// Clusters the last drift check could not read.
    pub drift_unreachable: Gauge,
    /// Agent clusters: seconds between the agent's last report and the drift check that read
    /// it (alert on it growing: the agent, or its link to the management cluster, is down).
    pub agent_report_age: Family<Labels, Gauge>,
    /// Webhook requests by style and result.
    pub webhooks: Family<Labels, Counter>,
    /// 1 when the newest fetched commit has a valid fleet file.
    pub fleet_valid: Gauge,
    /// Live replicas as this one sees them (replicated daemons only).
    pub ha_members: Gauge,
    /// Units of work this replica holds.
    pub ha_units_held: Gauge,
    /// Units assigned to this replica that another live replica still holds.
    pub ha_units_waiting: Gauge,
    /// Errors in the newest fetched commit's fleet file.
    pub fleet_errors: Gauge,
    /// Fetched commits rejected for their signature (`--verify-commits`).
    pub commits_unverified: Counter,
    /// HTTP connections closed on accept because `max_connections` were open.
    pub http_connections_refused: Counter,
    /// Daemon tasks (placement workers, drift checks, image scans) that panicked or failed,
    /// by task and outcome (`panic`, `error`); each is reported and restarted.
    pub task_failures: Family<Labels, Counter>,
    /// Workflow runs by workflow and outcome (succeeded, failed, skipped, missed,
    /// unschedulable, replaced).
    pub workflow_runs: Family<Labels, Counter>,
    /// When each workflow last succeeded (Unix seconds).
    pub workflow_last_success: Family<Labels, Gauge>,
    /// Scheduled backups, by policy and cluster: when the last one succeeded (Unix seconds),
    /// how long the last one took, its objects and bytes, and failures.
    pub backup_last_success: Family<Labels, FloatGauge>,
    pub backup_seconds: Family<Labels, FloatGauge>,
    pub backup_objects: Family<Labels, Gauge>,
    pub backup_bytes: Family<Labels, Gauge>,
    pub backup_failures: Family<Labels, Counter>,
    pub burst_replicas: Family<Labels, Gauge>,
    pub burst_unplaced: Family<Labels, Gauge>,
    /// Notifications by sink and outcome, queue depth, broken sinks (flotilla-notify).
    pub notify: flotilla_notify::Metrics,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("flotilla");
        let fetch_seconds =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        let reconcile_seconds =
            Family::<Labels, Histogram, fn() -> Histogram>::new_with_constructor(seconds_histogram);
        let rollout_phase = Family::<Labels, Gauge>::default();
        let apply_errors = Family::<Labels, Counter>::default();
        let drift_objects = Family::<Labels, Gauge>::default();
        let drift_unreachable = Gauge::default();
        let agent_report_age = Family::<Labels, Gauge>::default();
        let webhooks = Family::<Labels, Counter>::default();
        let fleet_valid = Gauge::default();
        let ha_members = Gauge::default();
        let ha_units_held = Gauge::default();
        let ha_units_waiting = Gauge::default();
        registry.register(
            "ha_members",
            "Live replicas as this replica sees them (replicated daemons)",
            ha_members.clone(),
        );
        registry.register(
            "ha_units_held",
            "Units of work (placements, clusters, workflows, backups, singletons) this replica holds",
            ha_units_held.clone(),
        );
        registry.register(
            "ha_units_waiting",
            "Units assigned to this replica that another live replica still holds",
            ha_units_waiting.clone(),
        );
        let fleet_errors = Gauge::default();
        let http_connections_refused = Counter::default();
        let task_failures = Family::<Labels, Counter>::default();
        let workflow_runs = Family::<Labels, Counter>::default();
        let workflow_last_success = Family::<Labels, Gauge>::default();
        registry.register(
            "workflow_runs",
            "Finished workflow runs (and firings that did not run), by workflow and outcome",
            workflow_runs.clone(),
        );
        registry.register(
            "workflow_last_success_timestamp_seconds",
            "When each workflow's last successful run finished",
            workflow_last_success.clone(),
        );
        let notify = flotilla_notify::Metrics::default();
        notify.register(&mut registry);
        let burst_replicas = Family::<Labels, Gauge>::default();
        let burst_unplaced = Family::<Labels, Gauge>::default();
        registry.register(
            "burst_replicas",
            "Replicas the burst split gives each cluster, by placement, cluster and pool (empty for primaries)",
            burst_replicas.clone(),
        );
        registry.register(
            "burst_unplaced",
            "Replicas of a burst placement that fit on no cluster",
            burst_unplaced.clone(),
        );
        registry.register(
            "http_connections_refused",
            "HTTP connections closed on accept because the connection cap was reached",
            http_connections_refused.clone(),
        );
        registry.register(
            "task_failures",
            "Daemon tasks that panicked or failed (then reported and restarted), by task and outcome",
            task_failures.clone(),
        );
        registry.register(
            "git_fetch_seconds",
            "Duration of Git fetches, by result",
            fetch_seconds.clone(),
        );
        registry.register(
            "reconcile_seconds",
            "Duration of renders (stage=render), rollout runs (stage=rollout) and drift checks (stage=drift)",
            reconcile_seconds.clone(),
        );
        registry.register(
            "rollout_phase",
            "1 for the phase each placement's rollout is in",
            rollout_phase.clone(),
        );
        registry.register(
            "apply_errors",
            "Failed applies per cluster",
            apply_errors.clone(),
        );
        registry.register(
            "drift_objects",
            "Objects that differ from Git at the last drift check, per cluster",
            drift_objects.clone(),
        );
        registry.register(
            "drift_unreachable_clusters",
            "Clusters the last drift check could not read",
            drift_unreachable.clone(),
        );
        registry.register(
            "agent_report_age_seconds",
            "Agent clusters: age of the agent's last report when the daemon read it",
            agent_report_age.clone(),
        );
        registry.register(
            "webhook_requests",
            "Webhook requests by style and result",
            webhooks.clone(),
        );
        registry.register(
            "fleet_valid",
            "1 when the newest fetched commit has a valid fleet file",
            fleet_valid.clone(),
        );
        registry.register(
            "fleet_errors",
            "Errors in the newest fetched commit's fleet file",
            fleet_errors.clone(),
        );
        let commits_unverified = Counter::default();
        registry.register(
            "commits_unverified",
            "Fetched commits rejected because their signature did not verify",
            commits_unverified.clone(),
        );
        let backup_last_success = Family::<Labels, FloatGauge>::default();
        let backup_seconds = Family::<Labels, FloatGauge>::default();
        let backup_objects = Family::<Labels, Gauge>::default();
        let backup_bytes = Family::<Labels, Gauge>::default();
        let backup_failures = Family::<Labels, Counter>::default();
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the last scheduled backup of a cluster succeeded (Unix time)",
            backup_last_success.clone(),
        );
        registry.register(
            "backup_duration_seconds",
            "How long the last scheduled backup of a cluster took",
            backup_seconds.clone(),
        );
        registry.register(
            "backup_objects",
            "Objects in the last successful backup of a cluster",
            backup_objects.clone(),
        );
        registry.register(
            "backup_bytes",
            "Bytes in the last successful backup of a cluster",
            backup_bytes.clone(),
        );
        registry.register(
            "backup_failures",
            "Scheduled backups that failed",
            backup_failures.clone(),
        );
        Metrics {
            registry,
            backup_last_success,
            backup_seconds,
            backup_objects,
            backup_bytes,
            backup_failures,
            fetch_seconds,
            reconcile_seconds,
            rollout_phase,
            apply_errors,
            drift_objects,
            drift_unreachable,
            agent_report_age,
            webhooks,
            fleet_valid,
            ha_members,
            ha_units_held,
            ha_units_waiting,
            fleet_errors,
            commits_unverified,
            http_connections_refused,
            task_failures,
            workflow_runs,
            workflow_last_success,
            burst_replicas,
            burst_unplaced,
            notify,
        }
    }

    /// The OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// A label set.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
