//! MetricPipelines as the suites use them: example manifests placed in a
//! test's tenant namespace, realistic partner events written with the
//! tenant's own credentials, and waits on refreshes.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use kube::api::{Api, Patch, PatchParams};
use partnerplane::api::MetricPipeline;
use partnerplane::api::metric::{ColumnType, Source};
use serde_json::{Value, json};

use crate::metric_oracle::{Cell, Row};
use crate::operator::SHARD_LABEL;
use crate::{Operator, Testbed, load_documents, repo_root, tenants, wait_until};

/// The refresh annotation the operator answers at once.
pub const REFRESH_REQUESTED: &str = "partnerplane.io/refresh-requested-at";

/// An example pipeline's manifest, moved to `namespace` and to `operator`'s shard.
pub fn example(path: &str, namespace: &str, operator: &Operator) -> anyhow::Result<Value> {
    let mut doc = load_documents(&repo_root().join(path))?
        .into_iter()
        .find(|d| d["kind"] == "MetricPipeline")
        .context("no MetricPipeline in the file")?;
    doc["metadata"]["namespace"] = json!(namespace);
    doc["metadata"]["labels"] = json!({ SHARD_LABEL: operator.shard });
    Ok(doc)
}

/// A Postgres session with the tenant's own credentials — from the
/// namespace's Secret, or from OpenBao for a tenant that keeps them only
/// there — its schema first on the search path.
pub async fn tenant_session(
    testbed: &Testbed,
    client: &kube::Client,
    namespace: &str,
) -> anyhow::Result<(tokio_postgres::Client, String)> {
    let creds: std::collections::HashMap<String, String> =
        match tenants::credentials(client, namespace).await {
            Ok(creds) => creds.into_iter().collect(),
            Err(_) => vault_credentials(testbed, client, namespace).await?,
        };
    let session = tenants::pg_connect_as(testbed, &creds["PGUSER"], &creds["PGPASSWORD"]).await?;
    let schema = creds["PGSCHEMA"].clone();
    session
        .batch_execute(&format!("SET search_path = \"{schema}\""))
        .await?;
    Ok((session, schema))
}

/// The credentials a tenant keeps in OpenBao, found through the tenant
/// that owns `namespace`.
async fn vault_credentials(
    testbed: &Testbed,
    client: &kube::Client,
    namespace: &str,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let tenants = Api::<partnerplane::api::PartnerTenant>::all(client.clone())
        .list(&Default::default())
        .await?;
    let vault = tenants
        .items
        .into_iter()
        .filter_map(|t| t.status)
        .find(|s| s.namespace.as_deref() == Some(namespace))
        .and_then(|s| s.vault)
        .with_context(|| format!("no tenant of {namespace} keeps credentials in OpenBao"))?;
    Ok(vaultrs::kv2::read(
        &testbed.bao_admin()?,
        &vault.mount,
        &format!("{}/credentials", vault.path),
    )
    .await?)
}

/// Waits until `check` accepts the pipeline, showing its conditions otherwise.
pub async fn wait_pipeline<F>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    check: F,
) -> anyhow::Result<MetricPipeline>
where
    F: Fn(&MetricPipeline) -> bool,
{
    let api: Api<MetricPipeline> = Api::namespaced(client.clone(), namespace);
    let check = &check;
    wait_until(
        &format!("pipeline {namespace}/{name}: {what}"),
        timeout,
        || {
            let api = api.clone();
            async move {
                let p = api.get(name).await?;
                if check(&p) {
                    return Ok(Some(p));
                }
                anyhow::bail!(
                    "conditions: {:?}",
                    p.status.as_ref().map(|s| s
                        .conditions
                        .iter()
                        .map(|c| format!("{}={} {}: {}", c.type_, c.status, c.reason, c.message))
                        .collect::<Vec<_>>())
                )
            }
        },
    )
    .await
}

/// The condition `type_` of a pipeline, if set.
pub fn condition<'a>(
    p: &'a MetricPipeline,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Whether the pipeline's `type_` condition has `status`, set for its
/// current generation (not carried over while a new one is worked on).
pub fn is(p: &MetricPipeline, type_: &str, status: &str) -> bool {
    condition(p, type_)
        .is_some_and(|c| c.status == status && c.observed_generation == p.metadata.generation)
        && p.status.as_ref().and_then(|s| s.observed_generation) == p.metadata.generation
}

