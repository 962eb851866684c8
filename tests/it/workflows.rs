//! Workflows end to end: `flotilla serve` (the real binary) against sim clusters, fleets from
//! `fixtures/workflows/<case>/`, schedules with a seconds field so firings come every few
//! seconds. `run: one` follows free capacity, `run: each` covers every cluster, history
//! trimming deletes old Jobs, forbid / replace / allow, failed runs, and a daemon killed
//! between recording a run and creating its Job does not submit it twice.

use std::path::Path;
use std::time::Duration;

use flotilla_sim::SimConfig;
use serde_json::Value;

use crate::git_support::Upstream;
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::{SimKube, flotilla, stderr, stdout, workspace};

/// Commits every file of `fixtures/workflows/<case>/` and pushes.
fn commit_case(up: &Upstream, case: &str) {
    let root = workspace().join("fixtures/workflows").join(case);
    let mut files = Vec::new();
    collect(&root, &root, &mut files);
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, t)| (p.as_str(), t.as_str()))
        .collect();
    up.commit(&refs, case);
    up.push();
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    for e in std::fs::read_dir(dir).expect("fixture dir") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            collect(root, &p, out);
        } else {
            let rel = p
                .strip_prefix(root)
                .expect("inside")
                .to_str()
                .expect("utf-8")
                .to_string();
            out.push((rel, std::fs::read_to_string(&p).expect("read fixture")));
        }
    }
}

fn serve(k: &SimKube, up: &Upstream, port: u16, env: &[(&str, &str)]) -> ServeProcess {
    serve_with(k, up, port, env, &[])
}

