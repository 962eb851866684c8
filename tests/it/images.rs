//! `flotilla images scan|update` against a real registry (Debian's docker-registry, tags
//! pushed through its HTTP API) and real Git servers (git daemon, file://, the git CLI).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::git_support::{Upstream, free_port, git};
use crate::registry_support::{FaultProxy, Registry};
use crate::support::{flotilla, stderr, stdout, workspace};

fn cases_dir() -> PathBuf {
    workspace().join("fixtures").join("images")
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

fn subst(text: &[u8], host: &str) -> String {
    String::from_utf8_lossy(text).replace("REGISTRY", host)
}

/// An upstream whose `main` holds `files` (with REGISTRY replaced).
fn upstream_with(files: &[(String, Vec<u8>)], host: &str) -> Upstream {
    let up = Upstream::new();
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|(p, b)| (p.clone(), subst(b, host)))
        .collect();
    let refs: Vec<(&str, &str)> = texts
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    up.commit(&refs, "fleet");
    up.push();
    up
}

fn bare_git(up: &Upstream, args: &[&str]) -> String {
    git(&up.bare(), args)
}

fn commits(up: &Upstream, rev: &str) -> Vec<String> {
    bare_git(up, &["rev-list", rev])
        .lines()
        .map(str::to_string)
        .collect()
}

fn show(up: &Upstream, rev: &str, path: &str) -> String {
    bare_git(up, &["show", &format!("{rev}:{path}")])
}

/// `flotilla images ARGS --cache SCRATCH --docker-config CONFIG`.
fn images(up: &Upstream, args: &[&str], docker_config: Option<&Path>) -> Output {
    let cache = up.scratch("cache");
    let missing = up.scratch("no-docker-config.json");
    let config = docker_config.unwrap_or(&missing);
    let mut all = vec!["images"];
    all.extend_from_slice(args);
    all.extend([
        "--cache",
        cache.to_str().expect("utf-8"),
        "--docker-config",
        config.to_str().expect("utf-8"),
    ]);
    flotilla(&all)
}

fn file_url(up: &Upstream) -> String {
    format!("file://{}", up.bare().display())
}

/// Lines that differ between `a` and `b` differ only inside one image value: the changed
/// middle (after the common prefix and suffix) looks like a tag, name or digest.
fn only_values_differ(file: &str, a: &str, b: &str) {
    let al: Vec<&str> = a.split('\n').collect();
    let bl: Vec<&str> = b.split('\n').collect();
    assert_eq!(al.len(), bl.len(), "{file}: the number of lines changed");
    for (x, y) in al.iter().zip(&bl) {
        if x == y {
            continue;
        }
        let prefix = x.bytes().zip(y.bytes()).take_while(|(p, q)| p == q).count();
        let suffix = x[prefix..]
            .bytes()
            .rev()
            .zip(y[prefix..].bytes().rev())
            .take_while(|(p, q)| p == q)
            .count();
        let mid = |s: &str| s[prefix..s.len() - suffix].to_string();
        let ok = |m: &str| {
            m.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:@/".contains(c))
        };
        assert!(
            ok(&mid(x)) && ok(&mid(y)),
            "{file}: more than a value changed:\n- {x}\n+ {y}"
        );
    }
}

