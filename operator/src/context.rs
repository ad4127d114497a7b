//! What every reconcile shares: clients, backends, caches, metrics, Events.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::Store;
use rand::Rng;

use crate::backends::postgres::Postgres;
use crate::backends::redis::Redis;
use crate::backends::vault::Vault;
use crate::metrics::Metrics;

/// Watch caches of the objects the operator owns (selected by label).
#[derive(Clone)]
pub struct Stores {
    pub namespaces: Store<Namespace>,
    pub quotas: Store<ResourceQuota>,
    pub limit_ranges: Store<LimitRange>,
    pub network_policies: Store<NetworkPolicy>,
    pub service_accounts: Store<ServiceAccount>,
    pub roles: Store<Role>,
    pub role_bindings: Store<RoleBinding>,
    pub secrets: Store<Secret>,
    pub services: Store<Service>,
    pub stateful_sets: Store<StatefulSet>,
}

/// Settings that shape reconciles.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a Ready tenant is checked again for drift in the backends.
    pub resync: Duration,
    /// TCP ports tenant workloads may reach the shared backends on.
    pub backend_ports: Vec<u16>,
    /// Namespaces no tenant may use: the operator's own and those holding
    /// its backends' admin Secrets.
    pub protected_namespaces: Vec<String>,
}

/// Connection details handed to tenants next to their passwords.
#[derive(Debug, Clone, Default)]
pub struct Endpoints {
    /// Per Postgres backend: PGHOST, PGPORT, PGDATABASE.
    pub postgres: BTreeMap<String, BTreeMap<String, String>>,
    pub redis_host: String,
    pub redis_port: u16,
    pub vault_address: String,
}

/// Consecutive failures per object: exponential backoff with jitter, which
/// kube's controller does not keep per object itself.
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    const BASE: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(300);

    /// The delay before retrying `key` after another failure.
    pub fn next(&self, key: &str) -> Duration {
        let mut failures = self.0.lock().expect("backoff lock");
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let exp = Self::BASE.saturating_mul(1 << (*n - 1).min(10));
        let capped = exp.min(Self::MAX);
        capped.mul_f64(rand::rng().random_range(0.8..1.2))
    }

    /// Forgets `key`'s failures after a success.
    pub fn reset(&self, key: &str) {
        self.0.lock().expect("backoff lock").remove(key);
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: kube::Client,
    pub postgres: Postgres,
    pub redis: Redis,
    pub vault: Vault,
    pub endpoints: Endpoints,
    pub stores: Stores,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub backoff: Backoff,
    /// True once every watch cache holds its initial list.
    pub caches_ready: tokio::sync::watch::Receiver<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_resets() {
        let backoff = Backoff::default();
        let first = backoff.next("a");
        let second = backoff.next("a");
        assert!(first >= Duration::from_millis(400) && first <= Duration::from_millis(600));
        assert!(second > first);
        for _ in 0..20 {
            assert!(backoff.next("a") <= Backoff::MAX.mul_f64(1.2));
        }
        backoff.reset("a");
        assert!(backoff.next("a") <= Duration::from_millis(600));
        assert!(backoff.next("b") <= Duration::from_millis(600));
    }
}
