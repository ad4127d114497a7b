//! Workflow templates in the test bed's real n8n: the example tenants'
//! templates become active workflows tagged with their tenant, each using
//! only its own tenant's credentials (read back through n8n's API); drift
//! in n8n — an edit, a deactivation, a deletion, a deleted credential — is
//! restored; a reconcile that finds everything in place changes nothing;
//! a disabled template's workflow is removed; a new template version
//! updates every tenant's copy; deletion follows the deletion policy.

use std::collections::BTreeSet;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use partnerplane::api::PartnerTenant;
use partnerplane::api::tenant::WorkflowsStatus;
use partnerplane_e2e::n8n::{N8n, credentials_used};
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{
    Operator, Testbed, load_documents, repo_root, unique_name, wait_condition, wait_deleted,
    wait_until,
};
use reqwest::Method;
use serde_json::{Value, json};

const MANUFACTURING: &str = "examples/manufacturing-service-network/tenant.yaml";
const LOGISTICS: &str = "examples/logistics-reseller-network/tenant.yaml";

/// An example tenant's manifest under a unique name and namespace, for `operator`.
fn example_tenant(operator: &Operator, path: &str, name: &str) -> anyhow::Result<Value> {
    let doc = load_documents(&repo_root().join(path))?
        .into_iter()
        .find(|d| d["kind"] == "PartnerTenant")
        .ok_or_else(|| anyhow::anyhow!("no PartnerTenant in {path}"))?;
    let mut spec = doc["spec"].clone();
    spec["namespace"] = json!(format!("ptn-{name}"));
    Ok(operator.tenant(name, spec))
}

async fn apply(client: &kube::Client, docs: &[Value]) -> anyhow::Result<()> {
    partnerplane_e2e::pipelines::apply(client, docs).await
}

/// The tenant's workflow status once `ready` holds for it.
async fn wait_workflows(
    client: &kube::Client,
    tenant: &str,
    what: &str,
    ready: impl Fn(&WorkflowsStatus) -> bool,
) -> anyhow::Result<WorkflowsStatus> {
    let api: Api<PartnerTenant> = Api::all(client.clone());
    wait_until(
        &format!("tenant {tenant}: {what}"),
        Duration::from_secs(90),
        || {
            let api = api.clone();
            let ready = &ready;
            async move {
                let t = api.get(tenant).await?;
                let status = t.status.and_then(|s| s.workflows);
                match status {
                    Some(w) if ready(&w) => Ok(Some(w)),
                    other => anyhow::bail!("workflows status: {other:?}"),
                }
            }
        },
    )
    .await
}

