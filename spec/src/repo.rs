//! Read access to a fleet repository, as the pure crates see it.
//!
//! The `source` crate implements [`RepoFiles`] for local work trees and Git snapshots;
//! validation and rendering only ever read through it, so they stay free of I/O and cannot
//! be pointed outside the repository ([`RepoPath`] cannot name `..`).

use std::collections::BTreeMap;

use crate::types::RepoPath;

/// What a path in the repository is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    File,
    Dir,
    Missing,
    /// It exists but resolves outside the repository (a symlink pointing out).
    Escapes,
}

/// Why a read failed. Paths are repository-relative.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    #[error("{0}: does not exist in the repository")]
    NotFound(String),
    #[error("{0}: leads outside the repository (through a symbolic link)")]
    Escapes(String),
    #[error("{0}: is a directory")]
    IsADirectory(String),
    #[error("{0}: is not a directory")]
    NotADirectory(String),
    #[error("{path}: is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}

/// Read access to the files of one revision of a repository.
pub trait RepoFiles {
    /// What `path` is.
    fn kind(&self, path: &RepoPath) -> PathKind;

    /// The bytes of a file.
    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, RepoError>;

    /// The names of a directory's entries, sorted bytewise (files and directories alike).
    fn list(&self, dir: &RepoPath) -> Result<Vec<String>, RepoError>;

    /// Where `path` leads with every symbolic link followed, as a repository path (`.` for the
    /// root): two paths name the same file or directory exactly when these are equal. Walks
    /// use it to see a directory twice (a link loop). `None` when unknown or missing; the
    /// default, for sources without links, is the path itself.
    fn canonical(&self, path: &RepoPath) -> Option<String> {
        match self.kind(path) {
            PathKind::File | PathKind::Dir => Some(path.to_string()),
            PathKind::Missing | PathKind::Escapes => None,
        }
    }

    /// A file as UTF-8 text.
    fn read_to_string(&self, path: &RepoPath) -> Result<String, RepoError> {
        let bytes = self.read(path)?;
        String::from_utf8(bytes).map_err(|_| RepoError::Io {
            path: path.to_string(),
            message: "is not valid UTF-8".into(),
        })
    }
}

/// Skips every path check (for callers that have no repository at hand): paths ending in
/// `.yaml`, `.yml`, `.json` or `.jsonnet` are files, others directories; nothing can be read.
pub struct NoRepo;

impl RepoFiles for NoRepo {
    fn kind(&self, path: &RepoPath) -> PathKind {
        let p = path.as_str();
        if [".yaml", ".yml", ".json", ".jsonnet"]
            .iter()
            .any(|ext| p.ends_with(ext))
        {
            PathKind::File
        } else {
            PathKind::Dir
        }
    }

    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, RepoError> {
        Err(RepoError::NotFound(path.to_string()))
    }

    fn list(&self, dir: &RepoPath) -> Result<Vec<String>, RepoError> {
        Err(RepoError::NotFound(dir.to_string()))
    }
}

/// An in-memory repository: file path -> content. Directories are implied by file paths.
#[derive(Debug, Clone, Default)]
pub struct MemRepo {
    files: BTreeMap<String, Vec<u8>>,
}

impl MemRepo {
    pub fn new() -> MemRepo {
        MemRepo::default()
    }

    /// Adds a file (the path is normalized like any [`RepoPath`]).
    pub fn with(mut self, path: &str, content: impl Into<Vec<u8>>) -> MemRepo {
        self.insert(path, content);
        self
    }

    pub fn insert(&mut self, path: &str, content: impl Into<Vec<u8>>) {
        if let Ok(p) = RepoPath::parse(path) {
            self.files.insert(p.text, content.into());
        }
    }

    fn is_dir(&self, p: &str) -> bool {
        if p == "." {
            return true;
        }
        let prefix = format!("{p}/");
        self.files
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix))
    }
}

impl RepoFiles for MemRepo {
    fn kind(&self, path: &RepoPath) -> PathKind {
        if self.files.contains_key(path.as_str()) {
            PathKind::File
        } else if self.is_dir(path.as_str()) {
            PathKind::Dir
        } else {
            PathKind::Missing
        }
    }

    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, RepoError> {
        match self.files.get(path.as_str()) {
            Some(c) => Ok(c.clone()),
            None if self.is_dir(path.as_str()) => Err(RepoError::IsADirectory(path.to_string())),
            None => Err(RepoError::NotFound(path.to_string())),
        }
    }

    fn list(&self, dir: &RepoPath) -> Result<Vec<String>, RepoError> {
        if self.files.contains_key(dir.as_str()) {
            return Err(RepoError::NotADirectory(dir.to_string()));
        }
        if !self.is_dir(dir.as_str()) {
            return Err(RepoError::NotFound(dir.to_string()));
        }
        let prefix = if dir.as_str() == "." {
            String::new()
        } else {
            format!("{}/", dir.as_str())
        };
        let mut names: Vec<String> = self
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
            .collect();
        names.dedup();
        names.sort();
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rp(s: &str) -> RepoPath {
        RepoPath::parse(s).expect("path")
    }

    #[test]
    fn mem_repo_behaves_like_a_tree() {
        let repo = MemRepo::new()
            .with("apps/web/a.yaml", "a")
            .with("apps/web/b/c.yaml", "c")
            .with("top.yaml", "t");
        assert_eq!(repo.kind(&rp("apps")), PathKind::Dir);
        assert_eq!(repo.kind(&rp("apps/web/a.yaml")), PathKind::File);
        assert_eq!(repo.kind(&rp("apps/we")), PathKind::Missing);
        assert_eq!(
            repo.list(&rp("apps/web")),
            Ok(vec!["a.yaml".to_string(), "b".to_string()])
        );
        assert_eq!(
            repo.list(&rp(".")),
            Ok(vec!["apps".to_string(), "top.yaml".to_string()])
        );
        assert_eq!(
            repo.read_to_string(&rp("apps/web/b/c.yaml")),
            Ok("c".to_string())
        );
        assert!(matches!(
            repo.read(&rp("apps")),
            Err(RepoError::IsADirectory(_))
        ));
    }
}
