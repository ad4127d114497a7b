//! Reading what the operator provisioned for a tenant, as the tenant or as an admin.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use partnerplane::api::PartnerTenant;
use tokio_postgres::NoTls;

use crate::{Testbed, wait_deleted};

/// The credentials Secret the operator wrote into a tenant's namespace.
pub async fn credentials(
    client: &kube::Client,
    namespace: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get("partnerplane-credentials")
        .await
        .with_context(|| format!("credentials Secret in {namespace}"))?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

/// A Postgres session as `user`.
pub async fn pg_connect_as(
    testbed: &Testbed,
    user: &str,
    password: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = testbed.pg_admin_dsn.parse()?;
    config
        .user(user)
        .password(password)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A Postgres session as the test bed's admin.
pub async fn pg_admin(testbed: &Testbed) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(&testbed.pg_admin_dsn, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A Redis connection as the test bed's admin.
pub async fn redis_admin(testbed: &Testbed) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(testbed.redis_admin_url.as_str())?
        .get_multiplexed_async_connection()
        .await?)
}

/// Whether the ACL user exists.
pub async fn redis_user_exists(testbed: &Testbed, user: &str) -> anyhow::Result<bool> {
    let mut admin = redis_admin(testbed).await?;
    let reply: Option<redis::Value> = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(user)
        .query_async(&mut admin)
        .await?;
    Ok(reply.is_some())
}

/// Deletes tenants and waits until they are gone; switches them to `Delete`
/// first so a test leaves nothing behind.
pub async fn delete_tenants(client: &kube::Client, names: &[String]) -> anyhow::Result<()> {
    let api: Api<PartnerTenant> = Api::all(client.clone());
    for name in names {
        let patch = serde_json::json!({"spec": {"deletionPolicy": "Delete"}});
        let _ = api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    for name in names {
        wait_deleted(client, name, Duration::from_secs(90)).await?;
    }
    Ok(())
}

/// Writes data a tenant owns, as the tenant: `rows` rows in `table` of its
/// schema, and the ConfigMap `tenant-data` in its namespace.
pub async fn write_tenant_data(
    testbed: &Testbed,
    client: &kube::Client,
    namespace: &str,
    creds: &BTreeMap<String, String>,
    table: &str,
    rows: i32,
) -> anyhow::Result<()> {
    let pg = pg_connect_as(testbed, &creds["PGUSER"], &creds["PGPASSWORD"]).await?;
    pg.batch_execute(&format!(
        r#"CREATE TABLE "{}"."{table}" (id int)"#,
        creds["PGSCHEMA"]
    ))
    .await?;
    for id in 0..rows {
        pg.execute(
            &format!(
                r#"INSERT INTO "{}"."{table}" VALUES ($1)"#,
                creds["PGSCHEMA"]
            ),
            &[&id],
        )
        .await?;
    }
    let cm: ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "tenant-data"}, "data": {"k": "v"}}),
    )?;
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &cm)
        .await?;
    Ok(())
}

/// Rows in a tenant's table, read as the admin.
pub async fn count_rows(testbed: &Testbed, schema: &str, table: &str) -> anyhow::Result<i64> {
    Ok(pg_admin(testbed)
        .await?
        .query_one(
            &format!(r#"SELECT count(*) FROM "{schema}"."{table}""#),
            &[],
        )
        .await?
        .get(0))
}

/// A Postgres session as `user` in `database`, keeping the server's error so
/// a test can assert its SQLSTATE.
pub async fn pg_connect_to(
    testbed: &Testbed,
    database: &str,
    user: &str,
    password: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config: tokio_postgres::Config = testbed
        .pg_admin_dsn
        .parse()
        .expect("the test bed's admin DSN parses");
    config
        .dbname(database)
        .user(user)
        .password(password)
        .connect_timeout(Duration::from_secs(5));
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// The SQLSTATE of a server error (`None` for I/O and client-side errors).
pub fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.code().map(|c| c.code())
}
