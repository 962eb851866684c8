//! The Git source against real peers on loopback: bare repositories over file://, git daemon
//! (git://) and git http-backend behind lighttpd (smart HTTP, basic auth on push). Every
//! scenario runs on all three transports; the upstream is changed with the real `git` CLI.

use std::time::{Duration, Instant};

use flotilla_source::git::{
    CommitMessage, Credentials, FileChange, GitError, GitSource, Identity, Poll, Poller,
    PushOptions, Pushed, Remote, Rev,
};
use flotilla_spec::types::RepoPath;
use flotilla_spec::{PathKind, RepoError, RepoFiles};

use crate::git_support::{Hang, Server, Upstream, free_port, git};

const PASSWORD: &str = "pw-s3cret-42";

#[derive(Clone, Copy, Debug)]
enum Transport {
    File,
    Daemon,
    Http,
}

/// An upstream and the server in front of it (none for file://).
struct Peer {
    upstream: Upstream,
    _server: Option<Server>,
    url: String,
}

fn peer(t: Transport) -> Peer {
    let upstream = Upstream::new();
    let (server, url) = match t {
        Transport::File => {
            let url = format!("file://{}", upstream.bare().display());
            (None, url)
        }
        Transport::Daemon => {
            let s = upstream.daemon();
            let url = format!("git://127.0.0.1:{}/fleet.git", s.port);
            (Some(s), url)
        }
        Transport::Http => {
            let s = upstream.http("bot", PASSWORD, false);
            let url = format!("http://127.0.0.1:{}/git/fleet.git", s.port);
            (Some(s), url)
        }
    };
    Peer {
        upstream,
        _server: server,
        url,
    }
}

impl Peer {
    fn source(&self, rev: &str, credentials: Option<Credentials>) -> GitSource {
        let remote = Remote::parse(&self.url, credentials).expect("valid URL");
        GitSource::open(
            remote,
            Rev::parse(rev).expect("valid rev"),
            self.upstream.scratch("cache"),
        )
        .expect("cache opens")
    }
}

fn rp(s: &str) -> RepoPath {
    RepoPath::parse(s).expect("valid repo path")
}

fn read(source: &GitSource, path: &str) -> String {
    source
        .current()
        .expect("a snapshot")
        .read_to_string(&rp(path))
        .expect("readable")
}

fn commit_of(source: &GitSource) -> String {
    source.current().expect("a snapshot").commit().to_string()
}

fn lifecycle(t: Transport) {
    let p = peer(t);
    let up = &p.upstream;
    let c1 = up.commit(&[("fleet.yaml", "v: 1\n"), ("apps/a.yaml", "a")], "first");
    up.push();

    let mut source = p.source("main", None);
    assert!(source.current().is_none());
    match source.poll().expect("initial fetch") {
        Poll::Changed { from: None, to, .. } => assert_eq!(to.to_string(), c1),
        other => panic!("{t:?}: {other:?}"),
    }
    assert_eq!(commit_of(&source), c1);
    assert_eq!(read(&source, "fleet.yaml"), "v: 1\n");
    assert_eq!(source.poll().expect("no-change poll"), Poll::Unchanged);

    // Incremental fetch after a real push; the old snapshot stays readable as it was.
    let old = source.current().expect("snapshot").clone();
    let c2 = up.commit(&[("fleet.yaml", "v: 2\n")], "second");
    up.push();
    match source.poll().expect("incremental fetch") {
        Poll::Changed {
            from,
            to,
            rewritten,
        } => {
            assert_eq!(from.map(|f| f.to_string()), Some(c1.clone()));
            assert_eq!(to.to_string(), c2);
            assert!(!rewritten, "{t:?}: a fast-forward is no rewrite");
        }
        other => panic!("{t:?}: {other:?}"),
    }
    assert_eq!(read(&source, "fleet.yaml"), "v: 2\n");
    assert_eq!(
        old.read_to_string(&rp("fleet.yaml")).expect("old"),
        "v: 1\n"
    );

    // A force-push that drops c2 is followed and flagged as a rewrite.
    git(&up.work(), &["reset", "--quiet", "--hard", &c1]);
    let c3 = up.commit(&[("fleet.yaml", "v: 3\n")], "rewritten");
    up.force_push();
    match source.poll().expect("force-push") {
        Poll::Changed { to, rewritten, .. } => {
            assert_eq!(to.to_string(), c3);
            assert!(rewritten, "{t:?}: the force-push is a rewrite");
        }
        other => panic!("{t:?}: {other:?}"),
    }
    assert_eq!(read(&source, "fleet.yaml"), "v: 3\n");

    // The cache survives a restart: the last snapshot is there before any network access.
    drop(source);
    let mut source = p.source("main", None);
    assert_eq!(commit_of(&source), c3);

    // A deleted branch is a clear error, and the last snapshot stays.
    git(&up.work(), &["push", "--quiet", "origin", ":main"]);
    let err = source.poll().expect_err("the branch is gone");
    assert!(matches!(err, GitError::RefNotFound { .. }), "{t:?}: {err}");
    let msg = err.to_string();
    assert!(msg.contains(&p.url) && msg.contains("main"), "{msg}");
    assert_eq!(commit_of(&source), c3);
}

