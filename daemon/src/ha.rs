//! Several replicas, one fleet (docs/daemon.md "High availability").
//!
//! The work of a fleet is cut into *units*: `placement/P` (the placement's rollout, its burst
//! split), `cluster/C` (applying to, watching, drift-checking and healing cluster C),
//! `workflow/W`, `backup/B` and `singleton/images` (image write-back). Each replica holds a
//! Lease in the management cluster (`flotilla_ha::Membership`); every replica computes the
//! same assignment of units to the live replicas with consistent hashing with bounded loads
//! (`reconciler::shard`) and *claims* its units in the shared state store, which bumps the
//! unit's epoch. Work on a unit runs with a store view fenced by (unit, replica, epoch), so a
//! replica that lost a unit (paused past its lease, partitioned) fails its next write instead
//! of acting. A unit is claimed only from nobody, from itself, or from a replica that is no
//! longer live; a replica gives up units it should no longer hold one round after it stopped
//! their work, so a resize hands units over without two owners.
//!
//! Without `--ha-namespace` the daemon is alone: it holds every unit, unfenced.
//!
//! Must not know: how a unit's work is done (the loop, the workers and the subsystems ask
//! [`Ownership`] whether they hold a unit and for its fenced store).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use flotilla_ha::Membership;
use flotilla_state::{Fence, Store};
use tokio::sync::watch;

use crate::revision::Revision;
use crate::run::{Shared, Trigger};

/// How far above the average one replica's load may go (the ε of bounded loads).
pub const EPSILON: f64 = 0.25;

/// The unit of the image write-back (one replica at a time).
pub const IMAGES: &str = "singleton/images";

pub fn placement_unit(name: &str) -> String {
    format!("placement/{name}")
}

pub fn cluster_unit(name: &str) -> String {
    format!("cluster/{name}")
}

pub fn workflow_unit(name: &str) -> String {
    format!("workflow/{name}")
}

pub fn backup_unit(name: &str) -> String {
    format!("backup/{name}")
}

