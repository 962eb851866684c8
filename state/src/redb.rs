//! The embedded backend: one redb file, `DIR/state.redb`, one typed redb table per
//! [`TableSpec`] (the layout stores written before the [`Backend`] trait already had, so they
//! open unchanged).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition,
    WriteTransaction,
};

use crate::StateError;
use crate::backend::{
    Backend, Key, KeyKind, NOTIFY_CAPACITY, Notification, RawTx, TableSpec, TxBody, ValueKind,
};

/// Cache for redb's pages. The store holds records and manifests of one fleet, not bulk data.
const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// How long a shared store waits for another process's transaction.
const SHARED_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

pub(crate) fn db_err<E: Into<redb::Error>>(
    path: &Path,
    op: &'static str,
) -> impl FnOnce(E) -> StateError {
    move |e| StateError::Db {
        path: path.to_path_buf(),
        op,
        source: Box::new(e.into()),
    }
}

/// One redb database file. Clones of the [`crate::Store`] share it (and its notifications).
pub(crate) struct RedbBackend {
    /// `None` in shared mode: see [`Shared`].
    pub(crate) db: Option<Database>,
    /// Shared mode: the file is opened for a run of transactions and closed between runs.
    pub(crate) shared: Option<Arc<Shared>>,
    path: PathBuf,
    notify: tokio::sync::broadcast::Sender<Notification>,
}

/// A shared store's handle on the file. Opening and closing a redb file costs a sync of the
/// file each time, so a shared store keeps it open while transactions follow each other and
/// closes it once it has been idle for [`IDLE`] or held for [`HOLD`]; after a close for
/// holding too long, it stays closed for [`GAP`] (longer than another process's retry
/// interval) so a `flotilla rollout pause` waiting for the lock gets its turn. Another
/// process therefore waits at most about `HOLD` for the file, and a busy daemon pays one
/// open and close per `HOLD` instead of one per transaction.
pub(crate) struct Shared {
    path: PathBuf,
    open: RwLock<Option<Held>>,
    /// Not reopened before this (after a close for holding too long).
    closed_until: Mutex<Instant>,
    /// Set while the file is being closed for holding too long: new transactions wait.
    closing: AtomicBool,
}

