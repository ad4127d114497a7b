//! `make bench`: N PartnerTenants from apply to all Ready on the local test
//! bed, against a floor that issues the same backend operations directly.
//!
//! Prints throughput, apply→Ready latency percentiles, API writes and
//! backend ensures per tenant and the operator's peak RSS (also across a
//! restart of the control plane, which makes every watch relist), then the
//! floor's time and the ratio (`--no-floor` skips the floor; `--floor-only`
//! runs the floor alone, for an N whose teardown between phases would take
//! longer than both phases together). `--tenant-writes` then runs the floor
//! again with each tenant's own PartnerTenant writes added (`TenantWrites`),
//! which parts the operator's overhead from the custom resource's. `--shards N`
//! splits the tenants across N operators, each selecting its own. Each
//! phase starts once the previous one's namespaces are gone, not only
//! terminating.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{self, Event, EventType, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use partnerplane::api::tenant::Tier;
use partnerplane::api::{PartnerTenant, PartnerTenantSpec};
use partnerplane::apply::FIELD_MANAGER;
use partnerplane::backends::postgres::{PasswordPolicy, Postgres};
use partnerplane::backends::redis::{AclUser, Redis};
use partnerplane::backends::vault::Vault;
use partnerplane::config::{OperatorConfig, PostgresBackendConfig};
use partnerplane::credentials::Credentials;
use partnerplane::metrics::Metrics;
use partnerplane::naming::TenantNames;
use partnerplane::tenant::ownership::Origin;
use partnerplane::tenant::secret_access::{self, SecretAccess};
use partnerplane::tenant::{self, children};
use partnerplane_e2e::operator::SHARD_LABEL;
use partnerplane_e2e::report::percentile;
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{Operator, Testbed, apply, unique_name};
use serde_json::json;

const CONCURRENCY: usize = 32;
/// The shard label of the `--tenant-writes` floor's tenants.
const FLOOR_SHARD: &str = "bench-floor";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// When each tenant matching a selector was first seen Ready for its
/// current generation, as the watch delivers it: exact, where polling would
/// round every latency up to its interval.
struct ReadyWatch {
    seen: Arc<tokio::sync::Mutex<HashMap<String, Instant>>>,
    changed: Arc<tokio::sync::Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl ReadyWatch {
    /// Returns once the watch has listed what exists, so that nothing
    /// applied afterwards is missed.
    async fn start(client: &kube::Client, selector: &str) -> anyhow::Result<Self> {
        let api: Api<PartnerTenant> = Api::all(client.clone());
        let seen: Arc<tokio::sync::Mutex<HashMap<String, Instant>>> = Default::default();
        let changed = Arc::new(tokio::sync::Notify::new());
        let (listed, listed_rx) = tokio::sync::oneshot::channel();
        let stream = watcher(api, watcher::Config::default().labels(selector)).default_backoff();
        let task = {
            let (seen, changed) = (seen.clone(), changed.clone());
            tokio::spawn(async move {
                let mut listed = Some(listed);
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    // The watch retries on its own; an error is one attempt.
                    let Ok(event) = event else { continue };
                    let tenant = match event {
                        watcher::Event::Apply(t) | watcher::Event::InitApply(t) => t,
                        watcher::Event::InitDone => {
                            if let Some(listed) = listed.take() {
                                let _ = listed.send(());
                            }
                            continue;
                        }
                        _ => continue,
                    };
                    let ready = partnerplane_e2e::operator::condition(&tenant, "Ready")
                        .is_some_and(|c| c.status == "True")
                        && tenant.status.as_ref().and_then(|s| s.observed_generation)
                            == tenant.metadata.generation;
                    if ready {
                        let name = tenant.metadata.name.clone().unwrap_or_default();
                        seen.lock().await.entry(name).or_insert_with(Instant::now);
                        changed.notify_waiters();
                    }
                }
            })
        };
        tokio::time::timeout(Duration::from_secs(60), listed_rx).await??;
        Ok(Self {
            seen,
            changed,
            task,
        })
    }

