//! The PostgreSQL backend: every table of the store lives in one PostgreSQL table,
//! `flotilla_state (tbl, k1, k2, v)`, key parts stored as `bytea` (UTF-8 bytes: compared
//! bytewise, the order redb uses, and able to hold any string, NUL included). Several daemon replicas share it.
//!
//! The sync `postgres` client runs its own runtime and panics when called on a tokio thread,
//! so each connection lives on a dedicated thread and the caller sends it owned jobs; the
//! caller blocks on the answer (bounded by [`REPLY_WAIT`]). A transaction takes one pooled
//! connection for its whole life. Write transactions take a transaction-scoped advisory lock
//! first, so writers run one at a time across every process (as redb's single writer), which
//! keeps event numbers unique and makes a fence check and a concurrent claim serialise. Reads
//! are `REPEATABLE READ READ ONLY` snapshots. No TLS: the database is expected on loopback or
//! a trusted network.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::config::Host;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};

use crate::StateError;
use crate::backend::{Backend, Key, NOTIFY_CAPACITY, Notification, RawTx, TableSpec, TxBody};

/// Bound on connecting (and on each reconnect attempt of the listener).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Server-side bound on every statement, including waiting for the writers' lock.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
/// A transaction left open longer than this (a paused process) is ended by the server, which
/// frees the writers' lock.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(60);
/// Client-side bound on one answer from a connection thread (a server that stopped answering).
const REPLY_WAIT: Duration = Duration::from_secs(45);
/// Idle connections kept per store.
const MAX_IDLE: usize = 4;
/// The advisory lock writers take ("flotilla" in ASCII).
const WRITE_LOCK: i64 = 0x666c_6f74_696c_6c61;
/// The NOTIFY channel.
const CHANNEL: &str = "flotilla";
/// NOTIFY payloads must stay under 8000 bytes.
const MAX_NOTIFY_BYTES: usize = 7900;

const CREATE: &str = r#"CREATE TABLE IF NOT EXISTS flotilla_state (
    tbl text NOT NULL,
    k1 bytea NOT NULL,
    k2 bytea NOT NULL DEFAULT '\x',
    v bytea NOT NULL,
    PRIMARY KEY (tbl, k1, k2)
)"#;

pub(crate) fn is_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// `url` with the password (if any) replaced by `***`, and the password.
fn redact(url: &str) -> (String, Option<String>) {
    let Some(scheme_end) = url.find("://") else {
        return (url.to_string(), None);
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return (url.to_string(), None);
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return (url.to_string(), None);
    };
    let password = &userinfo[colon + 1..];
    let redacted = format!(
        "{}{}:***{}",
        &url[..scheme_end + 3],
        &userinfo[..colon],
        &rest[at..]
    );
    (redacted, Some(password.to_string()))
}

/// An error and its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

type Job = Box<dyn FnOnce(&mut Client) + Send>;

/// One connection, on its own thread. Dropping it ends the thread, which closes the
/// connection (the server rolls back whatever transaction was open).
struct Conn {
    jobs: mpsc::Sender<Job>,
    broken: std::cell::Cell<bool>,
}

struct Shared {
    config: postgres::Config,
    describe: String,
    idle: Mutex<Vec<Conn>>,
    listener: Mutex<Option<tokio::sync::broadcast::Sender<Notification>>>,
    stop: Arc<AtomicBool>,
}

