//! `flotilla agent`: the pull-mode agent of one member cluster (see docs/agent.md).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use flotilla_agent::AgentConfig;
use flotilla_cluster::{ClientSettings, Connector};
use flotilla_reconciler::cluster::Cluster;

/// `flotilla agent` flags.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The member cluster's name in fleet.yaml (its namespace on the management cluster is
    /// flotilla-cluster-NAME).
    #[arg(long, value_name = "NAME")]
    cluster: String,
    /// kubeconfig of the management cluster (credentials for its own namespace only).
    #[arg(long, value_name = "PATH")]
    hub_kubeconfig: PathBuf,
    /// Context in --hub-kubeconfig (default: its current context).
    #[arg(long, value_name = "CTX")]
    hub_context: Option<String>,
    /// kubeconfig of the member cluster; without it, the pod's service account (in-cluster).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Context in --kubeconfig (default: its current context).
    #[arg(long, value_name = "CTX", requires = "kubeconfig")]
    context: Option<String>,
    /// How often the management cluster is asked for work.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    poll: Duration,
    /// How often assignments are checked for drift and re-applied.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    heal_interval: Duration,
    /// How often the agent report is written.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    report_interval: Duration,
    /// Namespace of the member cluster holding the agent's local copy of its assignments.
    #[arg(long, default_value = "flotilla-system", value_name = "NS")]
    state_namespace: String,
}

fn context_of(connector: &Connector, given: Option<String>, what: &str) -> anyhow::Result<String> {
    match given {
        Some(c) => Ok(c),
        None => connector
            .kubeconfig()
            .current_context()
            .map(str::to_string)
            .with_context(|| format!("{what} has no current context: pass its context")),
    }
}

pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    // Its namespace on the management cluster is flotilla-cluster-NAME.
    crate::agent_manifests::check_cluster(&args.cluster)?;
    for (flag, d) in [
        ("--poll", args.poll),
        ("--heal-interval", args.heal_interval),
        ("--report-interval", args.report_interval),
    ] {
        if d < Duration::from_millis(100) {
            anyhow::bail!("{flag} must be at least 100ms");
        }
    }
    let mut config = AgentConfig::new(&args.cluster);
    config.poll = args.poll;
    config.heal_interval = args.heal_interval;
    config.report_interval = args.report_interval;
    config.state_namespace = args.state_namespace.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let settings = ClientSettings {
            user_agent: format!(
                "flotilla-agent/{} ({})",
                env!("CARGO_PKG_VERSION"),
                args.cluster
            ),
            ..ClientSettings::default()
        };
        let hub = Connector::load(Some(&args.hub_kubeconfig))
            .with_context(|| format!("reading {}", args.hub_kubeconfig.display()))?
            .with_settings(settings.clone());
        let hub_context = context_of(&hub, args.hub_context, "--hub-kubeconfig")?;
        let management: Arc<dyn Cluster> = Arc::new(
            hub.connect("management", &hub_context, false)
                .await
                .context("connecting to the management cluster")?,
        );
        let own: Arc<dyn Cluster> = match &args.kubeconfig {
            Some(path) => {
                let c = Connector::load(Some(path))
                    .with_context(|| format!("reading {}", path.display()))?
                    .with_settings(settings);
                let context = context_of(&c, args.context, "--kubeconfig")?;
                Arc::new(
                    c.connect(&args.cluster, &context, false)
                        .await
                        .with_context(|| format!("connecting to cluster {}", args.cluster))?,
                )
            }
            None => Arc::new(
                Connector::in_cluster(&args.cluster)
                    .await
                    .context("connecting with the pod's service account (no --kubeconfig)")?,
            ),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::new(tokio::sync::Notify::new());
        let signals = {
            let (stop, stopped) = (stop.clone(), stopped.clone());
            tokio::spawn(async move {
                crate::serve::wait_for_signal().await;
                tracing::info!(target: "flotilla::agent", "signal received: stopping");
                stop.store(true, Ordering::SeqCst);
                stopped.notify_waiters();
            })
        };
        tracing::info!(target: "flotilla::agent", cluster = %config.cluster, management = %hub_context, "agent starting");
        flotilla_agent::run(config, management, own, stop, stopped).await?;
        signals.abort();
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
