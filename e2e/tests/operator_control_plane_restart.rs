//! An operator outlives a restart of the Kubernetes control plane: once the
//! API server serves again its watches resume within seconds, so a tenant
//! and a pipeline applied afterwards become Ready, and tenants deleted
//! afterwards are cleaned up. The restart cuts every connection of every
//! client, so this suite has a test binary of its own (`cargo test` runs one
//! binary at a time), and it ends only once KWOK plays pods again.

use std::time::Duration;

use partnerplane_e2e::pipelines::{is, minimal, wait_pipeline};
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{Operator, Testbed, apply, unique_name, wait_condition, wait_until};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(120);
/// Once the API server accepts writes again: a watch that backs off for
/// minutes after a restart must fail this.
const RESUMED_WITHIN: Duration = Duration::from_secs(30);

#[tokio::test]
async fn the_operator_resumes_after_the_api_server_restarts() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let operator = Operator::start(&testbed, &unique_name("cp-restart"), &[]).await?;
    let before = format!("{}-before", operator.shard);
    let after = format!("{}-after", operator.shard);
    let spec = json!({"displayName": "Restart", "deletionPolicy": "Delete"});
    let client = testbed.kube_admin().await?;
    apply(
        &client,
        &operator.tenant(&before, spec.clone()),
        None,
        false,
    )
    .await?;
    let ready = wait_condition(&client, &before, "Ready", "True", DEADLINE).await?;
    let namespace = ready.status.and_then(|s| s.namespace).unwrap_or_default();

    let renewals = Testbed::node_renewals(&client).await?;
    anyhow::ensure!(!renewals.is_empty(), "the test bed has no KWOK node");
    testbed.restart_kubernetes()?;
    // A new client: the old one's connections were cut.
    let client = testbed.kube_admin().await?;
    let result = async {
        let manifest = operator.tenant(&after, spec.clone());
        wait_until(
            "the restarted API server to accept a tenant",
            DEADLINE,
            || {
                let (client, manifest) = (&client, &manifest);
                async move { Ok(apply(client, manifest, None, false).await.ok()) }
            },
        )
        .await?;
        wait_condition(&client, &after, "Ready", "True", RESUMED_WITHIN).await?;
        apply(
            &client,
            &minimal("after-restart", &namespace, &operator.shard),
            None,
            false,
        )
        .await?;
        wait_pipeline(
            &client,
            &namespace,
            "after-restart",
            "Ready",
            RESUMED_WITHIN,
            |p| is(p, "Ready", "True"),
        )
        .await?;
        anyhow::Ok(())
    }
    .await
    .map_err(|e| {
        e.context(format!(
            "operator log: e2e/.testbed/logs/operator-{}.log",
            operator.shard
        ))
    });
    // Deletion is seen through the resumed watches too (the `Delete`
    // tenant takes its namespace and the pipeline in it).
    let deleted = delete_tenants(&client, &[before, after]).await;
    // The suites after this one need KWOK playing pods again.
    let nodes = Testbed::wait_for_nodes_renewed(&client, &renewals).await;
    result.and(deleted).and(nodes)
}
