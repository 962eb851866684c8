//! Commit signatures made by the real `git` CLI (`ssh-keygen` for SSH keys, `gpg` for
//! OpenPGP keys) checked by `flotilla_source::git::Trust`, and commits signed by flotilla
//! checked by `git verify-commit`. A missing tool fails the test, it is never skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flotilla_source::git::{
    CommitMessage, CommitSigner, FileChange, GitSource, Identity, PushOptions, Pushed, Remote, Rev,
    Trust, open_local,
};
use flotilla_spec::types::RepoPath;

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed; these tests need git, ssh-keygen (openssh-client) and gpg (gnupg)"
    );
}

fn run(mut cmd: Command) -> Output {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    assert!(
        out.status.success(),
        "{shown}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A work tree with no global configuration; `gnupg` is the GNUPGHOME for its `gpg`.
struct Repo {
    dir: PathBuf,
    gnupg: PathBuf,
}

impl Repo {
    fn new(root: &Path) -> Repo {
        require("git");
        let dir = root.join("work");
        let gnupg = root.join("gnupg");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::create_dir_all(&gnupg).expect("mkdir");
        let mut perms = std::fs::metadata(&gnupg).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o700);
        std::fs::set_permissions(&gnupg, perms).expect("chmod");
        let r = Repo { dir, gnupg };
        r.git(&["init", "--quiet", "-b", "main"]);
        r
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.dir)
            .args(args)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Alice")
            .env("GIT_AUTHOR_EMAIL", "alice@example.com")
            .env("GIT_COMMITTER_NAME", "Alice")
            .env("GIT_COMMITTER_EMAIL", "alice@example.com")
            .env("GNUPGHOME", &self.gnupg);
        cmd
    }

    fn git(&self, args: &[&str]) -> String {
        let out = run(self.cmd(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Commits a change to `file.txt`, signed with `sign` (git `-c` settings) or unsigned.
    fn commit(&self, text: &str, sign: &[&str]) -> String {
        std::fs::write(self.dir.join("file.txt"), text).expect("write");
        self.git(&["add", "-A"]);
        let mut args: Vec<&str> = Vec::new();
        for s in sign {
            args.extend(["-c", s]);
        }
        args.extend(["commit", "--quiet", "-m", text]);
        if !sign.is_empty() {
            args.push("-S");
        }
        self.git(&args);
        self.git(&["rev-parse", "HEAD"])
    }

    fn ssh_commit(&self, key: &Path, text: &str) -> String {
        let key = format!("user.signingkey={}", key.display());
        self.commit(text, &["gpg.format=ssh", &key])
    }

    fn gpg_commit(&self, fingerprint: &str, text: &str) -> String {
        let key = format!("user.signingkey={fingerprint}");
        self.commit(text, &["gpg.format=openpgp", &key])
    }

    fn verify(&self, trust: &Trust, rev: &str) -> Result<String, flotilla_source::git::Unverified> {
        let snap = open_local(&self.dir, rev).expect("open");
        trust.verify_snapshot(&snap).map(|s| s.to_string())
    }

    /// `git verify-commit` against an allowed-signers file: whether git accepts it.
    fn git_verifies(&self, allowed: &Path, rev: &str) -> bool {
        let file = format!("gpg.ssh.allowedSignersFile={}", allowed.display());
        self.cmd(&["-c", &file, "verify-commit", rev])
            .output()
            .expect("git runs")
            .status
            .success()
    }

    fn gpg(&self, args: &[&str]) -> String {
        require("gpg");
        let mut cmd = Command::new("gpg");
        cmd.args(["--batch", "--no-tty", "--quiet"])
            .args(args)
            .env("GNUPGHOME", &self.gnupg);
        String::from_utf8_lossy(&run(cmd).stdout).into_owned()
    }

    /// A new OpenPGP key without passphrase; returns its fingerprint.
    fn gpg_key(&self, uid: &str, algo: &str) -> String {
        self.gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            algo,
            "sign",
            "never",
        ]);
        let listing = self.gpg(&["--with-colons", "--list-keys", uid]);
        listing
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() == 40))
            .expect("a fingerprint")
            .to_string()
    }

    /// Writes a copy of commit `rev` with its message changed (signature kept) and returns
    /// its id: a forged commit.
    fn tamper(&self, rev: &str) -> String {
        let raw = self.git(&["cat-file", "commit", rev]);
        let forged = format!("{raw}\nand something the signer never wrote\n");
        let path = self.dir.join("forged");
        std::fs::write(&path, forged).expect("write");
        let id = self.git(&["hash-object", "-t", "commit", "-w", "forged"]);
        std::fs::remove_file(&path).expect("rm");
        id
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        // The agent that `gpg` started for this GNUPGHOME.
        let _ = Command::new("gpgconf")
            .args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", &self.gnupg)
            .output();
    }
}

