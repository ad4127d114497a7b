//! Whose namespace is it? The decision that gates every namespaced part of a
//! tenant, as a pure function of a live read of the namespace.
//!
//! A namespace belongs to a tenant when the operator created it for that
//! tenant (its UID is recorded on the namespace at creation) or when the
//! namespace itself opts in to being adopted by that tenant by name. Nothing
//! else is ever taken over: a namespace made by someone else, another
//! tenant's, one kept from an earlier tenant of the same name, or one the
//! operator must never touch (its own, the system namespaces).

use std::collections::BTreeMap;

/// The tenant's name (labels are limited to 63 characters, so an annotation).
pub const TENANT_NAME: &str = "partnerplane.io/tenant-name";
/// UID of the tenant the namespace belongs to.
pub const TENANT_UID: &str = "partnerplane.io/tenant-uid";
/// How the namespace came to the tenant: `created` (the operator made it, so
/// `deletionPolicy: Delete` may delete it) or `adopted` (it existed before;
/// it is never deleted).
pub const ORIGIN: &str = "partnerplane.io/origin";
/// Set on a namespace, by an admin or by the operator when the CRDs are
/// deleted, to let the tenant of that name adopt it.
pub const ADOPT_BY: &str = "partnerplane.io/adopt-by";

/// Namespaces no tenant may ever use, whatever they are annotated with.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Created,
    Adopted,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Adopted => "adopted",
        }
    }

    fn parse(value: Option<&String>) -> Self {
        match value.map(String::as_str) {
            Some("adopted") => Self::Adopted,
            // Namespaces recorded before origins existed were all created by the operator.
            _ => Self::Created,
        }
    }
}

/// What a live read shows of the namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub annotations: BTreeMap<String, String>,
    pub terminating: bool,
}

/// The decision for one reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The namespace does not exist: the operator creates it for the tenant.
    Create,
    /// The namespace is the tenant's; `adopting` when this reconcile takes it
    /// over through the opt-in annotation.
    Owned { origin: Origin, adopting: bool },
    /// The namespace is being deleted; wait until it is gone.
    Terminating,
    /// Never the tenant's; the message names the namespace and why.
    Refused(String),
}

/// What else is known about the tenant when deciding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Context<'a> {
    /// The tenant's UID.
    pub uid: &'a str,
    /// Namespaces no tenant may use.
    pub protected: &'a [String],
    /// The tenant's status already names this namespace as its own.
    pub recorded: bool,
    /// Another namespace kept from an earlier tenant of the same name, whose
    /// backend data (keyed by the name) is kept for it.
    pub kept_elsewhere: Option<&'a str>,
}

