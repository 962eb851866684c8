//! Fleet rollouts driven by real Git commits against six in-process sim clusters: canary
//! first, rollback on failure, failed revisions remembered, state store inspected with
//! `flotilla rollout status`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use flotilla_sim::SimConfig;

use crate::support::{show, stderr, stdout};

struct Fleet {
    k: crate::support::SimKube,
    repo: PathBuf,
    state: PathBuf,
}

impl std::ops::Deref for Fleet {
    type Target = crate::support::SimKube;
    fn deref(&self) -> &crate::support::SimKube {
        &self.k
    }
}

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: IMAGE}
";

fn fleet_yaml(extra_rollout: &str) -> String {
    let default_batches = "      batches:\n        - clusters: {names: [sim-1]}\n        - percent: 50\n        - percent: 100\n";
    let text = fleet_yaml_with(extra_rollout);
    if extra_rollout.contains("batches:") {
        text.replacen(default_batches, "", 1)
    } else {
        text
    }
}

fn fleet_yaml_with(extra_rollout: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: rt}}
clusters:
  - {{name: sim-1}}
  - {{name: sim-2}}
  - {{name: sim-3}}
  - {{name: sim-4}}
  - {{name: sim-5}}
  - {{name: sim-6}}
bundles:
  - {{name: app, path: app, namespace: shop}}
placements:
  - name: web
    bundles: [app]
    clusters: {{}}
    rollout:
      batches:
        - clusters: {{names: [sim-1]}}
        - percent: 50
        - percent: 100
      maxConcurrent: 3
      healthDeadline: 3s
      soak: 1s
{extra_rollout}"
    )
}

fn git(repo: &Path, args: &[&str]) {
    let o = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(o.status.success(), "git {args:?}: {}", stderr(&o));
}

impl Fleet {
    fn new(sim: SimConfig) -> Fleet {
        let k = crate::support::SimKube::start(sim);
        let repo = k.dir.path().join("repo");
        std::fs::create_dir_all(repo.join("app")).expect("mkdir");
        git(&repo, &["init", "-q", "-b", "main"]);
        Fleet {
            state: k.dir.path().join("state"),
            repo,
            k,
        }
    }

    /// Writes fleet.yaml and the Deployment with `image`, and commits.
    fn commit(&self, image: &str, message: &str) {
        self.commit_with(image, "", message);
    }

    /// Like `commit`, with extra lines under the placement's `rollout:`.
    fn commit_with(&self, image: &str, extra_rollout: &str, message: &str) {
        self.commit_fleet(&fleet_yaml(extra_rollout), image, message);
    }

    /// Writes one more file of the repository (committed by the next commit).
    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.repo.join(rel), text).expect("write");
    }

    /// Commits `fleet` as fleet.yaml with the Deployment running `image`.
    fn commit_fleet(&self, fleet: &str, image: &str, message: &str) {
        std::fs::write(self.repo.join("fleet.yaml"), fleet).expect("write");
        std::fs::write(self.repo.join("app/web.yaml"), WEB.replace("IMAGE", image)).expect("write");
        std::fs::write(
            self.repo.join("app/ns.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
        )
        .expect("write");
        git(&self.repo, &["add", "-A"]);
        git(&self.repo, &["commit", "-q", "-m", message]);
    }

    fn flotilla(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(args)
            .arg("--repo")
            .arg(&self.repo)
            .args(["--rev", "main", "--cache"])
            .arg(self.repo.parent().expect("parent").join("cache"))
            .arg("--state")
            .arg(&self.state)
            .env_remove("FLOTILLA_LOG")
            .env_remove("KUBECONFIG")
            .output()
            .expect("flotilla runs")
    }

    /// `flotilla apply` started in the background, stdout and stderr piped.
    fn spawn_apply(&self) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_flotilla"))
            .args(["apply", "--kubeconfig"])
            .arg(&self.kubeconfig)
            .arg("--repo")
            .arg(&self.repo)
            .args(["--rev", "main", "--cache"])
            .arg(self.repo.parent().expect("parent").join("cache"))
            .arg("--state")
            .arg(&self.state)
            .env_remove("FLOTILLA_LOG")
            .env_remove("KUBECONFIG")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("flotilla starts")
    }

    fn apply(&self) -> Output {
        self.flotilla(&[
            "apply",
            "--kubeconfig",
            self.kubeconfig.to_str().expect("UTF-8"),
        ])
    }

    fn status(&self) -> String {
        stdout(&self.flotilla(&["rollout", "status", "web"]))
    }

    /// The image each cluster's Deployment runs (`-` when absent).
    fn images(&self) -> Vec<String> {
        (1..=6)
            .map(|i| {
                let o = self.run(&[
                    "--context",
                    &format!("sim-{i}"),
                    "get",
                    "deploy",
                    "web",
                    "-n",
                    "shop",
                    "-o",
                    "jsonpath={.spec.template.spec.containers[0].image}",
                ]);
                if o.status.success() {
                    stdout(&o)
                } else {
                    "-".into()
                }
            })
            .collect()
    }
}

