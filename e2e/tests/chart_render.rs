//! The Helm chart (`charts/partnerplane`) as a cluster and the operator see
//! it: the real API server accepts every object it renders (server-side dry
//! run), a namespace enforcing the `restricted` Pod Security Standard admits
//! its pod, it renders the same objects and RBAC as `kubectl kustomize
//! config/default`, its CRDs are the repository's, and the operator
//! provisions with the configuration file it renders and exports every
//! series its alerts and dashboard read. Helm is built by `hack/tools.sh` (cached).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use partnerplane::config::OperatorConfig;
use partnerplane_e2e::chart::{self, documents, kubectl, run};
use partnerplane_e2e::pipelines::{self, apply, is, wait_pipeline};
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{Operator, Testbed, repo_root, unique_name, wait_condition};
use serde_json::{Value, json};

const RELEASE: &str = "partnerplane";
const NAMESPACE: &str = "partnerplane-system";

/// Grants `config/rbac` may make that the chart does not (none: both grant
/// exactly what the controllers use). The test fails when either side
/// changes without the other.
const ONLY_IN_CONFIG_RBAC: &[(&str, &str, &str)] = &[];

/// `helm template` of the chart as the release `partnerplane` into `namespace`.
fn helm_template(namespace: &str, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    chart::helm_template(RELEASE, namespace, args)
}

/// The value with every integral number as an integer (`1.0` is `1`).
fn numbers_by_value(value: &Value) -> Value {
    match value {
        Value::Number(n) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => json!(f as i64),
            _ => value.clone(),
        },
        Value::Array(items) => Value::Array(items.iter().map(numbers_by_value).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), numbers_by_value(v)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

fn key(object: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let kind = s(&object["kind"]);
    // kustomize does not know these kinds are cluster-scoped and gives them
    // its namespace, which the API server ignores.
    let namespace = if kind.starts_with("ValidatingAdmissionPolicy") {
        String::new()
    } else {
        s(&object["metadata"]["namespace"])
    };
    (kind, namespace, s(&object["metadata"]["name"]))
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name}"))
}

/// Every (group, resource, verb) a set of roles grants, with the role's kind and namespace.
fn grants(objects: &[Value]) -> BTreeSet<(String, String, String, String, String)> {
    let mut out = BTreeSet::new();
    for role in objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
    {
        let (kind, namespace, _) = key(role);
        for rule in role["rules"].as_array().into_iter().flatten() {
            let list = |field: &str| -> Vec<String> {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            };
            let names = list("resourceNames");
            for group in list("apiGroups") {
                for resource in list("resources") {
                    let resource = if names.is_empty() {
                        resource
                    } else {
                        format!("{resource}/{}", names.join(","))
                    };
                    for verb in list("verbs") {
                        out.insert((
                            kind.clone(),
                            namespace.clone(),
                            group.clone(),
                            resource.clone(),
                            verb,
                        ));
                    }
                }
            }
        }
    }
    out
}

/// A Deployment's spec without what differs by installation method (labels,
/// selectors, annotations such as the chart's config checksum, pull policy).
fn comparable_deployment(deployment: &Value) -> Value {
    let mut spec = deployment["spec"].clone();
    let object = spec.as_object_mut().expect("spec is an object");
    object.remove("selector");
    if let Some(template) = object.get_mut("template").and_then(Value::as_object_mut) {
        template.remove("metadata");
    }
    for container in spec["template"]["spec"]["containers"]
        .as_array_mut()
        .into_iter()
        .flatten()
    {
        container
            .as_object_mut()
            .expect("container")
            .remove("imagePullPolicy");
    }
    spec
}

