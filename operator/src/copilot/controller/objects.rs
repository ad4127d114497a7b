//! The Kubernetes objects of a copilot, as pure functions of its spec and
//! its tenant: the ConfigMap the server reads ([`ServerConfig`] as JSON),
//! the Deployment running `partnerplane copilot`, its Service,
//! NetworkPolicy, PodDisruptionBudget and, with autoscaling, its
//! HorizontalPodAutoscaler. Each carries a controller owner reference to
//! the CopilotDeployment, so the garbage collector removes them with it;
//! none carries the tenant's marks, so a tenant never prunes them.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::ResourceExt;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::network::{self, Reach};
use crate::api::CopilotDeployment;
use crate::api::copilot::SourceKind;
use crate::api::tenant::Branding as TenantBranding;
use crate::copilot::names::CopilotNames;
use crate::copilot::server_config::{
    self, Branding, CONFIG_KEY, CONFIG_PATH, Database, DatabaseCredentials, Guardrails, Model,
    ModelKey, PORT, ServerConfig, VaultKey,
};
use crate::naming;
use crate::tenant::children::build;

/// Pod-template annotation holding the SHA-256 of the ConfigMap's data: a
/// changed configuration changes the template, which rolls the pods.
pub const CONFIG_HASH: &str = "partnerplane.io/config-hash";
/// Label with the copilot's name on every object and pod.
pub const COPILOT_LABEL: &str = "partnerplane.io/copilot";
/// Selects every object the copilot controller makes.
pub const SELECTOR: &str =
    "app.kubernetes.io/managed-by=partnerplane,app.kubernetes.io/component=copilot";
/// Where the pod finds a ServiceAccount token issued for OpenBao's
/// Kubernetes auth (audience `vault`), when it reads from OpenBao.
pub const VAULT_TOKEN_DIR: &str = "/var/run/secrets/partnerplane.io/openbao";
/// Environment variable telling the server which token file logs in to
/// OpenBao (`partnerplane copilot --service-account-token`).
pub const VAULT_TOKEN_ENV: &str = "PARTNERPLANE_COPILOT_SERVICE_ACCOUNT_TOKEN";
/// Lifetime of the projected token; the kubelet renews it well before.
const VAULT_TOKEN_SECONDS: i64 = 3600;
/// The server's container (and its name in the pod).
const CONTAINER: &str = "copilot";
/// Keys of the tenant's credentials Secret handed to the server.
const DATABASE_KEYS: [&str; 5] = ["PGHOST", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD"];

/// Name of every object of the copilot `name`: `copilot-<name>`, a DNS
/// label (Services need one), shortened with a hash when too long. The
/// prefix keeps copilots apart from the tenant's own objects.
pub fn object_name(name: &str) -> String {
    let full = format!("copilot-{}", name.replace('.', "-"));
    if full.len() <= 63 && !name.contains('.') {
        return full;
    }
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..5]);
    let head: String = full.chars().take(63 - 11).collect();
    format!("{}-{hash}", head.trim_end_matches('-'))
}

/// The in-cluster URL of the copilot's Service.
pub fn endpoint(name: &str, namespace: &str) -> String {
    format!("http://{}.{namespace}.svc:{PORT}", object_name(name))
}

/// Labels selecting the copilot's pods.
pub fn selector_labels(copilot: &CopilotDeployment) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".into(),
            "partnerplane-copilot".into(),
        ),
        (
            "app.kubernetes.io/instance".into(),
            naming::label_value(&copilot.name_any()),
        ),
    ])
}

/// Labels of every object of the copilot.
pub fn labels(copilot: &CopilotDeployment) -> BTreeMap<String, String> {
    let mut labels = selector_labels(copilot);
    labels.extend([
        ("app.kubernetes.io/component".into(), "copilot".into()),
        ("app.kubernetes.io/managed-by".into(), "partnerplane".into()),
        ("app.kubernetes.io/part-of".into(), "partnerplane".into()),
        (
            COPILOT_LABEL.into(),
            naming::label_value(&copilot.name_any()),
        ),
    ]);
    labels
}

