//! Backups of clusters to an object store and restores from them (issue 18).
//!
//! A backup of one cluster is a directory `<backup>/<cluster>/<timestamp>/` in a store
//! ([`store`]): one NDJSON file per kind (`resources/<group>/<version>/<Kind>.ndjson`, `core`
//! for the core group), one age-encrypted file per Secret
//! (`resources/core/v1/Secret/<namespace>/<name>.json.age`), and `manifest.json`, written
//! last, with the SHA-256 and size of every file. A directory without a manifest is not a
//! backup: [`catalog::list`] never shows it and [`catalog::collect_garbage`] deletes it.
//!
//! Backups only read the cluster ([`run::backup`]); [`restore::restore`] applies through
//! [`Cluster::apply`](flotilla_reconciler::cluster::Cluster::apply) with field
//! manager `flotilla-restore` (`FieldManager::Restore`), the one mutation path that enforces read-only mode.

pub mod catalog;
pub mod filter;
pub mod restore;
pub mod run;
pub mod store;

use serde::{Deserialize, Serialize};

pub use store::{Store, StoreSettings};

/// The manifest format this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Why a backup, list, verify or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{message}")]
    Settings { message: String },
    #[error("store {store}: {message}")]
    Store { store: String, message: String },
    #[error("{0}")]
    Cluster(#[from] flotilla_reconciler::cluster::ClusterError),
    #[error("backup {backup}: {message}")]
    Corrupt { backup: String, message: String },
    #[error("{0}")]
    NotFound(String),
    #[error("encryption: {0}")]
    Crypto(String),
}

/// What the manifest says about Secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SecretsMode {
    /// Kept, each one age-encrypted to the policy's recipients.
    Encrypted,
    /// Left out: the policy names no age recipients (or excludes Secrets).
    Excluded,
}

/// One file of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// Relative to the backup's directory.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// `apiVersion` and `kind` of the objects in it.
    pub api_version: String,
    pub kind: String,
    /// Objects in the file.
    pub objects: u64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// `manifest.json`: written last; its presence makes a backup complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub format_version: u32,
    pub fleet: String,
    pub backup: String,
    pub cluster: String,
    /// The fleet repository's commit the policy came from, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_commit: Option<String>,
    /// The backup's directory name (`20261204T101500.123Z`).
    pub timestamp: String,
    /// RFC 3339.
    pub started_at: String,
    pub finished_at: String,
    /// Objects per kind (`ConfigMap`, `Widget.example.com`).
    pub counts: std::collections::BTreeMap<String, u64>,
    pub secrets: SecretsMode,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub status: bool,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn objects(&self) -> u64 {
        self.counts.values().sum()
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// `sha256` of `bytes`, lowercase hex.
pub(crate) fn hex(digest: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(digest.len() * 2);
    for b in digest {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The directory name of a backup started at `t`.
pub fn timestamp_name(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y%m%dT%H%M%S%.3fZ").to_string()
}

/// The time a directory name stands for.
pub fn parse_timestamp(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    // `%Y` parses greedily: spell the time out as RFC 3339 first.
    let b = s.as_bytes();
    if b.len() != 20 || b[8] != b'T' || b[15] != b'.' || b[19] != b'Z' || !s.is_ascii() {
        return None;
    }
    let rfc = format!(
        "{}-{}-{}T{}:{}:{}.{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15],
        &s[16..19]
    );
    chrono::DateTime::parse_from_rfc3339(&rfc)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_round_trip() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-12-04T10:15:00.123Z")
            .map(|t| t.with_timezone(&chrono::Utc))
            .ok();
        let name = super::timestamp_name(t.unwrap_or_default());
        assert_eq!(name, "20261204T101500.123Z");
        assert_eq!(super::parse_timestamp(&name), t);
        assert_eq!(super::parse_timestamp("20261204T101500Z"), None);
    }
}
