//! Percentile results from a metric's histogram bins (pure): the window
//! table holds one row per (partner, dimensions, bin), and each level the
//! result table reports — over all partners, per partner, and per
//! dimension value when grouped — merges those bins and takes the first bin
//! whose cumulative count reaches the percentile's rank. Merging a few
//! thousand bins here costs far less than sorting them through window
//! functions in SQL.

use std::collections::{BTreeMap, HashMap};

use super::compile::bin_value;

/// One row of the window table: partner, dimensions (jsonb text), bin and
/// count.
pub type Bin = (String, String, i64, i64);

/// One result row: partner (none over all partners), dimensions (jsonb
/// text, `{}` when not split), value and samples.
pub type Level = (Option<String>, String, Option<f64>, i64);

const UNSPLIT: &str = "{}";

/// The bin holding the `percentile`th value of `bins` (bin → count), as
/// the SQL rank `cum >= ceil(p * total / 100)` picks it.
fn rank(percentile: i32, bins: &BTreeMap<i64, i64>) -> (Option<f64>, i64) {
    let total: i64 = bins.values().sum();
    if total == 0 {
        return (None, 0);
    }
    // Both positive: the rank rounded up.
    let needed = (i64::from(percentile) * total + 99) / 100;
    let mut cumulative = 0;
    for (k, n) in bins {
        cumulative += n;
        if cumulative >= needed {
            return (Some(bin_value(*k)), total);
        }
    }
    (None, total)
}

/// Every level's value: over all partners (always, even with no bins),
/// per partner, and with `split` per dimension value and per partner and
/// dimension value.
pub fn levels(percentile: i32, split: bool, bins: &[Bin]) -> Vec<Level> {
    let mut groups: HashMap<(Option<&str>, &str), BTreeMap<i64, i64>> = HashMap::new();
    groups.entry((None, UNSPLIT)).or_default();
    for (partner, dims, k, n) in bins {
        let mut keys = vec![(None, UNSPLIT), (Some(partner.as_str()), UNSPLIT)];
        if split {
            keys.push((None, dims.as_str()));
            keys.push((Some(partner.as_str()), dims.as_str()));
        }
        for key in keys {
            *groups.entry(key).or_default().entry(*k).or_default() += n;
        }
    }
    let mut out: Vec<Level> = groups
        .into_iter()
        .map(|((partner, dims), bins)| {
            let (value, samples) = rank(percentile, &bins);
            (
                partner.map(str::to_string),
                dims.to_string(),
                value,
                samples,
            )
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

#[cfg(test)]
mod tests {
    use super::super::compile::bin_of;
    use super::*;

    fn bins(rows: &[(&str, &str, f64, i64)]) -> Vec<Bin> {
        rows.iter()
            .map(|(p, d, x, n)| (p.to_string(), d.to_string(), bin_of(*x), *n))
            .collect()
    }

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() <= 0.01 * b.abs())
    }

    #[test]
    fn the_rank_is_the_first_bin_reaching_it_per_level() {
        // P1: 10 values of 1..=10 hours; p90 is the 9th, 9 hours.
        let mut rows: Vec<(&str, &str, f64, i64)> =
            (1..=10).map(|h| ("P1", "{}", f64::from(h), 1)).collect();
        // P2: nine at 2 hours, one at 100.
        rows.push(("P2", "{}", 2.0, 9));
        rows.push(("P2", "{}", 100.0, 1));
        let out = levels(90, false, &bins(&rows));
        assert_eq!(out.len(), 3, "{out:?}");
        let value = |p: Option<&str>| out.iter().find(|l| l.0.as_deref() == p).unwrap();
        assert!(close(value(Some("P1")).2, 9.0), "{out:?}");
        assert_eq!(value(Some("P1")).3, 10);
        assert!(close(value(Some("P2")).2, 2.0), "{out:?}");
        // All 20 values: the 18th is 9 hours (1..=10 and nine 2s sorted).
        assert!(close(value(None).2, 9.0), "{out:?}");
        assert_eq!(value(None).3, 20);
    }

    #[test]
    fn with_no_bins_the_overall_level_is_empty_and_split_levels_appear() {
        assert_eq!(levels(50, false, &[]), vec![(None, "{}".into(), None, 0)]);
        let out = levels(
            50,
            true,
            &bins(&[
                ("P1", "{\"region\": \"north\"}", 3.0, 2),
                ("P1", "{\"region\": \"south\"}", 5.0, 1),
            ]),
        );
        let keys: Vec<(Option<&str>, &str)> =
            out.iter().map(|l| (l.0.as_deref(), l.1.as_str())).collect();
        assert_eq!(
            keys,
            [
                (None, "{\"region\": \"north\"}"),
                (None, "{\"region\": \"south\"}"),
                (None, "{}"),
                (Some("P1"), "{\"region\": \"north\"}"),
                (Some("P1"), "{\"region\": \"south\"}"),
                (Some("P1"), "{}"),
            ]
        );
        // Median of 3, 3, 5: 3.
        assert!(close(out[5].2, 3.0), "{out:?}");
    }
}
