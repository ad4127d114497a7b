//! Delivers a pipeline's pending breach webhooks from its outbox. Each
//! delivery is read in one short transaction, sent outside any transaction,
//! and its outcome recorded in another, so a slow receiver never holds a
//! database transaction open.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use tokio_postgres::IsolationLevel;

use super::context::PipelineContext;
use super::error::Error;
use super::owner::TenantDatabase;
use super::reconcile::{as_tenant, key_of, publish};
use super::telemetry::OutcomeLabels;
use super::{outbox, webhook};
use crate::api::pipeline::{BreachActionKind, MetricPipeline};
use crate::naming::TenantNames;
use crate::workflows;
use kube::runtime::events::EventType;

/// Deliveries sent per reconcile; the rest wait for the next one.
const BATCH: i64 = 20;
/// No delivery is started after this long in one reconcile: slow
/// receivers hold the tenant's turn (`fairness`) and a worker no longer.
const BUDGET: Duration = Duration::from_secs(30);
/// Deliveries of one reconcile are abandoned after this long in all (one
/// started within the budget can take its own timeout past it).
const DEADLINE: Duration = Duration::from_secs(60);

/// Where the pipeline's breaches go: each webhook's URL, and for each
/// Workflow action its tenant workflow's target (resolved at delivery).
pub fn targets(spec: &crate::api::pipeline::MetricPipelineSpec) -> Vec<String> {
    spec.on_breach
        .iter()
        .filter_map(|a| match a.kind {
            BreachActionKind::Webhook => a.url.clone(),
            BreachActionKind::Workflow => a.workflow.map(workflows::delivery::target),
            BreachActionKind::Event | BreachActionKind::Condition => None,
        })
        .collect()
}

/// Sends what is due; returns how long until the next attempt, if any is
/// pending. Failures are logged and retried later, never fatal to the
/// reconcile: the refresh has already been committed.
pub async fn deliver_due(
    pipeline: &MetricPipeline,
    db: &TenantDatabase,
    ctx: &PipelineContext,
) -> Option<Duration> {
    // The tenant's code runs on the outbox's writes too: however long it
    // takes, the worker and the tenant's turn are given back.
    match tokio::time::timeout(DEADLINE, deliver(pipeline, db, ctx)).await {
        Ok(Ok(next)) => next,
        Ok(Err(e)) => {
            tracing::warn!(reason = e.reason(), "webhook deliveries: {}", e.message());
            Some(Duration::from_secs(30))
        }
        Err(_) => {
            tracing::warn!(
                "webhook deliveries took longer than {}s",
                DEADLINE.as_secs()
            );
            Some(Duration::from_secs(30))
        }
    }
}

async fn deliver(
    pipeline: &MetricPipeline,
    db: &TenantDatabase,
    ctx: &PipelineContext,
) -> Result<Option<Duration>, Error> {
    if targets(&pipeline.spec).is_empty() {
        return Ok(None);
    }
    let key = key_of(pipeline);
    let mut conn = db.session(&ctx.shared, &ctx.postgres).await?;
    let pending = {
        let tx = as_tenant(&mut conn, IsolationLevel::ReadCommitted).await?;
        let due = outbox::due(&tx, &db.schema, &key, Timestamp::now(), BATCH).await?;
        tx.commit().await?;
        due
    };
    let started = std::time::Instant::now();
    for delivery in &pending {
        if started.elapsed() > BUDGET {
            break;
        }
        let action = pipeline
            .spec
            .on_breach
            .iter()
            .find(|a| a.url.as_deref() == Some(delivery.url.as_str()));
        let workflow = workflows::delivery::template_of(&delivery.url);
        let outcome = match (workflow, action.and_then(|a| a.signing_secret.as_ref())) {
            (Some(template), _)
                if pipeline
                    .spec
                    .on_breach
                    .iter()
                    .any(|a| a.workflow == Some(template))
                    && !db.workflows.contains(&template) =>
            {
                // Known without asking n8n, which would answer 404 for
                // every breach until the tenant enables the template.
                Err(webhook::DeliveryFailure {
                    retryable: true,
                    message: format!(
                        "the tenant's {template:?} workflow is not enabled (spec.workflows.templates of PartnerTenant {})",
                        db.tenant
                    ),
                })
            }
            (Some(template), _)
                if pipeline
                    .spec
                    .on_breach
                    .iter()
                    .any(|a| a.workflow == Some(template)) =>
            {
                workflows::delivery::deliver(
                    ctx.workflows.as_deref(),
                    &db.tenant,
                    template,
                    delivery,
                    Timestamp::now(),
                )
                .await
            }
            (Some(_), _) => Err(webhook::DeliveryFailure {
                retryable: false,
                message: "the workflow is no longer in the pipeline's spec".into(),
            }),
            (None, None) => Err(webhook::DeliveryFailure {
                retryable: false,
                message: "the webhook is no longer in the pipeline's spec".into(),
            }),
            (None, Some(secret_ref)) => {
                let namespace = pipeline.namespace().unwrap_or_default();
                let names = TenantNames::new(&db.tenant, Some(&namespace));
                match crate::key_ref::read(&ctx.shared, &namespace, &names, secret_ref).await {
                    Ok(Some(secret)) => {
                        ctx.webhooks
                            .deliver(delivery, secret.as_ref(), Timestamp::now())
                            .await
                    }
                    Ok(None) => Err(webhook::DeliveryFailure {
                        retryable: true,
                        message: format!(
                            "the signing secret {} does not exist or is empty",
                            crate::key_ref::describe(&ctx.shared, &namespace, &names, secret_ref)
                        ),
                    }),
                    Err(e) => Err(webhook::DeliveryFailure {
                        retryable: true,
                        message: format!("the signing secret cannot be read: {e}"),
                    }),
                }
            }
        };
        let tx = as_tenant(&mut conn, IsolationLevel::ReadCommitted).await?;
        let label = match &outcome {
            Ok(()) => {
                outbox::mark_delivered(&tx, &db.schema, &key, &delivery.id, Timestamp::now())
                    .await?;
                "delivered"
            }
            Err(failure) => {
                let gave_up = outbox::mark_failed(
                    &tx,
                    &db.schema,
                    &key,
                    delivery,
                    &failure.message,
                    failure.retryable,
                    Timestamp::now(),
                )
                .await?;
                if gave_up {
                    publish(
                        pipeline,
                        ctx,
                        EventType::Warning,
                        "WebhookDeliveryFailed",
                        "Deliver",
                        // The host only: a URL may carry a token.
                        format!(
                            "gave up delivering {} to {}: {}",
                            delivery.id,
                            match workflow {
                                Some(template) => format!("the tenant's {template:?} workflow"),
                                None => reqwest::Url::parse(&delivery.url)
                                    .ok()
                                    .and_then(|u| u.host_str().map(str::to_string))
                                    .unwrap_or_else(|| "the webhook".into()),
                            },
                            failure.message
                        ),
                    )
                    .await;
                    "abandoned"
                } else {
                    "failed"
                }
            }
        };
        tx.commit().await?;
        ctx.shared
            .metrics
            .pipelines
            .deliveries
            .get_or_create(&OutcomeLabels { outcome: label })
            .inc();
    }
    let tx = as_tenant(&mut conn, IsolationLevel::ReadCommitted).await?;
    let next = outbox::next_attempt(&tx, &db.schema, &key).await?;
    tx.commit().await?;
    conn.release();
    Ok(next.map(|at| {
        let wait = at.duration_since(Timestamp::now());
        Duration::try_from(wait)
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1))
    }))
}
