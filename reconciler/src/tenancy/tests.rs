use proptest::prelude::*;
use serde_json::json;

use flotilla_spec::Selector;

use super::*;

fn team(namespaces: &[&str], cluster: &[&str], namespaced: Option<&[&str]>) -> Team {
    Team {
        name: "payments".into(),
        namespaces: namespaces.iter().map(|s| s.to_string()).collect(),
        cluster_resources: cluster.iter().map(|s| s.to_string()).collect(),
        namespaced_resources: namespaced.map(|l| l.iter().map(|s| s.to_string()).collect()),
        clusters: Selector::default(),
        service_account: None,
    }
}

fn obj(api_version: &str, kind: &str, namespace: Option<&str>, name: &str) -> ObjectRef {
    ObjectRef {
        gvk: Gvk::from_api_version(api_version, kind),
        namespace: namespace.map(str::to_string),
        name: name.into(),
    }
}

#[test]
fn a_cluster_admin_binding_is_refused_unless_its_kind_is_allowed() {
    let crb = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "make-me-admin"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
    });
    let t = team(&["payments", "payments-*"], &[], None);
    let rule = check_object(&t, &crb).expect_err("refused");
    assert_eq!(
        rule,
        "cluster-scoped kind rbac.authorization.k8s.io/ClusterRoleBinding is not in the team's clusterResources (none)"
    );
    let t = team(&["payments"], &["rbac.authorization.k8s.io/*"], None);
    assert_eq!(check_object(&t, &crb), Ok(()));
}

#[test]
fn namespaces_are_judged_by_name_and_pattern() {
    let t = team(&["payments", "payments-*"], &["Namespace"], None);
    let cm = |ns| obj("v1", "ConfigMap", Some(ns), "x");
    assert_eq!(check_ref(&t, &cm("payments")), Ok(()));
    assert_eq!(check_ref(&t, &cm("payments-eu")), Ok(()));
    assert_eq!(
        check_ref(&t, &cm("kube-system")).expect_err("refused"),
        "namespace \"kube-system\" is not among the team's namespaces (payments, payments-*)"
    );
    // A Namespace object: its kind must be allowed and its name one of the team's.
    assert_eq!(
        check_ref(&t, &obj("v1", "Namespace", None, "payments-us")),
        Ok(())
    );
    assert!(
        check_ref(&t, &obj("v1", "Namespace", None, "kube-public"))
            .expect_err("refused")
            .contains("\"kube-public\" is not among the team's namespaces")
    );
    let no_ns = team(&["payments"], &[], None);
    assert!(
        check_ref(&no_ns, &obj("v1", "Namespace", None, "payments"))
            .expect_err("refused")
            .starts_with("cluster-scoped kind Namespace is not in the team's clusterResources")
    );
}

#[test]
fn namespaced_kinds_follow_the_allow_list_when_there_is_one() {
    let t = team(
        &["shop"],
        &[],
        Some(&["apps/Deployment", "Service", "ConfigMap"]),
    );
    assert_eq!(
        check_ref(&t, &obj("apps/v1", "Deployment", Some("shop"), "web")),
        Ok(())
    );
    assert_eq!(
        check_ref(
            &t,
            &obj(
                "rbac.authorization.k8s.io/v1",
                "RoleBinding",
                Some("shop"),
                "x"
            )
        )
        .expect_err("refused"),
        "kind rbac.authorization.k8s.io/RoleBinding is not in the team's namespacedResources (apps/Deployment, Service, ConfigMap)"
    );
}

#[test]
fn an_object_without_a_namespace_needs_its_kind_in_cluster_resources() {
    let t = team(&["shop"], &[], None);
    let widget = obj("example.com/v1", "ClusterWidget", None, "w");
    assert!(
        check_ref(&t, &widget)
            .expect_err("refused")
            .starts_with("no namespace: ")
    );
    let t = team(&["shop"], &["example.com/ClusterWidget"], None);
    assert_eq!(check_ref(&t, &widget), Ok(()));
}

#[test]
fn messages_name_team_object_and_rule_and_are_recognised() {
    let t = team(&["shop"], &[], None);
    let objects: Vec<DesiredObject> = (0..25)
        .map(|i| DesiredObject {
            bundle: "b".into(),
            object: obj("v1", "ConfigMap", Some("kube-system"), &format!("c{i}")),
            value: json!({}),
        })
        .collect();
    let bad = violations(&t, &objects);
    assert_eq!(bad.len(), 25);
    let m = message("payments", &bad);
    assert!(
        m.starts_with(
            "outside the allowance of team \"payments\": ConfigMap/kube-system/c0: namespace \"kube-system\" is not among the team's namespaces (shop); "
        ),
        "{m}"
    );
    assert!(m.ends_with("; and 5 more objects"), "{m}");
    assert!(is_violation(&m));
    assert!(!is_violation("bundle b: missing file"));
}

#[test]
fn clusters_outside_the_team_selector_are_refused() {
    let mut t = team(&["shop"], &[], None);
    t.clusters
        .match_labels
        .insert("tenant".into(), "shared".into());
    let mut c = flotilla_spec::Cluster {
        name: "prod-1".into(),
        labels: Default::default(),
        kind: Default::default(),
        connect: Default::default(),
        context: None,
        capacity: None,
    };
    assert_eq!(
        check_cluster(&t, &c),
        Err("cluster \"prod-1\" is not among the team's clusters".into())
    );
    c.labels.insert("tenant".into(), "shared".into());
    assert_eq!(check_cluster(&t, &c), Ok(()));
}

