//! What every reconcile shares: clients, backends, caches, metrics, Events.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::recorder::Recorder;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use rand::Rng;

use crate::backends::postgres::Postgres;
use crate::backends::redis::Redis;
use crate::backends::vault::Vault;
use crate::index::Indexed;
use crate::metrics::Metrics;

/// Watch caches of the objects the operator owns (selected by label).
#[derive(Clone)]
pub struct Stores {
    pub namespaces: Indexed<Namespace>,
    pub quotas: Indexed<ResourceQuota>,
    pub limit_ranges: Indexed<LimitRange>,
    pub network_policies: Indexed<NetworkPolicy>,
    pub service_accounts: Indexed<ServiceAccount>,
    pub roles: Indexed<Role>,
    pub role_bindings: Indexed<RoleBinding>,
    pub services: Indexed<Service>,
    pub stateful_sets: Indexed<StatefulSet>,
}

/// Settings that shape reconciles.
#[derive(Debug, Clone)]
pub struct Settings {
    /// How often a Ready tenant is checked again for drift in the backends.
    pub resync: Duration,
    /// The shared backends' addresses tenant workloads may connect to.
    pub backend_egress: BackendEgress,
    /// Namespaces no tenant may use: the operator's own and those holding
    /// its backends' admin Secrets.
    pub protected_namespaces: Vec<String>,
    /// The ClusterRole bound in each tenant namespace for the operator's
    /// Secret access, and the operator's own identity.
    pub secret_access: crate::tenant::secret_access::SecretAccess,
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

/// An address block (`10.0.0.0/16`, `fd00::/64`, or one address, which
/// means all of its bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub address: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// The block of exactly one address: `/32` or `/128`.
    pub fn host(address: IpAddr) -> Self {
        let prefix = if address.is_ipv4() { 32 } else { 128 };
        Self { address, prefix }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let Some(prefix) = prefix else {
            return Ok(Self::host(address));
        };
        let max = Self::host(address).prefix;
        match prefix.parse::<u8>() {
            Ok(prefix) if prefix <= max => Ok(Self { address, prefix }),
            _ => Err(format!("{text:?} has a prefix length outside 0..={max}")),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// Where tenant workloads may connect outside their namespace and the
/// cluster DNS: each shared backend's address block with its TCP port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendEgress {
    pub targets: BTreeSet<(Cidr, u16)>,
    /// Backends named by a host name while no `--backend-cidrs` were given:
    /// a network policy cannot follow a name, so workloads cannot reach them.
    pub unreachable: Vec<String>,
}

impl BackendEgress {
    /// Every backend in `endpoints` at its literal address; a backend named
    /// by a host name at each of `backend_cidrs` instead.
    pub fn derive(endpoints: &Endpoints, backend_cidrs: &[Cidr]) -> Self {
        let mut egress = Self::default();
        for (backend, host, port) in endpoints.backends() {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            match host.parse::<IpAddr>() {
                Ok(address) => {
                    egress.targets.insert((Cidr::host(address), port));
                }
                Err(_) if backend_cidrs.is_empty() => {
                    egress
                        .unreachable
                        .push(format!("{backend} ({host}:{port})"));
                }
                Err(_) => egress
                    .targets
                    .extend(backend_cidrs.iter().map(|cidr| (*cidr, port))),
            }
        }
        egress
    }
}

impl Endpoints {
    /// Each backend's name, host and TCP port.
    fn backends(&self) -> Vec<(String, String, u16)> {
        let mut all: Vec<(String, String, u16)> = self
            .postgres
            .iter()
            .filter_map(|(name, env)| {
                let port = env
                    .get("PGPORT")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(5432);
                Some((format!("Postgres {name}"), env.get("PGHOST")?.clone(), port))
            })
            .collect();
        all.push(("Redis".into(), self.redis_host.clone(), self.redis_port));
        if let Ok(uri) = self.vault_address.parse::<http::Uri>()
            && let Some(host) = uri.host()
        {
            let default_port = if uri.scheme_str() == Some("http") {
                80
            } else {
                443
            };
            let port = uri.port_u16().unwrap_or(default_port);
            all.push(("Vault/OpenBao".into(), host.to_string(), port));
        }
        all
    }
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

/// Share of a delay a periodic requeue may move by, so that objects created
/// together do not all come back in the same second.
const JITTER: f64 = 0.1;

/// `delay` moved by up to ±10 %.
pub fn jittered(delay: Duration, rng: &mut impl Rng) -> Duration {
    let factor = 1.0 + rng.random_range(-JITTER..=JITTER);
    delay.mul_f64(factor)
}

/// Drift checks of Ready tenants, all together, at most this many a second.
/// A check is a reconcile (a few backend round trips each); the 2-core
/// reference machine completes about 20 a second, and 10,000 tenants on a
/// five-minute resync would ask 33, leaving nothing for new or changed ones.
const RESYNCS_PER_SECOND: f64 = 5.0;

/// The resync interval for `tenants` tenants: the configured one, stretched
/// so that checks stay within [`RESYNCS_PER_SECOND`]. Changes to the objects
/// the operator watches are seen at once; drift inside the backends and a
/// deleted credentials Secret (Secrets are not watched) wait for a check.
pub fn resync_interval(configured: Duration, tenants: usize) -> Duration {
    configured.max(Duration::from_secs_f64(tenants as f64 / RESYNCS_PER_SECOND))
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
    /// The n8n tenants' workflow templates go to, when configured.
    pub workflows: Option<Arc<crate::workflows::Engine>>,
    /// True once every watch cache holds its initial list.
    pub caches_ready: tokio::sync::watch::Receiver<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resyncs_stretch_with_the_number_of_tenants() {
        let configured = Duration::from_secs(300);
        assert_eq!(resync_interval(configured, 10), configured);
        assert_eq!(resync_interval(configured, 1_000), configured);
        assert_eq!(
            resync_interval(configured, 10_000),
            Duration::from_secs(2_000),
            "at most five checks a second"
        );
    }

    fn endpoints(pg_host: &str, redis_host: &str, vault: &str) -> Endpoints {
        Endpoints {
            postgres: BTreeMap::from([(
                "default".to_string(),
                BTreeMap::from([
                    ("PGHOST".to_string(), pg_host.to_string()),
                    ("PGPORT".to_string(), "5433".to_string()),
                ]),
            )]),
            redis_host: redis_host.into(),
            redis_port: 6380,
            vault_address: vault.into(),
        }
    }

    fn target(cidr: &str, port: u16) -> (Cidr, u16) {
        (cidr.parse().unwrap(), port)
    }

    #[test]
    fn literal_backend_addresses_become_single_host_blocks_with_their_ports() {
        let egress = BackendEgress::derive(
            &endpoints("10.0.0.5", "fd00::7", "https://[fd00::8]:8200"),
            &[],
        );
        assert_eq!(
            egress.targets,
            BTreeSet::from([
                target("10.0.0.5/32", 5433),
                target("fd00::7/128", 6380),
                target("fd00::8/128", 8200),
            ])
        );
        assert!(egress.unreachable.is_empty());
    }

    #[test]
    fn named_backends_use_the_configured_blocks_or_stay_unreachable() {
        let named = endpoints("pg.db.svc", "10.0.0.9", "http://vault.vault.svc");
        let egress = BackendEgress::derive(&named, &[]);
        assert_eq!(
            egress.targets,
            BTreeSet::from([target("10.0.0.9/32", 6380)])
        );
        assert_eq!(
            egress.unreachable,
            [
                "Postgres default (pg.db.svc:5433)",
                "Vault/OpenBao (vault.vault.svc:80)"
            ]
        );
        let cidrs = ["10.96.0.0/12".parse().unwrap()];
        let egress = BackendEgress::derive(&named, &cidrs);
        assert_eq!(
            egress.targets,
            BTreeSet::from([
                target("10.0.0.9/32", 6380),
                target("10.96.0.0/12", 80),
                target("10.96.0.0/12", 5433),
            ])
        );
        assert!(egress.unreachable.is_empty());
    }

    #[test]
    fn cidrs_parse_strictly_and_print_canonically() {
        assert_eq!(
            "10.1.0.0/16".parse::<Cidr>().unwrap().to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
            "10.1.2.3/32"
        );
        assert_eq!(
            "FD00:0::1/64".parse::<Cidr>().unwrap().to_string(),
            "fd00::1/64"
        );
        for bad in [
            "",
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/",
            "host/24",
            "0/x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_spreads() {
        let mut rng = rand::rng();
        let delays: Vec<Duration> = (0..200)
            .map(|_| jittered(Duration::from_secs(100), &mut rng))
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(90) && *d <= Duration::from_secs(110))
        );
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "delays are spread, not equal");
    }

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
