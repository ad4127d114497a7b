//! Isolation, proven against the real servers: with tenant A's own
//! credentials, tenant B's schema, keys, secrets and namespace are out of reach.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use partnerplane::backends::vault::AUDIENCE;
use partnerplane::naming::WORKLOAD_SERVICE_ACCOUNT;
use partnerplane_e2e::tenants::{credentials, delete_tenants, pg_connect_as};
use partnerplane_e2e::{Operator, Testbed, apply, unique_name, wait_condition};
use serde_json::json;
use vaultrs::error::ClientError;

struct Provisioned {
    namespace: String,
    creds: std::collections::BTreeMap<String, String>,
    vault_path: String,
    auth_role: String,
}

async fn provision(
    testbed: &Testbed,
    client: &kube::Client,
    operator: &Operator,
    name: &str,
) -> anyhow::Result<Provisioned> {
    let tenant = operator.tenant(
        name,
        json!({"displayName": name, "secrets": {"store": "Both"}}),
    );
    apply(client, &tenant, None, false).await?;
    let tenant = wait_condition(client, name, "Ready", "True", Duration::from_secs(60)).await?;
    let status = tenant.status.unwrap();
    let namespace = status.namespace.unwrap();
    let vault = status.vault.unwrap();
    let _ = testbed;
    Ok(Provisioned {
        creds: credentials(client, &namespace).await?,
        namespace,
        vault_path: vault.path,
        auth_role: vault.auth_role,
    })
}

/// A token of the tenant's workload ServiceAccount for `audiences`: the
/// OpenBao role's audience to log in there, none (the API server's own) for
/// the Kubernetes API.
async fn workload_token(
    client: &kube::Client,
    namespace: &str,
    audiences: &[&str],
) -> anyhow::Result<String> {
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": audiences}}))?;
    Ok(Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(WORKLOAD_SERVICE_ACCOUNT, &PostParams::default(), &request)
        .await?
        .status
        .expect("token")
        .token)
}

#[tokio::test]
async fn a_tenant_cannot_reach_another_tenants_schema_keys_secrets_or_namespace()
-> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("isolation"), &[]).await?;
    let (name_a, name_b) = (
        format!("{}-a", operator.shard),
        format!("{}-b", operator.shard),
    );

    let result = async {
        let a = provision(&testbed, &client, &operator, &name_a).await?;
        let b = provision(&testbed, &client, &operator, &name_b).await?;

        // Postgres: each tenant works in its own schema and is refused in the other's.
        let pg_b = pg_connect_as(&testbed, &b.creds["PGUSER"], &b.creds["PGPASSWORD"]).await?;
        pg_b.batch_execute(&format!(
            r#"CREATE TABLE "{0}".partners (id text); INSERT INTO "{0}".partners VALUES ('secret-partner')"#,
            b.creds["PGSCHEMA"]
        ))
        .await?;
        let pg_a = pg_connect_as(&testbed, &a.creds["PGUSER"], &a.creds["PGPASSWORD"]).await?;
        // pgvector is usable from the shared extensions schema, HNSW included.
        pg_a.batch_execute(&format!(
            r#"CREATE TABLE "{0}".own (id int, embedding vector(3));
               CREATE INDEX ON "{0}".own USING hnsw (embedding vector_cosine_ops)"#,
            a.creds["PGSCHEMA"]
        ))
        .await?;
        for statement in [
            format!(r#"SELECT * FROM "{}".partners"#, b.creds["PGSCHEMA"]),
            format!(r#"INSERT INTO "{}".partners VALUES ('x')"#, b.creds["PGSCHEMA"]),
            format!(r#"CREATE TABLE "{}".intruder (id int)"#, b.creds["PGSCHEMA"]),
            "CREATE TABLE public.shared (id int)".to_string(),
        ] {
            let err = pg_a.batch_execute(&statement).await.expect_err(&statement);
            let code = err.code().map(|c| c.code().to_string());
            assert_eq!(code.as_deref(), Some("42501"), "{statement}: {err}");
        }

        // Redis: A's user works under its prefix and gets NOPERM under B's.
        let mut redis_a = redis::Client::open(testbed.redis_url_as(&a.creds["REDIS_USER"], &a.creds["REDIS_PASSWORD"])?)?
            .get_multiplexed_async_connection()
            .await?;
        let own: redis::RedisResult<()> = redis::cmd("SET")
            .arg(format!("{}k", a.creds["REDIS_KEY_PREFIX"]))
            .arg("v")
            .query_async(&mut redis_a)
            .await;
        own?;
        for (command, key) in [("GET", format!("{}k", b.creds["REDIS_KEY_PREFIX"])), ("SET", format!("{}k", b.creds["REDIS_KEY_PREFIX"]))] {
            let mut cmd = redis::cmd(command);
            cmd.arg(&key);
            if command == "SET" {
                cmd.arg("x");
            }
            let result: redis::RedisResult<Option<String>> = cmd.query_async(&mut redis_a).await;
            let err = result.expect_err(command);
            assert_eq!(err.code(), Some("NOPERM"), "{command} {key}: {err}");
        }
        for command in ["KEYS", "SCAN", "RANDOMKEY", "FLUSHALL"] {
            let mut cmd = redis::cmd(command);
            match command {
                "KEYS" => {
                    cmd.arg("*");
                }
                "SCAN" => {
                    cmd.arg(0);
                }
                _ => {}
            }
            let result: redis::RedisResult<redis::Value> = cmd.query_async(&mut redis_a).await;
            assert_eq!(result.expect_err(command).code(), Some("NOPERM"), "{command}");
        }

        // OpenBao: A's workload logs in with A's role, reads A's secrets, not B's;
        // it cannot log in with B's role at all.
        let bao = testbed.bao_admin()?;
        let bao_jwt_a = workload_token(&client, &a.namespace, &[AUDIENCE]).await?;
        let login = vaultrs::auth::kubernetes::login(&bao, "kubernetes", &a.auth_role, &bao_jwt_a).await?;
        let as_a = testbed.bao_with_token(&login.client_token)?;
        let own: HashMap<String, String> = vaultrs::kv2::read(&as_a, "secret", &format!("{}/credentials", a.vault_path)).await?;
        assert_eq!(own.get("PGUSER"), Some(&a.creds["PGUSER"]));
        let other: Result<HashMap<String, String>, _> =
            vaultrs::kv2::read(&as_a, "secret", &format!("{}/credentials", b.vault_path)).await;
        assert!(matches!(other, Err(ClientError::APIError { code: 403, .. })), "{other:?}");
        let cross_login = vaultrs::auth::kubernetes::login(&bao, "kubernetes", &b.auth_role, &bao_jwt_a).await;
        assert!(
            matches!(&cross_login, Err(ClientError::APIError { code: 403, errors }) if errors.iter().any(|e| e.contains("namespace not authorized"))),
            "A's token with B's role: {cross_login:?}"
        );

        // Kubernetes: A's workload identity reads its namespace, not B's.
        let jwt_a = workload_token(&client, &a.namespace, &[]).await?;
        let as_workload = testbed.kube_with_token(&jwt_a).await?;
        Api::<ConfigMap>::namespaced(as_workload.clone(), &a.namespace).list(&ListParams::default()).await?;
        match Api::<Pod>::namespaced(as_workload, &b.namespace).list(&ListParams::default()).await {
            Err(kube::Error::Api(e)) => assert_eq!(e.code, 403),
            other => panic!("expected 403 listing tenant B's pods, got {other:?}"),
        }
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &[name_a, name_b]).await?;
    result
}
