//! Faults in shared infrastructure: a backend that goes down, and CRDs that
//! are deleted and installed again. These disturb the whole test bed, so they
//! run one after another in a single test.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams};
use partnerplane::api::PartnerTenant;
use partnerplane_e2e::operator::condition;
use partnerplane_e2e::tenants::{
    count_rows, credentials, delete_tenants, pg_connect_as, write_tenant_data,
};
use partnerplane_e2e::{
    Operator, Testbed, apply, install_crds, unique_name, wait_condition, wait_until,
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

async fn crds_reinstalled(
    testbed: &Testbed,
    client: &kube::Client,
    operator: &Operator,
) -> anyhow::Result<String> {
    let name = format!("{}-crd", operator.shard);
    let spec = json!({"displayName": "CRD reinstall", "secrets": {"store": "Both"}});
    apply(client, &operator.tenant(&name, spec.clone()), None, false).await?;
    let tenant = wait_condition(client, &name, "Ready", "True", DEADLINE).await?;
    let ns = tenant.status.unwrap().namespace.unwrap();
    let creds = credentials(client, &ns).await?;
    write_tenant_data(testbed, client, &ns, &creds, "orders", 2).await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);

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
    install_crds(client).await?;

    let namespace = Api::<Namespace>::all(client.clone()).get(&ns).await?;
    assert!(
        namespace.metadata.deletion_timestamp.is_none(),
        "the tenant namespace is being deleted"
    );
    configmaps.get("tenant-data").await?;
    let rows = count_rows(testbed, &creds["PGSCHEMA"], "orders").await?;
    assert_eq!(rows, 2);

    // Applying the tenant again restores access with the credentials it kept.
    apply(client, &operator.tenant(&name, spec), None, false).await?;
    wait_condition(client, &name, "Ready", "True", DEADLINE).await?;
    pg_connect_as(testbed, &creds["PGUSER"], &creds["PGPASSWORD"]).await?;
    Ok(name)
}

#[tokio::test]
async fn backends_going_down_and_crds_reinstalled() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    // A short resync, so state lost inside a backend is noticed quickly.
    let operator =
        Operator::start(&testbed, &unique_name("faults"), &["--resync-seconds", "3"]).await?;
    let mut created = vec![];
    let result = async {
        let pg = postgres_down(&testbed, &client, &operator).await?;
        created.push(pg.clone());
        created.push(openbao_down(&testbed, &client, &operator, &pg).await?);
        created.push(crds_reinstalled(&testbed, &client, &operator).await?);
        anyhow::Ok(())
    }
    .await;
    if result.is_err() {
        testbed.bring_up()?;
    }
    delete_tenants(&client, &created).await?;
    result
}
