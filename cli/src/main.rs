//! `flotilla`: a thin command line over the library crates. Argument parsing and output only.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use flotilla_source::LocalTree;
use flotilla_spec::types::RepoPath;
use flotilla_spec::{Checked, Diagnostic, Limits, RepoFiles};

// mimalloc: parsing a large fleet is allocation-bound, and glibc malloc is ~25% of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// GitOps for fleets of Kubernetes clusters.
#[derive(Parser)]
#[command(name = "flotilla", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check fleet.yaml and every path it names. Exit 0 valid, 1 invalid, 2 usage or I/O error.
    Validate {
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Show, per placement, the clusters it selects, their rollout batches and their bundles.
    Plan {
        #[command(flatten)]
        fleet: FleetArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Print the JSON Schema of fleet.yaml (for editors: completion and validation).
    Schema,
    /// Render the manifests of every (placement, bundle, cluster) as multi-document YAML.
    /// Exit 0 ok, 1 if the fleet is invalid or any render failed (the others still render),
    /// 2 usage or I/O error.
    Render {
        #[command(flatten)]
        fleet: FleetArgs,
        /// Only this cluster (repeatable; default: every cluster).
        #[arg(long = "cluster", value_name = "NAME")]
        clusters: Vec<String>,
        /// Only this placement.
        #[arg(long, value_name = "NAME")]
        placement: Option<String>,
        /// Write DIR/<cluster>/<placement>.<bundle>.yaml instead of printing.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Serve simulated Kubernetes clusters (one port, one path prefix per cluster) until
    /// Ctrl-C or SIGTERM. See docs/sim.md.
    Sim(SimArgs),
}

#[derive(clap::Args)]
struct SimArgs {
    /// Number of clusters, named sim-1 .. sim-N (server URL http://ADDR/clusters/NAME).
    #[arg(long, default_value_t = 1)]
    clusters: usize,
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Where to write the kubeconfig (one context per cluster).
    #[arg(long)]
    kubeconfig_out: PathBuf,
    /// Simulated nodes per cluster.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Milliseconds a workload takes to become ready after a spec change.
    #[arg(long, default_value_t = 500)]
    ready_delay_ms: u64,
    /// Workloads with a container image matching this regular expression never become ready.
    #[arg(long)]
    unready_images: Option<String>,
    /// Workloads with a container image matching this regular expression crash-loop: never
    /// ready, and Jobs fail (BackoffLimitExceeded).
    #[arg(long)]
    crash_images: Option<String>,
}

#[derive(clap::Args)]
struct FleetArgs {
    /// The fleet repository: a local directory (uncommitted changes included).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// The fleet file, relative to the repository root.
    #[arg(long, default_value = "fleet.yaml")]
    fleet: String,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Writes to stdout, returning I/O errors (a closed pipe must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        write!(stdout, $($arg)*)
    }};
}

macro_rules! outln {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, $($arg)*)
    }};
}

/// Exit codes shared by every command.
const INVALID: u8 = 1;
const USAGE_OR_IO: u8 = 2;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            // The reader went away (`flotilla plan | head`): not an error.
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flotilla: error: {e:#}");
            ExitCode::from(USAGE_OR_IO)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { fleet, output } => validate(&fleet, output),
        Command::Plan { fleet, output } => plan(&fleet, output),
        Command::Render {
            fleet,
            clusters,
            placement,
            out,
        } => render(&fleet, &clusters, placement.as_deref(), out.as_deref()),
        Command::Schema => {
            let schema = serde_json::to_string_pretty(&flotilla_spec::json_schema())?;
            outln!("{schema}")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(args) => sim(args),
    }
}

fn sim(args: SimArgs) -> anyhow::Result<ExitCode> {
    if args.clusters == 0 {
        anyhow::bail!("--clusters must be at least 1");
    }
    let mut config = flotilla_sim::SimConfig {
        clusters: args.clusters,
        listen: args.listen,
        nodes: args.nodes,
        ready_delay: std::time::Duration::from_millis(args.ready_delay_ms),
        ..Default::default()
    };
    if let Some(re) = &args.unready_images {
        config = config.unready_images(re)?;
    }
    if let Some(re) = &args.crash_images {
        config = config.crash_images(re)?;
    }
    flotilla_sim::run_until_signal(config, &args.kubeconfig_out)?;
    Ok(ExitCode::SUCCESS)
}

/// Reads and checks the fleet file. I/O problems are errors (exit 2); an invalid fleet is not.
fn load(args: &FleetArgs) -> anyhow::Result<(String, Checked)> {
    let tree = LocalTree::open(&args.repo)
        .with_context(|| format!("cannot open --repo {}", args.repo.display()))?;
    let fleet_path = RepoPath::parse(&args.fleet).map_err(|e| anyhow::anyhow!("--fleet: {e}"))?;
    let file = fleet_path.as_str().to_string();
    let limits = Limits::default();
    match tree.kind(&fleet_path) {
        flotilla_spec::PathKind::File => {}
        flotilla_spec::PathKind::Dir => {
            anyhow::bail!("{file} is a directory, expected the fleet file")
        }
        flotilla_spec::PathKind::Missing => {
            anyhow::bail!("{file} not found in repository {}", args.repo.display())
        }
        flotilla_spec::PathKind::Escapes => anyhow::bail!("{file} leads outside the repository"),
    }
    let size = std::fs::metadata(tree.root().join(fleet_path.as_str()))
        .map(|m| m.len())
        .unwrap_or(0);
    let text = if size > limits.max_bytes as u64 {
        // Let the spec report it as a diagnostic without reading the whole file.
        " ".repeat(limits.max_bytes + 1)
    } else {
        tree.read_text(&fleet_path)
            .with_context(|| format!("cannot read {file}"))?
    };
    let mut checked = flotilla_spec::check_with(&file, &text, &tree, &limits);
    if size > limits.max_bytes as u64 {
        for d in &mut checked.diagnostics {
            d.message = format!(
                "the file is {size} bytes, over the limit of {} bytes",
                limits.max_bytes
            );
        }
    }
    Ok((file, checked))
}

