//! Breaches run the tenant's workflows in the test bed's real n8n: a
//! MetricPipeline breach runs that tenant's SLA-breach escalation once per
//! transition, signed, with the breach in the execution n8n records, using
//! the tenant's own Postgres role and Redis keys — and no other tenant's
//! workflow runs. The exception-routing workflow the same breach starts
//! waits for its approval callback and records the decision only after it.
//! A breach for a template the tenant has not enabled waits for it.

use std::time::Duration;

use base64::Engine as _;
use partnerplane::api::PartnerTenant;
use partnerplane::api::tenant::WorkflowsStatus;
use partnerplane_e2e::n8n::{N8n, node_output};
use partnerplane_e2e::pipelines::{
    apply, condition, is, refresh_now, tenant_session, visits_fix_rate, wait_pipeline,
};
use partnerplane_e2e::tenants::{delete_tenants, pg_admin, redis_admin};
use partnerplane_e2e::{Operator, Testbed, unique_name, wait_condition, wait_until};
use ring::hmac;
use serde_json::{Value, json};

fn id_of(status: &WorkflowsStatus, template: &str) -> String {
    status
        .workflows
        .iter()
        .find(|w| format!("{:?}", w.template) == template)
        .map(|w| w.id.clone())
        .expect("provisioned")
}

/// The Standard Webhooks secret the operator signs the tenant's workflow
/// deliveries with: derived from its n8n API key for the tenant.
fn signing_key(api_key: &str, tenant: &str) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, api_key.trim().as_bytes());
    hmac::sign(&key, format!("signing\0{tenant}").as_bytes())
        .as_ref()
        .to_vec()
}

/// Whether `headers` sign `body` (the bytes sent, as the outbox keeps them).
fn verifies(key: &[u8], headers: &Value, body: &str) -> bool {
    let (Some(id), Some(ts), Some(sig)) = (
        headers["webhook-id"].as_str(),
        headers["webhook-timestamp"].as_str(),
        headers["webhook-signature"].as_str(),
    ) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&key, format!("{id}.{ts}.{body}").as_bytes());
    sig == format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// The pipeline's outbox table in `schema`, schema-qualified.
async fn outbox_of(admin: &tokio_postgres::Client, schema: &str) -> anyhow::Result<String> {
    Ok(admin
        .query_one(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname LIKE '\\_pp\\_%\\_outbox'",
            &[&schema],
        )
        .await?
        .get(0))
}

