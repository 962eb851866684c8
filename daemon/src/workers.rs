//! The placement workers: one supervised task per placement this replica holds (every
//! placement when alone), each running the rollout engine for the newest revision through
//! its store view (fenced by the replica's claim), superseded when a newer revision arrives.
//! The loop (`run.rs`) starts and stops them with [`sync`] and nudges them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::{Notify, watch};

use flotilla_reconciler::rollout::{Engine, Event, Outcome, placement_inputs};
use flotilla_state::Store;

use crate::adapters::SystemClock;
use crate::metrics::labels;
use crate::revision::Revision;
use crate::run::Shared;

pub(crate) struct Worker {
    pub revision: watch::Sender<Option<Arc<Revision>>>,
    pub nudge: Arc<Notify>,
    pub handle: tokio::task::JoinHandle<()>,
    /// The store view it writes through (fenced by this replica's claim when replicated).
    store: Store,
}

/// One placement worker per placement this replica holds (every placement when alone),
/// each writing through the store view fenced by its claim; the others stop.
pub(crate) fn sync(
    workers: &mut BTreeMap<String, Worker>,
    shared: &Arc<Shared>,
    rev: &Arc<Revision>,
) {
    let shared = shared.clone();
    if shared.config.read_only {
        return;
    }
    let mut wanted: BTreeMap<String, Store> = BTreeMap::new();
    for p in &rev.fleet.placements {
        let unit = crate::ha::placement_unit(&p.name);
        if let Some(store) = shared.ownership.store_for(&shared.store, &unit) {
            wanted.insert(p.name.clone(), store);
        }
    }
    // Workers of placements that left the fleet or this replica, or whose claim changed
    // (a new epoch), stop.
    let gone: Vec<String> = workers
        .iter()
        .filter(|(k, w)| wanted.get(*k).is_none_or(|s| s.fence() != w.store.fence()))
        .map(|(k, _)| k.clone())
        .collect();
    for name in gone {
        if let Some(w) = workers.remove(&name) {
            w.handle.abort();
            shared.status_mut().placements.remove(&name);
        }
    }
    for (name, store) in wanted {
        match workers.get(&name) {
            Some(w) => {
                let _ = w.revision.send(Some(rev.clone()));
            }
            None => {
                let (tx, rx) = watch::channel(Some(rev.clone()));
                let nudge = Arc::new(Notify::new());
                let handle = crate::supervise::spawn(
                    crate::supervise::Restart::WORKER,
                    {
                        let (shared, name, nudge, store) =
                            (shared.clone(), name.clone(), nudge.clone(), store.clone());
                        move || {
                            placement_worker(
                                shared.clone(),
                                name.clone(),
                                store.clone(),
                                rx.clone(),
                                nudge.clone(),
                            )
                        }
                    },
                    crate::supervise::report_to(shared.clone(), "placement", Some(name.clone())),
                );
                workers.insert(
                    name,
                    Worker {
                        revision: tx,
                        nudge,
                        handle,
                        store,
                    },
                );
            }
        }
    }
}

async fn placement_worker(
    shared: Arc<Shared>,
    name: String,
    store: Store,
    mut revisions: watch::Receiver<Option<Arc<Revision>>>,
    nudge: Arc<Notify>,
) {
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let rev = revisions.borrow_and_update().clone();
        if let Some(rev) = rev {
            let inputs = placement_inputs(
                &rev.fleet,
                &rev.plan,
                &rev.commit,
                &rev.targets,
                Some(&name),
            );
            match inputs.into_iter().next() {
                None => return,
                Some(Err(failed)) => {
                    let why = format!(
                        "not rolled out (render failed): {}",
                        failed.errors.join("; ")
                    );
                    tracing::error!(placement = %name, commit = %rev.commit, "{why}");
                    let mut s = shared.status_mut();
                    let p = s.placements.entry(name.clone()).or_default();
                    p.error = Some(why);
                    p.running = false;
                }
                Some(Ok(input)) => {
                    {
                        let mut s = shared.status_mut();
                        let p = s.placements.entry(name.clone()).or_default();
                        p.error = None;
                        p.running = true;
                    }
                    crate::supervise::injected_fault(&shared, &name);
                    let clock = SystemClock;
                    let on_event = |e: &Event| shared.on_event(e);
                    let verifier = crate::workflows::WorkflowVerifier {
                        shared: shared.clone(),
                    };
                    // Work for clusters this replica holds runs here; the rest goes to
                    // their owners through the exchange (replicated daemons).
                    let executor = crate::exchange::Routed::new(&shared, &store);
                    let engine = Engine {
                        store: &store,
                        executor: &executor,
                        gates: &shared.gates,
                        verifier: &verifier,
                        clock: &clock,
                        on_event: &on_event,
                        stop: Some(&shared.stop),
                    };
                    let started = Instant::now();
                    let outcome = tokio::select! {
                        biased;
                        changed = revisions.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            tracing::info!(placement = %name, "a newer revision arrived during the rollout; superseding it");
                            None
                        }
                        out = engine.run(&input) => Some(out),
                    };
                    shared
                        .metrics
                        .reconcile_seconds
                        .get_or_create(&labels(&[("stage", "rollout")]))
                        .observe(started.elapsed().as_secs_f64());
                    let mut s = shared.status_mut();
                    let p = s.placements.entry(name.clone()).or_default();
                    p.running = false;
                    match outcome {
                        // Superseded: go round again with the new revision at once.
                        None => continue,
                        Some(Ok(Outcome::UpToDate)) => {
                            p.last_outcome = Some(format!("up to date at {}", short(&rev.commit)))
                        }
                        Some(Ok(Outcome::FailedBefore { rollout })) => {
                            p.last_outcome = Some(format!(
                                "revision failed before ({rollout}); waiting for a new commit"
                            ))
                        }
                        Some(Ok(Outcome::Stopped(r))) => {
                            p.rollout = Some(r.id.clone());
                            p.phase = Some(r.phase.label().to_string());
                            p.last_outcome = Some(if r.message.is_empty() {
                                r.phase.label().to_string()
                            } else {
                                format!("{}: {}", r.phase.label(), r.message)
                            });
                        }
                        Some(Err(e)) => {
                            tracing::error!(placement = %name, error = %e, "rollout engine error");
                            shared
                                .metrics
                                .task_failures
                                .get_or_create(&labels(&[
                                    ("task", "placement"),
                                    ("outcome", "error"),
                                ]))
                                .inc();
                            p.last_outcome = Some(format!("error: {e}"));
                        }
                    }
                }
            }
        }
        tokio::select! {
            changed = revisions.changed() => if changed.is_err() { return },
            () = nudge.notified() => {}
        }
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}