#[test]
fn the_charts_crds_are_the_repositorys() -> anyhow::Result<()> {
    let crds = repo_root().join("crds");
    let copies = repo_root().join("charts/partnerplane/files/crds");
    let names = |dir: &PathBuf| -> anyhow::Result<BTreeSet<String>> {
        Ok(std::fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".partnerplane.io.yaml"))
            .collect())
    };
    let fix = "run hack/sync-chart-crds.sh after `make crds`";
    ensure!(
        names(&crds)? == names(&copies)?,
        "the chart's CRD files differ from crds/: {fix}"
    );
    for name in names(&crds)? {
        ensure!(
            std::fs::read(crds.join(&name))? == std::fs::read(copies.join(&name))?,
            "charts/partnerplane/files/crds/{name} differs from crds/{name}: {fix}"
        );
    }
    // Rendered, they are the same objects plus Helm's labels and the keep policy.
    let rendered = helm_template(NAMESPACE, &[])?;
    for name in names(&crds)? {
        let original = documents(&std::fs::read_to_string(crds.join(&name))?)?.remove(0);
        let crd_name = original["metadata"]["name"].as_str().unwrap_or_default();
        let chart = find(&rendered, "CustomResourceDefinition", crd_name)?;
        ensure!(
            chart["spec"] == original["spec"],
            "{name}: the rendered spec differs"
        );
        assert_eq!(
            chart["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name}: upgraded with the chart, kept on uninstall"
        );
        for (label, value) in original["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
        {
            assert_eq!(
                &chart["metadata"]["labels"][label], value,
                "{name}: {label}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_rendered_configuration_file_is_one_the_operator_accepts() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(unique_name("chart-config"));
    std::fs::create_dir_all(&dir)?;
    let values = dir.join("values.yaml");
    std::fs::write(
        &values,
        r#"
config:
  postgres:
    - name: default
      dsnSecret: {name: backend-admin, key: postgres-dsn}
      caSecret: {name: backend-admin, key: ca.crt}
      maxConnections: 16
    - name: eu-west
      dsnSecret: {namespace: databases, name: pg-eu, key: dsn}
  redis:
    urlSecret: {name: backend-admin, key: redis-url}
    caSecret: {name: backend-admin, key: ca.crt}
  vault:
    address: https://vault.vault.svc:8200
    tokenSecret: {name: backend-admin, key: vault-token}
    caSecret: {name: backend-admin, key: ca.crt}
    kvMount: tenants
    authMount: k8s
  backendTimeout: 2.5
  webhooks:
    allow: ["10.20.0.0/16", "hooks.internal"]
    caSecret: {name: backend-admin, key: ca.crt}
"#,
    )?;
    for args in [vec![], vec!["-f", values.to_str().unwrap_or_default()]] {
        let rendered = helm_template("pp-ns", &args)?;
        let config_map = find(&rendered, "ConfigMap", "partnerplane-operator")?;
        let file = dir.join("operator.yaml");
        std::fs::write(
            &file,
            config_map["data"]["operator.yaml"]
                .as_str()
                .unwrap_or_default(),
        )?;
        let config = OperatorConfig::load(&file)
            .with_context(|| format!("the operator refuses the file rendered with {args:?}"))?;
        // Secret references without a namespace get the release namespace.
        assert_eq!(config.postgres[0].dsn_secret.namespace, "pp-ns");
        assert_eq!(config.redis.url_secret.namespace, "pp-ns");
        assert_eq!(config.vault.token_secret.namespace, "pp-ns");
        if !args.is_empty() {
            assert_eq!(config.postgres.len(), 2);
            assert_eq!(config.postgres[1].dsn_secret.namespace, "databases");
            let ca = config.postgres[0]
                .ca_secret
                .as_ref()
                .context("postgres caSecret")?;
            assert_eq!(
                (ca.namespace.as_str(), ca.key.as_str()),
                ("pp-ns", "ca.crt")
            );
            assert!(config.redis.ca_secret.is_some() && config.vault.ca_secret.is_some());
            assert_eq!(config.vault.kv_mount, "tenants");
            assert_eq!(
                config.backend_timeout,
                std::time::Duration::from_millis(2500)
            );
            assert_eq!(config.webhooks.allow, ["10.20.0.0/16", "hooks.internal"]);
            assert!(config.webhooks.ca_secret.is_some());
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn the_chart_and_config_default_render_the_same_objects() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let (out, _) = run(
        kubectl(&testbed)
            .args(["kustomize"])
            .arg(repo_root().join("config/default")),
        None,
    )?;
    let kustomize = documents(&out)?;
    let chart = helm_template(NAMESPACE, &[])?;

    // The same objects; Helm installs into a namespace it does not create.
    let keys = |objects: &[Value]| -> BTreeSet<_> {
        objects
            .iter()
            .map(key)
            .filter(|(kind, _, _)| kind != "Namespace")
            .collect()
    };
    assert_eq!(
        keys(&chart),
        keys(&kustomize),
        "kinds, namespaces and names"
    );

    for crd in kustomize
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let (_, _, name) = key(crd);
        // kustomize writes `1.0` as `1`: compare numbers by value.
        ensure!(
            numbers_by_value(&find(&chart, "CustomResourceDefinition", &name)?["spec"])
                == numbers_by_value(&crd["spec"]),
            "CRD {name} differs: run hack/sync-chart-crds.sh after `make crds`"
        );
    }
    let config = |objects: &[Value]| -> anyhow::Result<Value> {
        let text = find(objects, "ConfigMap", "partnerplane-operator")?["data"]["operator.yaml"]
            .as_str()
            .context("operator.yaml")?
            .to_string();
        Ok(documents(&text)?.remove(0))
    };
    assert_eq!(
        config(&chart)?,
        config(&kustomize)?,
        "the configuration file"
    );

    let deployment = |objects: &[Value]| -> anyhow::Result<Value> {
        Ok(comparable_deployment(find(
            objects,
            "Deployment",
            "partnerplane-operator",
        )?))
    };
    assert_eq!(
        deployment(&chart)?,
        deployment(&kustomize)?,
        "the Deployment"
    );

    let service = |objects: &[Value]| -> anyhow::Result<Value> {
        let mut spec = find(objects, "Service", "partnerplane-operator-metrics")?["spec"].clone();
        spec.as_object_mut().context("spec")?.remove("selector");
        Ok(spec)
    };
    assert_eq!(
        service(&chart)?,
        service(&kustomize)?,
        "the metrics Service"
    );
    // Each Service selects its own installation's pods.
    for objects in [&chart, &kustomize] {
        let selector =
            &find(objects, "Service", "partnerplane-operator-metrics")?["spec"]["selector"];
        let labels = &find(objects, "Deployment", "partnerplane-operator")?["spec"]["template"]["metadata"]
            ["labels"];
        for (k, v) in selector.as_object().context("selector")? {
            assert_eq!(&labels[k], v, "the Service selects the operator's pods");
        }
    }

    let binding = |objects: &[Value]| -> anyhow::Result<Value> {
        let b = find(objects, "ClusterRoleBinding", "partnerplane-operator")?;
        Ok(json!({"roleRef": b["roleRef"], "subjects": b["subjects"]}))
    };
    assert_eq!(
        binding(&chart)?,
        binding(&kustomize)?,
        "the ClusterRoleBinding"
    );
    for kind in [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        for name in [
            "partnerplane-operator-namespaces",
            "partnerplane-operator-tenant-namespaces",
        ] {
            let spec = |objects: &[Value]| -> anyhow::Result<Value> {
                Ok(find(objects, kind, name)?["spec"].clone())
            };
            assert_eq!(spec(&chart)?, spec(&kustomize)?, "the {kind} {name}");
        }
    }
    Ok(())
}

#[test]
fn the_chart_and_config_rbac_grant_the_same() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let (out, _) = run(
        kubectl(&testbed)
            .args(["kustomize"])
            .arg(repo_root().join("config/default")),
        None,
    )?;
    let kustomize = grants(&documents(&out)?);
    let chart = grants(&helm_template(NAMESPACE, &[])?);
    let known: BTreeSet<_> = ONLY_IN_CONFIG_RBAC
        .iter()
        .map(|(g, r, v)| {
            (
                "ClusterRole".to_string(),
                String::new(),
                g.to_string(),
                r.to_string(),
                v.to_string(),
            )
        })
        .collect();
    let only_chart: Vec<_> = chart.difference(&kustomize).collect();
    let only_config: BTreeSet<_> = kustomize.difference(&chart).cloned().collect();
    let unexpected: Vec<_> = only_config.difference(&known).collect();
    let gone: Vec<_> = known.difference(&only_config).collect();
    ensure!(
        only_chart.is_empty() && unexpected.is_empty() && gone.is_empty(),
        "the chart and config/rbac differ:\n  only in the chart: {only_chart:#?}\n  only in config/rbac \
         (beyond ONLY_IN_CONFIG_RBAC): {unexpected:#?}\n  in ONLY_IN_CONFIG_RBAC but no longer a difference: {gone:#?}"
    );
    Ok(())
}

#[test]
fn the_api_server_accepts_the_chart_and_restricted_pod_security_admits_its_pod()
-> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let namespace = unique_name("chart-restricted");
    // A real namespace (the dry run of namespaced objects needs one) that
    // enforces and warns about the restricted Pod Security Standard.
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
        "pod-security.kubernetes.io/warn": "restricted",
        "pod-security.kubernetes.io/warn-version": "latest",
    }}});
    run(
        kubectl(&testbed).args(["apply", "-f", "-"]),
        Some(ns.to_string().as_bytes()),
    )?;

    let result = (|| -> anyhow::Result<()> {
        for args in [
            vec![],
            vec![
                "--set",
                "leaderElection.enabled=true",
                "--set",
                "replicas=2",
                "--set",
                "grafanaDashboard.enabled=true",
                "--set",
                "operator.tenantSelector=shard=eu",
            ],
        ] {
            let objects = helm_template(&namespace, &args)?;
            // The Prometheus Operator's kinds need its CRDs, which the test
            // bed does not have; promtool checks the rules (make chart-test).
            let applied: Vec<Value> = objects
                .iter()
                .filter(|o| {
                    !o["apiVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .starts_with("monitoring.coreos.com/")
                })
                .cloned()
                .collect();
            let list = json!({"apiVersion": "v1", "kind": "List", "items": applied});
            let (out, err) = run(
                kubectl(&testbed).args([
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "--field-manager=chart-test",
                    "--dry-run=server",
                    "-f",
                    "-",
                ]),
                Some(list.to_string().as_bytes()),
            )
            .with_context(|| format!("server-side dry run with {args:?}"))?;
            ensure!(
                !err.contains("PodSecurity"),
                "a Pod Security warning for {args:?}: {err}"
            );
            let accepted = out
                .lines()
                .filter(|l| l.contains("(server dry run)"))
                .count();
            assert_eq!(accepted, applied.len(), "{args:?}: {out}");
            let kinds: BTreeSet<_> = applied
                .iter()
                .map(|o| {
                    let (kind, _, name) = key(o);
                    if kind == "Role" { name } else { kind }
                })
                .collect();
            let with_ha = kinds.contains("PodDisruptionBudget")
                && kinds.contains("partnerplane-operator-leader-election");
            let without_ha = !kinds.contains("PodDisruptionBudget")
                && !kinds.contains("partnerplane-operator-leader-election");
            assert!(
                if args.is_empty() { without_ha } else { with_ha },
                "{kinds:?}"
            );
        }

        // Pod Security enforcement applies to pods, not Deployments: admit
        // the Deployment's pod, with its ServiceAccount in place.
        let objects = helm_template(&namespace, &[])?;
        let account = find(&objects, "ServiceAccount", "partnerplane-operator")?;
        run(
            kubectl(&testbed).args(["apply", "-f", "-"]),
            Some(account.to_string().as_bytes()),
        )?;
        let template = &find(&objects, "Deployment", "partnerplane-operator")?["spec"]["template"];
        let pod = |spec: &Value| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": "operator", "namespace": namespace, "labels": template["metadata"]["labels"]},
                   "spec": spec})
        };
        let (out, err) = run(
            kubectl(&testbed).args(["create", "--dry-run=server", "-f", "-"]),
            Some(pod(&template["spec"]).to_string().as_bytes()),
        )
        .context("the restricted namespace refused the operator's pod")?;
        ensure!(out.contains("created (server dry run)"), "{out}{err}");

        // The control: without its security contexts the same pod is refused.
        let mut bare = template["spec"].clone();
        bare.as_object_mut()
            .context("pod spec")?
            .remove("securityContext");
        bare["containers"][0]
            .as_object_mut()
            .context("container")?
            .remove("securityContext");
        let refused = run(
            kubectl(&testbed).args(["create", "--dry-run=server", "-f", "-"]),
            Some(pod(&bare).to_string().as_bytes()),
        );
        let message = format!("{:#}", refused.err().context("a bare pod was admitted")?);
        ensure!(message.contains("violates PodSecurity"), "{message}");
        Ok(())
    })();

    let _ = run(
        kubectl(&testbed).args(["delete", "namespace", &namespace, "--wait=false"]),
        None,
    );
    result
}

