//! The Deployment and ReplicaSet controllers, simplified: a Deployment owns one ReplicaSet
//! per pod template (named `DEPLOYMENT-HASH`, labelled `pod-template-hash`), the current one
//! scaled to `spec.replicas` and older ones to 0; a ReplicaSet owns `spec.replicas` Pods
//! (`RS-xxxxx`). Pods are stored objects (get, list, watch, delete like any other), created
//! directly in their final simulated state: Running and Ready, Running and not Ready (image
//! held by `--unready-images`), or CrashLoopBackOff (`--crash-images`). No scheduler: a Pod's
//! `nodeName` is picked by a hash of its name; capacity is accounted, not enforced.

use serde_json::{Map, Value, json};

use crate::cluster::{Cluster, ResKey, State, now_rfc3339};

/// The alphabet Kubernetes uses for generated name suffixes (no vowels, no confusables).
const SAFE: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn safe(mut h: u64, len: usize) -> String {
    let mut s = String::with_capacity(len);
    for _ in 0..len {
        s.push(char::from(SAFE[(h % SAFE.len() as u64) as usize]));
        h /= SAFE.len() as u64;
    }
    s
}

/// The `pod-template-hash` of a pod template.
pub fn template_hash(template: &Value) -> String {
    safe(
        fnv(&[serde_json::to_string(template)
            .unwrap_or_default()
            .as_bytes()]),
        10,
    )
}

fn key(plural: &str) -> ResKey {
    let group = if plural == "pods" { "" } else { "apps" };
    (group.to_string(), "v1".to_string(), plural.to_string())
}

fn owner_ref(kind: &str, obj: &Value) -> Value {
    json!({"apiVersion": obj["apiVersion"], "kind": kind, "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true})
}

fn owned_by(obj: &Value, uid: &Value) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == *uid))
}

/// The stored objects of `plural` in `ns` whose name starts with `prefix`, parsed.
fn with_prefix(st: &State, plural: &str, ns: &str, prefix: &str) -> Vec<Value> {
    let Some(objs) = st.objects.get(&key(plural)) else {
        return Vec::new();
    };
    objs.range((ns.to_string(), prefix.to_string())..)
        .take_while(|((ons, n), _)| ons == ns && n.starts_with(prefix))
        .map(|(_, t)| crate::cluster::load(t))
        .collect()
}

fn with_label(labels: &Value, k: &str, v: &str) -> Value {
    let mut m = labels.as_object().cloned().unwrap_or_default();
    m.insert(k.to_string(), json!(v));
    Value::Object(m)
}

/// A Deployment's rollout stuck on a new template that never becomes ready, as the real
/// controller leaves it: the old ReplicaSets keep the Pods `maxUnavailable` allows to keep,
/// the new one has what `maxSurge` allows on top.
#[derive(Debug, Clone, PartialEq)]
pub struct Stuck {
    /// The new ReplicaSet's name.
    pub rs_name: String,
    /// Ready Pods kept in older ReplicaSets.
    pub old: i64,
    /// Pods of the new ReplicaSet (never ready).
    pub new: i64,
    /// Whether the Deployment still has minimum availability.
    pub available: bool,
}

/// `maxSurge` / `maxUnavailable` of `desired` replicas: an integer, or a percentage rounded
/// up (surge) or down (unavailable), 25% when unset, as in Kubernetes.
fn rolling_value(v: &Value, desired: i64, round_up: bool) -> i64 {
    match v {
        Value::Number(n) => n.as_i64().unwrap_or(0).max(0),
        Value::String(s) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
            let x = desired * pct;
            if round_up { (x + 99) / 100 } else { x / 100 }
        }
        _ => {
            let x = desired * 25;
            if round_up { (x + 99) / 100 } else { x / 100 }
        }
    }
}

