//! Breach deliveries run on workers of their own, apart from refreshes: a
//! receiver that is slow, down or not yet provisioned (a tenant workflow
//! not enabled answers 404 for every breach) then never delays another
//! pipeline's refresh. A refresh that records a transition, or the first
//! reconcile of a pipeline's generation in this process (deliveries left
//! pending by an earlier process, or while it was suspended), wakes the
//! pipeline here; a pass sends what is due and sleeps until the next retry
//! is.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::channel::mpsc;
use kube::ResourceExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};

use super::context::PipelineContext;
use super::error::Error;
use super::owner::Owner;
use super::{delivery, fairness, reconcile};
use crate::api::MetricPipeline;

/// Wakes a pipeline's deliveries.
#[derive(Debug, Clone)]
pub struct DeliveryWake {
    sender: mpsc::UnboundedSender<ObjectRef<MetricPipeline>>,
    /// The generation each pipeline (by UID) was last woken for.
    woken: Arc<Mutex<HashMap<String, Option<i64>>>>,
}

/// What [`run`] listens to.
pub struct Wakes(mpsc::UnboundedReceiver<ObjectRef<MetricPipeline>>);

impl DeliveryWake {
    pub fn new() -> (Self, Wakes) {
        let (sender, receiver) = mpsc::unbounded();
        let wake = Self {
            sender,
            woken: Arc::default(),
        };
        (wake, Wakes(receiver))
    }

    /// Wakes `pipeline`'s deliveries the first time this process sees its
    /// generation: deliveries left pending by an earlier process (a
    /// restart, a new leader) or while the pipeline was suspended.
    pub fn seen(&self, pipeline: &MetricPipeline) {
        let generation = pipeline.metadata.generation;
        let first = self
            .woken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(pipeline.uid().unwrap_or_default(), generation)
            != Some(generation);
        if first {
            self.wake(pipeline);
        }
    }

    /// Wakes `pipeline`'s deliveries: a refresh recorded new ones.
    pub fn wake(&self, pipeline: &MetricPipeline) {
        // Only fails once the controller stopped, at shutdown.
        let _ = self.sender.unbounded_send(ObjectRef::from_obj(pipeline));
    }

    /// Forgets a deleted pipeline.
    pub fn forget(&self, pipeline: &MetricPipeline) {
        self.woken
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pipeline.uid().unwrap_or_default());
    }
}

/// Sends what is due of one pipeline's deliveries.
async fn deliver(
    pipeline: Arc<MetricPipeline>,
    ctx: Arc<PipelineContext>,
) -> Result<Action, Error> {
    // A suspended pipeline's deliveries wait; its resumption is a new
    // generation, whose first reconcile wakes them again.
    if pipeline.spec.suspend
        || pipeline.metadata.deletion_timestamp.is_some()
        || delivery::targets(&pipeline.spec).is_empty()
    {
        return Ok(Action::await_change());
    }
    let Some(_turn) = ctx
        .delivery_turns
        .take(&pipeline.namespace().unwrap_or_default())
    else {
        return Ok(Action::requeue(crate::context::jittered(
            fairness::BUSY_RETRY,
            &mut rand::rng(),
        )));
    };
    let db = match reconcile::owner_of(&pipeline, &ctx, false).await? {
        Owner::Tenant(db) => db,
        // The refresh reports why; pending deliveries wait for the tenant.
        Owner::TenantNotReady(_) => return Ok(Action::requeue(reconcile::TENANT_WAIT)),
        Owner::NotATenantNamespace(_) => return Ok(Action::await_change()),
    };
    Ok(match delivery::deliver_due(&pipeline, &db, &ctx).await {
        Some(wait) => Action::requeue(crate::context::jittered(wait, &mut rand::rng())),
        None => Action::await_change(),
    })
}

fn retry(pipeline: Arc<MetricPipeline>, error: &Error, _: Arc<PipelineContext>) -> Action {
    tracing::warn!(
        pipeline = %format!("{}/{}", pipeline.namespace().unwrap_or_default(), pipeline.name_any()),
        reason = error.reason(),
        "webhook deliveries: {}",
        error.message()
    );
    Action::requeue(std::time::Duration::from_secs(30))
}

/// Runs the delivery workers over the pipelines `reader` holds (the
/// refresh controller's cache) until `shutdown` resolves.
pub async fn run(
    ctx: Arc<PipelineContext>,
    reader: Store<MetricPipeline>,
    wakes: Wakes,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    Controller::for_stream(futures::stream::pending(), reader)
        .reconcile_on(wakes.0)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(deliver, retry, ctx)
        .for_each(|_| async {})
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline(uid: &str, generation: i64) -> MetricPipeline {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "partnerplane.io/v1alpha1",
            "kind": "MetricPipeline",
            "metadata": {"name": uid, "namespace": "ns", "uid": uid, "generation": generation},
            "spec": {"sources": [], "metrics": []}
        }))
        .expect("a pipeline")
    }

    fn woken(wakes: &mut Wakes) -> bool {
        wakes.0.try_recv().is_ok()
    }

    #[test]
    fn a_pipeline_is_woken_once_per_generation_seen_and_for_new_deliveries() {
        let (wake, mut wakes) = DeliveryWake::new();
        wake.seen(&pipeline("a", 1));
        assert!(woken(&mut wakes), "first seen in this process");
        wake.seen(&pipeline("a", 1));
        assert!(!woken(&mut wakes), "nothing new");
        wake.wake(&pipeline("a", 1));
        assert!(woken(&mut wakes), "a transition recorded");
        wake.seen(&pipeline("a", 2));
        assert!(woken(&mut wakes), "a new generation (resumed, say)");
        wake.seen(&pipeline("b", 2));
        assert!(woken(&mut wakes), "another pipeline's first");
        wake.forget(&pipeline("b", 2));
        wake.seen(&pipeline("b", 2));
        assert!(woken(&mut wakes), "forgotten once deleted");
    }
}
