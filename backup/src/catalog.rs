//! What a store holds: complete backups (those with a manifest), their verification,
//! retention and the garbage collection of incomplete ones.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use sha2::{Digest, Sha256};

use crate::{BackupError, Manifest, Store, hex, parse_timestamp};

/// A complete backup.
#[derive(Debug, Clone)]
pub struct Listed {
    /// `<backup>/<cluster>/<timestamp>`.
    pub location: String,
    pub manifest: Manifest,
}

impl Listed {
    pub fn time(&self) -> Option<DateTime<Utc>> {
        parse_timestamp(&self.manifest.timestamp)
    }
}

fn scope(store: &Store, backup: Option<&str>, cluster: Option<&str>) -> Path {
    match (backup, cluster) {
        (Some(b), Some(c)) => store.path(&[b, c]),
        (Some(b), None) => store.path(&[b]),
        _ => store.prefix.clone(),
    }
}

/// Every backup directory under the scope: `<b>/<c>/<ts>` -> (has a manifest, newest file).
async fn directories(
    store: &Store,
    backup: Option<&str>,
    cluster: Option<&str>,
) -> Result<BTreeMap<String, (bool, DateTime<Utc>)>, BackupError> {
    let prefix = scope(store, backup, cluster);
    let mut out: BTreeMap<String, (bool, DateTime<Utc>)> = BTreeMap::new();
    let mut s = store.inner.list(Some(&prefix));
    while let Some(m) = s.next().await {
        let m = m.map_err(|e| store.err("list", e))?;
        let rel = store.relative(&m.location);
        let parts: Vec<&str> = rel.split('/').collect();
        if parts.len() < 4 {
            continue;
        }
        if cluster.is_some_and(|c| parts[1] != c) || backup.is_some_and(|b| parts[0] != b) {
            continue;
        }
        let dir = parts[..3].join("/");
        let e = out.entry(dir).or_insert((false, m.last_modified));
        if parts.len() == 4 && parts[3] == "manifest.json" {
            e.0 = true;
        }
        e.1 = e.1.max(m.last_modified);
    }
    Ok(out)
}

/// Reads a backup's manifest.
pub async fn manifest(store: &Store, location: &str) -> Result<Manifest, BackupError> {
    let p = store.path(&[location, "manifest.json"]);
    let bytes = store
        .inner
        .get(&p)
        .await
        .map_err(|e| store.err(&format!("read {location}/manifest.json"), e))?
        .bytes()
        .await
        .map_err(|e| store.err(&format!("read {location}/manifest.json"), e))?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| BackupError::Corrupt {
        backup: location.into(),
        message: format!("manifest.json: {e}"),
    })?;
    if m.format_version != crate::FORMAT_VERSION {
        return Err(BackupError::Corrupt {
            backup: location.into(),
            message: format!(
                "manifest.json: format version {} (this flotilla reads {})",
                m.format_version,
                crate::FORMAT_VERSION
            ),
        });
    }
    Ok(m)
}

/// The complete backups (oldest first), optionally of one policy and one cluster.
pub async fn list(
    store: &Store,
    backup: Option<&str>,
    cluster: Option<&str>,
) -> Result<Vec<Listed>, BackupError> {
    let dirs = directories(store, backup, cluster).await?;
    let mut out = Vec::new();
    for (dir, (complete, _)) in dirs {
        if !complete {
            continue;
        }
        let manifest = manifest(store, &dir).await?;
        out.push(Listed {
            location: dir,
            manifest,
        });
    }
    out.sort_by(|a, b| {
        (
            a.manifest.backup.as_str(),
            a.manifest.cluster.as_str(),
            &a.manifest.timestamp,
        )
            .cmp(&(
                b.manifest.backup.as_str(),
                b.manifest.cluster.as_str(),
                &b.manifest.timestamp,
            ))
    });
    Ok(out)
}

