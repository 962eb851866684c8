//! Behaviour of the state store through its public API.
#![allow(clippy::unwrap_used)]

mod pg;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use flotilla_state::{Fence, Owner, StateError, Store};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rollout {
    revision: String,
    step: u32,
    paused: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Revision {
    current: String,
    last_good: Option<String>,
}

fn rollout(revision: &str, step: u32) -> Rollout {
    Rollout {
        revision: revision.to_string(),
        step,
        paused: false,
    }
}

fn rev(current: &str) -> Revision {
    Revision {
        current: current.to_string(),
        last_good: None,
    }
}

#[test]
fn open_creates_the_directory_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deep/er/state");
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.path(), dir.join("state.redb"));
    assert!(store.path().is_file());
    assert_eq!(store.read(|tx| tx.last_event_seq()).unwrap(), 0);
}

fn round_trips_every_table_and_survives_reopen(kind: Kind) {
    let db = Db::new(kind);
    {
        let store = db.open();
        store
            .write(|tx| {
                tx.put_rollout("web", &rollout("abc", 2))?;
                tx.put_rollout("api", &rollout("def", 0))?;
                tx.put_revision("web", "prod-eu", &rev("h1"))?;
                tx.put_revision("web", "prod-us", &rev("h2"))?;
                tx.put_manifests("h1", "kind: ConfigMap\n")?;
                tx.mark_failed("web", "bad", &"health check failed")?;
                // A write transaction reads its own writes.
                assert_eq!(tx.rollout::<Rollout>("web")?, Some(rollout("abc", 2)));
                Ok(())
            })
            .unwrap();
    }
    let store = db.open();
    store
        .read(|tx| {
            assert_eq!(tx.rollout::<Rollout>("web")?, Some(rollout("abc", 2)));
            assert_eq!(tx.rollout::<Rollout>("nope")?, None);
            assert_eq!(
                tx.rollouts::<Rollout>()?,
                vec![
                    ("api".to_string(), rollout("def", 0)),
                    ("web".to_string(), rollout("abc", 2)),
                ]
            );
            assert_eq!(tx.revision::<Revision>("web", "prod-eu")?, Some(rev("h1")));
            assert_eq!(tx.revision::<Revision>("web", "nope")?, None);
            assert_eq!(
                tx.revisions::<Revision>("web")?,
                vec![
                    ("prod-eu".to_string(), rev("h1")),
                    ("prod-us".to_string(), rev("h2")),
                ]
            );
            assert_eq!(tx.manifests("h1")?.as_deref(), Some("kind: ConfigMap\n"));
            assert_eq!(tx.manifests("h2")?, None);
            assert_eq!(
                tx.failed::<String>("web", "bad")?.as_deref(),
                Some("health check failed")
            );
            assert_eq!(tx.failed::<String>("web", "good")?, None);
            Ok(())
        })
        .unwrap();

    // Overwrite and remove.
    store
        .write(|tx| {
            tx.put_rollout("web", &rollout("abc", 3))?;
            assert!(tx.remove_rollout("api")?);
            assert!(!tx.remove_rollout("api")?);
            assert!(tx.remove_revision("web", "prod-us")?);
            Ok(())
        })
        .unwrap();
    store
        .read(|tx| {
            assert_eq!(
                tx.rollouts::<Rollout>()?,
                vec![("web".to_string(), rollout("abc", 3))]
            );
            assert_eq!(tx.revisions::<Revision>("web")?.len(), 1);
            Ok(())
        })
        .unwrap();
}

fn a_failed_closure_writes_nothing(kind: Kind) {
    let db = Db::new(kind);
    let store = db.open();
    store
        .write(|tx| tx.put_rollout("web", &rollout("old", 1)))
        .unwrap();

    let err = store
        .write(|tx| {
            tx.put_rollout("web", &rollout("new", 2))?;
            tx.put_rollout("api", &rollout("new", 0))?;
            tx.put_revision("web", "c1", &rev("h"))?;
            tx.put_manifests("h", "x")?;
            tx.mark_failed("web", "r", &"why")?;
            tx.append_event(&"e1")?;
            Err::<(), _>(tx.abort("changed my mind"))
        })
        .unwrap_err();
    assert!(matches!(err, StateError::Aborted { .. }), "{err}");
    assert!(err.to_string().contains("changed my mind"), "{err}");
    assert!(err.to_string().contains(db.marker()), "{err}");

    store
        .read(|tx| {
            assert_eq!(
                tx.rollouts::<Rollout>()?,
                vec![("web".to_string(), rollout("old", 1))]
            );
            assert!(tx.revisions::<Revision>("web")?.is_empty());
            assert_eq!(tx.manifests("h")?, None);
            assert_eq!(tx.failed::<String>("web", "r")?, None);
            assert_eq!(tx.last_event_seq()?, 0);
            assert!(tx.events::<String>(0, 10)?.is_empty());
            Ok(())
        })
        .unwrap();

    // The next append gets 1: the rolled-back number was never visible.
    let seq = store.write(|tx| tx.append_event(&"e1")).unwrap();
    assert_eq!(seq, 1);
}

