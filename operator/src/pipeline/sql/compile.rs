//! The metric compiler (pure): structured definitions to SQL.
//!
//! Identifiers come from the spec's `Identifier`s (a strict pattern) and are
//! always quoted; literals become typed, escaped constants checked against
//! their column's type. No manifest text reaches SQL any other way.
//!
//! Every metric is maintained as partial aggregates per (partner,
//! dimensions, bucket) in the pipeline's rollup table: row count `n`,
//! matching rows `m` (Ratio), exact `numeric` sum `s`, minimum `lo` and
//! maximum `hi` of the measure, plus a histogram bin `k` (Percentile) or a
//! distinct value `v` (CountDistinct). All of these merge by addition (or
//! `least`/`greatest`), so new rows are folded in without reading history.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use sha2::{Digest, Sha256};

use super::SqlError;
use crate::api::metric::{
    AggregateKind, Column, ColumnType, DurationUnit, Literal, Metric, Operator, Predicate, Source,
};
use crate::api::pipeline::MetricPipelineSpec;
use crate::naming::quote_ident;

/// Relative accuracy of percentiles: each histogram bin's representative
/// value is within 1 % of every value in the bin.
pub const PERCENTILE_ACCURACY: f64 = 0.01;
/// Offset keeping positive bins above 0 and negative bins below it, so that
/// ordering bins orders values.
const BIN_OFFSET: i64 = 1_000_000;

fn gamma() -> f64 {
    (1.0 + PERCENTILE_ACCURACY) / (1.0 - PERCENTILE_ACCURACY)
}

/// The bin of `x`, as the SQL computes it (DDSketch's logarithmic mapping).
pub fn bin_of(x: f64) -> i64 {
    if x > 0.0 {
        (x.ln() / gamma().ln()).ceil() as i64 + BIN_OFFSET
    } else if x < 0.0 {
        -((-x).ln() / gamma().ln()).ceil() as i64 - BIN_OFFSET
    } else {
        0
    }
}

/// The value a bin stands for: within [`PERCENTILE_ACCURACY`] of every
/// value mapped to it.
pub fn bin_value(k: i64) -> f64 {
    let g = gamma();
    let magnitude = |b: i64| 2.0 * g.powi(b as i32) / (g + 1.0);
    match k {
        0 => 0.0,
        k if k > 0 => magnitude(k - BIN_OFFSET),
        k => -magnitude(-k - BIN_OFFSET),
    }
}

/// Bucket width of a metric, from its window's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grain {
    Hour,
    Day,
}

impl Grain {
    fn unit(self) -> &'static str {
        match self {
            Grain::Hour => "hour",
            Grain::Day => "day",
        }
    }
}

/// `30d` → (Day, 30); `12w` → (Day, 84); `24h` → (Hour, 24).
pub fn parse_window(window: &str) -> Option<(Grain, i64)> {
    let (n, unit) = window.split_at(window.len().checked_sub(1)?);
    let n: i64 = n.parse().ok().filter(|n| *n > 0)?;
    match unit {
        "h" => Some((Grain::Hour, n)),
        "d" => Some((Grain::Day, n)),
        "w" => Some((Grain::Day, n * 7)),
        _ => None,
    }
}

/// A string as an escaped SQL constant. `E''` strings treat backslashes
/// the same whatever `standard_conforming_strings` says.
pub fn string_literal(text: &str) -> String {
    format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

fn invalid(path: String, message: impl Into<String>) -> SqlError {
    SqlError::Invalid {
        path,
        message: message.into(),
    }
}

fn columns(source: &Source) -> BTreeMap<&str, &Column> {
    source
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c))
        .collect()
}

fn type_name(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Text => "Text",
        ColumnType::Integer => "Integer",
        ColumnType::Numeric => "Numeric",
        ColumnType::Boolean => "Boolean",
        ColumnType::Timestamp => "Timestamp",
        ColumnType::Date => "Date",
    }
}

/// The Postgres type a column type is stored as.
pub fn sql_type(t: ColumnType) -> &'static str {
    match t {
        ColumnType::Text => "text",
        ColumnType::Integer => "bigint",
        ColumnType::Numeric => "numeric",
        ColumnType::Boolean => "boolean",
        ColumnType::Timestamp => "timestamp with time zone",
        ColumnType::Date => "date",
    }
}

/// A literal as a constant of `column`'s type, or why it cannot be one.
fn typed_literal(literal: &Literal, column: &Column, time_zone: &str) -> Result<String, String> {
    let want = type_name(column.type_);
    let mismatch = || {
        format!(
            "column {} is {want}: give a matching literal",
            column.name.as_str()
        )
    };
    match column.type_ {
        ColumnType::Text => {
            let s = literal.string.as_ref().ok_or_else(mismatch)?;
            if s.contains('\0') {
                return Err("a string may not contain NUL characters".into());
            }
            Ok(format!("{}::text", string_literal(s)))
        }
        ColumnType::Integer => match (literal.integer, literal.number) {
            // Quoted: `-9223372036854775808::bigint` would cast first.
            (Some(i), _) => Ok(format!("'{i}'::bigint")),
            (_, Some(n)) => Ok(format!("'{n}'::numeric")),
            _ => Err(mismatch()),
        },
        ColumnType::Numeric => match (literal.integer, literal.number) {
            (Some(i), _) => Ok(format!("'{i}'::numeric")),
            (_, Some(n)) if n.is_finite() => Ok(format!("'{n}'::numeric")),
            _ => Err(mismatch()),
        },
        ColumnType::Boolean => literal.boolean.map(|b| b.to_string()).ok_or_else(mismatch),
        ColumnType::Timestamp | ColumnType::Date => {
            let text = literal.timestamp.as_ref().ok_or_else(mismatch)?;
            let at: k8s_openapi::jiff::Timestamp = text
                .parse()
                .map_err(|_| format!("{text:?} is not an RFC 3339 timestamp"))?;
            // Postgres has no year 0 and refuses the years before it.
            if at < k8s_openapi::jiff::Timestamp::from_second(-62_135_596_800).unwrap_or(at) {
                return Err(format!("{text:?} is before the year 1"));
            }
            let constant = format!("'{at}'::timestamptz");
            Ok(if column.type_ == ColumnType::Date {
                format!(
                    "({constant} AT TIME ZONE {})::date",
                    string_literal(time_zone)
                )
            } else {
                constant
            })
        }
    }
}

