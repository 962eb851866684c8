//! Checked scalar types of fleet.yaml: each keeps the text the user wrote and the parsed value,
//! so that parsing happens once, at validation time, and never fails later at use time.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Serialize, Serializer};

macro_rules! string_schema {
    ($ty:ty, $name:literal, $desc:literal, $pattern:expr) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                match $pattern {
                    Some(p) => json_schema!({"type": "string", "description": $desc, "pattern": p}),
                    None => json_schema!({"type": "string", "description": $desc}),
                }
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.text)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.text)
            }
        }
    };
}

/// The longest duration fleet.yaml (and every duration flag) accepts: one leap year. Longer
/// soaks, deadlines or windows are mistakes, and time arithmetic on them could overflow.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(366 * 86_400);

/// A duration such as `90s`, `5m`, `1h30m`, `14d` or `500ms`, at most [`MAX_DURATION`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duration {
    pub text: String,
    pub value: std::time::Duration,
}
string_schema!(
    Duration,
    "Duration",
    "A duration: one or more <number><unit> with units ms, s, m, h, d, w (e.g. 90s, 1h30m, 14d).",
    Some("^([0-9]+(ms|s|m|h|d|w))+$")
);

impl Duration {
    pub fn parse(text: &str) -> Result<Duration, String> {
        let expected = "expected a duration like 30s, 5m, 1h30m or 14d";
        if text.is_empty() {
            return Err(format!("{expected}, found an empty string"));
        }
        if text.contains(char::is_whitespace) {
            return Err(format!("{expected} (no spaces), found {text:?}"));
        }
        let mut total: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
            if digits == 0 {
                return Err(format!("{expected}, found {text:?}"));
            }
            let n: u128 = rest[..digits]
                .parse()
                .map_err(|_| format!("{expected}, found {text:?}"))?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
            let unit = &rest[..unit_len];
            let ms: u128 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "w" => 604_800_000,
                "" => return Err(format!("{expected}: {text:?} has a number without a unit")),
                other => {
                    return Err(format!(
                        "{expected}: unknown unit {other:?} in {text:?} (units: ms, s, m, h, d, w)"
                    ));
                }
            };
            rest = &rest[unit_len..];
            total = total.saturating_add(n.saturating_mul(ms));
        }
        if total > MAX_DURATION.as_millis() {
            return Err(format!("duration {text:?} is too long (at most 366d)"));
        }
        let ms = u64::try_from(total).map_err(|_| format!("duration {text:?} is too long"))?;
        Ok(Duration {
            text: text.to_string(),
            value: std::time::Duration::from_millis(ms),
        })
    }

    pub fn zero() -> Duration {
        Duration {
            text: "0s".into(),
            value: std::time::Duration::ZERO,
        }
    }
}

/// A cron expression (5 fields, or 6 with seconds), checked with `croner`.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub text: String,
    pub cron: croner::Cron,
}
string_schema!(
    Schedule,
    "CronSchedule",
    "A cron expression: minute hour day-of-month month day-of-week (an optional leading seconds field), or @hourly, @daily, @weekly, @monthly, @yearly.",
    None::<&str>
);

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .year(croner::parser::Year::Disallowed)
            .build()
            .parse(text)
            .map_err(|e| {
                let why = e.to_string().replace(" when years are disallowed", "");
                format!(
                    "invalid cron expression {text:?}: {}; expected 5 fields (minute hour day-of-month month day-of-week), 6 with seconds first, or @hourly, @daily, @weekly, @monthly, @yearly",
                    why.trim_end_matches('.')
                )
            })?;
        Ok(Schedule {
            text: text.to_string(),
            cron,
        })
    }
}

/// An IANA time zone name such as `Asia/Shanghai` or `UTC`.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeZone {
    pub text: String,
    pub tz: chrono_tz::Tz,
}
string_schema!(
    TimeZone,
    "TimeZone",
    "An IANA time zone name, e.g. Europe/Berlin or UTC.",
    None::<&str>
);

impl TimeZone {
    pub fn parse(text: &str) -> Result<TimeZone, String> {
        match text.parse::<chrono_tz::Tz>() {
            Ok(tz) => Ok(TimeZone {
                text: text.to_string(),
                tz,
            }),
            Err(_) => {
                let hint =
                    crate::diag::suggestion(text, chrono_tz::TZ_VARIANTS.iter().map(|t| t.name()));
                Err(format!(
                    "unknown time zone {text:?} (expected an IANA name such as Europe/Berlin){hint}"
                ))
            }
        }
    }
}

/// A semver range in the syntax Flux and Helm users know (Masterminds): comparators separated
/// by spaces or commas are ANDed, `||` ORs, and `1.2 - 1.4`, `~1.2`, `^1.2`, `1.x` work.
#[derive(Debug, Clone, PartialEq)]
pub struct SemverRange {
    pub text: String,
    pub alternatives: Vec<semver::VersionReq>,
}
string_schema!(
    SemverRange,
    "SemverRange",
    "A semver range such as \">=1.8.0 <2.0.0\", \"^1.4\", \"~2.3\" or \"1.x || 2.x\".",
    None::<&str>
);

