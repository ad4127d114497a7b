//! At most one pipeline of a tenant (of a namespace, which has one tenant)
//! is worked on at a time, so one
//! tenant's slow pipelines — slow sources, slow triggers of its own, slow
//! webhook receivers — hold at most one of the controller's workers, and
//! every other tenant's refreshes go on. A pipeline whose tenant is busy
//! is looked at again shortly, without holding a worker meanwhile.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How soon a pipeline whose tenant was busy is looked at again (jittered,
/// so that waiting pipelines do not come back together).
pub const BUSY_RETRY: Duration = Duration::from_millis(200);

/// The tenants a pipeline is being worked on for.
#[derive(Debug, Default, Clone)]
pub struct TenantTurns {
    busy: Arc<Mutex<HashSet<String>>>,
}

/// A tenant's turn; given back when dropped.
#[derive(Debug)]
pub struct Turn {
    busy: Arc<Mutex<HashSet<String>>>,
    tenant: String,
}

impl TenantTurns {
    /// The tenant's turn, unless another of its pipelines has it.
    pub fn take(&self, tenant: &str) -> Option<Turn> {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        busy.insert(tenant.to_string()).then(|| Turn {
            busy: self.busy.clone(),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_has_one_turn_at_a_time_and_others_are_not_held_up() {
        let turns = TenantTurns::default();
        let a = turns.take("a").expect("a's turn");
        assert!(turns.take("a").is_none(), "a second pipeline of a waits");
        let b = turns.take("b").expect("another tenant goes on");
        drop(a);
        assert!(turns.take("a").is_some(), "a's turn is given back");
        drop(b);
    }
}
