//! `flotilla serve`: the long-running reconciler. It follows one branch of the fleet
//! repository (polling, and at once on a verified webhook), checks and renders each new
//! commit, hands every placement's new revision to its rollout engine (a newer commit
//! supersedes a running rollout), compares clusters with Git on `settings.driftInterval`
//! (optionally self-healing), and serves `/healthz`, `/readyz`, `/metrics`, `/hooks/git` and
//! a JSON status API. An invalid commit is reported and the last good revision keeps
//! running. SIGTERM drains: rollouts stop at their next step, which the state store already
//! holds, and resume on the next start.

pub mod adapters;
pub mod agents;
pub mod backups;
pub mod burst;
pub mod config;
mod drift;
pub mod events;
mod exchange;
mod ha;
mod heal;
mod http;
pub mod images;
pub mod jsonnet_worker;
pub mod listen;
pub mod metrics;
mod notify;
mod prune;
pub mod revision;
mod run;
pub mod status;
mod supervise;
mod ui;
pub mod webhook;
mod workers;
mod workflows;

pub use config::{Config, ConfigError};
pub use run::{DaemonError, Running, start};
