//! Plain YAML: a file, or a directory read recursively in bytewise name order, of
//! multi-document YAML (or JSON). Empty documents are skipped, `kind: List` (and `FooList`
//! with `items`) is expanded; every other document must be a Kubernetes object.

use flotilla_spec::types::RepoPath;
use flotilla_spec::{Limits, PathKind, RepoError, RepoFiles};
use serde_json::Value;

use crate::{Context, Object, Renderer};

/// Why plain YAML did not render.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlainError {
    #[error(transparent)]
    Repo(#[from] RepoError),
    #[error("{file}:{message}")]
    Yaml { file: String, message: String },
    #[error("{at}: {message}")]
    NotAnObject { at: String, message: String },
    #[error("{0}: contains no YAML files")]
    Empty(String),
    #[error(
        "{path}: leads back to {target}, which this walk already reads (a symbolic link loop?)"
    )]
    Loop { path: String, target: String },
}

/// Renders a bundle's path as plain YAML.
pub struct PlainYaml;

impl Renderer for PlainYaml {
    fn render(&self, repo: &dyn RepoFiles, cx: &Context<'_>) -> Result<Vec<Object>, crate::Cause> {
        Ok(read_path(repo, &cx.bundle.path, true)?)
    }
}

fn is_manifest(name: &str) -> bool {
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// Reads every object under `path` (a file, or a directory recursively).
pub fn read_path(
    repo: &dyn RepoFiles,
    path: &RepoPath,
    must_have_files: bool,
) -> Result<Vec<Object>, PlainError> {
    let mut out = Vec::new();
    match repo.kind(path) {
        PathKind::File => read_file(repo, path, &mut out)?,
        PathKind::Dir => {
            let mut files = 0usize;
            let mut seen = std::collections::HashSet::new();
            if let Some(c) = repo.canonical(path) {
                seen.insert(c);
            }
            walk(repo, path, &mut out, &mut files, &mut seen)?;
            if files == 0 && must_have_files {
                return Err(PlainError::Empty(path.to_string()));
            }
        }
        PathKind::Missing => return Err(RepoError::NotFound(path.to_string()).into()),
        PathKind::Escapes => return Err(RepoError::Escapes(path.to_string()).into()),
    }
    Ok(out)
}

/// Walks `dir`; `seen` holds where every directory walked so far leads (symbolic links
/// followed), so a directory reached twice — a link loop, or a link to a directory read
/// elsewhere — is refused instead of read again (a loop of two links would otherwise be
/// 2^40 paths deep before the per-path link limit stops it).
fn walk(
    repo: &dyn RepoFiles,
    dir: &RepoPath,
    out: &mut Vec<Object>,
    files: &mut usize,
    seen: &mut std::collections::HashSet<String>,
) -> Result<(), PlainError> {
    for name in repo.list(dir)? {
        let child = join(dir, &name)?;
        match repo.kind(&child) {
            PathKind::Dir if !name.starts_with('.') => {
                if let Some(target) = repo.canonical(&child)
                    && !seen.insert(target.clone())
                {
                    return Err(PlainError::Loop {
                        path: child.to_string(),
                        target,
                    });
                }
                walk(repo, &child, out, files, seen)?
            }
            PathKind::File if is_manifest(&name) => {
                *files += 1;
                read_file(repo, &child, out)?;
            }
            PathKind::Escapes => return Err(RepoError::Escapes(child.to_string()).into()),
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn join(dir: &RepoPath, name: &str) -> Result<RepoPath, RepoError> {
    dir.join(name).map_err(|message| RepoError::Io {
        path: if dir.as_str() == "." {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        },
        message,
    })
}

/// Reads one multi-document YAML file's objects.
pub fn read_file(
    repo: &dyn RepoFiles,
    path: &RepoPath,
    out: &mut Vec<Object>,
) -> Result<(), PlainError> {
    let text = repo.read_to_string(path)?;
    let file = path.to_string();
    for doc in parse_docs(&file, &text)? {
        push_object(&file, doc.0, doc.1, out)?;
    }
    Ok(())
}

/// Parses a multi-document YAML text into (value, "line:col") pairs, empty ones skipped.
pub fn parse_docs(file: &str, text: &str) -> Result<Vec<(Value, String)>, PlainError> {
    let docs =
        flotilla_spec::yaml::parse_all(text, &Limits::default()).map_err(|e| PlainError::Yaml {
            file: file.to_string(),
            message: match e.pos() {
                Some(p) => format!("{p}: {}", e.message()),
                None => format!(" {}", e.message()),
            },
        })?;
    Ok(docs
        .into_iter()
        .filter(|d| d.value != flotilla_spec::yaml::Value::Null)
        .map(|d| (d.to_json(), format!("{}", d.pos)))
        .collect())
}

/// Checks that `v` is an object (or a List of them) and appends it.
pub fn push_object(
    file: &str,
    v: Value,
    pos: String,
    out: &mut Vec<Object>,
) -> Result<(), PlainError> {
    let at = format!("{file}:{pos}");
    let bad = |message: String| PlainError::NotAnObject {
        at: at.clone(),
        message,
    };
    let Value::Object(m) = &v else {
        return Err(bad(format!(
            "expected a Kubernetes object (a mapping with apiVersion, kind and metadata.name), found {}",
            type_name(&v)
        )));
    };
    let kind = m.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind.ends_with("List") && m.get("items").is_some_and(Value::is_array) {
        if let Some(Value::Array(items)) = m.get("items") {
            for (i, item) in items.iter().enumerate() {
                push_object(file, item.clone(), format!("{pos} (items[{i}])"), out)?;
            }
        }
        return Ok(());
    }
    for field in ["apiVersion", "kind"] {
        match m.get(field) {
            Some(Value::String(s)) if !s.is_empty() => {}
            _ => {
                return Err(bad(format!(
                    "the object has no {field} (a non-empty string)"
                )));
            }
        }
    }
    match m.get("metadata").and_then(|md| md.get("name")) {
        Some(Value::String(s)) if !s.is_empty() => {}
        _ => {
            return Err(bad(
                "the object has no metadata.name (a non-empty string)".into()
            ));
        }
    }
    out.push(Object {
        value: v,
        origin: at,
    });
    Ok(())
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}