/// Every unit of a revision, sorted.
pub fn units(rev: &Revision) -> Vec<String> {
    let f = &rev.fleet;
    let mut out: Vec<String> = f
        .placements
        .iter()
        .map(|p| placement_unit(&p.name))
        .chain(f.clusters.iter().map(|c| cluster_unit(&c.name)))
        .chain(f.workflows.iter().map(|w| workflow_unit(&w.name)))
        .chain(f.backups.iter().map(|b| backup_unit(&b.name)))
        .chain(std::iter::once(IMAGES.to_string()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What this replica holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Held {
    /// Unit → the epoch of this replica's claim.
    pub units: BTreeMap<String, u64>,
    /// The live replicas, as this one saw them last.
    pub members: Vec<String>,
}

/// Which units this replica holds, and the store view each one's work writes through.
pub(crate) struct Ownership {
    pub replica: String,
    membership: Option<Arc<Membership>>,
    held: watch::Sender<Held>,
}

impl Ownership {
    /// A daemon alone: it holds everything.
    pub fn alone(replica: String) -> Ownership {
        Ownership {
            replica,
            membership: None,
            held: watch::channel(Held::default()).0,
        }
    }

    pub fn replicated(membership: Arc<Membership>) -> Ownership {
        Ownership {
            replica: membership.config().id().to_string(),
            membership: Some(membership),
            held: watch::channel(Held::default()).0,
        }
    }

    pub fn is_replicated(&self) -> bool {
        self.membership.is_some()
    }

    /// Whether this replica holds `unit` (always, alone) and may act now.
    pub fn holds(&self, unit: &str) -> bool {
        match &self.membership {
            None => true,
            Some(m) => m.valid() && self.held.borrow().units.contains_key(unit),
        }
    }

    /// The store view for the work of `unit`: fenced by this replica's claim; `None` when it
    /// does not hold the unit. Alone: the store itself.
    pub fn store_for(&self, store: &Store, unit: &str) -> Option<Store> {
        if self.membership.is_none() {
            return Some(store.clone());
        }
        if !self.may_act() {
            return None;
        }
        let epoch = *self.held.borrow().units.get(unit)?;
        Some(store.fenced(Fence {
            unit: unit.to_string(),
            holder: self.replica.clone(),
            epoch,
        }))
    }

    /// Whether the shared store still names this replica, at the epoch of its claim, as the
    /// holder of `unit` (alone: always). Checked right before anything is sent to a cluster,
    /// so a replica that woke up after losing a unit cannot act on it even before its next
    /// round notices.
    pub fn confirmed(&self, store: &Store, unit: &str) -> bool {
        if self.membership.is_none() {
            return true;
        }
        if !self.may_act() {
            return false;
        }
        let Some(epoch) = self.held.borrow().units.get(unit).copied() else {
            return false;
        };
        match crate::exchange::blocking(|| store.read(|tx| tx.owner(unit))) {
            Ok(Some(o)) => o.holder == self.replica && o.epoch == epoch,
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(%unit, error = %e, "cannot confirm the claim; not acting");
                false
            }
        }
    }

    /// False once this replica's Lease validity ran out (paused, partitioned): nothing may be
    /// sent to a cluster until it renews.
    pub fn may_act(&self) -> bool {
        self.membership.as_ref().is_none_or(|m| m.valid())
    }

    pub fn held(&self) -> Held {
        self.held.borrow().clone()
    }
}

/// Connects to the management cluster (the kubeconfig and context of the settings, or the
/// pod's service account when neither is given and the process runs in a cluster) and
/// prepares this replica's membership. Nothing is sent yet.
pub(crate) async fn membership(ha: &crate::config::HaSettings) -> Result<Membership, String> {
    let config = flotilla_ha::Config::new(&ha.namespace, &ha.replica_id)
        .and_then(|c| c.with_durations(ha.lease_duration, ha.renew_period))
        .map_err(|e| e.to_string())?;
    let in_cluster = ha.kubeconfig.is_none()
        && ha.context.is_none()
        && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let cluster: Arc<dyn flotilla_reconciler::cluster::Cluster> = if in_cluster {
        Arc::new(
            flotilla_cluster::Connector::in_cluster("management")
                .await
                .map_err(|e| format!("management cluster (in-cluster service account): {e}"))?,
        )
    } else {
        let connector = flotilla_cluster::Connector::load(ha.kubeconfig.as_deref())
            .map_err(|e| format!("--ha-kubeconfig: {e}"))?;
        let mut settings = connector.settings().clone();
        settings.user_agent = format!("{} (replica {})", settings.user_agent, ha.replica_id);
        let connector = connector.with_settings(settings);
        let context = match &ha.context {
            Some(c) => c.clone(),
            None => connector
                .kubeconfig()
                .current_context()
                .map(str::to_string)
                .ok_or("--ha-context: the kubeconfig has no current context; name one")?,
        };
        Arc::new(
            connector
                .connect("management", &context, false)
                .await
                .map_err(|e| format!("management cluster: {e}"))?,
        )
    };
    Ok(Membership::new(cluster, config))
}

/// Notifications between replicas through the state store (PostgreSQL NOTIFY; in-process
/// with redb): `fetch` (a webhook reached one replica: every replica fetches now), `control`
/// with the placement as payload (a rollout request: its owner's worker looks at once),
/// `work` and `result` (the per-cluster work exchange).
pub const FETCH: &str = "fetch";
pub const CONTROL: &str = "control";

pub(crate) async fn listen(shared: Arc<Shared>) {
    let mut rx = shared.store.subscribe();
    loop {
        match rx.recv().await {
            Ok(n) => match n.topic.as_str() {
                FETCH => {
                    let _ = shared.wake.send(());
                }
                CONTROL => {
                    let _ = shared.triggers.send(Trigger::Control {
                        placement: n.payload,
                    });
                }
                _ => crate::exchange::notified(&shared, &n.topic),
            },
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "notifications lagged");
                // Whatever was missed: look at everything once.
                let _ = shared.wake.send(());
                crate::exchange::notified(&shared, crate::exchange::WORK);
                crate::exchange::notified(&shared, crate::exchange::RESULT);
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The membership loop of a replicated daemon: renew, look at the members, claim and release
/// units, publish what is held (the main loop starts and stops work on
/// [`Trigger::Ownership`]). Returns when the daemon stops; the drain then gives the units
/// back and deletes the Lease ([`leave_now`]).
pub(crate) async fn run(shared: Arc<Shared>) {
    let Some(m) = shared.ownership.membership.clone() else {
        return;
    };
    let me = shared.ownership.replica.clone();
    let period = m.config().renew_period();
    let mut backoff = period;
    while let Err(e) = m.join().await {
        tracing::error!(replica = %me, error = %e, "cannot join the replicas; retrying");
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    // Renewals run on their own, so a slow round (a busy database) never delays one.
    let mut renewer = spawn_renewer(shared.clone(), m.clone());
    // Units to give back in the store next round (their work was stopped this round).
    let mut releasing: BTreeSet<String> = BTreeSet::new();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if renewer.is_finished() {
            tracing::error!(replica = %me, "the Lease renewal task ended; starting it again");
            renewer = spawn_renewer(shared.clone(), m.clone());
        }
        round(&shared, &m, &me, &mut releasing).await;
        tokio::select! {
            () = tokio::time::sleep(period) => {}
            () = shared.ha_nudge.notified() => {}
        }
    }
    renewer.abort();
    // The drain gives the units back and leaves (`leave_now`).
}

/// Renews this replica's Lease every renew period until the daemon stops.
fn spawn_renewer(shared: Arc<Shared>, m: Arc<Membership>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(m.config().renew_period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = m.renew().await {
                tracing::warn!(
                    replica = %shared.ownership.replica,
                    error = %e,
                    valid = m.valid(),
                    "Lease renewal failed; retrying at the next period"
                );
            }
        }
    })
}

async fn round(
    shared: &Arc<Shared>,
    m: &Arc<Membership>,
    me: &str,
    releasing: &mut BTreeSet<String>,
) {
    let o = &shared.ownership;
    if !m.valid() {
        // Paused or cut off past the lease: others may hold our units by now. Drop them all
        // (the fence stops any write still in flight); claim again once renewed.
        if !o.held.borrow().units.is_empty() {
            tracing::warn!(replica = %me, "Lease validity ran out: stopping all work until renewed");
            publish(shared, Held::default());
        }
        return;
    }
    let members = match m.members().await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(replica = %me, error = %e, "cannot list the replicas");
            return;
        }
    };
    let Some(rev) = shared.current() else {
        // No revision yet: nothing to divide; remember who is live.
        let mut h = o.held();
        if h.members != members {
            h.members = members;
            publish(shared, h);
        }
        return;
    };
    let all = units(&rev);
    let assignment = flotilla_reconciler::shard::assign(&all, &members, EPSILON);
    let want: BTreeSet<String> = assignment
        .into_iter()
        .filter(|(_, r)| r == me)
        .map(|(u, _)| u)
        .collect();
    let mut held = o.held();
    held.members = members.clone();
    // Claims taken over while this replica was paused or cut off (another replica saw it
    // gone and claimed at a newer epoch): that work stops here; its fence already refuses
    // every write.
    match shared.store.read(|tx| tx.owners()) {
        Ok(owners) => {
            let owners: BTreeMap<String, flotilla_state::Owner> = owners.into_iter().collect();
            let lost: Vec<String> = held
                .units
                .iter()
                .filter(|(u, epoch)| {
                    owners
                        .get(*u)
                        .is_none_or(|o| o.holder != me || o.epoch != **epoch)
                })
                .map(|(u, _)| u.clone())
                .collect();
            if !lost.is_empty() {
                tracing::warn!(
                    replica = %me,
                    units = %lost.join(", "),
                    "lost units to another replica (this one was paused or cut off); their work stops"
                );
                for u in &lost {
                    held.units.remove(u);
                }
            }
        }
        Err(e) => {
            tracing::warn!(replica = %me, error = %e, "cannot read the unit owners; holding nothing until it can");
            if !held.units.is_empty() {
                publish(
                    shared,
                    Held {
                        units: BTreeMap::new(),
                        members,
                    },
                );
            }
            return;
        }
    }
    // Give back what was stopped last round (unless it came back to us meanwhile).
    let give_back: Vec<String> = releasing
        .iter()
        .filter(|u| !want.contains(*u) && !held.units.contains_key(*u))
        .cloned()
        .collect();
    releasing.clear();
    if !give_back.is_empty() {
        let r = shared.store.write(|tx| {
            for u in &give_back {
                tx.release(u, me)?;
            }
            Ok(())
        });
        match r {
            Ok(()) => tracing::info!(replica = %me, units = give_back.len(), "released units"),
            Err(e) => tracing::warn!(replica = %me, error = %e, "cannot release units"),
        }
    }
    // Stop what we should no longer hold; released in the store next round.
    let lost: Vec<String> = held
        .units
        .keys()
        .filter(|u| !want.contains(*u))
        .cloned()
        .collect();
    for u in &lost {
        held.units.remove(u);
        releasing.insert(u.clone());
    }
    // Claim what we should hold: from nobody, from ourselves, or from a replica that is gone.
    let to_claim: Vec<String> = want
        .iter()
        .filter(|u| !held.units.contains_key(*u))
        .cloned()
        .collect();
    let mut waiting = 0usize;
    if !to_claim.is_empty() {
        let claimed = shared.store.write(|tx| {
            let mut got = Vec::new();
            let mut busy = 0usize;
            for u in &to_claim {
                let free = match tx.owner(u)? {
                    None => true,
                    Some(owner) => {
                        owner.holder.is_empty()
                            || owner.holder == me
                            || !members.contains(&owner.holder)
                    }
                };
                if free {
                    let epoch = tx.claim(u, me)?;
                    got.push((u.clone(), epoch));
                } else {
                    busy += 1;
                }
            }
            Ok((got, busy))
        });
        match claimed {
            Ok((got, busy)) => {
                waiting = busy;
                if !got.is_empty() {
                    tracing::info!(replica = %me, units = got.len(), "claimed units");
                }
                for (u, epoch) in got {
                    held.units.insert(u, epoch);
                }
            }
            Err(e) => tracing::warn!(replica = %me, error = %e, "cannot claim units"),
        }
    }
    let metrics = &shared.metrics;
    metrics.ha_members.set(members.len() as i64);
    metrics.ha_units_held.set(held.units.len() as i64);
    metrics.ha_units_waiting.set(waiting as i64);
    if held != o.held() {
        publish(shared, held);
    }
}

