//! The golden write-back cases of `fixtures/images/<case>/` without a registry: the tag in
//! `chosen` is planned over `original/` and must give `expected/` byte for byte.

use std::path::{Path, PathBuf};

use flotilla_images::Desired;

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
                    .expect("under")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&p).expect("read")));
            }
        }
    }
    out.sort();
    out
}

fn subst(bytes: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(bytes)
        .replace("REGISTRY", "registry.test:5000")
        .into_bytes()
}

#[test]
fn golden_cases_plan_to_expected() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/images");
    let mut n = 0;
    for entry in std::fs::read_dir(&root).expect("fixtures/images") {
        let case = entry.expect("entry").path();
        if !case.join("original").is_dir() {
            continue;
        }
        n += 1;
        // `REGISTRY` stands for the registry host: copy the case with a fixed one.
        let tmp = tempfile::tempdir().expect("tmp");
        let original = tmp.path().to_path_buf();
        for (path, bytes) in files(&case.join("original")) {
            let p = original.join(&path);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(p, subst(&bytes)).expect("write");
        }
        let tree = flotilla_source::LocalTree::open(&original).expect("tree");
        let text = std::fs::read_to_string(original.join("fleet.yaml")).expect("fleet");
        let checked = flotilla_spec::check_with(
            "fleet.yaml",
            &text,
            &tree,
            &flotilla_spec::Limits::default(),
        );
        let fleet = checked
            .fleet
            .unwrap_or_else(|| panic!("{case:?}: invalid fleet"));
        let chosen = std::fs::read_to_string(case.join("chosen")).expect("chosen");
        let desired: Vec<Desired> = fleet
            .image_policies
            .iter()
            .map(|p| Desired {
                policy: p.name.clone(),
                image: p.image.clone(),
                tag: chosen.trim().to_string(),
                digest: None,
            })
            .collect();
        let plan = flotilla_images::plan(&fleet, &tree, &desired).expect("plan");
        assert!(plan.problems.is_empty(), "{case:?}: {:?}", plan.problems);
        let mut result = files(&original);
        for (path, text) in &plan.files {
            let slot = result
                .iter_mut()
                .find(|(p, _)| p == path.as_str())
                .expect("a planned file exists");
            slot.1 = text.clone().into_bytes();
        }
        let expected: Vec<(String, Vec<u8>)> = files(&case.join("expected"))
            .into_iter()
            .map(|(p, b)| (p, subst(&b)))
            .collect();
        assert_eq!(
            result, expected,
            "{case:?}: the plan differs from expected/"
        );
        // Every change is reported with its line.
        for c in &plan.changes {
            assert!(c.line > 0 && c.from != c.to, "{c:?}");
        }
    }
    assert!(n >= 3);
}
