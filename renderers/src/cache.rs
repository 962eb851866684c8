//! Memoized rendering: a render is reused while everything it depended on is unchanged.
//!
//! A render depends on (a) its *scope* — the fleet and placement names, the bundle's
//! definition, the cluster, the overrides that apply to it, the replica split and options —
//! and (b) every repository access it made (path kinds, file contents, directory listings).
//! The cache keeps, per scope, the accesses of the last render with a digest of each
//! answer; a lookup replays those accesses against the new snapshot and reuses the result
//! when every digest matches. A commit that touches one bundle's files therefore re-renders
//! only that bundle's instances, and a change to one cluster's labels only that cluster's.
//!
//! Replaying is reading, not rendering: unchanged files are read again (and hashed), which is
//! cheap next to parsing, patching and Jsonnet evaluation. Failed renders are cached too (they
//! are as deterministic as successful ones).
//!
//! Everything here lives in memory: digests of what the repository returned (for SOPS files,
//! the ciphertext: [`crate::sops::Decrypting`] sits above the recording) and rendered results,
//! decrypted Secrets included, which are never written to disk by this crate.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use flotilla_spec::types::RepoPath;
use flotilla_spec::{Bundle, Cluster, Fleet, PathKind, Placement, RepoError, RepoFiles};
use sha2::{Digest, Sha256};

use crate::budget::{self, Budget, Metered};
use crate::{Cause, Context, Object, RenderError, RenderOptions, Rendered};

type Hash = [u8; 32];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Op {
    Kind,
    Read,
    List,
    Canonical,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Access {
    op: Op,
    path: RepoPath,
    digest: Hash,
}

fn digest_of(parts: &[&[u8]]) -> Hash {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

fn kind_digest(k: PathKind) -> Hash {
    let k: &[u8] = match k {
        PathKind::File => b"file",
        PathKind::Dir => b"dir",
        PathKind::Missing => b"missing",
        PathKind::Escapes => b"escapes",
    };
    digest_of(&[k])
}

fn read_digest(r: &Result<Vec<u8>, RepoError>) -> Hash {
    match r {
        Ok(bytes) => digest_of(&[b"ok", bytes]),
        Err(e) => digest_of(&[b"err", e.to_string().as_bytes()]),
    }
}

fn list_digest(r: &Result<Vec<String>, RepoError>) -> Hash {
    match r {
        Ok(names) => {
            let mut all: Vec<&[u8]> = vec![b"ok"];
            all.extend(names.iter().map(|n| n.as_bytes()));
            digest_of(&all)
        }
        Err(e) => digest_of(&[b"err", e.to_string().as_bytes()]),
    }
}

fn canonical_digest(c: &Option<String>) -> Hash {
    match c {
        Some(p) => digest_of(&[b"some", p.as_bytes()]),
        None => digest_of(&[b"none"]),
    }
}

fn answer(repo: &dyn RepoFiles, op: Op, path: &RepoPath) -> Hash {
    match op {
        Op::Kind => kind_digest(repo.kind(path)),
        Op::Read => read_digest(&repo.read(path)),
        Op::List => list_digest(&repo.list(path)),
        Op::Canonical => canonical_digest(&repo.canonical(path)),
    }
}

/// A `RepoFiles` that records every access (with a digest of its answer).
struct Recording<'a> {
    inner: &'a dyn RepoFiles,
    log: RefCell<Vec<Access>>,
}

impl Recording<'_> {
    fn note(&self, op: Op, path: &RepoPath, digest: Hash) {
        self.log.borrow_mut().push(Access {
            op,
            path: path.clone(),
            digest,
        });
    }
}

impl RepoFiles for Recording<'_> {
    fn kind(&self, path: &RepoPath) -> PathKind {
        let k = self.inner.kind(path);
        self.note(Op::Kind, path, kind_digest(k));
        k
    }

    fn read(&self, path: &RepoPath) -> Result<Vec<u8>, RepoError> {
        let r = self.inner.read(path);
        self.note(Op::Read, path, read_digest(&r));
        r
    }

    fn list(&self, dir: &RepoPath) -> Result<Vec<String>, RepoError> {
        let r = self.inner.list(dir);
        self.note(Op::List, dir, list_digest(&r));
        r
    }

    fn canonical(&self, path: &RepoPath) -> Option<String> {
        let r = self.inner.canonical(path);
        self.note(Op::Canonical, path, canonical_digest(&r));
        r
    }
}

struct Entry {
    accesses: Vec<Access>,
    result: Result<Arc<Rendered>, RenderError>,
}

/// Renders through a memo; see the module documentation.
#[derive(Default)]
pub struct Cache {
    entries: HashMap<Hash, Entry>,
    /// Renders answered from the memo.
    pub hits: u64,
    /// Renders that ran.
    pub misses: u64,
}

impl Cache {
    pub fn new() -> Cache {
        Cache::default()
    }

