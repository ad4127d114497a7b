//! The incremental refresh against real Postgres: random inserts, updates
//! and deletes — late writes into old buckets, rows moving between buckets
//! and leaving the window, truncation, and writers whose transactions
//! commit after a later one or after a refresh began — and after every
//! refresh the maintained partial aggregates equal a recompute from all
//! rows, so every row is counted exactly once.

use partnerplane::api::pipeline::MetricPipelineSpec;
use partnerplane::pipeline::sql::compile::{self, ROLLUP_COLUMNS, WINDOW_COLUMNS};
use partnerplane::pipeline::sql::names::DerivedNames;
use partnerplane::pipeline::sql::{self, PipelineKey, RefreshPath, Target};
use partnerplane_e2e::tenants::pg_admin;
use partnerplane_e2e::{Testbed, unique_name};
use tokio_postgres::Client;

const SPEC: &str = r#"
timeZone: Europe/Berlin
sources:
  - name: visits
    partnerColumn: partner_id
    timeColumn: at
    columns:
      - {name: partner_id, type: Text}
      - {name: at, type: Timestamp}
      - {name: done_at, type: Timestamp}
      - {name: amount, type: Numeric}
      - {name: ok, type: Boolean}
      - {name: region, type: Text}
metrics:
  - {name: visits, domain: ServiceDelivery, source: visits, aggregate: {kind: Count}, window: 30d}
  - {name: regions, domain: ServiceDelivery, source: visits, aggregate: {kind: CountDistinct, column: region}, window: 30d}
  - {name: revenue, domain: RevenueAttribution, source: visits, aggregate: {kind: Sum, column: amount}, window: 30d, groupBy: [region]}
  - {name: mean_amount, domain: FinancialControl, source: visits, aggregate: {kind: Average, column: amount}, window: 8w}
  - {name: smallest, domain: FinancialControl, source: visits, aggregate: {kind: Minimum, column: amount}, window: 30d}
  - {name: largest, domain: FinancialControl, source: visits, aggregate: {kind: Maximum, column: amount}, window: 30d}
  - name: fix_rate
    domain: ServiceDelivery
    source: visits
    aggregate: {kind: Ratio, matching: [{column: ok, operator: Equals, value: {boolean: true}}]}
    filters: [{column: region, operator: NotEquals, value: {string: "west"}}]
    window: 30d
  - name: p90_hours
    domain: ServiceDelivery
    source: visits
    aggregate: {kind: Percentile, percentile: 90, duration: {from: at, to: done_at, unit: Hours}}
    window: 48h
"#;

/// A small deterministic generator (the seed is printed on failure).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

struct Bed {
    admin: Client,
    target: Target,
    key: PipelineKey,
    spec: MetricPipelineSpec,
}

async fn setup(testbed: &Testbed) -> anyhow::Result<Bed> {
    let admin = pg_admin(testbed).await?;
    let name = unique_name("inc").replace('-', "_");
    let (schema, role) = (format!("{name}_schema"), format!("{name}_app"));
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" NOLOGIN; CREATE SCHEMA \"{schema}\" AUTHORIZATION \"{role}\";"
        ))
        .await?;
    Ok(Bed {
        admin,
        target: Target { schema, role },
        key: PipelineKey {
            namespace: name.clone(),
            name: "p".into(),
            uid: "u".into(),
        },
        spec: serde_yaml::from_str(SPEC)?,
    })
}

/// Drops the tenant schema and role `setup` made.
async fn teardown(bed: &Bed) -> anyhow::Result<()> {
    bed.admin
        .batch_execute(&format!(
            "DROP SCHEMA \"{}\" CASCADE; DROP ROLE \"{}\";",
            bed.target.schema, bed.target.role
        ))
        .await?;
    Ok(())
}

/// Opens the refresh transaction as the operator does: repeatable read, as
/// the tenant's role. The snapshot is taken by the first statement.
async fn begin_refresh<'a>(
    client: &'a mut Client,
    bed: &Bed,
) -> anyhow::Result<tokio_postgres::Transaction<'a>> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .start()
        .await?;
    tx.batch_execute(&format!("SET LOCAL ROLE \"{}\"", bed.target.role))
        .await?;
    Ok(tx)
}

