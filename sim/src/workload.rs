//! Workload simulation: Deployments, StatefulSets, DaemonSets, ReplicaSets and Jobs get the
//! status their controllers would write, a configurable delay after each spec change.
//! Workloads whose images match `unready_images` never become ready (and a Deployment reports
//! ProgressDeadlineExceeded once its `progressDeadlineSeconds` pass).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::{Cluster, now_rfc3339};

/// The simulated controllers' settings.
#[derive(Debug, Clone)]
pub struct Simulation {
    pub ready_delay: Duration,
    pub unready_images: Option<regex::Regex>,
    /// Workloads with a matching image crash-loop: never ready; Jobs fail.
    pub crash_images: Option<regex::Regex>,
}

fn images(obj: &Value) -> Vec<String> {
    let pod = &obj["spec"]["template"]["spec"];
    let mut out = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in pod[list].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            if let Some(i) = c["image"].as_str() {
                out.push(i.to_string());
            }
        }
    }
    out
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    let now = now_rfc3339();
    json!({"type": kind, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": now, "lastTransitionTime": now})
}

impl Simulation {
    /// Whether this workload is held unready by configuration (`over`: a cluster's own
    /// setting, which wins over the global one).
    pub fn held_with(&self, over: Option<&regex::Regex>, obj: &Value) -> bool {
        over.or(self.unready_images.as_ref())
            .is_some_and(|re| images(obj).iter().any(|i| re.is_match(i)))
    }

    /// Whether this workload is held unready by the global setting.
    pub fn held(&self, obj: &Value) -> bool {
        self.held_with(None, obj)
    }

    /// One step: every workload whose delay has passed gets its status.
    pub fn tick(&self, cluster: &Cluster) {
        let now = Instant::now();
        let over = cluster.unready_images();
        let mut st = cluster.lock();
        cluster.establish_pending_crds(&mut st);
        cluster.finish_terminating_namespaces(&mut st);
        let due: Vec<_> = st
            .pending
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= self.ready_delay)
            .map(|(k, since)| (k.clone(), *since))
            .collect();
        let nodes = st
            .objects
            .get(&("".to_string(), "v1".to_string(), "nodes".to_string()))
            .map(|m| m.len())
            .unwrap_or(0) as i64;
        for (key, since) in due {
            let ((g, v, p), (ns, name)) = &key;
            let Some(def) = st.def(g, v, p).cloned() else {
                st.pending.remove(&key);
                continue;
            };
            let Some(obj) = st.get(&def, ns, name) else {
                st.pending.remove(&key);
                continue;
            };
            let crashed = self
                .crash_images
                .as_ref()
                .is_some_and(|re| images(&obj).iter().any(|i| re.is_match(i)));
            let held = crashed || self.held_with(over.as_ref(), &obj);
            let deadline = Duration::from_secs(
                obj["spec"]["progressDeadlineSeconds"]
                    .as_u64()
                    .unwrap_or(600),
            );
            let expired = held && now.duration_since(since) >= deadline;
            let mut status = status_for(p, &obj, held, crashed, expired, nodes);
            match p.as_str() {
                "deployments" => {
                    if let Some(stuck) =
                        crate::pods::sync_deployment(cluster, &mut st, &obj, held, crashed)
                    {
                        stuck_status(&mut status, &stuck, expired);
                    }
                }
                "replicasets" => {
                    crate::pods::sync_replicaset(cluster, &mut st, &obj, held, crashed);
                }
                _ => {}
            }
            if !held || expired || (crashed && p == "jobs") {
                st.pending.remove(&key);
            }
            cluster.set_status(&mut st, &key, status);
        }
    }
}

/// The status of a Deployment whose rollout is stuck with old Pods kept (see
/// [`crate::pods::Stuck`]), worded as the Deployment controller words it.
fn stuck_status(status: &mut Value, stuck: &crate::pods::Stuck, expired: bool) {
    let total = stuck.old + stuck.new;
    status["replicas"] = json!(total);
    status["updatedReplicas"] = json!(stuck.new);
    status["readyReplicas"] = json!(stuck.old);
    status["availableReplicas"] = json!(stuck.old);
    status["unavailableReplicas"] = json!(stuck.new);
    let rs = &stuck.rs_name;
    let available = if stuck.available {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    let progressing = if expired {
        condition(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            &format!("ReplicaSet \"{rs}\" has timed out progressing."),
        )
    } else {
        condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &format!("ReplicaSet \"{rs}\" is progressing."),
        )
    };
    status["conditions"] = json!([available, progressing]);
}

