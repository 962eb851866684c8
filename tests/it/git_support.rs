//! Real Git peers on loopback for the Git source tests: bare repositories served over
//! `file://`, `git daemon` (git://) and `git http-backend` behind lighttpd (smart HTTP with
//! basic auth on push). Servers are stopped by PID when their guard drops.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `git` with no global or system configuration; panics with its output on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_command(dir, args).output().expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {}: {}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn git_command(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0");
    cmd
}

/// A free port on 127.0.0.1 (the listener is closed again before the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for_port(port: u16, child: &mut Child) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("nothing listens on port {port} after 10 s");
}

/// A server process, killed (by its PID) when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory of bare repositories (`fleet.git`, branch `main`) and a work clone that
/// pushes to it with the real `git` CLI.
pub struct Upstream {
    dir: tempfile::TempDir,
}

impl Upstream {
    pub fn new() -> Upstream {
        let dir = tempfile::tempdir().expect("temp dir");
        let repos = dir.path().join("repos");
        std::fs::create_dir_all(&repos).expect("mkdir");
        git(
            &repos,
            &["init", "--quiet", "--bare", "-b", "main", "fleet.git"],
        );
        let bare = repos.join("fleet.git");
        git(&bare, &["config", "daemon.receivepack", "true"]);
        git(&bare, &["config", "http.receivepack", "true"]);
        // Tests delete `main` with a real push.
        git(&bare, &["config", "receive.denyDeleteCurrent", "ignore"]);
        let work = dir.path().join("work");
        git(
            dir.path(),
            &["clone", "--quiet", bare.to_str().expect("utf-8"), "work"],
        );
        git(&work, &["config", "user.name", "Test Pusher"]);
        git(&work, &["config", "user.email", "pusher@example.com"]);
        git(&work, &["checkout", "--quiet", "-b", "main"]);
        Upstream { dir }
    }

    pub fn repos(&self) -> PathBuf {
        self.dir.path().join("repos")
    }

    pub fn bare(&self) -> PathBuf {
        self.repos().join("fleet.git")
    }

    pub fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    /// A place for caches and other scratch files that goes away with the upstream.
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes files in the work clone and commits them; returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        let work = self.work();
        for (path, content) in files {
            let p = work.join(path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, content).expect("write");
            git(&work, &["add", path]);
        }
        git(
            &work,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        git(&work, &["rev-parse", "HEAD"])
    }

    /// Pushes `main` to the bare repository.
    pub fn push(&self) {
        git(&self.work(), &["push", "--quiet", "origin", "main"]);
    }

    pub fn force_push(&self) {
        git(
            &self.work(),
            &["push", "--quiet", "--force", "origin", "main"],
        );
    }

    /// `git daemon` serving this upstream (pushes allowed).
    pub fn daemon(&self) -> Server {
        self.daemon_on(free_port())
    }

    /// `git daemon` on a given port (to bring a stopped server back where clients expect it).
    pub fn daemon_on(&self, port: u16) -> Server {
        let repos = self.repos();
        let repos = repos.to_str().expect("utf-8");
        // `git daemon` would run `git-daemon` as a child that outlives a kill of its parent:
        // start the real server directly so that its PID is the one we stop.
        let exec_path = git(self.dir.path(), &["--exec-path"]);
        let mut child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--enable=receive-pack",
                &format!("--base-path={repos}"),
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                repos,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        wait_for_port(port, &mut child);
        Server { child, port }
    }

    /// lighttpd + git http-backend serving this upstream; pushes need `user:password`, and
    /// so do fetches if `private`.
    pub fn http(&self, user: &str, password: &str, private: bool) -> Server {
        let port = free_port();
        let repos = self.repos();
        let repos = repos.to_str().expect("utf-8");
        let exec_path = git(self.dir.path(), &["--exec-path"]);
        let users = self.dir.path().join("htusers");
        std::fs::write(&users, format!("{user}:{password}\n")).expect("write users");
        let conf = self.dir.path().join("lighttpd.conf");
        let conf_text = format!(
            r#"server.document-root = "{repos}"
server.bind = "127.0.0.1"
server.port = {port}
server.errorlog = "{log}"
server.modules = ("mod_auth", "mod_authn_file", "mod_alias", "mod_setenv", "mod_cgi")
alias.url = ("/git" => "{exec_path}/git-http-backend")
$HTTP["url"] =~ "^/git" {{
  cgi.assign = ("" => "")
  setenv.add-environment = ("GIT_PROJECT_ROOT" => "{repos}", "GIT_HTTP_EXPORT_ALL" => "1", "GIT_CONFIG_NOSYSTEM" => "1")
}}
auth.backend = "plain"
auth.backend.plain.userfile = "{users}"
$HTTP["querystring"] =~ "service=git-receive-pack" {{ auth.require = ("" => ("method" => "basic", "realm" => "git", "require" => "valid-user")) }}
$HTTP["url"] =~ "/git-receive-pack$" {{ auth.require = ("" => ("method" => "basic", "realm" => "git", "require" => "valid-user")) }}
{private}
"#,
            private = if private {
                r#"$HTTP["url"] =~ "^/git/" { auth.require = ("" => ("method" => "basic", "realm" => "git", "require" => "valid-user")) }"#
            } else {
                ""
            },
            log = self.dir.path().join("lighttpd.log").display(),
            users = users.display(),
        );
        std::fs::write(&conf, conf_text).expect("write lighttpd.conf");
        let lighttpd = ["/usr/sbin/lighttpd", "/usr/bin/lighttpd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("lighttpd");
        let mut child = Command::new(lighttpd)
            .arg("-D")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("lighttpd starts (apt-get install lighttpd)");
        wait_for_port(port, &mut child);
        Server { child, port }
    }
}

/// A TCP server that accepts connections and never answers (a hung remote).
pub struct Hang {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Hang {
    pub fn start() -> Hang {
        use std::sync::atomic::Ordering;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => held.push(stream),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Hang {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Hang {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
