//! kstatus — what Flux's `wait`, kpt and other cli-utils-based tools read —
//! tells the truth from the moment an object exists: a PartnerTenant no
//! operator has reconciled, and every MetricPipeline and CopilotDeployment
//! (which no controller reconciles yet), are `InProgress`, never `Current`;
//! a tenant becomes `Current` once Ready and `Failed` once Stalled. Verdicts
//! come from the real Go library (`e2e/kstatus`).

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use partnerplane::api::{CopilotDeployment, MetricPipeline, PartnerTenant};
use partnerplane_e2e::operator::{SHARD_LABEL, condition};
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{
    Operator, Testbed, Verdict, apply, install_crds, kstatus, load_documents, repo_root,
    unique_name, wait_condition, wait_until,
};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(90);

fn tenant(name: &str, shard: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "partnerplane.io/v1alpha1",
        "kind": "PartnerTenant",
        "metadata": {"name": name, "labels": {SHARD_LABEL: shard}},
        "spec": spec,
    })
}

/// The object as the API server serves it now, as JSON.
async fn read(
    client: &kube::Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    name: &str,
) -> anyhow::Result<Value> {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    };
    Ok(serde_json::to_value(api.get(name).await?)?)
}

/// Waits until kstatus reads the tenant as `want`.
async fn wait_kstatus(client: &kube::Client, name: &str, want: &str) -> anyhow::Result<Verdict> {
    let resource = ApiResource::erase::<PartnerTenant>(&());
    wait_until(&format!("kstatus {want} for {name}"), DEADLINE, || {
        let resource = &resource;
        async move {
            let verdict = kstatus(&read(client, resource, None, name).await?).await?;
            if verdict.status == want {
                return Ok(Some(verdict));
            }
            anyhow::bail!("{}: {}", verdict.status, verdict.message)
        }
    })
    .await
}

async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// The first document of an example file, moved into `namespace`.
fn example(file: &str, namespace: &str) -> anyhow::Result<Value> {
    let mut doc = load_documents(&repo_root().join("examples").join(file))?
        .into_iter()
        .next()
        .expect("the example has a document");
    doc["metadata"]["namespace"] = json!(namespace);
    Ok(doc)
}

fn assert_waits_for_a_first_reconcile(object: &Value, verdict: &Verdict) {
    let kind = object["kind"].as_str().unwrap_or_default();
    assert_eq!(
        object["status"]["observedGeneration"],
        json!(-1),
        "{kind}: the API server fills in the status default: {}",
        object["status"]
    );
    assert_eq!(verdict.status, "InProgress", "{kind}: {}", verdict.message);
    assert!(
        verdict.message.contains("observed generation is -1"),
        "{kind}: {}",
        verdict.message
    );
}

#[tokio::test]
async fn objects_no_controller_has_reconciled_are_in_progress() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    install_crds(&client).await?;
    // A shard no operator serves: nothing reconciles this tenant.
    let shard = unique_name("kst-unserved");
    let name = unique_name("kst-new");
    let namespace = unique_name("kst-ns");
    create_namespace(&client, &namespace).await?;

    let result = async {
        let created = apply(
            &client,
            &tenant(&name, &shard, json!({"displayName": "Unreconciled"})),
            None,
            false,
        )
        .await?;
        // What a tool sees right after applying, and on every later read.
        let created = serde_json::to_value(created)?;
        assert_waits_for_a_first_reconcile(&created, &kstatus(&created).await?);
        let read_back = read(
            &client,
            &ApiResource::erase::<PartnerTenant>(&()),
            None,
            &name,
        )
        .await?;
        assert_waits_for_a_first_reconcile(&read_back, &kstatus(&read_back).await?);

        for (file, resource) in [
            (
                "logistics-reseller-network/reseller-scorecard-pipeline.yaml",
                ApiResource::erase::<MetricPipeline>(&()),
            ),
            (
                "logistics-reseller-network/channel-manager-copilot.yaml",
                ApiResource::erase::<CopilotDeployment>(&()),
            ),
        ] {
            let doc = example(file, &namespace)?;
            let object = apply(&client, &doc, None, false).await?;
            let object_name = object.metadata.name.clone().unwrap_or_default();
            let object = read(&client, &resource, Some(&namespace), &object_name).await?;
            assert_waits_for_a_first_reconcile(&object, &kstatus(&object).await?);
        }
        anyhow::Ok(())
    }
    .await;

    let tenants: Api<PartnerTenant> = Api::all(client.clone());
    let _ = tenants.delete(&name, &DeleteParams::default()).await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&namespace, &DeleteParams::background())
        .await;
    result
}

#[tokio::test]
async fn a_tenant_is_current_once_ready_and_failed_once_stalled() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    install_crds(&client).await?;
    let shard = unique_name("kst");
    let ready = unique_name("kst-ready");
    let stalled = unique_name("kst-stalled");
    // A namespace the tenant names but does not own: the operator refuses it.
    let foreign = unique_name("kst-foreign");
    create_namespace(&client, &foreign).await?;

    let unreconciled = async {
        for (name, spec) in [
            (&ready, json!({"displayName": "Ready Tenant"})),
            (
                &stalled,
                json!({"displayName": "Stalled Tenant", "namespace": foreign}),
            ),
        ] {
            apply(&client, &tenant(name, &shard, spec), None, false).await?;
            let verdict = wait_kstatus(&client, name, "InProgress").await?;
            assert!(verdict.message.contains("observed generation is -1"));
        }
        anyhow::Ok(())
    }
    .await;
    // Started whatever happened above, so that it removes its finalizers on cleanup.
    let operator = Operator::start(&testbed, &shard, &[]).await;

    let result = async {
        unreconciled?;
        operator.as_ref().map_err(|e| anyhow::anyhow!("{e:#}"))?;

        wait_condition(&client, &ready, "Ready", "True", DEADLINE).await?;
        wait_kstatus(&client, &ready, "Current").await?;

        let stalled_tenant = wait_condition(&client, &stalled, "Stalled", "True", DEADLINE).await?;
        assert_eq!(
            condition(&stalled_tenant, "Stalled").map(|c| c.reason),
            Some("NamespaceNotOwned".to_string())
        );
        let verdict = wait_kstatus(&client, &stalled, "Failed").await?;
        assert!(
            verdict.message.contains(&foreign),
            "the Stalled message names the namespace: {}",
            verdict.message
        );

        // Suspending the Ready tenant is a new generation the operator
        // observes without provisioning anything: a settled state.
        let suspend = json!({"displayName": "Ready Tenant", "suspend": true});
        apply(&client, &tenant(&ready, &shard, suspend), None, false).await?;
        let suspended = wait_condition(&client, &ready, "Suspended", "True", DEADLINE).await?;
        assert_eq!(
            condition(&suspended, "Reconciling").map(|c| (c.status, c.reason)),
            Some(("False".to_string(), "Suspended".to_string()))
        );
        wait_kstatus(&client, &ready, "Current").await?;
        anyhow::Ok(())
    }
    .await;

    let deleted = delete_tenants(&client, &[ready.clone(), stalled.clone()]).await;
    drop(operator);
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&foreign, &DeleteParams::background())
        .await;
    result.and(deleted)
}
