//! Redis isolation, proven with a tenant's own credentials against the real
//! server: shared-mode users run data commands under their prefix and are
//! refused every command that reaches past it; an admin's widening of a
//! tenant user is undone; a Dedicated Redis never shows its password on a
//! command line.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use partnerplane::api::PartnerTenant;
use partnerplane_e2e::tenants::{credentials, delete_tenants, redis_admin};
use partnerplane_e2e::{Operator, Testbed, apply, unique_name, wait_condition, wait_until};
use serde_json::json;

type Connection = redis::aio::MultiplexedConnection;

async fn connect_as(
    testbed: &Testbed,
    creds: &BTreeMap<String, String>,
) -> anyhow::Result<Connection> {
    let url = testbed.redis_url_as(&creds["REDIS_USER"], &creds["REDIS_PASSWORD"])?;
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Provisions a shared-mode tenant and returns its credentials.
async fn provision_shared(
    client: &kube::Client,
    operator: &Operator,
    name: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let spec = json!({"displayName": name, "secrets": {"store": "KubernetesSecret"}});
    apply(client, &operator.tenant(name, spec), None, false).await?;
    let tenant = wait_condition(client, name, "Ready", "True", Duration::from_secs(60)).await?;
    let namespace = tenant.status.and_then(|s| s.namespace).expect("namespace");
    credentials(client, &namespace).await
}

/// The error code of a command the tenant is refused; fails if it ran.
async fn refused(con: &mut Connection, args: &[&str]) -> anyhow::Result<Option<String>> {
    let mut cmd = redis::cmd(args[0]);
    for arg in &args[1..] {
        cmd.arg(*arg);
    }
    match cmd.query_async::<redis::Value>(con).await {
        Ok(value) => anyhow::bail!("{args:?} ran as the tenant: {value:?}"),
        Err(e) => Ok(e.code().map(str::to_string)),
    }
}

async fn getuser(testbed: &Testbed, user: &str) -> anyhow::Result<HashMap<String, redis::Value>> {
    let mut admin = redis_admin(testbed).await?;
    let reply: Option<HashMap<String, redis::Value>> = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(user)
        .query_async(&mut admin)
        .await?;
    reply.ok_or_else(|| anyhow::anyhow!("user {user} is gone"))
}

fn strings(value: Option<&redis::Value>) -> Vec<String> {
    match value {
        Some(redis::Value::Array(items)) => items.iter().flat_map(|v| strings(Some(v))).collect(),
        Some(redis::Value::BulkString(b)) => vec![String::from_utf8_lossy(b).into_owned()],
        Some(redis::Value::SimpleString(s)) => vec![s.clone()],
        _ => vec![],
    }
}

/// Waits until a full resync round of `tenants` tenants passes with no backend write.
async fn settled(operator: &Operator, tenants: f64) -> anyhow::Result<()> {
    let previous = std::cell::Cell::new((-1.0, -1.0));
    wait_until(
        "a resync round without backend writes",
        Duration::from_secs(60),
        || {
            let previous = &previous;
            async move {
                let writes = operator
                    .metric_sum("partnerplane_backend_writes_total")
                    .await?;
                let reconciles = operator.metric_sum("partnerplane_reconciles_total").await?;
                let (last_writes, last_reconciles) = previous.get();
                if reconciles < last_reconciles + tenants {
                    return Ok(None);
                }
                previous.set((writes, reconciles));
                Ok((writes == last_writes).then_some(()))
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_shared_tenant_runs_data_commands_and_nothing_that_crosses_tenants() -> anyhow::Result<()>
{
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(
        &testbed,
        &unique_name("redis-iso"),
        &["--resync-seconds", "2"],
    )
    .await?;
    let (name_a, name_b) = (
        format!("{}-a", operator.shard),
        format!("{}-b", operator.shard),
    );

    let result = async {
        let a = provision_shared(&client, &operator, &name_a).await?;
        let b = provision_shared(&client, &operator, &name_b).await?;
        let (prefix, other) = (a["REDIS_KEY_PREFIX"].clone(), b["REDIS_KEY_PREFIX"].clone());
        let mut admin = redis_admin(&testbed).await?;
        let _: () = redis::cmd("SET")
            .arg(format!("{other}k"))
            .arg("b's secret")
            .query_async(&mut admin)
            .await?;
        let mut con = connect_as(&testbed, &a).await?;

        // Ordinary work under its own prefix.
        let (key, list, stream, hash) = (
            format!("{prefix}k"),
            format!("{prefix}list"),
            format!("{prefix}stream"),
            format!("{prefix}hash"),
        );
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("v")
            .query_async(&mut con)
            .await?;
        let got: String = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
        assert_eq!(got, "v");
        let _: i64 = redis::cmd("HSET")
            .arg(&hash)
            .arg("f")
            .arg("v")
            .query_async(&mut con)
            .await?;
        let _: i64 = redis::cmd("LPUSH")
            .arg(&list)
            .arg("1")
            .arg("2")
            .query_async(&mut con)
            .await?;
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("f")
            .arg("v")
            .query_async(&mut con)
            .await?;
        let expired: i64 = redis::cmd("EXPIRE")
            .arg(&hash)
            .arg(600)
            .query_async(&mut con)
            .await?;
        assert_eq!(expired, 1);
        let (set, count): (String, i64) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(format!("{prefix}tx"))
            .arg("1")
            .cmd("INCR")
            .arg(format!("{prefix}tx"))
            .query_async(&mut con)
            .await?;
        assert_eq!((set.as_str(), count), ("OK", 2));
        let deleted: i64 = redis::cmd("DEL").arg(&hash).query_async(&mut con).await?;
        assert_eq!(deleted, 1);

        // Pub/sub on its own channels, and only there.
        let url = testbed.redis_url_as(&a["REDIS_USER"], &a["REDIS_PASSWORD"])?;
        let mut pubsub = redis::Client::open(url.as_str())?
            .get_async_pubsub()
            .await?;
        let channel = format!("{prefix}events");
        pubsub.subscribe(&channel).await?;
        let foreign = pubsub
            .subscribe(format!("{other}events"))
            .await
            .expect_err("foreign channel");
        assert_eq!(foreign.code(), Some("NOPERM"), "{foreign}");
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg("hello")
            .query_async(&mut con)
            .await?;
        assert_eq!(receivers, 1);
        let message = tokio::time::timeout(Duration::from_secs(10), pubsub.on_message().next())
            .await?
            .expect("a message");
        assert_eq!(message.get_payload::<String>()?, "hello");
        assert_eq!(
            refused(&mut con, &["PUBLISH", &format!("{other}events"), "x"])
                .await?
                .as_deref(),
            Some("NOPERM")
        );

        // Everything that reaches past the prefix, or stalls the server for everyone.
        let copy_target = format!("{prefix}k2");
        let other_pattern = format!("{other}*");
        let other_key = format!("{other}k");
        let function = "#!lua name=intruder\nredis.register_function('f', function() return 1 end)";
        let denied: Vec<Vec<&str>> = vec![
            vec!["EVAL", "return 1", "0"],
            vec!["FUNCTION", "LOAD", function],
            vec!["FUNCTION", "LIST"],
            vec!["FUNCTION", "FLUSH"],
            vec!["SCRIPT", "FLUSH"],
            vec!["CLIENT", "TRACKING", "ON", "BCAST"],
            vec!["PUBSUB", "CHANNELS"],
            vec!["PUBSUB", "NUMSUB"],
            vec!["DBSIZE"],
            vec!["MOVE", &key, "1"],
            vec!["COPY", &key, &copy_target, "DB", "1"],
            vec!["MEMORY", "STATS"],
            vec!["SORT", &list, "BY", "nosort", "GET", &other_pattern],
            vec!["KEYS", "*"],
            vec!["SCAN", "0"],
            vec!["SELECT", "1"],
            vec!["FLUSHALL"],
            vec!["GET", &other_key],
        ];
        for args in &denied {
            assert_eq!(
                refused(&mut con, args).await?.as_deref(),
                Some("NOPERM"),
                "{args:?}"
            );
        }

        // Converged users cost no write: the rules Redis reports back match.
        settled(&operator, 2.0).await?;

        // Drift: an admin widens the user; the next resyncs undo it.
        let user = a["REDIS_USER"].clone();
        for widening in [
            vec!["SETUSER", &user, "(~* +@all)"],
            vec!["SETUSER", &user, "+eval"],
        ] {
            let _: () = redis::cmd("ACL")
                .arg(&widening)
                .query_async(&mut admin)
                .await?;
            wait_until(
                &format!("ACL {widening:?} to be undone"),
                Duration::from_secs(30),
                || {
                    let (testbed, a, user, other_key) = (&testbed, &a, &user, &other_key);
                    async move {
                        let reported = getuser(testbed, user).await?;
                        let selectors = strings(reported.get("selectors"));
                        let commands = strings(reported.get("commands")).join(" ");
                        if !selectors.is_empty() || commands.split(' ').any(|r| r == "+eval") {
                            anyhow::bail!(
                                "still reported: selectors {selectors:?}, commands {commands}"
                            );
                        }
                        let mut con = connect_as(testbed, a).await?;
                        let get = redis::cmd("GET")
                            .arg(other_key)
                            .query_async::<redis::Value>(&mut con)
                            .await;
                        let eval = redis::cmd("EVAL")
                            .arg("return 1")
                            .arg(0)
                            .query_async::<redis::Value>(&mut con)
                            .await;
                        match (get, eval) {
                            (Err(g), Err(e))
                                if g.code() == Some("NOPERM") && e.code() == Some("NOPERM") =>
                            {
                                Ok(Some(()))
                            }
                            (get, eval) => {
                                anyhow::bail!("as the tenant: GET {get:?}, EVAL {eval:?}")
                            }
                        }
                    }
                },
            )
            .await?;
        }
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &[name_a, name_b]).await?;
    result
}

/// Every string a container hands to a process: command, args and probe commands.
fn argv(sts: &StatefulSet) -> Vec<String> {
    let pod = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let mut all = vec![];
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        all.extend(c.command.iter().flatten().cloned());
        all.extend(c.args.iter().flatten().cloned());
        for probe in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe]
            .into_iter()
            .flatten()
        {
            all.extend(
                probe
                    .exec
                    .iter()
                    .flat_map(|e| e.command.iter().flatten().cloned()),
            );
        }
    }
    all
}

async fn redis_secret(
    client: &kube::Client,
    namespace: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get("tenant-redis-password")
        .await?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect())
}

#[tokio::test]
async fn a_dedicated_redis_keeps_its_password_off_every_command_line() -> anyhow::Result<()> {
    let testbed = Testbed::load()?;
    let client = testbed.kube_admin().await?;
    let operator = Operator::start(&testbed, &unique_name("redis-ded"), &[]).await?;
    let (plain, persistent) = (
        format!("{}-m", operator.shard),
        format!("{}-p", operator.shard),
    );

    let result = async {
        let spec =
            json!({"displayName": "Dedicated", "redis": {"mode": "Dedicated", "memory": "512Mi"}});
        apply(&client, &operator.tenant(&plain, spec), None, false).await?;
        let spec = json!({"displayName": "Persistent", "redis": {
            "mode": "Dedicated", "memory": "256Mi", "persistence": {"enabled": true, "size": "2Gi"},
        }});
        apply(&client, &operator.tenant(&persistent, spec), None, false).await?;

        // KWOK runs the pod, so the tenant becomes Ready.
        let tenant =
            wait_condition(&client, &plain, "Ready", "True", Duration::from_secs(90)).await?;
        let namespace = tenant.status.and_then(|s| s.namespace).expect("namespace");
        let sts = Api::<StatefulSet>::namespaced(client.clone(), &namespace)
            .get("tenant-redis")
            .await?;
        let data = redis_secret(&client, &namespace).await?;
        let password = &data["password"];
        assert!(password.len() >= 16);
        let argv = argv(&sts);
        assert!(argv.iter().any(|a| a == "redis-server"), "{argv:?}");
        for arg in &argv {
            assert!(
                !arg.contains(password.as_str()),
                "the password is in {arg:?}"
            );
            assert!(
                !arg.contains("$("),
                "{arg:?} expands a variable onto the command line"
            );
        }
        let conf: Vec<&str> = data["redis.conf"].lines().collect();
        // 90% of 512Mi.
        assert!(conf.contains(&"maxmemory 483183820"), "{conf:?}");
        assert!(conf.contains(&"maxmemory-policy allkeys-lru"), "{conf:?}");
        assert!(conf.contains(&format!("requirepass \"{password}\"").as_str()));
        assert!(conf.contains(&"appendonly no"), "{conf:?}");

        // Persistence: a 2Gi claim template (no volume provisioner here, so
        // this tenant waits for its pod; the StatefulSet is what is checked).
        let api: Api<PartnerTenant> = Api::all(client.clone());
        let sts = wait_until(
            "the persistent tenant's StatefulSet",
            Duration::from_secs(60),
            || {
                let (api, client, persistent) = (&api, &client, &persistent);
                async move {
                    let tenant = api.get(persistent).await?;
                    let Some(namespace) = tenant.status.and_then(|s| s.namespace) else {
                        return Ok(None);
                    };
                    Ok(Api::<StatefulSet>::namespaced(client.clone(), &namespace)
                        .get_opt("tenant-redis")
                        .await?)
                }
            },
        )
        .await?;
        let claims = sts
            .spec
            .as_ref()
            .and_then(|s| s.volume_claim_templates.clone())
            .expect("claim templates");
        assert_eq!(claims.len(), 1);
        assert_eq!(claims[0].metadata.name.as_deref(), Some("data"));
        let requests = claims[0]
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.clone());
        assert_eq!(requests.expect("requests")["storage"].0, "2Gi");
        let namespace = sts.metadata.namespace.clone().expect("namespace");
        let conf = redis_secret(&client, &namespace).await?["redis.conf"].clone();
        assert!(conf.lines().any(|l| l == "appendonly yes"), "{conf}");
        anyhow::Ok(())
    }
    .await;
    delete_tenants(&client, &[plain, persistent]).await?;
    result
}