/// A controller owner reference to the copilot.
pub fn owner_reference(copilot: &CopilotDeployment) -> Value {
    json!({
        "apiVersion": "partnerplane.io/v1alpha1",
        "kind": "CopilotDeployment",
        "name": copilot.name_any(),
        "uid": copilot.uid().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

fn metadata(copilot: &CopilotDeployment) -> Value {
    json!({
        "name": object_name(&copilot.name_any()),
        "namespace": copilot.namespace().unwrap_or_default(),
        "labels": labels(copilot),
        "ownerReferences": [owner_reference(copilot)],
    })
}

/// What the operator knows besides the copilot and its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Image of `partnerplane copilot` when the spec names none.
    pub image: String,
    pub vault_address: String,
    pub vault_auth_mount: String,
}

/// The tenant as far as a copilot needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantView {
    pub schema: String,
    pub branding: Option<TenantBranding>,
    pub allow_from_namespaces: Vec<String>,
    /// The tenant's credentials Secret in the namespace, when it keeps one.
    pub credentials_secret: Option<String>,
    /// The tenant's OpenBao KV mount, path prefix and auth role, when it uses OpenBao.
    pub vault: Option<(String, String, String)>,
}

/// Where the model key lives, for the server and for the pod's environment.
pub fn model_key(
    copilot: &CopilotDeployment,
    tenant: &TenantView,
    platform: &Platform,
) -> Option<ModelKey> {
    let key = &copilot.spec.model.api_key;
    match (&key.secret, &key.vault, &tenant.vault) {
        (Some(_), _, _) => Some(ModelKey::Env),
        (None, Some(v), Some((mount, prefix, role))) => Some(ModelKey::Vault(VaultKey {
            address: platform.vault_address.clone(),
            auth_mount: platform.vault_auth_mount.clone(),
            auth_role: role.clone(),
            kv_mount: mount.clone(),
            path: format!("{prefix}/{}", v.path),
            field: v.key.clone(),
        })),
        _ => None,
    }
}

/// Where the database credentials are: the tenant's Secret when it keeps
/// one (handed over by `secretKeyRef`), else its OpenBao path.
pub fn database_credentials(
    tenant: &TenantView,
    platform: &Platform,
) -> Option<DatabaseCredentials> {
    if tenant.credentials_secret.is_some() {
        return Some(DatabaseCredentials::Env);
    }
    let (mount, prefix, role) = tenant.vault.as_ref()?;
    Some(DatabaseCredentials::Vault(VaultKey {
        address: platform.vault_address.clone(),
        auth_mount: platform.vault_auth_mount.clone(),
        auth_role: role.clone(),
        kv_mount: mount.clone(),
        path: format!("{prefix}/credentials"),
        field: "PGPASSWORD".into(),
    }))
}

/// The server's configuration (pure).
pub fn server_config(
    copilot: &CopilotDeployment,
    names: &CopilotNames,
    tenant: &TenantView,
    key: ModelKey,
    credentials: DatabaseCredentials,
    metric_result_tables: &[String],
) -> ServerConfig {
    let spec = &copilot.spec;
    let branding = tenant.branding.clone().unwrap_or_default();
    let reads_metrics = spec
        .knowledge
        .approved_sources
        .iter()
        .any(|s| s.kind == SourceKind::MetricPipeline);
    let mut tables = if reads_metrics {
        metric_result_tables.to_vec()
    } else {
        vec![]
    };
    tables.sort();
    tables.dedup();
    ServerConfig {
        copilot: format!(
            "{}/{}",
            copilot.namespace().unwrap_or_default(),
            copilot.name_any()
        ),
        role: spec.role,
        branding: Branding {
            product_name: branding.product_name,
            primary_color: branding.primary_color,
            logo_url: branding.logo_url,
            domain: branding.domain,
        },
        model: Model {
            endpoint: spec.model.endpoint.clone(),
            name: spec.model.name.clone(),
            key,
        },
        database: Database {
            schema: tenant.schema.clone(),
            knowledge_table: names.knowledge.clone(),
            retrieve_function: names.retrieve.clone(),
            audit_table: names.audit.clone(),
            approvals_table: names.approvals.clone(),
            dimensions: spec.knowledge.index.dimensions,
            distance: spec.knowledge.index.distance,
            credentials,
        },
        approved_sources: spec.knowledge.approved_sources.clone(),
        metric_result_tables: tables,
        guardrails: Guardrails {
            human_approval_required: spec.guardrails.human_approval_required.clone(),
            min_confidence: spec.guardrails.min_confidence,
            audit_enabled: spec.guardrails.audit.enabled,
        },
    }
}

/// The ConfigMap carrying `config` under [`CONFIG_KEY`].
pub fn config_map(copilot: &CopilotDeployment, config: &ServerConfig) -> ConfigMap {
    let text = serde_json::to_string_pretty(config).expect("the configuration serializes");
    build(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(copilot),
        "data": {CONFIG_KEY: text},
    }))
}

