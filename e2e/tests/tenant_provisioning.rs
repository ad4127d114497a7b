//! `kubectl apply` of the example tenants makes them Ready, and everything
//! they promise exists in the API server, Postgres, Redis and OpenBao under
//! the names their status reports.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    LimitRange, Namespace, ResourceQuota, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::Api;
use partnerplane::api::PartnerTenant;
use partnerplane::api::tenant::{RedisMode, SecretStore};
use partnerplane_e2e::tenants::{delete_tenants, pg_admin, redis_user_exists};
use partnerplane_e2e::{
    Operator, Testbed, apply, load_documents, repo_root, unique_name, wait_condition,
};
use serde_json::{Value, json};

/// The example tenants, renamed for this run and assigned to `operator`.
fn example_tenants(operator: &Operator, suffix: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = vec![];
    for path in [
        "examples/manufacturing-service-network/tenant.yaml",
        "examples/logistics-reseller-network/tenant.yaml",
        "examples/gitops/tenants/fabrikam-industrial/tenant.yaml",
    ] {
        for doc in load_documents(&repo_root().join(path))? {
            let name = format!(
                "{}-{suffix}",
                doc["metadata"]["name"].as_str().unwrap_or("t")
            );
            let mut spec = doc["spec"].clone();
            if let Some(ns) = spec["namespace"].as_str() {
                spec["namespace"] = json!(format!("{ns}-{suffix}"));
            }
            out.push(operator.tenant(&name, spec));
        }
    }
    Ok(out)
}

async fn check_provisioned(
    testbed: &Testbed,
    client: &kube::Client,
    tenant: &PartnerTenant,
) -> anyhow::Result<()> {
    let status = tenant.status.clone().expect("a Ready tenant has a status");
    let ns = status
        .namespace
        .clone()
        .expect("status names the namespace");

    let namespace = Api::<Namespace>::all(client.clone()).get(&ns).await?;
    assert!(
        namespace.metadata.owner_references.is_none(),
        "the namespace must not be garbage-collectable"
    );
    Api::<ResourceQuota>::namespaced(client.clone(), &ns)
        .get("tenant-quota")
        .await?;
    Api::<LimitRange>::namespaced(client.clone(), &ns)
        .get("tenant-limits")
        .await?;
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), &ns);
    // Default deny covers both directions and allows nothing (the API
    // server stores the empty rule lists as absent).
    let deny = serde_json::to_value(policies.get("default-deny").await?.spec)?;
    assert_eq!(deny["policyTypes"], json!(["Ingress", "Egress"]), "{deny}");
    for direction in ["ingress", "egress"] {
        assert!(
            matches!(&deny[direction], Value::Null) || deny[direction] == json!([]),
            "{deny}"
        );
    }
    // Every allowed egress names its destinations; DNS goes to the cluster
    // DNS pods only; backends are single addresses on their ports.
    let allowed = serde_json::to_value(policies.get("allow-tenant-traffic").await?.spec)?;
    let egress = allowed["egress"].as_array().cloned().unwrap_or_default();
    assert!(egress.len() >= 3, "{allowed}");
    for rule in &egress {
        let to = rule["to"].as_array().cloned().unwrap_or_default();
        assert!(!to.is_empty(), "a rule open to every destination: {rule}");
        let dns = rule["ports"]
            .as_array()
            .is_some_and(|ports| ports.iter().any(|p| p["port"] == 53));
        if dns {
            assert_eq!(to.len(), 1, "{rule}");
            assert_eq!(
                to[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                "kube-system",
                "{rule}"
            );
            assert!(
                to[0]["podSelector"]["matchLabels"].is_object(),
                "DNS to any pod of kube-system: {rule}"
            );
        }
        for block in to.iter().filter_map(|t| t.get("ipBlock")) {
            let cidr = block["cidr"].as_str().unwrap_or_default();
            assert!(cidr.ends_with("/32") || cidr.ends_with("/128"), "{rule}");
        }
    }
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get("tenant-workload")
        .await?;
    Api::<Role>::namespaced(client.clone(), &ns)
        .get("tenant-workload")
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .get("tenant-workload")
        .await?;

    let pg = status
        .postgres
        .clone()
        .expect("status names the schema and role");
    let row = pg_admin(testbed)
        .await?
        .query_one(
            "SELECT r.rolcanlogin, pg_get_userbyid(n.nspowner) = r.rolname
             FROM pg_roles r, pg_namespace n WHERE r.rolname = $1 AND n.nspname = $2",
            &[&pg.role, &pg.schema],
        )
        .await?;
    assert!(row.get::<_, bool>(0), "role {} cannot log in", pg.role);
    assert!(
        row.get::<_, bool>(1),
        "schema {} is not owned by {}",
        pg.schema,
        pg.role
    );

    let redis = status.redis.clone().expect("status names the Redis access");
    match redis.mode {
        RedisMode::Shared => {
            let user = redis.user.expect("shared mode names the ACL user");
            assert!(
                redis_user_exists(testbed, &user).await?,
                "ACL user {user} missing"
            );
        }
        RedisMode::Dedicated => {
            let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns)
                .get("tenant-redis")
                .await?;
            assert_eq!(sts.status.and_then(|s| s.ready_replicas), Some(1));
            Api::<Service>::namespaced(client.clone(), &ns)
                .get("tenant-redis")
                .await?;
        }
    }

    let bao = testbed.bao_admin()?;
    if let Some(vault) = &status.vault {
        let policy = vaultrs::sys::policy::read(&bao, &vault.policy).await?;
        assert!(policy.rules.contains(&vault.path), "{}", policy.rules);
        let role =
            vaultrs::auth::kubernetes::role::read(&bao, "kubernetes", &vault.auth_role).await?;
        assert_eq!(role.bound_service_account_namespaces, vec![ns.clone()]);
        let creds: std::collections::HashMap<String, String> =
            vaultrs::kv2::read(&bao, &vault.mount, &format!("{}/credentials", vault.path)).await?;
        assert_eq!(creds.get("PGUSER"), Some(&pg.role));
    }
    if tenant.spec.secrets.store != SecretStore::Vault {
        let name = status
            .credentials_secret
            .clone()
            .expect("status names the credentials Secret");
        let secret = Api::<Secret>::namespaced(client.clone(), &ns)
            .get(&name)
            .await?;
        assert!(secret.data.unwrap_or_default().contains_key("PGPASSWORD"));
    }
    Ok(())
}

