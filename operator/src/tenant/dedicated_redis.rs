//! The tenant's own Redis (Dedicated mode): a one-replica StatefulSet, its
//! headless Service, and a Secret holding the password and the whole
//! `redis.conf`.
//!
//! The password never appears on a command line or in a probe's arguments
//! (anyone who can list pods or read `/proc` would see it there): the server
//! reads it from the mounted `redis.conf`, and the readiness probe's
//! `redis-cli` from the `REDISCLI_AUTH` variable.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::children::{build, labels, metadata};
use crate::api::PartnerTenant;
use crate::naming::{self, TenantNames};
pub use crate::quantity::{QuantityError, quantity_bytes};

/// Name of the tenant's own Redis (StatefulSet and Service).
pub const DEDICATED_REDIS: &str = "tenant-redis";
/// Secret with the password (`password`) and the configuration (`redis.conf`).
pub const DEDICATED_REDIS_SECRET: &str = "tenant-redis-password";
/// Key of the password in [`DEDICATED_REDIS_SECRET`].
pub const PASSWORD_KEY: &str = "password";
/// Key of the server configuration in [`DEDICATED_REDIS_SECRET`].
pub const CONFIG_KEY: &str = "redis.conf";

const IMAGE: &str = "redis:7.2-alpine";
/// The `redis` user of the official image.
const REDIS_UID: i64 = 999;
const PORT: u16 = 6379;
const CONFIG_DIR: &str = "/etc/redis";
const DATA_DIR: &str = "/data";
const DATA_VOLUME: &str = "data";
const DEFAULT_MEMORY: &str = "256Mi";
/// Share of the container's memory limit Redis may fill with data; the rest
/// covers its own overhead (buffers, fork for persistence) before the kernel
/// kills the container.
const MAXMEMORY_PERCENT: u128 = 90;

/// The container's memory limit: the spec's `redis.memory`.
fn memory_limit(tenant: &PartnerTenant) -> Quantity {
    tenant
        .spec
        .redis
        .memory
        .clone()
        .unwrap_or_else(|| Quantity(DEFAULT_MEMORY.into()))
}

fn persistent(tenant: &PartnerTenant) -> bool {
    tenant
        .spec
        .redis
        .persistence
        .as_ref()
        .is_some_and(|p| p.enabled)
}

/// Redis's `maxmemory` for a container memory limit: 90% of it, in bytes.
pub fn maxmemory_bytes(limit: &Quantity) -> Result<u64, QuantityError> {
    let bytes = quantity_bytes(&limit.0)?;
    Ok(u64::try_from(u128::from(bytes) * MAXMEMORY_PERCENT / 100).expect("below the limit"))
}

/// The server configuration of the tenant's Redis.
pub fn redis_conf(tenant: &PartnerTenant, password: &str) -> String {
    // The limit was validated as a quantity by the CRD; a value this parser
    // still refuses gets the default, and the StatefulSet's own limit is
    // then refused by the API server, which the tenant's status shows.
    let maxmemory = maxmemory_bytes(&memory_limit(tenant)).unwrap_or_else(|_| {
        maxmemory_bytes(&Quantity(DEFAULT_MEMORY.into())).expect("the default parses")
    });
    let persistence = if persistent(tenant) {
        "appendonly yes\n"
    } else {
        "appendonly no\nsave \"\"\n"
    };
    format!(
        "# Written by partnerplane from the PartnerTenant spec; edits are overwritten.\n\
         port {PORT}\n\
         bind * -::*\n\
         requirepass {}\n\
         maxmemory {maxmemory}\n\
         maxmemory-policy allkeys-lru\n\
         dir {DATA_DIR}\n\
         {persistence}",
        quote(password)
    )
}

/// A double-quoted `redis.conf` argument.
fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// Data of [`DEDICATED_REDIS_SECRET`]: the password (for clients and the
/// readiness probe) and the `redis.conf` the server reads.
/// Pod template annotation: a hash of the Secret the server reads at start.
pub const CONFIG_HASH: &str = "partnerplane.io/config-hash";

pub fn password_secret_data(tenant: &PartnerTenant, password: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (PASSWORD_KEY.to_string(), password.to_string()),
        (CONFIG_KEY.to_string(), redis_conf(tenant, password)),
    ])
}

