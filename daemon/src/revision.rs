//! One fetched commit, checked and rendered for every cluster. Runs on the Git thread: the
//! renderers' cache (Jsonnet state is not `Send`) lives there and survives across commits,
//! so an unchanged bundle is not rendered again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_reconciler::desired::{self, Desired};
use flotilla_reconciler::plan::Plan;
use flotilla_renderers::RenderOptions;
use flotilla_renderers::cache::Cache;
use flotilla_source::git::Snapshot;
use flotilla_spec::{Diagnostic, Fleet, Limits, Selection};

/// A valid commit, rendered.
#[derive(Debug)]
pub struct Revision {
    pub commit: String,
    pub fleet: Fleet,
    pub plan: Plan,
    /// Cluster name → its rendered placements.
    pub targets: BTreeMap<String, Vec<Desired>>,
    /// `cluster C: placement P: message` for every render failure.
    pub render_errors: Vec<String>,
    pub warnings: Vec<Diagnostic>,
    pub render_took: Duration,
}

/// What a commit turned out to be.
#[derive(Debug)]
pub enum Loaded {
    Valid(Arc<Revision>),
    /// The fleet file has errors: the last good revision keeps running.
    Invalid {
        commit: String,
        diagnostics: Vec<Diagnostic>,
    },
    /// The fleet file could not be read at all (missing, not UTF-8, ...).
    Unreadable {
        commit: String,
        message: String,
    },
    /// Rendering the commit ran out of a budget (a symbolic link loop, a patch that doubles
    /// an object, ...): rejected like an invalid commit, the last good revision keeps running.
    OverBudget {
        commit: String,
        error: flotilla_renderers::budget::BudgetError,
    },
}

/// Checks and renders commits, keeping the render cache between them.
pub struct Loader {
    fleet_file: String,
    cache: Cache,
    /// Render options of every commit (where Jsonnet runs).
    pub options: RenderOptions,
}

impl Loader {
    pub fn new(fleet_file: &str) -> Loader {
        Loader {
            fleet_file: fleet_file.to_string(),
            cache: Cache::new(),
            options: RenderOptions::default(),
        }
    }

    pub fn load(&mut self, snapshot: &Snapshot) -> Loaded {
        let commit = snapshot.commit().to_string();
        let place = format!("repository {} at {}", snapshot.repo_name(), snapshot.rev());
        let (_, checked) = match flotilla_spec::check_repo_file(
            snapshot,
            &self.fleet_file,
            None,
            &place,
            &Limits::default(),
        ) {
            Ok(c) => c,
            Err(e) => {
                return Loaded::Unreadable {
                    commit,
                    message: e.to_string(),
                };
            }
        };
        let Some(fleet) = checked.fleet.clone() else {
            return Loaded::Invalid {
                commit,
                diagnostics: checked.errors().cloned().collect(),
            };
        };
        let started = Instant::now();
        let selection = Selection::new(&fleet);
        let options = self.options.clone();
        let mut pass = self.cache.pass(snapshot);
        let mut targets = BTreeMap::new();
        let mut render_errors = Vec::new();
        for c in &fleet.clusters {
            let d = desired::for_cluster(&mut pass, &fleet, &selection, c, &options);
            for p in &d {
                if let Err(e) = &p.objects {
                    render_errors.push(format!(
                        "cluster {}: placement {}: {e}",
                        c.name, p.placement
                    ));
                }
            }
            targets.insert(c.name.clone(), d);
        }
        if let Some(error) = pass.exceeded() {
            return Loaded::OverBudget { commit, error };
        }
        drop(pass);
        let plan = flotilla_reconciler::plan::plan(&fleet);
        Loaded::Valid(Arc::new(Revision {
            commit,
            plan,
            targets,
            render_errors,
            warnings: checked.warnings().cloned().collect(),
            render_took: started.elapsed(),
            fleet,
        }))
    }
}