fn summary(file: &str, checked: &Checked) -> String {
    let errors = checked.errors().count();
    let warnings = checked.warnings().count();
    let plural = |n: usize, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
    match &checked.fleet {
        Some(f) => {
            let mut s = format!(
                "{file}: valid: {}, {}, {}",
                plural(f.clusters.len(), "cluster"),
                plural(f.bundles.len(), "bundle"),
                plural(f.placements.len(), "placement")
            );
            if warnings > 0 {
                s.push_str(&format!(" ({})", plural(warnings, "warning")));
            }
            s
        }
        None => format!(
            "{file}: invalid: {}, {}",
            plural(errors, "error"),
            plural(warnings, "warning")
        ),
    }
}

fn print_diagnostics(diags: &[Diagnostic]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for d in diags {
        writeln!(out, "{d}")?;
    }
    Ok(())
}

fn validate(args: &FleetArgs, output: Output) -> anyhow::Result<ExitCode> {
    let (file, checked) = load(args)?;
    match output {
        Output::Text => {
            print_diagnostics(&checked.diagnostics)?;
            outln!("{}", summary(&file, &checked))?;
        }
        Output::Json => {
            let doc = serde_json::json!({
                "file": file,
                "valid": checked.is_valid(),
                "errors": checked.errors().count(),
                "warnings": checked.warnings().count(),
                "diagnostics": checked.diagnostics,
            });
            outln!("{}", serde_json::to_string_pretty(&doc)?)?;
        }
    }
    Ok(if checked.is_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID)
    })
}

fn plan(args: &FleetArgs, output: Output) -> anyhow::Result<ExitCode> {
    let (file, checked) = load(args)?;
    let Some(fleet) = &checked.fleet else {
        print_diagnostics(&checked.diagnostics)?;
        eprintln!("{}", summary(&file, &checked));
        return Ok(ExitCode::from(INVALID));
    };
    for w in checked.warnings() {
        eprintln!("{w}");
    }
    let plan = flotilla_reconciler::plan::plan(fleet);
    match output {
        Output::Text => out!("{}", plan.to_text())?,
        Output::Json => outln!("{}", serde_json::to_string_pretty(&plan)?)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn render(
    args: &FleetArgs,
    only_clusters: &[String],
    only_placement: Option<&str>,
    out_dir: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let (file, checked) = load(args)?;
    let Some(fleet) = &checked.fleet else {
        for d in &checked.diagnostics {
            eprintln!("{d}");
        }
        eprintln!("{}", summary(&file, &checked));
        return Ok(ExitCode::from(INVALID));
    };
    for w in checked.warnings() {
        eprintln!("{w}");
    }
    for c in only_clusters {
        if !fleet.clusters.iter().any(|x| &x.name == c) {
            anyhow::bail!("--cluster {c}: no such cluster in {file}");
        }
    }
    if let Some(p) = only_placement
        && !fleet.placements.iter().any(|x| x.name == p)
    {
        anyhow::bail!("--placement {p}: no such placement in {file}");
    }
    let tree = LocalTree::open(&args.repo)
        .with_context(|| format!("cannot open --repo {}", args.repo.display()))?;
    let selection = flotilla_spec::Selection::new(fleet);
    let mut clusters: Vec<&flotilla_spec::Cluster> = fleet
        .clusters
        .iter()
        .filter(|c| only_clusters.is_empty() || only_clusters.contains(&c.name))
        .collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let options = flotilla_renderers::RenderOptions::default();
    // One pass over the tree: a bundle's renderer runs once per distinct input, not per cluster.
    let mut cache = flotilla_renderers::cache::Cache::new();
    let mut pass = cache.pass(&tree);
    let mut failed = 0usize;
    for cluster in clusters {
        let Some(ci) = selection.index.position(&cluster.name) else {
            continue;
        };
        let cluster_dir = match out_dir {
            Some(d) => {
                let dir = d.join(&cluster.name);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                Some(dir)
            }
            None => None,
        };
        for (pi, placement) in fleet.placements.iter().enumerate() {
            if only_placement.is_some_and(|p| p != placement.name)
                || !selection.placements[pi].contains(ci)
            {
                continue;
            }
            for bname in flotilla_spec::placement_bundles(fleet, placement) {
                let Some(bundle) = fleet.bundles.iter().find(|b| b.name == bname) else {
                    continue;
                };
                match pass.render(fleet, placement, bundle, cluster, &options) {
                    Ok(r) => {
                        let text = format!(
                            "# {}/{}/{} sha256:{}\n{}",
                            placement.name, bundle.name, cluster.name, r.hash, r.yaml
                        );
                        match &cluster_dir {
                            Some(dir) => {
                                let path =
                                    dir.join(format!("{}.{}.yaml", placement.name, bundle.name));
                                std::fs::write(&path, text)
                                    .with_context(|| format!("cannot write {}", path.display()))?;
                            }
                            None => out!("{text}")?,
                        }
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("flotilla: error: {e}");
                    }
                }
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID)
    })
}
