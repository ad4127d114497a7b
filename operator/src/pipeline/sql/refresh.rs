//! The incremental refresh. The watermark is a `pg_snapshot`, not a
//! maximum id: a row is new when its writing transaction was not visible to
//! the previous refresh's snapshot, so a transaction that commits late —
//! after a later one, or while a refresh runs — is counted exactly once.
//!
//! Per refresh, for each metric: a changed definition (or no watermark)
//! rebuilds its partial aggregates from the source's rows in the buckets
//! anything reads (see `horizon`). Otherwise what changed is applied as
//! signed rows: each new row counts +1, and the change log's images of
//! updated and deleted rows -1 (the row as it was counted) and +1 (as it
//! is now), so the work is proportional to what changed, not to the
//! history. A minimum or maximum cannot take a row back out: for those the
//! (partner, bucket) keys of updated and deleted rows are recomputed from
//! raw rows. Changes to buckets older than the metric keeps are ignored.
//!
//! The window table holds each metric's partial aggregates merged over its
//! current window, maintained by the same signed rows and rebuilt from the
//! rollup when the window moves on; results are computed from it. A few
//! random keys are re-derived from raw rows each time as a check; a
//! difference is repaired and reported.

use std::collections::{BTreeMap, HashMap};

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

use super::compile::{self, Compiled};
use super::derived;
use super::horizon::{self, Reach};
use super::maintain::{MetricWork, apply_signed, logged_since, recompute_extremes, written_since};
use super::names::{DerivedNames, LOG_TRUNCATED};
use super::percentile;
use super::retention;
use super::sources;
use super::state::State;
use super::tables::Tables;
use super::verify::{Sample, verify_sample, verify_window};
use super::{PipelineKey, SqlError, Target};
use crate::api::metric::{Comparison, Objective};
use crate::api::pipeline::MetricPipelineSpec;
use crate::naming::quote_ident;
use crate::pipeline::forecast::Point;

/// Changed rows of one source above which its metrics are rebuilt rather
/// than maintained key by key.
const FULL_REBUILD_CHANGES: i64 = 200_000;
/// Memory for a refresh's sorts and hash tables: a rebuild groups a whole
/// window of rows, and spilling that to disk doubled its time.
const WORK_MEM: &str = "64MB";

