//! `flotilla diff --base REF --head REF`: review diffs of two Git revisions, no clusters.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{stderr, stdout};

const SECRET_OLD: &str = "hunter2-plain";
const SECRET_NEW: &str = "s3cret-rotated";

fn fleet(web_clusters: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: pr}}
clusters:
  - {{name: c1}}
  - {{name: c2}}
  - {{name: c3}}
bundles:
  - {{name: app, path: app, namespace: shop}}
  - {{name: sec, path: sec, namespace: shop}}
placements:
  - name: web
    bundles: [app]
    clusters: {{names: [{web_clusters}]}}
    rollout:
      batches:
        - clusters: {{names: [c1]}}
        - percent: 100
  - name: creds
    bundles: [sec]
    clusters: {{}}
"
    )
}

fn configmap(name: &str, color: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}}}\ndata: {{color: {color}}}\n"
    )
}

fn secret(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: db}}\nstringData: {{password: {value}}}\n"
    )
}

fn base64(s: &str) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(T[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    fn path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    fn git(&self, args: &[&str]) {
        let o = Command::new("git")
            .arg("-C")
            .arg(self.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .output()
            .expect("git runs");
        assert!(o.status.success(), "git {args:?}: {}", stderr(&o));
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.path().join(rel)).expect("remove");
    }

    fn commit(&self, tag: &str) {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", tag]);
        self.git(&["tag", tag]);
    }

    fn diff(&self, base: &str, head: &str, extra: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["diff", "--base", base, "--head", head])
            .args(extra)
            .arg("--repo")
            .arg(self.path())
            .arg("--cache")
            .arg(self.dir.path().join("cache"))
            .env_remove("FLOTILLA_LOG")
            .output()
            .expect("flotilla runs")
    }
}

/// Tags: v1 (base), same (README only), v2 (web's ConfigMap changed, one object added, one
/// removed), v3 (Secret rotated), bad (invalid fleet.yaml).
fn repo() -> Repo {
    let r = Repo {
        dir: tempfile::tempdir().expect("temp dir"),
    };
    std::fs::create_dir_all(r.path()).expect("mkdir");
    r.git(&["init", "-q", "-b", "main"]);
    r.write("fleet.yaml", &fleet("c1, c2"));
    r.write("app/settings.yaml", &configmap("settings", "blue"));
    r.write("app/old.yaml", &configmap("old", "grey"));
    r.write("sec/db.yaml", &secret(SECRET_OLD));
    r.commit("v1");
    r.write("README.md", "docs only\n");
    r.commit("same");
    r.write("app/settings.yaml", &configmap("settings", "green"));
    r.write("app/extra.yaml", &configmap("extra", "red"));
    r.remove("app/old.yaml");
    r.commit("v2");
    r.write("sec/db.yaml", &secret(SECRET_NEW));
    r.commit("v3");
    r.write(
        "fleet.yaml",
        &fleet("c1, c2").replace("percent: 100", "percent: many"),
    );
    r.commit("bad");
    r
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn prdiff_review_of_revisions() {
    let r = repo();

    // No change to any rendered object.
    let o = r.diff("v1", "same", &[]);
    assert_eq!(code(&o), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("no changes"), "{}", stdout(&o));

    // A changed ConfigMap on a placement of 2 of 3 clusters, an added and a removed object.
    let o = r.diff("v1", "v2", &[]);
    let out = stdout(&o);
    assert_eq!(code(&o), Some(1), "{out}{}", stderr(&o));
    // c1 and c2 get the same change: it is printed once, with both names.
    assert!(
        out.contains("placement web: +1 ~1 -1 on 2 clusters: c1, c2\n"),
        "{out}"
    );
    assert_eq!(out.matches("~ ConfigMap/shop/settings").count(), 1, "{out}");
    // Not a word of its own anywhere (a commit id in the header may hold the letters "c3").
    assert!(
        !out.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| w == "c3"),
        "{out}"
    );
    assert!(out.contains("~ ConfigMap/shop/settings"), "{out}");
    assert!(out.contains("fields: data.color"), "{out}");
    assert!(
        out.contains("-  color: blue") || out.contains("- color: blue"),
        "{out}"
    );
    assert!(out.contains("+ ConfigMap/shop/extra"), "{out}");
    assert!(out.contains("- ConfigMap/shop/old"), "{out}");
    let canary = out.find("batch 1 (canary): c1").expect(&out);
    let rest = out.find("batch 2 (100%): c2").expect(&out);
    assert!(canary < rest, "{out}");

    // A remote-tracking branch as the base (what CI passes: origin/main).
    r.git(&["update-ref", "refs/remotes/origin/main", "v1"]);
    let o = r.diff("origin/main", "v2", &[]);
    assert_eq!(code(&o), Some(1), "{}{}", stdout(&o), stderr(&o));

    // Secrets: only markers, never the values, plain or base64.
    for format in ["text", "markdown", "json"] {
        let o = r.diff("v2", "v3", &["--format", format]);
        let out = stdout(&o);
        assert_eq!(code(&o), Some(1), "{out}{}", stderr(&o));
        assert!(out.contains("Secret/shop/db"), "{out}");
        assert!(out.contains("(secret value, changed)"), "{out}");
        for v in [SECRET_OLD, SECRET_NEW] {
            assert!(!out.contains(v), "{format} shows {v}: {out}");
            assert!(
                !out.contains(&base64(v)),
                "{format} shows base64 of {v}: {out}"
            );
        }
    }

    // An invalid head: exit 2 with file:line:col.
    let o = r.diff("v3", "bad", &[]);
    let out = stdout(&o);
    assert_eq!(code(&o), Some(2), "{out}{}", stderr(&o));
    let re = regex::Regex::new(r"fleet\.yaml:\d+:\d+: error").expect("regex");
    assert!(re.is_match(&out), "{out}");

    // An unknown ref: exit 2.
    let o = r.diff("v1", "no-such-ref", &[]);
    assert_eq!(code(&o), Some(2), "{}{}", stdout(&o), stderr(&o));

    // Markdown for a PR comment: the summary table first, then <details> per distinct change.
    let o = r.diff("v1", "v2", &["--format", "markdown"]);
    let out = stdout(&o);
    assert_eq!(code(&o), Some(1), "{out}");
    let table = out.find("| Placement | Clusters | Changes |").expect(&out);
    let details = out.find("<details>").expect(&out);
    assert!(table < details, "{out}");
    assert!(out.contains("| `web` | c1, c2 | +1 ~1 -1 |"), "{out}");
    assert_eq!(out.matches("<details>").count(), 1, "{out}");
    assert!(out.contains("```diff"), "{out}");
    assert!(out.len() < 65_536);

    // JSON parses, written with --out.
    let file = r.dir.path().join("review.json");
    let file_str = file.to_str().expect("utf-8");
    let o = r.diff("v1", "v2", &["--format", "json", "--out", file_str]);
    assert_eq!(code(&o), Some(1), "{}", stderr(&o));
    let text = std::fs::read_to_string(Path::new(&file)).expect("written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let clusters = v["clusters"].as_array().expect("clusters");
    let names: Vec<&str> = clusters.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["c1", "c2"]);
    assert_eq!(v["rollouts"][0]["batches"][0]["label"], "canary");
    assert_eq!(v["groups"][0]["clusters"], serde_json::json!(["c1", "c2"]));
}

