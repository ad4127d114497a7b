//! Bad input never gets in: every manifest in `e2e/invalid/` is rejected by
//! the real API server with a message naming the offending field.
//!
//! A case file starts with `# <what is wrong>` and one or more
//! `# expect: <text>` lines, each of which must appear in the server's error.
//! It holds one document (a create that must fail) or two (a valid create,
//! then an update that must fail).

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};
use partnerplane_e2e::{Testbed, apply, install_crds, load_documents, repo_root, unique_name};
use serde_json::json;

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
            match apply(&client, setup, Some(&ns), false).await {
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
            let api: Api<kube::api::DynamicObject> = Api::all_with(
                client.clone(),
                &kube::api::ApiResource::erase::<partnerplane::api::PartnerTenant>(&()),
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