/// The backup `at` names: `latest`/`None`, a directory name (`20261204T101500.123Z`), or an
/// RFC 3339 time (the newest backup at or before it).
pub async fn select(
    store: &Store,
    backup: &str,
    cluster: &str,
    at: Option<&str>,
) -> Result<Listed, BackupError> {
    let all = list(store, Some(backup), Some(cluster)).await?;
    let none = || {
        BackupError::NotFound(format!(
            "no complete backup {backup:?} of cluster {cluster:?} in {}{}",
            store.url(),
            at.map(|a| format!(" at {a}")).unwrap_or_default()
        ))
    };
    match at {
        None | Some("latest") => all.into_iter().next_back().ok_or_else(none),
        Some(a) => {
            if let Some(hit) = all.iter().find(|l| l.manifest.timestamp == a) {
                return Ok(hit.clone());
            }
            let t = DateTime::parse_from_rfc3339(a)
                .map_err(|_| BackupError::Settings {
                    message: format!(
                        "--at {a:?}: expected latest, a backup's timestamp (20261204T101500.123Z) or an RFC 3339 time"
                    ),
                })?
                .with_timezone(&Utc);
            all.into_iter()
                .rev()
                .find(|l| l.time().is_some_and(|x| x <= t))
                .ok_or_else(none)
        }
    }
}

/// Re-hashes every file of a backup; the first missing, truncated or altered file is an
/// error naming it.
pub async fn verify(store: &Store, listed: &Listed) -> Result<(), BackupError> {
    for f in &listed.manifest.files {
        let corrupt = |message: String| BackupError::Corrupt {
            backup: listed.location.clone(),
            message: format!("{}: {message}", f.path),
        };
        if f.path.split('/').any(|c| c == ".." || c.is_empty()) {
            return Err(corrupt("invalid path in the manifest".into()));
        }
        let p = store.path(&[&listed.location, &f.path]);
        let got = match store.inner.get(&p).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Err(corrupt("missing".into())),
            Err(e) => return Err(store.err(&format!("read {}", f.path), e)),
        };
        let mut stream = got.into_stream();
        let mut h = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| store.err(&format!("read {}", f.path), e))?;
            size += chunk.len() as u64;
            h.update(&chunk);
        }
        if size != f.size {
            return Err(corrupt(format!(
                "size {size} bytes, the manifest says {} (truncated or altered)",
                f.size
            )));
        }
        let sum = hex(&h.finalize());
        if sum != f.sha256 {
            return Err(corrupt(format!(
                "SHA-256 {sum}, the manifest says {} (altered)",
                f.sha256
            )));
        }
    }
    Ok(())
}

/// Deletes a backup: the manifest first (it stops being restorable at once), then its files.
pub async fn delete(store: &Store, location: &str) -> Result<(), BackupError> {
    let m = store.path(&[location, "manifest.json"]);
    match store.inner.delete(&m).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(store.err(&format!("delete {location}/manifest.json"), e)),
    }
    let dir = store.path(&[location]);
    let mut s = store.inner.list(Some(&dir));
    let mut paths = Vec::new();
    while let Some(x) = s.next().await {
        let x = x.map_err(|e| store.err("list", e))?;
        paths.push(x.location);
        if paths.len() >= 1000 {
            for p in paths.drain(..) {
                delete_one(store, &p).await?;
            }
        }
    }
    for p in paths {
        delete_one(store, &p).await?;
    }
    // A file store keeps directories: drop the ones the backup leaves empty.
    if let Some(root) = &store.local_root {
        prune_empty_dirs(&root.join(location));
    }
    Ok(())
}

/// Removes `dir` and its subdirectories when they hold no file.
fn prune_empty_dirs(dir: &std::path::Path) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut empty = true;
    for e in rd.flatten() {
        let p = e.path();
        if !(p.is_dir() && prune_empty_dirs(&p)) {
            empty = false;
        }
    }
    empty && std::fs::remove_dir(dir).is_ok()
}

