//! Backups and restores (issue 18), through the `flotilla` binary: a sim cluster with a CRD,
//! custom resources, a Secret and ConfigMaps in several namespaces (`fixtures/backup/sim`),
//! backed up to a directory or to a real S3 server on loopback (`s3s-fs`), restored into the
//! sim's second cluster or between two real control planes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
use crate::support::{SimKube, stderr, stdout, workspace};

fn fixture() -> PathBuf {
    workspace().join("fixtures/backup/sim")
}

/// A sim with two clusters; sim-1 holds the fixture's CRD and objects.
fn seeded_sim() -> SimKube {
    let kube = SimKube::start(flotilla_sim::SimConfig {
        clusters: 2,
        ready_delay: Duration::from_millis(50),
        ..Default::default()
    });
    let f = fixture();
    kube.ok(&[
        "--context",
        "sim-1",
        "apply",
        "-f",
        f.join("crd.yaml").to_str().unwrap_or(""),
    ]);
    wait_established(|args| kube.run(args), &["--context", "sim-1"]);
    kube.ok(&[
        "--context",
        "sim-1",
        "apply",
        "-f",
        f.join("objects.yaml").to_str().unwrap_or(""),
    ]);
    kube
}

fn wait_established(run: impl Fn(&[&str]) -> Output, prefix: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut args: Vec<&str> = prefix.to_vec();
        args.extend([
            "get",
            "crd",
            "widgets.example.com",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
        ]);
        let o = run(&args);
        if stdout(&o).trim() == "True" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the CRD was not established in 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `flotilla args` with the fixture's fleet (and the kubeconfig, for `backup run` and
/// `restore`), without S3 settings from the environment.
fn flotilla_with(kubeconfig: &Path, repo: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flotilla"));
    c.args(args).arg("--repo").arg(repo);
    // Only the commands that reach a cluster take a kubeconfig.
    if args.first() == Some(&"restore") || args.get(1) == Some(&"run") {
        c.arg("--kubeconfig").arg(kubeconfig);
    }
    c.env_remove("KUBECONFIG")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("FLOTILLA_S3_ENDPOINT");
    c
}

fn run(mut c: Command) -> Output {
    c.output().expect("flotilla runs")
}

fn ok(c: Command) -> String {
    let what = format!("{c:?}");
    let o = run(c);
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// The one backup directory under `store/<policy>/<cluster>/`.
fn backup_dirs(store: &Path, policy: &str, cluster: &str) -> Vec<PathBuf> {
    let dir = store.join(policy).join(cluster);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn manifest(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json");
    serde_json::from_str(&text).expect("manifest is JSON")
}

fn get_json(kube: &SimKube, context: &str, args: &[&str]) -> Value {
    let mut a = vec!["--context", context, "get", "-o", "json"];
    a.extend(args);
    serde_json::from_str(&kube.ok(&a)).expect("kubectl JSON")
}

/// What a user compares: the object minus the fields the server owns.
fn user_view(v: &Value) -> Value {
    use base64::Engine;
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
        // A Secret's stringData is its data, base64-encoded (as an API server stores it).
        if let Some(Value::Object(sd)) = o.remove("stringData") {
            let data = o
                .entry("data")
                .or_insert_with(|| Value::Object(Default::default()));
            for (k, x) in sd {
                let enc = base64::engine::general_purpose::STANDARD
                    .encode(x.as_str().unwrap_or("").as_bytes());
                data[k.as_str()] = Value::String(enc);
            }
        }
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "managedFields",
                "generation",
                "namespace",
                "selfLink",
            ] {
                m.remove(k);
            }
            if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
                if a.is_empty() {
                    m.remove("annotations");
                }
            }
        }
    }
    v
}

