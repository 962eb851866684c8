//! Tag policies: which of a repository's tags a policy accepts, and which one it chooses.
//! Pure: tags in, a [`Choice`] out, with a verdict for every tag considered.

use std::cmp::Ordering;

use flotilla_spec::model::{TagOrder, TagPolicy};
use serde::Serialize;

/// What a policy thought of one tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub tag: String,
    /// `None`: accepted; otherwise why the tag was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

/// The outcome of a policy over a tag list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Choice {
    /// The chosen tag, if any tag was accepted.
    pub chosen: Option<String>,
    /// Why it was chosen (or why nothing was).
    pub reason: String,
    /// Every tag, in the order the registry listed them, with its verdict.
    pub verdicts: Vec<Verdict>,
}

/// What kind of policy this is, in words (`semver >=1.8.0 <2.0.0`).
pub fn describe(policy: &TagPolicy) -> String {
    if let Some(range) = &policy.semver {
        format!("semver {}", range.text)
    } else if let Some(p) = &policy.pattern {
        let order = match p.order {
            TagOrder::Alphabetical => "alphabetical",
            TagOrder::Numerical => "numerical",
        };
        format!(
            "pattern {} ordered {order} by {}",
            p.regex.text,
            p.extract.as_deref().unwrap_or("the whole tag")
        )
    } else if let Some(d) = &policy.digest {
        format!("digest of tag {}", d.tag)
    } else {
        "no policy".into()
    }
}

/// Applies `policy` to `tags`. A digest policy chooses its tag if the registry has it (the
/// digest is looked up separately).
pub fn choose(policy: &TagPolicy, tags: &[String]) -> Choice {
    if let Some(range) = &policy.semver {
        semver_choice(range, tags)
    } else if let Some(p) = &policy.pattern {
        pattern_choice(p, tags)
    } else if let Some(d) = &policy.digest {
        let found = tags.iter().any(|t| t == &d.tag);
        Choice {
            chosen: found.then(|| d.tag.clone()),
            reason: if found {
                format!("the followed tag {} exists", d.tag)
            } else {
                format!("the followed tag {} is not in the registry", d.tag)
            },
            verdicts: tags
                .iter()
                .filter(|t| *t == &d.tag)
                .map(|t| Verdict {
                    tag: t.clone(),
                    rejected: None,
                })
                .collect(),
        }
    } else {
        Choice {
            chosen: None,
            reason: "the policy sets none of semver, pattern and digest".into(),
            verdicts: Vec::new(),
        }
    }
}

/// A tag read as a semantic version; a leading `v` is tolerated.
pub fn parse_version(tag: &str) -> Option<semver::Version> {
    semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)).ok()
}

fn semver_choice(range: &flotilla_spec::types::SemverRange, tags: &[String]) -> Choice {
    let mut verdicts = Vec::with_capacity(tags.len());
    let mut best: Option<(semver::Version, &String)> = None;
    for tag in tags {
        let rejected = match parse_version(tag) {
            None => Some("not a semantic version".to_string()),
            Some(v) if range.matches(&v) => {
                let better = match &best {
                    None => true,
                    // Equal versions (`1.2.0` and `v1.2.0`): the alphabetically smaller tag, so
                    // the choice does not depend on the registry's order.
                    Some((b, bt)) => match v.cmp(b) {
                        Ordering::Greater => true,
                        Ordering::Equal => tag < *bt,
                        Ordering::Less => false,
                    },
                };
                if better {
                    best = Some((v, tag));
                }
                None
            }
            Some(v) if !v.pre.is_empty() => Some(format!(
                "pre-release, and the range {} does not ask for pre-releases of {}.{}.{}",
                range.text, v.major, v.minor, v.patch
            )),
            Some(_) => Some(format!("outside the range {}", range.text)),
        };
        verdicts.push(Verdict {
            tag: tag.clone(),
            rejected,
        });
    }
    let accepted = verdicts.iter().filter(|v| v.rejected.is_none()).count();
    match best {
        Some((_, tag)) => Choice {
            chosen: Some(tag.clone()),
            reason: format!(
                "the highest version in {} ({accepted} of {} tags in range)",
                range.text,
                tags.len()
            ),
            verdicts,
        },
        None => Choice {
            chosen: None,
            reason: format!("no tag of {} is in the range {}", tags.len(), range.text),
            verdicts,
        },
    }
}

