//! Bad input never gets in: every manifest in `e2e/invalid/` is rejected by
//! the real API server with a message naming the offending field.
//!
//! A case file starts with `# <what is wrong>` and one or more
//! `# expect: <text>` lines, each of which must appear in the server's error.
//! It holds one document (a create that must fail) or two (a valid create,
//! then an update that must fail). A `status` in the first document is then
//! written to the status subresource, as the operator would record
//! provisioned state, so that rules depending on it can be checked.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use partnerplane::api::PartnerTenant;
use partnerplane_e2e::{Testbed, apply, install_crds, load_documents, repo_root, unique_name};
use serde_json::{Value, json};

struct Case {
    file: PathBuf,
    expect: Vec<String>,
    docs: Vec<serde_json::Value>,
}

fn cases() -> anyhow::Result<Vec<Case>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("e2e/invalid"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(&file)?;
            let expect: Vec<String> = text
                .lines()
                .filter_map(|l| l.strip_prefix("# expect:"))
                .map(|e| e.trim().to_string())
                .collect();
            let docs = load_documents(&file)?;
            anyhow::ensure!(
                !expect.is_empty(),
                "{}: no `# expect:` line",
                file.display()
            );
            anyhow::ensure!(
                matches!(docs.len(), 1 | 2),
                "{}: one or two documents expected",
                file.display()
            );
            Ok(Case { file, expect, docs })
        })
        .collect()
}

