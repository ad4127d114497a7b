//! Source tables and their change capture, plus the pipeline's derived
//! tables: what exists is read from the catalog, what to do about it is a
//! pure plan, and only the plan's statements are run — a pipeline whose
//! tables are as declared issues no DDL.
//!
//! Every source table carries `_pp_xid`, the transaction that inserted the
//! row (a default), found through a BRIN index that costs an insert almost
//! nothing; a trigger logs each deleted row, and each updated row before
//! and after, to a change table with the source's columns. A refresh so
//! finds exactly what changed since the previous one, and what each change
//! added and took away. Updates keep the row's `_pp_xid`: updated rows stay
//! where they were in the table, which would otherwise spread recent
//! transactions over every block range.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Transaction;
use tokio_postgres::types::Type;

use super::compile::{sql_type, string_literal};
use super::derived;
use super::names::{
    DerivedNames, LOG_ROW, LOG_SIGN, LOG_TRUNCATED, LOG_XID, XID_COLUMN, XID_NUMBER, source_marker,
};
use super::{PipelineKey, SqlError, Target};
use crate::api::metric::Source;
use crate::api::pipeline::MetricPipelineSpec;
use crate::naming::quote_ident;

/// What `ensure` made sure of.
pub struct Ensured {
    /// Schema-qualified source tables.
    pub source_tables: Vec<String>,
    /// [`Plan::repairs`].
    pub repairs: Vec<String>,
}

/// A table of the tenant schema as the catalog shows it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Column → Postgres type (`format_type`).
    pub columns: BTreeMap<String, String>,
    pub comment: Option<String>,
}

/// What exists in the tenant schema.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub tables: BTreeMap<String, Observed>,
    pub indexes: BTreeSet<String>,
    pub triggers: BTreeSet<String>,
    /// Triggers that exist but do not fire in an ordinary session
    /// (`ALTER TABLE … DISABLE TRIGGER`, or enabled for replicas only).
    pub disabled_triggers: BTreeSet<String>,
    pub functions: BTreeSet<String>,
}

/// The statements that bring the schema to the spec, and whether they
/// change what existing rows mean (then every metric is rebuilt).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub statements: Vec<String>,
    pub rebuild: bool,
    /// What was found broken and is put right, for the tenant to hear of.
    pub repairs: Vec<String>,
}

/// The capture function of `source`: its name and its body. An update
/// logs the row before (sign -1) and after (+1) and keeps the row's insert
/// transaction; a delete logs the row before; a `TRUNCATE` logs that it
/// happened. The images let a refresh take an old row's contribution back
/// out and add the new one's without reading anything else.
fn capture_of(schema: &str, names: &DerivedNames, source: &Source) -> (String, String) {
    let log = format!(
        "{}.{}",
        quote_ident(schema),
        quote_ident(&names.changes(source.name.as_str()))
    );
    let columns: Vec<String> = source
        .columns
        .iter()
        .map(|c| quote_ident(c.name.as_str()))
        .collect();
    let image = |sign: i32, row: &str| {
        let values: Vec<String> = columns.iter().map(|c| format!("{row}.{c}")).collect();
        format!("({sign}, OLD.{XID_COLUMN}, {})", values.join(", "))
    };
    let into = format!("{log} ({LOG_SIGN}, {LOG_ROW}, {})", columns.join(", "));
    let body = format!(
        "BEGIN\n\
         \x20 IF TG_OP = 'TRUNCATE' THEN\n\
         \x20   INSERT INTO {log} ({LOG_TRUNCATED}) VALUES (true);\n\
         \x20   RETURN NULL;\n\
         \x20 END IF;\n\
         \x20 IF TG_OP = 'DELETE' THEN\n\
         \x20   INSERT INTO {into} VALUES {old};\n\
         \x20   RETURN OLD;\n\
         \x20 END IF;\n\
         \x20 NEW.{XID_COLUMN} := OLD.{XID_COLUMN};\n\
         \x20 INSERT INTO {into} VALUES {old}, {new};\n\
         \x20 RETURN NEW;\n\
         END",
        old = image(-1, "OLD"),
        new = image(1, "NEW"),
    );
    (names.capture(source.name.as_str(), &body), body)
}

fn indexes_of(names: &DerivedNames, source: &Source) -> [String; 3] {
    names.indexes(
        source.name.as_str(),
        source.partner_column.as_str(),
        source.time_column.as_str(),
    )
}

