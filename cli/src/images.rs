//! `flotilla images scan|update`: image policies against registries, written back to Git.
//!
//! Exit codes (like `diff`): 0 nothing to change, 1 changes found (scan) or written/pushed
//! (update; also a dry run that would change something), 2 errors: a registry that could
//! not be asked, a policy that matched no tag, a field that could not be found or edited, a
//! failed push, usage or I/O. Policies that failed are reported and left out; the others are
//! still written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use flotilla_images::{
    Batch, Committed, Desired, Logins, Plan, PolicyScan, Registries, Settings, edit::FieldKind,
};
use flotilla_source::git;
use flotilla_spec::model::Fleet;

use super::{FleetArgs, Output, USAGE_OR_IO};

#[derive(clap::Subcommand)]
pub enum ImagesCommand {
    /// For every image policy: the tags in the registry, the one the policy chooses and why,
    /// and the values the repository holds now. Exit 0 up to date, 1 updates available,
    /// 2 errors.
    Scan {
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Write the chosen tags into the repository's files (only the bytes of the values
    /// change). A local directory is edited in place; with --push (or a Git URL) the changes
    /// are committed on each policy's writeBack.branch and pushed, rebasing and retrying when
    /// the branch moved. Exit 0 done (changes written or nothing to change), 2 errors; with
    /// --dry-run (or a Git repository without --push, which only shows), 1 when there are
    /// changes, as `images scan`.
    Update {
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        registry: RegistryArgs,
        /// Commit and push (the repository is read as Git: --repo URL or a path to a repository).
        #[arg(long)]
        push: bool,
        /// Push each policy's commit to `image-updates/<policy>` (created from the tracked
        /// branch) for a pull request, instead of the tracked branch.
        #[arg(long)]
        branch_mode: bool,
        /// Show what would change; write, commit and push nothing.
        #[arg(long)]
        dry_run: bool,
        /// Exit 1 when changes were written or pushed (as `git diff --exit-code`).
        #[arg(long)]
        exit_code: bool,
        /// Sign the commits with this unencrypted OpenSSH private key (an SSH signature, as
        /// `git -c gpg.format=ssh commit -S`) or armored OpenPGP secret key, so daemons with
        /// --verify-commits deploy them.
        #[arg(long, env = "FLOTILLA_SIGNING_KEY", value_name = "FILE")]
        signing_key: Option<PathBuf>,
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
}

#[derive(Clone, clap::Args)]
pub struct RegistryArgs {
    /// Registry credentials: a docker config.json (`auths` entries) [default:
    /// $DOCKER_CONFIG/config.json, else ~/.docker/config.json].
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// Reach this registry (host[:port]) over plain HTTP. Loopback registries always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
    /// Only this policy (repeatable; default: every policy).
    #[arg(long = "policy", value_name = "NAME")]
    policies: Vec<String>,
}

macro_rules! outln {
    ($($arg:tt)*) => {{
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, $($arg)*)
    }};
}

pub fn run(command: ImagesCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImagesCommand::Scan {
            fleet,
            registry,
            output,
        } => scan(&fleet, &registry, output),
        ImagesCommand::Update {
            fleet,
            registry,
            push,
            branch_mode,
            dry_run,
            exit_code,
            signing_key,
            output,
        } => update(
            &fleet,
            &registry,
            Update {
                push,
                branch_mode,
                dry_run,
                exit_code,
                signing_key,
            },
            output,
        ),
    }
}

fn docker_config_path(args: &RegistryArgs) -> Option<PathBuf> {
    args.docker_config.clone().or_else(Logins::default_path)
}

/// Loads and checks the fleet; an invalid fleet is an error here (nothing to scan).
fn load_fleet(args: &FleetArgs) -> anyhow::Result<(Fleet, Box<dyn flotilla_spec::RepoFiles>)> {
    let (file, checked, repo, _) = super::load(args)?;
    match checked.fleet {
        Some(f) => Ok((f, repo)),
        None => {
            for d in checked.errors() {
                eprintln!("{d}");
            }
            anyhow::bail!("{file} is invalid: run flotilla validate")
        }
    }
}

fn scan_registries(fleet: &Fleet, args: &RegistryArgs) -> anyhow::Result<Vec<PolicyScan>> {
    for name in &args.policies {
        if !fleet.image_policies.iter().any(|p| &p.name == name) {
            anyhow::bail!("--policy {name}: the fleet has no image policy by that name");
        }
    }
    let logins = match docker_config_path(args) {
        Some(p) => Logins::from_docker_config(&p)?,
        None => Logins::default(),
    };
    let images: Vec<String> = fleet
        .image_policies
        .iter()
        .map(|p| p.image.clone())
        .collect();
    let registries = Registries::new(
        &images,
        Settings {
            logins,
            insecure: args.insecure.clone(),
            ..Settings::default()
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(flotilla_images::scan(fleet, &registries, &args.policies)))
}

fn kind_name(kind: FieldKind) -> &'static str {
    match kind {
        FieldKind::Reference => "image",
        FieldKind::Tag | FieldKind::ImagesTag => "tag",
        FieldKind::Name => "name",
        FieldKind::Digest | FieldKind::ImagesDigest => "digest",
    }
}

