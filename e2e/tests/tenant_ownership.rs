//! Namespace ownership, tried as an attacker and a careless admin would: a
//! tenant naming a namespace that is not its own — someone else's, another
//! tenant's, the operator's — is Stalled, changes nothing there, and its
//! deletion (even with `Delete`) leaves that namespace intact. A namespace
//! that opts in is adopted, and never deleted.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::discovery::ApiResource;
use partnerplane::api::PartnerTenant;
use partnerplane_e2e::operator::condition;
use partnerplane_e2e::tenants::{credentials, delete_tenants};
use partnerplane_e2e::{
    Operator, Testbed, apply, unique_name, wait_condition, wait_deleted, wait_until,
};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(60);

/// Kinds the operator would write into a tenant namespace.
fn namespaced_kinds() -> Vec<ApiResource> {
    use k8s_openapi::api::{core::v1, networking::v1 as net, rbac::v1 as rbac};
    vec![
        ApiResource::erase::<v1::ConfigMap>(&()),
        ApiResource::erase::<v1::Secret>(&()),
        ApiResource::erase::<v1::ServiceAccount>(&()),
        ApiResource::erase::<v1::ResourceQuota>(&()),
        ApiResource::erase::<v1::LimitRange>(&()),
        ApiResource::erase::<v1::Service>(&()),
        ApiResource::erase::<net::NetworkPolicy>(&()),
        ApiResource::erase::<rbac::Role>(&()),
        ApiResource::erase::<rbac::RoleBinding>(&()),
        ApiResource::erase::<k8s_openapi::api::apps::v1::StatefulSet>(&()),
    ]
}

/// Everything a tenant could have touched in `namespace`: the namespace's
/// labels and annotations, and every object's name and resourceVersion.
async fn snapshot(client: &kube::Client, namespace: &str) -> anyhow::Result<Value> {
    let ns = Api::<Namespace>::all(client.clone()).get(namespace).await?;
    let mut objects = BTreeMap::new();
    for kind in namespaced_kinds() {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &kind);
        for object in api.list(&ListParams::default()).await? {
            objects.insert(
                format!("{}/{}", kind.kind, object.metadata.name.unwrap_or_default()),
                object.metadata.resource_version.unwrap_or_default(),
            );
        }
    }
    Ok(json!({
        "labels": ns.metadata.labels,
        "annotations": ns.metadata.annotations,
        "deleting": ns.metadata.deletion_timestamp.is_some(),
        "objects": objects,
    }))
}

async fn create_namespace(
    client: &kube::Client,
    name: &str,
    annotations: Value,
) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"team": "billing"}, "annotations": annotations}}),
    )?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "legacy-config"}, "data": {"db": "billing"}}),
    )?;
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), name);
    configmaps.create(&PostParams::default(), &cm).await?;
    // The controller manager adds its own objects to a new namespace; wait
    // for them so that a before/after comparison sees only the operator.
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), name);
    wait_until("the new namespace to settle", DEADLINE, || async {
        let settled = configmaps.get_opt("kube-root-ca.crt").await?.is_some()
            && accounts.get_opt("default").await?.is_some();
        Ok(settled.then_some(()))
    })
    .await
}

/// Waits until the tenant is Stalled on its namespace; returns the message.
async fn wait_refused(client: &kube::Client, name: &str) -> anyhow::Result<String> {
    let tenant = wait_condition(client, name, "Stalled", "True", DEADLINE).await?;
    let stalled = condition(&tenant, "Stalled").unwrap();
    assert_eq!(stalled.reason, "NamespaceNotOwned", "{stalled:?}");
    let ready = condition(&tenant, "Ready").unwrap();
    assert_eq!(ready.status, "False");
    let status = tenant.status.unwrap();
    assert!(
        status.postgres.is_none() && status.vault.is_none(),
        "a refused tenant records no backend: {status:?}"
    );
    Ok(stalled.message)
}

/// Applies a `Delete` tenant that names `namespace`, proves it is refused and
/// changes nothing there, then deletes it and proves the namespace intact.
async fn attempt(
    testbed: &Testbed,
    client: &kube::Client,
    operator: &Operator,
    name: &str,
    namespace: &str,
) -> anyhow::Result<String> {
    let before = snapshot(client, namespace).await?;
    let spec = json!({"displayName": "Attempt", "namespace": namespace, "deletionPolicy": "Delete", "secrets": {"store": "Both"}});
    apply(client, &operator.tenant(name, spec), None, false).await?;
    let message = wait_refused(client, name).await?;
    assert!(message.contains(namespace), "{message}");
    assert_eq!(
        snapshot(client, namespace).await?,
        before,
        "{namespace} changed"
    );
    // No OpenBao role was bound to the namespace for this tenant.
    let role = vaultrs::auth::kubernetes::role::read(
        &testbed.bao_admin()?,
        "kubernetes",
        &format!("tenant-{name}"),
    )
    .await;
    assert!(
        matches!(
            role,
            Err(vaultrs::error::ClientError::APIError { code: 404, .. })
        ),
        "{role:?}"
    );
    Api::<PartnerTenant>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await?;
    wait_deleted(client, name, DEADLINE).await?;
    assert_eq!(
        snapshot(client, namespace).await?,
        before,
        "{namespace} changed by the deletion"
    );
    Ok(message)
}

