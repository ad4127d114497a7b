//! Additive drift cannot hide: fields another field manager adds to an owned
//! object — an `ingress` rule that opens `default-deny`, a label on the
//! quota, a rule in the workload Role, a subject in its RoleBinding — are
//! removed, not only the fields the operator sets itself. The watch on the
//! owned objects brings the reconcile; no resync is involved.

use std::time::Duration;

use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use partnerplane::naming::WORKLOAD_SERVICE_ACCOUNT;
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{Operator, Testbed, apply, unique_name, wait_condition, wait_until};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);
const INTRUDER: &str = "intruder";

/// What the operator wants of an object: every field but the server's metadata.
fn owned_view<K: Serialize>(object: &K) -> anyhow::Result<Value> {
    let mut value = serde_json::to_value(object)?;
    let labels = value["metadata"]["labels"].take();
    let annotations = value["metadata"]["annotations"].take();
    value["metadata"] = json!({"labels": labels, "annotations": annotations});
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
    }
    Ok(value)
}

fn managers<K: Resource>(object: &K) -> Vec<String> {
    object
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|e| e.manager.clone())
        .collect()
}

/// Waits until `name` equals `wanted` again and no field of it is the intruder's.
async fn restored<K>(api: &Api<K>, name: &str, wanted: &Value) -> anyhow::Result<()>
where
    K: Resource + Clone + std::fmt::Debug + Serialize + DeserializeOwned,
{
    wait_until(
        &format!("{name} to be as the operator wants it"),
        DEADLINE,
        || async move {
            let live = api.get(name).await?;
            let back =
                owned_view(&live)? == *wanted && !managers(&live).iter().any(|m| m == INTRUDER);
            Ok(back.then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn fields_added_by_another_manager_are_removed() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    // A resync far beyond the deadlines: only the watch can bring the repair.
    let operator = Operator::start(
        &testbed,
        &unique_name("additive"),
        &["--resync-seconds", "3600"],
    )
    .await?;
    let name = format!("{}-t", operator.shard);
    apply(
        &client,
        &operator.tenant(&name, json!({"displayName": "Additive drift"})),
        None,
        false,
    )
    .await?;

    let result = async {
        let tenant = wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
        let ns = tenant.status.unwrap().namespace.unwrap();
        let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
        let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
        let roles: Api<Role> = Api::namespaced(client.clone(), &ns);
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        let policy = owned_view(&policies.get("default-deny").await?)?;
        let quota = owned_view(&quotas.get("tenant-quota").await?)?;
        let role = owned_view(&roles.get(WORKLOAD_SERVICE_ACCOUNT).await?)?;
        let binding = owned_view(&bindings.get(WORKLOAD_SERVICE_ACCOUNT).await?)?;
        // The operator's own policy must deny ingress before anything else.
        assert_eq!(policy["spec"].get("ingress"), None);
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));

        // The operator owns `ingress` (it states it empty): taking it needs force.
        let intruder = PatchParams::apply(INTRUDER);
        let open = json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny"},
            "spec": {"ingress": [{}]},
        });
        let refused = policies
            .patch("default-deny", &intruder, &Patch::Apply(&open))
            .await;
        assert!(
            matches!(&refused, Err(kube::Error::Api(e)) if e.code == 409),
            "{refused:?}"
        );
        policies
            .patch(
                "default-deny",
                &intruder.clone().force(),
                &Patch::Apply(&open),
            )
            .await?;
        let live = policies.get("default-deny").await?;
        assert_eq!(live.spec.unwrap().ingress.map(|i| i.len()), Some(1));
        restored(&policies, "default-deny", &policy).await?;

        quotas
            .patch(
                "tenant-quota",
                &intruder,
                &Patch::Apply(&json!({
                    "apiVersion": "v1", "kind": "ResourceQuota",
                    "metadata": {"name": "tenant-quota", "labels": {"extra": "label"}},
                })),
            )
            .await?;
        restored(&quotas, "tenant-quota", &quota).await?;

        let mut rules = role["rules"].as_array().cloned().unwrap_or_default();
        rules.push(json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["list"]}));
        roles
            .patch(
                WORKLOAD_SERVICE_ACCOUNT,
                &intruder.clone().force(),
                &Patch::Apply(&json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                    "metadata": {"name": WORKLOAD_SERVICE_ACCOUNT},
                    "rules": rules,
                })),
            )
            .await?;
        restored(&roles, WORKLOAD_SERVICE_ACCOUNT, &role).await?;

        let mut subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
        subjects.push(json!({"kind": "ServiceAccount", "name": "default", "namespace": ns}));
        bindings
            .patch(
                WORKLOAD_SERVICE_ACCOUNT,
                &intruder.clone().force(),
                &Patch::Apply(&json!({
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": WORKLOAD_SERVICE_ACCOUNT},
                    "roleRef": binding["roleRef"],
                    "subjects": subjects,
                })),
            )
            .await?;
        restored(&bindings, WORKLOAD_SERVICE_ACCOUNT, &binding).await?;

        // An edit (an update, as `kubectl edit` sends) is undone as well.
        let edit = PatchParams {
            field_manager: Some(INTRUDER.into()),
            ..PatchParams::default()
        };
        quotas
            .patch(
                "tenant-quota",
                &edit,
                &Patch::Merge(&json!({"spec": {"hard": {"secrets": "1000"}}})),
            )
            .await?;
        restored(&quotas, "tenant-quota", &quota).await?;

        wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, std::slice::from_ref(&name)).await?;
    result
}
