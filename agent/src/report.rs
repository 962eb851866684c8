//! What an agent tells the hub: [`AgentReport`], versioned JSON like the exchange's records,
//! written to the `agent-status` ConfigMap of its namespace. Bounded: events and drift
//! lists are cut so the JSON stays under [`MAX_REPORT_BYTES`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The version of the report this flotilla writes and reads.
pub const VERSION: u32 = 1;

/// The largest report written or read.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;

/// Events kept (newest last).
pub const MAX_EVENTS: usize = 50;

/// Drifted objects listed per placement.
pub const MAX_DRIFTED: usize = 100;

/// The longest event line kept (bytes).
pub const MAX_EVENT_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentReport {
    pub version: u32,
    pub cluster: String,
    pub agent_version: String,
    /// RFC 3339.
    pub started_at: String,
    /// RFC 3339.
    pub reported_at: String,
    /// Whether the agent reached the management cluster throughout: false in the reports
    /// written within one report interval after an outage (the events say what happened
    /// meanwhile).
    pub hub_reachable: bool,
    #[serde(default)]
    pub placements: BTreeMap<String, PlacementStatus>,
    /// The last [`MAX_EVENTS`] lines, newest last.
    #[serde(default)]
    pub events: Vec<String>,
}

/// The agent's account of one assigned placement.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementStatus {
    /// The rollout that assigned it (`<placement>@<revision>`).
    pub rollout: String,
    /// The manifest hash applied.
    pub manifests: String,
    /// RFC 3339; empty before the first apply by this agent.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub applied_at: String,
    /// The last health answer (`None`: not asked yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Objects found missing or modified at the last drift check (`Deployment.apps/ns/web
    /// (missing)`), at most [`MAX_DRIFTED`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted: Vec<String>,
    /// Re-applies by the self-heal since the agent started.
    #[serde(default)]
    pub healed: u64,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_heal_at: String,
    /// The last error (apply, health, drift check), empty when the last attempt went well.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// The last drift check as the daemon's drift report shows it: each object's state,
    /// health and changed fields (at most [`MAX_DRIFTED`] objects, those out of sync first;
    /// no YAML diffs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<flotilla_reconciler::report::PlacementReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("agent report: {size} bytes, more than the limit of {MAX_REPORT_BYTES}")]
    TooLarge { size: usize },
    #[error("agent report does not decode: {0}")]
    Decode(String),
    #[error(
        "agent report has version {0}; this flotilla reads version {VERSION} (upgrade it to read this agent)"
    )]
    Version(u64),
}

/// Cuts `s` to at most `max` bytes on a character boundary (marking the cut).
pub fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

