//! The pipeline's status from what a refresh found: per-metric values, the
//! worst partners, forecasts, and the conditions (pure).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::civil::Date;

use crate::api::conditions;
use crate::api::metric::{Comparison, Identifier, Objective};
use crate::api::pipeline::{
    MetricPipelineSpec, MetricStatus, PartnerBreach, PartnerForecast, RefreshSummary,
};
use crate::pipeline::forecast::Outlook;
use crate::pipeline::sql::{MetricResult, PartnerValue, RefreshPath, RefreshReport};

/// The source tables exist as the spec declares them.
pub const SOURCES_READY: &str = "SourcesReady";
/// The metrics were computed for the current generation.
pub const REFRESHED: &str = "Refreshed";
/// Every objective is met over all partners.
pub const OBJECTIVES_MET: &str = "ObjectivesMet";
/// Partners listed per metric, in status and in breach deliveries.
pub const WORST_PARTNERS: usize = 10;

/// Partners breaching `objective`, worst first, at most [`WORST_PARTNERS`].
pub fn worst_partners(objective: &Objective, partners: &[PartnerValue]) -> Vec<PartnerBreach> {
    let mut breaching: Vec<&PartnerValue> = partners
        .iter()
        .filter(|p| p.objective_met == Some(false))
        .collect();
    breaching.sort_by(|a, b| {
        let order = a.value.total_cmp(&b.value);
        let worst_first = match objective.comparison {
            Comparison::AtLeast => order,
            Comparison::AtMost => order.reverse(),
        };
        worst_first.then_with(|| a.partner.cmp(&b.partner))
    });
    breaching
        .into_iter()
        .take(WORST_PARTNERS)
        .map(|p| PartnerBreach {
            partner: p.partner.clone(),
            value: p.value,
        })
        .collect()
}

/// What the forecasts of one metric say, for status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricForecast {
    pub at_risk: Vec<PartnerForecast>,
    pub note: Option<String>,
}