/// The (kind, batch, cluster) of each event line printed by apply, in order.
fn events(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest.to_string()))
        .collect()
}

#[test]
fn rollout_canary_first_rollback_and_remembered_failure() {
    let f = Fleet::new(
        SimConfig {
            clusters: 6,
            ready_delay: std::time::Duration::from_millis(200),
            ..Default::default()
        }
        .unready_images("^broken/")
        .expect("regex"),
    );

    // A good commit converges batch by batch: canary, then 3 of the other 5, then the rest.
    f.commit("nginx:1.27", "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let ev = events(&stdout(&o));
    let applying: Vec<&String> = ev.iter().filter(|e| e.contains("batch-applying")).collect();
    assert_eq!(
        applying
            .iter()
            .map(|e| e
                .split_once(": batch-applying: ")
                .map(|(_, c)| c)
                .unwrap_or(""))
            .collect::<Vec<_>>(),
        vec!["sim-1", "sim-2, sim-3, sim-4", "sim-5, sim-6"],
        "{}",
        show(&o)
    );
    // Each batch soaks and passes before the next one starts.
    let pos = |needle: &str| {
        ev.iter()
            .position(|e| e.contains(needle))
            .unwrap_or(usize::MAX)
    };
    assert!(pos("web batch 1: soaking") < pos("web batch 1: batch-passed"));
    assert!(pos("web batch 1: batch-passed") < pos("web batch 2: batch-applying"));
    assert!(pos("web batch 2: batch-passed") < pos("web batch 3: batch-applying"));
    assert!(stderr(&o).contains("Succeeded"), "{}", show(&o));
    assert_eq!(f.images(), vec!["nginx:1.27"; 6]);
    let status = f.status();
    assert!(status.contains("Succeeded"), "{status}");

    // Nothing new: no rollout, no request that changes anything.
    let before = f.sim.audit().len();
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr(&o).contains("placement web: up to date"),
        "{}",
        show(&o)
    );
    assert!(!f.sim.audit()[before..].iter().any(|a| a.is_mutation()));

    // A bad image fails in the canary, is rolled back there, never reaches the others.
    f.commit("broken/nginx:2", "bad");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    assert!(out.contains("web batch 1 sim-1: unhealthy"), "{out}");
    assert!(out.contains("web batch 1 sim-1: rolled-back"), "{out}");
    assert!(
        !out.contains("web batch 2"),
        "the bad revision never leaves the canary:\n{out}"
    );
    assert!(stderr(&o).contains("RolledBack"), "{}", show(&o));
    assert_eq!(f.images(), vec!["nginx:1.27"; 6]);

    // The failed revision is not retried.
    let before = f.sim.audit().len();
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stderr(&o).contains("failed before"), "{}", show(&o));
    assert!(!f.sim.audit()[before..].iter().any(|a| a.is_mutation()));

    // The next good commit rolls out normally.
    f.commit("nginx:1.28", "fix");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(f.images(), vec!["nginx:1.28"; 6]);
}

