//! The chart's RBAC as the operator lives with it: run with a token of the
//! chart's ServiceAccount and only what the chart grants, the operator
//! brings an example tenant, its pipeline and its copilot to Ready (the RBAC
//! is enough), and the same identity is refused what lies outside: Secrets
//! of namespaces that are no tenant's (403 from RBAC), and taking over or
//! deleting such a namespace (403 from the chart's admission policy). A
//! Retain tenant's deletion takes the operator's Secret access to its kept
//! namespace with it.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use partnerplane::api::{CopilotDeployment, PartnerTenant};
use partnerplane::tenant::secret_access::BINDING;
use partnerplane_e2e::chart::{self, kubectl, run};
use partnerplane_e2e::operator::SHARD_LABEL;
use partnerplane_e2e::pipelines::{self, is, wait_pipeline};
use partnerplane_e2e::tenants::delete_tenants;
use partnerplane_e2e::{
    Operator, Testbed, load_documents, repo_root, unique_name, wait_condition, wait_until,
};
use serde_json::{Value, json};

const NAMESPACE: &str = "partnerplane-system";
const DEADLINE: Duration = Duration::from_secs(120);

/// The chart's identity and RBAC objects (nothing that runs), applied.
fn install_rbac(testbed: &Testbed, release: &str) -> anyhow::Result<Vec<Value>> {
    let objects: Vec<Value> = chart::helm_template(
        release,
        NAMESPACE,
        &[
            "--set",
            "leaderElection.enabled=true",
            "--set",
            "replicas=2",
        ],
    )?
    .into_iter()
    .filter(|o| {
        matches!(
            o["kind"].as_str(),
            Some(
                "ServiceAccount"
                    | "ClusterRole"
                    | "ClusterRoleBinding"
                    | "Role"
                    | "RoleBinding"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
            )
        )
    })
    .collect();
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    run(
        kubectl(testbed).args(["apply", "--server-side", "-f", "-"]),
        Some(list.to_string().as_bytes()),
    )?;
    Ok(objects)
}

fn uninstall(testbed: &Testbed, objects: &[Value]) -> anyhow::Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    run(
        kubectl(testbed).args(["delete", "--ignore-not-found", "-f", "-"]),
        Some(list.to_string().as_bytes()),
    )?;
    Ok(())
}

/// A kubeconfig that authenticates as the ServiceAccount `account` only.
fn service_account_kubeconfig(
    testbed: &Testbed,
    account: &str,
    path: &std::path::Path,
) -> anyhow::Result<String> {
    let (token, _) = run(
        kubectl(testbed).args([
            "create",
            "token",
            account,
            "--namespace",
            NAMESPACE,
            "--duration",
            "1h",
        ]),
        None,
    )?;
    let token = token.trim().to_string();
    let ca = std::env::var("PARTNERPLANE_TESTBED_KUBE_CA")
        .context("PARTNERPLANE_TESTBED_KUBE_CA (source e2e/.testbed/env)")?;
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {"server": testbed.api_server()?, "certificate-authority": ca}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "testbed", "user": account}}],
        "current-context": "operator",
    });
    std::fs::write(path, serde_yaml::to_string(&config)?)?;
    Ok(token)
}

/// The example of `kind` in the logistics example, moved to `namespace` and `shard`.
fn example(file: &str, namespace: Option<&str>, shard: &str) -> anyhow::Result<Value> {
    let mut doc = load_documents(
        &repo_root()
            .join("examples/logistics-reseller-network")
            .join(file),
    )?
    .remove(0);
    if let Some(namespace) = namespace {
        doc["metadata"]["namespace"] = json!(namespace);
    }
    doc["metadata"]["labels"] = json!({ SHARD_LABEL: shard });
    Ok(doc)
}