fn selector(tenant: &PartnerTenant) -> Value {
    json!({
        "app.kubernetes.io/name": DEDICATED_REDIS,
        naming::TENANT_LABEL: naming::label_value(&tenant.name_any()),
    })
}

/// Headless Service of the tenant's own Redis.
pub fn dedicated_redis_service(tenant: &PartnerTenant, names: &TenantNames) -> Service {
    build(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(tenant, names, DEDICATED_REDIS),
        "spec": {
            "clusterIP": "None",
            "selector": selector(tenant),
            "ports": [{"name": "redis", "port": PORT, "targetPort": PORT}],
        }
    }))
}

/// The tenant's own Redis: one replica that reads its configuration from the
/// Secret, under a restricted security context with a read-only root
/// filesystem; `/data` is a PersistentVolumeClaim with persistence, else an
/// emptyDir. `secret_data` is [`password_secret_data`]: a hash of it on the
/// pod template rolls the pod when the password or configuration changes,
/// since Redis reads its configuration only at start.
pub fn dedicated_redis_statefulset(
    tenant: &PartnerTenant,
    names: &TenantNames,
    secret_data: &BTreeMap<String, String>,
) -> StatefulSet {
    let config_hash = {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for (k, v) in secret_data {
            hasher.update(k.as_bytes());
            hasher.update([0]);
            hasher.update(v.as_bytes());
            hasher.update([0]);
        }
        hex::encode(&hasher.finalize()[..8])
    };
    let memory = memory_limit(tenant).0;
    let mut pod_labels = labels(&tenant.name_any());
    pod_labels.insert("app.kubernetes.io/name".into(), DEDICATED_REDIS.into());
    let mut volumes = vec![json!({
        "name": "config",
        "secret": {
            "secretName": DEDICATED_REDIS_SECRET,
            "items": [{"key": CONFIG_KEY, "path": CONFIG_KEY}],
            "defaultMode": 0o440,
        }
    })];
    let mut spec = json!({
        "serviceName": DEDICATED_REDIS,
        "replicas": 1,
        "selector": {"matchLabels": selector(tenant)},
    });
    match tenant.spec.redis.persistence.as_ref().filter(|p| p.enabled) {
        Some(persistence) => {
            let mut claim = json!({
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": persistence.size.0}},
            });
            if let Some(class) = &persistence.storage_class_name {
                claim["storageClassName"] = json!(class);
            }
            spec["volumeClaimTemplates"] = json!([{
                "metadata": {"name": DATA_VOLUME, "labels": labels(&tenant.name_any())},
                "spec": claim,
            }]);
        }
        None => volumes.push(json!({"name": DATA_VOLUME, "emptyDir": {"sizeLimit": memory}})),
    }
    spec["template"] = json!({
        "metadata": {"labels": pod_labels, "annotations": {CONFIG_HASH: config_hash}},
        "spec": {
            "automountServiceAccountToken": false,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": REDIS_UID,
                "runAsGroup": REDIS_UID,
                "fsGroup": REDIS_UID,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [{
                "name": "redis",
                "image": IMAGE,
                "command": ["redis-server", format!("{CONFIG_DIR}/{CONFIG_KEY}")],
                // redis-cli reads the password from REDISCLI_AUTH.
                "env": [{"name": "REDISCLI_AUTH", "valueFrom": {"secretKeyRef": {"name": DEDICATED_REDIS_SECRET, "key": PASSWORD_KEY}}}],
                "ports": [{"name": "redis", "containerPort": PORT}],
                "resources": {"requests": {"cpu": "100m", "memory": memory}, "limits": {"memory": memory}},
                // `-e`: an error reply (NOAUTH, LOADING) fails the probe.
                "readinessProbe": {"exec": {"command": ["redis-cli", "-e", "ping"]}, "periodSeconds": 10, "timeoutSeconds": 5},
                "livenessProbe": {"tcpSocket": {"port": PORT}, "initialDelaySeconds": 15, "periodSeconds": 20},
                "volumeMounts": [
                    {"name": "config", "mountPath": CONFIG_DIR, "readOnly": true},
                    {"name": DATA_VOLUME, "mountPath": DATA_DIR},
                ],
                "securityContext": {
                    "runAsNonRoot": true,
                    "readOnlyRootFilesystem": true,
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]},
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
            }],
            "volumes": volumes,
        }
    });
    build(json!({
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": metadata(tenant, names, DEDICATED_REDIS),
        "spec": spec,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PartnerTenantSpec;
    use k8s_openapi::api::core::v1::Container;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn tenant(yaml: &str) -> PartnerTenant {
        let spec: PartnerTenantSpec = serde_yaml::from_str(yaml).unwrap();
        let mut t = PartnerTenant::new("acme", spec);
        t.metadata.uid = Some("uid-1".into());
        t
    }

    fn dedicated(extra: &str) -> PartnerTenant {
        tenant(&format!(
            "displayName: Acme\nredis: {{mode: Dedicated, memory: 512Mi{extra}}}"
        ))
    }

    fn names() -> TenantNames {
        TenantNames::new("acme", None)
    }

    fn container(sts: &StatefulSet) -> Container {
        sts.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .clone()
    }

    #[test]
    fn a_new_password_rolls_the_pod() {
        let t = dedicated("");
        let hash = |password: &str| {
            let sts =
                dedicated_redis_statefulset(&t, &names(), &password_secret_data(&t, password));
            sts.spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[CONFIG_HASH]
                .clone()
        };
        assert_eq!(hash("a"), hash("a"));
        assert_ne!(hash("a"), hash("b"));
        assert!(!hash("secret-password").contains("secret"));
    }

    #[test]
    fn quantities_in_every_notation_become_bytes() {
        for (text, bytes) in [
            ("512Mi", 536_870_912),
            ("1Gi", 1 << 30),
            ("1.5Gi", 1_610_612_736),
            ("256Ki", 262_144),
            ("2Ei", 2 << 60),
            ("2G", 2_000_000_000),
            ("500M", 500_000_000),
            ("1k", 1_000),
            ("1e9", 1_000_000_000),
            ("1E3", 1_000),
            ("15E-1", 2),
            ("1E", 1_000_000_000_000_000_000),
            ("123", 123),
            ("+5", 5),
            (".5Ki", 512),
            ("0.1", 1),
            ("100m", 1),
            ("1500m", 2),
            ("0", 0),
            ("-0", 0),
        ] {
            assert_eq!(quantity_bytes(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn malformed_negative_and_huge_quantities_are_refused() {
        for text in [
            "", "lots", "Mi", "1MB", "1..5", "1.2.3", "1e", "1Mi ", "e3", "1 Gi",
        ] {
            assert_eq!(
                quantity_bytes(text),
                Err(QuantityError::Invalid(text.into())),
                "{text}"
            );
        }
        assert_eq!(
            quantity_bytes("-1Gi"),
            Err(QuantityError::Negative("-1Gi".into()))
        );
        assert_eq!(
            quantity_bytes("20Ei"),
            Err(QuantityError::TooLarge("20Ei".into()))
        );
        assert!(matches!(
            quantity_bytes("1e40"),
            Err(QuantityError::TooLarge(_))
        ));
    }

    #[test]
    fn maxmemory_is_ninety_percent_of_the_limit() {
        assert_eq!(maxmemory_bytes(&Quantity("512Mi".into())), Ok(483_183_820));
        assert_eq!(maxmemory_bytes(&Quantity("1G".into())), Ok(900_000_000));
    }

    #[test]
    fn the_secret_carries_the_password_and_a_config_that_requires_it() {
        let data = password_secret_data(&dedicated(""), "s3cret");
        assert_eq!(data[PASSWORD_KEY], "s3cret");
        let conf: Vec<&str> = data[CONFIG_KEY].lines().collect();
        for line in [
            "requirepass \"s3cret\"",
            "maxmemory 483183820",
            "maxmemory-policy allkeys-lru",
            "dir /data",
            "appendonly no",
            "save \"\"",
        ] {
            assert!(conf.contains(&line), "{line} missing from {conf:?}");
        }
    }

    #[test]
    fn persistence_turns_the_append_only_file_on() {
        let data = password_secret_data(&dedicated(", persistence: {enabled: true}"), "pw");
        let conf: Vec<&str> = data[CONFIG_KEY].lines().collect();
        assert!(conf.contains(&"appendonly yes"));
        assert!(!conf.iter().any(|l| l.starts_with("save")));
    }

    #[test]
    fn a_password_with_quotes_stays_one_config_argument() {
        assert_eq!(quote(r#"a"b\c d"#), r#""a\"b\\c d""#);
    }

    #[test]
    fn no_password_on_any_command_line_or_probe() {
        let sts = dedicated_redis_statefulset(&dedicated(""), &names(), &BTreeMap::new());
        let c = container(&sts);
        assert_eq!(
            c.command.unwrap(),
            ["redis-server", "/etc/redis/redis.conf"]
        );
        assert!(c.args.is_none());
        let probe = c.readiness_probe.unwrap().exec.unwrap().command.unwrap();
        assert_eq!(probe, ["redis-cli", "-e", "ping"]);
        assert_eq!(
            c.liveness_probe.unwrap().tcp_socket.unwrap().port,
            IntOrString::Int(6379)
        );
        let env = c.env.unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].name, "REDISCLI_AUTH");
        let from = env[0].value_from.as_ref().unwrap().secret_key_ref.as_ref();
        assert_eq!(from.unwrap().name, DEDICATED_REDIS_SECRET);
    }

    #[test]
    fn the_container_is_locked_down() {
        let sts = dedicated_redis_statefulset(&dedicated(""), &names(), &BTreeMap::new());
        let pod = sts.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.automount_service_account_token, Some(false));
        let c = pod.containers[0].clone();
        let sc = c.security_context.unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop.unwrap(), ["ALL"]);
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let mounts = c.volume_mounts.unwrap();
        let config = mounts
            .iter()
            .find(|m| m.mount_path == "/etc/redis")
            .unwrap();
        assert_eq!(config.read_only, Some(true));
        assert!(mounts.iter().any(|m| m.mount_path == "/data"));
        let limits = c.resources.unwrap().limits.unwrap();
        assert_eq!(limits["memory"].0, "512Mi");
    }

    #[test]
    fn without_persistence_data_lives_in_an_empty_dir() {
        let spec = dedicated_redis_statefulset(&dedicated(""), &names(), &BTreeMap::new())
            .spec
            .unwrap();
        assert!(spec.volume_claim_templates.is_none());
        let volumes = spec.template.spec.unwrap().volumes.unwrap();
        let data = volumes.iter().find(|v| v.name == "data").unwrap();
        assert!(data.empty_dir.is_some());
    }

    #[test]
    fn with_persistence_data_lives_in_a_claim_of_the_requested_size() {
        let t = dedicated(", persistence: {enabled: true, size: 2Gi, storageClassName: fast}");
        let spec = dedicated_redis_statefulset(&t, &names(), &BTreeMap::new())
            .spec
            .unwrap();
        let claims = spec.volume_claim_templates.unwrap();
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        let claim = claims[0].spec.clone().unwrap();
        assert_eq!(
            claim.resources.unwrap().requests.unwrap()["storage"].0,
            "2Gi"
        );
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
        let volumes = spec.template.spec.unwrap().volumes.unwrap();
        assert!(!volumes.iter().any(|v| v.name == "data"));
    }

    #[test]
    fn persistence_defaults_to_off_and_one_gibibyte() {
        let t = dedicated(", persistence: {}");
        let persistence = t.spec.redis.persistence.clone().unwrap();
        assert!(!persistence.enabled);
        assert_eq!(persistence.size.0, "1Gi");
        let spec = dedicated_redis_statefulset(&t, &names(), &BTreeMap::new())
            .spec
            .unwrap();
        assert!(spec.volume_claim_templates.is_none());
    }

    #[test]
    fn the_service_selects_the_tenants_redis_pod() {
        let t = dedicated("");
        let service = dedicated_redis_service(&t, &names());
        let selector = service.spec.unwrap().selector.unwrap();
        let sts = dedicated_redis_statefulset(&t, &names(), &BTreeMap::new());
        let pod_labels = sts.spec.unwrap().template.metadata.unwrap().labels.unwrap();
        for (k, v) in &selector {
            assert_eq!(pod_labels.get(k), Some(v), "{k}");
        }
        assert_eq!(service.metadata.namespace.as_deref(), Some("ptn-acme"));
    }
}
