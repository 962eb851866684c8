//! Jsonnet bundles, evaluated with jrsonnet (pure Rust).
//!
//! The main file and everything it imports are read through [`RepoFiles`] *before*
//! evaluation: jsonnet imports are string literals, so the files are found by scanning the
//! sources, recursively. The evaluator's import resolver serves only those files, resolving
//! paths relative to the importing file; a path that leaves the repository, an absolute path
//! or a library path (`-J`) is an error. Evaluation runs on its own thread (jrsonnet's state
//! is not `Send`, and deep programs need stack) with a call-depth limit of
//! [`MAX_STACK`] and a time limit ([`DEFAULT_TIMEOUT`]). jrsonnet cannot be interrupted: after
//! a timeout the render fails and the thread is abandoned (it runs to its end in the
//! background; the daemon should count these).
//!
//! ext vars (`jsonnet.extVars`, then the `variables` of the overrides that apply) are
//! strings with `${...}` templates expanded; top-level arguments (`jsonnet.tlas`) that are
//! strings are expanded too, other values are passed as values.
//!
//! The result may be an object with a `kind` (one object), an array, or an object whose
//! fields hold objects or arrays (kubecfg style); these are flattened in order (fields in
//! jsonnet's order: sorted by name).

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use flotilla_spec::template::{Scope, Template};
use flotilla_spec::types::RepoPath;
use flotilla_spec::{PathKind, RepoError, RepoFiles};
use jrsonnet_evaluator::error::ErrorKind;
use jrsonnet_evaluator::function::TlaArg;
use jrsonnet_evaluator::parser::{SourceFile, SourcePath};
use jrsonnet_evaluator::trace::{CompactFormat, PathResolver, TraceFormat};
use jrsonnet_evaluator::{IStr, ImportResolver, State};
use jrsonnet_gcmodule::Trace;
use serde_json::Value;

use crate::{Context, Object, Renderer};

/// How long one evaluation may take by default ([`crate::RenderOptions::jsonnet_timeout`]).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// jsonnet's default `--max-stack`.
pub const MAX_STACK: usize = 500;
/// Stack frames shown in an error.
pub const MAX_TRACE: usize = 10;
/// Most files one evaluation may import.
pub const MAX_FILES: usize = 4096;

/// Why a Jsonnet bundle did not render.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JsonnetError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{path}: {message}")]
    Template { path: String, message: String },
    #[error("{0}")]
    Eval(String),
    #[error("{path}: evaluation took longer than {seconds} s")]
    Timeout { path: String, seconds: f64 },
    #[error("{path}: {message}")]
    Output { path: String, message: String },
}

/// The Jsonnet renderer.
pub struct Jsonnet;

/// The ext vars and top-level arguments of one render, templates expanded.
pub type Inputs = (BTreeMap<String, String>, BTreeMap<String, Value>);

/// Expands the bundle's `extVars` and `tlas` and the `variables` of the overrides that apply.
pub fn inputs(cx: &Context<'_>) -> Result<Inputs, JsonnetError> {
    let scope = Scope {
        cluster: cx.cluster,
        placement: &cx.placement.name,
        bundle: &cx.bundle.name,
        fleet: &cx.fleet.metadata.name,
    };
    let expand = |what: &str, s: &str| -> Result<String, JsonnetError> {
        Template::parse(s)
            .and_then(|t| t.expand(&scope))
            .map_err(|message| JsonnetError::Template {
                path: format!("bundle {:?} {what}", cx.bundle.name),
                message,
            })
    };
    let mut ext_vars = BTreeMap::new();
    let mut tlas = BTreeMap::new();
    if let Some(opts) = &cx.bundle.jsonnet {
        for (k, v) in &opts.ext_vars {
            ext_vars.insert(k.clone(), expand(&format!("extVars.{k}"), v)?);
        }
        for (k, v) in &opts.tlas {
            let arg = match v {
                Value::String(s) => Value::String(expand(&format!("tlas.{k}"), s)?),
                other => other.clone(),
            };
            tlas.insert(k.clone(), arg);
        }
    }
    let labels = cx.cluster.selector_labels();
    for o in &cx.placement.overrides {
        if o.clusters.matches(&cx.cluster.name, &labels)
            && o.bundle.as_ref().is_none_or(|b| b == &cx.bundle.name)
        {
            for (k, v) in &o.variables {
                ext_vars.insert(k.clone(), expand(&format!("override variable {k}"), v)?);
            }
        }
    }
    Ok((ext_vars, tlas))
}

