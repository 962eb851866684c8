//! Image update automation: scan registries for the tags of every `imagePolicies` entry,
//! choose a tag by policy, and write it back to the files of the fleet repository, changing
//! only the bytes of the image values, through a commit pushed by `flotilla-source`.
//!
//! - [`registry`]: tag lists and digests over the OCI distribution API (oci-client).
//! - [`policy`]: semver ranges, regex patterns with ordering, digest pinning (pure).
//! - [`edit`]: finding image fields in YAML and splicing new values in (pure, guarded).
//! - this module: scanning a fleet, planning the edits over a repository view, and
//!   committing them in batches (one commit per branch and author per run).

pub mod edit;
pub mod policy;
pub mod registry;

use std::collections::BTreeMap;

use flotilla_source::git::{
    CommitMessage, FileChange, GitError, GitSource, Identity, PushOptions, Pushed,
};
use flotilla_spec::RepoFiles;
use flotilla_spec::model::{Fleet, ImagePolicy};
use flotilla_spec::types::RepoPath;
use serde::Serialize;

pub use edit::{Change, Desired, Problem};
pub use policy::Choice;
pub use registry::{Login, Logins, Registries, RegistryError, Settings};

/// Errors of a write-back run.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Edit(#[from] edit::EditError),
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

/// What a scan found for one policy.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyScan {
    pub policy: String,
    pub image: String,
    /// The policy in words.
    pub rule: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase", tag = "status")]
pub enum Outcome {
    /// The registry could not be asked (down, 401, 429 past the retries).
    Error { error: String },
    /// The registry answered; `desired` is set when a tag was chosen.
    Scanned {
        #[serde(flatten)]
        choice: Choice,
        #[serde(skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
        #[serde(skip)]
        desired: Option<Desired>,
    },
}

impl PolicyScan {
    pub fn desired(&self) -> Option<&Desired> {
        match &self.outcome {
            Outcome::Scanned { desired, .. } => desired.as_ref(),
            Outcome::Error { .. } => None,
        }
    }

    /// Why this policy has nothing to write, if it has nothing.
    pub fn failure(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Error { error } => Some(error.clone()),
            Outcome::Scanned {
                desired: None,
                choice,
                ..
            } => Some(choice.reason.clone()),
            Outcome::Scanned { .. } => None,
        }
    }
}

/// Asks the registries about every policy of the fleet (those named in `only`, if any).
pub async fn scan(fleet: &Fleet, registries: &Registries, only: &[String]) -> Vec<PolicyScan> {
    let mut out = Vec::new();
    for p in &fleet.image_policies {
        if !only.is_empty() && !only.contains(&p.name) {
            continue;
        }
        out.push(scan_one(p, registries).await);
    }
    out
}

async fn scan_one(p: &ImagePolicy, registries: &Registries) -> PolicyScan {
    let rule = policy::describe(&p.policy);
    let result = |outcome| PolicyScan {
        policy: p.name.clone(),
        image: p.image.clone(),
        rule: rule.clone(),
        outcome,
    };
    let tags = match registries.list_tags(&p.image).await {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(policy = %p.name, error = %e, "scan failed");
            return result(Outcome::Error {
                error: e.to_string(),
            });
        }
    };
    let choice = policy::choose(&p.policy, &tags);
    let mut digest = None;
    if let (Some(tag), Some(_)) = (&choice.chosen, &p.policy.digest) {
        match registries.digest(&p.image, tag).await {
            Ok(d) => digest = Some(d),
            Err(e) => {
                return result(Outcome::Error {
                    error: e.to_string(),
                });
            }
        }
    }
    let desired = choice.chosen.as_ref().map(|tag| Desired {
        policy: p.name.clone(),
        image: p.image.clone(),
        tag: tag.clone(),
        digest: digest.clone(),
    });
    result(Outcome::Scanned {
        choice,
        digest,
        desired,
    })
}

/// The image fields of one policy found in its files (for `flotilla images scan`).
#[derive(Debug, Clone, Serialize)]
pub struct Located {
    pub file: String,
    #[serde(flatten)]
    pub field: edit::Field,
}

/// Edits of a repository for a set of desired references.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Plan {
    /// New contents of changed files.
    #[serde(skip)]
    pub files: Vec<(RepoPath, String)>,
    pub changes: Vec<Change>,
    pub problems: Vec<Problem>,
    /// Every field found, with its current value.
    pub fields: Vec<Located>,
}

