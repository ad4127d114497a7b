//! Converges a tenant's workflows and credentials in n8n. Reads first —
//! the tenant's tag, its tagged workflows, whether its credentials still
//! exist — and writes only what differs, so a reconcile that finds
//! everything in place changes nothing in n8n.

use std::collections::BTreeMap;

use serde_json::Value;

use super::WORKFLOWS_READY;
use super::desired::{self, CredentialRef, Purpose, TenantView};
use super::engine::Engine;
use super::names;
use super::plan::{self, Step};
use crate::api::tenant::{
    ProvisionedCredential, ProvisionedWorkflow, WorkflowTemplate, WorkflowsStatus,
};
use crate::backends::n8n::{N8nError, Workflow, WorkflowBody};
use crate::rollup::PartOutcome;

/// What the tenant asks for and what its status last recorded.
#[derive(Debug)]
pub struct Request<'a> {
    pub view: &'a TenantView,
    pub templates: &'a [WorkflowTemplate],
    pub recorded: Option<&'a WorkflowsStatus>,
}

/// The part's condition and the status to record.
#[derive(Debug)]
pub struct Outcome {
    pub part: PartOutcome,
    pub status: Option<WorkflowsStatus>,
}

/// Converges the tenant's workflows; never fails the tenant's other parts.
pub async fn apply(engine: Option<&Engine>, request: Request<'_>) -> Outcome {
    let recorded_any = request
        .recorded
        .is_some_and(|r| !r.workflows.is_empty() || !r.credentials.is_empty());
    if request.templates.is_empty() && !recorded_any {
        // Nothing to provision and nothing left behind: n8n is not asked.
        return Outcome {
            part: PartOutcome::ready(WORKFLOWS_READY, "no workflow templates enabled"),
            status: None,
        };
    }
    let Some(engine) = engine else {
        return Outcome {
            part: PartOutcome::failed(
                WORKFLOWS_READY,
                "N8nNotConfigured",
                "workflow templates need n8n, which the operator's configuration does not name (n8n.url)"
                    .into(),
                true,
            ),
            status: request.recorded.cloned(),
        };
    };
    let url = engine.n8n.base_url().as_str().trim_end_matches('/');
    match converge(engine, &request).await {
        Ok(None) => Outcome {
            part: PartOutcome::ready(
                WORKFLOWS_READY,
                "workflow templates disabled; removed from n8n",
            ),
            status: None,
        },
        Ok(Some(status)) => {
            let inactive: Vec<&str> = status
                .workflows
                .iter()
                .filter(|w| !w.active)
                .map(|w| w.name.as_str())
                .collect();
            let part = if inactive.is_empty() {
                PartOutcome::ready(
                    WORKFLOWS_READY,
                    format!(
                        "{} workflow(s) active in n8n at {url}",
                        status.workflows.len()
                    ),
                )
            } else {
                PartOutcome::failed(
                    WORKFLOWS_READY,
                    "WorkflowInactive",
                    format!("n8n at {url} did not activate: {}", inactive.join(", ")),
                    false,
                )
            };
            Outcome {
                part,
                status: Some(status),
            }
        }
        Err(Failure::N8n(e)) => Outcome {
            part: PartOutcome::failed(WORKFLOWS_READY, e.reason(), e.to_string(), false),
            status: request.recorded.cloned(),
        },
        // Only a `--workflow-templates` file can get here (the built-in
        // ones are rendered by the unit tests); a new file fixes it.
        Err(Failure::Template(message)) => Outcome {
            part: PartOutcome::failed(WORKFLOWS_READY, "TemplateInvalid", message, true),
            status: request.recorded.cloned(),
        },
    }
}

/// Why a tenant's workflows could not converge.
enum Failure {
    N8n(N8nError),
    Template(String),
}

impl From<N8nError> for Failure {
    fn from(e: N8nError) -> Self {
        Self::N8n(e)
    }
}

