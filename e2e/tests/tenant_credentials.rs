//! Credentials as observed state: the credential store is the truth. An
//! edited store rotates every backend to it, a lost one ends with new
//! credentials that log in everywhere, and each rotation is an Event.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use partnerplane::api::tenant::VaultStatus;
use partnerplane_e2e::events::{events_about, wait_event};
use partnerplane_e2e::tenants::{credentials, delete_tenants, pg_connect_as, redis_admin};
use partnerplane_e2e::{Operator, Testbed, apply, unique_name, wait_condition, wait_until};
use serde_json::json;

const DEADLINE: Duration = Duration::from_secs(60);

/// Whether both passwords log in to Postgres and Redis.
async fn logs_in(testbed: &Testbed, creds: &BTreeMap<String, String>) -> anyhow::Result<()> {
    pg_connect_as(testbed, &creds["PGUSER"], &creds["PGPASSWORD"]).await?;
    let mut redis =
        redis::Client::open(testbed.redis_url_as(&creds["REDIS_USER"], &creds["REDIS_PASSWORD"])?)?
            .get_multiplexed_async_connection()
            .await?;
    let _: () = redis::cmd("SET")
        .arg(format!("{}probe", creds["REDIS_KEY_PREFIX"]))
        .arg("1")
        .query_async(&mut redis)
        .await?;
    Ok(())
}

/// Waits until the credentials Secret holds passwords other than `old`'s
/// that log in everywhere; returns them.
async fn wait_rotated(
    testbed: &Testbed,
    client: &kube::Client,
    namespace: &str,
    expected: Option<&BTreeMap<String, String>>,
    old: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    wait_until("credentials that log in everywhere", DEADLINE, || async {
        let creds = credentials(client, namespace).await?;
        if creds["PGPASSWORD"] == old["PGPASSWORD"] {
            anyhow::bail!("the Secret still holds the old password");
        }
        if let Some(expected) = expected {
            anyhow::ensure!(
                creds["PGPASSWORD"] == expected["PGPASSWORD"]
                    && creds["REDIS_PASSWORD"] == expected["REDIS_PASSWORD"],
                "the Secret does not follow the store yet"
            );
        }
        logs_in(testbed, &creds).await?;
        Ok(Some(creds))
    })
    .await
}

async fn vault_credentials(
    testbed: &Testbed,
    vault: &VaultStatus,
) -> anyhow::Result<HashMap<String, String>> {
    Ok(vaultrs::kv2::read(
        &testbed.bao_admin()?,
        &vault.mount,
        &format!("{}/credentials", vault.path),
    )
    .await?)
}