pub(crate) struct PgBackend {
    shared: Arc<Shared>,
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn pg_err(db: &str, op: &'static str, message: impl Into<String>) -> StateError {
    StateError::Postgres {
        db: db.to_string(),
        op,
        message: message.into(),
    }
}

impl Conn {
    fn connect(config: &postgres::Config, db: &str) -> Result<Conn, StateError> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel::<Result<(), String>>();
        let config = config.clone();
        std::thread::Builder::new()
            .name("flotilla-state-pg".to_string())
            .spawn(move || {
                let mut client = match config.connect(NoTls) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(chain(&e)));
                        return;
                    }
                };
                let settings = format!(
                    "SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}",
                    STATEMENT_TIMEOUT.as_millis(),
                    IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
                );
                if let Err(e) = client.batch_execute(&settings) {
                    let _ = ready_tx.send(Err(chain(&e)));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                while let Ok(job) = queue.recv() {
                    job(&mut client);
                }
            })
            .map_err(|e| pg_err(db, "connect", format!("cannot start a thread: {e}")))?;
        match ready.recv_timeout(CONNECT_TIMEOUT + Duration::from_secs(5)) {
            Ok(Ok(())) => Ok(Conn {
                jobs,
                broken: std::cell::Cell::new(false),
            }),
            Ok(Err(message)) => Err(pg_err(db, "connect", message)),
            Err(_) => Err(pg_err(
                db,
                "connect",
                format!("no connection within {CONNECT_TIMEOUT:?}"),
            )),
        }
    }

    /// Runs `f` on the connection's thread and waits for its answer.
    fn call<R: Send + 'static>(
        &self,
        db: &str,
        op: &'static str,
        f: impl FnOnce(&mut Client) -> Result<R, postgres::Error> + Send + 'static,
    ) -> Result<R, StateError> {
        if self.broken.get() {
            return Err(pg_err(
                db,
                op,
                "the connection was lost earlier in this transaction",
            ));
        }
        let (tx, rx) = mpsc::channel();
        let job: Job = Box::new(move |client| {
            let result = f(client).map_err(|e| chain(&e));
            let _ = tx.send((result, client.is_closed()));
        });
        if self.jobs.send(job).is_err() {
            self.broken.set(true);
            return Err(pg_err(db, op, "the connection thread has ended"));
        }
        match rx.recv_timeout(REPLY_WAIT) {
            Ok((Ok(value), _)) => Ok(value),
            Ok((Err(message), closed)) => {
                if closed {
                    self.broken.set(true);
                }
                Err(pg_err(db, op, message))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.broken.set(true);
                Err(pg_err(
                    db,
                    op,
                    format!("no answer from the server within {REPLY_WAIT:?}"),
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.broken.set(true);
                Err(pg_err(db, op, "the connection thread has ended"))
            }
        }
    }
}

impl PgBackend {
    /// Connects once (so a wrong URL or an unreachable server is an error here) and creates
    /// the table if it is missing.
    pub(crate) fn open(url: &str) -> Result<PgBackend, StateError> {
        let (redacted, password) = redact(url);
        let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| {
            let mut message = chain(&e);
            if let Some(p) = password.as_deref().filter(|p| !p.is_empty()) {
                message = message.replace(p, "***");
            }
            pg_err(&format!("postgres {redacted}"), "parse the URL", message)
        })?;
        // Like libpq: a password not in the URL comes from PGPASSWORD (a Secret in deploy/).
        if config.get_password().is_none()
            && let Some(p) = std::env::var_os("PGPASSWORD").filter(|p| !p.is_empty())
        {
            config.password(p.to_string_lossy().as_bytes());
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config
            .keepalives(true)
            .tcp_user_timeout(REPLY_WAIT)
            .application_name("flotilla");
        let describe = describe(&config);
        let backend = PgBackend {
            shared: Arc::new(Shared {
                config,
                describe,
                idle: Mutex::new(Vec::new()),
                listener: Mutex::new(None),
                stop: Arc::new(AtomicBool::new(false)),
            }),
        };
        let conn = backend.take()?;
        let db = backend.shared.describe.clone();
        conn.call(&db, "create the schema", |c| {
            c.batch_execute(&format!(
                "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK}); {CREATE}; COMMIT"
            ))
        })?;
        backend.give_back(conn);
        Ok(backend)
    }

    fn take(&self) -> Result<Conn, StateError> {
        let pooled = self
            .shared
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => Conn::connect(&self.shared.config, &self.shared.describe),
        }
    }

    fn give_back(&self, conn: Conn) {
        if conn.broken.get() {
            return;
        }
        let mut idle = self
            .shared
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// A connection with `begin` run on it. A pooled connection found dead (the server
    /// restarted meanwhile) is replaced by a new one once.
    fn begin(&self, begin: &'static str) -> Result<Conn, StateError> {
        let db = &self.shared.describe;
        let conn = self.take()?;
        match conn.call(db, "begin", move |c| c.batch_execute(begin)) {
            Ok(()) => Ok(conn),
            Err(_) if conn.broken.get() => {
                let conn = Conn::connect(&self.shared.config, db)?;
                conn.call(db, "begin", move |c| c.batch_execute(begin))?;
                Ok(conn)
            }
            Err(e) => Err(e),
        }
    }

    fn run(&self, begin: &'static str, body: TxBody<'_>) -> Result<(), StateError> {
        let db = self.shared.describe.as_str();
        let conn = self.begin(begin)?;
        // A panic in `body` drops `conn` without giving it back: its thread ends and the
        // server rolls the transaction back.
        let result = body(&PgTx { conn: &conn, db });
        match result {
            Ok(()) => {
                conn.call(db, "commit", |c| c.batch_execute("COMMIT"))?;
                self.give_back(conn);
                Ok(())
            }
            Err(e) => {
                if conn
                    .call(db, "rollback", |c| c.batch_execute("ROLLBACK"))
                    .is_ok()
                {
                    self.give_back(conn);
                }
                Err(e)
            }
        }
    }
}

fn describe(config: &postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres {user}@{host}:{port}/{db}")
}

impl Backend for PgBackend {
    fn describe(&self) -> String {
        self.shared.describe.clone()
    }

    fn read(&self, body: TxBody<'_>) -> Result<(), StateError> {
        // `SELECT 1` takes the snapshot now, not at the body's first statement.
        self.run(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT 1",
            body,
        )
    }

    fn write(&self, body: TxBody<'_>) -> Result<(), StateError> {
        const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock(7380396435129003105)";
        const _: () = assert!(WRITE_LOCK == 7380396435129003105);
        self.run(BEGIN, body)
    }

    fn notify(&self, topic: &str, payload: &str) -> Result<(), StateError> {
        let db = self.shared.describe.as_str();
        let message = serde_json::json!({ "topic": topic, "payload": payload }).to_string();
        if message.len() > MAX_NOTIFY_BYTES {
            return Err(pg_err(
                db,
                "notify",
                format!(
                    "topic {topic:?}: the notification is {} bytes, PostgreSQL takes at most {MAX_NOTIFY_BYTES}",
                    message.len()
                ),
            ));
        }
        let conn = self.take()?;
        let sent = conn.call(db, "notify", move |c| {
            c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &message])
        });
        self.give_back(conn);
        sent.map(|_| ())
    }

    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notification> {
        let mut listener = self
            .shared
            .listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = listener.as_ref() {
            return sender.subscribe();
        }
        let sender = tokio::sync::broadcast::channel(NOTIFY_CAPACITY).0;
        let receiver = sender.subscribe();
        let (ready_tx, ready) = mpsc::channel();
        let config = self.shared.config.clone();
        let db = self.shared.describe.clone();
        let stop = self.shared.stop.clone();
        let thread_sender = sender.clone();
        let spawned = std::thread::Builder::new()
            .name("flotilla-state-listen".to_string())
            .spawn(move || listen(config, db, thread_sender, stop, ready_tx));
        match spawned {
            Ok(_) => {
                // Wait for the first LISTEN so that a notification sent after `subscribe`
                // returns is seen; on failure the thread keeps trying.
                if ready.recv_timeout(CONNECT_TIMEOUT).is_err() {
                    tracing::warn!(store = %self.shared.describe, "state store: notification listener not connected yet; notifications sent meanwhile are missed");
                }
            }
            Err(e) => {
                tracing::error!(store = %self.shared.describe, error = %e, "state store: cannot start the notification listener")
            }
        }
        *listener = Some(sender);
        receiver
    }
}

