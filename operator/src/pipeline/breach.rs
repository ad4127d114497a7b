//! Breach transitions (pure): from the open breaches recorded at the
//! previous refresh and this refresh's evaluations, what opened and what
//! recovered. A persisting breach is no transition at all.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::api::metric::{Comparison, Objective};

/// Whether `value` breaches `objective`. Written as "not met" so that a
/// value that compares with nothing (NaN) counts as a breach, never as met.
pub fn breaches(value: f64, objective: &Objective) -> bool {
    let met = match objective.comparison {
        Comparison::AtLeast => Some(Ordering::Greater),
        Comparison::AtMost => Some(Ordering::Less),
    };
    let order = value.partial_cmp(&objective.target);
    !(order == Some(Ordering::Equal) || order == met)
}

/// One judged value: a metric over all partners (`partner: None`) or one partner's.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub metric: String,
    pub partner: Option<String>,
    pub value: f64,
    pub breached: bool,
}

impl Evaluation {
    pub fn judge(metric: &str, partner: Option<&str>, value: f64, objective: &Objective) -> Self {
        Self {
            metric: metric.to_string(),
            partner: partner.map(str::to_string),
            value,
            breached: breaches(value, objective),
        }
    }
}

/// A change of breach state.
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    Breached {
        metric: String,
        partner: Option<String>,
        value: f64,
        since: Timestamp,
        /// The deterministic delivery id of this breach.
        delivery_id: String,
    },
    Recovered {
        metric: String,
        partner: Option<String>,
        value: f64,
        /// When the breach that ended had started.
        since: Timestamp,
        delivery_id: String,
    },
}

impl Transition {
    pub fn metric(&self) -> &str {
        match self {
            Self::Breached { metric, .. } | Self::Recovered { metric, .. } => metric,
        }
    }

    pub fn partner(&self) -> Option<&str> {
        match self {
            Self::Breached { partner, .. } | Self::Recovered { partner, .. } => partner.as_deref(),
        }
    }

    pub fn value(&self) -> f64 {
        match self {
            Self::Breached { value, .. } | Self::Recovered { value, .. } => *value,
        }
    }

    pub fn since(&self) -> Timestamp {
        match self {
            Self::Breached { since, .. } | Self::Recovered { since, .. } => *since,
        }
    }

    pub fn delivery_id(&self) -> &str {
        match self {
            Self::Breached { delivery_id, .. } | Self::Recovered { delivery_id, .. } => delivery_id,
        }
    }

    /// The event type webhooks carry: `objective.breached` or `objective.recovered`.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::Breached { .. } => "objective.breached",
            Self::Recovered { .. } => "objective.recovered",
        }
    }
}

/// A breach recorded as open.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenBreach {
    pub metric: String,
    pub partner: Option<String>,
    /// When the breach started.
    pub since: Timestamp,
    /// The value when the breach started.
    pub value: f64,
}

/// What one refresh changes in the breach state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Breaches opened and recovered, in the order of the evaluations.
    pub transitions: Vec<Transition>,
    /// Open breaches of metrics no longer judged at all, closed without notice.
    pub dropped: Vec<OpenBreach>,
}

/// Decides the transitions of one refresh.
///
/// - breached, with no open breach for its (metric, partner): opens one,
///   `since` being `now` at the microsecond precision the database keeps,
///   so the stored breach and its deliveries agree on when it started;
/// - met, with an open breach: recovers it, reporting the breach's `since`;
/// - breached, with an open breach: nothing (the breach persists);
/// - an open breach without an evaluation stays open while its metric is
///   still judged: the partner may have left the window, or still breach
///   without being among the worst partners evaluated, and must not be
///   reported recovered;
/// - an open breach of a metric with no evaluation at all (removed, or its
///   objective removed) is dropped without notice: nothing says it recovered.
///
/// `pipeline` (`namespace/name`) goes into every delivery id.
pub fn transitions(
    open: &[OpenBreach],
    evaluations: &[Evaluation],
    now: Timestamp,
    pipeline: &str,
) -> Changes {
    let now = to_micros(now);
    let opened: BTreeMap<(&str, Option<&str>), &OpenBreach> = open
        .iter()
        .map(|b| ((b.metric.as_str(), b.partner.as_deref()), b))
        .collect();
    let judged: BTreeSet<&str> = evaluations.iter().map(|e| e.metric.as_str()).collect();
    let mut seen = BTreeSet::new();
    let mut out = Changes::default();
    for evaluation in evaluations {
        let key = (evaluation.metric.as_str(), evaluation.partner.as_deref());
        // Only the first evaluation of a (metric, partner) counts.
        if !seen.insert(key) {
            continue;
        }
        match (evaluation.breached, opened.get(&key)) {
            (true, None) => out.transitions.push(Transition::Breached {
                metric: evaluation.metric.clone(),
                partner: evaluation.partner.clone(),
                value: evaluation.value,
                since: now,
                delivery_id: delivery_id(
                    pipeline,
                    &evaluation.metric,
                    evaluation.partner.as_deref(),
                    now,
                    Kind::Breached,
                ),
            }),
            (false, Some(breach)) => out.transitions.push(Transition::Recovered {
                metric: evaluation.metric.clone(),
                partner: evaluation.partner.clone(),
                value: evaluation.value,
                since: breach.since,
                delivery_id: delivery_id(
                    pipeline,
                    &evaluation.metric,
                    evaluation.partner.as_deref(),
                    breach.since,
                    Kind::Recovered,
                ),
            }),
            (true, Some(_)) | (false, None) => {}
        }
    }
    out.dropped = open
        .iter()
        .filter(|b| !judged.contains(b.metric.as_str()))
        .cloned()
        .collect();
    out
}

