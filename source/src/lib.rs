//! Where a fleet repository's files come from.
//!
//! Two kinds of source, one read interface ([`RepoFiles`]):
//! - [`LocalTree`], a directory on disk (a work tree with uncommitted changes, for
//!   `flotilla validate`, `plan` and `render` on a developer's machine);
//! - [`git::GitSource`], a remote repository and revision fetched into a bare cache, yielding
//!   immutable [`git::Snapshot`]s read straight from the object database, with polling and
//!   write-back (commit and push).
//!
//! [`watch::LocalWatcher`] reports debounced changes to a local work tree.
//!
//! Every read is confined to the repository: paths are [`RepoPath`]s (which cannot name a
//! place outside the root), and symbolic links that resolve outside the root are refused.

pub mod git;
pub mod watch;

use std::io;
use std::path::{Path, PathBuf};

use flotilla_spec::types::RepoPath;
use flotilla_spec::{PathKind, RepoError, RepoFiles};

/// Errors reading from a source. Paths in messages are repository-relative.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("repository root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("{path}: does not exist in the repository")]
    NotFound { path: String },
    #[error("{path}: leads outside the repository (through a symbolic link)")]
    Escapes { path: String },
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("{path}: is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { path: String, size: u64, limit: u64 },
}

/// A repository checked out (or just written) on the local file system.
#[derive(Debug, Clone)]
pub struct LocalTree {
    root: PathBuf,
}

/// The largest file flotilla reads from a repository: the largest text the YAML reader
/// accepts (`flotilla_spec::Limits::max_bytes`), so a file that could never be parsed is
/// refused from its size, before a byte of it is read.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

