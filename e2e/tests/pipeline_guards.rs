//! What a MetricPipeline may not do: lose a source's data without being
//! told to, run outside a tenant's namespace, reference columns that do not
//! exist, reach another tenant's tables, or be left counting wrong by a
//! disabled change capture.

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use partnerplane::api::MetricPipeline;
use partnerplane_e2e::pipelines::{
    REFRESH_REQUESTED, condition, is, refresh_now, tenant_session, wait_pipeline,
};
use partnerplane_e2e::pipelines::{apply, apply_ready};
use partnerplane_e2e::tenants::{delete_tenants, sqlstate};
use partnerplane_e2e::{Operator, Testbed, unique_name, wait_condition};
use serde_json::{Value, json};

fn pipeline(name: &str, namespace: &str, shard: &str, sources: Value, metrics: Value) -> Value {
    json!({
        "apiVersion": "partnerplane.io/v1alpha1",
        "kind": "MetricPipeline",
        "metadata": {"name": name, "namespace": namespace, "labels": {"partnerplane.io/shard": shard}},
        "spec": {"refreshInterval": "1h", "sources": sources, "metrics": metrics}
    })
}

fn orders(extra: Value) -> Value {
    let mut columns = vec![
        json!({"name": "partner_id", "type": "Text"}),
        json!({"name": "opened_at", "type": "Timestamp"}),
        json!({"name": "amount", "type": "Numeric"}),
    ];
    if let Value::Array(more) = extra {
        columns.extend(more);
    }
    json!([{"name": "orders", "partnerColumn": "partner_id", "timeColumn": "opened_at", "columns": columns}])
}

fn revenue() -> Value {
    json!([{"name": "revenue", "domain": "RevenueAttribution", "source": "orders",
            "aggregate": {"kind": "Sum", "column": "amount"}, "window": "30d"}])
}

async fn ready_tenant(
    client: &kube::Client,
    operator: &Operator,
    prefix: &str,
) -> anyhow::Result<(String, String)> {
    let tenant = unique_name(prefix);
    apply(
        client,
        &[operator.tenant(
            &tenant,
            json!({"displayName": prefix, "tier": "Standard", "secrets": {"store": "Both"}}),
        )],
    )
    .await?;
    wait_condition(client, &tenant, "Ready", "True", Duration::from_secs(90)).await?;
    let namespace = format!("ptn-{tenant}");
    Ok((tenant, namespace))
}