thread_local! {
    /// Transactions of a shared store this thread is inside (a nested one must not wait for
    /// the close, which waits for the outer one).
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Counts this thread into a transaction until dropped (also when `f` panics).
struct Depth;

impl Depth {
    fn enter() -> Depth {
        DEPTH.with(|d| d.set(d.get() + 1));
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

struct Held {
    db: Database,
    since: Instant,
    /// Milliseconds after `since` of the last transaction's end.
    last_used: AtomicU64,
}

/// How long the file stays open with no transaction.
const IDLE: Duration = Duration::from_millis(20);
/// How long the file stays open at most while transactions keep coming.
const HOLD: Duration = Duration::from_millis(1000);
/// How long it stays closed after `HOLD` (others retry every 10 ms).
const GAP: Duration = Duration::from_millis(50);

impl Shared {
    /// The handle and its closer thread; `None` (the file closed) when the thread cannot be
    /// started: the store then opens the file for each transaction, as before.
    fn new(path: PathBuf, db: Database) -> Option<Arc<Shared>> {
        let now = Instant::now();
        let shared = Arc::new(Shared {
            path,
            open: RwLock::new(Some(Held {
                db,
                since: now,
                last_used: AtomicU64::new(0),
            })),
            closed_until: Mutex::new(now),
            closing: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&shared);
        let spawned = std::thread::Builder::new()
            .name("flotilla-state-closer".into())
            .spawn(move || {
                while let Some(shared) = weak.upgrade() {
                    shared.close_if_due();
                    drop(shared);
                    std::thread::sleep(IDLE / 2);
                }
            });
        match spawned {
            Ok(_) => Some(shared),
            Err(e) => {
                tracing::warn!(error = %e, "state store: no closer thread; the file is opened for each transaction");
                None
            }
        }
    }

    /// Closes the file when it has been idle or held long enough.
    fn close_if_due(&self) {
        let due = |h: &Held| {
            let idle = h
                .since
                .elapsed()
                .saturating_sub(Duration::from_millis(h.last_used.load(Ordering::Relaxed)));
            (idle >= IDLE, h.since.elapsed() >= HOLD)
        };
        let check = match self.open.read() {
            Ok(open) => open.as_ref().map(due),
            Err(_) => return,
        };
        let Some((idle, long)) = check else {
            return;
        };
        if !long {
            // Idle: close unless a transaction started meanwhile (`try_write` never waits
            // behind one).
            if idle && let Ok(mut open) = self.open.try_write() {
                drop(open.take());
            }
            return;
        }
        // Held too long: new transactions of this process wait (nested ones excepted, see
        // `with`) until the running ones end and the file is closed.
        self.closing.store(true, Ordering::SeqCst);
        let t0 = Instant::now();
        loop {
            match self.open.try_write() {
                Ok(mut open) => {
                    // Closed (which syncs the file) first; then the gap is set before the lock
                    // is let go, so no transaction of this process reopens in between.
                    drop(open.take());
                    if let Ok(mut until) = self.closed_until.lock() {
                        *until = Instant::now() + GAP;
                    }
                    break;
                }
                Err(std::sync::TryLockError::WouldBlock) if t0.elapsed() < SHARED_WAIT => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(_) => break,
            }
        }
        self.closing.store(false, Ordering::SeqCst);
    }

    /// Runs `f` on the open file, opening it first if needed.
    fn with<T>(&self, f: impl FnOnce(&Database) -> Result<T, StateError>) -> Result<T, StateError> {
        let poisoned = || StateError::Aborted {
            path: self.path.clone(),
            reason: "a transaction panicked earlier".into(),
        };
        let nested = DEPTH.with(|d| d.get() > 0);
        loop {
            if !nested && self.closing.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            {
                let open = self.open.read().map_err(|_| poisoned())?;
                if let Some(h) = open.as_ref() {
                    let out = {
                        let _depth = Depth::enter();
                        f(&h.db)
                    };
                    let at = u64::try_from(h.since.elapsed().as_millis()).unwrap_or(u64::MAX);
                    h.last_used.store(at, Ordering::Relaxed);
                    return out;
                }
            }
            let until = *self.closed_until.lock().map_err(|_| poisoned())?;
            if let Some(wait) = until.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            // `try_write`: a transaction of this process that is running (a nested one
            // included) never waits for this one.
            match self.open.try_write() {
                Ok(mut open) => {
                    if open.is_none() {
                        *open = Some(Held {
                            db: open_db_waiting(&self.path, false)?,
                            since: Instant::now(),
                            last_used: AtomicU64::new(0),
                        });
                    }
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(std::sync::TryLockError::Poisoned(_)) => return Err(poisoned()),
            }
        }
    }
}

impl RedbBackend {
    /// Opens (creating) `DIR/state.redb`, locked while this backend lives, checksums verified.
    pub(crate) fn open(dir: &Path, wait: bool) -> Result<RedbBackend, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(crate::FILE_NAME);
        let db = if wait {
            open_db_waiting(&path, true)?
        } else {
            open_db(&path, true)?
        };
        Ok(RedbBackend {
            db: Some(db),
            shared: None,
            path,
            notify: tokio::sync::broadcast::channel(NOTIFY_CAPACITY).0,
        })
    }

    /// Turns an open backend into a shared one (see [`Shared`]).
    pub(crate) fn into_shared(mut self) -> RedbBackend {
        if let Some(db) = self.db.take() {
            self.shared = Shared::new(self.path.clone(), db);
        }
        self
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the open database, or on the shared handle (opened as needed).
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StateError>,
    ) -> Result<T, StateError> {
        match (&self.db, &self.shared) {
            (Some(db), _) => f(db),
            (None, Some(shared)) => shared.with(f),
            (None, None) => {
                let db = open_db_waiting(&self.path, false)?;
                f(&db)
            }
        }
    }
}

impl Backend for RedbBackend {
    fn describe(&self) -> String {
        format!("redb {}", self.path.display())
    }

    fn read(&self, body: TxBody<'_>) -> Result<(), StateError> {
        let path = &self.path;
        self.with_db(|db| {
            let tx = db.begin_read().map_err(db_err(path, "begin read"))?;
            body(&RedbRead { tx: &tx, path })
        })
    }

    fn write(&self, body: TxBody<'_>) -> Result<(), StateError> {
        let path = &self.path;
        self.with_db(|db| {
            let tx = db.begin_write().map_err(db_err(path, "begin write"))?;
            // A panic in `body` drops `tx`, which aborts it.
            match body(&RedbWrite { tx: &tx, path }) {
                Ok(()) => tx.commit().map_err(db_err(path, "commit")),
                Err(e) => {
                    if let Err(abort) = tx.abort() {
                        tracing::warn!(path = %path.display(), error = %abort, "state store: abort failed");
                    }
                    Err(e)
                }
            }
        })
    }

    fn notify(&self, topic: &str, payload: &str) -> Result<(), StateError> {
        // No subscriber is not an error.
        let _ = self.notify.send(Notification {
            topic: topic.to_string(),
            payload: payload.to_string(),
        });
        Ok(())
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notification> {
        self.notify.subscribe()
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

/// A redb key type and how it maps to key parts.
trait RKey: redb::Key + 'static {
    fn make<'a>(parts: &[&'a str]) -> Option<Self::SelfType<'a>>;
    fn parts(v: &Self::SelfType<'_>) -> Key;
    /// Where a scan for `prefix` starts (`None`: at the beginning).
    fn lower<'a>(prefix: &[&'a str]) -> Option<Self::SelfType<'a>>;
}

impl RKey for &'static str {
    fn make<'a>(parts: &[&'a str]) -> Option<&'a str> {
        match parts {
            [a] => Some(a),
            _ => None,
        }
    }
    fn parts(v: &&str) -> Key {
        vec![v.to_string()]
    }
    fn lower<'a>(prefix: &[&'a str]) -> Option<&'a str> {
        Self::make(prefix)
    }
}