/// Writes `status` to the object's status subresource, as the admin.
async fn write_status(
    client: &kube::Client,
    object: &DynamicObject,
    status: &Value,
) -> anyhow::Result<()> {
    let gvk = kube::core::GroupVersionKind::try_from(
        object
            .types
            .as_ref()
            .expect("applied objects carry their type"),
    )?;
    let (resource, _) = kube::discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match &object.metadata.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch_status(
        object.metadata.name.as_deref().unwrap_or_default(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn every_invalid_manifest_is_rejected_naming_the_field() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    install_crds(&client).await?;
    let cases = cases()?;
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());

    let ns = unique_name("invalid");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;

    let suffix = ns.trim_start_matches("invalid-").to_string();
    let mut failures = vec![];
    let mut created = vec![];
    for case in &cases {
        let mut docs = case.docs.clone();
        for doc in &mut docs {
            let name = doc["metadata"]["name"].as_str().unwrap_or("unnamed");
            doc["metadata"]["name"] = json!(format!("{name}-{suffix}"));
        }
        let (setup, invalid) = match docs.as_slice() {
            [invalid] => (None, invalid),
            [setup, invalid] => (Some(setup), invalid),
            _ => unreachable!("checked when loading"),
        };
        if let Some(setup) = setup {
            let applied = apply(&client, setup, Some(&ns), false).await;
            let recorded = match (&applied, setup.get("status")) {
                (Ok(object), Some(status)) => write_status(&client, object, status).await,
                _ => Ok(()),
            };
            match applied.and_then(|object| recorded.map(|()| object)) {
                Ok(object) => created.push(object),
                Err(e) => {
                    failures.push(format!(
                        "{}: the valid first document was refused: {e:#}",
                        case.file.display()
                    ));
                    continue;
                }
            }
        }
        match apply(&client, invalid, Some(&ns), false).await {
            Ok(object) => {
                created.push(object);
                failures.push(format!("{}: accepted", case.file.display()));
            }
            Err(e) => {
                let message = format!("{e:#}");
                for expected in &case.expect {
                    if !message.contains(expected.as_str()) {
                        failures.push(format!(
                            "{}: message lacks {expected:?}: {message}",
                            case.file.display()
                        ));
                    }
                }
            }
        }
    }

    for object in created {
        if object.metadata.namespace.is_none() {
            let api: Api<DynamicObject> = Api::all_with(
                client.clone(),
                &kube::api::ApiResource::erase::<PartnerTenant>(&()),
            );
            let _ = api
                .delete(
                    object.metadata.name.as_deref().unwrap_or_default(),
                    &DeleteParams::default(),
                )
                .await;
        }
    }
    let _ = namespaces.delete(&ns, &DeleteParams::background()).await;
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}

/// The status code of the API server's refusal, if `error` is one.
fn refusal_code(error: &anyhow::Error) -> Option<u16> {
    match error.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn values_not_yet_provisioned_can_be_corrected() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    install_crds(&client).await?;
    let name = unique_name("typo");
    let defaulted = unique_name("typo-defaulted");
    let manifest = |name: &str, spec: Value| {
        json!({
            "apiVersion": "partnerplane.io/v1alpha1",
            "kind": "PartnerTenant",
            "metadata": {"name": name},
            "spec": spec,
        })
    };
    let spec = |namespace: &str, backend: &str| {
        json!({
            "displayName": "Typo Tenant",
            "namespace": namespace,
            "postgres": {"backend": backend},
        })
    };

    let result = async {
        // Nothing provisioned yet: a mistyped backend and namespace can be fixed.
        apply(&client, &manifest(&name, spec(&format!("{name}-a"), "defualt")), None, false).await?;
        let fixed = spec(&format!("{name}-b"), "default");
        let object = apply(&client, &manifest(&name, fixed.clone()), None, false).await?;
        assert_eq!(object.data["spec"]["postgres"]["backend"], "default");
        assert_eq!(object.data["spec"]["namespace"], format!("{name}-b"));

        // The operator records what it provisioned; from then on both are fixed.
        write_status(
            &client,
            &object,
            &json!({
                "namespace": format!("{name}-b"),
                "postgres": {"backend": "default", "schema": "tenant_typo", "role": "tenant_typo_app"},
            }),
        )
        .await?;
        for (changed, expected) in [
            (
                spec(&format!("{name}-b"), "eu-west"),
                "spec.postgres.backend: Forbidden: postgres.backend cannot change once the tenant's schema is provisioned there",
            ),
            (
                spec(&format!("{name}-c"), "default"),
                "spec.namespace: Forbidden: namespace cannot change once the tenant's namespace is provisioned",
            ),
        ] {
            let error = apply(&client, &manifest(&name, changed), None, false)
                .await
                .expect_err("a provisioned value cannot change");
            assert_eq!(refusal_code(&error), Some(422), "{error:#}");
            assert!(format!("{error:#}").contains(expected), "{error:#}");
        }
        // Other fields still change, the Dedicated Redis's persistence too
        // while status.redis records no Redis of the tenant's own.
        let mut retitled = fixed;
        retitled["displayName"] = json!("Renamed Tenant");
        for persistence in [json!({"enabled": true, "size": "1Gi"}), json!({"enabled": true, "size": "2Gi"})] {
            retitled["redis"] = json!({"mode": "Dedicated", "memory": "256Mi", "persistence": persistence});
            let object = apply(&client, &manifest(&name, retitled.clone()), None, false).await?;
            assert_eq!(object.data["spec"]["redis"]["persistence"], persistence);
        }
        // Once the Dedicated Redis is recorded it keeps its persistence,
        // unless the tenant gives it up for Shared mode.
        let object = apply(&client, &manifest(&name, retitled.clone()), None, false).await?;
        let mut status = object.data["status"].clone();
        status["redis"] = json!({"mode": "Dedicated", "service": "tenant-redis"});
        write_status(&client, &object, &status).await?;
        let mut resized = retitled.clone();
        resized["redis"]["persistence"]["size"] = json!("5Gi");
        let error = apply(&client, &manifest(&name, resized), None, false)
            .await
            .expect_err("a provisioned Redis's persistence cannot change");
        assert!(format!("{error:#}").contains("spec.redis.persistence: Forbidden"), "{error:#}");
        retitled["redis"] = json!({"mode": "Shared"});
        apply(&client, &manifest(&name, retitled.clone()), None, false).await?;

        // Spelling out the namespace the operator derived is no change.
        let object = apply(
            &client,
            &manifest(&defaulted, json!({"displayName": "Defaulted"})),
            None,
            false,
        )
        .await?;
        write_status(&client, &object, &json!({"namespace": format!("ptn-{defaulted}")})).await?;
        apply(
            &client,
            &manifest(
                &defaulted,
                json!({"displayName": "Defaulted", "namespace": format!("ptn-{defaulted}")}),
            ),
            None,
            false,
        )
        .await?;
        anyhow::Ok(())
    }
    .await;

    let tenants: Api<PartnerTenant> = Api::all(client.clone());
    for tenant in [&name, &defaulted] {
        let _ = tenants.delete(tenant, &DeleteParams::default()).await;
    }
    result
}
