//! TLS to every backend. An operator whose second Postgres backend is reached
//! through PgBouncer with `sslmode=verify-full`, whose Redis is `rediss://`
//! and whose OpenBao is `https://`, each checked against the test bed's CA,
//! makes a tenant on that backend Ready over encrypted connections only. With
//! a CA that did not sign the servers' certificates it refuses all three:
//! the tenant's conditions name the certificate problem for Postgres and
//! Redis, and nothing reaches OpenBao. A configuration that asks for
//! verification without a CA does not start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use partnerplane::naming::TenantNames;
use partnerplane_e2e::operator::condition;
use partnerplane_e2e::tenants::{credentials, delete_tenants, pg_admin, redis_admin};
use partnerplane_e2e::testbed::TlsEndpoints;
use partnerplane_e2e::{
    Operator, Testbed, apply, free_port, operator_binary, unique_name, wait_condition, wait_until,
};
use serde_json::json;
use vaultrs::error::ClientError;

const NAMESPACE: &str = "partnerplane-system";

/// A Secret with the TLS endpoints' admin credentials and two CAs, a
/// configuration file naming them, both removed on [`Setup::remove`].
struct Setup {
    dir: PathBuf,
    secret: String,
    tls: TlsEndpoints,
}

impl Setup {
    async fn new(testbed: &Testbed, client: &kube::Client, name: &str) -> anyhow::Result<Self> {
        let tls = testbed.tls()?;
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir)?;
        let wrong_ca = throwaway_ca(&dir)?;
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": NAMESPACE},
            "stringData": {
                "postgres-dsn": tls.pg_dsn,
                "redis-url": tls.redis_url,
                "ca.crt": std::fs::read_to_string(&tls.ca)?,
                "wrong-ca.crt": wrong_ca,
            },
        }))?;
        Api::<Secret>::namespaced(client.clone(), NAMESPACE)
            .create(&PostParams::default(), &secret)
            .await?;
        Ok(Self {
            dir,
            secret: name.to_string(),
            tls,
        })
    }

    /// Writes a configuration whose `tls` backend (unless `postgres_ca` is
    /// false), Redis and OpenBao trust the CA under `ca_key` of the Secret,
    /// and returns its path.
    fn config(&self, ca_key: &str, postgres_ca: bool) -> anyhow::Result<PathBuf> {
        let (secret, bao) = (&self.secret, &self.tls.bao_addr);
        let pg_ca = if postgres_ca {
            format!("\n    caSecret: {{namespace: {NAMESPACE}, name: {secret}, key: {ca_key}}}")
        } else {
            String::new()
        };
        let text = format!(
            "postgres:
  - name: default
    dsnSecret: {{namespace: {NAMESPACE}, name: backend-admin, key: postgres-dsn}}
    maxConnections: 4
  - name: tls
    dsnSecret: {{namespace: {NAMESPACE}, name: {secret}, key: postgres-dsn}}{pg_ca}
    maxConnections: 4
redis:
  urlSecret: {{namespace: {NAMESPACE}, name: {secret}, key: redis-url}}
  caSecret: {{namespace: {NAMESPACE}, name: {secret}, key: {ca_key}}}
vault:
  address: {bao}
  tokenSecret: {{namespace: {NAMESPACE}, name: backend-admin, key: vault-token}}
  caSecret: {{namespace: {NAMESPACE}, name: {secret}, key: {ca_key}}}
"
        );
        let path = self.dir.join("operator.yaml");
        std::fs::write(&path, text)?;
        Ok(path)
    }

    async fn remove(self, client: &kube::Client) -> anyhow::Result<()> {
        Api::<Secret>::namespaced(client.clone(), NAMESPACE)
            .delete(&self.secret, &DeleteParams::default())
            .await?;
        std::fs::remove_dir_all(&self.dir)?;
        Ok(())
    }
}

/// A self-signed CA that signed none of the test bed's certificates (PEM).
fn throwaway_ca(dir: &Path) -> anyhow::Result<String> {
    let (key, cert) = (dir.join("wrong-ca.key"), dir.join("wrong-ca.crt"));
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=not the test bed CA"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "openssl could not make a CA");
    Ok(std::fs::read_to_string(cert)?)
}

/// A tenant on the `tls` backend whose secrets go to OpenBao too.
fn tls_tenant(operator: &Operator, name: &str) -> serde_json::Value {
    operator.tenant(
        name,
        json!({
            "displayName": name,
            "postgres": {"backend": "tls"},
            "secrets": {"store": "Both"},
        }),
    )
}

