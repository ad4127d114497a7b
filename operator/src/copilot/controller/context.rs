//! What every copilot reconcile shares, and the watch caches of the objects
//! copilots own.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use super::objects::SELECTOR;
use crate::api::MetricPipeline;
use crate::backends::postgres::Postgres;
use crate::context::{Backoff, Cidr, Context};

/// Settings of the copilot controller.
#[derive(Debug, Clone)]
pub struct CopilotSettings {
    /// Image of `partnerplane copilot` for copilots that name none.
    pub image: String,
    /// Kubernetes auth mount of OpenBao, for pods that log in themselves.
    pub vault_auth_mount: String,
    /// Blocks holding the backends named by a host name (`--backend-cidrs`).
    pub backend_cidrs: Vec<Cidr>,
}

/// Watch caches of the copilots' objects (selected by label) and of the
/// MetricPipelines whose result tables copilots read.
#[derive(Clone)]
pub struct CopilotStores {
    pub deployments: Store<Deployment>,
    pub services: Store<Service>,
    pub config_maps: Store<ConfigMap>,
    pub network_policies: Store<NetworkPolicy>,
    pub disruption_budgets: Store<PodDisruptionBudget>,
    pub autoscalers: Store<HorizontalPodAutoscaler>,
    pub pipelines: Store<MetricPipeline>,
}

impl CopilotStores {
    /// Resolves once every cache holds its initial list.
    pub async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.deployments.wait_until_ready().await?;
        self.services.wait_until_ready().await?;
        self.config_maps.wait_until_ready().await?;
        self.network_policies.wait_until_ready().await?;
        self.disruption_budgets.wait_until_ready().await?;
        self.autoscalers.wait_until_ready().await?;
        self.pipelines.wait_until_ready().await
    }
}

pub type ChildStream<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// The event streams behind [`CopilotStores`], for the controller to drive.
pub struct CopilotStreams {
    pub deployments: ChildStream<Deployment>,
    pub services: ChildStream<Service>,
    pub config_maps: ChildStream<ConfigMap>,
    pub network_policies: ChildStream<NetworkPolicy>,
    pub disruption_budgets: ChildStream<PodDisruptionBudget>,
    pub autoscalers: ChildStream<HorizontalPodAutoscaler>,
    pub pipelines: ChildStream<MetricPipeline>,
}

fn reflect<K>(client: &kube::Client) -> (Store<K>, ChildStream<K>)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let config = crate::watches::paged().labels(SELECTOR);
    let stream = crate::watches::watch(Api::<K>::all(client.clone()), config)
        // Only other managers' entries tell drift (see `apply`).
        .map_ok(|event| {
            event.modify(|object| {
                crate::apply::keep_foreign_entries(&mut object.meta_mut().managed_fields)
            })
        })
        .backoff(crate::watch_backoff::WatchBackoff::default())
        .reflect(writer)
        .touched_objects()
        .boxed();
    (reader, stream)
}

/// Starts nothing by itself: the streams run once the controller polls them.
pub fn watches(client: &kube::Client) -> (CopilotStores, CopilotStreams) {
    let (deployments, deployments_stream) = reflect(client);
    let (services, services_stream) = reflect(client);
    let (config_maps, config_maps_stream) = reflect(client);
    let (network_policies, network_policies_stream) = reflect(client);
    let (disruption_budgets, disruption_budgets_stream) = reflect(client);
    let (autoscalers, autoscalers_stream) = reflect(client);
    // Every pipeline, whatever its shard: a copilot reads the result tables
    // of all pipelines in its namespace. Only a new result table matters.
    let (pipelines, writer) = reflector::store();
    let pipelines_stream = crate::watches::watch(
        Api::<MetricPipeline>::all(client.clone()),
        crate::watches::paged(),
    )
    .backoff(crate::watch_backoff::WatchBackoff::default())
    .reflect(writer)
    .applied_objects()
    .predicate_filter(
        |p: &MetricPipeline| {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            p.status
                .as_ref()
                .and_then(|s| s.result_table.as_ref())
                .hash(&mut hasher);
            Some(hasher.finish())
        },
        kube::runtime::PredicateConfig::default(),
    )
    .boxed();
    (
        CopilotStores {
            deployments,
            services,
            config_maps,
            network_policies,
            disruption_budgets,
            autoscalers,
            pipelines,
        },
        CopilotStreams {
            deployments: deployments_stream,
            services: services_stream,
            config_maps: config_maps_stream,
            network_policies: network_policies_stream,
            disruption_budgets: disruption_budgets_stream,
            autoscalers: autoscalers_stream,
            pipelines: pipelines_stream,
        },
    )
}

/// How often the audit retention runs while nothing is left to delete.
pub const RETENTION_EVERY: Duration = Duration::from_secs(15 * 60);

/// One copilot's last retention run.
#[derive(Debug, Clone, Copy)]
struct LastRun {
    generation: Option<i64>,
    at: Instant,
    /// Rows older than the retention were left for another batch.
    backlog: bool,
}

/// When each copilot's audit retention last ran, for which generation, and
/// whether rows were left over.
#[derive(Default)]
pub struct RetentionClock(Mutex<HashMap<String, LastRun>>);

impl RetentionClock {
    /// Whether retention is due for `key` at `generation`.
    pub fn due(&self, key: &str, generation: Option<i64>) -> bool {
        match self.0.lock().expect("retention lock").get(key) {
            None => true,
            Some(last) => {
                last.backlog
                    || last.generation != generation
                    || last.at.elapsed() >= RETENTION_EVERY
            }
        }
    }

    /// Records a run; `backlog` when rows older than the retention remain.
    pub fn ran(&self, key: &str, generation: Option<i64>, backlog: bool) {
        self.0.lock().expect("retention lock").insert(
            key.to_string(),
            LastRun {
                generation,
                at: Instant::now(),
                backlog,
            },
        );
    }

    pub fn forget(&self, key: &str) {
        self.0.lock().expect("retention lock").remove(key);
    }
}

/// The operator's shared context plus the Postgres backends the copilot
/// controller logs in to as each tenant (an index build never holds a
/// connection a tenant reconcile waits for), caches and settings.
pub struct CopilotContext {
    pub shared: Arc<Context>,
    pub postgres: Postgres,
    pub settings: CopilotSettings,
    pub stores: CopilotStores,
    pub backoff: Backoff,
    pub retention: RetentionClock,
    /// True once the copilot caches hold their initial lists.
    pub caches_ready: tokio::sync::watch::Receiver<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_runs_first_then_on_a_new_generation_or_a_backlog() {
        let clock = RetentionClock::default();
        assert!(clock.due("a", Some(1)));
        clock.ran("a", Some(1), false);
        assert!(!clock.due("a", Some(1)));
        assert!(clock.due("a", Some(2)));
        clock.ran("a", Some(2), true);
        assert!(clock.due("a", Some(2)));
        clock.forget("a");
        assert!(clock.due("a", Some(2)));
    }
}