fn status_code(result: Result<impl Sized, kube::Error>) -> Option<u16> {
    match result {
        Err(kube::Error::Api(e)) => Some(e.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_charts_rbac_is_enough_for_every_kind_and_nothing_more() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let admin = testbed.kube_admin().await?;
    let release = unique_name("rbac");
    let fullname = format!("{release}-operator");
    let objects = install_rbac(&testbed, &release)?;
    let dir = repo_root().join("e2e/.testbed").join(&release);
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig.yaml");
    let token = service_account_kubeconfig(&testbed, &fullname, &kubeconfig)?;
    let config = dir.join("operator.yaml");
    let base = std::fs::read_to_string(std::env::var("PARTNERPLANE_CONFIG")?)?;
    std::fs::write(
        &config,
        format!("{base}\ntenantSecretsClusterRole: {fullname}-tenant-secrets\n"),
    )?;
    let foreign = unique_name("not-a-tenant");
    let tenant = unique_name("rbac-t");
    let doomed = unique_name("rbac-d");
    let refused = unique_name("rbac-r");
    let namespace = format!("ptn-{tenant}");

    let result = async {
        let operator = Operator::start_with_env(
            &testbed,
            &release,
            &[
                "--config",
                config.to_str().context("path")?,
                "--leader-elect",
                "--leader-election-namespace",
                NAMESPACE,
                "--leader-election-id",
                &release,
            ],
            &[
                ("KUBECONFIG", kubeconfig.to_str().context("path")?),
                ("POD_NAMESPACE", NAMESPACE),
            ],
        )
        .await?;

        // The examples, with nothing but the chart's RBAC behind them.
        let mut doc = example("tenant.yaml", None, &operator.shard)?;
        doc["metadata"]["name"] = json!(tenant);
        doc["spec"]
            .as_object_mut()
            .context("spec")?
            .remove("namespace");
        pipelines::apply(&admin, &[doc]).await?;
        wait_condition(&admin, &tenant, "Ready", "True", DEADLINE).await?;
        let model_key = json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "channel-manager-model", "namespace": namespace},
            "stringData": {"api-key": "sk-test-not-a-real-key"}});
        let pipeline = example("reseller-scorecard-pipeline.yaml", Some(&namespace), &operator.shard)?;
        let pipeline_name = pipeline["metadata"]["name"].as_str().context("name")?.to_string();
        let copilot = example("channel-manager-copilot.yaml", Some(&namespace), &operator.shard)?;
        let copilot_name = copilot["metadata"]["name"].as_str().context("name")?.to_string();
        pipelines::apply(&admin, &[model_key, pipeline, copilot]).await?;
        wait_pipeline(&admin, &namespace, &pipeline_name, "Ready", DEADLINE, |p| {
            is(p, "Ready", "True")
        })
        .await?;
        let copilots: Api<CopilotDeployment> = Api::namespaced(admin.clone(), &namespace);
        wait_until("the example copilot Ready", DEADLINE, || async {
            let c = copilots.get(&copilot_name).await?;
            let ready = c.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            Ok(ready.then_some(()))
        })
        .await?;

        // What the operator's identity may do, asked as that identity.
        let confined = testbed.kube_with_token(&token).await?;
        assert!(
            Api::<Secret>::namespaced(confined.clone(), &namespace)
                .get_opt("channel-manager-model")
                .await?
                .is_some(),
            "the operator reads Secrets in the tenant's namespace"
        );
        pipelines::apply(
            &admin,
            &[
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": foreign}}),
                json!({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "payroll", "namespace": foreign},
                       "stringData": {"password": "not-the-operators"}}),
            ],
        )
        .await?;
        let foreign_secrets = Api::<Secret>::namespaced(confined.clone(), &foreign);
        assert_eq!(status_code(foreign_secrets.get("payroll").await), Some(403));
        assert_eq!(
            status_code(
                Api::<Secret>::all(confined.clone())
                    .list(&ListParams::default())
                    .await
            ),
            Some(403),
            "no Secret list or watch cluster-wide"
        );
        // Nor can it bind itself Secret access there.
        let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "grab", "namespace": foreign},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("{fullname}-tenant-secrets")},
            "subjects": [{"kind": "ServiceAccount", "name": fullname, "namespace": NAMESPACE}]});
        let grabbed = Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(confined.clone(), &foreign)
            .create(&Default::default(), &serde_json::from_value(binding)?)
            .await;
        assert_eq!(status_code(grabbed), Some(403), "binding Secret access outside tenants");
        let namespaces = Api::<Namespace>::all(confined.clone());
        let taken = namespaces
            .patch(
                &foreign,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "partnerplane"}}})),
            )
            .await;
        assert_eq!(status_code(taken), Some(403), "taking over a namespace");
        let deleted = namespaces.delete(&foreign, &DeleteParams::default()).await;
        match deleted {
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 403, "{e:?}");
                assert!(e.message.contains("may not delete"), "{}", e.message);
            }
            other => anyhow::bail!("deleting a namespace no tenant owns: {other:?}"),
        }
        assert!(
            Api::<Namespace>::all(admin.clone())
                .get_opt(&foreign)
                .await?
                .is_some_and(|n| n.metadata.deletion_timestamp.is_none())
        );

        // A tenant refused someone else's namespace goes without a trace
        // there, though the operator never had access to it.
        pipelines::apply(
            &admin,
            &[operator.tenant(&refused, json!({"displayName": "Refused", "namespace": foreign}))],
        )
        .await?;
        wait_condition(&admin, &refused, "Stalled", "True", DEADLINE).await?;
        Api::<PartnerTenant>::all(admin.clone())
            .delete(&refused, &DeleteParams::default())
            .await?;
        partnerplane_e2e::wait_deleted(&admin, &refused, DEADLINE).await?;

        // A Delete tenant's namespace is one the policy lets it delete.
        pipelines::apply(
            &admin,
            &[operator.tenant(&doomed, json!({"displayName": "Doomed", "deletionPolicy": "Delete"}))],
        )
        .await?;
        wait_condition(&admin, &doomed, "Ready", "True", DEADLINE).await?;
        Api::<PartnerTenant>::all(admin.clone())
            .delete(&doomed, &DeleteParams::default())
            .await?;
        partnerplane_e2e::wait_deleted(&admin, &doomed, DEADLINE).await?;
        let doomed_ns = Api::<Namespace>::all(admin.clone())
            .get_opt(&format!("ptn-{doomed}"))
            .await?;
        assert!(
            doomed_ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()),
            "the Delete tenant's namespace is being deleted"
        );

        // A Retain tenant goes: its namespace stays, the operator's access to it does not.
        Api::<PartnerTenant>::all(admin.clone())
            .delete(&tenant, &DeleteParams::default())
            .await?;
        partnerplane_e2e::wait_deleted(&admin, &tenant, DEADLINE).await?;
        let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
            Api::namespaced(admin.clone(), &namespace);
        assert!(bindings.get_opt(BINDING).await?.is_none());
        wait_until("the revoked binding to take effect", DEADLINE, || async {
            let read = Api::<Secret>::namespaced(confined.clone(), &namespace)
                .get("channel-manager-model")
                .await;
            Ok((status_code(read) == Some(403)).then_some(()))
        })
        .await?;
        drop(operator);
        anyhow::Ok(())
    }
    .await;
    let _ = delete_tenants(&admin, &[tenant, doomed, refused]).await;
    for ns in [&foreign, &namespace] {
        let _ = Api::<Namespace>::all(admin.clone())
            .delete(ns, &DeleteParams::background())
            .await;
    }
    uninstall(&testbed, &objects)?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}
