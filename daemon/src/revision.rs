//! One fetched commit, checked and rendered for every cluster. Runs on the Git thread: the
//! renderers' cache (Jsonnet state is not `Send`) lives there and survives across commits,
//! so an unchanged bundle is not rendered again.

use std::collections::{BTreeMap, BTreeSet};
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
    /// The first line of the commit's message (`None` when it could not be read).
    pub message: Option<String>,
    pub fleet: Fleet,
    pub plan: Plan,
    /// Cluster name → its rendered placements.
    pub targets: BTreeMap<String, Vec<Desired>>,
    /// `cluster C: placement P: message` for every render failure.
    pub render_errors: Vec<String>,
    pub warnings: Vec<Diagnostic>,
    pub render_took: Duration,
    /// Workflow name → its template file's text at this commit.
    pub workflow_templates: BTreeMap<String, String>,
    /// The clusters with `connect: agent` (looked up on every apply and drift check).
    pub agents: BTreeSet<String>,
}

impl Revision {
    /// Whether `cluster` is reached through its agent (`connect: agent`).
    pub fn is_agent(&self, cluster: &str) -> bool {
        self.agents.contains(cluster)
    }
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
    /// The commit's signature does not verify (unsigned, unknown key, bad signature), or the
    /// fleet asks for verification that this daemon was not given keys for: the last good
    /// revision keeps running.
    Unverified(flotilla_source::git::Unverified),
}

/// Checks and renders commits, keeping the render cache between them.
pub struct Loader {
    fleet_file: String,
    cache: Cache,
    /// Render options of every commit (where Jsonnet runs).
    pub options: RenderOptions,
    /// The budgets of one commit's render.
    pub limits: flotilla_renderers::budget::Limits,
    /// Commits must be signed by these keys (`--verify-commits`); checked before anything
    /// of the commit is read.
    pub trust: Option<Arc<flotilla_source::git::Trust>>,
}

impl Loader {
    pub fn new(fleet_file: &str) -> Loader {
        Loader {
            fleet_file: fleet_file.to_string(),
            cache: Cache::new(),
            options: RenderOptions::default(),
            limits: flotilla_renderers::budget::Limits::default(),
            trust: None,
        }
    }

