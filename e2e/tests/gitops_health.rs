//! What GitOps tools report for real objects in every state: Argo CD through
//! the chart's Lua health script (charts/partnerplane/files/argocd/health.lua,
//! run by Lua 5.1 as Argo CD's gopher-lua runs it, via
//! e2e/shipping/argocd_health.py and lupa), and Flux and other cli-utils
//! tools through kstatus (the Go library, e2e/kstatus). Both agree on every
//! object: Progressing is InProgress, Degraded is Failed, Healthy is
//! Current. kstatus has no suspended state: a suspended tenant is Current,
//! whether it was Ready (Ready stays True) or not (it then has no Ready
//! condition, which kstatus would read as InProgress forever);
//! Argo CD shows both as Suspended. The Flux example's health checks name
//! objects that exist in examples/gitops.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use partnerplane::api::{CopilotDeployment, MetricPipeline, PartnerTenant};
use partnerplane_e2e::operator::{SHARD_LABEL, condition};
use partnerplane_e2e::pipelines::{is, minimal, wait_pipeline};
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{
    Operator, Testbed, apply, install_crds, kstatus, load_documents, repo_root, unique_name,
    wait_condition, wait_until,
};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(120);

/// Argo CD's health of each object, from the chart's Lua script.
fn argocd_health(objects: &[Value]) -> anyhow::Result<Vec<(String, String)>> {
    let tools = Command::new(repo_root().join("hack/tools.sh"))
        .arg("python")
        .stderr(Stdio::inherit())
        .output()
        .context("running hack/tools.sh python")?;
    ensure!(tools.status.success(), "hack/tools.sh python failed");
    let python = repo_root().join("e2e/.testbed/venv/bin/python3");
    let mut child = Command::new(&python)
        .arg(repo_root().join("e2e/shipping/argocd_health.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", python.display()))?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(serde_json::to_string(objects)?.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "argocd_health.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout)?;
    Ok(results
        .into_iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap_or_default().to_string(),
                r["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Whether an Argo CD health status and a kstatus verdict say the same.
fn agree(argocd: &str, kstatus: &str) -> bool {
    matches!(
        (argocd, kstatus),
        ("Progressing", "InProgress")
            | ("Degraded", "Failed")
            | ("Healthy", "Current")
            | ("Suspended", "Current" | "InProgress")
    )
}

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

fn tenant(name: &str, shard: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "partnerplane.io/v1alpha1",
        "kind": "PartnerTenant",
        "metadata": {"name": name, "labels": {SHARD_LABEL: shard}},
        "spec": spec,
    })
}

/// The example copilot, moved into `namespace` and `shard`.
fn copilot(namespace: &str, shard: &str) -> anyhow::Result<Value> {
    let mut doc = load_documents(
        &repo_root().join("examples/logistics-reseller-network/channel-manager-copilot.yaml"),
    )?
    .remove(0);
    doc["metadata"]["namespace"] = json!(namespace);
    doc["metadata"]["labels"] = json!({ SHARD_LABEL: shard });
    Ok(doc)
}

struct Case {
    what: &'static str,
    resource: ApiResource,
    namespace: Option<String>,
    name: String,
    argocd: &'static str,
    kstatus: &'static str,
}

async fn check(client: &kube::Client, cases: &[Case]) -> anyhow::Result<()> {
    let mut objects = vec![];
    for c in cases {
        objects.push(read(client, &c.resource, c.namespace.as_deref(), &c.name).await?);
    }
    let health = argocd_health(&objects)?;
    let mut failures = vec![];
    for ((c, object), (status, message)) in cases.iter().zip(&objects).zip(&health) {
        let verdict = kstatus(object).await?;
        println!(
            "{:<44} Argo CD {status:<11} kstatus {:<10} {message}",
            c.what, verdict.status
        );
        if status != c.argocd {
            failures.push(format!(
                "{}: Argo CD {status} ({message}), want {}",
                c.what, c.argocd
            ));
        }
        if verdict.status != c.kstatus {
            failures.push(format!(
                "{}: kstatus {} ({}), want {}",
                c.what, verdict.status, verdict.message, c.kstatus
            ));
        }
        if !agree(status, &verdict.status) {
            failures.push(format!(
                "{}: Argo CD {status} and kstatus {} disagree",
                c.what, verdict.status
            ));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn argocd_and_kstatus_agree_on_real_objects_in_every_state() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    install_crds(&client).await?;
    let shard = unique_name("health");
    // A shard no operator serves: nothing reconciles what carries it.
    let unserved = unique_name("health-unserved");
    let ready = unique_name("health-ready");
    let stalled = unique_name("health-stalled");
    let suspended = unique_name("health-suspended");
    let suspended_new = unique_name("health-suspended-new");
    let waiting = unique_name("health-waiting");
    // A namespace no tenant owns: a tenant naming it and a pipeline in it stall.
    let foreign = unique_name("health-foreign");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": foreign}}))?,
        )
        .await?;
    let mut operator = Some(Operator::start(&testbed, &shard, &[]).await?);

    let result = async {
        for (name, labels, spec) in [
            (
                &ready,
                &shard,
                json!({"displayName": "Ready", "tier": "Standard", "secrets": {"store": "Both"}}),
            ),
            (
                &stalled,
                &shard,
                json!({"displayName": "Stalled", "namespace": foreign}),
            ),
            (&suspended, &shard, json!({"displayName": "Suspended"})),
            (
                &suspended_new,
                &shard,
                json!({"displayName": "Suspended from the start", "suspend": true}),
            ),
            (&waiting, &unserved, json!({"displayName": "No controller"})),
        ] {
            apply(&client, &tenant(name, labels, spec), None, false).await?;
        }
        wait_condition(&client, &ready, "Ready", "True", DEADLINE).await?;
        wait_condition(&client, &stalled, "Stalled", "True", DEADLINE).await?;
        wait_condition(&client, &suspended_new, "Suspended", "True", DEADLINE).await?;
        // Suspending a Ready tenant: a settled state kstatus reads as Current.
        wait_condition(&client, &suspended, "Ready", "True", DEADLINE).await?;
        apply(
            &client,
            &tenant(
                &suspended,
                &shard,
                json!({"displayName": "Suspended", "suspend": true}),
            ),
            None,
            false,
        )
        .await?;
        wait_condition(&client, &suspended, "Suspended", "True", DEADLINE).await?;
        let tenant_ns = format!("ptn-{ready}");

        apply(&client, &minimal("ready", &tenant_ns, &shard), None, false).await?;
        apply(&client, &minimal("stalled", &foreign, &shard), None, false).await?;
        // Suspended with no tenant to wait for: settled all the same.
        let mut suspended_pipeline = minimal("suspended", &foreign, &shard);
        suspended_pipeline["spec"]["suspend"] = json!(true);
        apply(&client, &suspended_pipeline, None, false).await?;
        apply(
            &client,
            &minimal("waiting", &foreign, &unserved),
            None,
            false,
        )
        .await?;
        apply(&client, &copilot(&foreign, &unserved)?, None, false).await?;
        wait_pipeline(&client, &tenant_ns, "ready", "Ready", DEADLINE, |p| {
            is(p, "Ready", "True")
        })
        .await?;
        wait_pipeline(&client, &foreign, "stalled", "Stalled", DEADLINE, |p| {
            is(p, "Stalled", "True")
        })
        .await?;
        wait_pipeline(&client, &foreign, "suspended", "Suspended", DEADLINE, |p| {
            is(p, "Suspended", "True")
        })
        .await?;

        let tenants = ApiResource::erase::<PartnerTenant>(&());
        let pipelines = ApiResource::erase::<MetricPipeline>(&());
        let copilots = ApiResource::erase::<CopilotDeployment>(&());
        let case =
            |what, resource: &ApiResource, namespace: Option<&str>, name: &str, argocd, kstatus| {
                Case {
                    what,
                    resource: resource.clone(),
                    namespace: namespace.map(String::from),
                    name: name.to_string(),
                    argocd,
                    kstatus,
                }
            };
        check(
            &client,
            &[
                case(
                    "PartnerTenant Ready",
                    &tenants,
                    None,
                    &ready,
                    "Healthy",
                    "Current",
                ),
                case(
                    "PartnerTenant Stalled (NamespaceNotOwned)",
                    &tenants,
                    None,
                    &stalled,
                    "Degraded",
                    "Failed",
                ),
                case(
                    "PartnerTenant suspended when Ready",
                    &tenants,
                    None,
                    &suspended,
                    "Suspended",
                    "Current",
                ),
                case(
                    "PartnerTenant suspended from the start",
                    &tenants,
                    None,
                    &suspended_new,
                    "Suspended",
                    "Current",
                ),
                case(
                    "PartnerTenant with no controller",
                    &tenants,
                    None,
                    &waiting,
                    "Progressing",
                    "InProgress",
                ),
                case(
                    "MetricPipeline Ready",
                    &pipelines,
                    Some(&tenant_ns),
                    "ready",
                    "Healthy",
                    "Current",
                ),
                case(
                    "MetricPipeline Stalled (NoTenant)",
                    &pipelines,
                    Some(&foreign),
                    "stalled",
                    "Degraded",
                    "Failed",
                ),
                case(
                    "MetricPipeline suspended with no tenant",
                    &pipelines,
                    Some(&foreign),
                    "suspended",
                    "Suspended",
                    "Current",
                ),
                case(
                    "MetricPipeline with no controller",
                    &pipelines,
                    Some(&foreign),
                    "waiting",
                    "Progressing",
                    "InProgress",
                ),
                case(
                    "CopilotDeployment with no controller",
                    &copilots,
                    Some(&foreign),
                    "channel-manager",
                    "Progressing",
                    "InProgress",
                ),
            ],
        )
        .await?;

        // A spec change no operator has observed yet: the operator is
        // stopped, so the Ready tenant's status speaks of an older generation.
        if let Some(running) = operator.take() {
            running.stop().await?;
        }
        Api::<PartnerTenant>::all(client.clone())
            .patch(
                &ready,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"displayName": "Ready, renamed"}})),
            )
            .await?;
        check(
            &client,
            &[case(
                "PartnerTenant with an unobserved generation",
                &tenants,
                None,
                &ready,
                "Progressing",
                "InProgress",
            )],
        )
        .await?;
        operator = Some(Operator::start(&testbed, &shard, &[]).await?);
        // Ready stays True while the new generation is provisioned
        // (Reconciling=True): wait for the operator to finish it.
        wait_until("the renamed tenant to settle", DEADLINE, || {
            let api = Api::<PartnerTenant>::all(client.clone());
            let name = ready.clone();
            async move {
                let t = api.get(&name).await?;
                let current =
                    t.status.as_ref().and_then(|s| s.observed_generation) == t.metadata.generation;
                let is = |type_: &str| condition(&t, type_).is_some_and(|c| c.status == "True");
                Ok((current && is("Ready") && !is("Reconciling")).then_some(()))
            }
        })
        .await?;
        check(
            &client,
            &[case(
                "PartnerTenant Ready again",
                &tenants,
                None,
                &ready,
                "Healthy",
                "Current",
            )],
        )
        .await?;
        anyhow::Ok(())
    }
    .await;

    // Objects with finalizers first, while an operator runs to release
    // them: the stalled and suspended pipelines, then the tenants (a `Delete` tenant takes
    // its namespace and the pipeline in it); then the rest with the namespace.
    let foreign_pipelines: Api<MetricPipeline> = Api::namespaced(client.clone(), &foreign);
    for name in ["stalled", "suspended"] {
        let _ = foreign_pipelines
            .delete(name, &DeleteParams::default())
            .await;
    }
    let pipeline_gone = wait_until(
        "pipelines stalled and suspended to be deleted",
        DEADLINE,
        || {
            let api = foreign_pipelines.clone();
            async move {
                let left = (
                    api.get_opt("stalled").await?,
                    api.get_opt("suspended").await?,
                );
                Ok(matches!(left, (None, None)).then_some(()))
            }
        },
    )
    .await;
    let deleted = delete_tenants(
        &client,
        &[
            ready.clone(),
            stalled.clone(),
            suspended.clone(),
            suspended_new.clone(),
        ],
    )
    .await;
    let _ = Api::<PartnerTenant>::all(client.clone())
        .delete(&waiting, &DeleteParams::default())
        .await;
    drop(operator);
    let _ = namespaces
        .delete(&foreign, &DeleteParams::background())
        .await;
    result.and(deleted).and(pipeline_gone)
}

