//! The test bed's Kubernetes control plane is real: KWOK nodes are Ready,
//! Deployments become Available, and authentication and RBAC are enforced.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use partnerplane_e2e::{Testbed, unique_name, wait_until};
use serde_json::json;

async fn create_namespace(client: &kube::Client, name: &str) -> anyhow::Result<()> {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

async fn delete_namespace(client: &kube::Client, name: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await;
}

fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn a_kwok_node_is_ready() -> anyhow::Result<()> {
    let client = Testbed::load()?.kube_admin().await?;
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default().labels("type=kwok"))
        .await?;
    assert!(!nodes.items.is_empty(), "no KWOK node registered");
    assert!(
        nodes.items.iter().any(is_ready),
        "no KWOK node is Ready: {:?}",
        nodes.items.iter().map(|n| &n.status).collect::<Vec<_>>()
    );
    Ok(())
}

#[tokio::test]
async fn a_deployment_becomes_available() -> anyhow::Result<()> {
    let client = Testbed::load()?.kube_admin().await?;
    let ns = unique_name("smoke-deploy");
    create_namespace(&client, &ns).await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}]}
            }
        }
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;

    let result = wait_until("Deployment web Available", Duration::from_secs(60), || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("web").await?;
            let status = d.status.unwrap_or_default();
            let available = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            Ok((available && status.available_replicas == Some(2)).then_some(()))
        }
    })
    .await;
    delete_namespace(&client, &ns).await;
    result
}

#[tokio::test]
async fn a_request_without_credentials_is_unauthorized() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&testbed.kube_ca)?)?;
    let http = reqwest::Client::builder().tls_certs_only([ca]).build()?;
    let response = http
        .get(format!("{}/api/v1/namespaces", testbed.api_server()?))
        .send()
        .await?;
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn an_identity_without_grants_is_forbidden() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let admin = testbed.kube_admin().await?;
    let ns = unique_name("smoke-rbac");
    create_namespace(&admin, &ns).await?;
    let accounts = Api::<ServiceAccount>::namespaced(admin.clone(), &ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "nobody"}}))?;
    accounts.create(&PostParams::default(), &sa).await?;
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": []}}))?;
    let token = accounts
        .create_token_request("nobody", &PostParams::default(), &request)
        .await?
        .status
        .expect("token request status")
        .token;

    let as_sa = testbed.kube_with_token(&token).await?;
    let denied = Api::<Secret>::namespaced(as_sa, "kube-system")
        .list(&ListParams::default())
        .await;
    delete_namespace(&admin, &ns).await;
    match denied {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }
    Ok(())
}
