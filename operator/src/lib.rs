//! partnerplane: a Kubernetes operator that provisions isolated, white-label
//! partner intelligence tenants on shared infrastructure.

pub mod api;
pub mod apply;
pub mod backends;
pub mod cli;
pub mod config;
pub mod context;
pub mod copilot;
pub mod credentials;
pub mod error_chain;
pub mod http;
pub mod index;
pub mod key_ref;
pub mod leader;
pub mod metrics;
pub mod naming;
pub mod own_writes;
pub mod pipeline;
pub mod quantity;
pub mod recorder;
pub mod resource_status;
pub mod rollup;
pub mod run;
pub mod slim;
pub mod telemetry;
pub mod tenant;
pub mod tenant_login;
pub mod verified;
pub mod wake;
pub mod watch_backoff;
pub mod watches;
pub mod workflows;