/// The operator's rows of PgBouncer's `SHOW CLIENTS`: (user, database, tls).
async fn pgbouncer_clients(
    tls: &TlsEndpoints,
    ca: &str,
) -> anyhow::Result<Vec<BTreeMap<String, String>>> {
    let console = TlsEndpoints::pg_connect(&tls.pgbouncer_admin_dsn, ca).await?;
    let mut rows = vec![];
    for message in console.simple_query("SHOW CLIENTS").await? {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
            let mut fields = BTreeMap::new();
            for (i, column) in row.columns().iter().enumerate() {
                fields.insert(
                    column.name().to_string(),
                    row.get(i).unwrap_or_default().to_string(),
                );
            }
            rows.push(fields);
        }
    }
    Ok(rows)
}

/// Redis clients connected to the port of `url` as `user`.
async fn redis_clients_on(testbed: &Testbed, url: &str, user: &str) -> anyhow::Result<usize> {
    let port = reqwest::Url::parse(url)?
        .port()
        .expect("the TLS URL names its port");
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut redis_admin(testbed).await?)
        .await?;
    Ok(list
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            fields.contains(&format!("user={user}").as_str())
                && fields.contains(&format!("laddr=127.0.0.1:{port}").as_str())
        })
        .count())
}

#[tokio::test]
async fn a_tenant_on_tls_backends_becomes_ready_over_encrypted_connections() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let shard = unique_name("tls-ok");
    let setup = Setup::new(&testbed, &client, &shard).await?;
    let config = setup.config("ca.crt", true)?;
    let ca = std::fs::read_to_string(&setup.tls.ca)?;
    let operator = Operator::start_with_env(
        &testbed,
        &shard,
        &[],
        &[("PARTNERPLANE_CONFIG", config.to_str().expect("UTF-8 path"))],
    )
    .await?;
    let name = unique_name("tls");
    apply(&client, &tls_tenant(&operator, &name), None, false).await?;
    let tenant = wait_condition(&client, &name, "Ready", "True", Duration::from_secs(90)).await?;
    let status = tenant.status.expect("status of a Ready tenant");
    let pg = status.postgres.expect("Postgres names of a Ready tenant");
    assert_eq!(pg.backend, "tls");

    // The role is on the real server behind PgBouncer.
    let row = pg_admin(&testbed)
        .await?
        .query_one(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
            &[&pg.role],
        )
        .await?;
    assert!(row.get::<_, bool>(0), "role {} cannot log in", pg.role);

    // Every connection the operator holds through PgBouncer is TLS; a
    // clear-text client is turned away.
    let clients = pgbouncer_clients(&setup.tls, &ca).await?;
    let operator_clients: Vec<_> = clients
        .iter()
        .filter(|c| c["user"] == "postgres" && c["database"] == "postgres")
        .collect();
    assert!(
        !operator_clients.is_empty(),
        "no operator connection in SHOW CLIENTS: {clients:?}"
    );
    for c in &operator_clients {
        assert!(c["tls"].starts_with("TLSv1."), "clear-text client: {c:?}");
    }
    let plain = tokio_postgres::connect(
        &setup.tls.pg_dsn.replace("verify-full", "disable"),
        tokio_postgres::NoTls,
    )
    .await;
    let refused = plain.err().expect("PgBouncer accepted a clear-text client");
    assert!(
        refused
            .as_db_error()
            .is_some_and(|e| e.message().contains("SSL required")),
        "unexpected refusal: {refused}"
    );

    // The tenant is told to use TLS too, and its role logs in through PgBouncer.
    let ns = status.namespace.expect("namespace of a Ready tenant");
    let creds = credentials(&client, &ns).await?;
    let pgb_port = reqwest::Url::parse(&setup.tls.pg_dsn)?
        .port()
        .map(|p| p.to_string());
    assert_eq!(creds.get("PGPORT"), pgb_port.as_ref());
    assert_eq!(
        creds.get("PGSSLMODE").map(String::as_str),
        Some("verify-full")
    );
    let mut tenant_dsn = reqwest::Url::parse(&setup.tls.pg_dsn)?;
    tenant_dsn
        .set_username(&creds["PGUSER"])
        .and_then(|()| tenant_dsn.set_password(Some(&creds["PGPASSWORD"])))
        .map_err(|()| anyhow::anyhow!("cannot set the tenant's credentials"))?;
    let session = TlsEndpoints::pg_connect(tenant_dsn.as_str(), &ca).await?;
    let user: String = session
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    assert_eq!(user, pg.role);

    // Redis: the operator's admin connection is on the TLS port.
    let redis = status.redis.expect("Redis names of a Ready tenant");
    let acl_user = redis.user.expect("shared mode names the ACL user");
    assert!(
        partnerplane_e2e::tenants::redis_user_exists(&testbed, &acl_user).await?,
        "ACL user {acl_user} missing"
    );
    assert!(
        redis_clients_on(&testbed, &setup.tls.redis_url, "default").await? > 0,
        "no admin connection on Redis's TLS port"
    );

    // OpenBao: written through the https:// listener.
    let vault = status
        .vault
        .expect("OpenBao names of a tenant storing there");
    vaultrs::sys::policy::read(&testbed.bao_admin()?, &vault.policy).await?;

    delete_tenants(&client, &[name]).await?;
    drop(operator);
    setup.remove(&client).await
}

