//! The CopilotDeployment controller: a copilot's tables, HNSW index and
//! retrieval function in the tenant schema, and its ConfigMap, Deployment,
//! Service, NetworkPolicy, PodDisruptionBudget and autoscaler in the tenant
//! namespace, with bounded concurrency of its own.

pub mod cleanup;
pub mod context;
pub mod ddl;
pub mod error;
pub mod network;
pub mod objects;
pub mod owner;
pub mod reconcile;
pub mod status;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::runtime::reflector::{self, ObjectRef};
use tracing::Instrument;

use crate::api::{CopilotDeployment, PartnerTenant};
use crate::backends::postgres::Postgres;
use crate::context::{Backoff, Context};
use crate::metrics::{ControllerLabels, ErrorLabels};
use context::{CopilotContext, CopilotSettings, CopilotStreams, RetentionClock};
use error::Error;

/// Finalizer guarding the copilot's tables in the tenant schema.
pub const FINALIZER: &str = "partnerplane.io/copilot-cleanup";
const CONTROLLER: &str = "copilotdeployment";

async fn reconcile(
    copilot: Arc<CopilotDeployment>,
    ctx: Arc<CopilotContext>,
) -> Result<Action, Error> {
    for ready in [&ctx.shared.caches_ready, &ctx.caches_ready] {
        if ready.clone().wait_for(|ready| *ready).await.is_err() {
            return Err(Error::TenantNotReady("the watch caches".into()));
        }
    }
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        controller = CONTROLLER,
        namespace = %copilot.namespace().unwrap_or_default(),
        copilot = %copilot.name_any()
    );
    let labels = ControllerLabels {
        controller: CONTROLLER,
    };
    ctx.shared.metrics.reconciles.get_or_create(&labels).inc();
    let api: Api<CopilotDeployment> = Api::namespaced(
        ctx.shared.client.clone(),
        &copilot.namespace().unwrap_or_default(),
    );
    let result = finalizer::finalizer(&api, FINALIZER, copilot, |event| async {
        match event {
            FinalizerEvent::Apply(c) => reconcile::apply(c, &ctx).await,
            FinalizerEvent::Cleanup(c) => cleanup::cleanup(c, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.shared
        .metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

fn key(namespace: Option<String>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or_default())
}

fn error_policy(
    copilot: Arc<CopilotDeployment>,
    error: &Error,
    ctx: Arc<CopilotContext>,
) -> Action {
    ctx.shared
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: CONTROLLER,
            reason: error.reason(),
        })
        .inc();
    let key = key(copilot.namespace(), &copilot.name_any());
    let delay = ctx.backoff.next(&key);
    tracing::warn!(copilot = %key, reason = error.reason(), retry_in = ?delay, "reconcile failed: {}", error.message());
    Action::requeue(delay)
}

/// What a reconcile must see: spec changes, deletion, finalizers and the
/// abandon annotation — not the controller's own status writes, which
/// would otherwise run every copilot a second time after each reconcile.
fn worth_reconciling(copilot: &CopilotDeployment) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    copilot.metadata.generation.hash(&mut hasher);
    copilot
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    copilot.metadata.finalizers.hash(&mut hasher);
    copilot
        .annotations()
        .get(crate::tenant::teardown::ABANDON)
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the controller until `shutdown` resolves. Copilots are sharded by
/// the same label selector as tenants.
pub async fn run(
    shared: Arc<Context>,
    postgres: Postgres,
    settings: CopilotSettings,
    selector: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = shared.client.clone();
    let (stores, streams) = context::watches(&client);
    let (ready_tx, caches_ready) = tokio::sync::watch::channel(false);
    let waiting = stores.clone();
    tokio::spawn(async move {
        if waiting.wait_until_ready().await.is_ok() {
            let _ = ready_tx.send(true);
        }
    });
    let ctx = Arc::new(CopilotContext {
        shared,
        postgres,
        settings,
        stores,
        backoff: Backoff::default(),
        retention: RetentionClock::default(),
        caches_ready,
    });
    let copilots: Api<CopilotDeployment> = Api::all(client.clone());
    let (reader, writer) = reflector::store();
    let mut config = crate::watches::paged();
    if let Some(selector) = &selector {
        config = config.labels(selector);
    }
    let stream = crate::watches::watch(copilots, config.clone())
        .modify(|copilot| crate::watches::drop_bookkeeping(&mut copilot.metadata))
        .backoff(crate::watch_backoff::WatchBackoff::default())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(worth_reconciling, kube::runtime::PredicateConfig::default());
    let CopilotStreams {
        deployments,
        services,
        config_maps,
        network_policies,
        disruption_budgets,
        autoscalers,
        pipelines,
    } = streams;
    // A tenant's change (its database becoming ready, its branding, its
    // deletion) and a pipeline's new result table wake the copilots in
    // their namespace.
    let in_namespace = |reader: reflector::Store<CopilotDeployment>| {
        move |namespace: Option<String>| {
            reader
                .state()
                .into_iter()
                .filter(|c| c.namespace() == namespace)
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        }
    };
    let by_tenant = in_namespace(reader.clone());
    let by_pipeline = in_namespace(reader.clone());
    let tenants: Api<PartnerTenant> = Api::all(client);
    Controller::for_stream(stream, reader)
        .trigger_backoff(crate::watch_backoff::Immediate)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        // Tenants of the shard only: a shard's pipelines and copilots live
        // in namespaces of tenants that carry the same labels.
        .watches_stream(
            crate::watches::tenant_changes(tenants, config),
            move |tenant: PartnerTenant| by_tenant(tenant.status.and_then(|s| s.namespace)),
        )
        .watches_stream(pipelines, move |p: crate::api::MetricPipeline| {
            by_pipeline(p.namespace())
        })
        .owns_stream(deployments)
        .owns_stream(services)
        .owns_stream(config_maps)
        .owns_stream(network_policies)
        .owns_stream(disruption_budgets)
        .owns_stream(autoscalers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let ctx = ctx.clone();
            async move {
                if let Ok((object, _)) = result {
                    ctx.backoff.reset(&key(object.namespace, &object.name));
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CopilotDeploymentSpec;

    fn copilot() -> CopilotDeployment {
        let spec: CopilotDeploymentSpec = serde_yaml::from_str(
            "role: Finance\n\
             model: {endpoint: 'https://llm.example/v1', name: m, apiKey: {secret: {name: k, key: key}}}\n\
             knowledge: {index: {dimensions: 3}, approvedSources: [{name: contracts, kind: Contracts}]}",
        )
        .unwrap();
        let mut c = CopilotDeployment::new("c", spec);
        c.metadata.namespace = Some("ns".into());
        c.metadata.generation = Some(1);
        c.metadata.finalizers = Some(vec![FINALIZER.into()]);
        c
    }

    #[test]
    fn status_writes_do_not_start_a_reconcile_but_spec_and_deletion_do() {
        let before = worth_reconciling(&copilot());
        let mut status_only = copilot();
        status_only.status = Some(crate::api::CopilotDeploymentStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        status_only.metadata.resource_version = Some("9".into());
        assert_eq!(worth_reconciling(&status_only), before);
        let mut spec = copilot();
        spec.metadata.generation = Some(2);
        let mut deleting = copilot();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        for changed in [spec, deleting] {
            assert_ne!(worth_reconciling(&changed), before);
        }
    }
}
