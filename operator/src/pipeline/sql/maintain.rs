//! Maintaining a metric's partial aggregates from what changed since the
//! previous refresh: new rows and the change log's row images as signed
//! rows for the kinds that can take a row back out, and the touched keys
//! recomputed from raw rows for a minimum or maximum.

use k8s_openapi::jiff::civil::DateTime;
use tokio_postgres::Transaction;

use super::SqlError;
use super::compile::{self, Compiled};
use super::horizon;
use super::names::{
    DerivedNames, LOG_ROW, LOG_SIGN, LOG_TRUNCATED, LOG_XID, XID_COLUMN, XID_NUMBER,
};
use super::tables::Tables;
use crate::naming::quote_ident;

/// Change log entries `prev` did not see.
pub(super) fn logged_since(prev: &str) -> String {
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
/// the capture trigger stamped updates too) and `current` does. The first
/// condition is what the BRIN index on the transaction number answers; the
/// last keeps out a row whose transaction number was written by hand past
/// any that has run, which no snapshot would ever see, so that it is not
/// counted again at every refresh.
pub(super) fn written_since(prev: &str, current: &str) -> String {
    format!(
        "{XID_NUMBER} >= (pg_snapshot_xmin({prev})::text)::bigint AND NOT pg_visible_in_snapshot({XID_COLUMN}, {prev}) \
         AND pg_visible_in_snapshot({XID_COLUMN}, {current})"
    )
}

/// What changed in one source since `prev`, as signed rows of its
/// columns: +1 for each row inserted since, and the logged images of rows
/// updated or deleted since — only of rows `prev` had counted (a row
/// inserted since is counted as it is now, by the first part). Only rows
/// `kept` (a condition on the source's columns) are read on: late rows
/// older than every metric keeps are most of a typical change, and each
/// metric's own conditions would otherwise test every one of them.
fn signed_rows(
    table: &str,
    log: &str,
    columns: &str,
    (prev, current): (&str, &str),
    kept: &str,
    inserted: bool,
    logged: bool,
) -> String {
    let mut parts = vec![];
    if inserted {
        parts.push(format!(
            "SELECT 1 AS {LOG_SIGN}, {columns} FROM {table} WHERE {} AND {kept}",
            written_since(prev, current)
        ));
    }
    if logged {
        parts.push(format!(
            "SELECT {LOG_SIGN}::int, {columns} FROM {log} WHERE NOT {LOG_TRUNCATED} AND {} \
             AND pg_visible_in_snapshot({LOG_ROW}, {prev}) AND {kept}",
            logged_since(prev)
        ));
    }
    parts.join(" UNION ALL ")
}

/// What one refresh does to one metric's partial aggregates.
pub(super) struct MetricWork<'a> {
    pub c: &'a Compiled,
    /// Rebuild from this start, or maintain from it.
    pub from: DateTime,
    pub rebuild: bool,
    /// Buckets before `from` are dropped first.
    pub prune: bool,
    pub inserted: i64,
    pub logged: i64,
    /// The start of the metric's window now, as the state records it.
    pub window_start: String,
    /// The window table holds the metric's current window: changes are
    /// applied to it rather than it being rebuilt.
    pub window_kept: bool,
}

impl MetricWork<'_> {
    pub fn changed(&self) -> bool {
        self.inserted + self.logged > 0
    }
}

/// Applies what changed in `source` to the rollup and window table of the
/// invertible metrics in `work`, in one statement: the signed rows are read
/// once, each metric's change per key is added, and keys left with no row
/// are deleted.
pub(super) async fn apply_signed(
    tx: &Transaction<'_>,
    t: &Tables,
    names: &DerivedNames,
    source: &crate::api::metric::Source,
    work: &[&MetricWork<'_>],
    prev: &str,
    current: &str,
) -> Result<(), SqlError> {
    // The earliest bucket any of them keeps, by the time column (the time
    // zone is the pipeline's, the same for every metric).
    let Some(earliest) = work.iter().min_by_key(|w| w.from) else {
        return Ok(());
    };
    let kept = earliest.c.time_from(&horizon::literal(earliest.from));
    let columns: Vec<String> = source
        .columns
        .iter()
        .map(|c| quote_ident(c.name.as_str()))
        .collect();
    let rows = signed_rows(
        &t.source(source.name.as_str()),
        &t.log(names, source.name.as_str()),
        &columns.join(", "),
        (prev, current),
        &kept,
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
    let emptied = tx.query_typed(&format!("{statement} {zero}"), &[]).await?;
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
pub(super) async fn recompute_extremes(
    tx: &Transaction<'_>,
    t: &Tables,
    names: &DerivedNames,
    w: &MetricWork<'_>,
    prev: &str,
    current: &str,
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
        tx.query_typed(&format!(
                "INSERT INTO {keys} (metric, partner, bucket, lo, hi) SELECT {name}, * FROM ({}) AS k",
                changed_keys(c, &t.log(names, &c.source), prev, &horizon::literal(w.from))
            ), &[])
        .await?;
        // Analysed so that reading the keys back uses the indexes.
        tx.batch_execute(&format!("ANALYZE {keys}")).await?;
        tx.query_typed(&format!(
                "DELETE FROM {r} USING {keyed_as} AS k WHERE k._pp_metric = {name} AND {r}.metric = {name} \
                 AND {r}.bucket = k._pp_bucket AND {r}.partner = k._pp_partner",
                r = t.rollup
            ), &[])
        .await?;
        let from = format!(
            "{table} JOIN {keyed_as} AS k ON k._pp_metric = {name} AND {} AND {time} >= k._pp_lo AND {time} < k._pp_hi",
            c.partner_equals("k._pp_partner"),
            time = c.time_of()
        );
        tx.query_typed(
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
            written_since(prev, current),
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
        tx.query_typed(&format!(
                "INSERT INTO {r} ({cols}) {select} ON CONFLICT (metric, partner, dims, bucket, k, v) DO UPDATE SET \
                 n = {r}.n + excluded.n, m = {r}.m + excluded.m, s = {r}.s + excluded.s, \
                 lo = least({r}.lo, excluded.lo), hi = greatest({r}.hi, excluded.hi)",
                r = t.rollup,
                cols = compile::ROLLUP_COLUMNS,
                select = c.rollup_select(&table, &fresh)
            ), &[])
        .await?;
    }
    if w.logged > 0 {
        tx.query_typed(&format!("DELETE FROM {keys}"), &[]).await?;
    }
    Ok(())
}
