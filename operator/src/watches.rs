//! Label-selected watches of the objects the operator owns. Each feeds a
//! cache (used to skip writes that would change nothing) and the controller
//! (so drift or deletion of a child triggers its tenant's reconcile).

use std::fmt::Debug;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use crate::apply;
use crate::context::Stores;
use crate::tenant::children::MANAGED_SELECTOR;

type ChildStream<K> = BoxStream<'static, Result<K, watcher::Error>>;

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

fn reflect<K>(client: &kube::Client) -> (Store<K>, ChildStream<K>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let api: Api<K> = Api::all(client.clone());
    let config = watcher::Config::default()
        .labels(MANAGED_SELECTOR)
        .any_semantic();
    let stream = watcher(api, config)
        // Only other managers' entries tell drift (see `apply`); a converged
        // object has none, so the caches stay as small as without them.
        .map_ok(|event| {
            event
                .modify(|object| apply::keep_foreign_entries(&mut object.meta_mut().managed_fields))
        })
        .default_backoff()
        .reflect(writer)
        .touched_objects()
        .boxed();
    (reader, stream)
}

/// Starts nothing by itself: the streams run once the controller polls them.
pub fn build(client: &kube::Client) -> (Stores, ChildStreams) {
    let (namespaces, namespaces_stream) = reflect(client);
    let (quotas, quotas_stream) = reflect(client);
    let (limit_ranges, limit_ranges_stream) = reflect(client);
    let (network_policies, network_policies_stream) = reflect(client);
    let (service_accounts, service_accounts_stream) = reflect(client);
    let (roles, roles_stream) = reflect(client);
    let (role_bindings, role_bindings_stream) = reflect(client);
    let (services, services_stream) = reflect(client);
    let (stateful_sets, stateful_sets_stream) = reflect(client);
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
