//! Watching a local work tree for changes (notify, debounced), so that `flotilla` can re-read
//! a [`LocalTree`](crate::LocalTree) when a developer saves a file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify_debouncer_mini::notify::{RecommendedWatcher, RecursiveMode};
use notify_debouncer_mini::{DebounceEventResult, Debouncer, new_debouncer};

/// Errors of a [`LocalWatcher`].
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {path}: {message}")]
    Start { path: PathBuf, message: String },
    #[error("watching {path}: {message}")]
    Event { path: PathBuf, message: String },
    #[error("the watcher of {path} stopped")]
    Stopped { path: PathBuf },
}

/// Watches a directory tree; changes within `debounce` of each other arrive as one batch.
pub struct LocalWatcher {
    root: PathBuf,
    rx: Receiver<DebounceEventResult>,
    // Dropping it stops the watch.
    _debouncer: Debouncer<RecommendedWatcher>,
}

impl std::fmt::Debug for LocalWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalWatcher")
            .field("root", &self.root)
            .finish()
    }
}

impl LocalWatcher {
    /// Starts watching `root` (recursively).
    pub fn new(root: &Path, debounce: Duration) -> Result<LocalWatcher, WatchError> {
        let start_err = |message: String| WatchError::Start {
            path: root.to_path_buf(),
            message,
        };
        let root = root.canonicalize().map_err(|e| start_err(e.to_string()))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let mut debouncer = new_debouncer(debounce, tx).map_err(|e| start_err(e.to_string()))?;
        debouncer
            .watcher()
            .watch(&root, RecursiveMode::Recursive)
            .map_err(|e| start_err(e.to_string()))?;
        Ok(LocalWatcher {
            root,
            rx,
            _debouncer: debouncer,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Waits up to `timeout` for the next batch of changes. Returns the changed paths relative
    /// to the root (sorted, each once; changes under `.git/` ignored), or `None` if nothing
    /// changed in time.
    pub fn wait(&self, timeout: Duration) -> Result<Option<Vec<String>>, WatchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let events = match self.rx.recv_timeout(left) {
                Ok(Ok(events)) => events,
                Ok(Err(e)) => {
                    return Err(WatchError::Event {
                        path: self.root.clone(),
                        message: e.to_string(),
                    });
                }
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(WatchError::Stopped {
                        path: self.root.clone(),
                    });
                }
            };
            let paths: BTreeSet<String> = events
                .iter()
                .filter_map(|e| e.path.strip_prefix(&self.root).ok())
                .filter(|p| !p.starts_with(".git"))
                .map(|p| {
                    if p.as_os_str().is_empty() {
                        ".".to_string()
                    } else {
                        p.to_string_lossy().into_owned()
                    }
                })
                .collect();
            if !paths.is_empty() {
                tracing::debug!(root = %self.root.display(), changed = paths.len(), "work tree changed");
                return Ok(Some(paths.into_iter().collect()));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_writes_is_one_batch() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("apps"))?;
        std::fs::create_dir_all(dir.path().join(".git"))?;
        let watcher = LocalWatcher::new(dir.path(), Duration::from_millis(200))?;
        assert_eq!(watcher.wait(Duration::from_millis(50))?, None);
        for i in 0..10 {
            std::fs::write(dir.path().join("apps/a.yaml"), format!("v: {i}"))?;
        }
        std::fs::write(dir.path().join("fleet.yaml"), "kind: Fleet")?;
        std::fs::write(dir.path().join(".git/index"), "ignored")?;
        let mut changed: BTreeSet<String> = watcher
            .wait(Duration::from_secs(10))?
            .ok_or("no batch")?
            .into_iter()
            .collect();
        // A burst usually arrives as one batch; a debounce tick may split it in two.
        while let Some(more) = watcher.wait(Duration::from_millis(500))? {
            changed.extend(more);
        }
        assert!(changed.contains("apps/a.yaml"), "{changed:?}");
        assert!(changed.contains("fleet.yaml"), "{changed:?}");
        assert!(
            !changed.iter().any(|p| p.starts_with(".git")),
            "{changed:?}"
        );
        // Only git's own files change: nothing to report.
        std::fs::write(dir.path().join(".git/HEAD"), "ref: refs/heads/main")?;
        assert_eq!(watcher.wait(Duration::from_millis(600))?, None);
        Ok(())
    }
}
