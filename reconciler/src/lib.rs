//! The reconciler: what should run where (`plan`), and how live clusters compare with it
//! (`diff`, `health`, `inventory`, `sync`, `report`). Clusters are reached only through the
//! [`cluster::Cluster`] trait; everything but `sync` is pure.

pub mod burst;
pub mod capacity;
pub mod cluster;
pub mod desired;
pub mod diff;
pub mod exchange;
pub mod health;
pub mod inventory;
pub mod plan;
pub mod report;
pub mod review;
pub mod rollout;
pub mod shard;
pub mod sync;
pub mod tenancy;
pub mod workflow;
