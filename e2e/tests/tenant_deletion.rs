//! Deletion honours the policy: `Retain` removes access and keeps the data,
//! the namespace and everything in it; `Delete` leaves nothing behind.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ResourceQuota, Secret, Service};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use partnerplane::api::PartnerTenant;
use partnerplane_e2e::operator::condition;
use partnerplane_e2e::tenants::{
    count_rows, credentials, delete_tenants, pg_admin, pg_connect_as, redis_user_exists,
    write_tenant_data,
};
use partnerplane_e2e::{
    Operator, Testbed, apply, unique_name, wait_condition, wait_deleted, wait_until,
};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);
const NAMESPACE_CONTROLLER_DEADLINE: Duration = Duration::from_secs(240);

#[tokio::test]
async fn retain_keeps_data_and_namespace_but_revokes_every_credential() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("retain"), &[]).await?;
    let name = format!("{}-t", operator.shard);
    let spec = json!({"displayName": "Retained", "secrets": {"store": "Both"}, "deletionPolicy": "Retain"});
    apply(&client, &operator.tenant(&name, spec), None, false).await?;
    let tenant = wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
    let status = tenant.status.unwrap();
    let ns = status.namespace.unwrap();
    let creds = credentials(&client, &ns).await?;

    write_tenant_data(&testbed, &client, &ns, &creds, "invoices", 3).await?;
    let pg = pg_connect_as(&testbed, &creds["PGUSER"], &creds["PGPASSWORD"]).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let bao = testbed.bao_admin()?;
    let vault = status.vault.unwrap();

    // Whoever can edit the tenant cannot keep its access alive past deletion
    // by "abandoning" backends that answer.
    let abandon = json!({"metadata": {"annotations": {"partnerplane.io/abandon-backends": "all"}}});
    let tenants: Api<PartnerTenant> = Api::all(client.clone());
    tenants
        .patch(&name, &PatchParams::default(), &Patch::Merge(&abandon))
        .await?;
    tenants.delete(&name, &DeleteParams::default()).await?;
    wait_deleted(&client, &name, DEADLINE).await?;

    // Data and namespace stay, with the objects the operator made in it.
    let rows = count_rows(&testbed, &creds["PGSCHEMA"], "invoices").await?;
    assert_eq!(rows, 3);
    let namespace = Api::<Namespace>::all(client.clone()).get(&ns).await?;
    assert!(namespace.metadata.deletion_timestamp.is_none());
    configmaps.get("tenant-data").await?;
    // No owner reference is left for the garbage collector to act on.
    let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
    let quota = quotas.get("tenant-quota").await?;
    assert!(
        quota
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );

    // Every credential stops working.
    let login = pg_connect_as(&testbed, &creds["PGUSER"], &creds["PGPASSWORD"]).await;
    let refused = login.expect_err("the tenant's Postgres role can still log in");
    let sqlstate = refused
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .map(|c| c.code().to_string());
    // 28000: "role … is not permitted to log in".
    assert_eq!(sqlstate.as_deref(), Some("28000"), "{refused:#}");
    assert!(
        pg.simple_query("SELECT 1").await.is_err(),
        "the open session survived"
    );
    assert!(!redis_user_exists(&testbed, &creds["REDIS_USER"]).await?);
    let missing_role =
        vaultrs::auth::kubernetes::role::read(&bao, "kubernetes", &vault.auth_role).await;
    assert!(
        matches!(
            missing_role,
            Err(vaultrs::error::ClientError::APIError { code: 404, .. })
        ),
        "the auth role is still there: {missing_role:?}"
    );
    let missing_policy = vaultrs::sys::policy::read(&bao, &vault.policy).await;
    assert!(
        matches!(
            missing_policy,
            Err(vaultrs::error::ClientError::APIError { code: 404, .. })
        ),
        "the policy is still there: {missing_policy:?}"
    );
    let kept: HashMap<String, String> =
        vaultrs::kv2::read(&bao, &vault.mount, &format!("{}/credentials", vault.path)).await?;
    assert!(kept.contains_key("PGUSER"), "retained secrets are kept");

    // Clean up what Retain kept.
    pg_admin(&testbed)
        .await?
        .batch_execute(&format!(
            r#"DROP SCHEMA "{0}" CASCADE; DROP OWNED BY "{1}"; DROP ROLE "{1}""#,
            creds["PGSCHEMA"], creds["PGUSER"]
        ))
        .await?;
    Api::<Namespace>::all(client.clone())
        .delete(&ns, &DeleteParams::default())
        .await?;
    let _ =
        vaultrs::kv2::delete_metadata(&bao, &vault.mount, &format!("{}/credentials", vault.path))
            .await;
    Ok(())
}

