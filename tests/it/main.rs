//! flotilla's integration tests: one binary, driving the real `flotilla` executable.
//!
//! Data-driven cases live in `fixtures/<area>/<case>/`; set `UPDATE_EXPECT=1` to rewrite the
//! expected outputs after a deliberate change (then review the diff).

mod agent_support;
mod git_support;
mod kube_support;
#[path = "../../state/tests/pg/mod.rs"]
mod pg_support;
mod prometheus_support;
mod registry_support;
mod serve_support;
mod support;

mod agent;
mod agent_fleet;
mod agent_rbac;
mod backup;
mod burst;
mod cli;
mod cluster;
mod daemon;
mod demo;
mod deploy;
mod exchange;
mod fleet_scale;
mod gates;
mod git_source;
mod ha;
mod ha_leases;
mod hardening;
mod images;
mod jsonnet_worker;
mod notify;
mod prdiff;
mod real_heal;
mod real_kube;
mod real_notify;
mod real_target_rbac;
mod real_teams;
mod reconcile;
mod render_fixtures;
mod rollout;
mod signed;
mod sim;
mod sim_kube;
mod sops;
mod spec_fixtures;
mod teams;
mod ui;
mod workflows;