/// Asks for a refresh now and waits until the operator has answered it.
pub async fn refresh_now(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<MetricPipeline> {
    let api: Api<MetricPipeline> = Api::namespaced(client.clone(), namespace);
    let token = format!(
        "{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {REFRESH_REQUESTED: token}}})),
    )
    .await?;
    wait_pipeline(
        client,
        namespace,
        name,
        "refresh answered",
        Duration::from_secs(60),
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.last_handled_refresh_request.as_deref())
                == Some(token.as_str())
                && is(p, "Refreshed", "True")
        },
    )
    .await
}

/// Partners of the synthetic data sets; the last two do worse than the rest.
pub const PARTNERS: [&str; 8] = ["P01", "P02", "P03", "P04", "P05", "P06", "P07", "P08"];

fn vocabulary(column: &str) -> &'static [&'static str] {
    match column {
        "region" => &["north", "south", "east"],
        "priority" => &["P1", "P2", "P3"],
        "evidence_type" => &["certification", "insurance", "safety_training", "audit"],
        "status" => &["valid", "valid", "valid", "expired"],
        _ => &[],
    }
}

/// `n` rows of `source` spread over the last `days` days before `now`
/// (epoch seconds), deterministic for `seed`. Weak partners (the last two)
/// have lower boolean rates and longer durations.
pub fn generate(source: &Source, n: usize, days: i64, now: i64, seed: u64) -> Vec<Row> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as f64 / (1u64 << 31) as f64
    };
    let mut rows = vec![];
    for i in 0..n {
        let partner = PARTNERS[i % PARTNERS.len()];
        let weak = i % PARTNERS.len() >= PARTNERS.len() - 2;
        let at = now - 120 - (next() * (days * 86_400) as f64) as i64;
        let mut row = Row::new();
        for column in &source.columns {
            let name = column.name.as_str();
            let cell = if name == source.partner_column.as_str() {
                Cell::Text(partner.into())
            } else if name == source.time_column.as_str() {
                Cell::Time(at)
            } else {
                match column.type_ {
                    ColumnType::Timestamp => {
                        if next() < 0.1 {
                            Cell::Null
                        } else {
                            let hours = if weak {
                                20.0 + next() * 60.0
                            } else {
                                1.0 + next() * 30.0
                            };
                            Cell::Time(at + (hours * 3600.0) as i64)
                        }
                    }
                    ColumnType::Boolean => {
                        // Flags of something going wrong are rare; the rest common.
                        let adverse = ["escalated", "warranty_claim", "disputed"].contains(&name);
                        let p_true = match (adverse, weak) {
                            (true, false) => 0.03,
                            (true, true) => 0.2,
                            (false, false) => 0.96,
                            (false, true) => 0.75,
                        };
                        Cell::Bool(next() < p_true)
                    }
                    ColumnType::Integer => {
                        Cell::Int(if weak { 2 } else { 3 } + (next() * 3.0) as i64 % 3)
                    }
                    ColumnType::Numeric if name.ends_with("_ratio") => {
                        let base = if weak { 0.35 } else { 0.55 };
                        Cell::Num(((base + next() * 0.4) * 100.0).round() / 100.0)
                    }
                    ColumnType::Numeric => Cell::Num((next() * 1000.0).round() / 100.0),
                    ColumnType::Text => {
                        let words = vocabulary(name);
                        if words.is_empty() {
                            Cell::Text(format!("{name}-{i}"))
                        } else {
                            Cell::Text(
                                words[(next() * words.len() as f64) as usize % words.len()].into(),
                            )
                        }
                    }
                    ColumnType::Date => Cell::Null,
                }
            };
            row.insert(name.to_string(), cell);
        }
        rows.push(row);
    }
    rows
}

/// Inserts `rows` into the source table through `session` (the tenant's
/// own credentials), in batches.
pub async fn insert(
    session: &tokio_postgres::Client,
    source: &Source,
    rows: &[Row],
) -> anyhow::Result<()> {
    let columns: Vec<&str> = source.columns.iter().map(|c| c.name.as_str()).collect();
    for chunk in rows.chunks(200) {
        let mut values = vec![];
        for row in chunk {
            let cells: Vec<String> = source
                .columns
                .iter()
                .map(|c| sql_literal(row.get(c.name.as_str()).unwrap_or(&Cell::Null), c.type_))
                .collect();
            values.push(format!("({})", cells.join(", ")));
        }
        let statement = format!(
            "INSERT INTO \"{}\" ({}) VALUES {}",
            source.name.as_str(),
            columns
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", "),
            values.join(", ")
        );
        session
            .batch_execute(&statement)
            .await
            .with_context(|| format!("inserting into {}", source.name.as_str()))?;
    }
    Ok(())
}

