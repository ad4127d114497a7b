//! Forecasting breaches (pure): a least-squares trend over a partner's
//! daily values, trusted only with enough points and a good enough fit.

use super::breach::breaches;
use crate::api::metric::{Forecast, Objective};

/// One daily value; `day` counts days relative to today (0 today, -1 yesterday).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub day: i64,
    pub value: f64,
}

/// What the trend says about one partner.
#[derive(Debug, Clone, PartialEq)]
pub enum Outlook {
    /// The trend crosses the objective `breach_in_days` after today, within the horizon.
    AtRisk {
        projected_value: f64,
        breach_in_days: i32,
        fit: f64,
    },
    /// The trend stays within the objective over the horizon.
    OnTrack {
        fit: f64,
    },
    /// Today's trend value already breaches (the breach list reports it).
    AlreadyBreached,
    NotEnoughData {
        have: usize,
        need: usize,
    },
    PoorFit {
        fit: f64,
        need: f64,
    },
}

/// Projects the trend of `points` over the horizon of `spec`.
///
/// Only finite values from today and the `history_days - 1` days before it
/// count. The trend is an ordinary least-squares line `value = a + b·day`,
/// judged by its R². A series without variance is flat: its R² is 0, yet
/// it is on track unless it already breaches, since a flat line never
/// crosses the objective later.
pub fn project(points: &[Point], objective: &Objective, spec: &Forecast) -> Outlook {
    let oldest = 1 - i64::from(spec.history_days.max(1));
    let used: Vec<Point> = points
        .iter()
        .copied()
        .filter(|p| (oldest..=0).contains(&p.day) && p.value.is_finite())
        .collect();
    let need = usize::try_from(spec.min_points).unwrap_or(0);
    let have = used.len();
    if have < need {
        return Outlook::NotEnoughData { have, need };
    }
    let Some(line) = Line::fit(&used) else {
        // Every point on one day (or none at all): no trend can be drawn.
        return Outlook::NotEnoughData {
            have: have.min(1),
            need: need.max(2),
        };
    };
    if breaches(line.at(0), objective) {
        return Outlook::AlreadyBreached;
    }
    if line.flat {
        return Outlook::OnTrack { fit: line.fit };
    }
    if line.fit < spec.min_fit {
        return Outlook::PoorFit {
            fit: line.fit,
            need: spec.min_fit,
        };
    }
    let fit = line.fit;
    (1..=horizon_days(&spec.horizon))
        .find(|&day| breaches(line.at(i64::from(day)), objective))
        .map_or(Outlook::OnTrack { fit }, |day| Outlook::AtRisk {
            projected_value: line.at(i64::from(day)),
            breach_in_days: day,
            fit,
        })
}

/// Days in a horizon such as `14d`; the API admits nothing else, and
/// anything else projects nothing.
fn horizon_days(horizon: &str) -> i32 {
    horizon
        .strip_suffix('d')
        .and_then(|days| days.parse().ok())
        .filter(|days: &i32| *days > 0)
        .unwrap_or(0)
}

/// A least-squares line and its coefficient of determination.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Line {
    intercept: f64,
    slope: f64,
    /// R², 0 to 1.
    fit: f64,
    /// The values have no variance (up to rounding).
    flat: bool,
}

impl Line {
    /// `None` without two distinct days.
    fn fit(points: &[Point]) -> Option<Self> {
        let n = points.len() as f64;
        if points.is_empty() {
            return None;
        }
        let mean_x = points.iter().map(|p| p.day as f64).sum::<f64>() / n;
        let mean_y = points.iter().map(|p| p.value).sum::<f64>() / n;
        let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
        for p in points {
            let (dx, dy) = (p.day as f64 - mean_x, p.value - mean_y);
            sxx += dx * dx;
            sxy += dx * dy;
            syy += dy * dy;
        }
        if sxx == 0.0 {
            return None;
        }
        // Rounding in the mean leaves a constant series a tiny variance.
        let flat = syy <= f64::EPSILON * f64::EPSILON * n * mean_y.abs().max(1.0).powi(2);
        if flat {
            return Some(Self {
                intercept: mean_y,
                slope: 0.0,
                fit: 0.0,
                flat,
            });
        }
        let slope = sxy / sxx;
        let intercept = mean_y - slope * mean_x;
        let residual: f64 = points
            .iter()
            .map(|p| (p.value - (intercept + slope * p.day as f64)).powi(2))
            .sum();
        Some(Self {
            intercept,
            slope,
            fit: (1.0 - residual / syy).clamp(0.0, 1.0),
            flat,
        })
    }

