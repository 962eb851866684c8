//! Metric gates (flotilla-gates) against a real Prometheus scraping a test exporter.

use std::time::{Duration, Instant};

use flotilla_gates::{Check, Outcome, Prometheus, RetryPolicy, evaluate};

use crate::prometheus_support::PromServer;

const SIM1: &str = r#"flotilla_test_error_rate{cluster="sim-1"}"#;
const SIM2: &str = r#"flotilla_test_error_rate{cluster="sim-2"}"#;

fn client() -> Prometheus {
    Prometheus::new(Duration::from_secs(5))
}

fn check(url: &str, query: &str) -> Check {
    Check {
        name: "shop/gates[0]".into(),
        url: url.into(),
        query: query.into(),
        min: Some(0.0),
        max: Some(0.01),
    }
}

/// Quick retries so the failure cases stay fast.
const FAST: RetryPolicy = RetryPolicy {
    attempts: 3,
    initial_backoff: Duration::from_millis(200),
    multiplier: 2,
};

#[tokio::test]
async fn within_bounds_passes() {
    let prom = PromServer::start(&[(SIM1, 0.002), (SIM2, 0.004)]);
    let c = check(&prom.url(), "flotilla_test_error_rate");
    let out = evaluate(&client(), &c, FAST).await;
    let Outcome::Pass { samples } = &out else {
        panic!("expected a pass: {out:?}")
    };
    let mut seen: Vec<(String, f64)> = samples
        .iter()
        .map(|s| (s.labels.clone(), s.value))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    let port = prom.exporter.port;
    let series = |cluster: &str| {
        format!(
            r#"flotilla_test_error_rate{{cluster="{cluster}", instance="127.0.0.1:{port}", job="flotilla-test"}}"#
        )
    };
    assert_eq!(
        seen,
        vec![(series("sim-1"), 0.002), (series("sim-2"), 0.004)]
    );
    // An expanded per-cluster query, and a scalar result.
    let c = check(&prom.url(), r#"flotilla_test_error_rate{cluster="sim-2"}"#);
    assert!(evaluate(&client(), &c, FAST).await.passed());
    let c = check(&prom.url(), "scalar(sum(flotilla_test_error_rate))");
    let out = evaluate(&client(), &c, FAST).await;
    assert!(
        matches!(&out, Outcome::Pass { samples } if samples.len() == 1 && (samples[0].value - 0.006).abs() < 1e-12),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_bad_value_fails_naming_the_sample_and_bound() {
    let prom = PromServer::start(&[(SIM1, 0.002), (SIM2, 0.004)]);
    let c = check(&prom.url(), "flotilla_test_error_rate");
    assert!(evaluate(&client(), &c, FAST).await.passed());

    prom.exporter.set(SIM2, 0.25);
    // Wait for the next scrape to land.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = client()
            .query(&prom.url(), SIM2)
            .await
            .expect("query works");
        if samples.iter().any(|s| s.value == 0.25) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the new value: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = evaluate(&client(), &c, FAST).await;
    let Outcome::Fail { reason } = &out else {
        panic!("expected a failure: {out:?}")
    };
    assert!(
        reason.contains("1 of 2 samples out of bounds")
            && reason.contains(r#"cluster="sim-2""#)
            && reason.contains("= 0.25 is above max 0.01")
            && !reason.contains(r#"cluster="sim-1""#),
        "{reason}"
    );
    let low = Check {
        min: Some(0.003),
        max: None,
        ..check(&prom.url(), SIM1)
    };
    let out = evaluate(&client(), &low, FAST).await;
    assert!(
        matches!(&out, Outcome::Fail { reason } if reason.contains("= 0.002 is below min 0.003")),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_query_matching_nothing_fails() {
    let prom = PromServer::start(&[(SIM1, 0.002)]);
    let c = check(
        &prom.url(),
        r#"flotilla_test_error_rate{cluster="no-such-cluster"}"#,
    );
    let out = evaluate(&client(), &c, FAST).await;
    assert!(
        matches!(&out, Outcome::Fail { reason } if reason.contains("no samples") && reason.contains("never passes")),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_syntax_error_is_an_error_with_prometheus_message() {
    let prom = PromServer::start(&[(SIM1, 0.002)]);
    // Credentials in the URL are sent (Prometheus ignores them) and never shown.
    let url = format!("http://gate:s3cret@127.0.0.1:{}", prom.port);
    let c = check(&url, "sum(flotilla_test_error_rate");
    let started = Instant::now();
    let out = evaluate(&client(), &c, FAST).await;
    let Outcome::Error { reason } = &out else {
        panic!("expected an error: {out:?}")
    };
    assert!(
        reason.contains("after 1 attempt:")
            && reason.contains("HTTP 400, bad_data")
            && reason.contains("parse error")
            && reason.contains("http://***@127.0.0.1:")
            && !reason.contains("s3cret"),
        "{reason}"
    );
    // A query error is not retried.
    assert!(started.elapsed() < FAST.initial_backoff, "{reason}");
}

#[tokio::test]
async fn a_stopped_prometheus_is_an_error_after_retries() {
    let mut prom = PromServer::start(&[(SIM1, 0.002)]);
    let url = format!("http://gate:s3cret@127.0.0.1:{}/", prom.port);
    let c = check(&url, "flotilla_test_error_rate");
    assert!(evaluate(&client(), &c, FAST).await.passed());
    prom.kill();

    let started = Instant::now();
    let out = evaluate(&client(), &c, FAST).await;
    let elapsed = started.elapsed();
    let Outcome::Error { reason } = &out else {
        panic!("a gate that cannot be evaluated must not pass or fail: {out:?}")
    };
    assert!(
        reason.contains("after 3 attempts") && !reason.contains("s3cret"),
        "{reason}"
    );
    // Two backoffs happened: 200 ms, then 400 ms.
    assert!(
        elapsed >= Duration::from_millis(600),
        "retried too quickly: {elapsed:?}"
    );
}