#[tokio::test]
async fn an_edited_or_lost_store_ends_with_credentials_that_log_in_and_an_event()
-> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    // Vault/OpenBao has no watch: a short resync notices an edit there.
    let shard = unique_name("creds");
    let args = ["--resync-seconds", "2"];
    // Kept outside the scenario (which restarts it) so that it outlives it
    // and deletes the tenants at the end.
    let mut operator = Some(Operator::start(&testbed, &shard, &args).await?);
    let running = operator.as_ref().unwrap();
    let name = format!("{shard}-t");
    let lost = format!("{shard}-lost");
    let lost_tenant = running.tenant(
        &lost,
        json!({"displayName": "Lost", "secrets": {"store": "KubernetesSecret"}}),
    );
    let spec = json!({"displayName": "Rotation", "secrets": {"store": "Both"}});
    apply(&client, &running.tenant(&name, spec), None, false).await?;
    let result = async {
        let tenant = wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
        let status = tenant.status.unwrap();
        let (ns, vault) = (status.namespace.unwrap(), status.vault.unwrap());
        let original = credentials(&client, &ns).await?;
        logs_in(&testbed, &original).await?;
        assert!(
            !events_about(&client, &name)
                .await?
                .iter()
                .any(|(reason, _)| reason == "CredentialsRotated"),
            "creating a tenant is not a rotation"
        );

        // An admin rotates by editing the primary store (Vault/OpenBao).
        let mut edited = vault_credentials(&testbed, &vault).await?;
        edited.insert("PGPASSWORD".into(), "edited-pg-password-0123456789".into());
        edited.insert(
            "REDIS_PASSWORD".into(),
            "edited-redis-password-0123456789".into(),
        );
        vaultrs::kv2::set(
            &testbed.bao_admin()?,
            &vault.mount,
            &format!("{}/credentials", vault.path),
            &edited,
        )
        .await?;
        let expected: BTreeMap<String, String> = edited.clone().into_iter().collect();
        wait_rotated(&testbed, &client, &ns, Some(&expected), &original).await?;
        let note = wait_event(&client, &name, "CredentialsRotated", DEADLINE).await?;
        assert!(
            note.contains("Postgres role") && note.contains("Redis ACL user"),
            "{note}"
        );
        assert!(
            !note.contains("edited-pg-password"),
            "an Event carries a password: {note}"
        );
        // The old passwords no longer work: 28P01 is invalid_password.
        let old = pg_connect_as(&testbed, &original["PGUSER"], &original["PGPASSWORD"])
            .await
            .expect_err("the old Postgres password still logs in");
        let code = old
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(|e| e.code())
            .map(|c| c.code().to_string());
        assert_eq!(code.as_deref(), Some("28P01"), "{old:#}");

        // A lost store: a tenant whose only store is its Secret loses it;
        // new credentials are generated and set everywhere. It is lost while
        // no operator runs, then again under a running one: the outcome
        // cannot depend on what a process remembers.
        apply(&client, &lost_tenant, None, false).await?;
        let tenant = wait_condition(&client, &lost, "Ready", "True", DEADLINE).await?;
        let lost_ns = tenant.status.unwrap().namespace.unwrap();
        let mut before = credentials(&client, &lost_ns).await?;
        for restart in [true, false] {
            let secrets = Api::<Secret>::namespaced(client.clone(), &lost_ns);
            if restart {
                operator.take().unwrap().stop().await?;
                secrets
                    .delete("partnerplane-credentials", &DeleteParams::default())
                    .await?;
                operator = Some(Operator::start(&testbed, &shard, &args).await?);
            } else {
                secrets
                    .delete("partnerplane-credentials", &DeleteParams::default())
                    .await?;
            }
            let regenerated = wait_rotated(&testbed, &client, &lost_ns, None, &before).await?;
            assert_ne!(regenerated["REDIS_PASSWORD"], before["REDIS_PASSWORD"]);
            if restart {
                // The first rotation of this tenant (a second one may be
                // folded into the same Event series).
                let note = wait_event(&client, &lost, "CredentialsRotated", DEADLINE).await?;
                assert!(
                    note.contains("Postgres role") && note.contains("Redis ACL user"),
                    "{note}"
                );
            }
            // The lost passwords log in nowhere: WRONGPASS from Redis.
            let mut admin = redis_admin(&testbed).await?;
            let refused = redis::cmd("AUTH")
                .arg(&before["REDIS_USER"])
                .arg(&before["REDIS_PASSWORD"])
                .query_async::<()>(&mut admin)
                .await
                .expect_err("the lost Redis password still logs in");
            assert_eq!(refused.code(), Some("WRONGPASS"), "{refused}");
            before = regenerated;
        }
        wait_condition(&client, &name, "Ready", "True", DEADLINE).await?;
        anyhow::Ok(())
    }
    .await;
    // A failure is reported before the cleanup's own.
    let deleted = delete_tenants(&client, &[name, lost]).await;
    result.and(deleted)
}

/// A reconcile prunes the Secrets of the operator's making it no longer
/// keeps (listed from the API server's cache), and nothing else: a user's
/// own Secret and one marked for another tenant stay.
#[tokio::test]
async fn a_reconcile_prunes_only_its_own_leftover_secrets() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("prune"), &[]).await?;
    let name = format!("{}-t", operator.shard);
    let namespace = partnerplane::naming::TenantNames::new(&name, None).namespace;
    apply(
        &client,
        &operator.tenant(&name, json!({"displayName": "Prune"})),
        None,
        false,
    )
    .await?;
    let result = async {
        wait_condition(&client, &name, "Ready", "True", Duration::from_secs(60)).await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        let secret = |secret_name: &str, labelled: bool, owner: &str| {
            let mut metadata = json!({"name": secret_name, "annotations": {
                partnerplane::tenant::children::TENANT_ANNOTATION: owner}});
            if labelled {
                metadata["labels"] = json!({"app.kubernetes.io/managed-by": "partnerplane"});
            }
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": metadata,
                   "stringData": {"k": "v"}})
        };
        // As a Dedicated Redis left it; a user's; one marked for another tenant.
        for (secret_name, labelled, owner) in [
            ("tenant-redis-password", true, name.as_str()),
            ("users-own", false, name.as_str()),
            ("someone-elses", true, "another-tenant"),
        ] {
            apply(
                &client,
                &secret(secret_name, labelled, owner),
                Some(&namespace),
                false,
            )
            .await?;
        }
        // A new generation reconciles.
        apply(
            &client,
            &operator.tenant(&name, json!({"displayName": "Prune again"})),
            None,
            false,
        )
        .await?;
        wait_until(
            "the leftover Secret to be pruned",
            Duration::from_secs(60),
            || {
                let secrets = secrets.clone();
                async move {
                    Ok(secrets
                        .get_opt("tenant-redis-password")
                        .await?
                        .is_none()
                        .then_some(()))
                }
            },
        )
        .await?;
        wait_condition(&client, &name, "Ready", "True", Duration::from_secs(60)).await?;
        for kept in ["users-own", "someone-elses"] {
            assert!(secrets.get_opt(kept).await?.is_some(), "{kept} was deleted");
        }
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &[name]).await?;
    result
}
