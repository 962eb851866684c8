//! The rollout engine's crash-safe state store.
//!
//! A few typed tables whose values are serde values encoded as JSON, behind one
//! [`backend::Backend`] trait with two implementations: an embedded [redb] file,
//! `DIR/state.redb` ([`Store::open`]), and a PostgreSQL database shared by several daemon
//! replicas ([`Store::open_url`] with a `postgres://` URL). The crate is generic: it knows
//! nothing of rollouts, clusters or Git, only of the shape of its tables (the reconciler
//! defines the value types).
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | rollouts | placement | JSON: the current rollout record of a placement |
//! | revisions | (placement, cluster) | JSON: e.g. current and last good hash |
//! | manifests | content hash (opaque) | rendered YAML text, stored once |
//! | failed | (placement, revision key) | JSON: why that revision failed |
//! | events | sequence number (1, 2, ...) | JSON: append-only event log |
//! | meta | name | u64: schema version, last event sequence |
//! | workflows, workflow_runs, burst | see the methods | JSON |
//! | owners | unit | JSON [`Owner`]: holder and epoch, for fencing |
//! | work, work_results | (cluster, placement) | JSON: the work exchange between replicas |
//!
//! Every change happens inside [`Store::write`], one ACID transaction that is durable when it
//! returns `Ok` and writes nothing when the closure fails. [`Store::read`] gives a consistent
//! snapshot. A redb file is locked by the process that opened it: a second [`Store`] on the
//! same directory, in this process or another, fails with [`StateError::Locked`] (clones of a
//! `Store` share one handle). [`Store::fenced`] gives a view whose writes are refused once
//! another holder has claimed its unit.

pub mod backend;
mod postgres;
mod redb;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::backend::Notification;
use crate::backend::{Backend, KeyKind, RawTx, TableSpec, ValueKind};

/// The schema this version of the crate writes. Opening a store recorded with another version
/// is an error (there are no migrations yet).
pub const SCHEMA_VERSION: u64 = 1;

/// The file inside the store directory.
pub const FILE_NAME: &str = "state.redb";

const fn table(name: &'static str, key: KeyKind, value: ValueKind) -> TableSpec {
    TableSpec { name, key, value }
}

const ROLLOUTS: TableSpec = table("rollouts", KeyKind::Str, ValueKind::Bytes);
const REVISIONS: TableSpec = table("revisions", KeyKind::Pair, ValueKind::Bytes);
const MANIFESTS: TableSpec = table("manifests", KeyKind::Str, ValueKind::Text);
const FAILED: TableSpec = table("failed", KeyKind::Pair, ValueKind::Bytes);
const EVENTS: TableSpec = table("events", KeyKind::Seq, ValueKind::Bytes);
/// (rollout id, event number) → nothing: the index a rollout's history is read through, so
/// reading it costs its own events, not the whole log. Events appended before the index
/// existed are not in it.
const EVENTS_BY_ROLLOUT: TableSpec = table("events_by_rollout", KeyKind::Pair, ValueKind::Bytes);
const META: TableSpec = table("meta", KeyKind::Str, ValueKind::U64);
/// Workflow name → its schedule state (JSON, defined by the reconciler).
const WORKFLOWS: TableSpec = table("workflows", KeyKind::Str, ValueKind::Bytes);
/// (workflow, run key) → run record (JSON, defined by the reconciler).
const WORKFLOW_RUNS: TableSpec = table("workflow_runs", KeyKind::Pair, ValueKind::Bytes);
/// Burst pools: one record per placement (current split, last scale-out and scale-in), so a
/// restarted daemon keeps the pool's cooldown. A store from before burst pools has none.
const BURST: TableSpec = table("burst", KeyKind::Str, ValueKind::Bytes);
/// Unit → [`Owner`] (fencing).
const OWNERS: TableSpec = table("owners", KeyKind::Str, ValueKind::Bytes);
/// (cluster, placement) → work item (JSON, defined by the rollout engine's exchange).
const WORK: TableSpec = table("work", KeyKind::Pair, ValueKind::Bytes);
/// (cluster, placement) → the result of a work item (JSON).
const WORK_RESULTS: TableSpec = table("work_results", KeyKind::Pair, ValueKind::Bytes);

const META_SCHEMA_VERSION: &str = "schema_version";
/// The last sequence number handed out; kept apart from the events table so a number is never
/// reused, even if old events are ever trimmed.
const META_LAST_EVENT_SEQ: &str = "last_event_seq";