fn predicate_sql(
    p: &Predicate,
    source: &Source,
    time_zone: &str,
    path: &str,
) -> Result<String, SqlError> {
    let cols = columns(source);
    let column = cols.get(p.column.as_str()).ok_or_else(|| {
        invalid(
            format!("{path}.column"),
            format!(
                "{} is not a column of source {}",
                p.column.as_str(),
                source.name.as_str()
            ),
        )
    })?;
    let ident = quote_ident(p.column.as_str());
    let one = |literal: &Option<Literal>| -> Result<String, SqlError> {
        let literal = literal
            .as_ref()
            .ok_or_else(|| invalid(format!("{path}.value"), "this operator takes a value"))?;
        typed_literal(literal, column, time_zone).map_err(|m| invalid(format!("{path}.value"), m))
    };
    let list = || -> Result<String, SqlError> {
        if p.values.is_empty() {
            return Err(invalid(
                format!("{path}.values"),
                "In and NotIn take values",
            ));
        }
        let items = p
            .values
            .iter()
            .enumerate()
            .map(|(i, l)| {
                typed_literal(l, column, time_zone)
                    .map_err(|m| invalid(format!("{path}.values[{i}]"), m))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(items.join(", "))
    };
    Ok(match p.operator {
        Operator::Equals => format!("{ident} = {}", one(&p.value)?),
        Operator::NotEquals => format!("{ident} <> {}", one(&p.value)?),
        Operator::LessThan => format!("{ident} < {}", one(&p.value)?),
        Operator::LessOrEqual => format!("{ident} <= {}", one(&p.value)?),
        Operator::GreaterThan => format!("{ident} > {}", one(&p.value)?),
        Operator::GreaterOrEqual => format!("{ident} >= {}", one(&p.value)?),
        Operator::In => format!("{ident} IN ({})", list()?),
        Operator::NotIn => format!("{ident} NOT IN ({})", list()?),
        Operator::IsNull => format!("{ident} IS NULL"),
        Operator::IsNotNull => format!("{ident} IS NOT NULL"),
    })
}

/// One metric compiled against its source.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub name: String,
    pub source: String,
    pub kind: AggregateKind,
    pub grain: Grain,
    /// Buckets in the window, ending with the current one.
    pub window_buckets: i64,
    /// Days of daily values a forecast reads, when the metric has one.
    pub history_days: Option<i32>,
    pub percentile: Option<i32>,
    partner_column: String,
    partner_type: ColumnType,
    time_column: String,
    time_zone: String,
    /// Conditions every counted row meets (filters, non-null partner, time and measure).
    conditions: Vec<String>,
    /// The Ratio numerator's condition.
    matching: Option<String>,
    /// The measured value (a numeric column, or a duration in its unit).
    measure: Option<String>,
    /// `jsonb_build_object(...)` of the group-by columns.
    dimensions: String,
    has_dimensions: bool,
    /// CountDistinct's column.
    distinct: Option<String>,
}

/// Compiles every metric, or says which field is wrong.
pub fn compile(spec: &MetricPipelineSpec) -> Result<Vec<Compiled>, SqlError> {
    spec.metrics
        .iter()
        .enumerate()
        .map(|(i, m)| compile_metric(spec, i, m))
        .collect()
}

/// Checks what the CRD's rules cannot.
pub fn check(spec: &MetricPipelineSpec) -> Result<(), SqlError> {
    for (i, source) in spec.sources.iter().enumerate() {
        let mut seen = std::collections::BTreeSet::new();
        for (j, c) in source.columns.iter().enumerate() {
            if !seen.insert(c.name.as_str()) {
                return Err(invalid(
                    format!("spec.sources[{i}].columns[{j}].name"),
                    format!("column {} is declared twice", c.name.as_str()),
                ));
            }
        }
    }
    compile(spec).map(|_| ())
}

fn compile_metric(
    spec: &MetricPipelineSpec,
    i: usize,
    metric: &Metric,
) -> Result<Compiled, SqlError> {
    let path = format!("spec.metrics[{i}]");
    let source = spec
        .sources
        .iter()
        .find(|s| s.name == metric.source)
        .ok_or_else(|| {
            invalid(
                format!("{path}.source"),
                format!("{} is not one of spec.sources", metric.source.as_str()),
            )
        })?;
    let cols = columns(source);
    let tz = spec.time_zone.as_str();
    let (grain, window_buckets) = parse_window(&metric.window).ok_or_else(|| {
        invalid(
            format!("{path}.window"),
            "a window is a number and h, d or w",
        )
    })?;
    let partner = cols.get(source.partner_column.as_str()).ok_or_else(|| {
        invalid(
            format!("{path}.source"),
            "the source's partnerColumn is not one of its columns",
        )
    })?;
    let q = |name: &str| quote_ident(name);
    let mut conditions = vec![
        format!("{} IS NOT NULL", q(source.partner_column.as_str())),
        format!("{} IS NOT NULL", q(source.time_column.as_str())),
    ];
    // An empty partner id names no partner, as a missing one does not.
    if partner.type_ == ColumnType::Text {
        conditions.push(format!("{} <> ''", q(source.partner_column.as_str())));
    }
    for (j, p) in metric.filters.iter().enumerate() {
        conditions.push(predicate_sql(
            p,
            source,
            tz,
            &format!("{path}.filters[{j}]"),
        )?);
    }
    let a = &metric.aggregate;
    let numeric_column = |name: &str, field: &str| -> Result<String, SqlError> {
        let column = cols.get(name).ok_or_else(|| {
            invalid(
                format!("{path}.aggregate.{field}"),
                format!("{name} is not a column of source {}", source.name.as_str()),
            )
        })?;
        match column.type_ {
            ColumnType::Integer | ColumnType::Numeric => Ok(format!("{}::numeric", q(name))),
            other => Err(invalid(
                format!("{path}.aggregate.{field}"),
                format!(
                    "{name} is {}; this aggregate needs an Integer or Numeric column",
                    type_name(other)
                ),
            )),
        }
    };
    let timestamp_column = |name: &str, field: &str| -> Result<String, SqlError> {
        match cols.get(name).map(|c| c.type_) {
            Some(ColumnType::Timestamp) => Ok(q(name)),
            Some(other) => Err(invalid(
                format!("{path}.aggregate.duration.{field}"),
                format!(
                    "{name} is {}; a duration runs between Timestamp columns",
                    type_name(other)
                ),
            )),
            None => Err(invalid(
                format!("{path}.aggregate.duration.{field}"),
                format!("{name} is not a column of source {}", source.name.as_str()),
            )),
        }
    };
    let measure = match (a.kind, &a.column, &a.duration) {
        (AggregateKind::Count | AggregateKind::Ratio | AggregateKind::CountDistinct, _, _) => None,
        (_, _, Some(d)) => {
            let (from, to) = (
                timestamp_column(d.from.as_str(), "from")?,
                timestamp_column(d.to.as_str(), "to")?,
            );
            let seconds = match d.unit {
                DurationUnit::Minutes => 60,
                DurationUnit::Hours => 3600,
                DurationUnit::Days => 86_400,
            };
            Some(format!("(EXTRACT(EPOCH FROM ({to} - {from})) / {seconds})"))
        }
        (_, Some(c), None) => Some(numeric_column(c.as_str(), "column")?),
        (_, None, None) => {
            return Err(invalid(
                format!("{path}.aggregate"),
                "this aggregate needs a column or a duration",
            ));
        }
    };
    if let Some(m) = &measure {
        // Missing values, NaN and infinities are not counted: the last two
        // would never leave a sum again. NaN sorts above Infinity, and a
        // missing value compares to nothing. Nor are numbers a float8
        // cannot hold, whose value could never be reported.
        conditions.push(format!(
            "abs({m}) <= {FLOAT8_MAX} AND ({m} = 0 OR abs({m}) >= {FLOAT8_MIN_NORMAL})"
        ));
    }
    let distinct = match a.kind {
        AggregateKind::CountDistinct => {
            let c = a.column.as_ref().ok_or_else(|| {
                invalid(
                    format!("{path}.aggregate.column"),
                    "CountDistinct needs column",
                )
            })?;
            if !cols.contains_key(c.as_str()) {
                return Err(invalid(
                    format!("{path}.aggregate.column"),
                    format!(
                        "{} is not a column of source {}",
                        c.as_str(),
                        source.name.as_str()
                    ),
                ));
            }
            Some(as_text(&q(c.as_str()), cols[c.as_str()].type_))
        }
        _ => None,
    };
    let matching = match a.kind {
        AggregateKind::Ratio => {
            let parts = a
                .matching
                .iter()
                .enumerate()
                .map(|(j, p)| {
                    predicate_sql(p, source, tz, &format!("{path}.aggregate.matching[{j}]"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if parts.is_empty() {
                return Err(invalid(
                    format!("{path}.aggregate.matching"),
                    "Ratio needs matching",
                ));
            }
            Some(parts.join(" AND "))
        }
        _ => None,
    };
    let mut dims = vec![];
    for (j, g) in metric.group_by.iter().enumerate() {
        if !cols.contains_key(g.as_str()) {
            return Err(invalid(
                format!("{path}.groupBy[{j}]"),
                format!(
                    "{} is not a column of source {}",
                    g.as_str(),
                    source.name.as_str()
                ),
            ));
        }
        dims.push(format!("{}, {}", string_literal(g.as_str()), q(g.as_str())));
    }
    let percentile = match a.kind {
        AggregateKind::Percentile => Some(
            a.percentile
                .filter(|p| (1..=99).contains(p))
                .ok_or_else(|| {
                    invalid(
                        format!("{path}.aggregate.percentile"),
                        "Percentile needs a percentile from 1 to 99",
                    )
                })?,
        ),
        _ => None,
    };
    Ok(Compiled {
        name: metric.name.as_str().to_string(),
        source: source.name.as_str().to_string(),
        kind: a.kind,
        grain,
        window_buckets,
        history_days: metric.forecast.as_ref().map(|f| f.history_days.max(1)),
        percentile,
        partner_column: source.partner_column.as_str().to_string(),
        partner_type: partner.type_,
        time_column: source.time_column.as_str().to_string(),
        time_zone: spec.time_zone.clone(),
        conditions,
        matching,
        measure,
        has_dimensions: !dims.is_empty(),
        dimensions: if dims.is_empty() {
            "'{}'::jsonb".into()
        } else {
            format!("jsonb_build_object({})", dims.join(", "))
        },
        distinct,
    })
}

/// The largest and the smallest normal magnitude a float8 holds, as
/// numeric constants: Postgres refuses to turn a numeric outside them into
/// a float8.
const FLOAT8_MAX: &str = "1.7976931348623157e308";
const FLOAT8_MIN_NORMAL: &str = "2.2250738585072014e-308";

/// A numeric as a float8: none past what a float8 holds, 0 below its
/// smallest normal magnitude (values that nearly cancel), where a plain
/// cast would fail the whole refresh.
fn as_float8(numeric: &str) -> String {
    format!(
        "(CASE WHEN abs({numeric}) > {FLOAT8_MAX} THEN NULL \
         WHEN abs({numeric}) < {FLOAT8_MIN_NORMAL} THEN 0 ELSE {numeric} END)::float8"
    )
}

/// A column's value as text, one text per value: a numeric's trailing
/// zeros dropped, so `1.0` and `1.00` are the same partner or distinct
/// value, as they are equal in SQL.
fn as_text(column: &str, type_: ColumnType) -> String {
    match type_ {
        ColumnType::Numeric => format!("trim_scale({column})::text"),
        _ => format!("{column}::text"),
    }
}

/// Columns of the rollup table, in the order [`Compiled::rollup_select`] yields them.
pub const ROLLUP_COLUMNS: &str = "metric, partner, dims, bucket, k, v, n, m, s, lo, hi";
/// Columns of the window table: the rollup's without the bucket.
pub const WINDOW_COLUMNS: &str = "metric, partner, dims, k, v, n, m, s, lo, hi";

impl Compiled {
    /// The pipeline's time zone.
    pub fn time_zone_name(&self) -> &str {
        &self.time_zone
    }

    fn tz(&self) -> String {
        string_literal(&self.time_zone)
    }

    /// The bucket (local wall-clock time in the pipeline's zone) of the
    /// source's time column.
    pub fn bucket_of(&self) -> String {
        format!(
            "date_trunc('{}', {} AT TIME ZONE {})",
            self.grain.unit(),
            quote_ident(&self.time_column),
            self.tz()
        )
    }

    /// The partner as text.
    pub fn partner_of(&self) -> String {
        as_text(&quote_ident(&self.partner_column), self.partner_type)
    }

    /// The source's partner column compared with a text key.
    pub fn partner_equals(&self, key: &str) -> String {
        let cast = match self.partner_type {
            ColumnType::Text => String::new(),
            t => format!("::{}", sql_type(t)),
        };
        format!("{} = {key}{cast}", quote_ident(&self.partner_column))
    }

    /// The source's time column.
    pub fn time_of(&self) -> String {
        quote_ident(&self.time_column)
    }

    /// How a bucket's time range is found back from its local start: a
    /// little wider than the bucket, so DST changes never cut rows off; the
    /// bucket expression itself decides membership.
    pub fn bucket_range(&self, bucket: &str) -> (String, String) {
        let width = match self.grain {
            Grain::Hour => "interval '1 hour'",
            Grain::Day => "interval '1 day'",
        };
        (
            format!(
                "(({bucket}) AT TIME ZONE {}) - interval '2 hours'",
                self.tz()
            ),
            format!(
                "(({bucket}) + {width}) AT TIME ZONE {} + interval '2 hours'",
                self.tz()
            ),
        )
    }

    /// Partial aggregates of the rows of `from` meeting `extra`. Column
    /// names stay unqualified: whatever `from` joins in names its columns
    /// `_pp_…`, which no source column can be called.
    pub fn rollup_select(&self, from: &str, extra: &str) -> String {
        self.partials_select(from, extra, None)
    }

    /// Whether the metric is split by group-by columns.
    pub fn has_dimensions(&self) -> bool {
        self.has_dimensions
    }

    /// Whether every partial aggregate of this kind can be taken back out
    /// (count, sums, bins, distinct values); a minimum or maximum cannot.
    pub fn invertible(&self) -> bool {
        !matches!(self.kind, AggregateKind::Minimum | AggregateKind::Maximum)
    }

    /// The change `from`'s rows make to the partial aggregates, each row
    /// counted with the sign in its `_pp_sign` column (+1 a row that
    /// arrived, -1 one that went); groups whose change is nothing are left
    /// out. Only for [`Self::invertible`] kinds.
    pub fn delta_select(&self, from: &str, extra: &str) -> String {
        let mut changed = vec!["sum(_pp_sign) <> 0".to_string()];
        if let Some(cond) = &self.matching {
            changed.push(format!(
                "coalesce(sum(_pp_sign) FILTER (WHERE {cond}), 0) <> 0"
            ));
        }
        if let (AggregateKind::Sum | AggregateKind::Average, Some(x)) = (self.kind, &self.measure) {
            changed.push(format!("sum(_pp_sign * {x}) <> 0"));
        }
        format!(
            "{} HAVING {}",
            self.partials_select(from, extra, Some("_pp_sign")),
            changed.join(" OR ")
        )
    }

    fn partials_select(&self, from: &str, extra: &str, sign: Option<&str>) -> String {
        let mut conditions = self.conditions.clone();
        if !extra.is_empty() {
            conditions.push(extra.to_string());
        }
        let measure = self.measure.as_ref();
        let k = match (&self.kind, &measure) {
            (AggregateKind::Percentile, Some(x)) => format!(
                "CASE WHEN {x} > 0 THEN ceil(ln(({x})::float8) / ln({g}))::bigint + {o} \
                 WHEN {x} < 0 THEN -ceil(ln((-{x})::float8) / ln({g}))::bigint - {o} ELSE 0 END",
                g = gamma(),
                o = BIN_OFFSET
            ),
            _ => "0::bigint".into(),
        };
        let v = self
            .distinct
            .clone()
            .unwrap_or_else(|| "''::text".to_string());
        let count = match sign {
            Some(sign) => format!("sum({sign})::bigint"),
            None => "count(*)".into(),
        };
        let m = match (&self.matching, sign) {
            (Some(cond), Some(sign)) => {
                format!("coalesce(sum({sign}) FILTER (WHERE {cond}), 0)::bigint")
            }
            (Some(cond), None) => format!("count(*) FILTER (WHERE {cond})"),
            (None, _) => "0::bigint".into(),
        };
        let signed = |x: &str| match sign {
            Some(sign) => format!("{sign} * {x}"),
            None => x.to_string(),
        };
        // Only the partial aggregates this kind's value reads: each numeric
        // aggregate over a window of rows costs a rebuild noticeably.
        let none = || "NULL::numeric".to_string();
        let (s, lo, hi) = match (self.kind, measure) {
            (AggregateKind::Sum | AggregateKind::Average, Some(x)) => {
                (format!("sum({})", signed(x)), none(), none())
            }
            (AggregateKind::Minimum, Some(x)) => (none(), format!("min({x})"), none()),
            (AggregateKind::Maximum, Some(x)) => (none(), none(), format!("max({x})")),
            _ => (none(), none(), none()),
        };
        format!(
            "SELECT {name}::text, {partner}, {dims}, {bucket}, {k}, {v}, {count}, {m}, {s}, {lo}, {hi} \
             FROM {from} WHERE {conditions} GROUP BY 2, 3, 4, 5, 6",
            name = string_literal(&self.name),
            partner = self.partner_of(),
            dims = self.dimensions,
            bucket = self.bucket_of(),
            conditions = conditions.join(" AND "),
        )
    }

    /// Identifies the rollup definition: a change rebuilds the metric's
    /// partial aggregates from the whole source.
    pub fn fingerprint(&self, source_table: &str) -> String {
        let digest = Sha256::digest(self.rollup_select(source_table, "").as_bytes());
        hex::encode(&digest[..16])
    }

    /// The earliest bucket (local time) anything reads now: the window's
    /// first, or the first day a forecast reads if that is earlier.
    /// Partial aggregates are kept from here on, not for the whole history.
    pub fn needed_from(&self) -> String {
        let (start, _) = self.window();
        match self.history_days {
            Some(days) => format!(
                "least({start}, date_trunc('day', now() AT TIME ZONE {}) - interval '{} days')",
                self.tz(),
                days - 1
            ),
            None => start,
        }
    }

    /// How many hours back from now [`Self::needed_from`] reaches, at most.
    pub fn reach_hours(&self) -> i64 {
        let window = match self.grain {
            Grain::Hour => self.window_buckets,
            Grain::Day => self.window_buckets * 24,
        };
        window.max(i64::from(self.history_days.unwrap_or(0)) * 24)
    }

    /// Rows whose bucket is `from` (a local bucket time) or later: a range
    /// on the time column an index can serve, a little wider for DST, and
    /// the bucket itself to decide.
    pub fn retained(&self, from: &str) -> String {
        format!(
            "{} AND {} >= {from}",
            self.time_from(from),
            self.bucket_of()
        )
    }

    /// The time-column part of [`Self::retained`]: no row it leaves out is
    /// in a bucket from `from` on.
    pub fn time_from(&self, from: &str) -> String {
        format!(
            "{} >= (({from}) AT TIME ZONE {}) - interval '2 hours'",
            self.time_of(),
            self.tz()
        )
    }

    /// Start and end of the metric's window as local bucket times.
    pub fn window(&self) -> (String, String) {
        let unit = self.grain.unit();
        let current = format!("date_trunc('{unit}', now() AT TIME ZONE {})", self.tz());
        (
            format!("{current} - interval '{} {unit}s'", self.window_buckets - 1),
            format!("{current} + interval '1 {unit}'"),
        )
    }

    /// The rollup rows of the metric from `start` to `end` (local bucket
    /// times), as the `FROM … WHERE …` of a query.
    fn scope(&self, rollup: &str, start: &str, end: &str) -> String {
        format!(
            "FROM {rollup} WHERE metric = {} AND bucket >= {start} AND bucket < {end}",
            string_literal(&self.name)
        )
    }

    /// The metric's value and sample count per `keys` (expression, alias),
    /// from the partial aggregates `scope` selects (rollup columns).
    pub fn value_select(&self, scope: &str, keys: &[(String, &str)]) -> String {
        let select_keys: String = keys.iter().map(|(e, a)| format!("{e} AS {a}, ")).collect();
        let aliases: Vec<&str> = keys.iter().map(|(_, a)| *a).collect();
        let group_by = |extra: &str| {
            let mut all: Vec<&str> = aliases.clone();
            if !extra.is_empty() {
                all.push(extra);
            }
            if all.is_empty() {
                String::new()
            } else {
                format!(" GROUP BY {}", all.join(", "))
            }
        };
        let alias_list: String = aliases.iter().map(|a| format!("{a}, ")).collect();
        if let Some(p) = self.percentile {
            let partition = if aliases.is_empty() {
                String::new()
            } else {
                format!("PARTITION BY {} ", aliases.join(", "))
            };
            let g = gamma();
            return format!(
                "SELECT {alias_list}(CASE WHEN min(k) IS NULL THEN NULL WHEN min(k) > 0 THEN 2 * power({g}::float8, min(k) - {o}) / ({g} + 1) \
                 WHEN min(k) < 0 THEN -2 * power({g}::float8, -min(k) - {o}) / ({g} + 1) ELSE 0 END)::float8 AS value, \
                 coalesce(max(tot), 0)::bigint AS samples FROM (\
                 SELECT {alias_list}k, sum(c) OVER ({partition}ORDER BY k) AS cum, sum(c) OVER ({partition_all}) AS tot FROM (\
                 SELECT {select_keys}k, sum(n) AS c {scope}{gk}) AS bins) AS ranked \
                 WHERE cum >= ceil({p} * tot / 100.0){gb}",
                o = BIN_OFFSET,
                partition_all = partition.trim_end(),
                gk = group_by("k"),
                gb = group_by(""),
            );
        }
        let value = match self.kind {
            // No rows is a count of 0, not a missing value.
            AggregateKind::Count => "coalesce(sum(n), 0)::float8".to_string(),
            AggregateKind::CountDistinct => "count(DISTINCT v)::float8".to_string(),
            AggregateKind::Sum => as_float8("CASE WHEN sum(n) > 0 THEN sum(s) END"),
            AggregateKind::Average => as_float8("sum(s) / NULLIF(sum(n), 0)"),
            AggregateKind::Minimum => "min(lo)::float8".to_string(),
            AggregateKind::Maximum => "max(hi)::float8".to_string(),
            AggregateKind::Ratio => "(sum(m)::numeric / NULLIF(sum(n), 0))::float8".to_string(),
            AggregateKind::Percentile => unreachable!("handled above"),
        };
        format!(
            "SELECT {select_keys}{value} AS value, coalesce(sum(n), 0)::bigint AS samples {scope}{}",
            group_by("")
        )
    }

    /// The rollup's buckets in the metric's current window.
    pub fn in_window(&self, bucket: &str) -> String {
        let (start, end) = self.window();
        format!("{bucket} >= {start} AND {bucket} < {end}")
    }

    /// The metric's partial aggregates over its current window, merged
    /// per (partner, dimensions, bin, distinct value): the window table's
    /// rows ([`WINDOW_COLUMNS`]) read from the rollup.
    pub fn window_select(&self, rollup: &str) -> String {
        format!(
            "SELECT metric, partner, dims, k, v, sum(n)::bigint, sum(m)::bigint, sum(s), min(lo), max(hi) \
             FROM {rollup} WHERE metric = {} AND {} GROUP BY metric, partner, dims, k, v",
            string_literal(&self.name),
            self.in_window("bucket")
        )
    }

    /// Rows for the result table — (partner, dimensions, value, samples) over
    /// all partners, per partner, and per dimension value when grouped —
    /// from the metric's rows of the window table. A refresh merges a
    /// percentile's bins itself (`percentile::levels`, the same rank); this
    /// SQL still states it, for its fingerprint and for anyone reading it.
    pub fn results_select(&self, window_table: &str) -> String {
        let scope = format!(
            "FROM {window_table} WHERE metric = {}",
            string_literal(&self.name)
        );
        let none = "NULL::text".to_string();
        let empty = "'{}'::jsonb".to_string();
        let mut parts = vec![
            format!(
                "SELECT {none}, {empty}, value, samples FROM ({}) AS overall",
                self.value_select(&scope, &[])
            ),
            format!(
                "SELECT partner, {empty}, value, samples FROM ({}) AS per_partner",
                self.value_select(&scope, &[("partner".into(), "partner")])
            ),
        ];
        if self.has_dimensions {
            parts.push(format!(
                "SELECT {none}, dims, value, samples FROM ({}) AS per_dims",
                self.value_select(&scope, &[("dims".into(), "dims")])
            ));
            parts.push(format!(
                "SELECT partner, dims, value, samples FROM ({}) AS per_partner_dims",
                self.value_select(
                    &scope,
                    &[("partner".into(), "partner"), ("dims".into(), "dims")]
                )
            ));
        }
        parts.join(" UNION ALL ")
    }

    /// Daily values per partner over the last `days` days: (partner, day
    /// relative to today, value, samples).
    pub fn daily_select(&self, rollup: &str, days: i32) -> String {
        let today = format!("date_trunc('day', now() AT TIME ZONE {})", self.tz());
        let start = format!("{today} - interval '{} days'", days.max(1) - 1);
        let end = format!("{today} + interval '1 day'");
        let day = format!("(date_trunc('day', bucket)::date - ({today})::date)");
        self.value_select(
            &self.scope(rollup, &start, &end),
            &[("partner".into(), "partner"), (day, "day")],
        )
    }

    /// The metric computed directly from the source's rows, per partner and
    /// over all partners — the definition an auditor can run by hand.
    /// Percentiles are exact here (`percentile_disc`); the maintained value
    /// is within 1 % of it.
    pub fn direct_select(&self, source_table: &str) -> String {
        let (start, end) = self.window();
        let mut conditions = self.conditions.clone();
        conditions.push(format!("{} >= {start}", self.bucket_of()));
        conditions.push(format!("{} < {end}", self.bucket_of()));
        let value = match self.kind {
            AggregateKind::Count => "count(*)::float8".to_string(),
            AggregateKind::CountDistinct => format!(
                "count(DISTINCT {})::float8",
                self.distinct.clone().unwrap_or_default()
            ),
            AggregateKind::Sum => {
                format!("sum({})::float8", self.measure.clone().unwrap_or_default())
            }
            AggregateKind::Average => {
                format!("avg({})::float8", self.measure.clone().unwrap_or_default())
            }
            AggregateKind::Minimum => {
                format!("min({})::float8", self.measure.clone().unwrap_or_default())
            }
            AggregateKind::Maximum => {
                format!("max({})::float8", self.measure.clone().unwrap_or_default())
            }
            AggregateKind::Ratio => format!(
                "(count(*) FILTER (WHERE {})::numeric / NULLIF(count(*), 0))::float8",
                self.matching.clone().unwrap_or_default()
            ),
            AggregateKind::Percentile => format!(
                "percentile_disc({}) WITHIN GROUP (ORDER BY {})::float8",
                f64::from(self.percentile.unwrap_or(50)) / 100.0,
                self.measure.clone().unwrap_or_default()
            ),
        };
        format!(
            "SELECT {partner} AS partner, {value} AS value, count(*) AS samples\n  FROM {source_table}\n WHERE {}\n GROUP BY ROLLUP (1)",
            conditions.join("\n   AND "),
            partner = self.partner_of(),
        )
    }
}

/// A readable listing of every metric's SQL, for `partnerplane explain`.
pub fn explain(spec: &MetricPipelineSpec) -> Result<String, SqlError> {
    let compiled = compile(spec)?;
    let mut out = String::new();
    for (metric, c) in spec.metrics.iter().zip(&compiled) {
        let _ = writeln!(out, "-- {} ({:?})", c.name, metric.domain);
        if let Some(d) = &metric.description {
            let _ = writeln!(out, "-- {}", d.replace('\n', " "));
        }
        if let Some(o) = &metric.objective {
            let _ = writeln!(out, "-- objective: {:?} {}", o.comparison, o.target);
        }
        let _ = writeln!(
            out,
            "-- window: {} ({} {} bucket(s) in {}); the row with partner NULL is over all partners",
            metric.window,
            c.window_buckets,
            c.grain.unit(),
            spec.time_zone
        );
        if c.percentile.is_some() {
            let _ = writeln!(
                out,
                "-- maintained from a log histogram: within {} % of this exact value",
                PERCENTILE_ACCURACY * 100.0
            );
        }
        let _ = writeln!(out, "{};\n", c.direct_select(&quote_ident(&c.source)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_at_the_ends_of_their_types_are_constants_postgres_takes() {
        let typed = |literal: serde_json::Value, type_: &str| {
            let column: Column =
                serde_json::from_value(serde_json::json!({"name": "c", "type": type_})).unwrap();
            typed_literal(&serde_json::from_value(literal).unwrap(), &column, "UTC")
        };
        assert_eq!(
            typed(serde_json::json!({"integer": i64::MIN}), "Integer"),
            Ok("'-9223372036854775808'::bigint".to_string())
        );
        assert_eq!(
            typed(
                serde_json::json!({"timestamp": "0001-01-01T00:00:00Z"}),
                "Timestamp"
            ),
            Ok("'0001-01-01T00:00:00Z'::timestamptz".to_string())
        );
        assert!(
            typed(
                serde_json::json!({"timestamp": "0000-12-31T23:59:59Z"}),
                "Timestamp"
            )
            .unwrap_err()
            .contains("before the year 1")
        );
    }

    fn spec(yaml: &str) -> MetricPipelineSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const BASE: &str = r#"
sources:
  - name: orders
    partnerColumn: partner_id
    timeColumn: opened_at
    columns:
      - {name: partner_id, type: Text}
      - {name: opened_at, type: Timestamp}
      - {name: closed_at, type: Timestamp}
      - {name: amount, type: Numeric}
      - {name: region, type: Text}
      - {name: fixed, type: Boolean}
      - {name: visits, type: Integer}
metrics:
"#;

    fn with_metric(metric: &str) -> MetricPipelineSpec {
        spec(&format!("{BASE}{metric}"))
    }

    fn invalid_path(spec: &MetricPipelineSpec) -> String {
        match check(spec) {
            Err(SqlError::Invalid { path, .. }) => path,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn every_aggregate_kind_compiles() {
        for aggregate in [
            "{kind: Count}",
            "{kind: CountDistinct, column: region}",
            "{kind: Sum, column: amount}",
            "{kind: Average, column: visits}",
            "{kind: Minimum, column: amount}",
            "{kind: Maximum, duration: {from: opened_at, to: closed_at, unit: Minutes}}",
            "{kind: Ratio, matching: [{column: fixed, operator: Equals, value: {boolean: true}}]}",
            "{kind: Percentile, percentile: 90, duration: {from: opened_at, to: closed_at}}",
        ] {
            let s = with_metric(&format!(
                "  - {{name: m, domain: ServiceDelivery, source: orders, aggregate: {aggregate}, groupBy: [region]}}\n"
            ));
            let c = &compile(&s).unwrap()[0];
            let rollup = c.rollup_select("\"orders\"", "");
            assert!(rollup.contains("GROUP BY 2, 3, 4, 5, 6"), "{rollup}");
            assert!(c.results_select("\"_pp_x_rollup\"").contains("UNION ALL"));
        }
    }

    #[test]
    fn partial_aggregates_and_results_read_only_what_the_kind_needs() {
        let of = |aggregate: &str| {
            compile(&with_metric(&format!(
                "  - {{name: m, domain: ServiceDelivery, source: orders, aggregate: {aggregate}}}\n"
            )))
            .unwrap()
            .remove(0)
        };
        let p90 =
            of("{kind: Percentile, percentile: 90, duration: {from: opened_at, to: closed_at}}");
        let rollup = p90.rollup_select("s", "");
        assert!(
            !rollup.contains("sum((") && !rollup.contains("min(("),
            "{rollup}"
        );
        let delta = p90.delta_select("d", "");
        assert!(
            delta.contains("sum(_pp_sign)::bigint") && !delta.contains("sum(_pp_sign * "),
            "{delta}"
        );
        assert!(delta.ends_with("HAVING sum(_pp_sign) <> 0"), "{delta}");
        let results = p90.results_select("w");
        assert!(results.contains("FROM w WHERE metric = E'm'"), "{results}");
        let average = of("{kind: Average, column: amount}");
        assert!(
            average
                .rollup_select("s", "")
                .contains("sum(\"amount\"::numeric), NULL::numeric, NULL::numeric")
        );
        let delta = average.delta_select("d", "");
        assert!(
            delta.contains("sum(_pp_sign * \"amount\"::numeric), NULL::numeric")
                && delta.contains("OR sum(_pp_sign * \"amount\"::numeric) <> 0"),
            "{delta}"
        );
        let ratio = of(
            "{kind: Ratio, matching: [{column: fixed, operator: Equals, value: {boolean: true}}]}",
        );
        assert!(
            ratio
                .delta_select("d", "")
                .contains("coalesce(sum(_pp_sign) FILTER (WHERE \"fixed\" = true), 0)::bigint"),
            "{}",
            ratio.delta_select("d", "")
        );
        let minimum = of("{kind: Minimum, column: amount}");
        assert!(
            minimum
                .rollup_select("s", "")
                .contains("NULL::numeric, min(\"amount\"::numeric), NULL::numeric")
        );
        assert!(average.invertible() && ratio.invertible() && p90.invertible());
        assert!(!minimum.invertible());
    }

    #[test]
    fn a_metric_reaches_back_over_its_window_or_its_forecast_history() {
        let s = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, window: 7d, aggregate: {kind: Count}, \
             objective: {comparison: AtLeast, target: 1}, forecast: {horizon: 14d, historyDays: 60}}\n",
        );
        let c = &compile(&s).unwrap()[0];
        assert_eq!(c.reach_hours(), 60 * 24);
        assert!(c.needed_from().starts_with("least("), "{}", c.needed_from());
        assert!(c.needed_from().contains("interval '59 days'"));
        let hourly = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, window: 48h, aggregate: {kind: Count}}\n",
        );
        let c = &compile(&hourly).unwrap()[0];
        assert_eq!(c.reach_hours(), 48);
        assert!(c.needed_from().contains("interval '47 hours'"));
        let kept = c.retained("'2026-01-01T00:00:00'::timestamp");
        assert!(
            kept.starts_with("\"opened_at\" >= (('2026-01-01T00:00:00'::timestamp) AT TIME ZONE E'UTC') - interval '2 hours' AND date_trunc('hour'"),
            "{kept}"
        );
    }

    #[test]
    fn durations_are_in_their_unit_and_windows_in_buckets() {
        let s = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, window: 12w, aggregate: {kind: Average, duration: {from: opened_at, to: closed_at, unit: Days}}}\n",
        );
        let c = &compile(&s).unwrap()[0];
        assert_eq!((c.grain, c.window_buckets), (Grain::Day, 84));
        assert!(
            c.rollup_select("s", "")
                .contains("EXTRACT(EPOCH FROM (\"closed_at\" - \"opened_at\")) / 86400")
        );
        assert_eq!(parse_window("24h"), Some((Grain::Hour, 24)));
        assert_eq!(parse_window("0d"), None);
    }

    #[test]
    fn literals_are_typed_escaped_constants() {
        let s = with_metric(
            r#"  - name: m
    domain: ServiceDelivery
    source: orders
    aggregate: {kind: Count}
    filters:
      - {column: region, operator: In, values: [{string: "north'; DROP TABLE orders; --"}, {string: 'a\b'}]}
      - {column: amount, operator: GreaterThan, value: {integer: 5}}
      - {column: opened_at, operator: GreaterOrEqual, value: {timestamp: "2026-01-01T00:00:00Z"}}
"#,
        );
        let sql = compile(&s).unwrap()[0].rollup_select("s", "");
        assert!(
            sql.contains(r"E'north''; DROP TABLE orders; --'::text"),
            "{sql}"
        );
        assert!(sql.contains(r"E'a\\b'::text"), "{sql}");
        assert!(sql.contains("\"amount\" > '5'::numeric"), "{sql}");
        assert!(sql.contains("'2026-01-01T00:00:00Z'::timestamptz"), "{sql}");
    }

    #[test]
    fn a_literal_of_the_wrong_type_or_a_bad_timestamp_is_refused_with_its_path() {
        let wrong = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, aggregate: {kind: Count}, filters: [{column: amount, operator: Equals, value: {string: x}}]}\n",
        );
        assert_eq!(invalid_path(&wrong), "spec.metrics[0].filters[0].value");
        let bad_time = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, aggregate: {kind: Count}, filters: [{column: opened_at, operator: LessThan, value: {timestamp: \"now(); drop\"}}]}\n",
        );
        assert_eq!(invalid_path(&bad_time), "spec.metrics[0].filters[0].value");
        let nul = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, aggregate: {kind: Count}, filters: [{column: region, operator: Equals, value: {string: \"a\\0b\"}}]}\n",
        );
        assert_eq!(invalid_path(&nul), "spec.metrics[0].filters[0].value");
    }

    #[test]
    fn references_the_api_cannot_check_are_refused_with_their_field_path() {
        let cases = [
            (
                "{kind: Count}, filters: [{column: nosuch, operator: IsNull}]",
                "spec.metrics[0].filters[0].column",
            ),
            (
                "{kind: Count}, groupBy: [nosuch]",
                "spec.metrics[0].groupBy[0]",
            ),
            (
                "{kind: Ratio, matching: [{column: nosuch, operator: IsNull}]}",
                "spec.metrics[0].aggregate.matching[0].column",
            ),
            (
                "{kind: Sum, column: region}",
                "spec.metrics[0].aggregate.column",
            ),
            (
                "{kind: Average, duration: {from: opened_at, to: amount}}",
                "spec.metrics[0].aggregate.duration.to",
            ),
            (
                "{kind: Average, duration: {from: nosuch, to: closed_at}}",
                "spec.metrics[0].aggregate.duration.from",
            ),
        ];
        for (aggregate, path) in cases {
            let s = with_metric(&format!(
                "  - {{name: m, domain: ServiceDelivery, source: orders, aggregate: {aggregate}}}\n"
            ));
            assert_eq!(invalid_path(&s), path, "{aggregate}");
        }
    }

    #[test]
    fn identifiers_are_always_quoted() {
        let s = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, aggregate: {kind: Sum, column: amount}, groupBy: [region]}\n",
        );
        let sql = compile(&s).unwrap()[0].rollup_select("\"orders\"", "");
        assert!(
            sql.contains("\"partner_id\"::text") && sql.contains("E'region', \"region\""),
            "{sql}"
        );
    }

    #[test]
    fn the_time_zone_is_an_escaped_constant() {
        let mut s = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, aggregate: {kind: Count}}\n",
        );
        s.time_zone = "Europe/Berlin'--".into();
        let c = &compile(&s).unwrap()[0];
        assert!(c.bucket_of().contains(r"AT TIME ZONE E'Europe/Berlin''--'"));
    }

    #[test]
    fn histogram_bins_are_within_one_percent_and_ordered() {
        let mut previous = i64::MIN;
        let mut x = -5000.0f64;
        while x < 5000.0 {
            let k = bin_of(x);
            assert!(k >= previous, "bins follow values");
            previous = k;
            let v = bin_value(k);
            assert!(
                (v - x).abs() <= PERCENTILE_ACCURACY * x.abs() + 1e-12,
                "{x} -> {v}"
            );
            x += 0.37;
        }
        assert_eq!(bin_value(bin_of(0.0)), 0.0);
    }

    #[test]
    fn fingerprints_change_with_the_definition_not_the_window() {
        let a = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, window: 30d, aggregate: {kind: Count}}\n",
        );
        let b = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, window: 60d, aggregate: {kind: Count}}\n",
        );
        let c = with_metric(
            "  - {name: m, domain: ServiceDelivery, source: orders, window: 30d, aggregate: {kind: Count}, filters: [{column: fixed, operator: IsNull}]}\n",
        );
        let f = |s: &MetricPipelineSpec| compile(s).unwrap()[0].fingerprint("t");
        assert_eq!(f(&a), f(&b));
        assert_ne!(f(&a), f(&c));
    }

    #[test]
    fn explain_prints_runnable_sql_per_metric() {
        let s = with_metric(
            "  - {name: p90, domain: ServiceDelivery, source: orders, aggregate: {kind: Percentile, percentile: 90, duration: {from: opened_at, to: closed_at}}, objective: {comparison: AtMost, target: 8}}\n",
        );
        let text = explain(&s).unwrap();
        assert!(text.contains("-- p90 (ServiceDelivery)"));
        assert!(text.contains("percentile_disc(0.9) WITHIN GROUP"));
        assert!(text.contains("GROUP BY ROLLUP (1)"));
    }
}
