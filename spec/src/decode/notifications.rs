//! The `notifications:` section: sinks (which name their secrets, never hold them) and rules
//! (triggers, placement and cluster filters, sinks, a `${...}` message template). Rules are
//! checked against the sinks declared beside them, so an unknown sink, trigger or template
//! variable is an error at its line.

use super::*;
use crate::template::Template;

pub(super) fn notifications(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Notifications> {
    let mut o = Obj::new(cx, node, path, "notifications")?;
    let sinks = o.list(cx, "sinks", sink);
    let dedup_window = o
        .opt(cx, "dedupWindow", duration)
        .unwrap_or_else(default_dedup_window);
    // Sinks that failed to decode are not reported again as unknown in the rules.
    let broken = cx
        .broken
        .get(&child(path, "sinks").to_string())
        .cloned()
        .unwrap_or_default();
    let sinks_path = child(path, "sinks");
    // Source index of each decoded sink (some may have been dropped).
    let kept = cx.kept.get(&sinks_path.to_string()).cloned();
    let mut known: Vec<&str> = Vec::with_capacity(sinks.len());
    for (i, s) in sinks.iter().enumerate() {
        if known.contains(&s.name.as_str()) {
            let at = kept.as_ref().and_then(|k| k.get(i).copied()).unwrap_or(i);
            let pos = sinks_node(node)
                .and_then(|n| seq_item(n, at))
                .map(|n| n.pos)
                .unwrap_or(node.pos);
            cx.error(
                pos,
                &index(&sinks_path, at),
                format!("duplicate sink name {:?}", s.name),
            );
        }
        known.push(&s.name);
    }
    let rules = o.list(cx, "rules", |cx, n, p| rule(cx, n, p, &known, &broken));
    o.finish(cx);
    Some(Notifications {
        sinks,
        rules,
        dedup_window,
    })
}

fn sinks_node(node: &Node) -> Option<&Node> {
    node.get("sinks").map(|n| &**n)
}

fn seq_item(node: &Node, i: usize) -> Option<&Node> {
    match &node.value {
        Value::Seq(items) => items.get(i).map(|n| &**n),
        _ => None,
    }
}

/// A secret's name: a DNS label, so it is a plain file name in the secrets directory and maps
/// to one environment variable.
fn secret_name(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<String> {
    checked(cx, node, path, |s| {
        types::check_name(s).map(|_| s.to_string()).map_err(|_| {
            format!(
                "invalid secret name {s:?}: expected 1-63 lowercase letters, digits and '-' (a secret is named, never given or located by path; see docs/notifications.md)"
            )
        })
    })
}

fn url(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<String> {
    checked(cx, node, path, |s| {
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
                Ok(s.to_string())
            }
            _ => Err(format!("expected an http:// or https:// URL, found {s:?}")),
        }
    })
}

fn sink(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<NotificationSink> {
    let mut o = Obj::new(cx, node, path, "a notification sink")?;
    let n = o.req(cx, "name", name);
    let kind = o.req(cx, "type", |cx, n, p| {
        enumeration(
            cx,
            n,
            p,
            &[
                ("webhook", SinkKind::Webhook),
                ("slack", SinkKind::Slack),
                ("kubernetes-events", SinkKind::KubernetesEvents),
            ],
        )
    });
    let url_value = o.opt(cx, "url", url);
    let url_secret = o.opt(cx, "urlSecret", secret_name);
    let secret = o.opt(cx, "secret", secret_name);
    let (has_url, has_url_secret, has_secret) = (o.has("url"), o.has("urlSecret"), o.has("secret"));
    let mut ok = true;
    match kind {
        Some(SinkKind::Webhook) => {
            if has_url == has_url_secret {
                cx.error(
                    o.pos(),
                    o.path(),
                    "a webhook sink needs exactly one of \"url\" and \"urlSecret\"",
                );
                ok = false;
            }
            if !has_secret {
                cx.error(
                    o.pos(),
                    o.path(),
                    "a webhook sink needs \"secret\": the secret holding its HMAC-SHA256 key",
                );
                ok = false;
            }
        }
        Some(SinkKind::Slack) => {
            if has_url || has_url_secret {
                cx.error(
                    o.pos(),
                    o.path(),
                    "a slack sink takes its URL from \"secret\" only (an incoming-webhook URL is a credential)",
                );
                ok = false;
            }
            if !has_secret {
                cx.error(
                    o.pos(),
                    o.path(),
                    "a slack sink needs \"secret\": the secret holding its incoming-webhook URL",
                );
                ok = false;
            }
        }
        Some(SinkKind::KubernetesEvents) if has_url || has_url_secret || has_secret => {
            cx.error(
                o.pos(),
                o.path(),
                "a kubernetes-events sink takes no \"url\", \"urlSecret\" or \"secret\" (it posts through the daemon's cluster connections)",
            );
            ok = false;
        }
        Some(SinkKind::KubernetesEvents) | None => {}
    }
    o.finish(cx);
    if !ok {
        return None;
    }
    Some(NotificationSink {
        name: n?,
        kind: kind?,
        url: url_value,
        url_secret,
        secret,
    })
}

/// A placement or cluster name, or a glob of one (`*`, `?`).
fn pattern(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<String> {
    checked(cx, node, path, |s| {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'*' | b'?')
            });
        if ok {
            Ok(s.to_string())
        } else {
            Err(format!(
                "invalid name or glob {s:?}: expected lowercase letters, digits, '-', '*' and '?'"
            ))
        }
    })
}

