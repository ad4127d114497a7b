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

use std::collections::BTreeMap;

use k8s_openapi::jiff::civil::DateTime;
use tokio_postgres::Transaction;

use super::compile::{self, Compiled, WINDOW_COLUMNS};
use super::horizon::{self, Reach};
use super::names::{
    DerivedNames, LOG_ROW, LOG_SIGN, LOG_TRUNCATED, LOG_XID, XID_COLUMN, XID_NUMBER,
};
use super::percentile;
use super::sources;
use super::state::State;
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
/// Result rows are kept this long (the latest refresh's always).
const RESULT_RETENTION: &str = "30 days";

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

struct Tables {
    schema: String,
    rollup: String,
    results: String,
    state: String,
    window: String,
}

impl Tables {
    fn new(target: &Target, names: &DerivedNames) -> Self {
        let q = |t: &str| format!("{}.{}", quote_ident(&target.schema), quote_ident(t));
        Self {
            schema: quote_ident(&target.schema),
            rollup: q(&names.rollup),
            results: q(&names.results),
            state: q(&names.state),
            window: q(&names.window),
        }
    }

    fn source(&self, name: &str) -> String {
        format!("{}.{}", self.schema, quote_ident(name))
    }

    fn log(&self, names: &DerivedNames, source: &str) -> String {
        format!("{}.{}", self.schema, quote_ident(&names.changes(source)))
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

/// Change log entries `prev` did not see.
fn logged_since(prev: &str) -> String {
    format!("NOT pg_visible_in_snapshot({LOG_XID}, {prev})")
}

/// Keys (partner, bucket) from `from` on of rows updated or deleted since
/// `prev`, with the time range to read them back from, as a subquery over
/// the change log.
fn changed_keys(c: &Compiled, log: &str, prev: &str, from: &str) -> String {
    let (lo, hi) = c.bucket_range("_pp_bucket");
    format!(
        "SELECT _pp_partner, _pp_bucket, {lo} AS _pp_lo, {hi} AS _pp_hi FROM (\
         SELECT DISTINCT {partner} AS _pp_partner, {bucket} AS _pp_bucket FROM {log} \
         WHERE NOT {LOG_TRUNCATED} AND {partner} IS NOT NULL AND {time} IS NOT NULL AND {since}) AS _pp_changed \
         WHERE _pp_bucket >= {from}",
        partner = c.partner_of(),
        bucket = c.bucket_of(),
        time = c.time_of(),
        since = logged_since(prev),
    )
}

/// Rows inserted by transactions `prev` did not see (rows written before
/// the capture trigger stamped updates too). The first condition is what
/// the BRIN index on the transaction number answers.
fn written_since(prev: &str) -> String {
    format!(
        "{XID_NUMBER} >= (pg_snapshot_xmin({prev})::text)::bigint AND NOT pg_visible_in_snapshot({XID_COLUMN}, {prev})"
    )
}

/// What changed in one source since `prev`, as signed rows of its
/// columns: +1 for each row inserted since, and the logged images of rows
/// updated or deleted since — only of rows `prev` had counted (a row
/// inserted since is counted as it is now, by the first part).
fn signed_rows(
    table: &str,
    log: &str,
    columns: &str,
    prev: &str,
    inserted: bool,
    logged: bool,
) -> String {
    let mut parts = vec![];
    if inserted {
        parts.push(format!(
            "SELECT 1 AS {LOG_SIGN}, {columns} FROM {table} WHERE {}",
            written_since(prev)
        ));
    }
    if logged {
        parts.push(format!(
            "SELECT {LOG_SIGN}::int, {columns} FROM {log} WHERE NOT {LOG_TRUNCATED} AND {} \
             AND pg_visible_in_snapshot({LOG_ROW}, {prev})",
            logged_since(prev)
        ));
    }
    parts.join(" UNION ALL ")
}

/// What one refresh does to one metric's partial aggregates.
struct MetricWork<'a> {
    c: &'a Compiled,
    /// Rebuild from this start, or maintain from it.
    from: DateTime,
    rebuild: bool,
    /// Buckets before `from` are dropped first.
    prune: bool,
    inserted: i64,
    logged: i64,
    /// The start of the metric's window now, as the state records it.
    window_start: String,
    /// The window table holds the metric's current window: changes are
    /// applied to it rather than it being rebuilt.
    window_kept: bool,
}

impl MetricWork<'_> {
    fn changed(&self) -> bool {
        self.inserted + self.logged > 0
    }
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
        .query_one(&format!("SELECT {}", columns.join(", ")), &[])
        .await?;
    let (current, anchor): (String, String) = (row.get(0), row.get(1));
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
                    written = written_since(prev)
                )
            })
            .collect();
        if !counts.is_empty() {
            let row = tx
                .query_one(&format!("SELECT {}", counts.join(", ")), &[])
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
    // When every metric is rebuilt the tables are emptied at once and their
    // indexes built after the rows are in: one sorted build costs far less
    // than an insert into the index per row (each with a uniqueness check,
    // also against rows deleted before).
    let all_rebuilt = !work.is_empty() && work.iter().all(|w| w.rebuild);
    if all_rebuilt {
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
            if !all_rebuilt {
                tx.execute(
                    &format!("DELETE FROM {} WHERE metric = {name}", t.rollup),
                    &[],
                )
                .await?;
            }
            // In index order: the rollup's pages then follow its buckets.
            tx.execute(
                &format!(
                    "INSERT INTO {} ({}) {} ORDER BY 4, 2",
                    t.rollup,
                    compile::ROLLUP_COLUMNS,
                    c.rollup_select(&t.source(&c.source), &c.retained(&horizon::literal(w.from)))
                ),
                &[],
            )
            .await?;
            state.set(
                format!("def:{}", c.name),
                c.fingerprint(&t.source(&c.source)),
            );
            state.set(format!("from:{}", c.name), horizon::text(w.from));
            path = RefreshPath::Full;
        } else if w.prune {
            tx.execute(
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
    if all_rebuilt {
        tx.batch_execute(&sources::rollup_index(&target.schema, &names))
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
        apply_signed(tx, &t, &names, source, &invertible, prev_literal).await?;
        for w in of_source.iter().filter(|w| !w.c.invertible()) {
            recompute_extremes(tx, &t, &names, w, prev_literal).await?;
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
            tx.execute(
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
        tx.execute(&format!("SELECT {}", summarise.join(", ")), &[])
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
    let mut windows_rebuilt = false;
    for w in &work {
        let stale = !w.window_kept
            || (!w.c.invertible() && w.changed())
            || sample.repaired.contains(&w.c.name);
        if !stale {
            continue;
        }
        if !all_rebuilt {
            tx.execute(
                &format!(
                    "DELETE FROM {} WHERE metric = {}",
                    t.window,
                    compile::string_literal(&w.c.name)
                ),
                &[],
            )
            .await?;
        }
        tx.execute(
            &format!(
                "INSERT INTO {} ({}) {}",
                t.window,
                compile::WINDOW_COLUMNS,
                w.c.window_select(&t.rollup)
            ),
            &[],
        )
        .await?;
        state.set(format!("win:{}", w.c.name), w.window_start.clone());
        windows_rebuilt = true;
    }

    if all_rebuilt {
        tx.batch_execute(&sources::window_index(&target.schema, &names))
            .await?;
    }
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
        tx.execute(
            &format!(
                "DELETE FROM {r} WHERE refreshed_at < now() - interval '{RESULT_RETENTION}' \
                 AND refreshed_at < (SELECT max(refreshed_at) FROM {r})",
                r = t.results
            ),
            &[],
        )
        .await?;
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
            .query(
                &format!(
                    "SELECT partner, dims::text, k, n FROM {} WHERE metric = $1",
                    t.window
                ),
                &[&c.name],
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
    tx.execute(
        &format!(
            "INSERT INTO {} (refreshed_at, metric, partner, dimensions, value, samples) \
             SELECT now(), * FROM ({}) AS all_metrics",
            t.results,
            computed.join(" UNION ALL ")
        ),
        &[&metric, &partner, &dims, &value, &samples],
    )
    .await?;
    Ok(())
}

/// Applies what changed in `source` to the rollup and window table of the
/// invertible metrics in `work`, in one statement: the signed rows are read
/// once, each metric's change per key is added, and keys left with no row
/// are deleted.
async fn apply_signed(
    tx: &Transaction<'_>,
    t: &Tables,
    names: &DerivedNames,
    source: &crate::api::metric::Source,
    work: &[&MetricWork<'_>],
    prev: &str,
) -> Result<(), SqlError> {
    if work.is_empty() {
        return Ok(());
    }
    let columns: Vec<String> = source
        .columns
        .iter()
        .map(|c| quote_ident(c.name.as_str()))
        .collect();
    let rows = signed_rows(
        &t.source(source.name.as_str()),
        &t.log(names, source.name.as_str()),
        &columns.join(", "),
        prev,
        work.iter().any(|w| w.inserted > 0),
        work.iter().any(|w| w.logged > 0),
    );
    let deltas: Vec<String> = work
        .iter()
        .map(|w| {
            w.c.delta_select("_pp_rows", &w.c.retained(&horizon::literal(w.from)))
        })
        .collect();
    let added = |table: &str| {
        format!(
            "n = {table}.n + excluded.n, m = {table}.m + excluded.m, s = {table}.s + excluded.s"
        )
    };
    let mut statement = format!(
        "WITH _pp_rows AS MATERIALIZED ({rows}), \
         _pp_delta ({cols}) AS MATERIALIZED ({deltas}), \
         _pp_r AS (INSERT INTO {rollup} ({cols}) SELECT * FROM _pp_delta \
         ON CONFLICT (metric, bucket, partner, dims, k, v) DO UPDATE SET {set} RETURNING ctid, n)",
        cols = compile::ROLLUP_COLUMNS,
        deltas = deltas.join(" UNION ALL "),
        rollup = t.rollup,
        set = added(&t.rollup),
    );
    let in_window: Vec<String> = work
        .iter()
        .filter(|w| w.window_kept)
        .map(|w| {
            format!(
                "(metric = {} AND {})",
                compile::string_literal(&w.c.name),
                w.c.in_window("bucket")
            )
        })
        .collect();
    let mut zero = "SELECT 'r', ctid::text FROM _pp_r WHERE n = 0".to_string();
    if !in_window.is_empty() {
        statement.push_str(&format!(
            ", _pp_w AS (INSERT INTO {window} ({cols}) \
             SELECT metric, partner, dims, k, v, sum(n)::bigint, sum(m)::bigint, sum(s), NULL::numeric, NULL::numeric \
             FROM _pp_delta WHERE {filter} GROUP BY 1, 2, 3, 4, 5 \
             ON CONFLICT (metric, partner, dims, k, v) DO UPDATE SET {set} RETURNING ctid, n)",
            window = t.window,
            cols = compile::WINDOW_COLUMNS,
            filter = in_window.join(" OR "),
            set = added(&t.window),
        ));
        zero.push_str(" UNION ALL SELECT 'w', ctid::text FROM _pp_w WHERE n = 0");
    }
    let emptied = tx.query(&format!("{statement} {zero}"), &[]).await?;
    for (label, table) in [("r", &t.rollup), ("w", &t.window)] {
        let rows: Vec<String> = emptied
            .iter()
            .filter(|r| r.get::<_, &str>(0) == label)
            .map(|r| r.get(1))
            .collect();
        if !rows.is_empty() {
            tx.execute(
                &format!("DELETE FROM {table} WHERE ctid = ANY($1::text[]::tid[]) AND n = 0"),
                &[&rows],
            )
            .await?;
        }
    }
    Ok(())
}

/// A minimum or maximum: the keys of updated and deleted rows are
/// recomputed from raw rows, and inserted rows elsewhere merged.
async fn recompute_extremes(
    tx: &Transaction<'_>,
    t: &Tables,
    names: &DerivedNames,
    w: &MetricWork<'_>,
    prev: &str,
) -> Result<(), SqlError> {
    let c = w.c;
    let table = t.source(&c.source);
    let name = compile::string_literal(&c.name);
    let keys = format!("{}.{}", t.schema, quote_ident(&names.keys));
    // The work table's columns under names no source column can have.
    let keyed_as = format!(
        "(SELECT metric AS _pp_metric, partner AS _pp_partner, bucket AS _pp_bucket, lo AS _pp_lo, hi AS _pp_hi FROM {keys})"
    );
    if w.logged > 0 {
        tx.execute(
            &format!(
                "INSERT INTO {keys} (metric, partner, bucket, lo, hi) SELECT {name}, * FROM ({}) AS k",
                changed_keys(c, &t.log(names, &c.source), prev, &horizon::literal(w.from))
            ),
            &[],
        )
        .await?;
        // Analysed so that reading the keys back uses the indexes.
        tx.batch_execute(&format!("ANALYZE {keys}")).await?;
        tx.execute(
            &format!(
                "DELETE FROM {r} USING {keyed_as} AS k WHERE k._pp_metric = {name} AND {r}.metric = {name} \
                 AND {r}.bucket = k._pp_bucket AND {r}.partner = k._pp_partner",
                r = t.rollup
            ),
            &[],
        )
        .await?;
        let from = format!(
            "{table} JOIN {keyed_as} AS k ON k._pp_metric = {name} AND {} AND {time} >= k._pp_lo AND {time} < k._pp_hi",
            c.partner_equals("k._pp_partner"),
            time = c.time_of()
        );
        tx.execute(
            &format!(
                "INSERT INTO {} ({}) {}",
                t.rollup,
                compile::ROLLUP_COLUMNS,
                c.rollup_select(&from, &format!("{} = k._pp_bucket", c.bucket_of()))
            ),
            &[],
        )
        .await?;
    }
    if w.inserted > 0 {
        let mut fresh = format!(
            "{} AND {}",
            written_since(prev),
            c.retained(&horizon::literal(w.from))
        );
        if w.logged > 0 {
            // Rows in recomputed keys were counted from raw rows above.
            fresh.push_str(&format!(
                " AND NOT EXISTS (SELECT 1 FROM {keyed_as} AS k WHERE k._pp_metric = {name} \
                 AND k._pp_partner = {} AND k._pp_bucket = {})",
                c.partner_of(),
                c.bucket_of()
            ));
        }
        tx.execute(
            &format!(
                "INSERT INTO {r} ({cols}) {select} ON CONFLICT (metric, partner, dims, bucket, k, v) DO UPDATE SET \
                 n = {r}.n + excluded.n, m = {r}.m + excluded.m, s = {r}.s + excluded.s, \
                 lo = least({r}.lo, excluded.lo), hi = greatest({r}.hi, excluded.hi)",
                r = t.rollup,
                cols = compile::ROLLUP_COLUMNS,
                select = c.rollup_select(&table, &fresh)
            ),
            &[],
        )
        .await?;
    }
    if w.logged > 0 {
        tx.execute(&format!("DELETE FROM {keys}"), &[]).await?;
    }
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

/// Partial aggregates as compared by the sampled checks. Sums compare by
/// value: taking rows back out can leave a sum with more decimal places
/// than adding up the rows left gives.
const CANONICAL: &str =
    "SELECT dims::text, k, v, n, m, trim_scale(s)::text, lo::text, hi::text FROM";

fn canonical_rows(rows: &[tokio_postgres::Row]) -> Vec<String> {
    rows.iter()
        .map(|r| {
            format!(
                "{:?}|{}|{:?}|{}|{}|{:?}|{:?}|{:?}",
                r.get::<_, String>(0),
                r.get::<_, i64>(1),
                r.get::<_, Option<String>>(2),
                r.get::<_, i64>(3),
                r.get::<_, i64>(4),
                r.get::<_, Option<String>>(5),
                r.get::<_, Option<String>>(6),
                r.get::<_, Option<String>>(7)
            )
        })
        .collect()
}

/// Re-derives one random (metric, partner) slice of the window table from
/// the rollup; a slice that differs is replaced. Returns the metric whose
/// slice differed.
async fn verify_window(
    tx: &Transaction<'_>,
    t: &Tables,
    compiled: &[Compiled],
) -> Result<Option<String>, SqlError> {
    let mut pick = tx
        .query_opt(
            &format!(
                "SELECT metric, partner FROM {} TABLESAMPLE SYSTEM (10) ORDER BY random() LIMIT 1",
                t.window
            ),
            &[],
        )
        .await?;
    if pick.is_none() {
        pick = tx
            .query_opt(
                &format!(
                    "SELECT metric, partner FROM {} ORDER BY random() LIMIT 1",
                    t.window
                ),
                &[],
            )
            .await?;
    }
    let Some(pick) = pick else {
        return Ok(None);
    };
    let (metric, partner): (String, String) = (pick.get(0), pick.get(1));
    let Some(c) = compiled.iter().find(|c| c.name == metric) else {
        return Ok(None);
    };
    let derived = format!(
        "SELECT * FROM ({}) AS w({WINDOW_COLUMNS}) WHERE partner = $1",
        c.window_select(&t.rollup)
    );
    let order = "ORDER BY 1, 2, 3";
    let raw = tx
        .query(
            &format!("{CANONICAL} ({derived}) AS d {order}"),
            &[&partner],
        )
        .await?;
    let kept = tx
        .query(
            &format!(
                "{CANONICAL} {} WHERE metric = $1 AND partner = $2 {order}",
                t.window
            ),
            &[&metric, &partner],
        )
        .await?;
    if canonical_rows(&raw) == canonical_rows(&kept) {
        return Ok(None);
    }
    tx.execute(
        &format!(
            "DELETE FROM {} WHERE metric = $1 AND partner = $2",
            t.window
        ),
        &[&metric, &partner],
    )
    .await?;
    tx.execute(
        &format!("INSERT INTO {} ({WINDOW_COLUMNS}) {derived}", t.window),
        &[&partner],
    )
    .await?;
    Ok(Some(metric))
}

/// What the sampled check found.
#[derive(Debug, Default)]
struct Sample {
    sampled: i64,
    mismatched: i64,
    /// Metrics with a key that differed (and was replaced).
    repaired: std::collections::BTreeSet<String>,
}

/// Re-derives `count` random (metric, partner, bucket) keys from raw rows;
/// a key that differs is replaced.
async fn verify_sample(
    tx: &Transaction<'_>,
    t: &Tables,
    compiled: &[Compiled],
    count: usize,
) -> Result<Sample, SqlError> {
    let mut sample = Sample::default();
    if count == 0 {
        return Ok(sample);
    }
    let picks = tx
        .query(
            &format!(
                "SELECT metric, partner, bucket::text FROM {} TABLESAMPLE SYSTEM (10) ORDER BY random() LIMIT $1",
                t.rollup
            ),
            &[&(count as i64)],
        )
        .await?;
    let picks = if picks.is_empty() {
        tx.query(
            &format!(
                "SELECT metric, partner, bucket::text FROM {} ORDER BY random() LIMIT $1",
                t.rollup
            ),
            &[&(count as i64)],
        )
        .await?
    } else {
        picks
    };
    for pick in &picks {
        let (metric, partner, bucket): (String, String, String) =
            (pick.get(0), pick.get(1), pick.get(2));
        let Some(c) = compiled.iter().find(|c| c.name == metric) else {
            continue;
        };
        let table = t.source(&c.source);
        let bucket_sql = "$2::text::timestamp";
        let (lo, hi) = c.bucket_range(bucket_sql);
        // The partner compared as text: the sample's key is text whatever
        // the column's type.
        let extra = format!(
            "{} = $1 AND {time} >= {lo} AND {time} < {hi} AND {} = {bucket_sql}",
            c.partner_of(),
            c.bucket_of(),
            time = c.time_of()
        );
        let canonical = CANONICAL;
        let order = "ORDER BY 1, 2, 3";
        let raw = tx
            .query(
                &format!(
                    "{canonical} (SELECT * FROM ({}) AS x(metric, partner, dims, bucket, k, v, n, m, s, lo, hi)) AS y {order}",
                    c.rollup_select(&table, &extra)
                ),
                &[&partner, &bucket],
            )
            .await?;
        let kept = tx
            .query(
                &format!(
                    "{canonical} {} WHERE metric = $1 AND partner = $2 AND bucket = $3::text::timestamp {order}",
                    t.rollup
                ),
                &[&metric, &partner, &bucket],
            )
            .await?;
        if canonical_rows(&raw) != canonical_rows(&kept) {
            sample.mismatched += 1;
            sample.repaired.insert(metric.clone());
            tx.execute(
                &format!("DELETE FROM {} WHERE metric = $1 AND partner = $2 AND bucket = $3::text::timestamp", t.rollup),
                &[&metric, &partner, &bucket],
            )
            .await?;
            tx.execute(
                &format!(
                    "INSERT INTO {} ({}) {}",
                    t.rollup,
                    compile::ROLLUP_COLUMNS,
                    c.rollup_select(&table, &extra)
                ),
                &[&partner, &bucket],
            )
            .await?;
        }
    }
    sample.sampled = picks.len() as i64;
    Ok(sample)
}

/// The latest refresh's values, with objectives judged.
async fn latest_results(
    tx: &Transaction<'_>,
    t: &Tables,
    spec: &MetricPipelineSpec,
) -> Result<Vec<MetricResult>, SqlError> {
    let rows = tx
        .query(
            &format!(
                "SELECT metric, partner, value, samples FROM {r} \
                 WHERE refreshed_at = (SELECT max(refreshed_at) FROM {r}) AND dimensions = '{{}}'::jsonb \
                 ORDER BY metric, partner NULLS FIRST",
                r = t.results
            ),
            &[],
        )
        .await?;
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
        for row in rows.iter().filter(|r| r.get::<_, String>(0) == name) {
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
        .query(
            &format!(
                "SELECT partner, day, value FROM ({}) AS daily WHERE value IS NOT NULL ORDER BY partner, day",
                c.daily_select(&t.rollup, history_days)
            ),
            &[],
        )
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
