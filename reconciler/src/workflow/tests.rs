use super::*;
use flotilla_spec::model::{Concurrency, RunMode, Selector};
use flotilla_spec::types::{Duration, RepoPath, Schedule, TimeZone};
use proptest::prelude::*;
use serde_json::json;

fn wf(cron: &str, tz: Option<&str>, concurrency: Concurrency) -> Workflow {
    Workflow {
        name: "reindex".into(),
        schedule: Schedule::parse(cron).expect("cron"),
        timezone: tz.map(|t| TimeZone::parse(t).expect("tz")),
        clusters: Selector::default(),
        run: RunMode::One,
        template: RepoPath::parse("jobs/reindex.yaml").expect("path"),
        concurrency,
        history: 3,
        suspend: false,
        starting_deadline: None,
        max_concurrent: None,
        timeout: None,
        completion: None,
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s)
        .expect("time")
        .with_timezone(&Utc)
}

#[test]
fn next_firings_follow_the_time_zone_across_dst() {
    // 02:30 Berlin does not exist on 2026-03-29 (clocks jump 02:00 -> 03:00) and exists twice
    // on 2026-10-25: it never fires twice in one day.
    let w = wf("30 2 * * *", Some("Europe/Berlin"), Concurrency::Forbid);
    let spring = next_firings(&w, at("2026-03-27T12:00:00Z"), 4);
    assert_eq!(spring[0], at("2026-03-28T01:30:00Z"));
    assert_eq!(spring[2], at("2026-03-30T00:30:00Z"), "{spring:?}");
    let autumn = next_firings(&w, at("2026-10-24T12:00:00Z"), 3);
    let days: Vec<_> = autumn.iter().map(|t| t.date_naive()).collect();
    let mut unique = days.clone();
    unique.dedup();
    assert_eq!(days, unique, "one firing per day: {autumn:?}");
    assert_eq!(autumn[0], at("2026-10-25T00:30:00Z"));
    assert_eq!(autumn[1], at("2026-10-26T01:30:00Z"));
    // Asia/Shanghai has no DST: 03:00 local = 19:00 UTC the day before.
    let sh = wf("0 3 * * *", Some("Asia/Shanghai"), Concurrency::Forbid);
    assert_eq!(
        next_firings(&sh, at("2026-12-04T12:00:00Z"), 1),
        vec![at("2026-12-04T19:00:00Z")]
    );
}

#[test]
fn a_tick_fires_the_due_firing_once() {
    let w = wf("*/5 * * * *", None, Concurrency::Forbid);
    let p = tick(
        &w,
        at("2026-12-04T10:05:30Z"),
        at("2026-12-04T10:00:00Z"),
        &[],
    );
    assert_eq!(
        p.actions,
        vec![Action::Fire {
            scheduled: at("2026-12-04T10:05:00Z")
        }]
    );
    assert_eq!(p.last_scheduled, at("2026-12-04T10:05:00Z"));
    // The same tick again: nothing.
    let again = tick(&w, at("2026-12-04T10:06:00Z"), p.last_scheduled, &[]);
    assert!(again.actions.is_empty());
}

#[test]
fn after_downtime_one_missed_firing_runs_and_the_others_are_recorded() {
    let w = wf("*/5 * * * *", None, Concurrency::Forbid);
    let p = tick(
        &w,
        at("2026-12-04T10:31:00Z"),
        at("2026-12-04T10:00:00Z"),
        &[],
    );
    let fired: Vec<_> = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Fire { .. }))
        .collect();
    assert_eq!(
        fired,
        vec![&Action::Fire {
            scheduled: at("2026-12-04T10:30:00Z")
        }]
    );
    let missed = p
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Missed { .. }))
        .count();
    assert_eq!(missed, MAX_MISSED_RECORDS, "10:05..10:25, five records");
    // With a deadline of 30s, a firing 60s late is missed too.
    let mut d = w.clone();
    d.starting_deadline = Some(Duration::parse("30s").expect("d"));
    let p = tick(
        &d,
        at("2026-12-04T10:31:00Z"),
        at("2026-12-04T10:00:00Z"),
        &[],
    );
    assert!(!p.actions.iter().any(|a| matches!(a, Action::Fire { .. })));
    assert!(
        matches!(p.actions.last(), Some(Action::Missed { message, .. }) if message.contains("starting deadline"))
    );
}