/// Which end of a breach a delivery announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Breached,
    Recovered,
}

/// The delivery id of one end of one breach: `msg_` and 32 hex digits of a
/// SHA-256 over the pipeline (`namespace/name`), metric, partner (none for
/// all partners), the breach's start in microseconds and the kind. Only
/// stored facts go in, so a retry, a restart or another leader derives the
/// same id for the same breach.
pub fn delivery_id(
    pipeline: &str,
    metric: &str,
    partner: Option<&str>,
    since: Timestamp,
    kind: Kind,
) -> String {
    let kind = match kind {
        Kind::Breached => "breached",
        Kind::Recovered => "recovered",
    };
    // A JSON array keeps the fields apart whatever they contain, and tells
    // "all partners" (null) from any partner's name.
    let material = json!([pipeline, metric, partner, since.as_microsecond(), kind]).to_string();
    let digest = Sha256::digest(material.as_bytes());
    format!("msg_{}", hex::encode(&digest[..16]))
}

/// `at`, truncated to whole microseconds (what a `timestamptz` keeps).
pub fn to_micros(at: Timestamp) -> Timestamp {
    Timestamp::from_microsecond(at.as_microsecond()).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPELINE: &str = "ptn-acme/response";

    fn at_most(target: f64) -> Objective {
        Objective {
            comparison: Comparison::AtMost,
            target,
        }
    }

    fn at_least(target: f64) -> Objective {
        Objective {
            comparison: Comparison::AtLeast,
            target,
        }
    }

    fn ts(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn open(metric: &str, partner: Option<&str>, since: Timestamp) -> OpenBreach {
        OpenBreach {
            metric: metric.into(),
            partner: partner.map(Into::into),
            since,
            value: 30.0,
        }
    }

    #[test]
    fn judging_follows_the_comparison_and_counts_nan_as_breached() {
        assert!(!Evaluation::judge("m", None, 24.0, &at_most(24.0)).breached);
        assert!(Evaluation::judge("m", None, 24.5, &at_most(24.0)).breached);
        assert!(!Evaluation::judge("m", None, 0.95, &at_least(0.95)).breached);
        assert!(Evaluation::judge("m", Some("p"), 0.9, &at_least(0.95)).breached);
        assert!(Evaluation::judge("m", None, f64::NAN, &at_least(0.95)).breached);
        assert!(Evaluation::judge("m", None, f64::NAN, &at_most(24.0)).breached);
        let judged = Evaluation::judge("m", Some("p"), 1.0, &at_most(2.0));
        assert_eq!(
            (judged.metric.as_str(), judged.partner.as_deref()),
            ("m", Some("p"))
        );
    }

    #[test]
    fn a_new_breach_opens_with_now_as_its_start() {
        let now = ts(1_700_000_000);
        let evaluations = [Evaluation::judge("m", Some("p"), 30.0, &at_most(24.0))];
        let changes = transitions(&[], &evaluations, now, PIPELINE);
        assert_eq!(
            changes.transitions,
            [Transition::Breached {
                metric: "m".into(),
                partner: Some("p".into()),
                value: 30.0,
                since: now,
                delivery_id: delivery_id(PIPELINE, "m", Some("p"), now, Kind::Breached),
            }]
        );
        assert!(changes.dropped.is_empty());
    }

    #[test]
    fn the_start_is_kept_at_microseconds() {
        let now = Timestamp::new(1_700_000_000, 123_456_789).unwrap();
        let evaluations = [Evaluation::judge("m", None, 30.0, &at_most(24.0))];
        let changes = transitions(&[], &evaluations, now, PIPELINE);
        assert_eq!(
            changes.transitions[0].since(),
            Timestamp::new(1_700_000_000, 123_456_000).unwrap()
        );
    }

    #[test]
    fn a_persisting_breach_is_no_transition() {
        let since = ts(1_700_000_000);
        let evaluations = [Evaluation::judge("m", Some("p"), 31.0, &at_most(24.0))];
        let changes = transitions(
            &[open("m", Some("p"), since)],
            &evaluations,
            ts(1_700_003_600),
            PIPELINE,
        );
        assert_eq!(changes, Changes::default());
    }

    #[test]
    fn a_met_objective_recovers_the_open_breach_with_its_start() {
        let since = ts(1_700_000_000);
        let evaluations = [
            Evaluation::judge("m", None, 20.0, &at_most(24.0)),
            Evaluation::judge("m", Some("q"), 10.0, &at_most(24.0)),
        ];
        let changes = transitions(
            &[open("m", None, since)],
            &evaluations,
            ts(1_700_003_600),
            PIPELINE,
        );
        assert_eq!(
            changes.transitions,
            [Transition::Recovered {
                metric: "m".into(),
                partner: None,
                value: 20.0,
                since,
                delivery_id: delivery_id(PIPELINE, "m", None, since, Kind::Recovered),
            }]
        );
    }

    #[test]
    fn an_open_breach_without_evaluation_stays_open_while_its_metric_is_judged() {
        let since = ts(1_700_000_000);
        let evaluations = [Evaluation::judge("m", None, 20.0, &at_most(24.0))];
        let changes = transitions(
            &[open("m", Some("gone"), since)],
            &evaluations,
            ts(1_700_003_600),
            PIPELINE,
        );
        assert_eq!(changes, Changes::default());
    }

    #[test]
    fn open_breaches_of_a_metric_no_longer_judged_are_dropped_silently() {
        let since = ts(1_700_000_000);
        let removed = [open("old", None, since), open("old", Some("p"), since)];
        let evaluations = [Evaluation::judge("m", None, 20.0, &at_most(24.0))];
        let changes = transitions(&removed, &evaluations, ts(1_700_003_600), PIPELINE);
        assert!(changes.transitions.is_empty());
        assert_eq!(changes.dropped, removed);
    }

    #[test]
    fn a_repeated_evaluation_opens_one_breach() {
        let evaluations = [
            Evaluation::judge("m", Some("p"), 30.0, &at_most(24.0)),
            Evaluation::judge("m", Some("p"), 30.0, &at_most(24.0)),
        ];
        assert_eq!(
            transitions(&[], &evaluations, ts(1), PIPELINE)
                .transitions
                .len(),
            1
        );
    }

    #[test]
    fn delivery_ids_are_stable_and_tell_every_input_apart() {
        let since = ts(1_700_000_000);
        let id = delivery_id(PIPELINE, "m", Some("p"), since, Kind::Breached);
        assert_eq!(
            id,
            delivery_id(PIPELINE, "m", Some("p"), since, Kind::Breached)
        );
        assert!(id.starts_with("msg_") && id.len() == 4 + 32, "{id}");
        assert!(id[4..].chars().all(|c| c.is_ascii_hexdigit()));
        let others = [
            delivery_id("ptn-acme/other", "m", Some("p"), since, Kind::Breached),
            delivery_id(PIPELINE, "n", Some("p"), since, Kind::Breached),
            delivery_id(PIPELINE, "m", Some("q"), since, Kind::Breached),
            delivery_id(PIPELINE, "m", None, since, Kind::Breached),
            delivery_id(PIPELINE, "m", Some("*"), since, Kind::Breached),
            delivery_id(PIPELINE, "m", Some("p"), ts(1_700_000_001), Kind::Breached),
            delivery_id(PIPELINE, "m", Some("p"), since, Kind::Recovered),
        ];
        let mut all: BTreeSet<&str> = others.iter().map(String::as_str).collect();
        all.insert(&id);
        assert_eq!(all.len(), others.len() + 1);
    }

    #[test]
    fn recovery_ids_follow_from_the_stored_start_alone() {
        // Two refreshes (another leader, a retry) seeing the same open
        // breach recover it under the same id, whenever they run.
        let since = ts(1_700_000_000);
        let evaluations = [Evaluation::judge("m", Some("p"), 1.0, &at_most(24.0))];
        let first = transitions(
            &[open("m", Some("p"), since)],
            &evaluations,
            ts(1_700_003_600),
            PIPELINE,
        );
        let second = transitions(
            &[open("m", Some("p"), since)],
            &evaluations,
            ts(1_700_007_200),
            PIPELINE,
        );
        assert_eq!(first, second);
    }
}
