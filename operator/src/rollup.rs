//! Conditions rolled up the same way for every kind: one condition per part,
//! then the kstatus conditions `Ready`, `Reconciling` and `Stalled`, or held
//! as `Suspended` while the spec says so.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use crate::api::conditions::{self, READY, RECONCILING, STALLED};

/// Present, and `True`, only while `spec.suspend` is true.
pub const SUSPENDED: &str = "Suspended";

/// The outcome of one part of a reconcile.
#[derive(Debug, Clone)]
pub struct PartOutcome {
    pub condition: &'static str,
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub permanent: bool,
}

impl PartOutcome {
    pub fn ready(condition: &'static str, message: impl Into<String>) -> Self {
        Self {
            condition,
            ready: true,
            reason: "Provisioned",
            message: message.into(),
            permanent: false,
        }
    }

    pub fn failed(
        condition: &'static str,
        reason: &'static str,
        message: String,
        permanent: bool,
    ) -> Self {
        Self {
            condition,
            ready: false,
            reason,
            message,
            permanent,
        }
    }
}

/// Applies the parts' outcomes to `existing` conditions and rolls them up.
pub fn roll_up(
    existing: &[Condition],
    parts: &[PartOutcome],
    generation: Option<i64>,
    ready_message: &str,
) -> Vec<Condition> {
    let mut out = existing.to_vec();
    // A reconcile that runs the parts is no longer suspended.
    out.retain(|c| c.type_ != SUSPENDED);
    for part in parts {
        conditions::upsert(
            &mut out,
            conditions::new(
                part.condition,
                part.ready,
                part.reason,
                part.message.clone(),
                generation,
            ),
        );
    }
    let failed: Vec<&PartOutcome> = parts.iter().filter(|p| !p.ready).collect();
    let ready = failed.is_empty();
    let stalled = failed.iter().find(|p| p.permanent);
    let (reason, message) = match (failed.first(), stalled) {
        (_, Some(p)) => (p.reason, format!("{}: {}", p.condition, p.message)),
        (Some(p), None) => (p.reason, format!("{}: {}", p.condition, p.message)),
        (None, None) => ("Provisioned", ready_message.to_string()),
    };
    conditions::upsert(
        &mut out,
        conditions::new(READY, ready, reason, message.clone(), generation),
    );
    conditions::upsert(
        &mut out,
        conditions::new(
            RECONCILING,
            !ready && stalled.is_none(),
            if ready { "Provisioned" } else { reason },
            if ready {
                String::new()
            } else {
                message.clone()
            },
            generation,
        ),
    );
    conditions::upsert(
        &mut out,
        conditions::new(
            STALLED,
            stalled.is_some(),
            stalled.map_or("Progressing", |p| p.reason),
            stalled.map_or(String::new(), |_| message),
            generation,
        ),
    );
    out
}

/// The conditions of a suspended object: settled, so that kstatus reads it as
/// `Current` once `observedGeneration` matches, with `Suspended=True` saying
/// why nothing moves. Part conditions are kept as last observed; `Ready`
/// stays `True` if it was, since suspending leaves provisioned state as is.
/// An object suspended while not ready has no `Ready` condition: kstatus
/// reads `Ready=False` (or `Unknown`) as InProgress, and nothing moves while
/// suspended, so a Flux `wait` or an Argo CD sync wave would hang on it; the
/// part conditions still say what is missing.
pub fn suspended(existing: &[Condition], generation: Option<i64>) -> Vec<Condition> {
    const REASON: &str = "Suspended";
    let mut out = existing.to_vec();
    let message = if conditions::is_true(&out, READY) {
        "spec.suspend is true: the operator leaves provisioned state as is"
    } else {
        out.retain(|c| c.type_ != READY);
        "spec.suspend is true: the operator leaves provisioned state as is \
         (suspended while not every part is provisioned)"
    };
    conditions::upsert(
        &mut out,
        conditions::new(RECONCILING, false, REASON, "", generation),
    );
    conditions::upsert(
        &mut out,
        conditions::new(STALLED, false, REASON, "", generation),
    );
    conditions::upsert(
        &mut out,
        conditions::new(SUSPENDED, true, REASON, message, generation),
    );
    out
}