#[tokio::test]
async fn a_destructive_source_change_is_refused_naming_the_column_and_data_stays()
-> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-guard"), &[]).await?;
    let (tenant, ns) = ready_tenant(&client, &operator, "guard").await?;
    let shard = operator.shard.clone();
    apply(
        &client,
        &[pipeline(
            "p",
            &ns,
            &shard,
            orders(json!([{"name": "region", "type": "Text"}])),
            revenue(),
        )],
    )
    .await?;
    wait_pipeline(&client, &ns, "p", "Ready", Duration::from_secs(90), |p| {
        is(p, "Ready", "True")
    })
    .await?;
    let (session, _) = tenant_session(&testbed, &client, &ns).await?;
    session
        .batch_execute("INSERT INTO orders (partner_id, opened_at, amount, region) VALUES ('P1', now(), 10.5, 'north'), ('P2', now(), 4.5, 'south')")
        .await?;

    // An additive change (a new column) is applied in place.
    apply(
        &client,
        &[pipeline(
            "p",
            &ns,
            &shard,
            orders(
                json!([{"name": "region", "type": "Text"}, {"name": "channel", "type": "Text"}]),
            ),
            revenue(),
        )],
    )
    .await?;
    wait_pipeline(
        &client,
        &ns,
        "p",
        "Ready with the new column",
        Duration::from_secs(60),
        |p| is(p, "Ready", "True"),
    )
    .await?;
    session.batch_execute("INSERT INTO orders (partner_id, opened_at, amount, channel) VALUES ('P3', now(), 1, 'web')").await?;

    // Dropping `region` and retyping `amount` lose data: refused.
    let retyped = json!([{"name": "partner_id", "type": "Text"}, {"name": "opened_at", "type": "Timestamp"},
                          {"name": "amount", "type": "Text"}, {"name": "channel", "type": "Text"}]);
    apply(&client, &[pipeline("p", &ns, &shard,
        json!([{"name": "orders", "partnerColumn": "partner_id", "timeColumn": "opened_at", "columns": retyped}]),
        json!([{"name": "orders_seen", "domain": "RevenueAttribution", "source": "orders", "aggregate": {"kind": "Count"}}]))]).await?;
    let stalled = wait_pipeline(&client, &ns, "p", "Stalled", Duration::from_secs(60), |p| {
        is(p, "Stalled", "True")
    })
    .await?;
    let ready = condition(&stalled, "Ready").unwrap();
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "SourceChangeRefused", "{}", ready.message);
    assert!(
        ready.message.contains("region") || ready.message.contains("amount"),
        "names the column: {}",
        ready.message
    );
    let sources = condition(&stalled, "SourcesReady").unwrap();
    assert_eq!(sources.status, "False");
    partnerplane_e2e::events::wait_event(
        &client,
        "p",
        "SourceChangeRefused",
        Duration::from_secs(30),
    )
    .await?;
    let rows: Vec<(String, Option<String>)> = session
        .query(
            "SELECT amount::text, region FROM orders ORDER BY partner_id",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        [
            ("10.5".into(), Some("north".into())),
            ("4.5".into(), Some("south".into())),
            ("1".into(), None)
        ]
    );

    // Referencing a column that does not exist is refused with the field path.
    apply(&client, &[pipeline("q", &ns, &shard, orders(json!([])),
        json!([{"name": "big", "domain": "RevenueAttribution", "source": "orders", "aggregate": {"kind": "Count"},
                "filters": [{"column": "nosuch", "operator": "Equals", "value": {"string": "x"}}]}]))]).await?;
    let q = wait_pipeline(&client, &ns, "q", "Stalled", Duration::from_secs(60), |p| {
        is(p, "Stalled", "True")
    })
    .await?;
    let ready = condition(&q, "Ready").unwrap();
    assert_eq!(ready.reason, "InvalidSpec");
    assert!(
        ready.message.contains("spec.metrics[0].filters[0].column"),
        "{}",
        ready.message
    );

    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}