#[test]
fn backup_of_a_sim_cluster_restores_into_another_with_a_namespace_map_and_overrides() {
    let kube = seeded_sim();
    let store = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", store.path().display());
    let repo = fixture().join("repo");
    let out = ok(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &["backup", "run", "nightly", "--store", &url],
    ));
    assert!(out.contains("sim-1: backup nightly/sim-1/"), "{out}");
    assert!(out.contains("Secrets encrypted"), "{out}");

    let dirs = backup_dirs(store.path(), "nightly", "sim-1");
    assert_eq!(dirs.len(), 1, "one backup: {dirs:?}");
    let m = manifest(&dirs[0]);
    assert_eq!(m["formatVersion"], 1);
    assert_eq!(m["fleet"], "dr");
    assert_eq!(m["secrets"], "encrypted");
    let counts = &m["counts"];
    assert_eq!(
        counts["ConfigMap"], 3,
        "settings, menu (shop), theme (blog); scratch excluded: {counts}"
    );
    assert_eq!(counts["Widget.example.com"], 2, "{counts}");
    assert_eq!(
        counts["CustomResourceDefinition.apiextensions.k8s.io"], 1,
        "the CRD behind the widgets: {counts}"
    );
    assert_eq!(counts["Secret"], 1, "{counts}");
    assert!(
        counts.get("Role.rbac.authorization.k8s.io").is_none(),
        "Role is excluded: {counts}"
    );
    // Every file has its checksum and size in the manifest.
    for f in m["files"].as_array().expect("files") {
        let p = dirs[0].join(f["path"].as_str().expect("path"));
        let bytes = std::fs::read(&p).expect("listed file exists");
        assert_eq!(
            bytes.len() as u64,
            f["size"].as_u64().expect("size"),
            "{p:?}"
        );
    }
    // The ConfigMaps: no server fields, no scratch namespace.
    let cms = std::fs::read_to_string(dirs[0].join("resources/core/v1/ConfigMap.ndjson"))
        .expect("ConfigMaps");
    assert!(
        !cms.contains("resourceVersion")
            && !cms.contains("\"uid\"")
            && !cms.contains("managedFields"),
        "{cms}"
    );
    assert!(!cms.contains("scratch"), "{cms}");
    // The Secret is encrypted at rest, and Debian's age CLI decrypts it with the identity.
    let sealed_path = dirs[0].join("resources/core/v1/Secret/shop/db.json.age");
    let sealed = std::fs::read(&sealed_path).expect("the Secret's file");
    assert!(sealed.starts_with(b"age-encryption.org/v1\n"), "age format");
    let plain_b64 = "czNjcjN0LWh1bnRlcjI="; // base64 of the password
    assert!(!String::from_utf8_lossy(&sealed).contains(plain_b64));
    assert!(!String::from_utf8_lossy(&sealed).contains("s3cr3t-hunter2"));
    let age = Command::new("age")
        .args(["--decrypt", "-i"])
        .arg(fixture().join("identity.txt"))
        .arg(&sealed_path)
        .output()
        .expect("the age CLI is installed (.ci/run installs Debian's age)");
    assert!(age.status.success(), "age -d: {}", stderr(&age));
    let secret: Value = serde_json::from_slice(&age.stdout).expect("a JSON Secret");
    assert_eq!(secret["data"]["password"], plain_b64);
    assert_eq!(secret["metadata"]["name"], "db");

    // Listed, and verified.
    let list = ok(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &["backup", "list", "nightly", "--store", &url],
    ));
    assert!(
        list.lines()
            .any(|l| l.starts_with("nightly\tsim-1\t") && l.ends_with("\tencrypted")),
        "{list}"
    );
    ok(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &[
            "backup",
            "verify",
            "nightly",
            "--cluster",
            "sim-1",
            "--store",
            &url,
        ],
    ));

    // Without the identity the encrypted Secrets make the restore refuse before applying.
    let o = run(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &[
            "restore",
            "--backup",
            "nightly",
            "--cluster",
            "sim-1",
            "--to",
            "sim-2",
            "--store",
            &url,
        ],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--identity"), "{}", stderr(&o));

    // A dry run changes nothing.
    let identity = fixture().join("identity.txt");
    let overrides = fixture().join("override.yaml");
    let restore_args = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "restore",
            "--backup",
            "nightly",
            "--cluster",
            "sim-1",
            "--to",
            "sim-2",
            "--store",
            &url,
            "--namespace-map",
            "shop=shop-dr",
            "--identity",
            identity.to_str().unwrap_or(""),
            "--override",
            overrides.to_str().unwrap_or(""),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let dry: Vec<String> = restore_args(&["--dry-run"]);
    let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    let out = ok(flotilla_with(&kube.kubeconfig, &repo, &dry));
    assert!(
        out.contains("ConfigMap/shop-dr/settings would be created"),
        "{out}"
    );
    assert!(
        !kube
            .run(&["--context", "sim-2", "get", "ns", "shop-dr"])
            .status
            .success(),
        "dry run created nothing"
    );

    let args = restore_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(flotilla_with(&kube.kubeconfig, &repo, &args));
    assert!(
        out.contains(
            "sim-2: CustomResourceDefinition.apiextensions.k8s.io/widgets.example.com created"
        ),
        "{out}"
    );
    assert!(
        out.contains("sim-2: Widget.example.com/shop-dr/gear created"),
        "{out}"
    );
    assert!(
        out.contains("sim-2: Namespace/default skipped: already exists"),
        "{out}"
    );

    // The restored objects equal the originals minus server fields, with the namespace map
    // and the overrides applied.
    for (kind, ns_from, ns_to, name) in [
        ("configmap", "shop", "shop-dr", "menu"),
        ("configmap", "blog", "blog", "theme"),
        ("configmap", "shop", "shop-dr", "settings"),
        ("secret", "shop", "shop-dr", "db"),
        ("widgets.example.com", "blog", "blog", "cog"),
        ("widgets.example.com", "shop", "shop-dr", "gear"),
    ] {
        let a = user_view(&get_json(&kube, "sim-1", &[kind, "-n", ns_from, name]));
        let b = user_view(&get_json(&kube, "sim-2", &[kind, "-n", ns_to, name]));
        let mut want = a.clone();
        if name == "settings" {
            want["data"]["region"] = "cloud-shanghai".into();
            want["data"]["storageClass"] = "cloud-essd".into();
        }
        if name == "gear" {
            want["spec"]["size"] = 5.into();
        }
        assert_eq!(b, want, "{kind} {ns_to}/{name}");
    }
    // Applied by the restore's field manager.
    let cm = kube.ok(&[
        "--context",
        "sim-2",
        "get",
        "cm",
        "-n",
        "shop-dr",
        "settings",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert_eq!(cm.trim(), "flotilla-restore");
    // Excluded: the Role and the scratch namespace.
    assert!(
        !kube
            .run(&[
                "--context",
                "sim-2",
                "get",
                "role",
                "-n",
                "shop-dr",
                "reader"
            ])
            .status
            .success()
    );
    assert!(
        !kube
            .run(&["--context", "sim-2", "get", "ns", "scratch"])
            .status
            .success()
    );

    // Again: everything exists, everything is skipped; --existing update overwrites.
    kube.ok(&[
        "--context",
        "sim-2",
        "-n",
        "blog",
        "patch",
        "configmap",
        "theme",
        "--type",
        "merge",
        "-p",
        "{\"data\":{\"color\":\"green\"}}",
    ]);
    let out = ok(flotilla_with(&kube.kubeconfig, &repo, &args));
    assert!(
        out.contains("ConfigMap/blog/theme skipped: already exists"),
        "{out}"
    );
    assert!(!out.contains(" created"), "{out}");
    let mut upd = restore_args(&["--existing", "update"]);
    upd.push("--include-kinds".into());
    upd.push("ConfigMap".into());
    let upd: Vec<&str> = upd.iter().map(String::as_str).collect();
    let out = ok(flotilla_with(&kube.kubeconfig, &repo, &upd));
    assert!(out.contains("ConfigMap/blog/theme updated"), "{out}");
    assert!(!out.contains("Widget"), "--include-kinds ConfigMap: {out}");
    let color = kube.ok(&[
        "--context",
        "sim-2",
        "get",
        "cm",
        "-n",
        "blog",
        "theme",
        "-o",
        "jsonpath={.data.color}",
    ]);
    assert_eq!(color, "blue");
}

#[test]
fn a_flipped_byte_in_the_store_makes_restore_refuse_naming_the_file() {
    let kube = seeded_sim();
    let store = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", store.path().display());
    let repo = fixture().join("repo");
    ok(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &["backup", "run", "nightly", "--store", &url],
    ));
    let dir = backup_dirs(store.path(), "nightly", "sim-1").remove(0);
    let file = dir.join("resources/example.com/v1/Widget.ndjson");
    let mut bytes = std::fs::read(&file).expect("widgets file");
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&file, &bytes).expect("flip a byte");

    let o = run(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &[
            "backup",
            "verify",
            "nightly",
            "--cluster",
            "sim-1",
            "--store",
            &url,
        ],
    ));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resources/example.com/v1/Widget.ndjson: SHA-256"),
        "{}",
        stderr(&o)
    );

    let identity = fixture().join("identity.txt");
    let o = run(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &[
            "restore",
            "--backup",
            "nightly",
            "--cluster",
            "sim-1",
            "--to",
            "sim-2",
            "--store",
            &url,
            "--identity",
            identity.to_str().unwrap_or(""),
        ],
    ));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("Widget.ndjson"), "{}", stderr(&o));
    // Nothing was applied, not even the CRD or the namespaces.
    assert!(
        !kube
            .run(&["--context", "sim-2", "get", "ns", "shop"])
            .status
            .success()
    );
    assert!(
        !kube
            .run(&["--context", "sim-2", "get", "crd", "widgets.example.com"])
            .status
            .success()
    );

    // Truncation is refused the same way.
    bytes[i] ^= 0x01;
    bytes.truncate(i);
    std::fs::write(&file, &bytes).expect("truncate");
    let o = run(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &[
            "backup",
            "verify",
            "nightly",
            "--cluster",
            "sim-1",
            "--store",
            &url,
        ],
    ));
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Widget.ndjson: size"), "{}", stderr(&o));
}

