//! n8n taken away: a tenant with workflow templates reports
//! `WorkflowsReady=False` naming n8n while its other parts stay ready, and
//! recovers once n8n is back. Its own binary, so stopping n8n touches no
//! other suite (cargo runs test binaries one after another).

use std::time::Duration;

use partnerplane_e2e::n8n::{self, N8n, Restart};
use partnerplane_e2e::operator::condition;
use partnerplane_e2e::pipelines::apply;
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{Operator, Testbed, unique_name, wait_condition};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n8n_stopped_makes_only_workflows_not_ready_and_recovery_follows() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let n8n = N8n::new(&testbed)?;
    let operator = Operator::start(
        &testbed,
        &unique_name("wf-outage"),
        &["--resync-seconds", "2"],
    )
    .await?;
    let tenant = unique_name("wf-out");
    apply(
        &client,
        &[operator.tenant(
            &tenant,
            json!({"displayName": "Outage", "workflows": {"templates": ["SlaBreachEscalation"]}}),
        )],
    )
    .await?;
    wait_condition(&client, &tenant, "Ready", "True", Duration::from_secs(120)).await?;

    let restart = Restart;
    n8n::set_running(false)?;
    let down = wait_condition(
        &client,
        &tenant,
        "WorkflowsReady",
        "False",
        Duration::from_secs(60),
    )
    .await?;
    let workflows = condition(&down, "WorkflowsReady").unwrap();
    assert_eq!(workflows.reason, "N8nUnavailable");
    assert!(
        workflows.message.contains(&format!("n8n at {}", n8n.url)),
        "names n8n: {}",
        workflows.message
    );
    for part in [
        "NamespaceReady",
        "DatabaseReady",
        "CacheReady",
        "SecretsReady",
    ] {
        assert_eq!(
            condition(&down, part).map(|c| c.status),
            Some("True".into()),
            "{part} is unaffected"
        );
    }
    let ready = condition(&down, "Ready").unwrap();
    assert!(
        ready.status == "False" && ready.message.contains("WorkflowsReady"),
        "the roll-up says which part: {}",
        ready.message
    );

    n8n::set_running(true)?;
    std::mem::forget(restart);
    let back = wait_condition(&client, &tenant, "Ready", "True", Duration::from_secs(120)).await?;
    assert_eq!(
        condition(&back, "WorkflowsReady").map(|c| c.status),
        Some("True".into())
    );
    let recorded = back.status.and_then(|s| s.workflows).expect("recorded");
    let w = n8n
        .workflow(&recorded.workflows[0].id)
        .await?
        .expect("the workflow survived the outage");
    assert_eq!(w["active"], true);
    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}