/// One evaluation, everything it may read included: what an [`Evaluator`] receives.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Request {
    /// Repository path -> bytes: the main file and everything it imports.
    pub files: BTreeMap<String, Vec<u8>>,
    pub main: String,
    pub ext_vars: BTreeMap<String, String>,
    pub tlas: BTreeMap<String, Value>,
}

/// What a worker answers (see [`evaluate_request`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Response {
    Ok(Value),
    Err(String),
}

/// Where Jsonnet runs. jrsonnet can be neither interrupted nor capped, so callers that face
/// untrusted repositories (the CLI, the daemon) provide an evaluator that runs it in a
/// process they can limit and kill; [`InProcess`] (the default) runs it on a thread of this
/// process, for unit tests and benchmarks. Keeps this crate free of process handling.
pub trait Evaluator: Send + Sync + std::fmt::Debug {
    fn evaluate(&self, request: Request, timeout: Duration) -> Result<Value, JsonnetError>;
}

/// Evaluates on a thread of this process; a timed-out evaluation's thread is abandoned.
#[derive(Debug, Clone, Copy, Default)]
pub struct InProcess;

impl Evaluator for InProcess {
    fn evaluate(&self, r: Request, timeout: Duration) -> Result<Value, JsonnetError> {
        evaluate(r.files, r.main, r.ext_vars, r.tlas, timeout)
    }
}

/// Evaluates a request to its end on a thread with a large stack (for a worker process,
/// which its parent limits and kills).
pub fn evaluate_request(r: Request) -> Response {
    let main = r.main.clone();
    let joined = std::thread::Builder::new()
        .name("jsonnet".into())
        .stack_size(256 << 20)
        .spawn(move || evaluate_here(r.files, &r.main, &r.ext_vars, &r.tlas))
        .map(|h| h.join());
    match joined {
        Ok(Ok(Ok(v))) => Response::Ok(v),
        Ok(Ok(Err(e))) => Response::Err(e.to_string()),
        Ok(Err(_)) => Response::Err(format!(
            "{main}: the Jsonnet evaluator panicked (a runaway program reaching the worker's memory cap?)"
        )),
        Err(e) => Response::Err(format!("cannot start the Jsonnet thread: {e}")),
    }
}

impl Renderer for Jsonnet {
    fn render(&self, repo: &dyn RepoFiles, cx: &Context<'_>) -> Result<Vec<Object>, crate::Cause> {
        let main = cx.bundle.path.clone();
        let (ext_vars, tlas) = inputs(cx)?;
        let files = collect(repo, &main)?;
        let timeout = cx.options.jsonnet_timeout.unwrap_or(DEFAULT_TIMEOUT);
        let request = Request {
            files,
            main: main.to_string(),
            ext_vars,
            tlas,
        };
        let value = match &cx.options.jsonnet {
            Some(e) => e.evaluate(request, timeout)?,
            None => InProcess.evaluate(request, timeout)?,
        };
        let mut out = Vec::new();
        flatten(&main.to_string(), value, "", &mut out)?;
        Ok(out)
    }
}