/// Plans the edits of `desired` (one per policy) over the repository: each policy edits only
/// its `writeBack.files`. A policy none of whose files holds a field for it is a problem.
pub fn plan(fleet: &Fleet, repo: &dyn RepoFiles, desired: &[Desired]) -> Result<Plan, ImagesError> {
    let mut by_file: BTreeMap<RepoPath, Vec<Desired>> = BTreeMap::new();
    for d in desired {
        let Some(p) = fleet.image_policies.iter().find(|p| p.name == d.policy) else {
            continue;
        };
        for f in &p.write_back.files {
            by_file.entry(f.clone()).or_default().push(d.clone());
        }
    }
    let mut out = Plan::default();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (path, ds) in &by_file {
        let images: Vec<(String, String)> = ds
            .iter()
            .map(|d| (d.image.clone(), d.policy.clone()))
            .collect();
        let read = repo
            .read(path)
            .map_err(|e| format!("cannot read the file: {e}"))
            .and_then(|b| String::from_utf8(b).map_err(|_| "the file is not valid UTF-8".into()))
            .and_then(|text| {
                let found = edit::find(path.as_str(), &text, &images).map_err(|e| e.to_string())?;
                Ok((text, found))
            });
        let (text, found) = match read {
            Ok(r) => r,
            Err(message) => {
                // One unreadable file stops its policies, not the whole run.
                for d in ds {
                    out.problems.push(Problem {
                        file: path.as_str().into(),
                        line: None,
                        policy: Some(d.policy.clone()),
                        message: message.clone(),
                    });
                }
                continue;
            }
        };
        for f in found.fields {
            if let Some(p) = &f.policy
                && ds.iter().any(|d| &d.policy == p)
            {
                *seen.entry(p.clone()).or_default() += 1;
                out.fields.push(Located {
                    file: path.as_str().into(),
                    field: f,
                });
            }
        }
        let edited = edit::apply(path.as_str(), &text, ds)?;
        out.problems.extend(edited.problems.into_iter().filter(|p| {
            p.policy
                .as_ref()
                .is_none_or(|n| ds.iter().any(|d| &d.policy == n))
        }));
        if !edited.changes.is_empty() {
            out.changes.extend(edited.changes);
            out.files.push((path.clone(), edited.text));
        }
    }
    for d in desired {
        if !seen.contains_key(&d.policy) {
            let files = fleet
                .image_policies
                .iter()
                .find(|p| p.name == d.policy)
                .map(|p| {
                    p.write_back
                        .files
                        .iter()
                        .map(|f| f.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            let already = out
                .problems
                .iter()
                .any(|p| p.policy.as_deref() == Some(d.policy.as_str()));
            if !already {
                out.problems.push(Problem {
                    file: files,
                    line: None,
                    policy: Some(d.policy.clone()),
                    message: format!(
                        "no field to update: no `# {{\"$imagepolicy\": \"{}\"}}` marker and no images entry for {}",
                        d.policy, d.image
                    ),
                });
            }
        }
    }
    Ok(out)
}

/// Fills a commit message template: `{{image}}`, `{{from}}`, `{{to}}`, `{{policy}}`.
/// Spaces inside the braces are allowed (`{{ image }}`), as the spec's validation allows.
pub fn render_template(template: &str, policy: &str, image: &str, from: &str, to: &str) -> String {
    static PLACEHOLDER: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r"\{\{\s*(image|from|to|policy)\s*\}\}").expect("a valid regex")
    });
    PLACEHOLDER
        .replace_all(template, |c: &regex::Captures<'_>| match &c[1] {
            "image" => image.to_string(),
            "from" => from.to_string(),
            "to" => to.to_string(),
            _ => policy.to_string(),
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn templates() {
        assert_eq!(
            super::render_template(
                "{{image}} {{ from }} -> {{to}} ({{policy}}) {{other}}",
                "p",
                "r/x",
                "1",
                "2"
            ),
            "r/x 1 -> 2 (p) {{other}}"
        );
    }
}

/// The commit message of a batch: one change is its policy's template; several are a
/// summary line and then one template line per policy.
pub fn commit_message(fleet: &Fleet, changes: &[Change]) -> String {
    // One line per policy: every distinct old value -> the new value.
    let mut per_policy: BTreeMap<&str, (Vec<&str>, &str, &str)> = BTreeMap::new();
    for c in changes {
        let e = per_policy.entry(c.policy.as_str()).or_insert((
            Vec::new(),
            c.image.as_str(),
            c.to.as_str(),
        ));
        if !e.0.contains(&c.from.as_str()) {
            e.0.push(c.from.as_str());
        }
        // The tag (not a whole reference) reads best as "to".
        if matches!(c.kind, edit::FieldKind::Tag | edit::FieldKind::ImagesTag) {
            e.2 = c.to.as_str();
        }
    }
    let lines: Vec<String> = per_policy
        .iter()
        .map(|(policy, (froms, image, to))| {
            let template = fleet
                .image_policies
                .iter()
                .find(|p| p.name == *policy)
                .map(|p| p.write_back.commit_message.as_str())
                .unwrap_or(flotilla_spec::model::DEFAULT_COMMIT_MESSAGE);
            render_template(template, policy, image, &froms.join(", "), to)
        })
        .collect();
    let mut msg = if lines.len() == 1 {
        lines[0].clone()
    } else {
        format!(
            "images: update {} images\n\n{}",
            lines.len(),
            lines.join("\n")
        )
    };
    msg.push_str("\n\nChanged values:\n");
    for c in changes {
        msg.push_str(&format!(
            "- {}:{}: {} -> {}\n",
            c.file, c.line, c.from, c.to
        ));
    }
    msg
}

/// The author of commits when a policy names none.
pub fn default_identity() -> Identity {
    Identity {
        name: "flotilla".into(),
        email: "flotilla@localhost".into(),
    }
}

/// Changes committed together: same tracked branch, same push target, same author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The branch read (and pushed to, without `push_branch`).
    pub branch: String,
    /// The branch pushed to instead (pull-request mode).
    pub push_branch: Option<String>,
    pub author: Identity,
    pub policies: Vec<String>,
}