fn trigger_names(capture: &str) -> [String; 2] {
    [format!("{capture}_row"), format!("{capture}_truncate")]
}

/// Plans the DDL for `spec` given `catalog` (pure).
pub fn plan(
    schema: &str,
    key: &PipelineKey,
    spec: &MetricPipelineSpec,
    catalog: &Catalog,
) -> Result<Plan, SqlError> {
    let names = DerivedNames::new(key);
    let marker = source_marker(key);
    let s = quote_ident(schema);
    let mut out = Plan::default();
    let mut destructive = vec![];
    for source in &spec.sources {
        let table = source.name.as_str();
        let qualified = format!("{s}.{}", quote_ident(table));
        match catalog.tables.get(table) {
            None => {
                let mut columns: Vec<String> = source
                    .columns
                    .iter()
                    .map(|c| format!("{} {}", quote_ident(c.name.as_str()), sql_type(c.type_)))
                    .collect();
                columns.push(format!(
                    "{XID_COLUMN} xid8 NOT NULL DEFAULT pg_current_xact_id()"
                ));
                out.statements
                    .push(format!("CREATE TABLE {qualified} ({})", columns.join(", ")));
                out.statements.push(format!(
                    "COMMENT ON TABLE {qualified} IS {}",
                    string_literal(&marker)
                ));
            }
            Some(observed) if observed.comment.as_deref() == Some(marker.as_str()) => {
                for c in &source.columns {
                    let want = sql_type(c.type_);
                    match observed.columns.get(c.name.as_str()) {
                        None => out.statements.push(format!(
                            "ALTER TABLE {qualified} ADD COLUMN {} {want}",
                            quote_ident(c.name.as_str())
                        )),
                        Some(have) if have != want => {
                            destructive.push(format!(
                                "retype column {} of source {table} from {have} to {want}",
                                c.name.as_str()
                            ));
                            out.statements.push(format!(
                                "ALTER TABLE {qualified} ALTER COLUMN {col} TYPE {want} USING {col}::{want}",
                                col = quote_ident(c.name.as_str())
                            ));
                            out.rebuild = true;
                        }
                        Some(_) => {}
                    }
                }
                for have in observed.columns.keys() {
                    if have != XID_COLUMN && !source.columns.iter().any(|c| c.name.as_str() == have)
                    {
                        destructive.push(format!("drop column {have} of source {table}"));
                        out.statements.push(format!(
                            "ALTER TABLE {qualified} DROP COLUMN {}",
                            quote_ident(have)
                        ));
                        out.rebuild = true;
                    }
                }
                if !observed.columns.contains_key(XID_COLUMN) {
                    // Existing rows get xid 0 (older than any snapshot), not
                    // this transaction's, so they never look new.
                    out.statements.push(format!(
                        "ALTER TABLE {qualified} ADD COLUMN {XID_COLUMN} xid8 NOT NULL DEFAULT '0'::xid8"
                    ));
                    out.statements.push(format!(
                        "ALTER TABLE {qualified} ALTER COLUMN {XID_COLUMN} SET DEFAULT pg_current_xact_id()"
                    ));
                    out.rebuild = true;
                }
            }
            Some(observed) => {
                return Err(SqlError::Refused {
                    message: format!(
                        "table {table} already exists in the tenant schema and is not a source of this pipeline ({}); rename the source or remove the table",
                        observed
                            .comment
                            .as_deref()
                            .unwrap_or("created outside partnerplane")
                    ),
                });
            }
        }
        capture_statements(&mut out, schema, &names, source, catalog);
    }
    for (table, observed) in &catalog.tables {
        if observed.comment.as_deref() == Some(marker.as_str())
            && !spec.sources.iter().any(|s| s.name.as_str() == table)
        {
            destructive.push(format!("drop source {table} and its rows"));
            out.statements
                .push(format!("DROP TABLE {s}.{}", quote_ident(table)));
            for function in catalog
                .functions
                .iter()
                .filter(|f| f.starts_with(&names.capture_prefix(table)))
            {
                out.statements.push(format!(
                    "DROP FUNCTION IF EXISTS {s}.{}() CASCADE",
                    quote_ident(function)
                ));
            }
            out.statements.push(format!(
                "DROP TABLE IF EXISTS {s}.{}",
                quote_ident(&names.changes(table))
            ));
        }
    }
    if !destructive.is_empty() && !spec.allow_destructive_changes {
        return Err(SqlError::Refused {
            message: format!(
                "refusing to lose data: the spec would {}; restore the source as it was, or set spec.allowDestructiveChanges to true",
                destructive.join(", ")
            ),
        });
    }
    derived_statements(&mut out, schema, &names, catalog);
    Ok(out)
}

