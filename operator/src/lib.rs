//! partnerplane: a Kubernetes operator that provisions isolated, white-label
//! partner intelligence tenants on shared infrastructure.

pub mod api;
pub mod backends;
pub mod cli;
pub mod config;
pub mod http;
pub mod metrics;
pub mod naming;
pub mod run;
pub mod telemetry;