/// SHA-256 (hex) of a ConfigMap's data, keys in order.
pub fn config_hash(config_map: &ConfigMap) -> String {
    let mut digest = Sha256::new();
    for (key, value) in config_map.data.iter().flatten() {
        digest.update(key.as_bytes());
        digest.update([0]);
        digest.update(value.as_bytes());
        digest.update([0]);
    }
    hex::encode(digest.finalize())
}

/// The replicas the copilot asks for at least: autoscaling's minimum, or `replicas`.
pub fn min_replicas(copilot: &CopilotDeployment) -> i32 {
    copilot
        .spec
        .autoscaling
        .as_ref()
        .map_or(copilot.spec.replicas, |a| a.min_replicas)
}

fn secret_env(name: &str, secret: &str, key: &str, optional: bool) -> Value {
    let mut reference = json!({"name": secret, "key": key});
    if optional {
        reference["optional"] = json!(true);
    }
    json!({"name": name, "valueFrom": {"secretKeyRef": reference}})
}

/// The Deployment running the server. `hash` is [`config_hash`] of the
/// ConfigMap; `replicas` is left to the autoscaler when it is set.
pub fn deployment(
    copilot: &CopilotDeployment,
    config: &ServerConfig,
    tenant: &TenantView,
    platform: &Platform,
    hash: &str,
) -> Deployment {
    let spec = &copilot.spec;
    let name = object_name(&copilot.name_any());
    let image = spec.image.clone().unwrap_or_else(|| platform.image.clone());
    let mut env = vec![];
    let mut reads_vault = false;
    match (&config.database.credentials, &tenant.credentials_secret) {
        (DatabaseCredentials::Env, Some(secret)) => {
            for key in DATABASE_KEYS {
                env.push(secret_env(key, secret, key, false));
            }
            env.push(secret_env("PGSSLMODE", secret, "PGSSLMODE", true));
        }
        _ => reads_vault = true,
    }
    match (&config.model.key, &spec.model.api_key.secret) {
        (ModelKey::Env, Some(secret)) => env.push(secret_env(
            server_config::MODEL_KEY_ENV,
            &secret.name,
            &secret.key,
            false,
        )),
        _ => reads_vault = true,
    }
    let config_dir = Path::new(CONFIG_PATH)
        .parent()
        .and_then(Path::to_str)
        .unwrap_or("/etc/partnerplane");
    let config_file = Path::new(CONFIG_PATH)
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or(CONFIG_KEY);
    let mut mounts = vec![
        json!({"name": "config", "mountPath": config_dir, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    let mut volumes = vec![
        json!({"name": "config", "configMap": {"name": name, "items": [{"key": CONFIG_KEY, "path": config_file}]}}),
        json!({"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}),
    ];
    if reads_vault {
        env.push(json!({"name": VAULT_TOKEN_ENV, "value": format!("{VAULT_TOKEN_DIR}/token")}));
        mounts
            .push(json!({"name": "openbao-token", "mountPath": VAULT_TOKEN_DIR, "readOnly": true}));
        volumes.push(
            json!({"name": "openbao-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": crate::backends::vault::AUDIENCE,
                "expirationSeconds": VAULT_TOKEN_SECONDS,
                "path": "token",
            }}]}}),
        );
    }
    let probe = |path: &str| {
        json!({
            "httpGet": {"path": path, "port": i32::from(PORT), "scheme": "HTTP"},
            "periodSeconds": 10,
            "timeoutSeconds": 2,
            "failureThreshold": 3,
        })
    };
    let mut deployment_spec = json!({
        "selector": {"matchLabels": selector_labels(copilot)},
        "template": {
            "metadata": {
                "labels": labels(copilot),
                "annotations": {CONFIG_HASH: hash},
            },
            "spec": {
                "serviceAccountName": naming::WORKLOAD_SERVICE_ACCOUNT,
                // The server needs no Kubernetes API token; OpenBao's is projected.
                "automountServiceAccountToken": false,
                "enableServiceLinks": false,
                "securityContext": {
                    "runAsNonRoot": true,
                    "runAsUser": 65532,
                    "runAsGroup": 65532,
                    "fsGroup": 65532,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [{
                    "name": CONTAINER,
                    "image": image,
                    "args": ["copilot"],
                    "ports": [{"name": "http", "containerPort": i32::from(PORT), "protocol": "TCP"}],
                    "env": env,
                    "readinessProbe": probe("/readyz"),
                    "livenessProbe": probe("/healthz"),
                    "resources": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"memory": "512Mi"},
                    },
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "runAsNonRoot": true,
                        "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "volumeMounts": mounts,
                }],
                "volumes": volumes,
            },
        },
    });
    if spec.autoscaling.is_none() {
        deployment_spec["replicas"] = json!(spec.replicas);
    }
    build(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(copilot),
        "spec": deployment_spec,
    }))
}