/// The tenant's workflows converged: what to record (`None` once none is left).
async fn converge(
    engine: &Engine,
    request: &Request<'_>,
) -> Result<Option<WorkflowsStatus>, Failure> {
    let view = request.view;
    let tenant = view.tenant.as_str();
    let n8n = &engine.n8n;
    let tag_name = names::tag(tenant);
    if request.templates.is_empty() {
        super::cleanup::delete_all(engine, tenant, request.recorded).await?;
        return Ok(None);
    }
    let tag = n8n.ensure_tag(&tag_name).await?;
    let observed = n8n.workflows_tagged(&tag_name).await?;

    let refs = ensure_credentials(engine, view, request.recorded, &observed).await?;
    let mut desired: Vec<(WorkflowTemplate, WorkflowBody)> = vec![];
    for kind in request.templates {
        let Some(template) = engine.catalog.get(*kind) else {
            continue;
        };
        let body = desired::workflow(template, view, &refs)
            .map_err(|e| Failure::Template(format!("template {kind:?}: {e}")))?;
        desired.push((*kind, body));
    }

    // The state each desired workflow ends in: id and whether it is active.
    let mut done: BTreeMap<WorkflowTemplate, (String, bool)> = BTreeMap::new();
    for (kind, body) in &desired {
        if let Some(w) = observed
            .iter()
            .find(|w| w.name == body.name && plan::same(body, w))
        {
            done.insert(*kind, (w.id.clone(), w.active));
        }
    }
    let steps = plan::plan(&desired, &observed);
    for step in &steps {
        match step {
            Step::Create(kind) => {
                let body = body_of(&desired, *kind);
                let created = n8n.create_workflow(body).await?;
                n8n.set_workflow_tags(&created.id, &[tag.id.as_str()])
                    .await?;
                let active = n8n.activate(&created.id).await?.is_some_and(|w| w.active);
                tracing::info!(tenant, template = ?kind, id = %created.id, "created workflow in n8n");
                done.insert(*kind, (created.id, active));
            }
            Step::Update(kind, id) => {
                let body = body_of(&desired, *kind);
                let id = match n8n.update_workflow(id, body).await? {
                    Some(updated) => updated.id,
                    // Deleted meanwhile: made again.
                    None => {
                        let created = n8n.create_workflow(body).await?;
                        n8n.set_workflow_tags(&created.id, &[tag.id.as_str()])
                            .await?;
                        created.id
                    }
                };
                // Activating again publishes the replaced definition.
                let active = n8n.activate(&id).await?.is_some_and(|w| w.active);
                tracing::info!(tenant, template = ?kind, %id, "restored workflow in n8n");
                done.insert(*kind, (id, active));
            }
            Step::Activate(kind, id) => {
                let active = n8n.activate(id).await?.is_some_and(|w| w.active);
                tracing::info!(tenant, template = ?kind, %id, "activated workflow in n8n");
                done.insert(*kind, (id.clone(), active));
            }
            Step::Delete(id) => {
                n8n.delete_workflow(id).await?;
                tracing::info!(tenant, %id, "deleted workflow no longer enabled from n8n");
            }
        }
    }
    delete_stale_credentials(engine, tenant, request.recorded, &observed, &refs).await?;

    let workflows: Vec<ProvisionedWorkflow> = desired
        .iter()
        .filter_map(|(kind, body)| {
            let template = engine.catalog.get(*kind)?;
            let (id, active) = done.get(kind)?.clone();
            Some(ProvisionedWorkflow {
                template: *kind,
                version: template.version,
                id,
                name: body.name.clone(),
                active,
                webhook_path: desired::webhook_path(template, tenant),
            })
        })
        .collect();
    let status = WorkflowsStatus {
        tag: tag_name,
        credentials: Purpose::ALL
            .into_iter()
            .filter_map(|p| {
                refs.get(&p).map(|r| ProvisionedCredential {
                    purpose: p.as_str().into(),
                    id: r.id.clone(),
                    name: r.name.clone(),
                })
            })
            .collect(),
        workflows,
    };
    Ok(Some(status))
}

fn body_of(desired: &[(WorkflowTemplate, WorkflowBody)], kind: WorkflowTemplate) -> &WorkflowBody {
    &desired
        .iter()
        .find(|(k, _)| *k == kind)
        .expect("planned from desired")
        .1
}