/// Everything that can go wrong in the state store. Each variant names the store: the redb
/// file, or for PostgreSQL its description (`postgres user@host:port/db`, no password) in
/// `path`.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: cannot create the state directory: {source}", path = .path.display())]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: the state store is already open (by another flotilla process, or another handle in this one)",
        path = .path.display()
    )]
    Locked { path: PathBuf },
    #[error("{path}: {op}: {source}", path = .path.display())]
    Db {
        path: PathBuf,
        op: &'static str,
        source: Box<::redb::Error>,
    },
    /// A PostgreSQL error: cannot connect, connection lost, statement failed or timed out.
    #[error("{db}: {op}: {message}")]
    Postgres {
        /// The database, password redacted.
        db: String,
        op: &'static str,
        message: String,
    },
    #[error("{path}: corrupt value in table {table}, key {key}: {source}", path = .path.display())]
    Corrupt {
        path: PathBuf,
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error("{path}: cannot encode the value for table {table}, key {key}: {source}", path = .path.display())]
    Encode {
        path: PathBuf,
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error(
        "{path}: state schema version {found} is not supported (this flotilla reads version {supported}){hint}",
        path = .path.display(),
        hint = if *.found > *.supported { "; it was written by a newer flotilla" } else { "" }
    )]
    Schema {
        path: PathBuf,
        found: u64,
        supported: u64,
    },
    #[error("{path}: the event sequence is exhausted", path = .path.display())]
    SequenceExhausted { path: PathBuf },
    /// Returned by a [`Store::write`] closure to roll the transaction back on purpose.
    #[error("{path}: transaction aborted: {reason}", path = .path.display())]
    Aborted { path: PathBuf, reason: String },
    /// A write through a [`Store::fenced`] view whose holder no longer owns the unit at the
    /// view's epoch; the transaction wrote nothing.
    #[error(
        "{path}: {holder} (epoch {epoch}) lost ownership of unit {unit} ({now}); nothing was written",
        path = .path.display(),
        now = if .found.holder.is_empty() {
            format!("now released at epoch {}", .found.epoch)
        } else {
            format!("now held by {} at epoch {}", .found.holder, .found.epoch)
        }
    )]
    Fenced {
        path: PathBuf,
        unit: String,
        holder: String,
        epoch: u64,
        /// The owner row as found (holder empty, epoch 0 when the unit was never claimed).
        found: Owner,
    },
}

/// Who owns a unit of work (see [`WriteTx::claim`]). `holder` is empty once released.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub holder: String,
    pub epoch: u64,
}

/// What a [`Store::fenced`] view requires of the owner row of `unit` at every write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub unit: String,
    pub holder: String,
    pub epoch: u64,
}

/// Encrypts what the store keeps at rest that must not be readable without keys: manifests
/// holding data decrypted from SOPS files (their objects carry [`SENSITIVE_MARKER`]). The
/// daemon and `flotilla apply` seal with the age identities they decrypt SOPS files with
/// ([`Store::sealed`]), so the store file or database alone reveals nothing of those values.
pub trait Sealer: Send + Sync {
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String>;
    fn unseal(&self, sealed: &[u8]) -> Result<Vec<u8>, String>;
}

/// Manifests whose text contains this are stored sealed: the annotation the renderers put on
/// every object read from a SOPS file (`flotilla.dev/sops: decrypted`).
pub const SENSITIVE_MARKER: &str = "flotilla.dev/sops";

/// How sealed manifests start in the store (then the ciphertext in base64: the manifests table
/// holds text).
const SEALED_MAGIC: &[u8] = b"flotilla-sealed-v1\n";

struct Inner {
    backend: Box<dyn Backend>,
    /// The redb file, or the PostgreSQL description (for errors).
    path: PathBuf,
}

/// The state store. Cheap to clone: clones share one backend (one redb handle, or one pool of
/// PostgreSQL connections), so a clone does not count as a second opener.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    fence: Option<Fence>,
    sealer: Option<Arc<dyn Sealer>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("store", &self.describe())
            .field("fence", &self.fence)
            .field("sealed", &self.sealer.is_some())
            .finish()
    }
}

