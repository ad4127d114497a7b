//! The rollup and window tables: their columns, their unique indexes, and
//! their replacement whole when a refresh rebuilds every metric.
//!
//! A replacement is one `CREATE TABLE … AS` over every metric's rows, then
//! a rename over the old table — unless something of the tenant's depends
//! on the table (see [`replaceable_query`]); then it is emptied and filled. Postgres runs the SELECT of a `CREATE TABLE
//! … AS` with parallel workers — each metric's aggregation a branch of a
//! parallel append — but never the SELECT of an `INSERT`, and it writes the
//! new table in bulk; together that halves a rebuild on two cores.

use super::names::DerivedNames;
use crate::naming::quote_ident;

pub(super) struct Column {
    name: &'static str,
    ty: &'static str,
    not_null: bool,
}

const fn col(name: &'static str, ty: &'static str, not_null: bool) -> Column {
    Column { name, ty, not_null }
}

/// Partial aggregates per metric, partner, dimensions and bucket; `k` is a
/// percentile's bin, `v` a distinct value.
const ROLLUP: &[Column] = &[
    col("metric", "text", true),
    col("partner", "text", true),
    col("dims", "jsonb", true),
    col("bucket", "timestamp", true),
    col("k", "bigint", true),
    col("v", "text", false),
    col("n", "bigint", true),
    col("m", "bigint", true),
    col("s", "numeric", false),
    col("lo", "numeric", false),
    col("hi", "numeric", false),
];

/// The rollup's columns without the bucket: merged over a metric's window.
pub(super) fn window_columns() -> Vec<&'static Column> {
    ROLLUP.iter().filter(|c| c.name != "bucket").collect()
}

/// The rollup's columns.
pub(super) fn rollup_columns() -> Vec<&'static Column> {
    ROLLUP.iter().collect()
}

/// Room left in each page of the rollup and window tables, so that adding
/// a change to a key's counts can rewrite the row in its page without
/// touching the indexes (a HOT update).
const FILLFACTOR: u32 = 80;

fn names(columns: &[&Column]) -> String {
    columns
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `CREATE TABLE` for an empty derived table.
pub(super) fn create(qualified: &str, columns: &[&Column]) -> String {
    let definitions: Vec<String> = columns
        .iter()
        .map(|c| {
            let null = if c.not_null { " NOT NULL" } else { "" };
            format!("{} {}{null}", c.name, c.ty)
        })
        .collect();
    format!(
        "CREATE TABLE {qualified} ({}) WITH (fillfactor = {FILLFACTOR})",
        definitions.join(", ")
    )
}

/// Statements that replace `schema.table` by the rows of `selects` (each
/// yielding `columns` in order), leaving it exactly as [`create`] defines
/// it but without its index, which is built after the rows are in.
pub(super) fn replacement(
    schema: &str,
    table: &str,
    columns: &[&Column],
    selects: &[String],
) -> Vec<String> {
    let s = quote_ident(schema);
    let next = quote_ident(&format!("{table}_next"));
    let list = names(columns);
    let typed: Vec<String> = columns
        .iter()
        .map(|c| format!("{}::{}", c.name, c.ty))
        .collect();
    let not_null: Vec<String> = columns
        .iter()
        .filter(|c| c.not_null)
        .map(|c| format!("ALTER COLUMN {} SET NOT NULL", c.name))
        .collect();
    vec![
        format!(
            "CREATE TABLE {s}.{next} ({list}) WITH (fillfactor = {FILLFACTOR}) AS \
             SELECT {} FROM ({}) AS all_metrics ({list})",
            typed.join(", "),
            selects.join(" UNION ALL ")
        ),
        // One scan checks them all.
        format!("ALTER TABLE {s}.{next} {}", not_null.join(", ")),
        format!("DROP TABLE {s}.{}", quote_ident(table)),
        format!("ALTER TABLE {s}.{next} RENAME TO {}", quote_ident(table)),
    ]
}

/// Whether the tables named `tables` in `schema` can be dropped and
/// replaced without losing or breaking anything of the tenant's: no
/// grant, row security, view, foreign key, trigger, policy or other object
/// depending on them (their own indexes, row type and TOAST table aside).
/// The tenant owns the schema and may add such things.
pub(super) fn replaceable_query() -> &'static str {
    "SELECT count(*) FILTER (WHERE c.relacl IS NOT NULL OR c.relrowsecurity OR EXISTS (\
     SELECT 1 FROM pg_depend d WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = c.oid \
     AND d.deptype <> 'i' AND NOT (d.classid = 'pg_class'::regclass AND d.deptype = 'a' \
     AND EXISTS (SELECT 1 FROM pg_class i WHERE i.oid = d.objid AND i.relkind = 'i')))) = 0 \
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = $1 AND c.relname = ANY($2)"
}