/// The listener thread: LISTEN on its own connection, forward each notification, reconnect
/// (backing off up to 5 s) when the connection drops, end when the store is dropped.
fn listen(
    config: postgres::Config,
    db: String,
    sender: tokio::sync::broadcast::Sender<Notification>,
    stop: Arc<AtomicBool>,
    ready: mpsc::Sender<()>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u32;
    while !stop.load(Ordering::SeqCst) {
        match config.connect(NoTls) {
            Ok(mut client) => match client.batch_execute(&format!("LISTEN {CHANNEL}")) {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(store = %db, "state store: notification listener reconnected");
                    }
                    failures = 0;
                    backoff = Duration::from_millis(100);
                    let _ = ready.send(());
                    forward(&mut client, &db, &sender, &stop);
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(store = %db, error = %chain(&e), "state store: LISTEN failed");
                }
            },
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(20) {
                    tracing::warn!(store = %db, error = %chain(&e), failures, "state store: notification listener cannot connect");
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Forwards notifications until the connection fails or the store is dropped.
fn forward(
    client: &mut Client,
    db: &str,
    sender: &tokio::sync::broadcast::Sender<Notification>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::SeqCst) {
        let next = client
            .notifications()
            .timeout_iter(Duration::from_millis(250))
            .next()
            .transpose();
        match next {
            Some(Ok(n)) if n.channel() == CHANNEL => {
                #[derive(serde::Deserialize)]
                struct Wire {
                    topic: String,
                    payload: String,
                }
                match serde_json::from_str::<Wire>(n.payload()) {
                    Ok(w) => {
                        let _ = sender.send(Notification {
                            topic: w.topic,
                            payload: w.payload,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(store = %db, error = %e, "state store: ignoring a notification that is not flotilla's")
                    }
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(store = %db, error = %chain(&e), "state store: notification listener lost its connection");
                return;
            }
            None => {
                if client.is_closed() {
                    tracing::warn!(store = %db, "state store: notification listener lost its connection");
                    return;
                }
            }
        }
    }
}

/// One transaction's operations, sent to its connection.
struct PgTx<'a> {
    conn: &'a Conn,
    db: &'a str,
}

impl PgTx<'_> {
    fn key(&self, table: &TableSpec, key: &[&str]) -> Result<(Vec<u8>, Vec<u8>), StateError> {
        match (table.arity(), key) {
            (1, [a]) => Ok((a.as_bytes().to_vec(), Vec::new())),
            (2, [a, b]) => Ok((a.as_bytes().to_vec(), b.as_bytes().to_vec())),
            _ => Err(pg_err(
                self.db,
                "key",
                format!("key {key:?} does not fit table {}", table.name),
            )),
        }
    }

    fn rows(
        &self,
        table: &TableSpec,
        rows: Vec<postgres::Row>,
    ) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
        let text = |bytes: Vec<u8>| {
            String::from_utf8(bytes).map_err(|e| {
                pg_err(
                    self.db,
                    "list",
                    format!("table {}: a key is not UTF-8: {e}", table.name),
                )
            })
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let k1 = text(row.get(0))?;
            let k2 = text(row.get(1))?;
            let key = if table.arity() == 2 {
                vec![k1, k2]
            } else {
                vec![k1]
            };
            out.push((key, row.get(2)));
        }
        Ok(out)
    }

    fn get_impl(
        &self,
        table: &TableSpec,
        key: &[&str],
        lock: bool,
    ) -> Result<Option<Vec<u8>>, StateError> {
        let (k1, k2) = self.key(table, key)?;
        let name = table.name;
        let sql = if lock {
            "SELECT v FROM flotilla_state WHERE tbl = $1 AND k1 = $2 AND k2 = $3 FOR UPDATE"
        } else {
            "SELECT v FROM flotilla_state WHERE tbl = $1 AND k1 = $2 AND k2 = $3"
        };
        self.conn.call(self.db, "read", move |c| {
            let row = c.query_opt(sql, &[&name, &k1, &k2])?;
            Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }
}

impl RawTx for PgTx<'_> {
    fn get(&self, table: &TableSpec, key: &[&str]) -> Result<Option<Vec<u8>>, StateError> {
        self.get_impl(table, key, false)
    }

    fn get_for_update(
        &self,
        table: &TableSpec,
        key: &[&str],
    ) -> Result<Option<Vec<u8>>, StateError> {
        self.get_impl(table, key, true)
    }

    fn scan(&self, table: &TableSpec, prefix: &[&str]) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
        let spec = *table;
        let name = table.name;
        let prefix: Vec<Vec<u8>> = prefix.iter().map(|s| s.as_bytes().to_vec()).collect();
        let rows = self
            .conn
            .call(self.db, "list", move |c| match prefix.as_slice() {
                [] => c.query(
                    "SELECT k1, k2, v FROM flotilla_state WHERE tbl = $1 ORDER BY k1, k2",
                    &[&name],
                ),
                [a] => c.query(
                    "SELECT k1, k2, v FROM flotilla_state WHERE tbl = $1 AND k1 = $2 ORDER BY k2",
                    &[&name, a],
                ),
                [a, b, ..] => c.query(
                    "SELECT k1, k2, v FROM flotilla_state WHERE tbl = $1 AND k1 = $2 AND k2 = $3",
                    &[&name, a, b],
                ),
            })?;
        self.rows(&spec, rows)
    }

    fn scan_after(
        &self,
        table: &TableSpec,
        after: &[&str],
        limit: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, StateError> {
        let (k1, k2) = self.key(table, after)?;
        let spec = *table;
        let name = table.name;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.conn.call(self.db, "list", move |c| {
            c.query(
                "SELECT k1, k2, v FROM flotilla_state WHERE tbl = $1 AND (k1, k2) > ($2, $3) \
                 ORDER BY k1, k2 LIMIT $4",
                &[&name, &k1, &k2, &limit],
            )
        })?;
        self.rows(&spec, rows)
    }

    fn put(&self, table: &TableSpec, key: &[&str], value: &[u8]) -> Result<(), StateError> {
        let (k1, k2) = self.key(table, key)?;
        let name = table.name;
        let value = value.to_vec();
        self.conn.call(self.db, "write", move |c| {
            c.execute(
                "INSERT INTO flotilla_state (tbl, k1, k2, v) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (tbl, k1, k2) DO UPDATE SET v = EXCLUDED.v",
                &[&name, &k1, &k2, &value],
            )
        })?;
        Ok(())
    }

    fn remove(&self, table: &TableSpec, key: &[&str]) -> Result<bool, StateError> {
        let (k1, k2) = self.key(table, key)?;
        let name = table.name;
        let n = self.conn.call(self.db, "remove", move |c| {
            c.execute(
                "DELETE FROM flotilla_state WHERE tbl = $1 AND k1 = $2 AND k2 = $3",
                &[&name, &k1, &k2],
            )
        })?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            redact("postgres://u:s3cret@h:5/db?x=1"),
            (
                "postgres://u:***@h:5/db?x=1".to_string(),
                Some("s3cret".to_string())
            )
        );
        assert_eq!(redact("postgres://u@h/db").0, "postgres://u@h/db");
        assert_eq!(redact("postgresql://h/db").1, None);
    }
}