fn rule(
    cx: &mut Cx,
    node: &Node,
    path: &Ptr<'_>,
    sinks: &[&str],
    broken: &[String],
) -> Option<NotificationRule> {
    let mut o = Obj::new(cx, node, path, "a notification rule")?;
    let triggers = o.req(cx, "triggers", |cx, n, p| {
        let items = list(cx, n, p, |cx, n, p| {
            checked(cx, n, p, |s| {
                if NOTIFICATION_TRIGGERS.contains(&s) {
                    Ok(s.to_string())
                } else {
                    let hint = suggestion(s, NOTIFICATION_TRIGGERS.iter().copied());
                    Err(format!(
                        "unknown trigger {s:?} (known: {}){hint}",
                        NOTIFICATION_TRIGGERS.join(", ")
                    ))
                }
            })
        });
        nonempty(cx, n, p, items, "\"triggers\" needs at least one trigger")
    });
    let placements = o.list(cx, "placements", pattern);
    let clusters = o.list(cx, "clusters", pattern);
    let rule_sinks = o.req(cx, "sinks", |cx, n, p| {
        let items = list(cx, n, p, |cx, n, p| {
            let s = string(cx, n, p)?;
            if sinks.contains(&s.as_str()) {
                return Some(s);
            }
            if !broken.contains(&s) {
                let hint = suggestion(&s, sinks.iter().copied());
                let known = if sinks.is_empty() {
                    "none declared".to_string()
                } else {
                    format!("known: {}", sinks.join(", "))
                };
                cx.error(n.pos, p, format!("unknown sink {s:?} ({known}){hint}"));
            }
            None
        });
        nonempty(cx, n, p, items, "\"sinks\" needs at least one sink")
    });
    let template = o.opt(cx, "template", |cx, n, p| {
        checked(cx, n, p, |s| {
            Template::parse_notification(s).map(|_| s.to_string())
        })
    });
    o.finish(cx);
    Some(NotificationRule {
        triggers: triggers?,
        placements,
        clusters,
        sinks: rule_sinks?,
        template,
    })
}

/// `items` when the list node held items and every one decoded; an empty list is an error.
fn nonempty(
    cx: &mut Cx,
    node: &Node,
    path: &Ptr<'_>,
    items: Vec<String>,
    empty: &str,
) -> Option<Vec<String>> {
    let given = match &node.value {
        Value::Seq(v) => v.len(),
        _ => return None,
    };
    if given == 0 {
        cx.error(node.pos, path, empty);
        return None;
    }
    (items.len() == given).then_some(items)
}