impl AgentReport {
    pub fn from_json(text: &str) -> Result<AgentReport, ReportError> {
        if text.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge { size: text.len() });
        }
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| ReportError::Decode(e.to_string()))?;
        match raw.get("version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(VERSION) => {}
            Some(v) => return Err(ReportError::Version(v)),
            None => return Err(ReportError::Decode("no numeric \"version\"".into())),
        }
        serde_json::from_value(raw).map_err(|e| ReportError::Decode(e.to_string()))
    }

    /// The JSON, cut to fit [`MAX_REPORT_BYTES`]: events capped in length and count, drift
    /// lists capped, then the oldest events and the longest drift lists dropped until it fits.
    pub fn to_json(&self) -> Result<String, ReportError> {
        let mut r = self.clone();
        let skip = r.events.len().saturating_sub(MAX_EVENTS);
        r.events = r
            .events
            .iter()
            .skip(skip)
            .map(|e| cap(e, MAX_EVENT_BYTES))
            .collect();
        for p in r.placements.values_mut() {
            if p.drifted.len() > MAX_DRIFTED {
                let more = p.drifted.len() - MAX_DRIFTED;
                p.drifted.truncate(MAX_DRIFTED);
                p.drifted.push(format!("... and {more} more"));
            }
            p.drifted = p.drifted.iter().map(|d| cap(d, MAX_EVENT_BYTES)).collect();
            p.error = cap(&p.error, 4 * MAX_EVENT_BYTES);
        }
        loop {
            let text = serde_json::to_string(&r).map_err(|e| ReportError::Decode(e.to_string()))?;
            if text.len() <= MAX_REPORT_BYTES {
                return Ok(text);
            }
            if !r.events.is_empty() {
                r.events.remove(0);
                continue;
            }
            let longest = r
                .placements
                .values_mut()
                .filter(|p| !p.drifted.is_empty() || !p.error.is_empty())
                .max_by_key(|p| p.drifted.len() + p.error.len());
            match longest {
                Some(p) if !p.drifted.is_empty() => {
                    p.drifted.clear();
                    p.drifted
                        .push("(list left out: the report was too large)".into());
                }
                Some(p) => p.error.clear(),
                // Only placement names and hashes left: too many placements to report.
                None => return Err(ReportError::TooLarge { size: text.len() }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentReport {
        AgentReport {
            version: VERSION,
            cluster: "a1".into(),
            agent_version: "0.1.0".into(),
            started_at: "2026-12-04T20:00:00.000Z".into(),
            reported_at: "2026-12-04T20:01:00.000Z".into(),
            hub_reachable: false,
            placements: BTreeMap::from([(
                "web".into(),
                PlacementStatus {
                    rollout: "web@abc".into(),
                    manifests: "0".repeat(64),
                    applied_at: "2026-12-04T20:00:30.000Z".into(),
                    healthy: Some(true),
                    drifted: vec!["ConfigMap/shop/x (missing)".into()],
                    healed: 2,
                    last_heal_at: "2026-12-04T20:00:50.000Z".into(),
                    error: String::new(),
                    drift: Some(flotilla_reconciler::report::PlacementReport {
                        name: "web".into(),
                        error: None,
                        objects: vec![flotilla_reconciler::report::ObjectReport {
                            id: "ConfigMap/shop/x".into(),
                            api_version: "v1".into(),
                            kind: "ConfigMap".into(),
                            namespace: Some("shop".into()),
                            name: "x".into(),
                            bundle: "app".into(),
                            state: flotilla_reconciler::report::ObjectState::Missing,
                            fields: Vec::new(),
                            changes: Vec::new(),
                            diff: String::new(),
                            health: None,
                            error: None,
                        }],
                    }),
                },
            )]),
            events: vec!["healed web".into()],
        }
    }

    #[test]
    fn a_report_round_trips_in_camel_case() {
        let r = sample();
        let text = r.to_json().expect("encodes");
        assert!(text.contains("\"hubReachable\":false"), "{text}");
        assert!(text.contains("\"lastHealAt\""), "{text}");
        assert_eq!(AgentReport::from_json(&text).expect("decodes"), r);
    }

    #[test]
    fn another_version_is_refused_with_a_reason() {
        let text = sample()
            .to_json()
            .expect("encodes")
            .replace("\"version\":1", "\"version\":2");
        let e = AgentReport::from_json(&text).expect_err("version 2 is refused");
        assert_eq!(e, ReportError::Version(2));
        assert!(e.to_string().contains("upgrade"), "{e}");
        let e = AgentReport::from_json("{\"cluster\":\"a1\"}").expect_err("no version");
        assert!(e.to_string().contains("version"), "{e}");
    }

    #[test]
    fn a_huge_report_is_cut_to_the_limit_keeping_the_newest_events() {
        let mut r = sample();
        r.events = (0..5000)
            .map(|i| format!("event {i} {}", "x".repeat(2000)))
            .collect();
        let p = r.placements.get_mut("web").expect("web");
        p.drifted = (0..10_000)
            .map(|i| format!("ConfigMap/shop/c{i} (missing)"))
            .collect();
        let text = r.to_json().expect("encodes");
        assert!(text.len() <= MAX_REPORT_BYTES, "{} bytes", text.len());
        let back = AgentReport::from_json(&text).expect("decodes");
        assert!(back.events.len() <= MAX_EVENTS);
        assert!(
            back.events
                .last()
                .expect("events kept")
                .starts_with("event 4999 ")
        );
        let drifted = &back.placements["web"].drifted;
        assert_eq!(drifted.len(), MAX_DRIFTED + 1);
        assert_eq!(
            drifted.last().map(String::as_str),
            Some("... and 9900 more")
        );
    }
}
