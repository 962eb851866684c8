//! Pull-mode agents in a fleet, end to end: the real `flotilla serve` drives two clusters it
//! reaches directly and four it never contacts; those four run a real `flotilla agent` each,
//! pulling their work from a management cluster (another sim cluster). The daemon's kubeconfig
//! holds only the direct clusters and the management cluster.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_sim::SimConfig;
use flotilla_sim::faults::Faults;
use serde_json::Value;

use crate::agent_support::AgentProcess as Agent;
use crate::git_support::Upstream;
use crate::serve_support::{ServeProcess, serve_command};
use crate::support::SimKube;

const DIRECT: [&str; 2] = ["sim-1", "sim-2"];
const AGENTS: [&str; 4] = ["sim-3", "sim-4", "sim-5", "sim-6"];
const MGMT: &str = "sim-7";

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

/// The agent clusters' canary first (sim-3), then half the rest, then all.
fn fleet_yaml(health_deadline: &str) -> String {
    fleet_yaml_on(health_deadline, "{}")
}

/// The same, the placement on the clusters `selector` selects.
fn fleet_yaml_on(health_deadline: &str, selector: &str) -> String {
    format!(
        "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: pull}}
settings: {{selfHeal: true}}
clusters:
  - {{name: sim-1}}
  - {{name: sim-2}}
  - {{name: sim-3, kind: edge, connect: agent}}
  - {{name: sim-4, kind: edge, connect: agent}}
  - {{name: sim-5, kind: registered, connect: agent}}
  - {{name: sim-6, kind: registered, connect: agent}}
bundles:
  - {{name: app, path: app, namespace: shop}}
placements:
  - name: web
    bundles: [app]
    clusters: {selector}
    rollout:
      batches:
        - clusters: {{names: [sim-3]}}
        - percent: 50
        - percent: 100
      maxConcurrent: 3
      healthDeadline: {health_deadline}
      soak: 1s
"
    )
}

struct Fleet {
    k: SimKube,
    up: Upstream,
    git_port: u16,
    _git: crate::git_support::Server,
    /// The daemon's kubeconfig: sim-1, sim-2 and the management cluster only.
    hub_kubeconfig: PathBuf,
    /// The agents' kubeconfig for the management cluster (nothing else).
    mgmt_kubeconfig: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let k = SimKube::start(
            SimConfig {
                clusters: 7,
                ready_delay: Duration::from_millis(200),
                ..Default::default()
            }
            .unready_images("^broken/")
            .expect("regex"),
        );
        let addr = k.sim.addr();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let hub = k.file(
            "hub-kubeconfig",
            &flotilla_sim::kubeconfig(addr, &names(&["sim-1", "sim-2", MGMT])),
        );
        let mgmt = k.file(
            "mgmt-kubeconfig",
            &flotilla_sim::kubeconfig(addr, &names(&[MGMT])),
        );
        for c in AGENTS {
            k.file(
                &format!("{c}-kubeconfig"),
                &flotilla_sim::kubeconfig(addr, &names(&[c])),
            );
        }
        let up = Upstream::new();
        let git = up.daemon();
        Fleet {
            git_port: git.port,
            _git: git,
            up,
            hub_kubeconfig: hub.into(),
            mgmt_kubeconfig: mgmt.into(),
            k,
        }
    }

    fn commit(&self, image: &str, health_deadline: &str, message: &str) {
        self.commit_fleet(&fleet_yaml(health_deadline), image, message);
    }

    fn commit_fleet(&self, fleet: &str, image: &str, message: &str) {
        let web = WEB.replace("IMAGE", image);
        self.up.commit(
            &[
                ("fleet.yaml", fleet),
                ("app/web.yaml", web.as_str()),
                (
                    "app/ns.yaml",
                    "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
                ),
            ],
            message,
        );
        self.up.push();
    }

    fn serve(&self) -> ServeProcess {
        let (mut cmd, port) = serve_command();
        cmd.arg("--repo")
            .arg(format!("git://127.0.0.1:{}/fleet.git", self.git_port))
            .args(["--ref", "main", "--kubeconfig"])
            .arg(&self.hub_kubeconfig)
            .args(["--agents-context", MGMT])
            .arg("--state")
            .arg(self.up.scratch("state"))
            .arg("--cache")
            .arg(self.up.scratch("cache"))
            .args(["--poll-interval", "1s", "--drift-interval", "2s"]);
        ServeProcess::spawn(cmd, port)
    }

    fn agent(&self, cluster: &str) -> Agent {
        let own = self.k.dir.path().join(format!("{cluster}-kubeconfig"));
        Agent::spawn(
            cluster,
            &self.k.dir.path().join(format!("{cluster}-agent.log")),
            (self.mgmt_kubeconfig.to_str().expect("UTF-8"), MGMT),
            (own.to_str().expect("UTF-8"), cluster),
        )
    }

    /// The image shop/web runs on `cluster` (`-` when absent).
    fn image(&self, cluster: &str) -> String {
        let o = self.k.run(&[
            "--context",
            cluster,
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ]);
        if o.status.success() {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        } else {
            "-".into()
        }
    }

    fn images(&self) -> Vec<String> {
        DIRECT
            .iter()
            .chain(AGENTS.iter())
            .map(|c| self.image(c))
            .collect()
    }

    fn set_mgmt_down(&self, down: bool) {
        assert!(self.k.sim.set_faults(
            MGMT,
            Faults {
                partition: down,
                ..Faults::default()
            }
        ));
    }
}

