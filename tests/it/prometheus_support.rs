//! A real Prometheus on loopback for the gate tests, scraping a tiny exporter whose values the
//! test changes at runtime. Prometheus is Debian's `prometheus` package (`.ci/run` installs
//! it); when the binary is missing the tests fail, they do not skip. It is stopped by PID when
//! its guard drops.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::git_support::free_port;

/// Series (`name{labels}`) to values, served as Prometheus text on `/metrics`.
type Series = Arc<Mutex<BTreeMap<String, f64>>>;

/// A std `TcpListener` thread answering `/metrics`.
pub struct Exporter {
    pub port: u16,
    series: Series,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Exporter {
    pub fn start(initial: &[(&str, f64)]) -> Exporter {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the exporter");
        let port = listener.local_addr().expect("local addr").port();
        let series: Series = Arc::new(Mutex::new(
            initial.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let series = series.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &series);
                    }
                }
            })
        };
        Exporter {
            port,
            series,
            stop,
            thread: Some(thread),
        }
    }

    /// Sets (or adds) a series; Prometheus sees it at its next scrape.
    pub fn set(&self, series: &str, value: f64) {
        self.series
            .lock()
            .expect("exporter lock")
            .insert(series.to_string(), value);
    }
}

fn serve(mut stream: TcpStream, series: &Series) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if path == "/metrics" {
        let mut body = String::from("# TYPE flotilla_test_error_rate gauge\n");
        for (k, v) in series.lock().expect("exporter lock").iter() {
            body.push_str(&format!("{k} {v}\n"));
        }
        ("200 OK", body)
    } else {
        ("404 Not Found", "not found\n".to_string())
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.shutdown(Shutdown::Both);
}

impl Drop for Exporter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A Prometheus process scraping an [`Exporter`] every second; killed by PID on drop.
pub struct PromServer {
    child: Option<Child>,
    pub port: u16,
    pub exporter: Exporter,
    dir: tempfile::TempDir,
}

impl PromServer {
    /// Starts the exporter and Prometheus; returns once Prometheus is ready and has scraped
    /// the exporter at least once. Panics (failing the test) when `prometheus` is missing.
    pub fn start(initial: &[(&str, f64)]) -> PromServer {
        let exporter = Exporter::start(initial);
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: flotilla-test\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
                exporter.port
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new(prometheus_binary())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start prometheus: {e}; {INSTALL}"));
        let mut server = PromServer {
            child: Some(child),
            port,
            exporter,
            dir,
        };
        server.wait_until("ready", |s| {
            http_get(s.port, "/-/ready").is_some_and(|(code, _)| code == 200)
        });
        // `up` is written by the first scrape; 1 means the exporter answered.
        server.wait_until("the first scrape", |s| {
            http_get(
                s.port,
                "/api/v1/query?query=up%7Bjob%3D%22flotilla-test%22%7D",
            )
            .is_some_and(|(code, body)| code == 200 && body.contains(r#""1"]"#))
        });
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills Prometheus (by its PID) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    fn wait_until(&mut self, what: &str, ok: impl Fn(&PromServer) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if ok(self) {
                return;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("prometheus exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("prometheus: no {what} after 20 s; its log:\n{}", self.log());
    }
}

impl Drop for PromServer {
    fn drop(&mut self) {
        self.kill();
    }
}

const INSTALL: &str = "the gate tests need a real Prometheus: install Debian's `prometheus` \
     package (apt-get install -y prometheus; .ci/run does) or set PROMETHEUS to the binary";

/// `$PROMETHEUS`, else `prometheus` on PATH, else `/usr/bin/prometheus`.
fn prometheus_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PROMETHEUS") {
        return PathBuf::from(p);
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file());
    match on_path {
        Some(p) => p,
        None if PathBuf::from("/usr/bin/prometheus").is_file() => "/usr/bin/prometheus".into(),
        None => panic!("no `prometheus` binary found: {INSTALL}"),
    }
}

/// A plain HTTP/1.0 GET on loopback: (status code, body), or None when nothing answers.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}