impl RKey for (&'static str, &'static str) {
    fn make<'a>(parts: &[&'a str]) -> Option<(&'a str, &'a str)> {
        match parts {
            [a, b] => Some((a, b)),
            _ => None,
        }
    }
    fn parts(v: &(&str, &str)) -> Key {
        vec![v.0.to_string(), v.1.to_string()]
    }
    fn lower<'a>(prefix: &[&'a str]) -> Option<(&'a str, &'a str)> {
        match prefix {
            [a] => Some((a, "")),
            other => Self::make(other),
        }
    }
}

impl RKey for u64 {
    fn make(parts: &[&str]) -> Option<u64> {
        match parts {
            [a] => a.parse().ok(),
            _ => None,
        }
    }
    fn parts(v: &u64) -> Key {
        vec![format!("{v:020}")]
    }
    fn lower(prefix: &[&str]) -> Option<u64> {
        Self::make(prefix)
    }
}

/// A redb value type and how it maps to bytes.
trait RVal: redb::Value + 'static {
    fn val_from_bytes(b: &[u8]) -> Option<Self::SelfType<'_>>;
    fn val_to_bytes(v: &Self::SelfType<'_>) -> Vec<u8>;
}

impl RVal for &'static [u8] {
    fn val_from_bytes(b: &[u8]) -> Option<&[u8]> {
        Some(b)
    }
    fn val_to_bytes(v: &&[u8]) -> Vec<u8> {
        v.to_vec()
    }
}

impl RVal for &'static str {
    fn val_from_bytes(b: &[u8]) -> Option<&str> {
        std::str::from_utf8(b).ok()
    }
    fn val_to_bytes(v: &&str) -> Vec<u8> {
        v.as_bytes().to_vec()
    }
}

impl RVal for u64 {
    fn val_from_bytes(b: &[u8]) -> Option<u64> {
        std::str::from_utf8(b).ok()?.parse().ok()
    }
    fn val_to_bytes(v: &u64) -> Vec<u8> {
        v.to_string().into_bytes()
    }
}

fn bad_key(path: &Path, table: &TableSpec, key: &[&str]) -> StateError {
    StateError::Aborted {
        path: path.to_path_buf(),
        reason: format!("key {key:?} does not fit table {}", table.name),
    }
}

fn bad_value(path: &Path, table: &TableSpec, key: &[&str]) -> StateError {
    StateError::Aborted {
        path: path.to_path_buf(),
        reason: format!(
            "the value for key {key:?} does not fit table {} ({:?})",
            table.name, table.value
        ),
    }
}

