//! Redis (shared mode): one ACL user per tenant, confined to its key prefix
//! and channels, allowed only the commands that respect those patterns.
//!
//! `ACL GETUSER` is compared with the desired user first, so a converged
//! tenant costs one read and no write. Redis reports command rules rewritten
//! in a form of its own (`+@keyspace -copy -move …` for rules that never
//! named `@keyspace`), so the comparison is of what the rules allow, worked
//! out from the server's own `ACL CAT` lists, not of the rule text.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::naming::TenantNames;

pub mod group_save;

/// Command rules of every tenant user: an allow-list of commands that check
/// key and channel patterns. Whatever a category pulls in that is
/// `@dangerous`, `@admin` or `@scripting` is taken away again at the end.
///
/// Left out on purpose: EVAL/FUNCTION/SCRIPT (a busy script stalls the
/// server for everyone; functions are server-wide), PUBSUB (lists every
/// tenant's channels), CLIENT TRACKING (BCAST invalidations name other
/// tenants' keys), DBSIZE/MEMORY/INFO (server-wide figures), MOVE, COPY … DB,
/// SELECT and SWAPDB (keys in another database escape `Delete`), KEYS, SCAN
/// and RANDOMKEY (ignore key patterns), and SORT/SORT_RO, whose BY and GET
/// options read keys the pattern check never sees.
pub const COMMAND_RULES: &[&str] = &[
    "-@all",
    "+@string",
    "+@hash",
    "+@list",
    "+@set",
    "+@sortedset",
    "+@bitmap",
    "+@hyperloglog",
    "+@geo",
    "+@stream",
    "+@transaction",
    "+del",
    "+unlink",
    "+exists",
    "+expire",
    "+pexpire",
    "+expireat",
    "+pexpireat",
    "+expiretime",
    "+pexpiretime",
    "+ttl",
    "+pttl",
    "+persist",
    "+type",
    "+rename",
    "+renamenx",
    "+touch",
    "+object|encoding",
    "+object|freq",
    "+object|idletime",
    "+object|refcount",
    "+ping",
    "+echo",
    "+hello",
    "+auth",
    "+quit",
    "+reset",
    "+client|setname",
    "+client|getname",
    "+client|id",
    "+publish",
    "+subscribe",
    "+psubscribe",
    "+unsubscribe",
    "+punsubscribe",
    "+spublish",
    "+ssubscribe",
    "+sunsubscribe",
    "-sort",
    "-sort_ro",
    "-@dangerous",
    "-@admin",
    "-@scripting",
];

#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    #[error("Redis is unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    #[error("Redis: the ACL saving task has stopped")]
    SaverStopped,
}

impl From<group_save::Stopped> for RedisError {
    fn from(_: group_save::Stopped) -> Self {
        Self::SaverStopped
    }
}

/// What [`Redis::ensure_user`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserChange {
    /// The user was created or rewritten.
    pub wrote: bool,
    /// An existing user did not have the desired password, so the password
    /// its clients used stopped working (never set when the user is created).
    pub password_changed: bool,
}

/// What the admin URL's scheme (`tls`: `Some(insecure)` for `rediss://`)
/// means with or without a configured CA: a refusal for a contradiction, a
/// warning to log once when the connection can be read or impersonated.
pub fn tls_warning(tls: Option<bool>, has_ca: bool) -> anyhow::Result<Option<&'static str>> {
    match (tls, has_ca) {
        (None, true) => anyhow::bail!("redis.caSecret is set but the Redis URL is not rediss://"),
        (Some(true), true) => {
            anyhow::bail!(
                "redis.caSecret is set but the Redis URL turns verification off (#insecure)"
            )
        }
        (None, false) => Ok(Some(
            "the Redis URL is redis://: the admin password and ACL passwords travel in clear text",
        )),
        (Some(true), false) => Ok(Some(
            "the Redis URL ends in #insecure: the server's certificate is not verified",
        )),
        (Some(false), _) => Ok(None),
    }
}

/// The server's commands by ACL category, as `ACL CAT <category>` lists them:
/// `name` for a command, `name|sub` for a subcommand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandCatalogue {
    categories: BTreeMap<String, BTreeSet<String>>,
}

