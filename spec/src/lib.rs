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
pub mod template;
pub mod types;
pub mod validate;
pub mod yaml;

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
