//! What the daemon knows about itself, served by the status API (`/api/v1/fleet`).

use std::collections::BTreeMap;

use serde::Serialize;

use flotilla_spec::Diagnostic;

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetStatus {
    /// `metadata.name` of the running revision.
    pub fleet: Option<String>,
    pub repo: String,
    #[serde(rename = "ref")]
    pub rev: String,
    pub read_only: bool,
    /// A valid revision is loaded (and, unless read-only, its rollouts started).
    pub ready: bool,
    /// SIGTERM received: no new work starts.
    pub draining: bool,
    pub source: SourceStatus,
    /// The revision clusters are reconciled to (the newest valid commit).
    pub revision: Option<RevisionStatus>,
    /// The newest commit, when its fleet file was rejected (the last good revision keeps
    /// running). Cleared by the next valid commit.
    pub rejected: Option<Rejected>,
    pub placements: BTreeMap<String, PlacementStatus>,
    pub drift: Option<DriftSummary>,
    /// The last image policy scan and write-back.
    pub images: Option<crate::images::ImagesStatus>,
    /// Clusters with `connect: agent`: their agents' last reports (read at each drift check).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub agents: BTreeMap<String, crate::agents::AgentStatus>,
    /// Replicated daemons: this replica, the live ones, and how many units it holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaStatus>,
    /// The notification sinks of the running revision: state (ok, failing, broken), queue
    /// and counts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notifications: Vec<flotilla_notify::SinkHealth>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    pub id: String,
    pub members: Vec<String>,
    pub units_held: usize,
    /// False once its Lease validity ran out (it acts again after renewing).
    pub may_act: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// The commit the tracked ref pointed at on the last successful fetch.
    pub fetched_commit: Option<String>,
    pub last_fetch_at: Option<String>,
    pub last_fetch_ok: bool,
    /// The last fetch error (credentials redacted), while fetches keep failing.
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub fetches: u64,
    pub webhook_triggers: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    pub commit: String,
    /// The first line of the commit's message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub loaded_at: String,
    pub render_seconds: f64,
    pub clusters: usize,
    pub placements: usize,
    pub render_errors: Vec<String>,
    pub warnings: Vec<DiagnosticJson>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejected {
    pub commit: String,
    pub at: String,
    pub errors: Vec<DiagnosticJson>,
    /// Set when the commit was rejected for its signature (`--verify-commits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureRejection>,
}

/// Why a commit's signature was not accepted.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureRejection {
    /// The key (and principal or user id) the signature names; `None` when unsigned.
    pub signer: Option<String>,
    pub reason: String,
}

/// A fleet file diagnostic, positioned.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiagnosticJson {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    /// `file:line:column: error: message`, as the command line prints it.
    pub text: String,
}

impl From<&Diagnostic> for DiagnosticJson {
    fn from(d: &Diagnostic) -> Self {
        DiagnosticJson {
            file: d.file.clone(),
            line: d.line,
            column: d.column,
            message: d.message.clone(),
            text: d.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    /// The replica driving it (replicated daemons).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The rollout this daemon last worked on.
    pub rollout: Option<String>,
    pub phase: Option<String>,
    /// A rollout run is in progress.
    pub running: bool,
    /// How the last run ended, in words.
    pub last_outcome: Option<String>,
    /// Why the placement is not rolled out (render failures).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftSummary {
    pub at: String,
    pub commit: String,
    pub clusters: usize,
    pub drifted_clusters: Vec<String>,
    pub unreachable_clusters: Vec<String>,
    pub drifted_objects: usize,
    pub self_healed: Vec<String>,
}