fn print_scan(scans: &[PolicyScan], plan: &Plan) -> std::io::Result<()> {
    for s in scans {
        outln!("policy {}: {} ({})", s.policy, s.image, s.rule)?;
        match &s.outcome {
            flotilla_images::Outcome::Error { error } => outln!("  error: {error}")?,
            flotilla_images::Outcome::Scanned { choice, digest, .. } => {
                outln!("  tags considered: {}", choice.verdicts.len())?;
                for v in &choice.verdicts {
                    match &v.rejected {
                        None if choice.chosen.as_ref() == Some(&v.tag) => {
                            outln!("    {:<24} chosen", v.tag)?
                        }
                        None => outln!("    {:<24} accepted", v.tag)?,
                        Some(why) => outln!("    {:<24} rejected: {why}", v.tag)?,
                    }
                }
                match &choice.chosen {
                    Some(tag) => outln!("  chosen: {tag} ({})", choice.reason)?,
                    None => outln!("  chosen: none ({})", choice.reason)?,
                }
                if let Some(d) = digest {
                    outln!("  digest: {d}")?;
                }
            }
        }
        for f in plan
            .fields
            .iter()
            .filter(|f| f.field.policy.as_deref() == Some(s.policy.as_str()))
        {
            let change = plan
                .changes
                .iter()
                .find(|c| c.file == f.file && c.line == f.field.line && c.column == f.field.column);
            match change {
                Some(c) => outln!(
                    "  {}:{}:{}: {} {} -> {}",
                    f.file,
                    f.field.line,
                    f.field.column,
                    kind_name(f.field.kind),
                    c.from,
                    c.to
                )?,
                None => outln!(
                    "  {}:{}:{}: {} {} (current)",
                    f.file,
                    f.field.line,
                    f.field.column,
                    kind_name(f.field.kind),
                    f.field.current
                )?,
            }
        }
        for p in plan
            .problems
            .iter()
            .filter(|p| p.policy.as_deref() == Some(s.policy.as_str()))
        {
            outln!("  problem: {p}")?;
        }
    }
    Ok(())
}

/// Exit code from what happened: errors dominate, then changes.
fn code(failed: bool, changed: bool) -> ExitCode {
    if failed {
        ExitCode::from(USAGE_OR_IO)
    } else if changed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn report_failures(scans: &[PolicyScan], plan: &Plan) -> bool {
    let mut failed = false;
    for s in scans {
        if let Some(why) = s.failure() {
            eprintln!(
                "flotilla: policy {}: {why}; nothing written for it",
                s.policy
            );
            failed = true;
        }
    }
    for p in &plan.problems {
        eprintln!("flotilla: {p}");
        failed = true;
    }
    failed
}

fn scan(args: &FleetArgs, registry: &RegistryArgs, output: Output) -> anyhow::Result<ExitCode> {
    let (fleet, repo) = load_fleet(args)?;
    let scans = scan_registries(&fleet, registry)?;
    let desired: Vec<Desired> = scans.iter().filter_map(|s| s.desired().cloned()).collect();
    let plan = flotilla_images::plan(&fleet, repo.as_ref(), &desired)?;
    match output {
        Output::Text => print_scan(&scans, &plan)?,
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "policies": scans,
                "fields": plan.fields,
                "changes": plan.changes,
                "problems": plan.problems,
            }))?
        )?,
    }
    let failed = report_failures(&scans, &plan);
    Ok(code(failed, !plan.changes.is_empty()))
}

/// The flags of `images update`.
struct Update {
    push: bool,
    branch_mode: bool,
    dry_run: bool,
    exit_code: bool,
    signing_key: Option<PathBuf>,
}