fn capture_statements(
    out: &mut Plan,
    schema: &str,
    names: &DerivedNames,
    source: &Source,
    catalog: &Catalog,
) {
    let s = quote_ident(schema);
    let table = source.name.as_str();
    let qualified = format!("{s}.{}", quote_ident(table));
    let changes = names.changes(table);
    let log = format!("{s}.{}", quote_ident(&changes));
    let (function, body) = capture_of(schema, names, source);
    // A capture function or index for other partner or time columns is
    // dropped (with its triggers) before the current one is made.
    for stale in catalog
        .functions
        .iter()
        .filter(|f| f.starts_with(&names.capture_prefix(table)) && **f != function)
    {
        out.statements.push(format!(
            "DROP FUNCTION {s}.{}() CASCADE",
            quote_ident(stale)
        ));
    }
    let wanted = indexes_of(names, source);
    for stale in catalog
        .indexes
        .iter()
        .filter(|i| i.starts_with(&names.index_prefix(table)) && !wanted.contains(i))
    {
        out.statements
            .push(format!("DROP INDEX {s}.{}", quote_ident(stale)));
    }
    log_statements(out, &log, source, catalog.tables.get(&changes));
    if !catalog.functions.contains(&function) {
        out.statements.push(format!(
            "CREATE OR REPLACE FUNCTION {s}.{f}() RETURNS trigger LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $capture$\n{body}\n$capture$",
            f = quote_ident(&function)
        ));
    }
    let [row, truncate] = trigger_names(&function);
    // A source whose capture the tenant dropped (a trigger, the function
    // with CASCADE, the log) has had changes logged nowhere; one whose
    // columns changed has its capture replaced, and is rebuilt for that.
    let replaced = catalog
        .functions
        .iter()
        .any(|f| f.starts_with(&names.capture_prefix(table)) && *f != function);
    let missing = !catalog.functions.contains(&function)
        || !catalog.triggers.contains(&row)
        || !catalog.triggers.contains(&truncate)
        || !catalog.tables.contains_key(&changes);
    if catalog.tables.contains_key(table) && !replaced && missing {
        out.repairs.push(format!(
            "the change capture of source {table} was missing: made again, and every metric rebuilt"
        ));
        out.rebuild = true;
    }
    for trigger in [&row, &truncate] {
        if catalog.disabled_triggers.contains(trigger) {
            // Changes made meanwhile were not logged: the partial
            // aggregates cannot be trusted until rebuilt.
            out.statements.push(format!(
                "ALTER TABLE {qualified} ENABLE TRIGGER {}",
                quote_ident(trigger)
            ));
            out.repairs.push(format!(
                "the change capture trigger {trigger} of source {table} was disabled: enabled again, and every metric rebuilt"
            ));
            out.rebuild = true;
        }
    }
    if !catalog.triggers.contains(&row) {
        out.statements.push(format!(
            "CREATE TRIGGER {} BEFORE UPDATE OR DELETE ON {qualified} FOR EACH ROW EXECUTE FUNCTION {s}.{}()",
            quote_ident(&row),
            quote_ident(&function)
        ));
    }
    if !catalog.triggers.contains(&truncate) {
        out.statements.push(format!(
            "CREATE TRIGGER {} AFTER TRUNCATE ON {qualified} FOR EACH STATEMENT EXECUTE FUNCTION {s}.{}()",
            quote_ident(&truncate),
            quote_ident(&function)
        ));
    }
    let [by_xid, by_time, by_partner] = wanted;
    let partner = quote_ident(source.partner_column.as_str());
    let time = quote_ident(source.time_column.as_str());
    for (index, method) in [
        // Transaction ids grow with the table, so block ranges summarise
        // them well; a B-tree here cost inserts over 10 %.
        (
            by_xid,
            format!("USING brin ({XID_NUMBER}) WITH (pages_per_range = 32, autosummarize = on)"),
        ),
        (by_time, format!("({time})")),
        (by_partner, format!("({partner}, {time})")),
    ] {
        if !catalog.indexes.contains(&index) {
            out.statements.push(format!(
                "CREATE INDEX {} ON {qualified} {method}",
                quote_ident(&index)
            ));
        }
    }
}