#[test]
fn bookkeeping_is_the_inventory_namespace_and_configmaps_only() {
    assert!(is_bookkeeping(&inventory::configmap_ref("web")));
    assert!(is_bookkeeping(&obj(
        "v1",
        "Namespace",
        None,
        "flotilla-system"
    )));
    assert!(!is_bookkeeping(&obj(
        "v1",
        "ConfigMap",
        Some("flotilla-system"),
        "other"
    )));
    assert!(!is_bookkeeping(&obj(
        "v1",
        "Secret",
        Some("flotilla-system"),
        "flotilla-inventory-web"
    )));
    assert!(!is_bookkeeping(&obj(
        "v1",
        "ConfigMap",
        Some("shop"),
        "flotilla-inventory-web"
    )));
}

// ---- properties, against an independent oracle (globs as regular expressions) ----

fn glob_regex(pattern: &str) -> regex::Regex {
    let mut re = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re).expect("a valid regex")
}

fn ns_ok(team: &Team, ns: &str) -> bool {
    team.namespaces.iter().any(|p| glob_regex(p).is_match(ns))
}

fn kind_in(list: &[String], group: &str, kind: &str) -> bool {
    list.iter().any(|p| {
        let (g, k) = p.rsplit_once('/').unwrap_or(("", p));
        glob_regex(g).is_match(group) && glob_regex(k).is_match(kind)
    })
}

const CLUSTER_KINDS: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
];

fn oracle(team: &Team, r: &ObjectRef) -> bool {
    let (g, k) = (r.gvk.group.as_str(), r.gvk.kind.as_str());
    if CLUSTER_KINDS.contains(&k) {
        return kind_in(&team.cluster_resources, g, k)
            && (k != "Namespace" || !g.is_empty() || ns_ok(team, &r.name));
    }
    match &r.namespace {
        None => kind_in(&team.cluster_resources, g, k),
        Some(ns) => {
            ns_ok(team, ns)
                && team
                    .namespaced_resources
                    .as_ref()
                    .is_none_or(|l| kind_in(l, g, k))
        }
    }
}

fn ns_name() -> impl Strategy<Value = String> {
    "[a-c]{1,3}(-[a-c]{1,3})?"
}

fn ns_pattern() -> impl Strategy<Value = String> {
    "[a-c*?]{1,4}(-[a-c*]{1,3})?"
}

fn api_kind() -> impl Strategy<Value = (String, String)> {
    prop::sample::select(vec![
        ("v1", "ConfigMap"),
        ("v1", "Namespace"),
        ("v1", "Secret"),
        ("apps/v1", "Deployment"),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
        ("example.com/v1", "Widget"),
    ])
    .prop_map(|(a, k)| (a.to_string(), k.to_string()))
}

fn kind_pattern() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "ConfigMap",
        "Namespace",
        "/Namespace",
        "apps/Deployment",
        "apps/*",
        "rbac.authorization.k8s.io/ClusterRole",
        "rbac.authorization.k8s.io/*",
        "*/Role*",
        "example.com/Widget",
        "*",
        "*/*",
    ])
    .prop_map(str::to_string)
}

fn any_team() -> impl Strategy<Value = Team> {
    (
        prop::collection::vec(ns_pattern(), 0..4),
        prop::collection::vec(kind_pattern(), 0..3),
        prop::option::of(prop::collection::vec(kind_pattern(), 0..3)),
    )
        .prop_map(
            |(namespaces, cluster_resources, namespaced_resources)| Team {
                name: "t".into(),
                namespaces,
                cluster_resources,
                namespaced_resources,
                clusters: Selector::default(),
                service_account: None,
            },
        )
}

fn any_object() -> impl Strategy<Value = ObjectRef> {
    (api_kind(), prop::option::of(ns_name()), ns_name()).prop_map(|((a, k), ns, name)| {
        let cluster = CLUSTER_KINDS.contains(&k.as_str());
        ObjectRef {
            gvk: Gvk::from_api_version(&a, &k),
            // Cluster-scoped kinds are rendered without a namespace.
            namespace: if cluster { None } else { ns },
            name,
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_check_agrees_with_the_oracle(t in any_team(), r in any_object()) {
        prop_assert_eq!(check_ref(&t, &r).is_ok(), oracle(&t, &r), "{:?} {}", t, r);
    }

    #[test]
    fn an_object_in_a_namespace_outside_the_allowance_is_always_refused(
        t in any_team(), r in any_object()
    ) {
        if let Some(ns) = &r.namespace && !ns_ok(&t, ns) {
            prop_assert!(check_ref(&t, &r).is_err());
            let bad = violations(&t, &[DesiredObject { bundle: "b".into(), object: r.clone(), value: json!({}) }]);
            prop_assert_eq!(bad.len(), 1);
            prop_assert_eq!(&bad[0].object, &r.to_string());
        }
    }

    #[test]
    fn a_cluster_scoped_object_whose_kind_is_not_listed_is_always_refused(
        t in any_team(), r in any_object()
    ) {
        if r.namespace.is_none() && !kind_in(&t.cluster_resources, &r.gvk.group, &r.gvk.kind) {
            prop_assert!(check_ref(&t, &r).is_err());
        }
    }

    #[test]
    fn an_object_the_team_lists_explicitly_is_always_allowed(
        mut t in any_team(), r in any_object()
    ) {
        let gk = if r.gvk.group.is_empty() { r.gvk.kind.clone() } else { format!("{}/{}", r.gvk.group, r.gvk.kind) };
        match &r.namespace {
            Some(ns) => {
                t.namespaces.push(ns.clone());
                if let Some(l) = &mut t.namespaced_resources { l.push(gk); }
            }
            None => {
                t.cluster_resources.push(gk);
                t.namespaces.push(r.name.clone());
            }
        }
        prop_assert_eq!(check_ref(&t, &r), Ok(()));
    }
}