#[test]
fn follows_pushes_force_pushes_and_deleted_branches_over_file() {
    lifecycle(Transport::File);
}

#[test]
fn follows_pushes_force_pushes_and_deleted_branches_over_git_daemon() {
    lifecycle(Transport::Daemon);
}

#[test]
fn follows_pushes_force_pushes_and_deleted_branches_over_http() {
    lifecycle(Transport::Http);
}

fn bot() -> CommitMessage {
    let who = Identity {
        name: "flotilla".into(),
        email: "flotilla@example.com".into(),
    };
    CommitMessage {
        author: who.clone(),
        committer: who,
        message: "Update image of web to 1.2.4\n".into(),
    }
}

fn fast_retries() -> PushOptions {
    PushOptions {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..PushOptions::default()
    }
}

fn write_back(t: Transport) {
    let p = peer(t);
    let up = &p.upstream;
    up.commit(
        &[
            ("fleet.yaml", "v: 1\n"),
            ("apps/web.yaml", "image: web:1.2.3\n"),
        ],
        "first",
    );
    up.push();
    let credentials = matches!(t, Transport::Http).then(|| Credentials::new("bot", PASSWORD));
    let mut source = p.source("main", credentials);

    let mut calls = 0;
    let outcome = source
        .commit_and_push(&bot(), &fast_retries(), |tip| {
            calls += 1;
            if calls == 1 {
                // Someone else pushes between our fetch and our push.
                up.commit(&[("fleet.yaml", "v: 2\n")], "concurrent");
                up.push();
            }
            let old = tip
                .read_to_string(&rp("apps/web.yaml"))
                .map_err(|e| e.to_string())?;
            Ok(vec![FileChange::Write {
                path: rp("apps/web.yaml"),
                content: old.replace("1.2.3", "1.2.4").into_bytes(),
            }])
        })
        .expect("commit and push");
    let Pushed::Commit { commit, attempts } = outcome else {
        panic!("{t:?}: {outcome:?}");
    };
    assert_eq!(attempts, 2, "{t:?}: rejected once, then rebased");
    assert_eq!(calls, 2);

    // The remote's history holds both commits, ours on top of the concurrent one.
    let bare = up.bare();
    assert_eq!(git(&bare, &["rev-parse", "main"]), commit.to_string());
    let log = git(&bare, &["log", "--format=%s|%an", "main"]);
    assert_eq!(
        log.lines().collect::<Vec<_>>(),
        vec![
            "Update image of web to 1.2.4|flotilla",
            "concurrent|Test Pusher",
            "first|Test Pusher"
        ]
    );
    assert_eq!(
        git(&bare, &["show", "main:apps/web.yaml"]),
        "image: web:1.2.4"
    );
    assert_eq!(git(&bare, &["show", "main:fleet.yaml"]), "v: 2");
    assert_eq!(commit_of(&source), commit.to_string());

    // Applying the same change again is a no-op.
    let again = source
        .commit_and_push(&bot(), &fast_retries(), |_| {
            Ok(vec![FileChange::Write {
                path: rp("apps/web.yaml"),
                content: b"image: web:1.2.4\n".to_vec(),
            }])
        })
        .expect("no-op");
    assert_eq!(again, Pushed::NothingToDo { tip: commit });
}

