use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn node(name: &str, cpu: &str, memory: &str, pods: u32) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"zone": "a"}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory, "pods": pods.to_string()},
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}

fn pod(name: &str, node: &str, cpu: &str, memory: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
        "spec": {"nodeName": node, "containers": [
            {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}
        ]},
        "status": {"phase": "Running"}
    })
}

fn shape(cpu: &str, memory: &str) -> Shape {
    Shape::from_pod_spec(&json!({"containers": [
        {"name": "c", "resources": {"requests": {"cpu": cpu, "memory": memory}}}
    ]}))
}

#[test]
fn quantities_in_milli_units() {
    assert_eq!(parse_milli("250m"), Some(250));
    assert_eq!(parse_milli("2"), Some(2000));
    assert_eq!(parse_milli("0.5"), Some(500));
    assert_eq!(parse_milli("1Gi"), Some(1_073_741_824_000));
    assert_eq!(parse_milli("1e3"), Some(1_000_000));
    assert_eq!(parse_milli("500k"), Some(500_000_000));
    assert_eq!(parse_milli("-1"), None);
    assert_eq!(parse_milli("x"), None);
    assert_eq!(parse_milli(""), None);
    assert_eq!(parse_milli("9Ei").map(|v| v == u64::MAX), Some(true));
}

#[test]
fn a_pod_counts_like_the_scheduler_counts_it() {
    let s = Shape::from_pod_spec(&json!({
        "containers": [
            {"name": "a", "resources": {"requests": {"cpu": "200m"}}},
            {"name": "b", "resources": {"limits": {"cpu": "300m", "memory": "64Mi"}}}
        ],
        "initContainers": [
            {"name": "i", "resources": {"requests": {"cpu": "1", "memory": "32Mi"}}}
        ],
        "overhead": {"cpu": "10m"}
    }));
    // max(200m + 300m, 1) + 10m; memory max(64Mi, 32Mi): limits stand in for requests.
    assert_eq!(s.requests.get("cpu"), 1010);
    assert_eq!(s.requests.get("memory"), 64 * 1_048_576 * 1000);
}