fn a_panicking_closure_writes_nothing(kind: Kind) {
    let db = Db::new(kind);
    let store = db.open();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = store.write(|tx| -> Result<(), StateError> {
            tx.put_rollout("web", &rollout("new", 2))?;
            panic!("boom");
        });
    }));
    assert!(result.is_err());
    assert_eq!(store.read(|tx| tx.rollout::<Rollout>("web")).unwrap(), None);
    // The store is still usable.
    store
        .write(|tx| tx.put_rollout("web", &rollout("x", 0)))
        .unwrap();
}

fn a_rollouts_events_are_read_through_the_index(kind: Kind) {
    let db = Db::new(kind);
    let store = db.open();
    // Interleaved events of two rollouts (and one of none), as concurrent placements write.
    store
        .write(|tx| {
            tx.append_rollout_event("web@1", &"w1")?;
            tx.append_rollout_event("api@1", &"a1")?;
            tx.append_rollout_event("", &"none")?;
            tx.append_rollout_event("web@1", &"w2")?;
            // A rollout whose id another one's starts with.
            tx.append_rollout_event("web@10", &"x")?;
            Ok(())
        })
        .unwrap();
    let web: Vec<(u64, String)> = store.read(|tx| tx.rollout_events("web@1")).unwrap();
    assert_eq!(web, vec![(1, "w1".to_string()), (4, "w2".to_string())]);
    let api: Vec<(u64, String)> = store.read(|tx| tx.rollout_events("api@1")).unwrap();
    assert_eq!(api, vec![(2, "a1".to_string())]);
    let none: Vec<(u64, String)> = store.read(|tx| tx.rollout_events("db@1")).unwrap();
    assert!(none.is_empty());
    // The log itself holds every event, in order.
    let all: Vec<(u64, String)> = store.read(|tx| tx.events(0, 100)).unwrap();
    assert_eq!(all.len(), 5);
    // The index survives a reopen.
    drop(store);
    let store = db.open();
    let web: Vec<(u64, String)> = store.read(|tx| tx.rollout_events("web@1")).unwrap();
    assert_eq!(web.len(), 2);
}

fn events_are_numbered_from_one_and_continue_after_reopen(kind: Kind) {
    let db = Db::new(kind);
    {
        let store = db.open();
        let seqs = store
            .write(|tx| {
                Ok(vec![
                    tx.append_event(&"a")?,
                    tx.append_event(&"b")?,
                    tx.append_event(&"c")?,
                ])
            })
            .unwrap();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(store.write(|tx| tx.append_event(&"d")).unwrap(), 4);
    }
    let store = db.open();
    assert_eq!(store.read(|tx| tx.last_event_seq()).unwrap(), 4);
    assert_eq!(store.write(|tx| tx.append_event(&"e")).unwrap(), 5);
    store
        .read(|tx| {
            let all: Vec<(u64, String)> = tx.events(0, 100)?;
            let want: Vec<(u64, String)> = ["a", "b", "c", "d", "e"]
                .iter()
                .enumerate()
                .map(|(i, s)| (i as u64 + 1, s.to_string()))
                .collect();
            assert_eq!(all, want);
            assert_eq!(
                tx.events::<String>(2, 2)?,
                vec![(3, "c".to_string()), (4, "d".to_string())]
            );
            assert!(tx.events::<String>(5, 10)?.is_empty());
            assert!(tx.events::<String>(0, 0)?.is_empty());
            assert!(tx.events::<String>(u64::MAX, 10)?.is_empty());
            Ok(())
        })
        .unwrap();
}

fn a_placement_does_not_see_one_whose_name_it_prefixes(kind: Kind) {
    let db = Db::new(kind);
    let store = db.open();
    store
        .write(|tx| {
            tx.put_revision("a", "c1", &rev("a-c1"))?;
            tx.put_revision("a", "c2", &rev("a-c2"))?;
            tx.put_revision("ab", "c1", &rev("ab-c1"))?;
            tx.put_revision("a\0", "c1", &rev("a0-c1"))?;
            tx.put_revision("", "c1", &rev("empty-c1"))?;
            tx.mark_failed("a", "r1", &"a-r1")?;
            tx.mark_failed("ab", "r1", &"ab-r1")?;
            tx.mark_failed("ab", "r2", &"ab-r2")?;
            Ok(())
        })
        .unwrap();
    store
        .read(|tx| {
            let a: Vec<(String, Revision)> = tx.revisions("a")?;
            assert_eq!(
                a,
                vec![("c1".into(), rev("a-c1")), ("c2".into(), rev("a-c2"))]
            );
            assert_eq!(
                tx.revisions::<Revision>("ab")?,
                vec![("c1".into(), rev("ab-c1"))]
            );
            assert_eq!(
                tx.revisions::<Revision>("")?,
                vec![("c1".into(), rev("empty-c1"))]
            );
            assert!(tx.revisions::<Revision>("b")?.is_empty());
            assert_eq!(
                tx.failed_revisions::<String>("a")?,
                vec![("r1".into(), "a-r1".into())]
            );
            Ok(())
        })
        .unwrap();

    store.write(|tx| tx.clear_failed("a")).unwrap();
    store
        .read(|tx| {
            assert_eq!(tx.failed::<String>("a", "r1")?, None);
            assert_eq!(
                tx.failed_revisions::<String>("ab")?,
                vec![("r1".into(), "ab-r1".into()), ("r2".into(), "ab-r2".into())]
            );
            Ok(())
        })
        .unwrap();
    store.write(|tx| tx.clear_failed("ab")).unwrap();
    assert!(
        store
            .read(|tx| tx.failed_revisions::<String>("ab"))
            .unwrap()
            .is_empty()
    );
}

