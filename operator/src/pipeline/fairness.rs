//! At most half of the controller's workers (at least one) work on one
//! tenant's pipelines — those of one namespace, which has one tenant — at a
//! time, so one tenant's slow pipelines (slow sources, slow triggers of its
//! own, slow webhook receivers) never hold all of them, and every other
//! tenant's refreshes go on. A pipeline whose tenant is at its limit is
//! looked at again shortly, without holding a worker meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How soon a pipeline whose tenant was at its limit is looked at again
/// (jittered, so that waiting pipelines do not come back together).
pub const BUSY_RETRY: Duration = Duration::from_millis(50);

/// How many of each tenant's pipelines are being worked on.
#[derive(Debug, Clone)]
pub struct TenantTurns {
    limit: usize,
    busy: Arc<Mutex<HashMap<String, usize>>>,
}

/// A turn of a tenant's; given back when dropped.
#[derive(Debug)]
pub struct Turn {
    busy: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl TenantTurns {
    /// Turns for a controller of `workers` workers.
    pub fn new(workers: u16) -> Self {
        Self {
            limit: usize::from(workers / 2).max(1),
            busy: Arc::default(),
        }
    }

    /// A turn of the tenant's, unless it has its limit already.
    pub fn take(&self, tenant: &str) -> Option<Turn> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let taken = busy.entry(tenant.to_string()).or_default();
        if *taken >= self.limit {
            return None;
        }
        *taken += 1;
        Some(Turn {
            busy: self.busy.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(taken) = busy.get_mut(&self.tenant) {
            *taken -= 1;
            if *taken == 0 {
                busy.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_has_at_most_half_the_workers_and_others_are_not_held_up() {
        let turns = TenantTurns::new(4);
        let a1 = turns.take("a").expect("a's first turn");
        let a2 = turns.take("a").expect("a's second turn");
        assert!(turns.take("a").is_none(), "a third pipeline of a waits");
        let b = turns.take("b").expect("another tenant goes on");
        drop(a1);
        assert!(turns.take("a").is_some(), "a's turn is given back");
        drop((a2, b));
        assert!(turns.busy.lock().unwrap().is_empty(), "nothing left over");
    }

    #[test]
    fn one_worker_still_gives_every_tenant_a_turn() {
        let turns = TenantTurns::new(1);
        let a = turns.take("a").expect("a's turn");
        assert!(turns.take("a").is_none());
        drop(a);
    }
}
