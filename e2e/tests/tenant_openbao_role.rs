//! A tenant's Kubernetes-auth role in OpenBao admits only the tenant's
//! workload ServiceAccount, with a token issued for the role's audience, and
//! the operator puts the role back when someone widens it.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use partnerplane::api::tenant::VaultStatus;
use partnerplane::backends::vault::AUDIENCE;
use partnerplane::naming::WORKLOAD_SERVICE_ACCOUNT;
use partnerplane_e2e::tenants::{credentials, delete_tenants};
use partnerplane_e2e::{Operator, Testbed, apply, unique_name, wait_condition, wait_until};
use serde_json::{Value, json};
use vaultrs::api::auth::kubernetes::requests::CreateKubernetesRoleRequest;
use vaultrs::error::ClientError;

/// The Kubernetes-auth mount of the test bed's OpenBao.
const AUTH_MOUNT: &str = "kubernetes";

/// Applies a tenant whose secrets go to OpenBao and waits until it is Ready.
async fn provision(
    client: &kube::Client,
    operator: &Operator,
    name: &str,
) -> anyhow::Result<(String, VaultStatus)> {
    let tenant = operator.tenant(
        name,
        json!({"displayName": name, "secrets": {"store": "Both"}}),
    );
    apply(client, &tenant, None, false).await?;
    let tenant = wait_condition(client, name, "Ready", "True", Duration::from_secs(60)).await?;
    let status = tenant.status.expect("status of a Ready tenant");
    Ok((
        status.namespace.expect("namespace of a Ready tenant"),
        status
            .vault
            .expect("OpenBao names of a tenant storing secrets there"),
    ))
}

/// A token of `account`, for `audiences` (the API server's own when empty).
async fn token(
    client: &kube::Client,
    namespace: &str,
    account: &str,
    audiences: &[&str],
) -> anyhow::Result<String> {
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": audiences}}))?;
    Ok(Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await?
        .status
        .expect("token request status")
        .token)
}

/// Asserts that OpenBao refused the login with 403 and `reason`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, ClientError>, reason: &str) {
    match result {
        Err(ClientError::APIError { code: 403, errors })
            if errors.iter().any(|e| e.contains(reason)) => {}
        other => panic!("expected 403 ({reason}) from OpenBao, got {other:?}"),
    }
}

#[tokio::test]
async fn only_the_workload_account_with_the_audience_logs_in() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(
        &testbed,
        &unique_name("openbao"),
        &["--resync-seconds", "2"],
    )
    .await?;
    let name = format!("{}-login", operator.shard);

    let result = async {
        let (namespace, vault) = provision(&client, &operator, &name).await?;
        let bao = testbed.bao_admin()?;

        // Another ServiceAccount of the same namespace, even with the audience.
        let intruder: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "intruder"}}))?;
        Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
            .create(&PostParams::default(), &intruder)
            .await?;
        let jwt = token(&client, &namespace, "intruder", &[AUDIENCE]).await?;
        assert_refused(
            vaultrs::auth::kubernetes::login(&bao, AUTH_MOUNT, &vault.auth_role, &jwt).await,
            "service account name not authorized",
        );

        // The workload's token for the Kubernetes API.
        let jwt = token(&client, &namespace, WORKLOAD_SERVICE_ACCOUNT, &[]).await?;
        assert_refused(
            vaultrs::auth::kubernetes::login(&bao, AUTH_MOUNT, &vault.auth_role, &jwt).await,
            "invalid audience",
        );

        // The workload's token for OpenBao: logs in with the tenant's policy
        // and the role's token lifetime, and reads the tenant's credentials.
        let jwt = token(&client, &namespace, WORKLOAD_SERVICE_ACCOUNT, &[AUDIENCE]).await?;
        let login =
            vaultrs::auth::kubernetes::login(&bao, AUTH_MOUNT, &vault.auth_role, &jwt).await?;
        let mut policies = login.token_policies.clone();
        policies.sort();
        assert_eq!(policies, ["default", vault.policy.as_str()]);
        assert_eq!(login.lease_duration, 3600);
        let as_workload = testbed.bao_with_token(&login.client_token)?;
        let stored: HashMap<String, String> = vaultrs::kv2::read(
            &as_workload,
            &vault.mount,
            &format!("{}/credentials", vault.path),
        )
        .await?;
        let secret = credentials(&client, &namespace).await?;
        assert_eq!(stored.get("PGUSER"), secret.get("PGUSER"));
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &[name]).await?;
    result
}

#[tokio::test]
async fn a_widened_role_is_put_back() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(
        &testbed,
        &unique_name("openbao"),
        &["--resync-seconds", "2"],
    )
    .await?;
    let name = format!("{}-drift", operator.shard);

    let result = async {
        let (namespace, vault) = provision(&client, &operator, &name).await?;
        let bao = testbed.bao_admin()?;

        // An admin makes the role periodic and open to every ServiceAccount.
        vaultrs::auth::kubernetes::role::create(
            &bao,
            AUTH_MOUNT,
            &vault.auth_role,
            Some(
                CreateKubernetesRoleRequest::builder()
                    .bound_service_account_names(vec!["*".to_string()])
                    .bound_service_account_namespaces(vec![namespace.clone()])
                    .token_period("24h"),
            ),
        )
        .await?;

        let path = format!("role/{}", vault.auth_role);
        let mount = format!("auth/{AUTH_MOUNT}");
        let role = wait_until(
            "the role to read as desired again",
            Duration::from_secs(30),
            || {
                let (bao, path, mount) = (&bao, &path, &mount);
                async move {
                    let role = vaultrs::kv1::get_raw(bao, mount, path).await?.data;
                    let repaired = role["token_period"] == json!(0)
                        && role["bound_service_account_names"] == json!([WORKLOAD_SERVICE_ACCOUNT]);
                    Ok(repaired.then_some(role))
                }
            },
        )
        .await?;
        let expect = |field: &str, value: Value| {
            assert_eq!(role[field], value, "{field} of {role:#}");
        };
        expect("bound_service_account_namespaces", json!([namespace]));
        expect("audience", json!(AUDIENCE));
        expect("token_policies", json!([vault.policy]));
        expect("token_ttl", json!(3600));
        expect("token_type", json!("service"));
        expect("token_bound_cidrs", json!([]));
        for legacy in ["period", "policies", "ttl"] {
            assert!(role.get(legacy).is_none(), "{legacy} of {role:#}");
        }
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &[name]).await?;
    result
}
