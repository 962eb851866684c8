//! An immutable view of one commit's tree, read straight from the object database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gix::ObjectId;
use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind;

use flotilla_spec::types::RepoPath;
use flotilla_spec::{PathKind, RepoError, RepoFiles};

use crate::MAX_FILE_BYTES;

/// How many symbolic links one lookup may follow (as Linux's `MAXSYMLINKS`).
const MAX_LINKS: usize = 40;

/// Decoded trees kept per snapshot (shared by its clones): a path lookup walks from the root,
/// and without it every lookup would inflate and scan each tree on the way again.
const TREE_CACHE_LIMIT: usize = 50_000;

/// One decoded tree: entry name -> (kind, id).
type Entries = HashMap<Vec<u8>, (EntryKind, ObjectId)>;

/// The files of one commit. Cheap to clone; `Send`, so each thread can hold its own clone.
#[derive(Clone)]
pub struct Snapshot {
    repo: gix::Repository,
    commit: ObjectId,
    tree: ObjectId,
    repo_name: String,
    rev: String,
    trees: Arc<Mutex<HashMap<ObjectId, Arc<Entries>>>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("repo", &self.repo_name)
            .field("rev", &self.rev)
            .field("commit", &self.commit)
            .finish()
    }
}

/// Where a path leads.
enum Target {
    Dir(ObjectId),
    File(ObjectId),
}

impl Snapshot {
    pub(crate) fn new(
        repo: gix::Repository,
        commit: ObjectId,
        tree: ObjectId,
        repo_name: String,
        rev: String,
    ) -> Snapshot {
        Snapshot {
            repo,
            commit,
            tree,
            repo_name,
            rev,
            trees: Arc::default(),
        }
    }

    /// The entries of tree `id`, decoded once.
    fn entries(&self, path: &RepoPath, id: ObjectId) -> Result<Arc<Entries>, RepoError> {
        if let Ok(cache) = self.trees.lock()
            && let Some(entries) = cache.get(&id)
        {
            return Ok(entries.clone());
        }
        let tree = self.repo.find_tree(id).map_err(|e| self.io(path, e))?;
        let mut entries = Entries::new();
        for entry in tree.iter() {
            let entry = entry.map_err(|e| self.io(path, e))?;
            entries.insert(
                entry.filename().to_vec(),
                (entry.mode().kind(), entry.object_id()),
            );
        }
        let entries = Arc::new(entries);
        if let Ok(mut cache) = self.trees.lock() {
            if cache.len() >= TREE_CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(id, entries.clone());
        }
        Ok(entries)
    }

    /// The commit this snapshot shows.
    pub fn commit(&self) -> ObjectId {
        self.commit
    }

    /// The root tree of the commit.
    pub fn tree(&self) -> ObjectId {
        self.tree
    }

    /// The repository, as shown in messages (credentials redacted).
    pub fn repo_name(&self) -> &str {
        &self.repo_name
    }

    /// The revision that was asked for (branch, tag, ref or commit).
    pub fn rev(&self) -> &str {
        &self.rev
    }

    pub(crate) fn repo(&self) -> &gix::Repository {
        &self.repo
    }

    fn io(&self, path: &RepoPath, e: gix::Error) -> RepoError {
        RepoError::Io {
            path: path.to_string(),
            message: format!(
                "{} at {}: {}",
                self.repo_name,
                self.commit,
                super::describe(&e)
            ),
        }
    }

    /// Follows `path` from the root tree, resolving symbolic links inside the tree the way
    /// the file system would; a link that is absolute or climbs above the root escapes.
    fn resolve(&self, path: &RepoPath) -> Result<Target, RepoError> {
        let mut pending: Vec<String> = if path.as_str() == "." {
            Vec::new()
        } else {
            path.as_str().split('/').rev().map(str::to_string).collect()
        };
        // The trees from the root down to the current directory (root excluded).
        let mut stack: Vec<ObjectId> = Vec::new();
        let mut links = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    if stack.pop().is_none() {
                        return Err(RepoError::Escapes(path.to_string()));
                    }
                    continue;
                }
                _ => {}
            }
            let dir = stack.last().copied().unwrap_or(self.tree);
            let entries = self.entries(path, dir)?;
            let Some(&(kind, id)) = entries.get(part.as_bytes()) else {
                return Err(RepoError::NotFound(path.to_string()));
            };
            match kind {
                EntryKind::Tree => stack.push(id),
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    if pending.is_empty() {
                        return Ok(Target::File(id));
                    }
                    return Err(RepoError::NotFound(path.to_string()));
                }
                EntryKind::Link => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(RepoError::Io {
                            path: path.to_string(),
                            message: "too many levels of symbolic links".into(),
                        });
                    }
                    let blob = self.repo.find_blob(id).map_err(|e| self.io(path, e))?;
                    let target = blob.data.to_str().map_err(|_| RepoError::Io {
                        path: path.to_string(),
                        message: "a symbolic link with a target that is not UTF-8".into(),
                    })?;
                    if target.starts_with('/') || target.is_empty() {
                        return Err(RepoError::Escapes(path.to_string()));
                    }
                    pending.extend(target.split('/').rev().map(str::to_string));
                }
                // A submodule: its commit is not in this repository.
                EntryKind::Commit => return Err(RepoError::NotFound(path.to_string())),
            }
        }
        Ok(Target::Dir(stack.last().copied().unwrap_or(self.tree)))
    }
}

impl RepoFiles for Snapshot {
    fn kind(&self, path: &RepoPath) -> PathKind {
        match self.resolve(path) {
            Ok(Target::Dir(_)) => PathKind::Dir,
            Ok(Target::File(_)) => PathKind::File,
            Err(RepoError::Escapes(_)) => PathKind::Escapes,
            Err(_) => PathKind::Missing,
        }
    }

    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, RepoError> {
        let id = match self.resolve(path)? {
            Target::File(id) => id,
            Target::Dir(_) => return Err(RepoError::IsADirectory(path.to_string())),
        };
        let header = self.repo.find_header(id).map_err(|e| self.io(path, e))?;
        if header.size() > MAX_FILE_BYTES {
            return Err(RepoError::TooLarge {
                path: path.to_string(),
                size: header.size(),
                limit: MAX_FILE_BYTES,
            });
        }
        let mut blob = self.repo.find_blob(id).map_err(|e| self.io(path, e))?;
        Ok(blob.take_data())
    }

    fn list(&self, dir: &RepoPath) -> Result<Vec<String>, RepoError> {
        let id = match self.resolve(dir)? {
            Target::Dir(id) => id,
            Target::File(_) => return Err(RepoError::NotADirectory(dir.to_string())),
        };
        let entries = self.entries(dir, id)?;
        let mut names = Vec::new();
        for name in entries.keys() {
            // Names that are not UTF-8 cannot be named from fleet.yaml: skip them.
            if let Ok(name) = name.to_str()
                && name != ".git"
            {
                names.push(name.to_string());
            }
        }
        names.sort();
        Ok(names)
    }
}