#[test]
fn retention_deletes_expired_backups_but_never_the_last_good_one() {
    let kube = seeded_sim();
    let store = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", store.path().display());
    let repo = fixture().join("repo");
    // `plain` keeps backups for 1 s and has no age recipients: Secrets excluded.
    let out = ok(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &["backup", "run", "plain", "--store", &url],
    ));
    assert!(out.contains("Secrets excluded"), "{out}");
    let first = backup_dirs(store.path(), "plain", "sim-1");
    assert_eq!(first.len(), 1);
    assert_eq!(manifest(&first[0])["secrets"], "excluded");
    assert!(!first[0].join("resources/core/v1/Secret").exists());
    std::thread::sleep(Duration::from_millis(1100));
    let out = ok(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &["backup", "run", "plain", "--store", &url],
    ));
    assert!(out.contains("expired backup plain/sim-1/"), "{out}");
    let second = backup_dirs(store.path(), "plain", "sim-1");
    assert_eq!(second.len(), 1, "the expired one is gone: {second:?}");
    assert_ne!(second, first);

    // A failed backup (the cluster is unreachable) neither lists nor expires anything: the
    // last good backup stays although it is older than `retain`.
    std::thread::sleep(Duration::from_millis(1100));
    let dead = kube.dir.path().join("dead-kubeconfig");
    let text = std::fs::read_to_string(&kube.kubeconfig).expect("kubeconfig");
    let port = text
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split(['/', '\n', '"']).next())
        .expect("a port");
    std::fs::write(
        &dead,
        text.replace(&format!("127.0.0.1:{port}"), "127.0.0.1:9"),
    )
    .expect("write");
    let o = run(flotilla_with(
        &dead,
        &repo,
        &["backup", "run", "plain", "--store", &url],
    ));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("sim-1: backup failed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(backup_dirs(store.path(), "plain", "sim-1"), second);
    let list = ok(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &["backup", "list", "plain", "--store", &url],
    ));
    assert_eq!(
        list.lines().count(),
        2,
        "header and the last good backup: {list}"
    );
}