fn publish(shared: &Arc<Shared>, held: Held) {
    shared.ownership.held.send_replace(held);
    let _ = shared.triggers.send(Trigger::Ownership);
}

/// On SIGTERM, after the workers drained: give every unit back and delete the Lease.
pub(crate) async fn leave_now(shared: &Arc<Shared>) {
    if let Some(m) = shared.ownership.membership.clone() {
        let me = shared.ownership.replica.clone();
        leave(shared, &m, &me).await;
    }
}

/// A clean stop: give every unit back and delete the Lease, so the others take over at once.
async fn leave(shared: &Arc<Shared>, m: &Membership, me: &str) {
    let units: Vec<String> = shared.ownership.held().units.into_keys().collect();
    publish(shared, Held::default());
    if let Err(e) = shared.store.write(|tx| {
        for u in &units {
            tx.release(u, me)?;
        }
        Ok(())
    }) {
        tracing::warn!(replica = %me, error = %e, "cannot release units on the way out");
    }
    if let Err(e) = m.leave().await {
        tracing::warn!(replica = %me, error = %e, "cannot delete the Lease on the way out");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names_are_kind_slash_name() {
        assert_eq!(placement_unit("web"), "placement/web");
        assert_eq!(cluster_unit("eu-1"), "cluster/eu-1");
        assert_eq!(workflow_unit("nightly"), "workflow/nightly");
        assert_eq!(backup_unit("daily"), "backup/daily");
    }

    #[test]
    fn a_daemon_alone_holds_everything_unfenced() {
        let o = Ownership::alone("r1".into());
        assert!(o.holds("placement/web"));
        assert!(o.may_act());
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        assert!(
            o.store_for(&store, "cluster/a")
                .is_some_and(|s| s.fence().is_none())
        );
    }
}
