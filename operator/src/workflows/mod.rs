//! Per-tenant workflows in n8n, made from the templates shipped with the
//! operator (`operator/workflows/templates/`): for each template a tenant
//! enables, one active workflow tagged with the tenant, using n8n
//! credentials made from the tenant's own Postgres role and Redis user.
//!
//! What the tenant's workflows and credentials should be is decided by pure
//! functions (`desired`, `plan`); `reconcile`, `cleanup` and `delivery` are
//! the only parts that talk to n8n.

pub mod cleanup;
pub mod delivery;
pub mod desired;
pub mod engine;
pub mod names;
pub mod plan;
pub mod reconcile;
pub mod templates;

pub use engine::Engine;

/// The tenant condition of this part.
pub const WORKFLOWS_READY: &str = "WorkflowsReady";
