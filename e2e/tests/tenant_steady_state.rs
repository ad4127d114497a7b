//! Steady state costs nothing: with tenants Ready and the operator resyncing,
//! it sends no write to the API server, runs no DDL, changes no Redis ACL
//! user and writes no stored credentials — counted by the API server's audit
//! log, Postgres's statement log, Redis's command statistics and OpenBao's
//! secret versions, not only by the operator.
//! Among the tenants are specs the API server rewrites (quantities in
//! non-canonical units), a Dedicated Redis, Open isolation and namespaces
//! allowed in, so none of them may look like drift either.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use kube::api::Api;
use partnerplane::api::PartnerTenant;

use partnerplane_e2e::audit::{AuditLog, is_operator};
use partnerplane_e2e::tenants::{delete_tenants, redis_admin};
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
            // Stored as written (0.25Gi); the operator sets maxmemory from its value.
            "redis": {"mode": "Dedicated", "memory": "0.25Gi"},
            "network": {"isolation": "Open"},
        }),
        json!({
            "displayName": "Steady",
            "network": {"allowFromNamespaces": ["kube-system", "monitoring"]},
        }),
    ]
}

/// Calls of each `ACL` subcommand the shared Redis has run, from `INFO
/// commandstats` (MONITOR hides administrative commands such as ACL). The
/// count is server-wide: it holds only while this suite runs alone, as
/// `cargo test` runs one test binary at a time.
async fn acl_calls(testbed: &Testbed) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut admin = redis_admin(testbed).await?;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut admin)
        .await?;
    Ok(info
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_acl|"))
        .filter_map(|l| {
            let (subcommand, stats) = l.split_once(':')?;
            let calls = stats.strip_prefix("calls=")?.split(',').next()?;
            Some((subcommand.to_string(), calls.parse().ok()?))
        })
        .collect())
}

/// The version of each stored credentials secret in OpenBao, by tenant.
async fn credential_versions(
    testbed: &Testbed,
    client: &kube::Client,
    names: &[String],
) -> anyhow::Result<Vec<(String, u64)>> {
    let bao = testbed.bao_admin()?;
    let mut versions = Vec::new();
    for name in names {
        let tenant = Api::<PartnerTenant>::all(client.clone()).get(name).await?;
        if let Some(vault) = tenant.status.and_then(|s| s.vault) {
            let path = format!("{}/credentials", vault.path);
            let metadata = vaultrs::kv2::read_metadata(&bao, &vault.mount, &path).await?;
            versions.push((name.clone(), metadata.current_version));
        }
    }
    Ok(versions)
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

        let acl_before = acl_calls(&testbed).await?;
        let stored = credential_versions(&testbed, &client, &names).await?;
        assert!(
            !stored.is_empty(),
            "no tenant stores credentials in OpenBao"
        );
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
        // The drift checks read every Shared tenant's user; none is written.
        let acl_after = acl_calls(&testbed).await?;
        let calls = |stats: &BTreeMap<String, u64>, sub: &str| stats.get(sub).copied().unwrap_or(0);
        assert!(
            calls(&acl_after, "getuser") > calls(&acl_before, "getuser"),
            "no ACL GETUSER during resync: {acl_before:?} → {acl_after:?}"
        );
        for write in ["setuser", "deluser", "save", "load"] {
            assert_eq!(
                calls(&acl_after, write),
                calls(&acl_before, write),
                "ACL {write} during resync"
            );
        }
        assert_eq!(
            credential_versions(&testbed, &client, &names).await?,
            stored,
            "credentials written to OpenBao during resync"
        );
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &names).await?;
    result
}