/// Ordered by how much a refresh did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RefreshPath {
    Unchanged,
    Incremental,
    Full,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PartnerValue {
    pub partner: String,
    pub value: f64,
    pub samples: i64,
    pub objective_met: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricResult {
    pub name: String,
    pub value: Option<f64>,
    pub objective_met: Option<bool>,
    pub samples: i64,
    pub partners: Vec<PartnerValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RefreshReport {
    pub metrics: Vec<MetricResult>,
    pub path: RefreshPath,
    pub changed_rows: i64,
    pub sampled_buckets: i64,
    pub mismatched_buckets: i64,
    /// Schema-qualified result table.
    pub result_table: String,
}

/// Whether `value` meets `objective`.
pub fn meets(objective: &Objective, value: f64) -> bool {
    match objective.comparison {
        Comparison::AtLeast => value >= objective.target,
        Comparison::AtMost => value <= objective.target,
    }
}

/// A snapshot as Postgres prints it (`xmin:xmax:xip,…`), checked before it
/// is embedded in a statement.
fn snapshot_literal(text: &str) -> Option<String> {
    (!text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || c == ':' || c == ','))
    .then(|| format!("'{text}'::pg_snapshot"))
}

/// Refreshes every metric; returns the values over the current windows.
pub async fn refresh(
    tx: &Transaction<'_>,
    target: &Target,
    key: &PipelineKey,
    spec: &MetricPipelineSpec,
    sample_keys: usize,
) -> Result<RefreshReport, SqlError> {
    let names = DerivedNames::new(key);
    let t = Tables::new(target, &names);
    let compiled = compile::compile(spec)?;
    // One statement: the snapshot, the hour results are anchored to, the
    // state, and per metric the earliest bucket it needs now and the start
    // of its window (an idle refresh's round trips are most of its time).
    let mut columns = vec![
        "pg_current_snapshot()::text".to_string(),
        format!(
            "to_char(date_trunc('hour', now() AT TIME ZONE {}), 'YYYY-MM-DD\"T\"HH24')",
            compile::string_literal(&spec.time_zone)
        ),
        format!(
            "(SELECT coalesce(json_object_agg(key, value), '{{}}') FROM {})::text",
            t.state
        ),
        // Not assigning one: an idle refresh writes nothing.
        "coalesce(pg_current_xact_id_if_assigned()::text, '')".to_string(),
    ];
    let format = compile::string_literal(horizon::TEXT_FORMAT);
    for c in &compiled {
        columns.push(format!("to_char({}, {format})", c.needed_from()));
        columns.push(format!("to_char({}, {format})", c.window().0));
    }
    let row = tx
        .query_typed_one(&format!("SELECT {}", columns.join(", ")), &[])
        .await?;
    let (current, anchor): (String, String) = (row.get(0), row.get(1));
    let current_literal = snapshot_literal(&current).ok_or_else(|| SqlError::Refused {
        message: format!("Postgres printed {current:?} for the current snapshot"),
    })?;
    let mut state = State::parse(&row.get::<_, String>(2))?;
    let current_xid: String = row.get(3);
    let unreadable = || SqlError::Invalid {
        path: "spec.timeZone".into(),
        message: "Postgres printed a bucket time that is not a date and time".into(),
    };
    let mut starts = vec![];
    for i in 0..compiled.len() {
        let needed = horizon::parse(&row.get::<_, String>(4 + 2 * i)).ok_or_else(unreadable)?;
        let window = row.get::<_, String>(5 + 2 * i);
        horizon::parse(&window).ok_or_else(unreadable)?;
        starts.push((needed, window));
    }
    // A schema change by an earlier transaction asks for one more rebuild.
    let rebuild_requested = state
        .get(sources::REBUILD_AFTER)
        .is_some_and(|xid| *xid != current_xid);
    let prev = state
        .get("snapshot")
        .and_then(|s| snapshot_literal(s))
        .filter(|_| !rebuild_requested);

    // What changed per source since the previous refresh, in one statement.
    let mut changes: BTreeMap<&str, (i64, i64, bool)> = BTreeMap::new();
    if let Some(prev) = &prev {
        let counts: Vec<String> = spec
            .sources
            .iter()
            .map(|source| {
                let name = source.name.as_str();
                let log = t.log(&names, name);
                let since = logged_since(prev);
                format!(
                    "(SELECT count(*) FROM {table} WHERE {written}), \
                     (SELECT count(*) FROM {log} WHERE {since}), \
                     (SELECT coalesce(bool_or({LOG_TRUNCATED}), false) FROM {log} WHERE {since})",
                    table = t.source(name),
                    written = written_since(prev, &current_literal)
                )
            })
            .collect();
        if !counts.is_empty() {
            let row = tx
                .query_typed_one(&format!("SELECT {}", counts.join(", ")), &[])
                .await?;
            for (i, source) in spec.sources.iter().enumerate() {
                changes.insert(
                    source.name.as_str(),
                    (row.get(3 * i), row.get(3 * i + 1), row.get(3 * i + 2)),
                );
            }
        }
    }

    // Decide per metric (no statement yet).
    let mut work = vec![];
    for (c, (needed, window_start)) in compiled.iter().zip(starts) {
        let table = t.source(&c.source);
        let known = state.get(&format!("def:{}", c.name)) == Some(&c.fingerprint(&table));
        let recorded = state
            .get(&format!("from:{}", c.name))
            .and_then(|s| horizon::parse(s));
        let reach = horizon::decide(recorded, needed, c.reach_hours());
        let (inserted, logged, truncated) =
            changes.get(c.source.as_str()).copied().unwrap_or_default();
        let rebuild = prev.is_none()
            || !known
            || truncated
            || inserted + logged > FULL_REBUILD_CHANGES
            || reach == Reach::Rebuild;
        let prune = !rebuild && reach == Reach::Prune && inserted + logged > 0;
        let from = match (rebuild || prune, recorded) {
            (false, Some(recorded)) => recorded,
            _ => needed,
        };
        let window_kept = !rebuild && state.get(&format!("win:{}", c.name)) == Some(&window_start);
        work.push(MetricWork {
            c,
            from,
            rebuild,
            prune,
            inserted,
            logged,
            window_start,
            window_kept,
        });
    }
    let busy = work.iter().any(|w| w.rebuild || w.changed());
    if busy {
        // Aggregating a source's rows must not spill to disk.
        tx.batch_execute(&format!("SET LOCAL work_mem = '{WORK_MEM}'"))
            .await?;
    }
    let prev_literal = prev.as_deref().unwrap_or_default();

    let mut path = RefreshPath::Unchanged;
    let changed_rows: i64 = changes
        .values()
        .map(|(inserted, logged, _)| inserted + logged)
        .sum();
    // When every metric is rebuilt the tables are replaced whole (see
    // `derived`), their indexes built after the rows are in: one sorted
    // build costs far less than an insert into the index per row.
    let all_rebuilt = !work.is_empty() && work.iter().all(|w| w.rebuild);
    let rebuilt_rows = |w: &MetricWork| {
        w.c.rollup_select(
            &t.source(&w.c.source),
            &w.c.retained(&horizon::literal(w.from)),
        )
    };
    let replaced = all_rebuilt
        && tx
            .query_one(
                derived::replaceable_query(),
                &[
                    &target.schema,
                    &vec![names.rollup.clone(), names.window.clone()],
                ],
            )
            .await?
            .get::<_, bool>(0);
    if replaced {
        let selects: Vec<String> = work.iter().map(rebuilt_rows).collect();
        replace(
            tx,
            derived::replacement(
                &target.schema,
                &names.rollup,
                &derived::rollup_columns(),
                &selects,
            ),
            derived::rollup_index(&target.schema, &names),
        )
        .await?;
    } else if all_rebuilt {
        tx.batch_execute(&format!(
            "TRUNCATE {}, {}; DROP INDEX IF EXISTS {s}.{}; DROP INDEX IF EXISTS {s}.{}",
            t.rollup,
            t.window,
            quote_ident(&names.rollup_key),
            quote_ident(&names.window_key),
            s = t.schema
        ))
        .await?;
    }
    for w in &work {
        let c = w.c;
        let name = compile::string_literal(&c.name);
        if w.rebuild {
            if !replaced {
                if !all_rebuilt {
                    tx.query_typed(
                        &format!("DELETE FROM {} WHERE metric = {name}", t.rollup),
                        &[],
                    )
                    .await?;
                }
                // In index order: the rollup's pages then follow its buckets.
                tx.query_typed(
                    &format!(
                        "INSERT INTO {} ({}) {} ORDER BY 4, 2",
                        t.rollup,
                        compile::ROLLUP_COLUMNS,
                        rebuilt_rows(w)
                    ),
                    &[],
                )
                .await?;
            }
            state.set(
                format!("def:{}", c.name),
                c.fingerprint(&t.source(&c.source)),
            );
            state.set(format!("from:{}", c.name), horizon::text(w.from));
            path = RefreshPath::Full;
        } else if w.prune {
            tx.query_typed(
                &format!(
                    "DELETE FROM {} WHERE metric = {name} AND bucket < {}",
                    t.rollup,
                    horizon::literal(w.from)
                ),
                &[],
            )
            .await?;
            state.set(format!("from:{}", c.name), horizon::text(w.from));
        }
    }
    if all_rebuilt && !replaced {
        tx.batch_execute(&derived::rollup_index(&target.schema, &names))
            .await?;
    }
    if all_rebuilt {
        tx.batch_execute(&derived::rollup_statistics(&target.schema, &names))
            .await?;
    }
    let maintained: Vec<&MetricWork> = work.iter().filter(|w| !w.rebuild && w.changed()).collect();
    if !maintained.is_empty() {
        path = path.max(RefreshPath::Incremental);
    }
    for source in &spec.sources {
        let of_source: Vec<&MetricWork> = maintained
            .iter()
            .copied()
            .filter(|w| w.c.source == source.name.as_str())
            .collect();
        let invertible: Vec<&MetricWork> = of_source
            .iter()
            .copied()
            .filter(|w| w.c.invertible())
            .collect();
        apply_signed(
            tx,
            &t,
            &names,
            source,
            &invertible,
            prev_literal,
            &current_literal,
        )
        .await?;
        for w in of_source.iter().filter(|w| !w.c.invertible()) {
            recompute_extremes(tx, &t, &names, w, prev_literal, &current_literal).await?;
        }
    }
    // Drop partial aggregates of metrics no longer in the spec.
    let kept: Vec<String> = compiled.iter().map(|c| c.name.clone()).collect();
    let stale: Vec<String> = state
        .keys()
        .filter_map(|k| k.strip_prefix("def:"))
        .filter(|m| !kept.iter().any(|k| k == m))
        .map(str::to_string)
        .collect();
    for metric in &stale {
        for table in [&t.rollup, &t.window] {
            tx.execute(&format!("DELETE FROM {table} WHERE metric = $1"), &[metric])
                .await?;
        }
        tx.execute(
            &format!("DELETE FROM {} WHERE key = ANY($1)", t.state),
            &[&vec![
                format!("def:{metric}"),
                format!("from:{metric}"),
                format!("win:{metric}"),
            ]],
        )
        .await?;
        path = RefreshPath::Full;
    }
    if !changes.values().all(|(_, logged, _)| *logged == 0) || prev.is_none() {
        for source in &spec.sources {
            // Every logged change this snapshot sees has been applied.
            tx.query_typed(
                &format!("DELETE FROM {}", t.log(&names, source.name.as_str())),
                &[],
            )
            .await?;
        }
    }

    // Summarise the block ranges new rows went to, so that the next
    // refresh's look for new rows skips them (autovacuum would, later).
    let summarise: Vec<String> = spec
        .sources
        .iter()
        .filter(|s| changes.get(s.name.as_str()).is_some_and(|c| c.0 > 0))
        .map(|s| {
            let [by_xid, ..] = names.indexes(
                s.name.as_str(),
                s.partner_column.as_str(),
                s.time_column.as_str(),
            );
            let index = format!("{}.{}", t.schema, quote_ident(&by_xid));
            format!(
                "brin_summarize_new_values({}::regclass)",
                compile::string_literal(&index)
            )
        })
        .collect();
    if !summarise.is_empty() {
        tx.query_typed(&format!("SELECT {}", summarise.join(", ")), &[])
            .await?;
    }

    let mut sample = if path == RefreshPath::Unchanged {
        Sample::default()
    } else {
        verify_sample(tx, &t, &compiled, sample_keys).await?
    };
    if rebuild_requested {
        tx.execute(
            &format!("DELETE FROM {} WHERE key = $1", t.state),
            &[&sources::REBUILD_AFTER],
        )
        .await?;
    }
    // With nothing new the previous snapshot still marks what was counted;
    // keeping it makes an idle refresh write nothing at all.
    if path != RefreshPath::Unchanged || prev.is_none() {
        state.set("snapshot", current);
    }

    // Windows that moved on, were rebuilt or repaired, or hold a minimum or
    // maximum that changed, are merged again from the rollup.
    let stale: Vec<&MetricWork> = work
        .iter()
        .filter(|w| {
            !w.window_kept
                || (!w.c.invertible() && w.changed())
                || sample.repaired.contains(&w.c.name)
        })
        .collect();
    if replaced {
        let selects: Vec<String> = stale.iter().map(|w| w.c.window_select(&t.rollup)).collect();
        replace(
            tx,
            derived::replacement(
                &target.schema,
                &names.window,
                &derived::window_columns(),
                &selects,
            ),
            derived::window_index(&target.schema, &names),
        )
        .await?;
    } else {
        for w in &stale {
            if !all_rebuilt {
                tx.query_typed(
                    &format!(
                        "DELETE FROM {} WHERE metric = {}",
                        t.window,
                        compile::string_literal(&w.c.name)
                    ),
                    &[],
                )
                .await?;
            }
            tx.query_typed(
                &format!(
                    "INSERT INTO {} ({}) {}",
                    t.window,
                    compile::WINDOW_COLUMNS,
                    w.c.window_select(&t.rollup)
                ),
                &[],
            )
            .await?;
        }
    }
    if all_rebuilt && !replaced {
        tx.batch_execute(&derived::window_index(&target.schema, &names))
            .await?;
    }
    for w in &stale {
        state.set(format!("win:{}", w.c.name), w.window_start.clone());
    }
    let windows_rebuilt = !stale.is_empty();
    if path != RefreshPath::Unchanged
        && sample_keys > 0
        && let Some(metric) = verify_window(tx, &t, &compiled).await?
    {
        sample.mismatched += 1;
        sample.repaired.insert(metric);
    }

    // Results: recomputed when anything changed or a window moved on.
    let results_key = results_fingerprint(&compiled, spec);
    let results_state = format!("{results_key}@{anchor}");
    let reuse = path == RefreshPath::Unchanged
        && !windows_rebuilt
        && sample.mismatched == 0
        && state.get("results") == Some(&results_state);
    if !reuse {
        write_results(tx, &t, &compiled).await?;
        let thinned = retention::apply(
            tx,
            &t.results,
            state.get(retention::THINNED_UNTIL).map(String::as_str),
        )
        .await?;
        state.set(retention::THINNED_UNTIL, thinned);
        state.set("results", results_state);
    }
    state.flush(tx, &t.state).await?;
    let metrics = latest_results(tx, &t, spec).await?;
    Ok(RefreshReport {
        metrics,
        path,
        changed_rows,
        sampled_buckets: sample.sampled,
        mismatched_buckets: sample.mismatched,
        result_table: t.results.clone(),
    })
}

/// Runs a table's replacement, then builds its index.
async fn replace(
    tx: &Transaction<'_>,
    statements: Vec<String>,
    index: String,
) -> Result<(), SqlError> {
    for statement in statements.iter().chain([&index]) {
        tx.batch_execute(statement).await?;
    }
    Ok(())
}

/// Adds every metric's values over its window to the result table, in one
/// statement: percentiles from their bins as merged here, the rest in SQL.
async fn write_results(
    tx: &Transaction<'_>,
    t: &Tables,
    compiled: &[Compiled],
) -> Result<(), SqlError> {
    let mut computed: Vec<String> = vec![];
    let mut metric: Vec<String> = vec![];
    let mut partner: Vec<Option<String>> = vec![];
    let mut dims: Vec<String> = vec![];
    let mut value: Vec<Option<f64>> = vec![];
    let mut samples: Vec<i64> = vec![];
    for c in compiled {
        let Some(p) = c.percentile else {
            computed.push(format!(
                "SELECT {}, * FROM ({}) AS computed",
                compile::string_literal(&c.name),
                c.results_select(&t.window)
            ));
            continue;
        };
        let bins: Vec<percentile::Bin> = tx
            .query_typed(
                // Without a split every row's dimensions are `{}`: not
                // printing them halves the read.
                &format!(
                    "SELECT partner, {}, k, n FROM {} WHERE metric = $1",
                    if c.has_dimensions() {
                        "dims::text"
                    } else {
                        "'{}'"
                    },
                    t.window
                ),
                &[(&c.name, Type::TEXT)],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        for (p, d, v, n) in percentile::levels(p, c.has_dimensions(), &bins) {
            metric.push(c.name.clone());
            partner.push(p);
            dims.push(d);
            value.push(v);
            samples.push(n);
        }
    }
    computed.push(
        "SELECT m, p, d::jsonb, v, s FROM unnest($1::text[], $2::text[], $3::text[], $4::float8[], $5::int8[]) \
         AS merged(m, p, d, v, s)"
            .to_string(),
    );
    tx.query_typed(
        &format!(
            "INSERT INTO {} (refreshed_at, metric, partner, dimensions, value, samples) \
             SELECT now(), * FROM ({}) AS all_metrics",
            t.results,
            computed.join(" UNION ALL ")
        ),
        &[
            (&metric, Type::TEXT_ARRAY),
            (&partner, Type::TEXT_ARRAY),
            (&dims, Type::TEXT_ARRAY),
            (&value, Type::FLOAT8_ARRAY),
            (&samples, Type::INT8_ARRAY),
        ],
    )
    .await?;
    Ok(())
}

fn results_fingerprint(compiled: &[Compiled], spec: &MetricPipelineSpec) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for c in compiled {
        hasher.update(c.results_select("r").as_bytes());
    }
    hasher.update(spec.time_zone.as_bytes());
    hex::encode(&hasher.finalize()[..8])
}

/// The latest refresh's values, with objectives judged.
async fn latest_results(
    tx: &Transaction<'_>,
    t: &Tables,
    spec: &MetricPipelineSpec,
) -> Result<Vec<MetricResult>, SqlError> {
    let rows = tx
        .query_typed(&format!(
                "SELECT metric, partner, value, samples FROM {r} \
                 WHERE refreshed_at = (SELECT max(refreshed_at) FROM {r}) AND dimensions = '{{}}'::jsonb",
                r = t.results
            ), &[])
        .await?;
    let mut by_metric: HashMap<String, Vec<&tokio_postgres::Row>> = HashMap::new();
    for row in &rows {
        by_metric.entry(row.get(0)).or_default().push(row);
    }
    let mut out = vec![];
    for metric in &spec.metrics {
        let name = metric.name.as_str();
        let judge = |v: Option<f64>| Some(meets(metric.objective.as_ref()?, v?));
        let mut result = MetricResult {
            name: name.to_string(),
            value: None,
            objective_met: None,
            samples: 0,
            partners: vec![],
        };
        for row in by_metric.get(name).into_iter().flatten() {
            let (partner, value, samples): (Option<String>, Option<f64>, i64) =
                (row.get(1), row.get(2), row.get(3));
            match partner {
                None => {
                    result.value = value;
                    result.samples = samples;
                    result.objective_met = judge(value);
                }
                Some(partner) => {
                    if let Some(value) = value {
                        result.partners.push(PartnerValue {
                            partner,
                            value,
                            samples,
                            objective_met: judge(Some(value)),
                        });
                    }
                }
            }
        }
        // Sorted here, by byte order, rather than by the database's
        // collation: the same order on every server, and sorting in SQL was
        // most of the query's time.
        result.partners.sort_by(|a, b| a.partner.cmp(&b.partner));
        out.push(result);
    }
    Ok(out)
}

/// The first bucket `metric`'s partial aggregates hold, as the last
/// rebuild or prune recorded it, as an SQL constant: the rollup holds
/// exactly what `rollup_select` makes of the rows `retained` from it keeps.
pub async fn retained_from(
    client: &impl tokio_postgres::GenericClient,
    target: &Target,
    key: &PipelineKey,
    metric: &str,
) -> Result<Option<String>, SqlError> {
    let t = Tables::new(target, &DerivedNames::new(key));
    let row = client
        .query_opt(
            &format!("SELECT value FROM {} WHERE key = $1", t.state),
            &[&format!("from:{metric}")],
        )
        .await?;
    Ok(row
        .and_then(|r| horizon::parse(&r.get::<_, String>(0)))
        .map(horizon::literal))
}

/// Each partner's daily values of `metric` over the last `history_days`
/// days, from the partial aggregates.
pub async fn daily_values(
    tx: &Transaction<'_>,
    target: &Target,
    key: &PipelineKey,
    spec: &MetricPipelineSpec,
    metric: &str,
    history_days: i32,
) -> Result<Vec<(String, Vec<Point>)>, SqlError> {
    let names = DerivedNames::new(key);
    let t = Tables::new(target, &names);
    let Some(c) = compile::compile(spec)?
        .into_iter()
        .find(|c| c.name == metric)
    else {
        return Ok(vec![]);
    };
    let rows = tx
        .query_typed(&format!(
                "SELECT partner, day, value FROM ({}) AS daily WHERE value IS NOT NULL ORDER BY partner, day",
                c.daily_select(&t.rollup, history_days)
            ), &[])
        .await?;
    let mut out: Vec<(String, Vec<Point>)> = vec![];
    for row in rows {
        let (partner, day, value): (String, i32, f64) = (row.get(0), row.get(1), row.get(2));
        let point = Point {
            day: i64::from(day),
            value,
        };
        match out.last_mut() {
            Some((p, points)) if *p == partner => points.push(point),
            _ => out.push((partner, vec![point])),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_snapshot_text_is_embedded() {
        assert_eq!(
            snapshot_literal("10:20:11,12"),
            Some("'10:20:11,12'::pg_snapshot".into())
        );
        assert_eq!(snapshot_literal("1:2:'; drop"), None);
        assert_eq!(snapshot_literal(""), None);
    }
}
