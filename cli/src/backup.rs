//! `flotilla backup run|list|verify` and `flotilla restore`: the backup policies of
//! fleet.yaml run on demand, and restores from their stores (see docs/backups.md).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use flotilla_backup::catalog;
use flotilla_backup::filter::Filter;
use flotilla_backup::restore::{self, Existing, RestoreAction, RestoreRequest};
use flotilla_backup::run::BackupRequest;
use flotilla_backup::{Store, StoreSettings};
use flotilla_reconciler::cluster::Cluster;
use flotilla_spec::Fleet;

use crate::live::runtime;
use crate::{FleetArgs, INVALID, load, summary};

/// How to reach S3-compatible stores. Credentials: `AWS_ACCESS_KEY_ID` and
/// `AWS_SECRET_ACCESS_KEY`, or the files named here; never on the command line.
#[derive(clap::Args, Clone)]
pub struct S3Args {
    /// S3-compatible endpoint (MinIO, OSS, Ceph): `http://127.0.0.1:9000`.
    #[arg(long, value_name = "URL", env = "FLOTILLA_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    #[arg(long, value_name = "REGION", env = "FLOTILLA_S3_REGION")]
    pub s3_region: Option<String>,
    /// A file holding the access key id (instead of $AWS_ACCESS_KEY_ID).
    #[arg(long, value_name = "FILE", env = "FLOTILLA_S3_ACCESS_KEY_FILE")]
    pub s3_access_key_file: Option<PathBuf>,
    /// A file holding the secret access key (instead of $AWS_SECRET_ACCESS_KEY).
    #[arg(long, value_name = "FILE", env = "FLOTILLA_S3_SECRET_KEY_FILE")]
    pub s3_secret_key_file: Option<PathBuf>,
    /// Allow a plain-http endpoint that is not a loopback address.
    #[arg(long)]
    pub s3_allow_http: bool,
}

impl S3Args {
    pub fn settings(&self) -> anyhow::Result<StoreSettings> {
        let from = |file: &Option<PathBuf>, var: &str| -> anyhow::Result<Option<String>> {
            Ok(match file {
                Some(f) => Some(StoreSettings::read_secret_file(f)?),
                None => std::env::var(var).ok().filter(|s| !s.is_empty()),
            })
        };
        Ok(StoreSettings {
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            access_key_id: from(&self.s3_access_key_file, "AWS_ACCESS_KEY_ID")?,
            secret_access_key: from(&self.s3_secret_key_file, "AWS_SECRET_ACCESS_KEY")?,
            allow_http: self.s3_allow_http,
        })
    }
}

/// Where the store is and how to reach it.
#[derive(clap::Args, Clone)]
pub struct StoreArgs {
    /// The store (default: the policy's `store` in fleet.yaml).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
}

impl StoreArgs {
    fn open(&self, policy: Option<&flotilla_spec::Backup>) -> anyhow::Result<Store> {
        let url = match (&self.store, policy) {
            (Some(u), _) => u.clone(),
            (None, Some(p)) => p.store.clone(),
            (None, None) => {
                bail!("no store: name a backup policy of fleet.yaml or give --store URL")
            }
        };
        Ok(Store::open(&url, &self.s3.settings()?)?)
    }
}