/// Writes to n8n the operator counts (requests other than reads that n8n accepted).
async fn n8n_writes(operator: &Operator) -> anyhow::Result<f64> {
    Ok(operator
        .metrics()
        .await?
        .lines()
        .filter(|l| {
            l.starts_with("partnerplane_backend_writes_total{") && l.contains("backend=\"n8n\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn workflow_id(status: &WorkflowsStatus, template: &str) -> String {
    status
        .workflows
        .iter()
        .find(|w| format!("{:?}", w.template) == template)
        .map(|w| w.id.clone())
        .unwrap_or_default()
}

/// Asserts the tenant's workflows in n8n are the status's, active, tagged,
/// and use only the tenant's own credentials.
async fn assert_provisioned(
    n8n: &N8n,
    tenant: &str,
    status: &WorkflowsStatus,
    templates: usize,
) -> anyhow::Result<()> {
    assert_eq!(status.workflows.len(), templates, "{status:#?}");
    assert!(status.workflows.iter().all(|w| w.active && w.version >= 1));
    let tagged = n8n.workflows_tagged(&status.tag).await?;
    let ids: BTreeSet<String> = tagged
        .iter()
        .map(|w| w["id"].as_str().unwrap_or_default().to_string())
        .collect();
    let recorded: BTreeSet<String> = status.workflows.iter().map(|w| w.id.clone()).collect();
    assert_eq!(ids, recorded, "n8n holds exactly the recorded workflows");
    let own: BTreeSet<String> = status.credentials.iter().map(|c| c.id.clone()).collect();
    assert_eq!(own.len(), 3, "Postgres, Redis and webhook credentials");
    let prefix = format!("partnerplane {tenant} ");
    for w in &tagged {
        assert_eq!(w["active"], true, "{}", w["name"]);
        assert!(
            w["tags"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["name"] == status.tag.as_str())),
            "tagged with the tenant"
        );
        let used = credentials_used(w);
        assert!(!used.is_empty(), "{} uses credentials", w["name"]);
        for (id, name) in used {
            assert!(
                own.contains(&id),
                "{}: credential {id} is the tenant's",
                w["name"]
            );
            assert!(name.starts_with(&prefix), "{name} is named after {tenant}");
        }
    }
    for c in &status.credentials {
        assert!(
            n8n.credential_exists(&c.id).await?,
            "credential {} exists",
            c.name
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_tenants_get_their_own_workflows_and_drift_in_n8n_is_restored() -> anyhow::Result<()>
{
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let n8n = N8n::new(&testbed)?;
    // Short resyncs: n8n has no watch, so drift is found by looking again.
    let operator = Operator::start(
        &testbed,
        &unique_name("wf-prov"),
        &["--resync-seconds", "2"],
    )
    .await?;
    let (a, b) = (unique_name("wf-mfg"), unique_name("wf-log"));
    apply(
        &client,
        &[
            example_tenant(&operator, MANUFACTURING, &a)?,
            example_tenant(&operator, LOGISTICS, &b)?,
        ],
    )
    .await?;
    for t in [&a, &b] {
        wait_condition(
            &client,
            t,
            "WorkflowsReady",
            "True",
            Duration::from_secs(120),
        )
        .await?;
    }
    let status_a =
        wait_workflows(&client, &a, "four workflows", |w| w.workflows.len() == 4).await?;
    let status_b =
        wait_workflows(&client, &b, "three workflows", |w| w.workflows.len() == 3).await?;
    assert_provisioned(&n8n, &a, &status_a, 4).await?;
    assert_provisioned(&n8n, &b, &status_b, 3).await?;
    let creds_a: BTreeSet<&String> = status_a.credentials.iter().map(|c| &c.id).collect();
    assert!(
        status_b
            .credentials
            .iter()
            .all(|c| !creds_a.contains(&c.id)),
        "no credential is shared between tenants"
    );

    // Edited in n8n: the definition is put back, under the same id.
    let sla = workflow_id(&status_a, "SlaBreachEscalation");
    n8n.edit_workflow(&sla, |w| {
        for node in w["nodes"].as_array_mut().unwrap() {
            if node["name"] == "Notify the owner" {
                node["parameters"]["list"] = json!("someone-else:escalations");
            }
        }
    })
    .await?;
    wait_until(
        "the edited workflow to be restored",
        Duration::from_secs(60),
        || async {
            let w = n8n.workflow(&sla).await?.unwrap_or_default();
            let list = w["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["name"] == "Notify the owner")
                .map(|n| n["parameters"]["list"].clone());
            let restored = list
                .as_ref()
                .and_then(Value::as_str)
                .is_some_and(|l| l.ends_with(":escalations") && !l.starts_with("someone-else"));
            Ok((restored && w["active"] == true).then_some(()))
        },
    )
    .await?;

    // Deactivated in n8n: activated again.
    let pack = workflow_id(&status_a, "WeeklyPartnerPerformancePack");
    n8n.call(Method::POST, &format!("workflows/{pack}/deactivate"), None)
        .await?;
    wait_until(
        "the deactivated workflow to be active again",
        Duration::from_secs(60),
        || async {
            let w = n8n.workflow(&pack).await?.unwrap_or_default();
            Ok((w["active"] == true).then_some(()))
        },
    )
    .await?;

    // Deleted in n8n: made again, and the status follows.
    let evidence = workflow_id(&status_a, "EvidenceCollection");
    n8n.call(Method::DELETE, &format!("workflows/{evidence}"), None)
        .await?;
    let after = wait_workflows(&client, &a, "a new evidence workflow", |w| {
        let id = workflow_id(w, "EvidenceCollection");
        !id.is_empty() && id != evidence && w.workflows.iter().all(|w| w.active)
    })
    .await?;
    assert_eq!(
        n8n.workflow(&evidence).await?,
        None,
        "the deleted one stays gone"
    );

    // A credential deleted in n8n: made again and every workflow re-pointed.
    let redis = after
        .credentials
        .iter()
        .find(|c| c.purpose == "Redis")
        .unwrap()
        .id
        .clone();
    n8n.delete_credential(&redis).await?;
    let after = wait_workflows(&client, &a, "a new Redis credential in use", |w| {
        w.credentials
            .iter()
            .any(|c| c.purpose == "Redis" && c.id != redis)
    })
    .await?;
    wait_until(
        "every workflow to use the new credential",
        Duration::from_secs(60),
        || {
            let n8n = n8n.clone();
            let status = after.clone();
            let redis = redis.clone();
            async move {
                let tagged = n8n.workflows_tagged(&status.tag).await?;
                let stale = tagged
                    .iter()
                    .any(|w| credentials_used(w).iter().any(|(id, _)| *id == redis));
                Ok((!stale && tagged.len() == 4).then_some(()))
            }
        },
    )
    .await?;
    let settled = wait_workflows(&client, &a, "settled", |w| {
        w.workflows.iter().all(|w| w.active) && w.credentials.iter().all(|c| c.id != redis)
    })
    .await?;
    assert_provisioned(&n8n, &a, &settled, 4).await?;

    // In place, a reconcile changes nothing in n8n: ids, versions and
    // update times stay as they are over several resyncs.
    let snapshot = |tagged: Vec<Value>| -> BTreeSet<String> {
        tagged
            .iter()
            .map(|w| {
                format!(
                    "{} {} {} {}",
                    w["id"], w["versionId"], w["updatedAt"], w["active"]
                )
            })
            .collect()
    };
    let before = snapshot(n8n.workflows_tagged(&settled.tag).await?);
    let writes = n8n_writes(&operator).await?;
    assert!(writes > 0.0, "provisioning and repairs were counted");
    let reconciles = operator.metric_sum("partnerplane_reconciles_total").await?;
    wait_until("three more reconciles", Duration::from_secs(60), || async {
        let now = operator.metric_sum("partnerplane_reconciles_total").await?;
        Ok((now >= reconciles + 6.0).then_some(()))
    })
    .await?;
    assert_eq!(
        snapshot(n8n.workflows_tagged(&settled.tag).await?),
        before,
        "no workflow was written"
    );
    assert_eq!(
        n8n_writes(&operator).await?,
        writes,
        "the operator's count of writes n8n accepted did not move"
    );
    let still = wait_workflows(&client, &a, "unchanged", |_| true).await?;
    assert_eq!(still, settled, "same workflows and credentials recorded");

    // A template taken off the list: its workflow goes.
    Api::<PartnerTenant>::all(client.clone())
        .patch(
            &a,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"workflows": {"templates": ["SlaBreachEscalation", "EvidenceCollection", "ExceptionRouting"]}}})),
        )
        .await?;
    let pack = workflow_id(&settled, "WeeklyPartnerPerformancePack");
    let three = wait_workflows(&client, &a, "three workflows", |w| w.workflows.len() == 3).await?;
    assert_eq!(
        n8n.workflow(&pack).await?,
        None,
        "the disabled template's workflow is deleted"
    );
    assert_provisioned(&n8n, &a, &three, 3).await?;

    delete_tenants(&client, &[a, b]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_template_version_updates_every_tenants_copy_in_place() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let n8n = N8n::new(&testbed)?;
    let shipped: Value = serde_json::from_str(&std::fs::read_to_string(
        repo_root().join("operator/workflows/templates/sla-breach-escalation.json"),
    )?)?;
    let version = shipped["version"].as_i64().unwrap() as i32;
    let shard = unique_name("wf-version");
    let operator = Operator::start(&testbed, &shard, &[]).await?;
    let tenants = [unique_name("wf-v1"), unique_name("wf-v2")];
    let docs: Vec<Value> = tenants
        .iter()
        .map(|t| {
            operator.tenant(
                t,
                json!({"displayName": "Versions", "workflows": {"templates": ["SlaBreachEscalation"]}}),
            )
        })
        .collect();
    apply(&client, &docs).await?;
    let mut before = vec![];
    for t in &tenants {
        wait_condition(&client, t, "Ready", "True", Duration::from_secs(120)).await?;
        let s = wait_workflows(&client, t, "version 1", |w| {
            w.workflows.first().is_some_and(|w| w.version == version)
        })
        .await?;
        before.push(s.workflows[0].id.clone());
    }
    operator.stop().await?;

    // The same operator, shipping the template's next version.
    let dir = std::env::temp_dir().join(unique_name("templates"));
    std::fs::create_dir_all(&dir)?;
    let mut template = shipped.clone();
    template["version"] = json!(version + 1);
    for node in template["workflow"]["nodes"].as_array_mut().unwrap() {
        if node["name"] == "Notify the owner" {
            node["parameters"]["list"] = json!("%%KEY_PREFIX%%escalations-v2");
        }
    }
    std::fs::write(dir.join("sla.json"), serde_json::to_vec_pretty(&template)?)?;
    let templates_arg = dir.display().to_string();
    let operator =
        Operator::start(&testbed, &shard, &["--workflow-templates", &templates_arg]).await?;
    for (t, id) in tenants.iter().zip(&before) {
        let s = wait_workflows(&client, t, "version 2", |w| {
            w.workflows
                .first()
                .is_some_and(|w| w.version == version + 1)
        })
        .await?;
        assert_eq!(&s.workflows[0].id, id, "updated in place, not replaced");
        let w = n8n.workflow(id).await?.expect("still there");
        assert_eq!(w["active"], true);
        let text = w["nodes"].to_string();
        assert!(
            text.contains("escalations-v2") && text.contains(&format!("(v{})", version + 1)),
            "{text}"
        );
    }
    drop(operator);
    std::fs::remove_dir_all(&dir)?;
    let cleanup = Operator::start(&testbed, &shard, &[]).await?;
    delete_tenants(&client, &tenants).await?;
    drop(cleanup);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_removes_workflows_and_credentials_or_keeps_them_deactivated() -> anyhow::Result<()>
{
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let n8n = N8n::new(&testbed)?;
    let operator = Operator::start(&testbed, &unique_name("wf-delete"), &[]).await?;
    let (gone, kept) = (unique_name("wf-del"), unique_name("wf-ret"));
    let spec = |policy: &str| {
        json!({"displayName": "Deletion", "deletionPolicy": policy,
               "workflows": {"templates": ["SlaBreachEscalation", "ExceptionRouting"]}})
    };
    apply(
        &client,
        &[
            operator.tenant(&gone, spec("Delete")),
            operator.tenant(&kept, spec("Retain")),
        ],
    )
    .await?;
    let mut recorded = vec![];
    for t in [&gone, &kept] {
        wait_condition(&client, t, "Ready", "True", Duration::from_secs(120)).await?;
        recorded
            .push(wait_workflows(&client, t, "two workflows", |w| w.workflows.len() == 2).await?);
    }
    let api: Api<PartnerTenant> = Api::all(client.clone());
    for t in [&gone, &kept] {
        api.delete(t, &Default::default()).await?;
    }
    for t in [&gone, &kept] {
        wait_deleted(&client, t, Duration::from_secs(90)).await?;
    }

    let (deleted, retained) = (&recorded[0], &recorded[1]);
    for w in &deleted.workflows {
        assert_eq!(
            n8n.workflow(&w.id).await?,
            None,
            "Delete removes {}",
            w.name
        );
    }
    assert!(n8n.workflows_tagged(&deleted.tag).await?.is_empty());
    for c in &deleted.credentials {
        assert!(
            !n8n.credential_exists(&c.id).await?,
            "Delete removes {}",
            c.name
        );
    }
    for w in &retained.workflows {
        let found = n8n
            .workflow(&w.id)
            .await?
            .expect("Retain keeps the workflow");
        assert_eq!(found["active"], false, "Retain deactivates {}", w.name);
    }
    for c in &retained.credentials {
        assert!(
            n8n.credential_exists(&c.id).await?,
            "Retain keeps {}",
            c.name
        );
    }
    // What Retain kept is the test's to clean up.
    for w in &retained.workflows {
        n8n.call(Method::DELETE, &format!("workflows/{}", w.id), None)
            .await?;
    }
    for c in &retained.credentials {
        n8n.delete_credential(&c.id).await?;
    }
    drop(operator);
    Ok(())
}
