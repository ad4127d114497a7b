//! How far back a metric's partial aggregates reach (pure).
//!
//! Nothing reads a bucket older than the metric's window (or the days its
//! forecast reads), and that start only moves forward with time. So the
//! rollup holds buckets from a recorded start on: a rebuild reads only the
//! rows from there, and changes to older rows cost nothing. Widening the
//! window moves the needed start before the recorded one, which rebuilds.

use k8s_openapi::jiff::civil::DateTime;

/// What to do about a metric's recorded start, given the start needed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Nothing is recorded, or buckets before it are now needed: rebuild
    /// from the needed start.
    Rebuild,
    /// The recorded start still covers what is needed.
    Keep,
    /// The recorded start lags the needed one by a whole reach or more:
    /// drop the buckets before the needed start.
    Prune,
}

/// Decides from the recorded start, the needed start and how many hours a
/// metric reaches back.
pub fn decide(recorded: Option<DateTime>, needed: DateTime, reach_hours: i64) -> Reach {
    let Some(recorded) = recorded else {
        return Reach::Rebuild;
    };
    if needed < recorded {
        return Reach::Rebuild;
    }
    // Local wall-clock times: a day counts 24 hours, whatever DST did.
    if recorded.duration_until(needed).as_hours() >= reach_hours.max(1) {
        Reach::Prune
    } else {
        Reach::Keep
    }
}

/// A start as Postgres prints it with [`TEXT_FORMAT`].
pub fn parse(text: &str) -> Option<DateTime> {
    text.parse().ok()
}

/// The `to_char` format of a start.
pub const TEXT_FORMAT: &str = "YYYY-MM-DD\"T\"HH24:MI:SS";

/// A start as the state records it (what [`parse`] reads).
pub fn text(start: DateTime) -> String {
    start.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

/// A start as an SQL constant (digits and separators only, from a parsed value).
pub fn literal(start: DateTime) -> String {
    format!("'{}'::timestamp", text(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime {
        parse(text).unwrap()
    }

    #[test]
    fn nothing_recorded_or_an_earlier_start_needed_rebuilds() {
        assert_eq!(decide(None, at("2026-12-01T00:00:00"), 720), Reach::Rebuild);
        assert_eq!(
            decide(
                Some(at("2026-12-01T00:00:00")),
                at("2026-11-30T00:00:00"),
                720
            ),
            Reach::Rebuild,
            "a wider window needs older buckets"
        );
    }

    #[test]
    fn a_start_is_kept_until_it_lags_a_whole_reach() {
        let recorded = Some(at("2026-11-01T00:00:00"));
        assert_eq!(
            decide(recorded, at("2026-11-01T00:00:00"), 720),
            Reach::Keep
        );
        assert_eq!(
            decide(recorded, at("2026-11-30T23:00:00"), 720),
            Reach::Keep
        );
        assert_eq!(
            decide(recorded, at("2026-12-01T00:00:00"), 720),
            Reach::Prune
        );
    }

    #[test]
    fn starts_round_trip_through_their_text_and_literal() {
        let start = at("2026-03-29T02:00:00");
        assert_eq!(literal(start), "'2026-03-29T02:00:00'::timestamp");
        assert_eq!(parse("2026-03-29T02:00:00"), Some(start));
        assert_eq!(parse("2026-03-29 02:00:00'; drop"), None);
    }
}
