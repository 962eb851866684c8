//! Signed commits end to end: the real `flotilla serve` with `--verify-commits` against a
//! `git daemon` upstream whose commits are signed by the real `git` CLI (SSH keys from
//! `ssh-keygen`, OpenPGP keys from `gpg` in a throwaway GNUPGHOME), and `flotilla images
//! update --signing-key` commits checked by `git verify-commit` and by flotilla. A missing
//! tool fails the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::daemon::{NAMESPACE, all, deployment, fleet, images, sim};
use crate::git_support::{Upstream, git, git_command};
use crate::registry_support::Registry;
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::{SimKube, flotilla, stderr, stdout};

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: the signed-commit tests need git, ssh-keygen (openssh-client) and gpg (gnupg)"
    );
}

fn run(mut cmd: Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Signing keys in a temporary directory: SSH keys and a GNUPGHOME of their own.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn new() -> Keys {
        require("git");
        require("ssh-keygen");
        require("gpg");
        let dir = tempfile::tempdir().expect("tmp");
        let gnupg = dir.path().join("gnupg");
        std::fs::create_dir_all(&gnupg).expect("mkdir");
        let mut perms = std::fs::metadata(&gnupg).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
        std::fs::set_permissions(&gnupg, perms).expect("chmod");
        Keys { dir }
    }

    fn gnupg(&self) -> PathBuf {
        self.dir.path().join("gnupg")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `ssh-keygen -t ed25519`; returns (private key path, public key line, fingerprint).
    fn ssh(&self, name: &str) -> (PathBuf, String, String) {
        let key = self.path(name);
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key);
        run(cmd);
        let public = std::fs::read_to_string(key.with_extension("pub")).expect("pub");
        let mut cmd = Command::new("ssh-keygen");
        cmd.arg("-lf").arg(key.with_extension("pub"));
        let fingerprint = run(cmd)
            .split_whitespace()
            .nth(1)
            .expect("fingerprint")
            .to_string();
        (key, public.trim().to_string(), fingerprint)
    }

    fn gpg(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("gpg");
        cmd.args(["--batch", "--no-tty", "--quiet"])
            .args(args)
            .env("GNUPGHOME", self.gnupg());
        run(cmd)
    }

    /// A new Ed25519 OpenPGP key without passphrase; returns its fingerprint.
    fn pgp(&self, uid: &str) -> String {
        self.gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "ed25519",
            "sign",
            "never",
        ]);
        self.gpg(&["--with-colons", "--list-keys", uid])
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() == 40))
            .expect("a fingerprint")
            .to_string()
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        // The agent `gpg` started for this GNUPGHOME.
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", self.gnupg())
            .output();
    }
}