fn update(
    args: &FleetArgs,
    registry: &RegistryArgs,
    flags: Update,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let Update {
        push,
        branch_mode,
        dry_run,
        exit_code,
        signing_key,
    } = flags;
    let git_mode = push || git::is_url(&args.repo) || args.rev.is_some();
    if branch_mode && !git_mode {
        anyhow::bail!("--branch-mode pushes a branch: add --push");
    }
    if signing_key.is_some() && !git_mode {
        anyhow::bail!(
            "--signing-key signs commits: add --push (a local directory is edited, not committed)"
        );
    }
    // Read before any registry is asked: a bad key fails fast.
    let options = git::PushOptions {
        signer: signing_key
            .as_deref()
            .map(|p| git::CommitSigner::load(p).map(std::sync::Arc::new))
            .transpose()
            .context("--signing-key")?,
        ..git::PushOptions::default()
    };
    let (fleet, repo) = load_fleet(args)?;
    let scans = scan_registries(&fleet, registry)?;
    let desired: Vec<Desired> = scans.iter().filter_map(|s| s.desired().cloned()).collect();
    if !git_mode {
        return update_local(
            args,
            &fleet,
            repo.as_ref(),
            &scans,
            &desired,
            dry_run,
            output,
        )
        .map(|(failed, changed)| code(failed, changed && (dry_run || exit_code)));
    }
    drop(repo);
    if !push && !dry_run {
        eprintln!("flotilla: a Git repository without --push: showing what would be committed");
    }
    let dry_run = dry_run || !push;
    let remote = super::remote(args)?;
    let cache = super::cache_root(args)?
        .join("git")
        .join(remote.cache_name());
    let mut all = Plan::default();
    let mut commits = Vec::new();
    let mut failed = false;
    for batch in flotilla_images::batches(&fleet, &desired, branch_mode) {
        match commit_one(&remote, &cache, &fleet, &batch, &desired, &options, dry_run) {
            Ok(result) => {
                let target = batch.push_branch.clone().unwrap_or(batch.branch.clone());
                let what = match &result.committed {
                    Committed::NothingToDo => format!("{target}: up to date"),
                    Committed::DryRun => format!("{target}: would commit (dry run)"),
                    Committed::Pushed {
                        commit,
                        attempts,
                        branch,
                    } => format!(
                        "{branch}: pushed {commit} ({attempts} attempt{})",
                        if *attempts == 1 { "" } else { "s" }
                    ),
                };
                commits.push(serde_json::json!({
                    "branch": batch.branch,
                    "pushBranch": batch.push_branch,
                    "policies": batch.policies,
                    "result": what,
                    "message": result.message,
                }));
                if output == Output::Text {
                    print_changes(&result.plan)?;
                    outln!("{what}")?;
                }
                all.changes.extend(result.plan.changes);
                all.problems.extend(result.plan.problems);
            }
            Err(e) => {
                eprintln!(
                    "flotilla: {} ({}): {e:#}; nothing committed",
                    batch.branch,
                    batch.policies.join(", ")
                );
                failed = true;
            }
        }
    }
    if output == Output::Json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "policies": scans,
                "changes": all.changes,
                "problems": all.problems,
                "commits": commits,
            }))?
        )?;
    }
    let failed = report_failures(&scans, &all) || failed;
    Ok(code(
        failed,
        !all.changes.is_empty() && (dry_run || exit_code),
    ))
}

fn commit_one(
    remote: &git::Remote,
    cache: &Path,
    fleet: &Fleet,
    batch: &Batch,
    desired: &[Desired],
    options: &git::PushOptions,
    dry_run: bool,
) -> anyhow::Result<flotilla_images::BatchResult> {
    let rev = git::Rev::parse(&batch.branch)?;
    let mut source = git::GitSource::open(remote.clone(), rev, cache)?;
    Ok(flotilla_images::commit_batch(
        &mut source,
        fleet,
        batch,
        desired,
        options,
        dry_run,
        &mut |_| {},
    )?)
}

fn print_changes(plan: &Plan) -> std::io::Result<()> {
    for c in &plan.changes {
        outln!(
            "{}:{}:{}: {} {} {} -> {}",
            c.file,
            c.line,
            c.column,
            c.policy,
            kind_name(c.kind),
            c.from,
            c.to
        )?;
    }
    Ok(())
}

/// Edits a local work tree in place (no commit). (failed, changes found)
fn update_local(
    args: &FleetArgs,
    fleet: &Fleet,
    repo: &dyn flotilla_spec::RepoFiles,
    scans: &[PolicyScan],
    desired: &[Desired],
    dry_run: bool,
    output: Output,
) -> anyhow::Result<(bool, bool)> {
    let plan = flotilla_images::plan(fleet, repo, desired)?;
    if !dry_run {
        let root = std::fs::canonicalize(&args.repo)
            .with_context(|| format!("cannot open --repo {}", args.repo))?;
        for (path, text) in &plan.files {
            let target = std::fs::canonicalize(root.join(path.as_str()))
                .with_context(|| format!("cannot resolve {}", path.as_str()))?;
            if !target.starts_with(&root) {
                anyhow::bail!("{} leads outside the repository", path.as_str());
            }
            std::fs::write(&target, text)
                .with_context(|| format!("cannot write {}", path.as_str()))?;
        }
    }
    match output {
        Output::Text => {
            print_changes(&plan)?;
            if dry_run && !plan.changes.is_empty() {
                outln!("(dry run: nothing written)")?;
            }
        }
        Output::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "policies": scans,
                "changes": plan.changes,
                "problems": plan.problems,
                "dryRun": dry_run,
            }))?
        )?,
    }
    let failed = report_failures(scans, &plan);
    Ok((failed, !plan.changes.is_empty()))
}