/// Reads the main file and, recursively, every file its sources import.
fn collect(
    repo: &dyn RepoFiles,
    main: &RepoPath,
) -> Result<BTreeMap<String, Vec<u8>>, JsonnetError> {
    let import = regex::Regex::new(
        r#"\bimport(?:str|bin)?\s*@?(?:"((?:[^"\\\n]|\\.)*)"|'((?:[^'\\\n]|\\.)*)')"#,
    )
    .map_err(|e| JsonnetError::Eval(e.to_string()))?;
    let mut files = BTreeMap::new();
    let mut todo = vec![main.clone()];
    while let Some(p) = todo.pop() {
        if files.contains_key(p.as_str()) || files.len() >= MAX_FILES {
            continue;
        }
        let bytes = repo.read(&p)?;
        if let Ok(text) = std::str::from_utf8(&bytes) {
            for c in import.captures_iter(text) {
                let Some(rel) = c.get(1).or_else(|| c.get(2)) else {
                    continue;
                };
                if let Some(target) = relative(p.as_str(), rel.as_str())
                    && repo.kind(&target) == PathKind::File
                {
                    todo.push(target);
                }
            }
        }
        files.insert(p.to_string(), bytes);
    }
    Ok(files)
}

/// `rel` seen from the file `from`, when it stays inside the repository.
fn relative(from: &str, rel: &str) -> Option<RepoPath> {
    if rel.starts_with('/') {
        return None;
    }
    let dir = from.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let joined = if dir.is_empty() {
        rel.to_string()
    } else {
        format!("{dir}/{rel}")
    };
    RepoPath::parse(&joined).ok()
}

#[derive(Trace)]
struct RepoResolver {
    #[trace(skip)]
    files: Rc<BTreeMap<String, Vec<u8>>>,
}

fn runtime(msg: String) -> jrsonnet_evaluator::Error {
    ErrorKind::RuntimeError(msg.into()).into()
}