#[tokio::test]
async fn example_tenants_become_ready_with_every_part_provisioned() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("examples"), &[]).await?;
    let suffix = operator.shard.trim_start_matches("examples-").to_string();
    let tenants = example_tenants(&operator, &suffix)?;
    let names: Vec<String> = tenants
        .iter()
        .map(|t| t["metadata"]["name"].as_str().unwrap().to_string())
        .collect();

    let result = async {
        for tenant in &tenants {
            apply(&client, tenant, None, false).await?;
        }
        for name in &names {
            let tenant =
                wait_condition(&client, name, "Ready", "True", Duration::from_secs(90)).await?;
            for part in [
                "NamespaceReady",
                "DatabaseReady",
                "CacheReady",
                "SecretsReady",
            ] {
                let condition = partnerplane_e2e::operator::condition(&tenant, part);
                assert_eq!(
                    condition.map(|c| c.status).as_deref(),
                    Some("True"),
                    "{name}: {part}"
                );
            }
            check_provisioned(&testbed, &client, &tenant).await?;
        }
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &names).await?;
    result
}

#[tokio::test]
async fn a_200_character_tenant_name_gets_valid_names() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("longname"), &[]).await?;
    let name = format!(
        "{}-{}",
        "a".repeat(200 - operator.shard.len() - 1),
        operator.shard
    );
    assert_eq!(name.len(), 200);
    apply(
        &client,
        &operator.tenant(&name, json!({"displayName": "Long"})),
        None,
        false,
    )
    .await?;
    let result = async {
        let tenant =
            wait_condition(&client, &name, "Ready", "True", Duration::from_secs(60)).await?;
        let status = tenant.status.clone().unwrap();
        let pg = status.postgres.clone().unwrap();
        assert!(pg.schema.len() <= 63 && pg.role.len() <= 63, "{pg:?}");
        assert!(status.namespace.as_ref().unwrap().len() <= 63);
        check_provisioned(&testbed, &client, &tenant).await
    }
    .await;
    delete_tenants(&client, std::slice::from_ref(&name)).await?;
    result
}

/// Completed tenant reconciles (the duration histogram's count).
async fn reconciles_done(operator: &Operator) -> anyhow::Result<f64> {
    let text = operator.metrics().await?;
    Ok(text
        .lines()
        .find(|l| {
            l.starts_with("partnerplane_reconcile_duration_seconds_count{")
                && l.contains("controller=\"partnertenant\"")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0))
}

/// How often the operator ran `operation` against a backend.
async fn backend_calls(operator: &Operator, operation: &str) -> anyhow::Result<f64> {
    let text = operator.metrics().await?;
    Ok(text
        .lines()
        .find(|l| {
            l.starts_with("partnerplane_backend_operation_duration_seconds_count{")
                && l.contains(&format!("operation=\"{operation}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0))
}

#[tokio::test]
async fn tenants_applied_together_are_each_provisioned_once() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("once"), &[]).await?;
    let names: Vec<String> = (0..8).map(|i| format!("{}-{i}", operator.shard)).collect();
    for name in &names {
        apply(
            &client,
            &operator.tenant(name, json!({"displayName": "Once"})),
            None,
            false,
        )
        .await?;
    }
    let result = async {
        for name in &names {
            wait_condition(&client, name, "Ready", "True", Duration::from_secs(90)).await?;
        }
        partnerplane_e2e::wait_until(
            "every started reconcile to finish",
            Duration::from_secs(30),
            || async {
                let started = operator.metric_sum("partnerplane_reconciles_total").await?;
                Ok((reconciles_done(&operator).await? == started).then_some(()))
            },
        )
        .await?;
        // The finalizer is added in the pass that provisions, and the echo
        // of that write starts no second one.
        assert_eq!(
            operator.metric_sum("partnerplane_reconciles_total").await?,
            names.len() as f64,
            "reconciles of {} new tenants",
            names.len()
        );
        // The echoes of the operator's own writes and the quota
        // controller's status updates start no second pass over the backends.
        for operation in ["ensure_tenant", "ensure_user", "ensure_policy"] {
            assert_eq!(
                backend_calls(&operator, operation).await?,
                names.len() as f64,
                "{operation} per tenant"
            );
        }
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &names).await?;
    result
}