/// The copilot's Service, on the server's port.
pub fn service(copilot: &CopilotDeployment) -> Service {
    build(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(copilot),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(copilot),
            "ports": [{"name": "http", "port": i32::from(PORT), "targetPort": "http", "protocol": "TCP"}],
        }
    }))
}

/// The copilot pods' NetworkPolicy (see [`network`]).
pub fn network_policy(copilot: &CopilotDeployment, reach: &Reach) -> NetworkPolicy {
    build(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata(copilot),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(copilot)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": network::ingress(reach),
            "egress": network::egress(reach),
        }
    }))
}

/// Keeps one pod serving through voluntary disruptions when the copilot
/// runs at least two; a single replica may always be evicted (a budget
/// that never allows it would block every node drain).
pub fn pod_disruption_budget(copilot: &CopilotDeployment) -> PodDisruptionBudget {
    let mut spec = json!({"selector": {"matchLabels": selector_labels(copilot)}});
    if min_replicas(copilot) >= 2 {
        spec["minAvailable"] = json!(1);
    } else {
        spec["maxUnavailable"] = json!(1);
    }
    build(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(copilot),
        "spec": spec,
    }))
}

/// The autoscaler, when the spec asks for one.
pub fn autoscaler(copilot: &CopilotDeployment) -> Option<HorizontalPodAutoscaler> {
    let autoscaling = copilot.spec.autoscaling.as_ref()?;
    Some(build(json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(copilot),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": object_name(&copilot.name_any())},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": autoscaling.target_cpu_utilization,
            }}}],
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::copilot::{CopilotDeploymentSpec, Distance, GuardedAction};

    fn copilot(extra: &str) -> CopilotDeployment {
        let spec: CopilotDeploymentSpec = serde_yaml::from_str(&format!(
            "role: PartnerOperations\n\
             model: {{endpoint: 'https://llm.example/v1', name: gpt, apiKey: {{vault: {{path: models/openai, key: api_key}}}}}}\n\
             knowledge:\n  index: {{dimensions: 1536}}\n  \
             approvedSources: [{{name: service_metrics, kind: MetricPipeline}}, {{name: reports, kind: ServiceRecords}}]\n{extra}"
        ))
        .unwrap();
        let mut c = CopilotDeployment::new("partner-ops", spec);
        c.metadata.namespace = Some("ptn-acme".into());
        c.metadata.uid = Some("uid-c".into());
        c
    }

    fn platform() -> Platform {
        Platform {
            image: "ghcr.io/partnerplane/operator:0.1.0".into(),
            vault_address: "http://127.0.0.1:8200".into(),
            vault_auth_mount: "kubernetes".into(),
        }
    }

    fn tenant(secret: bool) -> TenantView {
        TenantView {
            schema: "tenant_acme_1".into(),
            branding: Some(TenantBranding {
                product_name: Some("Acme Pulse".into()),
                primary_color: Some("#0B3D91".into()),
                ..Default::default()
            }),
            allow_from_namespaces: vec![],
            credentials_secret: secret.then(|| naming::CREDENTIALS_SECRET.to_string()),
            vault: Some(("secret".into(), "tenants/acme".into(), "tenant-acme".into())),
        }
    }

    fn config(c: &CopilotDeployment, t: &TenantView) -> ServerConfig {
        server_config(
            c,
            &CopilotNames::new("ptn-acme", "partner-ops"),
            t,
            model_key(c, t, &platform()).unwrap(),
            database_credentials(t, &platform()).unwrap(),
            &[
                "\"tenant_acme_1\".\"_pp_b\"".into(),
                "\"tenant_acme_1\".\"_pp_a\"".into(),
            ],
        )
    }

    #[test]
    fn the_configuration_carries_branding_sources_guardrails_and_result_tables() {
        let c = copilot("guardrails: {minConfidence: 0.8, humanApprovalRequired: [Credits]}");
        let cfg = config(&c, &tenant(true));
        assert_eq!(cfg.copilot, "ptn-acme/partner-ops");
        assert_eq!(cfg.branding.product_name.as_deref(), Some("Acme Pulse"));
        assert_eq!(cfg.approved_sources.len(), 2);
        assert_eq!(cfg.guardrails.min_confidence, 0.8);
        assert_eq!(
            cfg.guardrails.human_approval_required,
            vec![GuardedAction::Credits]
        );
        assert_eq!(
            cfg.metric_result_tables,
            ["\"tenant_acme_1\".\"_pp_a\"", "\"tenant_acme_1\".\"_pp_b\""]
        );
        assert_eq!(cfg.database.schema, "tenant_acme_1");
        assert_eq!(cfg.database.dimensions, 1536);
        assert_eq!(cfg.database.distance, Distance::Cosine);
        assert_eq!(cfg.database.credentials, DatabaseCredentials::Env);
        let ModelKey::Vault(key) = &cfg.model.key else {
            panic!("{:?}", cfg.model.key)
        };
        assert_eq!(key.path, "tenants/acme/models/openai");
        assert_eq!(
            (key.field.as_str(), key.auth_role.as_str()),
            ("api_key", "tenant-acme")
        );
        // The ConfigMap holds it as JSON the server reads back.
        let cm = config_map(&c, &cfg);
        let text = &cm.data.as_ref().unwrap()[CONFIG_KEY];
        let back: ServerConfig = serde_json::from_str(text).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn without_a_metric_pipeline_source_no_result_table_is_handed_over() {
        let mut c = copilot("");
        c.spec.knowledge.approved_sources.remove(0);
        assert!(config(&c, &tenant(true)).metric_result_tables.is_empty());
    }

    #[test]
    fn a_tenant_keeping_credentials_only_in_openbao_hands_over_its_path() {
        let c = copilot("");
        let DatabaseCredentials::Vault(key) = config(&c, &tenant(false)).database.credentials
        else {
            panic!()
        };
        assert_eq!(key.path, "tenants/acme/credentials");
        let mut no_store = tenant(false);
        no_store.vault = None;
        assert_eq!(database_credentials(&no_store, &platform()), None);
        assert_eq!(model_key(&c, &no_store, &platform()), None);
    }

    #[test]
    fn a_guardrail_change_changes_the_config_hash_and_so_the_pod_template() {
        let c = copilot("");
        let t = tenant(true);
        let hash = config_hash(&config_map(&c, &config(&c, &t)));
        let stricter = copilot("guardrails: {minConfidence: 0.9}");
        let changed = config_hash(&config_map(&stricter, &config(&stricter, &t)));
        assert_ne!(hash, changed);
        assert_eq!(hash.len(), 64);
        let d = deployment(&c, &config(&c, &t), &t, &platform(), &hash);
        let template = d.spec.unwrap().template;
        assert_eq!(
            template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH],
            hash
        );
    }

    fn pod(d: &Deployment) -> Value {
        serde_json::to_value(&d.spec.as_ref().unwrap().template.spec).unwrap()
    }

    #[test]
    fn the_pod_is_restricted_runs_the_server_and_probes_it() {
        let c = copilot("");
        let t = tenant(true);
        let cfg = config(&c, &t);
        let d = deployment(&c, &cfg, &t, &platform(), "h");
        let p = pod(&d);
        assert_eq!(p["serviceAccountName"], naming::WORKLOAD_SERVICE_ACCOUNT);
        assert_eq!(p["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            p["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let container = &p["containers"][0];
        assert_eq!(container["image"], "ghcr.io/partnerplane/operator:0.1.0");
        assert_eq!(container["args"], json!(["copilot"]));
        let sc = &container["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["port"], 8080);
        assert_eq!(container["resources"]["requests"]["cpu"], "100m");
        assert_eq!(
            container["volumeMounts"][0]["mountPath"], "/etc/partnerplane",
            "the ConfigMap lands at CONFIG_PATH"
        );
        assert_eq!(
            p["volumes"][0]["configMap"]["items"][0]["path"],
            "copilot.json"
        );
        // The database password comes from the tenant's Secret, never a value.
        let env = container["env"].as_array().unwrap();
        let password = env.iter().find(|e| e["name"] == "PGPASSWORD").unwrap();
        assert_eq!(
            password["valueFrom"]["secretKeyRef"],
            json!({"name": naming::CREDENTIALS_SECRET, "key": "PGPASSWORD"})
        );
        assert!(
            env.iter()
                .all(|e| e.get("value").is_none() || e["name"] == VAULT_TOKEN_ENV)
        );
        // The model key is in OpenBao: a token for it is projected.
        let token = p["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "openbao-token")
            .unwrap();
        assert_eq!(
            token["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "vault"
        );
        assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
        let image = copilot("image: registry.example/copilot:2");
        let d = deployment(&image, &cfg, &t, &platform(), "h");
        assert_eq!(
            pod(&d)["containers"][0]["image"],
            "registry.example/copilot:2"
        );
    }

    #[test]
    fn a_model_key_in_a_secret_is_a_secret_key_reference_and_no_token_is_projected() {
        let mut c = copilot("");
        c.spec.model.api_key = serde_yaml::from_str("secret: {name: model, key: api-key}").unwrap();
        let t = tenant(true);
        let cfg = config(&c, &t);
        assert_eq!(cfg.model.key, ModelKey::Env);
        let p = pod(&deployment(&c, &cfg, &t, &platform(), "h"));
        let env = p["containers"][0]["env"].as_array().unwrap();
        let key = env
            .iter()
            .find(|e| e["name"] == server_config::MODEL_KEY_ENV)
            .unwrap();
        assert_eq!(
            key["valueFrom"]["secretKeyRef"],
            json!({"name": "model", "key": "api-key"})
        );
        assert!(
            !p["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["name"] == "openbao-token")
        );
    }

    #[test]
    fn autoscaling_leaves_replicas_to_the_autoscaler_and_sets_the_budget() {
        let c = copilot("autoscaling: {minReplicas: 2, maxReplicas: 6}");
        let t = tenant(true);
        let d = deployment(&c, &config(&c, &t), &t, &platform(), "h");
        assert_eq!(d.spec.unwrap().replicas, None);
        let hpa = autoscaler(&c).unwrap().spec.unwrap();
        assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(2), 6));
        assert_eq!(hpa.scale_target_ref.name, "copilot-partner-ops");
        let pdb = serde_json::to_value(pod_disruption_budget(&c).spec.unwrap()).unwrap();
        assert_eq!(pdb["minAvailable"], 1);
        let single = copilot("");
        assert!(autoscaler(&single).is_none());
        let pdb = serde_json::to_value(pod_disruption_budget(&single).spec.unwrap()).unwrap();
        assert_eq!(pdb["maxUnavailable"], 1);
    }

    #[test]
    fn objects_are_owned_by_the_copilot_and_never_marked_as_the_tenants() {
        let c = copilot("");
        let svc = service(&c);
        let owner = &svc.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("CopilotDeployment", "uid-c")
        );
        assert_eq!(owner.controller, Some(true));
        assert!(crate::tenant::children::tenant_of(&svc).is_none());
        assert_eq!(svc.labels()["app.kubernetes.io/component"], "copilot");
        assert_eq!(
            endpoint("partner-ops", "ptn-acme"),
            "http://copilot-partner-ops.ptn-acme.svc:8080"
        );
    }

    #[test]
    fn object_names_are_dns_labels() {
        assert_eq!(object_name("a"), "copilot-a");
        for name in [
            "x".repeat(200),
            "a.b.c".to_string(),
            format!("{}.y", "z".repeat(60)),
        ] {
            let n = object_name(&name);
            assert!(
                n.len() <= 63 && !n.contains('.') && !n.ends_with('-'),
                "{n}"
            );
        }
        assert_ne!(
            object_name(&"x".repeat(100)),
            object_name(&format!("{}y", "x".repeat(99)))
        );
    }
}