/// Folds each partner's outlook into the soonest breaches and a note on the
/// partners that could not be forecast. `today` is in the pipeline's zone.
pub fn summarize_forecast(outlooks: &[(String, Outlook)], today: Date) -> MetricForecast {
    let mut at_risk = vec![];
    let (mut too_few, mut poor_fit) = (0, 0);
    let (mut need_points, mut need_fit) = (0usize, 0.0f64);
    for (partner, outlook) in outlooks {
        match outlook {
            Outlook::AtRisk {
                projected_value,
                breach_in_days,
                fit,
            } => {
                let date = today
                    .checked_add(k8s_openapi::jiff::Span::new().days(i64::from(*breach_in_days)))
                    .unwrap_or(today);
                at_risk.push((
                    *breach_in_days,
                    PartnerForecast {
                        partner: partner.clone(),
                        projected_value: *projected_value,
                        breach_date: date.to_string(),
                        fit: *fit,
                    },
                ));
            }
            Outlook::NotEnoughData { need, .. } => {
                too_few += 1;
                need_points = *need;
            }
            Outlook::PoorFit { need, .. } => {
                poor_fit += 1;
                need_fit = *need;
            }
            Outlook::OnTrack { .. } | Outlook::AlreadyBreached => {}
        }
    }
    at_risk.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.partner.cmp(&b.1.partner)));
    let mut notes = vec![];
    if too_few > 0 {
        notes.push(format!(
            "{too_few} partner(s) not forecast: not enough data (fewer than {need_points} daily points)"
        ));
    }
    if poor_fit > 0 {
        notes.push(format!(
            "{poor_fit} partner(s) not forecast: trend fit below {need_fit}"
        ));
    }
    MetricForecast {
        at_risk: at_risk
            .into_iter()
            .take(WORST_PARTNERS)
            .map(|(_, f)| f)
            .collect(),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// Per-metric status, in the spec's order.
pub fn metric_statuses(
    spec: &MetricPipelineSpec,
    report: &RefreshReport,
    breached_since: &BTreeMap<String, Time>,
    forecasts: &BTreeMap<String, MetricForecast>,
) -> Vec<MetricStatus> {
    let results: BTreeMap<&str, &MetricResult> = report
        .metrics
        .iter()
        .map(|m| (m.name.as_str(), m))
        .collect();
    spec.metrics
        .iter()
        .map(|metric| {
            let name = metric.name.as_str();
            let result = results.get(name);
            let forecast = forecasts.get(name).cloned().unwrap_or_default();
            MetricStatus {
                name: Identifier(name.to_string()),
                value: result.and_then(|r| r.value),
                objective_met: result.and_then(|r| r.objective_met),
                samples: result.map(|r| r.samples),
                breached_since: breached_since.get(name).cloned(),
                breaches: match (&metric.objective, result) {
                    (Some(objective), Some(r)) => worst_partners(objective, &r.partners),
                    _ => vec![],
                },
                at_risk: forecast.at_risk,
                forecast_note: forecast.note,
            }
        })
        .collect()
}

/// `met/defined` over the metrics that have an objective.
pub fn objectives_met(metrics: &[MetricStatus], spec: &MetricPipelineSpec) -> Option<String> {
    let defined = spec
        .metrics
        .iter()
        .filter(|m| m.objective.is_some())
        .count();
    if defined == 0 {
        return None;
    }
    let met = metrics
        .iter()
        .filter(|m| m.objective_met == Some(true))
        .count();
    Some(format!("{met}/{defined}"))
}

/// `ObjectivesMet`: False while any objective is breached over all
/// partners; True otherwise, with reason `AtRisk` when a forecast projects a
/// partner into breach within its horizon.
pub fn objectives_condition(metrics: &[MetricStatus], generation: Option<i64>) -> Condition {
    let breached: Vec<String> = metrics
        .iter()
        .filter(|m| m.objective_met == Some(false))
        .map(|m| match m.value {
            Some(v) => format!("{} ({v})", m.name.as_str()),
            None => m.name.as_str().to_string(),
        })
        .collect();
    let partners_breaching: usize = metrics.iter().map(|m| m.breaches.len()).sum();
    let at_risk: Vec<String> = metrics
        .iter()
        .filter(|m| !m.at_risk.is_empty())
        .map(|m| format!("{} ({} partner(s))", m.name.as_str(), m.at_risk.len()))
        .collect();
    let no_data: Vec<&str> = metrics
        .iter()
        .filter(|m| m.value.is_none())
        .map(|m| m.name.as_str())
        .collect();
    let mut extra = vec![];
    if partners_breaching > 0 {
        extra.push(format!(
            "{partners_breaching} partner breach(es) listed per metric"
        ));
    }
    if !no_data.is_empty() {
        extra.push(format!("no rows in the window: {}", no_data.join(", ")));
    }
    let suffix = |mut text: String| {
        if !extra.is_empty() {
            text.push_str("; ");
            text.push_str(&extra.join("; "));
        }
        text
    };
    let (met, reason, message) = if !breached.is_empty() {
        (
            false,
            "Breached",
            suffix(format!("objectives breached: {}", breached.join(", "))),
        )
    } else if !at_risk.is_empty() {
        (
            true,
            "AtRisk",
            suffix(format!(
                "objectives met; projected to breach within the forecast horizon: {}",
                at_risk.join(", ")
            )),
        )
    } else {
        (true, "Met", suffix("every objective is met".into()))
    };
    conditions::new(OBJECTIVES_MET, met, reason, message, generation)
}

/// The last refresh, for status.
pub fn refresh_summary(report: &RefreshReport, duration_ms: i64) -> RefreshSummary {
    RefreshSummary {
        path: match report.path {
            RefreshPath::Unchanged => "Unchanged",
            RefreshPath::Incremental => "Incremental",
            RefreshPath::Full => "Full",
        }
        .to_string(),
        duration_ms,
        changed_rows: report.changed_rows,
        sampled_buckets: report.sampled_buckets,
        mismatched_buckets: report.mismatched_buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partner(name: &str, value: f64, met: bool) -> PartnerValue {
        PartnerValue {
            partner: name.into(),
            value,
            samples: 10,
            objective_met: Some(met),
        }
    }

    fn objective(comparison: Comparison, target: f64) -> Objective {
        Objective { comparison, target }
    }

    #[test]
    fn worst_partners_are_the_furthest_from_the_objective_bounded_to_ten() {
        let partners: Vec<PartnerValue> = (0..15)
            .map(|i| partner(&format!("p{i:02}"), 0.5 + f64::from(i) / 100.0, true))
            .map(|mut p| {
                p.objective_met = Some(p.value >= 0.6);
                p
            })
            .collect();
        let worst = worst_partners(&objective(Comparison::AtLeast, 0.6), &partners);
        assert_eq!(worst.len(), 10);
        assert_eq!(worst[0].partner, "p00", "lowest first for AtLeast");
        assert!(worst.iter().all(|b| b.value < 0.6));

        let slow = [
            partner("a", 50.0, false),
            partner("b", 70.0, false),
            partner("c", 10.0, true),
        ];
        let worst = worst_partners(&objective(Comparison::AtMost, 48.0), &slow);
        let names: Vec<&str> = worst.iter().map(|b| b.partner.as_str()).collect();
        assert_eq!(
            names,
            ["b", "a"],
            "highest first for AtMost; met partners left out"
        );
    }

    fn status(name: &str, value: Option<f64>, met: Option<bool>) -> MetricStatus {
        MetricStatus {
            name: Identifier(name.into()),
            value,
            objective_met: met,
            ..Default::default()
        }
    }

    #[test]
    fn a_breached_objective_turns_the_condition_false_and_names_the_metric() {
        let c = objectives_condition(
            &[
                status("sla", Some(0.9), Some(false)),
                status("ftf", Some(0.9), Some(true)),
            ],
            Some(2),
        );
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Breached")
        );
        assert!(c.message.contains("sla (0.9)"), "{}", c.message);
        assert_eq!(c.observed_generation, Some(2));
    }

    #[test]
    fn a_forecast_breach_is_at_risk_while_objectives_still_hold() {
        let mut risky = status("sla", Some(0.97), Some(true));
        risky.at_risk = vec![PartnerForecast {
            partner: "p1".into(),
            projected_value: 0.94,
            breach_date: "2026-12-01".into(),
            fit: 0.9,
        }];
        let c = objectives_condition(&[risky], Some(1));
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "AtRisk"));
        let c = objectives_condition(&[status("sla", Some(0.97), Some(true))], Some(1));
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Met"));
    }

    #[test]
    fn forecasts_list_the_soonest_breaches_and_say_why_others_were_not_forecast() {
        let today: Date = "2026-11-25".parse().unwrap();
        let outlooks = vec![
            (
                "late".to_string(),
                Outlook::AtRisk {
                    projected_value: 0.8,
                    breach_in_days: 10,
                    fit: 0.9,
                },
            ),
            (
                "soon".to_string(),
                Outlook::AtRisk {
                    projected_value: 0.84,
                    breach_in_days: 3,
                    fit: 0.95,
                },
            ),
            (
                "new".to_string(),
                Outlook::NotEnoughData { have: 5, need: 14 },
            ),
            ("flat".to_string(), Outlook::OnTrack { fit: 0.1 }),
        ];
        let f = summarize_forecast(&outlooks, today);
        let order: Vec<(&str, &str)> = f
            .at_risk
            .iter()
            .map(|p| (p.partner.as_str(), p.breach_date.as_str()))
            .collect();
        assert_eq!(order, [("soon", "2026-11-28"), ("late", "2026-12-05")]);
        assert!(
            f.note
                .unwrap()
                .contains("not enough data (fewer than 14 daily points)")
        );
    }
}