impl ImportResolver for RepoResolver {
    fn resolve_from(
        &self,
        from: &SourcePath,
        path: &str,
    ) -> jrsonnet_evaluator::Result<SourcePath> {
        let from_file = from
            .downcast_ref::<SourceFile>()
            .map(|f| f.path().to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.starts_with('/') {
            return Err(runtime(format!(
                "import {path:?}: absolute imports are not allowed; paths are relative to the importing file"
            )));
        }
        let Some(target) = relative(&from_file, path) else {
            return Err(runtime(format!(
                "import {path:?} from {from_file}: leads outside the repository"
            )));
        };
        if !self.files.contains_key(target.as_str()) {
            return Err(runtime(format!(
                "import {path:?} from {from_file}: {} does not exist in the repository",
                target.as_str()
            )));
        }
        Ok(SourcePath::new(SourceFile::new(PathBuf::from(target.text))))
    }

    fn load_file_contents(&self, resolved: &SourcePath) -> jrsonnet_evaluator::Result<Vec<u8>> {
        let key = resolved
            .downcast_ref::<SourceFile>()
            .map(|f| f.path().to_string_lossy().into_owned())
            .unwrap_or_default();
        self.files
            .get(&key)
            .cloned()
            .ok_or_else(|| runtime(format!("{key}: not read")))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Evaluates `main` on a dedicated thread.
fn evaluate(
    files: BTreeMap<String, Vec<u8>>,
    main: String,
    ext_vars: BTreeMap<String, String>,
    tlas: BTreeMap<String, Value>,
    timeout: Duration,
) -> Result<Value, JsonnetError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let file = main.clone();
    std::thread::Builder::new()
        .name("jsonnet".into())
        .stack_size(256 << 20)
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                evaluate_here(files, &main, &ext_vars, &tlas)
            }))
            .unwrap_or_else(|_| Err(JsonnetError::Eval("the Jsonnet evaluator panicked".into())));
            // The receiver is gone after a timeout; nothing to tell then.
            let _ = tx.send(r);
        })
        .map_err(|e| JsonnetError::Eval(format!("cannot start the Jsonnet thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            tracing::warn!(file = %file, ?timeout, "Jsonnet evaluation timed out; abandoning its thread");
            Err(JsonnetError::Timeout {
                path: file,
                seconds: timeout.as_secs_f64(),
            })
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(JsonnetError::Eval(
            "the Jsonnet evaluator stopped without a result".into(),
        )),
    }
}

fn evaluate_here(
    files: BTreeMap<String, Vec<u8>>,
    main: &str,
    ext_vars: &BTreeMap<String, String>,
    tlas: &BTreeMap<String, Value>,
) -> Result<Value, JsonnetError> {
    jrsonnet_evaluator::stack::set_stack_depth_limit(MAX_STACK);
    let ctx = jrsonnet_stdlib::ContextInitializer::new(PathResolver::Absolute);
    for (k, v) in ext_vars {
        ctx.add_ext_str(k.as_str().into(), v.as_str().into());
    }
    let mut builder = State::builder();
    builder
        .import_resolver(RepoResolver {
            files: Rc::new(files),
        })
        .context_initializer(ctx);
    let state = builder.build();
    let format = CompactFormat {
        resolver: PathResolver::Absolute,
        padding: 4,
        max_trace: 10,
    };
    let fail = |e: jrsonnet_evaluator::Error| {
        let text = format.format(&e).unwrap_or_else(|_| e.to_string());
        JsonnetError::Eval(shorten_trace(text.trim_end()))
    };
    let val = state
        .import_from(&SourcePath::default(), main)
        .map_err(fail)?;
    let mut args: jrsonnet_evaluator::gc::GcHashMap<IStr, TlaArg> =
        jrsonnet_evaluator::gc::GcHashMap::new();
    for (k, v) in tlas {
        let arg = match v {
            Value::String(s) => TlaArg::String(s.as_str().into()),
            // JSON is Jsonnet: pass other values as code, like `--tla-code`.
            other => {
                let code = other.to_string();
                let source = jrsonnet_evaluator::parser::Source::new_virtual(
                    format!("<top-level-arg:{k}>").into(),
                    code.as_str().into(),
                );
                let expr = jrsonnet_evaluator::parser::parse(
                    &code,
                    &jrsonnet_evaluator::parser::ParserSettings { source },
                )
                .map_err(|e| JsonnetError::Eval(format!("top-level argument {k}: {e}")))?;
                TlaArg::Code(expr)
            }
        };
        args.insert(k.as_str().into(), arg);
    }
    let val = jrsonnet_evaluator::apply_tla(state.clone(), &args, val).map_err(fail)?;
    // Manifesting forces every lazy field, so errors keep their Jsonnet locations.
    let text = val
        .manifest(jrsonnet_evaluator::manifest::JsonFormat::default())
        .map_err(fail)?;
    serde_json::from_str(&text).map_err(|e| JsonnetError::Output {
        path: main.to_string(),
        message: format!("the result is not valid JSON: {e}"),
    })
}

/// The message and at most [`MAX_TRACE`] frames of a Jsonnet stack trace.
fn shorten_trace(text: &str) -> String {
    let mut lines = text.lines();
    let mut out = lines.next().unwrap_or("").to_string();
    let rest: Vec<&str> = lines.collect();
    for l in rest.iter().take(MAX_TRACE) {
        out.push('\n');
        out.push_str(l);
    }
    if rest.len() > MAX_TRACE {
        out.push_str(&format!("\n    ... {} more frames", rest.len() - MAX_TRACE));
    }
    out
}

fn flatten(file: &str, v: Value, at: &str, out: &mut Vec<Object>) -> Result<(), JsonnetError> {
    match v {
        Value::Array(items) => {
            for (i, item) in items.into_iter().enumerate() {
                flatten(file, item, &format!("{at}[{i}]"), out)?;
            }
            Ok(())
        }
        Value::Object(m) if !m.contains_key("kind") => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, item) in entries {
                flatten(file, item, &format!("{at}.{k}"), out)?;
            }
            Ok(())
        }
        Value::Null => Ok(()),
        other => {
            let pos = if at.is_empty() {
                "(result)".to_string()
            } else {
                format!("(result{at})")
            };
            crate::plain::push_object(file, other, pos, out).map_err(|e| JsonnetError::Output {
                path: file.to_string(),
                message: e.to_string(),
            })
        }
    }
}