#[test]
fn a_long_downtime_is_counted_not_listed() {
    let w = wf("* * * * * *", None, Concurrency::Allow);
    // Two hours of a seconds schedule: 7,199 missed, five recorded, the latest runs.
    let p = tick(
        &w,
        at("2026-12-04T12:00:00Z"),
        at("2026-12-04T10:00:00Z"),
        &[],
    );
    assert_eq!(p.actions.len(), MAX_MISSED_RECORDS + 1);
    assert!(
        matches!(&p.actions[0], Action::Missed { message, .. } if message.contains("; 7194 earlier firings")),
        "{:?}",
        p.actions[0]
    );
    // Past the scan limit the count is a lower bound.
    let p = tick(
        &w,
        at("2026-12-04T14:00:00Z"),
        at("2026-12-04T10:00:00Z"),
        &[],
    );
    assert!(
        matches!(&p.actions[0], Action::Missed { message, .. } if message.contains("more than")),
        "{:?}",
        p.actions[0]
    );
    assert!(
        matches!(p.actions.last(), Some(Action::Fire { scheduled }) if *scheduled == at("2026-12-04T14:00:00Z"))
    );
}

#[test]
fn concurrency_forbid_skips_replace_replaces_allow_runs_both() {
    let active = vec!["reindex-202612041000".to_string()];
    let now = at("2026-12-04T10:05:10Z");
    let last = at("2026-12-04T10:00:00Z");
    let forbid = tick(
        &wf("*/5 * * * *", None, Concurrency::Forbid),
        now,
        last,
        &active,
    );
    assert!(
        matches!(&forbid.actions[..], [Action::Skip { message, .. }] if message.contains("reindex-202612041000"))
    );
    let replace = tick(
        &wf("*/5 * * * *", None, Concurrency::Replace),
        now,
        last,
        &active,
    );
    assert_eq!(
        replace.actions,
        vec![
            Action::Replace {
                runs: active.clone()
            },
            Action::Fire {
                scheduled: at("2026-12-04T10:05:00Z")
            }
        ]
    );
    let allow = tick(
        &wf("*/5 * * * *", None, Concurrency::Allow),
        now,
        last,
        &active,
    );
    assert_eq!(
        allow.actions,
        vec![Action::Fire {
            scheduled: at("2026-12-04T10:05:00Z")
        }]
    );
}

#[test]
fn a_suspended_workflow_neither_fires_nor_catches_up() {
    let mut w = wf("*/5 * * * *", None, Concurrency::Forbid);
    w.suspend = true;
    let p = tick(
        &w,
        at("2026-12-04T10:31:00Z"),
        at("2026-12-04T10:00:00Z"),
        &[],
    );
    assert!(p.actions.is_empty());
    assert_eq!(p.last_scheduled, at("2026-12-04T10:30:00Z"));
}

#[test]
fn run_ids_are_deterministic_dns_labels() {
    let w = wf("0 3 * * *", None, Concurrency::Forbid);
    assert_eq!(
        run_id(&w, at("2026-12-04T03:00:00Z")),
        "reindex-202612040300"
    );
    let s = wf("*/10 * * * * *", None, Concurrency::Forbid);
    assert_eq!(
        run_id(&s, at("2026-12-04T03:00:20Z")),
        "reindex-20261204030020"
    );
    let mut long = wf("*/10 * * * * *", None, Concurrency::Forbid);
    long.name = "a".repeat(63);
    let id = run_id(&long, at("2026-12-04T03:00:20Z"));
    assert!(id.len() <= 63, "{id}");
    assert!(id.ends_with("-20261204030020"));
    assert_eq!(id, run_id(&long, at("2026-12-04T03:00:20Z")));
    let mut other = long.clone();
    other.name = format!("{}b", "a".repeat(62));
    assert_ne!(id, run_id(&other, at("2026-12-04T03:00:20Z")));
}

#[test]
fn the_object_is_named_and_labelled_for_its_run() {
    let job = json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"generateName": "reindex-"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}});
    let o = prepare_object(
        job,
        "reindex",
        "reindex-202612040300",
        at("2026-12-04T03:00:00Z"),
    );
    assert_eq!(o["metadata"]["name"], "reindex-202612040300");
    assert!(o["metadata"].get("generateName").is_none());
    assert_eq!(o["metadata"]["namespace"], "default");
    assert_eq!(o["metadata"]["labels"][WORKFLOW_LABEL], "reindex");
    assert_eq!(o["metadata"]["labels"][RUN_LABEL], "reindex-202612040300");
    assert_eq!(
        o["spec"]["template"]["metadata"]["labels"][RUN_LABEL],
        "reindex-202612040300"
    );
    assert_eq!(
        o["metadata"]["annotations"][SCHEDULED_ANNOTATION],
        "2026-12-04T03:00:00Z"
    );
}

