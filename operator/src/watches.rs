//! Label-selected watches of the objects the operator owns. Each feeds a
//! cache (used to skip writes that would change nothing) and the controller
//! (so drift or deletion of a child triggers its tenant's reconcile).

use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::Resource;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use tokio::sync::{Semaphore, oneshot};

use crate::apply;
use crate::context::Stores;
use crate::index::{Index, Indexed, KeyFn, by_namespace};
use crate::slim::Slim;
use crate::tenant::children::MANAGED_SELECTOR;
use crate::verified::Verified;
use crate::wake::Wake;

type ChildStream<K> = BoxStream<'static, Result<PartialObjectMeta<K>, watcher::Error>>;

/// The event streams behind [`Stores`], for the controller to drive.
pub struct ChildStreams {
    pub namespaces: ChildStream<k8s_openapi::api::core::v1::Namespace>,
    pub quotas: ChildStream<k8s_openapi::api::core::v1::ResourceQuota>,
    pub limit_ranges: ChildStream<k8s_openapi::api::core::v1::LimitRange>,
    pub network_policies: ChildStream<k8s_openapi::api::networking::v1::NetworkPolicy>,
    pub service_accounts: ChildStream<k8s_openapi::api::core::v1::ServiceAccount>,
    pub roles: ChildStream<k8s_openapi::api::rbac::v1::Role>,
    pub role_bindings: ChildStream<k8s_openapi::api::rbac::v1::RoleBinding>,
    pub services: ChildStream<k8s_openapi::api::core::v1::Service>,
    pub stateful_sets: ChildStream<k8s_openapi::api::apps::v1::StatefulSet>,
}

/// Settings for every watch: lists come in pages (of 500). A list at
/// resourceVersion 0 (`any_semantic`) is answered from the API server's
/// cache whole, whatever its limit: at 10,000 tenants every kind's relist
/// after an API server restart arrived as one response holding every
/// object, all kinds at once. A paged list is consistent, and still served
/// from that cache where the API server can (`ConsistentListFromCache`).
pub fn paged() -> watcher::Config {
    watcher::Config::default()
}

/// A watch that relists only while no other watch of the operator does.
///
/// A relist fills a new cache beside the old one, which is dropped only
/// once the relist is done; after an API server restart every watch relists
/// at once, and at 10,000 tenants all caches held twice raised the peak
/// memory by about half. One at a time, only one cache is ever held twice.
/// The turn is taken when the watch announces a relist (before its first
/// list request) and given up when the relist ends or fails, so a watch
/// that cannot list (a missing permission) never holds up the others.
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + 'static,
{
    static RELISTS: Semaphore = Semaphore::const_new(1);
    in_turn(watcher(api, config), &RELISTS)
}

/// Longest a relist keeps its turn: a list that hangs (a connection lost
/// without a reset) must not stop every other watch from relisting.
const LONGEST_TURN: Duration = Duration::from_secs(60);

/// `events`, holding a permit of `relists` from a relist's start to its end
/// (or for [`LONGEST_TURN`] at most).
fn in_turn<K, S>(
    events: S,
    relists: &'static Semaphore,
) -> impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send
where
    K: Send + 'static,
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send,
{
    // Dropping the sender ends the turn; the permit lives in a task that
    // also ends it once the turn has lasted too long.
    let turn: Arc<Mutex<Option<oneshot::Sender<()>>>> = Arc::default();
    events.then(move |event| {
        let turn = turn.clone();
        async move {
            match &event {
                Ok(watcher::Event::Init) => {
                    let held = turn.lock().expect("relist turn lock").is_some();
                    if !held {
                        let permit = relists.acquire().await.expect("never closed");
                        let (end, ended) = oneshot::channel::<()>();
                        tokio::spawn(async move {
                            let _permit = permit;
                            let _ = tokio::time::timeout(LONGEST_TURN, ended).await;
                        });
                        *turn.lock().expect("relist turn lock") = Some(end);
                    }
                }
                Ok(watcher::Event::InitDone) | Err(_) => {
                    turn.lock().expect("relist turn lock").take();
                }
                Ok(_) => {}
            }
            event
        }
    })
}

