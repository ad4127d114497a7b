//! Convergence from any state: manual drift in every backend and in owned
//! objects is undone, and an operator killed mid-provisioning finishes the
//! job after a restart without duplicating anything.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota, Secret};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use partnerplane::api::PartnerTenant;
use partnerplane_e2e::tenants::{
    credentials, delete_tenants, pg_admin, pg_connect_as, redis_admin, redis_user_exists,
};
use partnerplane_e2e::{Operator, Testbed, apply, unique_name, wait_condition, wait_until};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn manual_drift_in_every_backend_and_owned_object_is_undone() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    // Backends have no watch: a short resync makes drift visible quickly.
    let operator =
        Operator::start(&testbed, &unique_name("drift"), &["--resync-seconds", "2"]).await?;
    let name = format!("{}-t", operator.shard);
    apply(
        &client,
        &operator.tenant(&name, json!({"displayName": "Drift"})),
        None,
        false,
    )
    .await?;

    let result = async {
        let tenant = wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
        let status = tenant.status.unwrap();
        let (ns, pg, redis_user, vault) = (
            status.namespace.unwrap(),
            status.postgres.unwrap(),
            status.redis.unwrap().user.unwrap(),
            status.vault.unwrap(),
        );
        let admin = pg_admin(&testbed).await?;

        // Postgres: the role is dropped (its schema handed to the admin first).
        admin
            .batch_execute(&format!(
                r#"REASSIGN OWNED BY "{0}" TO postgres; DROP OWNED BY "{0}"; DROP ROLE "{0}""#,
                pg.role
            ))
            .await?;
        wait_until(
            "the role to be back and own its schema again",
            DEADLINE,
            || {
                let admin = &admin;
                let (role, schema) = (&pg.role, &pg.schema);
                async move {
                    let rows = admin
                        .query(
                            "SELECT 1 FROM pg_roles r JOIN pg_namespace n ON n.nspowner = r.oid
                         WHERE r.rolname = $1 AND n.nspname = $2 AND r.rolcanlogin",
                            &[role, schema],
                        )
                        .await?;
                    Ok((!rows.is_empty()).then_some(()))
                }
            },
        )
        .await?;

        // Redis: the ACL user is deleted.
        let mut redis = redis_admin(&testbed).await?;
        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&redis_user)
            .query_async(&mut redis)
            .await?;
        wait_until("the ACL user to be back", DEADLINE, || {
            let (testbed, user) = (&testbed, &redis_user);
            async move { Ok(redis_user_exists(testbed, user).await?.then_some(())) }
        })
        .await?;

        // OpenBao: the policy is rewritten to grant everything.
        let bao = testbed.bao_admin()?;
        let original = vaultrs::sys::policy::read(&bao, &vault.policy).await?.rules;
        vaultrs::sys::policy::set(
            &bao,
            &vault.policy,
            r#"path "*" { capabilities = ["sudo", "read", "update"] }"#,
        )
        .await?;
        wait_until("the policy to be restored", DEADLINE, || {
            let (bao, policy, original) = (&bao, &vault.policy, &original);
            async move {
                Ok(
                    (vaultrs::sys::policy::read(bao, policy).await?.rules == *original)
                        .then_some(()),
                )
            }
        })
        .await?;

        // Owned objects: the quota is edited and the role binding deleted.
        let quotas: Api<ResourceQuota> = Api::namespaced(client.clone(), &ns);
        let patch = json!({"spec": {"hard": {"pods": "1"}}});
        quotas
            .patch(
                "tenant-quota",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), &ns);
        bindings
            .delete("tenant-workload", &DeleteParams::default())
            .await?;
        wait_until(
            "the quota and the role binding to be restored",
            DEADLINE,
            || {
                let (quotas, bindings) = (&quotas, &bindings);
                async move {
                    let pods = quotas
                        .get("tenant-quota")
                        .await?
                        .spec
                        .and_then(|s| s.hard)
                        .and_then(|h| h.get("pods").cloned());
                    let binding = bindings.get_opt("tenant-workload").await?;
                    Ok(
                        (pods.map(|q| q.0).as_deref() == Some("100") && binding.is_some())
                            .then_some(()),
                    )
                }
            },
        )
        .await?;
        wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, std::slice::from_ref(&name)).await?;
    result
}