/// How a test commit is signed.
enum Sign<'a> {
    Unsigned,
    Ssh(&'a Path),
    Pgp(&'a str),
}

/// Writes `files` in the upstream's work clone and commits them, signed as asked (with the
/// real `git`); returns the commit id. Does not push.
fn commit(up: &Upstream, keys: &Keys, files: &[(&str, &str)], message: &str, sign: Sign) -> String {
    let work = up.work();
    for (path, content) in files {
        let p = work.join(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, content).expect("write");
        git(&work, &["add", path]);
    }
    let mut args: Vec<String> = Vec::new();
    match &sign {
        Sign::Unsigned => {}
        Sign::Ssh(key) => args.extend([
            "-c".into(),
            "gpg.format=ssh".into(),
            "-c".into(),
            format!("user.signingkey={}", key.display()),
        ]),
        Sign::Pgp(fpr) => args.extend([
            "-c".into(),
            "gpg.format=openpgp".into(),
            "-c".into(),
            format!("user.signingkey={fpr}"),
        ]),
    }
    args.extend(["commit", "--quiet", "--allow-empty", "-m", message].map(String::from));
    if !matches!(sign, Sign::Unsigned) {
        args.push("-S".into());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = git_command(&work, &refs)
        .env("GNUPGHOME", keys.gnupg())
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git commit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    git(&work, &["rev-parse", "HEAD"])
}

fn fleet_files(image: &str) -> Vec<(&'static str, String)> {
    vec![
        ("fleet.yaml", fleet(2, "0s", "")),
        ("app/ns.yaml", NAMESPACE.to_string()),
        ("app/web.yaml", deployment(image)),
    ]
}

fn refs<'a>(files: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(p, t)| (*p, t.as_str())).collect()
}

fn start(k: &SimKube, up: &Upstream, git_port: u16, extra: &[&str]) -> ServeProcess {
    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{git_port}/fleet.git"))
        .args(["--ref", "main", "--kubeconfig"])
        .arg(&k.kubeconfig)
        .arg("--state")
        .arg(up.scratch("state"))
        .arg("--cache")
        .arg(up.scratch("cache"))
        .args(["--poll-interval", "300ms"])
        .args(extra);
    ServeProcess::spawn(cmd, port)
}

fn wait_rejected(d: &ServeProcess, commit: &str) -> serde_json::Value {
    d.wait_for(
        &format!("commit {commit} rejected"),
        Duration::from_secs(30),
        || d.json("/api/v1/fleet")["rejected"]["commit"] == commit,
    );
    d.json("/api/v1/fleet")
}

#[test]
fn signed_daemon_deploys_only_commits_signed_by_trusted_keys() {
    let keys = Keys::new();
    let (alice, alice_pub, alice_fp) = keys.ssh("alice");
    let (mallory, _, mallory_fp) = keys.ssh("mallory");
    let dave = keys.pgp("Dave <dave@example.com>");
    let allowed = keys.path("allowed_signers");
    std::fs::write(
        &allowed,
        format!("alice@example.com namespaces=\"git\" {alice_pub}\n"),
    )
    .expect("write");
    let trusted_keys = keys.path("trusted.asc");
    std::fs::write(&trusted_keys, keys.gpg(&["--armor", "--export", &dave])).expect("write");

    let k = SimKube::start(sim(2));
    let up = Upstream::new();
    let first = commit(
        &up,
        &keys,
        &refs(&fleet_files("web:1")),
        "web 1",
        Sign::Ssh(&alice),
    );
    up.push();
    let git_server = up.daemon();
    let d = start(
        &k,
        &up,
        git_server.port,
        &[
            "--verify-commits",
            "--trusted-signers",
            allowed.to_str().expect("utf-8"),
            "--trusted-keys",
            trusted_keys.to_str().expect("utf-8"),
        ],
    );
    d.wait_for(
        "the SSH-signed commit rolled out",
        Duration::from_secs(60),
        || images(&k, 2) == all(2, "web:1"),
    );
    assert_eq!(
        d.json("/api/v1/fleet")["revision"]["commit"],
        first.as_str()
    );
    assert!(
        d.log()
            .contains(&format!("SSH key {alice_fp} (alice@example.com)")),
        "the log names the signer: {}",
        d.log()
    );

    // Unsigned: rejected with the commit id; web:1 keeps running.
    let unsigned = commit(
        &up,
        &keys,
        &refs(&fleet_files("web:2")),
        "web 2",
        Sign::Unsigned,
    );
    up.push();
    let status = wait_rejected(&d, &unsigned);
    assert_eq!(
        status["rejected"]["signature"]["reason"],
        "the commit is not signed"
    );
    assert_eq!(
        status["rejected"]["signature"]["signer"],
        serde_json::Value::Null
    );
    assert_eq!(
        status["rejected"]["errors"][0]["text"],
        format!("commit {unsigned}: the commit is not signed").as_str()
    );
    assert_eq!(status["revision"]["commit"], first.as_str(), "{status}");

    // Signed by a key nobody trusts: rejected naming the signer's key.
    let stranger = commit(
        &up,
        &keys,
        &refs(&fleet_files("web:3")),
        "web 3",
        Sign::Ssh(&mallory),
    );
    up.push();
    let status = wait_rejected(&d, &stranger);
    assert_eq!(
        status["rejected"]["signature"]["signer"],
        format!("SSH key {mallory_fp}").as_str(),
        "{status}"
    );
    let reason = status["rejected"]["signature"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(reason.contains("not in the trusted signers"), "{reason}");
    let (_, metrics) = d.get("/metrics").expect("metrics");
    assert!(metrics.contains("flotilla_fleet_valid 0"), "{metrics}");
    assert!(
        metrics.contains("flotilla_commits_unverified_total 2"),
        "{metrics}"
    );
    assert!(d.log().contains(&mallory_fp), "the log names the signer");
    // `flotilla status` reports it and exits 1.
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args([
            "status",
            "--server",
            &format!("http://127.0.0.1:{}", d.port),
        ])
        .output()
        .expect("flotilla status runs");
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("commit {stranger} rejected")),
        "{out}"
    );
    assert!(out.contains(&mallory_fp), "{out}");

    // A trusted signature on a commit changed after signing (the message here): a bad
    // signature. The forged commit replaces the signed one, which is never pushed.
    let work = up.work();
    let signed = commit(
        &up,
        &keys,
        &refs(&fleet_files("web:4")),
        "web 4",
        Sign::Ssh(&alice),
    );
    let raw = git(&work, &["cat-file", "commit", &signed]);
    std::fs::write(up.scratch("forged"), format!("{raw}\nforged\n")).expect("write");
    let forged_path = up.scratch("forged");
    let forged = git(
        &work,
        &[
            "hash-object",
            "-t",
            "commit",
            "-w",
            forged_path.to_str().expect("utf-8"),
        ],
    );
    git(&work, &["reset", "--quiet", "--hard", &forged]);
    up.push();
    let status = wait_rejected(&d, &forged);
    let reason = status["rejected"]["signature"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "bad signature by SSH key {alice_fp} (alice@example.com)"
        )),
        "{reason}"
    );
    // Throughout, the clusters ran the last good revision.
    assert_eq!(images(&k, 2), all(2, "web:1"));
    assert_eq!(
        d.json("/api/v1/fleet")["revision"]["commit"],
        first.as_str()
    );

    // A commit signed by the trusted OpenPGP key: deployed, the rejection cleared.
    let good = commit(
        &up,
        &keys,
        &refs(&fleet_files("web:5")),
        "web 5",
        Sign::Pgp(&dave),
    );
    up.push();
    d.wait_for(
        "the OpenPGP-signed commit rolled out",
        Duration::from_secs(60),
        || images(&k, 2) == all(2, "web:5"),
    );
    let status = d.json("/api/v1/fleet");
    assert_eq!(status["revision"]["commit"], good.as_str());
    assert!(status["rejected"].is_null(), "{status}");
}