async fn finish_refresh(
    tx: tokio_postgres::Transaction<'_>,
    bed: &Bed,
) -> anyhow::Result<RefreshPath> {
    sql::ensure(&tx, &bed.target, &bed.key, &bed.spec).await?;
    let report = sql::refresh(&tx, &bed.target, &bed.key, &bed.spec, 4).await?;
    tx.commit().await?;
    assert_eq!(
        report.mismatched_buckets, 0,
        "the sampled check found a drifted bucket"
    );
    Ok(report.path)
}

/// Rows of the rollup that a recompute from all rows (in the buckets the
/// rollup keeps, from its recorded start on) does not produce, and the
/// other way round, and the same for the window table — all must be empty.
async fn differences(bed: &Bed) -> anyhow::Result<Vec<String>> {
    let names = DerivedNames::new(&bed.key);
    let s = format!("\"{}\"", bed.target.schema);
    let rollup = format!("{s}.\"{}\"", names.rollup);
    let window = format!("{s}.\"{}\"", names.window);
    let mut out = vec![];
    for c in compile::compile(&bed.spec)? {
        let from = sql::refresh::retained_from(&bed.admin, &bed.target, &bed.key, &c.name)
            .await?
            .ok_or_else(|| anyhow::anyhow!("{}: no recorded start", c.name))?;
        let full = c.rollup_select(&format!("{s}.\"visits\""), &c.retained(&from));
        let kept = format!(
            "SELECT {ROLLUP_COLUMNS} FROM {rollup} WHERE metric = '{}'",
            c.name
        );
        // The window table: the same rows merged over the current window.
        let full_window = c.window_select(&format!("({full}) AS f({ROLLUP_COLUMNS})"));
        let kept_window = format!(
            "SELECT {WINDOW_COLUMNS} FROM {window} WHERE metric = '{}'",
            c.name
        );
        for (label, a, b, columns) in [
            ("missing", &full, &kept, ROLLUP_COLUMNS),
            ("extra", &kept, &full, ROLLUP_COLUMNS),
            (
                "missing from the window",
                &full_window,
                &kept_window,
                WINDOW_COLUMNS,
            ),
            (
                "extra in the window",
                &kept_window,
                &full_window,
                WINDOW_COLUMNS,
            ),
        ] {
            let rows = bed
                .admin
                .query(
                    &format!(
                        "SELECT row_to_json(d)::text FROM (SELECT * FROM ({a}) AS a({columns}) \
                         EXCEPT ALL SELECT * FROM ({b}) AS b({columns})) AS d LIMIT 3"
                    ),
                    &[],
                )
                .await?;
            out.extend(
                rows.iter()
                    .map(|r| format!("{} {label}: {}", c.name, r.get::<_, String>(0))),
            );
        }
    }
    Ok(out)
}

fn insert_rows(rng: &mut Rng, n: u64, table: &str) -> String {
    let values: Vec<String> = (0..n)
        .map(|_| {
            let partner = format!("P{}", rng.below(5));
            // Up to 40 days back (late writes into old buckets and rows
            // outside the shorter windows), some in the future hours.
            let minutes_ago = rng.below(40 * 24 * 60) as i64 - 120;
            let hours = rng.below(4000) as f64 / 100.0;
            let done = if rng.below(10) == 0 { "NULL".to_string() } else {
                format!("now() - interval '{minutes_ago} minutes' + interval '{hours} hours'")
            };
            // Some amounts missing, a few not a number (never counted), and
            // some regions missing (a distinct value that is NULL).
            let amount = match rng.below(40) {
                0..=2 => "NULL".into(),
                3 => "'NaN'".into(),
                _ => format!("{}.{:02}", rng.below(500), rng.below(100)),
            };
            let region = match rng.below(10) {
                0 => "NULL".to_string(),
                r => format!("'{}'", ["north", "south", "west", "east"][r as usize % 4]),
            };
            let ok = rng.below(3) > 0;
            format!("('{partner}', now() - interval '{minutes_ago} minutes', {done}, {amount}, {ok}, {region})")
        })
        .collect();
    format!(
        "INSERT INTO {table} (partner_id, at, done_at, amount, ok, region) VALUES {}",
        values.join(", ")
    )
}