impl Store {
    /// Opens or creates `DIR/state.redb` (creating DIR). A second open of the same store, from
    /// this process or another, fails with [`StateError::Locked`] instead of waiting. After a
    /// crash redb recovers the last committed transaction on open. The whole file's checksums
    /// are verified on open, so a damaged file is an error rather than a panic.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        let backend = redb::RedbBackend::open(dir, false)?;
        let path = backend.path().to_path_buf();
        init_schema(&backend, &path)?;
        tracing::debug!(path = %path.display(), "state store open");
        Ok(Store::with_backend(Box::new(backend), path))
    }

    /// Opens the store in shared mode: the file is opened (and its lock taken) for runs of
    /// transactions only — closed after 20 ms without one, or after a second of them — so
    /// several processes can use it in turn: `flotilla rollout pause` while an `apply` or
    /// the daemon drives the rollout. A transaction waits up to 30 s for the lock.
    pub fn open_shared(dir: &Path) -> Result<Store, StateError> {
        let backend = redb::RedbBackend::open(dir, true)?;
        let path = backend.path().to_path_buf();
        init_schema(&backend, &path)?;
        let backend = backend.into_shared();
        Ok(Store::with_backend(Box::new(backend), path))
    }

    /// Opens a store by location: a `postgres://` or `postgresql://` URL is a PostgreSQL
    /// database (its table created on first open, see [`Store`]'s module docs), anything else
    /// a directory as [`Store::open`]. Connection errors name the database without its
    /// password.
    pub fn open_url(location: &str) -> Result<Store, StateError> {
        if postgres::is_url(location) {
            let backend = postgres::PgBackend::open(location)?;
            let path = PathBuf::from(backend.describe());
            init_schema(&backend, &path)?;
            tracing::debug!(store = %path.display(), "state store open");
            Ok(Store::with_backend(Box::new(backend), path))
        } else {
            Store::open(Path::new(location))
        }
    }

    fn with_backend(backend: Box<dyn Backend>, path: PathBuf) -> Store {
        Store {
            inner: Arc::new(Inner { backend, path }),
            fence: None,
            sealer: None,
        }
    }

    /// The database file (`DIR/state.redb`); for PostgreSQL, [`Store::describe`] as a path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The store for logs and errors: `redb /path/state.redb` or
    /// `postgres user@host:port/db` (never a password).
    pub fn describe(&self) -> String {
        self.inner.backend.describe()
    }

    /// A view of this store whose every [`Store::write`] first checks, inside the same
    /// transaction, that `fence.unit` is held by exactly `fence.holder` at `fence.epoch`, and
    /// otherwise writes nothing and fails with [`StateError::Fenced`]. Reads are not fenced.
    pub fn fenced(&self, fence: Fence) -> Store {
        Store {
            inner: self.inner.clone(),
            fence: Some(fence),
            sealer: self.sealer.clone(),
        }
    }

    /// A view of this store (and of every view made from it) that seals sensitive manifests
    /// with `sealer` and unseals them when read (see [`Sealer`]). Without one, storing such
    /// manifests is an error, and reading sealed ones is an error naming the missing key.
    pub fn sealed(&self, sealer: Arc<dyn Sealer>) -> Store {
        Store {
            inner: self.inner.clone(),
            fence: self.fence.clone(),
            sealer: Some(sealer),
        }
    }

    /// The fence of a [`Store::fenced`] view.
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// One ACID write transaction. When this returns `Ok` the changes are durable (redb:
    /// fsync'd; PostgreSQL: committed). If `f` returns `Err` (or panics), nothing is written.
    /// Write transactions run one at a time (PostgreSQL: across every process sharing the
    /// database): calling `write` again from inside `f` waits for itself (redb: forever;
    /// PostgreSQL: until the statement timeout).
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let path = self.inner.path.as_path();
        let fence = self.fence.as_ref();
        let sealer = self.sealer.as_deref();
        let mut f = Some(f);
        let mut out = None;
        self.inner.backend.write(&mut |raw| {
            if let Some(fence) = fence {
                check_fence(raw, path, fence)?;
            }
            let f = f.take().ok_or_else(|| StateError::Aborted {
                path: path.to_path_buf(),
                reason: "the transaction body was run twice".to_string(),
            })?;
            out = Some(f(&mut WriteTx { raw, path, sealer })?);
            Ok(())
        })?;
        out.ok_or_else(|| StateError::Aborted {
            path: path.to_path_buf(),
            reason: "the transaction body did not run".to_string(),
        })
    }

    /// A consistent read snapshot: `f` sees every transaction committed before this call and
    /// none after.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&ReadTx<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let path = self.inner.path.as_path();
        let sealer = self.sealer.as_deref();
        let mut f = Some(f);
        let mut out = None;
        self.inner.backend.read(&mut |raw| {
            let f = f.take().ok_or_else(|| StateError::Aborted {
                path: path.to_path_buf(),
                reason: "the transaction body was run twice".to_string(),
            })?;
            out = Some(f(&ReadTx { raw, path, sealer })?);
            Ok(())
        })?;
        out.ok_or_else(|| StateError::Aborted {
            path: path.to_path_buf(),
            reason: "the transaction body did not run".to_string(),
        })
    }

    /// Sends `payload` under `topic` to every [`Store::subscribe`]r: of every process on the
    /// same PostgreSQL database (NOTIFY, at most about 7 KiB), or of every clone of this redb
    /// store. Delivery is best effort: a subscriber that is disconnected or lags misses it.
    pub fn notify(&self, topic: &str, payload: &str) -> Result<(), StateError> {
        self.inner.backend.notify(topic, payload)
    }

    /// Notifications sent from now on (see [`Store::notify`]). PostgreSQL: the first call
    /// starts the store's listener thread and waits (up to 10 s) for its `LISTEN`, so a
    /// notification sent after this returns is seen; later calls return at once.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notification> {
        self.inner.backend.subscribe()
    }
}

