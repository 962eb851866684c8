//! Routing: which sinks an event goes to and with what text. Pure.

use flotilla_spec::template::Template;
use flotilla_spec::{NotificationRule, Notifications};

use crate::Event;

/// One message for one sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub sink: String,
    pub text: String,
}

struct Rule {
    triggers: Vec<String>,
    placements: Vec<String>,
    clusters: Vec<String>,
    sinks: Vec<String>,
    template: Option<Template>,
}

/// The rules of one fleet revision.
pub struct Rules {
    fleet: String,
    rules: Vec<Rule>,
}

impl Rules {
    /// Compiles validated rules (a template that does not parse — impossible after
    /// validation — falls back to the event's message).
    pub fn new(fleet: &str, n: &Notifications) -> Rules {
        Rules {
            fleet: fleet.to_string(),
            rules: n.rules.iter().map(compile).collect(),
        }
    }

    /// No rules at all.
    pub fn empty() -> Rules {
        Rules {
            fleet: String::new(),
            rules: Vec::new(),
        }
    }

    /// One delivery per sink that some rule sends `e` to, in sink order of first mention;
    /// when several rules send it to the same sink, the first rule's template wins (a sink
    /// never gets the same event twice).
    pub fn route(&self, e: &Event) -> Vec<Delivery> {
        let mut out: Vec<Delivery> = Vec::new();
        for r in &self.rules {
            if !r.matches(e) {
                continue;
            }
            for sink in &r.sinks {
                if out.iter().any(|d| &d.sink == sink) {
                    continue;
                }
                out.push(Delivery {
                    sink: sink.clone(),
                    text: self.text(r, e),
                });
            }
        }
        out
    }

    fn text(&self, r: &Rule, e: &Event) -> String {
        match &r.template {
            None => e.message.clone(),
            Some(t) => {
                let fields: Vec<(&str, String)> = flotilla_spec::template::NOTIFICATION_VARIABLES
                    .iter()
                    .filter_map(|name| {
                        let v = if *name == "fleet.name" {
                            Some(self.fleet.clone())
                        } else {
                            e.field(name)
                        };
                        v.map(|v| (*name, v))
                    })
                    .collect();
                t.expand_notification(|name| {
                    fields
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| v.as_str())
                })
            }
        }
    }
}

fn compile(r: &NotificationRule) -> Rule {
    Rule {
        triggers: r.triggers.clone(),
        placements: r.placements.clone(),
        clusters: r.clusters.clone(),
        sinks: r.sinks.clone(),
        template: r
            .template
            .as_deref()
            .and_then(|t| Template::parse_notification(t).ok()),
    }
}

impl Rule {
    fn matches(&self, e: &Event) -> bool {
        self.triggers.iter().any(|t| t == e.trigger.name())
            && filter(&self.placements, e.placement.as_deref())
            && filter(&self.clusters, e.cluster.as_deref())
    }
}

/// An empty filter matches anything; otherwise the value must exist and match a pattern.
fn filter(patterns: &[String], value: Option<&str>) -> bool {
    patterns.is_empty() || value.is_some_and(|v| patterns.iter().any(|p| glob(p, v)))
}

/// `*` matches any run of characters (also none), `?` one character; everything else itself.
/// Linear in practice: the classic greedy matcher with one backtrack point.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules(yaml_rules: Vec<NotificationRule>) -> Rules {
        Rules::new(
            "acme",
            &Notifications {
                rules: yaml_rules,
                ..Notifications::default()
            },
        )
    }

    fn rule(
        triggers: &[&str],
        placements: &[&str],
        clusters: &[&str],
        sinks: &[&str],
    ) -> NotificationRule {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect();
        NotificationRule {
            triggers: v(triggers),
            placements: v(placements),
            clusters: v(clusters),
            sinks: v(sinks),
            template: None,
        }
    }

    fn event(trigger: &str, placement: Option<&str>, cluster: Option<&str>) -> Event {
        Event {
            seq: 7,
            at: "2026-12-04T03:00:00.000Z".into(),
            trigger: crate::Trigger::parse(trigger).unwrap_or_default(),
            placement: placement.map(Into::into),
            cluster: cluster.map(Into::into),
            message: "canary failed".into(),
            ..Event::default()
        }
    }

    #[test]
    fn filters_by_trigger_placement_and_cluster_globs() {
        let r = rules(vec![
            rule(
                &["rolled-back", "rollout-failed"],
                &["web", "api-*"],
                &["prod-?"],
                &["pager"],
            ),
            rule(&["drift-found"], &[], &[], &["chat"]),
        ]);
        let sinks = |e: &Event| r.route(e).into_iter().map(|d| d.sink).collect::<Vec<_>>();
        assert_eq!(
            sinks(&event("rolled-back", Some("web"), Some("prod-1"))),
            ["pager"]
        );
        assert_eq!(
            sinks(&event("rolled-back", Some("api-eu"), Some("prod-2"))),
            ["pager"]
        );
        assert!(sinks(&event("rolled-back", Some("web"), Some("prod-10"))).is_empty());
        assert!(sinks(&event("rolled-back", Some("batch"), Some("prod-1"))).is_empty());
        assert!(sinks(&event("rollout-started", Some("web"), Some("prod-1"))).is_empty());
        // A filter on clusters never matches an event about no cluster.
        assert!(sinks(&event("rolled-back", Some("web"), None)).is_empty());
        // No filters: anything of that trigger, with or without a placement.
        assert_eq!(sinks(&event("drift-found", None, Some("x"))), ["chat"]);
    }

    #[test]
    fn a_sink_gets_an_event_once_with_the_first_rules_template() {
        let mut first = rule(&["rolled-back"], &[], &[], &["chat", "hook"]);
        first.template =
            Some("${fleet.name}: ${placement} rolled back on ${cluster} (${message})".into());
        let second = rule(&["rolled-back"], &[], &[], &["chat", "other"]);
        let r = rules(vec![first, second]);
        let got = r.route(&event("rolled-back", Some("web"), Some("prod-1")));
        assert_eq!(
            got,
            vec![
                Delivery {
                    sink: "chat".into(),
                    text: "acme: web rolled back on prod-1 (canary failed)".into()
                },
                Delivery {
                    sink: "hook".into(),
                    text: "acme: web rolled back on prod-1 (canary failed)".into()
                },
                Delivery {
                    sink: "other".into(),
                    text: "canary failed".into()
                },
            ]
        );
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("prod-*", "prod-eu-1"));
        assert!(glob("*-1", "prod-eu-1"));
        assert!(glob("p*d*1", "prod-eu-1"));
        assert!(!glob("prod-?", "prod-10"));
        assert!(!glob("prod", "prod-1"));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("a*b*c", "aXbYbZ"));
    }

    proptest! {
        #[test]
        fn a_name_matches_itself_and_star_matches_all(name in "[a-z0-9-]{0,20}") {
            prop_assert!(glob(&name, &name));
            prop_assert!(glob("*", &name));
            let q: String = name.chars().map(|_| '?').collect();
            prop_assert!(glob(&q, &name));
        }

        #[test]
        fn prefix_globs_agree_with_starts_with(prefix in "[a-z-]{0,5}", name in "[a-z-]{0,10}") {
            prop_assert_eq!(glob(&format!("{prefix}*"), &name), name.starts_with(&prefix));
        }
    }
}
