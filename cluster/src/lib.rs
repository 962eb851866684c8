//! The kube-rs implementation of [`flotilla_reconciler::cluster::Cluster`].
//!
//! - [`Kubeconfig`] loads kubeconfig files like kubectl (explicit path, else `KUBECONFIG`
//!   merged, else `~/.kube/config`).
//! - [`Connector`] holds one kubeconfig and the [`ClientSettings`] (QPS/burst, timeouts,
//!   retries) and makes one [`KubeCluster`] per fleet cluster from its context name.
//! - [`KubeCluster`] implements the trait: cached discovery, get, paged list, server-side
//!   apply (field manager `flotilla`) and delete. Both mutations go through one function that
//!   refuses them in read-only mode before anything is sent and writes an audit line (tracing
//!   target `flotilla::audit`; no object bodies, no credentials).
//!
//! This crate knows nothing of fleet.yaml, rendering or rollouts.

mod budget;
mod connector;
mod kube_cluster;
mod kubeconfig;
pub mod segment;

pub use budget::{RetryPolicy, TokenBucket};
pub use connector::{ClientSettings, ConnectError, Connector};
pub use kube_cluster::{AUDIT_TARGET, FIELD_MANAGER, KubeCluster};
pub use kubeconfig::{Kubeconfig, KubeconfigError};
