//! The PartnerTenant controller: watches tenants and the objects they own,
//! and runs [`reconcile::apply`] or [`reconcile::cleanup`] under a finalizer.

pub mod children;
pub mod cleanup;
pub mod dedicated_redis;
pub mod error;
pub mod ownership;
pub mod reconcile;
pub mod status;
pub mod teardown;

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::{self, Event as FinalizerEvent};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tracing::Instrument;

use crate::api::PartnerTenant;
use crate::context::Context;
use crate::metrics::{ControllerLabels, ErrorLabels};
use crate::watches::ChildStreams;
use error::Error;

/// Finalizer guarding the tenant's state outside Kubernetes.
pub const FINALIZER: &str = "partnerplane.io/tenant-cleanup";
const CONTROLLER: &str = "partnertenant";

async fn reconcile(tenant: Arc<PartnerTenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Comparing with empty caches would rewrite every child after a restart.
    if ctx
        .caches_ready
        .clone()
        .wait_for(|ready| *ready)
        .await
        .is_err()
    {
        return Err(Error::Waiting("the watch caches".into()));
    }
    let started = Instant::now();
    let span =
        tracing::info_span!("reconcile", controller = CONTROLLER, tenant = %tenant.name_any());
    ctx.metrics
        .reconciles
        .get_or_create(&ControllerLabels {
            controller: CONTROLLER,
        })
        .inc();
    let api: Api<PartnerTenant> = Api::all(ctx.client.clone());
    let result = finalizer::finalizer(&api, FINALIZER, tenant, |event| async {
        match event {
            FinalizerEvent::Apply(t) => reconcile::apply(t, &ctx).await,
            FinalizerEvent::Cleanup(t) => cleanup::cleanup(t, &ctx).await,
        }
    })
    .instrument(span)
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconcile_duration
        .get_or_create(&ControllerLabels {
            controller: CONTROLLER,
        })
        .observe(started.elapsed().as_secs_f64());
    result
}

fn error_policy(tenant: Arc<PartnerTenant>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabels {
            controller: CONTROLLER,
            reason: error.reason(),
        })
        .inc();
    let delay = ctx.backoff.next(&tenant.name_any());
    tracing::warn!(tenant = %tenant.name_any(), reason = error.reason(), retry_in = ?delay, "reconcile failed: {}", error.message());
    Action::requeue(delay)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    streams: ChildStreams,
    selector: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let tenants: Api<PartnerTenant> = Api::all(ctx.client.clone());
    let ChildStreams {
        namespaces,
        quotas,
        limit_ranges,
        network_policies,
        service_accounts,
        roles,
        role_bindings,
        secrets,
        services,
        stateful_sets,
    } = streams;
    // Children map to their tenant by annotation: owner references cannot
    // name the namespace-less PartnerTenant correctly from a namespaced child.
    fn owner<K: kube::Resource>(object: K) -> Option<ObjectRef<PartnerTenant>> {
        children::tenant_of(&object).map(|name| ObjectRef::new(&name))
    }
    let mut tenant_watch = watcher::Config::default().any_semantic();
    if let Some(selector) = &selector {
        tenant_watch = tenant_watch.labels(selector);
    }
    Controller::new(tenants, tenant_watch)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .watches_stream(namespaces, owner)
        .watches_stream(quotas, owner)
        .watches_stream(limit_ranges, owner)
        .watches_stream(network_policies, owner)
        .watches_stream(service_accounts, owner)
        .watches_stream(roles, owner)
        .watches_stream(role_bindings, owner)
        .watches_stream(secrets, owner)
        .watches_stream(services, owner)
        .watches_stream(stateful_sets, owner)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            let ctx = ctx.clone();
            async move {
                if let Ok((object, _)) = result {
                    ctx.backoff.reset(&object.name);
                }
            }
        })
        .await;
}
