//! Git source benchmark, side by side with the `git` CLI on the same machine and repository
//! (10,000 files in 100 directories):
//! - detecting "no change" (flotilla `poll()` vs `git ls-remote` and a no-op `git fetch`);
//! - fetching one new commit (flotilla `poll()` vs `git fetch`);
//! - reading every file of the tree at a commit (`Snapshot` list + kind + read per path, and
//!   `Snapshot::read_all` on a freshly opened cache, vs `git ls-tree -r` + `git cat-file --batch`).
//!
//!     cargo bench -p flotilla-source --bench git_source
//!
//! Over file://, git:// (a `git-daemon` on loopback) and smart HTTP (git http-backend behind
//! lighttpd, if installed). Prints min / median; results and
//! machine notes go to docs/benchmarks.md (`## Git source`).

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_source::git::{GitSource, Poll, Remote, Rev, Snapshot};
use flotilla_spec::RepoFiles;
use flotilla_spec::types::RepoPath;

const FILES: usize = 10_000;
const DIRS: usize = 100;
const RUNS: usize = 15;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Adds commit `n` to `main` of the bare repository with `git fast-import`: all files for the
/// first, one changed file for the others.
fn import(bare: &Path, n: usize) {
    let mut s = String::new();
    s.push_str("commit refs/heads/main\n");
    s.push_str(&format!(
        "committer Bench <bench@example.com> {} +0000\n",
        1_700_000_000 + n
    ));
    let msg = format!("commit {n}");
    s.push_str(&format!("data {}\n{msg}\n", msg.len()));
    if n > 0 {
        s.push_str("from refs/heads/main^0\n");
    }
    let mut file = |path: String, body: String| {
        s.push_str(&format!(
            "M 100644 inline {path}\ndata {}\n{body}\n",
            body.len()
        ));
    };
    if n == 0 {
        for i in 0..FILES {
            let body = format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i}}}\ndata: {{k: \"{}\"}}\n",
                "x".repeat(200 + i % 300)
            );
            file(format!("apps/d{:03}/f{i:05}.yaml", i % DIRS), body);
        }
        file("fleet.yaml".into(), "kind: Fleet\n".into());
    } else {
        file(
            format!("apps/d{:03}/f{:05}.yaml", n % DIRS, n),
            format!("changed in commit {n}\n"),
        );
    }
    let mut child = Command::new("git")
        .current_dir(bare)
        .args(["fast-import", "--quiet"])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(Stdio::piped())
        .spawn()
        .expect("git fast-import");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(s.as_bytes())
        .expect("write stream");
    assert!(child.wait().expect("fast-import").success());
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn daemon(repos: &Path) -> (Daemon, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let exec = git(repos, &["--exec-path"]);
    let repos_s = repos.to_str().expect("utf-8");
    let child = Command::new(Path::new(&exec).join("git-daemon"))
        .args([
            "--reuseaddr",
            "--export-all",
            &format!("--base-path={repos_s}"),
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            repos_s,
        ])
        .stderr(Stdio::null())
        .spawn()
        .expect("git-daemon");
    let daemon = Daemon(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "git-daemon did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (daemon, port)
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// lighttpd + git http-backend (anonymous fetch), if lighttpd is installed.
fn http(dir: &Path, repos: &Path) -> Option<(Daemon, u16)> {
    let lighttpd = ["/usr/sbin/lighttpd", "/usr/bin/lighttpd"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let exec = git(repos, &["--exec-path"]);
    let repos = repos.display();
    let conf = dir.join("lighttpd.conf");
    std::fs::write(
        &conf,
        format!(
            r#"server.document-root = "{repos}"
server.bind = "127.0.0.1"
server.port = {port}
server.modules = ("mod_alias", "mod_setenv", "mod_cgi")
alias.url = ("/git" => "{exec}/git-http-backend")
$HTTP["url"] =~ "^/git" {{
  cgi.assign = ("" => "")
  setenv.add-environment = ("GIT_PROJECT_ROOT" => "{repos}", "GIT_HTTP_EXPORT_ALL" => "1")
}}
"#
        ),
    )
    .expect("write lighttpd.conf");
    let child = Command::new(lighttpd)
        .arg("-D")
        .arg("-f")
        .arg(&conf)
        .stderr(Stdio::null())
        .spawn()
        .expect("lighttpd");
    let server = Daemon(child);
    wait_port(port);
    Some((server, port))
}

fn stats(mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:8.2} ms  median {:8.2} ms",
        ms(times[0]),
        ms(times[times.len() / 2])
    )
}

fn time<T>(f: impl FnOnce() -> T) -> (Duration, T) {
    let start = Instant::now();
    let out = f();
    (start.elapsed(), out)
}

fn runs(f: &mut dyn FnMut()) -> Vec<Duration> {
    (0..RUNS).map(|_| time(&mut *f).0).collect()
}

fn read_all(s: &Snapshot, dir: &RepoPath, bytes: &mut usize, files: &mut usize) {
    for name in s.list(dir).expect("list") {
        let path = dir.join(&name).expect("path");
        match s.kind(&path) {
            flotilla_spec::PathKind::Dir => read_all(s, &path, bytes, files),
            _ => {
                *bytes += s.read(&path).expect("read").len();
                *files += 1;
            }
        }
    }
}

fn cli_read_all(clone: &Path) -> usize {
    let tree = git(clone, &["ls-tree", "-r", "refs/remotes/origin/main"]);
    let ids: String = tree
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(|id| format!("{id}\n"))
        .collect();
    let mut child = Command::new("git")
        .current_dir(clone)
        .args(["cat-file", "--batch"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("cat-file");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(ids.as_bytes()));
    let out = child.wait_with_output().expect("cat-file output");
    let _ = writer.join();
    out.stdout.len()
}

fn main() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let repos = tmp.path().join("repos");
    std::fs::create_dir_all(&repos).expect("mkdir");
    git(
        &repos,
        &["init", "--quiet", "--bare", "-b", "main", "fleet.git"],
    );
    let bare = repos.join("fleet.git");
    import(&bare, 0);
    git(&bare, &["repack", "-adq"]);
    println!(
        "repository: {FILES} files in {DIRS} directories ({})",
        git(&bare, &["count-objects", "-vH"])
            .lines()
            .find(|l| l.starts_with("size-pack"))
            .unwrap_or("size-pack: ?")
    );
    let (_daemon, port) = daemon(&repos);
    let http = http(tmp.path(), &repos);
    let mut urls = vec![
        ("file", format!("file://{}", bare.display())),
        ("git", format!("git://127.0.0.1:{port}/fleet.git")),
    ];
    match &http {
        Some((_, port)) => urls.push(("http", format!("http://127.0.0.1:{port}/git/fleet.git"))),
        None => println!("(lighttpd not installed: no smart HTTP numbers)"),
    }
    let mut commit = 1;
    for (name, url) in &urls {
        println!("\n== {name}://");
        let cache: PathBuf = tmp.path().join(format!("cache-{name}"));
        let remote = Remote::parse(url, None).expect("url");
        let mut source =
            GitSource::open(remote, Rev::parse("main").expect("rev"), &cache).expect("open");
        let (initial, _) = time(|| source.poll().expect("initial fetch"));
        let clone = tmp.path().join(format!("clone-{name}"));
        let (cli_initial, _) = time(|| {
            git(
                tmp.path(),
                &["init", "--quiet", "--bare", clone.to_str().expect("utf-8")],
            );
            git(&clone, &["remote", "add", "origin", url]);
            git(&clone, &["fetch", "--quiet", "origin"]);
        });
        println!(
            "initial fetch          flotilla {:8.2} ms   git init + fetch {:8.2} ms",
            initial.as_secs_f64() * 1000.0,
            cli_initial.as_secs_f64() * 1000.0
        );

        let t = runs(&mut || assert_eq!(source.poll().expect("poll"), Poll::Unchanged));
        println!("no-change poll         flotilla poll()     {}", stats(t));
        let t = runs(&mut || {
            git(&clone, &["ls-remote", url, "refs/heads/main"]);
        });
        println!("no-change              git ls-remote       {}", stats(t));
        let t = runs(&mut || {
            git(&clone, &["fetch", "--quiet", "origin"]);
        });
        println!("no-change              git fetch           {}", stats(t));

        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..RUNS {
            import(&bare, commit);
            commit += 1;
            let (t, changed) = time(|| source.poll().expect("poll"));
            assert!(matches!(changed, Poll::Changed { .. }));
            ours.push(t);
            theirs.push(time(|| git(&clone, &["fetch", "--quiet", "origin"])).0);
        }
        println!("fetch one new commit   flotilla poll()     {}", stats(ours));
        println!(
            "fetch one new commit   git fetch           {}",
            stats(theirs)
        );

        let snapshot = source.current().expect("snapshot").clone();
        let root = RepoPath::parse(".").expect("root");
        let t = runs(&mut || {
            let (mut bytes, mut files) = (0, 0);
            read_all(&snapshot, &root, &mut bytes, &mut files);
            assert!(files > FILES);
        });
        println!("read every file        flotilla Snapshot   {}", stats(t));
        // Cold each run, like the CLI: the cache repository opened again (no network), so
        // no tree or delta base decoded by an earlier run is reused.
        let t = runs(&mut || {
            let source = GitSource::open(
                Remote::parse(url, None).expect("url"),
                Rev::parse("main").expect("rev"),
                &cache,
            )
            .expect("open");
            let files = source
                .current()
                .expect("snapshot")
                .read_all()
                .expect("walk");
            let bytes: usize = files
                .iter()
                .map(|(_, data)| data.as_ref().expect("read").len())
                .sum();
            assert!(files.len() > FILES && bytes > 0);
        });
        println!("read every file        flotilla read_all() {}", stats(t));
        let t = runs(&mut || {
            assert!(cli_read_all(&clone) > 0);
        });
        println!(
            "read every file        git ls-tree -r + cat-file --batch   {}",
            stats(t)
        );
    }
}