/// Checks the recorded schema version; a new store gets the current version. A store with
/// another version is left untouched.
fn init_schema(backend: &dyn Backend, path: &Path) -> Result<(), StateError> {
    let check = |recorded: Option<u64>| match recorded {
        Some(SCHEMA_VERSION) | None => Ok(()),
        Some(found) => Err(StateError::Schema {
            path: path.to_path_buf(),
            found,
            supported: SCHEMA_VERSION,
        }),
    };
    let mut recorded = None;
    backend.read(&mut |raw| {
        recorded = meta_get(raw, path, META_SCHEMA_VERSION)?;
        Ok(())
    })?;
    check(recorded)?;
    if recorded.is_some() {
        return Ok(());
    }
    // Again inside a write transaction: another process may have created it meanwhile.
    backend.write(&mut |raw| {
        let recorded = meta_get(raw, path, META_SCHEMA_VERSION)?;
        check(recorded)?;
        if recorded.is_none() {
            raw.put(
                &META,
                &[META_SCHEMA_VERSION],
                SCHEMA_VERSION.to_string().as_bytes(),
            )?;
            tracing::info!(store = %path.display(), version = SCHEMA_VERSION, "state store created");
        }
        Ok(())
    })
}

fn meta_get(raw: &dyn RawTx, path: &Path, name: &str) -> Result<Option<u64>, StateError> {
    let Some(bytes) = raw.get(&META, &[name])? else {
        return Ok(None);
    };
    decode(path, META.name, || format!("{name:?}"), &bytes).map(Some)
}

fn check_fence(raw: &dyn RawTx, path: &Path, fence: &Fence) -> Result<(), StateError> {
    let found: Owner = match raw.get_for_update(&OWNERS, &[fence.unit.as_str()])? {
        Some(bytes) => decode(path, OWNERS.name, || format!("{:?}", fence.unit), &bytes)?,
        None => Owner::default(),
    };
    if found.holder == fence.holder && found.epoch == fence.epoch {
        Ok(())
    } else {
        Err(StateError::Fenced {
            path: path.to_path_buf(),
            unit: fence.unit.clone(),
            holder: fence.holder.clone(),
            epoch: fence.epoch,
            found,
        })
    }
}

/// A write transaction (see [`Store::write`]); it reads its own writes.
pub struct WriteTx<'a> {
    raw: &'a dyn RawTx,
    path: &'a Path,
    sealer: Option<&'a dyn Sealer>,
}

/// A read snapshot (see [`Store::read`]).
pub struct ReadTx<'a> {
    raw: &'a dyn RawTx,
    path: &'a Path,
    sealer: Option<&'a dyn Sealer>,
}

/// Stored manifests as text: unsealed with `sealer` when they were stored sealed.
fn open_manifests(
    path: &Path,
    sealer: Option<&dyn Sealer>,
    hash: &str,
    bytes: Vec<u8>,
) -> Result<String, StateError> {
    let bytes = match bytes.strip_prefix(SEALED_MAGIC) {
        Some(sealed) => {
            let sealer = sealer.ok_or_else(|| StateError::Aborted {
                path: path.to_path_buf(),
                reason: format!(
                    "manifests {hash:?} are stored sealed (they hold data decrypted from SOPS files): reading them needs the SOPS age key"
                ),
            })?;
            use base64::Engine as _;
            let cipher = base64::engine::general_purpose::STANDARD
                .decode(sealed)
                .map_err(|e| StateError::Aborted {
                    path: path.to_path_buf(),
                    reason: format!("manifests {hash:?}: sealed data is not base64: {e}"),
                })?;
            sealer.unseal(&cipher).map_err(|e| StateError::Aborted {
                path: path.to_path_buf(),
                reason: format!("manifests {hash:?}: cannot unseal them with the keys given: {e}"),
            })?
        }
        None => bytes,
    };
    String::from_utf8(bytes).map_err(|e| StateError::Aborted {
        path: path.to_path_buf(),
        reason: format!("table manifests, key {hash:?}: not UTF-8: {e}"),
    })
}

fn decode<T: DeserializeOwned>(
    path: &Path,
    table: &'static str,
    key: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|source| StateError::Corrupt {
        path: path.to_path_buf(),
        table,
        key: key(),
        source,
    })
}

fn encode<T: Serialize + ?Sized>(
    path: &Path,
    table: &'static str,
    key: impl FnOnce() -> String,
    value: &T,
) -> Result<Vec<u8>, StateError> {
    serde_json::to_vec(value).map_err(|source| StateError::Encode {
        path: path.to_path_buf(),
        table,
        key: key(),
        source,
    })
}

/// How a key is named in errors.
fn key_name(key: &[&str]) -> String {
    match key {
        [a] => format!("{a:?}"),
        [a, b] => format!("({a:?}, {b:?})"),
        other => format!("{other:?}"),
    }
}