/// Decides whether `namespace` is, or may become, the tenant's.
pub fn decide(
    namespace: &str,
    observed: Option<&Observed>,
    tenant: &str,
    known: &Context<'_>,
) -> Claim {
    let (uid, protected) = (known.uid, known.protected);
    if SYSTEM_NAMESPACES.contains(&namespace) || protected.iter().any(|p| p == namespace) {
        return Claim::Refused(format!(
            "namespace {namespace} is reserved for the cluster or the operator and cannot belong to a tenant"
        ));
    }
    let Some(observed) = observed else {
        return match known.kept_elsewhere {
            // A new tenant reusing the name would inherit the kept schema,
            // keys and secrets: that takes the same explicit opt-in.
            Some(kept) => Claim::Refused(format!(
                "the name {tenant} was used by an earlier tenant whose data is kept with namespace {kept}; \
                 to reuse it, set spec.namespace to {kept} and annotate that namespace {ADOPT_BY}={tenant}"
            )),
            None => Claim::Create,
        };
    };
    let get = |key: &str| observed.annotations.get(key);
    let origin = Origin::parse(get(ORIGIN));
    let named_for_us = get(TENANT_NAME).is_some_and(|n| n == tenant);
    let ours = match get(TENANT_UID) {
        Some(recorded) => named_for_us && recorded == uid,
        // Recorded before UIDs were: only the namespace this tenant's status
        // already names (an annotation alone can be copied).
        None => named_for_us && known.recorded,
    };
    if observed.terminating {
        return Claim::Terminating;
    }
    if ours {
        return Claim::Owned {
            origin,
            adopting: false,
        };
    }
    if get(ADOPT_BY).is_some_and(|n| n == tenant) {
        let origin = if named_for_us {
            origin
        } else {
            Origin::Adopted
        };
        return Claim::Owned {
            origin,
            adopting: true,
        };
    }
    let hint = format!("annotate it {ADOPT_BY}={tenant} to let this tenant adopt it");
    Claim::Refused(match get(TENANT_NAME) {
        Some(other) if other == tenant => {
            format!("namespace {namespace} was kept from an earlier tenant named {tenant}; {hint}")
        }
        Some(other) => format!("namespace {namespace} belongs to tenant {other}"),
        None => format!("namespace {namespace} exists and was not created by partnerplane; {hint}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(pairs: &[(&str, &str)]) -> Observed {
        Observed {
            annotations: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            terminating: false,
        }
    }

    const PROTECTED: &[String] = &[];

    fn known() -> Context<'static> {
        Context {
            uid: "uid-1",
            protected: PROTECTED,
            recorded: false,
            kept_elsewhere: None,
        }
    }

    fn decide_for(observed: Option<&Observed>) -> Claim {
        decide("ns", observed, "acme", &known())
    }

    #[test]
    fn a_missing_namespace_is_created() {
        assert_eq!(decide_for(None), Claim::Create);
    }

    #[test]
    fn the_namespace_created_for_this_tenant_is_owned() {
        let ns = observed(&[
            (TENANT_NAME, "acme"),
            (TENANT_UID, "uid-1"),
            (ORIGIN, "created"),
        ]);
        assert_eq!(
            decide_for(Some(&ns)),
            Claim::Owned {
                origin: Origin::Created,
                adopting: false
            }
        );
    }

    #[test]
    fn a_foreign_namespace_is_refused_even_with_our_labels_copied() {
        let plain = observed(&[("team", "billing")]);
        assert!(
            matches!(decide_for(Some(&plain)), Claim::Refused(m) if m.contains("not created by partnerplane") && m.contains("ns"))
        );
        let other = observed(&[(TENANT_NAME, "globex"), (TENANT_UID, "uid-9")]);
        assert!(
            matches!(decide_for(Some(&other)), Claim::Refused(m) if m.contains("belongs to tenant globex"))
        );
    }

    #[test]
    fn a_namespace_kept_from_an_earlier_tenant_of_the_same_name_needs_an_opt_in() {
        let kept = observed(&[(TENANT_NAME, "acme"), (TENANT_UID, "uid-0")]);
        assert!(
            matches!(decide_for(Some(&kept)), Claim::Refused(m) if m.contains("earlier tenant") && m.contains(ADOPT_BY))
        );
        let opted = observed(&[
            (TENANT_NAME, "acme"),
            (TENANT_UID, "uid-0"),
            (ORIGIN, "created"),
            (ADOPT_BY, "acme"),
        ]);
        assert_eq!(
            decide_for(Some(&opted)),
            Claim::Owned {
                origin: Origin::Created,
                adopting: true
            }
        );
    }

    #[test]
    fn an_opted_in_foreign_namespace_is_adopted_and_never_counts_as_created() {
        let ns = observed(&[(ADOPT_BY, "acme")]);
        assert_eq!(
            decide_for(Some(&ns)),
            Claim::Owned {
                origin: Origin::Adopted,
                adopting: true
            }
        );
        let for_someone_else = observed(&[(ADOPT_BY, "globex")]);
        assert!(matches!(
            decide_for(Some(&for_someone_else)),
            Claim::Refused(_)
        ));
    }

    #[test]
    fn reserved_namespaces_are_refused_whatever_they_say() {
        let opted = observed(&[(ADOPT_BY, "acme")]);
        let protected = ["partnerplane-system".to_string()];
        let known = Context {
            protected: &protected,
            ..known()
        };
        for ns in ["partnerplane-system", "kube-system", "default"] {
            let claim = decide(ns, Some(&opted), "acme", &known);
            assert!(matches!(claim, Claim::Refused(m) if m.contains(ns)), "{ns}");
        }
    }

    #[test]
    fn a_namespace_without_a_uid_is_ours_only_when_the_status_says_so() {
        let legacy = observed(&[(TENANT_NAME, "acme")]);
        assert!(matches!(decide_for(Some(&legacy)), Claim::Refused(_)));
        let recorded = Context {
            recorded: true,
            ..known()
        };
        assert_eq!(
            decide("ns", Some(&legacy), "acme", &recorded),
            Claim::Owned {
                origin: Origin::Created,
                adopting: false
            }
        );
    }

    #[test]
    fn a_new_tenant_reusing_a_retained_name_is_refused() {
        let kept = Context {
            kept_elsewhere: Some("ptn-acme-old"),
            ..known()
        };
        assert!(
            matches!(decide("ns", None, "acme", &kept), Claim::Refused(m) if m.contains("ptn-acme-old"))
        );
    }

    #[test]
    fn a_terminating_namespace_is_waited_for() {
        let mut ns = observed(&[(TENANT_NAME, "acme"), (TENANT_UID, "uid-1")]);
        ns.terminating = true;
        assert_eq!(decide_for(Some(&ns)), Claim::Terminating);
    }
}