/// The change log of `source` as `observed`, brought to hold the source's
/// columns.
fn log_statements(out: &mut Plan, log: &str, source: &Source, observed: Option<&Observed>) {
    match observed {
        Some(observed) if observed.columns.contains_key(LOG_SIGN) => {
            for c in &source.columns {
                let (name, want) = (quote_ident(c.name.as_str()), sql_type(c.type_));
                match observed.columns.get(c.name.as_str()) {
                    None => out
                        .statements
                        .push(format!("ALTER TABLE {log} ADD COLUMN {name} {want}")),
                    // The source's retype rebuilds every metric; logged
                    // values of the column are not read again.
                    Some(have) if have != want => out.statements.push(format!(
                        "ALTER TABLE {log} ALTER COLUMN {name} TYPE {want} USING NULL"
                    )),
                    Some(_) => {}
                }
            }
            for have in observed.columns.keys().filter(|have| {
                ![LOG_XID, LOG_TRUNCATED, LOG_SIGN, LOG_ROW].contains(&have.as_str())
                    && !source.columns.iter().any(|c| c.name.as_str() == *have)
            }) {
                out.statements.push(format!(
                    "ALTER TABLE {log} DROP COLUMN {}",
                    quote_ident(have)
                ));
            }
        }
        older => {
            if older.is_some() {
                // A log of keys only, from an earlier version: what it
                // holds cannot be applied as signed rows, so it goes and
                // every metric is rebuilt once.
                out.statements.push(format!("DROP TABLE {log}"));
                out.rebuild = true;
            }
            let columns: Vec<String> = source
                .columns
                .iter()
                .map(|c| format!("{} {}", quote_ident(c.name.as_str()), sql_type(c.type_)))
                .collect();
            out.statements.push(format!(
                "CREATE TABLE {log} ({LOG_XID} xid8 NOT NULL DEFAULT pg_current_xact_id(), \
                 {LOG_TRUNCATED} boolean NOT NULL DEFAULT false, {LOG_SIGN} smallint, {LOG_ROW} xid8, {})",
                columns.join(", ")
            ));
        }
    }
}

/// State key naming the transaction whose schema change asks the next
/// refresh after it to rebuild every metric.
pub const REBUILD_AFTER: &str = "rebuild-after";

fn derived_statements(out: &mut Plan, schema: &str, names: &DerivedNames, catalog: &Catalog) {
    let s = quote_ident(schema);
    let rollup = format!("{s}.{}", quote_ident(&names.rollup));
    if !catalog.tables.contains_key(&names.rollup) {
        out.statements
            .push(derived::create(&rollup, &derived::rollup_columns()));
    }
    // Earlier versions kept two indexes; one ordered by bucket does both jobs.
    for old in [
        format!("{}_key", names.rollup),
        format!("{}_window", names.rollup),
    ] {
        if catalog.indexes.contains(&old) {
            out.statements
                .push(format!("DROP INDEX {s}.{}", quote_ident(&old)));
        }
    }
    if !catalog.indexes.contains(&names.rollup_key) {
        out.statements.push(derived::rollup_index(schema, names));
    }
    if !catalog.tables.contains_key(&names.keys) {
        // Unlogged: it is emptied before every commit.
        out.statements.push(format!(
            "CREATE UNLOGGED TABLE {s}.{} (metric text NOT NULL, partner text NOT NULL, bucket timestamp NOT NULL, \
             lo timestamptz NOT NULL, hi timestamptz NOT NULL)",
            quote_ident(&names.keys)
        ));
    }
    if !catalog.tables.contains_key(&names.window) {
        let window = format!("{s}.{}", quote_ident(&names.window));
        out.statements
            .push(derived::create(&window, &derived::window_columns()));
        out.statements.push(derived::window_index(schema, names));
    }
    if !catalog.tables.contains_key(&names.results) {
        let t = format!("{s}.{}", quote_ident(&names.results));
        out.statements.push(format!(
            "CREATE TABLE {t} (refreshed_at timestamptz NOT NULL, metric text NOT NULL, partner text, \
             dimensions jsonb NOT NULL, value float8, samples bigint NOT NULL)"
        ));
        out.statements.push(format!(
            "CREATE INDEX {} ON {t} (refreshed_at, metric)",
            quote_ident(&format!("{}_at", names.results))
        ));
        out.statements.push(format!(
            "COMMENT ON TABLE {t} IS {}",
            string_literal("each metric's value per refresh: partner NULL is over all partners, dimensions {} is not split by a groupBy column")
        ));
    }
    if !catalog.tables.contains_key(&names.state) {
        out.statements.push(format!(
            "CREATE TABLE {s}.{} (key text PRIMARY KEY, value text NOT NULL)",
            quote_ident(&names.state)
        ));
    }
}