/// Groups the policies with a desired reference into batches. With `branch_mode`, each
/// policy without its own `pushBranch` pushes to `image-updates/<policy>` (one batch each).
pub fn batches(fleet: &Fleet, desired: &[Desired], branch_mode: bool) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    for d in desired {
        let Some(p) = fleet.image_policies.iter().find(|p| p.name == d.policy) else {
            continue;
        };
        let wb = &p.write_back;
        let push_branch = wb
            .push_branch
            .clone()
            .or_else(|| branch_mode.then(|| format!("image-updates/{}", p.name)));
        let author = wb
            .author
            .as_ref()
            .map(|a| Identity {
                name: a.name.clone(),
                email: a.email.clone(),
            })
            .unwrap_or_else(default_identity);
        match out
            .iter_mut()
            .find(|b| b.branch == wb.branch && b.push_branch == push_branch && b.author == author)
        {
            Some(b) => b.policies.push(p.name.clone()),
            None => out.push(Batch {
                branch: wb.branch.clone(),
                push_branch,
                author,
                policies: vec![p.name.clone()],
            }),
        }
    }
    out
}

/// How a batch ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// Every value already was the desired one.
    NothingToDo,
    /// Dry run: the commit that would be made.
    DryRun,
    Pushed {
        commit: String,
        attempts: u32,
        branch: String,
    },
}

/// A batch's result: the changes of the attempt that was pushed (or planned).
#[derive(Debug, Clone)]
pub struct BatchResult {
    pub committed: Committed,
    pub plan: Plan,
    pub message: String,
}

/// Commits one batch on `source` (which tracks `batch.branch`): fetch, plan the edits on the
/// tip, commit, push (to `batch.push_branch` if set); on a rejected push, fetch, re-plan on the
/// new tip and retry. `on_attempt(n)` runs before each attempt's edits are planned (tests
/// use it to race a push). With `dry_run` the tip is fetched and planned on, nothing more.
pub fn commit_batch(
    source: &mut GitSource,
    fleet: &Fleet,
    batch: &Batch,
    desired: &[Desired],
    options: &PushOptions,
    dry_run: bool,
    on_attempt: &mut dyn FnMut(u32),
) -> Result<BatchResult, ImagesError> {
    let desired: Vec<Desired> = desired
        .iter()
        .filter(|d| batch.policies.contains(&d.policy))
        .cloned()
        .collect();
    if dry_run {
        source.poll()?;
        let tip = source.current().ok_or_else(|| ImagesError::File {
            path: batch.branch.clone(),
            message: "the branch has no commit".into(),
        })?;
        let plan = plan(fleet, tip, &desired)?;
        let message = commit_message(fleet, &plan.changes);
        let committed = if plan.changes.is_empty() {
            Committed::NothingToDo
        } else {
            Committed::DryRun
        };
        return Ok(BatchResult {
            committed,
            plan,
            message,
        });
    }
    let mut last: Option<(Plan, String)> = None;
    let mut attempt = 0;
    let mut failure: Option<ImagesError> = None;
    let pushed = source.commit_and_push_to(batch.push_branch.as_deref(), options, |tip| {
        attempt += 1;
        on_attempt(attempt);
        let p = match plan(fleet, tip, &desired) {
            Ok(p) => p,
            Err(e) => {
                let text = e.to_string();
                failure = Some(e);
                return Err(text);
            }
        };
        let message = commit_message(fleet, &p.changes);
        let changes = p
            .files
            .iter()
            .map(|(path, text)| FileChange::Write {
                path: path.clone(),
                content: text.clone().into_bytes(),
            })
            .collect();
        last = Some((p, message.clone()));
        Ok((
            changes,
            CommitMessage {
                author: batch.author.clone(),
                committer: batch.author.clone(),
                message,
            },
        ))
    });
    let pushed = match (pushed, failure) {
        (Err(_), Some(f)) => return Err(f),
        (r, _) => r?,
    };
    let (mut plan, message) = last.unwrap_or_default();
    let committed = match pushed {
        Pushed::NothingToDo { .. } => {
            // Nothing new was written (in pull-request mode, the branch already holds it).
            plan.changes.clear();
            plan.files.clear();
            Committed::NothingToDo
        }
        Pushed::Commit { commit, attempts } => Committed::Pushed {
            commit: commit.to_string(),
            attempts,
            branch: batch
                .push_branch
                .clone()
                .unwrap_or_else(|| batch.branch.clone()),
        },
    };
    Ok(BatchResult {
        committed,
        plan,
        message,
    })
}
