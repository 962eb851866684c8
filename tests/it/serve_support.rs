//! A `flotilla serve` process for the integration tests: spawned with its stderr captured,
//! talked to over plain HTTP/1.1 on loopback, SIGTERM'd on request and killed (by PID) and
//! reaped when dropped. The daemon, hardening and real-cluster tests build their command line
//! with [`serve_command`] and add what they need.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::git_support::free_port;

/// `flotilla serve --listen 127.0.0.1:PORT` on a free port, with `KUBECONFIG` and
/// `FLOTILLA_SERVER` removed and `FLOTILLA_LOG=info`; returns the command and the port.
pub fn serve_command() -> (Command, u16) {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    cmd.arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("KUBECONFIG")
        .env_remove("FLOTILLA_SERVER")
        .env("FLOTILLA_LOG", "info");
    (cmd, port)
}

/// A running `flotilla serve`.
pub struct ServeProcess {
    pub child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
}

impl ServeProcess {
    /// Spawns `cmd` (from [`serve_command`]) and waits until `/healthz` answers 200.
    pub fn spawn(mut cmd: Command, port: u16) -> ServeProcess {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("flotilla serve starts");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let d = ServeProcess { child, port, log };
        d.wait_for("the HTTP server", Duration::from_secs(30), || {
            d.get("/healthz").is_some_and(|(c, _)| c == 200)
        });
        d
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Option<(u16, String)> {
        http(self.port, method, path, headers, body)
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        self.request("GET", path, &[], b"")
    }

    /// A JSON answer, failing the test unless the daemon answers 200.
    pub fn json(&self, path: &str) -> Value {
        let (code, body) = self.get(path).expect("the daemon answers");
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    }

    /// A JSON answer, or `null` while the daemon cannot give one (for polling).
    pub fn try_json(&self, path: &str) -> Value {
        match self.get(path) {
            Some((200, body)) => serde_json::from_str(&body).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Polls `ok` until it holds, failing the test with the daemon's log after `timeout`.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "{what}: not within {timeout:?}\n--- daemon log\n{}",
            self.log()
        );
    }

    /// SIGTERM and wait for the exit; returns its status code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        panic!(
            "the daemon did not exit within 40 s of SIGTERM\n{}",
            self.log()
        );
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A minimal HTTP/1.1 exchange on 127.0.0.1 (`Connection: close`): (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    // An oversized body is refused on its Content-Length, before it is read: not sending it
    // keeps the server's early close from resetting the connection under the answer.
    if body.len() <= 1024 * 1024 {
        s.write_all(body).ok()?;
    }
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Some((code, body))
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        text = rest[n..].trim_start_matches("\r\n");
    }
    out
}
