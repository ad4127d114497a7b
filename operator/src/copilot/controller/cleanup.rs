//! Deleting a copilot: its knowledge, audit and approvals tables and its
//! retrieval function leave the tenant schema; its Kubernetes objects go
//! with it through their owner references. Deleting the CRD never drops
//! anything.

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{CustomResourceExt, ResourceExt};

use super::context::CopilotContext;
use super::ddl;
use super::error::Error;
use super::owner::owner_of;
use super::reconcile::{as_tenant, names_of, publish};
use crate::api::CopilotDeployment;
use crate::pipeline::owner::Owner;
use crate::tenant::teardown::{ABANDON, Backend, parse_abandon};

pub async fn cleanup(
    copilot: Arc<CopilotDeployment>,
    ctx: &CopilotContext,
) -> Result<Action, Error> {
    ctx.retention.forget(&copilot.uid().unwrap_or_default());
    if crd_is_going(ctx).await? {
        // Uninstalling the CRDs must never drop a tenant's tables.
        publish(
            &copilot,
            ctx,
            EventType::Warning,
            "CustomResourceDefinitionDeleted",
            "Release",
            "the CopilotDeployment CRD is being deleted: finalizer released; tables kept".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let db = match owner_of(&copilot, ctx, true).await?.0 {
        Owner::Tenant(db) => db,
        // No tenant holds the namespace any more: nothing the copilot made
        // is reachable through it (the tenant's own teardown handled its
        // schema).
        Owner::NotATenantNamespace(message) | Owner::TenantNotReady(message) => {
            tracing::info!("released without dropping tables: {message}");
            return Ok(Action::await_change());
        }
    };
    let names = names_of(&copilot);
    let abandon = parse_abandon(copilot.annotations().get(ABANDON).map(String::as_str));
    if abandon.contains(&Backend::Postgres) {
        publish(
            &copilot,
            ctx,
            EventType::Warning,
            "BackendsAbandoned",
            "Release",
            format!(
                "{ABANDON} names postgres: tables {}, {} and {} and function {} left in schema {}",
                names.knowledge, names.audit, names.approvals, names.retrieve, db.schema
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    let mut conn = db.session(&ctx.shared, &ctx.postgres).await?;
    let tx = as_tenant(&mut conn).await?;
    let statements = ddl::drop_all(&db.schema, &names);
    for statement in &statements {
        tx.batch_execute(statement).await?;
    }
    tx.commit().await?;
    ctx.shared
        .metrics
        .backend_wrote("postgres", statements.len() as u64);
    Ok(Action::await_change())
}

/// Whether the CopilotDeployment CRD itself is being deleted (or is gone).
async fn crd_is_going(ctx: &CopilotContext) -> Result<bool, Error> {
    let crd = Api::<CustomResourceDefinition>::all(ctx.shared.client.clone())
        .get_opt(CopilotDeployment::crd_name())
        .await?;
    Ok(crd.is_none_or(|c| c.metadata.deletion_timestamp.is_some()))
}
