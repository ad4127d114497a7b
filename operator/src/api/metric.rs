//! Governed metric definitions: structured data the operator compiles to SQL.
//!
//! No manifest string ever reaches SQL as text: names are identifiers matched
//! by a strict pattern (and quoted when compiled), and values are typed
//! literals bound as parameters.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A lower-case SQL identifier: a letter, then letters, digits or `_`, at most 63 bytes.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct Identifier(
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z][a-z0-9_]*$"))] pub String,
);

impl Identifier {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A table of partner events the tenant's systems write to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.columns.exists(c, c.name == self.partnerColumn)")
        .message("partnerColumn must name one of the source's columns")
        .field_path(".partnerColumn"),
    validation = Rule::new("self.columns.exists(c, c.name == self.timeColumn && c.type == 'Timestamp')")
        .message("timeColumn must name one of the source's Timestamp columns")
        .field_path(".timeColumn"),
)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Table name in the tenant schema.
    pub name: Identifier,

    /// What the events are and which system writes them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub description: Option<String>,

    /// Columns of the table.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub columns: Vec<Column>,

    /// Column identifying the partner an event belongs to; per-partner
    /// results and breaches are grouped by it.
    pub partner_column: Identifier,

    /// Timestamp column the metric window applies to.
    pub time_column: Identifier,
}

/// A column of a source table.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(self.name in ['ctid', 'xmin', 'xmax', 'cmin', 'cmax', 'tableoid'])")
        .message("the name of a Postgres system column cannot name a column")
        .field_path(".name")
)]
pub struct Column {
    /// Column name.
    pub name: Identifier,
    /// Column type.
    #[serde(rename = "type")]
    pub type_: ColumnType,
    /// What the column holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub description: Option<String>,
}

/// Column types a source may declare.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnType {
    Text,
    Integer,
    Numeric,
    Boolean,
    Timestamp,
    Date,
}

/// One governed metric.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.objective) || self.aggregate.kind != 'Ratio' || (self.objective.target >= 0.0 && self.objective.target <= 1.0)")
        .message("the objective of a Ratio metric is a fraction between 0 and 1")
        .field_path(".objective.target"),
    validation = Rule::new("!has(self.objective) || !(self.aggregate.kind in ['Count', 'CountDistinct']) || self.objective.target >= 0.0")
        .message("the objective of a count cannot be negative")
        .field_path(".objective.target"),
    validation = Rule::new("!has(self.objective) || !has(self.aggregate.duration) || self.objective.target >= 0.0")
        .message("the objective of a duration cannot be negative")
        .field_path(".objective.target"),
)]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    /// Metric name; also the name of its result in status.
    pub name: Identifier,

    /// Name shown on dashboards and in copilot answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub display_name: Option<String>,

    /// What the metric measures and why it matters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub description: Option<String>,

    /// Business domain the metric belongs to.
    pub domain: MetricDomain,

    /// Name of the source (in `spec.sources`) the metric reads.
    pub source: Identifier,

    /// How rows become the metric's value.
    pub aggregate: Aggregate,

    /// Only rows matching every filter count.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub filters: Vec<Predicate>,

    /// Extra dimensions results are grouped by (the partner is always one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 3))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub group_by: Vec<Identifier>,

    /// Trailing time window over the source's time column, such as `30d`,
    /// `12w` or `24h`.
    #[serde(default = "default_window")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,3}[hdw]$"))]
    pub window: String,

    /// The target the metric is held to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objective: Option<Objective>,

    /// Projects each partner's daily values to flag those heading for a
    /// breach before it happens (needs an objective).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<Forecast>,
}

/// A least-squares trend over each partner's daily values.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Forecast {
    /// How far ahead to project, such as `14d`.
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,2}d$"))]
    pub horizon: String,
    /// Days of history the trend is fitted on.
    #[serde(default = "default_forecast_history")]
    #[schemars(range(min = 7, max = 365))]
    pub history_days: i32,
    /// Daily points a partner needs before its forecast is trusted.
    #[serde(default = "default_forecast_min_points")]
    #[schemars(range(min = 3, max = 365))]
    pub min_points: i32,
    /// Least fit (R², 0 to 1) a trend needs before it is trusted.
    #[serde(default = "default_forecast_min_fit")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub min_fit: f64,
}

fn default_forecast_history() -> i32 {
    28
}

fn default_forecast_min_points() -> i32 {
    14
}

fn default_forecast_min_fit() -> f64 {
    0.6
}

fn default_window() -> String {
    "30d".into()
}