/// Brings a Deployment's ReplicaSets and their Pods in line with its spec. Returns how the
/// rollout is stuck when the new template is held unready and older Pods are kept.
pub fn sync_deployment(
    c: &Cluster,
    st: &mut State,
    deploy: &Value,
    held: bool,
    crashed: bool,
) -> Option<Stuck> {
    let rs_def = st.def("apps", "v1", "replicasets")?.clone();
    let ns = deploy["metadata"]["namespace"].as_str()?;
    let name = deploy["metadata"]["name"].as_str()?;
    let uid = &deploy["metadata"]["uid"];
    let template = &deploy["spec"]["template"];
    let hash = template_hash(template);
    let rs_name = format!("{name}-{hash}");
    let desired = deploy["spec"]["replicas"].as_i64().unwrap_or(1);
    let mut replicas = desired;
    let mut owned: Vec<Value> = with_prefix(st, "replicasets", ns, &format!("{name}-"))
        .into_iter()
        .filter(|rs| owned_by(rs, uid))
        .collect();
    let revision_of = |rs: &Value| {
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
            .as_str()
            .and_then(|r| r.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let revision = owned.iter().map(revision_of).max().unwrap_or(0);
    // Newest first: a stuck rollout keeps the most recent ready Pods.
    owned.sort_by_key(|rs| std::cmp::Reverse(revision_of(rs)));
    // A RollingUpdate whose new Pods never become ready keeps old ready Pods down to
    // `desired - maxUnavailable`, and surges the new ReplicaSet to `desired + maxSurge`
    // Pods in all. Otherwise (Recreate, ready images) older templates scale to zero.
    let strategy = &deploy["spec"]["strategy"];
    let rolling = strategy["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate";
    let mut keep = 0;
    let mut stuck = None;
    if held && rolling {
        let surge = rolling_value(&strategy["rollingUpdate"]["maxSurge"], desired, true);
        let mut unavailable =
            rolling_value(&strategy["rollingUpdate"]["maxUnavailable"], desired, false);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        let min_available = (desired - unavailable).max(0);
        let old_ready: i64 = owned
            .iter()
            .filter(|rs| rs["metadata"]["name"] != rs_name.as_str())
            .map(|rs| rs["status"]["availableReplicas"].as_i64().unwrap_or(0))
            .sum();
        keep = old_ready.min(min_available);
        if keep > 0 {
            replicas = desired.min(desired + surge - keep);
            stuck = Some(Stuck {
                rs_name: rs_name.clone(),
                old: keep,
                new: replicas,
                available: keep >= min_available,
            });
        }
    }
    // Older templates' ReplicaSets scale down (to zero, or to what a stuck rollout keeps).
    let mut left = keep;
    for rs in &owned {
        if rs["metadata"]["name"] == rs_name.as_str() {
            continue;
        }
        let ready = rs["status"]["availableReplicas"].as_i64().unwrap_or(0);
        let target = ready.min(left);
        left -= target;
        if rs["spec"]["replicas"] != target {
            let mut new = rs.clone();
            new["spec"]["replicas"] = json!(target);
            new["metadata"]["generation"] =
                json!(rs["metadata"]["generation"].as_i64().unwrap_or(1) + 1);
            new["status"] =
                crate::workload::status_for("replicasets", &new, false, false, false, 0);
            let rs_n = rs["metadata"]["name"].as_str().unwrap_or("").to_string();
            let stored = c.commit(st, &rs_def, ns, &rs_n, Some(rs), new, false);
            sync_replicaset(c, st, &stored, false, false);
        }
    }
    let current = owned
        .iter()
        .find(|rs| rs["metadata"]["name"] == rs_name.as_str());
    let mut labels = template["metadata"]["labels"].clone();
    labels = with_label(&labels, "pod-template-hash", &hash);
    let mut rs_template = template.clone();
    rs_template["metadata"]["labels"] = labels.clone();
    let selector = json!({"matchLabels": with_label(
        &deploy["spec"]["selector"]["matchLabels"], "pod-template-hash", &hash)});
    // The ReplicaSet is written with its status at once (its Pods are created right after):
    // one version instead of two keeps the watch history small at fleet scale.
    let with_status = |mut rs: Value, generation: i64| {
        rs["metadata"]["generation"] = json!(generation);
        rs["status"] = crate::workload::status_for("replicasets", &rs, held, crashed, false, 0);
        rs
    };
    let stored = match current {
        Some(rs) if rs["spec"]["replicas"] == replicas => rs.clone(),
        Some(rs) => {
            let mut new = rs.clone();
            new["spec"]["replicas"] = json!(replicas);
            let generation = rs["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            c.commit(
                st,
                &rs_def,
                ns,
                &rs_name,
                Some(rs),
                with_status(new, generation),
                false,
            )
        }
        None => {
            let new = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                    "annotations": {"deployment.kubernetes.io/revision": (revision + 1).to_string()},
                    "ownerReferences": [owner_ref("Deployment", deploy)]},
                "spec": {"replicas": replicas, "selector": selector, "template": rs_template}});
            c.commit(st, &rs_def, ns, &rs_name, None, with_status(new, 1), false)
        }
    };
    sync_replicaset(c, st, &stored, held, crashed);
    stuck
}

