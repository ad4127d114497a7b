//! CopilotDeployment: the operator's controller (tables in the tenant
//! schema, Kubernetes objects in the tenant namespace) and the copilot
//! server itself (`partnerplane copilot`), which enforces the guardrails the
//! custom resource declares. The two meet in [`names`] (what the tables and
//! functions are called) and [`server_config`] (what the server is told).

pub mod controller;
pub mod names;
pub mod server;
pub mod server_config;