#[tokio::test]
async fn delete_leaves_nothing_behind() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("delete"), &[]).await?;
    let name = format!("{}-t", operator.shard);
    let spec =
        json!({"displayName": "Deleted", "secrets": {"store": "Both"}, "deletionPolicy": "Delete"});
    apply(&client, &operator.tenant(&name, spec), None, false).await?;
    let tenant = wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
    let status = tenant.status.unwrap();
    let ns = status.namespace.unwrap();
    let pg = status.postgres.unwrap();
    let redis = status.redis.unwrap();
    let vault = status.vault.unwrap();
    let creds = credentials(&client, &ns).await?;
    let mut tenant_redis =
        redis::Client::open(testbed.redis_url_as(&creds["REDIS_USER"], &creds["REDIS_PASSWORD"])?)?
            .get_multiplexed_async_connection()
            .await?;
    let _: () = redis::cmd("SET")
        .arg(format!("{}cache", creds["REDIS_KEY_PREFIX"]))
        .arg("1")
        .query_async(&mut tenant_redis)
        .await?;

    Api::<PartnerTenant>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await?;
    wait_deleted(&client, &name, DEADLINE).await?;

    let admin = pg_admin(&testbed).await?;
    let left: i64 = admin
        .query_one(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = $1) + (SELECT count(*) FROM pg_namespace WHERE nspname = $2)",
            &[&pg.role, &pg.schema],
        )
        .await?
        .get(0);
    assert_eq!(left, 0, "schema or role left behind");
    assert!(!redis_user_exists(&testbed, redis.user.as_deref().unwrap()).await?);
    let mut admin_redis = partnerplane_e2e::tenants::redis_admin(&testbed).await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", creds["REDIS_KEY_PREFIX"]))
        .query_async(&mut admin_redis)
        .await?;
    assert!(keys.is_empty(), "keys left behind: {keys:?}");
    let bao = testbed.bao_admin()?;
    assert!(
        vaultrs::sys::policy::read(&bao, &vault.policy)
            .await
            .is_err()
    );
    assert!(
        vaultrs::auth::kubernetes::role::read(&bao, "kubernetes", &vault.auth_role)
            .await
            .is_err()
    );
    assert!(
        vaultrs::kv2::list(&bao, &vault.mount, &vault.path)
            .await
            .is_err(),
        "secrets left behind"
    );
    let namespaces: Api<Namespace> = Api::all(client.clone());
    // The operator deleted it (it is terminating at once); emptying it is the
    // namespace controller's work, which queues behind every other suite's.
    let terminating = namespaces.get_opt(&ns).await?;
    assert!(
        terminating.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
        "the operator did not delete the tenant namespace"
    );
    wait_until(
        "the tenant namespace to be gone",
        NAMESPACE_CONTROLLER_DEADLINE,
        || {
            let namespaces = namespaces.clone();
            let ns = ns.clone();
            async move { Ok(namespaces.get_opt(&ns).await?.is_none().then_some(())) }
        },
    )
    .await?;
    Ok(())
}

