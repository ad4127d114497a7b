//! CopilotDeployment end to end: the example copilot becomes Ready because
//! its Deployment becomes Available on KWOK nodes, and a guardrail change
//! rolls its pods; its HNSW index has the declared dimension, operator
//! class and build parameters and answers nearest-neighbour queries; a
//! missing model key holds the rollout back until it is added; a copilot
//! reaches nothing of another tenant; old audit rows expire in batches.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use partnerplane::api::CopilotDeployment;
use partnerplane::copilot::controller::objects::{CONFIG_HASH, config_hash};
use partnerplane::copilot::names::CopilotNames;
use partnerplane::copilot::server_config::{
    CONFIG_KEY, DatabaseCredentials, ModelKey, ServerConfig,
};
use partnerplane_e2e::events::wait_event;
use partnerplane_e2e::operator::SHARD_LABEL;
use partnerplane_e2e::pipelines::{apply, tenant_session};
use partnerplane_e2e::tenants::{delete_tenants, pg_admin, sqlstate};
use partnerplane_e2e::{
    Operator, Testbed, kstatus, load_documents, repo_root, unique_name, wait_condition, wait_until,
};
use serde_json::{Value, json};

const READY_WITHIN: Duration = Duration::from_secs(150);

async fn ready_tenant(
    client: &kube::Client,
    operator: &Operator,
    prefix: &str,
    extra: Value,
) -> anyhow::Result<(String, String)> {
    let tenant = unique_name(prefix);
    let mut spec = json!({"displayName": prefix, "tier": "Standard", "secrets": {"store": "Both"}});
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
    apply(client, &[operator.tenant(&tenant, spec)]).await?;
    wait_condition(client, &tenant, "Ready", "True", Duration::from_secs(90)).await?;
    Ok((tenant.clone(), format!("ptn-{tenant}")))
}

/// A copilot manifest in `namespace`, assigned to `operator`.
fn copilot(name: &str, namespace: &str, operator: &Operator, spec: Value) -> Value {
    json!({
        "apiVersion": "partnerplane.io/v1alpha1",
        "kind": "CopilotDeployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {SHARD_LABEL: operator.shard}},
        "spec": spec,
    })
}

/// A small copilot whose model key is the Secret `model-key`.
fn small_spec(sources: &[&str]) -> Value {
    let approved: Vec<Value> = sources
        .iter()
        .map(|s| json!({"name": s, "kind": "Contracts"}))
        .collect();
    json!({
        "role": "Finance",
        "replicas": 1,
        "model": {"endpoint": "https://llm.msp.example/v1", "name": "gpt-4o-mini",
                  "apiKey": {"secret": {"name": "model-key", "key": "api-key"}}},
        "knowledge": {"index": {"dimensions": 3, "distance": "L2", "hnsw": {"m": 8, "efConstruction": 32}},
                      "approvedSources": approved},
    })
}

async fn model_secret(client: &kube::Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    apply(
        client,
        &[json!({"apiVersion": "v1", "kind": "Secret",
                 "metadata": {"name": name, "namespace": namespace},
                 "stringData": {"api-key": "sk-test-not-a-real-key"}})],
    )
    .await
}

/// Puts a model key at `path` under the tenant's OpenBao prefix.
async fn vault_key(
    testbed: &Testbed,
    client: &kube::Client,
    tenant: &str,
    path: &str,
) -> anyhow::Result<()> {
    let t = Api::<partnerplane::api::PartnerTenant>::all(client.clone())
        .get(tenant)
        .await?;
    let vault = t
        .status
        .and_then(|s| s.vault)
        .expect("the tenant uses OpenBao");
    vaultrs::kv2::set(
        &testbed.bao_admin()?,
        &vault.mount,
        &format!("{}/{path}", vault.path),
        &std::collections::HashMap::from([("api_key", "sk-test-not-a-real-key")]),
    )
    .await?;
    Ok(())
}

fn condition<'a>(
    c: &'a CopilotDeployment,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
}

/// Whether the copilot's `type_` condition has `status` for its current
/// generation (the condition's own generation: a new generation is marked
/// observed before its work is done).
fn is(c: &CopilotDeployment, type_: &str, status: &str) -> bool {
    condition(c, type_)
        .is_some_and(|x| x.status == status && x.observed_generation == c.metadata.generation)
        && c.status.as_ref().and_then(|s| s.observed_generation) == c.metadata.generation
}