/// Reads what exists in the tenant schema, in one statement (a refresh
/// runs this every time, so round trips count).
pub async fn read_catalog(tx: &Transaction<'_>, schema: &str) -> Result<Catalog, SqlError> {
    let rows = tx
        .query_typed(&catalog_query(""), &[(&schema, Type::NAME)])
        .await?;
    Ok(catalog_of(&rows))
}

/// The catalog query, with `extra` (`UNION ALL …`, parameters from `$2`)
/// appended. Comments are joined rather than read with `obj_description`,
/// which runs a lookup per column row: half the query's time.
fn catalog_query(extra: &str) -> String {
    format!(
        "SELECT 'r', c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), d.description \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         LEFT JOIN pg_description d ON d.objoid = c.oid AND d.classoid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0 \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') \
         UNION ALL SELECT 'i', c.relname::text, NULL, NULL, NULL FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'i' \
         UNION ALL SELECT 't', t.tgname::text, NULL, t.tgenabled::text, NULL FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND NOT t.tgisinternal \
         UNION ALL SELECT 'f', p.proname::text, NULL, NULL, NULL FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1{extra}"
    )
}

fn catalog_of(rows: &[tokio_postgres::Row]) -> Catalog {
    let mut catalog = Catalog::default();
    for row in rows {
        let (kind, name): (String, String) = (row.get(0), row.get(1));
        match kind.as_str() {
            "r" => {
                let entry = catalog.tables.entry(name).or_default();
                entry.comment = row.get(4);
                if let (Some(column), Some(type_)) = (
                    row.get::<_, Option<String>>(2),
                    row.get::<_, Option<String>>(3),
                ) {
                    entry.columns.insert(column, type_);
                }
            }
            "i" => {
                catalog.indexes.insert(name);
            }
            "t" => {
                // 'O' fires in ordinary sessions, 'A' always; 'R' only on
                // replicas, 'D' never.
                if !matches!(row.get::<_, Option<&str>>(3), Some("O" | "A")) {
                    catalog.disabled_triggers.insert(name.clone());
                }
                catalog.triggers.insert(name);
            }
            "f" => {
                catalog.functions.insert(name);
            }
            _ => {}
        }
    }
    catalog
}

