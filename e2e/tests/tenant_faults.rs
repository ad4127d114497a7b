//! Faults in shared infrastructure: a backend that goes down, and CRDs that
//! are deleted and installed again. These disturb the whole test bed, so they
//! run one after another in a single test.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use partnerplane::api::PartnerTenant;
use partnerplane_e2e::events::wait_event;
use partnerplane_e2e::operator::condition;
use partnerplane_e2e::tenants::{
    count_rows, credentials, delete_tenants, pg_connect_as, write_tenant_data,
};
use partnerplane_e2e::{
    Operator, Testbed, apply, install_crds, unique_name, wait_condition, wait_deleted, wait_until,
};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(180);

/// Waits until the parts read as expected, and the Ready condition names the failing one.
async fn wait_parts(
    client: &kube::Client,
    name: &str,
    expected: &[(&str, &str)],
    ready_reason: &str,
) -> anyhow::Result<PartnerTenant> {
    let api: Api<PartnerTenant> = Api::all(client.clone());
    wait_until(
        &format!("{name}: {expected:?}, Ready reason {ready_reason}"),
        DEADLINE,
        || {
            let api = api.clone();
            async move {
                let tenant = api.get(name).await?;
                let parts_match = expected.iter().all(|(part, status)| {
                    condition(&tenant, part).is_some_and(|c| c.status == *status)
                });
                let ready = condition(&tenant, "Ready");
                let reason_match = ready
                    .as_ref()
                    .is_some_and(|c| c.reason == ready_reason && c.status == "False");
                Ok((parts_match && reason_match).then_some(tenant))
            }
        },
    )
    .await
}

/// A stopped backend as a new tenant sees it: every part converges but
/// `failing`, whose condition names the backend.
struct Outage<'a> {
    failing: &'static str,
    reason: &'static str,
    message: &'a str,
}

/// Applies a tenant while a backend is down, checks the outage, then brings
/// the test bed back up.
async fn apply_during_outage(
    testbed: &Testbed,
    client: &kube::Client,
    operator: &Operator,
    name: &str,
    outage: Outage<'_>,
) -> anyhow::Result<()> {
    let result = async {
        apply(
            client,
            &operator.tenant(name, json!({"displayName": "Outage"})),
            None,
            false,
        )
        .await?;
        let parts = [
            "NamespaceReady",
            "DatabaseReady",
            "CacheReady",
            "SecretsReady",
        ]
        .map(|part| {
            (
                part,
                if part == outage.failing {
                    "False"
                } else {
                    "True"
                },
            )
        });
        let tenant = wait_parts(client, name, &parts, outage.reason).await?;
        let message = condition(&tenant, outage.failing).unwrap().message;
        assert!(message.contains(outage.message), "{message}");
        // The category reaches alerts and `kubectl describe` unchanged.
        let series = format!(
            "partnerplane_reconcile_errors_total{{controller=\"partnertenant\",reason=\"{}\"}}",
            outage.reason
        );
        // Counted once the reconcile returns, after its status write.
        wait_until(&format!("{series} to count"), DEADLINE, || {
            let series = &series;
            async move { Ok((operator.metric_sum(series).await? >= 1.0).then_some(())) }
        })
        .await?;
        let event = wait_event(client, name, outage.reason, DEADLINE).await?;
        assert!(event.contains(outage.message), "{event}");
        anyhow::Ok(())
    }
    .await;
    testbed.bring_up()?;
    result
}

async fn postgres_down(
    testbed: &Testbed,
    client: &kube::Client,
    operator: &Operator,
) -> anyhow::Result<String> {
    let name = format!("{}-pg", operator.shard);
    testbed.stop_postgres()?;
    let outage = Outage {
        failing: "DatabaseReady",
        reason: "PostgresUnavailable",
        message: "Postgres backend \"default\" is unavailable",
    };
    apply_during_outage(testbed, client, operator, &name, outage).await?;
    wait_condition(client, &name, "Ready", "True", DEADLINE).await?;
    Ok(name)
}