async fn wait_copilot<F>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    check: F,
) -> anyhow::Result<CopilotDeployment>
where
    F: Fn(&CopilotDeployment) -> bool,
{
    let api: Api<CopilotDeployment> = Api::namespaced(client.clone(), namespace);
    let check = &check;
    wait_until(
        &format!("copilot {namespace}/{name}: {what}"),
        timeout,
        || {
            let api = api.clone();
            async move {
                let c = api.get(name).await?;
                if check(&c) {
                    return Ok(Some(c));
                }
                anyhow::bail!(
                    "generation {:?}, conditions: {:?}",
                    c.metadata.generation,
                    c.status.as_ref().map(|s| s
                        .conditions
                        .iter()
                        .map(|c| format!(
                            "{}={} {}: {} (gen {:?})",
                            c.type_, c.status, c.reason, c.message, c.observed_generation
                        ))
                        .collect::<Vec<_>>())
                )
            }
        },
    )
    .await
}

async fn merge_spec(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: Value,
) -> anyhow::Result<()> {
    Api::<CopilotDeployment>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await?;
    Ok(())
}

async fn server_config(
    client: &kube::Client,
    namespace: &str,
    object: &str,
) -> anyhow::Result<(ConfigMap, ServerConfig)> {
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(object)
        .await?;
    let text = cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY)).cloned();
    let config = serde_json::from_str(&text.unwrap_or_default())?;
    Ok((cm, config))
}

fn template_hash(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(CONFIG_HASH)
        .cloned()
}

async fn kubectl(testbed: &Testbed, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new("kubectl")
        .args(args)
        .envs(testbed.env())
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

/// The operator's count of finished copilot reconciles.
async fn copilot_reconciles(operator: &Operator) -> anyhow::Result<f64> {
    copilot_sample(operator, "partnerplane_reconciles_total").await
}

/// Copilot reconciles that have finished (the duration is observed at the end).
async fn copilot_reconciles_done(operator: &Operator) -> anyhow::Result<f64> {
    copilot_sample(operator, "partnerplane_reconcile_duration_seconds_count").await
}

async fn copilot_sample(operator: &Operator, family: &str) -> anyhow::Result<f64> {
    let text = operator.metrics().await?;
    let prefix = format!("{family}{{controller=\"copilotdeployment\"}}");
    Ok(text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0))
}

/// Waits until no copilot reconcile is running: every one started has finished.
async fn wait_idle(operator: &Operator) -> anyhow::Result<()> {
    wait_until(
        "copilot reconciles to finish",
        Duration::from_secs(30),
        || async {
            let (started, done) = (
                copilot_reconciles(operator).await?,
                copilot_reconciles_done(operator).await?,
            );
            Ok((started == done).then_some(()))
        },
    )
    .await
}

/// `partnerplane_api_writes_total` per kind.
async fn api_writes_by_kind(operator: &Operator) -> anyhow::Result<Vec<String>> {
    Ok(operator
        .metrics()
        .await?
        .lines()
        .filter(|l| l.starts_with("partnerplane_api_writes_total{"))
        .map(str::to_string)
        .collect())
}

/// Makes the operator reconcile the copilots of `tenant`'s namespace (a
/// change of the tenant wakes them) and waits until it has.
async fn poke(operator: &Operator, client: &kube::Client, tenant: &str) -> anyhow::Result<()> {
    let before = copilot_reconciles(operator).await?;
    let token = unique_name("poke");
    Api::<partnerplane::api::PartnerTenant>::all(client.clone())
        .patch(
            tenant,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"e2e.partnerplane.io/poke": token}}}),
            ),
        )
        .await?;
    wait_until("a copilot reconcile", Duration::from_secs(30), || async {
        Ok((copilot_reconciles(operator).await? > before).then_some(()))
    })
    .await?;
    // The reconcile counter moves at the start; wait for it to finish.
    wait_idle(operator).await
}