/// Reads the catalog and checks the time zone in one statement; a zone
/// Postgres does not know is refused naming the field (the statement
/// fails, and the caller rolls the transaction back).
async fn read_catalog_checking_zone(
    tx: &Transaction<'_>,
    schema: &str,
    zone: &str,
) -> Result<Catalog, SqlError> {
    let query =
        catalog_query(" UNION ALL SELECT 'z', (now() AT TIME ZONE $2)::text, NULL, NULL, NULL");
    match tx
        .query_typed(&query, &[(&schema, Type::NAME), (&zone, Type::TEXT)])
        .await
    {
        Ok(rows) => Ok(catalog_of(&rows)),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE) => {
            Err(SqlError::Invalid {
                path: "spec.timeZone".into(),
                message: format!("{zone} is not a time zone Postgres knows"),
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Makes the source and derived tables match the spec.
pub async fn ensure(
    tx: &Transaction<'_>,
    target: &Target,
    key: &PipelineKey,
    spec: &MetricPipelineSpec,
) -> Result<Ensured, SqlError> {
    let catalog = read_catalog_checking_zone(tx, &target.schema, &spec.time_zone).await?;
    let plan = plan(&target.schema, key, spec, &catalog)?;
    for statement in &plan.statements {
        tx.batch_execute(statement).await?;
    }
    if plan.rebuild {
        // The refresh's snapshot was taken before these statements waited
        // for the writers holding the source: a rebuild with it misses what
        // they committed meanwhile (and a rewritten table shows it as this
        // transaction's). The next refresh, with a later snapshot, rebuilds
        // once more.
        let state = format!(
            "{}.{}",
            quote_ident(&target.schema),
            quote_ident(&DerivedNames::new(key).state)
        );
        tx.batch_execute(&format!(
            "DELETE FROM {state}; INSERT INTO {state} (key, value) \
             VALUES ('{REBUILD_AFTER}', pg_current_xact_id()::text)"
        ))
        .await?;
    }
    Ok(Ensured {
        repairs: plan.repairs,
        source_tables: spec
            .sources
            .iter()
            .map(|s| {
                format!(
                    "{}.{}",
                    quote_ident(&target.schema),
                    quote_ident(s.name.as_str())
                )
            })
            .collect(),
    })
}

/// Drops the pipeline's derived objects; source tables too when asked,
/// otherwise they keep their rows and lose only the change capture.
pub async fn drop_derived(
    tx: &Transaction<'_>,
    target: &Target,
    key: &PipelineKey,
    _spec: &MetricPipelineSpec,
    drop_sources: bool,
) -> Result<(), SqlError> {
    let names = DerivedNames::new(key);
    let marker = source_marker(key);
    let catalog = read_catalog(tx, &target.schema).await?;
    let s = quote_ident(&target.schema);
    let ours = |name: &str| name.starts_with(&format!("{}_", names.stem));
    let mut statements = vec![];
    for function in catalog.functions.iter().filter(|f| ours(f)) {
        statements.push(format!(
            "DROP FUNCTION IF EXISTS {s}.{}() CASCADE",
            quote_ident(function)
        ));
    }
    for (table, observed) in &catalog.tables {
        if ours(table) || (drop_sources && observed.comment.as_deref() == Some(marker.as_str())) {
            statements.push(format!(
                "DROP TABLE IF EXISTS {s}.{} CASCADE",
                quote_ident(table)
            ));
        } else if observed.comment.as_deref() == Some(marker.as_str()) {
            for index in catalog
                .indexes
                .iter()
                .filter(|i| i.starts_with(&names.index_prefix(table)))
            {
                statements.push(format!("DROP INDEX IF EXISTS {s}.{}", quote_ident(index)));
            }
        }
    }
    for statement in statements {
        tx.batch_execute(&statement).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PipelineKey {
        PipelineKey {
            namespace: "ns".into(),
            name: "p".into(),
            uid: "u".into(),
        }
    }

    fn spec(extra_columns: &str, allow: bool) -> MetricPipelineSpec {
        serde_yaml::from_str(&format!(
            r#"
allowDestructiveChanges: {allow}
sources:
  - name: orders
    partnerColumn: partner_id
    timeColumn: opened_at
    columns:
      - {{name: partner_id, type: Text}}
      - {{name: opened_at, type: Timestamp}}
{extra_columns}
metrics:
  - {{name: n, domain: ServiceDelivery, source: orders, aggregate: {{kind: Count}}}}
"#
        ))
        .unwrap()
    }

    fn applied(spec: &MetricPipelineSpec) -> Catalog {
        // What the schema looks like after the plan for `spec` ran.
        let names = DerivedNames::new(&key());
        let mut catalog = Catalog::default();
        for source in &spec.sources {
            let mut columns: BTreeMap<String, String> = source
                .columns
                .iter()
                .map(|c| (c.name.as_str().to_string(), sql_type(c.type_).to_string()))
                .collect();
            columns.insert(XID_COLUMN.into(), "xid8".into());
            catalog.tables.insert(
                source.name.as_str().into(),
                Observed {
                    columns,
                    comment: Some(source_marker(&key())),
                },
            );
            let mut logged: BTreeMap<String, String> = source
                .columns
                .iter()
                .map(|c| (c.name.as_str().to_string(), sql_type(c.type_).to_string()))
                .collect();
            for (column, type_) in [
                (LOG_XID, "xid8"),
                (LOG_TRUNCATED, "boolean"),
                (LOG_SIGN, "smallint"),
                (LOG_ROW, "xid8"),
            ] {
                logged.insert(column.into(), type_.into());
            }
            catalog.tables.insert(
                names.changes(source.name.as_str()),
                Observed {
                    columns: logged,
                    comment: None,
                },
            );
            let (function, _) = capture_of("t", &names, source);
            catalog.functions.insert(function.clone());
            catalog.triggers.extend(trigger_names(&function));
            catalog.indexes.extend(indexes_of(&names, source));
        }
        for t in [
            &names.rollup,
            &names.results,
            &names.state,
            &names.keys,
            &names.window,
        ] {
            catalog.tables.insert(t.clone(), Observed::default());
        }
        catalog.indexes.insert(names.rollup_key.clone());
        catalog.indexes.insert(names.window_key.clone());
        catalog
    }

    #[test]
    fn a_new_pipeline_creates_its_sources_with_change_capture() {
        let plan = plan("t", &key(), &spec("", false), &Catalog::default()).unwrap();
        let text = plan.statements.join("\n");
        assert!(text.contains("CREATE TABLE \"t\".\"orders\" (\"partner_id\" text, \"opened_at\" timestamp with time zone, _pp_xid xid8"));
        assert!(text.contains("BEFORE UPDATE OR DELETE ON \"t\".\"orders\""));
        assert!(text.contains("(\"partner_id\", \"opened_at\")"));
        assert!(!plan.rebuild);
    }

    #[test]
    fn a_disabled_capture_trigger_is_enabled_again_and_every_metric_rebuilt() {
        let s = spec("", false);
        let mut catalog = applied(&s);
        let (function, _) = capture_of("t", &DerivedNames::new(&key()), &s.sources[0]);
        let [row, truncate] = trigger_names(&function);
        catalog.disabled_triggers.insert(row.clone());
        let planned = plan("t", &key(), &s, &catalog).unwrap();
        assert_eq!(
            planned.statements,
            [format!(
                "ALTER TABLE \"t\".\"orders\" ENABLE TRIGGER {}",
                quote_ident(&row)
            )]
        );
        assert!(planned.rebuild);
        assert_eq!(planned.repairs.len(), 1);
        assert!(planned.repairs[0].contains(&row) && planned.repairs[0].contains("orders"));
        catalog.disabled_triggers.insert(truncate);
        assert_eq!(plan("t", &key(), &s, &catalog).unwrap().repairs.len(), 2);
    }

    #[test]
    fn a_dropped_capture_is_made_again_and_every_metric_rebuilt() {
        let s = spec("", false);
        let names = DerivedNames::new(&key());
        let (function, _) = capture_of("t", &names, &s.sources[0]);
        let [row, _] = trigger_names(&function);
        let mut no_trigger = applied(&s);
        no_trigger.triggers.remove(&row);
        let mut no_function = applied(&s);
        no_function.functions.remove(&function);
        no_function.triggers.clear();
        let mut no_log = applied(&s);
        no_log.tables.remove(&names.changes("orders"));
        for catalog in [no_trigger, no_function, no_log] {
            let planned = plan("t", &key(), &s, &catalog).unwrap();
            assert!(planned.rebuild, "{:?}", planned.statements);
            assert_eq!(planned.repairs.len(), 1);
            assert!(planned.repairs[0].contains("source orders was missing"));
        }
        // A new source gets its capture with nothing to repair.
        let fresh = plan("t", &key(), &s, &Catalog::default()).unwrap();
        assert!(fresh.repairs.is_empty() && !fresh.rebuild);
    }

    #[test]
    fn a_schema_as_declared_needs_no_statement() {
        let s = spec("      - {name: amount, type: Numeric}", false);
        assert_eq!(
            plan("t", &key(), &s, &applied(&s)).unwrap(),
            Plan::default()
        );
    }

    #[test]
    fn the_transaction_column_has_a_brin_index_and_an_old_b_tree_goes() {
        let s = spec("", false);
        let text = plan("t", &key(), &s, &Catalog::default())
            .unwrap()
            .statements
            .join("\n");
        assert!(
            text.contains("USING brin (((_pp_xid::text)::bigint))"),
            "{text}"
        );
        let mut before = applied(&s);
        let names = DerivedNames::new(&key());
        let [xb, ..] = indexes_of(&names, &s.sources[0]);
        let b_tree = xb.trim_end_matches('b').to_string();
        before.indexes.insert(b_tree.clone());
        assert_eq!(
            plan("t", &key(), &s, &before).unwrap().statements,
            [format!("DROP INDEX \"t\".\"{b_tree}\"")]
        );
    }

    #[test]
    fn the_rollup_gets_one_index_led_by_metric_and_bucket_in_place_of_the_old_two() {
        let s = spec("", false);
        let names = DerivedNames::new(&key());
        let mut before = applied(&s);
        before.indexes.remove(&names.rollup_key);
        before.indexes.insert(format!("{}_key", names.rollup));
        before.indexes.insert(format!("{}_window", names.rollup));
        let statements = plan("t", &key(), &s, &before).unwrap().statements;
        assert_eq!(statements.len(), 3, "{statements:#?}");
        assert!(statements[2].contains("(metric, bucket, partner, dims, k, v)"));
        assert!(statements[..2].iter().all(|s| s.starts_with("DROP INDEX")));
    }

    #[test]
    fn an_added_column_is_applied_in_place() {
        let before = spec("", false);
        let after = spec("      - {name: region, type: Text}", false);
        let plan = plan("t", &key(), &after, &applied(&before)).unwrap();
        let names = DerivedNames::new(&key());
        let log = names.changes("orders");
        assert_eq!(
            plan.statements[..3],
            [
                "ALTER TABLE \"t\".\"orders\" ADD COLUMN \"region\" text".to_string(),
                format!(
                    "DROP FUNCTION \"t\".\"{}\"() CASCADE",
                    capture_of("t", &names, &before.sources[0]).0
                ),
                format!("ALTER TABLE \"t\".\"{log}\" ADD COLUMN \"region\" text"),
            ]
        );
        // The new function logs the new column, and its triggers follow.
        assert!(plan.statements[3].contains("NEW.\"region\")"));
        assert_eq!(plan.statements.len(), 6, "{:#?}", plan.statements);
        assert!(!plan.rebuild);
        assert_eq!(
            super::plan("t", &key(), &after, &applied(&after)).unwrap(),
            Plan::default()
        );
    }

    #[test]
    fn a_log_of_keys_only_is_replaced_and_every_metric_rebuilt() {
        let s = spec("", false);
        let mut before = applied(&s);
        let names = DerivedNames::new(&key());
        before.tables.insert(
            names.changes("orders"),
            Observed {
                columns: [("partner", "text"), ("at", "timestamp with time zone")]
                    .into_iter()
                    .map(|(c, t)| (c.to_string(), t.to_string()))
                    .collect(),
                comment: None,
            },
        );
        let plan = plan("t", &key(), &s, &before).unwrap();
        assert!(plan.rebuild);
        assert!(
            plan.statements[0].starts_with("DROP TABLE"),
            "{:?}",
            plan.statements
        );
        assert!(
            plan.statements[1].contains("_pp_sign smallint, _pp_row xid8, \"partner_id\" text")
        );
    }

    #[test]
    fn dropping_or_retyping_a_column_is_refused_naming_it_unless_allowed() {
        let before = spec(
            "      - {name: region, type: Text}\n      - {name: amount, type: Numeric}",
            false,
        );
        let after = spec("      - {name: amount, type: Text}", false);
        match plan("t", &key(), &after, &applied(&before)) {
            Err(SqlError::Refused { message }) => {
                assert!(
                    message.contains("drop column region")
                        && message.contains("retype column amount"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        let allowed = spec("      - {name: amount, type: Text}", true);
        let plan = plan("t", &key(), &allowed, &applied(&before)).unwrap();
        assert!(plan.rebuild);
        assert!(
            plan.statements
                .iter()
                .any(|s| s.contains("DROP COLUMN \"region\""))
        );
    }

    #[test]
    fn a_new_time_column_replaces_the_indexes_and_keeps_the_capture() {
        let before = spec("      - {name: closed_at, type: Timestamp}", false);
        let mut after = before.clone();
        after.sources[0].time_column = crate::api::metric::Identifier("closed_at".into());
        let text = plan("t", &key(), &after, &applied(&before))
            .unwrap()
            .statements
            .join("\n");
        // The capture logs every column, whichever is the time column.
        assert!(!text.contains("FUNCTION"), "{text}");
        assert!(
            text.contains("DROP INDEX") && text.contains("(\"partner_id\", \"closed_at\")"),
            "{text}"
        );
    }

    #[test]
    fn a_table_the_pipeline_did_not_create_is_never_taken_over() {
        let mut catalog = Catalog::default();
        catalog.tables.insert(
            "orders".into(),
            Observed {
                columns: BTreeMap::new(),
                comment: None,
            },
        );
        assert!(matches!(
            plan("t", &key(), &spec("", true), &catalog),
            Err(SqlError::Refused { .. })
        ));
    }

    #[test]
    fn a_removed_source_is_dropped_only_when_allowed() {
        let mut before = applied(&spec("", false));
        before.tables.insert(
            "visits".into(),
            Observed {
                columns: BTreeMap::new(),
                comment: Some(source_marker(&key())),
            },
        );
        assert!(matches!(
            plan("t", &key(), &spec("", false), &before),
            Err(SqlError::Refused { .. })
        ));
        let plan = plan("t", &key(), &spec("", true), &before).unwrap();
        assert!(
            plan.statements
                .contains(&"DROP TABLE \"t\".\"visits\"".to_string())
        );
    }
}