impl SemverRange {
    pub fn parse(text: &str) -> Result<SemverRange, String> {
        let mut alternatives = Vec::new();
        for alt in text.split("||") {
            let alt = alt.trim();
            if alt.is_empty() {
                return Err(format!("invalid semver range {text:?}: empty alternative"));
            }
            let normalized = normalize_range(alt);
            let req = semver::VersionReq::parse(&normalized)
                .map_err(|e| format!("invalid semver range {text:?}: {e}"))?;
            alternatives.push(req);
        }
        Ok(SemverRange {
            text: text.to_string(),
            alternatives,
        })
    }

    pub fn matches(&self, v: &semver::Version) -> bool {
        self.alternatives.iter().any(|r| r.matches(v))
    }
}

/// Turns `>= 1.2 <2`, `1.2 - 1.4` and `>=1,<2` into the comma form the semver crate reads.
fn normalize_range(alt: &str) -> String {
    let tokens: Vec<&str> = alt.split([' ', ',']).filter(|t| !t.is_empty()).collect();
    if tokens.len() == 3 && tokens[1] == "-" {
        return format!(">={}, <={}", tokens[0], tokens[2]);
    }
    let mut out: Vec<String> = Vec::new();
    let mut pending_op = String::new();
    for t in tokens {
        if t.chars()
            .all(|c| matches!(c, '<' | '>' | '=' | '~' | '^' | '!'))
        {
            pending_op.push_str(t);
            continue;
        }
        // A bare version means exactly that version (as in Masterminds/semver, which Flux and
        // Helm use), not the caret range the semver crate would make of it.
        let op = if pending_op.is_empty() && t.starts_with(|c: char| c.is_ascii_digit() || c == 'v')
        {
            "="
        } else {
            pending_op.as_str()
        };
        out.push(format!("{op}{}", t.trim_start_matches('v')));
        pending_op.clear();
    }
    if !pending_op.is_empty() {
        out.push(pending_op);
    }
    out.join(", ")
}

/// A regular expression (Rust `regex` syntax, RE2-like: no backtracking blow-ups).
#[derive(Debug, Clone)]
pub struct Pattern {
    pub text: String,
    pub regex: regex::Regex,
}
string_schema!(
    Pattern,
    "Regex",
    "A regular expression (RE2-like syntax).",
    None::<&str>
);

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        regex::RegexBuilder::new(text)
            .size_limit(1 << 20)
            .build()
            .map(|regex| Pattern {
                text: text.to_string(),
                regex,
            })
            .map_err(|e| {
                let msg = e.to_string();
                let last = msg.lines().last().unwrap_or("").trim().to_string();
                format!("invalid regular expression {text:?}: {last}")
            })
    }
}

/// A path inside the fleet repository: relative, `/`-separated, normalized, never escaping.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RepoPath {
    pub text: String,
}
string_schema!(
    RepoPath,
    "RepoPath",
    "A path relative to the root of the fleet repository; it may not leave the repository.",
    None::<&str>
);

impl RepoPath {
    /// Normalizes `./a//b/` to `a/b`; refuses absolute paths and `..` that leave the root.
    pub fn parse(text: &str) -> Result<RepoPath, String> {
        if text.is_empty() {
            return Err(
                "expected a path relative to the repository root, found an empty string".into(),
            );
        }
        if text.starts_with('/')
            || text.starts_with('\\')
            || text.get(1..3) == Some(":\\")
            || text.get(1..3) == Some(":/")
        {
            return Err(format!(
                "path {text:?} is absolute; paths are relative to the repository root"
            ));
        }
        if text.contains('\0') {
            return Err(format!("path {text:?} contains a NUL byte"));
        }
        let mut parts: Vec<&str> = Vec::new();
        for part in text.split(['/', '\\']) {
            match part {
                "" | "." => {}
                ".." => {
                    if parts.pop().is_none() {
                        return Err(format!("path {text:?} escapes the repository"));
                    }
                }
                p => parts.push(p),
            }
        }
        Ok(RepoPath {
            text: if parts.is_empty() {
                ".".into()
            } else {
                parts.join("/")
            },
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// `rel` resolved against this directory (`..` allowed while it stays inside the root).
    pub fn join(&self, rel: &str) -> Result<RepoPath, String> {
        if self.text == "." {
            RepoPath::parse(rel)
        } else {
            RepoPath::parse(&format!("{}/{rel}", self.text))
        }
    }
}

/// A Kubernetes resource quantity such as `500m`, `64`, `256Gi`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    pub text: String,
}
impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        Cow::Borrowed("Quantity")
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A Kubernetes quantity, e.g. 64, 500m, 256Gi.",
            "anyOf": [
                {"type": "string", "pattern": "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$"},
                {"type": "number", "minimum": 0}
            ]
        })
    }
}
impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}
impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity, String> {
        let digits = text
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        let (num, suffix) = text.split_at(digits);
        let num_ok = !num.is_empty() && num.parse::<f64>().is_ok() && !num.ends_with('.');
        let suffix_ok = matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        );
        if num_ok && suffix_ok {
            Ok(Quantity {
                text: text.to_string(),
            })
        } else {
            Err(format!(
                "expected a Kubernetes quantity such as 64, 500m or 256Gi, found {text:?}"
            ))
        }
    }
}