#[tokio::test]
async fn a_tenant_cannot_take_over_or_delete_a_namespace_that_is_not_its_own() -> anyhow::Result<()>
{
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("ownership"), &[]).await?;
    let shard = operator.shard.clone();
    let legacy = format!("legacy-{shard}");
    let owner = format!("{shard}-owner");
    let result = async {
        // Somebody else's namespace.
        create_namespace(&client, &legacy, json!({})).await?;
        let message = attempt(
            &testbed,
            &client,
            &operator,
            &format!("{shard}-legacy"),
            &legacy,
        )
        .await?;
        assert!(message.contains("not created by partnerplane"), "{message}");

        // Another tenant's namespace: its credentials are not overwritten.
        apply(
            &client,
            &operator.tenant(
                &owner,
                json!({"displayName": "Owner", "secrets": {"store": "Both"}}),
            ),
            None,
            false,
        )
        .await?;
        let ready = wait_condition(&client, &owner, "Ready", "True", DEADLINE).await?;
        let owner_ns = ready.status.unwrap().namespace.unwrap();
        let owner_creds = credentials(&client, &owner_ns).await?;
        let message = attempt(
            &testbed,
            &client,
            &operator,
            &format!("{shard}-thief"),
            &owner_ns,
        )
        .await?;
        assert!(
            message.contains(&format!("belongs to tenant {owner}")),
            "{message}"
        );
        assert_eq!(credentials(&client, &owner_ns).await?, owner_creds);
        wait_condition(&client, &owner, "Ready", "True", DEADLINE).await?;

        // The operator's own namespace (where its admin Secrets live).
        let message = attempt(
            &testbed,
            &client,
            &operator,
            &format!("{shard}-sys"),
            "partnerplane-system",
        )
        .await?;
        assert!(message.contains("reserved"), "{message}");
        Api::<Secret>::namespaced(client.clone(), "partnerplane-system")
            .get("backend-admin")
            .await?;
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &[owner]).await?;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&legacy, &DeleteParams::default())
        .await;
    result
}

#[tokio::test]
async fn an_opted_in_namespace_is_adopted_and_survives_delete() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("adopt"), &[]).await?;
    let name = format!("{}-t", operator.shard);
    let namespace = format!("existing-{}", operator.shard);
    let result = async {
        create_namespace(
            &client,
            &namespace,
            json!({"partnerplane.io/adopt-by": name}),
        )
        .await?;
        let spec =
            json!({"displayName": "Adopter", "namespace": namespace, "deletionPolicy": "Delete", "secrets": {"store": "KubernetesSecret"}});
        apply(&client, &operator.tenant(&name, spec), None, false).await?;
        let ready = wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
        assert!(
            condition(&ready, "NamespaceReady")
                .unwrap()
                .message
                .contains("adopted")
        );
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let ns = namespaces.get(&namespace).await?;
        let annotations = ns.metadata.annotations.unwrap_or_default();
        assert_eq!(
            annotations
                .get("partnerplane.io/origin")
                .map(String::as_str),
            Some("adopted")
        );
        assert!(
            !annotations.contains_key("partnerplane.io/adopt-by"),
            "the opt-in is used once"
        );
        credentials(&client, &namespace).await?;

        Api::<PartnerTenant>::all(client.clone())
            .delete(&name, &DeleteParams::default())
            .await?;
        wait_deleted(&client, &name, DEADLINE).await?;
        // The namespace and what was there before stay; the operator's objects go.
        let ns = namespaces.get(&namespace).await?;
        assert!(ns.metadata.deletion_timestamp.is_none());
        Api::<ConfigMap>::namespaced(client.clone(), &namespace)
            .get("legacy-config")
            .await?;
        let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt("partnerplane-credentials")
            .await?;
        assert!(
            secret.is_none(),
            "the operator's credentials Secret is still there"
        );
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, std::slice::from_ref(&name)).await?;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(&namespace, &DeleteParams::default())
        .await;
    result
}
