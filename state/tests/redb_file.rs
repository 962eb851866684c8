//! The redb file itself: a file that is not a store, one holder at a time (in this process
//! and another), damage is an error and never a panic, and shared stores taking turns on
//! one file (`Store::open_shared`). The store's behaviour on both backends is in `store.rs`.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use flotilla_state::{StateError, Store};

#[test]
fn a_file_that_is_not_a_store_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("state.redb"),
        b"this is not a redb file at all",
    )
    .unwrap();
    let err = Store::open(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("state.redb"), "{err}");
}

#[test]
fn a_second_store_in_the_same_process_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path()).unwrap();
    let err = Store::open(tmp.path()).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("already open"), "{err}");
    drop(store);
    Store::open(tmp.path()).unwrap();
}

const HOLDER_ENV: &str = "FLOTILLA_STATE_TEST_HOLD_DIR";

/// Not a test on its own: when re-executed with `HOLDER_ENV` set, opens that store, says so
/// on stdout and holds it until killed.
#[test]
fn lock_holder_child() {
    let Some(dir) = std::env::var_os(HOLDER_ENV) else {
        return;
    };
    let _store = Store::open(Path::new(&dir)).unwrap();
    println!("HOLDING");
    std::thread::sleep(std::time::Duration::from_secs(60));
}

#[test]
fn a_second_process_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "lock_holder_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_ENV, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut holding = false;
    for line in BufReader::new(stdout).lines() {
        if line.unwrap().contains("HOLDING") {
            holding = true;
            break;
        }
    }
    assert!(holding, "the child never opened the store");

    let started = std::time::Instant::now();
    let err = Store::open(tmp.path()).unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("already open"), "{err}");

    // Killed, the child's lock is gone.
    Store::open(tmp.path()).unwrap();
}

#[test]
fn a_damaged_file_is_an_error_or_readable_never_a_panic() {
    // Flip one byte at a spread of fixed offsets of a small store, one copy per offset.
    let tmp = tempfile::tempdir().unwrap();
    let pristine = {
        let store = Store::open(tmp.path()).unwrap();
        store
            .write(|tx| {
                for i in 0..50 {
                    tx.put_rollout(&format!("p{i}"), &"x".repeat(300))?;
                }
                Ok(())
            })
            .unwrap();
        let path = store.path().to_path_buf();
        drop(store);
        std::fs::read(path).unwrap()
    };
    let mut detected = 0;
    for (i, offset) in (0..pristine.len()).step_by(1999).enumerate() {
        let dir = tmp.path().join(format!("copy{i}"));
        std::fs::create_dir(&dir).unwrap();
        let mut bytes = pristine.clone();
        bytes[offset] ^= 0x55;
        std::fs::write(dir.join("state.redb"), &bytes).unwrap();
        let outcome = std::panic::catch_unwind(|| {
            Store::open(&dir).and_then(|s| s.read(|tx| tx.rollouts::<String>()).map(|_| ()))
        });
        match outcome {
            Err(_) => panic!("flipping byte {offset} made the store panic"),
            Ok(Err(e)) => {
                assert!(e.to_string().contains("state.redb"), "{e}");
                detected += 1;
            }
            Ok(Ok(())) => {}
        }
    }
    assert!(detected > 0, "no damage was detected");
}

#[test]
fn shared_stores_take_turns_on_one_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let a = flotilla_state::Store::open_shared(dir.path()).expect("a opens");
    let b = flotilla_state::Store::open_shared(dir.path()).expect("b opens too");
    a.write(|tx| tx.put_rollout("web", &serde_json::json!({"phase": "progressing"})))
        .expect("a writes");
    let seen: Option<serde_json::Value> = b.read(|tx| tx.rollout("web")).expect("b reads");
    assert_eq!(seen, Some(serde_json::json!({"phase": "progressing"})));
    b.write(|tx| {
        tx.append_event(&serde_json::json!({"kind": "request"}))
            .map(|_| ())
    })
    .expect("b writes");
    let events: Vec<(u64, serde_json::Value)> =
        a.read(|tx| tx.events(0, 10)).expect("a reads b's event");
    assert_eq!(events.len(), 1);
    // A shared store lets go of the file once idle: an exclusive open then succeeds.
    let t0 = std::time::Instant::now();
    let x = loop {
        match flotilla_state::Store::open(dir.path()) {
            Ok(x) => break x,
            Err(flotilla_state::StateError::Locked { .. })
                if t0.elapsed() < std::time::Duration::from_secs(5) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("exclusive open while the shared stores are idle: {e}"),
        }
    };
    drop(x);
}

#[test]
fn a_busy_shared_store_still_gives_others_a_turn() {
    // A daemon keeps its shared store open across transactions; a person's `flotilla
    // rollout pause` (another handle) must still get the file while the daemon keeps
    // writing.
    let dir = tempfile::tempdir().expect("temp dir");
    let busy = flotilla_state::Store::open_shared(dir.path()).expect("busy opens");
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let done = done.clone();
        std::thread::spawn(move || {
            let t0 = std::time::Instant::now();
            let mut n = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst)
                && t0.elapsed() < std::time::Duration::from_secs(20)
            {
                busy.write(|tx| tx.put_rollout("web", &serde_json::json!({"n": n})))
                    .expect("busy writes");
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(100));
    let other = flotilla_state::Store::open_shared(dir.path()).expect("other opens");
    other
        .write(|tx| tx.put_rollout("api", &serde_json::json!({"paused": true})))
        .expect("other writes while busy keeps writing");
    let still_busy = !writer.is_finished();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = writer.join().expect("writer");
    assert!(
        still_busy,
        "the busy writer stopped before the other got a turn"
    );
    assert!(writes > 10, "the busy writer wrote {writes} times");
    let seen: Option<serde_json::Value> = other.read(|tx| tx.rollout("api")).expect("reads");
    assert_eq!(seen, Some(serde_json::json!({"paused": true})));
}