#[tokio::test]
async fn a_restart_after_a_crash_mid_provisioning_finishes_without_duplicates() -> anyhow::Result<()>
{
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let shard = unique_name("crash");
    let operator = Operator::start(&testbed, &shard, &["--concurrency", "2"]).await?;
    let names: Vec<String> = (0..8).map(|i| format!("{shard}-{i}")).collect();
    for name in &names {
        apply(
            &client,
            &operator.tenant(name, json!({"displayName": "Crash"})),
            None,
            false,
        )
        .await?;
    }
    // Kill it as soon as provisioning has visibly begun, before it can finish.
    let tenants: Api<PartnerTenant> = Api::all(client.clone());
    wait_until("provisioning to begin", DEADLINE, || {
        let tenants = tenants.clone();
        let selector = format!("partnerplane.io/shard={shard}");
        async move {
            let list = tenants
                .list(&ListParams::default().labels(&selector))
                .await?;
            Ok(list.items.iter().any(|t| t.status.is_some()).then_some(()))
        }
    })
    .await?;
    operator.kill().await?;
    let unfinished = tenants
        .list(&ListParams::default().labels(&format!("partnerplane.io/shard={shard}")))
        .await?
        .items
        .iter()
        .filter(|t| {
            partnerplane_e2e::operator::condition(t, "Ready").is_none_or(|c| c.status != "True")
        })
        .count();

    let operator = Operator::start(&testbed, &shard, &[]).await?;
    let result = async {
        let mut schemas = vec![];
        for name in &names {
            let tenant = wait_condition(&client, name, "Ready", "True", DEADLINE).await?;
            schemas.push(tenant.status.unwrap().postgres.unwrap().schema);
        }
        let admin = pg_admin(&testbed).await?;
        let prefix = format!("tenant_{}%", shard.replace('-', "_"));
        let count = |sql: &'static str| {
            let admin = &admin;
            let prefix = prefix.clone();
            async move { anyhow::Ok(admin.query_one(sql, &[&prefix]).await?.get::<_, i64>(0)) }
        };
        assert_eq!(
            count("SELECT count(*) FROM pg_roles WHERE rolname LIKE $1").await?,
            names.len() as i64
        );
        assert_eq!(
            count("SELECT count(*) FROM pg_namespace WHERE nspname LIKE $1").await?,
            names.len() as i64
        );
        let mut redis = redis_admin(&testbed).await?;
        let users: Vec<String> = redis::cmd("ACL")
            .arg("USERS")
            .query_async(&mut redis)
            .await?;
        assert_eq!(
            users
                .iter()
                .filter(|u| u.starts_with(&format!("tenant-{shard}-")))
                .count(),
            names.len()
        );
        let namespaces = Api::<Namespace>::all(client.clone())
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=partnerplane"))
            .await?;
        let ours = namespaces
            .items
            .iter()
            .filter(|n| {
                n.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&format!("ptn-{shard}-")))
            })
            .count();
        assert_eq!(ours, names.len());
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &names).await?;
    drop(operator);
    result?;
    assert!(
        unfinished > 0,
        "every tenant was Ready before the crash; nothing was interrupted"
    );
    Ok(())
}

