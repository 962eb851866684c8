//! Fleet rollouts: canary batches across clusters with health and metric gates, soaks,
//! maintenance windows, and automatic rollback to the last good revision.
//!
//! `model` holds the records kept in the state store and the pure planner; `windows` the
//! maintenance-window arithmetic; `engine` the driver that walks a rollout step by step,
//! recording each step before acting (see DESIGN "Rollout semantics"); `executor` the seam
//! through which it applies to and waits on one cluster (here, or through `crate::exchange`).

pub mod control;
pub mod engine;
pub mod executor;
pub mod heal;
pub mod inputs;
pub mod model;
pub mod time;
pub mod windows;

pub use control::{ControlError, Request, phase_after};
pub use engine::{Clock, Clusters, Engine, EngineError, Gates, Outcome, PlacementInput, Verifier};
pub use executor::{ApplyError, ApplyWork, Executor, HealthWork, LocalExecutor};
pub use heal::{Healed, Healer};
pub use inputs::{RenderFailed, placement_inputs};
pub use model::{ClusterRevision, ClusterState, Event, Phase, Rollout, Step, StopRequest};
