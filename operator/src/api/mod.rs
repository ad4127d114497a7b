//! The custom resources of `partnerplane.io/v1alpha1`.
//!
//! Types only: every field carries the description `kubectl explain` shows,
//! and the schema (bounds, patterns, CEL rules) rejects bad input at the API
//! server, before any controller sees it.

pub mod conditions;
pub mod copilot;
pub mod crd;
pub mod metric;
pub mod pipeline;
pub mod tenant;

pub use copilot::{CopilotDeployment, CopilotDeploymentSpec, CopilotDeploymentStatus};
pub use pipeline::{MetricPipeline, MetricPipelineSpec, MetricPipelineStatus};
pub use tenant::{PartnerTenant, PartnerTenantSpec, PartnerTenantStatus};

/// API group of every partnerplane resource.
pub const GROUP: &str = "partnerplane.io";
/// Served and stored version.
pub const VERSION: &str = "v1alpha1";
