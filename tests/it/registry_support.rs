//! A real OCI registry on loopback for the image tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on a free port with temporary storage, optionally behind htpasswd
//! basic auth (`htpasswd` from apache2-utils), stopped by PID when dropped. Images are pushed
//! through the distribution HTTP API: one config blob, one tiny layer and a schema-2 manifest
//! per tag.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::git_support::free_port;

/// Status, headers (lower-case names) and body.
type Response = (u16, Vec<(String, String)>, Vec<u8>);

const INSTALL: &str = "install it with `apt-get install -y docker-registry apache2-utils`";

pub struct Registry {
    child: Option<Child>,
    pub port: u16,
    auth: Option<(String, String)>,
    dir: tempfile::TempDir,
    pushes: std::cell::Cell<u32>,
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Registry {
        Registry::start_inner(None)
    }

    /// A registry that wants `user:password` (basic auth, bcrypt htpasswd).
    pub fn start_with_auth(user: &str, password: &str) -> Registry {
        Registry::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(auth: Option<(String, String)>) -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\nlog: {{level: error}}\n",
            dir.path().join("data").display()
        );
        if let Some((user, password)) = &auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .unwrap_or_else(|e| panic!("cannot run htpasswd: {e}; {INSTALL}"));
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: flotilla-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start docker-registry: {e}; {INSTALL}"));
        let mut registry = Registry {
            child: Some(child),
            port,
            auth,
            dir,
            pushes: std::cell::Cell::new(0),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((code, _, _)) = registry.request("GET", "/v2/", &[], &[]) {
                assert!(code == 200 || code == 401, "GET /v2/: {code}");
                break;
            }
            if let Some(c) = registry.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("docker-registry exited with {status}: {}", registry.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry not ready after 15 s: {}",
                registry.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        registry
    }

    /// `127.0.0.1:PORT`, the registry part of image names.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Kills the registry (by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One HTTP/1.1 request (connection closed after it): status, headers, body.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        if let Some((u, p)) = &self.auth {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req.push_str(&format!("Authorization: Basic {token}\r\n"));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        s.write_all(body)?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no header end"))?;
        let head = String::from_utf8_lossy(&raw[..split]).to_string();
        let mut lines = head.lines();
        let code = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status"))?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Ok((code, headers, raw[split + 4..].to_vec()))
    }

    fn upload_blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        let (code, headers, body) = self
            .request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[])
            .expect("POST upload");
        assert_eq!(
            code,
            202,
            "start upload: {}",
            String::from_utf8_lossy(&body)
        );
        let location = headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .expect("a Location header");
        let path = match location.split_once("://") {
            Some((_, rest)) => rest[rest.find('/').expect("path")..].to_string(),
            None => location,
        };
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = format!("{path}{sep}digest={}", digest.replace(':', "%3A"));
        let (code, _, body) = self
            .request(
                "PUT",
                &url,
                &[("Content-Type", "application/octet-stream")],
                bytes,
            )
            .expect("PUT blob");
        assert_eq!(
            code,
            201,
            "finish upload: {}",
            String::from_utf8_lossy(&body)
        );
        digest
    }

    /// Pushes `repo:tag` (a fresh manifest each time, so re-pushing a tag moves its digest);
    /// returns the manifest digest.
    pub fn push(&self, repo: &str, tag: &str) -> String {
        let n = self.pushes.get() + 1;
        self.pushes.set(n);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"config":{{"Labels":{{"tag":"{tag}","push":"{n}"}}}}}}"#
        );
        let layer = format!("layer of {repo}:{tag} #{n}");
        let config_digest = self.upload_blob(repo, config.as_bytes());
        let layer_digest = self.upload_blob(repo, layer.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{},"digest":"{config_digest}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{},"digest":"{layer_digest}"}}]}}"#,
            config.len(),
            layer.len()
        );
        let (code, headers, body) = self
            .request(
                "PUT",
                &format!("/v2/{repo}/manifests/{tag}"),
                &[(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.v2+json",
                )],
                manifest.as_bytes(),
            )
            .expect("PUT manifest");
        assert_eq!(
            code,
            201,
            "push manifest: {}",
            String::from_utf8_lossy(&body)
        );
        headers
            .iter()
            .find(|(k, _)| k == "docker-content-digest")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| format!("sha256:{:x}", Sha256::digest(manifest.as_bytes())))
    }

    pub fn push_all(&self, repo: &str, tags: &[&str]) {
        for t in tags {
            self.push(repo, t);
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP proxy in front of a real registry that answers the first requests (one per
/// connection) with the given HTTP status codes, then forwards everything: 429 and 5xx on
/// demand, for the retry and backoff tests.
pub struct FaultProxy {
    pub port: u16,
    /// How many requests were answered with a fault.
    pub faulted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FaultProxy {
    pub fn start(upstream: u16, codes: &[u16]) -> FaultProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let faulted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut codes: std::collections::VecDeque<u16> = codes.iter().copied().collect();
        let (f, s) = (faulted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut client) = conn else { continue };
                if let Some(code) = codes.pop_front() {
                    // Read the request head, answer with the fault, close.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = client.write_all(
                        format!("HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .as_bytes(),
                    );
                    f.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c2, mut s2) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let mut server = server;
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                    let _ = s2.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut server, &mut client);
                    let _ = client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        FaultProxy {
            port,
            faulted,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
