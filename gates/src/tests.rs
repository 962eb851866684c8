use super::*;

fn check(min: Option<f64>, max: Option<f64>) -> Check {
    Check {
        name: "shop/gates[0]@hz-1".into(),
        url: "http://127.0.0.1:9".into(),
        query: "error_rate".into(),
        min,
        max,
    }
}

fn sample(labels: &str, value: f64) -> Sample {
    Sample {
        labels: labels.into(),
        value,
    }
}

#[test]
fn redacts_credentials() {
    assert_eq!(
        redact_url("https://user:s3cret@prom.example:9090/x?y=z@w"),
        "https://***@prom.example:9090/x?y=z@w"
    );
    assert_eq!(redact_url("http://tok@h/"), "http://***@h/");
    assert_eq!(redact_url("http://a:b@c@h"), "http://***@h");
    assert_eq!(redact_url("http://h:9090/p@x"), "http://h:9090/p@x");
    assert_eq!(redact_url("not a url"), "not a url");
}

#[test]
fn builds_query_urls() {
    let u = query_url("http://h:9090/prom/", "sum(x{a=\"b\"}) > 1").expect("valid");
    assert_eq!(
        u.as_str(),
        "http://h:9090/prom/api/v1/query?query=sum%28x%7Ba%3D%22b%22%7D%29+%3E+1"
    );
    assert!(query_url("ftp://h", "x").is_err());
    assert!(query_url("http://h?x=1", "x").is_err());
    assert!(query_url("::", "x").is_err());
}

#[test]
fn parses_vectors_and_scalars() {
    let body = br#"{"status":"success","data":{"resultType":"vector","result":[
        {"metric":{"__name__":"up","job":"x","cluster":"a\"b"},"value":[1.5,"0.25"]},
        {"metric":{},"value":[1.5,"3"]}]}}"#;
    assert_eq!(
        parse_response("u", 200, body).expect("ok"),
        vec![
            sample("up{job=\"x\", cluster=\"a\\\"b\"}", 0.25),
            sample("{}", 3.0)
        ]
    );
    let body = br#"{"status":"success","data":{"resultType":"scalar","result":[1.5,"-2e-3"]}}"#;
    assert_eq!(
        parse_response("u", 200, body).expect("ok"),
        vec![sample("{}", -0.002)]
    );
    let body = br#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
    assert_eq!(parse_response("u", 200, body).expect("ok"), vec![]);
}

#[test]
fn rejects_bad_answers() {
    for v in ["NaN", "+Inf", "-Inf"] {
        let body = format!(
            r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{"a":"b"}},"value":[1,"{v}"]}}]}}}}"#
        );
        let e = parse_response("u", 200, body.as_bytes()).expect_err("non-finite");
        assert!(matches!(e, GateError::NonFinite { .. }), "{e}");
        assert!(e.to_string().contains("{a=\"b\"}"), "{e}");
    }
    let body = br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
    assert!(matches!(
        parse_response("u", 200, body),
        Err(GateError::ResultType(t)) if t == "matrix"
    ));
    let body = br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
    let e = parse_response("u", 400, body).expect_err("error");
    assert!(!e.is_retryable());
    assert_eq!(
        e.to_string(),
        "Prometheus at u rejected the query (HTTP 400, bad_data): parse error"
    );
    let body = br#"{"status":"error","errorType":"unavailable","error":"busy"}"#;
    assert!(
        parse_response("u", 503, body)
            .expect_err("e")
            .is_retryable()
    );
    let e = parse_response("u", 502, b"<html>bad gateway</html>").expect_err("e");
    assert!(
        e.is_retryable() && e.to_string().contains("bad gateway"),
        "{e}"
    );
    assert!(
        parse_response("u", 429, b"slow down")
            .expect_err("e")
            .is_retryable()
    );
    let e = parse_response("u", 200, b"hello").expect_err("e");
    assert!(matches!(e, GateError::Decode { .. }) && !e.is_retryable());
    let e = parse_response("u", 404, b"404 page not found").expect_err("e");
    assert!(!e.is_retryable());
    let body = br#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,2]}]}}"#;
    assert!(matches!(
        parse_response("u", 200, body),
        Err(GateError::Decode { .. })
    ));
}