/// The ordering key of a pattern policy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Number(u128),
    Text(String),
}

fn pattern_choice(p: &flotilla_spec::model::PatternPolicy, tags: &[String]) -> Choice {
    let mut verdicts = Vec::with_capacity(tags.len());
    let mut best: Option<(Key, &String)> = None;
    for tag in tags {
        let rejected = match p.regex.regex.captures(tag) {
            None => Some(format!("does not match {}", p.regex.text)),
            Some(caps) => {
                let mut extracted = String::new();
                match &p.extract {
                    Some(template) => caps.expand(template, &mut extracted),
                    None => extracted.push_str(tag),
                }
                let key = match p.order {
                    TagOrder::Alphabetical => Ok(Key::Text(extracted.clone())),
                    TagOrder::Numerical => {
                        if !extracted.is_empty() && extracted.bytes().all(|b| b.is_ascii_digit()) {
                            extracted
                                .parse::<u128>()
                                .map(Key::Number)
                                .map_err(|_| format!("{extracted:?} is too large a number"))
                        } else {
                            Err(format!(
                                "extracted {extracted:?}, which is not a whole number"
                            ))
                        }
                    }
                };
                match key {
                    Err(why) => Some(why),
                    Ok(key) => {
                        let better = match &best {
                            None => true,
                            Some((b, bt)) => match key.cmp(b) {
                                Ordering::Greater => true,
                                Ordering::Equal => tag < *bt,
                                Ordering::Less => false,
                            },
                        };
                        if better {
                            best = Some((key, tag));
                        }
                        None
                    }
                }
            }
        };
        verdicts.push(Verdict {
            tag: tag.clone(),
            rejected,
        });
    }
    let accepted = verdicts.iter().filter(|v| v.rejected.is_none()).count();
    let order = match p.order {
        TagOrder::Alphabetical => "alphabetically",
        TagOrder::Numerical => "numerically",
    };
    match best {
        Some((_, tag)) => Choice {
            chosen: Some(tag.clone()),
            reason: format!(
                "the greatest {order} of {accepted} tags matching {}",
                p.regex.text
            ),
            verdicts,
        },
        None => Choice {
            chosen: None,
            reason: format!("no tag of {} matches {}", tags.len(), p.regex.text),
            verdicts,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_spec::model::{DigestPolicy, PatternPolicy};
    use flotilla_spec::types::{Pattern, SemverRange};

    fn tags(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    fn semver(range: &str) -> TagPolicy {
        TagPolicy {
            semver: Some(SemverRange::parse(range).expect("range")),
            pattern: None,
            digest: None,
        }
    }

    fn pattern(re: &str, extract: Option<&str>, order: TagOrder) -> TagPolicy {
        TagPolicy {
            semver: None,
            pattern: Some(PatternPolicy {
                regex: Pattern::parse(re).expect("regex"),
                extract: extract.map(str::to_string),
                order,
            }),
            digest: None,
        }
    }

    fn rejected(c: &Choice, tag: &str) -> Option<String> {
        c.verdicts
            .iter()
            .find(|v| v.tag == tag)
            .and_then(|v| v.rejected.clone())
    }

    /// (range, tags, expected choice) as data.
    const SEMVER_CASES: &[(&str, &[&str], Option<&str>)] = &[
        (
            ">=1.8.0 <2.0.0",
            &["1.8.2", "1.9.0", "2.0.0", "latest"],
            Some("1.9.0"),
        ),
        (
            ">=1.8.0 <2.0.0",
            &["1.8.2", "1.9.0", "1.10.0-rc.1"],
            Some("1.9.0"),
        ),
        (">=1.8.0 <2.0.0", &["1.10.0", "1.9.0"], Some("1.10.0")),
        (">=1.8.0 <2.0.0", &["v1.9.1", "1.9.0"], Some("v1.9.1")),
        (">=1.8.0 <2.0.0", &["v1.9.0", "1.9.0"], Some("1.9.0")),
        ("^1.2", &["1.1.9", "1.2.3", "1.3.0", "2.0.0"], Some("1.3.0")),
        ("~1.2", &["1.2.3", "1.3.0"], Some("1.2.3")),
        ("1.x || 3.x", &["1.0.0", "2.0.0", "3.1.0"], Some("3.1.0")),
        (">=2.0.0", &["1.0.0", "main", "sha-abc"], None),
        (
            ">=1.9.0-0 <2.0.0",
            &["1.9.0-rc.1", "1.8.0"],
            Some("1.9.0-rc.1"),
        ),
        (">=1.0.0", &[], None),
    ];

    #[test]
    fn semver_cases() {
        for (range, t, want) in SEMVER_CASES {
            let c = choose(&semver(range), &tags(t));
            assert_eq!(c.chosen.as_deref(), *want, "{range} over {t:?}: {c:?}");
        }
    }

    #[test]
    fn pre_releases_are_rejected_with_a_reason() {
        let c = choose(&semver(">=1.8.0 <2.0.0"), &tags(&["1.9.0", "1.10.0-rc.1"]));
        assert_eq!(c.chosen.as_deref(), Some("1.9.0"));
        let why = rejected(&c, "1.10.0-rc.1").expect("rejected");
        assert!(why.contains("pre-release"), "{why}");
        assert!(
            rejected(&c, "1.9.0").is_none(),
            "accepted tags carry no reason"
        );
        let c = choose(&semver(">=1.8.0 <2.0.0"), &tags(&["2.1.0", "x"]));
        assert_eq!(c.chosen, None);
        assert!(rejected(&c, "2.1.0").expect("r").contains("outside"));
        assert!(rejected(&c, "x").expect("r").contains("not a semantic"));
    }

    #[test]
    fn numerical_pattern_beats_alphabetical_ordering() {
        let t = tags(&["main-9", "main-10", "main-2", "feature-99", "main-x"]);
        let num = choose(
            &pattern(
                r"^main-(?P<build>\d+)$",
                Some("$build"),
                TagOrder::Numerical,
            ),
            &t,
        );
        assert_eq!(num.chosen.as_deref(), Some("main-10"));
        assert!(rejected(&num, "feature-99").expect("r").contains("match"));
        assert!(rejected(&num, "main-x").expect("r").contains("match"));
        let alpha = choose(
            &pattern(
                r"^main-(?P<build>\d+)$",
                Some("$build"),
                TagOrder::Alphabetical,
            ),
            &t,
        );
        assert_eq!(alpha.chosen.as_deref(), Some("main-9"));
        // A capture that is not a number is rejected under numerical ordering.
        let c = choose(
            &pattern(r"^main-(.+)$", Some("$1"), TagOrder::Numerical),
            &t,
        );
        assert_eq!(c.chosen.as_deref(), Some("main-10"));
        assert!(rejected(&c, "main-x").expect("r").contains("not a whole"));
    }

    #[test]
    fn whole_tag_ordering_without_extract() {
        let c = choose(
            &pattern(r"^2026-\d\d-\d\d$", None, TagOrder::Alphabetical),
            &tags(&["2026-01-31", "2026-11-02", "2026-02-01", "latest"]),
        );
        assert_eq!(c.chosen.as_deref(), Some("2026-11-02"));
    }

    #[test]
    fn digest_policy_needs_its_tag() {
        let p = TagPolicy {
            semver: None,
            pattern: None,
            digest: Some(DigestPolicy {
                tag: "stable".into(),
            }),
        };
        assert_eq!(
            choose(&p, &tags(&["1.0", "stable"])).chosen.as_deref(),
            Some("stable")
        );
        let c = choose(&p, &tags(&["1.0"]));
        assert_eq!(c.chosen, None);
        assert!(c.reason.contains("not in the registry"));
    }
}
