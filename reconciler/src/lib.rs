//! The reconciler: what should run where, and (in later work) diff, health, inventory and the
//! rollout state machine. Everything here is pure: clusters are reached only through traits.

pub mod plan;
