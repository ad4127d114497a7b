//! An operator outlives a restart of the Kubernetes control plane: once the
//! API server serves again its watches resume, a tenant applied afterwards
//! becomes Ready, and one deleted afterwards is cleaned up. The restart
//! cuts every connection of every client, so this suite has a test binary of
//! its own (`cargo test` runs one binary at a time).

use std::time::Duration;

use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{Operator, Testbed, apply, unique_name, wait_condition, wait_until};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(120);

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
    wait_condition(&client, &before, "Ready", "True", DEADLINE).await?;

    testbed.restart_kubernetes()?;
    let result = async {
        // A new client: the old one's connections were cut.
        let client = testbed.kube_admin().await?;
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
        wait_condition(&client, &after, "Ready", "True", DEADLINE).await?;
        anyhow::Ok(client)
    }
    .await;
    let client = match result {
        Ok(client) => client,
        Err(e) => {
            return Err(e.context(format!(
                "operator log: e2e/.testbed/logs/operator-{}.log",
                operator.shard
            )));
        }
    };
    // Deletion is seen through the resumed watch too.
    delete_tenants(&client, &[before, after]).await
}
