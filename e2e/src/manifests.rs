//! Reading YAML manifests and applying them with server-side apply, as kubectl
//! and GitOps tools do.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, ValidationDirective};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde::Deserialize;

use crate::{repo_root, wait_until};

/// Field manager of everything the suites apply.
pub const FIELD_MANAGER: &str = "partnerplane.io/e2e";

/// Every YAML document in `path`, in order, as JSON values.
pub fn load_documents(path: &Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).map_err(anyhow::Error::from))
        .filter(|doc| !matches!(doc, Ok(serde_json::Value::Null)))
        .collect::<anyhow::Result<_>>()
        .with_context(|| format!("parsing {}", path.display()))
}

/// Server-side applies `doc` (with strict field validation), into `namespace`
/// when its kind is namespaced. `dry_run` asks the server to validate only.
pub async fn apply(
    client: &kube::Client,
    doc: &serde_json::Value,
    namespace: Option<&str>,
    dry_run: bool,
) -> anyhow::Result<DynamicObject> {
    let object: DynamicObject = serde_json::from_value(doc.clone())?;
    let types = object
        .types
        .clone()
        .context("manifest without apiVersion and kind")?;
    let gvk = GroupVersionKind::try_from(&types)?;
    let (resource, capabilities) = discovery::pinned_kind(client, &gvk).await?;
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => {
            let ns = object
                .metadata
                .namespace
                .as_deref()
                .or(namespace)
                .unwrap_or("default");
            Api::namespaced_with(client.clone(), ns, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.field_validation = Some(ValidationDirective::Strict);
    params.dry_run = dry_run;
    let name = object.metadata.name.clone().unwrap_or_default();
    Ok(api.patch(&name, &params, &Patch::Apply(doc)).await?)
}

/// Installs (or updates) the CRDs from `crds/` and waits until they are Established.
pub async fn install_crds(client: &kube::Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut names = vec![];
    for entry in std::fs::read_dir(repo_root().join("crds"))? {
        let path = entry?.path();
        for doc in load_documents(&path)? {
            if doc["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let crd: CustomResourceDefinition = serde_json::from_value(doc)?;
            let name = crd.metadata.name.clone().context("CRD without a name")?;
            crds.patch(&name, &params, &Patch::Apply(&crd)).await?;
            names.push(name);
        }
    }
    for name in names {
        wait_until(
            &format!("CRD {name} Established"),
            Duration::from_secs(30),
            || {
                let crds = crds.clone();
                let name = name.clone();
                async move {
                    let crd = crds.get(&name).await?;
                    let established = crd
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True");
                    Ok(established.then_some(()))
                }
            },
        )
        .await?;
    }
    Ok(())
}