/// A metadata-only watch: existence, the operator's annotations, owners
/// and the resourceVersion are all the decisions read from the cache (see
/// [`Slim`]); an object whose version changed since the operator last
/// confirmed it is read in full, by name (see `apply::apply_to_indexed`).
/// The cache then costs the same whatever the objects hold. Which events
/// wake a tenant is decided on the metadata as served, before it is slimmed.
fn reflect<K>(client: &kube::Client, selector: &str, key: KeyFn) -> (Indexed<K>, ChildStream<K>)
where
    K: Resource<DynamicType = ()>
        + Clone
        + Default
        + Debug
        + DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, mut writer) = reflector::store::<Slim<K>>();
    let index = Index::new(key);
    let wake = Wake::default();
    let own_writes = wake.own_writes.clone();
    let verified = Verified::default();
    let (filer, confirmed, cached) = (index.clone(), verified.clone(), reader.clone());
    // `PartialObjectMeta` makes the list and watch requests metadata-only.
    let api: Api<PartialObjectMeta<K>> = Api::all(client.clone());
    let config = paged().labels(selector);
    let stream = watch(api, config)
        .backoff(crate::watch_backoff::WatchBackoff::default())
        .map_ok(move |event| {
            // Drift shows as a new resourceVersion (the full read carries
            // every managedFields entry); other managers' entries on the
            // object itself stay to tell their changes from status updates.
            let event = event
                .modify(|object| apply::keep_foreign_entries(&mut object.metadata.managed_fields));
            filer.observe(&event);
            if let watcher::Event::Delete(object) = &event {
                confirmed.forget(&object.metadata);
            }
            // Only others' changes wake the tenant; what went while the
            // watch was down is read from the cache before it takes the relist.
            let woken = wake.wakes(&event, || cached.state());
            // The cache follows every event.
            writer.apply_watcher_event(&crate::slim::event(&event));
            if let watcher::Event::InitDone = &event {
                // Gone while the watch was down.
                for object in &woken {
                    confirmed.forget(&object.metadata);
                }
            }
            futures::stream::iter(woken.into_iter().map(Ok))
        })
        .try_flatten()
        .boxed();
    (
        Indexed {
            store: reader,
            index,
            own_writes,
            verified,
        },
        stream,
    )
}