fn seq_key(seq: u64) -> String {
    format!("{seq:020}")
}

/// Typed access shared by [`ReadTx`] and [`WriteTx`].
trait Typed {
    fn raw(&self) -> &dyn RawTx;
    fn store_path(&self) -> &Path;

    fn get_json<T: DeserializeOwned>(
        &self,
        table: &TableSpec,
        key: &[&str],
    ) -> Result<Option<T>, StateError> {
        self.raw()
            .get(table, key)?
            .map(|bytes| decode(self.store_path(), table.name, || key_name(key), &bytes))
            .transpose()
    }

    /// Rows under `prefix`, each with the key parts after the prefix joined (one part for the
    /// tables used this way).
    fn list_json<T: DeserializeOwned>(
        &self,
        table: &TableSpec,
        prefix: &[&str],
    ) -> Result<Vec<(String, T)>, StateError> {
        let mut out = Vec::new();
        for (key, bytes) in self.raw().scan(table, prefix)? {
            let parts: Vec<&str> = key.iter().map(String::as_str).collect();
            let value = decode(self.store_path(), table.name, || key_name(&parts), &bytes)?;
            let rest = key.get(prefix.len()).cloned().unwrap_or_default();
            out.push((rest, value));
        }
        Ok(out)
    }

    fn put_json<T: Serialize + ?Sized>(
        &self,
        table: &TableSpec,
        key: &[&str],
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = encode(self.store_path(), table.name, || key_name(key), value)?;
        self.raw().put(table, key, &bytes)
    }
}

impl Typed for ReadTx<'_> {
    fn raw(&self) -> &dyn RawTx {
        self.raw
    }
    fn store_path(&self) -> &Path {
        self.path
    }
}

impl Typed for WriteTx<'_> {
    fn raw(&self) -> &dyn RawTx {
        self.raw
    }
    fn store_path(&self) -> &Path {
        self.path
    }
}