    fn at(&self, day: i64) -> f64 {
        self.intercept + self.slope * day as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::metric::Comparison;

    fn spec(horizon: &str, history_days: i32, min_points: i32, min_fit: f64) -> Forecast {
        Forecast {
            horizon: horizon.into(),
            history_days,
            min_points,
            min_fit,
        }
    }

    fn default_spec() -> Forecast {
        spec("14d", 28, 14, 0.6)
    }

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

    /// Today and the `days - 1` days before it.
    fn series(days: i64, value: impl Fn(i64) -> f64) -> Vec<Point> {
        (0..days)
            .map(|ago| Point {
                day: -ago,
                value: value(ago),
            })
            .collect()
    }

    fn drifting() -> Vec<Point> {
        series(28, |ago| 20.25 - 0.5 * ago as f64)
    }

    #[test]
    fn a_rising_partner_is_at_risk_on_the_day_it_crosses() {
        match project(&drifting(), &at_most(24.0), &default_spec()) {
            Outlook::AtRisk {
                projected_value,
                breach_in_days,
                fit,
            } => {
                assert_eq!(breach_in_days, 8);
                assert!((projected_value - 24.25).abs() < 1e-9, "{projected_value}");
                assert!(fit > 0.99, "{fit}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_falling_partner_is_at_risk_of_missing_a_floor() {
        let points = series(20, |ago| 0.992 + 0.005 * ago as f64);
        let outlook = project(&points, &at_least(0.95), &default_spec());
        assert!(
            matches!(
                outlook,
                Outlook::AtRisk {
                    breach_in_days: 9,
                    ..
                }
            ),
            "{outlook:?}"
        );
    }

    #[test]
    fn a_crossing_beyond_the_horizon_is_on_track() {
        let outlook = project(&drifting(), &at_most(24.0), &spec("7d", 28, 14, 0.6));
        assert!(
            matches!(outlook, Outlook::OnTrack { fit } if fit > 0.99),
            "{outlook:?}"
        );
    }

    #[test]
    fn a_flat_series_with_jitter_is_not_flagged() {
        let points = series(28, |ago| 12.0 + if ago % 2 == 0 { 0.01 } else { -0.01 });
        let outlook = project(&points, &at_most(24.0), &default_spec());
        assert!(!matches!(outlook, Outlook::AtRisk { .. }), "{outlook:?}");
    }

    #[test]
    fn a_constant_series_is_on_track_unless_it_breaches_already() {
        let points = series(28, |_| 0.1);
        assert_eq!(
            project(&points, &at_most(24.0), &default_spec()),
            Outlook::OnTrack { fit: 0.0 }
        );
        assert_eq!(
            project(&points, &at_least(24.0), &default_spec()),
            Outlook::AlreadyBreached
        );
    }

    #[test]
    fn a_noisy_series_is_not_at_risk() {
        let noise = [3.0, -4.0, 5.5, -2.0, 4.5, -5.0, 1.0, -3.5, 6.0, -1.0];
        let points = series(28, |ago| 15.0 + noise[ago as usize % noise.len()]);
        let outlook = project(&points, &at_most(24.0), &default_spec());
        assert!(!matches!(outlook, Outlook::AtRisk { .. }), "{outlook:?}");
        assert!(
            matches!(outlook, Outlook::PoorFit { need, .. } if need == 0.6),
            "{outlook:?}"
        );
    }

    #[test]
    fn too_few_points_are_not_enough_data() {
        let points = series(5, |_| 30.0);
        assert_eq!(
            project(&points, &at_most(24.0), &default_spec()),
            Outlook::NotEnoughData { have: 5, need: 14 }
        );
    }

    #[test]
    fn points_outside_the_history_do_not_count() {
        // 14 days in the history, 14 older ones that would reverse the trend,
        // and a day in the future.
        let mut points = series(14, |ago| 20.25 - 0.5 * ago as f64);
        points.extend((14..28).map(|ago| Point {
            day: -ago,
            value: 100.0,
        }));
        points.push(Point {
            day: 1,
            value: 100.0,
        });
        let outlook = project(&points, &at_most(24.0), &spec("14d", 14, 14, 0.6));
        assert!(
            matches!(
                outlook,
                Outlook::AtRisk {
                    breach_in_days: 8,
                    ..
                }
            ),
            "{outlook:?}"
        );
        let outlook = project(&points, &at_most(24.0), &spec("14d", 13, 14, 0.6));
        assert_eq!(outlook, Outlook::NotEnoughData { have: 13, need: 14 });
    }

    #[test]
    fn a_trend_breaching_today_is_already_breached() {
        let points = series(28, |ago| 25.0 - 0.1 * ago as f64);
        assert_eq!(
            project(&points, &at_most(24.0), &default_spec()),
            Outlook::AlreadyBreached
        );
    }

    #[test]
    fn a_single_day_draws_no_trend() {
        let points = [Point { day: 0, value: 1.0 }, Point { day: 0, value: 2.0 }];
        assert_eq!(
            project(&points, &at_most(24.0), &spec("14d", 28, 0, 0.0)),
            Outlook::NotEnoughData { have: 1, need: 2 }
        );
    }

    #[test]
    fn horizons_parse_as_days() {
        assert_eq!(horizon_days("14d"), 14);
        assert_eq!(horizon_days("999d"), 999);
        assert_eq!(horizon_days("2w"), 0);
        assert_eq!(horizon_days("d"), 0);
    }
}
