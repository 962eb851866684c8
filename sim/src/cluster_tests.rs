//! Unit tests of `cluster` (a file of their own: the module is long enough).

use super::*;

fn cm_def() -> ResourceDef {
    discovery::builtin()
        .into_iter()
        .find(|d| d.plural == "configmaps")
        .expect("configmaps")
}

#[test]
fn create_get_update_conflict() {
    let c = Cluster::new("t", 1, 1, 100);
    let d = cm_def();
    let q = Query::new();
    let body =
        br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a"},"data":{"k":"v"}}"#;
    let created = c.create(&d, "default", body, &q, "test/1").expect("create");
    assert!(created["metadata"]["uid"].is_string());
    assert_eq!(
        c.create(&d, "default", body, &q, "t").map_err(|e| e.code),
        Err(409)
    );
    assert_eq!(
        c.create(&d, "nope", body, &q, "t").map_err(|e| e.reason),
        Err("NotFound")
    );
    let stale = br#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","resourceVersion":"1"},"data":{}}"#;
    assert_eq!(
        c.update(&d, "default", "a", None, stale, &q, "t")
            .map_err(|e| e.reason),
        Err("Conflict")
    );
    assert_eq!(c.get(&d, "default", "b").map_err(|e| e.code), Err(404));
}

#[test]
fn watch_resource_versions_are_checked() {
    let c = Cluster::new("t", 1, 0, 2);
    let d = cm_def();
    let mut q = Query::new();
    q.insert("resourceVersion".into(), u64::MAX.to_string());
    assert!(c.watch(&d, None, &q).is_ok());
    q.insert("resourceVersion".into(), "abc".into());
    assert_eq!(
        c.watch(&d, None, &q).map(|_| ()).map_err(|e| e.code),
        Err(400)
    );
    for n in ["a", "b", "c"] {
        let body = format!("{{\"metadata\":{{\"name\":\"{n}\"}}}}");
        c.create(&d, "default", body.as_bytes(), &Query::new(), "t")
            .expect("create");
    }
    q.insert("resourceVersion".into(), "1".into());
    assert_eq!(
        c.watch(&d, None, &q).map(|_| ()).map_err(|e| e.code),
        Err(410)
    );
}

#[test]
fn delete_collection_by_label() {
    let c = Cluster::new("t", 1, 0, 100);
    let d = cm_def();
    for (n, l) in [("a", "x"), ("b", "x"), ("c", "y")] {
        let body = format!("{{\"metadata\":{{\"name\":\"{n}\",\"labels\":{{\"l\":\"{l}\"}}}}}}");
        c.create(&d, "default", body.as_bytes(), &Query::new(), "t")
            .expect("create");
    }
    let mut q = Query::new();
    q.insert("labelSelector".into(), "l=x".into());
    let gone = c
        .delete_collection(&d, Some("default"), b"", &q)
        .expect("deletecollection");
    assert_eq!(gone["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(c.objects("", "v1", "configmaps").len(), 1);
}

#[test]
fn status_apply_touches_only_status_and_records_the_subresource() {
    let c = Cluster::new("t", 1, 0, 100);
    let d = discovery::builtin()
        .into_iter()
        .find(|d| d.plural == "deployments")
        .expect("deployments");
    let mut q = Query::new();
    q.insert("fieldManager".into(), "me".into());
    let apply = "application/apply-patch+yaml";
    let body = b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 2}\nstatus: {replicas: 9}\n";
    let (code, obj) = c
        .patch(&d, "default", "x", None, apply, body, &q, "t")
        .expect("apply");
    assert_eq!(code, 201);
    assert!(obj["status"].is_null(), "main writes ignore status: {obj}");
    let status = b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 7}\nstatus: {replicas: 9}\n";
    let (_, obj) = c
        .patch(&d, "default", "x", Some("status"), apply, status, &q, "t")
        .expect("status apply");
    assert_eq!(obj["status"]["replicas"], 9);
    assert_eq!(obj["spec"]["replicas"], 2, "status writes ignore spec");
    assert_eq!(obj["metadata"]["generation"], 1);
    let mf = fields::read_managed(&obj);
    assert!(
        mf.iter()
            .any(|m| m.subresource == "status" && m.manager == "me"),
        "{mf:?}"
    );
    assert!(
        mf.iter()
            .any(|m| m.subresource.is_empty() && m.manager == "me"),
        "{mf:?}"
    );
    // A dry run changes nothing.
    q.insert("dryRun".into(), "All".into());
    let b2 = b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: 5}\n";
    let (_, dry) = c
        .patch(&d, "default", "x", None, apply, b2, &q, "t")
        .expect("dry");
    assert_eq!(dry["spec"]["replicas"], 5);
    assert_eq!(
        c.get(&d, "default", "x").expect("get")["spec"]["replicas"],
        2
    );
}