/// Argo CD prunes with foreground propagation: the garbage collector then
/// deletes whatever names the tenant as its owner before the tenant goes.
/// A `Retain` tenant's credentials and its own Redis must survive that, and
/// reusing its name later is an explicit adoption, not an accident.
#[tokio::test]
async fn foreground_deletion_of_a_retained_tenant_keeps_credentials_and_dedicated_redis()
-> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("foreground"), &[]).await?;
    let name = format!("{}-t", operator.shard);
    let spec = json!({"displayName": "Foreground", "secrets": {"store": "KubernetesSecret"},
                      "redis": {"mode": "Dedicated", "memory": "256Mi"}, "deletionPolicy": "Retain"});
    apply(&client, &operator.tenant(&name, spec.clone()), None, false).await?;
    let tenant = wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
    let ns = tenant.status.unwrap().namespace.unwrap();
    let creds = credentials(&client, &ns).await?;

    let result = async {
        // Nothing the tenant keeps names it as owner, so the garbage
        // collector has no path to them, now or after the tenant is gone.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let owners = [
            ("Secret partnerplane-credentials", secrets.get("partnerplane-credentials").await?.metadata),
            ("Secret tenant-redis-password", secrets.get("tenant-redis-password").await?.metadata),
            ("StatefulSet tenant-redis", Api::<StatefulSet>::namespaced(client.clone(), &ns).get("tenant-redis").await?.metadata),
            ("Service tenant-redis", Api::<Service>::namespaced(client.clone(), &ns).get("tenant-redis").await?.metadata),
        ];
        for (what, metadata) in owners {
            assert_eq!(metadata.owner_references.unwrap_or_default(), vec![], "{what}");
        }
        Api::<PartnerTenant>::all(client.clone())
            .delete(&name, &DeleteParams::foreground())
            .await?;
        wait_deleted(&client, &name, DEADLINE).await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        for secret in ["partnerplane-credentials", "tenant-redis-password"] {
            let kept = secrets.get(secret).await?;
            assert!(
                kept.metadata.deletion_timestamp.is_none(),
                "{secret} is being deleted"
            );
        }
        assert_eq!(credentials(&client, &ns).await?, creds);
        let redis = Api::<StatefulSet>::namespaced(client.clone(), &ns)
            .get("tenant-redis")
            .await?;
        assert!(
            redis.metadata.deletion_timestamp.is_none(),
            "the tenant's Redis is being deleted"
        );
        Api::<Service>::namespaced(client.clone(), &ns)
            .get("tenant-redis")
            .await?;

        // The same name with another namespace would inherit the kept
        // schema, keys and secrets: refused.
        let elsewhere = json!({"displayName": "Foreground", "namespace": format!("{ns}-new"),
                               "secrets": {"store": "KubernetesSecret"}, "deletionPolicy": "Retain"});
        apply(&client, &operator.tenant(&name, elsewhere), None, false).await?;
        let refused = wait_condition(&client, &name, "Stalled", "True", DEADLINE).await?;
        let message = condition(&refused, "Stalled").unwrap().message;
        assert!(message.contains("used by an earlier tenant") && message.contains(&ns), "{message}");
        Api::<PartnerTenant>::all(client.clone())
            .delete(&name, &DeleteParams::default())
            .await?;
        wait_deleted(&client, &name, DEADLINE).await?;
        let namespaces: Api<Namespace> = Api::all(client.clone());
        assert!(namespaces.get_opt(&format!("{ns}-new")).await?.is_none());

        // The same name again: refused until the namespace opts in.
        apply(&client, &operator.tenant(&name, spec.clone()), None, false).await?;
        let refused = wait_condition(&client, &name, "Stalled", "True", DEADLINE).await?;
        let message = condition(&refused, "Stalled").unwrap().message;
        assert!(message.contains("earlier tenant"), "{message}");
        let patch = json!({"metadata": {"annotations": {"partnerplane.io/adopt-by": name}}});
        Api::<Namespace>::all(client.clone())
            .patch(&ns, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
        assert_eq!(
            credentials(&client, &ns).await?,
            creds,
            "adoption keeps the credentials"
        );
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, std::slice::from_ref(&name)).await?;
    result
}
