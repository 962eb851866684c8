//! The rollout engine's embedded, crash-safe state store.
//!
//! One [redb] file, `DIR/state.redb`, holds a few typed tables whose values are serde values
//! encoded as JSON. The crate is generic: it knows nothing of rollouts, clusters or Git, only
//! of the shape of its tables (the reconciler defines the value types).
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | rollouts | placement | JSON: the current rollout record of a placement |
//! | revisions | (placement, cluster) | JSON: e.g. current and last good hash |
//! | manifests | content hash (opaque) | rendered YAML text, stored once |
//! | failed | (placement, revision key) | JSON: why that revision failed |
//! | events | sequence number (1, 2, ...) | JSON: append-only event log |
//! | meta | name | u64: schema version, last event sequence |
//!
//! Every change happens inside [`Store::write`], one ACID transaction that is durable (fsync'd)
//! when it returns `Ok` and writes nothing when the closure fails. [`Store::read`] gives a
//! consistent snapshot. The file is locked by the process that opened it: a second [`Store`]
//! on the same directory, in this process or another, fails with [`StateError::Locked`].

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use redb::{
    Database, DatabaseError, ReadOnlyTable, ReadTransaction, ReadableDatabase, ReadableTable,
    Table, TableDefinition, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The schema this version of the crate writes. Opening a store recorded with another version
/// is an error (there are no migrations yet).
pub const SCHEMA_VERSION: u64 = 1;

/// The file inside the store directory.
pub const FILE_NAME: &str = "state.redb";

const ROLLOUTS: TableDefinition<&str, &[u8]> = TableDefinition::new("rollouts");
const REVISIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("revisions");
const MANIFESTS: TableDefinition<&str, &str> = TableDefinition::new("manifests");
const FAILED: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("failed");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Workflow name → its schedule state (JSON, defined by the reconciler).
const WORKFLOWS: TableDefinition<&str, &[u8]> = TableDefinition::new("workflows");
/// (workflow, run key) → run record (JSON, defined by the reconciler).
const WORKFLOW_RUNS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("workflow_runs");

const META_SCHEMA_VERSION: &str = "schema_version";
/// The last sequence number handed out; kept apart from the events table so a number is never
/// reused, even if old events are ever trimmed.
const META_LAST_EVENT_SEQ: &str = "last_event_seq";

/// Cache for redb's pages. The store holds records and manifests of one fleet, not bulk data.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Everything that can go wrong in the state store. Each variant names the store file.
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
        source: Box<redb::Error>,
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
}

fn db_err<E: Into<redb::Error>>(path: &Path, op: &'static str) -> impl FnOnce(E) -> StateError {
    move |e| StateError::Db {
        path: path.to_path_buf(),
        op,
        source: Box::new(e.into()),
    }
}

/// The embedded state store: one redb database file, exclusively locked while open.
pub struct Store {
    /// `None` in shared mode: the file is opened for each transaction and closed after it.
    db: Option<Database>,
    path: PathBuf,
}