/// How many deliveries the outbox holds, and how many were delivered.
async fn delivered(admin: &tokio_postgres::Client, outbox: &str) -> anyhow::Result<(i64, i64)> {
    let row = admin
        .query_one(
            &format!("SELECT count(*), count(delivered_at) FROM {outbox}"),
            &[],
        )
        .await?;
    Ok((row.get(0), row.get(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_runs_only_its_tenants_workflows_and_approval_waits_for_its_callback()
-> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let n8n = N8n::new(&testbed)?;
    let operator = Operator::start(&testbed, &unique_name("wf-breach"), &[]).await?;
    let (a, b) = (unique_name("wf-bra"), unique_name("wf-brb"));
    let spec = json!({"displayName": "Breach workflows", "secrets": {"store": "Both"},
                      "workflows": {"templates": ["SlaBreachEscalation", "ExceptionRouting"]}});
    apply(
        &client,
        &[operator.tenant(&a, spec.clone()), operator.tenant(&b, spec)],
    )
    .await?;
    let mut tenants = vec![];
    for t in [&a, &b] {
        tenants.push(wait_condition(&client, t, "Ready", "True", Duration::from_secs(120)).await?);
    }
    let status = |t: &PartnerTenant| t.status.clone().unwrap();
    let (sa, sb) = (status(&tenants[0]), status(&tenants[1]));
    let (wa, wb) = (sa.workflows.clone().unwrap(), sb.workflows.clone().unwrap());
    let role_a = sa.postgres.clone().unwrap().role;
    let prefix_a = sa.redis.clone().unwrap().key_prefix.unwrap();

    let ns = format!("ptn-{a}");
    let name = unique_name("fix-rate");
    apply(
        &client,
        &[visits_fix_rate(
            &name,
            &ns,
            &operator.shard,
            json!([{"kind": "Condition"},
                         {"kind": "Workflow", "workflow": "SlaBreachEscalation"},
                         {"kind": "Workflow", "workflow": "ExceptionRouting"}]),
        )],
    )
    .await?;
    wait_pipeline(&client, &ns, &name, "Ready", Duration::from_secs(90), |p| {
        is(p, "Ready", "True")
    })
    .await?;
    let (session, _) = tenant_session(&testbed, &client, &ns).await?;
    // The tenant keeps its partners' owners; the workflow looks them up.
    session
        .batch_execute(
            "CREATE TABLE partner_owners (partner text PRIMARY KEY, owner text NOT NULL);
             INSERT INTO partner_owners VALUES ('P2', 'dana@p2.example')",
        )
        .await?;
    // Only P2 misses: a breach over all partners and one for P2.
    session
        .batch_execute("INSERT INTO visits SELECT 'P2', now() - i * interval '1 hour', false FROM generate_series(1, 10) i")
        .await?;
    let p = refresh_now(&client, &ns, &name).await?;
    assert_eq!(condition(&p, "ObjectivesMet").unwrap().status, "False");

    // The SLA-breach workflow ran once per transition, with the breach.
    let sla_a = id_of(&wa, "SlaBreachEscalation");
    let runs = wait_until("two SLA-breach runs", Duration::from_secs(120), || async {
        let runs = n8n.executions(&sla_a).await?;
        let done: Vec<Value> = runs
            .into_iter()
            .filter(|e| e["status"] == "success")
            .collect();
        Ok((done.len() >= 2).then_some(done))
    })
    .await?;
    assert_eq!(runs.len(), 2, "one run per transition");
    let admin = pg_admin(&testbed).await?;
    let schema = sa.postgres.clone().unwrap().schema;
    let outbox = outbox_of(&admin, &schema).await?;
    let key = signing_key(&testbed.n8n()?.1, &a);
    let mut partners = vec![];
    for run in &runs {
        let received = &node_output(run, "Breach").expect("the webhook's output")[0];
        let body = &received["body"];
        assert_eq!(body["type"], "objective.breached", "{body}");
        assert_eq!(body["metric"], "first_time_fix");
        assert_eq!(body["pipeline"]["namespace"], ns.as_str());
        let id = received["headers"]["webhook-id"]
            .as_str()
            .unwrap_or_default();
        let sent: String = admin
            .query_one(&format!("SELECT body FROM {outbox} WHERE id = $1"), &[&id])
            .await?
            .get(0);
        assert!(
            verifies(&key, &received["headers"], &sent),
            "signed: {received}"
        );
        assert_eq!(
            serde_json::from_str::<Value>(&sent)?["partner"],
            body["partner"]
        );
        partners.push(body["partner"].clone());
        let owner = &node_output(run, "Find the partner's owner").expect("looked up")[0];
        assert_eq!(
            owner["database_role"],
            role_a.as_str(),
            "ran as the tenant's own role"
        );
        assert!(node_output(run, "Notify the owner").is_some());
    }
    assert!(
        partners.contains(&json!("P2")) && partners.contains(&Value::Null),
        "{partners:?}"
    );
    let mut redis = redis_admin(&testbed).await?;
    let escalations: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{prefix_a}escalations"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await?;
    assert_eq!(
        escalations.len(),
        2,
        "the owner was notified in the tenant's keys"
    );
    assert!(
        escalations.iter().all(|e| e.contains("first_time_fix")),
        "{escalations:?}"
    );

    let to: Vec<(Value, Value)> = escalations
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .map(|e| (e["partner"].clone(), e["to"].clone()))
        .collect();
    assert!(
        to.contains(&(json!("P2"), json!("dana@p2.example"))),
        "P2's breach goes to P2's owner: {to:?}"
    );
    assert!(
        to.contains(&(Value::Null, json!("unassigned"))),
        "a breach over all partners has no single owner: {to:?}"
    );

    // No other tenant's workflow ran.
    for id in [
        id_of(&wb, "SlaBreachEscalation"),
        id_of(&wb, "ExceptionRouting"),
    ] {
        assert!(
            n8n.executions(&id).await?.is_empty(),
            "tenant {b}'s {id} did not run"
        );
    }

    // A persisting breach runs nothing more.
    session
        .batch_execute("INSERT INTO visits VALUES ('P2', now() - interval '30 minutes', false)")
        .await?;
    refresh_now(&client, &ns, &name).await?;
    wait_until(
        "every delivery to be delivered",
        Duration::from_secs(60),
        || async {
            let (all, delivered) = delivered(&admin, &outbox).await?;
            anyhow::ensure!(
                all == 4,
                "{all} deliveries: two transitions, two workflows each"
            );
            Ok((delivered == 4).then_some(()))
        },
    )
    .await?;
    assert_eq!(
        n8n.executions(&sla_a).await?.len(),
        2,
        "no run for a breach that persists"
    );

    // Exception routing: each run asked for approval and waits for it.
    let approvals: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{prefix_a}approvals"))
        .arg(0)
        .arg(-1)
        .query_async(&mut redis)
        .await?;
    assert_eq!(approvals.len(), 2, "{approvals:?}");
    let request: Value = serde_json::from_str(&approvals[0])?;
    let resume = request["approveAt"]
        .as_str()
        .expect("a resume URL")
        .to_string();
    let execution = resume.rsplit('/').next().unwrap().to_string();
    let waiting = n8n.execution(&execution).await?.expect("the execution");
    assert_eq!(waiting["status"], "waiting", "{}", waiting["status"]);
    assert!(
        node_output(&waiting, "Record the decision").is_none(),
        "nothing proceeds before the approval"
    );
    let decisions_table = format!("\"{schema}\".exception_decisions");
    let exists: bool = admin
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&decisions_table])
        .await?
        .get(0);
    assert!(!exists, "no decision recorded before the approval");

    assert_eq!(
        n8n.post(&resume, json!({"approved": true, "by": "finance lead"}))
            .await?,
        200
    );
    let done = wait_until(
        "the approved run to finish",
        Duration::from_secs(60),
        || async {
            let e = n8n.execution(&execution).await?.unwrap_or_default();
            anyhow::ensure!(
                e["status"] != "error",
                "failed: {}",
                e["data"]["resultData"]["error"]
            );
            Ok((e["status"] == "success").then_some(e))
        },
    )
    .await?;
    let recorded = &node_output(&done, "Record the decision").expect("recorded")[0];
    assert_eq!(recorded["decided_by_role"], role_a.as_str());
    assert_eq!(recorded["decision"]["approved"], true);
    let rows: i64 = admin
        .query_one(&format!("SELECT count(*) FROM {decisions_table}"), &[])
        .await?
        .get(0);
    assert_eq!(
        rows, 1,
        "one decision, the approved one; the other still waits"
    );

    delete_tenants(&client, &[a, b]).await?;
    Ok(())
}

/// A breach for a workflow the tenant has not enabled waits without asking
/// n8n (which would answer 404 for every breach) and is delivered once the
/// tenant enables the template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breach_for_a_workflow_not_enabled_waits_for_the_template() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("wf-later"), &[]).await?;
    let tenant = unique_name("wf-later");
    let spec = json!({"displayName": "Later", "secrets": {"store": "Both"}});
    apply(&client, &[operator.tenant(&tenant, spec.clone())]).await?;
    let t = wait_condition(&client, &tenant, "Ready", "True", Duration::from_secs(120)).await?;
    let schema = t.status.unwrap().postgres.unwrap().schema;
    let ns = format!("ptn-{tenant}");
    let name = unique_name("fix-rate");
    apply(
        &client,
        &[visits_fix_rate(
            &name,
            &ns,
            &operator.shard,
            json!([{"kind": "Workflow", "workflow": "SlaBreachEscalation"}]),
        )],
    )
    .await?;
    wait_pipeline(&client, &ns, &name, "Ready", Duration::from_secs(90), |p| {
        is(p, "Ready", "True")
    })
    .await?;
    let (session, _) = tenant_session(&testbed, &client, &ns).await?;
    session
        .batch_execute("INSERT INTO visits SELECT 'P2', now() - i * interval '1 hour', false FROM generate_series(1, 10) i")
        .await?;
    let p = refresh_now(&client, &ns, &name).await?;
    assert_eq!(condition(&p, "ObjectivesMet").unwrap().status, "False");

    let admin = pg_admin(&testbed).await?;
    let outbox = outbox_of(&admin, &schema).await?;
    let errors = wait_until("both deliveries to fail once", Duration::from_secs(60), || async {
        let errors: Vec<String> = admin
            .query(
                &format!("SELECT last_error FROM {outbox} WHERE attempts > 0 AND delivered_at IS NULL"),
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok((errors.len() == 2).then_some(errors))
    })
    .await?;
    for error in &errors {
        assert!(
            error.contains("SlaBreachEscalation workflow is not enabled (spec.workflows.templates"),
            "{error}"
        );
    }

    // Enabled: the next retry delivers both.
    let mut enabled = spec;
    enabled["workflows"] = json!({"templates": ["SlaBreachEscalation"]});
    apply(&client, &[operator.tenant(&tenant, enabled)]).await?;
    // Retries come 5 s, 30 s and 2 min after the first attempt.
    wait_until(
        "both deliveries to be delivered",
        Duration::from_secs(200),
        || async {
            let (all, delivered) = delivered(&admin, &outbox).await?;
            Ok((all == 2 && delivered == 2).then_some(()))
        },
    )
    .await?;
    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}
