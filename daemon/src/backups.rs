//! Scheduled backups: each policy of fleet.yaml's `backups` fires on its cron schedule (in its
//! time zone, UTC by default) and backs up each of its clusters through a read-only
//! connection (backups run in `--read-only` too), then applies its retention and collects
//! the garbage of interrupted backups. The event loop in `run.rs` only dispatches
//! `Trigger::BackupsDue` and `Trigger::BackupDone` here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use flotilla_reconciler::rollout::Clusters;
use flotilla_spec::Fleet;

use crate::events::{self, FleetEvent};
use crate::metrics::labels;
use crate::run::{Shared, Trigger};

/// Incomplete backups younger than this are left alone (one may still be running).
const GC_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// `/api/v1/backups`: each policy, its clusters, its next firing and each cluster's last run.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupsStatus {
    pub policies: Vec<PolicyStatus>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    pub name: String,
    pub store: String,
    pub schedule: String,
    pub timezone: String,
    pub clusters: Vec<String>,
    pub next_at: Option<String>,
    /// Cluster -> its last run.
    pub last: BTreeMap<String, LastRun>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastRun {
    pub at: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    pub objects: u64,
    pub bytes: u64,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Backups retention deleted after this run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub expired: Vec<String>,
}

/// One finished backup of one cluster.
#[derive(Debug)]
pub(crate) struct Done {
    policy: String,
    cluster: String,
    run: LastRun,
}