/// A Kubernetes quantity (`250m`, `2`, `1.5Gi`, `1e3`, `500k`) in milli-units, rounded up.
/// `None` for anything else (negative amounts included).
pub fn quantity_milli(q: &str) -> Option<u64> {
    let q = q.trim();
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let (num, factor) = SUFFIXES
        .iter()
        .find_map(|(s, f)| q.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    if num.is_empty()
        || !num
            .bytes()
            .all(|b| b.is_ascii_digit() || b"+.eE-".contains(&b))
    {
        return None;
    }
    let v: f64 = num.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let milli = (v * factor * 1000.0).ceil();
    if milli >= u64::MAX as f64 {
        Some(u64::MAX)
    } else {
        Some(milli as u64)
    }
}

/// Is `key` a valid Kubernetes label key (`[prefix/]name`)?
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let dns_ok = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if !dns_ok {
            return Err(format!(
                "invalid label key {key:?}: the prefix must be a DNS subdomain"
            ));
        }
    }
    check_label_value(name).map_err(|_| {
        format!(
            "invalid label key {key:?}: the name part must be 1-63 characters of [A-Za-z0-9_.-], starting and ending with an alphanumeric"
        )
    })?;
    if name.is_empty() {
        return Err(format!("invalid label key {key:?}: the name part is empty"));
    }
    Ok(())
}

/// Is `value` a valid Kubernetes label value (may be empty)?
pub fn check_label_value(value: &str) -> Result<(), String> {
    let ok = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid label value {value:?}: at most 63 characters of [A-Za-z0-9_.-], starting and ending with an alphanumeric"
        ))
    }
}

/// Is `name` a valid DNS-1123 label (names of clusters, bundles, placements, ...)?
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: expected 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            Duration::parse("1h30m").map(|d| d.value.as_secs()),
            Ok(5400)
        );
        assert_eq!(
            Duration::parse("14d").map(|d| d.value.as_secs()),
            Ok(14 * 86400)
        );
        assert_eq!(
            Duration::parse("500ms").map(|d| d.value.as_millis()),
            Ok(500)
        );
        assert!(Duration::parse("5").is_err());
        assert_eq!(
            Duration::parse("366d").map(|d| d.value),
            Ok(super::MAX_DURATION)
        );
        for long in ["367d", "99999999999h", "8785h", "53w", "366d1ms"] {
            let err = Duration::parse(long).expect_err(long);
            assert!(err.contains("too long (at most 366d)"), "{long}: {err}");
        }
        assert!(Duration::parse("5x").is_err());
        assert!(Duration::parse("m").is_err());
        assert!(Duration::parse("").is_err());
    }

    #[test]
    fn semver_ranges() {
        let r = SemverRange::parse(">=1.8.0 <2.0.0").expect("range");
        let v = |s: &str| semver::Version::parse(s).expect("version");
        assert!(r.matches(&v("1.8.2")));
        assert!(!r.matches(&v("2.0.0")));
        assert!(!r.matches(&v("1.7.9")));
        let exact = SemverRange::parse("1.2.3").expect("range");
        assert!(exact.matches(&v("1.2.3")));
        assert!(!exact.matches(&v("1.3.0")));
        let r = SemverRange::parse("1.2 - 1.4 || >= 3").expect("range");
        assert!(r.matches(&v("1.3.0")));
        assert!(r.matches(&v("3.1.0")));
        assert!(!r.matches(&v("2.0.0")));
        assert!(SemverRange::parse(">=banana").is_err());
    }

    #[test]
    fn repo_paths() {
        assert_eq!(
            RepoPath::parse("./apps//web/").map(|p| p.text),
            Ok("apps/web".to_string())
        );
        assert_eq!(
            RepoPath::parse("a/../b").map(|p| p.text),
            Ok("b".to_string())
        );
        assert!(RepoPath::parse("../etc/passwd").is_err());
        assert!(RepoPath::parse("a/../../b").is_err());
        assert!(RepoPath::parse("/etc").is_err());
    }

    #[test]
    fn schedules_and_zones() {
        assert!(Schedule::parse("0 1 * * *").is_ok());
        assert!(Schedule::parse("@daily").is_ok());
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(TimeZone::parse("Asia/Shanghai").is_ok());
        let e = TimeZone::parse("Asia/Shangai").expect_err("typo");
        assert!(e.contains("Asia/Shanghai"), "{e}");
    }

    #[test]
    fn labels() {
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("env").is_ok());
        assert!(check_label_key("-bad").is_err());
        assert!(check_label_key("Bad.Prefix/x").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("a b").is_err());
    }
}
