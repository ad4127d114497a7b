//! Steady state costs nothing: with tenants Ready and the operator resyncing,
//! it sends no write to the API server and runs no DDL — counted by the API
//! server's audit log and Postgres's statement log, not only by the operator.
//! Among the tenants are specs the API server rewrites (quantities in
//! non-canonical units), a Dedicated Redis, Open isolation and namespaces
//! allowed in, so none of them may look like drift either.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use partnerplane_e2e::audit::{AuditLog, is_operator};
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{Operator, Testbed, apply, unique_name, wait_condition, wait_until};
use serde_json::json;

/// Tenants with the default spec, one per credential store in turn.
const PLAIN_TENANTS: usize = 5;

/// Specs beyond the defaults.
fn other_specs() -> Vec<serde_json::Value> {
    vec![
        json!({
            "displayName": "Steady",
            // Stored by the API server as 1Gi, 2 and 1Ti.
            "quotas": {"memory": "1024Mi", "cpu": "2000m", "storage": "1024Gi"},
            "redis": {"mode": "Dedicated", "memory": "256Mi"},
            "network": {"isolation": "Open"},
        }),
        json!({
            "displayName": "Steady",
            "network": {"allowFromNamespaces": ["kube-system", "monitoring"]},
        }),
    ]
}

fn size(path: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(path)?.len())
}

fn read_from(path: &Path, offset: u64) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    Ok(text)
}

#[tokio::test]
async fn an_idle_operator_writes_nothing_through_resyncs() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator =
        Operator::start(&testbed, &unique_name("steady"), &["--resync-seconds", "1"]).await?;
    let specs: Vec<serde_json::Value> = (0..PLAIN_TENANTS)
        .map(|i| {
            let store = ["Vault", "KubernetesSecret", "Both"][i % 3];
            json!({"displayName": "Steady", "secrets": {"store": store}})
        })
        .chain(other_specs())
        .collect();
    let tenants = specs.len();
    let names: Vec<String> = (0..tenants)
        .map(|i| format!("{}-{i}", operator.shard))
        .collect();
    for (name, spec) in names.iter().zip(specs) {
        apply(&client, &operator.tenant(name, spec), None, false).await?;
    }

    let result = async {
        for name in &names {
            wait_condition(&client, name, "Ready", "True", Duration::from_secs(60)).await?;
        }
        // Settled: a whole round of resyncs passes without a write. Reconciles
        // that Ready itself triggered may still be running until then.
        let previous = std::cell::Cell::new((-1.0, -1.0));
        wait_until(
            "a resync round without writes",
            Duration::from_secs(60),
            || {
                let operator = &operator;
                let previous = &previous;
                async move {
                    let writes = operator.metric_sum("partnerplane_api_writes_total").await?
                        + operator
                            .metric_sum("partnerplane_backend_writes_total")
                            .await?;
                    let reconciles = operator.metric_sum("partnerplane_reconciles_total").await?;
                    let (last_writes, last_reconciles) = previous.get();
                    if reconciles < last_reconciles + tenants as f64 {
                        return Ok(None);
                    }
                    let settled = writes == last_writes;
                    previous.set((writes, reconciles));
                    Ok(settled.then_some(()))
                }
            },
        )
        .await?;

        let audit = AuditLog::mark(&testbed)?;
        let pg_mark = size(&testbed.pg_log)?;
        let api_writes = operator.metric_sum("partnerplane_api_writes_total").await?;
        let backend_writes = operator
            .metric_sum("partnerplane_backend_writes_total")
            .await?;
        let reconciles = operator.metric_sum("partnerplane_reconciles_total").await?;

        // At least two more resyncs of every tenant.
        wait_until(
            "two more resyncs of every tenant",
            Duration::from_secs(30),
            || {
                let operator = &operator;
                async move {
                    let now = operator.metric_sum("partnerplane_reconciles_total").await?;
                    Ok((now >= reconciles + 2.0 * tenants as f64).then_some(()))
                }
            },
        )
        .await?;

        assert_eq!(
            operator.metric_sum("partnerplane_api_writes_total").await?,
            api_writes
        );
        assert_eq!(
            operator
                .metric_sum("partnerplane_backend_writes_total")
                .await?,
            backend_writes
        );
        let writes = audit.writes(is_operator)?;
        assert!(writes.is_empty(), "API writes during resync:\n{writes:#?}");
        let ddl: Vec<String> = read_from(&testbed.pg_log, pg_mark)?
            .lines()
            .filter(|l| l.contains("statement:") && l.contains(&operator.shard.replace('-', "_")))
            .map(str::to_string)
            .collect();
        assert!(ddl.is_empty(), "DDL during resync:\n{}", ddl.join("\n"));
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &names).await?;
    result
}