impl CommandCatalogue {
    pub fn new<C, N>(categories: impl IntoIterator<Item = (C, Vec<N>)>) -> Self
    where
        C: AsRef<str>,
        N: AsRef<str>,
    {
        Self {
            categories: categories
                .into_iter()
                .map(|(category, names)| {
                    let names = names.iter().map(|n| n.as_ref().to_lowercase()).collect();
                    (category.as_ref().to_lowercase(), names)
                })
                .collect(),
        }
    }

    fn every_command(&self) -> BTreeSet<&str> {
        self.categories
            .values()
            .flatten()
            .map(String::as_str)
            .collect()
    }

    /// The commands a rule list allows, applying the rules in order as Redis
    /// does; `None` when a rule names a command or category this server does
    /// not have, or is of a kind tenant users never get.
    pub fn allowed(&self, rules: &[&str]) -> Option<BTreeSet<String>> {
        let every = self.every_command();
        let mut allowed = BTreeSet::new();
        for rule in rules {
            let rule = rule.to_lowercase();
            let (add, target) = match rule.as_str() {
                "allcommands" => (true, "@all"),
                "nocommands" => (false, "@all"),
                r => match (r.strip_prefix('+'), r.strip_prefix('-')) {
                    (Some(t), _) => (true, t),
                    (_, Some(t)) => (false, t),
                    _ => return None,
                },
            };
            let names: Vec<&str> = if target == "@all" {
                every.iter().copied().collect()
            } else if let Some(category) = target.strip_prefix('@') {
                self.categories
                    .get(category)?
                    .iter()
                    .map(String::as_str)
                    .collect()
            } else if target.contains('|') {
                vec![*every.get(target)?]
            } else {
                // A command with subcommands stands for all of them.
                let family: Vec<&str> = every
                    .iter()
                    .copied()
                    .filter(|n| {
                        *n == target
                            || n.strip_prefix(target)
                                .is_some_and(|sub| sub.starts_with('|'))
                    })
                    .collect();
                if family.is_empty() {
                    return None;
                }
                family
            };
            for name in names {
                if add {
                    allowed.insert(name.to_string());
                } else {
                    allowed.remove(name);
                }
            }
        }
        Some(allowed)
    }
}

/// The desired ACL user of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclUser {
    pub name: String,
    pub password_sha256: String,
    pub key_pattern: String,
    pub channel_pattern: String,
}

impl AclUser {
    pub fn new(names: &TenantNames, password: &str) -> Self {
        Self {
            name: names.redis_user.clone(),
            password_sha256: hex::encode(Sha256::digest(password.as_bytes())),
            key_pattern: format!("~{}*", names.redis_key_prefix),
            channel_pattern: format!("&{}*", names.redis_key_prefix),
        }
    }

    /// `ACL SETUSER` arguments; `reset` first, so nothing else survives
    /// (other passwords, patterns and selectors included).
    pub fn setuser_args(&self) -> Vec<String> {
        let mut args = vec![
            "SETUSER".to_string(),
            self.name.clone(),
            "reset".into(),
            "on".into(),
            format!("#{}", self.password_sha256),
            self.key_pattern.clone(),
            "resetchannels".into(),
            self.channel_pattern.clone(),
        ];
        args.extend(COMMAND_RULES.iter().map(|r| r.to_string()));
        args
    }

    /// Whether the user Redis reports (`ACL GETUSER` as field → values) is
    /// this one: enabled, this password only, these patterns only, no
    /// selectors, and command rules that allow exactly what
    /// [`COMMAND_RULES`] allows on this server.
    pub fn matches(
        &self,
        reported: &HashMap<String, redis::Value>,
        catalogue: &CommandCatalogue,
    ) -> bool {
        let text = |key: &str| reported.get(key).map(value_strings).unwrap_or_default();
        let commands = text("commands").join(" ");
        let reported_rules: Vec<&str> = commands.split_whitespace().collect();
        let allowed = catalogue.allowed(&reported_rules);
        text("flags").contains(&"on".to_string())
            && text("passwords") == vec![self.password_sha256.clone()]
            && text("keys") == vec![self.key_pattern.clone()]
            && text("channels") == vec![self.channel_pattern.clone()]
            && reported.get("selectors").is_none_or(is_empty)
            && allowed.is_some()
            && allowed == catalogue.allowed(COMMAND_RULES)
    }

