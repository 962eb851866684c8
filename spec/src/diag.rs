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

/// The longest message a diagnostic carries (bytes); a longer one is cut at a character
/// boundary and says how much was left out, so a 20 MB value never becomes 20 MB of output.
pub const MAX_MESSAGE_BYTES: usize = 1024;
/// The most diagnostics one file reports; one more diagnostic says how many were left out.
pub const MAX_DIAGNOSTICS: usize = 1000;

/// `message` cut to [`MAX_MESSAGE_BYTES`] (at a character boundary), saying how many bytes
/// were left out.
pub fn cap_message(message: String) -> String {
    cap_text(message, MAX_MESSAGE_BYTES)
}

/// `text` cut to at most `max` bytes (at a character boundary) plus a note of what was left out.
pub fn cap_text(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let dropped = text.len() - cut;
    text.truncate(cut);
    text.push_str(&format!("... ({dropped} more bytes)"));
    text
}

/// Collects diagnostics while decoding and validating one file.
#[derive(Debug, Default)]
pub struct Sink {
    pub(crate) items: Vec<(Severity, Pos, String, String)>,
}

impl Sink {
    pub fn error(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.items.push((
            Severity::Error,
            pos,
            cap_text(path.to_string(), MAX_MESSAGE_BYTES),
            cap_message(message.into()),
        ));
    }

    pub fn warning(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.items.push((
            Severity::Warning,
            pos,
            cap_text(path.to_string(), MAX_MESSAGE_BYTES),
            cap_message(message.into()),
        ));
    }

    pub fn has_errors(&self) -> bool {
        self.items.iter().any(|(s, ..)| *s == Severity::Error)
    }

    /// Sorted by position, errors before warnings at the same place, deduplicated; at most
    /// [`MAX_DIAGNOSTICS`], then one error at the first one left out saying how many more
    /// there were.
    pub fn into_diagnostics(mut self, file: &str) -> Vec<Diagnostic> {
        self.items
            .sort_by(|a, b| (a.1, a.0, &a.3).cmp(&(b.1, b.0, &b.3)));
        self.items
            .dedup_by(|a, b| a.0 == b.0 && a.1 == b.1 && a.3 == b.3);
        if self.items.len() > MAX_DIAGNOSTICS {
            let more = self.items.len() - MAX_DIAGNOSTICS;
            let (severity, pos, path, _) = self.items[MAX_DIAGNOSTICS].clone();
            let errors = self.items[MAX_DIAGNOSTICS..]
                .iter()
                .filter(|i| i.0 == Severity::Error)
                .count();
            self.items.truncate(MAX_DIAGNOSTICS);
            self.items.push((
                if errors > 0 {
                    Severity::Error
                } else {
                    severity
                },
                pos,
                path,
                format!(
                    "{more} more diagnostics not shown ({errors} errors); fix the ones above first"
                ),
            ));
        }
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
    // Typos are short; comparing a huge value against every candidate only costs time.
    if word.len() > 256 {
        return None;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let long = format!("bad name \"{}\"", "é".repeat(10_000));
        let capped = cap_message(long.clone());
        assert!(capped.len() < MAX_MESSAGE_BYTES + 40, "{}", capped.len());
        assert!(capped.starts_with("bad name \"éé"));
        let left = long.len() - capped.find("...").expect("marker");
        assert!(
            capped.ends_with(&format!("... ({left} more bytes)")),
            "{capped}"
        );
        assert_eq!(cap_message("short".into()), "short");
    }

    #[test]
    fn diagnostics_are_capped_with_a_count_of_the_rest() {
        let mut sink = Sink::default();
        for i in 0..(MAX_DIAGNOSTICS as u32 + 250) {
            sink.error(
                Pos {
                    line: i + 1,
                    column: 1,
                },
                "/x",
                format!("error {i}"),
            );
        }
        let d = sink.into_diagnostics("fleet.yaml");
        assert_eq!(d.len(), MAX_DIAGNOSTICS + 1);
        let last = d.last().expect("last");
        assert_eq!(last.severity, Severity::Error);
        assert_eq!(last.line, MAX_DIAGNOSTICS + 1);
        assert!(
            last.message
                .starts_with("250 more diagnostics not shown (250 errors)")
        );
    }
}