/// Brings a ReplicaSet's Pods in line with its `spec.replicas` and the simulated readiness.
pub fn sync_replicaset(
    c: &Cluster,
    st: &mut State,
    rs: &Value,
    held: bool,
    crashed: bool,
) -> Option<()> {
    let pod_def = st.def("", "v1", "pods")?.clone();
    let ns = rs["metadata"]["namespace"].as_str()?;
    let name = rs["metadata"]["name"].as_str()?;
    let uid = &rs["metadata"]["uid"];
    let replicas = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let wanted: Vec<String> = (0..replicas)
        .map(|i| {
            format!(
                "{name}-{}",
                safe(fnv(&[name.as_bytes(), &i.to_le_bytes()]), 5)
            )
        })
        .collect();
    let nodes: Vec<String> = st
        .objects
        .get(&key_nodes())
        .map(|m| m.keys().map(|(_, n)| n.clone()).collect())
        .unwrap_or_default();
    let existing: Vec<Value> = with_prefix(st, "pods", ns, &format!("{name}-"))
        .into_iter()
        .filter(|p| owned_by(p, uid))
        .collect();
    for pod in &existing {
        let pname = pod["metadata"]["name"].as_str().unwrap_or("");
        if !wanted.iter().any(|w| w == pname) {
            let pname = pname.to_string();
            c.commit(st, &pod_def, ns, &pname, Some(pod), Value::Null, false);
        }
    }
    for pname in &wanted {
        let old = existing
            .iter()
            .find(|p| p["metadata"]["name"] == pname.as_str());
        let started = old
            .and_then(|p| p["status"]["startTime"].as_str())
            .map(str::to_string)
            .unwrap_or_else(now_rfc3339);
        let status = pod_status(rs, pname, held, crashed, &started);
        match old {
            Some(p)
                if p["status"]["phase"] == status["phase"]
                    && p["status"]["conditions"] == status["conditions"]
                    && p["status"]["containerStatuses"] == status["containerStatuses"] => {}
            Some(p) => {
                let mut new = p.clone();
                new["status"] = status;
                c.commit(st, &pod_def, ns, pname, Some(p), new, false);
            }
            None => {
                let mut spec = rs["spec"]["template"]["spec"].clone();
                if !spec.is_object() {
                    spec = json!({});
                }
                if !nodes.is_empty() {
                    let i = (fnv(&[pname.as_bytes()]) % nodes.len() as u64) as usize;
                    spec["nodeName"] = json!(nodes[i]);
                }
                let pod = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pname, "namespace": ns,
                        "labels": rs["spec"]["template"]["metadata"]["labels"],
                        "ownerReferences": [owner_ref("ReplicaSet", rs)]},
                    "spec": spec, "status": status});
                c.commit(st, &pod_def, ns, pname, None, pod, false);
            }
        }
    }
    Some(())
}

fn key_nodes() -> ResKey {
    (String::new(), "v1".to_string(), "nodes".to_string())
}

