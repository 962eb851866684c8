//! Property tests for the bounds fleet.yaml values are held to: any duration text either
//! parses to at most `MAX_DURATION` or is refused (never panics, never overflows), any
//! rollout numbers decode without panicking, and no diagnostic is longer than the cap,
//! whatever the input echoes.

use flotilla_spec::diag::MAX_MESSAGE_BYTES;
use flotilla_spec::types::{Duration, MAX_DURATION};
use flotilla_spec::{NoRepo, check};
use proptest::prelude::*;

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9]{1,3}",
        "[0-9]{10,40}",
        Just("-1".to_string()),
        Just("18446744073709551616".to_string()),
        Just("1e400".to_string()),
        Just(".nan".to_string()),
    ]
}

fn unit() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("ms"),
        Just("s"),
        Just("m"),
        Just("h"),
        Just("d"),
        Just("w"),
        Just(""),
        Just("y")
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn durations_are_bounded_or_refused(parts in prop::collection::vec((number(), unit()), 1..4)) {
        let text: String = parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
        if let Ok(d) = Duration::parse(&text) {
            prop_assert!(d.value <= MAX_DURATION, "{} = {:?}", text, d.value);
        }
    }

    #[test]
    fn rollout_numbers_and_huge_values_decode_with_capped_messages(
        soak in (number(), unit()),
        deadline in (number(), unit()),
        percent in number(),
        max in number(),
        name_len in 0usize..5000,
    ) {
        let name = "N".repeat(name_len);
        let text = format!(
            "apiVersion: flotilla.dev/v1alpha1
kind: Fleet
metadata: {{name: {name}x}}
clusters: [{{name: c}}]
bundles: [{{name: b, path: b}}]
placements:
  - name: p
    bundles: [b]
    clusters: {{}}
    rollout:
      soak: {}{}
      healthDeadline: {}{}
      maxConcurrent: {max}
      windows: [{{schedule: '0 1 * * *', duration: {}{}}}]
      batches: [{{percent: {percent}}}, {{percent: 100}}]
",
            soak.0, soak.1, deadline.0, deadline.1, soak.0, deadline.1
        );
        let c = check("fleet.yaml", &text, &NoRepo);
        for d in &c.diagnostics {
            prop_assert!(d.message.len() <= MAX_MESSAGE_BYTES + 40, "{} bytes", d.message.len());
        }
        if let Some(f) = &c.fleet {
            for p in &f.placements {
                prop_assert!(p.rollout.health_deadline.value <= MAX_DURATION);
                prop_assert!(p.rollout.soak.value <= MAX_DURATION);
            }
        }
    }
}