fn mutate(rng: &mut Rng, table: &str) -> String {
    match rng.below(5) {
        0 => format!(
            "UPDATE {table} SET amount = amount + 1.25, ok = NOT ok WHERE ctid IN (SELECT ctid FROM {table} ORDER BY random() LIMIT {})",
            1 + rng.below(6)
        ),
        // Moves rows to another day, partner or out of the window.
        1 => format!(
            "UPDATE {table} SET at = at - interval '{} hours', partner_id = 'P{}' WHERE ctid IN (SELECT ctid FROM {table} ORDER BY random() LIMIT {})",
            rng.below(24 * 45),
            rng.below(5),
            1 + rng.below(4)
        ),
        2 => format!(
            "UPDATE {table} SET done_at = at + interval '{} minutes' WHERE done_at IS NULL",
            rng.below(3000)
        ),
        3 => format!(
            "DELETE FROM {table} WHERE ctid IN (SELECT ctid FROM {table} ORDER BY random() LIMIT {})",
            1 + rng.below(5)
        ),
        _ => format!(
            "UPDATE {table} SET region = 'west' WHERE ctid IN (SELECT ctid FROM {table} ORDER BY random() LIMIT 2)"
        ),
    }
}

#[tokio::test]
async fn incremental_refreshes_equal_a_full_recompute_after_every_change() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    for seed in [7u64, 1_234, 99_991] {
        let mut bed = setup(&testbed).await?;
        let mut rng = Rng(seed);
        let table = format!("\"{}\".\"visits\"", bed.target.schema);
        let mut refresher = pg_admin(&testbed).await?;
        let mut writer = pg_admin(&testbed).await?;
        let late = pg_admin(&testbed).await?;

        let path = finish_refresh(begin_refresh(&mut refresher, &bed).await?, &bed).await?;
        assert_eq!(
            path,
            RefreshPath::Full,
            "the first refresh builds everything"
        );
        let mut incremental = 0;
        for step in 0..40 {
            let context = format!("seed {seed}, step {step}");
            let n = 1 + rng.below(30);
            bed.admin
                .batch_execute(&insert_rows(&mut rng, n, &table))
                .await?;
            for _ in 0..rng.below(3) {
                bed.admin.batch_execute(&mutate(&mut rng, &table)).await?;
            }
            if step % 7 == 3 {
                // A writer that started first commits after a later writer
                // and after a refresh has taken its snapshot.
                let tx = writer.transaction().await?;
                tx.batch_execute(&insert_rows(&mut rng, 3, &table)).await?;
                late.batch_execute(&insert_rows(&mut rng, 2, &table))
                    .await?;
                let refresh = begin_refresh(&mut refresher, &bed).await?;
                refresh.batch_execute("SELECT 1").await?;
                tx.batch_execute(&mutate(&mut rng, &table)).await?;
                tx.commit().await?;
                finish_refresh(refresh, &bed).await?;
                // That refresh saw neither the late commit nor the update;
                // the next one must count each exactly once.
                finish_refresh(begin_refresh(&mut refresher, &bed).await?, &bed).await?;
            } else if step == 25 {
                bed.admin
                    .batch_execute(&format!("TRUNCATE {table}"))
                    .await?;
                bed.admin
                    .batch_execute(&insert_rows(&mut rng, 20, &table))
                    .await?;
                let path = finish_refresh(begin_refresh(&mut refresher, &bed).await?, &bed).await?;
                assert_eq!(path, RefreshPath::Full, "{context}: a truncation rebuilds");
            } else {
                let path = finish_refresh(begin_refresh(&mut refresher, &bed).await?, &bed).await?;
                incremental += usize::from(path == RefreshPath::Incremental);
            }
            let diff = differences(&bed).await?;
            assert!(diff.is_empty(), "{context}: {diff:#?}");
        }
        assert!(
            incremental >= 30,
            "seed {seed}: the refreshes ran incrementally ({incremental})"
        );
        // Nothing changed: nothing to do.
        let path = finish_refresh(begin_refresh(&mut refresher, &bed).await?, &bed).await?;
        assert_eq!(path, RefreshPath::Unchanged);

        // The values over the windows match the metrics computed directly.
        let names = DerivedNames::new(&bed.key);
        let results = format!("\"{}\".\"{}\"", bed.target.schema, names.results);
        for c in compile::compile(&bed.spec)? {
            let direct = bed.admin.query(&c.direct_select(&table), &[]).await?;
            for row in direct {
                let (partner, want): (Option<String>, Option<f64>) = (row.get(0), row.get(1));
                let got: Option<f64> = bed
                    .admin
                    .query_opt(
                        &format!(
                            "SELECT value FROM {results} WHERE refreshed_at = (SELECT max(refreshed_at) FROM {results}) \
                             AND metric = $1 AND partner IS NOT DISTINCT FROM $2 AND dimensions = '{{}}'::jsonb"
                        ),
                        &[&c.name, &partner],
                    )
                    .await?
                    .and_then(|r| r.get(0));
                let tolerance = if c.percentile.is_some() { 0.0101 } else { 1e-9 };
                match (want, got) {
                    (Some(w), Some(g)) => assert!(
                        (w - g).abs() <= tolerance * w.abs().max(1.0),
                        "seed {seed}: {} for {partner:?}: direct {w}, maintained {g}",
                        c.name
                    ),
                    (w, g) => assert_eq!(
                        w.is_some(),
                        g.is_some(),
                        "seed {seed}: {} for {partner:?}",
                        c.name
                    ),
                }
            }
        }
        teardown(&bed).await?;
        bed.admin = pg_admin(&testbed).await?;
    }
    Ok(())
}