#[tokio::test]
async fn a_ca_that_did_not_sign_the_servers_is_refused_by_every_backend() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let shard = unique_name("tls-wrong");
    let setup = Setup::new(&testbed, &client, &shard).await?;
    let config = setup.config("wrong-ca.crt", true)?;
    let operator = Operator::start_with_env(
        &testbed,
        &shard,
        &[],
        &[("PARTNERPLANE_CONFIG", config.to_str().expect("UTF-8 path"))],
    )
    .await?;
    let name = unique_name("tls-wrong");
    apply(&client, &tls_tenant(&operator, &name), None, false).await?;
    let api: Api<partnerplane::api::PartnerTenant> = Api::all(client.clone());
    let parts = ["DatabaseReady", "CacheReady", "SecretsReady"];
    let tenant = wait_until(
        "every backend's condition to be False",
        Duration::from_secs(90),
        || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let tenant = api.get(&name).await?;
                let all_false = parts
                    .iter()
                    .all(|type_| condition(&tenant, type_).is_some_and(|c| c.status == "False"));
                Ok(all_false.then_some(tenant))
            }
        },
    )
    .await?;
    for (type_, reason) in [
        ("DatabaseReady", "PostgresUnavailable"),
        ("CacheReady", "RedisUnavailable"),
    ] {
        let c = condition(&tenant, type_).expect("condition set");
        assert_eq!(c.reason, reason, "{type_}: {}", c.message);
        assert!(
            c.message
                .contains("invalid peer certificate: UnknownIssuer"),
            "{type_} does not name the certificate problem: {}",
            c.message
        );
    }
    // OpenBao holds the tenant's credentials, so an unreadable OpenBao stops
    // every credential write; the condition carries OpenBao's own error.
    let secrets = condition(&tenant, "SecretsReady").expect("condition set");
    assert_eq!(secrets.reason, "VaultUnavailable", "{}", secrets.message);
    assert!(
        secrets.message.contains("certificate"),
        "SecretsReady does not name the certificate problem: {}",
        secrets.message
    );
    let policy = TenantNames::new(&name, None).vault_policy;
    match vaultrs::sys::policy::read(&testbed.bao_admin()?, &policy).await {
        Err(ClientError::APIError { code: 404, .. }) => {}
        other => panic!("policy {policy} reached OpenBao: {other:?}"),
    }
    let ready = condition(&tenant, "Ready").expect("Ready set");
    assert_eq!(ready.status, "False");

    // Cleanup needs the backends: the right CA lets the tenant go.
    operator.stop().await?;
    let config = setup.config("ca.crt", true)?;
    let operator = Operator::start_with_env(
        &testbed,
        &shard,
        &[],
        &[("PARTNERPLANE_CONFIG", config.to_str().expect("UTF-8 path"))],
    )
    .await?;
    delete_tenants(&client, &[name]).await?;
    drop(operator);
    setup.remove(&client).await
}

#[tokio::test]
async fn verification_without_a_ca_stops_the_operator_at_start() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let shard = unique_name("tls-noca");
    let setup = Setup::new(&testbed, &client, &shard).await?;
    // The `tls` backend keeps sslmode=verify-full but has no caSecret.
    let config = setup.config("ca.crt", false)?;
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(operator_binary()?)
            .args(["run", "--http-addr", &format!("127.0.0.1:{}", free_port()?)])
            .envs(testbed.env())
            .env("PARTNERPLANE_CONFIG", &config)
            .kill_on_drop(true)
            .output(),
    )
    .await??;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the operator started: {stderr}");
    assert!(
        stderr.contains("Postgres backend tls")
            && stderr.contains("sslmode=verify-full needs a CA to verify against"),
        "unexpected failure: {stderr}"
    );
    setup.remove(&client).await
}