fn ssh_key(dir: &Path, name: &str, kind: &str) -> (PathBuf, String, String) {
    require("ssh-keygen");
    let path = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", name, "-f"])
        .arg(&path);
    run(cmd);
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("pub");
    let mut cmd = Command::new("ssh-keygen");
    cmd.arg("-lf").arg(path.with_extension("pub"));
    let listed = String::from_utf8_lossy(&run(cmd).stdout).into_owned();
    let fingerprint = listed
        .split_whitespace()
        .nth(1)
        .expect("fingerprint")
        .to_string();
    (path, public.trim().to_string(), fingerprint)
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::write(path, text).expect("write");
    path.to_path_buf()
}

#[test]
fn ssh_signed_commits_by_trusted_keys_verify_and_others_are_rejected() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = Repo::new(tmp.path());
    let (alice, alice_pub, alice_fp) = ssh_key(tmp.path(), "alice", "ed25519");
    let (bob, _, bob_fp) = ssh_key(tmp.path(), "bob", "ed25519");
    let (carol, carol_pub, carol_fp) = ssh_key(tmp.path(), "carol", "rsa");
    let allowed = write(
        &tmp.path().join("allowed_signers"),
        &format!(
            "# who may deploy\nalice@example.com namespaces=\"git\" {alice_pub}\ncarol@example.com {carol_pub}\n"
        ),
    );
    let mut trust = Trust::new();
    assert_eq!(trust.load_allowed_signers(&allowed).expect("load"), 2);

    // Signed by a trusted key: git and flotilla agree.
    let good = repo.ssh_commit(&alice, "one");
    assert!(repo.git_verifies(&allowed, &good));
    assert_eq!(
        repo.verify(&trust, &good).expect("verified"),
        format!("SSH key {alice_fp} (alice@example.com)")
    );
    let rsa = repo.ssh_commit(&carol, "rsa");
    assert!(repo.git_verifies(&allowed, &rsa));
    assert_eq!(
        repo.verify(&trust, &rsa).expect("verified"),
        format!("SSH key {carol_fp} (carol@example.com)")
    );

    // Unsigned.
    let unsigned = repo.commit("two", &[]);
    let e = repo.verify(&trust, &unsigned).expect_err("unsigned");
    assert_eq!(e.commit, unsigned);
    assert_eq!(e.signer, None);
    assert_eq!(
        e.to_string(),
        format!("commit {unsigned}: the commit is not signed")
    );

    // Signed by a key nobody trusts: named by its fingerprint.
    let stranger = repo.ssh_commit(&bob, "three");
    assert!(!repo.git_verifies(&allowed, &stranger));
    let e = repo.verify(&trust, &stranger).expect_err("untrusted");
    assert_eq!(
        e.signer.as_deref(),
        Some(format!("SSH key {bob_fp}").as_str())
    );
    assert!(
        e.reason.contains(&bob_fp) && e.reason.contains("not in the trusted signers"),
        "{e}"
    );

    // A trusted signature on a changed commit.
    let forged = repo.tamper(&good);
    assert!(!repo.git_verifies(&allowed, &forged));
    let e = repo.verify(&trust, &forged).expect_err("forged");
    assert_eq!(e.commit, forged);
    assert!(
        e.reason.starts_with(&format!(
            "bad signature by SSH key {alice_fp} (alice@example.com)"
        )),
        "{e}"
    );

    // The trust file, not the repository, decides: without SSH signers nothing verifies.
    let e = repo.verify(&Trust::new(), &good).expect_err("no ssh trust");
    assert!(e.reason.contains("no SSH signers are trusted"), "{e}");
}