#[tokio::test]
async fn a_pipeline_outside_a_tenant_namespace_is_stalled() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-orphan"), &[]).await?;
    let ns = unique_name("plain");
    apply(
        &client,
        &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})],
    )
    .await?;
    apply(
        &client,
        &[pipeline(
            "p",
            &ns,
            &operator.shard,
            orders(json!([])),
            revenue(),
        )],
    )
    .await?;
    let p = wait_pipeline(&client, &ns, "p", "Stalled", Duration::from_secs(60), |p| {
        is(p, "Stalled", "True")
    })
    .await?;
    assert_eq!(condition(&p, "Ready").unwrap().reason, "NoTenant");
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .delete(&ns, &Default::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_pipeline_reads_only_its_own_tenants_tables() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-iso"), &[]).await?;
    let (tenant_a, ns_a) = ready_tenant(&client, &operator, "iso-a").await?;
    let (tenant_b, ns_b) = ready_tenant(&client, &operator, "iso-b").await?;
    let shard = operator.shard.clone();
    for ns in [&ns_a, &ns_b] {
        apply(
            &client,
            &[pipeline("p", ns, &shard, orders(json!([])), revenue())],
        )
        .await?;
    }
    for ns in [&ns_a, &ns_b] {
        wait_pipeline(&client, ns, "p", "Ready", Duration::from_secs(90), |p| {
            is(p, "Ready", "True")
        })
        .await?;
    }
    let (a, schema_a) = tenant_session(&testbed, &client, &ns_a).await?;
    let (b, schema_b) = tenant_session(&testbed, &client, &ns_b).await?;
    a.batch_execute("INSERT INTO orders (partner_id, opened_at, amount) VALUES ('P1', now(), 1)")
        .await?;
    b.batch_execute(
        "INSERT INTO orders (partner_id, opened_at, amount) VALUES ('P1', now(), 1000)",
    )
    .await?;
    // A's credentials cannot read B's source table or its result table.
    let err = a
        .query(&format!("SELECT * FROM \"{schema_b}\".orders"), &[])
        .await
        .expect_err("A reads B's table");
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    let b_pipeline = refresh_now(&client, &ns_b, "p").await?;
    let result_b = b_pipeline.status.unwrap().result_table.unwrap();
    let err = a
        .query(&format!("SELECT * FROM {result_b}"), &[])
        .await
        .expect_err("A reads B's results");
    assert_eq!(sqlstate(&err), Some("42501"), "{err}");
    // Each pipeline sees only its own tenant's rows.
    let a_pipeline = refresh_now(&client, &ns_a, "p").await?;
    let value = |p: &MetricPipeline| p.status.as_ref().unwrap().metrics[0].value;
    assert_eq!(value(&a_pipeline), Some(1.0));
    let b_pipeline = refresh_now(&client, &ns_b, "p").await?;
    assert_eq!(value(&b_pipeline), Some(1000.0));

    // A's own code runs during A's refresh (a trigger on a table A owns). It
    // drops whatever role the session was switched to and tries B's table:
    // the session is A's own login, so it stays A, and B's table is refused.
    let result_a = a_pipeline
        .status
        .as_ref()
        .unwrap()
        .result_table
        .clone()
        .unwrap();
    a.batch_execute(&format!(
        "CREATE TABLE proof (session_role text, current_role_name text, superuser bool, read_b text);
         CREATE FUNCTION escalate() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE outcome text;
         BEGIN
           RESET ROLE;
           BEGIN
             PERFORM count(*) FROM \"{schema_b}\".orders;
             outcome := 'read';
           EXCEPTION WHEN OTHERS THEN outcome := SQLSTATE;
           END;
           INSERT INTO \"{schema_a}\".proof SELECT session_user, current_user, rolsuper, outcome
             FROM pg_roles WHERE rolname = current_user;
           RETURN NULL;
         END $$;
         CREATE TRIGGER escalate AFTER INSERT ON {result_a} FOR EACH STATEMENT EXECUTE FUNCTION escalate();
         INSERT INTO orders (partner_id, opened_at, amount) VALUES ('P1', now(), 2);"
    ))
    .await?;
    let refreshed = refresh_now(&client, &ns_a, "p").await?;
    assert_eq!(value(&refreshed), Some(3.0));
    let role_a: String = a.query_one("SELECT session_user::text", &[]).await?.get(0);
    let proof: Vec<(String, String, bool, String)> = a
        .query("SELECT * FROM proof", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        proof,
        vec![(role_a.clone(), role_a, false, "42501".to_string())],
        "the tenant's code ran as the tenant, and B's table refused it"
    );
    // No field of the spec can name another schema: identifiers are plain names.
    let api: Api<MetricPipeline> = Api::namespaced(client.clone(), &ns_a);
    let hostile = pipeline(
        "x",
        &ns_a,
        &shard,
        json!([{"name": format!("{schema_b}.orders"), "partnerColumn": "partner_id", "timeColumn": "opened_at",
                "columns": [{"name": "partner_id", "type": "Text"}, {"name": "opened_at", "type": "Timestamp"}]}]),
        json!([{"name": "n", "domain": "RevenueAttribution", "source": format!("{schema_b}.orders"), "aggregate": {"kind": "Count"}}]),
    );
    let err = api
        .patch(
            "x",
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&hostile),
        )
        .await
        .expect_err("a qualified name is refused");
    assert!(
        matches!(&err, kube::Error::Api(e) if e.code == 422),
        "{err}"
    );
    delete_tenants(&client, &[tenant_a, tenant_b]).await?;
    Ok(())
}

