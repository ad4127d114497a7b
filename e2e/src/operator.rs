//! The operator as the suites run it: the real binary against the test bed,
//! one instance per test, managing only the tenants labelled with its shard
//! so tests run side by side without touching each other's tenants.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use partnerplane::api::PartnerTenant;
use serde_json::{Value, json};

use crate::{Testbed, free_port, install_crds, operator_binary, repo_root, wait_until};

/// Label that assigns a tenant to one test's operator.
pub const SHARD_LABEL: &str = "partnerplane.io/shard";

/// A running operator; killed when dropped.
pub struct Operator {
    child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
    pub shard: String,
}

impl Operator {
    /// Installs the CRDs, starts the operator for `shard` and waits until it is ready.
    pub async fn start(
        testbed: &Testbed,
        shard: &str,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(testbed, shard, extra_args, &[]).await
    }

    /// [`Operator::start`] with extra environment variables (such as `FAILPOINTS`).
    pub async fn start_with_env(
        testbed: &Testbed,
        shard: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let selector = format!("{SHARD_LABEL}={shard}");
        let mut args = vec!["--tenant-selector", selector.as_str()];
        args.extend_from_slice(extra_args);
        Self::launch(testbed, shard, &args, env).await
    }

    /// An operator for every tenant in the cluster, whatever its shard.
    pub async fn start_unsharded(testbed: &Testbed, name: &str) -> anyhow::Result<Self> {
        Self::launch(testbed, name, &[], &[]).await
    }

    async fn launch(
        testbed: &Testbed,
        shard: &str,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        install_crds(&testbed.kube_admin().await?).await?;
        let port = free_port()?;
        let log_path = repo_root().join(format!("e2e/.testbed/logs/operator-{shard}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)?;
        let http_addr = format!("127.0.0.1:{port}");
        let mut args = vec!["run", "--http-addr", &http_addr];
        args.extend_from_slice(extra_args);
        let child = tokio::process::Command::new(operator_binary()?)
            .args(&args)
            .envs(testbed.env())
            .env(
                "PARTNERPLANE_LOG",
                "info,partnerplane=debug,rustify=off,vaultrs=off",
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        let operator = Self {
            child,
            base: format!("http://{http_addr}"),
            http: reqwest::Client::new(),
            shard: shard.to_string(),
        };
        let http = operator.http.clone();
        let url = format!("{}/readyz", operator.base);
        wait_until("the operator to be ready", Duration::from_secs(60), || {
            let request = http.get(&url).send();
            async move {
                Ok(request
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ()))
            }
        })
        .await
        .with_context(|| format!("operator log: {}", log_path.display()))?;
        Ok(operator)
    }

    /// The operator's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?)
    }

    /// The sum of every sample of a metric family (counters end in `_total`).
    pub async fn metric_sum(&self, name: &str) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        Ok(text
            .lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l[name.len()..].starts_with('{') || l[name.len()..].starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Stops the operator with SIGTERM and returns whether it exited cleanly.
    pub async fn stop(mut self) -> anyhow::Result<bool> {
        let pid = self.child.id().context("operator already exited")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await??;
        Ok(status.success())
    }

    /// Kills the operator abruptly, as a crash would.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// A PartnerTenant manifest assigned to this operator.
    pub fn tenant(&self, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "partnerplane.io/v1alpha1",
            "kind": "PartnerTenant",
            "metadata": {"name": name, "labels": {SHARD_LABEL: self.shard}},
            "spec": spec,
        })
    }
}

/// The condition `type_` of a tenant, if set.
pub fn condition(tenant: &PartnerTenant, type_: &str) -> Option<Condition> {
    tenant
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

/// Waits until the tenant's `type_` condition has `status` ("True"/"False").
pub async fn wait_condition(
    client: &kube::Client,
    name: &str,
    type_: &str,
    status: &str,
    timeout: Duration,
) -> anyhow::Result<PartnerTenant> {
    let api: Api<PartnerTenant> = Api::all(client.clone());
    wait_until(&format!("tenant {name} {type_}={status}"), timeout, || {
        let api = api.clone();
        async move {
            let tenant = api.get(name).await?;
            let current = condition(&tenant, type_);
            if current.as_ref().is_some_and(|c| c.status == status)
                && tenant.status.as_ref().and_then(|s| s.observed_generation)
                    == tenant.metadata.generation
            {
                return Ok(Some(tenant));
            }
            anyhow::bail!(
                "{type_} is {:?}",
                current.map(|c| (c.status, c.reason, c.message))
            )
        }
    })
    .await
}

/// Waits until the tenant is gone from the API server.
pub async fn wait_deleted(
    client: &kube::Client,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let api: Api<PartnerTenant> = Api::all(client.clone());
    wait_until(&format!("tenant {name} to be deleted"), timeout, || {
        let api = api.clone();
        async move {
            match api.get_opt(name).await? {
                None => Ok(Some(())),
                Some(t) => anyhow::bail!(
                    "still present; Ready: {:?}",
                    condition(&t, "Ready").map(|c| c.message)
                ),
            }
        }
    })
    .await
}