#[test]
fn signed_fleet_asking_for_verification_stops_a_daemon_without_keys() {
    let keys = Keys::new();
    let k = SimKube::start(sim(2));
    let up = Upstream::new();
    let first = commit(
        &up,
        &keys,
        &refs(&fleet_files("web:1")),
        "web 1",
        Sign::Unsigned,
    );
    up.push();
    let git_server = up.daemon();
    let d = start(&k, &up, git_server.port, &[]);
    d.wait_for("web:1 rolled out", Duration::from_secs(60), || {
        images(&k, 2) == all(2, "web:1")
    });
    // The fleet asks for signed commits; this daemon was given no keys: nothing of the
    // repository runs from now on (the commit asking for it included).
    let asking = commit(
        &up,
        &keys,
        &[
            ("fleet.yaml", &fleet(2, "0s", "  verifyCommits: true\n")),
            ("app/web.yaml", &deployment("web:2")),
        ],
        "web 2, verify commits",
        Sign::Unsigned,
    );
    up.push();
    let status = wait_rejected(&d, &asking);
    let reason = status["rejected"]["signature"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("settings.verifyCommits: true")
            && reason.contains("--verify-commits")
            && reason.contains("--trusted-signers"),
        "{reason}"
    );
    assert_eq!(status["revision"]["commit"], first.as_str());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(images(&k, 2), all(2, "web:1"));
}

