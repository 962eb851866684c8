//! A private PostgreSQL server for tests: `initdb` + `pg_ctl` in a temp dir, on a free
//! 127.0.0.1 port, trust authentication, user `flotilla`. Self-contained so other test suites
//! (tests/it) can copy it.
//!
//! - [`start_postgres`] starts a server owned by the returned [`Pg`]; dropping it stops the
//!   server (`pg_ctl -m immediate stop`, then SIGKILL by PID) and removes the directory.
//! - [`fresh_database`] gives each test its own database (`CREATE DATABASE`) on one server
//!   per test binary (started on first use, in a `OnceLock`). Statics are never dropped, so
//!   a detached `sh` watchdog polls the test binary's PID and, once it is gone (exit, failure
//!   or SIGKILL), sends the postmaster SIGQUIT (immediate shutdown), then SIGKILL, and removes
//!   the directory.
//!
//! Binaries come from `FLOTILLA_TEST_PG_BIN` (default `/usr/lib/postgresql/15/bin`); when
//! missing, the test fails saying how to install them. As root the tools run through
//! `runuser -u postgres --` (PostgreSQL refuses to run as root). Test servers run with
//! `fsync=off` (speed; durability on power loss is PostgreSQL's, not under test here).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub struct Pg {
    /// `postgres://flotilla@127.0.0.1:PORT/postgres`
    pub url: String,
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
    pid: Option<u32>,
}

fn bin_dir() -> PathBuf {
    let bin = PathBuf::from(
        std::env::var("FLOTILLA_TEST_PG_BIN")
            .unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".to_string()),
    );
    assert!(
        bin.join("initdb").is_file() && bin.join("pg_ctl").is_file(),
        "PostgreSQL server binaries not found in {} (set FLOTILLA_TEST_PG_BIN to the directory holding initdb and pg_ctl, \
         or install them: apt-get install -y --no-install-recommends postgresql-15)",
        bin.display()
    );
    bin
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Runs a PostgreSQL tool (as the `postgres` user when we are root); panics with its output
/// on failure.
fn tool(bin: &Path, name: &str, args: &[&str]) {
    let exe = bin.join(name);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    let out = cmd
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()));
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Starts a private server (see the module docs).
pub fn start_postgres() -> Pg {
    let bin = bin_dir();
    let dir = std::env::temp_dir().join(format!(
        "flotilla-pg-{}-{}",
        std::process::id(),
        DIR_COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if is_root() {
        let ok = Command::new("chown")
            .args(["-R", "postgres"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(ok.success(), "chown postgres {}", dir.display());
    }
    let data = dir.join("data");
    tool(
        &bin,
        "initdb",
        &[
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "flotilla",
            "-N",
        ],
    );
    let mut pg = Pg {
        url: String::new(),
        port: free_port(),
        dir,
        bin,
        pid: None,
    };
    pg.url = format!("postgres://flotilla@127.0.0.1:{}/postgres", pg.port);
    pg.start();
    pg
}

impl Pg {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Starts (again) on the same port and data.
    pub fn start(&mut self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        );
        tool(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                self.data().to_str().unwrap(),
                "-l",
                self.dir.join("log").to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
                "-o",
                &opts,
            ],
        );
        let pidfile = std::fs::read_to_string(self.data().join("postmaster.pid")).unwrap();
        self.pid = pidfile.lines().next().and_then(|l| l.trim().parse().ok());
    }

    /// Stops at once (like a crash: connections are cut).
    pub fn stop(&mut self) {
        let Some(pid) = self.pid.take() else {
            return;
        };
        let exe = self.bin.join("pg_ctl");
        let data = self.data();
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let _ = cmd
            .args(["-D", data.to_str().unwrap_or(""), "-m", "immediate", "stop"])
            .output();
        kill_hard(pid);
    }

    /// A new database on this server; returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let admin = self.url.clone();
        let sql = format!("CREATE DATABASE {name}");
        // The sync client must not run on a tokio thread: use a plain one.
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&admin, postgres::NoTls).unwrap();
            c.batch_execute(&sql).unwrap();
        })
        .join()
        .unwrap();
        format!("postgres://flotilla@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL on database `url` (plain thread).
    pub fn execute(url: &str, sql: &str) {
        let url = url.to_string();
        let sql = sql.to_string();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            c.batch_execute(&sql).unwrap();
        })
        .join()
        .unwrap();
    }
}

/// SIGKILL `pid` if it still runs (after a short grace for pg_ctl's stop).
fn kill_hard(pid: u32) {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    for _ in 0..50 {
        if !proc.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status();
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

static SHARED: OnceLock<Pg> = OnceLock::new();
static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Starts a detached watchdog that stops the server at `pid` and removes `dir` once this
/// process has ended, however it ended (statics are never dropped, and a test binary can be
/// killed). It outlives this process by design, so it is never waited for.
#[allow(clippy::zombie_processes)]
fn stop_when_this_process_ends(pid: u32, dir: &Path) {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.3; done; \
         kill -QUIT {pid} 2>/dev/null; sleep 1; kill -KILL {pid} 2>/dev/null; rm -rf '{dir}'",
        me = std::process::id(),
        dir = dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the PostgreSQL watchdog");
}

/// The URL of a new, empty database on this test binary's shared server.
pub fn fresh_database() -> String {
    let pg = SHARED.get_or_init(|| {
        let pg = start_postgres();
        stop_when_this_process_ends(pg.pid.unwrap_or(0), &pg.dir);
        pg
    });
    let n = DB_COUNTER.fetch_add(1, Ordering::SeqCst);
    pg.create_database(&format!("t{n}"))
}
