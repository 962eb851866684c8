//! Write-back: a commit from a set of file changes on the tracked branch, pushed with the
//! `git` CLI (`--force-with-lease`, so a concurrent push is never overwritten), re-applied on
//! the new tip and retried with backoff when the branch moved.

use std::process::Command;
use std::time::Duration;

use gix::ObjectId;
use gix::objs::tree::EntryKind;

use flotilla_spec::types::RepoPath;

use super::{GitError, GitSource, Snapshot, describe};

/// A person in a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

/// Who wrote a commit, who committed it, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMessage {
    pub author: Identity,
    pub committer: Identity,
    pub message: String,
}

/// One file change, relative to the repository root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileChange {
    Write { path: RepoPath, content: Vec<u8> },
    Delete { path: RepoPath },
}

/// Bounds on the push-rebase-retry loop.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Pushes tried in all (at least 1).
    pub max_attempts: u32,
    /// Wait after the first rejection; doubled after each further one.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Signs each commit (SSH signature in its `gpgsig` header), so that daemons verifying
    /// commits accept it.
    pub signer: Option<std::sync::Arc<super::CommitSigner>>,
}

impl Default for PushOptions {
    fn default() -> PushOptions {
        PushOptions {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            signer: None,
        }
    }
}

/// What [`GitSource::commit_and_push`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    /// The changes were already in the branch's tip: nothing to commit.
    NothingToDo { tip: ObjectId },
    /// `commit` is now the branch tip on the remote.
    Commit { commit: ObjectId, attempts: u32 },
}

/// How one `git push` ended.
enum PushResult {
    Ok,
    /// The branch moved since we fetched it (stale lease, non-fast-forward).
    Rejected(String),
}

impl GitSource {
    fn push_err(&self, message: impl std::fmt::Display) -> GitError {
        GitError::Push {
            repo: self.remote.display.clone(),
            rev: self.rev.to_string(),
            message: self.remote.redact(message.to_string()),
        }
    }

    /// Fetches the tracked branch, applies `changes(tip)` to its tip, commits and pushes.
    /// When the push is rejected because the branch moved, fetches again, re-applies
    /// `changes` on the new tip and retries (at most `options.max_attempts` pushes, with
    /// exponential backoff). The current snapshot follows the pushed commit.
    pub fn commit_and_push<F>(
        &mut self,
        message: &CommitMessage,
        options: &PushOptions,
        mut changes: F,
    ) -> Result<Pushed, GitError>
    where
        F: FnMut(&Snapshot) -> Result<Vec<FileChange>, String>,
    {
        self.commit_and_push_to(None, options, |tip| {
            changes(tip).map(|c| (c, message.clone()))
        })
    }

    /// Like [`Self::commit_and_push`], with the message computed with the changes (per
    /// attempt), and optionally pushing to `target`, a branch other than the tracked one
    /// (e.g. `image-updates/frontend` for a pull request). The target branch is created from
    /// the tracked tip, or replaced by a commit on the tracked tip if it exists (with a lease
    /// on the value seen just before, so a concurrent update of it is retried, never
    /// overwritten blindly); the tracked branch and the current snapshot stay as they were.
    pub fn commit_and_push_to<F>(
        &mut self,
        target: Option<&str>,
        options: &PushOptions,
        mut changes: F,
    ) -> Result<Pushed, GitError>
    where
        F: FnMut(&Snapshot) -> Result<(Vec<FileChange>, CommitMessage), String>,
    {
        let Some(branch) = self.rev.branch().map(str::to_string) else {
            return Err(GitError::NotABranch {
                repo: self.remote.display.clone(),
                rev: self.rev.to_string(),
                what: match self.rev {
                    super::Rev::Commit(_) => "a commit",
                    _ => "the remote HEAD (name the branch)",
                },
            });
        };
        let target = match target {
            Some(t) if t != branch => {
                super::Rev::parse(t).map_err(|e| self.push_err(format!("target branch: {e}")))?;
                Some(t.to_string())
            }
            _ => None,
        };
        let attempts = options.max_attempts.max(1);
        let mut backoff = options.initial_backoff;
        for attempt in 1..=attempts {
            self.poll()?;
            if self
                .tracking_tip(&format!("refs/flotilla/heads/{branch}"))?
                .is_none()
            {
                // The name resolved to a tag, not a branch.
                return Err(GitError::NotABranch {
                    repo: self.remote.display.clone(),
                    rev: self.rev.to_string(),
                    what: "a tag",
                });
            }
            let Some(tip) = self.current.clone() else {
                return Err(GitError::RefNotFound {
                    repo: self.remote.display.clone(),
                    rev: self.rev.to_string(),
                    local: self.remote.is_local(),
                });
            };
            let (edits, message) = changes(&tip).map_err(|e| GitError::Change {
                repo: self.remote.display.clone(),
                rev: self.rev.to_string(),
                message: e,
            })?;
            let tree = self.apply(&tip, &edits)?;
            if tree == tip.tree() {
                return Ok(Pushed::NothingToDo { tip: tip.commit() });
            }
            let (dest, expected) = match &target {
                None => (branch.clone(), Some(tip.commit())),
                Some(t) => (t.clone(), self.remote_tip(t)?),
            };
            if target.is_some()
                && let Some(existing) = expected
                && self.is_same_change(existing, tree, tip.commit())
            {
                // The target branch already holds this change on this tip (pushed by an
                // earlier run through this cache): do not replace it with an equal commit.
                return Ok(Pushed::NothingToDo { tip: existing });
            }
            let commit = self.write_commit(&message, tree, tip.commit(), options)?;
            match self.git_push(&dest, expected, commit)? {
                PushResult::Ok => {
                    tracing::info!(repo = %self.remote, branch = %dest, %commit, attempt, "pushed");
                    if target.is_none() {
                        self.record_push(commit)?;
                    }
                    return Ok(Pushed::Commit {
                        commit,
                        attempts: attempt,
                    });
                }
                PushResult::Rejected(why) => {
                    tracing::info!(
                        repo = %self.remote, branch = %dest, attempt, reason = %why,
                        "push rejected: the branch moved; fetching and re-applying"
                    );
                    if attempt < attempts {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(options.max_backoff);
                    }
                }
            }
        }
        Err(GitError::PushRejected {
            repo: self.remote.display.clone(),
            rev: self.rev.to_string(),
            attempts,
        })
    }