#[test]
fn write_back_rebases_over_a_concurrent_push_over_file() {
    write_back(Transport::File);
}

#[test]
fn write_back_rebases_over_a_concurrent_push_over_git_daemon() {
    write_back(Transport::Daemon);
}

#[test]
fn write_back_rebases_over_a_concurrent_push_over_http() {
    write_back(Transport::Http);
}

#[test]
fn a_wrong_password_fails_the_push_and_is_never_shown() {
    let p = peer(Transport::Http);
    p.upstream.commit(&[("fleet.yaml", "v: 1\n")], "first");
    p.upstream.push();
    let wrong = "wrong-pa55word";
    let mut source = p.source("main", Some(Credentials::new("bot", wrong)));
    let err = source
        .commit_and_push(&bot(), &fast_retries(), |_| {
            Ok(vec![FileChange::Write {
                path: rp("x.yaml"),
                content: b"x".to_vec(),
            }])
        })
        .expect_err("the password is wrong");
    let text = format!("{err} {err:?} {source:?}");
    assert!(matches!(err, GitError::Push { .. }), "{text}");
    assert!(text.contains("Authentication failed"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    // The branch did not move.
    assert_eq!(
        git(&p.upstream.bare(), &["log", "--format=%s", "main"]),
        "first"
    );

    // Credentials embedded in a URL are split off and redacted too.
    let with_userinfo = p.url.replace("http://", &format!("http://bot:{wrong}@"));
    let remote = Remote::parse(&with_userinfo, None).expect("valid URL");
    assert!(!format!("{remote} {remote:?}").contains(wrong));
}

#[test]
fn an_unreachable_remote_is_a_quick_error_and_keeps_the_last_snapshot() {
    let p = peer(Transport::Daemon);
    let c1 = p.upstream.commit(&[("fleet.yaml", "v: 1\n")], "first");
    p.upstream.push();
    let mut source = p.source("main", None);
    source.poll().expect("initial fetch");
    let Peer {
        upstream, _server, ..
    } = p;
    drop(_server); // the daemon is gone: its port is closed
    let started = Instant::now();
    let err = source.poll().expect_err("nobody listens");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("git://127.0.0.1:") && msg.contains("(main)"),
        "{msg}"
    );
    assert_eq!(commit_of(&source), c1);
    drop(upstream);

    // Smart HTTP on a closed port: same, with no snapshot at all.
    let url = format!("http://127.0.0.1:{}/git/fleet.git", free_port());
    let cache = tempfile::tempdir().expect("temp dir");
    let remote = Remote::parse(&url, None).expect("valid URL");
    let mut source = GitSource::open(remote, Rev::Head, cache.path().join("c")).expect("opens");
    let started = Instant::now();
    let err = source.poll().expect_err("nobody listens");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    assert!(err.to_string().contains(&url), "{err}");
    assert!(source.current().is_none());
}

#[test]
fn snapshots_read_like_a_local_tree_and_refuse_links_out() {
    let p = peer(Transport::File);
    let up = &p.upstream;
    let work = up.work();
    let c1 = up.commit(
        &[
            ("fleet.yaml", "v: 1\n"),
            ("apps/b.yaml", "b"),
            ("apps/a.yaml", "a"),
            ("apps/sub/c.yaml", "c"),
        ],
        "first",
    );
    for (link, target) in [
        ("apps/alias.yaml", "a.yaml"),
        ("apps/up.yaml", "../fleet.yaml"),
        ("linked", "apps"),
        ("apps/leak", "../../etc/passwd"),
        ("apps/abs", "/etc/passwd"),
    ] {
        std::os::unix::fs::symlink(target, work.join(link)).expect("symlink");
        git(&work, &["add", link]);
    }
    git(&work, &["commit", "--quiet", "-m", "links"]);
    git(&work, &["tag", "-a", "-m", "release", "v1", &c1]);
    git(&work, &["push", "--quiet", "origin", "main", "v1"]);

    let mut source = p.source("main", None);
    source.poll().expect("fetch");
    let s = source.current().expect("snapshot");
    assert_eq!(s.kind(&rp(".")), PathKind::Dir);
    assert_eq!(s.kind(&rp("apps")), PathKind::Dir);
    assert_eq!(s.kind(&rp("apps/a.yaml")), PathKind::File);
    assert_eq!(s.kind(&rp("apps/missing")), PathKind::Missing);
    assert_eq!(s.kind(&rp("apps/a.yaml/x")), PathKind::Missing);
    assert_eq!(s.kind(&rp("apps/leak")), PathKind::Escapes);
    assert_eq!(s.kind(&rp("apps/abs")), PathKind::Escapes);
    assert_eq!(
        s.read(&rp("apps/leak")),
        Err(RepoError::Escapes("apps/leak".into()))
    );
    assert_eq!(s.read_to_string(&rp("apps/alias.yaml")), Ok("a".into()));
    assert_eq!(s.read_to_string(&rp("apps/up.yaml")), Ok("v: 1\n".into()));
    assert_eq!(s.read_to_string(&rp("linked/sub/c.yaml")), Ok("c".into()));
    assert_eq!(s.kind(&rp("linked")), PathKind::Dir);
    assert_eq!(
        s.list(&rp("apps")),
        Ok([
            "a.yaml",
            "abs",
            "alias.yaml",
            "b.yaml",
            "leak",
            "sub",
            "up.yaml"
        ]
        .map(String::from)
        .to_vec())
    );
    assert_eq!(
        s.list(&rp(".")),
        Ok(["apps", "fleet.yaml", "linked"].map(String::from).to_vec())
    );
    assert!(matches!(
        s.read(&rp("apps")),
        Err(RepoError::IsADirectory(_))
    ));
    assert!(matches!(
        s.list(&rp("fleet.yaml")),
        Err(RepoError::NotADirectory(_))
    ));

    // An annotated tag and a bare commit id resolve to the tagged commit; a missing ref and
    // an unknown commit are clear errors.
    let mut tag = p.source("v1", None);
    tag.poll().expect("tag");
    assert_eq!(commit_of(&tag), c1);
    let err = tag
        .commit_and_push(&bot(), &fast_retries(), |_| Ok(Vec::new()))
        .expect_err("a tag cannot be written back");
    assert!(matches!(err, GitError::NotABranch { .. }), "{err}");
    let err = p
        .source(&c1, None)
        .commit_and_push(&bot(), &fast_retries(), |_| Ok(Vec::new()))
        .expect_err("a commit cannot be written back");
    assert!(matches!(err, GitError::NotABranch { .. }), "{err}");
    let mut pinned = p.source(&c1, None);
    pinned.poll().expect("commit");
    assert_eq!(commit_of(&pinned), c1);
    assert_eq!(pinned.poll().expect("pinned"), Poll::Unchanged);
    let err = p.source("nope", None).poll().expect_err("no such ref");
    assert!(matches!(err, GitError::RefNotFound { .. }), "{err}");
    assert!(err.to_string().contains("on the remote"), "{err}");
    // The same repository named by its path is no remote: the error says so.
    let local = Remote::parse(&p.upstream.bare().display().to_string(), None).expect("path");
    let err = GitSource::open(
        local,
        Rev::parse("nope").expect("valid rev"),
        p.upstream.scratch("cache-local"),
    )
    .expect("cache opens")
    .poll()
    .expect_err("no such ref");
    assert!(matches!(err, GitError::RefNotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .ends_with("nope does not exist in the repository (no branch or tag by that name)"),
        "{err}"
    );
    let err = p
        .source("0123456789abcdef0123456789abcdef01234567", None)
        .poll()
        .expect_err("no such commit");
    assert!(matches!(err, GitError::CommitNotFound { .. }), "{err}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn cli_validates_a_fleet_from_a_git_url_at_a_revision() {
    use crate::support::{flotilla, stderr, stdout, workspace};
    let p = peer(Transport::Daemon);
    let up = &p.upstream;
    let ws = workspace();
    copy_dir(&ws.join("examples"), &up.work().join("examples"));
    let example = std::fs::read_to_string(ws.join("fleet.example.yaml")).expect("example");
    git(&up.work(), &["add", "examples"]);
    let good = up.commit(&[("fleet.example.yaml", &example)], "the example fleet");
    up.commit(&[("fleet.example.yaml", "kind: Nope\n")], "broken");
    up.push();
    let cache = up.scratch("cli-cache");
    let cache = cache.to_str().expect("utf-8");

    let run = |rev: &str| {
        flotilla(&[
            "validate",
            "--repo",
            &p.url,
            "--rev",
            rev,
            "--cache",
            cache,
            "--fleet",
            "fleet.example.yaml",
        ])
    };
    let out = run(&good);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).starts_with("fleet.example.yaml: valid: 5 clusters"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains(&good), "{}", stderr(&out));
    let out = run("main");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("fleet.example.yaml: invalid"),
        "{}",
        stdout(&out)
    );

    // plan reads the same way; errors name the repository and revision, never a password.
    let out = flotilla(&[
        "plan",
        "--repo",
        &p.url,
        "--rev",
        &good,
        "--cache",
        cache,
        "--fleet",
        "fleet.example.yaml",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // render reads the bundles from the same commit: identical to rendering the work tree.
    let from_git = flotilla(&[
        "render",
        "--repo",
        &p.url,
        "--rev",
        &good,
        "--cache",
        cache,
        "--fleet",
        "fleet.example.yaml",
    ]);
    assert_eq!(from_git.status.code(), Some(0), "{}", stderr(&from_git));
    let ws_str = ws.to_str().expect("utf-8");
    let local = flotilla(&["render", "--repo", ws_str, "--fleet", "fleet.example.yaml"]);
    assert_eq!(local.status.code(), Some(0), "{}", stderr(&local));
    assert!(
        stdout(&from_git).contains("kind: Deployment"),
        "{}",
        stdout(&from_git)
    );
    assert_eq!(stdout(&from_git), stdout(&local));

    let url = format!(
        "http://bot:hunter22@127.0.0.1:{}/git/fleet.git",
        free_port()
    );
    let out = flotilla(&["validate", "--repo", &url, "--cache", cache]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("***@127.0.0.1"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("hunter22"), "{}", stderr(&out));
    // A repository without the fleet file is a clear error naming the repository and rev.
    let out = flotilla(&[
        "validate", "--repo", &p.url, "--rev", &good, "--cache", cache,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "fleet.yaml not found in repository {} at {good}",
            p.url
        )),
        "{}",
        stderr(&out)
    );
    let out = run("no-such-branch");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no-such-branch does not exist on the remote"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_private_http_remote_needs_the_right_credentials_to_fetch() {
    let up = Upstream::new();
    let server = up.http("bot", PASSWORD, true);
    let c1 = up.commit(&[("fleet.yaml", "v: 1\n")], "first");
    up.push();
    let url = format!("http://127.0.0.1:{}/git/fleet.git", server.port);
    let open = |credentials: Option<Credentials>, cache: &str| {
        let remote = Remote::parse(&url, credentials).expect("valid URL");
        GitSource::open(remote, Rev::parse("main").expect("rev"), up.scratch(cache))
            .expect("cache opens")
    };
    let err = open(None, "anonymous")
        .poll()
        .expect_err("anonymous fetch is refused");
    assert!(matches!(err, GitError::Remote { .. }), "{err}");
    let wrong = "not-the-pa55word";
    let mut source = open(Some(Credentials::new("bot", wrong)), "wrong");
    let err = source.poll().expect_err("a wrong password is refused");
    let text = format!("{err} {err:?} {source:?}");
    assert!(text.contains(&url) && text.contains("(main)"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(source.current().is_none());
    let mut source = open(Some(Credentials::new("bot", PASSWORD)), "right");
    source.poll().expect("the right password fetches");
    assert_eq!(commit_of(&source), c1);
}

#[test]
fn an_interrupted_fetch_leaves_the_last_snapshot() {
    let p = peer(Transport::Daemon);
    let c1 = p.upstream.commit(&[("fleet.yaml", "v: 1\n")], "first");
    p.upstream.push();
    let mut source = p.source("main", None);
    source.poll().expect("initial fetch");
    let c2 = p.upstream.commit(&[("fleet.yaml", "v: 2\n")], "second");
    p.upstream.push();
    let interrupted = std::sync::atomic::AtomicBool::new(true);
    let err = source
        .poll_with_interrupt(&interrupted)
        .expect_err("the fetch is interrupted");
    assert!(matches!(err, GitError::Remote { .. }), "{err}");
    assert_eq!(commit_of(&source), c1);
    // A restart still finds the last good snapshot; the next poll completes the fetch.
    drop(source);
    let mut source = p.source("main", None);
    assert_eq!(commit_of(&source), c1);
    assert!(matches!(source.poll(), Ok(Poll::Changed { .. })));
    assert_eq!(commit_of(&source), c2);
}

#[test]
fn a_hanging_remote_times_out_and_keeps_the_last_snapshot() {
    let p = peer(Transport::Daemon);
    let c1 = p.upstream.commit(&[("fleet.yaml", "v: 1\n")], "first");
    p.upstream.push();
    p.source("main", None).poll().expect("initial fetch");
    let hang = Hang::start();
    for url in [
        format!("git://127.0.0.1:{}/fleet.git", hang.port),
        format!("http://127.0.0.1:{}/git/fleet.git", hang.port),
    ] {
        // The same cache: the snapshot fetched from the real server is the last good one.
        let remote = Remote::parse(&url, None).expect("valid URL");
        let mut source = GitSource::open(
            remote,
            Rev::Name("main".into()),
            p.upstream.scratch("cache"),
        )
        .expect("cache opens");
        assert_eq!(commit_of(&source), c1);
        source.set_timeout(Duration::from_millis(500));
        let started = Instant::now();
        let err = source.poll().expect_err("the server never answers");
        assert!(started.elapsed() < Duration::from_secs(5), "{url}: {err}");
        assert!(err.to_string().contains(&url), "{err}");
        assert_eq!(commit_of(&source), c1);
    }
}

#[test]
fn a_trigger_polls_at_once_and_failures_back_off() {
    let p = peer(Transport::Daemon);
    let c1 = p.upstream.commit(&[("fleet.yaml", "v: 1\n")], "first");
    p.upstream.push();
    let hour = Duration::from_secs(3600);
    let mut poller = Poller::new(p.source("main", None), hour, 4 * hour);
    assert!(
        matches!(poller.wait_and_poll(), Ok(Poll::Changed { .. })),
        "the first poll is at once"
    );
    assert_eq!(commit_of(poller.source()), c1);

    // A webhook: push, fire the trigger, and the poller fetches without waiting an hour.
    let c2 = p.upstream.commit(&[("fleet.yaml", "v: 2\n")], "second");
    p.upstream.push();
    let trigger = poller.trigger();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        trigger.fire();
        trigger.fire();
    });
    let started = Instant::now();
    assert!(matches!(poller.wait_and_poll(), Ok(Poll::Changed { .. })));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(commit_of(poller.source()), c2);

    // The server goes away: errors back off, the snapshot stays.
    let Peer {
        upstream, _server, ..
    } = p;
    drop(_server);
    poller.trigger().fire();
    assert!(poller.wait_and_poll().is_err());
    assert_eq!(poller.delay(), 2 * hour);
    assert_eq!(commit_of(poller.source()), c2);
    drop(upstream);
}

#[test]
fn a_shallow_first_fetch_then_incremental_fetches_and_write_back() {
    let p = peer(Transport::Daemon);
    let up = &p.upstream;
    for i in 1..=3 {
        up.commit(&[("fleet.yaml", &format!("v: {i}\n"))], &format!("c{i}"));
    }
    up.push();
    let mut source = p.source("main", None);
    source.set_shallow_depth(std::num::NonZeroU32::new(1));
    source.poll().expect("shallow fetch");
    let cache = up.scratch("cache");
    let count = || git(&cache, &["rev-list", "--count", "refs/flotilla/heads/main"]);
    assert_eq!(count(), "1", "only the tip was fetched");
    assert_eq!(read(&source, "fleet.yaml"), "v: 3\n");

    let c4 = up.commit(&[("fleet.yaml", "v: 4\n")], "c4");
    up.push();
    match source.poll().expect("incremental fetch") {
        Poll::Changed { to, rewritten, .. } => {
            assert_eq!(to.to_string(), c4);
            assert!(
                !rewritten,
                "a fast-forward on a shallow cache is no rewrite"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(count(), "2");

    let pushed = source
        .commit_and_push(&bot(), &fast_retries(), |_| {
            Ok(vec![FileChange::Write {
                path: rp("fleet.yaml"),
                content: b"v: 5\n".to_vec(),
            }])
        })
        .expect("write-back from a shallow cache");
    assert!(
        matches!(pushed, Pushed::Commit { attempts: 1, .. }),
        "{pushed:?}"
    );
    assert_eq!(
        git(&up.bare(), &["rev-list", "--count", "main"]),
        "5",
        "the remote keeps its full history"
    );
}

#[test]
fn a_corrupt_object_on_the_server_fails_the_fetch_and_keeps_the_last_snapshot() {
    let p = peer(Transport::File);
    let up = &p.upstream;
    let c1 = up.commit(&[("fleet.yaml", "v: 1\n")], "first");
    up.push();
    let mut source = p.source("main", None);
    source.poll().expect("initial fetch");
    let c2 = up.commit(&[("fleet.yaml", "v: 2\n")], "second");
    up.push();
    // Small pushes arrive as loose objects: garble the new commit's.
    let loose = up.bare().join("objects").join(&c2[..2]).join(&c2[2..]);
    let mut perms = std::fs::metadata(&loose)
        .expect("loose object")
        .permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    std::fs::set_permissions(&loose, perms).expect("writable");
    std::fs::write(&loose, b"not a zlib stream").expect("corrupt");
    let err = source
        .poll()
        .expect_err("the server cannot send the commit");
    assert!(matches!(err, GitError::Remote { .. }), "{err}");
    assert!(err.to_string().contains("(main)"), "{err}");
    assert_eq!(commit_of(&source), c1);
    let cache = up.scratch("cache");
    assert_eq!(git(&cache, &["rev-parse", "refs/flotilla/heads/main"]), c1);
}

#[test]
fn cli_reads_http_credentials_from_a_file_or_the_environment() {
    use crate::support::{stderr, stdout};
    let up = Upstream::new();
    let server = up.http("bot", PASSWORD, true);
    up.commit(
        &[(
            "fleet.yaml",
            &format!("{}clusters: [{{name: c}}]\n", crate::support::HEADER),
        )],
        "first",
    );
    up.push();
    let url = format!("http://127.0.0.1:{}/git/fleet.git", server.port);
    let cache = up.scratch("cli-cache");
    let run = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"));
        cmd.args(["validate", "--repo", &url, "--rev", "main", "--cache"])
            .arg(&cache)
            .args(extra)
            .env_remove("FLOTILLA_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("flotilla runs")
    };
    let out = run(&[], &[]);
    assert_eq!(out.status.code(), Some(2), "anonymous: {}", stderr(&out));

    let file = up.scratch("credentials");
    std::fs::write(&file, format!("bot:{PASSWORD}\n")).expect("write");
    let out = run(&["--credentials-file", file.to_str().expect("utf-8")], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).starts_with("fleet.yaml: valid"),
        "{}",
        stdout(&out)
    );

    let out = run(
        &[
            "--username-env",
            "FLEET_USER",
            "--password-env",
            "FLEET_PASSWORD",
        ],
        &[("FLEET_USER", "bot"), ("FLEET_PASSWORD", "wrong-0ne")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(!stderr(&out).contains("wrong-0ne"), "{}", stderr(&out));
    let out = run(
        &[
            "--username-env",
            "FLEET_USER",
            "--password-env",
            "FLEET_PASSWORD",
        ],
        &[("FLEET_USER", "bot"), ("FLEET_PASSWORD", PASSWORD)],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(&["--password-env", "FLEET_UNSET_VARIABLE"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("FLEET_UNSET_VARIABLE is not set"),
        "{}",
        stderr(&out)
    );
}