fn phase(d: &ServeProcess) -> String {
    d.try_json("/api/v1/fleet")
        .pointer("/placements/web/phase")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

fn logs(d: &ServeProcess, agents: &[Agent]) -> String {
    let mut out = format!("--- daemon\n{}", d.log());
    for (i, a) in agents.iter().enumerate() {
        out.push_str(&format!("--- agent {}\n{}", AGENTS[i], a.log()));
    }
    out
}

fn wait(
    what: &str,
    timeout: Duration,
    d: &ServeProcess,
    agents: &[Agent],
    mut ok: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("{what}: not within {timeout:?}\n{}", logs(d, agents));
}

#[test]
fn agent_fleet_canary_on_an_agent_rolls_back_a_bad_image_and_the_daemon_never_calls_agents() {
    let f = Fleet::new();
    f.commit("nginx:1.27", "20s", "first");
    let d = f.serve();
    let agents: Vec<Agent> = AGENTS.iter().map(|c| f.agent(c)).collect();
    wait(
        "the first revision everywhere",
        Duration::from_secs(90),
        &d,
        &agents,
        || phase(&d) == "Succeeded" && f.images() == vec!["nginx:1.27"; 6],
    );

    // The daemon's status shows every agent cluster with its agent's last report.
    wait(
        "every agent's report in the status",
        Duration::from_secs(30),
        &d,
        &agents,
        || {
            let v = d.try_json("/api/v1/fleet");
            AGENTS.iter().all(|c| {
                v.pointer(&format!("/agents/{c}/lastReport"))
                    .is_some_and(Value::is_string)
                    && v.pointer(&format!("/agents/{c}/applied/web"))
                        .is_some_and(Value::is_string)
            }) && v
                .pointer("/drift/unreachableClusters")
                .is_some_and(|u| u.as_array().is_some_and(Vec::is_empty))
        },
    );
    // The drift report holds the agents' own checks of their clusters, in sync.
    let drift = d.json("/api/v1/drift");
    for c in AGENTS {
        let report = drift["clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == c)
            .unwrap_or_else(|| panic!("{c} not in the drift report: {drift}"));
        assert!(report.get("error").is_none(), "{report}");
        assert_eq!(report["placements"][0]["name"], "web", "{report}");
        // Per object: its state and health, as the agent saw them.
        let deployment = report["placements"][0]["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == "Deployment")
            .unwrap_or_else(|| panic!("no Deployment in {report}"));
        assert_eq!(deployment["state"], "inSync", "{report}");
        assert!(deployment["health"]["status"].is_string(), "{report}");
    }
    let (_, metrics) = d.get("/metrics").expect("metrics");
    for c in AGENTS {
        assert!(
            metrics.contains(&format!(
                "flotilla_agent_report_age_seconds{{cluster=\"{c}\"}}"
            )),
            "{metrics}"
        );
    }
    let sim3 = d.json("/api/v1/clusters/sim-3");
    assert_eq!(sim3["connect"], "agent", "{sim3}");
    assert!(sim3["context"].is_null(), "{sim3}");
    assert!(sim3["agent"]["lastReport"].is_string(), "{sim3}");
    let o = Command::new(env!("CARGO_BIN_EXE_flotilla"))
        .args(["status", "--server"])
        .arg(format!("http://127.0.0.1:{}", d.port))
        .output()
        .expect("flotilla runs");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("agent clusters:"), "{text}");
    for c in AGENTS {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(c)
                && l.contains("last report")
                && l.contains("web@")),
            "{c}: {text}"
        );
    }

    // A bad image: the agent canary goes unhealthy, is rolled back there by its agent, and
    // the revision never reaches another cluster.
    f.commit("broken/nginx:2", "4s", "bad");
    wait(
        "the bad revision rolled back",
        Duration::from_secs(90),
        &d,
        &agents,
        || phase(&d) == "RolledBack",
    );
    wait(
        "sim-3 back on the good image",
        Duration::from_secs(30),
        &d,
        &agents,
        || f.images() == vec!["nginx:1.27"; 6],
    );
    let history = d.json("/api/v1/rollouts/web");
    let events = history["events"].as_array().cloned().unwrap_or_default();
    let of = |kind: &str| {
        events
            .iter()
            .filter(|e| e["kind"] == kind)
            .map(|e| {
                (
                    e["batch"].as_u64(),
                    e["cluster"].as_str().map(str::to_string),
                )
            })
            .collect::<Vec<_>>()
    };
    assert!(
        of("rolled-back").contains(&(Some(1), Some("sim-3".into()))),
        "{history}"
    );
    assert!(
        !events.iter().any(|e| e["batch"].as_u64() > Some(1)),
        "the bad revision left the canary: {history}"
    );

    // The drift report tells that the agents keep the last good manifests, not the
    // revision's (as it shows the direct clusters' Deployments modified).
    wait(
        "the drift report shows the agents behind the revision",
        Duration::from_secs(30),
        &d,
        &agents,
        || {
            let drift = d.try_json("/api/v1/drift");
            AGENTS.iter().all(|c| {
                drift["clusters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["name"] == *c)
                    .and_then(|r| r["placements"][0]["error"].as_str())
                    .is_some_and(|e| e.contains("this revision renders"))
            })
        },
    );

    // The placement leaves sim-6: its agent prunes it there (the daemon cannot) and stops
    // keeping it applied; the other clusters keep it.
    f.commit_fleet(
        &fleet_yaml_on(
            "4s",
            "{matchExpressions: [{key: name, operator: NotIn, values: [sim-6]}]}",
        ),
        "nginx:1.27",
        "web leaves sim-6",
    );
    wait(
        "web pruned from sim-6",
        Duration::from_secs(60),
        &d,
        &agents,
        || {
            f.image("sim-6") == "-"
                && d.try_json("/api/v1/fleet")
                    .pointer("/agents/sim-6/applied")
                    .is_some_and(|a| a.as_object().is_some_and(|a| a.is_empty()))
        },
    );
    assert_eq!(f.images()[..5], vec!["nginx:1.27"; 5][..]);
    let events = d.json("/api/v1/fleet")["agents"]["sim-6"]["events"].to_string();
    assert!(events.contains("removed web"), "{events}");

    // The daemon never sent one request to an agent cluster: every request the sims saw for
    // sim-3..sim-6 came from their agents or from this test's kubectl (the daemon's
    // kubeconfig cannot even name them).
    let audit = f.k.sim.audit();
    let daemon_ua: std::collections::BTreeSet<&str> = audit
        .iter()
        .filter(|a| DIRECT.contains(&a.cluster.as_str()) && !a.user_agent.starts_with("kubectl/"))
        .map(|a| a.user_agent.as_str())
        .collect();
    assert!(!daemon_ua.is_empty());
    for a in audit
        .iter()
        .filter(|a| AGENTS.contains(&a.cluster.as_str()))
    {
        assert!(
            a.user_agent.starts_with("flotilla-agent/") && a.user_agent.contains(&a.cluster)
                || a.user_agent.starts_with("kubectl/"),
            "{:?} called agent cluster {} (the daemon is {daemon_ua:?})",
            a.user_agent,
            a.cluster
        );
        assert!(!daemon_ua.contains(a.user_agent.as_str()));
    }
    // The work travelled through the management cluster, one namespace per agent cluster.
    for c in AGENTS {
        f.k.ok(&[
            "--context",
            MGMT,
            "get",
            "secret",
            "work-web",
            "-n",
            &format!("flotilla-cluster-{c}"),
        ]);
    }
}

#[test]
fn agent_fleet_management_outage_mid_rollout_then_kill_9() {
    let f = Fleet::new();
    f.commit("nginx:1.27", "20s", "first");
    let d = f.serve();
    let mut agents: Vec<Agent> = AGENTS.iter().map(|c| f.agent(c)).collect();
    wait(
        "the first revision everywhere",
        Duration::from_secs(90),
        &d,
        &agents,
        || phase(&d) == "Succeeded" && f.images() == vec!["nginx:1.27"; 6],
    );

    // The management cluster goes away before the next revision reaches the agents.
    f.set_mgmt_down(true);
    f.commit("nginx:1.28", "20s", "second");
    // The canary is an agent cluster: the rollout waits (it does not fail) while the
    // management cluster is down, well past the 20 s health deadline.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(25) {
        let p = phase(&d);
        assert!(
            !matches!(p.as_str(), "Failed" | "RolledBack" | "RollbackFailed"),
            "a management outage failed the rollout: {p}\n{}",
            logs(&d, &agents)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(f.image("sim-3"), "nginx:1.27");
    assert!(
        d.log()
            .contains("the management cluster does not answer; the rollout waits for it"),
        "{}",
        logs(&d, &agents)
    );

    // Meanwhile the agents keep their clusters as assigned: a deleted Deployment comes back.
    f.k.ok(&[
        "--context",
        "sim-4",
        "delete",
        "deploy",
        "web",
        "-n",
        "shop",
    ]);
    wait(
        "sim-4 healed by its agent",
        Duration::from_secs(30),
        &d,
        &agents,
        || f.image("sim-4") == "nginx:1.27",
    );
    // An agent killed with kill -9 and restarted while the hub is away recovers its
    // assignment from the copy in its own cluster, and heals from it.
    agents[2].kill_9();
    f.k.ok(&[
        "--context",
        "sim-5",
        "delete",
        "deploy",
        "web",
        "-n",
        "shop",
    ]);
    agents[2] = f.agent("sim-5");
    wait(
        "sim-5 healed from its local copy",
        Duration::from_secs(30),
        &d,
        &agents,
        || f.image("sim-5") == "nginx:1.27",
    );

    // The management cluster returns: the rollout resumes and completes, and nothing failed
    // on the way.
    f.set_mgmt_down(false);
    wait(
        "the second revision everywhere",
        Duration::from_secs(120),
        &d,
        &agents,
        || phase(&d) == "Succeeded" && f.images() == vec!["nginx:1.28"; 6],
    );
    let history = d.json("/api/v1/rollouts/web").to_string();
    assert!(!history.contains("apply-failed"), "{history}");
    // sim-4's agent told the hub what happened meanwhile.
    wait(
        "sim-4's report tells of the outage",
        Duration::from_secs(30),
        &d,
        &agents,
        || {
            let v = d.try_json("/api/v1/fleet");
            v.pointer("/agents/sim-4/events")
                .is_some_and(|e| e.to_string().contains("unreachable"))
        },
    );
}

/// The real control plane as the management cluster: the agent's cluster registered there
/// with the manifests of `flotilla agent-manifests`, the agent acting with its service
/// account's token (its own namespace only), the daemon with an admin's.
#[test]
fn real_agent_pulls_its_work_from_a_real_management_cluster_with_a_least_privilege_token() {
    use crate::kube_support::{KubeOptions, RealKube, kubeconfig_file};
    let kube = RealKube::start(KubeOptions {
        controllers: true,
        kubelet: false,
    });
    let k = SimKube::start(SimConfig {
        clusters: 3,
        ready_delay: Duration::from_millis(100),
        ..Default::default()
    });
    // Registration: what `flotilla agent-manifests --cluster sim-3` prints, applied by an
    // administrator; the agent gets a token of its service account (context `hub`).
    let agent_mgmt = kube.dir.path().join("agent-mgmt");
    crate::agent_rbac::agent_hub_kubeconfig(&kube, "sim-3", &agent_mgmt);
    // The daemon acts with its own service account's token (deploy/), not an admin's.
    let deploy = crate::support::workspace().join("deploy");
    for file in ["namespace.yaml", "serviceaccount.yaml"] {
        kube.ok(&["apply", "-f", deploy.join(file).to_str().expect("UTF-8")]);
    }
    let token = kube.ok(&[
        "-n",
        "flotilla-system",
        "create",
        "token",
        "flotilla",
        "--duration",
        "10m",
    ]);
    let mut entry = kube.kubeconfig_as("mgmt");
    entry.token = token.trim().to_string();
    let hub_mgmt = kube.dir.path().join("hub-mgmt");
    kubeconfig_file(&hub_mgmt, &[entry]);

    let addr = k.sim.addr();
    let hub = k.file(
        "hub-kubeconfig",
        &flotilla_sim::kubeconfig(addr, &["sim-1".to_string()]),
    );
    let own = k.file(
        "sim-3-kubeconfig",
        &flotilla_sim::kubeconfig(addr, &["sim-3".to_string()]),
    );
    let up = Upstream::new();
    let git = up.daemon();
    let fleet = "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: pull}
clusters:
  - {name: sim-1}
  - {name: sim-3, kind: edge, connect: agent}
bundles:
  - {name: app, path: app, namespace: shop}
placements:
  - name: web
    bundles: [app]
    clusters: {}
    rollout:
      batches:
        - clusters: {names: [sim-3]}
        - percent: 100
      healthDeadline: 30s
";
    let web = WEB.replace("IMAGE", "nginx:1.27");
    up.commit(
        &[
            ("fleet.yaml", fleet),
            ("app/web.yaml", web.as_str()),
            (
                "app/ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
            ),
        ],
        "first",
    );
    up.push();
    let (mut cmd, port) = serve_command();
    cmd.arg("--repo")
        .arg(format!("git://127.0.0.1:{}/fleet.git", git.port))
        .args(["--ref", "main", "--kubeconfig", &hub])
        .args(["--agents-context", "mgmt", "--agents-kubeconfig"])
        .arg(&hub_mgmt)
        .arg("--state")
        .arg(up.scratch("state"))
        .arg("--cache")
        .arg(up.scratch("cache"))
        .args(["--poll-interval", "1s", "--drift-interval", "2s"]);
    let d = ServeProcess::spawn(cmd, port);
    let agents = vec![Agent::spawn(
        "sim-3",
        &k.dir.path().join("sim-3-agent.log"),
        (agent_mgmt.to_str().expect("UTF-8"), "hub"),
        (&own, "sim-3"),
    )];
    let image = |c: &str| {
        let o = k.run(&[
            "--context",
            c,
            "get",
            "deploy",
            "web",
            "-n",
            "shop",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    wait(
        "both clusters converged",
        Duration::from_secs(90),
        &d,
        &agents,
        || {
            phase(&d) == "Succeeded"
                && image("sim-1") == "nginx:1.27"
                && image("sim-3") == "nginx:1.27"
        },
    );
    wait(
        "the agent's report in the status",
        Duration::from_secs(30),
        &d,
        &agents,
        || {
            d.try_json("/api/v1/fleet")
                .pointer("/agents/sim-3/lastReport")
                .is_some_and(Value::is_string)
        },
    );
    // The real API server's audit log: every request of the agent's service account stayed
    // in its namespace, it wrote no Secret, and neither it nor the daemon was refused.
    let audit = kube.audit();
    // The requests of one service account, none of them refused.
    let requests_of = |who: &str, user: &str| -> Vec<&Value> {
        let of: Vec<&Value> = audit
            .iter()
            .filter(|e| e.pointer("/user/username").and_then(Value::as_str) == Some(user))
            .collect();
        assert!(!of.is_empty(), "{who} made no request as {user}");
        for e in &of {
            assert_ne!(
                e.pointer("/responseStatus/code").and_then(Value::as_u64),
                Some(403),
                "{who} was refused something it needs: {e}"
            );
        }
        of
    };
    requests_of(
        "the daemon",
        "system:serviceaccount:flotilla-system:flotilla",
    );
    let mine = requests_of(
        "the agent",
        "system:serviceaccount:flotilla-cluster-sim-3:flotilla-agent",
    );
    for e in &mine {
        // Discovery (`/api`, `/apis`) names no object; every object request is in its
        // namespace.
        if e.get("objectRef").is_some() {
            let ns = e.pointer("/objectRef/namespace").and_then(Value::as_str);
            assert_eq!(ns, Some("flotilla-cluster-sim-3"), "{e}");
        }
        let verb = e["verb"].as_str().unwrap_or("");
        let resource = e.pointer("/objectRef/resource").and_then(Value::as_str);
        assert!(
            resource != Some("secrets") || matches!(verb, "get" | "list" | "watch"),
            "the agent wrote a Secret: {e}"
        );
    }
}