/// What no decision reads of a cached custom resource: who wrote which
/// field (`managedFields`, the bulk of a small object once parsed) and
/// client-side apply's copy of the last manifest. Dropping both keeps a
/// cache of 10,000 tenants small.
pub fn drop_bookkeeping(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// Tenants' changes, as the pipeline and copilot controllers follow them to
/// wake the objects in a tenant's namespace; retried as every other watch.
pub fn tenant_changes(
    tenants: Api<crate::api::PartnerTenant>,
    config: watcher::Config,
) -> impl futures::Stream<Item = Result<crate::api::PartnerTenant, watcher::Error>> + Send {
    watch(tenants, config)
        .backoff(crate::watch_backoff::WatchBackoff::default())
        .touched_objects()
}

/// Namespaces are filed under the tenant they record (to find one kept from
/// an earlier tenant of the same name).
fn by_tenant_name(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<String> {
    meta.annotations
        .as_ref()?
        .get(crate::tenant::ownership::TENANT_NAME)
        .cloned()
}

/// Starts nothing by itself: the streams run once the controller polls them.
/// `tenant_selector`: the shard's; its tenants' objects carry the labels it
/// reads, so each watch holds only the shard's objects.
pub fn build(client: &kube::Client, tenant_selector: Option<&str>) -> (Stores, ChildStreams) {
    let selector = match tenant_selector {
        Some(shard) => format!("{MANAGED_SELECTOR},{shard}"),
        None => MANAGED_SELECTOR.to_string(),
    };
    let (namespaces, namespaces_stream) = reflect(client, &selector, by_tenant_name);
    let (quotas, quotas_stream) = reflect(client, &selector, by_namespace);
    let (limit_ranges, limit_ranges_stream) = reflect(client, &selector, by_namespace);
    let (network_policies, network_policies_stream) = reflect(client, &selector, by_namespace);
    let (service_accounts, service_accounts_stream) = reflect(client, &selector, by_namespace);
    let (roles, roles_stream) = reflect(client, &selector, by_namespace);
    let (role_bindings, role_bindings_stream) = reflect(client, &selector, by_namespace);
    let (services, services_stream) = reflect(client, &selector, by_namespace);
    let (stateful_sets, stateful_sets_stream) = reflect(client, &selector, by_namespace);
    (
        Stores {
            namespaces,
            quotas,
            limit_ranges,
            network_policies,
            service_accounts,
            roles,
            role_bindings,
            services,
            stateful_sets,
        },
        ChildStreams {
            namespaces: namespaces_stream,
            quotas: quotas_stream,
            limit_ranges: limit_ranges_stream,
            network_policies: network_policies_stream,
            service_accounts: service_accounts_stream,
            roles: roles_stream,
            role_bindings: role_bindings_stream,
            services: services_stream,
            stateful_sets: stateful_sets_stream,
        },
    )
}

impl Stores {
    /// Resolves once every cache holds its initial list.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.namespaces.wait_until_ready().await?;
        self.quotas.wait_until_ready().await?;
        self.limit_ranges.wait_until_ready().await?;
        self.network_policies.wait_until_ready().await?;
        self.service_accounts.wait_until_ready().await?;
        self.roles.wait_until_ready().await?;
        self.role_bindings.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.stateful_sets.wait_until_ready().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    type Events = Vec<Result<watcher::Event<()>, watcher::Error>>;

    fn relist() -> Events {
        vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(())),
            Ok(watcher::Event::InitDone),
        ]
    }

    #[tokio::test]
    async fn a_relist_waits_for_another_to_end_or_fail() {
        static RELISTS: Semaphore = Semaphore::const_new(1);
        let mut first = Box::pin(in_turn(futures::stream::iter(relist()), &RELISTS));
        let failing: Events = vec![
            Ok(watcher::Event::Init),
            Err(watcher::Error::NoResourceVersion),
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitDone),
        ];
        let mut second = Box::pin(in_turn(futures::stream::iter(failing), &RELISTS));
        let mut third = Box::pin(in_turn(futures::stream::iter(relist()), &RELISTS));

        assert!(matches!(first.next().await, Some(Ok(watcher::Event::Init))));
        assert!(second.next().now_or_never().is_none(), "waits its turn");
        assert!(first.next().await.is_some(), "the first relists on");
        assert!(matches!(
            first.next().await,
            Some(Ok(watcher::Event::InitDone))
        ));
        assert!(matches!(
            second.next().await,
            Some(Ok(watcher::Event::Init))
        ));
        assert!(third.next().now_or_never().is_none(), "waits its turn");
        assert!(
            matches!(second.next().await, Some(Err(_))),
            "its list failed"
        );
        // The failure gave the turn up: the third relists before the second retries.
        assert!(matches!(third.next().await, Some(Ok(watcher::Event::Init))));
        assert!(second.next().now_or_never().is_none(), "waits again");
        third.next().await;
        assert!(matches!(
            third.next().await,
            Some(Ok(watcher::Event::InitDone))
        ));
        assert!(matches!(
            second.next().await,
            Some(Ok(watcher::Event::Init))
        ));
        assert!(matches!(
            second.next().await,
            Some(Ok(watcher::Event::InitDone))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_relist_that_hangs_gives_its_turn_up_in_time() {
        static RELISTS: Semaphore = Semaphore::const_new(1);
        // Announces a relist, then its list never answers.
        let hanging = futures::stream::iter(vec![Ok(watcher::Event::<()>::Init)])
            .chain(futures::stream::pending());
        let mut first = Box::pin(in_turn(hanging, &RELISTS));
        let mut second = Box::pin(in_turn(futures::stream::iter(relist()), &RELISTS));
        assert!(matches!(first.next().await, Some(Ok(watcher::Event::Init))));
        let waiting = tokio::time::Instant::now();
        assert!(matches!(
            second.next().await,
            Some(Ok(watcher::Event::Init))
        ));
        assert!(
            waiting.elapsed() >= LONGEST_TURN,
            "not before the turn ran out"
        );
    }
}
