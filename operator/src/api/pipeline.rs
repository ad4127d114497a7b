//! `MetricPipeline`: governed partner metrics, materialized in the tenant's
//! schema and kept fresh. It lives in a tenant namespace; the namespace's
//! owner is its tenant.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::copilot::ApiKeyRef;
use super::metric::{Identifier, Metric, Source};
use super::tenant::WorkflowTemplate;

/// Governed partner metrics over the tenant's event tables.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "partnerplane.io",
    version = "v1alpha1",
    kind = "MetricPipeline",
    plural = "metricpipelines",
    namespaced,
    shortname = "mpl",
    category = "partnerplane",
    status = "MetricPipelineStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Objectives Met","type":"string","jsonPath":".status.objectivesMet"}"#,
    printcolumn = r#"{"name":"Last Refresh","type":"date","jsonPath":".status.lastRefreshTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(
    validation = Rule::new("self.metrics.all(m, self.sources.exists(s, s.name == m.source))")
        .message("every metric's source must name one of spec.sources")
        .field_path(".metrics"),
    validation = Rule::new("self.metrics.all(m, !has(m.aggregate.column) || self.sources.exists(s, s.name == m.source && s.columns.exists(c, c.name == m.aggregate.column)))")
        .message("a metric's aggregate.column must be a column of its source")
        .field_path(".metrics"),
    validation = Rule::new("!has(self.onBreach) || self.onBreach.all(a, a.kind != 'Webhook' || (has(a.url) && has(a.signingSecret)))")
        .message("a Webhook breach action needs url and signingSecret")
        .field_path(".onBreach"),
    validation = Rule::new("!has(self.onBreach) || self.onBreach.all(a, a.kind == 'Webhook' || (!has(a.url) && !has(a.signingSecret)))")
        .message("url and signingSecret belong to Webhook breach actions only")
        .field_path(".onBreach"),
    validation = Rule::new("self.metrics.all(m, !has(m.forecast) || has(m.objective))")
        .message("a forecast needs the metric's objective")
        .field_path(".metrics"),
    validation = Rule::new("!has(self.onBreach) || self.onBreach.all(a, a.kind != 'Workflow' || has(a.workflow))")
        .message("a Workflow breach action needs workflow")
        .field_path(".onBreach"),
    validation = Rule::new("!has(self.onBreach) || self.onBreach.all(a, a.kind != 'Workflow' || !has(a.workflow) || a.workflow in ['SlaBreachEscalation', 'ExceptionRouting'])")
        .message("a Workflow breach action must name a template started by a webhook: SlaBreachEscalation or ExceptionRouting")
        .field_path(".onBreach"),
    validation = Rule::new("!has(self.onBreach) || self.onBreach.all(a, a.kind == 'Workflow' || !has(a.workflow))")
        .message("workflow belongs to Workflow breach actions only")
        .field_path(".onBreach"),
)]
#[serde(rename_all = "camelCase")]
pub struct MetricPipelineSpec {
    /// Event tables the metrics read; the operator creates them in the tenant schema.
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub sources: Vec<Source>,

    /// The governed metrics.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub metrics: Vec<Metric>,

    /// How often metrics are recomputed, such as `5m` or `1h` (at least 30s).
    #[serde(default = "default_refresh_interval")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}(s|m|h)$"))]
    #[x_kube(validation = Rule::new("duration(self) >= duration('30s')").message("refreshInterval must be at least 30s"))]
    pub refresh_interval: String,

    /// What happens when an objective is breached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub on_breach: Vec<BreachAction>,

    /// IANA time zone that day buckets and windows follow, such as
    /// `Europe/Berlin`. A `30d` window covers today and the 29 days before
    /// it, as calendar days in this zone (correct across DST changes); an
    /// hour window covers whole hours. Digits and signs appear only in
    /// `Etc/GMT+5`-style names: a name Postgres finds no zone for it reads
    /// as a POSIX zone string, so `UTC+3` or `Europe/Berlin+3` would mean
    /// UTC-3; such names, and legacy ones like `EST5EDT`, are refused.
    #[serde(default = "default_time_zone")]
    #[schemars(
        length(min = 1, max = 64),
        regex(
            pattern = r"^(Etc/GMT([+-]?0|\+([1-9]|1[0-2])|-([1-9]|1[0-4]))|[A-Za-z]+(/[A-Za-z_-]+)*)$"
        )
    )]
    pub time_zone: String,

    /// Lets a change lose data in a source table: a column dropped or
    /// retyped, a source removed (its table dropped). Off by default, when
    /// such a change is refused with `Stalled` naming the column.
    #[serde(default)]
    pub allow_destructive_changes: bool,

    /// What deleting the pipeline does to its source tables, which hold the
    /// tenant's own data: `Retain` (the default) keeps them and their rows,
    /// `Delete` drops them. Derived tables are always dropped.
    #[serde(default)]
    pub source_deletion_policy: SourceDeletionPolicy,

    /// Stops refreshing while true.
    #[serde(default)]
    pub suspend: bool,
}