/// The read operations, shared by [`ReadTx`] and [`WriteTx`].
macro_rules! read_methods {
    () => {
        /// The rollout record of `placement`.
        pub fn rollout<T: DeserializeOwned>(
            &self,
            placement: &str,
        ) -> Result<Option<T>, StateError> {
            self.get_json(&ROLLOUTS, &[placement])
        }

        /// All rollout records, ordered by placement name.
        pub fn rollouts<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StateError> {
            self.list_json(&ROLLOUTS, &[])
        }

        /// The revision record of (`placement`, `cluster`).
        pub fn revision<T: DeserializeOwned>(
            &self,
            placement: &str,
            cluster: &str,
        ) -> Result<Option<T>, StateError> {
            self.get_json(&REVISIONS, &[placement, cluster])
        }

        /// The revision records of one placement (exactly that name), ordered by cluster name.
        pub fn revisions<T: DeserializeOwned>(
            &self,
            placement: &str,
        ) -> Result<Vec<(String, T)>, StateError> {
            self.list_json(&REVISIONS, &[placement])
        }

        /// The rendered manifests stored under `hash` (unsealed when stored sealed).
        pub fn manifests(&self, hash: &str) -> Result<Option<String>, StateError> {
            self.raw
                .get(&MANIFESTS, &[hash])?
                .map(|bytes| open_manifests(self.path, self.sealer, hash, bytes))
                .transpose()
        }

        /// The hashes of all stored manifests, in order.
        pub fn manifest_hashes(&self) -> Result<Vec<String>, StateError> {
            Ok(self
                .raw
                .scan(&MANIFESTS, &[])?
                .into_iter()
                .filter_map(|(mut key, _)| key.pop())
                .collect())
        }

        /// Why `revision` of `placement` was marked failed, if it was.
        pub fn failed<T: DeserializeOwned>(
            &self,
            placement: &str,
            revision: &str,
        ) -> Result<Option<T>, StateError> {
            self.get_json(&FAILED, &[placement, revision])
        }

        /// The failed revisions of one placement (exactly that name), ordered by revision key.
        pub fn failed_revisions<T: DeserializeOwned>(
            &self,
            placement: &str,
        ) -> Result<Vec<(String, T)>, StateError> {
            self.list_json(&FAILED, &[placement])
        }

        /// Up to `limit` events with a sequence number greater than `after_seq`, in order.
        pub fn events<T: DeserializeOwned>(
            &self,
            after_seq: u64,
            limit: usize,
        ) -> Result<Vec<(u64, T)>, StateError> {
            if after_seq == u64::MAX || limit == 0 {
                return Ok(Vec::new());
            }
            let after = seq_key(after_seq);
            let mut out = Vec::new();
            for (key, bytes) in self.raw.scan_after(&EVENTS, &[after.as_str()], limit)? {
                let name = key.first().cloned().unwrap_or_default();
                let seq: u64 = name.parse().map_err(|_| StateError::Aborted {
                    path: self.path.to_path_buf(),
                    reason: format!("table events: key {name:?} is not a sequence number"),
                })?;
                out.push((
                    seq,
                    decode(self.path, EVENTS.name, || seq.to_string(), &bytes)?,
                ));
            }
            Ok(out)
        }

        /// The events appended for rollout `rollout` with [`WriteTx::append_rollout_event`],
        /// in order, read through the index (the rest of the log is not read).
        pub fn rollout_events<T: DeserializeOwned>(
            &self,
            rollout: &str,
        ) -> Result<Vec<(u64, T)>, StateError> {
            let mut out = Vec::new();
            for (key, _) in self.raw.scan(&EVENTS_BY_ROLLOUT, &[rollout])? {
                let name = key.get(1).cloned().unwrap_or_default();
                let seq: u64 = name.parse().map_err(|_| StateError::Aborted {
                    path: self.path.to_path_buf(),
                    reason: format!(
                        "table events_by_rollout: key {name:?} is not a sequence number"
                    ),
                })?;
                // An index entry whose event is gone is skipped.
                if let Some(bytes) = self.raw.get(&EVENTS, &[name.as_str()])? {
                    out.push((
                        seq,
                        decode(self.path, EVENTS.name, || seq.to_string(), &bytes)?,
                    ));
                }
            }
            Ok(out)
        }

        /// The schedule state of workflow `name`.
        pub fn workflow_state<T: DeserializeOwned>(
            &self,
            name: &str,
        ) -> Result<Option<T>, StateError> {
            self.get_json(&WORKFLOWS, &[name])
        }

        /// The run records of workflow `workflow` (exactly that name), ordered by key.
        pub fn workflow_runs<T: DeserializeOwned>(
            &self,
            workflow: &str,
        ) -> Result<Vec<(String, T)>, StateError> {
            self.list_json(&WORKFLOW_RUNS, &[workflow])
        }

        /// One run record.
        pub fn workflow_run<T: DeserializeOwned>(
            &self,
            workflow: &str,
            key: &str,
        ) -> Result<Option<T>, StateError> {
            self.get_json(&WORKFLOW_RUNS, &[workflow, key])
        }

        /// The sequence number of the last event appended (0 if none ever was).
        pub fn last_event_seq(&self) -> Result<u64, StateError> {
            Ok(meta_get(self.raw, self.path, META_LAST_EVENT_SEQ)?.unwrap_or(0))
        }

        /// The burst record of `placement`.
        pub fn burst<T: DeserializeOwned>(&self, placement: &str) -> Result<Option<T>, StateError> {
            self.get_json(&BURST, &[placement])
        }

        /// The owner of `unit` (`None` if it was never claimed).
        pub fn owner(&self, unit: &str) -> Result<Option<Owner>, StateError> {
            self.get_json(&OWNERS, &[unit])
        }

        /// Every owner row, ordered by unit.
        pub fn owners(&self) -> Result<Vec<(String, Owner)>, StateError> {
            self.list_json(&OWNERS, &[])
        }

        /// The work item of (`cluster`, `placement`).
        pub fn work<T: DeserializeOwned>(
            &self,
            cluster: &str,
            placement: &str,
        ) -> Result<Option<T>, StateError> {
            self.get_json(&WORK, &[cluster, placement])
        }

        /// The work items of one cluster (exactly that name), ordered by placement.
        pub fn works<T: DeserializeOwned>(
            &self,
            cluster: &str,
        ) -> Result<Vec<(String, T)>, StateError> {
            self.list_json(&WORK, &[cluster])
        }

        /// The result of the work item of (`cluster`, `placement`).
        pub fn work_result<T: DeserializeOwned>(
            &self,
            cluster: &str,
            placement: &str,
        ) -> Result<Option<T>, StateError> {
            self.get_json(&WORK_RESULTS, &[cluster, placement])
        }

        /// The work results of one cluster (exactly that name), ordered by placement.
        pub fn work_results<T: DeserializeOwned>(
            &self,
            cluster: &str,
        ) -> Result<Vec<(String, T)>, StateError> {
            self.list_json(&WORK_RESULTS, &[cluster])
        }
    };
}

impl ReadTx<'_> {
    read_methods!();
}

