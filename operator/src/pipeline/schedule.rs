//! When a pipeline refreshes next. Pure: the reconcile passes the clock.
//!
//! The schedule is anchored on `lastRefreshTime` exactly as the API keeps
//! it (whole seconds), and the wait for the next refresh is never
//! stretched by jitter: a late wake-up is lag, and the anchors of
//! different pipelines already differ.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// `30s`, `5m`, `1h` (the CRD's pattern) as a duration.
pub fn parse_interval(text: &str) -> Option<Duration> {
    let split = text.len().checked_sub(1)?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        _ => return None,
    };
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// Whether a refresh is due now, or how long until it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    Now,
    In(Duration),
}

/// A refresh is due when none has succeeded for the current generation, or
/// the last one is an interval old.
pub fn refresh_due(
    last: Option<Timestamp>,
    refreshed_generation: Option<i64>,
    generation: Option<i64>,
    interval: Duration,
    now: Timestamp,
) -> Due {
    let Some(last) = last else { return Due::Now };
    if refreshed_generation != generation {
        return Due::Now;
    }
    let elapsed = now.duration_since(last);
    let interval_signed = k8s_openapi::jiff::SignedDuration::try_from(interval)
        .unwrap_or(k8s_openapi::jiff::SignedDuration::MAX);
    if elapsed >= interval_signed {
        Due::Now
    } else {
        Due::In(Duration::try_from(interval_signed - elapsed).unwrap_or(Duration::ZERO))
    }
}

/// The instant a refresh is recorded as: whole seconds, which is all a
/// `Time` keeps, so the next one is scheduled from what status shows.
pub fn recorded(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn intervals_parse_in_their_units() {
        assert_eq!(parse_interval("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_interval("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_interval("2h"), Some(Duration::from_secs(7200)));
        for bad in ["", "m", "5", "5d", "-5m", "0s", "99999999999999999999h"] {
            assert_eq!(parse_interval(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_refresh_is_due_first_after_a_spec_change_and_then_each_interval() {
        let five = Duration::from_secs(300);
        assert_eq!(refresh_due(None, None, Some(1), five, at(0)), Due::Now);
        assert_eq!(
            refresh_due(Some(at(0)), Some(1), Some(2), five, at(1)),
            Due::Now,
            "a new generation refreshes at once"
        );
        assert_eq!(
            refresh_due(Some(at(0)), Some(1), Some(1), five, at(100)),
            Due::In(Duration::from_secs(200))
        );
        assert_eq!(
            refresh_due(Some(at(0)), Some(1), Some(1), five, at(300)),
            Due::Now
        );
    }

    #[test]
    fn a_refresh_is_recorded_in_whole_seconds() {
        let exact = Timestamp::from_millisecond(1_800_000_000_999).unwrap();
        assert_eq!(recorded(exact), at(0));
        assert_eq!(recorded(at(5)), at(5));
    }

    #[test]
    fn a_refresh_recorded_in_whole_seconds_is_due_one_interval_after_that_second() {
        let thirty = Duration::from_secs(30);
        let ended = Timestamp::from_millisecond(1_800_000_000_700).unwrap();
        let last = recorded(ended);
        assert_eq!(
            refresh_due(Some(last), Some(1), Some(1), thirty, ended),
            Due::In(Duration::from_millis(29_300))
        );
    }
}