/// The status of a simulated Pod: Running; Ready unless held; crash-looping containers wait
/// in CrashLoopBackOff with restarts.
fn pod_status(rs: &Value, pod: &str, held: bool, crashed: bool, started: &str) -> Value {
    let ready = !held && !crashed;
    let mut statuses = Vec::new();
    for c in rs["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let state = if crashed {
            json!({"waiting": {"reason": "CrashLoopBackOff",
                "message": "back-off restarting failed container (simulated: --crash-images)"}})
        } else {
            json!({"running": {"startedAt": started}})
        };
        let mut s = Map::new();
        s.insert("name".into(), c["name"].clone());
        s.insert("image".into(), c["image"].clone());
        s.insert("ready".into(), json!(ready));
        s.insert("started".into(), json!(!crashed));
        s.insert("restartCount".into(), json!(if crashed { 5 } else { 0 }));
        s.insert("state".into(), state);
        if crashed {
            s.insert(
                "lastState".into(),
                json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
            );
        }
        statuses.push(Value::Object(s));
    }
    let (status, reason) = if ready {
        ("True", Value::Null)
    } else {
        ("False", json!("ContainersNotReady"))
    };
    let cond = |t: &str, s: &str, r: &Value| {
        let mut c = json!({"type": t, "status": s, "lastTransitionTime": started});
        if !r.is_null() {
            c["reason"] = r.clone();
        }
        c
    };
    let h = fnv(&[pod.as_bytes()]);
    json!({"phase": "Running",
        "conditions": [cond("PodScheduled", "True", &Value::Null),
            cond("Initialized", "True", &Value::Null),
            cond("ContainersReady", status, &reason), cond("Ready", status, &reason)],
        "podIP": format!("10.244.{}.{}", (h >> 8) % 256, h % 254 + 1),
        "startTime": started, "qosClass": "Burstable", "containerStatuses": statuses})
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cluster::Query;
    use crate::workload::Simulation;

    fn deploy_def(c: &Cluster) -> crate::discovery::ResourceDef {
        c.resource("apps", "v1", "deployments")
            .expect("deployments")
    }

    fn apply(c: &Cluster, body: &str) {
        let mut q = Query::new();
        q.insert("fieldManager".into(), "t".into());
        c.patch(
            &deploy_def(c),
            "default",
            "web",
            None,
            "application/apply-patch+yaml",
            body.as_bytes(),
            &q,
            "t",
        )
        .expect("apply");
    }

    fn deployment(replicas: u32, image: &str) -> String {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n    spec:\n      containers:\n      - name: web\n        image: {image}\n        resources: {{requests: {{cpu: 500m, memory: 1Gi}}}}\n"
        )
    }

    fn sim() -> Simulation {
        Simulation {
            ready_delay: Duration::ZERO,
            unready_images: None,
            crash_images: regex::Regex::new("crash").ok(),
        }
    }

    #[test]
    fn deployments_own_replicasets_that_own_pods() {
        let c = Cluster::new("t", 1, 2, 1000);
        let sim = sim();
        apply(&c, &deployment(3, "nginx:1"));
        sim.tick(&c);
        sim.tick(&c);
        let rss = c.objects("apps", "v1", "replicasets");
        assert_eq!(rss.len(), 1);
        let rs = &rss[0];
        let hash = rs["metadata"]["labels"]["pod-template-hash"]
            .as_str()
            .expect("hash label");
        assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
        assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
        assert_eq!(rs["status"]["readyReplicas"], 3);
        let pods = c.objects("", "v1", "pods");
        assert_eq!(pods.len(), 3);
        for p in &pods {
            assert_eq!(
                p["metadata"]["ownerReferences"][0]["uid"],
                rs["metadata"]["uid"]
            );
            assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash);
            assert_eq!(p["status"]["phase"], "Running");
            assert_eq!(p["status"]["conditions"][3]["status"], "True");
            assert!(
                p["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("t-node-"))
            );
        }
        let cap = c.free_capacity();
        assert_eq!(cap.len(), 2);
        let requested: i64 = cap.iter().map(|n| n.requested.cpu_millis).sum();
        assert_eq!(requested, 1500);
        let free: i64 = cap.iter().map(|n| n.free.memory_bytes).sum();
        assert_eq!(free, 2 * (32 << 30) - 3 * (1 << 30));

        // Scaling down removes pods; a new template makes a new ReplicaSet; crash-looping
        // images give CrashLoopBackOff pods, and (rolling update, as the real controller
        // does) the old ready Pod stays while the new ones never become ready.
        apply(&c, &deployment(1, "nginx:1"));
        sim.tick(&c);
        assert_eq!(c.objects("", "v1", "pods").len(), 1);
        apply(&c, &deployment(2, "crash:2"));
        sim.tick(&c);
        sim.tick(&c);
        let rss = c.objects("apps", "v1", "replicasets");
        assert_eq!(rss.len(), 2);
        assert!(rss.iter().any(|r| r["spec"]["replicas"] == 1));
        let new_rs = rss
            .iter()
            .find(|r| r["spec"]["replicas"] == 2)
            .expect("new rs");
        assert_eq!(
            new_rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
            "2"
        );
        let pods: Vec<Value> = c
            .objects("", "v1", "pods")
            .into_iter()
            .filter(|p| p["metadata"]["ownerReferences"][0]["uid"] == new_rs["metadata"]["uid"])
            .collect();
        assert_eq!(pods.len(), 2);
        assert_eq!(c.objects("", "v1", "pods").len(), 3);
        for p in &pods {
            let cs = &p["status"]["containerStatuses"][0];
            assert_eq!(cs["state"]["waiting"]["reason"], "CrashLoopBackOff");
            assert_eq!(cs["ready"], false);
            assert_eq!(p["status"]["conditions"][3]["status"], "False");
        }

        // Deleting the Deployment deletes its ReplicaSets and their Pods.
        c.delete(&deploy_def(&c), "default", "web", b"", &Query::new())
            .expect("delete");
        assert!(c.objects("apps", "v1", "replicasets").is_empty());
        assert!(c.objects("", "v1", "pods").is_empty());
        assert_eq!(c.free_capacity()[0].requested, crate::Resources::default());
    }

    /// Parity with the real Deployment controller (tests/it/real_kube.rs): a new template
    /// that never becomes ready leaves the old Pods serving (maxUnavailable 25% of 2 is 0,
    /// maxSurge 25% of 2 is 1): 3 Pods, 1 updated, 2 available, Available=True, Progressing
    /// names the new ReplicaSet; going back to the old template restores it at once.
    #[test]
    fn a_held_rolling_update_keeps_the_old_pods_like_the_real_controller() {
        let c = Cluster::new("t", 1, 2, 1000);
        let sim = Simulation {
            ready_delay: Duration::ZERO,
            unready_images: regex::Regex::new("broken").ok(),
            crash_images: None,
        };
        apply(&c, &deployment(2, "nginx:1"));
        sim.tick(&c);
        sim.tick(&c);
        apply(&c, &deployment(2, "broken:2"));
        sim.tick(&c);
        sim.tick(&c);
        let d = c
            .get(&deploy_def(&c), "default", "web")
            .expect("deployment");
        let st = &d["status"];
        assert_eq!(
            (
                &st["replicas"],
                &st["updatedReplicas"],
                &st["availableReplicas"],
                &st["unavailableReplicas"]
            ),
            (&json!(3), &json!(1), &json!(2), &json!(1)),
            "{st}"
        );
        assert_eq!(st["conditions"][0]["type"], "Available");
        assert_eq!(st["conditions"][0]["status"], "True");
        let rss = c.objects("apps", "v1", "replicasets");
        let new_rs = rss
            .iter()
            .find(|r| r["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2")
            .expect("new rs");
        assert_eq!(new_rs["spec"]["replicas"], 1);
        assert_eq!(
            st["conditions"][1]["message"],
            format!(
                "ReplicaSet \"{}\" is progressing.",
                new_rs["metadata"]["name"].as_str().unwrap_or("")
            )
        );
        let ready = c
            .objects("", "v1", "pods")
            .iter()
            .filter(|p| p["status"]["conditions"][3]["status"] == "True")
            .count();
        assert_eq!((c.objects("", "v1", "pods").len(), ready), (3, 2));

        // Back to the old template: the stuck ReplicaSet goes to zero, all Pods ready.
        apply(&c, &deployment(2, "nginx:1"));
        sim.tick(&c);
        sim.tick(&c);
        let d = c
            .get(&deploy_def(&c), "default", "web")
            .expect("deployment");
        assert_eq!(d["status"]["updatedReplicas"], 2, "{}", d["status"]);
        assert_eq!(d["status"]["availableReplicas"], 2);
        assert_eq!(c.objects("", "v1", "pods").len(), 2);
        let current = c
            .objects("apps", "v1", "replicasets")
            .into_iter()
            .find(|r| r["spec"]["replicas"] == 2)
            .expect("current rs");
        assert_eq!(
            d["status"]["conditions"][1]["message"],
            format!(
                "ReplicaSet \"{}\" has successfully progressed.",
                current["metadata"]["name"].as_str().unwrap_or("")
            )
        );
    }

    #[test]
    fn hashes_are_stable_and_safe() {
        let t = json!({"metadata": {"labels": {"app": "a"}}});
        assert_eq!(template_hash(&t), template_hash(&t.clone()));
        assert_eq!(template_hash(&t).len(), 10);
        assert!(template_hash(&t).bytes().all(|b| SAFE.contains(&b)));
        assert_ne!(
            template_hash(&t),
            template_hash(&json!({"metadata": {"labels": {"app": "b"}}}))
        );
    }
}