#[test]
fn ssh_signer_options_limit_namespaces_and_validity() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = Repo::new(tmp.path());
    let (alice, alice_pub, _) = ssh_key(tmp.path(), "alice", "ed25519");
    let commit = repo.ssh_commit(&alice, "one");
    let cases = [
        ("namespaces=\"file\"", false, "does not allow \"git\""),
        (
            "valid-before=\"20200101\"",
            false,
            "the key expired at 2020-01-01 00:00:00 UTC",
        ),
        (
            "valid-after=\"29990101\"",
            false,
            "valid only after 2999-01-01",
        ),
        (
            "valid-after=\"20200101Z\",valid-before=\"29990101\"",
            true,
            "",
        ),
    ];
    for (options, accepted, why) in cases {
        let allowed = write(
            &tmp.path().join("allowed"),
            &format!("alice@example.com {options} {alice_pub}\n"),
        );
        let mut trust = Trust::new();
        trust.load_allowed_signers(&allowed).expect("load");
        assert_eq!(
            repo.git_verifies(&allowed, &commit),
            accepted,
            "git with {options}"
        );
        match repo.verify(&trust, &commit) {
            Ok(_) => assert!(accepted, "{options}: accepted"),
            Err(e) => {
                assert!(!accepted, "{options}: {e}");
                assert!(e.reason.contains(why), "{options}: {e}");
            }
        }
    }
}

#[test]
fn openpgp_signed_commits_by_trusted_keys_verify_and_others_are_rejected() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = Repo::new(tmp.path());
    // gpg's default algorithm (RSA in GnuPG 2.2) and Ed25519.
    let alice = repo.gpg_key("Alice <alice@example.com>", "default");
    let dave = repo.gpg_key("Dave <dave@example.com>", "ed25519");
    let mallory = repo.gpg_key("Mallory <mallory@example.com>", "ed25519");
    let keys =
        repo.gpg(&["--armor", "--export", &alice]) + &repo.gpg(&["--armor", "--export", &dave]);
    let keyring = write(&tmp.path().join("trusted.asc"), &keys);
    let mut trust = Trust::new();
    assert_eq!(trust.load_openpgp_keys(&keyring).expect("load"), 2);

    let good = repo.gpg_commit(&alice, "one");
    repo.git(&["verify-commit", &good]);
    assert_eq!(
        repo.verify(&trust, &good).expect("verified"),
        format!("OpenPGP key {alice} (Alice <alice@example.com>)")
    );
    let ed = repo.gpg_commit(&dave, "two");
    assert_eq!(
        repo.verify(&trust, &ed).expect("verified"),
        format!("OpenPGP key {dave} (Dave <dave@example.com>)")
    );

    let stranger = repo.gpg_commit(&mallory, "three");
    let e = repo.verify(&trust, &stranger).expect_err("untrusted");
    assert_eq!(e.commit, stranger);
    assert_eq!(
        e.signer.as_deref(),
        Some(format!("OpenPGP key {mallory}").as_str())
    );
    assert!(e.reason.contains("not in the trusted keys"), "{e}");

    let forged = repo.tamper(&ed);
    assert!(
        !repo
            .cmd(&["verify-commit", &forged])
            .output()
            .expect("git")
            .status
            .success()
    );
    let e = repo.verify(&trust, &forged).expect_err("forged");
    assert!(
        e.reason
            .starts_with(&format!("bad signature by OpenPGP key {dave}")),
        "{e}"
    );

    let unsigned = repo.commit("four", &[]);
    let e = repo.verify(&trust, &unsigned).expect_err("unsigned");
    assert_eq!(e.reason, "the commit is not signed");

    // An SSH-only trust does not accept OpenPGP signatures.
    let e = repo.verify(&Trust::new(), &good).expect_err("no keys");
    assert!(e.reason.contains("no OpenPGP keys are trusted"), "{e}");

    // A private key block in the trust file is refused.
    let secret = repo.gpg(&[
        "--armor",
        "--passphrase",
        "",
        "--pinentry-mode",
        "loopback",
        "--export-secret-keys",
        &dave,
    ]);
    let bad = write(&tmp.path().join("secret.asc"), &secret);
    let e = Trust::new().load_openpgp_keys(&bad).expect_err("secret");
    assert!(e.to_string().contains("holds a private key"), "{e}");
}