    /// Whether an existing user, as reported, lacks this user's password.
    fn password_differs(&self, reported: &HashMap<String, redis::Value>) -> bool {
        let passwords = reported
            .get("passwords")
            .map(value_strings)
            .unwrap_or_default();
        !passwords.contains(&self.password_sha256)
    }
}

fn is_empty(value: &redis::Value) -> bool {
    match value {
        redis::Value::Nil => true,
        redis::Value::Array(items) | redis::Value::Set(items) => items.is_empty(),
        redis::Value::Map(items) => items.is_empty(),
        _ => false,
    }
}

fn value_strings(value: &redis::Value) -> Vec<String> {
    match value {
        redis::Value::Array(items) | redis::Value::Set(items) => {
            items.iter().flat_map(value_strings).collect()
        }
        redis::Value::BulkString(bytes) => vec![String::from_utf8_lossy(bytes).into_owned()],
        redis::Value::SimpleString(s) => vec![s.clone()],
        _ => vec![],
    }
}

/// Saves the ACLs to the server's ACL file, so a Redis restart keeps them; a
/// server without an ACL file keeps them in its config only.
async fn save_acls(mut con: ConnectionManager, metrics: &Metrics) -> Result<(), RedisError> {
    let _timer = metrics.backend_timer("redis", "acl_save");
    match redis::cmd("ACL")
        .arg("SAVE")
        .query_async::<()>(&mut con)
        .await
    {
        Ok(()) => Ok(()),
        Err(e) if e.to_string().contains("not configured to use an ACL file") => Ok(()),
        Err(e) => Err(RedisError::Unavailable(e)),
    }
}

/// An admin connection to the shared Redis; reconnects by itself.
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    metrics: Arc<Metrics>,
    /// Read once and kept; dropped after every correction so that a server
    /// upgrade (new commands in a category) is picked up.
    catalogue: Arc<Mutex<Option<Arc<CommandCatalogue>>>>,
    /// `ACL SAVE`s shared by the changes made while one runs.
    saver: group_save::GroupSave<RedisError>,
}

impl Redis {
    /// Connects to the admin URL; a `rediss://` URL is checked against the
    /// system's roots. Connecting is lazy, so the operator starts while Redis is down.
    pub async fn connect(
        url: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        Self::connect_with_ca(url, None, timeout, metrics).await
    }