/// Business domains, from manufacturing partner networks and logistics
/// reseller channels.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricDomain {
    /// Revenue sourced or influenced by partners.
    RevenueAttribution,
    /// Service delivery: response and resolution times, first-time fix, SLA adherence.
    ServiceDelivery,
    /// Asset performance: uptime, mean time between failures, warranty claims.
    AssetPerformance,
    /// Financial control: invoice accuracy, credits, rebates and disputes.
    FinancialControl,
    /// Compliance and governance: certifications, insurance, audits, data handling.
    Compliance,
    /// Customer lifecycle: renewals, churn risk, expansion.
    CustomerLifecycle,
    /// Implementation delivery: time to go-live, milestones on time.
    ImplementationDelivery,
    /// Support quality: resolution, escalations, satisfaction.
    SupportQuality,
    /// Customer adoption: active users, feature usage.
    CustomerAdoption,
    /// Commercial health: renewals, discounting, pipeline.
    CommercialHealth,
}

/// A structured aggregate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!(self.kind in ['Sum', 'Average', 'Minimum', 'Maximum', 'Percentile']) || (has(self.column) != has(self.duration))")
        .message("Sum, Average, Minimum, Maximum and Percentile need exactly one of column or duration"),
    validation = Rule::new("self.kind != 'CountDistinct' || (has(self.column) && !has(self.duration))")
        .message("CountDistinct needs column")
        .field_path(".column"),
    validation = Rule::new("!(self.kind in ['Count', 'Ratio']) || (!has(self.column) && !has(self.duration))")
        .message("Count and Ratio take neither column nor duration"),
    validation = Rule::new("(self.kind == 'Ratio') == (has(self.matching) && size(self.matching) > 0)")
        .message("matching is required for Ratio and allowed only there")
        .field_path(".matching"),
    validation = Rule::new("(self.kind == 'Percentile') == has(self.percentile)")
        .message("percentile is required for Percentile and allowed only there")
        .field_path(".percentile"),
)]
#[serde(rename_all = "camelCase")]
pub struct Aggregate {
    /// `Count` rows; `CountDistinct` values of a column; `Sum`, `Average`,
    /// `Minimum`, `Maximum` or `Percentile` of a numeric column or of a
    /// duration; `Ratio`: the share of rows matching `matching` (0 to 1).
    pub kind: AggregateKind,

    /// Numeric column aggregated (or counted, for CountDistinct).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub column: Option<Identifier>,

    /// Duration between two timestamp columns, aggregated instead of a column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<DurationBetween>,

    /// For Ratio: rows matching all of these form the numerator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub matching: Vec<Predicate>,

    /// For Percentile: which percentile, 1 to 99.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub percentile: Option<i32>,
}

/// Aggregate kinds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AggregateKind {
    Count,
    CountDistinct,
    Sum,
    Average,
    Minimum,
    Maximum,
    Ratio,
    Percentile,
}

/// The time from one timestamp column to another.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DurationBetween {
    /// Column holding the start (for example `reported_at`).
    pub from: Identifier,
    /// Column holding the end (for example `resolved_at`).
    pub to: Identifier,
    /// Unit the duration is expressed in.
    #[serde(default)]
    pub unit: DurationUnit,
}

/// Unit of a duration.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DurationUnit {
    Minutes,
    #[default]
    Hours,
    Days,
}

/// A condition on one column, with typed values.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0 && !has(self.value))")
        .message("In and NotIn take a non-empty values list and no value")
        .field_path(".values"),
    validation = Rule::new("!(self.operator in ['IsNull', 'IsNotNull']) || (!has(self.value) && (!has(self.values) || size(self.values) == 0))")
        .message("IsNull and IsNotNull take no value")
        .field_path(".value"),
    validation = Rule::new("self.operator in ['In', 'NotIn', 'IsNull', 'IsNotNull'] || (has(self.value) && (!has(self.values) || size(self.values) == 0))")
        .message("this operator takes exactly one value")
        .field_path(".value"),
)]
#[serde(rename_all = "camelCase")]
pub struct Predicate {
    /// Column the condition applies to.
    pub column: Identifier,
    /// Comparison.
    pub operator: Operator,
    /// Value compared against, for every operator but In, NotIn, IsNull and IsNotNull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Literal>,
    /// Values for In and NotIn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub values: Vec<Literal>,
}

/// Comparison operators.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Equals,
    NotEquals,
    LessThan,
    LessOrEqual,
    GreaterThan,
    GreaterOrEqual,
    In,
    NotIn,
    IsNull,
    IsNotNull,
}

/// A typed literal: exactly one field is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("[has(self.string), has(self.integer), has(self.number), has(self.boolean), has(self.timestamp)].exists_one(set, set)")
        .message("a literal sets exactly one of string, integer, number, boolean or timestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct Literal {
    /// A text value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub string: Option<String>,
    /// A whole number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integer: Option<i64>,
    /// A decimal number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<f64>,
    /// True or false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boolean: Option<bool>,
    /// An RFC 3339 timestamp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub timestamp: Option<String>,
}

/// The target a metric is held to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Objective {
    /// `AtLeast`: met when the value is ≥ target; `AtMost`: when ≤ target.
    pub comparison: Comparison,
    /// The target, in the metric's own unit (a fraction for Ratio).
    pub target: f64,
}

/// Direction of an objective.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    AtLeast,
    AtMost,
}