#[derive(clap::Subcommand)]
pub enum BackupCommand {
    /// Runs a backup policy now, for each of its clusters (or those named); then applies
    /// its retention.
    Run {
        /// The policy (`backups[].name`).
        name: String,
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        clusters: crate::live::ClusterArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(short, long, value_enum, default_value_t = crate::Output::Text)]
        output: crate::Output,
    },
    /// Lists complete backups (those with a manifest).
    List {
        /// Only this policy (its store is the one listed unless --store).
        name: Option<String>,
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[arg(short, long, value_enum, default_value_t = crate::Output::Text)]
        output: crate::Output,
    },
    /// Deletes incomplete backups (no manifest) older than the grace period.
    Gc {
        /// Only this policy (its store is the one cleaned unless --store).
        name: Option<String>,
        /// How old an incomplete backup must be (a running backup is younger).
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = crate::parse_duration)]
        grace: std::time::Duration,
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Re-hashes every file of a backup against its manifest.
    Verify {
        name: String,
        #[arg(long, value_name = "NAME")]
        cluster: String,
        /// `latest` (default), a backup's timestamp, or an RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        #[command(flatten)]
        fleet: FleetArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The backup policy the backup was made by.
    #[arg(long, value_name = "NAME")]
    backup: String,
    /// The cluster the backup was made of.
    #[arg(long, value_name = "NAME")]
    cluster: String,
    /// `latest` (default), a backup's timestamp, or an RFC 3339 time (newest at or before).
    #[arg(long, value_name = "TIME")]
    at: Option<String>,
    /// The cluster to restore into: a fleet cluster, else a kubeconfig context.
    #[arg(long, value_name = "CLUSTER")]
    to: String,
    /// Source namespace = target namespace (repeatable).
    #[arg(long = "namespace-map", value_name = "FROM=TO")]
    namespace_map: Vec<String>,
    #[arg(long, value_name = "NS,...", value_delimiter = ',')]
    include_namespaces: Vec<String>,
    #[arg(long, value_name = "NS,...", value_delimiter = ',')]
    exclude_namespaces: Vec<String>,
    #[arg(long, value_name = "KIND,...", value_delimiter = ',')]
    include_kinds: Vec<String>,
    #[arg(long, value_name = "KIND,...", value_delimiter = ',')]
    exclude_kinds: Vec<String>,
    /// What to do with objects the target already has.
    #[arg(long, value_enum, default_value_t = ExistingArg::Skip)]
    existing: ExistingArg,
    /// age identity file for the backup's Secrets.
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Overrides: a YAML or JSON file with a list of `{target, jsonPatch | mergePatch}` (the
    /// placement overrides' patch language), matched after the namespace map.
    #[arg(long = "override", value_name = "FILE")]
    overrides: Option<PathBuf>,
    /// Report what would be created, updated or skipped; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Requests per second to the target cluster (one apply per object), and the burst above it.
    #[arg(long, default_value_t = 50.0)]
    qps: f64,
    #[arg(long, default_value_t = 100)]
    burst: u32,
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(flatten)]
    store: StoreArgs,
    #[arg(short, long, value_enum, default_value_t = crate::Output::Text)]
    output: crate::Output,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ExistingArg {
    Skip,
    Update,
}

/// The valid fleet, or the exit code after printing its diagnostics.
fn fleet(args: &FleetArgs) -> anyhow::Result<Result<(Fleet, String), ExitCode>> {
    let (file, checked, _, revision) = load(args)?;
    let Some(fleet) = checked.fleet.clone() else {
        for d in &checked.diagnostics {
            eprintln!("{d}");
        }
        eprintln!("{}", summary(&file, &checked));
        return Ok(Err(ExitCode::from(INVALID)));
    };
    Ok(Ok((fleet, revision)))
}

fn policy<'a>(fleet: &'a Fleet, name: &str) -> anyhow::Result<&'a flotilla_spec::Backup> {
    fleet
        .backups
        .iter()
        .find(|b| b.name == name)
        .with_context(|| {
            let names: Vec<&str> = fleet.backups.iter().map(|b| b.name.as_str()).collect();
            format!(
                "no backup policy {name:?} in fleet.yaml (policies: {})",
                names.join(", ")
            )
        })
}

