//! `flotilla`: a thin command line over the library crates. Argument parsing and output only.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use flotilla_source::{LocalTree, git};
use flotilla_spec::types::RepoPath;
use flotilla_spec::{Checked, Diagnostic, Limits, RepoFiles};

mod agent;
mod agent_manifests;
mod backup;
mod burst;
mod demo;
mod images;
mod live;
mod review;
mod rollouts;
mod serve;
mod sops_keys;
mod workflows;

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
        /// Keep running: validate again whenever a file of the (local) repository changes.
        #[arg(long)]
        watch: bool,
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
    /// Internal: evaluate one Jsonnet request (JSON on stdin, answer on stdout) in a worker
    /// process the caller limits and kills.
    #[command(name = "__render-jsonnet", hide = true)]
    RenderJsonnet,
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
        /// Print the values of Secrets (and of objects decrypted from SOPS files) instead of
        /// a marker.
        #[arg(long)]
        show_secrets: bool,
    },
    /// Serve simulated Kubernetes clusters (one port, one path prefix per cluster) until
    /// Ctrl-C or SIGTERM. See docs/sim.md.
    Sim(SimArgs),
    /// With --live: desired (rendered from Git) versus live clusters, computed with
    /// server-side apply dry-runs so server defaults do not show. With --base/--head: two Git
    /// revisions of the fleet rendered and compared for a pull-request review (no cluster is
    /// contacted), with the rollout plan the change would start and the head's errors.
    /// Exit 0 no change, 1 changes, 2 errors.
    Diff {
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        clusters: live::ClusterArgs,
        /// Compare with live clusters.
        #[arg(long, conflicts_with_all = ["base", "head"])]
        live: bool,
        /// Review mode: the revision the change starts from. A local repository takes what
        /// `git rev-parse` takes (HEAD~1, a short commit id, a tag, origin/main) and A...B for
        /// the merge base of A and B (`--base origin/main...HEAD` reviews a branch as a pull
        /// request does).
        #[arg(long, value_name = "REF", requires = "head")]
        base: Option<String>,
        /// Review mode: the revision with the change (same forms as --base).
        #[arg(long, value_name = "REF", requires = "base")]
        head: Option<String>,
        #[arg(long, value_enum, default_value_t = live::ReportFormat::Text)]
        format: live::ReportFormat,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Roll every placement out to the fleet's current revision, batch by batch (health,
    /// gates, soak; rollback or pause on failure), recording progress in the state store.
    /// With --no-rollout: a one-shot staged server-side apply of every placement to the
    /// selected clusters. Exit 0 done, 1 failed or rolled back.
    Apply {
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        clusters: live::ClusterArgs,
        /// One-shot apply to every selected cluster at once, without batches.
        #[arg(long)]
        no_rollout: bool,
        /// The state store (default $XDG_STATE_HOME/flotilla/FLEET or
        /// ~/.local/state/flotilla/FLEET).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// Ask the servers what would change; store nothing (implies --no-rollout).
        #[arg(long)]
        dry_run: bool,
        /// Delete objects flotilla applied earlier that are no longer in Git (placements
        /// whose `prune` setting is off are left alone).
        #[arg(long)]
        prune: bool,
        /// After applying, wait until every applied object is healthy (kstatus-like rules);
        /// objects still unhealthy after this long are failures (e.g. 90s, 5m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        wait: Option<std::time::Duration>,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Rollout control and status: through a running daemon with --server (or
    /// $FLOTILLA_SERVER), else directly against the state store.
    Rollout {
        #[arg(value_enum)]
        command: rollouts::RolloutCommand,
        placement: String,
        #[arg(long, value_name = "DIR", conflicts_with = "server")]
        state: Option<PathBuf>,
        #[command(flatten)]
        server: serve::ServerArgs,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Workflows: list, history NAME, run NAME [--cluster C]; through a running daemon with
    /// --server (or $FLOTILLA_SERVER), else list and history read the state store.
    Workflow {
        #[arg(value_enum)]
        action: workflows::Action,
        /// The workflow (history, run).
        name: Option<String>,
        /// run: in this cluster (it must match the workflow's selector) instead of placing it.
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        #[arg(long, value_name = "DIR", conflicts_with = "server")]
        state: Option<PathBuf>,
        #[command(flatten)]
        server: serve::ServerArgs,
        #[command(flatten)]
        fleet: FleetArgs,
    },
    /// Run the daemon: follow the fleet repository (polling, webhooks), roll out every new
    /// commit, check drift, serve /metrics, /healthz, /readyz and the status API. See
    /// docs/daemon.md.
    Serve(Box<serve::ServeArgs>),
    /// The pull-mode agent of one member cluster: takes its work from the management
    /// cluster, applies it, self-heals it (also while the management cluster is down) and
    /// reports. See docs/agent.md.
    Agent(Box<agent::AgentArgs>),
    /// The tour: six simulated clusters, a local fleet repository and the daemon; a good
    /// change rolls out canary first, a bad image is rolled back, a hand edit shows up in the
    /// drift report. Needs git; no network.
    Demo(demo::DemoArgs),
    /// A running daemon's state: revision, rejected commits, placements, drift. Exit 0 all
    /// well, 1 something failed or was rejected, 2 the daemon cannot be reached.
    Status {
        #[command(flatten)]
        server: serve::ServerArgs,
    },
    /// Read-only drift report: live clusters versus Git. Sends only get and list requests.
    /// Exit 0 in sync, 1 drift, 2 a cluster or object could not be read.
    Drift {
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        clusters: live::ClusterArgs,
        #[arg(long, value_enum, default_value_t = live::ReportFormat::Text)]
        format: live::ReportFormat,
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Burst pools: the replica split of placements with `replicas:` (live or the daemon's).
    Burst {
        #[command(subcommand)]
        command: burst::BurstCommand,
    },
    /// Image policies: scan registries for tags, write the chosen ones back to Git.
    Images {
        #[command(subcommand)]
        command: images::ImagesCommand,
    },
    /// Backups of the fleet's backup policies: run one now, list, verify.
    Backup {
        #[command(subcommand)]
        command: backup::BackupCommand,
    },
    /// Restores a backup into a cluster (see docs/backups.md).
    Restore(Box<backup::RestoreArgs>),
    /// Print the manifests that register a pull-mode agent cluster: by default what to apply
    /// on the management cluster, with --member what runs in the member cluster (see
    /// deploy/agent/README.md). Prints no Secret.
    AgentManifests(agent_manifests::AgentManifestsArgs),
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

#[derive(Clone, clap::Args)]
struct FleetArgs {
    /// The fleet repository: a local directory (uncommitted changes included), or a Git URL
    /// (file://, git://, http(s)://) fetched into the cache. With --rev, a local directory is
    /// read as a Git repository at that revision instead.
    #[arg(long, default_value = ".")]
    repo: String,
    /// The revision to read from a Git repository (default: the remote's HEAD). A local
    /// repository takes what `git rev-parse` takes (`HEAD~1`, a short commit id, a tag,
    /// `origin/main`, ...) and `A...B` for the merge base; a URL takes a branch, tag, full ref
    /// or full commit id.
    #[arg(long)]
    rev: Option<String>,
    /// The cache of fetched repositories [default: $XDG_CACHE_HOME/flotilla, else
    /// ~/.cache/flotilla]. It survives runs: the next fetch only brings what is new.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Smart HTTP credentials: a file holding `user:password`, or a token.
    #[arg(long, value_name = "FILE", conflicts_with = "password_env")]
    credentials_file: Option<PathBuf>,
    /// Smart HTTP credentials: the environment variable holding the password or token.
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
    /// Smart HTTP credentials: the environment variable holding the username [default
    /// username: x-access-token].
    #[arg(long, value_name = "VAR", requires = "password_env")]
    username_env: Option<String>,
    /// The fleet file, relative to the repository root.
    #[arg(long, default_value = "fleet.yaml")]
    fleet: String,
    /// Refuse a Git revision whose commit is not signed by a key of --trusted-signers or
    /// --trusted-keys (as `serve --verify-commits`).
    #[arg(long)]
    verify_commits: bool,
    /// SSH allowed-signers file (ssh-keygen's format) for --verify-commits.
    #[arg(long, value_name = "FILE", requires = "verify_commits")]
    trusted_signers: Option<PathBuf>,
    /// Armored OpenPGP public keys for --verify-commits.
    #[arg(long, value_name = "FILE", requires = "verify_commits")]
    trusted_keys: Option<PathBuf>,
    #[command(flatten)]
    sops: sops_keys::SopsArgs,
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

/// The longest error message printed (bytes); the rest is counted, not echoed, so a 20 MB
/// value in an input cannot become 20 MB of output.
const MAX_ERROR_BYTES: usize = 16 * 1024;

fn capped_error(e: &anyhow::Error) -> String {
    flotilla_spec::diag::cap_text(format!("{e:#}"), MAX_ERROR_BYTES)
}

/// Logs to stderr, filtered by $FLOTILLA_LOG (default `warn`, `info` for the daemon).
fn init_logging(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a person at a terminal: a file or a log collector gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    // kube's TLS uses ring, gix's HTTP client aws-lc-rs: with both linked, rustls needs to be
    // told which one serves the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The daemon starts its logging once its settings (the log format) are resolved.
    match cli.command {
        Command::Serve(_) => {}
        Command::Agent(_) => init_logging("info", false),
        _ => init_logging("warn", false),
    }
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
            eprintln!("flotilla: error: {}", capped_error(&e));
            ExitCode::from(USAGE_OR_IO)
        }
    }
}

/// Render options of the CLI: Jsonnet runs in capped, killable worker processes of this
/// executable (see `flotilla_daemon::jsonnet_worker`).
/// Without a path to this executable (not expected on Linux), Jsonnet runs in-process.
/// SOPS files decrypt with the keys of `sops` (`--sops-age-key-file`, `SOPS_AGE_KEY`).
pub(crate) fn render_options(
    sops: &sops_keys::SopsArgs,
) -> anyhow::Result<flotilla_renderers::RenderOptions> {
    let keys = sops_keys::load(sops.sops_age_key_file.as_deref())?;
    Ok(match std::env::current_exe() {
        Ok(exe) => flotilla_renderers::RenderOptions {
            jsonnet: Some(std::sync::Arc::new(
                flotilla_daemon::jsonnet_worker::ProcessEvaluator::new(exe),
            )),
            sops: keys,
            ..Default::default()
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot find the flotilla executable; Jsonnet runs in-process, unbounded");
            flotilla_renderers::RenderOptions {
                sops: keys,
                ..Default::default()
            }
        }
    })
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate {
            fleet,
            output,
            watch: false,
        } => validate(&fleet, output),
        Command::Validate {
            fleet,
            output,
            watch: true,
        } => watch_validate(&fleet, output),
        Command::Plan { fleet, output } => plan(&fleet, output),
        Command::Render {
            fleet,
            clusters,
            placement,
            out,
            show_secrets,
        } => render(
            &fleet,
            &clusters,
            placement.as_deref(),
            out.as_deref(),
            show_secrets,
        ),
        Command::RenderJsonnet => {
            flotilla_daemon::jsonnet_worker::serve()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema => {
            let schema = serde_json::to_string_pretty(&flotilla_spec::json_schema())?;
            outln!("{schema}")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(args) => sim(args),
        Command::Images { command } => images::run(command),
        Command::Backup { command } => backup::run(command),
        Command::Restore(args) => backup::restore(*args),
        Command::AgentManifests(args) => {
            agent_manifests::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff {
            fleet,
            clusters,
            live: false,
            base: Some(base),
            head: Some(head),
            format,
            out,
        } => review::diff(
            &fleet,
            &clusters.clusters,
            &base,
            &head,
            format,
            out.as_deref(),
        ),
        Command::Diff { live: false, .. } => anyhow::bail!(
            "flotilla diff needs a mode: --live (Git against live clusters) or --base REF --head REF (two Git revisions, no cluster)"
        ),
        Command::Diff {
            fleet,
            clusters,
            format,
            out,
            ..
        } => live::compare(
            &fleet,
            &clusters,
            flotilla_reconciler::report::ReportKind::Diff,
            format,
            out.as_deref(),
        ),
        Command::Apply {
            fleet,
            clusters,
            no_rollout,
            state,
            dry_run,
            prune,
            wait,
            output,
        } => {
            if no_rollout || dry_run {
                live::apply(
                    &fleet,
                    &clusters,
                    dry_run,
                    prune,
                    wait,
                    output == Output::Json,
                )
            } else {
                if wait.is_some() || prune || output == Output::Json {
                    anyhow::bail!(
                        "--wait, --prune and --output json belong to --no-rollout (rollouts wait for health and prune as the placement says)"
                    );
                }
                rollouts::apply(&fleet, &clusters, state.as_deref())
            }
        }
        Command::Rollout {
            command,
            placement,
            state,
            server,
            fleet,
        } => {
            if let Some(base) = server.url().filter(|_| state.is_none()) {
                return rollouts::control_remote(&server, &base, command, &placement);
            }
            let name = match &state {
                Some(_) => String::new(),
                None => {
                    let (file, checked, _, _) = load(&fleet)?;
                    match checked.fleet {
                        Some(f) => f.metadata.name,
                        None => anyhow::bail!(
                            "{file} is invalid: run flotilla validate, or pass --state DIR"
                        ),
                    }
                }
            };
            rollouts::control(command, &placement, &name, state.as_deref())
        }
        Command::Workflow {
            action,
            name,
            cluster,
            state,
            server,
            fleet,
        } => {
            let command = workflows::command(action, name, cluster)?;
            if let Some(base) = server.url().filter(|_| state.is_none()) {
                return workflows::remote(&server, &base, command);
            }
            let (file, checked, _, _) = load(&fleet)?;
            match checked.fleet {
                Some(f) => workflows::local(command, &f, state.as_deref()),
                None => anyhow::bail!("{file} is invalid: run flotilla validate"),
            }
        }
        Command::Serve(args) => {
            let (config, format) = serve::resolve(*args)?;
            init_logging("info", format == serve::LogFormat::Json);
            serve::serve(config)
        }
        Command::Agent(args) => agent::run(*args),
        Command::Status { server } => serve::status(&server),
        Command::Burst { command } => burst::run(command),
        Command::Demo(args) => demo::demo(args),
        Command::Drift {
            fleet,
            clusters,
            format,
            out,
        } => live::compare(
            &fleet,
            &clusters,
            flotilla_reconciler::report::ReportKind::Drift,
            format,
            out.as_deref(),
        ),
    }
}

/// `90s`, `5m`, `1h30m`: the fleet's duration syntax.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    flotilla_spec::types::Duration::parse(s).map(|d| d.value)
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
/// The fleet file's name, what checking it found, and the repository revision it came from
/// (a local directory or a Git snapshot), for commands that read more of it.
/// The last element names the revision: a commit id, or `work tree DIR`.
type Loaded = (String, Checked, Box<dyn RepoFiles>, String);

fn load(args: &FleetArgs) -> anyhow::Result<Loaded> {
    if git::is_url(&args.repo) || args.rev.is_some() {
        load_git(args)
    } else if args.verify_commits {
        anyhow::bail!(
            "--verify-commits checks a commit: name a Git revision (--rev) or a Git URL, not a work tree"
        )
    } else {
        load_local(args)
    }
}

/// `--verify-commits`: the snapshot's commit must be signed by a trusted key.
fn verify_commit(args: &FleetArgs, snapshot: &git::Snapshot) -> anyhow::Result<()> {
    if !args.verify_commits {
        return Ok(());
    }
    if args.trusted_signers.is_none() && args.trusted_keys.is_none() {
        anyhow::bail!(
            "--verify-commits needs the keys to trust: --trusted-signers FILE and/or --trusted-keys FILE"
        );
    }
    let mut trust = git::Trust::new();
    if let Some(p) = &args.trusted_signers {
        trust
            .load_allowed_signers(p)
            .map_err(|e| anyhow::anyhow!("--trusted-signers {e}"))?;
    }
    if let Some(p) = &args.trusted_keys {
        trust
            .load_openpgp_keys(p)
            .map_err(|e| anyhow::anyhow!("--trusted-keys {e}"))?;
    }
    let signer = trust.verify_snapshot(snapshot)?;
    eprintln!("commit {}: good signature by {signer}", snapshot.commit());
    Ok(())
}

/// Reads revision `rev` of the local repository `--repo` (anything `git rev-parse` names,
/// or A...B for a merge base) straight from its object database.
fn load_local_rev(args: &FleetArgs, rev: &str) -> anyhow::Result<Loaded> {
    let snapshot = git::open_local(Path::new(&args.repo), rev)?;
    eprintln!(
        "{} ({}): commit {}",
        snapshot.repo_name(),
        snapshot.rev(),
        snapshot.commit()
    );
    verify_commit(args, &snapshot)?;
    let where_ = format!("repository {} at {}", snapshot.repo_name(), snapshot.rev());
    let (file, checked) = check_fleet_file(args, &snapshot, None, &where_)?;
    let revision = snapshot.commit().to_string();
    Ok((file, checked, Box::new(snapshot), revision))
}

/// The cache directory for Git repositories.
fn cache_root(args: &FleetArgs) -> anyhow::Result<PathBuf> {
    match &args.cache {
        Some(dir) => Ok(dir.clone()),
        None => user_dir("XDG_CACHE_HOME", ".cache", "--cache"),
    }
}

/// `$XDG_VAR/flotilla`, else `~/HOME_SUB/flotilla` (the XDG base directory rule).
fn user_dir(xdg_var: &str, home_sub: &str, flag: &str) -> anyhow::Result<PathBuf> {
    let non_empty = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
    if let Some(x) = non_empty(xdg_var) {
        return Ok(PathBuf::from(x).join("flotilla"));
    }
    if let Some(h) = non_empty("HOME") {
        return Ok(PathBuf::from(h).join(home_sub).join("flotilla"));
    }
    anyhow::bail!("no {xdg_var} or HOME: pass {flag}")
}

/// `--repo` as a Git remote, with the credentials the flags name.
fn remote(args: &FleetArgs) -> anyhow::Result<git::Remote> {
    let credentials = match (&args.credentials_file, &args.password_env) {
        (Some(file), _) => Some(git::Credentials::from_file(file)?),
        (None, Some(var)) => Some(git::Credentials::from_env(
            args.username_env.as_deref(),
            var,
        )?),
        (None, None) => None,
    };
    Ok(git::Remote::parse(&args.repo, credentials)?)
}

/// Fetches the revision into the cache and checks the fleet file of that commit.
fn load_git(args: &FleetArgs) -> anyhow::Result<Loaded> {
    if !git::is_url(&args.repo)
        && let Some(rev) = &args.rev
    {
        return load_local_rev(args, rev);
    }
    let remote = remote(args)?;
    let rev = git::Rev::parse(args.rev.as_deref().unwrap_or("HEAD"))?;
    let cache = cache_root(args)?.join("git").join(remote.cache_name());
    let mut source = git::GitSource::open(remote, rev, cache)?;
    source.poll()?;
    let snapshot = source
        .current()
        .context("the fetch brought no snapshot")?
        .clone();
    eprintln!(
        "{} ({}): commit {}",
        snapshot.repo_name(),
        snapshot.rev(),
        snapshot.commit()
    );
    verify_commit(args, &snapshot)?;
    let where_ = format!("repository {} at {}", snapshot.repo_name(), snapshot.rev());
    let (file, checked) = check_fleet_file(args, &snapshot, None, &where_)?;
    let revision = snapshot.commit().to_string();
    Ok((file, checked, Box::new(snapshot), revision))
}

/// Reads `--fleet` from a repository view and checks it. A file over the size limit becomes a
/// diagnostic (exit 1), not an I/O error; other read problems are I/O errors (exit 2).
fn check_fleet_file(
    args: &FleetArgs,
    repo: &dyn RepoFiles,
    known_size: Option<u64>,
    where_: &str,
) -> anyhow::Result<(String, Checked)> {
    Ok(flotilla_spec::check_repo_file(
        repo,
        &args.fleet,
        known_size,
        where_,
        &Limits::default(),
    )?)
}

/// Checks the fleet file of a local directory (uncommitted changes included).
fn load_local(args: &FleetArgs) -> anyhow::Result<Loaded> {
    let tree =
        LocalTree::open(&args.repo).with_context(|| format!("cannot open --repo {}", args.repo))?;
    // A local file's size is known without reading it: an oversized one is never read.
    let size = RepoPath::parse(&args.fleet)
        .ok()
        .and_then(|p| std::fs::metadata(tree.root().join(p.as_str())).ok())
        .map(|m| m.len());
    let where_ = format!("repository {}", args.repo);
    let (file, checked) = check_fleet_file(args, &tree, size, &where_)?;
    Ok((
        file,
        checked,
        Box::new(tree),
        format!("work tree {}", args.repo),
    ))
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
    let (file, checked, _, _) = load(args)?;
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

/// `validate --watch`: validates, then again after every debounced batch of changes. I/O
/// errors (a fleet file briefly missing while an editor saves) are reported, not fatal.
fn watch_validate(args: &FleetArgs, output: Output) -> anyhow::Result<ExitCode> {
    if git::is_url(&args.repo) || args.rev.is_some() {
        anyhow::bail!("--watch needs a local directory as --repo (no URL, no --rev)");
    }
    let watcher = flotilla_source::watch::LocalWatcher::new(
        std::path::Path::new(&args.repo),
        std::time::Duration::from_millis(300),
    )
    .with_context(|| format!("cannot watch --repo {}", args.repo))?;
    loop {
        if let Err(e) = validate(args, output) {
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return Err(e);
            }
            eprintln!("flotilla: error: {}", capped_error(&e));
        }
        eprintln!(
            "flotilla: watching {} for changes",
            watcher.root().display()
        );
        while watcher
            .wait(std::time::Duration::from_secs(3600))?
            .is_none()
        {}
    }
}

fn plan(args: &FleetArgs, output: Output) -> anyhow::Result<ExitCode> {
    let (file, checked, tree, _) = load(args)?;
    let Some(fleet) = &checked.fleet else {
        print_diagnostics(&checked.diagnostics)?;
        eprintln!("{}", summary(&file, &checked));
        return Ok(ExitCode::from(INVALID));
    };
    for w in checked.warnings() {
        eprintln!("{w}");
    }
    let plan = flotilla_reconciler::plan::plan(fleet);
    // Placements of teams are rendered and checked against their team's allowance.
    let refusals = review::team_refusals(fleet, tree.as_ref(), &render_options(&args.sops)?);
    match output {
        Output::Text => {
            out!("{}", plan.to_text())?;
            out!("{}", review::refusals_text(fleet, &refusals))?;
            out!("{}", workflows::plan_text(fleet))?;
            out!("{}", backup::plan_text(fleet, chrono::Utc::now()))?;
        }
        Output::Json => {
            let mut v = serde_json::to_value(&plan)?;
            if let Some(map) = v.as_object_mut()
                && fleet.placements.iter().any(|p| p.team.is_some())
            {
                map.insert("refused".into(), serde_json::to_value(&refusals)?);
            }
            outln!("{}", serde_json::to_string_pretty(&v)?)?
        }
    }
    Ok(if refusals.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(INVALID)
    })
}

/// The marker `flotilla render` prints for a secret value without `--show-secrets`.
const HIDDEN: &str = "(secret value hidden: --show-secrets prints it)";

/// The YAML of `objects` with Secrets' values (and those of objects decrypted from SOPS
/// files) replaced by [`HIDDEN`].
fn masked_yaml(objects: &[serde_json::Value]) -> String {
    let masked: Vec<serde_json::Value> = objects
        .iter()
        .map(|o| {
            let mut o = o.clone();
            flotilla_reconciler::diff::mask_values(&mut o, HIDDEN);
            o
        })
        .collect();
    flotilla_renderers::to_yaml_stream(&masked)
}

fn render(
    args: &FleetArgs,
    only_clusters: &[String],
    only_placement: Option<&str>,
    out_dir: Option<&std::path::Path>,
    show_secrets: bool,
) -> anyhow::Result<ExitCode> {
    let (file, checked, tree, _) = load(args)?;
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
    let selection = flotilla_spec::Selection::new(fleet);
    let mut clusters: Vec<&flotilla_spec::Cluster> = fleet
        .clusters
        .iter()
        .filter(|c| only_clusters.is_empty() || only_clusters.contains(&c.name))
        .collect();
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    let options = crate::render_options(&args.sops)?;
    // One pass over the tree: a bundle's renderer runs once per distinct input, not per cluster.
    let mut cache = flotilla_renderers::cache::Cache::new();
    let mut pass = cache.pass(tree.as_ref());
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
                        let yaml = if show_secrets {
                            r.yaml.clone()
                        } else {
                            masked_yaml(&r.objects)
                        };
                        let text = format!(
                            "# {}/{}/{} sha256:{}\n{}",
                            placement.name, bundle.name, cluster.name, r.hash, yaml
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
                        let e = flotilla_spec::diag::cap_text(e.to_string(), MAX_ERROR_BYTES);
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