#[test]
fn the_shape_of_a_workload_is_its_pod_template() {
    let job = json!({"kind": "Job", "spec": {"template": {"spec": {"containers": [
        {"name": "c", "resources": {"requests": {"cpu": "2"}}}]}}}});
    assert_eq!(
        Shape::of_workload(&job).map(|s| s.requests.get("cpu")),
        Some(2000)
    );
    let cron = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {"spec": {
        "containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]}}}}}});
    assert_eq!(
        Shape::of_workload(&cron).map(|s| s.requests.get("cpu")),
        Some(1000)
    );
    assert_eq!(
        Shape::of_workload(&json!({"kind": "ConfigMap", "data": {}})),
        None
    );
}

#[test]
fn room_is_summed_per_node_not_over_the_pooled_free_amounts() {
    // Two nodes with 1.5 CPU free each: three 1-CPU pods would fit the pooled 3 CPU,
    // but a pod cannot span nodes: 2 fit.
    let o = Observed::from_objects(
        &[node("n1", "2", "8Gi", 110), node("n2", "2", "8Gi", 110)],
        &[pod("a", "n1", "500m", "1Gi"), pod("b", "n2", "500m", "1Gi")],
    );
    assert_eq!(o.room(&shape("1", "1Gi")), 2);
    assert_eq!(o.room(&shape("250m", "1Gi")), 12);
    // Memory binds: 7Gi free per node, 3Gi pods -> 2 per node.
    assert_eq!(o.room(&shape("100m", "3Gi")), 4);
}

#[test]
fn pod_slots_bind_when_requests_are_tiny() {
    let o = Observed::from_objects(
        &[node("n1", "64", "256Gi", 3)],
        &[pod("a", "n1", "0", "0"), pod("b", "n1", "0", "0")],
    );
    assert_eq!(o.room(&Shape::default()), 1);
}

#[test]
fn finished_and_unbound_pods_hold_nothing() {
    let mut done = pod("done", "n1", "2", "1Gi");
    done["status"]["phase"] = json!("Succeeded");
    let mut pending = pod("pending", "n1", "2", "1Gi");
    pending["spec"]["nodeName"] = Value::Null;
    let ghost = pod("ghost", "gone-node", "2", "1Gi");
    let o = Observed::from_objects(&[node("n1", "2", "8Gi", 110)], &[done, pending, ghost]);
    assert_eq!(o.room(&shape("1", "1Gi")), 2);
}

#[test]
fn cordoned_not_ready_tainted_and_unselected_nodes_take_nothing() {
    let mut cordoned = node("cordoned", "4", "8Gi", 110);
    cordoned["spec"]["unschedulable"] = json!(true);
    let mut not_ready = node("not-ready", "4", "8Gi", 110);
    not_ready["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    let mut tainted = node("tainted", "4", "8Gi", 110);
    tainted["spec"]["taints"] = json!([{"key": "gpu", "value": "yes", "effect": "NoSchedule"}]);
    let o = Observed::from_objects(&[cordoned, not_ready, tainted], &[]);
    let s = shape("1", "1Gi");
    assert_eq!(o.room(&s), 0);
    let why = o.why_no_room(&s).unwrap_or_default();
    assert!(why.contains("no schedulable node has room"), "{why}");

    let mut tolerant = s.clone();
    tolerant.tolerations.push(Toleration {
        key: "gpu".into(),
        operator: "Equal".into(),
        value: "yes".into(),
        effect: "NoSchedule".into(),
    });
    assert_eq!(o.room(&tolerant), 4, "only the tainted node, tolerated");

    let mut picky = tolerant.clone();
    picky.node_selector.insert("zone".into(), "b".into());
    assert_eq!(o.room(&picky), 0, "zone=b matches no node");
    picky.node_selector.insert("zone".into(), "a".into());
    assert_eq!(o.room(&picky), 4);

    let o = Observed::from_objects(&[], &[]);
    assert_eq!(
        o.why_no_room(&s).as_deref(),
        Some("the cluster has no nodes")
    );
    let mut down = node("n1", "4", "8Gi", 110);
    down["status"]["conditions"] = json!([]);
    let o = Observed::from_objects(&[down], &[]);
    assert_eq!(
        o.why_no_room(&s).as_deref(),
        Some("none of its 1 node(s) is Ready and schedulable")
    );
}

#[test]
fn a_workload_does_not_compete_with_its_own_pods() {
    let o = Observed::from_objects(
        &[node("n1", "4", "16Gi", 110)],
        &[
            pod("web", "n1", "1", "1Gi"),
            pod("web", "n1", "1", "1Gi"),
            pod("db", "n1", "1", "1Gi"),
        ],
    );
    let s = shape("1", "1Gi");
    assert_eq!(o.room(&s), 1);
    assert_eq!(
        o.room_skipping(&s, |p| p.labels.get("app").is_some_and(|a| a == "web")),
        3
    );
}

#[test]
fn declared_capacity_caps_the_estimate() {
    let cap = flotilla_spec::model::Capacity {
        cpu: Some(flotilla_spec::types::Quantity { text: "10".into() }),
        memory: None,
        pods: Some(50),
        replicas: Some(4),
    };
    let s = shape("2", "1Gi");
    assert_eq!(declared_room(Some(&cap), &s, false), Some(5));
    assert_eq!(declared_room(Some(&cap), &s, true), Some(4));
    assert_eq!(declared_room(None, &s, true), None);
    assert_eq!(combine(Some(9), Some(4)), 4);
    assert_eq!(combine(Some(3), Some(4)), 3);
    assert_eq!(combine(None, Some(4)), 4);
    assert_eq!(combine(Some(3), None), 3);
    assert_eq!(combine(None, None), 0);
}

#[test]
fn the_emptiest_cluster_wins_and_ties_go_by_name() {
    assert_eq!(emptiest([("b", 3), ("a", 3), ("c", 1)]), Some("a"));
    assert_eq!(emptiest([("b", 0), ("c", 2)]), Some("c"));
    assert_eq!(emptiest([("b", 0)]), None);
    assert_eq!(emptiest(std::iter::empty()), None);
}

prop_compose! {
    fn arb_node(i: usize)(cpu in 0u32..16_000, mem in 0u32..64, pods in 0u32..40, ready in any::<bool>()) -> Value {
        let mut n = node(&format!("n{i}"), &format!("{cpu}m"), &format!("{mem}Gi"), pods);
        if !ready {
            n["status"]["conditions"] = json!([]);
        }
        n
    }
}

fn arb_cluster() -> impl Strategy<Value = (Vec<Value>, Vec<Value>)> {
    (1usize..5).prop_flat_map(|count| {
        let nodes: Vec<_> = (0..count).map(arb_node).collect();
        let pods = prop::collection::vec((0..count, 0u32..4_000, 0u32..8), 0..30).prop_map(|ps| {
            ps.into_iter()
                .enumerate()
                .map(|(i, (n, cpu, mem))| {
                    pod(
                        &format!("p{i}"),
                        &format!("n{n}"),
                        &format!("{cpu}m"),
                        &format!("{mem}Gi"),
                    )
                })
                .collect::<Vec<_>>()
        });
        (nodes, pods)
    })
}

proptest! {
    /// Placing `room` pods never over-commits a node, and one more pod would not fit.
    #[test]
    fn room_never_over_commits((nodes, pods) in arb_cluster(), cpu in 1u32..4_000, mem in 0u32..4) {
        let o = Observed::from_objects(&nodes, &pods);
        let s = shape(&format!("{cpu}m"), &format!("{mem}Gi"));
        let mut total = 0;
        for n in &o.nodes {
            let r = n.room(&s);
            total += r;
            let free = n.free();
            for (k, need) in &s.requests.0 {
                prop_assert!(r * need <= free.get(k), "{} over-committed on {k}", n.name);
            }
            prop_assert!(r * 1000 <= free.get("pods"));
            if n.schedulable {
                let fits_one_more = s.requests.0.iter().all(|(k, need)| (r + 1) * need <= free.get(k))
                    && (r + 1) * 1000 <= free.get("pods");
                prop_assert!(!fits_one_more, "{} could take {} more", n.name, r + 1);
            }
        }
        prop_assert_eq!(total, o.room(&s));
    }

    /// Another pod on the cluster never makes room; a smaller shape never fits fewer.
    #[test]
    fn room_is_monotone((nodes, pods) in arb_cluster(), cpu in 1u32..4_000, extra in 0u32..2_000) {
        let s = shape(&format!("{cpu}m"), "0");
        let before = Observed::from_objects(&nodes, &pods).room(&s);
        let mut more = pods.clone();
        more.push(pod("extra", "n0", &format!("{extra}m"), "0"));
        prop_assert!(Observed::from_objects(&nodes, &more).room(&s) <= before);
        let smaller = shape(&format!("{}m", cpu / 2 + 1), "0");
        prop_assert!(Observed::from_objects(&nodes, &pods).room(&smaller) >= before);
    }
}
