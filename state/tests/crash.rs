//! Crash durability: a child process commits transactions in a loop and is killed with
//! SIGKILL at random moments; after every kill the store must open, be consistent, and hold
//! every transaction the child saw committed.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flotilla_state::Store;
use serde::{Deserialize, Serialize};

const WRITER_ENV: &str = "FLOTILLA_STATE_TEST_CRASH_DIR";
const KILLS: usize = 20;

#[derive(Debug, Serialize, Deserialize)]
struct Event {
    n: u64,
    /// Padding so transactions span more than one page now and then.
    pad: String,
}

/// Not a test on its own: re-executed with `WRITER_ENV` set, it writes transactions until
/// killed. Each appends one event and sets the rollout "counter" to the number of events, in
/// ONE transaction, then prints the committed count.
#[test]
fn crash_writer_child() {
    let Some(dir) = std::env::var_os(WRITER_ENV) else {
        return;
    };
    let store = Store::open(Path::new(&dir)).unwrap();
    println!("OPEN");
    loop {
        let n = store
            .write(|tx| {
                let n = tx.rollout::<u64>("counter")?.unwrap_or(0) + 1;
                let pad = "x".repeat((n % 7) as usize * 700);
                let seq = tx.append_event(&Event { n, pad })?;
                assert_eq!(seq, n, "sequence and counter diverged inside a transaction");
                tx.put_rollout("counter", &n)?;
                Ok(n)
            })
            .unwrap();
        println!("COMMITTED {n}");
    }
}

/// A small xorshift generator: the test needs varied kill moments, not good randomness.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Checks the store and returns the counter.
fn check(dir: &Path, round: usize) -> u64 {
    let store = Store::open(dir).unwrap_or_else(|e| panic!("round {round}: open failed: {e}"));
    store
        .read(|tx| {
            let counter = tx.rollout::<u64>("counter")?.unwrap_or(0);
            let last = tx.last_event_seq()?;
            let events: Vec<(u64, Event)> = tx.events(0, usize::MAX)?;
            assert_eq!(
                events.len() as u64,
                counter,
                "round {round}: event count != counter"
            );
            assert_eq!(last, counter, "round {round}: last_event_seq != counter");
            for (i, (seq, event)) in events.iter().enumerate() {
                assert_eq!(*seq, i as u64 + 1, "round {round}: sequence gap");
                assert_eq!(event.n, *seq, "round {round}: event out of place");
            }
            Ok(counter)
        })
        .unwrap()
}

#[test]
fn kill_9_at_random_moments_never_loses_or_tears_a_transaction() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let mut previous = 0;

    for round in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "crash_writer_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(WRITER_ENV, tmp.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut last_committed = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // libtest prints "test NAME ... " before the child's first line.
                if line.ends_with("OPEN") {
                    let _ = tx.send(());
                } else if let Some((_, n)) = line.split_once("COMMITTED ") {
                    // A kill can cut the last line short: only whole numbers count, and a
                    // cut one is at most an under-estimate.
                    if let Ok(n) = n.parse() {
                        last_committed = n;
                    }
                }
            }
            last_committed
        });
        // Most rounds kill the child while it writes; every fourth one may hit it anywhere,
        // start-up and crash recovery included.
        if round % 4 != 3 {
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("round {round}: child {pid} never opened the store"));
        }
        std::thread::sleep(Duration::from_micros(rng.next() % 60_000));
        child.kill().unwrap(); // SIGKILL to this PID
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: child exited on its own");
        let acknowledged = reader.join().unwrap();

        let counter = check(tmp.path(), round);
        assert!(
            counter >= acknowledged,
            "round {round}: the child saw {acknowledged} committed but the store holds {counter}"
        );
        assert!(counter >= previous, "round {round}: the counter went back");
        eprintln!("round {round}: counter {counter} (child acknowledged {acknowledged})");
        previous = counter;
    }
    assert!(previous > 0, "the child never committed anything");
    eprintln!("{KILLS} kills in {:?}", started.elapsed());
}