    /// Cached entries (one per (placement, bundle, cluster) scope seen).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Starts a pass over one snapshot of the repository. Within a pass, answers to
    /// repository accesses are remembered (so replaying the accesses of 20,000 cached
    /// renders reads each file once), and a bundle's renderer output is shared by every
    /// cluster with the same renderer inputs (the same bundle; for Jsonnet, the same expanded
    /// ext vars and arguments); the per-cluster steps (namespace, overrides, labels, order,
    /// hash) run once per distinct renderer input, applicable overrides and replica count,
    /// and clusters with the same ones share the result (they read nothing else).
    ///
    /// The pass has the default [`budget::Limits`]; see [`Cache::pass_with`].
    pub fn pass<'c, 'r>(&'c mut self, repo: &'r dyn RepoFiles) -> Pass<'c, 'r> {
        self.pass_with(repo, budget::Limits::default())
    }

    /// Like [`Cache::pass`], with the work of the whole pass bounded by `limits`; once a
    /// budget runs out, every render of the pass fails with [`crate::Cause::Budget`].
    pub fn pass_with<'c, 'r>(
        &'c mut self,
        repo: &'r dyn RepoFiles,
        limits: budget::Limits,
    ) -> Pass<'c, 'r> {
        Pass {
            cache: self,
            repo,
            budget: Budget::new(limits),
            answers: HashMap::new(),
            bases: HashMap::new(),
            finished: HashMap::new(),
        }
    }

    /// Like [`crate::render`], reusing the last result when nothing it depends on changed
    /// (a pass of one render; use [`Cache::pass`] for many). Results are shared, not copied.
    pub fn render(
        &mut self,
        repo: &dyn RepoFiles,
        fleet: &Fleet,
        placement: &Placement,
        bundle: &Bundle,
        cluster: &Cluster,
        options: &RenderOptions,
    ) -> Result<Arc<Rendered>, RenderError> {
        self.pass(repo)
            .render(fleet, placement, bundle, cluster, options)
    }
}

type Base = (Result<Vec<Object>, Cause>, Vec<Access>);

/// Renders against one snapshot; see [`Cache::pass`].
pub struct Pass<'c, 'r> {
    cache: &'c mut Cache,
    repo: &'r dyn RepoFiles,
    budget: Budget,
    /// Per path, the digest of each kind of answer (looked up without cloning the path).
    answers: HashMap<RepoPath, [Option<Hash>; 4]>,
    bases: HashMap<Hash, Base>,
    /// Per-cluster steps already run in this pass, by [`finish_key`]: clusters whose
    /// applicable overrides and replica count are the same share one result.
    finished: HashMap<Hash, Result<Arc<Rendered>, Cause>>,
}

fn memo_answer(
    answers: &mut HashMap<RepoPath, [Option<Hash>; 4]>,
    repo: &dyn RepoFiles,
    a: &Access,
) -> Hash {
    let i = a.op as usize;
    if let Some(h) = answers.get(&a.path).and_then(|slots| slots[i]) {
        return h;
    }
    let h = answer(repo, a.op, &a.path);
    answers.entry(a.path.clone()).or_default()[i] = Some(h);
    h
}

impl Pass<'_, '_> {
    /// The first budget of this pass that ran out, if any: the revision is over budget.
    pub fn exceeded(&self) -> Option<budget::BudgetError> {
        self.budget.exceeded()
    }