#[test]
fn a_backup_killed_during_its_upload_leaves_nothing_restorable() {
    let kube = seeded_sim();
    let store = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", store.path().display());
    let repo = fixture().join("repo");
    // The backup stops right before its manifest (a test hook that creates `marker` there),
    // so the kill lands after every data file and before the manifest, every time.
    let marker = store.path().join("stalled");
    let mut child = flotilla_with(
        &kube.kubeconfig,
        &repo,
        &["backup", "run", "nightly", "--store", &url],
    )
    .env("FLOTILLA_TEST_STALL_BEFORE_MANIFEST", &marker)
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("spawn flotilla");
    let root = store.path().join("nightly/sim-1");
    let deadline = Instant::now() + Duration::from_secs(120);
    let stalled = loop {
        if marker.exists() {
            break true;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // kill -9: no destructor, no cleanup.
    let _ = Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        stalled,
        "the backup ended or hung before reaching its manifest"
    );
    let files = walk(&root);
    assert!(
        files
            .iter()
            .any(|p| p.to_string_lossy().contains("ConfigMap")),
        "the data files were uploaded: {files:?}"
    );
    assert!(
        !files.iter().any(|p| p.ends_with("manifest.json")),
        "no manifest: {files:?}"
    );
    let list = ok(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &["backup", "list", "nightly", "--store", &url],
    ));
    assert_eq!(list.lines().count(), 1, "only the header: {list}");
    let o = run(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &[
            "restore",
            "--backup",
            "nightly",
            "--cluster",
            "sim-1",
            "--to",
            "sim-2",
            "--store",
            &url,
        ],
    ));
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no complete backup \"nightly\" of cluster \"sim-1\""),
        "{}",
        stderr(&o)
    );
    // The garbage collector removes what the killed backup left.
    let out = ok(flotilla_with(
        &kube.kubeconfig,
        &repo,
        &["backup", "gc", "nightly", "--grace", "0s", "--store", &url],
    ));
    assert!(
        out.contains("deleted incomplete backup nightly/sim-1/"),
        "{out}"
    );
    assert!(walk(&root).is_empty(), "{:?}", walk(&root));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_daemon_runs_scheduled_backups_read_only_and_reports_them() {
    use crate::serve_support::{ServeProcess, serve_command};
    let kube = seeded_sim();
    let store = tempfile::tempdir().expect("temp dir");
    let repo = tempfile::tempdir().expect("temp dir");
    let fleet = format!(
        "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {{name: dr}}\nclusters:\n  - {{name: sim-1}}\n  - {{name: sim-2}}\nbackups:\n  - name: often\n    schedule: \"*/2 * * * * *\"\n    clusters: {{names: [sim-1]}}\n    include: {{namespaces: [blog]}}\n    retain: 1h\n    store: file://{}\n  - name: yearly\n    schedule: \"0 0 1 1 *\"\n    clusters: {{names: [sim-1]}}\n    include: {{namespaces: [shop]}}\n    retain: 1h\n    store: file://{}\n",
        store.path().display(),
        store.path().display()
    );
    std::fs::write(repo.path().join("fleet.yaml"), fleet).expect("fleet.yaml");
    let git = |args: &[&str]| {
        let o = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
            .args(args)
            .current_dir(repo.path())
            .output()
            .expect("git runs");
        assert!(o.status.success(), "git {args:?}: {}", stderr(&o));
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "fleet.yaml"]);
    git(&["commit", "-q", "-m", "fleet"]);
    let scratch = tempfile::tempdir().expect("temp dir");
    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("file://{}", repo.path().display()))
        .args(["--ref", "main", "--read-only", "--kubeconfig"])
        .arg(&kube.kubeconfig)
        .arg("--state")
        .arg(scratch.path().join("state"))
        .arg("--cache")
        .arg(scratch.path().join("cache"));
    let d = ServeProcess::spawn(cmd, port);
    d.wait_for("a scheduled backup", Duration::from_secs(40), || {
        d.try_json("/api/v1/backups")["policies"][0]["last"]["sim-1"]["ok"] == true
    });
    let status = d.json("/api/v1/backups");
    let p = &status["policies"][0];
    assert_eq!(p["name"], "often");
    assert_eq!(p["clusters"], serde_json::json!(["sim-1"]));
    assert!(p["nextAt"].is_string(), "{status}");
    assert!(
        p["last"]["sim-1"]["objects"].as_u64().unwrap_or(0) >= 2,
        "blog: namespace, theme, cog: {status}"
    );
    let (_, metrics) = d.get("/metrics").expect("metrics");
    assert!(
        metrics.contains(
            "flotilla_backup_last_success_timestamp_seconds{backup=\"often\",cluster=\"sim-1\"}"
        ),
        "{metrics}"
    );
    assert!(d.log().contains("backup complete"), "{}", d.log());
    // Read-only mode: no mutation was attempted, and the backup is listable and complete.
    assert!(!d.log().contains("refused: read-only"), "{}", d.log());
    // On demand through the API (also in read-only mode): the yearly policy runs now.
    let (code, body) = d
        .request("POST", "/api/v1/backups/nope/run", &[], b"")
        .expect("answer");
    assert_eq!(code, 404, "{body}");
    let (code, body) = d
        .request("POST", "/api/v1/backups/yearly/run", &[], b"")
        .expect("answer");
    assert_eq!(code, 202, "{body}");
    d.wait_for("the requested backup", Duration::from_secs(30), || {
        d.try_json("/api/v1/backups")["policies"][1]["last"]["sim-1"]["ok"] == true
    });
    let url = format!("file://{}", store.path().display());
    let list = ok(flotilla_with(
        &kube.kubeconfig,
        repo.path(),
        &["backup", "list", "yearly", "--store", &url],
    ));
    assert_eq!(list.lines().count(), 2, "{list}");
    let list = ok(flotilla_with(
        &kube.kubeconfig,
        repo.path(),
        &["backup", "list", "often", "--store", &url],
    ));
    assert!(list.lines().count() >= 2, "{list}");
    ok(flotilla_with(
        &kube.kubeconfig,
        repo.path(),
        &[
            "backup",
            "verify",
            "often",
            "--cluster",
            "sim-1",
            "--store",
            &url,
        ],
    ));
}

