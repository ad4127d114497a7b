//! Prometheus metrics of the operator, served at `/metrics`.
//!
//! Labels are fixed, low-cardinality words (controller, backend, operation,
//! error category) — never object names or error text.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: &'static str,
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendKindLabels {
    pub backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: &'static str,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The operator's metrics and their registry.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    pub backend_duration: Family<BackendLabels, Histogram, fn() -> Histogram>,
    pub backend_writes: Family<BackendKindLabels, Counter>,
    pub api_writes: Family<KindLabels, Counter>,
    tenants: Family<ReadyLabels, Gauge>,
    tenant_readiness: Mutex<HashMap<String, bool>>,
    pub pipelines: crate::pipeline::telemetry::PipelineMetrics,
    /// 1 while this process reconciles (it holds the leader Lease, or runs
    /// without leader election).
    pub leader: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("partnerplane");
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Version of the running operator", build_info);

        let metrics = Self {
            registry: Registry::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(seconds_histogram),
            backend_duration: Family::new_with_constructor(seconds_histogram),
            backend_writes: Family::default(),
            api_writes: Family::default(),
            tenants: Family::default(),
            tenant_readiness: Mutex::new(HashMap::new()),
            pipelines: Default::default(),
            leader: Gauge::default(),
        };
        registry.register(
            "leader",
            "1 while this process reconciles: it holds the leader Lease, or runs without leader election",
            metrics.leader.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles run, per controller",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, per controller and error category",
            metrics.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile takes, per controller",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "backend_operation_duration_seconds",
            "Latency of operations on Postgres, Redis and Vault/OpenBao",
            metrics.backend_duration.clone(),
        );
        registry.register(
            "backend_writes",
            "Writes to a backend: DDL and grants, ACL changes, Vault writes",
            metrics.backend_writes.clone(),
        );
        registry.register(
            "api_writes",
            "Writes the operator sent to the Kubernetes API server, per kind",
            metrics.api_writes.clone(),
        );
        registry.register(
            "tenants",
            "PartnerTenants by readiness",
            metrics.tenants.clone(),
        );
        metrics.pipelines.register(&mut registry);
        for ready in ["true", "false"] {
            metrics.tenants.get_or_create(&ReadyLabels { ready }).set(0);
        }
        Self {
            registry,
            ..metrics
        }
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Times one backend operation.
    pub fn backend_timer(
        &self,
        backend: &'static str,
        operation: &'static str,
    ) -> BackendTimer<'_> {
        BackendTimer {
            histogram: self
                .backend_duration
                .get_or_create(&BackendLabels { backend, operation })
                .clone(),
            started: Instant::now(),
            _metrics: self,
        }
    }

    /// Counts `n` writes to `backend`.
    pub fn backend_wrote(&self, backend: &'static str, n: u64) {
        if n > 0 {
            self.backend_writes
                .get_or_create(&BackendKindLabels { backend })
                .inc_by(n);
        }
    }

    /// How many tenants have a recorded readiness (the operator's tenants).
    pub fn tenant_count(&self) -> usize {
        self.tenant_readiness.lock().expect("metrics lock").len()
    }

    /// Records a tenant's readiness (`None` when it is gone).
    pub fn set_tenant_ready(&self, tenant: &str, ready: Option<bool>) {
        // Moves one tenant between the two counts: constant work per call,
        // whatever the number of tenants.
        let mut map = self.tenant_readiness.lock().expect("metrics lock");
        let before = match ready {
            Some(r) => map.insert(tenant.to_string(), r),
            None => map.remove(tenant),
        };
        let gauge = |ready: bool| {
            self.tenants.get_or_create(&ReadyLabels {
                ready: if ready { "true" } else { "false" },
            })
        };
        if before == ready {
            return;
        }
        if let Some(was) = before {
            gauge(was).dec();
        }
        if let Some(is) = ready {
            gauge(is).inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Observes the elapsed time when dropped.
pub struct BackendTimer<'a> {
    histogram: Histogram,
    started: Instant,
    _metrics: &'a Metrics,
}

impl Drop for BackendTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_build_info_and_controller_metrics() {
        let metrics = Metrics::new();
        metrics
            .reconciles
            .get_or_create(&ControllerLabels {
                controller: "tenant",
            })
            .inc();
        metrics.set_tenant_ready("a", Some(true));
        metrics.set_tenant_ready("b", Some(true));
        metrics.set_tenant_ready("b", Some(true));
        metrics.set_tenant_ready("b", Some(false));
        metrics.set_tenant_ready("c", Some(false));
        metrics.set_tenant_ready("c", None);
        metrics.set_tenant_ready("gone", None);
        let text = metrics.encode();
        assert!(
            text.contains("partnerplane_build_info{version=\""),
            "{text}"
        );
        assert!(
            text.contains("partnerplane_reconciles_total{controller=\"tenant\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("partnerplane_tenants{ready=\"true\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("partnerplane_tenants{ready=\"false\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