impl WriteTx<'_> {
    read_methods!();

    /// Sets the rollout record of `placement`.
    pub fn put_rollout<T: Serialize + ?Sized>(
        &mut self,
        placement: &str,
        value: &T,
    ) -> Result<(), StateError> {
        self.put_json(&ROLLOUTS, &[placement], value)
    }

    /// Removes the rollout record of `placement`; returns whether there was one.
    pub fn remove_rollout(&mut self, placement: &str) -> Result<bool, StateError> {
        self.raw.remove(&ROLLOUTS, &[placement])
    }

    /// Sets the revision record of (`placement`, `cluster`).
    pub fn put_revision<T: Serialize + ?Sized>(
        &mut self,
        placement: &str,
        cluster: &str,
        value: &T,
    ) -> Result<(), StateError> {
        self.put_json(&REVISIONS, &[placement, cluster], value)
    }

    /// Removes the revision record of (`placement`, `cluster`); returns whether there was one.
    pub fn remove_revision(&mut self, placement: &str, cluster: &str) -> Result<bool, StateError> {
        self.raw.remove(&REVISIONS, &[placement, cluster])
    }

    /// Stores rendered manifests under `hash` (opaque to the store). A hash already present is
    /// left as it is: manifests are stored once.
    pub fn put_manifests(&mut self, hash: &str, yaml: &str) -> Result<(), StateError> {
        match self.raw.get(&MANIFESTS, &[hash])? {
            Some(existing)
                if existing == yaml.as_bytes()
                    || (existing.starts_with(SEALED_MAGIC)
                        && open_manifests(self.path, self.sealer, hash, existing.clone())
                            .is_ok_and(|t| t == yaml)) => {}
            None if yaml.contains(SENSITIVE_MARKER) => {
                let sealer = self.sealer.ok_or_else(|| StateError::Aborted {
                    path: self.path.to_path_buf(),
                    reason: format!(
                        "manifests {hash:?} hold data decrypted from SOPS files, and this store has no key to seal them with (give the SOPS age key)"
                    ),
                })?;
                use base64::Engine as _;
                let cipher = sealer
                    .seal(yaml.as_bytes())
                    .map_err(|e| StateError::Aborted {
                        path: self.path.to_path_buf(),
                        reason: format!("sealing manifests {hash:?}: {e}"),
                    })?;
                let mut sealed = SEALED_MAGIC.to_vec();
                sealed.extend(
                    base64::engine::general_purpose::STANDARD
                        .encode(cipher)
                        .into_bytes(),
                );
                self.raw.put(&MANIFESTS, &[hash], &sealed)?
            }
            Some(_) => tracing::warn!(
                store = %self.path.display(),
                hash,
                "state store: manifests with this hash are already stored with other content; keeping the stored ones"
            ),
            None => self.raw.put(&MANIFESTS, &[hash], yaml.as_bytes())?,
        }
        Ok(())
    }

    /// Deletes every stored manifest whose hash is not in `keep`; returns how many.
    pub fn retain_manifests(&mut self, keep: &BTreeSet<String>) -> Result<usize, StateError> {
        let doomed: Vec<String> = self
            .manifest_hashes()?
            .into_iter()
            .filter(|hash| !keep.contains(hash))
            .collect();
        for hash in &doomed {
            self.raw.remove(&MANIFESTS, &[hash.as_str()])?;
        }
        if !doomed.is_empty() {
            tracing::debug!(store = %self.path.display(), removed = doomed.len(), "state store: manifests collected");
        }
        Ok(doomed.len())
    }

    /// Records that `revision` of `placement` failed, and why.
    pub fn mark_failed<T: Serialize + ?Sized>(
        &mut self,
        placement: &str,
        revision: &str,
        reason: &T,
    ) -> Result<(), StateError> {
        self.put_json(&FAILED, &[placement, revision], reason)
    }

    /// Forgets every failed revision of `placement` (exactly that name).
    pub fn clear_failed(&mut self, placement: &str) -> Result<(), StateError> {
        for (key, _) in self.raw.scan(&FAILED, &[placement])? {
            let parts: Vec<&str> = key.iter().map(String::as_str).collect();
            self.raw.remove(&FAILED, &parts)?;
        }
        Ok(())
    }

    /// Appends an event; returns its sequence number. Numbers start at 1, increase strictly and
    /// are never reused (a rolled-back transaction's number is handed out again, since it was
    /// never visible). Writers are serialised, also across processes sharing a PostgreSQL
    /// database, so two appenders never get the same number.
    /// [`WriteTx::append_event`] for an event of rollout `rollout` (empty: of none), indexed
    /// so [`ReadTx::rollout_events`] finds it.
    pub fn append_rollout_event<T: Serialize + ?Sized>(
        &mut self,
        rollout: &str,
        event: &T,
    ) -> Result<u64, StateError> {
        let seq = self.append_event(event)?;
        if !rollout.is_empty() {
            self.raw
                .put(&EVENTS_BY_ROLLOUT, &[rollout, seq_key(seq).as_str()], b"")?;
        }
        Ok(seq)
    }

    pub fn append_event<T: Serialize + ?Sized>(&mut self, event: &T) -> Result<u64, StateError> {
        let seq =
            self.last_event_seq()?
                .checked_add(1)
                .ok_or_else(|| StateError::SequenceExhausted {
                    path: self.path.to_path_buf(),
                })?;
        let bytes = encode(self.path, EVENTS.name, || seq.to_string(), event)?;
        self.raw.put(&EVENTS, &[seq_key(seq).as_str()], &bytes)?;
        self.raw
            .put(&META, &[META_LAST_EVENT_SEQ], seq.to_string().as_bytes())?;
        Ok(seq)
    }

    /// Sets the schedule state of workflow `name`.
    pub fn put_workflow_state<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<(), StateError> {
        self.put_json(&WORKFLOWS, &[name], value)
    }

    /// Sets one run record of `workflow`.
    pub fn put_workflow_run<T: Serialize + ?Sized>(
        &mut self,
        workflow: &str,
        key: &str,
        value: &T,
    ) -> Result<(), StateError> {
        self.put_json(&WORKFLOW_RUNS, &[workflow, key], value)
    }

    /// Removes one run record; returns whether there was one.
    pub fn remove_workflow_run(&mut self, workflow: &str, key: &str) -> Result<bool, StateError> {
        self.raw.remove(&WORKFLOW_RUNS, &[workflow, key])
    }

    /// Sets the burst record of `placement`.
    pub fn put_burst<T: Serialize + ?Sized>(
        &mut self,
        placement: &str,
        value: &T,
    ) -> Result<(), StateError> {
        self.put_json(&BURST, &[placement], value)
    }

    /// Makes `holder` the owner of `unit` with the next epoch (previous + 1, from 1) and
    /// returns it. Every [`Store::fenced`] view at an older epoch is refused from then on.
    pub fn claim(&mut self, unit: &str, holder: &str) -> Result<u64, StateError> {
        let previous = match self.raw.get_for_update(&OWNERS, &[unit])? {
            Some(bytes) => decode::<Owner>(self.path, OWNERS.name, || format!("{unit:?}"), &bytes)?,
            None => Owner::default(),
        };
        let epoch = previous
            .epoch
            .checked_add(1)
            .ok_or_else(|| StateError::SequenceExhausted {
                path: self.path.to_path_buf(),
            })?;
        self.put_json(
            &OWNERS,
            &[unit],
            &Owner {
                holder: holder.to_string(),
                epoch,
            },
        )?;
        Ok(epoch)
    }

    /// Releases `unit` if `holder` holds it (the epoch stays, so the next claim still moves
    /// past it); returns whether it did.
    pub fn release(&mut self, unit: &str, holder: &str) -> Result<bool, StateError> {
        let Some(bytes) = self.raw.get_for_update(&OWNERS, &[unit])? else {
            return Ok(false);
        };
        let owner: Owner = decode(self.path, OWNERS.name, || format!("{unit:?}"), &bytes)?;
        if holder.is_empty() || owner.holder != holder {
            return Ok(false);
        }
        self.put_json(
            &OWNERS,
            &[unit],
            &Owner {
                holder: String::new(),
                epoch: owner.epoch,
            },
        )?;
        Ok(true)
    }

    /// Sets the work item of (`cluster`, `placement`).
    pub fn put_work<T: Serialize + ?Sized>(
        &mut self,
        cluster: &str,
        placement: &str,
        value: &T,
    ) -> Result<(), StateError> {
        self.put_json(&WORK, &[cluster, placement], value)
    }

    /// Removes the work item of (`cluster`, `placement`); returns whether there was one.
    pub fn remove_work(&mut self, cluster: &str, placement: &str) -> Result<bool, StateError> {
        self.raw.remove(&WORK, &[cluster, placement])
    }

    /// Sets the result of the work item of (`cluster`, `placement`).
    pub fn put_work_result<T: Serialize + ?Sized>(
        &mut self,
        cluster: &str,
        placement: &str,
        value: &T,
    ) -> Result<(), StateError> {
        self.put_json(&WORK_RESULTS, &[cluster, placement], value)
    }

    /// Removes the result of (`cluster`, `placement`); returns whether there was one.
    pub fn remove_work_result(
        &mut self,
        cluster: &str,
        placement: &str,
    ) -> Result<bool, StateError> {
        self.raw.remove(&WORK_RESULTS, &[cluster, placement])
    }

    /// Builds a [`StateError::Aborted`] for this store: return it from the closure given to
    /// [`Store::write`] to roll the transaction back.
    pub fn abort(&self, reason: impl Into<String>) -> StateError {
        StateError::Aborted {
            path: self.path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod burst_tests {
    use super::*;

    #[test]
    fn a_burst_record_survives_reopening() -> Result<(), StateError> {
        let dir = tempfile::tempdir().map_err(|e| StateError::Aborted {
            path: PathBuf::new(),
            reason: e.to_string(),
        })?;
        {
            let store = Store::open(dir.path())?;
            assert_eq!(store.read(|tx| tx.burst::<u64>("web"))?, None);
            store.write(|tx| tx.put_burst("web", &42u64))?;
        }
        let store = Store::open(dir.path())?;
        assert_eq!(store.read(|tx| tx.burst::<u64>("web"))?, Some(42));
        Ok(())
    }
}
