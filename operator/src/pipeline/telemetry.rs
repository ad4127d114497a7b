//! Prometheus series of MetricPipelines: each governed metric's value and
//! objective, and each pipeline's freshness. Labels are the tenant, the
//! pipeline and the metric — never a partner or a row, so the number of
//! series is bounded by the pipelines' specs.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    pub tenant: String,
    pub namespace: String,
    pub pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MetricLabels {
    pub tenant: String,
    pub namespace: String,
    pub pipeline: String,
    pub metric: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PathLabels {
    pub path: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

fn refresh_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 18))
}

/// The families, registered once with the operator's registry.
pub struct PipelineMetrics {
    pub value: Family<MetricLabels, FloatGauge>,
    pub objective_met: Family<MetricLabels, Gauge>,
    pub partners_breaching: Family<MetricLabels, Gauge>,
    pub partners_at_risk: Family<MetricLabels, Gauge>,
    pub last_refresh: Family<PipelineLabels, FloatGauge>,
    pub last_refresh_duration: Family<PipelineLabels, FloatGauge>,
    pub refresh_duration: Family<PathLabels, Histogram, fn() -> Histogram>,
    pub mismatches: Family<PipelineLabels, Counter>,
    pub deliveries: Family<OutcomeLabels, Counter>,
}

impl Default for PipelineMetrics {
    fn default() -> Self {
        Self {
            value: Family::default(),
            objective_met: Family::default(),
            partners_breaching: Family::default(),
            partners_at_risk: Family::default(),
            last_refresh: Family::default(),
            last_refresh_duration: Family::default(),
            refresh_duration: Family::new_with_constructor(refresh_histogram),
            mismatches: Family::default(),
            deliveries: Family::default(),
        }
    }
}

impl PipelineMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "metric_value",
            "Current value of a governed metric over all partners",
            self.value.clone(),
        );
        registry.register(
            "metric_objective_met",
            "1 when a governed metric meets its objective over all partners, 0 when breached",
            self.objective_met.clone(),
        );
        registry.register(
            "metric_partners_breaching",
            "Partners whose own value breaches the metric's objective",
            self.partners_breaching.clone(),
        );
        registry.register(
            "metric_partners_at_risk",
            "Partners projected to breach the objective within the forecast horizon",
            self.partners_at_risk.clone(),
        );
        registry.register(
            "pipeline_last_refresh_timestamp_seconds",
            "When a pipeline's metrics were last computed (staleness = time() - this)",
            self.last_refresh.clone(),
        );
        registry.register(
            "pipeline_last_refresh_duration_seconds",
            "How long a pipeline's last refresh took",
            self.last_refresh_duration.clone(),
        );
        registry.register(
            "pipeline_refresh_duration_seconds",
            "Refresh time of every pipeline, by path (Unchanged, Incremental, Full)",
            self.refresh_duration.clone(),
        );
        registry.register(
            "pipeline_exactness_mismatches",
            "Sampled buckets whose incremental state differed from a recompute from raw rows (each repaired)",
            self.mismatches.clone(),
        );
        registry.register(
            "pipeline_webhook_deliveries",
            "Breach webhook delivery attempts, by outcome",
            self.deliveries.clone(),
        );
    }

    /// Drops every series of a deleted pipeline.
    pub fn forget(&self, pipeline: &PipelineLabels, metrics: &[String]) {
        for metric in metrics {
            let labels = MetricLabels {
                tenant: pipeline.tenant.clone(),
                namespace: pipeline.namespace.clone(),
                pipeline: pipeline.pipeline.clone(),
                metric: metric.clone(),
            };
            self.value.remove(&labels);
            self.objective_met.remove(&labels);
            self.partners_breaching.remove(&labels);
            self.partners_at_risk.remove(&labels);
        }
        self.last_refresh.remove(pipeline);
        self.last_refresh_duration.remove(pipeline);
        self.mismatches.remove(pipeline);
    }
}

impl PipelineLabels {
    pub fn metric(&self, metric: &str) -> MetricLabels {
        MetricLabels {
            tenant: self.tenant.clone(),
            namespace: self.namespace.clone(),
            pipeline: self.pipeline.clone(),
            metric: metric.to_string(),
        }
    }
}