#[test]
fn run_one_picks_the_emptiest_reachable_cluster() {
    let c = |n: &str, r: Room| (n.to_string(), r);
    assert_eq!(
        place_one(&[
            c("a", Room::Fits(3)),
            c("b", Room::Fits(7)),
            c("c", Room::Unreachable("down".into()))
        ]),
        Ok("b".into())
    );
    assert_eq!(
        place_one(&[c("b", Room::Fits(3)), c("a", Room::Fits(3))]),
        Ok("a".into())
    );
    let err = place_one(&[
        c("a", Room::Full("no schedulable node has room".into())),
        c("b", Room::Unreachable("timeout".into())),
        c("c", Room::Fits(0)),
    ])
    .expect_err("none fits");
    assert!(err.contains("a: no schedulable node has room"), "{err}");
    assert!(err.contains("b: unreachable (timeout)"), "{err}");
    assert!(err.contains("c: no room"), "{err}");
    assert!(place_one(&[]).is_err());
}

#[test]
fn max_concurrent_limits_starts() {
    assert_eq!(may_start(5, 0, None), 5);
    assert_eq!(may_start(5, 1, Some(2)), 1);
    assert_eq!(may_start(5, 3, Some(2)), 0);
}

fn record(i: u32, phase: RunPhase) -> RunRecord {
    let scheduled = at("2026-12-04T00:00:00Z") + chrono::Duration::minutes(i64::from(i));
    RunRecord {
        workflow: "reindex".into(),
        run_id: format!("reindex-{i:04}"),
        cluster: Some("a".into()),
        object: matches!(
            phase,
            RunPhase::Succeeded | RunPhase::Failed | RunPhase::Running
        )
        .then(|| RunObject {
            api_version: "batch/v1".into(),
            kind: "Job".into(),
            namespace: Some("default".into()),
            name: format!("reindex-{i:04}"),
        }),
        scheduled,
        started: Some(scheduled),
        finished: None,
        phase,
        message: String::new(),
        manual: false,
        dry_run: false,
        object_deleted: false,
    }
}

#[test]
fn history_keeps_the_newest_finished_objects() {
    let mut rs: Vec<RunRecord> = (0..6).map(|i| record(i, RunPhase::Succeeded)).collect();
    rs.push(record(6, RunPhase::Running));
    rs.push(record(7, RunPhase::Skipped));
    let t = trim(&rs, 3);
    assert_eq!(
        t.delete_objects,
        vec!["reindex-0002/a", "reindex-0001/a", "reindex-0000/a"]
    );
    assert!(t.forget.is_empty());
    let many: Vec<RunRecord> = (0..150).map(|i| record(i, RunPhase::Missed)).collect();
    assert_eq!(trim(&many, 3).forget.len(), 50);
}

#[test]
fn jobs_finish_by_condition_and_other_kinds_by_their_rule() {
    let job = |cond: &str| {
        json!({"apiVersion": "batch/v1", "kind": "Job",
        "status": {"conditions": [{"type": cond, "status": "True", "reason": "BackoffLimitExceeded"}]}})
    };
    assert!(matches!(
        assess(&job("Complete"), None),
        Assessed::Succeeded(_)
    ));
    assert_eq!(
        assess(&job("Failed"), None),
        Assessed::Failed("BackoffLimitExceeded".into())
    );
    assert_eq!(
        assess(
            &json!({"apiVersion": "batch/v1", "kind": "Job", "status": {}}),
            None
        ),
        Assessed::Running
    );
    let rule: Completion = Completion {
        succeeded: flotilla_spec::model::FieldMatch {
            path: "status.phase".into(),
            values: vec!["Succeeded".into()],
        },
        failed: flotilla_spec::model::FieldMatch {
            path: "status.phase".into(),
            values: vec!["Failed".into(), "Error".into()],
        },
    };
    let argo = |phase: &str| json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "status": {"phase": phase}});
    assert!(matches!(
        assess(&argo("Succeeded"), Some(&rule)),
        Assessed::Succeeded(_)
    ));
    assert_eq!(
        assess(&argo("Error"), Some(&rule)),
        Assessed::Failed("status.phase is Error".into())
    );
    assert_eq!(assess(&argo("Running"), Some(&rule)), Assessed::Running);
}

#[test]
fn timeouts_count_from_the_start() {
    let t = Duration::parse("10m").expect("d");
    let s = at("2026-12-04T10:00:00Z");
    assert!(!timed_out(Some(s), at("2026-12-04T10:09:59Z"), Some(&t)));
    assert!(timed_out(Some(s), at("2026-12-04T10:10:01Z"), Some(&t)));
    assert!(!timed_out(Some(s), at("2027-12-04T10:10:01Z"), None));
}

type Simulated = (
    Vec<DateTime<Utc>>,
    Vec<(DateTime<Utc>, DateTime<Utc>)>,
    usize,
);