/// Parity with kube-apiserver 1.36 (tests/it/real_kube.rs): a DELETE of an object that is
/// gone at once answers a `Status` naming it; error details leave the core group out.
#[test]
fn delete_answers_a_status_and_errors_omit_the_core_group() {
    let c = Cluster::new("t", 1, 0, 100);
    let d = cm_def();
    let q = Query::new();
    let created = c
        .create(&d, "default", br#"{"metadata":{"name":"a"}}"#, &q, "t")
        .expect("create");
    let del = c.delete(&d, "default", "a", b"", &q).expect("delete");
    assert_eq!(
        del,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": "a", "kind": "configmaps", "uid": created["metadata"]["uid"]}})
    );
    assert!(c.get(&d, "default", "a").is_err());
    let missing = c.delete(&d, "default", "a", b"", &q).expect_err("gone");
    assert_eq!(
        missing.status()["details"],
        json!({"name": "a", "kind": "configmaps"})
    );
}

/// Parity with kube-apiserver 1.36: a `kubectl scale` (an update through the `scale`
/// subresource) owns `.spec.replicas`, so an apply of another value conflicts, and the
/// message names owners as the API server does.
#[test]
fn scale_owner_conflicts_with_apply_worded_like_the_api_server() {
    let c = Cluster::new("t", 1, 0, 100);
    let d = discovery::builtin()
        .into_iter()
        .find(|d| d.plural == "deployments")
        .expect("deployments");
    let mut q = Query::new();
    q.insert("fieldManager".into(), "flotilla".into());
    let apply = "application/apply-patch+yaml";
    let body = b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x, labels: {a: b}}\nspec: {replicas: 2}\n";
    c.patch(&d, "default", "x", None, apply, body, &q, "t")
        .expect("apply");
    c.scale(
        &d,
        "default",
        "x",
        &hyper::Method::PATCH,
        "application/merge-patch+json",
        br#"{"spec":{"replicas":4}}"#,
        &Query::new(),
        "kubectl/v1.36",
    )
    .expect("scale");
    let err = c
        .patch(&d, "default", "x", None, apply, body, &q, "t")
        .expect_err("conflict");
    assert_eq!(err.code, 409);
    assert_eq!(
        err.message,
        "Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"
    );
    assert_eq!(
        err.details,
        Some(json!({"causes": [{"reason": "FieldManagerConflict",
            "message": "conflict with \"kubectl\" with subresource \"scale\" using apps/v1",
            "field": ".spec.replicas"}]}))
    );
    // Another applier: conflicts with appliers name them alone, several grouped by owner.
    let mut other = Query::new();
    other.insert("fieldManager".into(), "other".into());
    let body2 = b"apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x, labels: {a: c}}\nspec: {replicas: 3}\n";
    let err = c
        .patch(&d, "default", "x", None, apply, body2, &other, "t")
        .expect_err("conflicts");
    assert_eq!(
        err.message,
        "Apply failed with 2 conflicts: conflicts with \"flotilla\":\n- .metadata.labels.a\nconflicts with \"kubectl\" with subresource \"scale\" using apps/v1:\n- .spec.replicas"
    );
    // Forced, the field moves: the scale owner no longer holds it.
    let mut force = q.clone();
    force.insert("force".into(), "true".into());
    let (_, obj) = c
        .patch(&d, "default", "x", None, apply, body, &force, "t")
        .expect("forced apply");
    assert_eq!(obj["spec"]["replicas"], 2);
    assert!(
        fields::read_managed(&obj)
            .iter()
            .all(|m| m.subresource != "scale"),
        "{obj}"
    );
}