/// Clones `repo` into a bare upstream and pushes one commit to it through `GitSource`,
/// signed by `signer`; returns the upstream and the commit.
fn push_signed(repo: &Repo, root: &Path, signer: CommitSigner) -> (PathBuf, String) {
    let upstream = root.join("upstream.git");
    let mut cmd = Command::new("git");
    cmd.args(["clone", "--quiet", "--bare"])
        .arg(&repo.dir)
        .arg(&upstream)
        .env("GIT_CONFIG_GLOBAL", "/dev/null");
    run(cmd);
    let remote = Remote::parse(upstream.to_str().expect("utf-8"), None).expect("remote");
    let mut source = GitSource::open(remote, Rev::parse("main").expect("rev"), root.join("cache"))
        .expect("open");
    let options = PushOptions {
        signer: Some(std::sync::Arc::new(signer)),
        ..PushOptions::default()
    };
    let who = Identity {
        name: "flotilla".into(),
        email: "bot@example.com".into(),
    };
    let message = CommitMessage {
        author: who.clone(),
        committer: who,
        message: "image update\n".into(),
    };
    let pushed = source
        .commit_and_push(&message, &options, |_| {
            Ok(vec![FileChange::Write {
                path: RepoPath::parse("file.txt").expect("path"),
                content: b"bumped\n".to_vec(),
            }])
        })
        .expect("push");
    let Pushed::Commit { commit, .. } = pushed else {
        panic!("expected a commit, got {pushed:?}");
    };
    (upstream, commit.to_string())
}

/// `git verify-commit` in `upstream`, with `config` (`-c` settings): its stderr.
fn git_verify(repo: &Repo, upstream: &Path, config: &[&str], commit: &str) -> String {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir").arg(upstream);
    for c in config {
        cmd.args(["-c", c]);
    }
    cmd.args(["verify-commit", commit])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GNUPGHOME", &repo.gnupg);
    String::from_utf8_lossy(&run(cmd).stderr).into_owned()
}

#[test]
fn commits_pushed_with_a_signing_key_verify_with_git_and_flotilla() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = Repo::new(tmp.path());
    repo.commit("base", &[]);
    let (key, public, fingerprint) = ssh_key(tmp.path(), "bot", "ed25519");
    let signer = CommitSigner::load(&key).expect("signing key");
    assert_eq!(signer.fingerprint(), fingerprint);
    let (upstream, commit) = push_signed(&repo, tmp.path(), signer);
    let allowed = write(
        &tmp.path().join("allowed_signers"),
        &format!("bot@example.com {public}\n"),
    );
    // git itself accepts the signature.
    let file = format!("gpg.ssh.allowedSignersFile={}", allowed.display());
    let said = git_verify(&repo, &upstream, &[&file], &commit);
    assert!(
        said.contains("Good \"git\" signature for bot@example.com"),
        "{said}"
    );
    // And so does flotilla, from what it fetches.
    let mut trust = Trust::new();
    trust.load_allowed_signers(&allowed).expect("load");
    let snap = open_local(&upstream, "main").expect("open");
    assert_eq!(snap.commit().to_string(), commit);
    assert_eq!(
        trust.verify_snapshot(&snap).expect("verified").to_string(),
        format!("SSH key {fingerprint} (bot@example.com)")
    );
}

