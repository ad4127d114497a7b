//! Adding the cleanup finalizer in the reconcile that provisions the
//! tenant, rather than in one of its own: kube's `finalizer` helper adds it
//! and stops, and the watch event of that write starts the provisioning —
//! a second queue pass and read of every new tenant. The event is still
//! sent; [`Echoes`] recognises it so that it starts nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use super::FINALIZER;
use crate::api::PartnerTenant;
use crate::metrics::Metrics;

/// How long an announced write waits for its event before it is dropped
/// (a tenant deleted meanwhile, whose watch relisted past it).
const ECHO_WAIT: Duration = Duration::from_secs(300);

/// What a reconcile's own finalizer write will look like to the tenant
/// watch's filter (`worth_reconciling`), per tenant uid: a later tenant of
/// the same name is another.
#[derive(Debug, Default)]
pub struct Echoes(Mutex<HashMap<String, (u64, Instant)>>);

impl Echoes {
    fn expect(&self, uid: &str, seen: u64) {
        let mut expected = self.lock();
        expected.retain(|_, (_, at)| at.elapsed() < ECHO_WAIT);
        expected.insert(uid.to_string(), (seen, Instant::now()));
    }

    fn forget(&self, uid: &str) {
        self.lock().remove(uid);
    }

    /// Whether an event for the tenant `uid` that passed the filter as
    /// `seen` is the echo of the finalizer write. Any event for the tenant
    /// ends the wait: one that differs is someone else's change, and
    /// reconciles.
    pub fn is_echo(&self, uid: &str, seen: u64) -> bool {
        self.lock()
            .remove(uid)
            .is_some_and(|(expected, _)| expected == seen)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Instant)>> {
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
    let uid = tenant.uid().unwrap_or_default();
    let with = with_finalizer(tenant);
    if let Some(seen) = fingerprint(&with) {
        echoes.expect(&uid, seen);
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
            echoes.forget(&uid);
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
        echoes.expect("uid-1", 7);
        // Another tenant, or a later one of the same name.
        assert!(!echoes.is_echo("uid-2", 7));
        assert!(echoes.is_echo("uid-1", 7));
        // Used once.
        assert!(!echoes.is_echo("uid-1", 7));
        echoes.expect("uid-1", 7);
        // Someone else's change came first: it reconciles, and so does what follows.
        assert!(!echoes.is_echo("uid-1", 8));
        assert!(!echoes.is_echo("uid-1", 7));
    }
}