/// The row versions (`xmin`) of the copilot's knowledge table, index and
/// retrieval function in the catalog: any DDL on them changes one.
async fn catalog_versions(
    admin: &tokio_postgres::Client,
    schema: &str,
    names: &CopilotNames,
) -> anyhow::Result<(String, String, String)> {
    let row = admin
        .query_one(
            "SELECT \
               (SELECT c.xmin::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2), \
               (SELECT c.xmin::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $3), \
               (SELECT p.xmin::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = $1 AND p.proname = $4)",
            &[&schema, &names.knowledge, &names.index, &names.retrieve],
        )
        .await?;
    Ok((row.get(0), row.get(1), row.get(2)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_copilot_becomes_ready_on_kwok_and_a_guardrail_change_rolls_its_pods()
-> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("cop-ready"), &[]).await?;
    let (tenant, ns) = ready_tenant(
        &client,
        &operator,
        "cop-ready",
        json!({"branding": {"productName": "Northwind Partner Pulse", "primaryColor": "#0B3D91"},
               "network": {"allowFromNamespaces": ["ingress-nginx"]}}),
    )
    .await?;
    vault_key(&testbed, &client, &tenant, "models/openai").await?;
    let path = "examples/manufacturing-service-network/partner-operations-copilot.yaml";
    let mut doc = load_documents(&repo_root().join(path))?
        .into_iter()
        .find(|d| d["kind"] == "CopilotDeployment")
        .expect("the example holds a copilot");
    doc["metadata"]["namespace"] = json!(ns);
    doc["metadata"]["labels"] = json!({SHARD_LABEL: operator.shard});
    let name = doc["metadata"]["name"].as_str().unwrap().to_string();
    apply(&client, &[doc]).await?;

    let ready = wait_copilot(&client, &ns, &name, "Ready", READY_WITHIN, |c| {
        is(c, "Ready", "True")
    })
    .await?;
    for part in ["IndexReady", "ModelKeyReady", "Available"] {
        assert!(
            is(&ready, part, "True"),
            "{part}: {:?}",
            condition(&ready, part)
        );
    }
    assert!(is(&ready, "Reconciling", "False") && is(&ready, "Stalled", "False"));
    let status = ready.status.clone().unwrap();
    let object = format!("copilot-{name}");
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://{object}.{ns}.svc:8080").as_str())
    );
    assert!(status.available_replicas.unwrap_or(0) >= 1);
    // Desired replicas follow the Deployment, whose replicas the example's
    // autoscaler owns (it raises them to its minimum).
    wait_until(
        "desiredReplicas to follow the Deployment",
        READY_WITHIN,
        || {
            let copilots: Api<CopilotDeployment> = Api::namespaced(client.clone(), &ns);
            let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            let (name, object) = (name.clone(), format!("copilot-{name}"));
            async move {
                let desired = copilots
                    .get(&name)
                    .await?
                    .status
                    .and_then(|s| s.desired_replicas);
                let asked = deployments
                    .get(&object)
                    .await?
                    .spec
                    .and_then(|s| s.replicas);
                anyhow::ensure!(desired.is_some(), "no desiredReplicas");
                Ok((desired == asked).then_some(()))
            }
        },
    )
    .await?;
    let index_table = status.index_table.clone().unwrap();
    assert!(index_table.contains("_knowledge"), "{index_table}");
    let verdict = kstatus(&serde_json::to_value(&ready)?).await?;
    assert_eq!(verdict.status, "Current", "{}", verdict.message);

    // The Deployment runs the server from the operator's image, restricted.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let deployment = deployments.get(&object).await?;
    assert!(
        deployment
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            >= Some(1),
        "available on KWOK nodes"
    );
    let pod = serde_json::to_value(&deployment.spec.as_ref().unwrap().template.spec)?;
    assert_eq!(pod["serviceAccountName"], "tenant-workload");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["args"], json!(["copilot"]));
    assert!(
        container["image"]
            .as_str()
            .unwrap()
            .starts_with("ghcr.io/partnerplane/operator:"),
        "{}",
        container["image"]
    );
    let sc = &container["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    // No key value anywhere in the pod spec: references only.
    assert!(!pod.to_string().contains("sk-test-not-a-real-key"));
    // Autoscaling: the autoscaler owns the replicas.
    let hpa = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns)
        .get(&object)
        .await?;
    assert_eq!(hpa.spec.as_ref().unwrap().max_replicas, 6);
    let pdb = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns)
        .get(&object)
        .await?;
    assert_eq!(
        serde_json::to_value(pdb.spec.unwrap())?["minAvailable"],
        json!(1)
    );
    let service = Api::<Service>::namespaced(client.clone(), &ns)
        .get(&object)
        .await?;
    assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 8080);
    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .get(&object)
        .await?;
    let policy = serde_json::to_value(policy.spec.unwrap())?;
    assert!(
        policy["ingress"].to_string().contains("ingress-nginx"),
        "{policy}"
    );
    // Egress: every rule names its destinations (none is open to all);
    // DNS goes to the cluster DNS only; the public model endpoint is
    // reached on its port and never through private ranges; Postgres on
    // its one address.
    let egress = policy["egress"].as_array().cloned().unwrap_or_default();
    for rule in &egress {
        let to = rule["to"].as_array().cloned().unwrap_or_default();
        assert!(!to.is_empty(), "a rule open to every destination: {rule}");
        let ports: Vec<i64> = rule["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["port"].as_i64())
            .collect();
        if ports.contains(&53) {
            assert!(
                rule.to_string().contains("kube-dns") && to.len() == 1,
                "{rule}"
            );
        }
        for block in to.iter().filter_map(|t| t.get("ipBlock")) {
            if matches!(block["cidr"].as_str(), Some("0.0.0.0/0" | "::/0")) {
                assert_eq!(ports, [443], "the model endpoint's port only: {rule}");
                assert!(
                    block["except"].as_array().is_some_and(|e| !e.is_empty()),
                    "{rule}"
                );
            }
        }
    }
    let pg: tokio_postgres::Config = testbed.pg_admin_dsn.parse()?;
    let Some(tokio_postgres::config::Host::Tcp(pg_host)) = pg.get_hosts().first() else {
        anyhow::bail!("the test bed's Postgres has no TCP host");
    };
    let pg_rule = json!({"to": [{"ipBlock": {"cidr": format!("{pg_host}/32")}}],
                         "ports": [{"protocol": "TCP", "port": pg.get_ports()[0]}]});
    assert!(egress.contains(&pg_rule), "no {pg_rule} in {egress:#?}");

    // The configuration the server reads.
    let (cm, config) = server_config(&client, &ns, &object).await?;
    assert_eq!(config.copilot, format!("{ns}/{name}"));
    assert_eq!(
        config.branding.product_name.as_deref(),
        Some("Northwind Partner Pulse")
    );
    assert_eq!(config.approved_sources.len(), 4);
    assert_eq!(config.guardrails.min_confidence, 0.75);
    assert_eq!(config.database.dimensions, 1536);
    assert_eq!(config.database.credentials, DatabaseCredentials::Env);
    let ModelKey::Vault(key) = &config.model.key else {
        panic!("{:?}", config.model.key)
    };
    assert_eq!(key.path, format!("tenants/{tenant}/models/openai"));
    let first_hash = config_hash(&cm);
    assert_eq!(
        template_hash(&deployment).as_deref(),
        Some(first_hash.as_str())
    );

    // What `kubectl get cop` shows.
    let listing = kubectl(&testbed, &["get", "cop", "-n", &ns]).await?;
    for text in [
        "READY",
        "REASON",
        "ROLE",
        "DESIRED",
        "AVAILABLE",
        "INDEX",
        name.as_str(),
        "PartnerOperations",
        "True",
    ] {
        assert!(listing.contains(text), "no {text} in:\n{listing}");
    }

    // A stricter guardrail changes the configuration, so the pods roll.
    merge_spec(
        &client,
        &ns,
        &name,
        json!({"guardrails": {"minConfidence": 0.9}}),
    )
    .await?;
    let rolled = wait_until("the Deployment to roll", READY_WITHIN, || {
        let deployments = deployments.clone();
        let object = object.clone();
        let first_hash = first_hash.clone();
        async move {
            let d = deployments.get(&object).await?;
            let status = d.status.clone().unwrap_or_default();
            let rolled = template_hash(&d).is_some_and(|h| h != first_hash)
                && status.observed_generation == d.metadata.generation
                && status.updated_replicas.unwrap_or(0) >= 1
                && status.available_replicas.unwrap_or(0) >= 1;
            Ok(rolled.then_some(d))
        }
    })
    .await?;
    assert!(rolled.metadata.generation > deployment.metadata.generation);
    let (cm, config) = server_config(&client, &ns, &object).await?;
    assert_eq!(config.guardrails.min_confidence, 0.9);
    assert_eq!(template_hash(&rolled), Some(config_hash(&cm)));
    wait_copilot(&client, &ns, &name, "Ready again", READY_WITHIN, |c| {
        is(c, "Ready", "True") && c.metadata.generation == Some(2)
    })
    .await?;
    wait_event(&client, &name, "RolledOut", Duration::from_secs(30)).await?;

    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_has_the_declared_parameters_and_serves_nearest_neighbour_queries()
-> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("cop-index"), &[]).await?;
    let (tenant, ns) = ready_tenant(&client, &operator, "cop-index", json!({})).await?;
    model_secret(&client, &ns, "model-key").await?;
    apply(
        &client,
        &[copilot(
            "kb",
            &ns,
            &operator,
            small_spec(&["contracts", "tickets"]),
        )],
    )
    .await?;
    let ready = wait_copilot(&client, &ns, "kb", "Ready", READY_WITHIN, |c| {
        is(c, "Ready", "True")
    })
    .await?;
    let table = ready.status.unwrap().index_table.unwrap();
    let names = CopilotNames::new(&ns, "kb");

    // The catalog shows what the spec declares.
    let admin = pg_admin(&testbed).await?;
    let row = admin
        .query_one(
            "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attname = 'embedding'",
            &[&table],
        )
        .await?;
    let type_: String = row.get(0);
    assert!(type_.ends_with("vector(3)"), "{type_}");
    let row = admin
        .query_one(
            "SELECT ic.relname::text, am.amname::text, opc.opcname::text, ic.reloptions::text[] \
             FROM pg_index x JOIN pg_class ic ON ic.oid = x.indexrelid \
             JOIN pg_am am ON am.oid = ic.relam JOIN pg_opclass opc ON opc.oid = x.indclass[0] \
             WHERE x.indrelid = to_regclass($1) AND am.amname = 'hnsw'",
            &[&table],
        )
        .await?;
    let (index, method, class, options): (String, String, String, Vec<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(index, names.index);
    assert_eq!((method.as_str(), class.as_str()), ("hnsw", "vector_l2_ops"));
    let options: BTreeSet<String> = options.into_iter().collect();
    assert_eq!(
        options,
        BTreeSet::from(["m=8".to_string(), "ef_construction=32".to_string()])
    );

    // The tenant's own credentials write chunks and find their neighbours
    // through the index.
    let (session, schema) = tenant_session(&testbed, &client, &ns).await?;
    session
        .batch_execute(&format!("SET search_path = \"{schema}\", extensions"))
        .await?;
    session
        .batch_execute(&format!(
            "INSERT INTO \"{k}\" (source, document, chunk, content, embedding) \
             SELECT (ARRAY['contracts', 'tickets', 'hr_files'])[1 + i % 3], 'doc-' || i, 0, 'chunk ' || i, \
                    ARRAY[random(), random(), random()]::vector \
             FROM generate_series(1, 3000) i; \
             ANALYZE \"{k}\"",
            k = names.knowledge
        ))
        .await?;
    // The planner's own choice (nothing disabled), through the retrieval
    // function the server calls: Postgres inlines it, so its plan shows.
    let plan: Vec<String> = session
        .simple_query(&format!(
            "EXPLAIN SELECT id FROM \"{}\"('[0.5,0.5,0.5]'::vector, 10)",
            names.retrieve
        ))
        .await?
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains(&format!("Index Scan using {}", names.index)),
        "{plan}"
    );
    let sources = |rows: Vec<tokio_postgres::Row>| -> BTreeSet<String> {
        rows.iter().map(|r| r.get::<_, String>(0)).collect()
    };
    let retrieve = format!(
        "SELECT source FROM \"{}\"('[0.5,0.5,0.5]'::vector, 100)",
        names.retrieve
    );
    let found = sources(session.query(&retrieve, &[]).await?);
    assert_eq!(
        found,
        BTreeSet::from(["contracts".to_string(), "tickets".to_string()]),
        "only approved sources"
    );

    // Narrowing the approved sources narrows retrieval.
    merge_spec(
        &client,
        &ns,
        "kb",
        json!({"knowledge": {"approvedSources": [{"name": "contracts", "kind": "Contracts"}]}}),
    )
    .await?;
    wait_copilot(
        &client,
        &ns,
        "kb",
        "Ready at generation 2",
        READY_WITHIN,
        |c| is(c, "Ready", "True") && c.metadata.generation == Some(2),
    )
    .await?;
    let found = sources(session.query(&retrieve, &[]).await?);
    assert_eq!(found, BTreeSet::from(["contracts".to_string()]));

    // A reconcile with nothing to change issues no DDL: the catalog rows of
    // the table, the index and the function keep their versions.
    // Once the rollout the new configuration started has settled.
    wait_copilot(&client, &ns, "kb", "rollout settled", READY_WITHIN, |c| {
        is(c, "Ready", "True")
            && condition(c, "Available").is_some_and(|a| !a.message.contains("rollout"))
            && c.status.as_ref().and_then(|s| s.available_replicas) == Some(1)
    })
    .await?;
    wait_idle(&operator).await?;
    let before = catalog_versions(&admin, &schema, &names).await?;
    let writes = operator
        .metric_sum("partnerplane_backend_writes_total")
        .await?;
    let api_writes = api_writes_by_kind(&operator).await?;
    poke(&operator, &client, &tenant).await?;
    assert_eq!(
        api_writes_by_kind(&operator).await?,
        api_writes,
        "no write to the API server on a no-op reconcile"
    );
    assert_eq!(
        catalog_versions(&admin, &schema, &names).await?,
        before,
        "no DDL on a no-op reconcile"
    );
    assert_eq!(
        operator
            .metric_sum("partnerplane_backend_writes_total")
            .await?,
        writes
    );

    // A table holding another dimension is refused, naming both.
    session
        .batch_execute(&format!(
            "TRUNCATE \"{k}\"; ALTER TABLE \"{k}\" ALTER COLUMN embedding TYPE vector(4)",
            k = names.knowledge
        ))
        .await?;
    merge_spec(
        &client,
        &ns,
        "kb",
        json!({"guardrails": {"minConfidence": 0.8}}),
    )
    .await?;
    let stalled = wait_copilot(&client, &ns, "kb", "Stalled", READY_WITHIN, |c| {
        is(c, "Stalled", "True")
    })
    .await?;
    let ready = condition(&stalled, "Ready").unwrap();
    assert_eq!(ready.reason, "DimensionsChangeRefused", "{}", ready.message);
    assert!(
        ready.message.contains("4-dimensional") && ready.message.contains("is 3"),
        "{}",
        ready.message
    );
    assert_eq!(condition(&stalled, "IndexReady").unwrap().status, "False");
    // Flux and cli-utils tools stop waiting on it: kstatus reads it as Failed.
    let verdict = kstatus(&serde_json::to_value(&stalled)?).await?;
    assert_eq!(verdict.status, "Failed", "{}", verdict.message);
    wait_event(
        &client,
        "kb",
        "DimensionsChangeRefused",
        Duration::from_secs(30),
    )
    .await?;

    delete_tenants(&client, &[tenant]).await?;
    // Nothing of the copilot is left behind.
    let left: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname = $1",
            &[&names.knowledge],
        )
        .await?
        .get(0);
    assert_eq!(left, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_model_key_holds_the_rollout_back_until_it_is_added() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("cop-key"), &[]).await?;
    let (tenant, ns) = ready_tenant(&client, &operator, "cop-key", json!({})).await?;
    let mut in_vault = small_spec(&["contracts"]);
    in_vault["model"]["apiKey"] = json!({"vault": {"path": "models/openai", "key": "api_key"}});
    apply(
        &client,
        &[
            copilot("vault-key", &ns, &operator, in_vault),
            copilot("secret-key", &ns, &operator, small_spec(&["contracts"])),
        ],
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for (name, place) in [
        ("vault-key", format!("tenants/{tenant}/models/openai")),
        ("secret-key", format!("Secret {ns}/model-key key api-key")),
    ] {
        let waiting = wait_copilot(
            &client,
            &ns,
            name,
            "ModelKeyReady=False",
            READY_WITHIN,
            |c| is(c, "ModelKeyReady", "False"),
        )
        .await?;
        let key = condition(&waiting, "ModelKeyReady").unwrap();
        assert_eq!(key.reason, "ModelKeyMissing");
        assert!(key.message.contains(&place), "{}", key.message);
        let ready = condition(&waiting, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "ModelKeyMissing")
        );
        // It fixes itself once the key exists: in progress, not stalled.
        assert!(is(&waiting, "Reconciling", "True") && is(&waiting, "Stalled", "False"));
        assert!(
            deployments
                .get_opt(&format!("copilot-{name}"))
                .await?
                .is_none(),
            "no Deployment without the key"
        );
        let event = wait_event(&client, name, "ModelKeyMissing", Duration::from_secs(30)).await?;
        assert!(event.contains(&place), "{event}");
    }

    // Adding the keys recovers both on their own.
    vault_key(&testbed, &client, &tenant, "models/openai").await?;
    model_secret(&client, &ns, "model-key").await?;
    for name in ["vault-key", "secret-key"] {
        wait_copilot(&client, &ns, name, "Ready", READY_WITHIN, |c| {
            is(c, "Ready", "True")
        })
        .await?;
        let d = deployments.get(&format!("copilot-{name}")).await?;
        assert!(d.status.and_then(|s| s.available_replicas) >= Some(1));
    }
    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copilot_reaches_nothing_of_another_tenant() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("cop-iso"), &[]).await?;
    let (tenant_a, ns_a) = ready_tenant(&client, &operator, "cop-iso-a", json!({})).await?;
    let (tenant_b, ns_b) = ready_tenant(&client, &operator, "cop-iso-b", json!({})).await?;
    model_secret(&client, &ns_a, "model-key").await?;
    vault_key(&testbed, &client, &tenant_b, "models/openai").await?;
    let mut b_spec = small_spec(&["contracts"]);
    b_spec["model"]["apiKey"] = json!({"vault": {"path": "models/openai", "key": "api_key"}});
    apply(
        &client,
        &[
            copilot("a", &ns_a, &operator, small_spec(&["contracts"])),
            copilot("b", &ns_b, &operator, b_spec.clone()),
        ],
    )
    .await?;
    wait_copilot(&client, &ns_a, "a", "Ready", READY_WITHIN, |c| {
        is(c, "Ready", "True")
    })
    .await?;
    let b = wait_copilot(&client, &ns_b, "b", "Ready", READY_WITHIN, |c| {
        is(c, "Ready", "True")
    })
    .await?;
    let b_table = b.status.unwrap().index_table.unwrap();
    let b_names = CopilotNames::new(&ns_b, "b");

    // A's credentials cannot read or write B's index, audit log or function.
    let (session_a, schema_a) = tenant_session(&testbed, &client, &ns_a).await?;
    let (_, schema_b) = tenant_session(&testbed, &client, &ns_b).await?;
    assert!(b_table.contains(&schema_b) && !b_table.contains(&schema_a));
    for statement in [
        format!("SELECT * FROM {b_table}"),
        format!(
            "INSERT INTO \"{schema_b}\".\"{}\" (kind, outcome) VALUES ('answer', 'answered')",
            b_names.audit
        ),
        format!(
            "SELECT * FROM \"{schema_b}\".\"{}\"('[1,2,3]'::extensions.vector, 1)",
            b_names.retrieve
        ),
    ] {
        let err = session_a
            .query(&statement, &[])
            .await
            .expect_err("A reaches B");
        assert_eq!(sqlstate(&err), Some("42501"), "{statement}: {err}");
    }

    // A's copilot is configured with A's schema, A's Secrets and A's namespace only.
    let (_, config) = server_config(&client, &ns_a, "copilot-a").await?;
    assert_eq!(config.database.schema, schema_a);
    let d = Api::<Deployment>::namespaced(client.clone(), &ns_a)
        .get("copilot-a")
        .await?;
    let env = serde_json::to_value(&d.spec.unwrap().template.spec.unwrap().containers[0].env)?;
    let secrets: BTreeSet<String> = env
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            e["valueFrom"]["secretKeyRef"]["name"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        secrets,
        BTreeSet::from([
            "model-key".to_string(),
            "partnerplane-credentials".to_string()
        ])
    );

    // B's key exists at B's path; the same path from A's namespace is A's
    // own, where nothing is.
    apply(&client, &[copilot("borrow", &ns_a, &operator, b_spec)]).await?;
    let borrowing = wait_copilot(
        &client,
        &ns_a,
        "borrow",
        "ModelKeyReady=False",
        READY_WITHIN,
        |c| is(c, "ModelKeyReady", "False"),
    )
    .await?;
    let message = &condition(&borrowing, "ModelKeyReady").unwrap().message;
    assert!(
        message.contains(&format!("tenants/{tenant_a}/models/openai")),
        "{message}"
    );
    assert!(!message.contains(&tenant_b), "{message}");

    // No field can name another schema, namespace or tenant.
    for (field, value) in [
        ("schema", json!(schema_b)),
        ("namespace", json!(ns_b)),
        ("tenant", json!(tenant_b)),
    ] {
        let mut spec = small_spec(&["contracts"]);
        spec[field] = value;
        let err = apply(&client, &[copilot("hostile", &ns_a, &operator, spec)])
            .await
            .expect_err("an unknown field is refused");
        let message = format!("{err:#}");
        assert!(
            message.contains(&format!("spec.{field}"))
                && message.contains("field not declared in schema"),
            "{field}: {message}"
        );
    }
    delete_tenants(&client, &[tenant_a, tenant_b]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_rows_past_their_retention_are_deleted_in_batches() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("cop-audit"), &[]).await?;
    let (tenant, ns) = ready_tenant(&client, &operator, "cop-audit", json!({})).await?;
    model_secret(&client, &ns, "model-key").await?;
    let mut spec = small_spec(&["contracts"]);
    spec["guardrails"] = json!({"audit": {"enabled": true, "retentionDays": 365}});
    apply(&client, &[copilot("audited", &ns, &operator, spec)]).await?;
    let ready = wait_copilot(&client, &ns, "audited", "Ready", READY_WITHIN, |c| {
        is(c, "Ready", "True")
    })
    .await?;
    let audit = ready.status.unwrap().audit_table.unwrap();
    let (session, _) = tenant_session(&testbed, &client, &ns).await?;
    // 25,000 records from 40 days ago (more than two batches) and 10 recent ones.
    session
        .batch_execute(&format!(
            "INSERT INTO {audit} (at, kind, prompt, response, outcome) \
             SELECT now() - interval '40 days' - i * interval '1 second', 'answer', 'q', 'a', 'answered' \
             FROM generate_series(1, 25000) i; \
             INSERT INTO {audit} (at, kind, prompt, response, outcome) \
             SELECT now() - i * interval '1 hour', 'answer', 'q', 'a', 'answered' FROM generate_series(1, 10) i"
        ))
        .await?;
    let count = |older: bool| {
        let session = &session;
        let audit = audit.clone();
        async move {
            let op = if older { "<" } else { ">=" };
            let n: i64 = session
                .query_one(
                    &format!(
                        "SELECT count(*) FROM {audit} WHERE at {op} now() - interval '30 days'"
                    ),
                    &[],
                )
                .await?
                .get(0);
            anyhow::Ok(n)
        }
    };
    // At 365 days nothing is old enough.
    poke(&operator, &client, &tenant).await?;
    assert_eq!(count(true).await?, 25_000);

    merge_spec(
        &client,
        &ns,
        "audited",
        json!({"guardrails": {"audit": {"retentionDays": 30}}}),
    )
    .await?;
    wait_until(
        "expired audit rows to be deleted",
        Duration::from_secs(90),
        || async {
            let left = count(true).await?;
            Ok((left == 0).then_some(()))
        },
    )
    .await?;
    assert_eq!(count(false).await?, 10, "recent records stay");
    let event = wait_event(&client, "audited", "AuditExpired", Duration::from_secs(30)).await?;
    assert!(event.contains("older than 30 day(s)"), "{event}");
    let events = partnerplane_e2e::events::events_about(&client, "audited").await?;
    assert!(
        events
            .iter()
            .any(|(r, m)| r == "AuditExpired" && m.starts_with("10000 audit record(s)")),
        "deleted in batches of 10,000: {events:?}"
    );
    delete_tenants(&client, &[tenant]).await?;
    Ok(())
}
