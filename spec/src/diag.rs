//! Diagnostics: errors and warnings with a place a person can jump to.

use std::fmt;

use serde::Serialize;

use crate::yaml::Pos;

/// How bad a diagnostic is. Errors make a fleet invalid; warnings do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding about a fleet file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    /// The file, as the user named it (relative to the repository root when possible).
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// JSON pointer of the offending node (`/placements/0/bundles/1`), empty for the root.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.file, self.line, self.column, self.severity, self.message
        )
    }
}

/// Collects diagnostics while decoding and validating one file.
#[derive(Debug, Default)]
pub struct Sink {
    pub(crate) items: Vec<(Severity, Pos, String, String)>,
}

impl Sink {
    pub fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.items
            .push((Severity::Error, pos, path.to_string(), message.into()));
    }

    pub fn warning(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.items
            .push((Severity::Warning, pos, path.to_string(), message.into()));
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|(s, ..)| *s == Severity::Error)
    }

    /// Sorted by position, errors before warnings at the same place, deduplicated.
    pub fn into_diagnostics(mut self, file: &str) -> Vec<Diagnostic> {
        self.items
            .sort_by(|a, b| (a.1, a.0, &a.3).cmp(&(b.1, b.0, &b.3)));
        self.items
            .dedup_by(|a, b| a.0 == b.0 && a.1 == b.1 && a.3 == b.3);
        self.items
            .into_iter()
            .map(|(severity, pos, path, message)| Diagnostic {
                severity,
                file: file.to_string(),
                line: pos.line as usize,
                column: pos.column as usize,
                path,
                message,
            })
            .collect()
    }
}

/// The closest candidate to `word`, if it is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let score = strsim::jaro_winkler(&lower, &c.to_ascii_lowercase());
            (score, c)
        })
        .filter(|(score, _)| *score >= 0.8)
        // Ties go to the alphabetically first candidate, so output is deterministic.
        .max_by(|a, b| a.0.total_cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, c)| c)
}

/// ` (did you mean "x"?)` or nothing.
pub fn suggestion<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match did_you_mean(word, candidates) {
        Some(c) => format!("; did you mean {c:?}?"),
        None => String::new(),
    }
}
