//! The MetricPipeline controller: governed partner metrics, materialized in
//! the tenant's schema and refreshed incrementally on each pipeline's
//! interval, with bounded concurrency of its own.

pub mod breach;
pub mod cleanup;
pub mod context;
pub mod delivery;
pub mod dispatch;
pub mod error;
pub mod explain;
pub mod fairness;
pub mod forecast;
pub mod outbox;
pub mod owner;
pub mod reconcile;
pub mod schedule;
pub mod sql;
pub mod status;
pub mod telemetry;
pub mod webhook;

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

use crate::api::{MetricPipeline, PartnerTenant};
use crate::metrics::{ControllerLabels, ErrorLabels};
use context::PipelineContext;
use error::Error;

/// Finalizer guarding the pipeline's tables in the tenant schema.
pub const FINALIZER: &str = "partnerplane.io/pipeline-cleanup";
const CONTROLLER: &str = "metricpipeline";

async fn reconcile(
    pipeline: Arc<MetricPipeline>,
    ctx: Arc<PipelineContext>,
) -> Result<Action, Error> {
    if ctx
        .shared
        .caches_ready
        .clone()
        .wait_for(|ready| *ready)
        .await
        .is_err()
    {
        return Err(Error::TenantNotReady("the watch caches".into()));
    }
    let started = Instant::now();
    let span = tracing::info_span!(
        "reconcile",
        controller = CONTROLLER,
        namespace = %pipeline.namespace().unwrap_or_default(),
        pipeline = %pipeline.name_any()
    );
    let labels = ControllerLabels {
        controller: CONTROLLER,
    };
    ctx.shared.metrics.reconciles.get_or_create(&labels).inc();
    let api: Api<MetricPipeline> = Api::namespaced(
        ctx.shared.client.clone(),
        &pipeline.namespace().unwrap_or_default(),
    );
    let result = finalizer::finalizer(&api, FINALIZER, pipeline, |event| async {
        match event {
            FinalizerEvent::Apply(p) => reconcile::apply(p, &ctx).await,
            FinalizerEvent::Cleanup(p) => cleanup::cleanup(p, &ctx).await,
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

fn error_policy(pipeline: Arc<MetricPipeline>, error: &Error, ctx: Arc<PipelineContext>) -> Action {
    ctx.shared
        .metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: CONTROLLER,
            reason: error.reason(),
        })
        .inc();
    let key = format!(
        "{}/{}",
        pipeline.namespace().unwrap_or_default(),
        pipeline.name_any()
    );
    let delay = ctx.backoff.next(&key);
    tracing::warn!(pipeline = %key, reason = error.reason(), retry_in = ?delay, "reconcile failed: {}", error.message());
    Action::requeue(delay)
}

/// What a reconcile must see: spec changes, deletion and finalizers — not
/// the controller's own status writes, which would otherwise run every
/// pipeline a second time after each refresh.
fn worth_reconciling(pipeline: &MetricPipeline) -> Option<u64> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    pipeline.metadata.generation.hash(&mut hasher);
    pipeline
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    pipeline.metadata.finalizers.hash(&mut hasher);
    pipeline
        .annotations()
        .get(crate::tenant::teardown::ABANDON)
        .hash(&mut hasher);
    pipeline
        .annotations()
        .get(reconcile::REFRESH_REQUESTED)
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the controller, and its delivery workers (`dispatch`, as many
/// again), until `shutdown` resolves.
pub async fn run(
    ctx: Arc<PipelineContext>,
    wakes: dispatch::Wakes,
    selector: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let pipelines: Api<MetricPipeline> = Api::all(ctx.shared.client.clone());
    let (reader, writer) = reflector::store();
    // Shards split pipelines by the same label selector as tenants.
    let mut config = crate::watches::paged();
    if let Some(selector) = &selector {
        config = config.labels(selector);
    }
    let stream = crate::watches::watch(pipelines, config.clone())
        .modify(|pipeline| crate::watches::drop_bookkeeping(&mut pipeline.metadata))
        .backoff(crate::watch_backoff::WatchBackoff::default())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(worth_reconciling, kube::runtime::PredicateConfig::default());
    // A tenant's change (its database becoming ready, its deletion) wakes
    // the pipelines in its namespace.
    let in_namespace = reader.clone();
    // One task for both, so that stopping it (a lost Lease) stops both.
    let shutdown = futures::FutureExt::shared(shutdown);
    let deliveries = dispatch::run(
        ctx.clone(),
        reader.clone(),
        wakes,
        concurrency,
        shutdown.clone(),
    );
    let tenants: Api<PartnerTenant> = Api::all(ctx.shared.client.clone());
    let refreshes = Controller::for_stream(stream, reader)
        .trigger_backoff(crate::watch_backoff::Immediate)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        // Tenants of the shard only: a shard's pipelines and copilots live
        // in namespaces of tenants that carry the same labels.
        .watches_stream(
            crate::watches::tenant_changes(tenants, config),
            move |tenant: PartnerTenant| {
                let namespace = tenant.status.and_then(|s| s.namespace);
                in_namespace
                    .state()
                    .into_iter()
                    .filter(|p| p.namespace() == namespace)
                    .map(|p| ObjectRef::from_obj(p.as_ref()))
                    .collect::<Vec<_>>()
            },
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let ctx = ctx.clone();
            async move {
                if let Ok((object, _)) = result {
                    let key = format!("{}/{}", object.namespace.unwrap_or_default(), object.name);
                    ctx.backoff.reset(&key);
                }
            }
        });
    futures::join!(refreshes, deliveries);
}
