//! Prometheus metrics of a copilot server, served at `/metrics`.
//!
//! Labels are bounded: the copilot (`namespace/name`, one per process), the
//! endpoint and the outcome, each a fixed word. Never a partner, a
//! question, a document or an error text.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    copilot: String,
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    copilot: String,
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CopilotLabels {
    copilot: String,
}

fn seconds_histogram() -> Histogram {
    // 5 ms to about 80 s: model calls dominate.
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// The copilot's metrics and their registry.
pub struct CopilotMetrics {
    registry: Registry,
    copilot: String,
    requests: Family<OutcomeLabels, Counter>,
    duration: Family<EndpointLabels, Histogram, fn() -> Histogram>,
    withheld: Family<CopilotLabels, Counter>,
    approvals_pending: Family<CopilotLabels, Gauge>,
    tokens: Family<EndpointLabels, Counter>,
    model_errors: Family<OutcomeLabels, Counter>,
}

impl CopilotMetrics {
    pub fn new(copilot: &str) -> Self {
        let mut registry = Registry::with_prefix("partnerplane_copilot");
        let metrics = Self {
            registry: Registry::default(),
            copilot: copilot.to_string(),
            requests: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram),
            withheld: Family::default(),
            approvals_pending: Family::default(),
            tokens: Family::default(),
            model_errors: Family::default(),
        };
        registry.register(
            "requests",
            "API requests, per endpoint and outcome",
            metrics.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time an API request takes, per endpoint",
            metrics.duration.clone(),
        );
        registry.register(
            "withheld_answers",
            "Answers withheld for low confidence and routed to a human",
            metrics.withheld.clone(),
        );
        registry.register(
            "approvals_pending",
            "Guarded actions and withheld answers waiting for a human",
            metrics.approvals_pending.clone(),
        );
        registry.register(
            "model_tokens",
            "Tokens the model provider reported, per endpoint",
            metrics.tokens.clone(),
        );
        registry.register(
            "model_errors",
            "Failed model calls, per endpoint and cause",
            metrics.model_errors.clone(),
        );
        let labels = CopilotLabels {
            copilot: metrics.copilot.clone(),
        };
        // Present from the start, at zero.
        let _ = metrics.withheld.get_or_create(&labels);
        let _ = metrics.approvals_pending.get_or_create(&labels);
        Self {
            registry,
            ..metrics
        }
    }

    fn copilot(&self) -> CopilotLabels {
        CopilotLabels {
            copilot: self.copilot.clone(),
        }
    }

    /// Counts and times one request.
    pub fn request(&self, endpoint: &'static str, outcome: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&OutcomeLabels {
                copilot: self.copilot.clone(),
                endpoint,
                outcome,
            })
            .inc();
        self.duration
            .get_or_create(&EndpointLabels {
                copilot: self.copilot.clone(),
                endpoint,
            })
            .observe(seconds);
    }

    pub fn withheld(&self) {
        self.withheld.get_or_create(&self.copilot()).inc();
    }

    pub fn set_pending(&self, n: i64) {
        self.approvals_pending.get_or_create(&self.copilot()).set(n);
    }

    pub fn tokens(&self, endpoint: &'static str, n: i64) {
        if n > 0 {
            self.tokens
                .get_or_create(&EndpointLabels {
                    copilot: self.copilot.clone(),
                    endpoint,
                })
                .inc_by(n as u64);
        }
    }

    pub fn model_error(&self, endpoint: &'static str, cause: &'static str) {
        self.model_errors
            .get_or_create(&OutcomeLabels {
                copilot: self.copilot.clone(),
                endpoint,
                outcome: cause,
            })
            .inc();
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_copilot_endpoint_and_outcome() {
        let m = CopilotMetrics::new("ns/ops");
        m.request("ask", "answered", 0.2);
        m.withheld();
        m.set_pending(3);
        m.tokens("ask", 42);
        m.model_error("ask", "timeout");
        let text = m.encode();
        for line in [
            r#"partnerplane_copilot_requests_total{copilot="ns/ops",endpoint="ask",outcome="answered"} 1"#,
            r#"partnerplane_copilot_withheld_answers_total{copilot="ns/ops"} 1"#,
            r#"partnerplane_copilot_approvals_pending{copilot="ns/ops"} 3"#,
            r#"partnerplane_copilot_model_tokens_total{copilot="ns/ops",endpoint="ask"} 42"#,
            r#"partnerplane_copilot_model_errors_total{copilot="ns/ops",endpoint="ask",outcome="timeout"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(text.contains("partnerplane_copilot_request_duration_seconds_bucket{"));
        assert!(text.ends_with("# EOF\n"));
    }
}