/// A refresh that changed something re-derives a slice of the window table
/// from the rollup, and random rollup keys from raw rows: drift in either
/// is counted (and what was checked repaired), never silent.
#[tokio::test]
async fn drift_in_the_window_or_the_rollup_is_found_and_counted() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let bed = setup(&testbed).await?;
    let mut rng = Rng(5);
    let table = format!("\"{}\".\"visits\"", bed.target.schema);
    let names = DerivedNames::new(&bed.key);
    let s = format!("\"{}\"", bed.target.schema);
    let mut refresher = pg_admin(&testbed).await?;
    let refresh = async |refresher: &mut Client| -> anyhow::Result<sql::RefreshReport> {
        let tx = begin_refresh(refresher, &bed).await?;
        sql::ensure(&tx, &bed.target, &bed.key, &bed.spec).await?;
        let report = sql::refresh(&tx, &bed.target, &bed.key, &bed.spec, 4).await?;
        tx.commit().await?;
        Ok(report)
    };
    assert_eq!(refresh(&mut refresher).await?.path, RefreshPath::Full);
    bed.admin
        .batch_execute(&insert_rows(&mut rng, 200, &table))
        .await?;
    assert_eq!(refresh(&mut refresher).await?.mismatched_buckets, 0);

    // Every window row counts one row too many. A refresh checks one random
    // slice; a slice of a window merged again in that refresh (a minimum
    // or maximum that changed, an hourly window that moved on) agrees, so
    // a few refreshes may pass before a drifted one is picked.
    bed.admin
        .batch_execute(&format!("UPDATE {s}.\"{}\" SET n = n + 1", names.window))
        .await?;
    let mut found = 0;
    for _ in 0..30 {
        bed.admin
            .batch_execute(&insert_rows(&mut rng, 1, &table))
            .await?;
        let report = refresh(&mut refresher).await?;
        assert_eq!(report.path, RefreshPath::Incremental);
        assert!(report.mismatched_buckets <= 1, "{report:?}");
        found += report.mismatched_buckets;
        if found > 0 {
            break;
        }
    }
    assert_eq!(found, 1, "no refresh found the drifted window");

    // Windows merged again from the rollup (as when they move on) agree
    // with it.
    bed.admin
        .batch_execute(&format!(
            "DELETE FROM {s}.\"{}\" WHERE key LIKE 'win:%'",
            names.state
        ))
        .await?;
    bed.admin
        .batch_execute(&insert_rows(&mut rng, 1, &table))
        .await?;
    let report = refresh(&mut refresher).await?;
    assert_eq!(report.mismatched_buckets, 0, "{report:?}");
    assert!(differences(&bed).await?.is_empty());

    // Every rollup row counts one row too many: every sampled key differs.
    bed.admin
        .batch_execute(&format!("UPDATE {s}.\"{}\" SET n = n + 1", names.rollup))
        .await?;
    bed.admin
        .batch_execute(&insert_rows(&mut rng, 1, &table))
        .await?;
    let report = refresh(&mut refresher).await?;
    assert!(report.mismatched_buckets >= 1, "{report:?}");

    // A schema change by an earlier transaction asks the next refresh to
    // rebuild once more, and only once.
    bed.admin
        .batch_execute(&format!(
            "INSERT INTO {s}.\"{}\" (key, value) VALUES ('{}', '1')",
            names.state,
            sql::sources::REBUILD_AFTER
        ))
        .await?;
    assert_eq!(refresh(&mut refresher).await?.path, RefreshPath::Full);
    assert!(differences(&bed).await?.is_empty());
    bed.admin
        .batch_execute(&insert_rows(&mut rng, 1, &table))
        .await?;
    assert_eq!(
        refresh(&mut refresher).await?.path,
        RefreshPath::Incremental
    );
    teardown(&bed).await?;
    Ok(())
}

