//! Revisions of a local repository, named the way `git rev-parse` names them.

use std::path::Path;

use gix::ObjectId;
use gix::bstr::ByteSlice;

use super::{GitError, Snapshot, describe};

/// A snapshot of revision `spec` of the local repository `dir` (its work tree or a bare
/// repository), read straight from its object database: no cache, no fetch. `spec` is what
/// `git rev-parse` accepts for one commit (`HEAD~1`, `HEAD^`, `main`, `v1.2`, `origin/main`,
/// a short or full commit id, `main@{1}`, ...), or `A...B` for the merge base of A and B
/// (either side empty means `HEAD`). A range `A..B` names many commits and is refused.
pub fn open_local(dir: &Path, spec: &str) -> Result<Snapshot, GitError> {
    let name = dir.display().to_string();
    let bad = |message: String| GitError::Rev {
        rev: spec.to_string(),
        message,
    };
    let repo = gix::open_opts(dir, gix::open::Options::isolated()).map_err(|e| GitError::Read {
        repo: name.clone(),
        rev: spec.to_string(),
        message: format!("not a Git repository: {}", describe(&e)),
    })?;
    let commit = if let Some((a, b)) = spec.split_once("...") {
        let one = commit_of(&repo, &name, if a.is_empty() { "HEAD" } else { a })?;
        let two = commit_of(&repo, &name, if b.is_empty() { "HEAD" } else { b })?;
        match repo.merge_base(one, two) {
            Ok(Some(base)) => base.detach(),
            Ok(None) => {
                return Err(bad(format!(
                    "{a} and {b} have no common ancestor in repository {name}"
                )));
            }
            Err(e) => return Err(bad(format!("no merge base: {}", describe(&e)))),
        }
    } else if spec.contains("..") {
        return Err(bad(
            "a range names many commits; name one revision, or A...B for the merge base of A and B"
                .into(),
        ));
    } else {
        commit_of(&repo, &name, spec)?
    };
    let read = |message: String| GitError::Read {
        repo: name.clone(),
        rev: spec.to_string(),
        message,
    };
    let tree = repo
        .find_commit(commit)
        .map_err(|e| read(describe(&e)))?
        .tree_id()
        .map_err(|e| read(describe(&e)))?
        .detach();
    Ok(Snapshot::new(repo, commit, tree, name, spec.to_string()))
}

/// The commit one revision names (tags peeled).
fn commit_of(repo: &gix::Repository, name: &str, spec: &str) -> Result<ObjectId, GitError> {
    let bad = |message: String| GitError::Rev {
        rev: spec.to_string(),
        message,
    };
    if spec.is_empty() {
        return Err(bad("empty revision".into()));
    }
    let id = repo
        .rev_parse_single(spec.as_bytes().as_bstr())
        .map_err(|e| {
            bad(format!(
                "names no commit of repository {name}: {}",
                describe(&e)
            ))
        })?;
    let object = id.object().map_err(|e| bad(describe(&e)))?;
    let kind = object.kind;
    let commit = object
        .peel_to_commit()
        .map_err(|_| bad(format!("names a {kind}, not a commit")))?;
    Ok(commit.id)
}