/// How long a shared store waits for another process's transaction.
const SHARED_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens or creates `DIR/state.redb` (creating DIR). A second open of the same store, from
    /// this process or another, fails with [`StateError::Locked`] instead of waiting. After a
    /// crash redb recovers the last committed transaction on open. The whole file's checksums
    /// are verified on open, so a damaged file is an error rather than a panic.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let db = open_db(&path, true)?;
        let store = Store { db: Some(db), path };
        store.init_schema()?;
        tracing::debug!(path = %store.path.display(), "state store open");
        Ok(store)
    }

    /// Opens the store in shared mode: the file is opened (and its lock taken) for each
    /// transaction only, so several processes can use it in turn — `flotilla rollout pause`
    /// while an `apply` drives the rollout. A transaction waits up to 30 s for the lock.
    pub fn open_shared(dir: &Path) -> Result<Store, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(FILE_NAME);
        let store = Store {
            db: Some(open_db_waiting(&path, true)?),
            path,
        };
        store.init_schema()?;
        Ok(Store {
            db: None,
            path: store.path.clone(),
        })
    }

    /// Runs `f` on the open database, or opens it for `f` in shared mode.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        match &self.db {
            Some(db) => f(db),
            None => {
                let db = open_db_waiting(&self.path, false)?;
                f(&db)
            }
        }
    }

    /// The database file (`DIR/state.redb`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the recorded schema version; a new store gets its tables and the current version.
    /// A store with another version is left untouched.
    fn init_schema(&self) -> Result<(), StateError> {
        let path = &self.path;
        let recorded = {
            let db = self
                .db
                .as_ref()
                .ok_or_else(|| StateError::Locked { path: path.clone() })?;
            let tx = db.begin_read().map_err(db_err(path, "begin read"))?;
            match tx.open_table(META) {
                Ok(meta) => meta
                    .get(META_SCHEMA_VERSION)
                    .map_err(db_err(path, "read schema version"))?
                    .map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(db_err(path, "open table meta")(e)),
            }
        };
        match recorded {
            Some(SCHEMA_VERSION) => Ok(()),
            Some(found) => Err(StateError::Schema {
                path: path.clone(),
                found,
                supported: SCHEMA_VERSION,
            }),
            None => self.write(|tx| {
                let t = tx.tx;
                t.open_table(ROLLOUTS).map_err(db_err(path, "create table rollouts"))?;
                t.open_table(REVISIONS).map_err(db_err(path, "create table revisions"))?;
                t.open_table(MANIFESTS).map_err(db_err(path, "create table manifests"))?;
                t.open_table(FAILED).map_err(db_err(path, "create table failed"))?;
                t.open_table(EVENTS).map_err(db_err(path, "create table events"))?;
                t.open_table(WORKFLOWS).map_err(db_err(path, "create table workflows"))?;
                t.open_table(WORKFLOW_RUNS).map_err(db_err(path, "create table workflow_runs"))?;
                let mut meta = t.open_table(META).map_err(db_err(path, "create table meta"))?;
                meta.insert(META_SCHEMA_VERSION, SCHEMA_VERSION)
                    .map_err(db_err(path, "write schema version"))?;
                tracing::info!(path = %path.display(), version = SCHEMA_VERSION, "state store created");
                Ok(())
            }),
        }
    }

    /// One ACID write transaction. When this returns `Ok` the changes are durable (committed
    /// with redb's default `Durability::Immediate`, i.e. fsync'd). If `f` returns `Err` (or
    /// panics), nothing is written. Only one write transaction runs at a time: calling
    /// `write` again from inside `f` would wait for itself forever.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        let path = &self.path;
        self.with_db(|db| {
            let tx = db.begin_write().map_err(db_err(path, "begin write"))?;
            let result = f(&mut WriteTx { tx: &tx, path });
            match result {
                Ok(value) => {
                    tx.commit().map_err(db_err(path, "commit"))?;
                    Ok(value)
                }
                Err(e) => {
                    if let Err(abort) = tx.abort() {
                        tracing::warn!(path = %path.display(), error = %abort, "state store: abort failed");
                    }
                    Err(e)
                }
            }
        })
    }

    /// A consistent read snapshot: `f` sees every transaction committed before this call and
    /// none after.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&ReadTx<'_>) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(db_err(&self.path, "begin read"))?;
            f(&ReadTx {
                tx: &tx,
                path: &self.path,
            })
        })
    }
}

/// Opens the file. `verify`: check every page's checksum first, so a file damaged outside
/// redb is an error where a plain open trusts it and can panic. That reads the whole file,
/// so it is done once per store, not for every transaction of a shared one.
fn open_db(path: &Path, verify: bool) -> Result<Database, StateError> {
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(verify)
        .create(path)
        .map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                StateError::Locked {
                    path: path.to_path_buf(),
                }
            }
            other => db_err(path, "open")(other),
        })
}