    /// Like [`crate::render`], through the cache.
    pub fn render(
        &mut self,
        fleet: &Fleet,
        placement: &Placement,
        bundle: &Bundle,
        cluster: &Cluster,
        options: &RenderOptions,
    ) -> Result<Arc<Rendered>, RenderError> {
        let key = scope(fleet, placement, bundle, cluster);
        let repo = Metered {
            inner: self.repo,
            budget: &self.budget,
        };
        if let Some(e) = self.cache.entries.get(&key)
            && e.accesses
                .iter()
                .all(|a| memo_answer(&mut self.answers, &repo, a) == a.digest)
            && self.budget.exceeded().is_none()
        {
            self.cache.hits += 1;
            return e.result.clone();
        }
        self.cache.misses += 1;
        // Jsonnet gets at most the time left in the pass.
        let capped;
        let options = {
            let left = self.budget.time_left();
            let own = options
                .jsonnet_timeout
                .unwrap_or(crate::jsonnet::DEFAULT_TIMEOUT);
            if left < own {
                capped = RenderOptions {
                    jsonnet_timeout: Some(left.max(std::time::Duration::from_millis(1))),
                    ..options.clone()
                };
                &capped
            } else {
                options
            }
        };
        let cx = Context {
            fleet,
            placement,
            bundle,
            cluster,
            options,
        };
        let bkey = base_key(&cx);
        let (objects, accesses) = match bkey.and_then(|k| self.bases.get(&k)) {
            Some(b) => b.clone(),
            None => {
                let rec = Recording {
                    inner: &repo,
                    log: RefCell::new(Vec::new()),
                };
                let mut objects = crate::base(&rec, &cx);
                let _ = self.budget.check_time(&cx.bundle.path);
                if let Some(e) = self.budget.exceeded() {
                    objects = Err(Cause::Budget(e));
                } else if let Ok(o) = &objects
                    && let Err(e) = self.budget.charge_objects(o.len() as u64, &cx.bundle.path)
                {
                    objects = Err(Cause::Budget(e));
                }
                let mut accesses = rec.log.into_inner();
                accesses.sort_by(|a, b| {
                    (a.path.as_str(), a.op as u8).cmp(&(b.path.as_str(), b.op as u8))
                });
                accesses.dedup();
                for a in &accesses {
                    let slot = &mut self.answers.entry(a.path.clone()).or_default()[a.op as usize];
                    if slot.is_none() {
                        *slot = Some(a.digest);
                    }
                }
                if let Some(k) = bkey {
                    self.bases.insert(k, (objects.clone(), accesses.clone()));
                }
                (objects, accesses)
            }
        };
        let fkey = bkey.map(|k| finish_key(&k, &cx));
        let finished = match fkey.and_then(|k| self.finished.get(&k)) {
            Some(r) => r.clone(),
            None => {
                let r = objects
                    .and_then(|o| crate::complete(&cx, o))
                    .and_then(|r| {
                        self.budget
                            .charge_output(r.yaml.len() as u64, &cx.bundle.path)?;
                        Ok(r)
                    })
                    .map(Arc::new);
                if let Some(k) = fkey {
                    self.finished.insert(k, r.clone());
                }
                r
            }
        };
        let result = finished.map_err(|cause| RenderError {
            placement: placement.name.clone(),
            bundle: bundle.name.clone(),
            cluster: cluster.name.clone(),
            cause: Box::new(cause),
        });
        // Over budget is a property of the pass, not of the inputs: not cached either.
        let timed_out = matches!(
            &result,
            Err(e) if matches!(
                *e.cause,
                Cause::Jsonnet(crate::jsonnet::JsonnetError::Timeout { .. }) | Cause::Budget(_)
            )
        );
        if timed_out {
            // Not a property of the inputs: the next render tries again.
            if let Some(k) = bkey {
                self.bases.remove(&k);
            }
            if let Some(k) = fkey {
                self.finished.remove(&k);
            }
        } else {
            self.cache.entries.insert(
                key,
                Entry {
                    accesses,
                    result: result.clone(),
                },
            );
        }
        result
    }
}

/// What the renderer stage of one render depends on besides the repository.
fn base_key(cx: &Context<'_>) -> Option<Hash> {
    let (ext_vars, tlas) = crate::jsonnet::inputs(cx).ok()?;
    let mut h = HashWriter(Sha256::new());
    serde_json::to_writer(&mut h, &(cx.bundle, ext_vars, tlas)).ok()?;
    Some(h.0.finalize().into())
}

/// What the per-cluster steps ([`crate::complete`]) read besides the renderer output, which
/// within a pass is determined by `base_key`: the bundle, fleet and placement names, the
/// overrides that apply (by index and content: they hold no cluster templates), whether they
/// are strict (the placement's bundle count) and the replica count. The cluster itself only
/// selects overrides, so two clusters with the same key get the same result.
fn finish_key(base_key: &Hash, cx: &Context<'_>) -> Hash {
    let labels = cx.cluster.selector_labels();
    let overrides: Vec<_> = cx
        .placement
        .overrides
        .iter()
        .enumerate()
        .filter(|(_, o)| {
            o.clusters.matches(&cx.cluster.name, &labels)
                && o.bundle.as_ref().is_none_or(|b| b == &cx.bundle.name)
        })
        .collect();
    let replicas = cx
        .placement
        .replicas
        .as_ref()
        .filter(|r| r.bundle == cx.bundle.name);
    let mut h = HashWriter(Sha256::new());
    h.0.update(base_key);
    let parts = (
        &cx.fleet.metadata.name,
        &cx.placement.name,
        flotilla_spec::placement_bundles(cx.fleet, cx.placement).len(),
        cx.bundle,
        &overrides,
        replicas,
    );
    if serde_json::to_writer(&mut h, &parts).is_err() {
        h.0.update(b"unserializable");
    }
    h.0.finalize().into()
}

/// Everything besides the repository that a render reads.
fn scope(fleet: &Fleet, placement: &Placement, bundle: &Bundle, cluster: &Cluster) -> Hash {
    let labels = cluster.selector_labels();
    let overrides: Vec<_> = placement
        .overrides
        .iter()
        .filter(|o| {
            o.clusters.matches(&cluster.name, &labels)
                && o.bundle.as_ref().is_none_or(|b| b == &bundle.name)
        })
        .collect();
    let replicas = placement
        .replicas
        .as_ref()
        .filter(|r| r.bundle == bundle.name);
    let mut h = HashWriter(Sha256::new());
    // Serialized straight into the hasher: no intermediate JSON tree (this runs per render).
    let parts = (
        &fleet.metadata.name,
        &placement.name,
        flotilla_spec::placement_bundles(fleet, placement).len(),
        bundle,
        cluster,
        &overrides,
        replicas,
    );
    if serde_json::to_writer(&mut h, &parts).is_err() {
        // Not reachable for these types; an unusable key just means no reuse.
        h.0.update(b"unserializable");
    }
    h.0.finalize().into()
}

struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
