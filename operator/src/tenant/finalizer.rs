//! Adding the cleanup finalizer in the reconcile that provisions the
//! tenant, rather than in one of its own: kube's `finalizer` helper adds it
//! and stops, and the watch event of that write starts the provisioning —
//! a second queue pass and read of every new tenant. The event is still
//! sent; [`Echoes`] recognises it so that it starts nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::FINALIZER;
use crate::api::PartnerTenant;
use crate::metrics::Metrics;

/// What a reconcile's own finalizer write will look like to the tenant
/// watch's filter (`worth_reconciling`), per tenant.
#[derive(Debug, Default)]
pub struct Echoes(Mutex<HashMap<String, u64>>);

impl Echoes {
    fn expect(&self, name: &str, seen: u64) {
        self.lock().insert(name.to_string(), seen);
    }

    fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Whether an event for `name` that passed the filter as `seen` is the
    /// echo of the finalizer write. Any event for `name` ends the wait: one
    /// that differs is a change of someone else's, and reconciles.
    pub fn is_echo(&self, name: &str, seen: u64) -> bool {
        self.lock().remove(name) == Some(seen)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Whether `tenant` still needs the finalizer: not being deleted (a tenant
/// deleted before it had one has nothing of the operator's to clean up).
pub fn missing(tenant: &PartnerTenant) -> bool {
    tenant.meta().deletion_timestamp.is_none()
        && !tenant.finalizers().iter().any(|f| f == FINALIZER)
}

/// `tenant` with the finalizer added to what it has, written only if the
/// tenant is still the version read (a conflict retries the reconcile).
pub fn with_finalizer(tenant: &PartnerTenant) -> PartnerTenant {
    let mut with = tenant.clone();
    with.finalizers_mut().push(FINALIZER.to_string());
    with
}

/// Adds the finalizer and returns the tenant as written. `fingerprint` is
/// the watch filter's view of a tenant, announced before the write (its
/// event can arrive before the response does).
pub async fn add(
    api: &Api<PartnerTenant>,
    tenant: &PartnerTenant,
    echoes: &Echoes,
    metrics: &Metrics,
    fingerprint: impl Fn(&PartnerTenant) -> Option<u64>,
) -> Result<Arc<PartnerTenant>, kube::Error> {
    let name = tenant.name_any();
    let with = with_finalizer(tenant);
    if let Some(seen) = fingerprint(&with) {
        echoes.expect(&name, seen);
    }
    let patch = serde_json::json!({
        "metadata": {
            "finalizers": with.finalizers(),
            "resourceVersion": tenant.resource_version(),
        }
    });
    let written = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    match written {
        Ok(written) => {
            crate::apply::count_write::<PartnerTenant>(metrics);
            Ok(Arc::new(written))
        }
        Err(e) => {
            echoes.forget(&name);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PartnerTenantSpec;

    fn tenant(finalizers: &[&str]) -> PartnerTenant {
        let spec: PartnerTenantSpec = serde_yaml::from_str("displayName: Acme").unwrap();
        let mut t = PartnerTenant::new("acme", spec);
        t.metadata.finalizers =
            (!finalizers.is_empty()).then(|| finalizers.iter().map(|f| f.to_string()).collect());
        t
    }

    #[test]
    fn the_finalizer_is_added_after_others_and_only_once() {
        let t = tenant(&["example.com/other"]);
        assert!(missing(&t));
        let with = with_finalizer(&t);
        assert_eq!(with.finalizers(), ["example.com/other", FINALIZER]);
        assert!(!missing(&with));
    }

    #[test]
    fn a_tenant_being_deleted_gets_no_finalizer() {
        let mut t = tenant(&[]);
        t.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            Default::default(),
        ));
        assert!(!missing(&t));
    }

    #[test]
    fn only_the_announced_event_is_an_echo_and_any_event_ends_the_wait() {
        let echoes = Echoes::default();
        echoes.expect("acme", 7);
        assert!(!echoes.is_echo("other", 7));
        assert!(echoes.is_echo("acme", 7));
        // Used once.
        assert!(!echoes.is_echo("acme", 7));
        echoes.expect("acme", 7);
        // Someone else's change came first: it reconciles, and so does what follows.
        assert!(!echoes.is_echo("acme", 8));
        assert!(!echoes.is_echo("acme", 7));
    }
}
