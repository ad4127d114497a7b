//! How soon a watch that failed tries again. kube's default (client-go's:
//! 0.8 s doubling to 30 s, with jitter up to twice that, reset by a success
//! or by two minutes without an error) let an API server restart of a few seconds cost a minute or
//! more per watch: the restart's refused connections grew every watch's
//! delay to its cap, and resuming after it takes two more failures (a
//! pooled connection the server closed, then `410 Gone` for the old
//! resourceVersion) before the relist that succeeds. Capped at a few
//! seconds, a watch is back within seconds of the API server; a few dozen
//! watches retrying that often cost it nothing.
//!
//! A controller also backs off over all its trigger watches merged: with
//! kube's default, any one watch's error paused every trigger, the
//! controller's own objects included, for up to a minute, and each later
//! error lengthened it; after an API server restart a controller stood
//! still for minutes. Each watch backs off by itself, so the controller's
//! layer waits for nothing ([`Immediate`]). Every trigger stream must
//! therefore carry [`WatchBackoff`]: kube's `Controller::owns` and
//! `Controller::watches` build watches without one, which would then retry
//! an error at once, in a loop; use `owns_stream` and `watches_stream`.

use std::time::Duration;

use kube::runtime::utils::Backoff;

/// The first delay after a failure is at most this (at least half of it).
const FIRST: Duration = Duration::from_millis(250);
/// Longest delay between two attempts.
const CAP: Duration = Duration::from_secs(4);

/// Doubles from [`FIRST`] to [`CAP`]; each delay is drawn from its upper
/// half so that watches failing together do not retry together. A success
/// starts it over.
#[derive(Debug, Default)]
pub struct WatchBackoff {
    failures: u32,
}

/// The delay before attempt `failures + 1`, for `unit` in [0, 1).
pub fn delay(failures: u32, unit: f64) -> Duration {
    let ceiling = FIRST.saturating_mul(1 << failures.min(16)).min(CAP);
    ceiling.mul_f64(0.5 + unit.clamp(0.0, 1.0) / 2.0)
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let wait = delay(self.failures, rand::random_range(0.0..1.0));
        self.failures = self.failures.saturating_add(1);
        Some(wait)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// No wait: for a controller's trigger streams, each of which already
/// backs off with [`WatchBackoff`].
#[derive(Debug, Default)]
pub struct Immediate;

impl Iterator for Immediate {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for Immediate {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first_to_the_cap() {
        assert_eq!(delay(0, 0.999_999).as_millis(), 249);
        assert_eq!(delay(0, 0.0), FIRST / 2);
        assert_eq!(delay(1, 0.0), FIRST);
        assert_eq!(delay(3, 0.0), FIRST * 4);
        for failures in [5, 6, 30, u32::MAX] {
            assert!(delay(failures, 0.999_999) <= CAP, "{failures}");
            assert!(delay(failures, 0.0) >= CAP / 2, "{failures}");
        }
    }

    #[test]
    fn a_success_starts_over() {
        let mut backoff = WatchBackoff::default();
        for _ in 0..10 {
            backoff.next();
        }
        assert!(backoff.next().unwrap() >= CAP / 2);
        backoff.reset();
        assert!(backoff.next().unwrap() <= FIRST);
    }
}