/// `open_db`, waiting (up to [`SHARED_WAIT`]) while another process holds the file.
fn open_db_waiting(path: &Path, verify: bool) -> Result<Database, StateError> {
    let started = std::time::Instant::now();
    loop {
        match open_db(path, verify) {
            Err(StateError::Locked { .. }) if started.elapsed() < SHARED_WAIT => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// A write transaction (see [`Store::write`]); it reads its own writes.
pub struct WriteTx<'a> {
    tx: &'a WriteTransaction,
    path: &'a Path,
}

/// A read snapshot (see [`Store::read`]).
pub struct ReadTx<'a> {
    tx: &'a ReadTransaction,
    path: &'a Path,
}

impl ReadTx<'_> {
    /// A table added after the store was created (workflows): `None` until first written.
    fn table_opt<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
        op: &'static str,
    ) -> Result<Option<ReadOnlyTable<K, V>>, StateError> {
        match self.tx.open_table(def) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(db_err(self.path, op)(e)),
        }
    }

    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
        op: &'static str,
    ) -> Result<ReadOnlyTable<K, V>, StateError> {
        self.tx.open_table(def).map_err(db_err(self.path, op))
    }
}

impl WriteTx<'_> {
    fn table_opt<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
        op: &'static str,
    ) -> Result<Option<Table<'_, K, V>>, StateError> {
        self.table(def, op).map(Some)
    }

    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        def: TableDefinition<K, V>,
        op: &'static str,
    ) -> Result<Table<'_, K, V>, StateError> {
        self.tx.open_table(def).map_err(db_err(self.path, op))
    }
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

fn pair_key(a: &str, b: &str) -> String {
    format!("({a:?}, {b:?})")
}

