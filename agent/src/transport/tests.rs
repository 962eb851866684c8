use super::*;

/// Incompressible text: base64 of xorshift bytes.
fn noise(bytes: usize, seed: u64) -> String {
    let mut x = seed | 1;
    let raw: Vec<u8> = (0..bytes)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    b64(&raw)
}

/// Manifests JSON (one ConfigMap holding `size` bytes of noise) and its hash.
fn big_manifests(size: usize) -> (String, String) {
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "shop"},
        "data": {"blob": noise(size, 7)},
    });
    let objects = vec![DesiredObject {
        bundle: "app".into(),
        object: ObjectRef::of(&object).expect("a ref"),
        value: object,
    }];
    (manifests_json(&objects), manifest_hash(&objects))
}

fn secrets_of(json: &str, hash: &str) -> Vec<Value> {
    let parts = split(json.as_bytes()).expect("splits");
    part_secrets(
        "flotilla-cluster-a1",
        &|i| part_name(hash, i),
        TYPE_MANIFESTS,
        &BTreeMap::new(),
        hash,
        &parts,
    )
}

#[test]
fn more_than_a_mebibyte_compressed_splits_into_parts_and_round_trips() {
    let (json, hash) = big_manifests(1536 * 1024);
    let secrets = secrets_of(&json, &hash);
    assert!(secrets.len() >= 3, "{} parts", secrets.len());
    for s in &secrets {
        let data = s["data"][KEY_PART].as_str().expect("data");
        // Base64 of a part stays well under the ~1 MiB object limit.
        assert!(data.len() < 700 * 1024, "{} bytes", data.len());
        assert!(name_of(s).starts_with(&format!("manifests-{}-", &hash[..16])));
    }
    let back = read_parts("test", &hash, &secrets).expect("reassembles");
    let text = String::from_utf8(back).expect("UTF-8");
    assert_eq!(text, json);
    assert_eq!(
        verify_manifests(&hash, &text).expect("hash matches").len(),
        1
    );
}

#[test]
fn a_missing_part_is_refused_naming_it() {
    let (json, hash) = big_manifests(1536 * 1024);
    let mut secrets = secrets_of(&json, &hash);
    let n = secrets.len();
    secrets.remove(1);
    let e = read_parts("manifests x", &hash, &secrets).expect_err("incomplete");
    assert_eq!(
        e,
        PartsError::Missing {
            what: "manifests x".into(),
            index: 1,
            parts: n
        }
    );
    assert!(e.to_string().contains("part 1 of"), "{e}");
}

#[test]
fn a_tampered_part_is_refused() {
    let (json, hash) = big_manifests(64 * 1024);
    let secrets = secrets_of(&json, &hash);
    // Someone with write access swaps the content for other (valid) manifests.
    let (other, _) = big_manifests(1000);
    let forged = secrets_of(&other, &hash);
    let e = read_parts("m", &hash, &forged)
        .map(|b| String::from_utf8(b).expect("UTF-8"))
        .and_then(|t| verify_manifests(&hash, &t).map(|_| ()))
        .expect_err("refused");
    assert!(matches!(e, PartsError::Tampered { .. }), "{e}");
    assert!(e.to_string().contains("not to its name"), "{e}");
    // Flipped bytes inside a part do not decompress.
    let mut broken = secrets.clone();
    let data = broken[0]["data"][KEY_PART]
        .as_str()
        .expect("data")
        .to_string();
    let mut bytes = unb64(&data).expect("base64");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    broken[0]["data"][KEY_PART] = Value::String(b64(&bytes));
    let e = read_parts("m", &hash, &broken).expect_err("corrupt");
    assert!(matches!(e, PartsError::Corrupt { .. }), "{e}");
}

#[test]
fn parts_of_other_hashes_are_ignored_and_counts_must_agree() {
    let (json, hash) = big_manifests(1000);
    let (other, other_hash) = big_manifests(2000);
    let mut secrets = secrets_of(&json, &hash);
    secrets.extend(secrets_of(&other, &other_hash));
    let back = read_parts("m", &hash, &secrets).expect("its own parts only");
    assert_eq!(back, json.as_bytes());
    secrets[0]["metadata"]["annotations"][ANNOTATION_PARTS] = Value::String("3".into());
    let mut two = secrets_of(&json, &hash);
    two[0]["metadata"]["annotations"][ANNOTATION_PART] = Value::String("1".into());
    two.push(secrets[0].clone());
    let e = read_parts("m", &hash, &two).expect_err("inconsistent");
    assert!(matches!(e, PartsError::Inconsistent { .. }), "{e}");
    assert_eq!(
        read_parts("m", &"f".repeat(64), &secrets),
        Err(PartsError::None { what: "m".into() })
    );
}

#[test]
fn a_decompression_bomb_is_bounded() {
    // 300 MiB of zeros compresses to ~300 KiB.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1024 * 1024];
    for _ in 0..300 {
        enc.write_all(&zeros).expect("compress");
    }
    let gz = enc.finish().expect("finish");
    let pieces: BTreeMap<usize, Vec<u8>> = gz
        .chunks(MAX_PART_BYTES)
        .enumerate()
        .map(|(i, c)| (i, c.to_vec()))
        .collect();
    let e = join("bomb", pieces.len(), &pieces).expect_err("too large");
    assert_eq!(
        e,
        PartsError::TooLarge {
            what: "bomb".into()
        }
    );
}

#[test]
fn names_are_pinned() {
    assert_eq!(namespace("a1"), "flotilla-cluster-a1");
    assert_eq!(work_name("web"), "work-web");
    assert_eq!(result_name("web"), "result-web");
    assert_eq!(local_name("web", 2), "flotilla-agent-web-2");
    assert_eq!(
        part_name(&"ab".repeat(32), 0),
        "manifests-abababababababab-0"
    );
}
