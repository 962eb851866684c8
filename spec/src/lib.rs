//! The fleet.yaml specification: typed model, positioned parsing, validation, selectors and
//! JSON Schema. Pure: no file system, network or clock; the caller hands in the text and a
//! [`RepoFiles`] view of the repository.
//!
//! ```
//! use flotilla_spec::{check, NoRepo};
//! let text = "apiVersion: flotilla.dev/v1alpha1\nkind: Fleet\nmetadata: {name: demo}\nclustrs: []\n";
//! let checked = check("fleet.yaml", text, &NoRepo);
//! assert!(checked.fleet.is_none());
//! assert_eq!(
//!     checked.diagnostics[0].to_string(),
//!     "fleet.yaml:4:1: error: unknown key \"clustrs\" in the fleet; did you mean \"clusters\"?"
//! );
//! ```

mod decode;
pub mod diag;
pub mod model;
pub mod repo;
pub mod selector;
pub mod team;
pub mod template;
pub mod types;
pub mod validate;
pub mod workflow;
pub mod yaml;

pub use decode::check_store;
pub use diag::{Diagnostic, Severity};
pub use model::*;
pub use repo::{MemRepo, NoRepo, PathKind, RepoError, RepoFiles};
pub use validate::{Selection, kustomization_file, placement_bundles, render_kind};
pub use yaml::Limits;

/// The result of checking a fleet file.
#[derive(Debug)]
pub struct Checked {
    /// The fleet, when it has no errors (warnings allowed).
    pub fleet: Option<Fleet>,
    /// Errors and warnings, sorted by position.
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn is_valid(&self) -> bool {
        self.fleet.is_some()
    }
}

/// Why the fleet file could not be read at all (an oversized file is a diagnostic instead).
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("--fleet: {0}")]
    BadPath(String),
    #[error("{file} is a directory, expected the fleet file")]
    Directory { file: String },
    #[error("{file} not found in {place}")]
    Missing { file: String, place: String },
    #[error("{file} leads outside the repository")]
    Escapes { file: String },
    #[error("cannot read {file}: it is not valid UTF-8")]
    NotUtf8 { file: String },
    #[error("cannot read {file}: {source}")]
    Read { file: String, source: RepoError },
}

/// Reads the fleet file `file` from a repository view and checks it. `place` names the
/// repository in messages; `known_size`, when the caller knows it, keeps an oversized file
/// from being read. A file over the size limit is a diagnostic, not an error.
pub fn check_repo_file(
    repo: &dyn RepoFiles,
    file: &str,
    known_size: Option<u64>,
    place: &str,
    limits: &Limits,
) -> Result<(String, Checked), FileError> {
    let path = types::RepoPath::parse(file).map_err(|e| FileError::BadPath(e.to_string()))?;
    let file = path.as_str().to_string();
    match repo.kind(&path) {
        PathKind::File => {}
        PathKind::Dir => return Err(FileError::Directory { file }),
        PathKind::Missing => {
            return Err(FileError::Missing {
                file,
                place: place.to_string(),
            });
        }
        PathKind::Escapes => return Err(FileError::Escapes { file }),
    }
    let over = |size: u64| size > limits.max_bytes as u64;
    let (text, size) = match known_size {
        Some(size) if over(size) => (None, size),
        _ => match repo.read(&path) {
            Ok(bytes) if over(bytes.len() as u64) => (None, bytes.len() as u64),
            Ok(bytes) => {
                let size = bytes.len() as u64;
                let text = String::from_utf8(bytes)
                    .map_err(|_| FileError::NotUtf8 { file: file.clone() })?;
                (Some(text), size)
            }
            Err(RepoError::TooLarge { size, .. }) => (None, size),
            Err(source) => return Err(FileError::Read { file, source }),
        },
    };
    let checked = match text {
        Some(text) => check_with(&file, &text, repo, limits),
        None => {
            // Let the parser report it as a diagnostic, then name the real size.
            let mut checked = check_with(&file, &" ".repeat(limits.max_bytes + 1), repo, limits);
            for d in &mut checked.diagnostics {
                d.message = format!(
                    "the file is {size} bytes, over the limit of {} bytes",
                    limits.max_bytes
                );
            }
            checked
        }
    };
    Ok((file, checked))
}

/// Parses, decodes and validates a fleet file with the default [`Limits`].
pub fn check(file: &str, text: &str, repo: &dyn RepoFiles) -> Checked {
    check_with(file, text, repo, &Limits::default())
}

/// Parses, decodes and validates a fleet file.
pub fn check_with(file: &str, text: &str, repo: &dyn RepoFiles, limits: &Limits) -> Checked {
    let mut cx = decode::Cx::default();
    let doc = match yaml::parse(text, limits) {
        Ok(doc) => doc,
        Err(e) => {
            let pos = e.pos().unwrap_or(yaml::Pos { line: 1, column: 1 });
            cx.error(pos, &decode::Ptr::ROOT, e.message());
            return Checked {
                fleet: None,
                diagnostics: cx.sink.into_diagnostics(file),
            };
        }
    };
    if doc.value == yaml::Value::Null {
        cx.error(
            doc.pos,
            &decode::Ptr::ROOT,
            "the file is empty; expected a Fleet (apiVersion: flotilla.dev/v1alpha1, kind: Fleet)",
        );
        return Checked {
            fleet: None,
            diagnostics: cx.sink.into_diagnostics(file),
        };
    }
    let fleet = decode::fleet(&mut cx, &doc);
    if let Some(f) = &fleet {
        validate::validate(f, &doc, repo, &mut cx);
    }
    let valid = !cx.sink.has_errors();
    Checked {
        fleet: if valid { fleet } else { None },
        diagnostics: cx.sink.into_diagnostics(file),
    }
}

/// The JSON Schema (draft 2020-12) of fleet.yaml.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::SchemaGenerator::default().into_root_schema_for::<Fleet>();
    schema.to_value()
}
