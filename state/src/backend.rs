//! The raw storage interface under [`crate::Store`]: named tables with string-tuple keys and
//! byte values, read and written inside transactions. The typed methods of
//! [`crate::ReadTx`]/[`crate::WriteTx`] are written once over it; `redb.rs` and `postgres.rs`
//! implement it.

use crate::StateError;

/// The shape of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// One string.
    Str,
    /// Two strings, ordered by the first then the second (so one first part is one prefix).
    Pair,
    /// A sequence number, written as 20 decimal digits (zero-padded, so text order is number
    /// order).
    Seq,
}

/// The shape of a value, as the redb backend stores it (PostgreSQL stores bytes throughout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Opaque bytes (JSON).
    Bytes,
    /// UTF-8 text.
    Text,
    /// An unsigned number, written as decimal ASCII.
    U64,
}

/// One table: its name, key shape and value shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    pub name: &'static str,
    pub key: KeyKind,
    pub value: ValueKind,
}

impl TableSpec {
    /// How many parts a key of this table has.
    pub fn arity(&self) -> usize {
        match self.key {
            KeyKind::Pair => 2,
            KeyKind::Str | KeyKind::Seq => 1,
        }
    }
}

/// A key as stored: one part per key component.
pub type Key = Vec<String>;

/// The operations of one transaction. A table never written reads as empty. Within a write
/// transaction, reads see the transaction's own writes.
pub trait RawTx {
    /// The value under `key`.
    fn get(&self, table: &TableSpec, key: &[&str]) -> Result<Option<Vec<u8>>, StateError>;
    /// `get`, also locking the row against concurrent writers until the transaction ends
    /// (PostgreSQL `FOR UPDATE`). Backends whose writers are serialised anyway just read.
    fn get_for_update(
        &self,
        table: &TableSpec,
        key: &[&str],
    ) -> Result<Option<Vec<u8>>, StateError> {
        self.get(table, key)
    }
    /// Every row whose key starts with `prefix` (empty: the whole table), in key order.
    fn scan(&self, table: &TableSpec, prefix: &[&str]) -> Result<Vec<(Key, Vec<u8>)>, StateError>;
    /// Up to `limit` rows with a key greater than `after`, in key order.
    fn scan_after(
        &self,
        table: &TableSpec,
        after: &[&str],
        limit: usize,
    ) -> Result<Vec<(Key, Vec<u8>)>, StateError>;
    /// Sets the value under `key`.
    fn put(&self, table: &TableSpec, key: &[&str], value: &[u8]) -> Result<(), StateError>;
    /// Removes `key`; returns whether it was there.
    fn remove(&self, table: &TableSpec, key: &[&str]) -> Result<bool, StateError>;
}

/// The body of a transaction, run by a backend.
pub type TxBody<'a> = &'a mut dyn FnMut(&dyn RawTx) -> Result<(), StateError>;

/// A notification sent with [`crate::Store::notify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub topic: String,
    pub payload: String,
}

/// A storage backend. `write` commits when the body returns `Ok` (durably, before returning)
/// and rolls back when it returns `Err` or panics; `read` runs the body on a consistent
/// snapshot.
pub trait Backend: Send + Sync {
    /// For logs and errors: the kind and location, never a password.
    fn describe(&self) -> String;
    fn read(&self, body: TxBody<'_>) -> Result<(), StateError>;
    fn write(&self, body: TxBody<'_>) -> Result<(), StateError>;
    /// Sends a notification to every subscriber of every store handle on this backend.
    fn notify(&self, topic: &str, payload: &str) -> Result<(), StateError>;
    /// Notifications sent from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Notification>;
}

/// How many notifications a slow subscriber may fall behind before it sees `Lagged`.
pub const NOTIFY_CAPACITY: usize = 256;