/// Calls `$f::<K, V>($args)` with the redb types of `$spec`.
macro_rules! typed {
    ($spec:expr, $path:expr, $f:ident($($arg:expr),*)) => {
        match ($spec.key, $spec.value) {
            (KeyKind::Str, ValueKind::Bytes) => $f::<&'static str, &'static [u8]>($($arg),*),
            (KeyKind::Pair, ValueKind::Bytes) => {
                $f::<(&'static str, &'static str), &'static [u8]>($($arg),*)
            }
            (KeyKind::Seq, ValueKind::Bytes) => $f::<u64, &'static [u8]>($($arg),*),
            (KeyKind::Str, ValueKind::Text) => $f::<&'static str, &'static str>($($arg),*),
            (KeyKind::Str, ValueKind::U64) => $f::<&'static str, u64>($($arg),*),
            (k, v) => Err(StateError::Aborted {
                path: $path.to_path_buf(),
                reason: format!("table {}: no redb layout for {k:?} keys with {v:?} values", $spec.name),
            }),
        }
    };
}

fn def<K: RKey, V: RVal>(table: &TableSpec) -> TableDefinition<'static, K, V> {
    TableDefinition::new(table.name)
}

fn get_in<K: RKey, V: RVal>(
    t: &impl ReadableTable<K, V>,
    path: &Path,
    table: &TableSpec,
    key: &[&str],
) -> Result<Option<Vec<u8>>, StateError> {
    let k = K::make(key).ok_or_else(|| bad_key(path, table, key))?;
    let got = t.get(k).map_err(db_err(path, "read"))?;
    Ok(got.map(|v| V::val_to_bytes(&v.value())))
}

fn scan_in<K: RKey, V: RVal>(
    t: &impl ReadableTable<K, V>,
    path: &Path,
    prefix: &[&str],
) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
    let range = match K::lower(prefix) {
        Some(lo) => t.range(lo..),
        None => t.iter(),
    }
    .map_err(db_err(path, "list"))?;
    let mut out = Vec::new();
    for entry in range {
        let (k, v) = entry.map_err(db_err(path, "list"))?;
        let parts = K::parts(&k.value());
        if parts.len() < prefix.len() || parts.iter().zip(prefix).any(|(a, b)| a != b) {
            break;
        }
        out.push((parts, V::val_to_bytes(&v.value())));
    }
    Ok(out)
}

fn scan_after_in<K: RKey, V: RVal>(
    t: &impl ReadableTable<K, V>,
    path: &Path,
    table: &TableSpec,
    after: &[&str],
    limit: usize,
) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
    let k = K::make(after).ok_or_else(|| bad_key(path, table, after))?;
    let range = t
        .range((Bound::Excluded(k), Bound::Unbounded))
        .map_err(db_err(path, "list"))?;
    let mut out = Vec::new();
    for entry in range.take(limit) {
        let (k, v) = entry.map_err(db_err(path, "list"))?;
        out.push((K::parts(&k.value()), V::val_to_bytes(&v.value())));
    }
    Ok(out)
}

/// A read snapshot.
struct RedbRead<'a> {
    tx: &'a ReadTransaction,
    path: &'a Path,
}

/// Opens a table for reading; a table never created reads as empty.
fn open_read<K: RKey, V: RVal>(
    tx: &ReadTransaction,
    path: &Path,
    table: &TableSpec,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StateError> {
    match tx.open_table(def::<K, V>(table)) {
        Ok(t) => Ok(Some(t)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(db_err(path, "open table")(e)),
    }
}

fn read_get<K: RKey, V: RVal>(
    tx: &ReadTransaction,
    path: &Path,
    table: &TableSpec,
    key: &[&str],
) -> Result<Option<Vec<u8>>, StateError> {
    match open_read::<K, V>(tx, path, table)? {
        Some(t) => get_in(&t, path, table, key),
        None => Ok(None),
    }
}

fn read_scan<K: RKey, V: RVal>(
    tx: &ReadTransaction,
    path: &Path,
    table: &TableSpec,
    prefix: &[&str],
) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
    match open_read::<K, V>(tx, path, table)? {
        Some(t) => scan_in(&t, path, prefix),
        None => Ok(Vec::new()),
    }
}

fn read_scan_after<K: RKey, V: RVal>(
    tx: &ReadTransaction,
    path: &Path,
    table: &TableSpec,
    after: &[&str],
    limit: usize,
) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
    match open_read::<K, V>(tx, path, table)? {
        Some(t) => scan_after_in(&t, path, table, after, limit),
        None => Ok(Vec::new()),
    }
}