/// The status a controller would report.
pub(crate) fn status_for(
    plural: &str,
    obj: &Value,
    held: bool,
    crashed: bool,
    expired: bool,
    nodes: i64,
) -> Value {
    let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1);
    let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
    let ready = if held { 0 } else { replicas };
    match plural {
        "deployments" => {
            // The controller names the ReplicaSet of the current template.
            let rs = format!(
                "{}-{}",
                obj["metadata"]["name"].as_str().unwrap_or(""),
                crate::pods::template_hash(&obj["spec"]["template"])
            );
            let progressing = if expired {
                condition(
                    "Progressing",
                    "False",
                    "ProgressDeadlineExceeded",
                    &format!("ReplicaSet \"{rs}\" has timed out progressing."),
                )
            } else if held {
                condition(
                    "Progressing",
                    "True",
                    "ReplicaSetUpdated",
                    &format!("ReplicaSet \"{rs}\" is progressing."),
                )
            } else {
                condition(
                    "Progressing",
                    "True",
                    "NewReplicaSetAvailable",
                    &format!("ReplicaSet \"{rs}\" has successfully progressed."),
                )
            };
            let available = if crashed {
                condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability (simulated: containers in CrashLoopBackOff).",
                )
            } else if held {
                condition(
                    "Available",
                    "False",
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.",
                )
            } else {
                condition(
                    "Available",
                    "True",
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.",
                )
            };
            let mut s = json!({"observedGeneration": generation, "replicas": replicas,
                "updatedReplicas": replicas, "conditions": [available, progressing]});
            if held {
                s["unavailableReplicas"] = json!(replicas);
            } else {
                s["readyReplicas"] = json!(ready);
                s["availableReplicas"] = json!(ready);
            }
            s
        }
        "replicasets" => json!({"observedGeneration": generation, "replicas": replicas,
            "fullyLabeledReplicas": replicas, "readyReplicas": ready, "availableReplicas": ready}),
        "statefulsets" => {
            let rev = format!(
                "{}-{generation}",
                obj["metadata"]["name"].as_str().unwrap_or("")
            );
            json!({"observedGeneration": generation, "replicas": replicas, "readyReplicas": ready,
                "availableReplicas": ready, "currentReplicas": replicas, "updatedReplicas": replicas,
                "currentRevision": rev, "updateRevision": rev, "collisionCount": 0})
        }
        "daemonsets" => {
            let ready = if held { 0 } else { nodes };
            json!({"observedGeneration": generation, "desiredNumberScheduled": nodes,
                "currentNumberScheduled": nodes, "updatedNumberScheduled": nodes,
                "numberReady": ready, "numberAvailable": ready, "numberMisscheduled": 0})
        }
        "jobs" => {
            let completions = obj["spec"]["completions"].as_i64().unwrap_or(1);
            if crashed {
                let failed = obj["spec"]["backoffLimit"].as_i64().unwrap_or(6) + 1;
                let msg = "Job has reached the specified backoff limit (simulated: --crash-images)";
                json!({"failed": failed, "startTime": now_rfc3339(),
                    "conditions": [condition("FailureTarget", "True", "BackoffLimitExceeded", msg),
                                   condition("Failed", "True", "BackoffLimitExceeded", msg)]})
            } else if held {
                json!({"active": obj["spec"]["parallelism"].as_i64().unwrap_or(1), "ready": 0,
                    "startTime": now_rfc3339()})
            } else {
                let now = now_rfc3339();
                json!({"succeeded": completions, "startTime": now, "completionTime": now,
                    "conditions": [condition("SuccessCriteriaMet", "True", "CompletionsReached", "Reached expected number of succeeded pods"),
                                   condition("Complete", "True", "CompletionsReached", "Reached expected number of succeeded pods")]})
            }
        }
        _ => obj["status"].clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_images_stay_unready() {
        let sim = Simulation {
            ready_delay: Duration::ZERO,
            unready_images: regex::Regex::new("broken").ok(),
            crash_images: None,
        };
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 3,
            "template": {"spec": {"containers": [{"name": "a", "image": "x/broken:1"}]}}}});
        assert!(sim.held(&d));
        let s = status_for("deployments", &d, true, false, false, 3);
        assert_eq!(s["observedGeneration"], 2);
        assert!(s["availableReplicas"].is_null());
        let ok = status_for("deployments", &d, false, false, false, 3);
        let job = json!({"spec": {"backoffLimit": 2}});
        let failed = status_for("jobs", &job, true, true, false, 3);
        assert_eq!(failed["failed"], 3);
        assert_eq!(failed["conditions"][1]["type"], "Failed");
        assert_eq!(ok["availableReplicas"], 3);
    }
}
