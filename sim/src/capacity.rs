//! Node capacity accounting: what each simulated node has allocatable, what the simulated
//! Pods on it request, and what is left (burst pools read the free part). Nothing is
//! enforced: a node can be over-committed, its free capacity then goes negative.

use serde_json::Value;

use crate::cluster::{Cluster, load};

/// Amounts of the three resources the sim accounts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub pods: i64,
}

impl Resources {
    fn add(&mut self, o: Resources) {
        self.cpu_millis += o.cpu_millis;
        self.memory_bytes += o.memory_bytes;
        self.pods += o.pods;
    }

    fn minus(self, o: Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis - o.cpu_millis,
            memory_bytes: self.memory_bytes - o.memory_bytes,
            pods: self.pods - o.pods,
        }
    }

    /// `{"cpu": .., "memory": .., "pods": ..}` as found in `status.allocatable`.
    fn from_list(v: &Value) -> Resources {
        Resources {
            cpu_millis: v["cpu"].as_str().and_then(cpu_millis).unwrap_or(0),
            memory_bytes: v["memory"].as_str().and_then(bytes).unwrap_or(0),
            pods: v["pods"].as_str().and_then(bytes).unwrap_or(0),
        }
    }
}

/// One node's accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCapacity {
    pub node: String,
    pub allocatable: Resources,
    /// The sum of the requests of the Pods bound to the node (and one pod slot each).
    pub requested: Resources,
    /// `allocatable - requested`.
    pub free: Resources,
}

/// A CPU quantity in millicores: `2`, `0.5`, `250m`.
pub fn cpu_millis(q: &str) -> Option<i64> {
    flotilla_spec::types::quantity_milli(q).map(|m| i64::try_from(m).unwrap_or(i64::MAX))
}

/// A quantity in units: `128Mi`, `1Gi`, `1G`, `500k`, `1e3`, `110`.
pub fn bytes(q: &str) -> Option<i64> {
    flotilla_spec::types::quantity_milli(q)
        .map(|m| i64::try_from(m.div_ceil(1000)).unwrap_or(i64::MAX))
}

/// What a Pod requests: the sum over its containers (init containers run before and are not
/// added, as the scheduler's max(init, sum) would mostly give the same), one pod slot.
fn pod_requests(pod: &Value) -> Resources {
    let mut r = Resources {
        pods: 1,
        ..Default::default()
    };
    for c in pod["spec"]["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let req = &c["resources"]["requests"];
        r.add(Resources {
            pods: 0,
            ..Resources::from_list(req)
        });
    }
    r
}

impl Cluster {
    /// Per node: allocatable, requested by the Pods bound to it (not Succeeded or Failed)
    /// and free capacity.
    pub fn free_capacity(&self) -> Vec<NodeCapacity> {
        let st = self.lock();
        let key = |p: &str| (String::new(), "v1".to_string(), p.to_string());
        let mut out: Vec<NodeCapacity> = st
            .objects
            .get(&key("nodes"))
            .map(|m| {
                m.values()
                    .map(|t| {
                        let n = load(t);
                        NodeCapacity {
                            node: n["metadata"]["name"].as_str().unwrap_or("").to_string(),
                            allocatable: Resources::from_list(&n["status"]["allocatable"]),
                            requested: Resources::default(),
                            free: Resources::default(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        if let Some(pods) = st.objects.get(&key("pods")) {
            for t in pods.values() {
                let p = load(t);
                if matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
                    continue;
                }
                let Some(node) = p["spec"]["nodeName"].as_str() else {
                    continue;
                };
                if let Some(n) = out.iter_mut().find(|n| n.node == node) {
                    n.requested.add(pod_requests(&p));
                }
            }
        }
        for n in &mut out {
            n.free = n.allocatable.minus(n.requested);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(cpu_millis("250m"), Some(250));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(cpu_millis("0.5"), Some(500));
        assert_eq!(cpu_millis("x"), None);
        assert_eq!(bytes("128Mi"), Some(128 << 20));
        assert_eq!(bytes("1G"), Some(1_000_000_000));
        assert_eq!(bytes("110"), Some(110));
        assert_eq!(bytes("1e3"), Some(1000));
    }
}
