//! What every pipeline reconcile shares.

use std::sync::Arc;

use crate::backends::postgres::Postgres;
use crate::context::{Backoff, Context};

/// The operator's shared context plus the Postgres backends the pipeline
/// controller logs in to as each tenant (never through the tenant
/// controller's admin pool, so a slow refresh holds none of its
/// connections) and its webhook client.
pub struct PipelineContext {
    pub shared: Arc<Context>,
    pub postgres: Postgres,
    pub webhooks: super::webhook::WebhookClient,
    /// Breach deliveries to tenants' workflows go through it.
    pub workflows: Option<Arc<crate::workflows::Engine>>,
    pub backoff: Backoff,
    /// At most half the workers per tenant at a time.
    pub turns: super::fairness::TenantTurns,
    /// The same for the delivery workers (`dispatch`).
    pub delivery_turns: super::fairness::TenantTurns,
    pub deliveries: super::dispatch::DeliveryWake,
}
