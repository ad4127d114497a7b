//! A tenant's workflows when it goes: `Delete` removes its workflows,
//! credentials and tag from n8n; `Retain` deactivates its workflows and
//! keeps them and their credentials, so nothing runs for a tenant that is
//! gone and nothing is lost.

use super::engine::Engine;
use super::names;
use super::reconcile::known;
use crate::api::tenant::WorkflowsStatus;
use crate::backends::n8n::N8nError;

/// Removes the tenant's workflows, credentials and tag.
pub async fn delete_all(
    engine: &Engine,
    tenant: &str,
    recorded: Option<&WorkflowsStatus>,
) -> Result<(), N8nError> {
    let n8n = &engine.n8n;
    let tag = names::tag(tenant);
    let observed = n8n.workflows_tagged(&tag).await?;
    let credentials = known(tenant, recorded, &observed);
    for w in &observed {
        n8n.delete_workflow(&w.id).await?;
    }
    for c in &credentials {
        n8n.delete_credential(&c.id).await?;
    }
    if let Some(t) = n8n.find_tag(&tag).await? {
        n8n.delete_tag(&t.id).await?;
    }
    if !observed.is_empty() || !credentials.is_empty() {
        tracing::info!(
            tenant,
            workflows = observed.len(),
            credentials = credentials.len(),
            "removed the tenant's workflows and credentials from n8n"
        );
    }
    Ok(())
}

/// Deactivates the tenant's workflows; they and their credentials stay.
pub async fn deactivate_all(engine: &Engine, tenant: &str) -> Result<(), N8nError> {
    let n8n = &engine.n8n;
    for w in n8n.workflows_tagged(&names::tag(tenant)).await? {
        if w.active {
            n8n.deactivate(&w.id).await?;
            tracing::info!(tenant, id = %w.id, "deactivated the retained tenant's workflow");
        }
    }
    Ok(())
}
