//! Decoders of the scheduled and elastic parts of fleet.yaml: burst pools, workflows (with
//! their completion rules) and backup policies.

use super::*;

pub(super) fn burst_pool(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<BurstPool> {
    let mut o = Obj::new(cx, node, path, "a burst pool")?;
    let n = o.req(cx, "name", name);
    let clusters = o.req(cx, "clusters", selector);
    let max_replicas = o.req(cx, "maxReplicas", |cx, n, p| uint(cx, n, p, 1, 1_000_000));
    let cooldown = o
        .opt(cx, "cooldown", duration)
        .unwrap_or_else(default_cooldown);
    o.finish(cx);
    Some(BurstPool {
        name: n?,
        clusters: clusters?,
        max_replicas: max_replicas?,
        cooldown,
    })
}

pub(super) fn workflow(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Workflow> {
    let mut o = Obj::new(cx, node, path, "a workflow")?;
    let n = o.req(cx, "name", name);
    let sched = o.req(cx, "schedule", schedule);
    let tz = o.opt(cx, "timezone", timezone);
    let clusters = o.req(cx, "clusters", selector);
    let run = o
        .opt(cx, "run", |cx, n, p| {
            enumeration(cx, n, p, &[("one", RunMode::One), ("each", RunMode::Each)])
        })
        .unwrap_or_default();
    let template = o.req(cx, "template", repo_path);
    let concurrency = o
        .opt(cx, "concurrency", |cx, n, p| {
            enumeration(
                cx,
                n,
                p,
                &[
                    ("allow", Concurrency::Allow),
                    ("forbid", Concurrency::Forbid),
                    ("replace", Concurrency::Replace),
                ],
            )
        })
        .unwrap_or_default();
    let history = o
        .opt(cx, "history", |cx, n, p| uint(cx, n, p, 0, 1000))
        .unwrap_or_else(default_history);
    let suspend = o.opt(cx, "suspend", bool_).unwrap_or(false);
    let starting_deadline = o.opt(cx, "startingDeadline", duration);
    let max_concurrent = o.opt(cx, "maxConcurrent", |cx, n, p| uint(cx, n, p, 1, 10_000));
    let timeout = o.opt(cx, "timeout", duration);
    let completion = o.opt(cx, "completion", completion);
    if max_concurrent.is_some() && run != RunMode::Each {
        cx.error(
            o.pos(),
            o.path(),
            "\"maxConcurrent\" applies to \"run: each\" only",
        );
    }
    o.finish(cx);
    Some(Workflow {
        name: n?,
        schedule: sched?,
        timezone: tz,
        clusters: clusters?,
        run,
        template: template?,
        concurrency,
        history,
        suspend,
        starting_deadline,
        max_concurrent,
        timeout,
        completion,
    })
}

fn completion(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Completion> {
    let mut o = Obj::new(cx, node, path, "a completion rule")?;
    let succeeded = o.req(cx, "succeeded", field_match);
    let failed = o.req(cx, "failed", field_match);
    o.finish(cx);
    Some(Completion {
        succeeded: succeeded?,
        failed: failed?,
    })
}

fn field_match(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<FieldMatch> {
    let mut o = Obj::new(cx, node, path, "a field match")?;
    let field = o.req(cx, "path", |cx, n, p| {
        let s = string(cx, n, p)?;
        if s.is_empty() || s.split('.').any(str::is_empty) {
            cx.error(
                n.pos,
                p,
                format!("expected a dot-separated field path like status.phase, found {s:?}"),
            );
            return None;
        }
        Some(s)
    });
    let values = o.req(cx, "values", |cx, n, p| {
        let v = list(cx, n, p, string);
        if v.is_empty() {
            cx.error(n.pos, p, "expected at least one value");
        }
        Some(v)
    });
    o.finish(cx);
    Some(FieldMatch {
        path: field?,
        values: values?,
    })
}

fn resource_filter(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<ResourceFilter> {
    let mut o = Obj::new(cx, node, path, "a resource filter")?;
    let namespaces = o
        .opt(cx, "namespaces", |cx, n, p| Some(list(cx, n, p, name)))
        .unwrap_or_default();
    let kinds = o.opt(cx, "kinds", names).unwrap_or_default();
    o.finish(cx);
    Some(ResourceFilter { namespaces, kinds })
}

pub(super) fn backup(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Backup> {
    let mut o = Obj::new(cx, node, path, "a backup")?;
    let n = o.req(cx, "name", name);
    let sched = o.req(cx, "schedule", schedule);
    let tz = o.opt(cx, "timezone", timezone);
    let clusters = o.req(cx, "clusters", selector);
    let include = o.opt(cx, "include", resource_filter).unwrap_or_default();
    let exclude = o.opt(cx, "exclude", resource_filter).unwrap_or_default();
    let retain = o.req(cx, "retain", |cx, n, p| {
        let d = duration(cx, n, p)?;
        if d.value.is_zero() {
            cx.error(n.pos, p, "\"retain\" must be longer than 0s");
        }
        Some(d)
    });
    let store = o.req(cx, "store", |cx, n, p| checked(cx, n, p, check_store));
    let encrypt = o.opt(cx, "encrypt", backup_encryption);
    let status = o.opt(cx, "status", bool_).unwrap_or(false);
    o.finish(cx);
    Some(Backup {
        name: n?,
        schedule: sched?,
        timezone: tz,
        clusters: clusters?,
        include,
        exclude,
        retain: retain?,
        store: store?,
        encrypt,
        status,
    })
}

/// `file:///absolute/path` or `s3://bucket[/prefix]` (bucket names as S3 allows them).
pub fn check_store(s: &str) -> Result<String, String> {
    let bad =
        || format!("expected a store URL file:///absolute/path or s3://bucket/prefix, found {s:?}");
    match s.split_once("://") {
        Some(("file", rest)) if rest.starts_with('/') => {
            if rest.split('/').any(|c| c == "..") {
                return Err(format!("store {s:?}: the path must not contain \"..\""));
            }
            Ok(s.to_string())
        }
        Some(("s3", rest)) if !rest.is_empty() => {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-')
                })
                && !bucket.starts_with(['.', '-'])
                && !bucket.ends_with(['.', '-']);
            if !bucket_ok {
                return Err(format!(
                    "store {s:?}: invalid bucket name {bucket:?} (3 to 63 lowercase letters, digits, '.' and '-')"
                ));
            }
            if prefix.split('/').any(|c| c == "." || c == "..") {
                return Err(format!(
                    "store {s:?}: the prefix must not contain \".\" or \"..\""
                ));
            }
            Ok(s.to_string())
        }
        _ => Err(bad()),
    }
}

fn backup_encryption(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<BackupEncryption> {
    let mut o = Obj::new(cx, node, path, "a backup encryption")?;
    let age = o.req(cx, "age", |cx, n, p| {
        let items = list(cx, n, p, |cx, n, p| {
            checked(cx, n, p, |s| {
                s.parse::<age::x25519::Recipient>()
                    .map(|_| s.to_string())
                    .map_err(|e| format!("invalid age X25519 recipient {s:?}: {e}"))
            })
        });
        let given = match &n.value {
            Value::Seq(v) => v.len(),
            _ => 0,
        };
        if given == 0 {
            cx.error(n.pos, p, "\"age\" needs at least one recipient");
            return None;
        }
        (items.len() == given).then_some(items)
    });
    o.finish(cx);
    Some(BackupEncryption { age: age? })
}
