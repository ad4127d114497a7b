//! Which refreshes' rows the result table keeps: every refresh's for a
//! day, then the last refresh of each hour for 30 days, and the latest
//! refresh always.
//!
//! Every refresh that changes anything writes each partner's value of each
//! metric: at a 30-second interval a pipeline of 2,000 values writes 5.8
//! million rows a day, which kept for 30 days would be 170 million. Thinned
//! to hours after a day they are about 7 million, and the history still
//! shows each hour.
//!
//! Thinning is incremental: each pass thins only the rows that have come
//! past the one-day mark since the previous pass (the state keeps where it
//! got to). Every pass runs in the transaction that writes a refresh's
//! rows, so a pass has about one refresh's rows to thin. Rows from before
//! any pass (a table without that record) are left to expire.

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

use super::SqlError;

/// Every refresh's results are kept this long.
const EVERY_REFRESH: &str = "1 day";
/// Then the last refresh of each hour, until this age; the latest refresh
/// is kept whatever its age.
const HOURLY: &str = "30 days";
/// State key: results older than this instant are thinned already.
pub const THINNED_UNTIL: &str = "results:thinned-until";

/// The statement that thins and expires `results` (schema-qualified),
/// from `$1` (text: where the previous pass stopped, or NULL); it returns
/// where this pass stopped. Both deletes see the table as it was before
/// either: the last refresh of an hour is found among all of the hour's.
fn statement(results: &str) -> String {
    format!(
        "WITH bound AS (SELECT now() - interval '{EVERY_REFRESH}' AS until), \
         thinned AS (DELETE FROM {r} AS o \
         WHERE o.refreshed_at >= coalesce($1::timestamptz, (SELECT until FROM bound)) \
         AND o.refreshed_at < (SELECT until FROM bound) \
         AND o.refreshed_at < (SELECT max(h.refreshed_at) FROM {r} AS h \
         WHERE h.refreshed_at >= date_trunc('hour', o.refreshed_at) \
         AND h.refreshed_at < date_trunc('hour', o.refreshed_at) + interval '1 hour')), \
         expired AS (DELETE FROM {r} WHERE refreshed_at < now() - interval '{HOURLY}' \
         AND refreshed_at < (SELECT max(refreshed_at) FROM {r})) \
         SELECT until::text FROM bound",
        r = results
    )
}

/// Thins and expires the result table after a refresh wrote to it;
/// returns the state's new [`THINNED_UNTIL`].
pub(super) async fn apply(
    tx: &Transaction<'_>,
    results: &str,
    thinned_until: Option<&str>,
) -> Result<String, SqlError> {
    let row = tx
        .query_typed_one(&statement(results), &[(&thinned_until, Type::TEXT)])
        .await?;
    Ok(row.get(0))
}