/// Parity with kube-apiserver 1.36: namespace names are RFC 1123 labels (no dots, 63
/// characters), other names subdomains; the 422 quotes the name as the server does.
#[test]
fn names_are_validated_and_worded_like_the_api_server() {
    let c = Cluster::new("t", 1, 0, 100);
    let ns = discovery::builtin()
        .into_iter()
        .find(|d| d.plural == "namespaces")
        .expect("namespaces");
    let q = Query::new();
    let err = c
        .create(&ns, "", br#"{"metadata":{"name":"a.b"}}"#, &q, "t")
        .expect_err("dots");
    assert_eq!(err.code, 422);
    assert_eq!(
        err.message,
        "Namespace \"a.b\" is invalid: metadata.name: Invalid value: \"a.b\": must not contain dots"
    );
    let long = "a".repeat(64);
    let err = c
        .create(
            &ns,
            "",
            format!(r#"{{"metadata":{{"name":"{long}"}}}}"#).as_bytes(),
            &q,
            "t",
        )
        .expect_err("long");
    assert!(
        err.message
            .ends_with(": must be no more than 63 characters"),
        "{}",
        err.message
    );
    let err = c
        .create(
            &cm_def(),
            "default",
            br#"{"metadata":{"name":"A_b"}}"#,
            &q,
            "t",
        )
        .expect_err("subdomain");
    assert!(
        err.message.starts_with("ConfigMap \"A_b\" is invalid: metadata.name: Invalid value: \"A_b\": a lowercase RFC 1123 subdomain")
            && err.message.ends_with("regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"),
        "{}",
        err.message
    );
    c.create(
        &cm_def(),
        "default",
        br#"{"metadata":{"name":"a.b"}}"#,
        &q,
        "t",
    )
    .expect("dots are fine in other names");
}

/// Parity with kube-apiserver 1.36: a CRD is not Established in the create's answer and
/// its resources are not served until the controller (the next tick) establishes it.
#[test]
fn crds_are_established_after_the_create_not_in_it() {
    let c = Cluster::new("t", 1, 0, 100);
    let crd_def = discovery::builtin()
        .into_iter()
        .find(|d| d.plural == "customresourcedefinitions")
        .expect("crds");
    let q = Query::new();
    let crd = br#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
        "metadata":{"name":"gizmos.ex.io"},"spec":{"group":"ex.io","scope":"Namespaced",
        "names":{"plural":"gizmos","singular":"gizmo","kind":"Gizmo"},
        "versions":[{"name":"v1","served":true,"storage":true}]}}"#;
    let created = c.create(&crd_def, "", crd, &q, "t").expect("create");
    assert_eq!(
        created["status"],
        json!({"conditions": null, "acceptedNames": {"plural": "", "kind": ""},
            "storedVersions": ["v1"]})
    );
    assert!(
        c.resource("ex.io", "v1", "gizmos").is_none(),
        "not served yet"
    );
    let sim = crate::workload::Simulation {
        ready_delay: std::time::Duration::ZERO,
        unready_images: None,
        crash_images: None,
    };
    sim.tick(&c);
    let got = c.get(&crd_def, "", "gizmos.ex.io").expect("get");
    assert!(crd_established(&got), "{got}");
    assert_eq!(got["status"]["acceptedNames"]["listKind"], "GizmoList");
    let gizmos = c.resource("ex.io", "v1", "gizmos").expect("served now");
    c.create(&gizmos, "default", br#"{"metadata":{"name":"g"}}"#, &q, "t")
        .expect("a custom resource");
    // Later writes keep it established.
    let mut apply_q = Query::new();
    apply_q.insert("fieldManager".into(), "t".into());
    let (_, updated) = c
        .patch(
            &crd_def,
            "",
            "gizmos.ex.io",
            None,
            "application/merge-patch+json",
            br#"{"metadata":{"labels":{"a":"b"}}}"#,
            &apply_q,
            "t",
        )
        .expect("patch");
    assert!(crd_established(&updated), "{updated}");
}

/// Parity with kube-apiserver 1.36: list items carry no apiVersion/kind, and a list cut
/// by `limit` says how many items remain.
#[test]
fn list_items_have_no_type_meta_and_pages_count_the_rest() {
    let c = Cluster::new("t", 1, 0, 100);
    let d = cm_def();
    let q = Query::new();
    for n in ["a", "b", "c"] {
        let body = format!(
            r#"{{"kind":"ConfigMap","metadata":{{"name":"{n}","ownerReferences":[{{"apiVersion":"v1","kind":"X","name":"o","uid":"u"}}]}},"data":{{"kind":"k, \"q\" {{[","apiVersion":"v"}},"apiVersion":"v1"}}"#
        );
        c.create(&d, "default", body.as_bytes(), &q, "t")
            .expect("create");
    }
    let mut page = Query::new();
    page.insert("limit".into(), "2".into());
    let list = c.list(&d, Some("default"), &page).expect("list");
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["metadata"]["remainingItemCount"], 1);
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 2);
    for item in items {
        assert!(
            item.get("kind").is_none() && item.get("apiVersion").is_none(),
            "{item}"
        );
        assert_eq!(item["data"]["kind"], "k, \"q\" {[");
        assert_eq!(item["data"]["apiVersion"], "v");
        assert_eq!(item["metadata"]["ownerReferences"][0]["kind"], "X");
    }
    // get still answers the whole object.
    assert_eq!(c.get(&d, "default", "a").expect("get")["kind"], "ConfigMap");
    let mut rest = Query::new();
    rest.insert(
        "continue".into(),
        list["metadata"]["continue"].as_str().unwrap_or("").into(),
    );
    let last = c.list(&d, Some("default"), &rest).expect("next page");
    assert_eq!(last["items"].as_array().map(Vec::len), Some(1));
    assert!(last["metadata"]["remainingItemCount"].is_null());
}

