//! What every pipeline reconcile shares.

use std::sync::Arc;

use crate::backends::postgres::Postgres;
use crate::context::{Backoff, Context};

/// The operator's shared context plus the pipeline controller's own
/// Postgres pools — a slow refresh never holds a connection the tenant
/// controller is waiting for — and its webhook client.
pub struct PipelineContext {
    pub shared: Arc<Context>,
    pub postgres: Postgres,
    pub webhooks: super::webhook::WebhookClient,
    /// Breach deliveries to tenants' workflows go through it.
    pub workflows: Option<Arc<crate::workflows::Engine>>,
    pub backoff: Backoff,
}