#[tokio::test]
async fn a_delete_tenant_with_a_pipeline_goes_with_its_tables() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-teardown"), &[]).await?;
    let tenant = unique_name("teardown");
    let ns = format!("ptn-{tenant}");
    apply(&client, &[operator.tenant(&tenant, json!({"displayName": "Teardown", "secrets": {"store": "Both"}, "deletionPolicy": "Delete"}))]).await?;
    wait_condition(&client, &tenant, "Ready", "True", Duration::from_secs(90)).await?;
    apply_ready(
        &client,
        pipeline("p", &ns, &operator.shard, orders(json!([])), revenue()),
    )
    .await?;
    let (session, schema) = tenant_session(&testbed, &client, &ns).await?;
    session
        .batch_execute("INSERT INTO orders (partner_id, opened_at, amount) VALUES ('P1', now(), 3)")
        .await?;
    refresh_now(&client, &ns, "p").await?;
    drop(session);

    // The tenant's teardown waits for the pipeline's own, then drops the schema.
    delete_tenants(&client, std::slice::from_ref(&tenant)).await?;
    let admin = partnerplane_e2e::tenants::pg_admin(&testbed).await?;
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1",
            &[&schema],
        )
        .await?
        .get(0);
    assert_eq!(left, 0, "the schema and its tables are gone");
    let pipelines: Api<MetricPipeline> = Api::namespaced(client.clone(), &ns);
    assert!(pipelines.get_opt("p").await?.is_none());
    Ok(())
}

/// One tenant's slow pipelines hold at most half of the controller's
/// workers: another tenant's refresh is answered while they still run.
#[tokio::test]
async fn a_tenants_slow_pipelines_do_not_hold_up_another_tenants() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-fair"), &[]).await?;
    let (tenant_a, ns_a) = ready_tenant(&client, &operator, "slow").await?;
    let (tenant_b, ns_b) = ready_tenant(&client, &operator, "quick").await?;
    let shard = operator.shard.clone();
    // As many slow pipelines as the operator has workers (its default 4).
    let slow: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
    // Each with a source of its own.
    let mut docs: Vec<Value> = slow
        .iter()
        .map(|name| {
            let mut doc = pipeline(name, &ns_a, &shard, orders(json!([])), revenue());
            doc["spec"]["sources"][0]["name"] = json!(format!("orders_{name}"));
            doc["spec"]["metrics"][0]["source"] = json!(format!("orders_{name}"));
            doc
        })
        .collect();
    docs.push(pipeline("p", &ns_b, &shard, orders(json!([])), revenue()));
    apply(&client, &docs).await?;
    let mut result_tables = vec![];
    for (ns, name) in slow
        .iter()
        .map(|n| (&ns_a, n))
        .chain([(&ns_b, &"p".to_string())])
    {
        let ready = wait_pipeline(&client, ns, name, "Ready", Duration::from_secs(90), |p| {
            is(p, "Ready", "True")
        })
        .await?;
        result_tables.push(ready.status.unwrap().result_table.unwrap());
    }
    // Each of A's refreshes now takes 15 s: its own trigger sleeps when
    // the refresh writes its results.
    let (a, _) = tenant_session(&testbed, &client, &ns_a).await?;
    a.batch_execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM pg_sleep(15); RETURN NULL; END $$;",
    )
    .await?;
    for table in &result_tables[..slow.len()] {
        a.batch_execute(&format!(
            "CREATE TRIGGER slow AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION slow()"
        ))
        .await?;
    }
    for name in &slow {
        a.batch_execute(&format!(
            "INSERT INTO orders_{name} (partner_id, opened_at, amount) VALUES ('P1', now(), 1)"
        ))
        .await?;
    }
    let token = "slow-1";
    let api_a: Api<MetricPipeline> = Api::namespaced(client.clone(), &ns_a);
    for name in &slow {
        api_a
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {REFRESH_REQUESTED: token}}})),
            )
            .await?;
    }
    // B's refresh is answered while A's run one after another.
    let (b, _) = tenant_session(&testbed, &client, &ns_b).await?;
    b.batch_execute("INSERT INTO orders (partner_id, opened_at, amount) VALUES ('P1', now(), 7)")
        .await?;
    let answered = refresh_now(&client, &ns_b, "p").await?;
    assert_eq!(answered.status.unwrap().metrics[0].value, Some(7.0));
    let mut a_answered = 0;
    for name in &slow {
        let p = api_a.get(name).await?;
        if p.status
            .and_then(|s| s.last_handled_refresh_request)
            .as_deref()
            == Some(token)
        {
            a_answered += 1;
        }
    }
    assert!(
        a_answered <= 2,
        "{a_answered} of A's slow refreshes ran before B's: A held more than half the workers"
    );
    for table in &result_tables[..slow.len()] {
        a.batch_execute(&format!("DROP TRIGGER slow ON {table}"))
            .await?;
    }
    delete_tenants(&client, &[tenant_a, tenant_b]).await?;
    Ok(())
}