impl LocalTree {
    /// Opens a directory as a repository root.
    pub fn open(root: impl AsRef<Path>) -> Result<LocalTree, SourceError> {
        let root = root.as_ref();
        let canonical = root.canonicalize().map_err(|source| SourceError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        if !canonical.is_dir() {
            return Err(SourceError::Root {
                path: root.to_path_buf(),
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        Ok(LocalTree { root: canonical })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Resolves a repository path to a real path inside the root (following symlinks).
    fn resolve(&self, path: &RepoPath) -> Result<PathBuf, SourceError> {
        let joined = if path.as_str() == "." {
            self.root.clone()
        } else {
            self.root.join(path.as_str())
        };
        match joined.canonicalize() {
            Ok(real) if real.starts_with(&self.root) => Ok(real),
            Ok(_) => Err(SourceError::Escapes {
                path: path.to_string(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A dangling symlink pointing outside is still an escape worth naming.
                match std::fs::read_link(&joined) {
                    Ok(target) if target.is_absolute() && !target.starts_with(&self.root) => {
                        Err(SourceError::Escapes {
                            path: path.to_string(),
                        })
                    }
                    _ => Err(SourceError::NotFound {
                        path: path.to_string(),
                    }),
                }
            }
            Err(source) => Err(SourceError::Io {
                path: path.to_string(),
                source,
            }),
        }
    }

    /// Reads a file as UTF-8 text.
    pub fn read_text(&self, path: &RepoPath) -> Result<String, SourceError> {
        let real = self.resolve(path)?;
        let meta = std::fs::metadata(&real).map_err(|source| SourceError::Io {
            path: path.to_string(),
            source,
        })?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(SourceError::TooLarge {
                path: path.to_string(),
                size: meta.len(),
                limit: MAX_FILE_BYTES,
            });
        }
        std::fs::read_to_string(&real).map_err(|source| SourceError::Io {
            path: path.to_string(),
            source,
        })
    }
}

impl From<SourceError> for RepoError {
    fn from(e: SourceError) -> RepoError {
        match e {
            SourceError::NotFound { path } => RepoError::NotFound(path),
            SourceError::Escapes { path } => RepoError::Escapes(path),
            SourceError::TooLarge { path, size, limit } => {
                RepoError::TooLarge { path, size, limit }
            }
            SourceError::Io { path, source } => RepoError::Io {
                path,
                message: source.to_string(),
            },
            SourceError::Root { path, source } => RepoError::Io {
                path: path.display().to_string(),
                message: source.to_string(),
            },
        }
    }
}

impl RepoFiles for LocalTree {
    fn canonical(&self, path: &RepoPath) -> Option<String> {
        let real = self.resolve(path).ok()?;
        let rel = real.strip_prefix(&self.root).ok()?;
        let s = rel.to_str()?;
        Some(if s.is_empty() { ".".into() } else { s.into() })
    }

    fn kind(&self, path: &RepoPath) -> PathKind {
        match self.resolve(path) {
            Ok(real) if real.is_dir() => PathKind::Dir,
            Ok(_) => PathKind::File,
            Err(SourceError::Escapes { .. }) => PathKind::Escapes,
            Err(_) => PathKind::Missing,
        }
    }

    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, RepoError> {
        let real = self.resolve(path)?;
        if real.is_dir() {
            return Err(RepoError::IsADirectory(path.to_string()));
        }
        let size = std::fs::metadata(&real).map(|m| m.len()).unwrap_or(0);
        if size > MAX_FILE_BYTES {
            return Err(RepoError::TooLarge {
                path: path.to_string(),
                size,
                limit: MAX_FILE_BYTES,
            });
        }
        std::fs::read(&real).map_err(|e| RepoError::Io {
            path: path.to_string(),
            message: e.to_string(),
        })
    }

    fn list(&self, dir: &RepoPath) -> Result<Vec<String>, RepoError> {
        let real = self.resolve(dir)?;
        if !real.is_dir() {
            return Err(RepoError::NotADirectory(dir.to_string()));
        }
        let io = |e: io::Error| RepoError::Io {
            path: dir.to_string(),
            message: e.to_string(),
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&real).map_err(io)? {
            let entry = entry.map_err(io)?;
            // Names that are not UTF-8 cannot be named from fleet.yaml: skip them.
            if let Ok(name) = entry.file_name().into_string()
                && name != ".git"
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RepoPath {
        RepoPath::parse(s).expect("valid repo path")
    }

    #[test]
    fn reads_inside_and_refuses_symlinks_out() -> Result<(), Box<dyn std::error::Error>> {
        let outside = tempfile::tempdir()?;
        std::fs::write(outside.path().join("secret"), "s3cr3t")?;
        let repo = tempfile::tempdir()?;
        std::fs::create_dir(repo.path().join("apps"))?;
        std::fs::write(repo.path().join("apps/a.yaml"), "kind: ConfigMap")?;
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(
                outside.path().join("secret"),
                repo.path().join("apps/leak"),
            )?;
            std::os::unix::fs::symlink("a.yaml", repo.path().join("apps/alias.yaml"))?;
        }
        let tree = LocalTree::open(repo.path())?;
        assert_eq!(tree.kind(&rp("apps")), PathKind::Dir);
        assert_eq!(tree.kind(&rp("apps/a.yaml")), PathKind::File);
        assert_eq!(tree.kind(&rp("apps/missing")), PathKind::Missing);
        assert_eq!(tree.read_text(&rp("apps/a.yaml"))?, "kind: ConfigMap");
        #[cfg(unix)]
        {
            assert_eq!(tree.kind(&rp("apps/leak")), PathKind::Escapes);
            assert!(matches!(
                tree.read_text(&rp("apps/leak")),
                Err(SourceError::Escapes { .. })
            ));
            assert_eq!(tree.read_text(&rp("apps/alias.yaml"))?, "kind: ConfigMap");
        }
        Ok(())
    }

    #[test]
    fn a_file_over_the_yaml_limit_is_refused_unread() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(
            MAX_FILE_BYTES,
            flotilla_spec::Limits::default().max_bytes as u64
        );
        let repo = tempfile::tempdir()?;
        // 100 MB, sparse: between the YAML limit and the old 128 MiB read limit.
        let f = std::fs::File::create(repo.path().join("big.yaml"))?;
        f.set_len(100_000_000)?;
        let tree = LocalTree::open(repo.path())?;
        assert_eq!(
            tree.read(&rp("big.yaml")),
            Err(RepoError::TooLarge {
                path: "big.yaml".into(),
                size: 100_000_000,
                limit: MAX_FILE_BYTES
            })
        );
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn canonical_names_where_links_lead() -> Result<(), Box<dyn std::error::Error>> {
        let repo = tempfile::tempdir()?;
        std::fs::create_dir(repo.path().join("apps"))?;
        std::os::unix::fs::symlink(".", repo.path().join("apps/l1"))?;
        std::os::unix::fs::symlink("..", repo.path().join("apps/up"))?;
        let tree = LocalTree::open(repo.path())?;
        assert_eq!(tree.canonical(&rp("apps")).as_deref(), Some("apps"));
        assert_eq!(tree.canonical(&rp("apps/l1/l1")).as_deref(), Some("apps"));
        assert_eq!(tree.canonical(&rp("apps/up")).as_deref(), Some("."));
        assert_eq!(tree.canonical(&rp("missing")), None);
        Ok(())
    }
}