pub fn run(command: BackupCommand) -> anyhow::Result<ExitCode> {
    match command {
        BackupCommand::Run {
            name,
            fleet: fa,
            clusters,
            store,
            output,
        } => {
            let (fleet, revision) = match fleet(&fa)? {
                Ok(f) => f,
                Err(code) => return Ok(code),
            };
            let p = policy(&fleet, &name)?;
            let store = store.open(Some(p))?;
            let selection = flotilla_spec::Selection::new(&fleet);
            let mut targets: Vec<(String, String)> = selection
                .index
                .select(&p.clusters)
                .iter()
                .map(|i| &fleet.clusters[i])
                .filter(|c| clusters.clusters.is_empty() || clusters.clusters.contains(&c.name))
                .map(|c| (c.name.clone(), c.context().to_string()))
                .collect();
            for c in &clusters.clusters {
                if !targets.iter().any(|(n, _)| n == c) {
                    bail!("--cluster {c}: not one of backup {name:?}'s clusters");
                }
            }
            targets.sort();
            let connector = flotilla_cluster::Connector::load(clusters.kubeconfig.as_deref())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let rt = runtime()?;
            let mut failed = 0;
            let mut results = Vec::new();
            for (cluster, context) in targets {
                let mut req =
                    BackupRequest::from_policy(&fleet.metadata.name, p, chrono::Utc::now());
                req.fleet_commit = Some(revision.clone()).filter(|r| !r.is_empty());
                let r = rt.block_on(async {
                    // Backups only read: a read-only connection.
                    let c = connector
                        .connect(&cluster, &context, true)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    let out =
                        flotilla_backup::run::backup(&c as &dyn Cluster, &store, &req).await?;
                    let expired = catalog::retain(
                        &store,
                        &name,
                        &cluster,
                        p.retain.value,
                        chrono::Utc::now(),
                    )
                    .await?;
                    anyhow::Ok((out, expired))
                });
                match r {
                    Ok((out, expired)) => {
                        if output == crate::Output::Text {
                            println!(
                                "{cluster}: backup {} complete: {} objects, {} files, {} bytes in {:.1}s{}",
                                out.location,
                                out.manifest.objects(),
                                out.manifest.files.len(),
                                out.manifest.bytes(),
                                out.seconds,
                                match out.manifest.secrets {
                                    flotilla_backup::SecretsMode::Encrypted =>
                                        "; Secrets encrypted",
                                    flotilla_backup::SecretsMode::Excluded =>
                                        "; Secrets excluded (no age recipients)",
                                }
                            );
                            for e in &expired {
                                println!("{cluster}: expired backup {e} deleted");
                            }
                        }
                        results.push(serde_json::json!({"cluster": cluster, "location": out.location, "manifest": out.manifest, "expired": expired}));
                    }
                    Err(e) => {
                        failed += 1;
                        eprintln!("{cluster}: backup failed: {e:#}");
                        results.push(
                            serde_json::json!({"cluster": cluster, "error": format!("{e:#}")}),
                        );
                    }
                }
            }
            if output == crate::Output::Json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            }
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(INVALID)
            })
        }
        BackupCommand::List {
            name,
            cluster,
            fleet: fa,
            store,
            output,
        } => {
            let policy_store = match (&name, &store.store) {
                (Some(n), None) => {
                    let (fleet, _) = match fleet(&fa)? {
                        Ok(f) => f,
                        Err(code) => return Ok(code),
                    };
                    Some(policy(&fleet, n)?.clone())
                }
                _ => None,
            };
            let st = store.open(policy_store.as_ref())?;
            let rt = runtime()?;
            let all = rt.block_on(catalog::list(&st, name.as_deref(), cluster.as_deref()))?;
            if output == crate::Output::Json {
                let v: Vec<_> = all
                    .iter()
                    .map(|l| serde_json::json!({"location": l.location, "manifest": l.manifest}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(out, "BACKUP\tCLUSTER\tTIMESTAMP\tOBJECTS\tBYTES\tSECRETS")?;
                for l in &all {
                    let m = &l.manifest;
                    writeln!(
                        out,
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        m.backup,
                        m.cluster,
                        m.timestamp,
                        m.objects(),
                        m.bytes(),
                        match m.secrets {
                            flotilla_backup::SecretsMode::Encrypted => "encrypted",
                            flotilla_backup::SecretsMode::Excluded => "excluded",
                        }
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Gc {
            name,
            grace,
            fleet: fa,
            store,
        } => {
            let p = match (&name, &store.store) {
                (Some(n), None) => {
                    let (fleet, _) = match fleet(&fa)? {
                        Ok(f) => f,
                        Err(code) => return Ok(code),
                    };
                    Some(policy(&fleet, n)?.clone())
                }
                _ => None,
            };
            let st = store.open(p.as_ref())?;
            let rt = runtime()?;
            let deleted = rt.block_on(catalog::collect_garbage(
                &st,
                name.as_deref(),
                grace,
                chrono::Utc::now(),
            ))?;
            for d in &deleted {
                println!("deleted incomplete backup {d}");
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCommand::Verify {
            name,
            cluster,
            at,
            fleet: fa,
            store,
        } => {
            let p = match &store.store {
                Some(_) => None,
                None => {
                    let (fleet, _) = match fleet(&fa)? {
                        Ok(f) => f,
                        Err(code) => return Ok(code),
                    };
                    Some(policy(&fleet, &name)?.clone())
                }
            };
            let st = store.open(p.as_ref())?;
            let rt = runtime()?;
            rt.block_on(async {
                let l = catalog::select(&st, &name, &cluster, at.as_deref()).await?;
                match catalog::verify(&st, &l).await {
                    Ok(()) => {
                        println!("{}: {} files verified", l.location, l.manifest.files.len());
                        Ok(ExitCode::SUCCESS)
                    }
                    Err(e) => {
                        eprintln!("flotilla: error: {e}");
                        Ok(ExitCode::from(INVALID))
                    }
                }
            })
        }
    }
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let mut namespace_map = BTreeMap::new();
    for m in &args.namespace_map {
        let Some((a, b)) = m
            .split_once('=')
            .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        else {
            bail!("--namespace-map {m:?}: expected FROM=TO");
        };
        flotilla_spec::types::check_name(b)
            .map_err(|e| anyhow::anyhow!("--namespace-map {m:?}: {e}"))?;
        namespace_map.insert(a.to_string(), b.to_string());
    }
    let identities = match &args.identity {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            restore::read_identities(&text)?
        }
        None => vec![],
    };
    let patches = match &args.overrides {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            // YAML (JSON is YAML too), read like every fleet file: errors with file:line:col.
            let file = f.display().to_string();
            let mut docs = flotilla_renderers::plain::parse_docs(&file, &text)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if docs.len() != 1 {
                anyhow::bail!(
                    "{file}: expected one YAML or JSON document, found {}",
                    docs.len()
                );
            }
            let v: serde_json::Value = docs.remove(0).0;
            restore::parse_patches(&v).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
        }
        None => vec![],
    };
    // The fleet (for the policy's store and the target's context) is optional with --store.
    let fleet = match fleet(&args.fleet) {
        Ok(Ok((f, _))) => Some(f),
        Ok(Err(code)) if args.store.store.is_none() => return Ok(code),
        Err(e) if args.store.store.is_none() => return Err(e),
        _ => None,
    };
    let p = match (&fleet, &args.store.store) {
        (Some(f), None) => Some(policy(f, &args.backup)?.clone()),
        _ => None,
    };
    let st = args.store.open(p.as_ref())?;
    let context = fleet
        .as_ref()
        .and_then(|f| f.clusters.iter().find(|c| c.name == args.to))
        .map(|c| c.context().to_string())
        .unwrap_or_else(|| args.to.clone());
    let req = RestoreRequest {
        namespace_map,
        filter: Filter {
            include_namespaces: args.include_namespaces.clone(),
            exclude_namespaces: args.exclude_namespaces.clone(),
            include_kinds: args.include_kinds.clone(),
            exclude_kinds: args.exclude_kinds.clone(),
        },
        patches,
        existing: match args.existing {
            ExistingArg::Skip => Existing::Skip,
            ExistingArg::Update => Existing::Update,
        },
        dry_run: args.dry_run,
        identities,
        crd_timeout: None,
    };
    if args.qps.is_nan() || args.qps <= 0.0 || args.burst == 0 {
        bail!("--qps and --burst must be positive");
    }
    let connector = flotilla_cluster::Connector::load(args.kubeconfig.as_deref())
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_settings(flotilla_cluster::ClientSettings {
            qps: args.qps,
            burst: args.burst,
            ..Default::default()
        });
    let rt = runtime()?;
    let report = rt.block_on(async {
        let l = catalog::select(&st, &args.backup, &args.cluster, args.at.as_deref()).await?;
        let c = connector
            .connect(&args.to, &context, args.dry_run)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        anyhow::Ok(restore::restore(&st, &l, &c as &dyn Cluster, &req).await?)
    })?;
    if args.output == crate::Output::Json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let mut out = std::io::stdout().lock();
        for o in &report.objects {
            write!(
                out,
                "{}: {} {}",
                report.target,
                o.object,
                o.action.label(report.dry_run)
            )?;
            if let Some(m) = &o.message {
                write!(out, ": {m}")?;
            }
            writeln!(out)?;
        }
    }
    eprintln!(
        "{}restore of {} into {}: {} created, {} updated, {} skipped, {} failed",
        if report.dry_run { "dry run: " } else { "" },
        report.source,
        report.target,
        report.count(RestoreAction::Created),
        report.count(RestoreAction::Updated),
        report.count(RestoreAction::Skipped),
        report.count(RestoreAction::Failed),
    );
    Ok(if report.failed() {
        ExitCode::from(INVALID)
    } else {
        ExitCode::SUCCESS
    })
}

/// `flotilla plan`'s backup section: each policy's clusters and its next three firings.
pub fn plan_text(fleet: &Fleet, now: chrono::DateTime<chrono::Utc>) -> String {
    use flotilla_daemon::backups::{next_firing, policy_clusters};
    let mut out = String::new();
    for b in &fleet.backups {
        let tz = b
            .timezone
            .as_ref()
            .map(|t| t.text.as_str())
            .unwrap_or("UTC");
        let clusters = policy_clusters(fleet, b);
        out.push_str(&format!(
            "backup {} ({} {tz}, keep {}, {}): {}\n",
            b.name,
            b.schedule.text,
            b.retain.text,
            b.store,
            if clusters.is_empty() {
                "no cluster".to_string()
            } else {
                clusters.join(", ")
            }
        ));
        let mut t = now;
        let mut next = Vec::new();
        for _ in 0..3 {
            match next_firing(b, t) {
                Some(n) => {
                    next.push(n.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                    t = n;
                }
                None => break,
            }
        }
        out.push_str(&format!("  next: {}\n", next.join(", ")));
    }
    out
}
