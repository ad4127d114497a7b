//! An independent evaluation of MetricPipeline definitions over rows held
//! in memory, so the suites check the operator's SQL against values
//! computed another way. Windows are whole UTC days (or hours) ending with
//! the current one, as the pipeline documents for `timeZone: UTC`.

use std::collections::BTreeMap;

use partnerplane::api::metric::{
    AggregateKind, Comparison, DurationUnit, Literal, Metric, Operator, Predicate,
};

/// One cell of a source row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Int(i64),
    Num(f64),
    Bool(bool),
    /// Seconds since the epoch.
    Time(i64),
}

pub type Row = BTreeMap<String, Cell>;

/// A metric's value over all partners and per partner.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expected {
    pub value: Option<f64>,
    pub samples: i64,
    pub partners: BTreeMap<String, f64>,
}

/// Whether `value` meets the metric's objective.
pub fn meets(metric: &Metric, value: f64) -> Option<bool> {
    let objective = metric.objective.as_ref()?;
    Some(match objective.comparison {
        Comparison::AtLeast => value >= objective.target,
        Comparison::AtMost => value <= objective.target,
    })
}

fn window_start(window: &str, now: i64) -> i64 {
    let (n, unit) = window.split_at(window.len() - 1);
    let n: i64 = n.parse().expect("window");
    match unit {
        "h" => (now.div_euclid(3600) - (n - 1)) * 3600,
        "d" => (now.div_euclid(86_400) - (n - 1)) * 86_400,
        "w" => (now.div_euclid(86_400) - (7 * n - 1)) * 86_400,
        _ => panic!("window unit {unit}"),
    }
}

fn window_end(window: &str, now: i64) -> i64 {
    if window.ends_with('h') {
        (now.div_euclid(3600) + 1) * 3600
    } else {
        (now.div_euclid(86_400) + 1) * 86_400
    }
}

fn literal(l: &Literal) -> Cell {
    if let Some(s) = &l.string {
        Cell::Text(s.clone())
    } else if let Some(i) = l.integer {
        Cell::Int(i)
    } else if let Some(n) = l.number {
        Cell::Num(n)
    } else if let Some(b) = l.boolean {
        Cell::Bool(b)
    } else {
        panic!("timestamps literals are not used by these suites")
    }
}

fn as_f64(c: &Cell) -> Option<f64> {
    match c {
        Cell::Int(i) => Some(*i as f64),
        Cell::Num(n) => Some(*n),
        Cell::Time(t) => Some(*t as f64),
        _ => None,
    }
}

fn compare(a: &Cell, b: &Cell) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Cell::Text(x), Cell::Text(y)) => Some(x.cmp(y)),
        (Cell::Bool(x), Cell::Bool(y)) => Some(x.cmp(y)),
        _ => as_f64(a)?.partial_cmp(&as_f64(b)?),
    }
}

fn holds(p: &Predicate, row: &Row) -> bool {
    use std::cmp::Ordering::*;
    let cell = row.get(p.column.as_str()).unwrap_or(&Cell::Null);
    match p.operator {
        Operator::IsNull => return *cell == Cell::Null,
        Operator::IsNotNull => return *cell != Cell::Null,
        _ => {}
    }
    if *cell == Cell::Null {
        return false; // SQL: comparisons with NULL are not true
    }
    match p.operator {
        Operator::In => p
            .values
            .iter()
            .any(|v| compare(cell, &literal(v)) == Some(Equal)),
        Operator::NotIn => p
            .values
            .iter()
            .all(|v| compare(cell, &literal(v)) != Some(Equal)),
        op => {
            let order = compare(cell, &literal(p.value.as_ref().expect("value")));
            match (op, order) {
                (_, None) => false,
                (Operator::Equals, Some(o)) => o == Equal,
                (Operator::NotEquals, Some(o)) => o != Equal,
                (Operator::LessThan, Some(o)) => o == Less,
                (Operator::LessOrEqual, Some(o)) => o != Greater,
                (Operator::GreaterThan, Some(o)) => o == Greater,
                (Operator::GreaterOrEqual, Some(o)) => o != Less,
                _ => unreachable!(),
            }
        }
    }
}