    /// True if `commit` is in the cache, has `tree` and has exactly `parent` as its parent.
    fn is_same_change(&self, commit: ObjectId, tree: ObjectId, parent: ObjectId) -> bool {
        let Ok(object) = self.repo.find_object(commit) else {
            return false;
        };
        let Ok(c) = object.try_into_commit() else {
            return false;
        };
        let parents: Vec<ObjectId> = c.parent_ids().map(|p| p.detach()).collect();
        c.tree_id().is_ok_and(|t| t.detach() == tree) && parents == [parent]
    }

    /// Where `branch` points on the remote now (`git ls-remote`), `None` if it does not exist.
    fn remote_tip(&self, branch: &str) -> Result<Option<ObjectId>, GitError> {
        let dst = format!("refs/heads/{branch}");
        let out = self
            .git_command()
            .args(["ls-remote", "--heads"])
            .arg(&self.remote.url)
            .arg(&dst)
            .output()
            .map_err(|e| self.push_err(format!("cannot run git: {e}")))?;
        if !out.status.success() {
            return Err(self.push_err(format!(
                "git ls-remote exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        for line in stdout.lines() {
            if let Some((id, name)) = line.split_once('\t')
                && name == dst
            {
                return ObjectId::from_hex(id.as_bytes())
                    .map(Some)
                    .map_err(|e| self.push_err(format!("git ls-remote: {e}")));
            }
        }
        Ok(None)
    }

    /// Writes the blobs and trees of `edits` on top of `base`'s tree.
    fn apply(&self, base: &Snapshot, edits: &[FileChange]) -> Result<ObjectId, GitError> {
        let repo = base.repo();
        let err = |e: gix::Error| self.push_err(format!("cannot build the tree: {}", describe(&e)));
        let mut editor = repo.edit_tree(base.tree()).map_err(err)?;
        for edit in edits {
            match edit {
                FileChange::Write { path, content } => {
                    if path.as_str() == "." {
                        return Err(self.push_err("cannot write the repository root"));
                    }
                    let blob = repo.write_blob(content).map_err(err)?;
                    editor
                        .upsert(path.as_str(), EntryKind::Blob, blob.detach())
                        .map_err(err)?;
                }
                FileChange::Delete { path } => {
                    editor.remove(path.as_str()).map_err(err)?;
                }
            }
        }
        Ok(editor.write().map_err(err)?.detach())
    }

    fn write_commit(
        &self,
        message: &CommitMessage,
        tree: ObjectId,
        parent: ObjectId,
        options: &PushOptions,
    ) -> Result<ObjectId, GitError> {
        let now = gix::date::Time::now_local_or_utc();
        let sig = |who: &Identity| gix::actor::Signature {
            name: who.name.as_str().into(),
            email: who.email.as_str().into(),
            time: now,
        };
        let mut commit = gix::objs::Commit {
            tree,
            parents: [parent].into_iter().collect(),
            author: sig(&message.author),
            committer: sig(&message.committer),
            encoding: None,
            message: message.message.as_str().into(),
            extra_headers: Vec::new(),
        };
        if let Some(signer) = &options.signer {
            self.sign_commit(&mut commit, signer)?;
        }
        self.repo
            .write_object(&commit)
            .map(|id| id.detach())
            .map_err(|e| self.push_err(format!("cannot write the commit: {}", describe(&e))))
    }

    /// Adds the `gpgsig` header: the signature of the commit as it is without it, which is
    /// what git (and [`super::verify::split_signed`]) takes as the signed payload.
    fn sign_commit(
        &self,
        commit: &mut gix::objs::Commit,
        signer: &super::CommitSigner,
    ) -> Result<(), GitError> {
        use gix::objs::WriteTo;
        let mut payload = Vec::new();
        commit
            .write_to(&mut payload)
            .map_err(|e| self.push_err(format!("cannot encode the commit: {e}")))?;
        let armored = signer.sign(&payload).map_err(|e| self.push_err(e))?;
        commit
            .extra_headers
            .push(("gpgsig".into(), armored.trim_end().into()));
        let mut signed = Vec::new();
        commit
            .write_to(&mut signed)
            .map_err(|e| self.push_err(format!("cannot encode the commit: {e}")))?;
        match super::verify::split_signed(&signed) {
            Some(parts) if parts.payload == payload => Ok(()),
            _ => Err(self.push_err(
                "the signed commit does not split back into what was signed; nothing pushed",
            )),
        }
    }

    /// `git` run against the cache repository, with credentials supplied by a one-off
    /// credential helper that reads them from the child's environment (never the command
    /// line) and interactive prompts disabled.
    fn git_command(&self) -> Command {
        let mut cmd = Command::new("git");
        cmd.arg("--git-dir")
            .arg(&self.cache)
            .args(["-c", "credential.helper="])
            .args([
                "-c",
                "credential.helper=!f() { test \"$1\" = get || exit 0; echo username=\"$FLOTILLA_GIT_USERNAME\"; echo password=\"$FLOTILLA_GIT_PASSWORD\"; }; f",
            ])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS")
            .env_remove("FLOTILLA_GIT_USERNAME")
            .env_remove("FLOTILLA_GIT_PASSWORD");
        if let Some(c) = &self.remote.credentials {
            cmd.env("FLOTILLA_GIT_USERNAME", &c.username)
                .env("FLOTILLA_GIT_PASSWORD", c.password());
        }
        cmd
    }

    /// `git push --porcelain --force-with-lease=refs/heads/B:EXPECTED URL NEW:refs/heads/B`
    /// from the cache repository; `expected: None` means the branch must not exist yet.
    fn git_push(
        &self,
        branch: &str,
        expected: Option<ObjectId>,
        new: ObjectId,
    ) -> Result<PushResult, GitError> {
        let dst = format!("refs/heads/{branch}");
        let mut cmd = self.git_command();
        cmd.args(["push", "--porcelain"])
            .arg(format!(
                "--force-with-lease={dst}:{}",
                expected.map(|e| e.to_string()).unwrap_or_default()
            ))
            .arg(&self.remote.url)
            .arg(format!("{new}:{dst}"));
        let out = cmd
            .output()
            .map_err(|e| self.push_err(format!("cannot run git: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Porcelain: "<flag>\t<from>:<to>\t<summary> (<reason>)" per ref.
        let line = stdout
            .lines()
            .find(|l| l.split('\t').nth(1).is_some_and(|r| r.ends_with(&dst)));
        match line {
            Some(l) if out.status.success() && !l.starts_with('!') => Ok(PushResult::Ok),
            Some(l) if l.starts_with('!') => {
                let summary = l.split('\t').nth(2).unwrap_or("").to_string();
                if ["stale info", "fetch first", "non-fast-forward"]
                    .iter()
                    .any(|r| summary.contains(r))
                {
                    Ok(PushResult::Rejected(summary))
                } else {
                    Err(self.push_err(format!("{summary}: {}", stderr.trim())))
                }
            }
            _ => Err(self.push_err(format!(
                "git push exited with {}: {}",
                out.status,
                stderr.trim()
            ))),
        }
    }

    /// After a successful push the tracking ref and the current snapshot are the new commit.
    fn record_push(&mut self, commit: ObjectId) -> Result<(), GitError> {
        if let Some((_, local)) = self.rev.candidates().into_iter().next() {
            self.repo
                .reference(
                    local.as_str(),
                    commit,
                    gix::refs::transaction::PreviousValue::Any,
                    "flotilla: pushed",
                )
                .map_err(|e| self.push_err(format!("cannot update {local}: {}", describe(&e))))?;
        }
        self.current = Some(self.snapshot_of(commit)?);
        Ok(())
    }
}