/// The rollup's unique index: window reads, key deletes and upserts all
/// use it.
pub(super) fn rollup_index(schema: &str, names: &DerivedNames) -> String {
    format!(
        "CREATE UNIQUE INDEX {} ON {}.{} (metric, bucket, partner, dims, k, v) NULLS NOT DISTINCT",
        quote_ident(&names.rollup_key),
        quote_ident(schema),
        quote_ident(&names.rollup)
    )
}

/// Statistics for a rollup filled whole. Without any, the planner takes
/// each metric's window rows for a handful and sorts them to merge them
/// into the window table; with its selecting columns' statistics it hashes
/// them, in a quarter of the time — measured over 150,000 rollup rows,
/// sampling these two columns costs a fifth of what it saves.
pub(super) fn rollup_statistics(schema: &str, names: &DerivedNames) -> String {
    format!(
        "ANALYZE {}.{} (metric, bucket)",
        quote_ident(schema),
        quote_ident(&names.rollup)
    )
}

/// The window table's unique index, what its upserts conflict on.
pub(super) fn window_index(schema: &str, names: &DerivedNames) -> String {
    format!(
        "CREATE UNIQUE INDEX {} ON {}.{} (metric, partner, dims, k, v) NULLS NOT DISTINCT",
        quote_ident(&names.window_key),
        quote_ident(schema),
        quote_ident(&names.window)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::sql::compile::{ROLLUP_COLUMNS, WINDOW_COLUMNS};

    #[test]
    fn the_column_lists_statements_name_are_the_tables_columns() {
        assert_eq!(names(&rollup_columns()), ROLLUP_COLUMNS);
        assert_eq!(names(&window_columns()), WINDOW_COLUMNS);
    }

    #[test]
    fn a_replacement_is_typed_and_constrained_like_a_created_table() {
        let statements = replacement(
            "t",
            "_pp_1_window",
            &window_columns(),
            &["SELECT a".into(), "SELECT b".into()],
        );
        assert_eq!(statements.len(), 4);
        assert!(statements[0].starts_with(
            "CREATE TABLE \"t\".\"_pp_1_window_next\" (metric, partner, dims, k, v, n, m, s, lo, hi) \
             WITH (fillfactor = 80) AS SELECT metric::text, partner::text, dims::jsonb, k::bigint, v::text,"
        ));
        assert!(statements[0].ends_with(
            "FROM (SELECT a UNION ALL SELECT b) AS all_metrics (metric, partner, dims, k, v, n, m, s, lo, hi)"
        ));
        // Every NOT NULL of the created table, and only those.
        let created = create("x", &window_columns());
        for c in window_columns() {
            assert_eq!(
                statements[1].contains(&format!("ALTER COLUMN {} SET NOT NULL", c.name)),
                created.contains(&format!("{} {} NOT NULL", c.name, c.ty)),
                "{}",
                c.name
            );
        }
        assert_eq!(statements[2], "DROP TABLE \"t\".\"_pp_1_window\"");
        assert_eq!(
            statements[3],
            "ALTER TABLE \"t\".\"_pp_1_window_next\" RENAME TO \"_pp_1_window\""
        );
    }
}