#[test]
fn judges_bounds() {
    let c = check(Some(0.0), Some(0.01));
    let ok = vec![sample("{c=\"a\"}", 0.0), sample("{c=\"b\"}", 0.01)];
    assert_eq!(judge(&c, ok.clone()), Outcome::Pass { samples: ok });
    let Outcome::Fail { reason } = judge(
        &c,
        vec![sample("{c=\"a\"}", 0.002), sample("{c=\"b\"}", 0.5)],
    ) else {
        panic!("must fail")
    };
    assert_eq!(
        reason,
        "gate shop/gates[0]@hz-1: 1 of 2 samples out of bounds: {c=\"b\"} = 0.5 is above max 0.01"
    );
    let Outcome::Fail { reason } = judge(&check(Some(1.0), None), vec![sample("{}", 0.5)]) else {
        panic!("must fail")
    };
    assert!(reason.contains("{} = 0.5 is below min 1"), "{reason}");
    let Outcome::Fail { reason } = judge(&c, vec![]) else {
        panic!("empty must fail")
    };
    assert!(reason.contains("no samples"), "{reason}");
    let many: Vec<Sample> = (0..8)
        .map(|i| sample(&format!("{{i=\"{i}\"}}"), 1.0))
        .collect();
    let Outcome::Fail { reason } = judge(&c, many) else {
        panic!("must fail")
    };
    assert!(
        reason.contains("8 of 8") && reason.ends_with("and 3 more"),
        "{reason}"
    );
}

#[tokio::test]
async fn unusable_bounds_are_errors() {
    let prom = Prometheus::new(Duration::from_secs(1));
    for c in [
        check(None, None),
        check(Some(2.0), Some(1.0)),
        check(Some(f64::NAN), None),
    ] {
        let out = evaluate(&prom, &c, RetryPolicy::default()).await;
        assert!(matches!(out, Outcome::Error { .. }), "{out:?}");
    }
}

#[test]
fn expands_queries() {
    let repo = flotilla_spec::MemRepo::new()
        .with("a.yaml", "{}\n")
        .with("b.yaml", "{}\n");
    let text = r#"apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {name: acme}
clusters:
  - name: hz-1
    labels: {region: hangzhou, tier: a}
  - name: hz-2
    labels: {region: hangzhou, tier: b}
bundles:
  - {name: a, path: a.yaml}
  - {name: b, path: b.yaml}
placements:
  - name: one
    bundles: [a]
    clusters: {matchLabels: {tier: a}}
    rollout:
      gates:
        - prometheus:
            url: http://prom:9090
            query: 'rate{cluster="${cluster.name}", region="${cluster.labels.region}", p="${placement.name}", b="${bundle.name}", f="${fleet.name}"}'
            max: 1
  - name: two
    bundles: [a, b]
    clusters: {matchLabels: {tier: b}}
    rollout:
      gates:
        - prometheus: {url: http://prom:9090, query: 'x{b="${bundle.name}"}', max: 1}
        - prometheus: {url: http://prom:9090, query: 'x{c="${cluster.name}"}', max: 1}
"#;
    let checked = flotilla_spec::check("fleet.yaml", text, &repo);
    let diags: Vec<String> = checked.diagnostics.iter().map(|d| d.to_string()).collect();
    let fleet = checked
        .fleet
        .unwrap_or_else(|| panic!("{}", diags.join("\n")));
    let cluster = &fleet.clusters[0];
    let one = &fleet.placements[0];
    assert_eq!(
        expand_query(&one.rollout.gates[0], &fleet, one, cluster).expect("expands"),
        r#"rate{cluster="hz-1", region="hangzhou", p="one", b="a", f="acme"}"#
    );
    let two = &fleet.placements[1];
    let cluster = &fleet.clusters[1];
    let e = expand_query(&two.rollout.gates[0], &fleet, two, cluster).expect_err("ambiguous");
    assert!(e.to_string().contains("2 bundles"), "{e}");
    assert_eq!(
        expand_query(&two.rollout.gates[1], &fleet, two, cluster).expect("expands"),
        r#"x{c="hz-2"}"#
    );
}