fn default_time_zone() -> String {
    "UTC".into()
}

/// What deleting a pipeline does to its source tables.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SourceDeletionPolicy {
    #[default]
    Retain,
    Delete,
}

fn default_refresh_interval() -> String {
    "5m".into()
}

/// One reaction to a breached objective.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BreachAction {
    /// `Event`: a Warning Event on the pipeline; `Condition`: the
    /// `ObjectivesMet` condition turns False; `Webhook`: a POST to `url`;
    /// `Workflow`: runs the tenant's workflow template.
    pub kind: BreachActionKind,

    /// HTTPS endpoint for Webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https://[^\s]+$"))]
    pub url: Option<String>,

    /// For Workflow: the tenant's workflow template the breach is delivered
    /// to (it needs a webhook: `SlaBreachEscalation` or `ExceptionRouting`).
    /// The tenant must enable it in `spec.workflows.templates`; until then
    /// deliveries are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<WorkflowTemplate>,

    /// For Webhook: the signing secret (Standard Webhooks, `whsec_…` or raw
    /// base64), under the tenant's OpenBao path or in a Secret of the
    /// pipeline's namespace. It is read at delivery and never copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<ApiKeyRef>,
}

/// Kinds of breach action.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreachActionKind {
    Event,
    Condition,
    Webhook,
    Workflow,
}

/// Observed state of a pipeline.
///
/// Defaults to `observedGeneration: -1` so that a pipeline no controller has
/// reconciled yet reads as in progress (kstatus), not as current.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[schemars(extend("default" = {"observedGeneration": -1}))]
#[serde(rename_all = "camelCase")]
pub struct MetricPipelineStatus {
    /// Generation of the spec this status describes; -1 until a controller
    /// has reconciled the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling`, `Stalled`, `SourcesReady` and `ObjectivesMet`.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// When the metrics were last computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,

    /// Objectives met out of objectives defined, such as `3/4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objectives_met: Option<String>,

    /// Current value of each metric.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub metrics: Vec<MetricStatus>,

    /// Schema-qualified source tables the tenant's systems write to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_tables: Vec<String>,

    /// Schema-qualified table holding every partner's value per refresh,
    /// for BI tools and copilots to read the same numbers as this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_table: Option<String>,

    /// How the last refresh went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<RefreshSummary>,

    /// The value of the `partnerplane.io/refresh-requested-at` annotation
    /// the last refresh answered; setting the annotation to a new value
    /// refreshes at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_refresh_request: Option<String>,
}

/// What the last refresh did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RefreshSummary {
    /// `Incremental` (only changed partners and buckets touched), `Full`
    /// (a definition changed, first run, or too much changed) or `Unchanged`.
    pub path: String,
    /// Milliseconds the refresh took.
    pub duration_ms: i64,
    /// Source rows new or changed since the previous refresh.
    pub changed_rows: i64,
    /// Buckets re-derived from raw rows to check the incremental results.
    pub sampled_buckets: i64,
    /// Sampled buckets that differed from their re-derivation (each
    /// difference is repaired and raised as an Event).
    pub mismatched_buckets: i64,
}

/// Current value of one metric.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricStatus {
    /// Metric name.
    pub name: Identifier,
    /// Value over all partners; absent when there were no rows, except a
    /// count, which is then 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Whether the objective is met; absent without an objective or value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective_met: Option<bool>,
    /// Rows the value was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<i64>,
    /// Since when the objective has been breached (over all partners).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breached_since: Option<Time>,
    /// Partners breaching the objective, worst first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub breaches: Vec<PartnerBreach>,
    /// Partners whose trend is projected to breach the objective within the
    /// forecast horizon, soonest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub at_risk: Vec<PartnerForecast>,
    /// Why partners could not be forecast, such as too few daily points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast_note: Option<String>,
}

/// A partner projected to breach an objective.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PartnerForecast {
    /// The partner's identifier.
    pub partner: String,
    /// The value the trend reaches on `breachDate`.
    pub projected_value: f64,
    /// The first day (in the pipeline's time zone, `YYYY-MM-DD`) the trend
    /// crosses the objective.
    pub breach_date: String,
    /// Fit quality of the trend (R², 0 to 1).
    pub fit: f64,
}

/// A partner whose value breaches the objective.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PartnerBreach {
    /// The partner's identifier (value of the source's partner column).
    pub partner: String,
    /// The partner's value.
    pub value: f64,
}
