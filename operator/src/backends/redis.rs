//! Redis (shared mode): one ACL user per tenant, confined to its key prefix
//! and channels, with the commands that ignore key patterns denied.
//!
//! `ACL GETUSER` is compared with the desired user first, so a converged
//! tenant costs one read and no write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::naming::TenantNames;

/// Command rules of every tenant user, in the form Redis reports them.
/// `@dangerous` includes `@admin`, KEYS, FLUSHALL, FLUSHDB and SWAPDB; SCAN,
/// RANDOMKEY and SELECT ignore key patterns too and are denied one by one.
pub const COMMAND_RULES: &str = "+@all -@dangerous -randomkey -scan -select";

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis is unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
}

/// What converging a user did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserChange {
    pub wrote: bool,
    pub password_changed: bool,
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

    /// `ACL SETUSER` arguments; `reset` first, so nothing else survives.
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
        args.extend(COMMAND_RULES.split(' ').map(str::to_string));
        args
    }

    /// Whether the user Redis reports (`ACL GETUSER` as field → values) is this one.
    pub fn matches(&self, reported: &HashMap<String, redis::Value>) -> bool {
        let text = |key: &str| reported.get(key).map(value_strings).unwrap_or_default();
        text("flags").contains(&"on".to_string())
            && text("passwords") == vec![self.password_sha256.clone()]
            && text("keys") == vec![self.key_pattern.clone()]
            && text("channels") == vec![self.channel_pattern.clone()]
            && same_rules(&text("commands").join(" "), COMMAND_RULES)
    }
}

/// Whether two command rule lists hold the same rules; Redis does not keep
/// the order the rules were given in.
fn same_rules(reported: &str, desired: &str) -> bool {
    let sorted = |s: &str| {
        let mut rules: Vec<&str> = s.split_whitespace().collect();
        rules.sort_unstable();
        rules.join(" ")
    };
    // `+@all` must come first for the denials to apply; Redis always reports it so.
    reported.starts_with("+@all ") && sorted(reported) == sorted(desired)
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

/// An admin connection to the shared Redis; reconnects by itself.
#[derive(Clone)]
pub struct Redis {
    connection: ConnectionManager,
    metrics: Arc<Metrics>,
}

impl Redis {
    pub async fn connect(
        url: &str,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        // Connecting lazily lets the operator start while Redis is down.
        let connection = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            connection,
            metrics,
        })
    }

    /// Creates or corrects the tenant's ACL user.
    pub async fn ensure_user(&self, user: &AclUser) -> Result<UserChange, RedisError> {
        let _timer = self.metrics.backend_timer("redis", "ensure_user");
        let reported = self.get_user(&user.name).await?;
        let mut con = self.connection.clone();
        if reported.as_ref().is_some_and(|r| user.matches(r)) {
            return Ok(UserChange::default());
        }
        let _: () = redis::cmd("ACL")
            .arg(user.setuser_args())
            .query_async(&mut con)
            .await
            .map_err(RedisError::Unavailable)?;
        self.metrics.backend_wrote("redis", 1);
        self.persist_acls().await?;
        Ok(UserChange {
            wrote: true,
            password_changed: false,
        })
    }

    /// Saves the ACLs to the server's ACL file, so a Redis restart keeps
    /// them; a server without an ACL file keeps them in its config only.
    async fn persist_acls(&self) -> Result<(), RedisError> {
        let mut con = self.connection.clone();
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
    pub async fn ensure_user_exists(&self, user: &AclUser) -> Result<bool, RedisError> {
        if self.get_user(&user.name).await?.is_some() {
            return Ok(false);
        }
        Ok(self.ensure_user(user).await?.wrote)
    }

    /// Removes the tenant's user if it exists (Redis closes its connections).
    pub async fn remove_user_if_present(&self, name: &str) -> Result<(), RedisError> {
        let _timer = self.metrics.backend_timer("redis", "remove_user");
        if self.get_user(name).await?.is_none() {
            return Ok(());
        }
        let mut con = self.connection.clone();
        let removed: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(name)
            .query_async(&mut con)
            .await
            .map_err(RedisError::Unavailable)?;
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

    fn bulk(s: &str) -> redis::Value {
        redis::Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn setuser_confines_keys_and_channels_to_the_prefix() {
        let user = AclUser::new(&TenantNames::new("acme", None), "pw");
        let args = user.setuser_args();
        assert_eq!(&args[..4], ["SETUSER", "tenant-acme", "reset", "on"]);
        assert!(args.contains(&"~t:acme:*".to_string()));
        assert!(args.contains(&"&t:acme:*".to_string()));
        for denied in ["-@dangerous", "-scan", "-randomkey", "-select"] {
            assert!(args.contains(&denied.to_string()), "{denied}");
        }
        assert!(!args.iter().any(|a| a.contains("pw") && !a.starts_with('#')));
    }

    #[test]
    fn a_reported_user_matches_only_when_every_rule_does() {
        let user = AclUser::new(&TenantNames::new("acme", None), "pw");
        let mut reported = HashMap::from([
            ("flags".to_string(), redis::Value::Array(vec![bulk("on")])),
            (
                "passwords".to_string(),
                redis::Value::Array(vec![bulk(&user.password_sha256)]),
            ),
            ("keys".to_string(), bulk("~t:acme:*")),
            ("channels".to_string(), bulk("&t:acme:*")),
            ("commands".to_string(), bulk(COMMAND_RULES)),
        ]);
        assert!(user.matches(&reported));
        reported.insert(
            "commands".to_string(),
            bulk("+@all -@dangerous -scan -select -randomkey"),
        );
        assert!(user.matches(&reported), "rule order does not matter");
        reported.insert("commands".to_string(), bulk("+@all -@dangerous -scan"));
        assert!(!user.matches(&reported));
        reported.insert("commands".to_string(), bulk(COMMAND_RULES));
        reported.insert("keys".to_string(), bulk("~*"));
        assert!(!user.matches(&reported));
    }
}