    pub fn load(&mut self, snapshot: &Snapshot) -> Loaded {
        let commit = snapshot.commit().to_string();
        // Only the tip is checked (as Flux does): its signature covers its tree, and the
        // commits before it were the tip once, or are vouched for by whoever signed it.
        if let Some(trust) = &self.trust {
            match trust.verify_snapshot(snapshot) {
                Ok(signer) => {
                    tracing::info!(commit = %commit, signer = %signer, "commit signature verified");
                }
                Err(e) => return Loaded::Unverified(e),
            }
        }
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
        if fleet.settings.verify_commits && self.trust.is_none() {
            // The fleet can ask for verification; only the daemon's own flags can supply
            // the keys, so without them nothing of this repository runs.
            return Loaded::Unverified(flotilla_source::git::Unverified {
                commit,
                signer: None,
                reason: format!(
                    "{} sets settings.verifyCommits: true, but this daemon verifies no signatures: start it with --verify-commits and --trusted-signers FILE and/or --trusted-keys FILE",
                    self.fleet_file
                ),
            });
        }
        let started = Instant::now();
        let selection = Selection::new(&fleet);
        let options = self.options.clone();
        let mut pass = self.cache.pass_with(snapshot, self.limits);
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
        let workflow_templates = fleet
            .workflows
            .iter()
            .filter_map(|w| {
                use flotilla_spec::RepoFiles;
                snapshot
                    .read_to_string(&w.template)
                    .ok()
                    .map(|t| (w.name.clone(), t))
            })
            .collect();
        let agents = fleet
            .clusters
            .iter()
            .filter(|c| c.is_agent())
            .map(|c| c.name.clone())
            .collect();
        Loaded::Valid(Arc::new(Revision {
            workflow_templates,
            agents,
            message: snapshot.summary(),
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use flotilla_source::git::{GitSource, Remote, Rev};

    use super::*;

    fn git(dir: &Path, args: &[&str]) {
        let out = Command::new("git")
            .current_dir(dir)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `work` made a repository with one commit of all it holds, fetched into `cache`.
    fn committed(work: &Path, cache: &Path, message: &str) -> GitSource {
        git(work, &["init", "--quiet", "-b", "main"]);
        git(work, &["add", "-A"]);
        git(work, &["commit", "--quiet", "-m", message]);
        let remote = Remote::parse(work.to_str().expect("utf-8"), None).expect("remote");
        let mut source = GitSource::open(
            remote,
            Rev::parse("main").expect("rev"),
            cache.to_path_buf(),
        )
        .expect("open");
        source.poll().expect("fetch");
        source
    }

    #[test]
    fn a_commit_over_its_render_budget_is_rejected_and_the_next_one_loads() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(work.join("app")).expect("mkdir");
        std::fs::write(
            work.join("fleet.yaml"),
            "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: f}\nclusters: [{name: a}, {name: b}]\nbundles: [{name: app, path: app}]\nplacements: [{name: p, bundles: [app], clusters: {}}]\n",
        )
        .expect("write");
        // 40 ConfigMaps of ~1 KiB: 40 KiB to read, over a budget of 16 KiB.
        for i in 0..40 {
            std::fs::write(
                work.join(format!("app/cm{i}.yaml")),
                format!(
                    "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm{i}}}\ndata: {{x: '{}'}}\n",
                    "x".repeat(1000)
                ),
            )
            .expect("write");
        }
        let mut source = committed(&work, &tmp.path().join("cache"), "big");
        let mut loader = Loader::new("fleet.yaml");
        loader.limits.read_bytes = 16 << 10;
        let snapshot = source.current().expect("snapshot").clone();
        match loader.load(&snapshot) {
            Loaded::OverBudget { commit, error } => {
                assert_eq!(commit, snapshot.commit().to_string());
                assert_eq!(error.what, "bytes read");
                assert!(error.at.starts_with("app/cm"), "{error}");
            }
            other => panic!("expected OverBudget, got {other:?}"),
        }
        // The fix (a smaller commit) loads with the same loader.
        for i in 10..40 {
            std::fs::remove_file(work.join(format!("app/cm{i}.yaml"))).expect("rm");
        }
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "smaller"]);
        source.poll().expect("fetch");
        let snapshot = source.current().expect("snapshot").clone();
        match loader.load(&snapshot) {
            Loaded::Valid(rev) => {
                assert!(rev.render_errors.is_empty(), "{:?}", rev.render_errors);
                assert_eq!(rev.targets["a"].len(), 1);
            }
            other => panic!("expected Valid, got {other:?}"),
        }
    }

    #[test]
    fn a_team_placement_outside_its_allowance_is_a_render_error_of_its_clusters_only() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(work.join("app")).expect("mkdir");
        std::fs::create_dir_all(work.join("sys")).expect("mkdir");
        std::fs::write(
            work.join("fleet.yaml"),
            "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: f}\nclusters: [{name: a}, {name: b}]\nbundles: [{name: app, path: app, namespace: shop}, {name: sys, path: sys, namespace: kube-system}]\nteams: [{name: shop, namespaces: [shop]}]\nplacements: [{name: p, team: shop, bundles: [app], clusters: {}}, {name: q, team: shop, bundles: [sys], clusters: {names: [b]}}]\n",
        )
        .expect("write");
        for dir in ["app", "sys"] {
            std::fs::write(
                work.join(format!("{dir}/cm.yaml")),
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\n",
            )
            .expect("write");
        }
        let source = committed(&work, &tmp.path().join("cache"), "teams");
        let snapshot = source.current().expect("snapshot").clone();
        let Loaded::Valid(rev) = Loader::new("fleet.yaml").load(&snapshot) else {
            panic!("expected a valid revision");
        };
        assert_eq!(
            rev.render_errors,
            [
                "cluster b: placement q: outside the allowance of team \"shop\": ConfigMap/kube-system/cm: namespace \"kube-system\" is not among the team's namespaces (shop)"
            ]
        );
        assert!(rev.targets["a"].iter().all(|d| d.objects.is_ok()));
        assert!(
            rev.targets["b"]
                .iter()
                .any(|d| d.placement == "p" && d.objects.is_ok())
        );
    }
}