impl RawTx for RedbRead<'_> {
    fn get(&self, table: &TableSpec, key: &[&str]) -> Result<Option<Vec<u8>>, StateError> {
        typed!(table, self.path, read_get(self.tx, self.path, table, key))
    }
    fn scan(&self, table: &TableSpec, prefix: &[&str]) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
        typed!(
            table,
            self.path,
            read_scan(self.tx, self.path, table, prefix)
        )
    }
    fn scan_after(
        &self,
        table: &TableSpec,
        after: &[&str],
        limit: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
        typed!(
            table,
            self.path,
            read_scan_after(self.tx, self.path, table, after, limit)
        )
    }
    fn put(&self, table: &TableSpec, key: &[&str], _: &[u8]) -> Result<(), StateError> {
        Err(StateError::Aborted {
            path: self.path.to_path_buf(),
            reason: format!(
                "write to table {} key {key:?} in a read transaction",
                table.name
            ),
        })
    }
    fn remove(&self, table: &TableSpec, key: &[&str]) -> Result<bool, StateError> {
        self.put(table, key, &[]).map(|()| false)
    }
}

/// A write transaction (tables are created when first opened).
struct RedbWrite<'a> {
    tx: &'a WriteTransaction,
    path: &'a Path,
}

fn open_write<'t, K: RKey, V: RVal>(
    tx: &'t WriteTransaction,
    path: &Path,
    table: &TableSpec,
) -> Result<redb::Table<'t, K, V>, StateError> {
    tx.open_table(def::<K, V>(table))
        .map_err(db_err(path, "open table"))
}

fn write_get<K: RKey, V: RVal>(
    tx: &WriteTransaction,
    path: &Path,
    table: &TableSpec,
    key: &[&str],
) -> Result<Option<Vec<u8>>, StateError> {
    get_in(&open_write::<K, V>(tx, path, table)?, path, table, key)
}

fn write_scan<K: RKey, V: RVal>(
    tx: &WriteTransaction,
    path: &Path,
    table: &TableSpec,
    prefix: &[&str],
) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
    scan_in(&open_write::<K, V>(tx, path, table)?, path, prefix)
}

fn write_scan_after<K: RKey, V: RVal>(
    tx: &WriteTransaction,
    path: &Path,
    table: &TableSpec,
    after: &[&str],
    limit: usize,
) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
    scan_after_in(
        &open_write::<K, V>(tx, path, table)?,
        path,
        table,
        after,
        limit,
    )
}

fn write_put<K: RKey, V: RVal>(
    tx: &WriteTransaction,
    path: &Path,
    table: &TableSpec,
    key: &[&str],
    value: &[u8],
) -> Result<(), StateError> {
    let k = K::make(key).ok_or_else(|| bad_key(path, table, key))?;
    let v = V::val_from_bytes(value).ok_or_else(|| bad_value(path, table, key))?;
    let mut t = open_write::<K, V>(tx, path, table)?;
    t.insert(k, v).map_err(db_err(path, "write"))?;
    Ok(())
}

fn write_remove<K: RKey, V: RVal>(
    tx: &WriteTransaction,
    path: &Path,
    table: &TableSpec,
    key: &[&str],
) -> Result<bool, StateError> {
    let k = K::make(key).ok_or_else(|| bad_key(path, table, key))?;
    let mut t = open_write::<K, V>(tx, path, table)?;
    let old = t.remove(k).map_err(db_err(path, "remove"))?;
    Ok(old.is_some())
}

impl RawTx for RedbWrite<'_> {
    fn get(&self, table: &TableSpec, key: &[&str]) -> Result<Option<Vec<u8>>, StateError> {
        typed!(table, self.path, write_get(self.tx, self.path, table, key))
    }
    fn scan(&self, table: &TableSpec, prefix: &[&str]) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
        typed!(
            table,
            self.path,
            write_scan(self.tx, self.path, table, prefix)
        )
    }
    fn scan_after(
        &self,
        table: &TableSpec,
        after: &[&str],
        limit: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
        typed!(
            table,
            self.path,
            write_scan_after(self.tx, self.path, table, after, limit)
        )
    }
    fn put(&self, table: &TableSpec, key: &[&str], value: &[u8]) -> Result<(), StateError> {
        typed!(
            table,
            self.path,
            write_put(self.tx, self.path, table, key, value)
        )
    }
    fn remove(&self, table: &TableSpec, key: &[&str]) -> Result<bool, StateError> {
        typed!(
            table,
            self.path,
            write_remove(self.tx, self.path, table, key)
        )
    }
}
