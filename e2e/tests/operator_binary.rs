//! The operator binary, run against the test bed: it serves its endpoints
//! and stops cleanly on SIGTERM, and `explain` prints runnable SQL.

use partnerplane_e2e::{Operator, Testbed, unique_name};

#[tokio::test]
async fn serves_health_and_metrics_and_exits_cleanly_on_sigterm() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    // `start` returns once /readyz answers 200.
    let operator = Operator::start(&testbed, &unique_name("binary"), &[]).await?;
    let body = operator.metrics().await?;
    assert!(body.contains("partnerplane_build_info"), "{body}");
    assert!(body.contains("partnerplane_tenants"), "{body}");
    assert!(
        operator.stop().await?,
        "the operator did not exit cleanly on SIGTERM"
    );
    Ok(())
}

/// `partnerplane explain` prints, for every metric of the example pipelines,
/// SQL that Postgres accepts, and refuses a pipeline naming a column that
/// does not exist with the field path.
#[tokio::test]
async fn explain_prints_runnable_sql_for_every_metric() -> anyhow::Result<()> {
    let testbed = partnerplane_e2e::Testbed::load()?;
    let admin = partnerplane_e2e::tenants::pg_admin(&testbed).await?;
    for example in [
        "examples/manufacturing-service-network/service-delivery-pipeline.yaml",
        "examples/logistics-reseller-network/reseller-scorecard-pipeline.yaml",
    ] {
        let path = partnerplane_e2e::repo_root().join(example);
        let out = tokio::process::Command::new(partnerplane_e2e::operator_binary()?)
            .args(["explain", "-f"])
            .arg(&path)
            .output()
            .await?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout)?;
        let doc = &partnerplane_e2e::load_documents(&path)?[0];
        let spec: partnerplane::api::MetricPipelineSpec =
            serde_json::from_value(doc["spec"].clone())?;
        for metric in &spec.metrics {
            assert!(
                text.contains(&format!("-- {} (", metric.name.as_str())),
                "{} missing",
                metric.name.as_str()
            );
        }
        // Every statement parses and plans against tables of the declared shape.
        let schema = partnerplane_e2e::unique_name("explain").replace('-', "_");
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await?;
        for source in &spec.sources {
            let columns: Vec<String> = source
                .columns
                .iter()
                .map(|c| {
                    format!(
                        "\"{}\" {}",
                        c.name.as_str(),
                        partnerplane::pipeline::sql::compile::sql_type(c.type_)
                    )
                })
                .collect();
            admin
                .batch_execute(&format!(
                    "CREATE TABLE {schema}.\"{}\" ({})",
                    source.name.as_str(),
                    columns.join(", ")
                ))
                .await?;
        }
        admin
            .batch_execute(&format!("SET search_path = {schema}"))
            .await?;
        for statement in text
            .split(";\n")
            .map(str::trim)
            .filter(|s| s.contains("SELECT"))
        {
            admin
                .query(&format!("EXPLAIN {statement}"), &[])
                .await
                .map_err(|e| anyhow::anyhow!("{e}: {statement}"))?;
        }
        admin
            .batch_execute(&format!("RESET search_path; DROP SCHEMA {schema} CASCADE"))
            .await?;
    }
    let bad = std::env::temp_dir().join(format!(
        "{}.yaml",
        partnerplane_e2e::unique_name("bad-pipeline")
    ));
    std::fs::write(
        &bad,
        "kind: MetricPipeline\nmetadata: {name: bad}\nspec:\n  sources: [{name: s, partnerColumn: p, timeColumn: t, columns: [{name: p, type: Text}, {name: t, type: Timestamp}]}]\n  metrics: [{name: m, domain: ServiceDelivery, source: s, aggregate: {kind: Count}, groupBy: [nosuch]}]\n",
    )?;
    let out = tokio::process::Command::new(partnerplane_e2e::operator_binary()?)
        .args(["explain", "-f"])
        .arg(&bad)
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.metrics[0].groupBy[0]"), "{stderr}");
    Ok(())
}