#[test]
fn signed_settings_are_checked_before_the_daemon_starts() {
    let keys = Keys::new();
    let (_, alice_pub, _) = keys.ssh("alice");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .arg("serve")
            .args(["--repo", "file:///nonexistent", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("HOME", keys.dir.path())
            .env_remove("XDG_STATE_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("FLOTILLA_VERIFY_COMMITS")
            .output()
            .expect("runs");
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        stderr(&o)
    };
    let err = run(&["--verify-commits"]);
    assert!(
        err.contains("--verify-commits: needs the keys to trust"),
        "{err}"
    );
    let allowed = keys.path("allowed");
    std::fs::write(&allowed, format!("alice@example.com {alice_pub}\n")).expect("write");
    let a = allowed.to_str().expect("utf-8");
    let err = run(&["--trusted-signers", a]);
    assert!(
        err.contains("--trusted-signers: has no effect without --verify-commits"),
        "{err}"
    );
    let ca = keys.path("ca");
    std::fs::write(
        &ca,
        format!("# ok\n*@example.com cert-authority {alice_pub}\n"),
    )
    .expect("write");
    let err = run(&[
        "--verify-commits",
        "--trusted-signers",
        ca.to_str().expect("utf-8"),
    ]);
    assert!(
        err.contains(&format!(
            "{}:2: cert-authority is not supported",
            ca.display()
        )),
        "{err}"
    );
    let err = run(&["--verify-commits", "--trusted-keys", a]);
    assert!(
        err.contains("--trusted-keys")
            && err.contains("no \"-----BEGIN PGP PUBLIC KEY BLOCK-----\""),
        "{err}"
    );
    let err = run(&["--signing-key", a]);
    assert!(
        err.contains("--signing-key") && err.contains("not an OpenSSH private key"),
        "{err}"
    );
}

const IMAGE_FLEET: &str = r#"apiVersion: flotilla.dev/v1alpha1
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
        images: [{name: REGISTRY/shop/web, tag: "1.0.0"}]
imagePolicies:
  - name: web
    image: REGISTRY/shop/web
    policy: {semver: "~1.0"}
    writeBack: {files: [fleet.yaml], commitMessage: "bump {{image}} {{from}} -> {{to}}"}
"#;

#[test]
fn signed_images_update_commits_verify_with_git_and_flotilla() {
    let keys = Keys::new();
    let (bot, bot_pub, bot_fp) = keys.ssh("bot");
    let registry = Registry::start();
    registry.push_all("shop/web", &["1.0.0", "1.0.1"]);
    let up = Upstream::new();
    let fleet_text = IMAGE_FLEET.replace("REGISTRY", &registry.host());
    commit(
        &up,
        &keys,
        &[
            ("fleet.yaml", &fleet_text),
            ("web.yaml", "kind: ConfigMap\n"),
        ],
        "fleet",
        Sign::Ssh(&bot),
    );
    up.push();
    let url = format!("file://{}", up.bare().display());
    let cache = up.scratch("cache");
    let o = flotilla(&[
        "images",
        "update",
        "--repo",
        &url,
        "--push",
        "--signing-key",
        bot.to_str().expect("utf-8"),
        "--cache",
        cache.to_str().expect("utf-8"),
        "--docker-config",
        up.scratch("none.json").to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let head = git(&up.bare(), &["rev-parse", "main"]);
    let subject = git(&up.bare(), &["log", "-1", "--format=%s", "main"]);
    assert!(subject.contains("1.0.0 -> 1.0.1"), "{subject}");
    // git accepts flotilla's signature...
    let allowed = keys.path("allowed_signers");
    std::fs::write(&allowed, format!("bot@example.com {bot_pub}\n")).expect("write");
    let out = git_command(
        &up.bare(),
        &[
            "-c",
            &format!("gpg.ssh.allowedSignersFile={}", allowed.display()),
            "verify-commit",
            &head,
        ],
    )
    .output()
    .expect("git runs");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "Good \"git\" signature for bot@example.com with ED25519 key {bot_fp}"
        )),
        "{said}"
    );
    // ...and so does flotilla (`validate --verify-commits` on the pushed revision).
    let a = allowed.to_str().expect("utf-8");
    let o = flotilla(&[
        "validate",
        "--repo",
        &url,
        "--rev",
        "main",
        "--cache",
        cache.to_str().expect("utf-8"),
        "--verify-commits",
        "--trusted-signers",
        a,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "commit {head}: good signature by SSH key {bot_fp} (bot@example.com)"
        )),
        "{}",
        stderr(&o)
    );
    // Without --signing-key the next update is unsigned, and validate refuses it.
    registry.push("shop/web", "1.0.2");
    let o = flotilla(&[
        "images",
        "update",
        "--repo",
        &url,
        "--push",
        "--cache",
        cache.to_str().expect("utf-8"),
        "--docker-config",
        up.scratch("none.json").to_str().expect("utf-8"),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let unsigned = git(&up.bare(), &["rev-parse", "main"]);
    assert_ne!(unsigned, head);
    let o = flotilla(&[
        "validate",
        "--repo",
        &url,
        "--rev",
        "main",
        "--cache",
        cache.to_str().expect("utf-8"),
        "--verify-commits",
        "--trusted-signers",
        a,
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(
        stderr(&o).contains(&format!("commit {unsigned}: the commit is not signed")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn signed_daemon_signs_its_image_updates_and_deploys_them() {
    let keys = Keys::new();
    let (alice, alice_pub, _) = keys.ssh("alice");
    let (bot, bot_pub, bot_fp) = keys.ssh("bot");
    let allowed = keys.path("allowed_signers");
    std::fs::write(
        &allowed,
        format!("alice@example.com {alice_pub}\nflotilla-bot {bot_pub}\n"),
    )
    .expect("write");
    let registry = Registry::start();
    let host = registry.host();
    registry.push_all("shop/web", &["1.0.0"]);
    let k = SimKube::start(sim(2));
    let up = Upstream::new();
    let web = deployment(&format!("{host}/shop/web:1.0.0")).replace(
        &format!("      - {{name: web, image: {host}/shop/web:1.0.0}}\n"),
        &format!(
            "      - name: web\n        image: {host}/shop/web:1.0.0 # {{\"$imagepolicy\": \"web\"}}\n"
        ),
    );
    assert!(web.contains("$imagepolicy"), "{web}");
    let policies = format!(
        "imagePolicies:\n  - name: web\n    image: {host}/shop/web\n    policy: {{semver: \">=1.0.0\"}}\n    writeBack: {{files: [app/web.yaml]}}\n"
    );
    commit(
        &up,
        &keys,
        &[
            ("fleet.yaml", &format!("{}{policies}", fleet(2, "0s", ""))),
            ("app/ns.yaml", NAMESPACE),
            ("app/web.yaml", &web),
        ],
        "web 1.0.0 with an image policy",
        Sign::Ssh(&alice),
    );
    up.push();
    let git_server = up.daemon();
    let d = start(
        &k,
        &up,
        git_server.port,
        &[
            "--image-scan-interval",
            "0s",
            "--verify-commits",
            "--trusted-signers",
            allowed.to_str().expect("utf-8"),
            "--signing-key",
            bot.to_str().expect("utf-8"),
        ],
    );
    let image = |tag: &str| format!("{host}/shop/web:{tag}");
    d.wait_for("1.0.0 rolled out", Duration::from_secs(60), || {
        images(&k, 2) == all(2, &image("1.0.0"))
    });
    registry.push("shop/web", "1.1.0");
    let (code, body) = d
        .request("POST", "/api/v1/images/scan", &[], b"")
        .expect("answer");
    assert_eq!(code, 202, "{body}");
    // The daemon's own commit verifies against its own trust: it rolls out.
    d.wait_for(
        "1.1.0 rolled out through a signed commit",
        Duration::from_secs(60),
        || images(&k, 2) == all(2, &image("1.1.0")),
    );
    let head = git(&up.bare(), &["rev-parse", "main"]);
    let status = d.json("/api/v1/fleet");
    assert_eq!(status["revision"]["commit"], head.as_str(), "{status}");
    assert!(status["rejected"].is_null(), "{status}");
    assert!(
        d.log()
            .contains(&format!("SSH key {bot_fp} (flotilla-bot)")),
        "{}",
        d.log()
    );
    assert!(
        !d.log().contains("PRIVATE KEY"),
        "the key never reaches the log"
    );
}