fn manifests_are_stored_once(kind: Kind) {
    let db = Db::new(kind);
    let store = db.open();
    store
        .write(|tx| {
            tx.put_manifests("h1", "first\n")?;
            tx.put_manifests("h1", "first\n")?;
            // Same hash, other text: the stored text stays (the hash is the caller's promise).
            tx.put_manifests("h1", "second\n")?;
            Ok(())
        })
        .unwrap();
    store.write(|tx| tx.put_manifests("h1", "third\n")).unwrap();
    store
        .read(|tx| {
            assert_eq!(tx.manifests("h1")?.as_deref(), Some("first\n"));
            assert_eq!(tx.manifest_hashes()?, vec!["h1".to_string()]);
            Ok(())
        })
        .unwrap();
}

/// A test sealer: XOR with a key byte behind a tag (the store must not care how it seals).
struct Xor(u8);

impl flotilla_state::Sealer for Xor {
    fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = vec![b'X', self.0];
        out.extend(plain.iter().map(|b| b ^ self.0));
        Ok(out)
    }
    fn unseal(&self, sealed: &[u8]) -> Result<Vec<u8>, String> {
        match sealed {
            [b'X', k, rest @ ..] if *k == self.0 => Ok(rest.iter().map(|b| b ^ self.0).collect()),
            _ => Err("not sealed with this key".into()),
        }
    }
}

/// Manifests holding SOPS-decrypted objects are sealed at rest and read back in the clear
/// through a sealed view; without the sealer they can be neither stored nor read; other
/// manifests are stored as they are.
fn sensitive_manifests_are_sealed_at_rest(kind: Kind) {
    let db = Db::new(kind);
    let plain = db.open();
    let sealed = plain.sealed(std::sync::Arc::new(Xor(0x5a)));
    let secret = "[{\"kind\":\"Secret\",\"metadata\":{\"annotations\":{\"flotilla.dev/sops\":\"decrypted\"}},\"stringData\":{\"password\":\"hunter2\"}}]";
    let e = plain
        .write(|tx| tx.put_manifests("s1", secret))
        .expect_err("no sealer, no storing");
    assert!(e.to_string().contains("SOPS age key"), "{e}");
    sealed
        .write(|tx| {
            tx.put_manifests("s1", secret)?;
            tx.put_manifests("s1", secret)?;
            tx.put_manifests("p1", "[{\"kind\":\"ConfigMap\"}]")
        })
        .unwrap();
    sealed
        .read(|tx| {
            assert_eq!(tx.manifests("s1")?.as_deref(), Some(secret));
            Ok(())
        })
        .unwrap();
    let e = plain.read(|tx| tx.manifests("s1")).expect_err("sealed");
    assert!(e.to_string().contains("SOPS age key"), "{e}");
    assert_eq!(
        plain.read(|tx| tx.manifests("p1")).unwrap().as_deref(),
        Some("[{\"kind\":\"ConfigMap\"}]")
    );
    let wrong = plain.sealed(std::sync::Arc::new(Xor(0x11)));
    let e = wrong.read(|tx| tx.manifests("s1")).expect_err("wrong key");
    assert!(e.to_string().contains("cannot unseal"), "{e}");
    assert!(!e.to_string().contains("hunter2"), "{e}");
    drop((plain, sealed, wrong));
    if let Some(file) = db.file() {
        let bytes = std::fs::read(file).unwrap();
        assert!(
            !bytes.windows(7).any(|w| w == b"hunter2"),
            "the plaintext is not in the store file"
        );
    }
}

