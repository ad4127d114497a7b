//! The exactness checks a refresh runs in production: a few random rollup
//! keys re-derived from raw rows, and one random partner's window slice
//! re-derived from the rollup. A difference is replaced and counted, never
//! silent.

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

use super::SqlError;
use super::compile::{self, Compiled, WINDOW_COLUMNS};
use super::tables::Tables;

/// Percent of the rollup's pages random keys are drawn from (a rollup too
/// small to yield any is read whole): drawing from a tenth of a large
/// rollup cost more than the checks themselves. The window table is far
/// smaller, and a tenth of it is drawn from.
const ROLLUP_SAMPLED_PERCENT: u32 = 1;
const WINDOW_SAMPLED_PERCENT: u32 = 10;

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
pub(super) async fn verify_window(
    tx: &Transaction<'_>,
    t: &Tables,
    compiled: &[Compiled],
) -> Result<Option<String>, SqlError> {
    let mut pick = tx
        .query_typed_opt(&format!(
                "SELECT metric, partner FROM {} TABLESAMPLE SYSTEM ({WINDOW_SAMPLED_PERCENT}) ORDER BY random() LIMIT 1",
                t.window
            ), &[])
        .await?;
    if pick.is_none() {
        pick = tx
            .query_typed_opt(
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
        .query_typed(
            &format!("{CANONICAL} ({derived}) AS d {order}"),
            &[(&partner, Type::TEXT)],
        )
        .await?;
    let kept = tx
        .query_typed(
            &format!(
                "{CANONICAL} {} WHERE metric = $1 AND partner = $2 {order}",
                t.window
            ),
            &[(&metric, Type::TEXT), (&partner, Type::TEXT)],
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
pub(super) struct Sample {
    pub sampled: i64,
    pub mismatched: i64,
    /// Metrics with a key that differed (and was replaced).
    pub repaired: std::collections::BTreeSet<String>,
}

/// Re-derives `count` random (metric, partner, bucket) keys from raw rows;
/// a key that differs is replaced.
pub(super) async fn verify_sample(
    tx: &Transaction<'_>,
    t: &Tables,
    compiled: &[Compiled],
    count: usize,
) -> Result<Sample, SqlError> {
    let mut sample = Sample::default();
    if count == 0 {
        return Ok(sample);
    }
    let limit = count as i64;
    let picks = tx
        .query_typed(
            &format!(
                "SELECT metric, partner, bucket::text FROM {} TABLESAMPLE SYSTEM ({ROLLUP_SAMPLED_PERCENT}) ORDER BY random() LIMIT $1",
                t.rollup
            ),
            &[(&limit, Type::INT8)],
        )
        .await?;
    let picks = if picks.is_empty() {
        tx.query_typed(
            &format!(
                "SELECT metric, partner, bucket::text FROM {} ORDER BY random() LIMIT $1",
                t.rollup
            ),
            &[(&limit, Type::INT8)],
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
            .query_typed(
                &format!(
                    "{canonical} (SELECT * FROM ({}) AS x(metric, partner, dims, bucket, k, v, n, m, s, lo, hi)) AS y {order}",
                    c.rollup_select(&table, &extra)
                ),
                &[(&partner, Type::TEXT), (&bucket, Type::TEXT)],
            )
            .await?;
        let kept = tx
            .query_typed(
                &format!(
                    "{canonical} {} WHERE metric = $1 AND partner = $2 AND bucket = $3::text::timestamp {order}",
                    t.rollup
                ),
                &[
                    (&metric, Type::TEXT),
                    (&partner, Type::TEXT),
                    (&bucket, Type::TEXT),
                ],
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
