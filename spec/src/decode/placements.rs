//! Decoder of `placements:`: which bundles go to which clusters, their overrides (patches,
//! images, replica splits) and their rollout (batches, gates, windows).

use super::*;

pub(super) fn placement(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Placement> {
    let mut o = Obj::new(cx, node, path, "a placement")?;
    let n = o.req(cx, "name", name);
    let bundles = o.opt(cx, "bundles", names).unwrap_or_default();
    if bundles.is_empty()
        && let Some(n) = node
            .get("bundles")
            .filter(|n| matches!(&n.value, Value::Seq(items) if items.is_empty()))
    {
        cx.error(
            n.pos,
            &child(path, "bundles"),
            "a placement's \"bundles\" must list at least one bundle",
        );
    }
    let baseline = o.opt(cx, "baseline", string);
    let has_bundles = o.has("bundles");
    if has_bundles == baseline.is_some() {
        cx.error(
            o.pos(),
            o.path(),
            "a placement needs exactly one of \"bundles\" and \"baseline\"",
        );
    }
    let clusters = o.req(cx, "clusters", selector);
    let overrides = o.list(cx, "overrides", override_);
    let replicas = o.opt(cx, "replicas", replica_split);
    let rollout = o.opt(cx, "rollout", rollout).unwrap_or_default();
    let prune = o.opt(cx, "prune", bool_);
    let force_conflicts = o.opt(cx, "forceConflicts", bool_).unwrap_or(true);
    let team = o.opt(cx, "team", name);
    o.finish(cx);
    Some(Placement {
        name: n?,
        bundles,
        baseline,
        clusters: clusters?,
        overrides,
        replicas,
        rollout,
        prune,
        force_conflicts,
        team,
    })
}

fn override_(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Override> {
    let mut o = Obj::new(cx, node, path, "an override")?;
    let clusters = o.req(cx, "clusters", selector);
    let bundle = o.opt(cx, "bundle", string);
    let patches = o.list(cx, "patches", patch);
    let images = o.list(cx, "images", image_override);
    let variables = o.opt(cx, "variables", string_map).unwrap_or_default();
    o.finish(cx);
    Some(Override {
        clusters: clusters?,
        bundle,
        patches,
        images,
        variables,
    })
}

fn patch(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Patch> {
    let mut o = Obj::new(cx, node, path, "a patch")?;
    let target = o.req(cx, "target", target);
    let json_patch = o.opt(cx, "jsonPatch", |cx, n, p| {
        Some(list(cx, n, p, json_patch_op))
    });
    let merge_patch = o.opt(cx, "mergePatch", |cx, n, p| {
        if !matches!(n.value, Value::Map(_)) {
            cx.error(
                n.pos,
                p,
                format!(
                    "expected a merge patch (a mapping), found {}",
                    n.type_name()
                ),
            );
            return None;
        }
        Some(n.to_json())
    });
    if o.has("jsonPatch") == o.has("mergePatch") {
        cx.error(
            o.pos(),
            o.path(),
            "a patch needs exactly one of \"jsonPatch\" and \"mergePatch\"",
        );
    }
    o.finish(cx);
    Some(Patch {
        target: target?,
        json_patch,
        merge_patch,
    })
}

fn target(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Target> {
    let mut o = Obj::new(cx, node, path, "a patch target")?;
    let t = Target {
        group: o.opt(cx, "group", string),
        version: o.opt(cx, "version", string),
        kind: o.opt(cx, "kind", string),
        name: o.opt(cx, "name", string),
        namespace: o.opt(cx, "namespace", string),
        label_selector: o.opt(cx, "labelSelector", |cx, n, p| {
            checked(cx, n, p, |s| {
                crate::selector::parse_label_selector(s).map(|_| s.to_string())
            })
        }),
    };
    o.finish(cx);
    Some(t)
}

fn json_patch_op(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<JsonPatchOp> {
    let mut o = Obj::new(cx, node, path, "a JSON Patch operation")?;
    use JsonPatchOpKind::*;
    let op = o.req(cx, "op", |cx, n, p| {
        enumeration(
            cx,
            n,
            p,
            &[
                ("add", Add),
                ("remove", Remove),
                ("replace", Replace),
                ("move", Move),
                ("copy", Copy),
                ("test", Test),
            ],
        )
    });
    let pointer = |cx: &mut Cx, n: &Node, p: &Ptr<'_>| {
        checked(cx, n, p, |s| {
            if s.is_empty() || s.starts_with('/') {
                Ok(s.to_string())
            } else {
                Err(format!(
                    "expected a JSON pointer starting with \"/\", found {s:?}"
                ))
            }
        })
    };
    let ptr = o.req(cx, "path", pointer);
    let from = o.opt(cx, "from", pointer);
    let has_value = o.entries.iter().any(|(k, _)| k.name == "value");
    let value = o.lookup("value").map(|n| n.to_json());
    if let Some(op) = op {
        let needs_value = matches!(op, Add | Replace | Test);
        let needs_from = matches!(op, Move | Copy);
        if needs_value && !has_value {
            cx.error(
                o.pos(),
                o.path(),
                format!("JSON Patch op {:?} needs a \"value\"", op_name(op)),
            );
        }
        if needs_from && from.is_none() {
            cx.error(
                o.pos(),
                o.path(),
                format!("JSON Patch op {:?} needs a \"from\"", op_name(op)),
            );
        }
    }
    o.finish(cx);
    Some(JsonPatchOp {
        op: op?,
        path: ptr?,
        from,
        value,
    })
}

fn op_name(op: JsonPatchOpKind) -> &'static str {
    match op {
        JsonPatchOpKind::Add => "add",
        JsonPatchOpKind::Remove => "remove",
        JsonPatchOpKind::Replace => "replace",
        JsonPatchOpKind::Move => "move",
        JsonPatchOpKind::Copy => "copy",
        JsonPatchOpKind::Test => "test",
    }
}

fn image_override(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<ImageOverride> {
    let mut o = Obj::new(cx, node, path, "an image override")?;
    let n = o.req(cx, "name", string);
    let new_name = o.opt(cx, "newName", string);
    let tag = o.opt(cx, "tag", |cx, n, p| {
        // Tags such as 1.8 read as numbers; take them as written only when quoted.
        string(cx, n, p)
    });
    let digest = o.opt(cx, "digest", |cx, n, p| {
        checked(cx, n, p, |s| {
            let ok = s.split_once(':').is_some_and(|(alg, hex)| {
                !alg.is_empty() && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
            });
            if ok {
                Ok(s.to_string())
            } else {
                Err(format!("expected a digest like sha256:<hex>, found {s:?}"))
            }
        })
    });
    if new_name.is_none()
        && tag.is_none()
        && digest.is_none()
        && !o.has("newName")
        && !o.has("tag")
        && !o.has("digest")
    {
        cx.error(
            o.pos(),
            o.path(),
            "an image override needs at least one of \"newName\", \"tag\" and \"digest\"",
        );
    }
    o.finish(cx);
    Some(ImageOverride {
        name: n?,
        new_name,
        tag,
        digest,
    })
}

fn replica_split(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<ReplicaSplit> {
    let mut o = Obj::new(cx, node, path, "replicas")?;
    let bundle = o.req(cx, "bundle", string);
    let workload = o.req(cx, "workload", |cx, n, p| {
        let mut w = Obj::new(cx, n, p, "a workload reference")?;
        let kind = w.req(cx, "kind", string);
        let nm = w.req(cx, "name", string);
        let namespace = w.opt(cx, "namespace", name);
        w.finish(cx);
        Some(WorkloadRef {
            kind: kind?,
            name: nm?,
            namespace,
        })
    });
    let total = o.req(cx, "total", total);
    let burst_pool = o.opt(cx, "burstPool", string);
    let unreachable_grace = o
        .opt(cx, "unreachableGrace", duration)
        .unwrap_or_else(default_unreachable_grace);
    o.finish(cx);
    Some(ReplicaSplit {
        bundle: bundle?,
        workload: workload?,
        total: total?,
        burst_pool,
        unreachable_grace,
    })
}

/// `total`: an integer, or `{prometheus: {url, query}, perReplica, min, max, interval}`.
fn total(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Total> {
    if !matches!(node.value, Value::Map(_)) {
        if !matches!(node.value, Value::Int(_)) {
            cx.error(
                node.pos,
                path,
                format!(
                    "expected an integer from 0 to 1000000 or a demand mapping \
                     ({{prometheus: {{url, query}}, perReplica, min, max}}), found {}",
                    node.type_name()
                ),
            );
            return None;
        }
        return uint(cx, node, path, 0, 1_000_000).map(Total::Fixed);
    }
    let mut o = Obj::new(cx, node, path, "a replica demand")?;
    let prometheus = o.req(cx, "prometheus", |cx, n, p| {
        let mut g = Obj::new(cx, n, p, "a Prometheus query")?;
        let url = g.req(cx, "url", |cx, n, p| checked(cx, n, p, check_http_url));
        let query = g.req(cx, "query", string);
        g.finish(cx);
        Some(DemandQuery {
            url: url?,
            query: query?,
        })
    });
    let per_replica = o.req(cx, "perReplica", |cx, n, p| {
        let v = number(cx, n, p)?;
        if v <= 0.0 {
            cx.error(
                n.pos,
                p,
                format!("\"perReplica\" must be greater than 0, found {v}"),
            );
            return None;
        }
        Some(v)
    });
    let min = o
        .opt(cx, "min", |cx, n, p| uint(cx, n, p, 0, 1_000_000))
        .unwrap_or(0);
    let max = o.req(cx, "max", |cx, n, p| uint(cx, n, p, 1, 1_000_000));
    let interval = o
        .opt(cx, "interval", duration)
        .unwrap_or_else(default_demand_interval);
    if let Some(hi) = max
        && min > hi
    {
        cx.error(
            o.pos(),
            o.path(),
            format!("\"min\" ({min}) is greater than \"max\" ({hi})"),
        );
    }
    if interval.value < std::time::Duration::from_secs(1) {
        cx.error(
            o.pos(),
            o.path(),
            format!("\"interval\" must be at least 1s, found {}", interval.text),
        );
    }
    o.finish(cx);
    Some(Total::Demand(Demand {
        prometheus: prometheus?,
        per_replica: per_replica?,
        min,
        max: max?,
        interval,
    }))
}

fn rollout(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Rollout> {
    let mut o = Obj::new(cx, node, path, "a rollout")?;
    let d = Rollout::default();
    let r = Rollout {
        batches: o.list(cx, "batches", batch),
        max_concurrent: o
            .opt(cx, "maxConcurrent", |cx, n, p| uint(cx, n, p, 1, 100_000))
            .unwrap_or(d.max_concurrent),
        health_deadline: o
            .opt(cx, "healthDeadline", duration)
            .unwrap_or(d.health_deadline),
        soak: o.opt(cx, "soak", duration).unwrap_or(d.soak),
        max_failures: o
            .opt(cx, "maxFailures", |cx, n, p| uint(cx, n, p, 0, 100_000))
            .unwrap_or(d.max_failures),
        on_failure: o
            .opt(cx, "onFailure", |cx, n, p| {
                enumeration(
                    cx,
                    n,
                    p,
                    &[
                        ("rollback", OnFailure::Rollback),
                        ("pause", OnFailure::Pause),
                    ],
                )
            })
            .unwrap_or(d.on_failure),
        gates: o.list(cx, "gates", gate),
        windows: o.list(cx, "windows", window),
    };
    o.finish(cx);
    Some(r)
}

fn batch(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Batch> {
    let mut o = Obj::new(cx, node, path, "a batch")?;
    let clusters = o.opt(cx, "clusters", selector);
    let percent = o.opt(cx, "percent", |cx, n, p| uint(cx, n, p, 1, 100));
    let soak = o.opt(cx, "soak", duration);
    let verify = o.opt(cx, "verify", |cx, n, p| {
        let mut v = Obj::new(cx, n, p, "a verification")?;
        let workflow = v.req(cx, "workflow", name);
        v.finish(cx);
        Some(Verify {
            workflow: workflow?,
        })
    });
    if o.has("clusters") == o.has("percent") {
        cx.error(
            o.pos(),
            o.path(),
            "a batch needs exactly one of \"clusters\" and \"percent\"",
        );
    }
    o.finish(cx);
    Some(Batch {
        clusters,
        percent,
        soak,
        verify,
    })
}

fn gate(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Gate> {
    let mut o = Obj::new(cx, node, path, "a gate")?;
    let prometheus = o.req(cx, "prometheus", |cx, n, p| {
        let mut g = Obj::new(cx, n, p, "a Prometheus gate")?;
        let url = g.req(cx, "url", |cx, n, p| checked(cx, n, p, check_http_url));
        let query = g.req(cx, "query", string);
        let min = g.opt(cx, "min", number);
        let max = g.opt(cx, "max", number);
        if !g.has("min") && !g.has("max") {
            cx.error(
                g.pos(),
                g.path(),
                "a Prometheus gate needs \"min\", \"max\" or both",
            );
        }
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            cx.error(
                g.pos(),
                g.path(),
                format!("\"min\" ({lo}) is greater than \"max\" ({hi})"),
            );
        }
        g.finish(cx);
        Some(PrometheusGate {
            url: url?,
            query: query?,
            min,
            max,
        })
    });
    o.finish(cx);
    Some(Gate {
        prometheus: prometheus?,
    })
}

fn check_http_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(s.to_string()),
        _ => Err(format!("expected an http:// or https:// URL, found {s:?}")),
    }
}

fn window(cx: &mut Cx, node: &Node, path: &Ptr<'_>) -> Option<Window> {
    let mut o = Obj::new(cx, node, path, "a window")?;
    let schedule = o.req(cx, "schedule", schedule);
    let dur = o.req(cx, "duration", |cx, n, p| {
        let d = duration(cx, n, p)?;
        if d.value.is_zero() {
            cx.error(n.pos, p, "a window's duration must be longer than 0s");
        }
        Some(d)
    });
    let timezone = o.opt(cx, "timezone", timezone);
    o.finish(cx);
    Some(Window {
        schedule: schedule?,
        duration: dur?,
        timezone,
    })
}
