use super::*;

const KEY: &str = include_str!("../../fixtures/sops/test-key.txt");

#[test]
fn key_text_accepts_comments_and_several_keys_and_hides_them_in_debug() {
    let other = include_str!("../../fixtures/sops/other-key.txt");
    let keys = Keys::parse(&format!("{KEY}\n\n{other}")).expect("two keys");
    assert_eq!(keys.recipients().len(), 2);
    assert!(keys.recipients()[0].starts_with("age1"));
    let debug = format!("{keys:?}");
    assert!(!debug.contains("AGE-SECRET-KEY"), "{debug}");
}

#[test]
fn key_text_errors_name_the_line_not_the_content() {
    let e = Keys::parse("# comment\nAGE-SECRET-KEY-1NOTAKEY\n").expect_err("malformed");
    let msg = e.to_string();
    assert!(msg.contains("line 2"), "{msg}");
    assert!(!msg.contains("NOTAKEY"), "{msg}");
    let e = Keys::parse("# only a comment\n").expect_err("empty");
    assert!(e.to_string().contains("no AGE-SECRET-KEY-1"), "{e}");
    let e = Keys::parse("ssh-ed25519 AAAA\n").expect_err("ssh");
    assert!(e.to_string().contains("line 1"), "{e}");
}

#[test]
fn plain_documents_are_not_sops_documents() {
    assert!(
        open("a: 1\nsops: 2\n", Format::Yaml)
            .expect("yaml")
            .is_none()
    );
    assert!(
        open("{\"sops\": {}}", Format::Json)
            .expect("json")
            .is_none()
    );
    assert!(!might_be_sops("kind: Secret\n", Format::Yaml));
    let e = decrypt("a: 1\n", Format::Yaml, &Keys::parse(KEY).expect("key")).expect_err("plain");
    assert_eq!(e, SopsError::NotSops);
}

#[test]
fn oversized_input_is_refused_before_parsing() {
    let big = "a: b\n".repeat(MAX_BYTES / 5 + 1);
    let e = open(&big, Format::Yaml).expect_err("too large");
    assert!(matches!(e, SopsError::TooLarge { .. }), "{e}");
}

#[test]
fn formats_match_go() {
    assert_eq!(go_float(1000.0), "1000");
    assert_eq!(go_float(0.1), "0.1");
    assert_eq!(go_float(1e-7), "0.0000001");
    assert_eq!(go_float(f64::INFINITY), "+Inf");
    assert_eq!(
        normalize_rfc3339("2024-01-02T03:04:05.123Z"),
        "2024-01-02T03:04:05Z"
    );
    assert_eq!(
        normalize_rfc3339("2024-01-02T03:04:05+02:00"),
        "2024-01-02T03:04:05+02:00"
    );
}

#[test]
fn values_that_are_not_encrypted_where_the_rule_says_they_are_name_their_path() {
    let text = include_str!("../../fixtures/sops/yaml-encrypted-regex/encrypted.yaml").replacen(
        "    port: ENC[",
        "    port: 5432\n    x: ENC[",
        1,
    );
    let e = decrypt(&text, Format::Yaml, &Keys::parse(KEY).expect("key")).expect_err("plain int");
    assert_eq!(
        e.to_string(),
        "stringData.port: expected an encrypted value (ENC[AES256_GCM,...]), found an integer"
    );
}

#[test]
fn a_json_sops_document_in_a_yaml_file_is_still_found_and_decrypted() {
    let json = include_str!("../../fixtures/sops/json-all-values/encrypted.json");
    assert!(might_be_sops(json, Format::Yaml));
    let keys = Keys::parse(KEY).expect("key");
    let plain = decrypt(json, Format::Yaml, &keys).expect("JSON read as YAML");
    assert!(plain.contains("tok-123"), "{plain}");
}

#[test]
fn sealed_data_opens_with_the_same_keys_only() {
    use age::secrecy::ExposeSecret;
    let key = || {
        let text = age::x25519::Identity::generate().to_string();
        Keys::parse(text.expose_secret()).expect("keys")
    };
    let (keys, other) = (key(), key());
    let sealed = keys.seal(b"password: hunter2").expect("sealed");
    assert!(
        !sealed.windows(7).any(|w| w == b"hunter2"),
        "the plaintext is not in the sealed bytes"
    );
    assert_eq!(keys.unseal(&sealed).expect("opened"), b"password: hunter2");
    let e = other
        .unseal(&sealed)
        .expect_err("another key cannot open it");
    assert!(!e.to_string().contains("hunter2"), "{e}");
}