async fn openbao_down(
    testbed: &Testbed,
    client: &kube::Client,
    operator: &Operator,
    earlier: &str,
) -> anyhow::Result<String> {
    let name = format!("{}-bao", operator.shard);
    testbed.stop_openbao()?;
    let outage = Outage {
        failing: "SecretsReady",
        reason: "VaultUnavailable",
        message: "Vault/OpenBao is unavailable",
    };
    // OpenBao's dev mode starts empty: everything must be provisioned again.
    apply_during_outage(testbed, client, operator, &name, outage).await?;
    let bao = testbed.bao_admin()?;
    for tenant in [&name, &earlier.to_string()] {
        let ready = wait_condition(client, tenant, "Ready", "True", DEADLINE).await?;
        let vault = ready.status.unwrap().vault.unwrap();
        // Re-provisioned at the next resync: the credentials in OpenBao are
        // then the ones the database accepts.
        wait_until(
            &format!("{tenant}: OpenBao credentials that Postgres accepts"),
            DEADLINE,
            || {
                let (bao, vault) = (&bao, &vault);
                async move {
                    let creds: HashMap<String, String> = vaultrs::kv2::read(
                        bao,
                        &vault.mount,
                        &format!("{}/credentials", vault.path),
                    )
                    .await?;
                    pg_connect_as(testbed, &creds["PGUSER"], &creds["PGPASSWORD"]).await?;
                    Ok(Some(()))
                }
            },
        )
        .await?;
    }
    Ok(name)
}

/// A tenant of each deletion policy, with data in every backend.
struct Seeded {
    name: String,
    namespace: String,
    creds: std::collections::BTreeMap<String, String>,
    vault_path: String,
    spec: serde_json::Value,
}

async fn seed(
    testbed: &Testbed,
    client: &kube::Client,
    operator: &Operator,
    name: String,
    policy: &str,
) -> anyhow::Result<Seeded> {
    let spec = json!({"displayName": "CRD reinstall", "secrets": {"store": "Both"}, "deletionPolicy": policy});
    apply(client, &operator.tenant(&name, spec.clone()), None, false).await?;
    let tenant = wait_condition(client, &name, "Ready", "True", DEADLINE).await?;
    let status = tenant.status.unwrap();
    let namespace = status.namespace.unwrap();
    let creds = credentials(client, &namespace).await?;
    write_tenant_data(testbed, client, &namespace, &creds, "orders", 2).await?;
    let mut redis =
        redis::Client::open(testbed.redis_url_as(&creds["REDIS_USER"], &creds["REDIS_PASSWORD"])?)?
            .get_multiplexed_async_connection()
            .await?;
    let _: () = redis::cmd("SET")
        .arg(format!("{}order:1", creds["REDIS_KEY_PREFIX"]))
        .arg("open")
        .query_async(&mut redis)
        .await?;
    Ok(Seeded {
        name,
        namespace,
        creds,
        vault_path: status.vault.unwrap().path,
        spec,
    })
}

