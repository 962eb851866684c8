//! SOPS-encrypted files in bundles (files written by the real `sops`, fixtures/sops): decrypted
//! when read, in plain YAML bundles, kustomize inputs (resources, secretGenerator files) and
//! Jsonnet imports; without keys or with a tampered file the render fails with the file and
//! the key path and says nothing of the plaintext.

use std::sync::Arc;

use flotilla_renderers::{RenderOptions, render};
use flotilla_sops::Keys;
use flotilla_spec::MemRepo;

fn fixture(path: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/sops")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const FLEET: &str = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
clusters:
  - {name: a}
bundles:
  - {name: plain, path: plain, namespace: shop}
  - {name: kust, path: kust}
  - {name: jn, path: jn/main.jsonnet}
placements:
  - {name: main, bundles: [plain, kust, jn], clusters: {}}
";

fn repo(secret: &str) -> MemRepo {
    MemRepo::new()
        .with("fleet.yaml", FLEET)
        .with("plain/secret.yaml", secret)
        .with("plain/settings.yaml", fixture("yaml-configmap/encrypted.yaml"))
        .with(
            "plain/cm.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: open}\ndata: {a: b}\n",
        )
        .with(
            "kust/kustomization.yaml",
            "resources: [secret.yaml]\nnamePrefix: k-\nsecretGenerator:\n- name: gen\n  files: [creds.json]\n- name: envgen\n  envs: [creds.env]\n",
        )
        .with("kust/secret.yaml", secret)
        .with("kust/creds.json", fixture("json-all-values/encrypted.json"))
        .with("kust/creds.env", fixture("dotenv/encrypted.env"))
        .with(
            "jn/main.jsonnet",
            "local s = import 'creds.json';\n{apiVersion: 'v1', kind: 'Secret', metadata: {name: 'jn', namespace: 'shop'}, stringData: {token: s.stringData.token}}\n",
        )
        .with("jn/creds.json", fixture("json-all-values/encrypted.json"))
}

fn keys_from(file: &str) -> RenderOptions {
    RenderOptions {
        sops: Some(Arc::new(Keys::parse(&fixture(file)).expect("test key"))),
        ..RenderOptions::default()
    }
}

fn render_bundle(repo: &MemRepo, bundle: &str, opts: &RenderOptions) -> Result<String, String> {
    let checked = flotilla_spec::check("fleet.yaml", FLEET, repo);
    let fleet = checked.fleet.expect("valid fleet");
    let b = fleet
        .bundles
        .iter()
        .find(|b| b.name == bundle)
        .expect("bundle");
    render(
        repo,
        &fleet,
        &fleet.placements[0],
        b,
        &fleet.clusters[0],
        opts,
    )
    .map(|r| r.yaml)
    .map_err(|e| e.to_string())
}

#[test]
fn sops_files_decrypt_in_plain_kustomize_and_jsonnet_bundles() {
    let repo = repo(&fixture("yaml-encrypted-regex/encrypted.yaml"));
    let opts = keys_from("test-key.txt");
    let plain = render_bundle(&repo, "plain", &opts).expect("plain renders");
    assert!(plain.contains("password: hunter2"), "{plain}");
    assert!(
        !plain.contains("ENC[") && !plain.contains("lastmodified"),
        "{plain}"
    );
    assert!(plain.contains("pw-in-a-configmap"), "{plain}");
    // Objects from decrypted files carry the mark that masks them in diffs and reports; the
    // plain ConfigMap does not.
    assert_eq!(
        plain.matches("flotilla.dev/sops: decrypted").count(),
        2,
        "{plain}"
    );

    let kust = render_bundle(&repo, "kust", &opts).expect("kustomize renders");
    assert!(kust.contains("name: k-db-credentials"), "{kust}");
    assert!(kust.contains("password: hunter2"), "{kust}");
    assert!(
        kust.contains("flotilla.dev/sops: decrypted"),
        "a kustomize resource read from a SOPS file is marked: {kust}"
    );
    // secretGenerator: the file's content is the decrypted JSON document, base64-encoded.
    // (a block scalar, wrapped at 70 columns)
    let data: String = kust
        .lines()
        .skip_while(|l| l.trim() != "creds.json: |")
        .skip(1)
        .take_while(|l| l.starts_with("    "))
        .map(str::trim)
        .collect();
    let decoded = String::from_utf8(base64_decode(data.trim())).expect("UTF-8");
    assert!(decoded.contains("tok-123"), "{decoded}");
    assert!(
        !decoded.contains("ENC[") && !decoded.contains("\"sops\""),
        "{decoded}"
    );

    // secretGenerator envs: a SOPS dotenv file, one key per line ("env-s3cret" in base64).
    assert!(kust.contains("DB_PASSWORD: ZW52LXMzY3JldA=="), "{kust}");

    let jn = render_bundle(&repo, "jn", &opts).expect("jsonnet renders");
    assert!(jn.contains("tok-123"), "{jn}");
}

#[test]
fn without_keys_a_sops_file_fails_its_render_naming_the_file() {
    let repo = repo(&fixture("yaml-encrypted-regex/encrypted.yaml"));
    for (bundle, file) in [
        ("plain", "plain/s"),
        ("kust", "kust/"),
        ("jn", "jn/creds.json"),
    ] {
        let e = render_bundle(&repo, bundle, &RenderOptions::default()).expect_err(bundle);
        assert!(e.contains("is SOPS-encrypted"), "{bundle}: {e}");
        assert!(e.contains("no age key was given"), "{bundle}: {e}");
        assert!(e.contains(file), "{bundle}: {e}");
    }
}

#[test]
fn a_tampered_swapped_or_foreign_file_fails_with_file_and_key_path_and_no_plaintext() {
    let opts = keys_from("test-key.txt");
    let e = render_bundle(
        &repo(&fixture("tampered-mac/encrypted.yaml")),
        "plain",
        &opts,
    )
    .expect_err("tampered");
    assert!(e.contains("plain/secret.yaml: SOPS: MAC mismatch"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");

    let e = render_bundle(
        &repo(&fixture("swapped-values/encrypted.yaml")),
        "plain",
        &opts,
    )
    .expect_err("swapped");
    assert!(
        e.contains("plain/secret.yaml: SOPS: stringData.username: AES-GCM authentication failed"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");

    let repo = repo(&fixture("yaml-encrypted-regex/encrypted.yaml"));
    let e = render_bundle(&repo, "plain", &keys_from("other-key.txt")).expect_err("wrong key");
    assert!(e.contains("none of the 1 age identities given"), "{e}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn a_sops_file_over_the_decryptor_limits_fails_instead_of_passing_ciphertext_through() {
    // Deeper than the decryptor's nesting limit but fine for the renderer's YAML reader.
    let mut deep = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: deep}\ndata:\n");
    let mut indent = String::from("  ");
    for i in 0..70 {
        deep.push_str(&format!("{indent}k{i}:\n"));
        indent.push_str("  ");
    }
    deep.push_str(&format!(
        "{indent}v: ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]\n"
    ));
    deep.push_str("sops:\n  mac: ENC[AES256_GCM,data:AA==,iv:AA==,tag:AA==,type:str]\n");
    let repo = repo(&deep);
    let e = render_bundle(&repo, "plain", &keys_from("test-key.txt")).expect_err("refused");
    assert!(e.contains("plain/secret.yaml: SOPS: not valid YAML"), "{e}");
}

#[test]
fn encrypted_values_without_their_metadata_are_refused() {
    let text = fixture("yaml-encrypted-regex/encrypted.yaml");
    let cut = text.find("\nsops:").expect("metadata block");
    let repo = repo(&text[..=cut]);
    let e = render_bundle(&repo, "plain", &keys_from("test-key.txt")).expect_err("refused");
    assert!(
        e.contains("plain/secret.yaml: holds SOPS-encrypted values (ENC[AES256_GCM,...]) but no SOPS metadata"),
        "{e}"
    );
    let repo = repo_with("plain/secret.yaml", &fixture("dotenv/encrypted.env"));
    let e = render_bundle(&repo, "plain", &keys_from("test-key.txt")).expect_err("refused");
    assert!(
        e.contains("is a SOPS dotenv file but its name says otherwise"),
        "{e}"
    );
}

fn repo_with(path: &str, text: &str) -> MemRepo {
    repo(&fixture("yaml-encrypted-regex/encrypted.yaml")).with(path, text)
}