async fn delete_one(store: &Store, p: &Path) -> Result<(), BackupError> {
    match store.inner.delete(p).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(store.err(&format!("delete {p}"), e)),
    }
}

/// Applies retention to one policy's backups of one cluster: backups older than `retain`
/// are deleted, never the newest complete one. Returns the deleted locations.
pub async fn retain(
    store: &Store,
    backup: &str,
    cluster: &str,
    retain: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Vec<String>, BackupError> {
    let all = list(store, Some(backup), Some(cluster)).await?;
    let Some(newest) = all.last().map(|l| l.location.clone()) else {
        return Ok(vec![]);
    };
    let horizon = now - chrono::Duration::from_std(retain).unwrap_or(chrono::Duration::MAX);
    let mut deleted = Vec::new();
    for l in &all {
        if l.location == newest {
            continue;
        }
        if l.time().is_some_and(|t| t < horizon) {
            delete(store, &l.location).await?;
            tracing::info!(backup, cluster, location = %l.location, "backup expired, deleted");
            deleted.push(l.location.clone());
        }
    }
    Ok(deleted)
}

/// Deletes backup directories without a manifest whose newest file is older than `grace`
/// (an interrupted or failed backup). Returns the deleted locations.
pub async fn collect_garbage(
    store: &Store,
    backup: Option<&str>,
    grace: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Vec<String>, BackupError> {
    let dirs = directories(store, backup, None).await?;
    let horizon = now - chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut deleted = Vec::new();
    let complete: BTreeSet<&String> = dirs.iter().filter(|(_, v)| v.0).map(|(k, _)| k).collect();
    for (dir, (_, newest)) in &dirs {
        if complete.contains(dir) || *newest >= horizon {
            continue;
        }
        delete(store, dir).await?;
        tracing::info!(location = %dir, "incomplete backup deleted");
        deleted.push(dir.clone());
    }
    // A file store also holds the staging files of uploads that never finished (a killed
    // process): invisible to listing, removed here with their empty directories.
    if let Some(root) = &store.local_root {
        let base = match backup {
            Some(b) => root.join(b),
            None => root.clone(),
        };
        let cutoff = std::time::SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(std::time::UNIX_EPOCH);
        let mut staged = BTreeSet::new();
        sweep_staging(&base, cutoff, &mut staged);
        for dir in staged {
            if let Ok(rel) = dir.strip_prefix(root) {
                let rel = rel.to_string_lossy().to_string();
                if rel.split('/').count() == 3
                    && !complete.contains(&rel)
                    && !deleted.contains(&rel)
                {
                    tracing::info!(location = %rel, "incomplete backup deleted");
                    deleted.push(rel);
                }
            }
        }
    }
    Ok(deleted)
}

/// Deletes `*#*` staging files older than `cutoff` under `dir` and the directories they
/// leave empty; records the backup directories (3 levels down) they were in.
fn sweep_staging(
    dir: &std::path::Path,
    cutoff: std::time::SystemTime,
    staged: &mut BTreeSet<std::path::PathBuf>,
) -> bool {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return false;
    };
    let mut empty = true;
    for e in rd.flatten() {
        let p = e.path();
        let Ok(meta) = e.metadata() else {
            empty = false;
            continue;
        };
        if meta.is_dir() {
            if sweep_staging(&p, cutoff, staged) {
                let _ = std::fs::remove_dir(&p);
            } else {
                empty = false;
            }
        } else if e.file_name().to_string_lossy().contains('#')
            && meta.modified().is_ok_and(|m| m <= cutoff)
            && std::fs::remove_file(&p).is_ok()
        {
            let mut d = p.as_path();
            while let Some(parent) = d.parent() {
                if parent.components().count() + 1 == d.components().count()
                    && parent
                        .file_name()
                        .is_some_and(|n| crate::parse_timestamp(&n.to_string_lossy()).is_some())
                {
                    staged.insert(parent.to_path_buf());
                    break;
                }
                d = parent;
            }
        } else {
            empty = false;
        }
    }
    empty
}