/// Sample names a metric family of this `# TYPE` exposes.
fn sample_names(metrics: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in metrics.lines() {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Every `partnerplane_…` name in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("partnerplane_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let preceded =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if !preceded {
            names.insert(expr[start..end].to_string());
        }
        i = end;
    }
    names
}

/// Whether the operator's source registers the family behind a sample name
/// (for families without samples yet, which the scrape does not list).
fn registered_in_source(sample: &str) -> anyhow::Result<bool> {
    let base = sample.trim_start_matches("partnerplane_");
    let mut candidates = vec![base.to_string()];
    for suffix in ["_total", "_bucket", "_sum", "_count"] {
        if let Some(stem) = base.strip_suffix(suffix) {
            candidates.push(stem.to_string());
        }
    }
    let mut stack = vec![repo_root().join("operator/src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path)?;
                if candidates
                    .iter()
                    .any(|c| text.contains(&format!("\"{c}\",")))
                {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

#[tokio::test]
async fn the_operator_runs_on_the_charts_configuration_and_exports_what_alerts_and_dashboard_read()
-> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    // The chart's configuration file naming the test bed's backends and the
    // Secret e2e/testbed.sh writes.
    let bao = testbed
        .env()
        .find(|(k, _)| k == "BAO_ADDR")
        .map(|(_, v)| v)
        .context("BAO_ADDR")?;
    let objects = helm_template(
        NAMESPACE,
        &[
            "--set",
            &format!("config.vault.address={bao}"),
            "--set",
            "config.webhooks.allow={127.0.0.1,localhost}",
            "--set",
            "config.webhooks.caSecret.name=backend-admin",
            "--set",
            "config.webhooks.caSecret.key=ca.crt",
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
        ],
    )?;
    let file = std::env::temp_dir().join(format!("{}.yaml", unique_name("chart-operator")));
    std::fs::write(
        &file,
        find(&objects, "ConfigMap", "partnerplane-operator")?["data"]["operator.yaml"]
            .as_str()
            .context("operator.yaml")?,
    )?;
    let operator = Operator::start(
        &testbed,
        &unique_name("chart"),
        &["--config", file.to_str().context("path")?],
    )
    .await
    .context("the operator did not start with the chart's configuration")?;

    // Work that makes the families have samples: a Ready tenant with a
    // refreshed pipeline, and a Stalled tenant (reconcile errors).
    let ready = unique_name("chart-ready");
    let stalled = unique_name("chart-stalled");
    let foreign = unique_name("chart-foreign");
    let exported = async {
        apply(
            &client,
            &[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": foreign}})],
        )
        .await?;
        apply(
            &client,
            &[
                operator.tenant(
                    &ready,
                    json!({"displayName": "Chart", "secrets": {"store": "Both"}}),
                ),
                operator.tenant(
                    &stalled,
                    json!({"displayName": "Chart", "namespace": foreign}),
                ),
            ],
        )
        .await?;
        wait_condition(&client, &ready, "Ready", "True", Duration::from_secs(90)).await?;
        wait_condition(
            &client,
            &stalled,
            "Stalled",
            "True",
            Duration::from_secs(90),
        )
        .await?;
        let namespace = format!("ptn-{ready}");
        let pipeline = pipelines::example(
            "examples/logistics-reseller-network/reseller-scorecard-pipeline.yaml",
            &namespace,
            &operator,
        )?;
        let name = pipeline["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        apply(&client, &[pipeline]).await?;
        wait_pipeline(
            &client,
            &namespace,
            &name,
            "Ready",
            Duration::from_secs(120),
            |p| is(p, "Ready", "True"),
        )
        .await?;
        anyhow::Ok(sample_names(&operator.metrics().await?))
    }
    .await;
    let deleted = delete_tenants(&client, &[ready, stalled]).await;
    drop(operator);
    let _ = std::fs::remove_file(&file);
    let _ = run(
        kubectl(&testbed).args(["delete", "namespace", &foreign, "--wait=false"]),
        None,
    );
    let exported = exported?;
    deleted?;

    let mut read: BTreeMap<String, String> = BTreeMap::new();
    let rule = find(&objects, "PrometheusRule", "partnerplane-operator")?;
    for r in rule["spec"]["groups"][0]["rules"]
        .as_array()
        .context("rules")?
    {
        for name in metric_names(r["expr"].as_str().unwrap_or_default()) {
            read.insert(name, format!("alert {}", r["alert"]));
        }
    }
    let dashboard: Value = serde_json::from_str(
        find(&objects, "ConfigMap", "partnerplane-operator-dashboard")?["data"]["partnerplane.json"]
            .as_str()
            .context("dashboard")?,
    )?;
    let mut exprs = vec![];
    collect_strings(&dashboard, &["expr", "definition"], &mut exprs);
    assert!(exprs.len() > 15, "the dashboard's queries: {exprs:?}");
    for expr in exprs {
        for name in metric_names(&expr) {
            read.insert(name, format!("dashboard: {expr}"));
        }
    }
    let mut missing = vec![];
    for (name, user) in &read {
        if exported.contains(name) {
            continue;
        }
        if registered_in_source(name)? {
            println!("{name}: no sample in this run; registered in operator/src");
        } else {
            missing.push((name, user));
        }
    }
    ensure!(
        missing.is_empty(),
        "series read but neither exported nor registered: {missing:#?}\nexported: {exported:?}"
    );
    Ok(())
}

fn collect_strings(value: &Value, fields: &[&str], out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if fields.contains(&k.as_str()) => out.push(s.clone()),
                    _ => collect_strings(v, fields, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, fields, out)),
        _ => {}
    }
}