fn retain_manifests_deletes_the_unreferenced(kind: Kind) {
    let db = Db::new(kind);
    let store = db.open();
    store
        .write(|tx| {
            for h in ["h1", "h2", "h3", "h4"] {
                tx.put_manifests(h, &format!("text of {h}"))?;
            }
            Ok(())
        })
        .unwrap();
    let keep: BTreeSet<String> = ["h2", "h4", "not-stored"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(store.write(|tx| tx.retain_manifests(&keep)).unwrap(), 2);
    assert_eq!(store.write(|tx| tx.retain_manifests(&keep)).unwrap(), 0);
    store
        .read(|tx| {
            assert_eq!(tx.manifest_hashes()?, vec!["h2", "h4"]);
            assert_eq!(tx.manifests("h2")?.as_deref(), Some("text of h2"));
            assert_eq!(tx.manifests("h1")?, None);
            Ok(())
        })
        .unwrap();
    assert_eq!(
        store
            .write(|tx| tx.retain_manifests(&BTreeSet::new()))
            .unwrap(),
        2
    );
    assert!(store.read(|tx| tx.manifest_hashes()).unwrap().is_empty());
}

fn a_read_snapshot_does_not_see_later_commits(kind: Kind) {
    let db = Db::new(kind);
    let store = db.open();
    store
        .write(|tx| tx.put_rollout("web", &rollout("v1", 0)))
        .unwrap();
    store
        .read(|tx| {
            store
                .write(|w| w.put_rollout("web", &rollout("v2", 0)))
                .unwrap();
            assert_eq!(tx.rollout::<Rollout>("web")?, Some(rollout("v1", 0)));
            Ok(())
        })
        .unwrap();
    assert_eq!(
        store.read(|tx| tx.rollout::<Rollout>("web")).unwrap(),
        Some(rollout("v2", 0))
    );
}

/// Writes raw bytes into a table of a closed store, behind the crate's back.
fn poke_raw(dir: &Path, f: impl FnOnce(&redb::WriteTransaction)) {
    let db = redb::Database::create(dir.join("state.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    f(&tx);
    tx.commit().unwrap();
}

#[test]
fn corrupt_json_is_an_error_naming_table_and_key() {
    const ROLLOUTS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("rollouts");
    const REVISIONS: redb::TableDefinition<(&str, &str), &[u8]> =
        redb::TableDefinition::new("revisions");
    const EVENTS: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("events");
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::open(tmp.path()).unwrap());
    poke_raw(tmp.path(), |tx| {
        tx.open_table(ROLLOUTS)
            .unwrap()
            .insert("web", b"{not json".as_slice())
            .unwrap();
        tx.open_table(REVISIONS)
            .unwrap()
            .insert(("web", "c1"), b"\xff\xfe".as_slice())
            .unwrap();
        tx.open_table(EVENTS)
            .unwrap()
            .insert(1, b"[1,".as_slice())
            .unwrap();
    });
    let store = Store::open(tmp.path()).unwrap();

    let err = store.read(|tx| tx.rollout::<Rollout>("web")).unwrap_err();
    match &err {
        StateError::Corrupt { table, key, .. } => {
            assert_eq!(*table, "rollouts");
            assert_eq!(key, "\"web\"");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("state.redb") && msg.contains("rollouts") && msg.contains("web"),
        "{msg}"
    );
    assert!(matches!(
        store.read(|tx| tx.rollouts::<Rollout>()).unwrap_err(),
        StateError::Corrupt { .. }
    ));

    // A value of the wrong shape is corrupt too.
    store
        .write(|tx| tx.put_rollout("api", &"just a string"))
        .unwrap();
    assert!(matches!(
        store.read(|tx| tx.rollout::<Rollout>("api")).unwrap_err(),
        StateError::Corrupt {
            table: "rollouts",
            ..
        }
    ));

    let err = store
        .read(|tx| tx.revisions::<Revision>("web"))
        .unwrap_err();
    assert!(
        matches!(&err, StateError::Corrupt { table: "revisions", key, .. } if key.contains("web") && key.contains("c1")),
        "{err:?}"
    );
    let err = store.read(|tx| tx.events::<String>(0, 10)).unwrap_err();
    assert!(
        matches!(&err, StateError::Corrupt { table: "events", key, .. } if key == "1"),
        "{err:?}"
    );
}

fn an_unencodable_value_is_an_error_and_writes_nothing(kind: Kind) {
    let db = Db::new(kind);
    let store = db.open();
    // JSON object keys must be strings.
    let bad: BTreeMap<Vec<u8>, u8> = [(vec![1u8], 1u8)].into_iter().collect();
    let err = store
        .write(|tx| {
            tx.put_rollout("ok", &1)?;
            tx.put_rollout("web", &bad)
        })
        .unwrap_err();
    assert!(
        matches!(
            &err,
            StateError::Encode {
                table: "rollouts",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.read(|tx| tx.rollout::<u32>("ok")).unwrap(), None);
}

#[test]
fn a_newer_schema_version_is_refused_and_left_alone() {
    const META: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
    let tmp = tempfile::tempdir().unwrap();
    drop(Store::open(tmp.path()).unwrap());
    poke_raw(tmp.path(), |tx| {
        tx.open_table(META)
            .unwrap()
            .insert("schema_version", 99)
            .unwrap();
    });
    let err = Store::open(tmp.path()).unwrap_err();
    assert!(
        matches!(
            err,
            StateError::Schema {
                found: 99,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("newer") && msg.contains("state.redb"), "{msg}");

    let db = redb::Database::create(tmp.path().join("state.redb")).unwrap();
    let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
    let meta = tx.open_table(META).unwrap();
    assert_eq!(meta.get("schema_version").unwrap().unwrap().value(), 99);
}

#[test]
fn workflow_runs_round_trip_per_workflow_and_a_store_without_the_tables_reads_empty() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A store created before the workflow tables existed: drop them.
    {
        let store = Store::open(dir.path()).expect("open");
        drop(store);
        poke_raw(dir.path(), |tx| {
            tx.delete_table(redb::TableDefinition::<&str, &[u8]>::new("workflows"))
                .expect("drop workflows");
            tx.delete_table(redb::TableDefinition::<(&str, &str), &[u8]>::new(
                "workflow_runs",
            ))
            .expect("drop runs");
        });
    }
    let store = Store::open(dir.path()).expect("reopen");
    let none: Vec<(String, String)> = store.read(|tx| tx.workflow_runs("a")).expect("read");
    assert!(none.is_empty());
    let state: Option<String> = store.read(|tx| tx.workflow_state("a")).expect("read");
    assert!(state.is_none());
    store
        .write(|tx| {
            tx.put_workflow_state("a", "10:00")?;
            tx.put_workflow_run("a", "a-1/x", "pending")?;
            tx.put_workflow_run("a", "a-2/x", "running")?;
            tx.put_workflow_run("ab", "ab-1/x", "other")?;
            Ok(())
        })
        .expect("write");
    drop(store);
    let store = Store::open(dir.path()).expect("reopen");
    let runs: Vec<(String, String)> = store.read(|tx| tx.workflow_runs("a")).expect("read");
    assert_eq!(
        runs,
        vec![
            ("a-1/x".to_string(), "pending".to_string()),
            ("a-2/x".to_string(), "running".to_string())
        ]
    );
    let state: Option<String> = store.read(|tx| tx.workflow_state("a")).expect("read");
    assert_eq!(state.as_deref(), Some("10:00"));
    assert!(
        store
            .write(|tx| tx.remove_workflow_run("a", "a-1/x"))
            .expect("rm")
    );
    let one: Option<String> = store
        .read(|tx| tx.workflow_run("a", "a-1/x"))
        .expect("read");
    assert!(one.is_none());
}

/// Which backend a case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Redb,
    Pg,
}

/// A fresh, empty store location: a temp directory, or a new database on the test binary's
/// PostgreSQL server.
struct Db {
    kind: Kind,
    _dir: Option<tempfile::TempDir>,
    url: String,
    /// Text every error of this store contains.
    marker: String,
}

impl Db {
    fn new(kind: Kind) -> Db {
        match kind {
            Kind::Redb => {
                let dir = tempfile::tempdir().unwrap();
                let url = dir.path().to_str().unwrap().to_string();
                Db {
                    kind,
                    _dir: Some(dir),
                    url,
                    marker: "state.redb".to_string(),
                }
            }
            Kind::Pg => {
                let url = pg::fresh_database();
                // postgres://flotilla@127.0.0.1:PORT/NAME → postgres flotilla@127.0.0.1:PORT/NAME
                let marker = format!("postgres {}", url.trim_start_matches("postgres://"));
                Db {
                    kind,
                    _dir: None,
                    url,
                    marker,
                }
            }
        }
    }

    fn marker(&self) -> &str {
        &self.marker
    }

    /// The redb file (PostgreSQL keeps its data in the server's own directory).
    fn file(&self) -> Option<std::path::PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("state.redb"))
    }

    /// Opens (or reopens) the store.
    fn open(&self) -> Store {
        Store::open_url(&self.url).unwrap()
    }

    /// Another handle on the same store: a clone for redb (a second open is refused by the
    /// lock), a second connection pool for PostgreSQL (as another replica would have).
    fn other_handle(&self, first: &Store) -> Store {
        match self.kind {
            Kind::Redb => first.clone(),
            Kind::Pg => self.open(),
        }
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod redb_backend {
            $( #[test] fn $name() { super::$name(super::Kind::Redb) } )*
        }
        mod postgres_backend {
            $( #[test] fn $name() { super::$name(super::Kind::Pg) } )*
        }
    };
}

on_both_backends!(
    round_trips_every_table_and_survives_reopen,
    a_failed_closure_writes_nothing,
    a_panicking_closure_writes_nothing,
    events_are_numbered_from_one_and_continue_after_reopen,
    a_rollouts_events_are_read_through_the_index,
    a_placement_does_not_see_one_whose_name_it_prefixes,
    manifests_are_stored_once,
    sensitive_manifests_are_sealed_at_rest,
    retain_manifests_deletes_the_unreferenced,
    a_read_snapshot_does_not_see_later_commits,
    an_unencodable_value_is_an_error_and_writes_nothing,
    describe_names_the_store,
    a_fenced_view_writes_only_while_its_holder_owns_the_unit,
    work_tables_round_trip_per_cluster,
    notifications_reach_every_subscriber,
    works_inside_a_current_thread_runtime,
    works_inside_a_multi_thread_runtime,
);

fn describe_names_the_store(kind: Kind) {
    let db = Db::new(kind);
    let store = db.open();
    let d = store.describe();
    match kind {
        Kind::Redb => assert!(d.starts_with("redb ") && d.ends_with("state.redb"), "{d}"),
        Kind::Pg => assert_eq!(d, db.marker()),
    }
    assert!(format!("{store:?}").contains(&d));
}

const UNIT: &str = "placement/web";

fn a_fenced_view_writes_only_while_its_holder_owns_the_unit(kind: Kind) {
    let db = Db::new(kind);
    let store = db.open();
    assert_eq!(store.read(|tx| tx.owner(UNIT)).unwrap(), None);

    // Never claimed: a fenced write is refused.
    let never = store.fenced(Fence {
        unit: UNIT.into(),
        holder: "r1".into(),
        epoch: 1,
    });
    let err = never.write(|tx| tx.put_rollout("web", &1)).unwrap_err();
    assert!(
        matches!(&err, StateError::Fenced { found, .. } if *found == Owner::default()),
        "{err:?}"
    );

    assert_eq!(store.write(|tx| tx.claim(UNIT, "r1")).unwrap(), 1);
    let r1 = store.fenced(Fence {
        unit: UNIT.into(),
        holder: "r1".into(),
        epoch: 1,
    });
    assert_eq!(r1.fence().map(|f| f.epoch), Some(1));
    assert_eq!(store.fence(), None);
    r1.write(|tx| tx.put_rollout("web", &rollout("v1", 0)))
        .unwrap();

    // r2 takes over; r1, paused meanwhile, comes back and tries to write.
    let other = db.other_handle(&store);
    assert_eq!(other.write(|tx| tx.claim(UNIT, "r2")).unwrap(), 2);
    let err = r1
        .write(|tx| {
            tx.put_rollout("web", &rollout("stale", 9))?;
            tx.append_event(&"stale")
        })
        .unwrap_err();
    match &err {
        StateError::Fenced {
            unit,
            holder,
            epoch,
            found,
            ..
        } => {
            assert_eq!((unit.as_str(), holder.as_str(), *epoch), (UNIT, "r1", 1));
            assert_eq!(
                found,
                &Owner {
                    holder: "r2".into(),
                    epoch: 2
                }
            );
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("lost ownership of unit placement/web")
            && msg.contains("now held by r2 at epoch 2")
            && msg.contains(db.marker()),
        "{msg}"
    );
    // Nothing of the refused transaction was written; reads through the old view still work.
    assert_eq!(
        r1.read(|tx| tx.rollout::<Rollout>("web")).unwrap(),
        Some(rollout("v1", 0))
    );
    assert_eq!(store.read(|tx| tx.last_event_seq()).unwrap(), 0);

    let r2 = other.fenced(Fence {
        unit: UNIT.into(),
        holder: "r2".into(),
        epoch: 2,
    });
    r2.write(|tx| tx.put_rollout("web", &rollout("v2", 0)))
        .unwrap();

    // Only the holder releases; a released unit fences everyone until the next claim.
    assert!(!store.write(|tx| tx.release(UNIT, "r1")).unwrap());
    assert!(
        !store
            .write(|tx| tx.release("placement/none", "r2"))
            .unwrap()
    );
    assert!(store.write(|tx| tx.release(UNIT, "r2")).unwrap());
    assert_eq!(
        store.read(|tx| tx.owner(UNIT)).unwrap(),
        Some(Owner {
            holder: String::new(),
            epoch: 2
        })
    );
    let err = r2.write(|tx| tx.put_rollout("web", &0)).unwrap_err();
    assert!(err.to_string().contains("now released at epoch 2"), "{err}");
    assert_eq!(store.write(|tx| tx.claim(UNIT, "r1")).unwrap(), 3);
    assert_eq!(store.write(|tx| tx.claim("cluster/a", "r2")).unwrap(), 1);
    assert_eq!(
        store.read(|tx| tx.owners()).unwrap(),
        vec![
            (
                "cluster/a".to_string(),
                Owner {
                    holder: "r2".into(),
                    epoch: 1
                }
            ),
            (
                UNIT.to_string(),
                Owner {
                    holder: "r1".into(),
                    epoch: 3
                }
            ),
        ]
    );
    assert_eq!(
        store.read(|tx| tx.rollout::<Rollout>("web")).unwrap(),
        Some(rollout("v2", 0))
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Work {
    revision: String,
}

fn work(revision: &str) -> Work {
    Work {
        revision: revision.into(),
    }
}

fn work_tables_round_trip_per_cluster(kind: Kind) {
    let db = Db::new(kind);
    {
        let store = db.open();
        store
            .write(|tx| {
                tx.put_work("c1", "web", &work("a"))?;
                tx.put_work("c1", "api", &work("b"))?;
                tx.put_work("c10", "web", &work("c"))?;
                tx.put_work_result("c1", "web", &"applied")?;
                tx.put_work_result("c1x", "web", &"other")?;
                // Read own writes.
                assert_eq!(tx.work::<Work>("c1", "web")?, Some(work("a")));
                Ok(())
            })
            .unwrap();
    }
    let store = db.open();
    store
        .read(|tx| {
            assert_eq!(
                tx.works::<Work>("c1")?,
                vec![("api".into(), work("b")), ("web".into(), work("a"))]
            );
            assert_eq!(tx.works::<Work>("c10")?, vec![("web".into(), work("c"))]);
            assert!(tx.works::<Work>("c")?.is_empty());
            assert_eq!(tx.work::<Work>("c10", "web")?, Some(work("c")));
            assert_eq!(tx.work::<Work>("c10", "api")?, None);
            assert_eq!(
                tx.work_results::<String>("c1")?,
                vec![("web".into(), "applied".into())]
            );
            assert_eq!(
                tx.work_result::<String>("c1x", "web")?.as_deref(),
                Some("other")
            );
            Ok(())
        })
        .unwrap();
    store
        .write(|tx| {
            assert!(tx.remove_work("c1", "web")?);
            assert!(!tx.remove_work("c1", "web")?);
            assert!(tx.remove_work_result("c1", "web")?);
            Ok(())
        })
        .unwrap();
    store
        .read(|tx| {
            assert_eq!(tx.works::<Work>("c1")?, vec![("api".into(), work("b"))]);
            assert!(tx.work_results::<String>("c1")?.is_empty());
            Ok(())
        })
        .unwrap();
}

/// Waits (bounded) for the next notification.
async fn next_note(
    rx: &mut tokio::sync::broadcast::Receiver<flotilla_state::Notification>,
) -> (String, String) {
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("no notification within 10 s")
        .expect("notification channel");
    (n.topic, n.payload)
}

fn notifications_reach_every_subscriber(kind: Kind) {
    let db = Db::new(kind);
    let a = db.open();
    let b = db.other_handle(&a);
    let mut at_b = b.subscribe();
    let mut at_a = a.subscribe();
    a.notify("webhook", "refs/heads/main").unwrap();
    b.notify("webhook", "second").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async {
        for rx in [&mut at_a, &mut at_b] {
            assert_eq!(
                next_note(rx).await,
                ("webhook".into(), "refs/heads/main".into())
            );
            assert_eq!(next_note(rx).await, ("webhook".into(), "second".into()));
        }
    });
}

/// Opens, writes, reads and notifies from a task: the PostgreSQL client must not run on the
/// runtime's threads (the sync client panics there).
async fn exercise_in_runtime(db: &Db) {
    let store = db.open();
    let mut rx = store.subscribe();
    store
        .write(|tx| {
            tx.put_rollout("web", &rollout("rt", 1))?;
            tx.append_event(&"in a runtime")
        })
        .unwrap();
    assert_eq!(
        store.read(|tx| tx.rollout::<Rollout>("web")).unwrap(),
        Some(rollout("rt", 1))
    );
    store.notify("t", "p").unwrap();
    assert_eq!(next_note(&mut rx).await, ("t".into(), "p".into()));
    let clone = store.clone();
    let seq = tokio::task::spawn_blocking(move || clone.write(|tx| tx.append_event(&"blocking")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq, 2);
}

fn works_inside_a_current_thread_runtime(kind: Kind) {
    let db = Db::new(kind);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(exercise_in_runtime(&db));
}

fn works_inside_a_multi_thread_runtime(kind: Kind) {
    let db = std::sync::Arc::new(Db::new(kind));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        tokio::spawn(async move { exercise_in_runtime(&db).await })
            .await
            .unwrap();
    });
}

/// `#[tokio::test]` itself (a current-thread runtime), as the daemon's tests use it.
#[tokio::test]
async fn postgres_works_under_tokio_test() {
    let db = Db::new(Kind::Pg);
    exercise_in_runtime(&db).await;
}

#[test]
fn a_store_can_be_shared_between_threads_and_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Store>();
    let db = Db::new(Kind::Redb);
    let store = db.open();
    let clone = store.clone();
    std::thread::spawn(move || clone.write(|tx| tx.put_rollout("web", &7)).unwrap())
        .join()
        .unwrap();
    assert_eq!(store.read(|tx| tx.rollout::<u32>("web")).unwrap(), Some(7));
}

#[test]
fn redb_clones_share_one_handle_and_the_lock() {
    let db = Db::new(Kind::Redb);
    let store = db.open();
    let clone = store.clone();
    let err = Store::open_url(&db.url).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
    clone.write(|tx| tx.put_rollout("web", &1)).unwrap();
    drop(store);
    assert_eq!(clone.read(|tx| tx.rollout::<u32>("web")).unwrap(), Some(1));
    drop(clone);
    drop(db.open());
}

#[test]
fn postgres_two_stores_appending_concurrently_never_share_a_number() {
    let db = Db::new(Kind::Pg);
    let stores = [db.open(), db.open()];
    let mut threads = Vec::new();
    for t in 0..4 {
        let store = stores[t % 2].clone();
        threads.push(std::thread::spawn(move || {
            (0..25)
                .map(|i| {
                    store
                        .write(|tx| tx.append_event(&format!("t{t}-{i}")))
                        .unwrap()
                })
                .collect::<Vec<u64>>()
        }));
    }
    let mut seqs: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=100).collect::<Vec<u64>>());
    let events: Vec<(u64, String)> = stores[1].read(|tx| tx.events(0, 1000)).unwrap();
    assert_eq!(events.len(), 100);
    let distinct: BTreeSet<&String> = events.iter().map(|(_, e)| e).collect();
    assert_eq!(distinct.len(), 100, "an event was lost or duplicated");
}

#[test]
fn postgres_corrupt_json_is_an_error_naming_table_and_key() {
    let db = Db::new(Kind::Pg);
    let store = db.open();
    store
        .write(|tx| {
            tx.put_rollout("web", &rollout("a", 1))?;
            tx.put_revision("web", "c1", &rev("h"))?;
            tx.append_event(&"e")
        })
        .unwrap();
    pg::Pg::execute(
        &db.url,
        "UPDATE flotilla_state SET v = '\\x7b6e6f74' WHERE tbl IN ('rollouts', 'revisions', 'events')",
    );
    let err = store.read(|tx| tx.rollout::<Rollout>("web")).unwrap_err();
    assert!(
        matches!(&err, StateError::Corrupt { table: "rollouts", key, .. } if key == "\"web\""),
        "{err:?}"
    );
    assert!(err.to_string().contains(db.marker()), "{err}");
    let err = store
        .read(|tx| tx.revisions::<Revision>("web"))
        .unwrap_err();
    assert!(
        matches!(&err, StateError::Corrupt { table: "revisions", key, .. } if key.contains("web") && key.contains("c1")),
        "{err:?}"
    );
    let err = store.read(|tx| tx.events::<String>(0, 10)).unwrap_err();
    assert!(
        matches!(&err, StateError::Corrupt { table: "events", key, .. } if key == "1"),
        "{err:?}"
    );
}

#[test]
fn postgres_another_schema_version_is_refused_and_left_alone() {
    let db = Db::new(Kind::Pg);
    drop(db.open());
    pg::Pg::execute(
        &db.url,
        "UPDATE flotilla_state SET v = '99'::bytea WHERE tbl = 'meta' AND k1 = 'schema_version'",
    );
    for _ in 0..2 {
        let err = Store::open_url(&db.url).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::Schema {
                    found: 99,
                    supported: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("newer"), "{err}");
    }
}

#[test]
fn postgres_stopped_mid_use_is_a_clear_error_and_the_store_recovers_after_restart() {
    let mut server = pg::start_postgres();
    // The password is ignored (trust authentication) but must never show.
    let url = server
        .url
        .replace("postgres://flotilla@", "postgres://flotilla:hunter2@");
    let store = Store::open_url(&url).unwrap();
    assert!(!store.describe().contains("hunter2"));
    let mut notes = store.subscribe();
    store
        .write(|tx| tx.put_rollout("web", &rollout("before", 1)))
        .unwrap();

    server.stop();
    let started = std::time::Instant::now();
    for _ in 0..3 {
        let err = store
            .write(|tx| tx.put_rollout("web", &rollout("during", 2)))
            .unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StateError::Postgres { .. }), "{err:?}");
        assert!(
            msg.contains(&format!(
                "postgres flotilla@127.0.0.1:{}/postgres",
                server.port
            )),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        let err = store.read(|tx| tx.rollout::<Rollout>("web")).unwrap_err();
        assert!(matches!(err, StateError::Postgres { .. }), "{err:?}");
    }
    let err = Store::open_url(&url).unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().contains("connect"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "errors took {:?}",
        started.elapsed()
    );

    server.start();
    store
        .write(|tx| tx.put_rollout("api", &rollout("after", 3)))
        .unwrap();
    assert_eq!(
        store.read(|tx| tx.rollout::<Rollout>("web")).unwrap(),
        Some(rollout("before", 1))
    );
    assert_eq!(
        store.read(|tx| tx.rollout::<Rollout>("api")).unwrap(),
        Some(rollout("after", 3))
    );
    // The listener reconnects too (it retries every few seconds).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let got = rt.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            store.notify("after", "restart").unwrap();
            match tokio::time::timeout(std::time::Duration::from_millis(500), notes.recv()).await {
                Ok(Ok(n)) => return Some(n),
                _ if std::time::Instant::now() > deadline => return None,
                _ => {}
            }
        }
    });
    assert_eq!(got.map(|n| n.topic).as_deref(), Some("after"));
}
