//! `flotilla demo`: six simulated clusters, a local Git repository made from
//! `fixtures/demo/`, the daemon following it, and three commits made as a user would — a good
//! change rolled out canary first, a bad image rolled back automatically, a hand edit the
//! drift check reports. Narrated on stdout; the drift report is left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use flotilla_reconciler::report::ObjectState;

const FLEET: &str = include_str!("../../fixtures/demo/fleet.yaml");
const NAMESPACE: &str = include_str!("../../fixtures/demo/apps/shop/namespace.yaml");
const WEB: &str = include_str!("../../fixtures/demo/apps/shop/web.yaml");
const SERVICE: &str = include_str!("../../fixtures/demo/apps/shop/service.yaml");
const IMAGE: &str = "registry.example.com/shop/web";

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Where the repository, state and drift report go [default: a new directory under the
    /// system's temp directory].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

fn say(text: &str) {
    println!("{text}");
}

fn step(n: usize, title: &str) {
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        println!("\n\x1b[1m[{n}/5] {title}\x1b[0m");
    } else {
        println!("\n[{n}/5] {title}");
    }
}

/// Fails the demo unless every cluster runs `tag`: the story it tells must be true.
fn expect_everywhere(sim: &flotilla_sim::SimHandle, tag: &str) -> anyhow::Result<()> {
    let wrong: Vec<String> = images(sim)
        .into_iter()
        .filter(|(_, i)| i != tag)
        .map(|(c, i)| format!("{c} runs {i}"))
        .collect();
    if !wrong.is_empty() {
        anyhow::bail!("expected web {tag} everywhere, but {}", wrong.join(", "));
    }
    Ok(())
}

