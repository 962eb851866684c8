//! flotilla's pull-mode agent (issue #20): a member cluster with `connect: agent` is never
//! contacted by the hub. The hub's rollout engine publishes per-cluster work through a
//! management cluster's API server ([`transport::KubeExchange`], an implementation of the
//! reconciler's `Exchange`); `flotilla agent` ([`run::run`]), running in or next to the
//! member cluster, applies it with the reconciler's `LocalExecutor`, writes results and an
//! [`report::AgentReport`] back, keeps a local copy of what it was assigned and self-heals
//! it whether or not the management cluster answers.
//!
//! Clusters are reached only through `flotilla_reconciler::cluster::Cluster`: no kube-rs,
//! no kubeconfig, no state store here (the CLI connects, the hub passes its manifests in).

pub mod report;
pub mod run;
pub mod transport;

pub use report::{AgentReport, PlacementStatus};
pub use run::{AgentConfig, AgentError, Assignment, run};
pub use transport::KubeExchange;