/// The next firing of a policy's schedule after `after`.
pub fn next_firing(b: &flotilla_spec::Backup, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let tz = b.timezone.as_ref().map(|t| t.tz).unwrap_or(chrono_tz::UTC);
    b.schedule
        .cron
        .find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The fleet clusters a policy backs up, by name.
pub fn policy_clusters(fleet: &Fleet, b: &flotilla_spec::Backup) -> Vec<String> {
    let selection = flotilla_spec::Selection::new(fleet);
    let mut v: Vec<String> = selection
        .index
        .select(&b.clusters)
        .iter()
        .map(|i| fleet.clusters[i].name.clone())
        .collect();
    v.sort();
    v
}

/// The scheduler's state, owned by the event loop.
#[derive(Default)]
pub(crate) struct Backups {
    /// The commit the schedule was computed for.
    commit: Option<String>,
    /// Policy -> next firing.
    next: BTreeMap<String, DateTime<Utc>>,
    running: BTreeSet<(String, String)>,
}

impl Backups {
    /// When the next policy fires (recomputed when a new revision is loaded).
    pub(crate) fn next_at(&mut self, shared: &Shared) -> Option<tokio::time::Instant> {
        let rev = shared.current();
        let commit = rev.as_ref().map(|r| r.commit.clone());
        if commit != self.commit {
            self.commit = commit;
            let now = Utc::now();
            self.next = rev
                .map(|r| {
                    r.fleet
                        .backups
                        .iter()
                        .filter_map(|b| next_firing(b, now).map(|t| (b.name.clone(), t)))
                        .collect()
                })
                .unwrap_or_default();
            publish(shared, &self.next);
        }
        let at = *self.next.values().min()?;
        let wait = (at - Utc::now()).to_std().unwrap_or_default();
        Some(tokio::time::Instant::now() + wait)
    }

    /// Starts the backups of every policy that is due.
    pub(crate) fn due(&mut self, shared: &Arc<Shared>) {
        let Some(rev) = shared.current() else {
            return;
        };
        let now = Utc::now();
        for b in &rev.fleet.backups {
            let Some(at) = self.next.get(&b.name).copied() else {
                continue;
            };
            if at > now {
                continue;
            }
            if let Some(n) = next_firing(b, now) {
                self.next.insert(b.name.clone(), n);
            }
            // Replicated: the replica holding the policy's unit runs its schedule.
            if !shared.ownership.holds(&crate::ha::backup_unit(&b.name)) {
                continue;
            }
            self.run_policy(shared, &rev, b);
        }
        publish(shared, &self.next);
    }

    /// Runs one policy now (`POST /api/v1/backups/{name}/run`); its schedule is unchanged.
    pub(crate) fn request(&mut self, shared: &Arc<Shared>, policy: &str) {
        let Some(rev) = shared.current() else {
            return;
        };
        if let Some(b) = rev.fleet.backups.iter().find(|b| b.name == policy) {
            tracing::info!(trigger = "api", backup = %policy, "backup requested");
            self.run_policy(shared, &rev, b);
        }
    }

    fn run_policy(
        &mut self,
        shared: &Arc<Shared>,
        rev: &crate::revision::Revision,
        b: &flotilla_spec::Backup,
    ) {
        for cluster in policy_clusters(&rev.fleet, b) {
            let key = (b.name.clone(), cluster.clone());
            if self.running.contains(&key) {
                tracing::warn!(backup = %b.name, cluster = %cluster, "previous backup still running; this one skipped");
                continue;
            }
            self.running.insert(key);
            start(
                shared.clone(),
                rev.fleet.metadata.name.clone(),
                rev.commit.clone(),
                b.clone(),
                cluster,
            );
        }
    }

    /// Records a finished backup: metrics, status, event log.
    pub(crate) fn done(&mut self, shared: &Shared, d: Done) {
        self.running.remove(&(d.policy.clone(), d.cluster.clone()));
        let l = labels(&[("backup", &d.policy), ("cluster", &d.cluster)]);
        let m = &shared.metrics;
        if d.run.ok {
            m.backup_last_success
                .get_or_create(&l)
                .set(Utc::now().timestamp() as f64);
            m.backup_objects.get_or_create(&l).set(d.run.objects as i64);
            m.backup_bytes.get_or_create(&l).set(d.run.bytes as i64);
            tracing::info!(backup = %d.policy, cluster = %d.cluster, location = ?d.run.location, objects = d.run.objects, bytes = d.run.bytes, seconds = d.run.seconds, "backup complete");
            shared.events.publish(
                FleetEvent::new(
                    events::Trigger::BackupSucceeded,
                    format!(
                        "backup {} of cluster {}: {} objects, {} bytes",
                        d.policy, d.cluster, d.run.objects, d.run.bytes
                    ),
                )
                .backup(d.policy.clone())
                .cluster(d.cluster.clone()),
            );
        } else {
            m.backup_failures.get_or_create(&l).inc();
            tracing::warn!(backup = %d.policy, cluster = %d.cluster, error = ?d.run.error, "backup failed");
            shared.events.publish(
                FleetEvent::new(
                    events::Trigger::BackupFailed,
                    format!(
                        "backup {} of cluster {} failed: {}",
                        d.policy,
                        d.cluster,
                        d.run.error.as_deref().unwrap_or("unknown error")
                    ),
                )
                .backup(d.policy.clone())
                .cluster(d.cluster.clone()),
            );
        }
        m.backup_seconds.get_or_create(&l).set(d.run.seconds);
        let mut s = shared.backups.write().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = s.policies.iter_mut().find(|p| p.name == d.policy) {
            p.last.insert(d.cluster, d.run);
        }
    }
}

/// Rewrites the policies in the status (keeping each cluster's last run).
fn publish(shared: &Shared, next: &BTreeMap<String, DateTime<Utc>>) {
    let rev = shared.current();
    let mut s = shared.backups.write().unwrap_or_else(|p| p.into_inner());
    let old: BTreeMap<String, BTreeMap<String, LastRun>> =
        s.policies.drain(..).map(|p| (p.name, p.last)).collect();
    let Some(rev) = rev else { return };
    for b in &rev.fleet.backups {
        s.policies.push(PolicyStatus {
            name: b.name.clone(),
            store: b.store.clone(),
            schedule: b.schedule.text.clone(),
            timezone: b
                .timezone
                .as_ref()
                .map(|t| t.text.clone())
                .unwrap_or_else(|| "UTC".into()),
            clusters: policy_clusters(&rev.fleet, b),
            next_at: next.get(&b.name).map(|t| t.to_rfc3339()),
            last: old.get(&b.name).cloned().unwrap_or_default(),
        });
    }
}

fn start(
    shared: Arc<Shared>,
    fleet: String,
    commit: String,
    b: flotilla_spec::Backup,
    cluster: String,
) {
    let report = crate::supervise::report_to(shared.clone(), "backup", None);
    let on_panic = {
        let shared = shared.clone();
        let (policy, cluster) = (b.name.clone(), cluster.clone());
        move |f: &crate::supervise::Failure| {
            report(f);
            let _ = shared.triggers.send(Trigger::BackupDone(Box::new(Done {
                policy: policy.clone(),
                cluster: cluster.clone(),
                run: LastRun {
                    at: Utc::now().to_rfc3339(),
                    error: Some(format!("the backup panicked: {}", f.message)),
                    ..LastRun::default()
                },
            })));
        }
    };
    crate::supervise::spawn_once(
        async move {
            tracing::info!(backup = %b.name, cluster = %cluster, "backup started");
            let run = run_one(&shared, &fleet, &commit, &b, &cluster).await;
            let _ = shared.triggers.send(Trigger::BackupDone(Box::new(Done {
                policy: b.name.clone(),
                cluster,
                run,
            })));
        },
        on_panic,
    );
}

async fn run_one(
    shared: &Shared,
    fleet: &str,
    commit: &str,
    b: &flotilla_spec::Backup,
    cluster: &str,
) -> LastRun {
    let at = Utc::now();
    let started = std::time::Instant::now();
    let failed = |error: String| LastRun {
        at: at.to_rfc3339(),
        seconds: started.elapsed().as_secs_f64(),
        error: Some(error),
        ..LastRun::default()
    };
    let store = match flotilla_backup::Store::open(&b.store, &shared.config.backup_store) {
        Ok(s) => s,
        Err(e) => return failed(e.to_string()),
    };
    // Backups only read: the read-only connections (also in read-only mode).
    let c = match shared.readers.cluster(cluster).await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let mut req = flotilla_backup::run::BackupRequest::from_policy(fleet, b, at);
    req.fleet_commit = Some(commit.to_string());
    match flotilla_backup::run::backup(c.as_ref(), &store, &req).await {
        Ok(out) => {
            let expired = flotilla_backup::catalog::retain(
                &store,
                &b.name,
                cluster,
                b.retain.value,
                Utc::now(),
            )
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(backup = %b.name, cluster, error = %e, "retention failed");
                vec![]
            });
            if let Err(e) = flotilla_backup::catalog::collect_garbage(
                &store,
                Some(&b.name),
                GC_GRACE,
                Utc::now(),
            )
            .await
            {
                tracing::warn!(backup = %b.name, error = %e, "garbage collection failed");
            }
            LastRun {
                at: at.to_rfc3339(),
                ok: true,
                location: Some(out.location),
                objects: out.manifest.objects(),
                bytes: out.manifest.bytes(),
                seconds: out.seconds,
                error: None,
                expired,
            }
        }
        Err(e) => failed(e.to_string()),
    }
}