/// The read operations, shared by [`ReadTx`] and [`WriteTx`] (each has its own `table`).
macro_rules! read_methods {
    () => {
        /// The rollout record of `placement`.
        pub fn rollout<T: DeserializeOwned>(
            &self,
            placement: &str,
        ) -> Result<Option<T>, StateError> {
            let table = self.table(ROLLOUTS, "open table rollouts")?;
            let got = table
                .get(placement)
                .map_err(db_err(self.path, "read rollout"))?;
            got.map(|v| {
                decode(
                    self.path,
                    "rollouts",
                    || format!("{placement:?}"),
                    v.value(),
                )
            })
            .transpose()
        }

        /// All rollout records, ordered by placement name.
        pub fn rollouts<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>, StateError> {
            let table = self.table(ROLLOUTS, "open table rollouts")?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(db_err(self.path, "list rollouts"))? {
                let (k, v) = entry.map_err(db_err(self.path, "list rollouts"))?;
                let key = k.value();
                out.push((
                    key.to_string(),
                    decode(self.path, "rollouts", || format!("{key:?}"), v.value())?,
                ));
            }
            Ok(out)
        }

        /// The revision record of (`placement`, `cluster`).
        pub fn revision<T: DeserializeOwned>(
            &self,
            placement: &str,
            cluster: &str,
        ) -> Result<Option<T>, StateError> {
            let table = self.table(REVISIONS, "open table revisions")?;
            let got = table
                .get((placement, cluster))
                .map_err(db_err(self.path, "read revision"))?;
            got.map(|v| {
                decode(
                    self.path,
                    "revisions",
                    || pair_key(placement, cluster),
                    v.value(),
                )
            })
            .transpose()
        }

        /// The revision records of one placement (exactly that name), ordered by cluster name.
        pub fn revisions<T: DeserializeOwned>(
            &self,
            placement: &str,
        ) -> Result<Vec<(String, T)>, StateError> {
            let table = self.table(REVISIONS, "open table revisions")?;
            let mut out = Vec::new();
            let range = table
                .range((placement, "")..)
                .map_err(db_err(self.path, "list revisions"))?;
            for entry in range {
                let (k, v) = entry.map_err(db_err(self.path, "list revisions"))?;
                let (p, cluster) = k.value();
                if p != placement {
                    break;
                }
                out.push((
                    cluster.to_string(),
                    decode(self.path, "revisions", || pair_key(p, cluster), v.value())?,
                ));
            }
            Ok(out)
        }

        /// The rendered manifests stored under `hash`.
        pub fn manifests(&self, hash: &str) -> Result<Option<String>, StateError> {
            let table = self.table(MANIFESTS, "open table manifests")?;
            let got = table
                .get(hash)
                .map_err(db_err(self.path, "read manifests"))?;
            Ok(got.map(|v| v.value().to_string()))
        }

        /// The hashes of all stored manifests, in order.
        pub fn manifest_hashes(&self) -> Result<Vec<String>, StateError> {
            let table = self.table(MANIFESTS, "open table manifests")?;
            let mut out = Vec::new();
            for entry in table.iter().map_err(db_err(self.path, "list manifests"))? {
                let (k, _) = entry.map_err(db_err(self.path, "list manifests"))?;
                out.push(k.value().to_string());
            }
            Ok(out)
        }

        /// Why `revision` of `placement` was marked failed, if it was.
        pub fn failed<T: DeserializeOwned>(
            &self,
            placement: &str,
            revision: &str,
        ) -> Result<Option<T>, StateError> {
            let table = self.table(FAILED, "open table failed")?;
            let got = table
                .get((placement, revision))
                .map_err(db_err(self.path, "read failed revision"))?;
            got.map(|v| {
                decode(
                    self.path,
                    "failed",
                    || pair_key(placement, revision),
                    v.value(),
                )
            })
            .transpose()
        }

        /// The failed revisions of one placement (exactly that name), ordered by revision key.
        pub fn failed_revisions<T: DeserializeOwned>(
            &self,
            placement: &str,
        ) -> Result<Vec<(String, T)>, StateError> {
            let table = self.table(FAILED, "open table failed")?;
            let mut out = Vec::new();
            let range = table
                .range((placement, "")..)
                .map_err(db_err(self.path, "list failed revisions"))?;
            for entry in range {
                let (k, v) = entry.map_err(db_err(self.path, "list failed revisions"))?;
                let (p, revision) = k.value();
                if p != placement {
                    break;
                }
                out.push((
                    revision.to_string(),
                    decode(self.path, "failed", || pair_key(p, revision), v.value())?,
                ));
            }
            Ok(out)
        }

        /// Up to `limit` events with a sequence number greater than `after_seq`, in order.
        pub fn events<T: DeserializeOwned>(
            &self,
            after_seq: u64,
            limit: usize,
        ) -> Result<Vec<(u64, T)>, StateError> {
            let Some(first) = after_seq.checked_add(1) else {
                return Ok(Vec::new());
            };
            let table = self.table(EVENTS, "open table events")?;
            let mut out = Vec::new();
            let range = table
                .range(first..)
                .map_err(db_err(self.path, "list events"))?;
            for entry in range.take(limit) {
                let (k, v) = entry.map_err(db_err(self.path, "list events"))?;
                let seq = k.value();
                out.push((
                    seq,
                    decode(self.path, "events", || seq.to_string(), v.value())?,
                ));
            }
            Ok(out)
        }

        /// The schedule state of workflow `name`.
        pub fn workflow_state<T: DeserializeOwned>(
            &self,
            name: &str,
        ) -> Result<Option<T>, StateError> {
            let Some(table) = self.table_opt(WORKFLOWS, "open table workflows")? else {
                return Ok(None);
            };
            let got = table
                .get(name)
                .map_err(db_err(self.path, "read workflow"))?;
            got.map(|v| decode(self.path, "workflows", || format!("{name:?}"), v.value()))
                .transpose()
        }

        /// The run records of workflow `workflow` (exactly that name), ordered by key.
        pub fn workflow_runs<T: DeserializeOwned>(
            &self,
            workflow: &str,
        ) -> Result<Vec<(String, T)>, StateError> {
            let Some(table) = self.table_opt(WORKFLOW_RUNS, "open table workflow_runs")? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            let range = table
                .range((workflow, "")..)
                .map_err(db_err(self.path, "list workflow runs"))?;
            for entry in range {
                let (k, v) = entry.map_err(db_err(self.path, "list workflow runs"))?;
                let (w, key) = k.value();
                if w != workflow {
                    break;
                }
                out.push((
                    key.to_string(),
                    decode(self.path, "workflow_runs", || pair_key(w, key), v.value())?,
                ));
            }
            Ok(out)
        }

        /// One run record.
        pub fn workflow_run<T: DeserializeOwned>(
            &self,
            workflow: &str,
            key: &str,
        ) -> Result<Option<T>, StateError> {
            let Some(table) = self.table_opt(WORKFLOW_RUNS, "open table workflow_runs")? else {
                return Ok(None);
            };
            let got = table
                .get((workflow, key))
                .map_err(db_err(self.path, "read workflow run"))?;
            got.map(|v| {
                decode(
                    self.path,
                    "workflow_runs",
                    || pair_key(workflow, key),
                    v.value(),
                )
            })
            .transpose()
        }

        /// The sequence number of the last event appended (0 if none ever was).
        pub fn last_event_seq(&self) -> Result<u64, StateError> {
            let table = self.table(META, "open table meta")?;
            let got = table
                .get(META_LAST_EVENT_SEQ)
                .map_err(db_err(self.path, "read last event sequence"))?;
            Ok(got.map(|v| v.value()).unwrap_or(0))
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
        let bytes = encode(self.path, "rollouts", || format!("{placement:?}"), value)?;
        let mut table = self.table(ROLLOUTS, "open table rollouts")?;
        table
            .insert(placement, bytes.as_slice())
            .map_err(db_err(self.path, "write rollout"))?;
        Ok(())
    }

    /// Removes the rollout record of `placement`; returns whether there was one.
    pub fn remove_rollout(&mut self, placement: &str) -> Result<bool, StateError> {
        let mut table = self.table(ROLLOUTS, "open table rollouts")?;
        let old = table
            .remove(placement)
            .map_err(db_err(self.path, "remove rollout"))?;
        Ok(old.is_some())
    }

    /// Sets the revision record of (`placement`, `cluster`).
    pub fn put_revision<T: Serialize + ?Sized>(
        &mut self,
        placement: &str,
        cluster: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = encode(
            self.path,
            "revisions",
            || pair_key(placement, cluster),
            value,
        )?;
        let mut table = self.table(REVISIONS, "open table revisions")?;
        table
            .insert((placement, cluster), bytes.as_slice())
            .map_err(db_err(self.path, "write revision"))?;
        Ok(())
    }

    /// Removes the revision record of (`placement`, `cluster`); returns whether there was one.
    pub fn remove_revision(&mut self, placement: &str, cluster: &str) -> Result<bool, StateError> {
        let mut table = self.table(REVISIONS, "open table revisions")?;
        let old = table
            .remove((placement, cluster))
            .map_err(db_err(self.path, "remove revision"))?;
        Ok(old.is_some())
    }

    /// Stores rendered manifests under `hash` (opaque to the store). A hash already present is
    /// left as it is: manifests are stored once.
    pub fn put_manifests(&mut self, hash: &str, yaml: &str) -> Result<(), StateError> {
        let mut table = self.table(MANIFESTS, "open table manifests")?;
        let existing = table
            .get(hash)
            .map_err(db_err(self.path, "read manifests"))?
            .map(|v| v.value() == yaml);
        match existing {
            Some(true) => {}
            Some(false) => tracing::warn!(
                path = %self.path.display(),
                hash,
                "state store: manifests with this hash are already stored with other content; keeping the stored ones"
            ),
            None => {
                table
                    .insert(hash, yaml)
                    .map_err(db_err(self.path, "write manifests"))?;
            }
        }
        Ok(())
    }

    /// Deletes every stored manifest whose hash is not in `keep`; returns how many.
    pub fn retain_manifests(&mut self, keep: &BTreeSet<String>) -> Result<usize, StateError> {
        let mut table = self.table(MANIFESTS, "open table manifests")?;
        let mut doomed = Vec::new();
        for entry in table.iter().map_err(db_err(self.path, "list manifests"))? {
            let (k, _) = entry.map_err(db_err(self.path, "list manifests"))?;
            let hash = k.value();
            if !keep.contains(hash) {
                doomed.push(hash.to_string());
            }
        }
        for hash in &doomed {
            table
                .remove(hash.as_str())
                .map_err(db_err(self.path, "remove manifests"))?;
        }
        if !doomed.is_empty() {
            tracing::debug!(path = %self.path.display(), removed = doomed.len(), "state store: manifests collected");
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
        let bytes = encode(
            self.path,
            "failed",
            || pair_key(placement, revision),
            reason,
        )?;
        let mut table = self.table(FAILED, "open table failed")?;
        table
            .insert((placement, revision), bytes.as_slice())
            .map_err(db_err(self.path, "write failed revision"))?;
        Ok(())
    }

    /// Forgets every failed revision of `placement` (exactly that name).
    pub fn clear_failed(&mut self, placement: &str) -> Result<(), StateError> {
        let mut table = self.table(FAILED, "open table failed")?;
        let mut doomed = Vec::new();
        for entry in table
            .range((placement, "")..)
            .map_err(db_err(self.path, "list failed revisions"))?
        {
            let (k, _) = entry.map_err(db_err(self.path, "list failed revisions"))?;
            let (p, revision) = k.value();
            if p != placement {
                break;
            }
            doomed.push(revision.to_string());
        }
        for revision in &doomed {
            table
                .remove((placement, revision.as_str()))
                .map_err(db_err(self.path, "remove failed revision"))?;
        }
        Ok(())
    }

    /// Appends an event; returns its sequence number. Numbers start at 1, increase strictly and
    /// are never reused (a rolled-back transaction's number is handed out again, since it was
    /// never visible).
    pub fn append_event<T: Serialize + ?Sized>(&mut self, event: &T) -> Result<u64, StateError> {
        let seq =
            self.last_event_seq()?
                .checked_add(1)
                .ok_or_else(|| StateError::SequenceExhausted {
                    path: self.path.to_path_buf(),
                })?;
        let bytes = encode(self.path, "events", || seq.to_string(), event)?;
        {
            let mut events = self.table(EVENTS, "open table events")?;
            events
                .insert(seq, bytes.as_slice())
                .map_err(db_err(self.path, "append event"))?;
        }
        let mut meta = self.table(META, "open table meta")?;
        meta.insert(META_LAST_EVENT_SEQ, seq)
            .map_err(db_err(self.path, "write last event sequence"))?;
        Ok(seq)
    }

    /// Sets the schedule state of workflow `name`.
    pub fn put_workflow_state<T: Serialize + ?Sized>(
        &mut self,
        name: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = encode(self.path, "workflows", || format!("{name:?}"), value)?;
        let mut table = self.table(WORKFLOWS, "open table workflows")?;
        table
            .insert(name, bytes.as_slice())
            .map_err(db_err(self.path, "write workflow"))?;
        Ok(())
    }

    /// Sets one run record of `workflow`.
    pub fn put_workflow_run<T: Serialize + ?Sized>(
        &mut self,
        workflow: &str,
        key: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = encode(
            self.path,
            "workflow_runs",
            || pair_key(workflow, key),
            value,
        )?;
        let mut table = self.table(WORKFLOW_RUNS, "open table workflow_runs")?;
        table
            .insert((workflow, key), bytes.as_slice())
            .map_err(db_err(self.path, "write workflow run"))?;
        Ok(())
    }

    /// Removes one run record; returns whether there was one.
    pub fn remove_workflow_run(&mut self, workflow: &str, key: &str) -> Result<bool, StateError> {
        let mut table = self.table(WORKFLOW_RUNS, "open table workflow_runs")?;
        let old = table
            .remove((workflow, key))
            .map_err(db_err(self.path, "remove workflow run"))?;
        Ok(old.is_some())
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

/// Burst pools: one record per placement (current split, last scale-out and scale-in), so a
/// restarted daemon keeps the pool's cooldown. Created on first write; a store from before
/// burst pools reads as having none.
const BURST: TableDefinition<&str, &[u8]> = TableDefinition::new("burst");

impl ReadTx<'_> {
    /// The burst record of `placement`.
    pub fn burst<T: DeserializeOwned>(&self, placement: &str) -> Result<Option<T>, StateError> {
        let table = match self.tx.open_table(BURST) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(db_err(self.path, "open table burst")(e)),
        };
        let got = table
            .get(placement)
            .map_err(db_err(self.path, "read burst record"))?;
        got.map(|v| decode(self.path, "burst", || format!("{placement:?}"), v.value()))
            .transpose()
    }
}

impl WriteTx<'_> {
    /// Sets the burst record of `placement`.
    pub fn put_burst<T: Serialize + ?Sized>(
        &mut self,
        placement: &str,
        value: &T,
    ) -> Result<(), StateError> {
        let bytes = encode(self.path, "burst", || format!("{placement:?}"), value)?;
        let mut table = self.table(BURST, "open table burst")?;
        table
            .insert(placement, bytes.as_slice())
            .map_err(db_err(self.path, "write burst record"))?;
        Ok(())
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