/// Everything the tenant had is still there and its credentials still work.
async fn assert_intact(testbed: &Testbed, client: &kube::Client, t: &Seeded) -> anyhow::Result<()> {
    let namespace = Api::<Namespace>::all(client.clone())
        .get(&t.namespace)
        .await?;
    assert!(
        namespace.metadata.deletion_timestamp.is_none(),
        "{}: the tenant namespace is being deleted",
        t.name
    );
    Api::<ConfigMap>::namespaced(client.clone(), &t.namespace)
        .get("tenant-data")
        .await?;
    assert_eq!(
        credentials(client, &t.namespace).await?,
        t.creds,
        "{}",
        t.name
    );
    assert_eq!(
        count_rows(testbed, &t.creds["PGSCHEMA"], "orders").await?,
        2
    );
    // The tenant's own credentials still log in: no access was removed.
    let pg = pg_connect_as(testbed, &t.creds["PGUSER"], &t.creds["PGPASSWORD"]).await?;
    let rows: i64 = pg
        .query_one(
            &format!(r#"SELECT count(*) FROM "{}".orders"#, t.creds["PGSCHEMA"]),
            &[],
        )
        .await?
        .get(0);
    assert_eq!(rows, 2);
    let mut redis = redis::Client::open(
        testbed.redis_url_as(&t.creds["REDIS_USER"], &t.creds["REDIS_PASSWORD"])?,
    )?
    .get_multiplexed_async_connection()
    .await?;
    let value: Option<String> = redis::cmd("GET")
        .arg(format!("{}order:1", t.creds["REDIS_KEY_PREFIX"]))
        .query_async(&mut redis)
        .await?;
    assert_eq!(value.as_deref(), Some("open"), "{}", t.name);
    let stored: HashMap<String, String> = vaultrs::kv2::read(
        &testbed.bao_admin()?,
        "secret",
        &format!("{}/credentials", t.vault_path),
    )
    .await?;
    assert_eq!(stored.get("PGPASSWORD"), t.creds.get("PGPASSWORD"));
    vaultrs::auth::kubernetes::role::read(
        &testbed.bao_admin()?,
        "kubernetes",
        &format!("tenant-{}", t.name),
    )
    .await?;
    Ok(())
}

async fn crds_reinstalled(
    testbed: &Testbed,
    client: &kube::Client,
    operator: &Operator,
) -> anyhow::Result<Vec<String>> {
    let retained = seed(
        testbed,
        client,
        operator,
        format!("{}-keep", operator.shard),
        "Retain",
    )
    .await?;
    let deleted = seed(
        testbed,
        client,
        operator,
        format!("{}-del", operator.shard),
        "Delete",
    )
    .await?;

    // Deleting a CRD deletes every tenant in the cluster: an operator for all
    // of them lets each one's finalizer run, whoever created it.
    let everyone = Operator::start_unsharded(testbed, &format!("{}-all", operator.shard)).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in partnerplane::api::crd::all() {
        crds.delete(
            crd.metadata.name.as_deref().unwrap(),
            &DeleteParams::default(),
        )
        .await?;
    }
    wait_until("the CRDs to be gone", DEADLINE, || {
        let crds = crds.clone();
        async move {
            for crd in partnerplane::api::crd::all() {
                if crds
                    .get_opt(crd.metadata.name.as_deref().unwrap())
                    .await?
                    .is_some()
                {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        }
    })
    .await?;
    drop(everyone);
    for t in [&retained, &deleted] {
        let message =
            wait_event(client, &t.name, "CustomResourceDefinitionDeleted", DEADLINE).await?;
        assert!(message.contains("without cleanup"), "{message}");
        assert_intact(testbed, client, t).await?;
    }
    install_crds(client).await?;

    // Applying the tenants again adopts what they had, credentials included.
    for t in [&retained, &deleted] {
        apply(
            client,
            &operator.tenant(&t.name, t.spec.clone()),
            None,
            false,
        )
        .await?;
        wait_condition(client, &t.name, "Ready", "True", DEADLINE).await?;
        assert_intact(testbed, client, t).await?;
    }
    Ok(vec![retained.name, deleted.name])
}

/// Deleting tenants while OpenBao is down: one that never used it goes at
/// once; one that did waits, says why, and is let go by the abandon
/// annotation with an Event naming what was left behind.
async fn deletion_while_openbao_is_down(
    testbed: &Testbed,
    client: &kube::Client,
    operator: &Operator,
) -> anyhow::Result<()> {
    let plain = format!("{}-k8s", operator.shard);
    let vaulted = format!("{}-vlt", operator.shard);
    let specs = [
        (
            &plain,
            json!({"displayName": "No vault", "secrets": {"store": "KubernetesSecret"}, "deletionPolicy": "Delete"}),
        ),
        (
            &vaulted,
            json!({"displayName": "Vault", "secrets": {"store": "Vault"}, "deletionPolicy": "Delete"}),
        ),
    ];
    for (name, spec) in &specs {
        apply(client, &operator.tenant(name, spec.clone()), None, false).await?;
        wait_condition(client, name, "Ready", "True", DEADLINE).await?;
    }
    testbed.stop_openbao()?;
    let result = async {
        let api: Api<PartnerTenant> = Api::all(client.clone());
        api.delete(&plain, &DeleteParams::default()).await?;
        wait_deleted(client, &plain, DEADLINE).await?;

        api.delete(&vaulted, &DeleteParams::default()).await?;
        // Its deletion waits on OpenBao, and says so.
        wait_until(
            &format!("{vaulted}: deletion waiting on OpenBao"),
            DEADLINE,
            || async {
                let tenant = api.get(&vaulted).await?;
                Ok(condition(&tenant, "Ready")
                    .filter(|c| {
                        c.reason == "VaultUnavailable" && c.message.starts_with("deleting:")
                    })
                    .map(|_| ()))
            },
        )
        .await?;
        let patch =
            json!({"metadata": {"annotations": {"partnerplane.io/abandon-backends": "vault"}}});
        api.patch(&vaulted, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        wait_deleted(client, &vaulted, DEADLINE).await?;
        let left = wait_event(client, &vaulted, "BackendsAbandoned", DEADLINE).await?;
        assert!(left.contains(&format!("policy tenant-{vaulted}")), "{left}");
        assert!(left.contains(&format!("tenants/{vaulted}")), "{left}");
        anyhow::Ok(())
    }
    .await;
    testbed.bring_up()?;
    result
}

/// Brings every stopped part of the test bed back when dropped.
struct RestoreOnDrop<'a>(&'a Testbed);

impl Drop for RestoreOnDrop<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.bring_up() {
            eprintln!("bringing the test bed back up failed: {e:#}");
        }
    }
}

/// ACL changes are saved in groups; each tenant is reported Ready only once
/// a save that includes its user has finished, so a Redis restart straight
/// after a burst of tenants loses none of them. The operator is stopped
/// first, so nothing could re-create a lost user before it is looked for.
async fn redis_restart_keeps_users(testbed: &Testbed, client: &kube::Client) -> anyhow::Result<()> {
    let shard = unique_name("acl-burst");
    let operator = Operator::start(testbed, &shard, &[]).await?;
    let names: Vec<String> = (0..12).map(|i| format!("{shard}-{i}")).collect();
    let result = async {
        for name in &names {
            let spec = json!({"displayName": name, "secrets": {"store": "KubernetesSecret"}});
            apply(client, &operator.tenant(name, spec), None, false).await?;
        }
        let mut creds = vec![];
        for name in &names {
            let t = wait_condition(client, name, "Ready", "True", DEADLINE).await?;
            let ns = t.status.and_then(|s| s.namespace).expect("namespace");
            creds.push(credentials(client, &ns).await?);
        }
        operator.kill().await?;
        testbed.stop_redis().await?;
        testbed.bring_up()?;
        for c in &creds {
            let login = async {
                let mut session = redis::Client::open(
                    testbed.redis_url_as(&c["REDIS_USER"], &c["REDIS_PASSWORD"])?,
                )?
                .get_multiplexed_async_connection()
                .await?;
                let pong: String = redis::cmd("PING").query_async(&mut session).await?;
                anyhow::Ok(pong)
            };
            let pong = login
                .await
                .with_context(|| format!("{} logs in after the restart", c["REDIS_USER"]))?;
            assert_eq!(pong, "PONG");
        }
        anyhow::Ok(())
    }
    .await;
    // Deletion needs an operator of the shard, whether or not the checks passed.
    let _operator = Operator::start(testbed, &shard, &[]).await?;
    delete_tenants(client, &names).await?;
    result
}

#[tokio::test]
async fn backends_going_down_and_crds_reinstalled() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    // Even a failed assertion must not leave a backend down for the suites after this one.
    let _restore = RestoreOnDrop(&testbed);
    let client = testbed.kube_admin().await?;
    // A short resync, so state lost inside a backend is noticed quickly.
    let operator =
        Operator::start(&testbed, &unique_name("faults"), &["--resync-seconds", "3"]).await?;
    let mut created = vec![];
    let result = async {
        let pg = postgres_down(&testbed, &client, &operator).await?;
        created.push(pg.clone());
        created.push(openbao_down(&testbed, &client, &operator, &pg).await?);
        deletion_while_openbao_is_down(&testbed, &client, &operator).await?;
        created.extend(crds_reinstalled(&testbed, &client, &operator).await?);
        redis_restart_keeps_users(&testbed, &client).await?;
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        testbed.bring_up()?;
    }
    delete_tenants(&client, &created).await?;
    result
}