#[test]
fn prdiff_modes_are_exclusive() {
    let o = crate::support::flotilla(&["diff", "--live", "--base", "a", "--head", "b"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    // Neither mode: the error names both.
    let o = crate::support::flotilla(&["diff"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--live"), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("--base REF --head REF"),
        "{}",
        stderr(&o)
    );
    let o = crate::support::flotilla(&["diff", "--base", "a"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
}

/// Copies `from` (a directory tree) into `to`, replacing what `to` held (but `.git`).
fn replace_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(to).expect("read repo") {
        let p = entry.expect("entry").path();
        if p.file_name().is_some_and(|n| n == ".git") {
            continue;
        }
        if p.is_dir() {
            std::fs::remove_dir_all(&p).expect("rm");
        } else {
            std::fs::remove_file(&p).expect("rm");
        }
    }
    copy_tree(from, to);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read fixture") {
        let p = entry.expect("entry").path();
        let dest = to.join(p.file_name().expect("name"));
        if p.is_dir() {
            copy_tree(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).expect("copy");
        }
    }
}

/// `fixtures/prdiff/<case>/`: base/ and head/ committed with fixed identities and dates (the
/// same commit ids everywhere), then `flotilla diff` in each format against expected.*.
#[test]
fn prdiff_golden_cases() {
    let root = crate::support::workspace().join("fixtures/prdiff");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("fixtures/prdiff")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("base").is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "{cases:?}");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for case in &cases {
        let dir = tempfile::tempdir().expect("tmp");
        let repo = dir.path().join("repo");
        std::fs::create_dir_all(&repo).expect("mkdir");
        let git = |args: &[&str]| {
            let o = Command::new("git")
                .arg("-C")
                .arg(&repo)
                .args(args)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_AUTHOR_NAME", "Fixture")
                .env("GIT_AUTHOR_EMAIL", "fixture@example.com")
                .env("GIT_COMMITTER_NAME", "Fixture")
                .env("GIT_COMMITTER_EMAIL", "fixture@example.com")
                .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
                .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
                .output()
                .expect("git runs");
            assert!(o.status.success(), "git {args:?}: {}", stderr(&o));
        };
        git(&["init", "-q", "-b", "main"]);
        for side in ["base", "head"] {
            replace_tree(&case.join(side), &repo);
            git(&["add", "-A"]);
            git(&["commit", "-q", "--allow-empty", "-m", side]);
            git(&["tag", side]);
        }
        for (format, file) in [
            ("text", "expected.txt"),
            ("markdown", "expected.md"),
            ("json", "expected.json"),
        ] {
            let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
                .args(["diff", "--repo"])
                .arg(&repo)
                .args([
                    "--base", "base", "--head", "head", "--format", format, "--cache",
                ])
                .arg(dir.path().join("cache"))
                .env_remove("FLOTILLA_LOG")
                .output()
                .expect("flotilla runs");
            let out = stdout(&o);
            let code = o.status.code().map(|c| c.to_string()).unwrap_or_default();
            if update {
                std::fs::write(case.join(file), &out).expect("write expected");
                std::fs::write(case.join("exit"), format!("{code}\n")).expect("write exit");
                continue;
            }
            let want = std::fs::read_to_string(case.join(file)).unwrap_or_default();
            let want_code = std::fs::read_to_string(case.join("exit")).unwrap_or_default();
            if out != want || code != want_code.trim() {
                failures.push(format!(
                    "{} ({format}): exit {code} (want {}), stdout:\n{out}\n--- want:\n{want}\n--- stderr:\n{}",
                    case.display(),
                    want_code.trim(),
                    stderr(&o)
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// `--base`, `--head` and `--rev` take what `git rev-parse` takes for a local repository.
#[test]
fn prdiff_revisions_like_git() {
    let r = repo();
    // HEAD is `bad`; HEAD~1 is v3 (Secret rotated), HEAD~2 is v2.
    for (base, head) in [("HEAD~2", "HEAD~1"), ("HEAD^^", "HEAD^"), ("v2", "main~1")] {
        let o = r.diff(base, head, &[]);
        let out = stdout(&o);
        assert_eq!(code(&o), Some(1), "{base}..{head}: {out}{}", stderr(&o));
        assert!(out.contains("Secret/shop/db"), "{base} {head}: {out}");
        assert!(
            !out.contains("ConfigMap/shop/settings"),
            "{base} {head}: {out}"
        );
    }

    // Short commit ids.
    let short = |rev: &str| {
        let o = Command::new("git")
            .arg("-C")
            .arg(r.path())
            .args(["rev-parse", "--short=8", rev])
            .output()
            .expect("git runs");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let (v1, v2) = (short("v1"), short("v2"));
    let o = r.diff(&v1, &v2, &[]);
    let out = stdout(&o);
    assert_eq!(code(&o), Some(1), "{out}{}", stderr(&o));
    assert!(out.contains("~ ConfigMap/shop/settings"), "{out}");
    assert!(out.contains(&format!("base {}", &v1[..8])), "{out}");

    // A...B: the merge base, as a pull request compares. `feature` forks from `same` and
    // changes one colour; main moved on (v2, v3, bad) meanwhile.
    r.git(&["checkout", "-q", "-b", "feature", "same"]);
    r.write("app/settings.yaml", &configmap("settings", "purple"));
    r.commit("feat");
    r.git(&["checkout", "-q", "main"]);
    let o = r.diff("main...feature", "feature", &[]);
    let out = stdout(&o);
    assert_eq!(code(&o), Some(1), "{out}{}", stderr(&o));
    assert!(out.contains("+  color: purple"), "{out}");
    assert!(out.contains("-  color: blue"), "{out}");
    assert!(!out.contains("ConfigMap/shop/extra"), "{out}");
    assert!(!out.contains("Secret/shop/db"), "{out}");

    // Revisions that do not exist, and ranges: exit 2, naming the revision.
    for (base, head, says) in [
        ("v1", "no-such-ref", "\"no-such-ref\""),
        ("HEAD~99", "HEAD", "\"HEAD~99\""),
        ("v1", "deadbeef", "\"deadbeef\""),
        ("v1..v2", "v2", "A...B"),
    ] {
        let o = r.diff(base, head, &[]);
        let err = stderr(&o);
        assert_eq!(code(&o), Some(2), "{base} {head}: {}{err}", stdout(&o));
        assert!(err.contains(says), "{base} {head}: {err}");
        assert!(!err.contains("on the remote"), "{err}");
    }

    // --rev on other commands: HEAD~1 (v3) is valid, HEAD (bad) is not.
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .arg("--repo")
            .arg(r.path())
            .env_remove("FLOTILLA_LOG")
            .output()
            .expect("flotilla runs")
    };
    let o = run(&["validate", "--rev", "HEAD~1"]);
    assert_eq!(code(&o), Some(0), "{}{}", stdout(&o), stderr(&o));
    let o = run(&["validate", "--rev", "HEAD"]);
    assert_eq!(code(&o), Some(1), "{}{}", stdout(&o), stderr(&o));
    let o = run(&["render", "--rev", &short("v1"), "--cluster", "c1"]);
    assert_eq!(code(&o), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("color: blue"), "{}", stdout(&o));
    let o = run(&["render", "--rev", "v1~1"]);
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("\"v1~1\""), "{}", stderr(&o));

    // A URL cannot be rev-parsed: the error says what to do.
    let url = format!("file://{}", r.path().display());
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["validate", "--repo", &url, "--rev", "HEAD~1", "--cache"])
        .arg(r.dir.path().join("cache"))
        .output()
        .expect("flotilla runs");
    assert_eq!(code(&o), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("local clone"), "{}", stderr(&o));
}