/// A full rebuild replaces the rollup and window tables whole, unless the
/// tenant (who owns the schema) made something that depends on them: a
/// view, a grant. Then they are emptied and filled in place, and what the
/// tenant made stays.
#[tokio::test]
async fn a_full_rebuild_keeps_what_the_tenant_built_on_the_derived_tables() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let bed = setup(&testbed).await?;
    let mut rng = Rng(11);
    let table = format!("\"{}\".\"visits\"", bed.target.schema);
    let names = DerivedNames::new(&bed.key);
    let s = format!("\"{}\"", bed.target.schema);
    let (rollup, window) = (
        format!("{s}.\"{}\"", names.rollup),
        format!("{s}.\"{}\"", names.window),
    );
    let mut refresher = pg_admin(&testbed).await?;
    let full_rebuild = async |refresher: &mut Client| -> anyhow::Result<()> {
        // A changed source (as after a retype) asks for one.
        bed.admin
            .batch_execute(&format!(
                "INSERT INTO {s}.\"{}\" (key, value) VALUES ('{}', '1') \
                 ON CONFLICT (key) DO UPDATE SET value = '1'",
                names.state,
                sql::sources::REBUILD_AFTER
            ))
            .await?;
        let tx = begin_refresh(refresher, &bed).await?;
        assert_eq!(finish_refresh(tx, &bed).await?, RefreshPath::Full);
        anyhow::ensure!(differences(&bed).await?.is_empty(), "rebuilt tables differ");
        Ok(())
    };
    let oid = async |table: &str| -> anyhow::Result<u32> {
        Ok(bed
            .admin
            .query_one(&format!("SELECT '{table}'::regclass::oid"), &[])
            .await?
            .get(0))
    };
    let tx = begin_refresh(&mut refresher, &bed).await?;
    finish_refresh(tx, &bed).await?;
    bed.admin
        .batch_execute(&insert_rows(&mut rng, 300, &table))
        .await?;

    // Nothing depends on them: replaced.
    let before = (oid(&rollup).await?, oid(&window).await?);
    full_rebuild(&mut refresher).await?;
    let after = (oid(&rollup).await?, oid(&window).await?);
    assert!(before.0 != after.0 && before.1 != after.1, "not replaced");

    // A view on the rollup and a grant on the window: filled in place.
    bed.admin
        .batch_execute(&format!(
            "SET ROLE \"{role}\"; CREATE VIEW {s}.tenant_view AS SELECT metric, sum(n) AS n FROM {rollup} GROUP BY metric; \
             GRANT SELECT ON {window} TO PUBLIC; RESET ROLE",
            role = bed.target.role
        ))
        .await?;
    bed.admin
        .batch_execute(&insert_rows(&mut rng, 300, &table))
        .await?;
    full_rebuild(&mut refresher).await?;
    assert_eq!((oid(&rollup).await?, oid(&window).await?), after);
    let viewed: i64 = bed
        .admin
        .query_one(&format!("SELECT sum(n)::bigint FROM {s}.tenant_view"), &[])
        .await?
        .get(0);
    let counted: i64 = bed
        .admin
        .query_one(&format!("SELECT sum(n)::bigint FROM {rollup}"), &[])
        .await?
        .get(0);
    assert_eq!(viewed, counted);
    let granted: bool = bed
        .admin
        .query_one(
            &format!("SELECT has_table_privilege('public', '{window}', 'SELECT')"),
            &[],
        )
        .await?
        .get(0);
    assert!(granted, "the tenant's grant on the window table was lost");
    teardown(&bed).await?;
    Ok(())
}
