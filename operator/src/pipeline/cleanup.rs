//! Deleting a pipeline: its derived tables go; its source tables, which hold
//! the tenant's own data, stay unless `sourceDeletionPolicy: Delete`.

use std::sync::Arc;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{CustomResourceExt, ResourceExt};
use tokio_postgres::IsolationLevel;

use super::context::PipelineContext;
use super::error::Error;
use super::owner::Owner;
use super::reconcile::{as_tenant, key_of, owner_of, publish, target_of};
use super::telemetry::PipelineLabels;
use super::{outbox, sql};
use crate::api::pipeline::{MetricPipeline, SourceDeletionPolicy};
use crate::tenant::teardown::{ABANDON, Backend, parse_abandon};

pub async fn cleanup(
    pipeline: Arc<MetricPipeline>,
    ctx: &PipelineContext,
) -> Result<Action, Error> {
    if crd_is_going(ctx).await? {
        // Uninstalling the CRDs must never drop a tenant's tables.
        publish(
            &pipeline,
            ctx,
            EventType::Warning,
            "CustomResourceDefinitionDeleted",
            "Release",
            "the MetricPipeline CRD is being deleted: finalizer released; tables kept".into(),
        )
        .await;
        return Ok(Action::await_change());
    }
    let abandon = parse_abandon(pipeline.annotations().get(ABANDON).map(String::as_str));
    let db = match owner_of(&pipeline, ctx, true).await? {
        Owner::Tenant(db) => db,
        // No tenant holds the namespace any more: nothing the pipeline made
        // is reachable through it (the tenant's own teardown handled its
        // schema).
        Owner::NotATenantNamespace(message) | Owner::TenantNotReady(message) => {
            tracing::info!("released without dropping tables: {message}");
            forget(&pipeline, None, ctx);
            return Ok(Action::await_change());
        }
    };
    if abandon.contains(&Backend::Postgres) {
        publish(
            &pipeline,
            ctx,
            EventType::Warning,
            "BackendsAbandoned",
            "Release",
            format!(
                "{ABANDON} names postgres: derived tables left in schema {}",
                db.schema
            ),
        )
        .await;
        forget(&pipeline, Some(&db.tenant), ctx);
        return Ok(Action::await_change());
    }
    let drop_sources = pipeline.spec.source_deletion_policy == SourceDeletionPolicy::Delete;
    let (target, key) = (target_of(&db), key_of(&pipeline));
    let mut conn = db.session(&ctx.shared, &ctx.postgres).await?;
    let tx = as_tenant(&mut conn, IsolationLevel::ReadCommitted).await?;
    sql::drop_derived(&tx, &target, &key, &pipeline.spec, drop_sources).await?;
    outbox::drop_tables(&tx, &target.schema, &key).await?;
    tx.commit().await?;
    forget(&pipeline, Some(&db.tenant), ctx);
    Ok(Action::await_change())
}

fn forget(pipeline: &MetricPipeline, tenant: Option<&str>, ctx: &PipelineContext) {
    ctx.deliveries.forget(pipeline);
    let Some(tenant) = tenant else { return };
    let labels = PipelineLabels {
        tenant: tenant.to_string(),
        namespace: pipeline.namespace().unwrap_or_default(),
        pipeline: pipeline.name_any(),
    };
    let metrics: Vec<String> = pipeline
        .spec
        .metrics
        .iter()
        .map(|m| m.name.as_str().to_string())
        .collect();
    ctx.shared.metrics.pipelines.forget(&labels, &metrics);
}

/// Whether the MetricPipeline CRD itself is being deleted (or is gone).
async fn crd_is_going(ctx: &PipelineContext) -> Result<bool, Error> {
    let crd = Api::<CustomResourceDefinition>::all(ctx.shared.client.clone())
        .get_opt(MetricPipeline::crd_name())
        .await?;
    Ok(crd.is_none_or(|c| c.metadata.deletion_timestamp.is_some()))
}
