//! Two replicas with `--leader-elect`: only the one holding the Lease
//! reconciles and writes (the API server's audit log, by user agent, shows
//! one writer at a time); when it is killed mid-provisioning the other
//! takes over within the lease duration and finishes the work; a graceful
//! stop hands the Lease over at once.

use std::time::Duration;

use partnerplane_e2e::audit::{AuditLog, Write, changes_state, is_operator};
use partnerplane_e2e::pipelines::apply;
use partnerplane_e2e::{Operator, Testbed, unique_name, wait_condition, wait_until};
use serde_json::json;

const ELECTION: [&str; 4] = [
    "--leader-elect",
    "--leader-election-namespace",
    "default",
    "--leader-election-id",
];

async fn leads(operator: &Operator) -> anyhow::Result<bool> {
    Ok(operator.metric_sum("partnerplane_leader").await? == 1.0)
}

/// Waits until exactly one of `operators` leads; returns its index.
async fn leader_of(operators: &[&Operator], timeout: Duration) -> anyhow::Result<usize> {
    wait_until("exactly one leader", timeout, || async {
        let mut leading = vec![];
        for (i, o) in operators.iter().enumerate() {
            if leads(o).await.unwrap_or(false) {
                leading.push(i);
            }
        }
        anyhow::ensure!(leading.len() <= 1, "two leaders at once: {leading:?}");
        Ok(leading.first().copied())
    })
    .await
}

#[tokio::test]
async fn one_replica_leads_and_another_takes_over_when_it_dies_or_steps_down() -> anyhow::Result<()>
{
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let shard = unique_name("leader");
    let id = unique_name("lease");
    let mut args: Vec<&str> = ELECTION.to_vec();
    args.push(&id);
    let audit = AuditLog::mark(&testbed)?;
    // Each replica's identity is in its user agent, so the audit log tells their writes apart.
    let pod = |replica: &str| format!("{shard}-{replica}");
    let (pod_a, pod_b, pod_c) = (pod("a"), pod("b"), pod("c"));
    let a = Operator::start_with_env(&testbed, &shard, &args, &[("POD_NAME", &pod_a)]).await?;
    let b = Operator::start_with_env(&testbed, &shard, &args, &[("POD_NAME", &pod_b)]).await?;
    let first = leader_of(&[&a, &b], Duration::from_secs(30)).await?;
    let (leader, standby) = if first == 0 { (a, b) } else { (b, a) };
    let (leader_pod, standby_pod) = if first == 0 {
        (&pod_a, &pod_b)
    } else {
        (&pod_b, &pod_a)
    };

    // Only the leader writes.
    let t1 = format!("{shard}-one");
    apply(
        &client,
        &[leader.tenant(&t1, json!({"displayName": "One"}))],
    )
    .await?;
    wait_condition(&client, &t1, "Ready", "True", Duration::from_secs(90)).await?;
    assert!(!leads(&standby).await?);
    assert_eq!(
        standby.metric_sum("partnerplane_api_writes_total").await?,
        0.0,
        "a standby writes nothing"
    );
    assert_eq!(
        standby.metric_sum("partnerplane_reconciles_total").await?,
        0.0
    );

    // Killed mid-provisioning: the standby takes over and finishes.
    let t2 = format!("{shard}-two");
    apply(
        &client,
        &[leader.tenant(&t2, json!({"displayName": "Two"}))],
    )
    .await?;
    leader.kill().await?;
    // The lease duration (15 s) plus a retry period, then the provisioning.
    wait_until("the standby to lead", Duration::from_secs(25), || async {
        Ok(leads(&standby).await?.then_some(()))
    })
    .await?;
    wait_condition(&client, &t2, "Ready", "True", Duration::from_secs(90)).await?;

    // A graceful stop hands over well within a lease duration.
    let c = Operator::start_with_env(&testbed, &shard, &args, &[("POD_NAME", &pod_c)]).await?;
    assert!(!leads(&c).await?);
    assert!(standby.stop().await?, "a graceful stop exits 0");
    wait_until(
        "the new replica to lead",
        Duration::from_secs(8),
        || async { Ok(leads(&c).await?.then_some(())) },
    )
    .await?;
    let t3 = format!("{shard}-three");
    apply(&client, &[c.tenant(&t3, json!({"displayName": "Three"}))]).await?;
    wait_condition(&client, &t3, "Ready", "True", Duration::from_secs(90)).await?;

    // The audit log: each replica wrote only while it led, never two at once.
    let writes_of = |pod: &str| -> anyhow::Result<Vec<Write>> {
        let tag = format!("({pod}_");
        Ok(audit
            .writes(|ua| is_operator(ua) && ua.contains(&tag))?
            .into_iter()
            .filter(changes_state)
            .collect())
    };
    let turns = [
        writes_of(leader_pod)?,
        writes_of(standby_pod)?,
        writes_of(&pod_c)?,
    ];
    for (who, writes) in ["first leader", "standby", "third replica"]
        .iter()
        .zip(&turns)
    {
        anyhow::ensure!(!writes.is_empty(), "the {who} wrote nothing while it led");
    }
    for pair in turns.windows(2) {
        let last = pair[0].iter().map(|w| &w.at).max();
        let first = pair[1].iter().map(|w| &w.at).min();
        assert!(
            last < first,
            "writes overlap: the earlier replica's last at {last:?}, the next one's first at {first:?}"
        );
    }
    partnerplane_e2e::tenants::delete_tenants(&client, &[t1, t2, t3]).await?;
    Ok(())
}
