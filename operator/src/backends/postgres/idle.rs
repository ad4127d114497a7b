//! Sessions of tenants' own logins kept idle for a short while, for the
//! next piece of work of the same tenant: a login costs a credential read,
//! a connection and a SCRAM exchange, more than an idle refresh itself.
//! Few are kept and not for long, so they never add up to a Postgres
//! backend per tenant.

use std::time::{Duration, Instant};

/// Idle sessions kept at most, across all tenants.
pub const CAPACITY: usize = 32;
/// An idle session older than this is closed rather than reused.
pub const MAX_IDLE: Duration = Duration::from_secs(60);

/// Idle items by key (backend and role), oldest first.
#[derive(Debug)]
pub struct IdleList<T> {
    items: Vec<(String, Instant, T)>,
}

impl<T> Default for IdleList<T> {
    fn default() -> Self {
        Self { items: vec![] }
    }
}

impl<T> IdleList<T> {
    /// An idle item of `key` that is still fresh at `now`; expired ones are
    /// dropped on the way.
    pub fn take(&mut self, key: &str, now: Instant) -> Option<T> {
        self.expire(now);
        let at = self.items.iter().rposition(|(k, _, _)| k == key)?;
        Some(self.items.remove(at).2)
    }

    /// Keeps `item` for `key`; the oldest goes when more than [`CAPACITY`]
    /// are kept.
    pub fn keep(&mut self, key: String, item: T, now: Instant) {
        self.expire(now);
        self.items.push((key, now, item));
        if self.items.len() > CAPACITY {
            self.items.remove(0);
        }
    }

    fn expire(&mut self, now: Instant) {
        self.items
            .retain(|(_, since, _)| now.saturating_duration_since(*since) < MAX_IDLE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_session_goes_only_to_its_own_key_and_only_while_fresh() {
        let start = Instant::now();
        let mut idle = IdleList::default();
        idle.keep("db/tenant_a".into(), 1, start);
        assert_eq!(
            idle.take("db/tenant_b", start),
            None,
            "never another tenant's"
        );
        assert_eq!(idle.take("db/tenant_a", start), Some(1));
        assert_eq!(idle.take("db/tenant_a", start), None, "taken once");
        idle.keep("db/tenant_a".into(), 2, start);
        assert_eq!(idle.take("db/tenant_a", start + MAX_IDLE), None, "expired");
    }

    #[test]
    fn at_most_capacity_are_kept_the_oldest_going_first() {
        let start = Instant::now();
        let mut idle = IdleList::default();
        for i in 0..=CAPACITY {
            idle.keep(format!("k{i}"), i, start);
        }
        assert_eq!(idle.take("k0", start), None);
        assert_eq!(idle.take(&format!("k{CAPACITY}"), start), Some(CAPACITY));
    }
}
