//! Credentials the operator generates for a tenant, and the connection
//! details that go with them. `Debug` never prints a password.

use std::collections::BTreeMap;

use rand::distr::{Alphanumeric, SampleString};

/// A tenant's generated passwords.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub postgres_password: String,
    pub redis_password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

const POSTGRES_PASSWORD: &str = "PGPASSWORD";
const REDIS_PASSWORD: &str = "REDIS_PASSWORD";

/// Where a reconcile's credentials came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Read from the tenant's credential store: every backend is made to accept them.
    Stored,
    /// None was stored: freshly generated, and set on every backend.
    Generated,
    /// The primary store could not be read: existing backends keep the
    /// passwords they have; only parts that do not exist yet get these.
    StoreUnavailable,
}

/// What one credential store holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRead {
    Found(Credentials),
    Missing,
    Unreadable,
}

/// Which credentials a reconcile applies. The primary store (Vault/OpenBao
/// when the tenant uses it, else the Kubernetes Secret) is the truth: an edit
/// there rotates the backends. A lost primary is restored from the secondary;
/// with both lost, new credentials are generated and set everywhere.
pub fn choose(primary: StoreRead, secondary: Option<StoreRead>) -> (Credentials, Origin) {
    let secondary_unreadable = secondary == Some(StoreRead::Unreadable);
    let fallback = match secondary {
        Some(StoreRead::Found(c)) => Some(c),
        _ => None,
    };
    match primary {
        StoreRead::Found(c) => (c, Origin::Stored),
        StoreRead::Missing => match (fallback, secondary_unreadable) {
            (Some(c), _) => (c, Origin::Stored),
            // Nothing can be said to be lost while the other store is unread.
            (None, true) => (Credentials::generate(), Origin::StoreUnavailable),
            (None, false) => (Credentials::generate(), Origin::Generated),
        },
        StoreRead::Unreadable => (
            fallback.unwrap_or_else(Credentials::generate),
            Origin::StoreUnavailable,
        ),
    }
}

/// A Secret's values that are text, by key.
pub fn secret_text(secret: k8s_openapi::api::core::v1::Secret) -> BTreeMap<String, String> {
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| Some((k, String::from_utf8(v.0).ok()?)))
        .collect()
}

impl Credentials {
    /// 32 random alphanumeric characters per password.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        Self {
            postgres_password: Alphanumeric.sample_string(&mut rng, 32),
            redis_password: Alphanumeric.sample_string(&mut rng, 32),
        }
    }

    /// Reads the passwords back from a stored map; `None` if either is missing.
    /// A password that is empty or holds whitespace, quotes, backslashes or
    /// control characters (an edited store) counts as missing: it could
    /// break the configuration files it is written into.
    pub fn from_map(map: &BTreeMap<String, String>) -> Option<Self> {
        let usable = |key: &str| {
            map.get(key)
                .filter(|p| {
                    !p.is_empty()
                        && p.chars()
                            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\'))
                })
                .cloned()
        };
        Some(Self {
            postgres_password: usable(POSTGRES_PASSWORD)?,
            redis_password: usable(REDIS_PASSWORD)?,
        })
    }

    /// The stored form: passwords plus everything a client needs to connect.
    pub fn to_map(&self, connection: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut map = connection.clone();
        map.insert(POSTGRES_PASSWORD.into(), self.postgres_password.clone());
        map.insert(REDIS_PASSWORD.into(), self.redis_password.clone());
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_passwords() {
        let c = Credentials::generate();
        let printed = format!("{c:?}");
        assert!(!printed.contains(&c.postgres_password));
        assert!(!printed.contains(&c.redis_password));
    }

    #[test]
    fn the_primary_store_wins_and_a_lost_one_is_restored_from_the_secondary() {
        let (vault, secret) = (Credentials::generate(), Credentials::generate());
        let found = |c: &Credentials| StoreRead::Found(c.clone());
        assert_eq!(
            choose(found(&vault), Some(found(&secret))),
            (vault.clone(), Origin::Stored)
        );
        assert_eq!(
            choose(StoreRead::Missing, Some(found(&secret))),
            (secret.clone(), Origin::Stored)
        );
        let (fresh, origin) = choose(StoreRead::Missing, Some(StoreRead::Missing));
        assert_eq!(origin, Origin::Generated);
        assert_ne!(fresh, secret);
        assert_eq!(
            choose(StoreRead::Unreadable, Some(found(&secret))),
            (secret, Origin::StoreUnavailable)
        );
        assert_eq!(
            choose(StoreRead::Unreadable, None).1,
            Origin::StoreUnavailable
        );
        assert_eq!(choose(StoreRead::Missing, None).1, Origin::Generated);
        assert_eq!(
            choose(StoreRead::Missing, Some(StoreRead::Unreadable)).1,
            Origin::StoreUnavailable
        );
    }

    #[test]
    fn a_password_that_could_break_a_config_line_counts_as_missing() {
        let c = Credentials::generate();
        let mut map = c.to_map(&BTreeMap::new());
        map.insert(
            REDIS_PASSWORD.into(),
            "x\nrename-command CONFIG \"\"".into(),
        );
        assert_eq!(Credentials::from_map(&map), None);
        map.insert(REDIS_PASSWORD.into(), String::new());
        assert_eq!(Credentials::from_map(&map), None);
    }

    #[test]
    fn passwords_round_trip_through_the_stored_map() {
        let c = Credentials::generate();
        let map = c.to_map(&BTreeMap::from([("PGHOST".into(), "db".into())]));
        assert_eq!(map["PGHOST"], "db");
        assert_eq!(Credentials::from_map(&map), Some(c));
        assert_ne!(Credentials::generate(), Credentials::generate());
    }
}