#[test]
fn real_backup_and_restore_between_two_control_planes() {
    let one = RealKube::start(KubeOptions::default());
    let two = RealKube::start(KubeOptions::default());
    let kubeconfig = one.dir.path().join("fleet-kubeconfig");
    kubeconfig_file(
        &kubeconfig,
        &[one.kubeconfig_as("real-1"), two.kubeconfig_as("real-2")],
    );
    let f = fixture();
    one.ok(&["apply", "-f", f.join("crd.yaml").to_str().unwrap_or("")]);
    wait_established(|args| one.run(args), &[]);
    one.ok(&["apply", "-f", f.join("objects.yaml").to_str().unwrap_or("")]);
    let before = one.admin_mutations().len();

    let store = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}", store.path().display());
    let repo = workspace().join("fixtures/backup/real/repo");
    let out = ok(flotilla_with(
        &kubeconfig,
        &repo,
        &["backup", "run", "nightly", "--store", &url],
    ));
    assert!(out.contains("real-1: backup nightly/real-1/"), "{out}");
    // A backup only reads: the API server's audit log has no new mutation.
    let after = one.admin_mutations();
    assert_eq!(
        after.len(),
        before,
        "mutations during the backup: {:?}",
        &after[before..]
    );

    let identity = f.join("identity.txt");
    let out = ok(flotilla_with(
        &kubeconfig,
        &repo,
        &[
            "restore",
            "--backup",
            "nightly",
            "--cluster",
            "real-1",
            "--to",
            "real-2",
            "--store",
            &url,
            "--namespace-map",
            "shop=shop-dr",
            "--identity",
            identity.to_str().unwrap_or(""),
        ],
    ));
    assert!(
        out.contains("real-2: Widget.example.com/shop-dr/gear created"),
        "{out}"
    );
    assert!(!out.contains(" failed"), "{out}");
    let get = |k: &RealKube, args: &[&str]| -> Value {
        let mut a = vec!["get", "-o", "json"];
        a.extend(args);
        serde_json::from_str(&k.ok(&a)).expect("kubectl JSON")
    };
    for (kind, from, to, name) in [
        ("configmap", "shop", "shop-dr", "settings"),
        ("configmap", "blog", "blog", "theme"),
        ("secret", "shop", "shop-dr", "db"),
        ("widgets.example.com", "shop", "shop-dr", "gear"),
        ("widgets.example.com", "blog", "blog", "cog"),
    ] {
        let a = user_view(&get(&one, &[kind, "-n", from, name]));
        let b = user_view(&get(&two, &[kind, "-n", to, name]));
        assert_eq!(a, b, "{kind} {to}/{name}");
    }
    let managers = two.ok(&[
        "get",
        "cm",
        "-n",
        "shop-dr",
        "settings",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert_eq!(managers.trim(), "flotilla-restore");
    assert!(
        !two.run(&["get", "role", "-n", "shop-dr", "reader"])
            .status
            .success(),
        "Role excluded"
    );
    assert!(
        !two.run(&["get", "ns", "scratch"]).status.success(),
        "scratch excluded"
    );
}

/// A real S3-compatible server on loopback: `s3s-fs` (crates.io; `.ci/run` installs it) over
/// a temp directory, with one bucket and one access key. Found through `FLOTILLA_TEST_S3S`,
/// else on PATH; without it the S3 tests fail (they never skip).
struct S3Server {
    child: std::process::Child,
    port: u16,
    root: tempfile::TempDir,
}

const S3_KEY: &str = "flotilla-test";
const S3_SECRET: &str = "s3s-secret-for-tests-only";
const BUCKET: &str = "flotilla-backups";

impl S3Server {
    fn start() -> S3Server {
        let bin = std::env::var_os("FLOTILLA_TEST_S3S")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("s3s-fs"));
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("bucket dir");
        let port = crate::git_support::free_port();
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(root.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "the S3 tests need s3s-fs ({}: {e}): .ci/run installs it (cargo install s3s-fs --features binary) and sets FLOTILLA_TEST_S3S",
                    bin.display()
                )
            });
        let s = S3Server { child, port, root };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `cmd` with this server's endpoint and the given credentials in the environment.
    fn with(&self, mut cmd: Command, key: &str, secret: &str) -> Command {
        cmd.env("FLOTILLA_S3_ENDPOINT", self.endpoint())
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret);
        cmd
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn backups_go_to_an_s3_server_on_loopback_and_restore_from_it() {
    let kube = seeded_sim();
    let s3 = S3Server::start();
    let repo = fixture().join("repo");
    let url = format!("s3://{BUCKET}/team-a");
    let cmd = |args: &[&str]| {
        s3.with(
            flotilla_with(&kube.kubeconfig, &repo, args),
            S3_KEY,
            S3_SECRET,
        )
    };
    let out = ok(cmd(&["backup", "run", "nightly", "--store", &url]));
    assert!(out.contains("sim-1: backup nightly/sim-1/"), "{out}");
    // On the server's disk: bucket/prefix/backup/cluster/timestamp/...
    let dirs = backup_dirs(
        &s3.root.path().join(BUCKET).join("team-a"),
        "nightly",
        "sim-1",
    );
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert!(dirs[0].join("manifest.json").is_file());
    let list = ok(cmd(&["backup", "list", "nightly", "--store", &url]));
    assert_eq!(list.lines().count(), 2, "{list}");

    let identity = fixture().join("identity.txt");
    let out = ok(cmd(&[
        "restore",
        "--backup",
        "nightly",
        "--cluster",
        "sim-1",
        "--to",
        "sim-2",
        "--store",
        &url,
        "--namespace-map",
        "shop=shop-dr",
        "--identity",
        identity.to_str().unwrap_or(""),
    ]));
    assert!(out.contains("ConfigMap/shop-dr/settings created"), "{out}");
    let region = kube.ok(&[
        "--context",
        "sim-2",
        "get",
        "cm",
        "-n",
        "shop-dr",
        "settings",
        "-o",
        "jsonpath={.data.region}",
    ]);
    assert_eq!(region, "idc-hangzhou");

    // Wrong credentials: a clear error, no secret in it, and nothing listable added.
    let o = run(s3.with(
        flotilla_with(
            &kube.kubeconfig,
            &repo,
            &["backup", "run", "nightly", "--store", &url],
        ),
        S3_KEY,
        "wrong-secret",
    ));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("sim-1: backup failed: store s3://flotilla-backups/team-a:"),
        "{err}"
    );
    assert!(err.contains("403"), "{err}");
    assert!(
        !err.contains("wrong-secret") && !err.contains(S3_SECRET),
        "{err}"
    );
    let list = ok(cmd(&["backup", "list", "nightly", "--store", &url]));
    assert_eq!(
        list.lines().count(),
        2,
        "still only the good backup: {list}"
    );

    // A flipped byte on the server's disk: verify and restore refuse, naming the file.
    let file = dirs[0].join("resources/core/v1/ConfigMap.ndjson");
    let mut bytes = std::fs::read(&file).expect("ConfigMaps on the server");
    bytes[10] ^= 0x20;
    std::fs::write(&file, &bytes).expect("flip");
    let o = run(cmd(&[
        "backup",
        "verify",
        "nightly",
        "--cluster",
        "sim-1",
        "--store",
        &url,
    ]));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("resources/core/v1/ConfigMap.ndjson: SHA-256"),
        "{}",
        stderr(&o)
    );
}
