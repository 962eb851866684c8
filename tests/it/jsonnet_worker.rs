//! Jsonnet in worker processes of the real `flotilla` binary: the same output as in-process,
//! and a runaway program is stopped by the time limit (the worker is killed) or by the
//! memory cap, instead of growing without bound.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flotilla_daemon::jsonnet_worker::ProcessEvaluator;
use flotilla_renderers::jsonnet::{Evaluator, InProcess, JsonnetError, Request};

fn worker() -> ProcessEvaluator {
    ProcessEvaluator::new(PathBuf::from(env!("CARGO_BIN_EXE_flotilla")))
}

fn request(main: &str) -> Request {
    let mut files = BTreeMap::new();
    files.insert("apps/main.jsonnet".to_string(), main.as_bytes().to_vec());
    files.insert(
        "apps/lib.libsonnet".to_string(),
        b"{ name(x):: 'cm-' + x }".to_vec(),
    );
    let mut ext_vars = BTreeMap::new();
    ext_vars.insert("region".to_string(), "eu".to_string());
    Request {
        files,
        main: "apps/main.jsonnet".into(),
        ext_vars,
        tlas: BTreeMap::new(),
    }
}

/// 3 million objects: 2.2 GB in 15 s in-process.
const HUGE: &str = "[{apiVersion: 'v1', kind: 'ConfigMap', metadata: {name: 'cm-' + i}, data: {a: std.repeat('x', 100)}} for i in std.range(1, 3000000)]";

#[test]
fn a_worker_renders_what_in_process_renders() {
    let r = request(
        "local lib = import 'lib.libsonnet'; { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: lib.name(std.extVar('region')) } }",
    );
    let timeout = Duration::from_secs(60);
    let got = worker().evaluate(r.clone(), timeout).expect("renders");
    assert_eq!(got, InProcess.evaluate(r, timeout).expect("renders"));
    assert_eq!(got["metadata"]["name"], "cm-eu");
    // Errors come back with their Jsonnet location.
    let e = worker()
        .evaluate(request("error 'boom'"), timeout)
        .expect_err("fails");
    assert!(e.to_string().contains("boom"), "{e}");
    assert!(e.to_string().contains("apps/main.jsonnet"), "{e}");
}

#[test]
fn a_runaway_program_is_killed_at_its_time_limit() {
    let started = Instant::now();
    let e = worker()
        .evaluate(request(HUGE), Duration::from_secs(2))
        .expect_err("times out");
    assert!(matches!(e, JsonnetError::Timeout { .. }), "{e}");
    // Killed, not waited for (it would run for tens of seconds).
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn a_runaway_program_stops_at_its_memory_cap() {
    let mut w = worker();
    w.max_memory = 512 << 20;
    let started = Instant::now();
    let e = w
        .evaluate(request(HUGE), Duration::from_secs(300))
        .expect_err("out of memory");
    let text = e.to_string();
    assert!(
        text.contains("memory is capped at 512 MiB") || text.contains("memory cap"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(240));
    // The deep tailstrict recursion that reached 6 GB in-process stops the same way.
    let e = w
        .evaluate(
            request("local f(n) = if n < 0 then 0 else f(n + 1) tailstrict; f(0)"),
            Duration::from_secs(300),
        )
        .expect_err("stopped");
    assert!(!matches!(e, JsonnetError::Timeout { .. }), "{e}");
}

#[test]
fn one_worker_serves_many_evaluations_and_a_killed_one_is_replaced() {
    let w = worker();
    let timeout = Duration::from_secs(60);
    for region in ["eu", "us", "ap"] {
        let mut r = request("{ name: std.extVar('region') }");
        r.ext_vars.insert("region".into(), region.into());
        let got = w.evaluate(r, timeout).expect("renders");
        assert_eq!(got["name"], region);
    }
    // An error is an answer, not the worker's end.
    w.evaluate(request("error 'boom'"), timeout)
        .expect_err("fails");
    assert_eq!(w.workers_started(), 1, "one process for four evaluations");
    // A timeout kills the worker; the next evaluation gets a new one and renders.
    let e = w
        .evaluate(request(HUGE), Duration::from_secs(1))
        .expect_err("times out");
    assert!(matches!(e, JsonnetError::Timeout { .. }), "{e}");
    let got = w
        .evaluate(request("{ ok: true }"), timeout)
        .expect("renders after the kill");
    assert_eq!(got["ok"], true);
    assert_eq!(w.workers_started(), 2);
}