#[test]
fn the_health_script_is_shipped_identically_and_handles_every_state() -> anyhow::Result<()> {
    let check = Command::new(repo_root().join("hack/argocd-health.py"))
        .arg("--check")
        .output()?;
    ensure!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let tools = Command::new(repo_root().join("hack/tools.sh"))
        .arg("python")
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(tools.status.success(), "hack/tools.sh python failed");
    let self_test = Command::new(repo_root().join("e2e/.testbed/venv/bin/python3"))
        .arg(repo_root().join("e2e/shipping/argocd_health.py"))
        .arg("--self-test")
        .output()?;
    print!("{}", String::from_utf8_lossy(&self_test.stdout));
    ensure!(
        self_test.status.success(),
        "{}",
        String::from_utf8_lossy(&self_test.stderr)
    );
    Ok(())
}

#[test]
fn the_flux_example_waits_on_objects_that_report_kstatus() -> anyhow::Result<()> {
    // `wait: true` health-checks everything applied, with kstatus.
    let flux = load_documents(&repo_root().join("examples/gitops/flux/kustomization.yaml"))?;
    let kustomization = flux
        .iter()
        .find(|d| d["kind"] == "Kustomization")
        .context("no Kustomization")?;
    ensure!(
        kustomization["spec"]["wait"] == json!(true),
        "the example uses wait: true"
    );

    let testbed = Testbed::load()?;
    let built = Command::new("kubectl")
        .envs(testbed.env())
        .arg("kustomize")
        .arg(repo_root().join("examples/gitops"))
        .output()?;
    ensure!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let mut kinds = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(std::str::from_utf8(&built.stdout)?) {
        let doc: Value =
            serde_json::to_value(<serde_yaml::Value as serde::Deserialize>::deserialize(doc)?)?;
        ensure!(
            doc["apiVersion"] == "partnerplane.io/v1alpha1",
            "examples/gitops applies {} {}: add what kstatus reads for it here",
            doc["apiVersion"],
            doc["kind"]
        );
        kinds.insert(doc["kind"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["PartnerTenant", "MetricPipeline", "CopilotDeployment"].map(String::from))
    );
    // What makes a kind safe to wait on: a status subresource, a status that
    // exists from creation with observedGeneration -1 (so kstatus never reads
    // an object no controller has handled as Current), and conditions.
    for kind in &kinds {
        let plural = format!("{}s", kind.to_lowercase());
        let crd = load_documents(&repo_root().join(format!("crds/{plural}.partnerplane.io.yaml")))?
            .remove(0);
        let version = &crd["spec"]["versions"][0];
        ensure!(
            version["subresources"]["status"].is_object(),
            "{kind}: status subresource"
        );
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"];
        ensure!(
            status["default"]["observedGeneration"] == json!(-1),
            "{kind}: status defaults to observedGeneration -1"
        );
        ensure!(
            status["properties"]["conditions"]["type"] == "array"
                && status["properties"]["observedGeneration"].is_object(),
            "{kind}: status.conditions and status.observedGeneration"
        );
    }
    Ok(())
}