    /// When `name` was first seen Ready.
    async fn ready(&self, name: &str, timeout: Duration) -> anyhow::Result<Instant> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            if let Some(at) = self.seen.lock().await.get(name) {
                return Ok(*at);
            }
            anyhow::ensure!(
                tokio::time::timeout_at(deadline, changed).await.is_ok(),
                "tenant {name} not Ready within {timeout:?}"
            );
        }
    }

    async fn count(&self) -> usize {
        self.seen.lock().await.len()
    }

    async fn stop(self) -> HashMap<String, Instant> {
        self.task.abort();
        self.seen.lock().await.clone()
    }
}

/// Apply -> Ready of single tenants on an otherwise idle operator, one at a
/// time, after one untimed tenant: the operator has just started, on CRDs
/// perhaps just installed, and the API server may still be swapping their
/// storage (a first tenant waited a second for its watch event then).
async fn idle_latencies(
    client: &kube::Client,
    operator: &Operator,
    count: usize,
) -> anyhow::Result<(Vec<Duration>, Vec<String>)> {
    let watch = ReadyWatch::start(client, &format!("{SHARD_LABEL}={}", operator.shard)).await?;
    let mut latencies = vec![];
    let mut names = vec![];
    for i in 0..=count {
        let name = format!("{}-idle-{i}", operator.shard);
        let manifest = operator.tenant(
            &name,
            json!({"displayName": "Idle", "deletionPolicy": "Delete"}),
        );
        let started = Instant::now();
        apply(client, &manifest, None, false).await?;
        let ready = watch.ready(&name, Duration::from_secs(30)).await?;
        if i > 0 {
            latencies.push(ready.saturating_duration_since(started));
        }
        names.push(name);
    }
    watch.stop().await;
    latencies.sort();
    Ok((latencies, names))
}

struct OperatorRun {
    idle: Vec<Duration>,
    backend_means: Vec<String>,
    total: Duration,
    latencies: Vec<Duration>,
    api_writes: f64,
    /// Per operator (shard).
    peak_rss_mib: Vec<Option<f64>>,
    restart_rss_mib: Vec<Option<f64>>,
    /// Apply -> Ready of a tenant applied right after the restart.
    after_restart: Option<Duration>,
    /// One Ready tenant's name and status, as the operator wrote it.
    status_sample: Option<(String, serde_json::Value)>,
}

/// Restarts the control plane with every tenant Ready, so every watch of
/// the operator relists, then applies a new tenant; returns how long it
/// took to become Ready (`None`: not within five minutes) and each
/// operator's peak RSS since it started.
async fn across_restart(
    testbed: &Testbed,
    client: &kube::Client,
    operators: &[Operator],
) -> anyhow::Result<(Option<Duration>, Vec<Option<f64>>)> {
    testbed.restart_kubernetes()?;
    let operator = &operators[0];
    let name = format!("{}-after-restart", operator.shard);
    let manifest = operator.tenant(
        &name,
        json!({"displayName": "Bench", "deletionPolicy": "Delete"}),
    );
    // The API server may refuse for a moment while it starts serving.
    partnerplane_e2e::wait_until(
        "the restarted API server to accept a tenant",
        Duration::from_secs(120),
        || async { Ok(apply(client, &manifest, None, false).await.ok()) },
    )
    .await?;
    let applied = Instant::now();
    let ready =
        partnerplane_e2e::wait_condition(client, &name, "Ready", "True", Duration::from_secs(300))
            .await
            .ok()
            .map(|_| applied.elapsed());
    let rss = operators
        .iter()
        .map(|o| o.pid().and_then(peak_rss_mib))
        .collect();
    delete_tenants(client, &[name]).await?;
    Ok((ready, rss))
}