    /// [`Redis::connect`] trusting only the certificates of `ca` (PEM).
    /// The certificate is always verified unless the URL itself ends in `#insecure`.
    pub async fn connect_with_ca(
        url: &str,
        ca: Option<&str>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)?;
        let tls = match info.addr() {
            redis::ConnectionAddr::TcpTls { insecure, .. } => Some(*insecure),
            _ => None,
        };
        if let Some(warning) = tls_warning(tls, ca.is_some())? {
            tracing::warn!("{warning}");
        }
        let client = match ca {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.as_bytes().to_vec()),
                },
            )?,
            None => redis::Client::open(info)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        let saving = connection.clone();
        let saves = metrics.clone();
        let saver = group_save::GroupSave::spawn(move || {
            let connection = saving.clone();
            let metrics = saves.clone();
            async move { save_acls(connection, &metrics).await }
        });
        Ok(Self {
            connection,
            metrics,
            catalogue: Arc::default(),
            saver,
        })
    }

    /// Creates or corrects the tenant's ACL user.
    pub async fn ensure_user(&self, user: &AclUser) -> Result<UserChange, RedisError> {
        let _timer = self.metrics.backend_timer("redis", "ensure_user");
        let reported = self.get_user(&user.name).await?;
        if let Some(reported) = &reported {
            let catalogue = self.catalogue().await?;
            if user.matches(reported, &catalogue) {
                // An earlier change to it may still be unsaved.
                self.saver.save_pending().await?;
                return Ok(UserChange::default());
            }
        }
        let mut con = self.connection.clone();
        let _: () = redis::cmd("ACL")
            .arg(user.setuser_args())
            .query_async(&mut con)
            .await
            .map_err(|e| self.maybe_changed(e))?;
        self.metrics.backend_wrote("redis", 1);
        self.forget_catalogue();
        self.persist_acls().await?;
        Ok(UserChange {
            wrote: true,
            password_changed: reported.is_some_and(|r| user.password_differs(&r)),
        })
    }

    /// The server's command catalogue: `ACL CAT`, then every category's list
    /// in one pipeline.
    async fn catalogue(&self) -> Result<Arc<CommandCatalogue>, RedisError> {
        if let Some(catalogue) = self.catalogue.lock().expect("not poisoned").clone() {
            return Ok(catalogue);
        }
        let mut con = self.connection.clone();
        let categories: Vec<String> = redis::cmd("ACL")
            .arg("CAT")
            .query_async(&mut con)
            .await
            .map_err(RedisError::Unavailable)?;
        let mut pipe = redis::pipe();
        for category in &categories {
            pipe.cmd("ACL").arg("CAT").arg(category);
        }
        let members: Vec<Vec<String>> = pipe
            .query_async(&mut con)
            .await
            .map_err(RedisError::Unavailable)?;
        let catalogue = Arc::new(CommandCatalogue::new(categories.into_iter().zip(members)));
        *self.catalogue.lock().expect("not poisoned") = Some(catalogue.clone());
        Ok(catalogue)
    }

    fn forget_catalogue(&self) {
        *self.catalogue.lock().expect("not poisoned") = None;
    }

    /// Returns once the ACLs, with every change made so far, are in the
    /// server's ACL file (see [`group_save`]).
    async fn persist_acls(&self) -> Result<(), RedisError> {
        self.saver.save_change().await
    }

    /// A failed ACL write may still have been applied: it counts as a change
    /// to save, so a retry that finds nothing to change still saves.
    fn maybe_changed(&self, error: redis::RedisError) -> RedisError {
        self.saver.changed();
        RedisError::Unavailable(error)
    }

    async fn get_user(
        &self,
        name: &str,
    ) -> Result<Option<HashMap<String, redis::Value>>, RedisError> {
        let mut con = self.connection.clone();
        redis::cmd("ACL")
            .arg("GETUSER")
            .arg(name)
            .query_async(&mut con)
            .await
            .map_err(RedisError::Unavailable)
    }

    /// Creates the user if it does not exist; an existing one is left as is.
    pub async fn ensure_user_exists(&self, user: &AclUser) -> Result<UserChange, RedisError> {
        if self.get_user(&user.name).await?.is_some() {
            self.saver.save_pending().await?;
            return Ok(UserChange::default());
        }
        self.ensure_user(user).await
    }

    /// Removes the tenant's user if it exists (Redis closes its connections).
    pub async fn remove_user_if_present(&self, name: &str) -> Result<(), RedisError> {
        let _timer = self.metrics.backend_timer("redis", "remove_user");
        if self.get_user(name).await?.is_none() {
            // The removal may still be unsaved.
            return self.saver.save_pending().await;
        }
        let mut con = self.connection.clone();
        let removed: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(name)
            .query_async(&mut con)
            .await
            .map_err(|e| self.maybe_changed(e))?;
        self.metrics.backend_wrote("redis", removed as u64);
        self.persist_acls().await
    }

    /// Deletes every key under `prefix`.
    pub async fn delete_keys(&self, prefix: &str) -> Result<(), RedisError> {
        let _timer = self.metrics.backend_timer("redis", "delete_keys");
        let mut con = self.connection.clone();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(500)
                .query_async(&mut con)
                .await
                .map_err(RedisError::Unavailable)?;
            if !keys.is_empty() {
                let _: () = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(&mut con)
                    .await
                    .map_err(RedisError::Unavailable)?;
                self.metrics.backend_wrote("redis", 1);
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_that_contradict_are_refused_and_weak_ones_warned() {
        assert!(tls_warning(None, true).is_err());
        assert!(tls_warning(Some(true), true).is_err());
        assert!(tls_warning(None, false).unwrap().is_some());
        assert!(tls_warning(Some(true), false).unwrap().is_some());
        assert_eq!(tls_warning(Some(false), false).unwrap(), None);
        assert_eq!(tls_warning(Some(false), true).unwrap(), None);
    }

    /// `ACL CAT` of Redis 7.0.15 for the categories the rules below name,
    /// as `@category name name …`.
    const ACL_CAT_7_0: &str = "
        @string append decr decrby get getdel getex getrange getset incr incrby incrbyfloat lcs
        mget mset msetnx psetex set setex setnx setrange strlen substr @hash hdel hexists hget
        hgetall hincrby hincrbyfloat hkeys hlen hmget hmset hrandfield hscan hset hsetnx hstrlen
        hvals @list blmove blmpop blpop brpop brpoplpush lindex linsert llen lmove lmpop lpop
        lpos lpush lpushx lrange lrem lset ltrim rpop rpoplpush rpush rpushx sort sort_ro @set
        sadd scard sdiff sdiffstore sinter sintercard sinterstore sismember smembers smismember
        smove sort sort_ro spop srandmember srem sscan sunion sunionstore @sortedset bzmpop
        bzpopmax bzpopmin sort sort_ro zadd zcard zcount zdiff zdiffstore zincrby zinter
        zintercard zinterstore zlexcount zmpop zmscore zpopmax zpopmin zrandmember zrange
        zrangebylex zrangebyscore zrangestore zrank zrem zremrangebylex zremrangebyrank
        zremrangebyscore zrevrange zrevrangebylex zrevrangebyscore zrevrank zscan zscore zunion
        zunionstore @bitmap bitcount bitfield bitfield_ro bitop bitpos getbit setbit
        @hyperloglog pfadd pfcount pfdebug pfmerge pfselftest @geo geoadd geodist geohash geopos
        georadius georadius_ro georadiusbymember georadiusbymember_ro geosearch geosearchstore
        @stream xack xadd xautoclaim xclaim xdel xgroup|create xgroup|createconsumer
        xgroup|delconsumer xgroup|destroy xgroup|help xgroup|setid xinfo|consumers xinfo|groups
        xinfo|help xinfo|stream xlen xpending xrange xread xreadgroup xrevrange xsetid xtrim
        @transaction discard exec multi unwatch watch @pubsub psubscribe publish pubsub|channels
        pubsub|numpat pubsub|numsub pubsub|shardchannels pubsub|shardnumsub punsubscribe
        spublish ssubscribe subscribe sunsubscribe unsubscribe @keyspace copy dbsize del dump
        exists expire expireat expiretime flushall flushdb keys migrate move object|encoding
        object|freq object|help object|idletime object|refcount persist pexpire pexpireat
        pexpiretime pttl randomkey rename renamenx restore restore-asking scan swapdb touch ttl
        type unlink @dangerous acl|deluser acl|dryrun acl|getuser acl|list acl|load acl|log
        acl|save acl|setuser acl|users bgrewriteaof bgsave client|kill client|list
        client|no-evict client|pause client|unblock client|unpause cluster|addslots
        cluster|addslotsrange cluster|bumpepoch cluster|count-failure-reports cluster|delslots
        cluster|delslotsrange cluster|failover cluster|flushslots cluster|forget cluster|meet
        cluster|replicas cluster|replicate cluster|reset cluster|saveconfig
        cluster|set-config-epoch cluster|setslot cluster|slaves config|get config|resetstat
        config|rewrite config|set debug failover flushall flushdb info keys lastsave
        latency|doctor latency|graph latency|histogram latency|history latency|latest
        latency|reset migrate module|list module|load module|loadex module|unload monitor
        pfdebug pfselftest psync replconf replicaof restore restore-asking role save shutdown
        slaveof slowlog|get slowlog|len slowlog|reset sort sort_ro swapdb sync @admin
        acl|deluser acl|dryrun acl|getuser acl|list acl|load acl|log acl|save acl|setuser
        acl|users bgrewriteaof bgsave client|kill client|list client|no-evict client|pause
        client|unblock client|unpause cluster|addslots cluster|addslotsrange cluster|bumpepoch
        cluster|count-failure-reports cluster|delslots cluster|delslotsrange cluster|failover
        cluster|flushslots cluster|forget cluster|meet cluster|replicas cluster|replicate
        cluster|reset cluster|saveconfig cluster|set-config-epoch cluster|setslot cluster|slaves
        config|get config|resetstat config|rewrite config|set debug failover lastsave
        latency|doctor latency|graph latency|histogram latency|history latency|latest
        latency|reset module|list module|load module|loadex module|unload monitor pfdebug
        pfselftest psync replconf replicaof role save shutdown slaveof slowlog|get slowlog|len
        slowlog|reset sync @scripting eval eval_ro evalsha evalsha_ro fcall fcall_ro
        function|delete function|dump function|flush function|help function|kill function|list
        function|load function|restore function|stats script|debug script|exists script|flush
        script|help script|kill script|load @connection asking auth client|caching
        client|getname client|getredir client|help client|id client|info client|kill client|list
        client|no-evict client|pause client|reply client|setname client|tracking
        client|trackinginfo client|unblock client|unpause command command|count command|docs
        command|getkeys command|getkeysandflags command|help command|info command|list echo
        hello ping quit readonly readwrite reset select wait
    ";

    /// What Redis 7.0.15 reports in `ACL GETUSER` for [`COMMAND_RULES`].
    const REPORTED_7_0: &str = "-@all +@stream +@string +@hash +@geo +@bitmap +@transaction \
        +@sortedset +@list +@set +@hyperloglog +@pubsub +@keyspace -flushdb -pfdebug -pfselftest \
        +quit +reset +hello -keys +ping -dump -sort_ro -pubsub|numsub -pubsub|numpat \
        -pubsub|channels -pubsub|shardnumsub -pubsub|shardchannels -copy -sort +auth -migrate \
        -flushall -restore-asking +echo +client|getname +client|setname +client|id -restore -move \
        -randomkey -dbsize -swapdb -object|help -scan";

    fn catalogue() -> CommandCatalogue {
        let mut categories: Vec<(String, Vec<String>)> = vec![];
        for token in ACL_CAT_7_0.split_whitespace() {
            match token.strip_prefix('@') {
                Some(category) => categories.push((category.to_string(), vec![])),
                None => categories.last_mut().unwrap().1.push(token.to_string()),
            }
        }
        CommandCatalogue::new(categories)
    }

    fn bulk(s: &str) -> redis::Value {
        redis::Value::BulkString(s.as_bytes().to_vec())
    }

    fn reported(user: &AclUser, commands: &str) -> HashMap<String, redis::Value> {
        HashMap::from([
            (
                "flags".to_string(),
                redis::Value::Array(vec![bulk("on"), bulk("sanitize-payload")]),
            ),
            (
                "passwords".to_string(),
                redis::Value::Array(vec![bulk(&user.password_sha256)]),
            ),
            ("commands".to_string(), bulk(commands)),
            ("keys".to_string(), bulk("~t:acme:*")),
            ("channels".to_string(), bulk("&t:acme:*")),
            ("selectors".to_string(), redis::Value::Array(vec![])),
        ])
    }

    fn acme() -> AclUser {
        AclUser::new(&TenantNames::new("acme", None), "pw")
    }

    #[test]
    fn setuser_confines_keys_and_channels_to_the_prefix() {
        let args = acme().setuser_args();
        assert_eq!(&args[..4], ["SETUSER", "tenant-acme", "reset", "on"]);
        assert!(args.contains(&"~t:acme:*".to_string()));
        assert!(args.contains(&"&t:acme:*".to_string()));
        assert!(!args.iter().any(|a| a.contains("pw") && !a.starts_with('#')));
    }

    #[test]
    fn the_rules_start_from_nothing_and_end_with_the_denials() {
        assert_eq!(COMMAND_RULES[0], "-@all");
        assert_eq!(
            &COMMAND_RULES[COMMAND_RULES.len() - 3..],
            ["-@dangerous", "-@admin", "-@scripting"]
        );
    }

    #[test]
    fn the_allow_list_leaves_out_every_command_that_crosses_tenants() {
        let allowed = catalogue().allowed(COMMAND_RULES).unwrap();
        for denied in [
            "eval",
            "evalsha",
            "fcall",
            "function|load",
            "function|list",
            "function|flush",
            "script|flush",
            "client|tracking",
            "client|list",
            "client|kill",
            "pubsub|channels",
            "pubsub|numsub",
            "dbsize",
            "move",
            "copy",
            "sort",
            "sort_ro",
            "keys",
            "scan",
            "randomkey",
            "select",
            "swapdb",
            "flushall",
            "flushdb",
            "pfdebug",
            "pfselftest",
            "object|help",
            "config|set",
            "acl|setuser",
            "migrate",
            "restore",
        ] {
            assert!(!allowed.contains(denied), "{denied} is allowed");
        }
        for needed in [
            "get",
            "set",
            "hset",
            "lpush",
            "xadd",
            "xgroup|create",
            "zadd",
            "pfadd",
            "geoadd",
            "setbit",
            "multi",
            "exec",
            "watch",
            "del",
            "unlink",
            "expire",
            "ttl",
            "rename",
            "object|encoding",
            "ping",
            "hello",
            "auth",
            "client|setname",
            "publish",
            "subscribe",
            "psubscribe",
            "spublish",
            "ssubscribe",
        ] {
            assert!(allowed.contains(needed), "{needed} is not allowed");
        }
    }

    #[test]
    fn what_redis_reports_for_the_rules_matches_them() {
        let user = acme();
        let catalogue = catalogue();
        assert!(user.matches(&reported(&user, REPORTED_7_0), &catalogue));
        // Redis keeps no fixed order among the single commands after the categories.
        let mut shuffled: Vec<&str> = REPORTED_7_0.split_whitespace().collect();
        let categories = shuffled.iter().filter(|r| r.contains('@')).count();
        shuffled[categories..].reverse();
        assert!(user.matches(&reported(&user, &shuffled.join(" ")), &catalogue));
        // A server that reports the rules as given matches too.
        assert!(user.matches(&reported(&user, &COMMAND_RULES.join(" ")), &catalogue));
    }

    #[test]
    fn an_added_or_removed_rule_is_drift() {
        let user = acme();
        let catalogue = catalogue();
        for drifted in [
            format!("{REPORTED_7_0} +eval"),
            format!("{REPORTED_7_0} +pubsub|channels"),
            format!("{REPORTED_7_0} +@scripting"),
            format!("{REPORTED_7_0} +@all"),
            format!("{REPORTED_7_0} -get"),
            REPORTED_7_0.replace(" -scan", ""),
            "+@all".to_string(),
            format!("{REPORTED_7_0} +nosuchcommand"),
        ] {
            assert!(
                !user.matches(&reported(&user, &drifted), &catalogue),
                "{drifted}"
            );
        }
    }

    #[test]
    fn a_selector_or_a_wider_pattern_or_another_password_is_drift() {
        let user = acme();
        let catalogue = catalogue();
        let mut with_selector = reported(&user, REPORTED_7_0);
        with_selector.insert(
            "selectors".to_string(),
            redis::Value::Array(vec![redis::Value::Array(vec![
                bulk("commands"),
                bulk("+@all"),
                bulk("keys"),
                bulk("~*"),
            ])]),
        );
        assert!(!user.matches(&with_selector, &catalogue));
        let mut wider = reported(&user, REPORTED_7_0);
        wider.insert("keys".to_string(), bulk("~t:acme:* ~*"));
        assert!(!user.matches(&wider, &catalogue));
        let mut channels = reported(&user, REPORTED_7_0);
        channels.insert("channels".to_string(), bulk("&*"));
        assert!(!user.matches(&channels, &catalogue));
        let mut off = reported(&user, REPORTED_7_0);
        off.insert("flags".to_string(), redis::Value::Array(vec![bulk("off")]));
        assert!(!user.matches(&off, &catalogue));
        let mut two_passwords = reported(&user, REPORTED_7_0);
        two_passwords.insert(
            "passwords".to_string(),
            redis::Value::Array(vec![bulk(&user.password_sha256), bulk("00")]),
        );
        assert!(!user.matches(&two_passwords, &catalogue));
        // Redis 6 reports no selectors at all.
        let mut redis6 = reported(&user, REPORTED_7_0);
        redis6.remove("selectors");
        assert!(user.matches(&redis6, &catalogue));
    }

    #[test]
    fn a_password_change_is_told_apart_from_other_drift() {
        let user = acme();
        let same = reported(&user, "+@all");
        assert!(!user.password_differs(&same));
        let other = reported(&AclUser::new(&TenantNames::new("acme", None), "old"), "");
        assert!(user.password_differs(&other));
    }

    #[test]
    fn a_command_stands_for_its_subcommands_and_unknown_names_are_refused() {
        let catalogue = catalogue();
        let client = catalogue.allowed(&["-@all", "+client"]).unwrap();
        assert!(client.contains("client|tracking") && client.contains("client|id"));
        let object = catalogue
            .allowed(&["+@all", "-object", "+object|freq"])
            .unwrap();
        assert!(object.contains("object|freq") && !object.contains("object|help"));
        assert_eq!(catalogue.allowed(&["+@nosuchcategory"]), None);
        assert_eq!(catalogue.allowed(&["+object|nosuch"]), None);
        assert_eq!(catalogue.allowed(&["~*"]), None);
        assert_eq!(
            catalogue.allowed(&["allcommands"]),
            catalogue.allowed(&["+@all"])
        );
    }
}