/// The golden cases: each `fixtures/images/<case>/` is pushed to a git daemon, its tags to the
/// registry, then `images update --push` runs once. A case that expects a change gets exactly
/// one commit whose files equal `expected/` byte for byte; the others get none.
#[test]
fn golden_cases_against_registry_and_git_daemon() {
    let registry = Registry::start();
    let host = registry.host();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("fixtures/images")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.join("original").is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 3, "cases: {cases:?}");
    for case in cases {
        let name = case
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let tags = std::fs::read_to_string(case.join("tags")).expect("tags file");
        let original = files(&case.join("original"));
        // The repositories the policies track (`image: REGISTRY/...` lines of fleet.yaml).
        let fleet = original
            .iter()
            .find(|(p, _)| p == "fleet.yaml")
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .expect("fleet.yaml");
        let repos: Vec<&str> = fleet
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: REGISTRY/"))
            .collect();
        assert!(!repos.is_empty(), "{name}: no policy image");
        for tag in tags.lines().filter(|l| !l.trim().is_empty()) {
            for repo in &repos {
                registry.push(repo, tag.trim());
            }
        }
        let up = upstream_with(&original, &host);
        let daemon = up.daemon();
        let url = format!("git://127.0.0.1:{}/fleet.git", daemon.port);
        let before = commits(&up, "main");
        let out = images(&up, &["update", "--repo", &url, "--push"], None);
        let after = commits(&up, "main");
        let expected_dir = case.join("expected");
        if std::env::var_os("UPDATE_EXPECT").is_some() {
            let _ = std::fs::remove_dir_all(&expected_dir);
            for (path, _) in &original {
                let text = show(&up, "main", path).replace(&host, "REGISTRY");
                let p = expected_dir.join(path);
                std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
                std::fs::write(p, text + "\n").expect("write expected");
            }
        }
        let expected = files(&expected_dir);
        let changed = expected != original;
        // A push that succeeded is success, whether it changed anything or not.
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}{}",
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(
            after.len(),
            before.len() + usize::from(changed),
            "{name}: one commit per update, none without a change"
        );
        if changed {
            let chosen = std::fs::read_to_string(case.join("chosen")).expect("chosen");
            assert!(
                stdout(&out).lines().any(|l| l.contains(" -> ")
                    && (l.ends_with(&format!(" {}", chosen.trim()))
                        || l.ends_with(&format!(":{}", chosen.trim())))),
                "{name}: {}",
                stdout(&out)
            );
            assert_eq!(
                after[1..],
                before[..],
                "{name}: the commit is on top of main"
            );
            let author = bare_git(&up, &["log", "-1", "--format=%an <%ae>%n%B", "main"]);
            assert!(author.contains(" -> "), "{name}: message {author}");
        }
        for (path, bytes) in &expected {
            let want = subst(bytes, &host);
            // `git show` drops the final newline; compare against a checkout of the blob.
            let got = bare_git(&up, &["cat-file", "blob", &format!("main:{path}")]);
            assert_eq!(
                got.trim_end(),
                want.trim_end(),
                "{name}: {path} differs from expected/"
            );
            let orig = original
                .iter()
                .find(|(p, _)| p == path)
                .map(|(_, b)| subst(b, &host))
                .expect("same files");
            only_values_differ(path, &orig, &want);
        }
    }
}

const FLEET: &str = r#"apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: t}
clusters:
  - {name: c1}
bundles:
  - {name: web, path: web.yaml}
placements:
  - name: web
    bundles: [web]
    clusters: {}
    overrides:
      - clusters: {}
        images: [{name: REGISTRY/shop/web, tag: "1.0.0"}]  # pinned
imagePolicies:
  - name: web
    image: REGISTRY/shop/web
    policy: {semver: "POLICY"}
    writeBack: {files: [fleet.yaml], commitMessage: "bump {{image}} {{from}} -> {{to}}"}
"#;

fn simple_upstream(host: &str, policy: &str) -> Upstream {
    let fleet = FLEET.replace("POLICY", policy);
    upstream_with(
        &[
            ("fleet.yaml".into(), fleet.into_bytes()),
            ("web.yaml".into(), b"kind: ConfigMap\n".to_vec()),
        ],
        host,
    )
}