#[test]
fn rollout_failure_in_the_second_batch_rolls_back_the_canary_too() {
    let f = Fleet::new(SimConfig {
        clusters: 6,
        ready_delay: std::time::Duration::from_millis(200),
        ..Default::default()
    });
    f.commit("nginx:1.27", "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // Only sim-3 (second batch) cannot run the new image.
    let re = regex::Regex::new("^nginx:1.28$").expect("regex");
    assert!(f.sim.set_unready_images("sim-3", Some(re)));
    f.commit("nginx:1.28", "new");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    assert!(out.contains("web batch 1: batch-passed"), "{out}");
    assert!(out.contains("web batch 2 sim-3: unhealthy"), "{out}");
    for c in ["sim-1", "sim-2", "sim-3", "sim-4"] {
        assert!(
            out.lines()
                .any(|l| l.contains(&format!(" {c}: rolled-back"))),
            "{c} rolled back:\n{out}"
        );
    }
    assert!(!out.contains("web batch 3"), "{out}");
    assert_eq!(f.images(), vec!["nginx:1.27"; 6]);
    let status = f.status();
    assert!(status.contains("RolledBack"), "{status}");
    assert!(status.contains("unhealthy batch 2 sim-3"), "{status}");
}

/// Reads the child's stdout until a line contains `needle`; returns the reader for the rest.
fn read_until(
    child: &mut std::process::Child,
    needle: &str,
) -> std::io::BufReader<std::process::ChildStdout> {
    let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    loop {
        line.clear();
        let n = std::io::BufRead::read_line(&mut reader, &mut line).expect("read");
        assert!(n > 0, "apply ended before printing {needle:?}");
        if line.contains(needle) {
            return reader;
        }
    }
}

/// Runs `flotilla apply` again and again, killing it with SIGKILL (by PID) after a
/// pseudo-random delay, `kills` times (a run that finishes first counts as no kill and is
/// simply started again), then lets one run finish; returns that run's output.
fn apply_with_kills(
    f: &Fleet,
    seed: &mut u64,
    max_delay_ms: u64,
    kills_wanted: usize,
) -> (usize, Output) {
    let mut kills = 0;
    loop {
        let mut child = f.spawn_apply();
        // xorshift: reproducible from the printed seed.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let delay = std::time::Duration::from_millis(20 + *seed % max_delay_ms);
        let started = std::time::Instant::now();
        loop {
            if let Some(_status) = child.try_wait().expect("wait") {
                let out = child.wait_with_output().expect("output");
                if kills >= kills_wanted {
                    return (kills, out);
                }
                break;
            }
            if kills < kills_wanted && started.elapsed() >= delay {
                child.kill().expect("kill -9");
                let _ = child.wait();
                kills += 1;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Every batch of the rollout with this id, as the store's history tells it: each cluster
/// applied and healthy before the batch soaked, and the soak before the batch passed.
fn check_history(status: &str, batches: &[&[&str]]) {
    let lines: Vec<&str> = status
        .lines()
        .skip_while(|l| !l.starts_with("events:"))
        .collect();
    let last = |needle: &str| lines.iter().rposition(|l| l.contains(needle));
    let first = |needle: &str| lines.iter().position(|l| l.contains(needle));
    for (i, clusters) in batches.iter().enumerate() {
        let n = i + 1;
        let soak = first(&format!("soaking batch {n}"))
            .unwrap_or_else(|| panic!("batch {n} soaked:\n{status}"));
        let passed = first(&format!("batch-passed batch {n}"))
            .unwrap_or_else(|| panic!("batch {n} passed:\n{status}"));
        assert!(soak < passed, "batch {n}: soak before pass:\n{status}");
        for c in *clusters {
            let healthy = last(&format!("healthy batch {n} {c}"))
                .unwrap_or_else(|| panic!("{c} healthy in batch {n}:\n{status}"));
            let applied = first(&format!("applied batch {n} {c}"))
                .unwrap_or_else(|| panic!("{c} applied in batch {n}:\n{status}"));
            assert!(
                applied < healthy && healthy < soak,
                "batch {n} {c}: applied, healthy, then soak:\n{status}"
            );
            // Gates after health (before the soak) and again after it (before the pass).
            let gate = |from: usize, to: usize| {
                lines[from..to]
                    .iter()
                    .any(|l| l.contains(&format!("gate-passed batch {n} {c}")))
            };
            assert!(
                gate(healthy, soak),
                "batch {n} {c}: gate after health:\n{status}"
            );
            assert!(
                gate(soak, passed),
                "batch {n} {c}: gate after the soak:\n{status}"
            );
        }
        if n > 1 {
            let prev_passed = first(&format!("batch-passed batch {}", n - 1)).unwrap_or(usize::MAX);
            let applying = first(&format!("batch-applying batch {n}")).unwrap_or(0);
            assert!(
                prev_passed < applying,
                "batch {n} opened only after batch {} passed:\n{status}",
                n - 1
            );
        }
    }
}

#[test]
fn rollout_survives_kill_9_at_random_points() {
    let f = Fleet::new(
        SimConfig {
            clusters: 6,
            ready_delay: std::time::Duration::from_millis(150),
            ..Default::default()
        }
        .unready_images("^broken/")
        .expect("regex"),
    );
    let mut seed: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    println!("kill seed: {seed}");
    let prom = crate::prometheus_support::PromServer::start(
        &(1..=6)
            .map(|i| {
                (
                    format!("flotilla_test_error_rate{{cluster=\"sim-{i}\"}}"),
                    0.001,
                )
            })
            .collect::<Vec<_>>()
            .iter()
            .map(|(s, v)| (s.as_str(), *v))
            .collect::<Vec<_>>(),
    );
    let gates = format!(
        "      gates:\n        - prometheus:\n            url: {}\n            query: 'flotilla_test_error_rate{{cluster=\"${{cluster.name}}\"}}'\n            max: 0.01\n",
        prom.url()
    );
    f.commit_with("nginx:1.27", &gates, "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // A good commit, killed again and again: it still ends Succeeded everywhere, and no
    // batch passed without its gates.
    f.commit_with("nginx:1.28", &gates, "good");
    let mut kills = 0;
    let (k, o) = apply_with_kills(&f, &mut seed, 900, 12);
    kills += k;
    assert_eq!(o.status.code(), Some(0), "after {k} kills:\n{}", show(&o));
    assert_eq!(f.images(), vec!["nginx:1.28"; 6]);
    let status = f.status();
    assert!(status.contains("Succeeded"), "{status}");
    check_history(
        &status,
        &[
            &["sim-1"],
            &["sim-2", "sim-3", "sim-4"],
            &["sim-5", "sim-6"],
        ],
    );

    // A bad commit, killed too: rolled back in the canary, the others untouched.
    f.commit_with("broken/nginx:3", &gates, "bad");
    let (k, o) = apply_with_kills(&f, &mut seed, 1500, 10);
    kills += k;
    assert_eq!(o.status.code(), Some(1), "after {k} kills:\n{}", show(&o));
    assert_eq!(f.images(), vec!["nginx:1.28"; 6]);
    let status = f.status();
    assert!(status.contains("RolledBack"), "{status}");
    assert!(!status.contains("batch-applying batch 2"), "{status}");
    assert!(
        kills >= 20,
        "only {kills} kills: the rollouts were too quick for the test"
    );
}

#[test]
fn rollout_a_failing_metric_gate_in_the_second_batch_rolls_back() {
    let prom = crate::prometheus_support::PromServer::start(
        &(1..=6)
            .map(|i| {
                (
                    format!("flotilla_test_error_rate{{cluster=\"sim-{i}\"}}"),
                    0.001,
                )
            })
            .collect::<Vec<_>>()
            .iter()
            .map(|(s, v)| (s.as_str(), *v))
            .collect::<Vec<_>>(),
    );
    let f = Fleet::new(SimConfig {
        clusters: 6,
        ready_delay: std::time::Duration::from_millis(150),
        ..Default::default()
    });
    let gates = format!(
        "      gates:\n        - prometheus:\n            url: {}\n            query: 'flotilla_test_error_rate{{cluster=\"${{cluster.name}}\"}}'\n            max: 0.01\n",
        prom.url()
    );
    f.commit_with("nginx:1.27", &gates, "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let out = stdout(&o);
    // Gates run after health and again after the soak, for every cluster.
    assert_eq!(
        out.lines()
            .filter(|l| l.contains(" sim-1: gate-passed"))
            .count(),
        2,
        "{out}"
    );

    // sim-3's error rate goes bad: its batch fails the gate and everything rolls back.
    prom.exporter
        .set(r#"flotilla_test_error_rate{cluster="sim-3"}"#, 0.25);
    std::thread::sleep(std::time::Duration::from_secs(3));
    f.commit_with("nginx:1.28", &gates, "new");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    let failed = out
        .lines()
        .find(|l| l.contains("web batch 2 sim-3: gate-failed"))
        .unwrap_or_default();
    assert!(failed.contains("0.25") && failed.contains("0.01"), "{out}");
    assert!(out.contains("web batch 1 sim-1: rolled-back"), "{out}");
    assert_eq!(f.images(), vec!["nginx:1.27"; 6]);
}

#[test]
fn rollout_on_failure_pause_holds_for_a_person_who_rolls_back() {
    let f = Fleet::new(
        SimConfig {
            clusters: 6,
            ready_delay: std::time::Duration::from_millis(150),
            ..Default::default()
        }
        .unready_images("^broken/")
        .expect("regex"),
    );
    f.commit_with("nginx:1.27", "      onFailure: pause\n", "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    f.commit_with("broken/nginx:2", "      onFailure: pause\n", "bad");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stdout(&o).contains("held for a person"), "{}", show(&o));
    let status = f.status();
    assert!(status.contains(": Paused"), "{status}");
    assert_eq!(f.images()[0], "broken/nginx:2", "paused, not rolled back");

    // Running apply again keeps holding; a person asks for the rollback.
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let o = f.flotilla(&["rollout", "rollback", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        stdout(&o).contains("web batch 1 sim-1: rolled-back"),
        "{}",
        show(&o)
    );
    assert_eq!(f.images(), vec!["nginx:1.27"; 6]);
    let status = f.status();
    assert!(
        status.contains("RolledBack") && status.contains("rollback requested"),
        "{status}"
    );
    // Nothing left to control.
    let o = f.flotilla(&["rollout", "abort", "web"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
}

#[test]
fn rollout_a_newer_commit_supersedes_one_in_progress() {
    let f = Fleet::new(SimConfig {
        clusters: 6,
        ready_delay: std::time::Duration::from_millis(150),
        ..Default::default()
    });
    f.commit("nginx:1.27", "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // A rollout that soaks its canary for a long time is interrupted there ...
    f.commit_with("nginx:1.28", "      batches:\n        - {clusters: {names: [sim-1]}, soak: 1h}\n        - percent: 100\n", "slow");
    let mut child = f.spawn_apply();
    let _reader = read_until(&mut child, "batch 1: soaking");
    child.kill().expect("kill");
    let _ = child.wait();
    assert_eq!(f.images()[0], "nginx:1.28");

    // ... and a newer commit supersedes it: every cluster ends on the newest revision,
    // the canary included, and the old rollout says it was superseded.
    f.commit("nginx:1.29", "newer");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stdout(&o).contains("web: superseded"), "{}", show(&o));
    assert_eq!(f.images(), vec!["nginx:1.29"; 6]);
}

#[test]
fn rollout_status_and_pause_work_while_apply_runs() {
    let f = Fleet::new(SimConfig {
        clusters: 6,
        ready_delay: std::time::Duration::from_millis(150),
        ..Default::default()
    });
    f.commit("nginx:1.27", "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // A long soak on the canary; while apply waits in it, another process reads the status
    // and asks for a pause, which the running apply honours.
    f.commit_with(
        "nginx:1.28",
        "      batches:\n        - {clusters: {names: [sim-1]}, soak: 1h}\n        - percent: 100\n",
        "slow",
    );
    let mut child = f.spawn_apply();
    let mut reader = read_until(&mut child, "batch 1: soaking");
    let status = f.status();
    assert!(status.contains("Soaking"), "{status}");
    let o = f.flotilla(&["rollout", "pause", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut reader, &mut rest).expect("read");
    let status_code = child.wait().expect("apply ends");
    assert_eq!(
        status_code.code(),
        Some(1),
        "paused is not success:\n{rest}"
    );
    assert!(rest.contains("web: paused: paused by request"), "{rest}");
    assert!(f.status().contains(": Paused"));
    assert_eq!(f.images()[0], "nginx:1.28");
    assert_eq!(f.images()[1], "nginx:1.27", "the next batch never opened");
}

const SETTINGS: &str =
    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {level: \"LEVEL\"}\n";
const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  selector: {app: web}\n  ports:\n  - {port: 80}\n";

impl Fleet {
    /// `kubectl --context CLUSTER -n shop ARGS...`, which must succeed.
    fn kubectl(&self, cluster: &str, args: &[&str]) -> String {
        let mut all = vec!["--context", cluster, "-n", "shop"];
        all.extend_from_slice(args);
        let o = self.run(&all);
        assert!(o.status.success(), "kubectl {all:?}: {}", show(&o));
        stdout(&o)
    }

    /// `data.KEY` of ConfigMap NAME in shop on CLUSTER (`-` when absent).
    fn cm(&self, cluster: &str, name: &str, key: &str) -> String {
        let o = self.run(&[
            "--context",
            cluster,
            "-n",
            "shop",
            "get",
            "cm",
            name,
            "-o",
            &format!("jsonpath={{.data.{key}}}"),
        ]);
        if o.status.success() {
            stdout(&o)
        } else {
            "-".into()
        }
    }

    fn patch_level(&self, cluster: &str, level: &str) {
        self.kubectl(
            cluster,
            &[
                "patch",
                "cm",
                "settings",
                "--type=merge",
                "-p",
                &format!("{{\"data\":{{\"level\":\"{level}\"}}}}"),
            ],
        );
    }

    /// Clusters that received a mutating request since audit record `from`.
    fn mutated_since(&self, from: usize) -> std::collections::BTreeSet<String> {
        self.sim.audit()[from..]
            .iter()
            .filter(|a| a.is_mutation())
            .map(|a| a.cluster.clone())
            .collect()
    }
}

fn sims() -> SimConfig {
    SimConfig {
        clusters: 6,
        ready_delay: std::time::Duration::from_millis(200),
        ..Default::default()
    }
    .unready_images("^broken/")
    .expect("regex")
}

#[test]
fn rollout_git_wins_over_a_kubectl_patch_and_a_rollback_forces() {
    let f = Fleet::new(sims());
    f.write("app/settings.yaml", &SETTINGS.replace("LEVEL", "1"));
    f.commit("nginx:1.27", "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // Someone patches a field Git sets: kubectl-patch now owns data.level on sim-1.
    f.patch_level("sim-1", "9");
    // The next commit rolls out anyway (Git wins by default) and takes the field back.
    f.commit("nginx:1.28", "second");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(!stdout(&o).contains("conflict"), "{}", show(&o));
    assert_eq!(f.images(), vec!["nginx:1.28"; 6]);
    assert_eq!(f.cm("sim-1", "settings", "level"), "1");

    // With the opt-out (forceConflicts: false) the same edit stops the canary's apply ...
    f.patch_level("sim-1", "9");
    let strict = fleet_yaml("").replace(
        "    clusters: {}\n",
        "    clusters: {}\n    forceConflicts: false\n",
    );
    f.commit_fleet(&strict, "nginx:1.29", "strict");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let out = stdout(&o);
    assert!(
        out.contains("web batch 1 sim-1: apply-failed") && out.contains("kubectl-patch"),
        "{}",
        show(&o)
    );
    // ... and the rollback, which always forces, restores the last good revision there.
    assert!(
        out.contains("web batch 1 sim-1: rolled-back"),
        "{}",
        show(&o)
    );
    assert!(stderr(&o).contains("RolledBack"), "{}", show(&o));
    assert!(!stderr(&o).contains("RollingBack"), "{}", show(&o));
    assert_eq!(f.cm("sim-1", "settings", "level"), "1");
    assert_eq!(f.images(), vec!["nginx:1.28"; 6]);
    // Events say which id is a manifest hash and which a commit.
    assert!(
        out.lines()
            .any(|l| l.contains(": started: manifests ") && l.contains(" from commit ")),
        "{out}"
    );
    assert!(!out.contains(": gates"), "no gates, no gates event:\n{out}");
}

#[test]
fn rollout_apply_heals_edits_deletions_and_a_rebuilt_cluster() {
    let f = Fleet::new(sims());
    f.write("app/settings.yaml", &SETTINGS.replace("LEVEL", "1"));
    f.write("app/service.yaml", SERVICE);
    f.commit("nginx:1.27", "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // A field edited and an object deleted by hand on sim-2.
    f.patch_level("sim-2", "9");
    f.kubectl("sim-2", &["delete", "svc", "web"]);
    let before = f.sim.audit().len();
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr(&o).contains("healed sim-2: 1 created, 1 configured"),
        "{}",
        show(&o)
    );
    assert!(
        !stdout(&o).contains("batch-applying"),
        "a heal is not a rollout:\n{}",
        show(&o)
    );
    assert_eq!(f.cm("sim-2", "settings", "level"), "1");
    f.kubectl("sim-2", &["get", "svc", "web"]);
    assert_eq!(
        f.mutated_since(before),
        ["sim-2".to_string()].into_iter().collect(),
        "only the drifted cluster is touched"
    );

    // Healed: the next apply is up to date and changes nothing.
    let before = f.sim.audit().len();
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr(&o).contains("placement web: up to date"),
        "{}",
        show(&o)
    );
    assert!(f.mutated_since(before).is_empty());

    // sim-3 rebuilt empty (same name, same context): restored from the state store's
    // revision, inventory included.
    f.run(&[
        "--context",
        "sim-3",
        "delete",
        "ns",
        "shop",
        "flotilla-system",
    ]);
    let gone = |what: &str| {
        !f.run(&["--context", "sim-3", "get", "ns", what])
            .status
            .success()
    };
    let t = std::time::Instant::now();
    while !(gone("shop") && gone("flotilla-system")) {
        assert!(t.elapsed().as_secs() < 20, "namespaces not deleted");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(stderr(&o).contains("healed sim-3: "), "{}", show(&o));
    assert_eq!(f.images()[2], "nginx:1.27");
    assert_eq!(f.cm("sim-3", "settings", "level"), "1");
    f.run(&[
        "--context",
        "sim-3",
        "-n",
        "flotilla-system",
        "get",
        "cm",
        "flotilla-inventory-web",
    ])
    .status
    .success()
    .then_some(())
    .expect("the inventory is back");

    // A revision that failed is never healed back in.
    f.commit("broken/nginx:2", "bad");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    f.kubectl("sim-1", &["delete", "svc", "web"]);
    let before = f.sim.audit().len();
    let o = f.apply();
    assert!(stderr(&o).contains("failed before"), "{}", show(&o));
    assert!(f.mutated_since(before).is_empty());
}

#[test]
fn rollout_ssa_annotations_if_not_present_and_ignore() {
    let f = Fleet::new(sims());
    let keep = |v: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keep\n  annotations: {{flotilla.dev/ssa: if-not-present}}\ndata: {{v: {v}}}\n"
        )
    };
    f.write("app/keep.yaml", &keep("a"));
    f.write(
        "app/skip.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: skip\n  annotations: {flotilla.dev/ssa: ignore}\ndata: {v: x}\n",
    );
    f.commit("nginx:1.27", "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(f.cm("sim-1", "keep", "v"), "a", "created when missing");
    assert_eq!(f.cm("sim-1", "skip", "v"), "-", "ignored: never applied");

    // An existing if-not-present object is never overwritten, by a rollout or a heal.
    f.kubectl(
        "sim-1",
        &[
            "patch",
            "cm",
            "keep",
            "--type=merge",
            "-p",
            r#"{"data":{"v":"b"}}"#,
        ],
    );
    f.write("app/keep.yaml", &keep("c"));
    f.commit("nginx:1.28", "second");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(f.cm("sim-1", "keep", "v"), "b");
    assert_eq!(f.cm("sim-2", "keep", "v"), "a");
    let o = f.apply();
    assert!(
        stderr(&o).contains("placement web: up to date"),
        "{}",
        show(&o)
    );
    // ... nor reported as drift (and the ignored one is not missing).
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["drift", "--kubeconfig"])
        .arg(&f.kubeconfig)
        .arg("--repo")
        .arg(&f.repo)
        .args(["--rev", "main", "--cache"])
        .arg(f.repo.parent().expect("parent").join("cache"))
        .env_remove("FLOTILLA_LOG")
        .env_remove("KUBECONFIG")
        .output()
        .expect("flotilla runs");
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // Deleted, it is created again with Git's current value.
    f.kubectl("sim-1", &["delete", "cm", "keep"]);
    let o = f.apply();
    assert!(
        stderr(&o).contains("healed sim-1: 1 created"),
        "{}",
        show(&o)
    );
    assert_eq!(f.cm("sim-1", "keep", "v"), "c");
}

#[test]
fn rollout_a_rollback_the_server_refuses_ends_in_rollback_failed() {
    let f = Fleet::new(sims());
    f.write("app/settings.yaml", &SETTINGS.replace("LEVEL", "1"));
    f.commit("nginx:1.27", "first");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));

    // The bad revision makes the ConfigMap immutable: the server will refuse to put the old
    // data back.
    f.write(
        "app/settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\nimmutable: true\ndata: {level: \"2\"}\n",
    );
    f.commit("broken/nginx:2", "bad");
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = stderr(&o);
    assert!(
        err.contains("RollbackFailed")
            && err.contains("sim-1: ConfigMap/shop/settings")
            && err.contains("field is immutable"),
        "{}",
        show(&o)
    );
    assert!(
        stdout(&o).contains("web batch 1 sim-1: rollback-failed"),
        "{}",
        show(&o)
    );
    let status = f.status();
    assert!(status.contains("RollbackFailed"), "{status}");
    assert!(!status.contains('>'), "no batch looks current:\n{status}");

    // Held for a person: the next apply does not loop on it.
    let before = f.sim.audit().len();
    let o = f.apply();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(stderr(&o).contains("failed before"), "{}", show(&o));
    assert!(f.mutated_since(before).is_empty());
}
