//! What each kind of sink is sent. Pure.

use hmac::Mac;
use serde_json::{Value, json};
use sha2::Digest;

use crate::Event;

/// The generic webhook's body: the event's fields, the fleet, and the rule's text.
pub fn webhook_body(fleet: &str, e: &Event, text: &str) -> Vec<u8> {
    let mut v = serde_json::to_value(e).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        m.insert("fleet".into(), Value::String(fleet.to_string()));
        m.insert("text".into(), Value::String(text.to_string()));
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// `sha256=<hex HMAC-SHA256 of body>`, the `X-Flotilla-Signature` header.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex(&mac.finalize().into_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A Slack-compatible incoming webhook's body.
pub fn slack_body(text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({ "text": text })).unwrap_or_default()
}

/// The namespace of flotilla's own objects in a target cluster.
pub const NAMESPACE: &str = "flotilla-system";

/// Whether a trigger is bad news (`Warning` Events) or not (`Normal`).
pub fn is_warning(trigger: &str) -> bool {
    matches!(
        trigger,
        "rollout-failed"
            | "rolled-back"
            | "drift-found"
            | "commit-rejected"
            | "workflow-failed"
            | "backup-failed"
    )
}

/// `rolled-back` → `RolledBack`: the Event's reason.
pub fn reason(trigger: &str) -> String {
    trigger
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// A `core/v1` Event about `e` for cluster `cluster`: about the placement's inventory
/// ConfigMap (`flotilla-system/flotilla-inventory-<placement>`) when the event has a
/// placement, else about the `flotilla-system` Namespace (then the Event lives in
/// `default`, as Events of cluster-scoped objects do). Its name is unique per event and
/// cluster, so applying it twice changes nothing.
pub fn kube_event(e: &Event, cluster: &str, text: &str) -> Value {
    let digest =
        sha2::Sha256::digest(format!("{}\0{}\0{}\0{}", e.at, e.seq, e.trigger, cluster).as_bytes());
    let id = &hex(&digest)[..16];
    let (namespace, involved, prefix) = match &e.placement {
        Some(p) => (
            NAMESPACE,
            json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "namespace": NAMESPACE,
                "name": format!("flotilla-inventory-{p}"),
            }),
            p.as_str(),
        ),
        None => (
            "default",
            json!({"apiVersion": "v1", "kind": "Namespace", "name": NAMESPACE}),
            "flotilla",
        ),
    };
    let kind = if is_warning(e.trigger.name()) {
        "Warning"
    } else {
        "Normal"
    };
    // An Event's message is limited (1 KiB is plenty to read and far under the API's cap).
    let message: String = text.chars().take(1024).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{prefix}.{id}"),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "flotilla"},
        },
        "involvedObject": involved,
        "reason": reason(e.trigger.name()),
        "message": message,
        "type": kind,
        "source": {"component": "flotilla"},
        "reportingComponent": "flotilla.dev/notify",
        "reportingInstance": "flotilla",
        "firstTimestamp": e.at,
        "lastTimestamp": e.at,
        "count": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            seq: 3,
            at: "2026-12-04T03:00:00.000Z".into(),
            trigger: crate::Trigger::RolledBack,
            placement: Some("web".into()),
            cluster: Some("prod-1".into()),
            message: "canary failed".into(),
            ..Event::default()
        }
    }

    #[test]
    fn webhook_bodies_carry_the_event_and_a_verifiable_signature() {
        let body = webhook_body("acme", &event(), "web rolled back");
        let v: Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["trigger"], "rolled-back");
        assert_eq!(v["cluster"], "prod-1");
        assert_eq!(v["fleet"], "acme");
        assert_eq!(v["text"], "web rolled back");
        let sig = signature(b"key", &body);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"key").expect("key");
        mac.update(&body);
        let hexsig = sig.strip_prefix("sha256=").expect("prefix");
        let raw: Vec<u8> = (0..hexsig.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hexsig[i..i + 2], 16).expect("hex"))
            .collect();
        assert!(mac.verify_slice(&raw).is_ok());
        assert_ne!(signature(b"other", &body), sig);
    }

    #[test]
    fn kubernetes_events_name_the_inventory_and_tell_warnings() {
        let e = event();
        let k = kube_event(&e, "prod-1", "web rolled back");
        assert_eq!(k["metadata"]["namespace"], NAMESPACE);
        assert_eq!(k["involvedObject"]["name"], "flotilla-inventory-web");
        assert_eq!(k["reason"], "RolledBack");
        assert_eq!(k["type"], "Warning");
        assert_ne!(
            k["metadata"]["name"],
            kube_event(&e, "prod-2", "x")["metadata"]["name"],
            "one Event per cluster"
        );
        let fleetwide = Event {
            trigger: crate::Trigger::RolloutSucceeded,
            placement: None,
            ..e
        };
        let k = kube_event(&fleetwide, "prod-1", "done");
        assert_eq!(k["metadata"]["namespace"], "default");
        assert_eq!(k["involvedObject"]["kind"], "Namespace");
        assert_eq!(k["type"], "Normal");
        assert_eq!(reason("self-healed"), "SelfHealed");
    }

    #[test]
    fn slack_bodies_are_text() {
        let v: Value = serde_json::from_slice(&slack_body("hi \"there\"")).expect("json");
        assert_eq!(v, json!({"text": "hi \"there\""}));
    }
}