fn git(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args([
            "-c",
            "user.name=Demo User",
            "-c",
            "user.email=demo@example.com",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .context("the demo commits with the git command line: is git installed?")?;
    if !out.status.success() {
        anyhow::bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Sets the web image and commits; returns the commit id.
fn commit_image(repo: &Path, tag: &str, message: &str) -> anyhow::Result<String> {
    let text = WEB.replace(&format!("{IMAGE}:1.0.0"), &format!("{IMAGE}:{tag}"));
    write(&repo.join("apps/shop/web.yaml"), &text)?;
    git(repo, &["commit", "-q", "-am", message])?;
    git(repo, &["rev-parse", "HEAD"])
}

struct Api {
    base: String,
    client: reqwest::Client,
    secret: flotilla_daemon::webhook::Secret,
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await?;
        let code = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((code, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// What a Git host sends after a push: a signed webhook.
    async fn push_webhook(&self) -> anyhow::Result<()> {
        let body = br#"{"ref": "refs/heads/main"}"#;
        let resp = self
            .client
            .post(format!("{}/hooks/git", self.base))
            .header(
                "X-Flotilla-Signature",
                format!("sha256={}", self.secret.sign(body)),
            )
            .body(body.to_vec())
            .send()
            .await?;
        if resp.status().as_u16() != 202 {
            anyhow::bail!("the webhook was refused: {}", resp.status());
        }
        Ok(())
    }

    /// Prints the events of the rollout of `commit` as they come, until it ends; returns its
    /// final phase.
    async fn follow(&self, commit: &str) -> anyhow::Result<String> {
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut printed = 0;
        let started = Instant::now();
        loop {
            if Instant::now() > deadline {
                anyhow::bail!("the rollout of {commit} did not finish within 3 minutes");
            }
            let (code, v) = self.get("/api/v1/rollouts/shop").await?;
            let r = &v["rollout"];
            if code == 200 && r["commit"] == commit {
                let events = v["events"].as_array().cloned().unwrap_or_default();
                for e in events.iter().skip(printed) {
                    print_event(e, started.elapsed());
                }
                printed = events.len();
                let phase = r["phase"].as_str().unwrap_or("").to_string();
                if matches!(
                    phase.as_str(),
                    "succeeded" | "rolledBack" | "failed" | "aborted" | "superseded"
                ) {
                    return Ok(phase);
                }
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
}

fn print_event(e: &Value, at: Duration) {
    let kind = e["kind"].as_str().unwrap_or("?");
    let batch = e["batch"]
        .as_u64()
        .map(|b| format!("batch {b}"))
        .unwrap_or_default();
    let cluster = e["cluster"].as_str().unwrap_or("");
    let message = e["message"].as_str().unwrap_or("");
    let message = flotilla_reconciler::report::shorten(message, 90);
    println!(
        "  {:>5.1}s  {batch:<8} {cluster:<6} {kind:<15} {message}",
        at.as_secs_f64()
    );
}

/// The web image of every cluster, from the sims.
fn images(sim: &flotilla_sim::SimHandle) -> Vec<(String, String)> {
    sim.cluster_names()
        .into_iter()
        .map(|name| {
            let image = sim
                .cluster(&name)
                .and_then(|c| {
                    let def = c.resource("apps", "v1", "deployments")?;
                    c.get(&def, "shop", "web").ok()
                })
                .and_then(|d| {
                    d.pointer("/spec/template/spec/containers/0/image")
                        .and_then(Value::as_str)
                        .map(|s| s.rsplit(':').next().unwrap_or(s).to_string())
                })
                .unwrap_or_else(|| "-".into());
            (name, image)
        })
        .collect()
}

fn print_images(sim: &flotilla_sim::SimHandle) {
    let line: Vec<String> = images(sim)
        .into_iter()
        .map(|(c, i)| format!("{c}={i}"))
        .collect();
    say(&format!("  web image per cluster: {}", line.join("  ")));
}

pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = match args.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "flotilla-demo-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    say("flotilla demo: six simulated Kubernetes clusters, a Git repository, the flotilla daemon");
    say(&format!(
        "and three commits, all on this machine (no network). Files: {}",
        dir.display()
    ));

    step(1, "Six clusters and a fleet repository");
    let sim = flotilla_sim::start(
        flotilla_sim::SimConfig {
            clusters: 6,
            ready_delay: Duration::from_millis(400),
            ..Default::default()
        }
        // The simulated kubelet crash-loops images whose tag ends in -broken.
        .crash_images("-broken$")?,
    )?;
    let kubeconfig = dir.join("kubeconfig");
    write(&kubeconfig, &sim.kubeconfig())?;
    say(&format!(
        "  flotilla sim serves sim-1 .. sim-6 on http://{} (kubeconfig: {})",
        sim.addr(),
        kubeconfig.display()
    ));
    let repo = dir.join("fleet-repo");
    if repo.exists() {
        std::fs::remove_dir_all(&repo)?;
    }
    write(&repo.join("fleet.yaml"), FLEET)?;
    write(&repo.join("apps/shop/namespace.yaml"), NAMESPACE)?;
    write(&repo.join("apps/shop/web.yaml"), WEB)?;
    write(&repo.join("apps/shop/service.yaml"), SERVICE)?;
    git(&repo, &["init", "-q", "-b", "main"])?;
    git(&repo, &["add", "-A"])?;
    git(
        &repo,
        &[
            "commit",
            "-q",
            "-m",
            "shop: web 1.0.0 on every prod cluster",
        ],
    )?;
    let first = git(&repo, &["rev-parse", "HEAD"])?;
    say(&format!(
        "  {}: fleet.yaml (6 clusters, placement shop: canary sim-1, then 50 %, then 100 %) and apps/shop/",
        repo.display()
    ));

    let secret_file = dir.join("webhook-secret");
    write(&secret_file, "demo-webhook-secret\n")?;
    let state = dir.join("state");
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    let mut config =
        flotilla_daemon::Config::new(repo.to_string_lossy().to_string(), state, dir.join("cache"));
    config.kubeconfig = Some(kubeconfig);
    // `flotilla demo` is the flotilla binary: its own executable is the Jsonnet worker.
    config.jsonnet_worker = Some(std::env::current_exe()?);
    config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    config.webhook_secret_file = Some(secret_file);
    config.health_poll = Duration::from_millis(200);

    let rt = crate::live::runtime()?;
    let result: anyhow::Result<()> = rt.block_on(async {
        let running = flotilla_daemon::start(config).await?;
        let api = Api {
            base: format!("http://{}", running.addr),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            secret: flotilla_daemon::webhook::Secret::from_file_contents(b"demo-webhook-secret")
                .context("secret")?,
        };
        say(&format!(
            "  flotilla serve listens on {} (status: flotilla status --server {})",
            api.base, api.base
        ));

        step(2, "The daemon's first fetch rolls the shop out, canary first");
        let phase = api.follow(&first).await?;
        say(&format!("  rollout: {phase}"));
        print_images(&sim);
        expect_everywhere(&sim, "1.0.0")?;

        step(3, "A good change: web 1.1.0, pushed with a webhook");
        let good = commit_image(&repo, "1.1.0", "shop: web 1.1.0")?;
        say(&format!("  git commit {} \"shop: web 1.1.0\"", &good[..12]));
        api.push_webhook().await?;
        let phase = api.follow(&good).await?;
        say(&format!("  rollout: {phase}"));
        print_images(&sim);
        expect_everywhere(&sim, "1.1.0")?;

        step(4, "A bad image: web 1.2.0-broken crash-loops in the canary");
        let bad = commit_image(&repo, "1.2.0-broken", "shop: web 1.2.0-broken")?;
        say(&format!(
            "  git commit {} \"shop: web 1.2.0-broken\"",
            &bad[..12]
        ));
        api.push_webhook().await?;
        let phase = api.follow(&bad).await?;
        expect_everywhere(&sim, "1.1.0")?;
        say(&format!(
            "  rollout: {phase}: the canary went back to 1.1.0; no other cluster ran 1.2.0-broken"
        ));
        print_images(&sim);
        git(&repo, &["revert", "--no-edit", "HEAD"])?;
        let revert = git(&repo, &["rev-parse", "HEAD"])?;
        api.push_webhook().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while running.status().revision.map(|r| r.commit) != Some(revert.clone()) {
            if Instant::now() > deadline {
                anyhow::bail!("the daemon did not pick up the revert within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        say(&format!(
            "  git revert: commit {} puts Git back on 1.1.0, which every cluster runs: nothing to roll out",
            &revert[..12]
        ));

        step(5, "A hand edit in sim-3 (as `kubectl scale --replicas 5` would do)");
        let edited_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        scale_by_hand(&sim, "sim-3", 5)?;
        say("  the drift check (every 3 s, read-only) reports it:");
        let deadline = Instant::now() + Duration::from_secs(60);
        // A check that began before the edit can finish after it without seeing it: wait for
        // the report that shows the drift (the demo fails if none does).
        let drifted = |r: &flotilla_reconciler::report::Report| {
            r.clusters.iter().any(|c| {
                c.placements
                    .iter()
                    .any(|p| p.objects.iter().any(|o| o.state != ObjectState::InSync))
            })
        };
        let report = loop {
            if let Some(r) = running
                .drift_report()
                .filter(|r| r.generated_at > edited_at && r.revision == revert && drifted(r))
            {
                break r;
            }
            if Instant::now() > deadline {
                anyhow::bail!("no drift report showed the hand edit within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for c in &report.clusters {
            for p in &c.placements {
                for o in p.objects.iter().filter(|o| o.state != ObjectState::InSync) {
                    let what: Vec<String> = if o.changes.is_empty() {
                        o.fields.clone()
                    } else {
                        o.changes.iter().map(ToString::to_string).collect()
                    };
                    say(&format!(
                        "  {}: {} {}: {}",
                        c.name,
                        o.id,
                        o.state.label(),
                        what.join("; ")
                    ));
                }
            }
        }
        let html = dir.join("drift.html");
        write(&html, &flotilla_reconciler::report::html(&report))?;
        write(
            &dir.join("drift.md"),
            &flotilla_reconciler::report::markdown(&report),
        )?;
        running.shutdown();
        running.wait().await?;
        say(&format!(
            "\nDone. The drift report is {} (Markdown: {}).",
            html.display(),
            dir.join("drift.md").display()
        ));
        say(&format!(
            "The fleet repository is {}: `git log` shows the commits.",
            repo.display()
        ));
        Ok(())
    });
    sim.shutdown();
    result?;
    Ok(ExitCode::SUCCESS)
}

/// A merge patch from another field manager, as kubectl sends it.
fn scale_by_hand(
    sim: &flotilla_sim::SimHandle,
    cluster: &str,
    replicas: u32,
) -> anyhow::Result<()> {
    let body = format!(r#"{{"spec":{{"replicas":{replicas}}}}}"#);
    sim.edit(
        cluster,
        "apps/v1/deployments",
        "shop",
        "web",
        &body,
        "kubectl-scale",
    )
    .map_err(|e| anyhow::anyhow!("scale: {e:?}"))?;
    Ok(())
}
