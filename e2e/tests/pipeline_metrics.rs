//! Both example pipelines over a realistic data set written with the
//! tenant's own credentials: status, the result table and `/metrics` carry
//! the values computed independently here, in Rust.

use std::time::Duration;

use kube::api::{Api, DeleteParams};
use partnerplane::api::MetricPipeline;
use partnerplane_e2e::metric_oracle::{self, Row};
use partnerplane_e2e::pipelines::apply;
use partnerplane_e2e::pipelines::{self, example, is, refresh_now, tenant_session, wait_pipeline};
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{Operator, Testbed, unique_name, wait_condition};
use serde_json::json;

const EXAMPLES: [(&str, &str); 2] = [
    (
        "examples/manufacturing-service-network/service-delivery-pipeline.yaml",
        "northwind",
    ),
    (
        "examples/logistics-reseller-network/reseller-scorecard-pipeline.yaml",
        "contoso",
    ),
];

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn example_pipelines_report_the_values_computed_from_the_rows() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-values"), &[]).await?;
    let mut tenants = vec![];
    for (index, (path, short)) in EXAMPLES.iter().enumerate() {
        let tenant = unique_name(short);
        let namespace = format!("ptn-{tenant}");
        apply(
            &client,
            &[operator.tenant(
                &tenant,
                json!({"displayName": short, "tier": "Standard", "secrets": {"store": "Both"}}),
            )],
        )
        .await?;
        tenants.push(tenant.clone());
        wait_condition(&client, &tenant, "Ready", "True", Duration::from_secs(90)).await?;

        let manifest = example(path, &namespace, &operator)?;
        let name = manifest["metadata"]["name"].as_str().unwrap().to_string();
        let spec: partnerplane::api::MetricPipelineSpec =
            serde_json::from_value(manifest["spec"].clone())?;
        apply(&client, &[manifest]).await?;
        // The first refresh makes the source tables; rows come afterwards,
        // as a tenant's systems would write them.
        let first = wait_pipeline(
            &client,
            &namespace,
            &name,
            "Ready",
            Duration::from_secs(90),
            |p| is(p, "Ready", "True"),
        )
        .await?;
        let status = first.status.clone().unwrap();
        assert_eq!(
            status.source_tables.len(),
            spec.sources.len(),
            "{:?}",
            status.source_tables
        );

        let (session, _schema) = tenant_session(&testbed, &client, &namespace).await?;
        let at = now();
        let mut data: Vec<(String, Vec<Row>)> = vec![];
        for (i, source) in spec.sources.iter().enumerate() {
            let rows = pipelines::generate(source, 600, 120, at, (index * 10 + i) as u64 + 7);
            pipelines::insert(&session, source, &rows).await?;
            data.push((source.name.as_str().to_string(), rows));
        }
        let refreshed = refresh_now(&client, &namespace, &name).await?;
        let status = refreshed.status.clone().unwrap();
        let results =
            pipelines::latest_results(&session, status.result_table.as_deref().unwrap()).await?;
        let exported = operator.metrics().await?;
        let when = now();
        for metric in &spec.metrics {
            let source = spec
                .sources
                .iter()
                .find(|s| s.name == metric.source)
                .unwrap();
            let rows = &data
                .iter()
                .find(|(n, _)| n == source.name.as_str())
                .unwrap()
                .1;
            let expected = metric_oracle::evaluate(
                metric,
                source.partner_column.as_str(),
                source.time_column.as_str(),
                rows,
                when,
            );
            let reported = status
                .metrics
                .iter()
                .find(|m| m.name == metric.name)
                .unwrap_or_else(|| panic!("{} missing from status", metric.name.as_str()));
            let name_ = metric.name.as_str();
            let (Some(want), Some(got)) = (expected.value, reported.value) else {
                assert_eq!(
                    expected.value.is_some(),
                    reported.value.is_some(),
                    "{name_}: {expected:?} vs {reported:?}"
                );
                continue;
            };
            assert!(
                metric_oracle::agrees(metric, want, got),
                "{name_}: expected {want}, status says {got}"
            );
            assert_eq!(
                reported.objective_met,
                metric_oracle::meets(metric, got),
                "{name_}"
            );
            // The result table holds the same numbers as status.
            let overall = results.get(&(name_.to_string(), None)).copied();
            assert_eq!(overall, Some(got), "{name_}: result table vs status");
            for (partner, want) in &expected.partners {
                let got = results
                    .get(&(name_.to_string(), Some(partner.clone())))
                    .unwrap_or_else(|| panic!("{name_}/{partner} missing from the result table"));
                assert!(
                    metric_oracle::agrees(metric, *want, *got),
                    "{name_}/{partner}: expected {want}, got {got}"
                );
            }
            // Worst partners: breaching ones only, worst first, at most 10.
            if let Some(objective) = &metric.objective {
                let mut breaching: Vec<(&String, &f64)> = expected
                    .partners
                    .iter()
                    .filter(|(_, v)| metric_oracle::meets(metric, **v) == Some(false))
                    .collect();
                assert!(reported.breaches.len() <= 10);
                assert_eq!(reported.breaches.len(), breaching.len().min(10), "{name_}");
                // Worst first; partners with equal values in name order.
                breaching.sort_by(|a, b| {
                    let order = a.1.total_cmp(b.1);
                    let order =
                        if objective.comparison == partnerplane::api::metric::Comparison::AtMost {
                            order.reverse()
                        } else {
                            order
                        };
                    order.then_with(|| a.0.cmp(b.0))
                });
                let reported_order: Vec<&str> = reported
                    .breaches
                    .iter()
                    .map(|b| b.partner.as_str())
                    .collect();
                let expected_order: Vec<&str> =
                    breaching.iter().take(10).map(|(p, _)| p.as_str()).collect();
                assert_eq!(
                    reported_order, expected_order,
                    "{name_}: worst partners first"
                );
            }
            // Prometheus carries the value with bounded labels.
            let line = exported
                .lines()
                .find(|l| {
                    l.starts_with("partnerplane_metric_value{")
                        && l.contains(&format!("metric=\"{name_}\""))
                        && l.contains(&format!("pipeline=\"{name}\""))
                        && l.contains(&format!("namespace=\"{namespace}\""))
                })
                .unwrap_or_else(|| panic!("{name_} missing from /metrics"));
            assert!(
                !line.contains("partner=\""),
                "no per-partner labels: {line}"
            );
            let exported_value: f64 = line.rsplit(' ').next().unwrap().parse()?;
            assert!(
                (exported_value - got).abs() <= 1e-9 * got.abs().max(1.0),
                "{line} vs {got}"
            );
        }
        assert!(status.last_refresh_time.is_some());
        assert!(status.objectives_met.is_some());

        // Deleting the pipeline keeps the tenant's rows (sourceDeletionPolicy Retain).
        Api::<MetricPipeline>::namespaced(client.clone(), &namespace)
            .delete(&name, &DeleteParams::default())
            .await?;
        partnerplane_e2e::wait_until("the pipeline to go", Duration::from_secs(60), || {
            let api = Api::<MetricPipeline>::namespaced(client.clone(), &namespace);
            let name = name.clone();
            async move { Ok(api.get_opt(&name).await?.is_none().then_some(())) }
        })
        .await?;
        let source = &spec.sources[0];
        let kept: i64 = session
            .query_one(
                &format!("SELECT count(*) FROM \"{}\"", source.name.as_str()),
                &[],
            )
            .await?
            .get(0);
        assert_eq!(kept, 600, "source rows survive the pipeline's deletion");
        let derived: i64 = session
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = (current_schemas(false))[1] AND c.relname LIKE '\\_pp\\_%' AND c.relkind = 'r'",
                &[],
            )
            .await?
            .get(0);
        assert_eq!(derived, 0, "derived tables are dropped with the pipeline");
    }
    delete_tenants(&client, &tenants).await?;
    Ok(())
}