#[test]
fn scan_explains_and_local_update_edits_the_work_tree() {
    let registry = Registry::start();
    registry.push_all(
        "shop/web",
        &["1.0.0", "1.1.0", "1.2.0-rc.1", "2.0.0", "latest"],
    );
    let up = simple_upstream(&registry.host(), "^1.0");
    let work = up.work();
    let out = images(
        &up,
        &["scan", "--repo", work.to_str().expect("utf-8")],
        None,
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("tags considered: 5"), "{text}");
    assert!(text.contains("1.1.0") && text.contains("chosen"), "{text}");
    assert!(text.contains("rejected: pre-release"), "{text}");
    assert!(
        text.contains("2.0.0") && text.contains("rejected: outside"),
        "{text}"
    );
    assert!(text.contains("rejected: not a semantic version"), "{text}");
    assert!(text.contains("fleet.yaml:14:"), "{text}");
    assert!(text.contains("tag 1.0.0 -> 1.1.0"), "{text}");
    // JSON output carries the same.
    let out = images(
        &up,
        &[
            "scan",
            "--repo",
            work.to_str().expect("utf-8"),
            "-o",
            "json",
        ],
        None,
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["policies"][0]["chosen"], "1.1.0");
    assert_eq!(json["changes"][0]["from"], "1.0.0");
    // A dry run writes nothing; an update edits the file in place, and then it is current.
    let before = std::fs::read_to_string(work.join("fleet.yaml")).expect("read");
    let out = images(
        &up,
        &[
            "update",
            "--repo",
            work.to_str().expect("utf-8"),
            "--dry-run",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(work.join("fleet.yaml")).expect("read"),
        before
    );
    // Writing the change is success: exit 0 (with --exit-code: 1, as git diff --exit-code).
    let out = images(
        &up,
        &[
            "update",
            "--repo",
            work.to_str().expect("utf-8"),
            "--exit-code",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let after = std::fs::read_to_string(work.join("fleet.yaml")).expect("read");
    assert_eq!(after, before.replace("tag: \"1.0.0\"", "tag: \"1.1.0\""));
    std::fs::write(work.join("fleet.yaml"), &before).expect("restore");
    let out = images(
        &up,
        &["update", "--repo", work.to_str().expect("utf-8")],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let after = std::fs::read_to_string(work.join("fleet.yaml")).expect("read");
    assert_eq!(after, before.replace("tag: \"1.0.0\"", "tag: \"1.1.0\""));
    let out = images(
        &up,
        &["scan", "--repo", work.to_str().expect("utf-8")],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("tag 1.1.0 (current)"));
}

#[test]
fn a_competing_push_during_the_update_ends_with_both_commits() {
    let registry = Registry::start();
    registry.push_all("shop/web", &["1.0.0", "1.3.0"]);
    let host = registry.host();
    let up = simple_upstream(&host, "^1.0");
    let fleet_text = FLEET.replace("POLICY", "^1.0").replace("REGISTRY", &host);
    let tree = flotilla_source::LocalTree::open(up.work()).expect("work tree");
    let checked = flotilla_spec::check_with(
        "fleet.yaml",
        &fleet_text,
        &tree,
        &flotilla_spec::Limits::default(),
    );
    let fleet = checked.fleet.expect("a valid fleet");
    let registries = flotilla_images::Registries::new(
        &[format!("{host}/shop/web")],
        flotilla_images::Settings::default(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let scans = rt.block_on(flotilla_images::scan(&fleet, &registries, &[]));
    let desired: Vec<_> = scans.iter().filter_map(|s| s.desired().cloned()).collect();
    assert_eq!(desired.len(), 1, "{scans:?}");
    let daemon = up.daemon();
    let remote = flotilla_source::git::Remote::parse(
        &format!("git://127.0.0.1:{}/fleet.git", daemon.port),
        None,
    )
    .expect("remote");
    let mut source = flotilla_source::git::GitSource::open(
        remote,
        flotilla_source::git::Rev::parse("main").expect("rev"),
        up.scratch("cache"),
    )
    .expect("open");
    let batches = flotilla_images::batches(&fleet, &desired, false);
    assert_eq!(batches.len(), 1);
    // After the tool's first fetch, someone else pushes to main (real git CLI).
    let mut competing = String::new();
    let result = flotilla_images::commit_batch(
        &mut source,
        &fleet,
        &batches[0],
        &desired,
        &flotilla_source::git::PushOptions {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            ..Default::default()
        },
        false,
        &mut |attempt| {
            if attempt == 1 {
                competing = up.commit(&[("README.md", "hello\n")], "a colleague's commit");
                up.push();
            }
        },
    )
    .expect("commit");
    let flotilla_images::Committed::Pushed {
        commit, attempts, ..
    } = result.committed
    else {
        panic!("expected a push: {:?}", result.committed);
    };
    assert_eq!(
        attempts, 2,
        "the first push was rejected, the second rebased"
    );
    let history = commits(&up, "main");
    assert_eq!(history[0], commit);
    assert_eq!(
        history[1], competing,
        "the colleague's commit is the parent"
    );
    assert_eq!(show(&up, "main", "README.md"), "hello");
    assert!(show(&up, "main", "fleet.yaml").contains("tag: \"1.3.0\"}]  # pinned"));
    let message = bare_git(&up, &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.starts_with(&format!("bump {host}/shop/web 1.0.0 -> 1.3.0")),
        "{message}"
    );
    assert!(
        message.contains("fleet.yaml:14: 1.0.0 -> 1.3.0"),
        "{message}"
    );
}

#[test]
fn branch_mode_and_dry_run_leave_main_untouched() {
    let registry = Registry::start();
    registry.push_all("shop/web", &["1.0.0", "1.0.1"]);
    let up = simple_upstream(&registry.host(), "~1.0");
    let url = file_url(&up);
    let main_before = commits(&up, "main");
    let out = images(
        &up,
        &["update", "--repo", &url, "--push", "--dry-run"],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("would commit (dry run)"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("1.0.0 -> 1.0.1"));
    assert_eq!(
        commits(&up, "main"),
        main_before,
        "a dry run commits nothing"
    );
    let out = images(
        &up,
        &["update", "--repo", &url, "--push", "--branch-mode"],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(
        commits(&up, "main"),
        main_before,
        "the tracked branch is untouched"
    );
    let branch = commits(&up, "image-updates/web");
    assert_eq!(branch.len(), main_before.len() + 1);
    assert_eq!(branch[1..], main_before[..], "created from the tracked tip");
    assert!(show(&up, "image-updates/web", "fleet.yaml").contains("tag: \"1.0.1\""));
    // A newer tag replaces the branch's commit, again on the tracked tip.
    registry.push("shop/web", "1.0.2");
    let out = images(
        &up,
        &["update", "--repo", &url, "--push", "--branch-mode"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let branch = commits(&up, "image-updates/web");
    assert_eq!(branch[1..], main_before[..]);
    assert!(show(&up, "image-updates/web", "fleet.yaml").contains("tag: \"1.0.2\""));
    assert_eq!(commits(&up, "main"), main_before);
    // Nothing new: the branch keeps its commit.
    let out = images(
        &up,
        &["update", "--repo", &url, "--push", "--branch-mode"],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("image-updates/web: up to date"),
        "{}",
        stdout(&out)
    );
    assert_eq!(commits(&up, "image-updates/web"), branch);
}

#[test]
fn basic_auth_registry_needs_the_docker_config() {
    let registry = Registry::start_with_auth("bot", "s3cret-pw");
    registry.push_all("shop/web", &["1.0.0", "1.1.0"]);
    let up = simple_upstream(&registry.host(), "^1.0");
    let url = file_url(&up);
    let before = commits(&up, "main");
    // Without credentials: a clear error, nothing committed.
    let out = images(&up, &["update", "--repo", &url, "--push"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("not authorized"), "{err}");
    assert!(err.contains("no credentials"), "{err}");
    assert_eq!(commits(&up, "main"), before);
    // With a docker config.json: the update goes through; the password is never printed.
    let config = up.scratch("docker-config.json");
    let auth = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode("bot:s3cret-pw")
    };
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            registry.host()
        ),
    )
    .expect("write config");
    let out = images(&up, &["update", "--repo", &url, "--push"], Some(&config));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(!stdout(&out).contains("s3cret") && !stderr(&out).contains("s3cret"));
    assert_eq!(commits(&up, "main").len(), before.len() + 1);
    assert!(show(&up, "main", "fleet.yaml").contains("tag: \"1.1.0\""));
    // A wrong password is refused as clearly.
    std::fs::write(
        &config,
        format!(
            r#"{{"auths": {{"{}": {{"username": "bot", "password": "wrong"}}}}}}"#,
            registry.host()
        ),
    )
    .expect("write config");
    let out = images(&up, &["scan", "--repo", &url], Some(&config));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("were refused"), "{}", stderr(&out));
}

#[test]
fn registry_down_and_policy_without_match_commit_nothing() {
    // Nothing listens on this port.
    let host = format!("127.0.0.1:{}", free_port());
    let up = simple_upstream(&host, "^1.0");
    let url = file_url(&up);
    let before = commits(&up, "main");
    let out = images(&up, &["update", "--repo", &url, "--push"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("unavailable after 4 attempts"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("nothing written for it"));
    assert_eq!(commits(&up, "main"), before);

    let registry = Registry::start();
    registry.push_all("shop/web", &["0.9.0", "2.0.0", "latest"]);
    let up = simple_upstream(&registry.host(), "^1.0");
    let url = file_url(&up);
    let before = commits(&up, "main");
    let out = images(&up, &["update", "--repo", &url, "--push"], None);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("no tag of 3 is in the range ^1.0"),
        "{}",
        stderr(&out)
    );
    assert_eq!(commits(&up, "main"), before);
}

#[test]
fn a_marker_without_its_field_is_reported_with_file_and_line() {
    let registry = Registry::start();
    registry.push_all("shop/web", &["1.0.0", "1.1.0"]);
    let host = registry.host();
    let fleet = FLEET
        .replace("POLICY", "^1.0")
        .replace("fleet.yaml]", "fleet.yaml, app.yaml]");
    let up = upstream_with(
        &[
            ("fleet.yaml".into(), fleet.into_bytes()),
            ("web.yaml".into(), b"kind: ConfigMap\n".to_vec()),
            (
                "app.yaml".into(),
                b"spec:\n  # the image line was removed:\n  # {\"$imagepolicy\": \"web\"}\n  replicas: 2\n"
                    .to_vec(),
            ),
        ],
        &host,
    );
    let url = file_url(&up);
    let out = images(&up, &["update", "--repo", &url, "--push"], None);
    // The fleet.yaml value is still updated; the stale marker is an error with its line.
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("app.yaml:3: policy web:"),
        "{}",
        stderr(&out)
    );
    assert!(show(&up, "main", "fleet.yaml").contains("tag: \"1.1.0\""));
}

#[test]
fn registry_429_and_5xx_are_retried_with_backoff() {
    let registry = Registry::start();
    registry.push_all("shop/web", &["1.0.0", "1.2.0"]);
    // Two attempts fail (each: the /v2/ probe and the tag list), the third goes through.
    let proxy = FaultProxy::start(registry.port, &[503, 503, 429, 429]);
    let host = format!("127.0.0.1:{}", proxy.port);
    let up = simple_upstream(&host, "^1.0");
    let work = up.work();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["images", "scan", "--repo", work.to_str().expect("utf-8")])
        .arg("--docker-config")
        .arg(up.scratch("none.json"))
        .env("FLOTILLA_LOG", "flotilla_images=info")
        .output()
        .expect("flotilla runs");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("chosen: 1.2.0"), "{}", stdout(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("backing off").count(), 2, "{err}");
    assert!(
        err.contains("code: 503") && err.contains("code: 429"),
        "{err}"
    );
    assert_eq!(proxy.faulted.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[test]
fn digest_policy_pins_the_digest_behind_a_mutable_tag() {
    let registry = Registry::start();
    let host = registry.host();
    let first = registry.push("shop/web", "stable");
    registry.push("shop/web", "1.0.0");
    let fleet = FLEET
        .replace("{semver: \"POLICY\"}", "{digest: {tag: stable}}")
        .replace("fleet.yaml]", "app.yaml]");
    let up = upstream_with(
        &[
            ("fleet.yaml".into(), fleet.into_bytes()),
            ("web.yaml".into(), b"kind: ConfigMap\n".to_vec()),
            (
                "app.yaml".into(),
                b"image: REGISTRY/shop/web:stable # {\"$imagepolicy\": \"web\"}\ntag: stable # {\"$imagepolicy\": \"web:tag\"}\n".to_vec(),
            ),
        ],
        &host,
    );
    let work = up.work();
    let repo = work.to_str().expect("utf-8");
    let out = images(&up, &["update", "--repo", repo], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = std::fs::read_to_string(work.join("app.yaml")).expect("read");
    assert_eq!(
        text,
        format!(
            "image: {host}/shop/web:stable@{first} # {{\"$imagepolicy\": \"web\"}}\ntag: stable@{first} # {{\"$imagepolicy\": \"web:tag\"}}\n"
        )
    );
    // The tag moves: the next update follows it.
    let second = registry.push("shop/web", "stable");
    assert_ne!(first, second);
    let out = images(&up, &["scan", "--repo", repo], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!("digest: {second}")),
        "{}",
        stdout(&out)
    );
    let out = images(&up, &["update", "--repo", repo], None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = std::fs::read_to_string(work.join("app.yaml")).expect("read");
    assert!(text.contains(&format!("stable@{second} #")), "{text}");
    assert!(!text.contains(&first));
}
