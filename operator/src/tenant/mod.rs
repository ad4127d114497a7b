//! The PartnerTenant controller: watches tenants and the objects they own,
//! and runs [`reconcile::apply`] or [`reconcile::cleanup`] under a finalizer.

pub mod children;
pub mod cleanup;
pub mod dedicated_redis;
pub mod error;
pub mod finalizer;
pub mod ownership;
pub mod reconcile;
pub mod secret_access;
pub mod shard;
pub mod status;
pub mod teardown;
pub mod workflows;

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use kube::ResourceExt;
use kube::api::{Api, GetParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::Event as FinalizerEvent;
use kube::runtime::reflector::{self, ObjectRef};
use tracing::Instrument;

use crate::api::PartnerTenant;
use crate::context::Context;
use crate::metrics::{ControllerLabels, ErrorLabels};
use crate::watches::ChildStreams;
use error::Error;

/// Finalizer guarding the tenant's state outside Kubernetes.
pub const FINALIZER: &str = "partnerplane.io/tenant-cleanup";
const CONTROLLER: &str = "partnertenant";

/// What the controller's cache holds of each tenant: its metadata, all that
/// deciding whether to reconcile reads. A reconcile reads the tenant whole,
/// and current; 10,000 full tenants (and twice that while a watch relists)
/// would be most of the operator's memory.
type TenantMeta = PartialObjectMeta<PartnerTenant>;

async fn reconcile(
    seen: Arc<TenantMeta>,
    ctx: Arc<Context>,
    written: Arc<status::Written>,
    echoes: Arc<finalizer::Echoes>,
) -> Result<Action, Error> {
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
    let api: Api<PartnerTenant> = Api::all(ctx.client.clone());
    let Some(tenant) = read(&api, &seen, &written).await? else {
        // Gone since the event (its finalizer removed by hand, say): nothing
        // left to reconcile, and no longer one of the operator's tenants.
        ctx.metrics.set_tenant_ready(&seen.name_any(), None);
        return Ok(Action::await_change());
    };
    let span =
        tracing::info_span!("reconcile", controller = CONTROLLER, tenant = %tenant.name_any());
    ctx.metrics
        .reconciles
        .get_or_create(&ControllerLabels {
            controller: CONTROLLER,
        })
        .inc();
    let result = async {
        // Added here, the finalizer is in place before anything is
        // provisioned, and provisioning goes on in the same pass.
        let tenant = if finalizer::missing(&tenant) {
            finalizer::add(&api, &tenant, &echoes, &ctx.metrics, worth_reconciling).await?
        } else {
            Arc::new(tenant)
        };
        kube::runtime::finalizer::finalizer(&api, FINALIZER, tenant, |event| async {
            match event {
                FinalizerEvent::Apply(t) => reconcile::apply(t, &ctx, &written).await,
                FinalizerEvent::Cleanup(t) => {
                    let uid = t.uid().unwrap_or_default();
                    let done = cleanup::cleanup(t, &ctx).await;
                    if done.is_ok() {
                        written.forget(&uid);
                    }
                    done
                }
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    }
    .instrument(span)
    .await;
    ctx.metrics
        .reconcile_duration
        .get_or_create(&ControllerLabels {
            controller: CONTROLLER,
        })
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The whole tenant (the cache holds its metadata only). First at least as
/// new as the version the watch delivered, which the API server answers from
/// its watch cache where a read without a version goes to etcd: on every
/// reconcile of every tenant. That cache may lag the status this controller
/// wrote last by a moment; the records in it decide what a deletion cleans
/// up and what a change of store detaches, so a tenant being deleted, or
/// one whose status read is not the last written, is read again from etcd.
async fn read(
    api: &Api<PartnerTenant>,
    seen: &TenantMeta,
    written: &status::Written,
) -> Result<Option<PartnerTenant>, kube::Error> {
    let name = seen.name_any();
    let params = match seen.resource_version() {
        Some(version) => GetParams::at(&version),
        None => return api.get_opt(&name).await,
    };
    let tenant = match api.get_with(&name, &params).await {
        Ok(tenant) => tenant,
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(None),
        Err(e) => return Err(e),
    };
    let deleting = tenant.metadata.deletion_timestamp.is_some();
    let uid = tenant.uid().unwrap_or_default();
    if deleting || !written.shows(&uid, tenant.status.as_ref()) {
        return api.get_opt(&name).await;
    }
    Ok(Some(tenant))
}

fn error_policy(tenant: Arc<TenantMeta>, error: &Error, ctx: Arc<Context>) -> Action {
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

/// What a reconcile must see: spec changes, deletion, finalizers and the
/// annotation deletion reads — not the controller's own status writes, which
/// would otherwise run every tenant a second time after each reconcile. A
/// reconcile therefore may read a tenant whose cached status lags its own
/// last write; [`status::Written`] keeps such a read from skipping a write.
fn worth_reconciling<K: kube::Resource>(tenant: &K) -> Option<u64> {
    let meta = tenant.meta();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp.is_some().hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(teardown::ABANDON))
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    streams: ChildStreams,
    selector: Option<String>,
    concurrency: u16,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let tenants: Api<TenantMeta> = Api::all(ctx.client.clone());
    let ChildStreams {
        namespaces,
        quotas,
        limit_ranges,
        network_policies,
        service_accounts,
        roles,
        role_bindings,
        services,
        stateful_sets,
    } = streams;
    // Children map to their tenant by annotation: owner references cannot
    // name the namespace-less PartnerTenant correctly from a namespaced child.
    fn owner<K: kube::Resource>(object: K) -> Option<ObjectRef<TenantMeta>> {
        children::tenant_of(&object).map(|name| ObjectRef::new(&name))
    }
    let mut tenant_watch = crate::watches::paged();
    if let Some(selector) = &selector {
        tenant_watch = tenant_watch.labels(selector);
    }
    let written = Arc::new(status::Written::default());
    let echoes = Arc::new(finalizer::Echoes::default());
    let filter = echoes.clone();
    let (reader, writer) = reflector::store();
    let tenant_stream = crate::watches::watch(tenants, tenant_watch)
        .modify(|tenant| crate::watches::drop_bookkeeping(&mut tenant.metadata))
        .backoff(crate::watch_backoff::WatchBackoff::default())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(worth_reconciling, kube::runtime::PredicateConfig::default())
        .try_filter(move |tenant| {
            let uid = tenant.uid().unwrap_or_default();
            let echo = worth_reconciling(tenant).is_some_and(|seen| filter.is_echo(&uid, seen));
            std::future::ready(!echo)
        });
    Controller::for_stream(tenant_stream, reader)
        .trigger_backoff(crate::watch_backoff::Immediate)
        .with_config(ControllerConfig::default().concurrency(concurrency))
        .watches_stream(namespaces, owner)
        .watches_stream(quotas, owner)
        .watches_stream(limit_ranges, owner)
        .watches_stream(network_policies, owner)
        .watches_stream(service_accounts, owner)
        .watches_stream(roles, owner)
        .watches_stream(role_bindings, owner)
        .watches_stream(services, owner)
        .watches_stream(stateful_sets, owner)
        .graceful_shutdown_on(shutdown)
        .run(
            move |tenant, ctx| reconcile(tenant, ctx, written.clone(), echoes.clone()),
            error_policy,
            ctx.clone(),
        )
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PartnerTenantSpec;

    fn tenant() -> PartnerTenant {
        let spec: PartnerTenantSpec = serde_yaml::from_str("displayName: Acme").unwrap();
        let mut t = PartnerTenant::new("acme", spec);
        t.metadata.uid = Some("uid-1".into());
        t.metadata.generation = Some(1);
        t.metadata.finalizers = Some(vec![FINALIZER.into()]);
        t
    }

    #[test]
    fn status_and_unrelated_metadata_do_not_start_a_reconcile() {
        let before = tenant();
        let mut after = before.clone();
        after.status = Some(crate::api::PartnerTenantStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        after.metadata.resource_version = Some("42".into());
        after.labels_mut().insert("team".into(), "billing".into());
        after.annotations_mut().insert("note".into(), "x".into());
        assert_eq!(worth_reconciling(&before), worth_reconciling(&after));
    }

    #[test]
    fn spec_deletion_finalizers_and_the_abandon_annotation_start_one() {
        let before = worth_reconciling(&tenant());
        let mut spec = tenant();
        spec.metadata.generation = Some(2);
        let mut deleting = tenant();
        deleting.metadata.deletion_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Default::default()),
        );
        let mut released = tenant();
        released.metadata.finalizers = None;
        let mut abandon = tenant();
        abandon
            .annotations_mut()
            .insert(teardown::ABANDON.into(), "all".into());
        for changed in [spec, deleting, released, abandon] {
            assert_ne!(
                worth_reconciling(&changed),
                before,
                "{:?}",
                changed.metadata
            );
        }
    }
}
