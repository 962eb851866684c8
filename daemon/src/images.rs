//! Image automation in the daemon: on `--image-scan-interval` and on `POST
//! /api/v1/images/scan`, every image policy of the running revision is scanned, chosen tags
//! are written back and pushed through `flotilla_images` (rebase-and-retry on a moved
//! branch), and the Git thread is woken so the new commit rolls out at once.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use flotilla_images::{Committed, Desired, PolicyScan, Registries, Settings};
use flotilla_source::git::{GitSource, PushOptions, Remote, Rev};

use crate::revision::Revision;

/// What the last image scan did (served in `/api/v1/fleet` as `images`).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImagesStatus {
    pub last_scan_at: Option<String>,
    /// The commit whose policies were scanned.
    pub commit: Option<String>,
    pub policies: Vec<PolicyScan>,
    /// One line per batch: pushed, up to date, or why it failed.
    pub results: Vec<String>,
    pub scans: u64,
}

/// What the image task needs besides the revision.
#[derive(Clone)]
pub struct ImageSettings {
    pub registries: Settings,
    pub remote: Remote,
    /// Signs the commits pushed (`--signing-key`).
    pub signer: Option<Arc<flotilla_source::git::CommitSigner>>,
    /// A cache of its own: the Git thread's fetches never wait for a write-back.
    pub cache: PathBuf,
}

/// Scans, writes back and pushes. Returns the status and whether anything was pushed.
pub async fn run(settings: &ImageSettings, rev: &Arc<Revision>) -> (ImagesStatus, bool) {
    let fleet = &rev.fleet;
    let images: Vec<String> = fleet
        .image_policies
        .iter()
        .map(|p| p.image.clone())
        .collect();
    let registries = Registries::new(&images, settings.registries.clone());
    let scans = flotilla_images::scan(fleet, &registries, &[]).await;
    let desired: Vec<Desired> = scans.iter().filter_map(|s| s.desired().cloned()).collect();
    let mut results = Vec::new();
    for s in &scans {
        if let Some(why) = s.failure() {
            tracing::warn!(policy = %s.policy, "image policy: {why}");
            results.push(format!("{}: {why}; nothing committed", s.policy));
        }
    }
    let mut pushed = false;
    for batch in flotilla_images::batches(fleet, &desired, false) {
        let settings = settings.clone();
        let fleet = fleet.clone();
        let desired = desired.clone();
        let target = batch
            .push_branch
            .clone()
            .unwrap_or_else(|| batch.branch.clone());
        let policies = batch.policies.join(", ");
        // Git I/O blocks: off the async workers.
        let outcome = tokio::task::spawn_blocking(move || {
            let rev = Rev::parse(&batch.branch).map_err(|e| e.to_string())?;
            let mut source = GitSource::open(settings.remote.clone(), rev, &settings.cache)
                .map_err(|e| e.to_string())?;
            flotilla_images::commit_batch(
                &mut source,
                &fleet,
                &batch,
                &desired,
                &PushOptions {
                    signer: settings.signer.clone(),
                    ..PushOptions::default()
                },
                false,
                &mut |_| {},
            )
            .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let line = match outcome {
            Ok(result) => {
                for p in &result.plan.problems {
                    tracing::warn!(policies = %policies, "image write-back: {p:?}");
                }
                match result.committed {
                    Committed::Pushed {
                        commit,
                        attempts,
                        branch,
                    } => {
                        pushed = true;
                        tracing::info!(%branch, %commit, attempts, policies = %policies, "image update pushed");
                        format!("{branch}: pushed {commit} ({policies}; {attempts} attempt(s))")
                    }
                    Committed::NothingToDo | Committed::DryRun => {
                        format!("{target}: up to date ({policies})")
                    }
                }
            }
            Err(e) => {
                tracing::error!(branch = %target, policies = %policies, error = %e, "image write-back failed; nothing committed");
                format!("{target}: {e}; nothing committed ({policies})")
            }
        };
        results.push(line);
    }
    (
        ImagesStatus {
            last_scan_at: Some(crate::run::now()),
            commit: Some(rev.commit.clone()),
            policies: scans,
            results,
            scans: 0,
        },
        pushed,
    )
}