/// What shows from outside that a step of provisioning has been done.
async fn step_done(
    testbed: &Testbed,
    client: &kube::Client,
    step: &str,
    name: &str,
) -> anyhow::Result<bool> {
    let names = partnerplane::naming::TenantNames::new(name, None);
    Ok(match step {
        "namespace" => Api::<Namespace>::all(client.clone())
            .get_opt(&names.namespace)
            .await?
            .is_some(),
        "database" => !pg_admin(testbed)
            .await?
            .query("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&names.role])
            .await?
            .is_empty(),
        "cache" => redis_user_exists(testbed, &names.redis_user).await?,
        _ => Api::<Secret>::namespaced(client.clone(), &names.namespace)
            .get_opt("partnerplane-credentials")
            .await?
            .is_some(),
    })
}

/// Holds the operator at one step of provisioning, SIGKILLs it there, and
/// proves that after a restart the stored credentials log in everywhere.
async fn killed_after(
    testbed: &Testbed,
    client: &kube::Client,
    step: &'static str,
) -> anyhow::Result<()> {
    let shard = unique_name(&format!("kill-{step}"));
    let name = format!("{shard}-t");
    let failpoint = format!("tenant-after-{step}=pause");
    let operator =
        Operator::start_with_env(testbed, &shard, &[], &[("FAILPOINTS", failpoint.as_str())])
            .await?;
    let spec = json!({"displayName": "Killed", "secrets": {"store": "Both"}});
    apply(client, &operator.tenant(&name, spec), None, false).await?;
    let reached = wait_until(&format!("{name}: the {step} step"), DEADLINE, || async {
        Ok(step_done(testbed, client, step, &name).await?.then_some(()))
    })
    .await;
    // Held at the fail point, the tenant cannot be Ready yet (a build
    // without fail points refuses FAILPOINTS at start, see main.rs).
    let held = Api::<PartnerTenant>::all(client.clone()).get(&name).await?;
    let ready_at_kill = held
        .status
        .iter()
        .flat_map(|s| &s.conditions)
        .any(|c| c.type_ == "Ready" && c.status == "True");
    operator.kill().await?;
    // The restarted operator also runs the tenant's cleanup at the end.
    let _restarted = Operator::start(testbed, &shard, &[]).await?;
    let result = async {
        reached?;
        anyhow::ensure!(
            !ready_at_kill,
            "{name} was Ready before the kill after {step}"
        );
        let tenant = wait_condition(client, &name, "Ready", "True", DEADLINE).await?;
        let status = tenant.status.unwrap();
        let ns = status.namespace.unwrap();
        let creds = credentials(client, &ns).await?;
        // Both stores hold the same credentials: the OpenBao copy logs in too.
        let vault = status
            .vault
            .context("status.vault of a store=Both tenant")?;
        let stored: std::collections::HashMap<String, String> = vaultrs::kv2::read(
            &testbed.bao_admin()?,
            &vault.mount,
            &format!("{}/credentials", vault.path),
        )
        .await?;
        for key in ["PGUSER", "PGPASSWORD", "REDIS_USER", "REDIS_PASSWORD"] {
            assert_eq!(
                stored.get(key),
                creds.get(key),
                "killed after {step}: {key} differs between OpenBao and the Secret"
            );
        }
        pg_connect_as(testbed, &creds["PGUSER"], &creds["PGPASSWORD"])
            .await
            .with_context(|| format!("killed after {step}: Postgres login"))?;
        let mut redis = redis::Client::open(
            testbed.redis_url_as(&creds["REDIS_USER"], &creds["REDIS_PASSWORD"])?,
        )?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("killed after {step}: Redis login"))?;
        let _: () = redis::cmd("SET")
            .arg(format!("{}k", creds["REDIS_KEY_PREFIX"]))
            .arg("v")
            .query_async(&mut redis)
            .await?;
        anyhow::Ok(())
    }
    .await;
    delete_tenants(client, std::slice::from_ref(&name)).await?;
    result
}

#[tokio::test]
async fn after_a_kill_at_each_step_the_stored_credentials_log_in() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let steps = ["namespace", "database", "cache", "secrets"];
    let runs = steps.map(|step| killed_after(&testbed, &client, step));
    for result in futures::future::join_all(runs).await {
        result?;
    }
    Ok(())
}
