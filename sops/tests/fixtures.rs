//! Data-driven: every `fixtures/sops/<case>/` holds `encrypted.{yaml,json}` (written by the
//! real `sops`, see `fixtures/sops/make.sh`), `key.txt`, and either `expected.{yaml,json}`
//! (what `sops decrypt` printed) or `error.txt` (a part of the expected error).

use std::path::{Path, PathBuf};

use flotilla_sops::{Format, Keys, decrypt};

mod common;

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/sops");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_fixture_decrypts_like_sops_or_fails_as_expected() {
    let cases = cases();
    assert!(cases.len() >= 10, "fixtures missing: {cases:?}");
    for dir in cases {
        let (file, format) = if dir.join("encrypted.json").exists() {
            (dir.join("encrypted.json"), Format::Json)
        } else if dir.join("encrypted.env").exists() {
            (dir.join("encrypted.env"), Format::Dotenv)
        } else {
            (dir.join("encrypted.yaml"), Format::Yaml)
        };
        let keys = Keys::parse(&read(&dir.join("key.txt"))).expect("key file");
        let got = decrypt(&read(&file), format, &keys);
        let name = dir.display();
        if dir.join("error.txt").exists() {
            let want = read(&dir.join("error.txt"));
            let e = got.expect_err(&format!("{name}: decrypted although it must fail"));
            assert!(e.to_string().contains(want.trim()), "{name}: {e}");
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        let ext = match format {
            Format::Json => "json",
            Format::Dotenv => "env",
            Format::Yaml => "yaml",
        };
        let want = read(&dir.join(format!("expected.{ext}")));
        common::assert_same_documents(&got, &want, format, &name.to_string());
        assert!(
            !got.contains("sops:") && !got.contains("\"sops\"") && !got.contains("sops_"),
            "{name}: {got}"
        );
    }
}
