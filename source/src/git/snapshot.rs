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

/// Bytes of inflated delta bases kept while reading (as `git`'s `core.deltaBaseCacheLimit`,
/// 96 MiB by default). Files in a fleet repository are alike, so packs hold long delta chains:
/// without the bases at hand, each blob would inflate its whole chain again. The cache grows
/// only as bases are met.
const DELTA_BASE_CACHE_BYTES: usize = 96 << 20;

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
        let mut repo = repo;
        with_delta_base_cache(&mut repo);
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

    /// The first line of the commit's message, at most 200 characters (`None` when the commit
    /// cannot be read, or is over the size a commit may have).
    pub fn summary(&self) -> Option<String> {
        const MAX_COMMIT_BYTES: usize = 1 << 20;
        let header = self.repo().find_header(self.commit).ok()?;
        if header.size() > MAX_COMMIT_BYTES as u64 {
            return None;
        }
        let commit = self.repo().find_commit(self.commit).ok()?;
        let message = commit.message().ok()?;
        Some(message.summary().to_string().chars().take(200).collect())
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

    /// Every file of the snapshot with its bytes, in one walk of the tree: each tree is
    /// decoded once and each blob read by id, without resolving its path from the root again.
    /// The result is what [`RepoFiles::read`] gives for each path (each directory's files
    /// first, then its subdirectories, both in tree order): regular files, and symbolic
    /// links that lead to a file inside the tree; a link that escapes or cannot be followed
    /// carries its error, a link to a directory is not followed (as a walk of the work tree
    /// would not). Like [`RepoFiles::list`], names that are not UTF-8 and `.git` are skipped,
    /// and so are submodules. Fails as a whole only when a tree cannot be read.
    #[allow(clippy::type_complexity)]
    pub fn read_all(&self) -> Result<Vec<(String, Result<Vec<u8>, RepoError>)>, RepoError> {
        let root = RepoPath::parse(".").map_err(|e| RepoError::Io {
            path: ".".into(),
            message: e.to_string(),
        })?;
        let mut files = Vec::new();
        // Trees still to walk, with their path prefix ("" or "dir/"); popped last first, so
        // pushed in reverse to keep tree order.
        let mut pending: Vec<(String, ObjectId)> = vec![(String::new(), self.tree)];
        while let Some((prefix, id)) = pending.pop() {
            let tree = self.repo.find_tree(id).map_err(|e| self.io(&root, e))?;
            let mut subtrees = Vec::new();
            for entry in tree.iter() {
                let entry = entry.map_err(|e| self.io(&root, e))?;
                let Ok(name) = entry.filename().to_str() else {
                    continue;
                };
                if name == ".git" {
                    continue;
                }
                let path = format!("{prefix}{name}");
                match entry.mode().kind() {
                    EntryKind::Tree => subtrees.push((format!("{path}/"), entry.object_id())),
                    EntryKind::Blob | EntryKind::BlobExecutable => {
                        let data = self.read_blob(&path, entry.object_id());
                        files.push((path, data));
                    }
                    EntryKind::Link => {
                        let data = RepoPath::parse(&path)
                            .map_err(|e| RepoError::Io {
                                path: path.clone(),
                                message: e.to_string(),
                            })
                            .and_then(|p| self.read(&p));
                        if !matches!(data, Err(RepoError::IsADirectory(_))) {
                            files.push((path, data));
                        }
                    }
                    EntryKind::Commit => {}
                }
            }
            pending.extend(subtrees.into_iter().rev());
        }
        Ok(files)
    }

    /// The bytes of blob `id` (at `path`, for messages), refusing blobs over the size limit
    /// before inflating them.
    fn read_blob(&self, path: &str, id: ObjectId) -> Result<Vec<u8>, RepoError> {
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

    pub(crate) fn repo(&self) -> &gix::Repository {
        &self.repo
    }

    fn io(&self, path: &(impl std::fmt::Display + ?Sized), e: gix::Error) -> RepoError {
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
        self.resolve_named(path).map(|(t, _)| t)
    }

    /// Like `resolve`, also giving the path reached with every link followed (`.` for the
    /// root): two paths lead to the same place exactly when these are equal.
    fn resolve_named(&self, path: &RepoPath) -> Result<(Target, String), RepoError> {
        let mut pending: Vec<String> = if path.as_str() == "." {
            Vec::new()
        } else {
            path.as_str().split('/').rev().map(str::to_string).collect()
        };
        // The trees from the root down to the current directory (root excluded).
        let mut stack: Vec<ObjectId> = Vec::new();
        // The names of those trees.
        let mut names: Vec<String> = Vec::new();
        let mut links = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    if stack.pop().is_none() {
                        return Err(RepoError::Escapes(path.to_string()));
                    }
                    names.pop();
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
                EntryKind::Tree => {
                    stack.push(id);
                    names.push(part);
                }
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    if pending.is_empty() {
                        names.push(part);
                        return Ok((Target::File(id), names.join("/")));
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
        let named = if names.is_empty() {
            ".".to_string()
        } else {
            names.join("/")
        };
        Ok((
            Target::Dir(stack.last().copied().unwrap_or(self.tree)),
            named,
        ))
    }
}

/// Gives `repo` (and its future clones) a delta base cache keyed by pack entry, sized like
/// `git`'s, instead of gix's default 64-entry list, which thrashes on long delta chains.
fn with_delta_base_cache(repo: &mut gix::Repository) {
    repo.objects.set_pack_cache(|| {
        Box::new(gix::odb::pack::cache::lru::MemoryCappedHashmap::new(
            DELTA_BASE_CACHE_BYTES,
        ))
    });
}

impl RepoFiles for Snapshot {
    fn canonical(&self, path: &RepoPath) -> Option<String> {
        self.resolve_named(path).ok().map(|(_, named)| named)
    }

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
        self.read_blob(path.as_str(), id)
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::git::{GitSource, Remote, Rev};

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
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn rp(s: &str) -> RepoPath {
        RepoPath::parse(s).expect("path")
    }

    /// Every path `kind` calls a file, found by listing directories (links to directories
    /// not followed), with what `read` gives for it.
    fn walk(s: &Snapshot, dir: &str, out: &mut Vec<(String, Result<Vec<u8>, RepoError>)>) {
        for name in s.list(&rp(dir)).expect("list") {
            let path = if dir == "." {
                name
            } else {
                format!("{dir}/{name}")
            };
            let through_link = s
                .entries(
                    &rp(dir),
                    match s.resolve(&rp(dir)) {
                        Ok(Target::Dir(id)) => id,
                        _ => unreachable!(),
                    },
                )
                .expect("entries")
                .get(path.rsplit('/').next().expect("name").as_bytes())
                .is_some_and(|(kind, _)| *kind == EntryKind::Link);
            match s.kind(&rp(&path)) {
                PathKind::Dir if !through_link => walk(s, &path, out),
                PathKind::Dir => {}
                _ => {
                    let data = s.read(&rp(&path));
                    out.push((path, data));
                }
            }
        }
    }

    #[test]
    fn links_are_followed_to_one_canonical_path_and_big_blobs_refused() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(work.join("apps")).expect("mkdir");
        std::fs::write(work.join("apps/a.yaml"), "a: 1\n").expect("write");
        std::os::unix::fs::symlink(".", work.join("apps/l1")).expect("link");
        std::os::unix::fs::symlink(".", work.join("apps/l2")).expect("link");
        // 100 MB of zeros: compresses to little, over the 64 MiB limit.
        std::fs::File::create(work.join("big.yaml"))
            .and_then(|f| f.set_len(100_000_000))
            .expect("big file");
        git(&work, &["init", "--quiet", "-b", "main"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "loop"]);
        let remote = Remote::parse(work.to_str().expect("utf-8"), None).expect("remote");
        let mut source = GitSource::open(
            remote,
            Rev::parse("main").expect("rev"),
            tmp.path().join("cache"),
        )
        .expect("open");
        source.poll().expect("fetch");
        let s = source.current().expect("snapshot");
        assert_eq!(s.canonical(&rp("apps/l1/l2/l1")).as_deref(), Some("apps"));
        assert_eq!(
            s.canonical(&rp("apps/l2/a.yaml")).as_deref(),
            Some("apps/a.yaml")
        );
        assert_eq!(s.canonical(&rp(".")).as_deref(), Some("."));
        assert_eq!(
            s.read(&rp("big.yaml")),
            Err(RepoError::TooLarge {
                path: "big.yaml".into(),
                size: 100_000_000,
                limit: MAX_FILE_BYTES
            })
        );
    }

    #[test]
    fn read_all_gives_what_read_gives_for_every_file() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let work = tmp.path().join("work");
        std::fs::create_dir_all(work.join("apps/web/deep")).expect("mkdir");
        std::fs::create_dir_all(work.join("b-dir")).expect("mkdir");
        std::fs::write(work.join("fleet.yaml"), "kind: Fleet\n").expect("write");
        std::fs::write(work.join("apps/web/a.yaml"), "a: 1\n").expect("write");
        std::fs::write(work.join("apps/web/deep/c.yaml"), "c: 3\n").expect("write");
        std::fs::write(work.join("apps/web.yaml"), "sorts: between\n").expect("write");
        std::fs::write(work.join("b-dir/empty"), "").expect("write");
        std::os::unix::fs::symlink("web/a.yaml", work.join("apps/link.yaml")).expect("link");
        std::os::unix::fs::symlink("../../etc/passwd", work.join("apps/out")).expect("link");
        std::os::unix::fs::symlink("apps/web", work.join("to-dir")).expect("link");
        std::os::unix::fs::symlink("nowhere", work.join("dangling")).expect("link");
        git(&work, &["init", "--quiet", "-b", "main"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "files"]);

        let remote = Remote::parse(work.to_str().expect("utf-8"), None).expect("remote");
        let mut source = GitSource::open(
            remote,
            Rev::parse("main").expect("rev"),
            tmp.path().join("cache"),
        )
        .expect("open");
        source.poll().expect("fetch");
        let snapshot = source.current().expect("snapshot");

        let all = snapshot.read_all().expect("read_all");
        let mut expected = Vec::new();
        walk(snapshot, ".", &mut expected);
        let mut sorted = all.clone();
        sorted.sort_by(|a, b| a.0.cmp(&b.0));
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(sorted, expected);

        let paths: Vec<&str> = all.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dangling",
                "fleet.yaml",
                "apps/link.yaml",
                "apps/out",
                "apps/web.yaml",
                "apps/web/a.yaml",
                "apps/web/deep/c.yaml",
                "b-dir/empty",
            ]
        );
        let get = |p: &str| all.iter().find(|(q, _)| q == p).expect("path").1.clone();
        assert_eq!(get("apps/link.yaml"), Ok(b"a: 1\n".to_vec()));
        assert_eq!(get("apps/out"), Err(RepoError::Escapes("apps/out".into())));
        assert_eq!(get("dangling"), Err(RepoError::NotFound("dangling".into())));
        assert_eq!(get("b-dir/empty"), Ok(Vec::new()));
    }
}