/// A tenant (or its bulk loader) that disables the change capture trigger
/// of a source does not leave the metrics silently wrong: the next refresh
/// enables it again, rebuilds from the rows as they are, and says so.
#[tokio::test]
async fn a_disabled_change_capture_is_enabled_again_and_the_metrics_rebuilt() -> anyhow::Result<()>
{
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("mpl-capture"), &[]).await?;
    let (tenant, ns) = ready_tenant(&client, &operator, "capture").await?;
    apply_ready(
        &client,
        pipeline("p", &ns, &operator.shard, orders(json!([])), revenue()),
    )
    .await?;
    let (session, _) = tenant_session(&testbed, &client, &ns).await?;
    session
        .batch_execute(
            "INSERT INTO orders (partner_id, opened_at, amount) \
             SELECT 'P' || (i % 4), now() - i * interval '1 hour', i FROM generate_series(1, 20) i",
        )
        .await?;
    let revenue_of = |p: &MetricPipeline| {
        p.status
            .as_ref()
            .and_then(|s| s.metrics.first())
            .and_then(|m| m.value)
    };
    let p = refresh_now(&client, &ns, "p").await?;
    assert_eq!(revenue_of(&p), Some(210.0), "1 + 2 + … + 20");

    // Deletes and updates while the capture is off are logged nowhere.
    session
        .batch_execute(
            "ALTER TABLE orders DISABLE TRIGGER USER; \
             DELETE FROM orders WHERE amount > 15; \
             UPDATE orders SET amount = amount * 10 WHERE amount <= 2",
        )
        .await?;
    let p = refresh_now(&client, &ns, "p").await?;
    // 3 + … + 15, and 10 + 20 for the two updated rows.
    assert_eq!(revenue_of(&p), Some(147.0));
    let disabled: i64 = session
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass \
             AND NOT tgisinternal AND tgenabled NOT IN ('O', 'A')",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(disabled, 0, "the capture fires again");
    let event = partnerplane_e2e::events::wait_event(
        &client,
        "p",
        "ChangeCaptureRepaired",
        Duration::from_secs(30),
    )
    .await?;
    assert!(
        event.contains("orders") && event.contains("disabled"),
        "{event}"
    );

    // And what happens next is captured again: the refresh after the one
    // rebuild is incremental, from the one logged delete.
    refresh_now(&client, &ns, "p").await?;
    session
        .batch_execute("DELETE FROM orders WHERE amount = 20")
        .await?;
    let p = refresh_now(&client, &ns, "p").await?;
    assert_eq!(revenue_of(&p), Some(127.0));
    let refreshed = &condition(&p, "Refreshed").unwrap().message;
    assert!(refreshed.contains("from 1 changed row"), "{refreshed}");
    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}