fn serve_with(
    k: &SimKube,
    up: &Upstream,
    port: u16,
    env: &[(&str, &str)],
    args: &[&str],
) -> ServeProcess {
    let (mut cmd, http) = serve_command();
    cmd.args(args);
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{port}/fleet.git"))
        .args(["--ref", "main", "--kubeconfig"])
        .arg(&k.kubeconfig)
        .arg("--state")
        .arg(up.scratch("state"))
        .arg("--cache")
        .arg(up.scratch("cache"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    ServeProcess::spawn(cmd, http)
}

/// (name, cluster, run label) of every Job of `workflow` in the sims.
fn jobs(k: &SimKube, clusters: usize, workflow: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for i in 1..=clusters {
        let name = format!("sim-{i}");
        let c = k.sim.cluster(&name).expect("cluster");
        let def = c.resource("batch", "v1", "jobs").expect("jobs");
        let list = c.list(&def, None, &Default::default()).expect("list jobs");
        for j in list["items"].as_array().cloned().unwrap_or_default() {
            if j["metadata"]["labels"]["flotilla.dev/workflow"] == workflow {
                out.push((
                    j["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    name.clone(),
                    j["metadata"]["labels"]["flotilla.dev/run"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                ));
            }
        }
    }
    out
}

fn runs(d: &ServeProcess, workflow: &str) -> Vec<Value> {
    d.try_json(&format!("/api/v1/workflows/{workflow}"))["runs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn count(runs: &[Value], phase: &str) -> usize {
    runs.iter().filter(|r| r["phase"] == phase).count()
}

/// A Deployment in `ns/name` of `replicas` pods requesting `cpu` each.
fn load(k: &SimKube, cluster: &str, name: &str, replicas: u32, cpu: &str) {
    let file = k.file(
        &format!("{cluster}-{name}.yaml"),
        &format!(
            "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: c
        image: load:1
        resources: {{requests: {{cpu: \"{cpu}\"}}}}
"
        ),
    );
    k.ok(&["--context", cluster, "apply", "-f", &file]);
}

#[test]
fn run_one_follows_free_capacity_each_covers_every_cluster_and_history_is_trimmed() {
    let k = SimKube::start(
        SimConfig {
            clusters: 3,
            ready_delay: Duration::from_millis(100),
            ..Default::default()
        }
        .unready_images("^hang$")
        .expect("regex"),
    );
    // sim-1: one 7-CPU pod (a node with 1 CPU left); sim-3: one 3-CPU pod. sim-2 is empty.
    load(&k, "sim-1", "big", 1, "7");
    load(&k, "sim-3", "small", 1, "3");
    let up = Upstream::new();
    commit_case(&up, "placement");
    let git = up.daemon();
    let d = serve(&k, &up, git.port, &[]);

    d.wait_for(
        "pick runs on sim-2, the emptiest",
        Duration::from_secs(30),
        || count(&runs(&d, "pick"), "succeeded") >= 2,
    );
    let picked: Vec<String> = runs(&d, "pick")
        .iter()
        .filter(|r| r["phase"] == "succeeded")
        .map(|r| r["cluster"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(picked.iter().all(|c| c == "sim-2"), "{picked:?}");

    // sim-2 fills up (two 7-CPU pods): sim-3 has the most room now.
    load(&k, "sim-2", "big", 2, "7");
    d.wait_for("pick moves to sim-3", Duration::from_secs(40), || {
        runs(&d, "pick")
            .first()
            .is_some_and(|r| r["cluster"] == "sim-3" && r["phase"] == "succeeded")
    });

    // run: each: one run id in all three clusters.
    d.wait_for("all runs everywhere", Duration::from_secs(30), || {
        let r = runs(&d, "all");
        let first = r.iter().find(|x| x["phase"] == "succeeded");
        first.is_some_and(|f| {
            let id = f["runId"].clone();
            let mut cs: Vec<&str> = r
                .iter()
                .filter(|x| x["runId"] == id)
                .filter_map(|x| x["cluster"].as_str())
                .collect();
            cs.sort_unstable();
            cs == ["sim-1", "sim-2", "sim-3"]
        })
    });

    // History: pick keeps the Jobs of its last 2 finished runs, all those of its last one
    // (one per cluster), whatever ran before; the records stay.
    d.wait_for("old Jobs deleted", Duration::from_secs(30), || {
        let finished = runs(&d, "pick")
            .iter()
            .filter(|r| r["phase"] == "succeeded")
            .count();
        finished >= 5 && jobs(&k, 3, "pick").len() <= 3 && jobs(&k, 3, "all").len() <= 6
    });
    let pick_runs = runs(&d, "pick");
    assert!(
        pick_runs.iter().any(|r| r["objectDeleted"] == true),
        "{pick_runs:?}"
    );
    // A Job is named after its run and labelled with it.
    for (name, _, run) in jobs(&k, 3, "pick") {
        assert_eq!(name, run);
        assert!(name.starts_with("pick-2"), "{name}");
    }

    let api = d.json("/api/v1/workflows");
    let pick = &api["workflows"][0];
    assert_eq!(pick["name"], "pick");
    assert_eq!(
        pick["nextFirings"].as_array().map(Vec::len),
        Some(3),
        "{api}"
    );
    assert_eq!(
        pick["clusters"],
        serde_json::json!(["sim-1", "sim-2", "sim-3"])
    );
    let (_, metrics) = d.get("/metrics").expect("metrics");
    assert!(
        metrics.contains("flotilla_workflow_runs_total{workflow=\"pick\",outcome=\"succeeded\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flotilla_workflow_last_success_timestamp_seconds{workflow=\"pick\"}"),
        "{metrics}"
    );
    assert!(d.log().contains("flotilla::workflow"), "events in the log");

    // maxConcurrent: 1 with run: each: one cluster runs, the two others wait as pending.
    let limited = runs(&d, "limited");
    assert_eq!(count(&limited, "running"), 1, "{limited:?}");
    assert_eq!(count(&limited, "pending"), 2, "{limited:?}");
    assert_eq!(jobs(&k, 3, "limited").len(), 1);

    // The CLI through the daemon: list, and a manual run pinned to sim-1 (the fullest).
    let server = format!("http://127.0.0.1:{}", d.port);
    let list = flotilla(&["workflow", "list", "--server", &server]);
    assert!(list.status.success(), "{}", stderr(&list));
    assert!(
        stdout(&list).contains("pick (*/2 * * * * *, UTC): sim-1, sim-2, sim-3"),
        "{}",
        stdout(&list)
    );
    let run = flotilla(&[
        "workflow",
        "run",
        "pick",
        "--cluster",
        "sim-1",
        "--server",
        &server,
    ]);
    assert!(run.status.success(), "{}", stderr(&run));
    let manual = stdout(&run);
    assert!(
        manual.contains("pick-m2") && manual.contains("sim-1"),
        "{manual}"
    );
    d.wait_for(
        "the manual run succeeds in sim-1",
        Duration::from_secs(20),
        || {
            runs(&d, "pick").iter().any(|r| {
                r["manual"] == true && r["cluster"] == "sim-1" && r["phase"] == "succeeded"
            })
        },
    );
    let unknown = flotilla(&["workflow", "run", "nope", "--server", &server]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("workflow \"nope\" is not in the fleet"),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn forbid_skips_replace_replaces_allow_overlaps_and_failures_are_recorded() {
    let k = SimKube::start(
        SimConfig {
            clusters: 1,
            ready_delay: Duration::from_millis(100),
            ..Default::default()
        }
        .unready_images("^hang$")
        .expect("regex")
        .crash_images("^broken$")
        .expect("regex"),
    );
    let up = Upstream::new();
    commit_case(&up, "concurrency");
    let git = up.daemon();
    let d = serve(&k, &up, git.port, &[]);
    d.wait_for("three firings of each", Duration::from_secs(40), || {
        ["forbid", "replace", "allow"]
            .iter()
            .all(|w| runs(&d, w).len() >= 3)
            && count(&runs(&d, "crash"), "failed") >= 1
    });
    // forbid: the first run never finishes, later firings are skipped, one Job.
    let f = runs(&d, "forbid");
    assert_eq!(count(&f, "running"), 1, "{f:?}");
    assert!(count(&f, "skipped") >= 2, "{f:?}");
    assert_eq!(jobs(&k, 1, "forbid").len(), 1);
    // replace: each firing deletes the active Job and starts its own.
    let r = runs(&d, "replace");
    assert!(count(&r, "replaced") >= 2, "{r:?}");
    assert_eq!(count(&r, "running"), 1, "{r:?}");
    d.wait_for("replaced Jobs deleted", Duration::from_secs(10), || {
        jobs(&k, 1, "replace").len() == 1
    });
    // allow: they pile up.
    let a = runs(&d, "allow");
    assert!(count(&a, "running") >= 3, "{a:?}");
    assert!(jobs(&k, 1, "allow").len() >= 3);
    // timeout: the run is failed and its Job deleted.
    d.wait_for("slow times out", Duration::from_secs(20), || {
        count(&runs(&d, "slow"), "failed") >= 1
    });
    let slow = runs(&d, "slow");
    let timed_out = slow
        .iter()
        .find(|x| x["phase"] == "failed")
        .expect("failed");
    assert!(
        timed_out["message"]
            .as_str()
            .unwrap_or("")
            .starts_with("timed out after 2s"),
        "{timed_out}"
    );
    let gone = timed_out["runId"].as_str().unwrap_or("?").to_string();
    assert!(
        !jobs(&k, 1, "slow").iter().any(|j| j.0 == gone),
        "{gone} deleted"
    );
    // A failing Job: recorded with the Job's reason.
    let c = runs(&d, "crash");
    let failed = c.iter().find(|x| x["phase"] == "failed").expect("failed");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or("")
            .contains("BackoffLimitExceeded"),
        "{failed}"
    );
}

#[test]
fn a_daemon_killed_between_record_and_create_submits_the_run_once() {
    let k = SimKube::start(
        SimConfig {
            clusters: 1,
            ready_delay: Duration::from_millis(100),
            ..Default::default()
        }
        .unready_images("^hang$")
        .expect("regex"),
    );
    let up = Upstream::new();
    commit_case(&up, "concurrency");
    let git = up.daemon();
    let mut crashing = serve(
        &k,
        &up,
        git.port,
        &[("FLOTILLA_TEST_CRASH_AFTER_WORKFLOW_RECORD", "1")],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(s)) = crashing.child.try_wait() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon did not abort\n{}",
            crashing.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(!status.success());
    assert!(crashing.log().contains("aborting after recording"));
    // Recorded, not created.
    assert!(jobs(&k, 1, "forbid").is_empty());
    assert!(jobs(&k, 1, "allow").is_empty());

    // Restarted: the recorded runs are created (each once), and followed.
    let d = serve(&k, &up, git.port, &[]);
    d.wait_for("the recorded runs created", Duration::from_secs(30), || {
        !jobs(&k, 1, "forbid").is_empty()
    });
    d.wait_for("a few more firings", Duration::from_secs(20), || {
        runs(&d, "forbid").len() >= 3
    });
    let f = runs(&d, "forbid");
    // forbid: the pre-crash run is the one Job; nothing ran twice.
    assert_eq!(jobs(&k, 1, "forbid").len(), 1, "{f:?}");
    assert_eq!(count(&f, "running"), 1, "{f:?}");
    let running = f.iter().find(|r| r["phase"] == "running").expect("running");
    let earliest = f.last().expect("records");
    assert_eq!(
        running["runId"], earliest["runId"],
        "the run recorded before the crash: {f:?}"
    );
    // Every Job of allow belongs to a distinct recorded run.
    let a = runs(&d, "allow");
    let mut names: Vec<String> = jobs(&k, 1, "allow").into_iter().map(|j| j.0).collect();
    let n = names.len();
    names.dedup();
    assert_eq!(names.len(), n);
    for name in &names {
        assert!(
            a.iter().any(|r| r["runId"] == name.as_str()),
            "{name} recorded"
        );
    }
    drop(crashing);

    // The CLI against the state store once the daemon is gone.
    let mut d = d;
    d.terminate();
    let state = up.scratch("state");
    let fixture = workspace().join("fixtures/workflows/concurrency");
    let out = flotilla(&[
        "workflow",
        "history",
        "forbid",
        "--repo",
        fixture.to_str().expect("utf-8"),
        "--state",
        state.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(running["runId"].as_str().unwrap_or("?")),
        "{text}"
    );
    assert!(
        text.contains("running") && text.contains("skipped"),
        "{text}"
    );
}

/// The image of Deployment shop/web in `cluster` (`-` when absent).
fn image(k: &SimKube, cluster: &str) -> String {
    let c = k.sim.cluster(cluster).expect("cluster");
    let def = c
        .resource("apps", "v1", "deployments")
        .expect("deployments");
    c.get(&def, "shop", "web")
        .ok()
        .and_then(|d| {
            d.pointer("/spec/template/spec/containers/0/image")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "-".into())
}

#[test]
fn a_verify_workflow_failing_in_the_canary_rolls_the_batch_back() {
    let k = SimKube::start(
        SimConfig {
            clusters: 3,
            ready_delay: Duration::from_millis(100),
            ..Default::default()
        }
        .crash_images("^smoke:broken$")
        .expect("regex"),
    );
    let up = Upstream::new();
    commit_case(&up, "verify");
    let git = up.daemon();
    let d = serve_with(&k, &up, git.port, &[], &["--poll-interval", "1s"]);
    // web:1 passes its smoke test in sim-1 and reaches every cluster.
    d.wait_for(
        "web:1 rolled out after verification",
        Duration::from_secs(60),
        || d.try_json("/api/v1/rollouts/web")["rollout"]["phase"] == "succeeded",
    );
    assert_eq!(
        (image(&k, "sim-1"), image(&k, "sim-2"), image(&k, "sim-3")),
        ("web:1".into(), "web:1".into(), "web:1".into())
    );
    let smoke = runs(&d, "smoke");
    assert_eq!(
        smoke.len(),
        1,
        "one verification, in the canary only: {smoke:?}"
    );
    assert_eq!(smoke[0]["cluster"], "sim-1");
    assert_eq!(smoke[0]["phase"], "succeeded");
    assert_eq!(jobs(&k, 3, "smoke").len(), 1);

    // web:2 with a smoke test that fails: the canary is rolled back, sim-2/3 never see web:2.
    let web2 = std::fs::read_to_string(workspace().join("fixtures/workflows/verify/app/web.yaml"))
        .expect("fixture")
        .replace("web:1", "web:2");
    let smoke2 =
        std::fs::read_to_string(workspace().join("fixtures/workflows/verify/jobs/smoke.yaml"))
            .expect("fixture")
            .replace("smoke:ok", "smoke:broken");
    up.commit(
        &[("app/web.yaml", &web2), ("jobs/smoke.yaml", &smoke2)],
        "web 2, smoke broken",
    );
    up.push();
    d.wait_for("web:2 rolled back", Duration::from_secs(90), || {
        let r = d.try_json("/api/v1/rollouts/web");
        r["rollout"]["phase"] == "rolledBack" || r["rollout"]["phase"] == "failed"
    });
    let r = d.json("/api/v1/rollouts/web");
    let events = r["events"].as_array().cloned().unwrap_or_default();
    let failed = events
        .iter()
        .find(|e| e["kind"] == "verify-failed")
        .unwrap_or_else(|| panic!("a verify-failed event: {r}"));
    assert_eq!(failed["cluster"], "sim-1");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or("")
            .contains("BackoffLimitExceeded"),
        "{failed}"
    );
    assert_eq!(image(&k, "sim-1"), "web:1", "the canary is back on web:1");
    assert_eq!(image(&k, "sim-2"), "web:1");
    assert_eq!(image(&k, "sim-3"), "web:1");
}

/// Names of `kind` objects labelled with `workflow` in the real cluster.
fn real_names(kube: &crate::kube_support::RealKube, kind: &str, workflow: &str) -> Vec<String> {
    let out = kube.ok(&[
        "get",
        kind,
        "-n",
        "default",
        "-l",
        &format!("flotilla.dev/workflow={workflow}"),
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    out.split_whitespace().map(str::to_string).collect()
}

#[test]
fn real_jobs_complete_and_fail_under_the_job_controller_and_a_custom_kind_follows_its_rule() {
    use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
    let kube = RealKube::start(KubeOptions {
        controllers: true,
        kubelet: true,
    });
    let crd = workspace().join("fixtures/workflows/real/crd.yaml");
    kube.ok(&["apply", "-f", crd.to_str().expect("utf-8")]);
    kube.ok(&[
        "wait",
        "--for=condition=Established",
        "crd/workflows.argoproj.io",
        "--timeout=30s",
    ]);
    let up = Upstream::new();
    commit_case(&up, "real");
    let git = up.daemon();
    let kubeconfig = up.scratch("kubeconfig");
    kubeconfig_file(&kubeconfig, &[kube.kubeconfig_as("real-1")]);
    let (mut cmd, http) = serve_command();
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{}/fleet.git", git.port))
        .args(["--ref", "main", "--kubeconfig"])
        .arg(&kubeconfig)
        .arg("--state")
        .arg(up.scratch("state"))
        .arg("--cache")
        .arg(up.scratch("cache"));
    let d = ServeProcess::spawn(cmd, http);

    // A real Job: the Job controller runs its pod, pretend-kubelet finishes it, the Job
    // becomes Complete, the run Succeeded; history 1 deletes the older Jobs.
    d.wait_for("ok succeeds twice", Duration::from_secs(90), || {
        count(&runs(&d, "ok"), "succeeded") >= 2
    });
    d.wait_for("ok keeps one finished Job", Duration::from_secs(30), || {
        let finished = count(&runs(&d, "ok"), "succeeded");
        let active = runs(&d, "ok")
            .iter()
            .filter(|r| r["phase"] == "running")
            .count();
        finished >= 2 && real_names(&kube, "jobs", "ok").len() <= 1 + active
    });
    // The Job's pods carry the run's labels.
    let pods = kube.ok(&[
        "get",
        "pods",
        "-n",
        "default",
        "-l",
        "flotilla.dev/workflow=ok",
        "-o",
        "jsonpath={.items[*].metadata.labels.flotilla\\.dev/run}",
    ]);
    assert!(
        pods.split_whitespace().all(|r| r.starts_with("ok-2")),
        "{pods}"
    );
    // A failing pod: the Job fails (backoffLimit 0), the run is Failed with the Job's reason.
    d.wait_for("fail fails", Duration::from_secs(60), || {
        count(&runs(&d, "fail"), "failed") >= 1
    });
    let failed = runs(&d, "fail")
        .into_iter()
        .find(|r| r["phase"] == "failed")
        .expect("failed run");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or("")
            .contains("BackoffLimitExceeded"),
        "{failed}"
    );

    // The custom kind: created with the run's name, running until a controller (the test)
    // writes status.phase.
    d.wait_for("an argo Workflow exists", Duration::from_secs(30), || {
        !real_names(&kube, "workflows.argoproj.io", "argo").is_empty()
    });
    let name = real_names(&kube, "workflows.argoproj.io", "argo")[0].clone();
    std::thread::sleep(Duration::from_secs(4));
    let r = runs(&d, "argo");
    assert_eq!(count(&r, "running"), 1, "{r:?}");
    assert!(count(&r, "skipped") >= 1, "forbid while it runs: {r:?}");
    kube.ok(&[
        "patch",
        "workflows.argoproj.io",
        &name,
        "-n",
        "default",
        "--type",
        "merge",
        "-p",
        r#"{"status": {"phase": "Succeeded"}}"#,
    ]);
    d.wait_for("the argo run succeeds", Duration::from_secs(20), || {
        runs(&d, "argo")
            .iter()
            .any(|r| r["runId"] == name.as_str() && r["phase"] == "succeeded")
    });
    // Every object went through SSA with the workflow field manager.
    let managers = kube.ok(&[
        "get",
        "jobs",
        "-n",
        "default",
        "-l",
        "flotilla.dev/workflow",
        "--show-managed-fields",
        "-o",
        "jsonpath={.items[*].metadata.managedFields[*].manager}",
    ]);
    assert!(managers.contains("flotilla-workflow"), "{managers}");
}

#[test]
fn read_only_submits_nothing_and_records_what_it_would_have_done() {
    let k = SimKube::start(SimConfig {
        clusters: 3,
        ready_delay: Duration::from_millis(100),
        ..Default::default()
    });
    let up = Upstream::new();
    commit_case(&up, "placement");
    let git = up.daemon();
    let d = serve_with(&k, &up, git.port, &[], &["--read-only"]);
    d.wait_for("a few firings", Duration::from_secs(30), || {
        runs(&d, "all").len() >= 6 && runs(&d, "pick").len() >= 2
    });
    assert!(jobs(&k, 3, "pick").is_empty());
    assert!(jobs(&k, 3, "all").is_empty());
    let records: Vec<Value> = runs(&d, "pick")
        .into_iter()
        .chain(runs(&d, "all"))
        .collect();
    // A tick that comes late on a loaded machine records the firings it passed as missed
    // (by design: at most the latest one runs); every other firing is a dry run.
    let skipped = records.iter().filter(|r| r["phase"] != "missed").count();
    assert!(skipped >= 4, "{records:?}");
    for r in records.iter().filter(|r| r["phase"] != "missed") {
        assert_eq!(r["phase"], "skipped", "{r}");
        assert_eq!(r["dryRun"], true, "{r}");
        assert!(
            r["message"]
                .as_str()
                .unwrap_or("")
                .starts_with("read-only: would have created Job "),
            "{r}"
        );
    }
    let (code, body) = d
        .request("POST", "/api/v1/workflows/pick/run", &[], b"")
        .expect("answer");
    assert_eq!(code, 403, "{body}");
}
