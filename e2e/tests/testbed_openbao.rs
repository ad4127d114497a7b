//! The test bed's OpenBao trusts the local API server: a ServiceAccount token
//! logs in through Kubernetes auth and reads only what its policy allows.

use std::collections::HashMap;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use partnerplane_e2e::{Testbed, unique_name};
use serde_json::json;
use vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest;
use vaultrs::error::ClientError;

#[tokio::test]
async fn a_service_account_logs_in_and_reads_only_its_paths() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let kube_admin = testbed.kube_admin().await?;
    let ns = unique_name("smoke-bao");

    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(kube_admin.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    let accounts = Api::<ServiceAccount>::namespaced(kube_admin.clone(), &ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "app"}}))?;
    accounts.create(&PostParams::default(), &sa).await?;
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": []}}))?;
    let jwt = accounts
        .create_token_request("app", &PostParams::default(), &request)
        .await?
        .status
        .expect("token request status")
        .token;

    let bao = testbed.bao_admin()?;
    let policy = format!(r#"path "secret/data/{ns}/*" {{ capabilities = ["read"] }}"#);
    vaultrs::sys::policy::set(&bao, &ns, &policy).await?;
    vaultrs::auth::kubernetes::role::create(
        &bao,
        "kubernetes",
        &ns,
        Some(
            CreateKubernetesRoleRequest::builder()
                .bound_service_account_names(vec!["app".to_string()])
                .bound_service_account_namespaces(vec![ns.clone()])
                .token_policies(vec![ns.clone()]),
        ),
    )
    .await?;
    let secret = HashMap::from([("value", "mine")]);
    vaultrs::kv2::set(&bao, "secret", &format!("{ns}/allowed"), &secret).await?;
    vaultrs::kv2::set(&bao, "secret", &format!("other-{ns}/denied"), &secret).await?;

    let login = vaultrs::auth::kubernetes::login(&bao, "kubernetes", &ns, &jwt).await?;
    let as_sa = testbed.bao_with_token(&login.client_token)?;
    let allowed: Result<HashMap<String, String>, _> =
        vaultrs::kv2::read(&as_sa, "secret", &format!("{ns}/allowed")).await;
    let other: Result<HashMap<String, String>, _> =
        vaultrs::kv2::read(&as_sa, "secret", &format!("other-{ns}/denied")).await;
    let write = vaultrs::kv2::set(&as_sa, "secret", &format!("{ns}/allowed"), &secret).await;

    let _ = Api::<Namespace>::all(kube_admin)
        .delete(&ns, &DeleteParams::background())
        .await;
    let _ = vaultrs::kv2::delete_metadata(&bao, "secret", &format!("{ns}/allowed")).await;
    let _ = vaultrs::kv2::delete_metadata(&bao, "secret", &format!("other-{ns}/denied")).await;
    let _ = vaultrs::auth::kubernetes::role::delete(&bao, "kubernetes", &ns).await;
    let _ = vaultrs::sys::policy::delete(&bao, &ns).await;

    assert_eq!(allowed?.get("value").map(String::as_str), Some("mine"));
    assert_forbidden(other.map(|_| ()), "reading another path");
    assert_forbidden(write.map(|_| ()), "writing with a read-only policy");
    Ok(())
}

fn assert_forbidden(result: Result<(), ClientError>, what: &str) {
    match result {
        Err(ClientError::APIError { code: 403, .. }) => {}
        other => panic!("{what}: expected 403 from OpenBao, got {other:?}"),
    }
}
