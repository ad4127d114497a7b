//! The examples are valid against the real API server: each passes a
//! server-side dry run, then applies for real with its defaults filled in;
//! `kubectl explain` shows the types' descriptions and `kubectl get
//! partnerplane -A` lists every kind with its printer columns.

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::discovery;
use partnerplane_e2e::{
    Testbed, apply, install_crds, load_documents, repo_root, unique_name, wait_until,
};
use serde_json::{Value, json};

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            yaml_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    Ok(())
}

/// Every partnerplane document under examples/ (kustomizations and other
/// tools' resources, such as Argo CD's and Flux's, are left out).
fn example_documents() -> anyhow::Result<Vec<(PathBuf, Value)>> {
    let mut files = vec![];
    yaml_files(&repo_root().join("examples"), &mut files)?;
    files.sort();
    let mut docs = vec![];
    for file in files {
        for doc in load_documents(&file)? {
            if doc["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("partnerplane.io/"))
            {
                docs.push((file.clone(), doc));
            }
        }
    }
    Ok(docs)
}

/// Gives names and namespaces a suffix so runs never collide with each other
/// or with the demo.
fn isolate(doc: &mut Value, suffix: &str) {
    let append = |v: &mut Value| {
        if let Some(s) = v.as_str() {
            *v = json!(format!("{s}-{suffix}"));
        }
    };
    if doc["kind"] == "PartnerTenant" {
        append(&mut doc["metadata"]["name"]);
        if doc["spec"].get("namespace").is_some() {
            append(&mut doc["spec"]["namespace"]);
        }
    } else {
        append(&mut doc["metadata"]["namespace"]);
    }
}

async fn kubectl(testbed: &Testbed, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("kubectl")
        .args(args)
        .envs(testbed.env())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test]
async fn examples_dry_run_then_apply_with_defaults() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    install_crds(&client).await?;
    let suffix = unique_name("ex").replace("ex-", "");
    let mut docs = example_documents()?;
    assert!(
        docs.len() >= 7,
        "expected the example tenants, pipelines and copilots"
    );
    for (_, doc) in &mut docs {
        isolate(doc, &suffix);
    }

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut created_namespaces = vec![];
    for (_, doc) in &docs {
        if let Some(ns) = doc["metadata"]["namespace"].as_str()
            && !created_namespaces.iter().any(|n| n == ns)
        {
            let object: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
            namespaces.create(&PostParams::default(), &object).await?;
            created_namespaces.push(ns.to_string());
        }
    }

    let result = async {
        for (file, doc) in &docs {
            apply(&client, doc, None, true)
                .await
                .map_err(|e| anyhow::anyhow!("{}: dry run: {e:#}", file.display()))?;
        }
        let mut applied: Vec<DynamicObject> = vec![];
        for (file, doc) in &docs {
            let object = apply(&client, doc, None, false)
                .await
                .map_err(|e| anyhow::anyhow!("{}: apply: {e:#}", file.display()))?;
            applied.push(object);
        }

        let tenant = applied
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some(&format!("contoso-logistics-{suffix}")))
            .expect("the logistics tenant was applied");
        // Omitted fields come back with the schema's defaults.
        assert_eq!(tenant.data["spec"]["postgres"]["backend"], "default");
        assert_eq!(
            tenant.data["spec"]["postgres"]["extensions"],
            json!(["vector"])
        );
        assert_eq!(tenant.data["spec"]["network"]["isolation"], "Strict");
        assert_eq!(tenant.data["spec"]["suspend"], false);
        let copilot = applied
            .iter()
            .find(|o| o.metadata.name.as_deref() == Some("channel-manager"))
            .expect("the channel-manager copilot was applied");
        assert_eq!(copilot.data["spec"]["knowledge"]["index"]["hnsw"]["m"], 16);
        assert_eq!(
            copilot.data["spec"]["guardrails"]["humanApprovalRequired"],
            json!([
                "Credits",
                "ContractChanges",
                "ComplianceExceptions",
                "CustomerCommitments"
            ])
        );

        let listing = kubectl(&testbed, &["get", "partnerplane", "-A"]).await?;
        for header in [
            "TIER",
            "SCHEMA",
            "OBJECTIVES MET",
            "LAST REFRESH",
            "ROLE",
            "INDEX",
        ] {
            assert!(
                listing.contains(header),
                "no {header} column in:\n{listing}"
            );
        }
        for object in &applied {
            let name = object.metadata.name.as_deref().unwrap_or_default();
            assert!(listing.contains(name), "{name} not listed in:\n{listing}");
        }
        anyhow::Ok(applied)
    }
    .await;

    if let Ok(applied) = &result {
        for object in applied {
            let gvk = object
                .types
                .as_ref()
                .map(kube::core::GroupVersionKind::try_from);
            if let Some(Ok(gvk)) = gvk {
                let (resource, _) = discovery::pinned_kind(&client, &gvk).await?;
                let api: Api<DynamicObject> = match &object.metadata.namespace {
                    Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                    None => Api::all_with(client.clone(), &resource),
                };
                let _ = api
                    .delete(
                        object.metadata.name.as_deref().unwrap_or_default(),
                        &DeleteParams::default(),
                    )
                    .await;
            }
        }
    }
    for ns in created_namespaces {
        let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    }
    result.map(|_| ())
}

#[tokio::test]
async fn kubectl_explain_shows_the_descriptions() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    install_crds(&testbed.kube_admin().await?).await?;
    let cases = [
        (
            "partnertenants.spec.redis.mode",
            "confined to the tenant's key",
        ),
        (
            "partnertenants.spec.deletionPolicy",
            "keeps data and the namespace",
        ),
        (
            "metricpipelines.spec.metrics.aggregate.kind",
            "the share of rows matching",
        ),
        (
            "metricpipelines.spec.sources.partnerColumn",
            "Column identifying the partner",
        ),
        (
            "copilotdeployments.spec.knowledge.index.dimensions",
            "Immutable",
        ),
        (
            "copilotdeployments.spec.guardrails.humanApprovalRequired",
            "a human approves them",
        ),
    ];
    for (path, expected) in cases {
        // A new CRD's OpenAPI schema is published a moment after it is Established.
        let text = wait_until(
            &format!("kubectl explain {path}"),
            Duration::from_secs(60),
            || {
                let testbed = &testbed;
                async move {
                    kubectl(
                        testbed,
                        &["explain", path, "--api-version=partnerplane.io/v1alpha1"],
                    )
                    .await
                    .map(Some)
                }
            },
        )
        .await?;
        assert!(text.contains(expected), "kubectl explain {path}:\n{text}");
    }
    Ok(())
}
