//! Property tests: no request makes the webhook parser panic; a correctly signed push is
//! never refused, a request with a wrong signature never accepted.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use flotilla_daemon::webhook::{Refusal, Secret, Verdict, judge};
use proptest::prelude::*;

const SIGNATURE_HEADERS: &[&str] = &[
    "x-hub-signature-256",
    "x-gitlab-token",
    "x-flotilla-signature",
    "x-github-event",
    "x-gitlab-event",
    "content-type",
];

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,80}",
        "sha256=[0-9a-f]{0,70}",
        Just("sha256=".to_string()),
        Just("push".to_string()),
        Just("Push Hook".to_string()),
    ]
}

fn headers(pairs: &[(usize, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (i, v) in pairs {
        let name = HeaderName::from_static(SIGNATURE_HEADERS[i % SIGNATURE_HEADERS.len()]);
        if let Ok(v) = HeaderValue::from_str(v) {
            h.append(name, v);
        }
    }
    h
}

fn secret() -> Secret {
    Secret::from_file_contents(b"webhook-secret\n").expect("secret")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_requests_never_panic_and_unsigned_ones_are_refused(
        pairs in prop::collection::vec((0usize..16, header_value()), 0..6),
        body in prop::collection::vec(any::<u8>(), 0..512),
        tracked in "[a-z/]{0,12}",
    ) {
        let h = headers(&pairs);
        let verdict = judge(&h, &body, &secret(), &tracked);
        let signed = ["x-hub-signature-256", "x-gitlab-token", "x-flotilla-signature"]
            .iter()
            .any(|n| h.contains_key(*n));
        if !signed {
            prop_assert_eq!(verdict, Err(Refusal::Unsigned));
        } else {
            // Random signatures are wrong: nothing random is ever accepted.
            prop_assert!(verdict.is_err(), "{:?}", verdict);
        }
    }

    #[test]
    fn signed_bodies_of_any_shape_are_judged_without_panicking(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            "\\PC{0,200}".prop_map(String::into_bytes),
            "[a-z/]{0,30}".prop_map(|r| format!("{{\"ref\": \"{r}\", \"after\": \"0\"}}").into_bytes()),
            Just(b"{\"ref\": 5}".to_vec()),
            Just(b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec()),
        ],
        tracked in "[a-z]{1,8}",
    ) {
        let s = secret();
        let mut h = HeaderMap::new();
        let sig = format!("sha256={}", s.sign(&body));
        h.insert("x-flotilla-signature", HeaderValue::from_str(&sig).expect("ascii"));
        match judge(&h, &body, &s, &tracked) {
            Ok(Verdict::Fetch { .. }) | Ok(Verdict::Ignore { .. }) => {}
            Err(Refusal::Malformed(..)) => {
                // Only a body that is not JSON is malformed.
                prop_assert!(serde_json::from_slice::<serde_json::Value>(&body).is_err());
            }
            Err(other) => prop_assert!(false, "a signed request refused: {:?}", other),
        }
    }
}