/// A Ready tenant of `operator`'s named after `short`, and its namespace.
async fn ready_tenant(
    client: &kube::Client,
    operator: &Operator,
    short: &str,
) -> anyhow::Result<(String, String)> {
    let tenant = unique_name(short);
    apply(
        client,
        &[operator.tenant(
            &tenant,
            json!({"displayName": short, "secrets": {"store": "Both"}}),
        )],
    )
    .await?;
    wait_condition(client, &tenant, "Ready", "True", Duration::from_secs(90)).await?;
    let namespace = format!("ptn-{tenant}");
    Ok((tenant, namespace))
}

/// The result table keeps every refresh's rows for a day, then only the
/// last refresh of each hour, for 30 days: a history that does not grow
/// with every refresh, and still shows each hour.
#[tokio::test]
async fn the_result_table_keeps_each_refresh_for_a_day_then_each_hours_last() -> anyhow::Result<()>
{
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-keep"), &[]).await?;
    let (tenant, namespace) = ready_tenant(&client, &operator, "keep").await?;
    apply(
        &client,
        &[pipelines::minimal("p", &namespace, &operator.shard)],
    )
    .await?;
    let first = wait_pipeline(
        &client,
        &namespace,
        "p",
        "Ready",
        Duration::from_secs(90),
        |p| is(p, "Ready", "True"),
    )
    .await?;
    let table = first.status.unwrap().result_table.unwrap();
    let (session, _) = tenant_session(&testbed, &client, &namespace).await?;
    let refreshes = || async {
        anyhow::Ok(
            session
                .query(
                    &format!("SELECT DISTINCT refreshed_at::text FROM {table}"),
                    &[],
                )
                .await?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<std::collections::BTreeSet<String>>(),
        )
    };
    let operators_own = refreshes().await?;

    // Rows as earlier refreshes left them, at (hours from this hour,
    // minutes past it): three in one hour three days ago, two in one two
    // days ago, one 40 days ago, two in one hour two hours ago.
    let at = "date_trunc('hour', now()) + h * interval '1 hour' + m * interval '1 minute'";
    let written: Vec<(i32, i32, String)> = session
        .query(
            &format!(
                "WITH e (h, m) AS (VALUES (-75, 5), (-75, 20), (-75, 50), (-50, 10), (-50, 40), (-960, 0), (-2, 5), (-2, 25)), \
                 written AS (INSERT INTO {table} (refreshed_at, metric, partner, dimensions, value, samples) \
                 SELECT {at}, 'revenue', NULL, '{{}}', 1, 1 FROM e) \
                 SELECT h, m, ({at})::text FROM e"
            ),
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(written.len(), 8);
    // As if they had come since the previous pass of thinning: a pass
    // thins only rows that came past the one-day mark since the last one.
    let state = table.replace("_results\"", "_state\"");
    let moved = session
        .execute(
            &format!(
                "UPDATE {state} SET value = (now() - interval '4 days')::text \
                 WHERE key = 'results:thinned-until'"
            ),
            &[],
        )
        .await?;
    assert_eq!(moved, 1, "the first refresh records where thinning got to");

    // A new row makes the next refresh write results, and thin.
    session
        .batch_execute("INSERT INTO orders (partner_id, opened_at, amount) VALUES ('P1', now(), 5)")
        .await?;
    refresh_now(&client, &namespace, "p").await?;
    let left = refreshes().await?;
    let kept: Vec<(i32, i32)> = written
        .iter()
        .filter(|(_, _, t)| left.contains(t))
        .map(|(h, m, _)| (*h, *m))
        .collect();
    assert_eq!(
        kept,
        vec![(-75, 50), (-50, 40), (-2, 5), (-2, 25)],
        "each hour's last refresh older than a day, every refresh of the last day"
    );
    // The operator's own refreshes of the last day stay, and the new one.
    assert!(left.is_superset(&operators_own), "{left:?}");
    assert_eq!(left.len(), kept.len() + operators_own.len() + 1, "{left:?}");
    let latest = pipelines::latest_results(&session, &table).await?;
    assert_eq!(latest.get(&("revenue".to_string(), None)), Some(&5.0));
    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}

/// Rows at the edges are counted as SQL would count them, or not at all:
/// numerics equal in SQL are one partner and one distinct value, a row
/// without a partner id counts for no one, a count over no rows is 0 (and
/// can breach), a number no float8 holds is left out, and a row whose
/// transaction number was written by hand past any transaction that ran is
/// not counted again at each refresh.
#[tokio::test]
async fn awkward_rows_are_counted_as_sql_counts_them_or_not_at_all() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-edge"), &[]).await?;
    let (tenant, namespace) = ready_tenant(&client, &operator, "edge").await?;
    let columns = |partner: &str| {
        json!([{"name": "p", "type": partner}, {"name": "t", "type": "Timestamp"},
               {"name": "x", "type": "Numeric"}])
    };
    let metric = |name: &str, source: &str, aggregate: serde_json::Value| {
        json!({"name": name, "domain": "ServiceDelivery", "source": source,
               "aggregate": aggregate, "window": "7d"})
    };
    let mut count = metric("cnt", "ev", json!({"kind": "Count"}));
    count["objective"] = json!({"comparison": "AtLeast", "target": 3.0});
    let manifest = json!({
        "apiVersion": "partnerplane.io/v1alpha1",
        "kind": "MetricPipeline",
        "metadata": {"name": "edge", "namespace": &namespace,
                     "labels": {"partnerplane.io/shard": &operator.shard}},
        "spec": {
            "refreshInterval": "1h",
            "sources": [
                {"name": "ev", "partnerColumn": "p", "timeColumn": "t", "columns": columns("Text")},
                {"name": "np", "partnerColumn": "p", "timeColumn": "t", "columns": columns("Numeric")},
            ],
            "metrics": [
                count,
                metric("dx", "ev", json!({"kind": "CountDistinct", "column": "x"})),
                metric("lo", "np", json!({"kind": "Minimum", "column": "x"})),
            ],
        }
    });
    apply(&client, &[manifest]).await?;
    let first = wait_pipeline(
        &client,
        &namespace,
        "edge",
        "Ready",
        Duration::from_secs(90),
        |p| is(p, "Ready", "True"),
    )
    .await?;
    let value = |p: &MetricPipeline, name: &str| {
        let m = p
            .status
            .as_ref()
            .unwrap()
            .metrics
            .iter()
            .find(|m| m.name.as_str() == name);
        (m.and_then(|m| m.value), m.and_then(|m| m.objective_met))
    };
    assert_eq!(
        value(&first, "cnt"),
        (Some(0.0), Some(false)),
        "no rows: a count of 0, breached"
    );
    let table = first.status.unwrap().result_table.unwrap();

    let (session, _) = tenant_session(&testbed, &client, &namespace).await?;
    session
        .batch_execute(
            "INSERT INTO ev (p, t, x) VALUES ('A', now() - interval '1 hour', 1), \
             ('A', now() - interval '1 hour', 1.0), ('A', now() - interval '1 hour', 1.00), \
             ('', now() - interval '1 hour', 5);
             INSERT INTO ev (p, t, x, _pp_xid) VALUES ('B', now() - interval '1 hour', 2, '900000000');
             INSERT INTO np (p, t, x) VALUES (1.0, now() - interval '1 hour', 10), (1.00, now() - interval '1 hour', 20);",
        )
        .await?;
    let refreshed = refresh_now(&client, &namespace, "edge").await?;
    assert_eq!(value(&refreshed, "cnt"), (Some(3.0), Some(true)));
    assert_eq!(
        value(&refreshed, "dx").0,
        Some(1.0),
        "1, 1.0 and 1.00 are one value"
    );
    let results = pipelines::latest_results(&session, &table).await?;
    let partners = |metric: &str| -> Vec<(String, f64)> {
        results
            .iter()
            .filter(|((m, p), _)| m == metric && p.is_some())
            .map(|((_, p), v)| (p.clone().unwrap(), *v))
            .collect()
    };
    assert_eq!(
        partners("cnt"),
        vec![("A".to_string(), 3.0)],
        "no partner '', B's row not seen"
    );
    assert_eq!(
        partners("lo"),
        vec![("1".to_string(), 10.0)],
        "1.0 and 1.00 are one partner"
    );

    // The minimum's partner key is recomputed after an update; numbers no
    // float8 holds are left out rather than stopping the refresh; later
    // refreshes do not count the hand-numbered row either.
    session
        .batch_execute(
            "UPDATE np SET x = 5 WHERE x = 10; \
             INSERT INTO np (p, t, x) VALUES (1, now() - interval '1 hour', -1e309), \
             (1, now() - interval '1 hour', 1e-400); \
             INSERT INTO ev (p, t, x) VALUES ('A', now() - interval '1 hour', 2)",
        )
        .await?;
    let refreshed = refresh_now(&client, &namespace, "edge").await?;
    assert_eq!(value(&refreshed, "lo").0, Some(5.0));
    assert_eq!(value(&refreshed, "cnt").0, Some(4.0));
    assert_eq!(value(&refreshed, "dx").0, Some(2.0));
    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}