/// The value aggregated from one row: a column, or a duration in its unit.
fn measure(metric: &Metric, row: &Row) -> Option<f64> {
    let a = &metric.aggregate;
    if let Some(d) = &a.duration {
        let (Some(Cell::Time(from)), Some(Cell::Time(to))) =
            (row.get(d.from.as_str()), row.get(d.to.as_str()))
        else {
            return None;
        };
        let seconds = (to - from) as f64;
        return Some(match d.unit {
            DurationUnit::Minutes => seconds / 60.0,
            DurationUnit::Hours => seconds / 3600.0,
            DurationUnit::Days => seconds / 86_400.0,
        });
    }
    as_f64(row.get(a.column.as_ref()?.as_str())?)
}

fn aggregate(metric: &Metric, rows: &[&Row]) -> Option<f64> {
    let a = &metric.aggregate;
    match a.kind {
        AggregateKind::Count => Some(rows.len() as f64),
        AggregateKind::Ratio => {
            if rows.is_empty() {
                return None;
            }
            let hits = rows
                .iter()
                .filter(|r| a.matching.iter().all(|p| holds(p, r)))
                .count();
            Some(hits as f64 / rows.len() as f64)
        }
        AggregateKind::CountDistinct => {
            let column = a.column.as_ref()?.as_str();
            let mut seen: Vec<String> = rows
                .iter()
                .filter_map(|r| match r.get(column)? {
                    Cell::Null => None,
                    c => Some(format!("{c:?}")),
                })
                .collect();
            seen.sort();
            seen.dedup();
            Some(seen.len() as f64)
        }
        _ => {
            let mut values: Vec<f64> = rows.iter().filter_map(|r| measure(metric, r)).collect();
            if values.is_empty() {
                return None;
            }
            Some(match a.kind {
                AggregateKind::Sum => values.iter().sum(),
                AggregateKind::Average => values.iter().sum::<f64>() / values.len() as f64,
                AggregateKind::Minimum => values.iter().copied().fold(f64::INFINITY, f64::min),
                AggregateKind::Maximum => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                AggregateKind::Percentile => {
                    values.sort_by(f64::total_cmp);
                    let p = f64::from(a.percentile.expect("percentile")) / 100.0;
                    // Nearest rank, as percentile_disc.
                    let rank = ((p * values.len() as f64).ceil() as usize).max(1);
                    values[rank - 1]
                }
                _ => unreachable!(),
            })
        }
    }
}

/// The metric over `rows` (its source's rows) at time `now` (epoch seconds).
pub fn evaluate(
    metric: &Metric,
    partner_column: &str,
    time_column: &str,
    rows: &[Row],
    now: i64,
) -> Expected {
    let (start, end) = (
        window_start(&metric.window, now),
        window_end(&metric.window, now),
    );
    let selected: Vec<&Row> = rows
        .iter()
        .filter(|r| match r.get(time_column) {
            Some(Cell::Time(t)) => *t >= start && *t < end,
            _ => false,
        })
        .filter(|r| metric.filters.iter().all(|p| holds(p, r)))
        .collect();
    let samples = match metric.aggregate.kind {
        AggregateKind::Count | AggregateKind::Ratio | AggregateKind::CountDistinct => {
            selected.len() as i64
        }
        _ => selected
            .iter()
            .filter(|r| measure(metric, r).is_some())
            .count() as i64,
    };
    let mut by_partner: BTreeMap<String, Vec<&Row>> = BTreeMap::new();
    for row in &selected {
        let partner = match row.get(partner_column) {
            Some(Cell::Text(p)) => p.clone(),
            Some(Cell::Int(i)) => i.to_string(),
            other => panic!("partner {other:?}"),
        };
        by_partner.entry(partner).or_default().push(row);
    }
    Expected {
        value: aggregate(metric, &selected),
        samples,
        partners: by_partner
            .into_iter()
            .filter_map(|(p, rows)| Some((p, aggregate(metric, &rows)?)))
            .collect(),
    }
}

/// Whether an operator's value agrees with the expected one: exactly (to
/// float rounding) for every kind but Percentile, whose histogram is
/// accurate to 1 % relative.
pub fn agrees(metric: &Metric, expected: f64, actual: f64) -> bool {
    let tolerance = if metric.aggregate.kind == AggregateKind::Percentile {
        0.0101 * expected.abs()
    } else {
        1e-9 * expected.abs().max(1.0)
    };
    (expected - actual).abs() <= tolerance
}