/// A typed SQL constant for a generated cell (the suites' own data only).
fn sql_literal(cell: &Cell, type_: ColumnType) -> String {
    match (cell, type_) {
        (Cell::Null, _) => "NULL".into(),
        (Cell::Text(s), _) => format!("'{}'", s.replace('\'', "''")),
        (Cell::Int(i), _) => i.to_string(),
        (Cell::Num(n), _) => format!("{n}::numeric"),
        (Cell::Bool(b), _) => b.to_string(),
        (Cell::Time(t), _) => format!("to_timestamp({t})"),
    }
}

/// The last refresh's rows of the result table: (metric, partner) → value,
/// partner `None` for the value over all partners.
pub async fn latest_results(
    session: &tokio_postgres::Client,
    qualified_table: &str,
) -> anyhow::Result<BTreeMap<(String, Option<String>), f64>> {
    let rows = session
        .query(
            &format!(
                "SELECT metric, partner, value FROM {qualified_table} \
                 WHERE refreshed_at = (SELECT max(refreshed_at) FROM {qualified_table}) \
                 AND dimensions = '{{}}'::jsonb AND value IS NOT NULL"
            ),
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                (r.get::<_, String>(0), r.get::<_, Option<String>>(1)),
                r.get::<_, f64>(2),
            )
        })
        .collect())
}

/// Server-side applies each manifest, in order.
pub async fn apply(client: &kube::Client, docs: &[Value]) -> anyhow::Result<()> {
    for doc in docs {
        crate::manifests::apply(client, doc, None, false).await?;
    }
    Ok(())
}

/// The smallest pipeline: one source, one metric, refreshed hourly.
pub fn minimal(name: &str, namespace: &str, shard: &str) -> Value {
    json!({
        "apiVersion": "partnerplane.io/v1alpha1",
        "kind": "MetricPipeline",
        "metadata": {"name": name, "namespace": namespace, "labels": {SHARD_LABEL: shard}},
        "spec": {
            "refreshInterval": "1h",
            "sources": [{"name": "orders", "partnerColumn": "partner_id", "timeColumn": "opened_at",
                         "columns": [{"name": "partner_id", "type": "Text"},
                                     {"name": "opened_at", "type": "Timestamp"},
                                     {"name": "amount", "type": "Numeric"}]}],
            "metrics": [{"name": "revenue", "domain": "RevenueAttribution", "source": "orders",
                         "aggregate": {"kind": "Sum", "column": "amount"}, "window": "30d"}],
        }
    })
}

/// A pipeline of one source `visits` (partner, time, `fixed`) whose
/// first-time-fix rate must be at least 0.9, with `on_breach` as its
/// breach actions, refreshed hourly.
pub fn visits_fix_rate(name: &str, namespace: &str, shard: &str, on_breach: Value) -> Value {
    json!({
        "apiVersion": "partnerplane.io/v1alpha1", "kind": "MetricPipeline",
        "metadata": {"name": name, "namespace": namespace, "labels": {SHARD_LABEL: shard}},
        "spec": {
            "refreshInterval": "1h",
            "sources": [{"name": "visits", "partnerColumn": "partner_id", "timeColumn": "at",
                "columns": [{"name": "partner_id", "type": "Text"}, {"name": "at", "type": "Timestamp"},
                            {"name": "fixed", "type": "Boolean"}]}],
            "metrics": [{"name": "first_time_fix", "domain": "ServiceDelivery", "source": "visits",
                "aggregate": {"kind": "Ratio", "matching": [{"column": "fixed", "operator": "Equals", "value": {"boolean": true}}]},
                "objective": {"comparison": "AtLeast", "target": 0.9}}],
            "onBreach": on_breach
        }
    })
}

/// Applies `pipeline` and waits until it is Ready.
pub async fn apply_ready(client: &kube::Client, pipeline: Value) -> anyhow::Result<MetricPipeline> {
    let (namespace, name) = (
        pipeline["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        pipeline["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    apply(client, &[pipeline]).await?;
    wait_pipeline(
        client,
        &namespace,
        &name,
        "Ready",
        Duration::from_secs(90),
        |p| is(p, "Ready", "True"),
    )
    .await
}