/// Credentials referenced by the tenant's workflows, by id, with their names.
pub(super) fn referenced(observed: &[Workflow]) -> Vec<CredentialRef> {
    let mut out: Vec<CredentialRef> = vec![];
    for w in observed {
        for node in &w.nodes {
            if let Some(creds) = node.get("credentials").and_then(Value::as_object) {
                for c in creds.values() {
                    if let (Some(id), Some(name)) = (
                        c.get("id").and_then(Value::as_str),
                        c.get("name").and_then(Value::as_str),
                    ) && !out.iter().any(|r| r.id == id)
                    {
                        out.push(CredentialRef {
                            id: id.into(),
                            name: name.into(),
                        });
                    }
                }
            }
        }
    }
    out
}

/// The known credentials (recorded in status or referenced by the
/// tenant's workflows) that are the tenant's: n8n names them after it.
pub(super) fn known(
    tenant: &str,
    recorded: Option<&WorkflowsStatus>,
    observed: &[Workflow],
) -> Vec<CredentialRef> {
    let prefix = names::credential_prefix(tenant);
    let mut out: Vec<CredentialRef> = recorded
        .map(|r| {
            r.credentials
                .iter()
                .map(|c| CredentialRef {
                    id: c.id.clone(),
                    name: c.name.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    for r in referenced(observed) {
        if r.name.starts_with(&prefix) && !out.iter().any(|o| o.id == r.id) {
            out.push(r);
        }
    }
    out
}

/// Each desired credential: an existing one of the same name (its content
/// fingerprint), else a new one.
async fn ensure_credentials(
    engine: &Engine,
    view: &TenantView,
    recorded: Option<&WorkflowsStatus>,
    observed: &[Workflow],
) -> Result<BTreeMap<Purpose, CredentialRef>, N8nError> {
    let known = known(&view.tenant, recorded, observed);
    let mut refs = BTreeMap::new();
    for want in desired::credentials(engine, view) {
        let mut found = None;
        for candidate in known.iter().filter(|k| k.name == want.name) {
            if engine.n8n.credential_exists(&candidate.id).await? {
                found = Some(candidate.clone());
                break;
            }
        }
        let r = match found {
            Some(r) => r,
            None => {
                let created = engine
                    .n8n
                    .create_credential(&want.name, want.purpose.n8n_type(), &want.data)
                    .await?;
                tracing::info!(tenant = %view.tenant, purpose = want.purpose.as_str(), id = %created.id, "created n8n credential");
                CredentialRef {
                    id: created.id,
                    name: created.name,
                }
            }
        };
        refs.insert(want.purpose, r);
    }
    Ok(refs)
}

/// Deletes the tenant's credentials that nothing uses any more (replaced
/// after a rotation, or lost track of).
async fn delete_stale_credentials(
    engine: &Engine,
    tenant: &str,
    recorded: Option<&WorkflowsStatus>,
    observed: &[Workflow],
    current: &BTreeMap<Purpose, CredentialRef>,
) -> Result<(), N8nError> {
    for stale in known(tenant, recorded, observed)
        .into_iter()
        .filter(|k| !current.values().any(|c| c.id == k.id))
    {
        engine.n8n.delete_credential(&stale.id).await?;
        tracing::info!(tenant, id = %stale.id, "deleted replaced n8n credential");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn workflow_using(id: &str, creds: Value) -> Workflow {
        Workflow {
            id: id.into(),
            name: "w".into(),
            active: true,
            nodes: vec![json!({"name": "n", "credentials": creds})],
            connections: json!({}),
            settings: json!({}),
            tags: vec![],
        }
    }

    #[test]
    fn only_credentials_named_after_the_tenant_are_its_own() {
        let observed = [workflow_using(
            "w1",
            json!({
                "postgres": {"id": "c1", "name": "partnerplane acme postgres 0011aabb"},
                "redis": {"id": "c2", "name": "someone else's redis"},
            }),
        )];
        let recorded = WorkflowsStatus {
            tag: "pp-acme".into(),
            workflows: vec![],
            credentials: vec![ProvisionedCredential {
                purpose: "Webhook".into(),
                id: "c3".into(),
                name: "partnerplane acme webhook 22334455".into(),
            }],
        };
        let ids: Vec<String> = known("acme", Some(&recorded), &observed)
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(ids, ["c3", "c1"]);
        assert!(
            known("acm", None, &observed).is_empty(),
            "a tenant whose name is a prefix of another's does not claim its credentials"
        );
    }
}