async fn run_operator(
    testbed: &Testbed,
    client: &kube::Client,
    tenants: usize,
    shards: usize,
    want_sample: bool,
) -> anyhow::Result<(OperatorRun, Vec<String>)> {
    let mut operators = vec![];
    for _ in 0..shards {
        operators
            .push(Operator::start(testbed, &unique_name("bench"), &["--concurrency", "32"]).await?);
    }
    let (idle, idle_names) = idle_latencies(client, &operators[0], 20).await?;
    delete_tenants(client, &idle_names).await?;
    // Tenant i goes to shard i mod N.
    let placed: Vec<(String, &Operator)> = (0..tenants)
        .map(|i| {
            let operator = &operators[i % shards];
            (format!("{}-{i}", operator.shard), operator)
        })
        .collect();
    let names: Vec<String> = placed.iter().map(|(n, _)| n.clone()).collect();

    // Watch readiness from before the first apply.
    let shard_names: Vec<&str> = operators.iter().map(|o| o.shard.as_str()).collect();
    let selector = format!("{SHARD_LABEL} in ({})", shard_names.join(","));
    let watch = ReadyWatch::start(client, &selector).await?;

    let started = Instant::now();
    let applied: HashMap<String, Instant> = stream::iter(placed.clone())
        .map(|(name, operator)| {
            let client = client.clone();
            async move {
                let manifest = operator.tenant(
                    &name,
                    json!({"displayName": "Bench", "deletionPolicy": "Delete"}),
                );
                apply(&client, &manifest, None, false).await?;
                anyhow::Ok((name, Instant::now()))
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;

    let deadline = Instant::now() + Duration::from_secs(900);
    for name in &names {
        let left = deadline.saturating_duration_since(Instant::now());
        if watch.ready(name, left).await.is_err() {
            anyhow::bail!(
                "only {} of {tenants} tenants Ready after 15 minutes",
                watch.count().await
            );
        }
    }
    let ready_at = watch.stop().await;
    let total = ready_at.values().max().copied().unwrap_or(started) - started;
    let mut latencies: Vec<Duration> = names
        .iter()
        .map(|n| ready_at[n].saturating_duration_since(applied[n]))
        .collect();
    latencies.sort();
    let peak_rss_mib = operators
        .iter()
        .map(|o| o.pid().and_then(peak_rss_mib))
        .collect();
    let text = operators[0].metrics().await?;
    let mut api_writes = 0.0;
    for operator in &operators {
        api_writes += operator.metric_sum("partnerplane_api_writes_total").await?;
    }
    let (after_restart, restart_rss_mib) = across_restart(testbed, client, &operators).await?;
    let run = OperatorRun {
        idle,
        backend_means: backend_means(&text),
        total,
        latencies,
        api_writes,
        peak_rss_mib,
        restart_rss_mib,
        after_restart,
        status_sample: match (want_sample, names.first()) {
            (true, Some(name)) => status_sample(client, name).await.ok().flatten(),
            _ => None,
        },
    };
    report(&run, tenants);
    delete_tenants(client, &names).await?;
    drop(operators);
    Ok((run, names))
}

/// Prints the operator phase's figures (before its tenants are deleted,
/// which at 10,000 takes a while).
fn report(run: &OperatorRun, tenants: usize) {
    println!(
        "one tenant, idle operator: apply -> Ready p50 {:.0} ms, p99 {:.0} ms (20 tenants one at a time, after an untimed first)",
        percentile(&run.idle, 0.5).as_secs_f64() * 1e3,
        percentile(&run.idle, 0.99).as_secs_f64() * 1e3
    );
    let secs = run.total.as_secs_f64();
    println!(
        "operator: all {tenants} Ready in {secs:.1} s ({:.0} tenants/s)",
        tenants as f64 / secs
    );
    println!(
        "apply -> Ready: p50 {:.0} ms, p99 {:.0} ms",
        percentile(&run.latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&run.latencies, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "API writes per tenant: {:.1}",
        run.api_writes / tenants as f64
    );
    for line in &run.backend_means {
        println!("  backend {line}");
    }
    let mib = |all: &[Option<f64>]| {
        all.iter()
            .map(|rss| rss.map_or("unavailable".to_string(), |r| format!("{r:.0} MiB")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("operator peak RSS (per shard): {}", mib(&run.peak_rss_mib));
    println!(
        "operator peak RSS across a control-plane restart (every watch relisted; per shard): {}",
        mib(&run.restart_rss_mib)
    );
    match run.after_restart {
        Some(took) => println!(
            "a tenant applied after the restart: Ready in {:.1} s",
            took.as_secs_f64()
        ),
        None => println!("a tenant applied after the restart: not Ready within 300 s"),
    }
}

/// Waits until `namespaces` are gone, not only terminating: the next phase
/// is timed on a quiet cluster.
async fn namespaces_gone(client: &kube::Client, namespaces: &[String]) -> anyhow::Result<()> {
    let wanted: std::collections::HashSet<&String> = namespaces.iter().collect();
    let started = Instant::now();
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    partnerplane_e2e::wait_until(
        "the previous phase's namespaces to be gone",
        Duration::from_secs(1800),
        || async {
            let left = api
                .list_metadata(&Default::default())
                .await?
                .items
                .iter()
                .filter(|n| n.metadata.name.as_ref().is_some_and(|n| wanted.contains(n)))
                .count();
            Ok((left == 0).then_some(()))
        },
    )
    .await?;
    println!(
        "teardown: {} namespaces gone {:.0} s after their tenants",
        wanted.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The writes a PartnerTenant itself costs the API server, issued directly
/// for the floor's `--tenant-writes` variant: the user's apply, the
/// finalizer, a status write before the work and one after (the operator's
/// real status, read from one of its tenants, so the objects are as large),
/// and one Event. What the operator phase adds beyond this floor is the
/// operator's own overhead; what this floor adds to the plain one is the
/// cost of the custom resource.
struct TenantWrites {
    sample_name: String,
    status: String,
    recorder: events::Recorder,
}

impl TenantWrites {
    fn new(client: &kube::Client, (name, status): &(String, serde_json::Value)) -> Self {
        let reporter = Reporter {
            controller: "partnerplane.io/bench".into(),
            instance: None,
        };
        Self {
            sample_name: name.clone(),
            status: status.to_string(),
            recorder: events::Recorder::new(client.clone(), reporter),
        }
    }

    fn status_of(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &self.status.replace(&self.sample_name, name),
        )?)
    }

    async fn write_status(
        api: &Api<PartnerTenant>,
        name: &str,
        status: serde_json::Value,
    ) -> anyhow::Result<()> {
        let patch = json!({"apiVersion": "partnerplane.io/v1alpha1", "kind": "PartnerTenant", "status": status});
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        Ok(())
    }

    /// Before the tenant's objects: apply, finalizer, status "Reconciling".
    /// Returns the reference its Event names.
    async fn before(&self, client: &kube::Client, name: &str) -> anyhow::Result<ObjectReference> {
        let manifest = json!({
            "apiVersion": "partnerplane.io/v1alpha1",
            "kind": "PartnerTenant",
            // A shard no operator selects, as the operator phase's tenants
            // carry one: no operator running here acts on these.
            "metadata": {"name": name, "labels": {SHARD_LABEL: FLOOR_SHARD}},
            "spec": {"displayName": "Floor", "deletionPolicy": "Delete"},
        });
        let created = apply(client, &manifest, None, false).await?;
        let api: Api<PartnerTenant> = Api::all(client.clone());
        let finalizer = json!({"metadata": {
            "finalizers": [tenant::FINALIZER],
            "resourceVersion": created.metadata.resource_version,
        }});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&finalizer))
            .await?;
        let mut intent = self.status_of(name)?;
        let reconciling: Vec<serde_json::Value> = intent["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["type"] == "Reconciling")
            .map(|c| {
                let mut c = c.clone();
                c["status"] = json!("True");
                c
            })
            .collect();
        intent["conditions"] = json!(reconciling);
        Self::write_status(&api, name, intent).await?;
        Ok(ObjectReference {
            api_version: Some("partnerplane.io/v1alpha1".into()),
            kind: Some("PartnerTenant".into()),
            name: Some(name.into()),
            uid: created.metadata.uid,
            ..Default::default()
        })
    }

    /// After the tenant's backends: the final status and its Event.
    async fn after(
        &self,
        client: &kube::Client,
        name: &str,
        reference: &ObjectReference,
    ) -> anyhow::Result<()> {
        let api: Api<PartnerTenant> = Api::all(client.clone());
        let status = self.status_of(name)?;
        // The Event the operator publishes: the Ready condition's words.
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .cloned()
            .unwrap_or_default();
        Self::write_status(&api, name, status).await?;
        let event = Event {
            type_: EventType::Normal,
            reason: ready["reason"].as_str().unwrap_or("Provisioned").into(),
            note: ready["message"].as_str().map(Into::into),
            action: "Provision".into(),
            secondary: None,
        };
        self.recorder.publish(&event, reference).await?;
        Ok(())
    }

    /// Deletes the floor's tenant objects; no operator runs to remove their
    /// finalizer, so it is removed first.
    async fn remove(client: &kube::Client, names: &[String]) -> anyhow::Result<()> {
        let api: Api<PartnerTenant> = Api::all(client.clone());
        let clear = json!({"metadata": {"finalizers": null}});
        stream::iter(names)
            .map(|name| {
                let (api, clear) = (&api, &clear);
                async move {
                    api.patch(name, &PatchParams::default(), &Patch::Merge(clear))
                        .await?;
                    api.delete(name, &Default::default()).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<()>()
            .await
    }
}

/// One tenant's status as the operator wrote it, or nothing if it has none.
async fn status_sample(
    client: &kube::Client,
    name: &str,
) -> anyhow::Result<Option<(String, serde_json::Value)>> {
    let api: Api<PartnerTenant> = Api::all(client.clone());
    let tenant = api.get(name).await?;
    Ok(tenant
        .status
        .map(|status| serde_json::to_value(status).map(|v| (name.to_string(), v)))
        .transpose()?)
}

/// The same backend operations, issued directly: server-side applies of the
/// tenant's objects, its Postgres statements, its ACL user and its Vault
/// policy, auth role and credentials — no controller, no caches, no status.
async fn run_floor(
    testbed: &Testbed,
    client: &kube::Client,
    tenants: usize,
    tenant_writes: Option<&TenantWrites>,
) -> anyhow::Result<(Duration, Vec<TenantNames>)> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config =
        OperatorConfig::load(&partnerplane_e2e::repo_root().join("e2e/.testbed/operator.yaml"))?;
    let metrics = Arc::new(Metrics::new());
    let timeout = Duration::from_secs(10);
    let backend = PostgresBackendConfig {
        max_connections: 16,
        ..config.postgres[0].clone()
    };
    let postgres = Postgres::new(
        &[(backend, testbed.pg_admin_dsn.clone())],
        timeout,
        metrics.clone(),
    )?;
    let redis = Redis::connect(&testbed.redis_admin_url, timeout, metrics.clone()).await?;
    let vault = Vault::new(&config.vault, &testbed.bao_token, timeout, metrics.clone())?;
    let prefix = unique_name("floor");
    let access = SecretAccess {
        cluster_role: config.tenant_secrets_cluster_role.clone(),
        subject: secret_access::whoami(client).await?,
    };
    let access = &access;
    let started = Instant::now();
    let names: Vec<TenantNames> = stream::iter(0..tenants)
        .map(|i| {
            let (client, postgres, redis, vault, prefix) =
                (client.clone(), &postgres, &redis, &vault, &prefix);
            async move {
                let name = format!("{prefix}-{i}");
                let names = TenantNames::new(&name, None);
                let spec: PartnerTenantSpec =
                    serde_json::from_value(json!({"displayName": "Floor"}))?;
                let mut tenant = PartnerTenant::new(&name, spec);
                tenant.metadata.uid = Some(format!("floor-{i}"));
                let reference = match tenant_writes {
                    Some(writes) => Some(writes.before(&client, &name).await?),
                    None => None,
                };
                let mut objects: Vec<serde_json::Value> = vec![
                    serde_json::to_value(children::namespace(&tenant, &names, Origin::Created))?,
                    serde_json::to_value(children::resource_quota(&tenant, &names))?,
                    serde_json::to_value(children::limit_range(&tenant, &names))?,
                    serde_json::to_value(children::service_account(&tenant, &names))?,
                    serde_json::to_value(children::role(&tenant, &names))?,
                    serde_json::to_value(children::role_binding(&tenant, &names))?,
                    serde_json::to_value(secret_access::binding(&tenant, &names, access))?,
                ];
                for policy in children::network_policies(&tenant, &names, &Default::default()) {
                    objects.push(serde_json::to_value(policy)?);
                }
                for object in objects {
                    apply(&client, &object, None, false).await?;
                }
                let credentials = Credentials::generate();
                postgres
                    .ensure_tenant(
                        "default",
                        &names,
                        &credentials.postgres_password,
                        PasswordPolicy::Enforce,
                        Tier::default(),
                    )
                    .await?;
                redis
                    .ensure_user(&AclUser::new(&names, &credentials.redis_password))
                    .await?;
                vault.ensure_policy(&names).await?;
                vault.ensure_auth_role(&names).await?;
                vault
                    .ensure_secret(
                        &names,
                        "credentials",
                        &credentials.to_map(&Default::default()),
                    )
                    .await?;
                if let (Some(writes), Some(reference)) = (tenant_writes, &reference) {
                    writes.after(&client, &name, reference).await?;
                }
                anyhow::Ok(names)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let elapsed = started.elapsed();
    for names in &names {
        postgres.drop_tenant("default", names).await?;
        redis.remove_user_if_present(&names.redis_user).await?;
        vault.detach(names).await?;
        vault.delete_secrets(names).await?;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let _ = namespaces
            .delete(&names.namespace, &Default::default())
            .await;
    }
    if tenant_writes.is_some() {
        let tenants: Vec<String> = (0..tenants).map(|i| format!("{prefix}-{i}")).collect();
        TenantWrites::remove(client, &tenants).await?;
    }
    Ok((elapsed, names))
}

/// Mean latency of each backend operation, from the operator's histograms.
fn backend_means(metrics: &str) -> Vec<String> {
    let value = |line: &str| line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    let mut out = vec![];
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("partnerplane_backend_operation_duration_seconds_sum{"))
    {
        let labels = &line[line.find('{').unwrap_or(0)..=line.find('}').unwrap_or(0)];
        let count_line = format!("partnerplane_backend_operation_duration_seconds_count{labels}");
        let count = metrics
            .lines()
            .find(|l| l.starts_with(&count_line))
            .and_then(value);
        if let (Some(sum), Some(count)) = (value(line), count) {
            out.push(format!(
                "{labels} mean {:.1} ms over {count}",
                sum / count * 1e3
            ));
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tenants = arg("--tenants", 1000);
    let shards = arg("--shards", 1).max(1);
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "partnerplane bench: {tenants} tenants, {shards} operator shard(s), {cores} cores, apply concurrency {CONCURRENCY}"
    );

    let flag = |name: &str| std::env::args().any(|a| a == name);
    let tenant_writes = flag("--tenant-writes");
    anyhow::ensure!(
        !(tenant_writes && (flag("--floor-only") || flag("--no-floor"))),
        "--tenant-writes copies a status from the operator phase and runs after the plain floor: \
         it cannot go with --floor-only or --no-floor"
    );
    if flag("--floor-only") {
        let (floor, _) = run_floor(&testbed, &client, tenants, None).await?;
        println!(
            "floor (same backend operations, issued directly): {:.1} s",
            floor.as_secs_f64()
        );
        return Ok(());
    }
    let (run, operator_tenants) =
        run_operator(&testbed, &client, tenants, shards, tenant_writes).await?;
    let secs = run.total.as_secs_f64();

    if flag("--no-floor") {
        return Ok(());
    }
    let operator_namespaces: Vec<String> = operator_tenants
        .iter()
        .map(|t| TenantNames::new(t, None).namespace)
        .collect();
    namespaces_gone(&client, &operator_namespaces).await?;
    let (floor, floor_names) = run_floor(&testbed, &client, tenants, None).await?;
    let floor_namespaces: Vec<String> = floor_names.iter().map(|n| n.namespace.clone()).collect();
    namespaces_gone(&client, &floor_namespaces).await?;
    println!(
        "floor (same backend operations, issued directly): {:.1} s",
        floor.as_secs_f64()
    );
    println!("ratio operator / floor: {:.2}", secs / floor.as_secs_f64());
    if tenant_writes {
        let sample = run
            .status_sample
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no operator tenant had a status to copy"))?;
        let writes = TenantWrites::new(&client, sample);
        // The operator phase had the bench's readiness watch on its tenants.
        let watch = ReadyWatch::start(&client, &format!("{SHARD_LABEL}={FLOOR_SHARD}")).await?;
        let (with_writes, names) = run_floor(&testbed, &client, tenants, Some(&writes)).await?;
        watch.stop().await;
        let namespaces: Vec<String> = names.iter().map(|n| n.namespace.clone()).collect();
        namespaces_gone(&client, &namespaces).await?;
        println!(
            "floor with each PartnerTenant's own writes (apply, finalizer, two status writes, one Event): {:.1} s",
            with_writes.as_secs_f64()
        );
        println!(
            "ratio operator / that floor: {:.2}; that floor / plain floor: {:.2}",
            secs / with_writes.as_secs_f64(),
            with_writes.as_secs_f64() / floor.as_secs_f64()
        );
    }
    Ok(())
}