/// Parity with kube-apiserver 1.36: a deleted namespace is Terminating for a moment and
/// refuses new content (403 NamespaceTerminating); the next tick removes it.
#[test]
fn deleted_namespaces_terminate_before_they_go() {
    let c = Cluster::new("t", 1, 0, 100);
    let ns = discovery::builtin()
        .into_iter()
        .find(|d| d.plural == "namespaces")
        .expect("namespaces");
    let q = Query::new();
    c.create(&ns, "", br#"{"metadata":{"name":"team"}}"#, &q, "t")
        .expect("namespace");
    c.create(&cm_def(), "team", br#"{"metadata":{"name":"a"}}"#, &q, "t")
        .expect("content");
    let del = c.delete(&ns, "", "team", b"", &q).expect("delete");
    assert_eq!(del["status"]["phase"], "Terminating", "{del}");
    assert_eq!(del["spec"]["finalizers"], json!(["kubernetes"]));
    assert!(
        c.get(&cm_def(), "team", "a").is_err(),
        "contents go at once"
    );
    let err = c
        .create(&cm_def(), "team", br#"{"metadata":{"name":"b"}}"#, &q, "t")
        .expect_err("terminating");
    assert_eq!((err.code, err.reason), (403, "Forbidden"));
    assert_eq!(
        err.message,
        "configmaps \"b\" is forbidden: unable to create new content in namespace team because it is being terminated"
    );
    assert_eq!(
        err.status()["details"]["causes"][0]["reason"],
        "NamespaceTerminating"
    );
    let again = c.delete(&ns, "", "team", b"", &q).expect("delete again");
    assert_eq!(again["status"]["phase"], "Terminating");
    let sim = crate::workload::Simulation {
        ready_delay: std::time::Duration::ZERO,
        unready_images: None,
        crash_images: None,
    };
    sim.tick(&c);
    assert!(c.get(&ns, "", "team").is_ok(), "still Terminating");
    std::thread::sleep(NAMESPACE_TERMINATION);
    sim.tick(&c);
    assert!(c.get(&ns, "", "team").is_err(), "gone after a while");
    c.create(&ns, "", br#"{"metadata":{"name":"team"}}"#, &q, "t")
        .expect("created anew");
}

#[test]
fn finalizers_hold_deletion() {
    let c = Cluster::new("t", 1, 0, 100);
    let d = cm_def();
    let q = Query::new();
    let body = br#"{"metadata":{"name":"f","finalizers":["x/y"]}}"#;
    c.create(&d, "default", body, &q, "t").expect("create");
    let del = c.delete(&d, "default", "f", b"", &q).expect("delete");
    assert!(del["metadata"]["deletionTimestamp"].is_string());
    assert!(c.get(&d, "default", "f").is_ok());
    let p = br#"{"metadata":{"finalizers":null}}"#;
    c.patch(
        &d,
        "default",
        "f",
        None,
        "application/merge-patch+json",
        p,
        &q,
        "t",
    )
    .expect("patch");
    assert!(c.get(&d, "default", "f").is_err());
}

#[test]
fn yaml_bodies_parse() {
    let v = parse_body(b"a: 1\nb: [x]\n").expect("yaml");
    assert_eq!(v, json!({"a": 1, "b": ["x"]}));
    assert!(parse_body(b"a: [").is_err());
}

#[test]
fn apply_with_a_stale_resource_version_is_a_conflict_and_creation_ignores_it() {
    let c = Cluster::new("t", 1, 0, 100);
    let d = discovery::builtin()
        .into_iter()
        .find(|d| d.plural == "leases" && d.group == "coordination.k8s.io")
        .expect("the sim serves coordination.k8s.io/v1 leases");
    assert!(d.namespaced);
    let mut q = Query::new();
    q.insert("fieldManager".into(), "flotilla-ha".into());
    q.insert("force".into(), "true".into());
    let ct = "application/apply-patch+yaml";
    let body = |rv: &str| {
        format!(
            r#"{{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{{"name":"l","namespace":"default","resourceVersion":"{rv}"}},"spec":{{"holderIdentity":"a"}}}}"#
        )
    };
    // Creation: the resourceVersion is ignored (as on the real API server).
    let (code, created) = c
        .patch(
            &d,
            "default",
            "l",
            None,
            ct,
            body("999").as_bytes(),
            &q,
            "t",
        )
        .expect("apply creates");
    assert_eq!(code, 201);
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_string();
    // The current version: applied.
    let (code, updated) = c
        .patch(&d, "default", "l", None, ct, body(&rv).as_bytes(), &q, "t")
        .expect("apply with the current version");
    assert_eq!(code, 200);
    assert_ne!(
        updated["metadata"]["resourceVersion"].as_str(),
        Some(rv.as_str())
    );
    // The version read before that update: refused, even with force.
    let e = c
        .patch(&d, "default", "l", None, ct, body(&rv).as_bytes(), &q, "t")
        .expect_err("stale");
    assert_eq!((e.code, e.reason), (409, "Conflict"));
    assert!(
        e.message.contains("the object has been modified; please apply your changes to the latest version and try again"),
        "{}",
        e.message
    );
}