#[test]
fn commits_pushed_with_an_openpgp_key_verify_with_git_and_flotilla() {
    let tmp = tempfile::tempdir().expect("tmp");
    let repo = Repo::new(tmp.path());
    repo.commit("base", &[]);
    let fingerprint = repo.gpg_key("Bot <bot@example.com>", "ed25519");
    let secret = repo.gpg(&[
        "--armor",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        "--export-secret-keys",
        &fingerprint,
    ]);
    let key = write(&tmp.path().join("bot.asc"), &secret);
    let signer = CommitSigner::load(&key).expect("signing key");
    assert_eq!(signer.fingerprint(), fingerprint);
    let (upstream, commit) = push_signed(&repo, tmp.path(), signer);
    let said = git_verify(&repo, &upstream, &[], &commit);
    assert!(
        said.contains("Good signature from \"Bot <bot@example.com>\""),
        "{said}"
    );
    let public = write(
        &tmp.path().join("trusted.asc"),
        &repo.gpg(&["--armor", "--export", &fingerprint]),
    );
    let mut trust = Trust::new();
    trust.load_openpgp_keys(&public).expect("load");
    let snap = open_local(&upstream, "main").expect("open");
    assert_eq!(
        trust.verify_snapshot(&snap).expect("verified").to_string(),
        format!("OpenPGP key {fingerprint} (Bot <bot@example.com>)")
    );
}

#[test]
fn signing_keys_with_a_passphrase_or_of_another_kind_are_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    require("ssh-keygen");
    let path = tmp.path().join("locked");
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
        .arg(&path);
    run(cmd);
    let e = CommitSigner::load(&path).expect_err("encrypted");
    assert!(e.to_string().contains("protected by a passphrase"), "{e}");
    let e = CommitSigner::load(&path.with_extension("pub")).expect_err("public");
    assert!(e.to_string().contains("not an OpenSSH private key"), "{e}");
    // RSA keys never sign (their private-key operations are not constant-time).
    let (rsa, _, fingerprint) = ssh_key(tmp.path(), "rsa", "rsa");
    let e = CommitSigner::load(&rsa).expect_err("RSA");
    assert!(
        e.to_string().contains(&fingerprint) && e.to_string().contains("RUSTSEC-2023-0071"),
        "{e}"
    );
    // An OpenPGP secret key under a passphrase.
    let repo = Repo::new(tmp.path());
    repo.gpg(&[
        "--passphrase",
        "secret",
        "--quick-gen-key",
        "Locked <locked@example.com>",
        "ed25519",
        "sign",
        "never",
    ]);
    let secret = repo.gpg(&[
        "--armor",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "secret",
        "--export-secret-keys",
        "locked@example.com",
    ]);
    let key = write(&tmp.path().join("locked.asc"), &secret);
    let e = CommitSigner::load(&key).expect_err("encrypted");
    assert!(
        e.to_string().contains("is protected by a passphrase"),
        "{e}"
    );
    // An OpenPGP RSA key is refused like an SSH one.
    let fingerprint = repo.gpg_key("Rsa <rsa@example.com>", "rsa3072");
    let secret = repo.gpg(&["--armor", "--export-secret-keys", "rsa@example.com"]);
    let key = write(&tmp.path().join("rsa.asc"), &secret);
    let e = CommitSigner::load(&key).expect_err("RSA");
    assert!(
        e.to_string().contains(&fingerprint) && e.to_string().contains("RUSTSEC-2023-0071"),
        "{e}"
    );
}