/// A simulated daemon: ticks at the given offsets (seconds from the start), with runs that
/// take `duration` seconds. Returns (fired scheduled times, (scheduled, start, end) of runs,
/// missed records).
fn simulate(w: &Workflow, ticks: &[u32], duration: u32) -> Simulated {
    let start = at("2026-12-04T10:00:00Z");
    let mut last = start;
    let mut fired = Vec::new();
    let mut runs: Vec<(String, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    let mut missed = 0;
    for &t in ticks {
        let now = start + chrono::Duration::seconds(i64::from(t));
        let active: Vec<String> = runs
            .iter()
            .filter(|(_, s, e)| *s <= now && now < *e)
            .map(|(id, _, _)| id.clone())
            .collect();
        let p = tick(w, now, last, &active);
        assert!(p.last_scheduled >= last);
        assert!(p.last_scheduled <= now);
        for a in &p.actions {
            match a {
                Action::Fire { scheduled } => {
                    assert!(*scheduled > last && *scheduled <= now);
                    fired.push(*scheduled);
                    runs.push((
                        run_id(w, *scheduled),
                        now,
                        now + chrono::Duration::seconds(i64::from(duration)),
                    ));
                }
                Action::Replace { runs: gone } => {
                    for (id, _, e) in runs.iter_mut() {
                        if gone.contains(id) {
                            *e = now;
                        }
                    }
                }
                Action::Missed { .. } => missed += 1,
                Action::Skip { .. } => {}
            }
        }
        last = p.last_scheduled;
    }
    (
        fired,
        runs.into_iter().map(|(_, s, e)| (s, e)).collect(),
        missed,
    )
}

fn ticks() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(1u32..600, 1..40).prop_map(|mut v| {
        v.sort_unstable();
        v.dedup();
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn never_two_runs_for_one_scheduled_time(ticks in ticks(), every in 1u32..60, duration in 1u32..200, c in 0usize..3) {
        let conc = [Concurrency::Allow, Concurrency::Forbid, Concurrency::Replace][c];
        let w = wf(&format!("*/{every} * * * * *"), None, conc);
        let (fired, _, _) = simulate(&w, &ticks, duration);
        let mut unique = fired.clone();
        unique.sort();
        unique.dedup();
        prop_assert_eq!(unique.len(), fired.len());
        let ids: std::collections::BTreeSet<_> = fired.iter().map(|s| run_id(&w, *s)).collect();
        prop_assert_eq!(ids.len(), fired.len());
    }

    #[test]
    fn forbid_never_overlaps(ticks in ticks(), every in 1u32..60, duration in 1u32..200) {
        let w = wf(&format!("*/{every} * * * * *"), None, Concurrency::Forbid);
        let (_, runs, _) = simulate(&w, &ticks, duration);
        for pair in runs.windows(2) {
            prop_assert!(pair[0].1 <= pair[1].0, "{:?} overlaps {:?}", pair[0], pair[1]);
        }
    }

    #[test]
    fn after_a_gap_at_most_one_missed_firing_runs(gap in 1u32..3600, every in 1u32..60) {
        let w = wf(&format!("*/{every} * * * * *"), None, Concurrency::Allow);
        // One tick after a gap: at most one fire, whatever was missed.
        let (fired, _, missed) = simulate(&w, &[gap], 1);
        prop_assert!(fired.len() <= 1);
        prop_assert!(missed <= MAX_MISSED_RECORDS);
        // With a starting deadline shorter than how late the tick is, nothing runs.
        let mut d = w.clone();
        d.starting_deadline = Some(Duration::parse("1s").expect("d"));
        let latest = latest_firing(&d, at("2026-12-04T10:00:00Z") + chrono::Duration::seconds(i64::from(gap)));
        let (fired, _, _) = simulate(&d, &[gap], 1);
        if let Some(l) = latest {
            let late = (at("2026-12-04T10:00:00Z") + chrono::Duration::seconds(i64::from(gap))) - l;
            if late > chrono::Duration::seconds(1) {
                prop_assert!(fired.is_empty());
            }
        }
    }
}

#[test]
fn a_run_waiting_for_an_unreachable_cluster_is_given_up_after_its_deadline() {
    let mut w = wf("0 * * * *", None, Concurrency::Forbid);
    let scheduled = at("2026-12-04T10:00:00Z");
    // Default: 15 minutes.
    assert_eq!(
        pending_expired(&w, scheduled, at("2026-12-04T10:14:00Z")),
        None
    );
    let m = pending_expired(&w, scheduled, at("2026-12-04T10:16:00Z")).unwrap_or_default();
    assert!(m.contains("unreachable") && m.contains("900s"), "{m}");
    // The timeout, when set, bounds the wait too; the starting deadline comes first.
    w.timeout = Some(Duration::parse("2m").expect("d"));
    assert!(pending_expired(&w, scheduled, at("2026-12-04T10:03:00Z")).is_some());
    w.starting_deadline = Some(Duration::parse("30m").expect("d"));
    assert_eq!(
        pending_expired(&w, scheduled, at("2026-12-04T10:03:00Z")),
        None
    );
    assert!(pending_expired(&w, scheduled, at("2026-12-04T10:31:00Z")).is_some());
}
